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

    /// Starts upload `id`; returns its initial state.
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
