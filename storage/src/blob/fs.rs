//! Blobs on a local filesystem.
//!
//! Layout under the root:
//! ```text
//! blobs/<algorithm>/<first two hex>/<hex>   published, content-addressed, immutable
//! uploads/<upload id>                        bytes of an upload in progress
//! tmp/                                       staging for small writes (manifests)
//! ```
//! A blob is published by fsync + rename of its upload file, after the digest
//! of its bytes has been checked, so a published path never holds partial or
//! unverified content. Publishing a blob that already exists only removes the
//! upload file: every blob is stored once.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::{BlobStream, CHUNK};
use crate::digest::{Digest, Hasher};
use crate::error::{Result, StorageError};

#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<FsBlobStore> {
        let root = root.into();
        for sub in ["blobs", "uploads", "tmp"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(FsBlobStore { root })
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn upload_path(&self, id: &str) -> PathBuf {
        debug_assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        self.root.join("uploads").join(id)
    }

    pub async fn stat(&self, d: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(d);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The blob's bytes in `range` (or all of them), streamed in large chunks
    /// read on a blocking thread.
    pub async fn read(&self, d: &Digest, range: Option<Range<u64>>) -> Result<BlobStream> {
        let path = self.blob_path(d);
        let digest = d.clone();
        let opened = tokio::task::spawn_blocking(move || -> Result<(File, u64, u64)> {
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StorageError::BlobUnknown(digest));
                }
                Err(e) => return Err(e.into()),
            };
            let len = file.metadata()?.len();
            let r = range.unwrap_or(0..len);
            if r.end > len || r.start > r.end {
                return Err(StorageError::SizeInvalid(format!(
                    "range {}-{} is outside a blob of {len} bytes",
                    r.start, r.end
                )));
            }
            file.seek(SeekFrom::Start(r.start))?;
            Ok((file, r.start, r.end))
        })
        .await
        .map_err(join_error)??;
        let (file, start, end) = opened;
        Ok(stream_file(file, end - start))
    }

    pub async fn put(&self, d: &Digest, bytes: Bytes) -> Result<()> {
        let actual = Digest::of(d.algorithm(), &bytes);
        if &actual != d {
            return Err(StorageError::DigestMismatch {
                expected: d.clone(),
                actual,
            });
        }
        let dest = self.blob_path(d);
        let tmp = self.root.join("tmp").join(uuid::Uuid::new_v4().to_string());
        tokio::task::spawn_blocking(move || -> Result<()> {
            if dest.exists() {
                return Ok(());
            }
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_data()?;
            drop(f);
            publish_file(&tmp, &dest)
        })
        .await
        .map_err(join_error)?
    }

    /// Stores many small blobs (a fleet rebase's configs) with two flushes
    /// of the filesystem instead of two per blob: every file is written
    /// under `tmp/`, one `syncfs` makes their bytes durable, they are
    /// renamed into place, and a second `syncfs` makes the renames durable.
    /// A published path still never holds bytes that are not on disk. One
    /// result per blob, in order.
    pub async fn put_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        let n = blobs.len();
        let jobs: Vec<(Digest, Bytes, PathBuf, PathBuf)> = blobs
            .into_iter()
            .map(|(d, bytes)| {
                let tmp = self.root.join("tmp").join(uuid::Uuid::new_v4().to_string());
                let dest = self.blob_path(&d);
                (d, bytes, tmp, dest)
            })
            .collect();
        let root = self.root.clone();
        match tokio::task::spawn_blocking(move || put_many_blocking(&root, jobs)).await {
            Ok(out) => out,
            Err(e) => {
                let e = join_error(e);
                (0..n)
                    .map(|_| Err(StorageError::Io(io::Error::other(e.to_string()))))
                    .collect()
            }
        }
    }

    pub async fn delete(&self, d: &Digest) -> Result<()> {
        match tokio::fs::remove_file(self.blob_path(d)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every published blob and when it was written (for fsck).
    pub async fn blobs_stored(&self) -> Result<Vec<super::StoredBlob>> {
        let dir = self.root.join("blobs");
        tokio::task::spawn_blocking(move || -> Result<Vec<super::StoredBlob>> {
            let mut out = Vec::new();
            for alg in fs::read_dir(&dir)? {
                let alg = alg?;
                let alg_name = alg.file_name().to_string_lossy().into_owned();
                for fan in fs::read_dir(alg.path())? {
                    for blob in fs::read_dir(fan?.path())? {
                        let blob = blob?;
                        let name = format!("{alg_name}:{}", blob.file_name().to_string_lossy());
                        // Anything else there is no blob of ours: skipped.
                        if let Ok(digest) = name.parse::<Digest>() {
                            let meta = blob.metadata()?;
                            out.push(super::StoredBlob {
                                digest,
                                size: meta.len(),
                                modified: meta.modified()?,
                            });
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(join_error)?
    }

    /// Moves a damaged blob's bytes out of the way, to
    /// `quarantine/<algorithm>/<hex>` under the root, for inspection.
    pub async fn quarantine(&self, d: &Digest) -> Result<()> {
        let from = self.blob_path(d);
        let dir = self.root.join("quarantine").join(d.algorithm().as_str());
        let to = dir.join(d.hex());
        tokio::task::spawn_blocking(move || -> Result<()> {
            fs::create_dir_all(&dir)?;
            match fs::rename(&from, &to) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await
        .map_err(join_error)?
    }

    pub async fn upload_create(&self, id: &str) -> Result<()> {
        let path = self.upload_path(id);
        tokio::task::spawn_blocking(move || File::create(path).map(drop))
            .await
            .map_err(join_error)??;
        Ok(())
    }

    /// Appends a body to upload `id`, which holds `offset` verified bytes, and
    /// returns the new size and hash state. Bytes past `offset` (left by a
    /// request that died mid-write) are cut off first. Refuses to take the
    /// upload beyond `max_size` bytes, before writing the chunk that would.
    pub async fn upload_append<S>(
        &self,
        id: &str,
        offset: u64,
        mut hasher: Hasher,
        body: S,
        max_size: u64,
    ) -> Result<(u64, Hasher)>
    where
        S: Stream<Item = Result<Bytes>> + Send,
    {
        let path = self.upload_path(id);
        let upload_id = id.to_owned();
        // Hashing and writing run on two threads, fed the same chunks, so
        // the hash and the copy into the page cache overlap.
        let (write_tx, mut write_rx) = mpsc::channel::<Bytes>(4);
        let (hash_tx, mut hash_rx) = mpsc::channel::<Bytes>(4);
        let writer = tokio::task::spawn_blocking(move || -> Result<u64> {
            let mut file = match OpenOptions::new().write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StorageError::UploadUnknown(upload_id));
                }
                Err(e) => return Err(e.into()),
            };
            let len = file.metadata()?.len();
            if len < offset {
                return Err(StorageError::Corrupt(format!(
                    "upload {upload_id} holds {len} bytes but {offset} were recorded"
                )));
            }
            if len > offset {
                file.set_len(offset)?;
            }
            file.seek(SeekFrom::Start(offset))?;
            let mut size = offset;
            while let Some(chunk) = write_rx.blocking_recv() {
                file.write_all(&chunk)?;
                size += chunk.len() as u64;
            }
            Ok(size)
        });
        let hashing = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = hash_rx.blocking_recv() {
                hasher.update(&chunk);
            }
            hasher
        });

        let fed = feed(body, &[&write_tx, &hash_tx], offset, max_size).await;
        drop(write_tx);
        drop(hash_tx);
        let written = writer.await.map_err(join_error)?;
        let hasher = hashing.await.map_err(join_error)?;
        // A failure to read the body wins over what the writer saw: the
        // writer's result is then only partial.
        fed?;
        Ok((written?, hasher))
    }

    /// Checks the upload's bytes against `expected` (re-reading them only if
    /// `hasher` is of another algorithm) and returns their size. On a
    /// mismatch the upload file is left for the caller to cancel.
    pub async fn upload_verify(&self, id: &str, expected: &Digest, hasher: Hasher) -> Result<u64> {
        let path = self.upload_path(id);
        let expected = expected.clone();
        let upload_id = id.to_owned();
        tokio::task::spawn_blocking(move || -> Result<u64> {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StorageError::UploadUnknown(upload_id));
                }
                Err(e) => return Err(e.into()),
            };
            let size = file.metadata()?.len();
            let actual = if hasher.algorithm() == expected.algorithm() {
                hasher.finish()
            } else {
                hash_file(&file, Hasher::new(expected.algorithm()))?
            };
            if actual != expected {
                return Err(StorageError::DigestMismatch { expected, actual });
            }
            Ok(size)
        })
        .await
        .map_err(join_error)?
    }

    /// Publishes a verified upload under its digest: fsync, rename, fsync of
    /// the directory. If the blob is already stored, the upload file just
    /// goes away.
    pub async fn upload_publish(&self, id: &str, digest: &Digest) -> Result<()> {
        let path = self.upload_path(id);
        let dest = self.blob_path(digest);
        let upload_id = id.to_owned();
        tokio::task::spawn_blocking(move || -> Result<()> {
            if dest.exists() {
                return match fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        Err(StorageError::UploadUnknown(upload_id))
                    }
                    Err(e) => Err(e.into()),
                };
            }
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StorageError::UploadUnknown(upload_id));
                }
                Err(e) => return Err(e.into()),
            };
            file.sync_all()?;
            drop(file);
            publish_file(&path, &dest)
        })
        .await
        .map_err(join_error)?
    }

    pub async fn upload_abort(&self, id: &str) -> Result<()> {
        match tokio::fs::remove_file(self.upload_path(id)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Upload files present on disk and when each was last written (for
    /// cleaning up after crashes).
    pub async fn upload_files(&self) -> Result<Vec<(String, SystemTime)>> {
        let dir = self.root.join("uploads");
        tokio::task::spawn_blocking(move || -> Result<Vec<(String, SystemTime)>> {
            let mut files = Vec::new();
            for entry in fs::read_dir(dir)? {
                let entry = entry?;
                let modified = entry.metadata()?.modified()?;
                if let Some(name) = entry.file_name().to_str() {
                    files.push((name.to_owned(), modified));
                }
            }
            Ok(files)
        })
        .await
        .map_err(join_error)?
    }
}

/// Hands the body to every consumer in chunks of about [`CHUNK`] bytes.
async fn feed<S>(body: S, to: &[&mpsc::Sender<Bytes>], offset: u64, max_size: u64) -> Result<()>
where
    S: Stream<Item = Result<Bytes>> + Send,
{
    async fn send(to: &[&mpsc::Sender<Bytes>], chunk: Bytes) -> bool {
        for tx in to {
            if tx.send(chunk.clone()).await.is_err() {
                return false; // a consumer failed; its error is reported
            }
        }
        true
    }
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::with_capacity(CHUNK);
    let mut size = offset;
    while let Some(frame) = body.next().await {
        let frame = frame?;
        size += frame.len() as u64;
        if size > max_size {
            return Err(StorageError::TooLarge(format!(
                "the upload would grow to more than {max_size} bytes"
            )));
        }
        if buf.is_empty() && frame.len() >= CHUNK {
            if !send(to, frame).await {
                return Ok(());
            }
            continue;
        }
        buf.extend_from_slice(&frame);
        if buf.len() >= CHUNK {
            let chunk = std::mem::replace(&mut buf, BytesMut::with_capacity(CHUNK)).freeze();
            if !send(to, chunk).await {
                return Ok(());
            }
        }
    }
    if !buf.is_empty() {
        send(to, buf.freeze()).await;
    }
    Ok(())
}

fn hash_file(mut file: &File, mut hasher: Hasher) -> Result<Digest> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

/// The blocking part of [`FsBlobStore::put_many`].
fn put_many_blocking(root: &Path, jobs: Vec<(Digest, Bytes, PathBuf, PathBuf)>) -> Vec<Result<()>> {
    let mut out: Vec<Result<()>> = Vec::with_capacity(jobs.len());
    // (index in out, tmp, dest) of the files written.
    let mut staged: Vec<(usize, PathBuf, PathBuf)> = Vec::new();
    for (i, (d, bytes, tmp, dest)) in jobs.into_iter().enumerate() {
        let actual = Digest::of(d.algorithm(), &bytes);
        if actual != d {
            out.push(Err(StorageError::DigestMismatch {
                expected: d,
                actual,
            }));
            continue;
        }
        if dest.exists() {
            out.push(Ok(()));
            continue;
        }
        let written = File::create(&tmp).and_then(|mut f| f.write_all(&bytes));
        match written {
            Ok(()) => {
                out.push(Ok(()));
                staged.push((i, tmp, dest));
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                out.push(Err(e.into()));
            }
        }
    }
    if staged.is_empty() {
        return out;
    }
    let fail_all =
        |out: &mut Vec<Result<()>>, staged: &[(usize, PathBuf, PathBuf)], e: &io::Error| {
            for (i, tmp, _) in staged {
                let _ = fs::remove_file(tmp);
                out[*i] = Err(StorageError::Io(io::Error::new(e.kind(), e.to_string())));
            }
        };
    if let Err(e) = syncfs(root) {
        fail_all(&mut out, &staged, &e);
        return out;
    }
    let mut renamed = Vec::with_capacity(staged.len());
    for (i, tmp, dest) in staged {
        let moved = dest
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::rename(&tmp, &dest));
        match moved {
            Ok(()) => renamed.push((i, tmp, dest)),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                out[i] = Err(e.into());
            }
        }
    }
    if let Err(e) = syncfs(root) {
        // The bytes are on disk, but whether the names are is not known:
        // the blobs are reported as not stored (the caller writes no row
        // that needs them).
        fail_all(&mut out, &renamed, &e);
    }
    out
}

/// Flushes the filesystem that holds `path` (its data and its metadata).
fn syncfs(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = File::open(path)?;
    // SAFETY: `dir` is an open file descriptor for the duration of the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Renames a fully written, synced file into its content address and syncs
/// the directory so the rename itself survives a crash.
fn publish_file(from: &Path, to: &Path) -> Result<()> {
    let dir = to.parent().expect("blob paths have a parent");
    fs::create_dir_all(dir)?;
    fs::rename(from, to)?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn stream_file(mut file: File, mut remaining: u64) -> BlobStream {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(2);
    tokio::task::spawn_blocking(move || {
        while remaining > 0 {
            let n = remaining.min(CHUNK as u64) as usize;
            let mut buf = BytesMut::zeroed(n);
            let result = file.read_exact(&mut buf).map(|()| buf.freeze());
            let failed = result.is_err();
            if tx.blocking_send(result).is_err() || failed {
                return;
            }
            remaining -= n as u64;
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}

fn join_error(e: tokio::task::JoinError) -> StorageError {
    StorageError::Io(io::Error::other(format!("a blocking task failed: {e}")))
}
