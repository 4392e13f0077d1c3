//! Blobs in an S3-compatible object store (AWS, Ceph RGW, SeaweedFS, MinIO)
//! through aws-sdk-s3.
//!
//! Keys under the configured prefix:
//! ```text
//! blobs/<algorithm>/<hex>        published, content-addressed, immutable
//! uploads/<id>/data              the multipart upload of an upload in progress
//! uploads/<id>/tail-<uuid>       bytes received after the last full part
//! ```
//! An upload is an S3 multipart upload. Clients send chunks of any size;
//! parts must be at least 5 MiB (but the last), so bytes are cut into parts
//! of `part_size` and what is left after a request waits in a small *tail*
//! object until the next one. Where the upload stands (multipart id, parts
//! and their ETags, tail) is [`S3Upload`], kept by the caller with the
//! upload's record: any replica can take the next chunk. A blob is copied to
//! its content address only after its digest was checked; before that,
//! nothing is visible under `blobs/`.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::BlobStream;
use crate::digest::{Digest, Hasher};
use crate::error::{Result, StorageError};

/// The part size when none is configured.
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// S3's smallest part (but the last).
const MIN_PART_SIZE: usize = 5 << 20;
/// CopyObject copies at most this much; larger blobs copy in parts.
const MAX_SINGLE_COPY: u64 = 5 << 30;

#[derive(Debug, Clone)]
pub struct S3Options {
    pub bucket: String,
    /// Prepended to every key (empty, or ending with `/`).
    pub prefix: String,
    pub part_size: usize,
}

/// How to reach the object store.
#[derive(Clone, Default)]
pub struct S3Connection {
    /// Empty: AWS's endpoint for the region.
    pub endpoint: String,
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// self-hosted stores need.
    pub path_style: bool,
    /// Static credentials; both empty: the default provider chain
    /// (environment, profile, instance metadata).
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for S3Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Connection")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct S3BlobStore {
    client: Client,
    bucket: String,
    prefix: String,
    part_size: usize,
}

impl std::fmt::Debug for S3BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "S3BlobStore(bucket={}, prefix={})",
            self.bucket, self.prefix
        )
    }
}

/// Where an upload stands, between requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct S3Upload {
    /// The multipart upload's id; empty until the first full part.
    pub multipart: String,
    pub parts: Vec<Part>,
    /// The tail object (its key's last part), when bytes wait after the
    /// last part. Every request writes a tail of its own: a request that
    /// died, or lost a race, never overwrites the tail a recorded state
    /// points to.
    pub tail: Option<String>,
    pub tail_len: u64,
    /// The multipart upload was completed into `uploads/<id>/data` (to read
    /// the bytes back for another digest algorithm).
    #[serde(default)]
    pub completed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Part {
    pub number: i32,
    pub etag: String,
    pub size: u64,
}

impl S3Upload {
    fn size(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum::<u64>() + self.tail_len
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("upload state serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<S3Upload> {
        if bytes.is_empty() {
            return Ok(S3Upload::default());
        }
        serde_json::from_slice(bytes)
            .map_err(|e| StorageError::Corrupt(format!("the upload's S3 state is unreadable: {e}")))
    }
}

/// Maps an SDK failure: unreachable or failing service → `Unavailable`.
fn failed<E: ProvideErrorMetadata + std::error::Error + 'static>(
    what: &str,
    e: SdkError<E>,
) -> StorageError {
    match &e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or("unknown");
            if status >= 500 {
                StorageError::Unavailable(format!("S3 {what} failed: {status} {code}"))
            } else {
                StorageError::Io(std::io::Error::other(format!(
                    "S3 {what} failed: {status} {code}"
                )))
            }
        }
        _ => StorageError::Unavailable(format!("S3 {what} failed: {}", describe(&e))),
    }
}

fn describe<E: std::error::Error + 'static>(e: &SdkError<E>) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn not_found<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    matches!(e, SdkError::ServiceError(s) if s.raw().status().as_u16() == 404)
}

impl S3BlobStore {
    /// Builds a client for `conn` (nothing is contacted yet).
    pub async fn connect(conn: &S3Connection, opts: S3Options) -> S3BlobStore {
        use aws_config::BehaviorVersion;
        use aws_sdk_s3::config::{Credentials, Region};
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(if conn.region.is_empty() {
                "us-east-1".to_owned()
            } else {
                conn.region.clone()
            }))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .build(),
            );
        if !conn.access_key.is_empty() || !conn.secret_key.is_empty() {
            loader = loader.credentials_provider(Credentials::new(
                conn.access_key.clone(),
                conn.secret_key.clone(),
                None,
                None,
                "slipway-configuration",
            ));
        }
        if !conn.endpoint.is_empty() {
            loader = loader.endpoint_url(&conn.endpoint);
        }
        let sdk = loader.load().await;
        let config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(conn.path_style)
            .build();
        S3BlobStore::new(Client::from_conf(config), opts)
    }

    pub fn new(client: Client, opts: S3Options) -> S3BlobStore {
        let prefix = if opts.prefix.is_empty() || opts.prefix.ends_with('/') {
            opts.prefix
        } else {
            format!("{}/", opts.prefix)
        };
        S3BlobStore {
            client,
            bucket: opts.bucket,
            prefix,
            part_size: opts.part_size.max(MIN_PART_SIZE),
        }
    }

    fn blob_key(&self, d: &Digest) -> String {
        format!(
            "{}blobs/{}/{}",
            self.prefix,
            d.algorithm().as_str(),
            d.hex()
        )
    }

    fn upload_prefix(&self, id: &str) -> String {
        format!("{}uploads/{id}/", self.prefix)
    }

    fn data_key(&self, id: &str) -> String {
        format!("{}data", self.upload_prefix(id))
    }

    fn tail_key(&self, id: &str, name: &str) -> String {
        format!("{}{name}", self.upload_prefix(id))
    }

    /// Creates the bucket if it does not exist (for first starts and tests).
    pub async fn ensure_bucket(&self) -> Result<()> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => {
                self.client
                    .create_bucket()
                    .bucket(&self.bucket)
                    .send()
                    .await
                    .map_err(|e| failed("CreateBucket", e))?;
                Ok(())
            }
            Err(e) => Err(failed("HeadBucket", e)),
        }
    }

    pub async fn stat(&self, d: &Digest) -> Result<Option<u64>> {
        self.head(&self.blob_key(d)).await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(failed("HeadObject", e)),
        }
    }

    pub async fn read(&self, d: &Digest, range: Option<Range<u64>>) -> Result<BlobStream> {
        self.read_key(&self.blob_key(d), d, range).await
    }

    async fn read_key(
        &self,
        key: &str,
        d: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobStream> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some(r) = &range {
            if r.start == r.end {
                return Ok(futures::stream::empty().boxed());
            }
            req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) if not_found(&e) => return Err(StorageError::BlobUnknown(d.clone())),
            Err(e) => return Err(failed("GetObject", e)),
        };
        let body = out.body;
        Ok(futures::stream::unfold(body, |mut body| async move {
            match body.next().await {
                Some(Ok(b)) => Some((Ok(b), body)),
                Some(Err(e)) => Some((
                    Err(std::io::Error::other(format!(
                        "reading from S3 failed: {e}"
                    ))),
                    body,
                )),
                None => None,
            }
        })
        .boxed())
    }

    /// A URL that lets a client GET the blob directly, valid for `ttl`.
    pub async fn presign(&self, d: &Digest, ttl: Duration) -> Result<String> {
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl)
            .map_err(|e| StorageError::Io(std::io::Error::other(format!("presigning: {e}"))))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.blob_key(d))
            .presigned(config)
            .await
            .map_err(|e| failed("presign GetObject", e))?;
        Ok(req.uri().to_string())
    }

    pub async fn put(&self, d: &Digest, bytes: Bytes) -> Result<()> {
        let actual = Digest::of(d.algorithm(), &bytes);
        if &actual != d {
            return Err(StorageError::DigestMismatch {
                expected: d.clone(),
                actual,
            });
        }
        if self.stat(d).await?.is_some() {
            return Ok(());
        }
        self.put_key(&self.blob_key(d), bytes).await
    }

    async fn put_key(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| failed("PutObject", e))?;
        Ok(())
    }

    pub async fn delete(&self, d: &Digest) -> Result<()> {
        self.delete_key(&self.blob_key(d)).await
    }

    /// Every published blob and when it was written (for fsck).
    pub async fn blobs_stored(&self) -> Result<Vec<super::StoredBlob>> {
        let base = format!("{}blobs/", self.prefix);
        Ok(self
            .list_sized(&base)
            .await?
            .into_iter()
            .filter_map(|(key, modified, size)| {
                let (alg, hex) = key[base.len()..].split_once('/')?;
                Some(super::StoredBlob {
                    digest: format!("{alg}:{hex}").parse().ok()?,
                    size,
                    modified,
                })
            })
            .collect())
    }

    /// Moves a damaged blob's bytes out of the way, to
    /// `<prefix>quarantine/<algorithm>/<hex>`, for inspection.
    pub async fn quarantine(&self, d: &Digest) -> Result<()> {
        let from = self.blob_key(d);
        let to = format!(
            "{}quarantine/{}/{}",
            self.prefix,
            d.algorithm().as_str(),
            d.hex()
        );
        match self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .copy_source(format!("{}/{from}", self.bucket))
            .key(&to)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if not_found(&e) => return Ok(()),
            Err(e) => return Err(failed("CopyObject", e)),
        }
        self.delete_key(&from).await
    }

    async fn delete_key(&self, key: &str) -> Result<()> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(failed("DeleteObject", e)),
        }
    }

    async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| failed("GetObject", e))?;
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| StorageError::Unavailable(format!("reading from S3 failed: {e}")))?;
        Ok(data.into_bytes())
    }

    pub fn upload_create(&self) -> Vec<u8> {
        S3Upload::default().encode()
    }

    async fn start_multipart(&self, id: &str) -> Result<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(self.data_key(id))
            .send()
            .await
            .map_err(|e| failed("CreateMultipartUpload", e))?;
        out.upload_id()
            .map(str::to_owned)
            .ok_or_else(|| StorageError::Unavailable("S3 returned no multipart upload id".into()))
    }

    async fn upload_part(&self, id: &str, state: &mut S3Upload, bytes: Bytes) -> Result<()> {
        if state.multipart.is_empty() {
            state.multipart = self.start_multipart(id).await?;
        }
        let number = state.parts.len() as i32 + 1;
        let size = bytes.len() as u64;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(self.data_key(id))
            .upload_id(&state.multipart)
            .part_number(number)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| failed("UploadPart", e))?;
        let etag = out.e_tag().unwrap_or_default().to_owned();
        state.parts.push(Part { number, etag, size });
        Ok(())
    }

    /// Appends `body` to the upload: full parts go to the multipart upload,
    /// the rest to a new tail object. Returns the new size, hash and state.
    pub async fn upload_append<S>(
        &self,
        id: &str,
        offset: u64,
        mut hasher: Hasher,
        state: &[u8],
        body: S,
        max_size: u64,
    ) -> Result<(u64, Hasher, Vec<u8>)>
    where
        S: Stream<Item = Result<Bytes>> + Send,
    {
        let mut st = S3Upload::decode(state)?;
        if st.completed {
            return Err(StorageError::Corrupt(format!(
                "upload {id} was already completed"
            )));
        }
        if st.size() != offset {
            return Err(StorageError::Corrupt(format!(
                "upload {id} holds {} bytes in S3 but {offset} were recorded",
                st.size()
            )));
        }
        let mut buf = BytesMut::with_capacity(self.part_size);
        if let Some(t) = &st.tail {
            buf.extend_from_slice(&self.get_bytes(&self.tail_key(id, t)).await?);
        }
        let mut size = offset;
        let mut body = std::pin::pin!(body);
        // New bytes are hashed in batches of about a megabyte, off the
        // async threads.
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batched = 0usize;
        while let Some(frame) = body.next().await {
            let frame = frame?;
            size += frame.len() as u64;
            if size > max_size {
                return Err(StorageError::TooLarge(format!(
                    "the upload would grow to more than {max_size} bytes"
                )));
            }
            batched += frame.len();
            buf.extend_from_slice(&frame);
            batch.push(frame);
            if batched >= super::CHUNK {
                hasher = hash_on_blocking_thread(hasher, std::mem::take(&mut batch)).await?;
                batched = 0;
            }
            while buf.len() >= self.part_size {
                let part = buf.split_to(self.part_size).freeze();
                self.upload_part(id, &mut st, part).await?;
                st.tail = None;
                st.tail_len = 0;
            }
        }
        hasher = hash_on_blocking_thread(hasher, batch).await?;
        // What is left waits in a new tail object; the recorded state keeps
        // pointing at the tail it describes until the new one is recorded.
        let parts_size: u64 = st.parts.iter().map(|p| p.size).sum();
        if buf.is_empty() {
            st.tail = None;
            st.tail_len = 0;
        } else if st.tail.is_none() || st.tail_len != buf.len() as u64 {
            let name = format!("tail-{}", uuid::Uuid::new_v4().simple());
            self.put_key(&self.tail_key(id, &name), buf.freeze())
                .await?;
            st.tail_len = size - parts_size;
            st.tail = Some(name);
        }
        debug_assert_eq!(st.size(), size);
        Ok((size, hasher, st.encode()))
    }

    /// Checks the upload against `expected`; with a hash of another
    /// algorithm, the bytes are read back from S3 (completing the upload).
    pub async fn upload_verify(
        &self,
        id: &str,
        expected: &Digest,
        hasher: Hasher,
        state: &[u8],
    ) -> Result<(u64, Vec<u8>)> {
        let mut st = S3Upload::decode(state)?;
        let size = st.size();
        let actual = if hasher.algorithm() == expected.algorithm() {
            hasher.finish()
        } else {
            self.complete(id, &mut st).await?;
            let mut h = Hasher::new(expected.algorithm());
            let mut stream = self.read_key(&self.data_key(id), expected, None).await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                h = hash_on_blocking_thread(h, vec![chunk]).await?;
            }
            h.finish()
        };
        if &actual != expected {
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        Ok((size, st.encode()))
    }

    /// Finishes the multipart upload into `uploads/<id>/data` (the tail as
    /// its last part).
    async fn complete(&self, id: &str, st: &mut S3Upload) -> Result<()> {
        if st.completed {
            return Ok(());
        }
        if let Some(t) = st.tail.clone() {
            let tail = self.get_bytes(&self.tail_key(id, &t)).await?;
            self.upload_part(id, st, tail).await?;
            st.tail = None;
            st.tail_len = 0;
        }
        if st.parts.is_empty() {
            self.put_key(&self.data_key(id), Bytes::new()).await?;
        } else {
            let parts = st
                .parts
                .iter()
                .map(|p| {
                    CompletedPart::builder()
                        .part_number(p.number)
                        .e_tag(&p.etag)
                        .build()
                })
                .collect();
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(self.data_key(id))
                .upload_id(&st.multipart)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| failed("CompleteMultipartUpload", e))?;
        }
        st.completed = true;
        Ok(())
    }

    /// Publishes a verified upload under its digest, once, and removes the
    /// upload's objects.
    pub async fn upload_publish(&self, id: &str, digest: &Digest, state: &[u8]) -> Result<()> {
        let mut st = S3Upload::decode(state)?;
        let dest = self.blob_key(digest);
        if self.head(&dest).await?.is_none() {
            if !st.completed && st.parts.is_empty() {
                // Small: the whole blob is the tail (or nothing).
                let bytes = match &st.tail {
                    Some(t) => self.get_bytes(&self.tail_key(id, t)).await?,
                    None => Bytes::new(),
                };
                self.put_key(&dest, bytes).await?;
            } else {
                self.complete(id, &mut st).await?;
                self.copy(&self.data_key(id), &dest, st.size()).await?;
            }
        }
        self.upload_abort(id, &st.encode()).await
    }

    async fn copy(&self, from: &str, to: &str, size: u64) -> Result<()> {
        let source = format!("{}/{}", self.bucket, from);
        if size <= MAX_SINGLE_COPY {
            self.client
                .copy_object()
                .bucket(&self.bucket)
                .key(to)
                .copy_source(source)
                .send()
                .await
                .map_err(|e| failed("CopyObject", e))?;
            return Ok(());
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(to)
            .send()
            .await
            .map_err(|e| failed("CreateMultipartUpload", e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();
        let step = 1u64 << 30;
        let mut parts = Vec::new();
        let mut start = 0;
        let mut number = 1;
        while start < size {
            let end = (start + step).min(size) - 1;
            let out = self
                .client
                .upload_part_copy()
                .bucket(&self.bucket)
                .key(to)
                .upload_id(&upload_id)
                .part_number(number)
                .copy_source(&source)
                .copy_source_range(format!("bytes={start}-{end}"))
                .send()
                .await
                .map_err(|e| failed("UploadPartCopy", e))?;
            let etag = out
                .copy_part_result()
                .and_then(|r| r.e_tag())
                .unwrap_or_default()
                .to_owned();
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .e_tag(etag)
                    .build(),
            );
            start = end + 1;
            number += 1;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(to)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| failed("CompleteMultipartUpload", e))?;
        Ok(())
    }

    /// Cancels the multipart upload and removes every object of the upload.
    pub async fn upload_abort(&self, id: &str, state: &[u8]) -> Result<()> {
        if let Ok(st) = S3Upload::decode(state)
            && !st.multipart.is_empty()
            && !st.completed
        {
            match self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(self.data_key(id))
                .upload_id(&st.multipart)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(failed("AbortMultipartUpload", e)),
            }
        }
        for (key, _) in self.list(&self.upload_prefix(id)).await? {
            self.delete_key(&key).await?;
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, SystemTime)>> {
        Ok(self
            .list_sized(prefix)
            .await?
            .into_iter()
            .map(|(key, modified, _)| (key, modified))
            .collect())
    }

    /// Every object under `prefix`: its key, when it was last written, and
    /// its size.
    async fn list_sized(&self, prefix: &str) -> Result<Vec<(String, SystemTime, u64)>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let resp = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| failed("ListObjectsV2", e))?;
            for o in resp.contents() {
                if let Some(key) = o.key() {
                    let modified = o
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    let size = o.size().unwrap_or(0).max(0) as u64;
                    out.push((key.to_owned(), modified, size));
                }
            }
            if resp.is_truncated() == Some(true) {
                token = resp.next_continuation_token().map(str::to_owned);
            } else {
                return Ok(out);
            }
        }
    }

    /// Uploads with objects in the store, and when each was last written.
    pub async fn upload_files(&self) -> Result<Vec<(String, SystemTime)>> {
        let base = format!("{}uploads/", self.prefix);
        let mut latest: std::collections::BTreeMap<String, SystemTime> = Default::default();
        for (key, modified) in self.list(&base).await? {
            if let Some(id) = key[base.len()..].split('/').next() {
                let e = latest.entry(id.to_owned()).or_insert(modified);
                if modified > *e {
                    *e = modified;
                }
            }
        }
        Ok(latest.into_iter().collect())
    }
}

async fn hash_on_blocking_thread(mut hasher: Hasher, batch: Vec<Bytes>) -> Result<Hasher> {
    if batch.is_empty() {
        return Ok(hasher);
    }
    tokio::task::spawn_blocking(move || {
        for bytes in &batch {
            hasher.update(bytes);
        }
        hasher
    })
    .await
    .map_err(|e| {
        StorageError::Io(std::io::Error::other(format!(
            "a blocking task failed: {e}"
        )))
    })
}
