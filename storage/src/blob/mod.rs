//! The content-addressed blob store.
//!
//! Backends: the local filesystem (the default) and S3-compatible object
//! stores. Every backend keeps the same
//! invariant: a blob is readable under its digest only after its bytes were
//! hashed and found equal to that digest.

pub mod fs;
pub mod s3;

use std::ops::Range;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::digest::{Digest, Hasher};
use crate::error::Result;

/// Unit of reads and writes between the network and the disk.
pub const CHUNK: usize = 1 << 20;

/// A blob's bytes, in order.
pub type BlobStream = BoxStream<'static, std::io::Result<Bytes>>;

/// What a backend needs to remember about an upload between requests (S3:
/// its multipart upload, parts and tail; the filesystem: nothing). Opaque
/// to callers, who keep it with the upload's record.
pub type UploadState = Vec<u8>;

/// A blob in the store, as a listing shows it.
#[derive(Debug, Clone)]
pub struct StoredBlob {
    pub digest: Digest,
    pub size: u64,
    pub modified: std::time::SystemTime,
}

#[derive(Debug, Clone)]
pub enum BlobStore {
    Fs(fs::FsBlobStore),
    S3(s3::S3BlobStore),
}

impl BlobStore {
    pub async fn stat(&self, d: &Digest) -> Result<Option<u64>> {
        match self {
            BlobStore::Fs(s) => s.stat(d).await,
            BlobStore::S3(s) => s.stat(d).await,
        }
    }

    pub async fn read(&self, d: &Digest, range: Option<Range<u64>>) -> Result<BlobStream> {
        match self {
            BlobStore::Fs(s) => s.read(d, range).await,
            BlobStore::S3(s) => s.read(d, range).await,
        }
    }

    /// Reads a whole (small) blob into memory.
    pub async fn read_all(&self, d: &Digest) -> Result<Bytes> {
        use futures::TryStreamExt;
        let parts: Vec<Bytes> = self.read(d, None).await?.try_collect().await?;
        Ok(match parts.len() {
            0 => Bytes::new(),
            1 => parts.into_iter().next().expect("one part"),
            _ => Bytes::from(parts.concat()),
        })
    }

    /// A URL a client may GET the blob from directly, when the backend can
    /// give one (S3: presigned, valid for `ttl`).
    pub async fn direct_url(&self, d: &Digest, ttl: std::time::Duration) -> Result<Option<String>> {
        match self {
            BlobStore::Fs(_) => Ok(None),
            BlobStore::S3(s) => s.presign(d, ttl).await.map(Some),
        }
    }

    /// Stores `bytes` under `d` after checking that they hash to it.
    pub async fn put(&self, d: &Digest, bytes: Bytes) -> Result<()> {
        match self {
            BlobStore::Fs(s) => s.put(d, bytes).await,
            BlobStore::S3(s) => s.put(d, bytes).await,
        }
    }

    /// Stores many small blobs, each as [`BlobStore::put`] would; one result
    /// per blob, in order. The filesystem makes them durable together (two
    /// flushes in all); S3 gets up to `concurrency` of them at once.
    pub async fn put_many(
        &self,
        blobs: Vec<(Digest, Bytes)>,
        concurrency: usize,
    ) -> Vec<Result<()>> {
        match self {
            BlobStore::Fs(s) => s.put_many(blobs).await,
            BlobStore::S3(s) => {
                futures::stream::iter(blobs)
                    .map(|(d, bytes)| async move { s.put(&d, bytes).await })
                    .buffered(concurrency.max(1))
                    .collect()
                    .await
            }
        }
    }

    pub async fn delete(&self, d: &Digest) -> Result<()> {
        match self {
            BlobStore::Fs(s) => s.delete(d).await,
            BlobStore::S3(s) => s.delete(d).await,
        }
    }

    /// Every published blob, its size and when it was written: one listing
    /// (on S3, a thousand blobs a request), not a request per blob.
    pub async fn blobs_stored(&self) -> Result<Vec<StoredBlob>> {
        match self {
            BlobStore::Fs(s) => s.blobs_stored().await,
            BlobStore::S3(s) => s.blobs_stored().await,
        }
    }

    /// Moves a damaged blob's bytes out of the published space (a no-op
    /// when they are already gone).
    pub async fn quarantine(&self, d: &Digest) -> Result<()> {
        match self {
            BlobStore::Fs(s) => s.quarantine(d).await,
            BlobStore::S3(s) => s.quarantine(d).await,
        }
    }

    pub async fn upload_create(&self, id: &str) -> Result<UploadState> {
        match self {
            BlobStore::Fs(s) => s.upload_create(id).await.map(|()| Vec::new()),
            BlobStore::S3(s) => Ok(s.upload_create()),
        }
    }

    /// Appends `body` to upload `id` (which holds `offset` verified bytes)
    /// while hashing it; refuses to grow the upload beyond `max_size`.
    /// Returns the new size, hash and state.
    pub async fn upload_append<S>(
        &self,
        id: &str,
        offset: u64,
        hasher: Hasher,
        state: &[u8],
        body: S,
        max_size: u64,
    ) -> Result<(u64, Hasher, UploadState)>
    where
        S: Stream<Item = Result<Bytes>> + Send,
    {
        match self {
            BlobStore::Fs(s) => {
                let (size, hasher) = s.upload_append(id, offset, hasher, body, max_size).await?;
                Ok((size, hasher, state.to_vec()))
            }
            BlobStore::S3(s) => {
                s.upload_append(id, offset, hasher, state, body, max_size)
                    .await
            }
        }
    }

    /// Checks an upload against its digest; returns its size and state.
    pub async fn upload_verify(
        &self,
        id: &str,
        expected: &Digest,
        hasher: Hasher,
        state: &[u8],
    ) -> Result<(u64, UploadState)> {
        match self {
            BlobStore::Fs(s) => Ok((s.upload_verify(id, expected, hasher).await?, state.to_vec())),
            BlobStore::S3(s) => s.upload_verify(id, expected, hasher, state).await,
        }
    }

    /// Publishes a verified upload under its digest (once per digest) and
    /// removes the upload's own data.
    pub async fn upload_publish(&self, id: &str, digest: &Digest, state: &[u8]) -> Result<()> {
        match self {
            BlobStore::Fs(s) => s.upload_publish(id, digest).await,
            BlobStore::S3(s) => s.upload_publish(id, digest, state).await,
        }
    }

    /// Removes an upload's data.
    pub async fn upload_abort(&self, id: &str, state: &[u8]) -> Result<()> {
        match self {
            BlobStore::Fs(s) => s.upload_abort(id).await,
            BlobStore::S3(s) => s.upload_abort(id, state).await,
        }
    }

    /// Uploads with data in the store, and when each was last written.
    pub async fn upload_files(&self) -> Result<Vec<(String, std::time::SystemTime)>> {
        match self {
            BlobStore::Fs(s) => s.upload_files().await,
            BlobStore::S3(s) => s.upload_files().await,
        }
    }
}

/// `stream` (a whole blob's bytes, as read from a store) hashed as it
/// goes, for serving: the last chunk is held back until every byte has
/// been hashed, and given out only if the bytes are `digest` and `size`
/// long; otherwise the stream ends with an error instead, so a client never
/// receives a complete response of damaged bytes. `on_damage` is called
/// once with a sentence when that happens.
pub fn verified(
    stream: BlobStream,
    digest: Digest,
    size: u64,
    on_damage: impl FnOnce(String) + Send + 'static,
) -> BlobStream {
    struct State {
        inner: BlobStream,
        hasher: Option<Hasher>,
        held: Option<Bytes>,
        seen: u64,
        digest: Digest,
        size: u64,
        on_damage: Option<Box<dyn FnOnce(String) + Send>>,
    }
    let state = State {
        hasher: Some(Hasher::new(digest.algorithm())),
        inner: stream,
        held: None,
        seen: 0,
        digest,
        size,
        on_damage: Some(Box::new(on_damage)),
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            // Ended (verified, damaged or failed): the inner stream is
            // never polled again after it ended.
            s.hasher.as_ref()?;
            match s.inner.next().await {
                Some(Ok(chunk)) => {
                    s.seen += chunk.len() as u64;
                    if let Some(h) = s.hasher.as_mut() {
                        h.update(&chunk);
                    }
                    if let Some(prev) = s.held.replace(chunk) {
                        return Some((Ok(prev), s));
                    }
                }
                Some(Err(e)) => {
                    s.held = None;
                    s.hasher = None;
                    return Some((Err(e), s));
                }
                None => {
                    let hasher = s.hasher.take()?;
                    let actual = hasher.finish();
                    if actual == s.digest && s.seen == s.size {
                        return s.held.take().map(|last| (Ok(last), s));
                    }
                    let sentence = format!(
                        "blob {} is damaged in the store: its {} bytes hash to {actual} \
                         ({} bytes recorded)",
                        s.digest, s.seen, s.size
                    );
                    if let Some(f) = s.on_damage.take() {
                        f(sentence.clone());
                    }
                    s.held = None;
                    return Some((Err(std::io::Error::other(sentence)), s));
                }
            }
        }
    })
    // Polled after its end (HTTP/2 bodies are), it keeps saying so.
    .fuse()
    .boxed()
}

#[cfg(test)]
mod verified_tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> BlobStream {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
        .boxed()
    }

    /// A stream that panics when polled after its end, as `unfold` does
    /// (the filesystem store's reads, hyper polling an HTTP/2 body to its
    /// end).
    fn strict(parts: &[&'static [u8]]) -> BlobStream {
        let parts: Vec<Bytes> = parts.iter().map(|p| Bytes::from_static(p)).collect();
        futures::stream::unfold(parts.into_iter(), |mut it| async move {
            it.next().map(|b| (Ok(b), it))
        })
        .boxed()
    }

    #[tokio::test]
    async fn the_inner_stream_is_never_polled_after_its_end() {
        let d = Digest::sha256_of(b"hello world");
        for parts in [&[b"hello world" as &[u8]][..], &[b"hello ", b"world"]] {
            let mut v = verified(strict(parts), d.clone(), 11, |_| panic!("not damaged"));
            let mut got = Vec::new();
            while let Some(c) = v.next().await {
                got.extend_from_slice(&c.unwrap());
            }
            assert_eq!(got, b"hello world");
            // Polled again after its end, as HTTP/2 bodies are.
            assert!(v.next().await.is_none());
            assert!(v.next().await.is_none());
        }
        let mut bad = verified(strict(&[b"hello ", b"w0rld"]), d, 11, |_| {});
        while bad.next().await.is_some() {}
        assert!(bad.next().await.is_none());
    }

    #[tokio::test]
    async fn good_bytes_pass_whole_and_damaged_ones_never_complete() {
        let d = Digest::sha256_of(b"hello world");
        let out: Vec<_> = verified(chunks(&[b"hello ", b"world"]), d.clone(), 11, |_| {
            panic!("not damaged")
        })
        .collect()
        .await;
        let bytes: Vec<u8> = out.into_iter().flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(bytes, b"hello world");

        let (tx, rx) = std::sync::mpsc::channel();
        let out: Vec<_> = verified(chunks(&[b"hello ", b"w0rld"]), d, 11, move |s| {
            tx.send(s).unwrap()
        })
        .collect()
        .await;
        // The first chunk went out; the last was held back and replaced by
        // an error.
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].as_ref().unwrap().as_ref(), b"hello ");
        assert!(out[1].is_err());
        assert!(rx.recv().unwrap().contains("is damaged in the store"));
    }
}
