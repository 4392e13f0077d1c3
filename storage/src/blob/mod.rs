//! The content-addressed blob store.
//!
//! Backends: the local filesystem (the default). Every backend keeps the same
//! invariant: a blob is readable under its digest only after its bytes were
//! hashed and found equal to that digest.

pub mod fs;

use std::ops::Range;

use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;

use crate::digest::{Digest, Hasher};
use crate::error::Result;

/// Unit of reads and writes between the network and the disk.
pub const CHUNK: usize = 1 << 20;

/// A blob's bytes, in order.
pub type BlobStream = BoxStream<'static, std::io::Result<Bytes>>;

#[derive(Debug, Clone)]
pub enum BlobStore {
    Fs(fs::FsBlobStore),
}

impl BlobStore {
    pub async fn stat(&self, d: &Digest) -> Result<Option<u64>> {
        match self {
            BlobStore::Fs(s) => s.stat(d).await,
        }
    }

    pub async fn read(&self, d: &Digest, range: Option<Range<u64>>) -> Result<BlobStream> {
        match self {
            BlobStore::Fs(s) => s.read(d, range).await,
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

    /// Stores `bytes` under `d` after checking that they hash to it.
    pub async fn put(&self, d: &Digest, bytes: Bytes) -> Result<()> {
        match self {
            BlobStore::Fs(s) => s.put(d, bytes).await,
        }
    }

    pub async fn delete(&self, d: &Digest) -> Result<()> {
        match self {
            BlobStore::Fs(s) => s.delete(d).await,
        }
    }

    pub async fn upload_create(&self, id: &str) -> Result<()> {
        match self {
            BlobStore::Fs(s) => s.upload_create(id).await,
        }
    }

    /// Appends `body` to upload `id` (which holds `offset` verified bytes)
    /// while hashing it; refuses to grow the upload beyond `max_size`.
    pub async fn upload_append<S>(
        &self,
        id: &str,
        offset: u64,
        hasher: Hasher,
        body: S,
        max_size: u64,
    ) -> Result<(u64, Hasher)>
    where
        S: Stream<Item = Result<Bytes>> + Send,
    {
        match self {
            BlobStore::Fs(s) => s.upload_append(id, offset, hasher, body, max_size).await,
        }
    }

    /// Checks an upload against its digest; returns its size.
    pub async fn upload_verify(&self, id: &str, expected: &Digest, hasher: Hasher) -> Result<u64> {
        match self {
            BlobStore::Fs(s) => s.upload_verify(id, expected, hasher).await,
        }
    }

    /// Publishes a verified upload under its digest (once per digest).
    pub async fn upload_publish(&self, id: &str, digest: &Digest) -> Result<()> {
        match self {
            BlobStore::Fs(s) => s.upload_publish(id, digest).await,
        }
    }

    pub async fn upload_abort(&self, id: &str) -> Result<()> {
        match self {
            BlobStore::Fs(s) => s.upload_abort(id).await,
        }
    }

    pub async fn upload_files(&self) -> Result<Vec<(String, std::time::SystemTime)>> {
        match self {
            BlobStore::Fs(s) => s.upload_files().await,
        }
    }
}
