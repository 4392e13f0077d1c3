//! The filesystem blob store: verification before visibility, dedup,
//! resumable uploads.

use bytes::Bytes;
use futures::TryStreamExt;
use slipway_storage::blob::fs::FsBlobStore;
use slipway_storage::{Algorithm, BlobStore, Digest, Hasher, StorageError};

fn store(dir: &std::path::Path) -> BlobStore {
    BlobStore::Fs(FsBlobStore::open(dir).unwrap())
}

fn body(
    parts: &[&'static [u8]],
) -> impl futures::Stream<Item = Result<Bytes, StorageError>> + Send {
    futures::stream::iter(
        parts
            .iter()
            .map(|p| Ok(Bytes::from_static(p)))
            .collect::<Vec<_>>(),
    )
}

async fn read(s: &BlobStore, d: &Digest, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let parts: Vec<Bytes> = s.read(d, range).await.unwrap().try_collect().await.unwrap();
    parts.concat()
}

#[tokio::test]
async fn put_verifies_and_reads_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let d = Digest::sha256_of(b"hello world");
    let wrong = Digest::sha256_of(b"other");
    assert!(matches!(
        s.put(&wrong, Bytes::from_static(b"hello world")).await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(s.stat(&wrong).await.unwrap(), None);
    s.put(&d, Bytes::from_static(b"hello world")).await.unwrap();
    assert_eq!(s.stat(&d).await.unwrap(), Some(11));
    assert_eq!(read(&s, &d, None).await, b"hello world");
    assert_eq!(read(&s, &d, Some(6..11)).await, b"world");
    assert!(matches!(
        s.read(&d, Some(6..12)).await,
        Err(StorageError::SizeInvalid(_))
    ));
    assert!(matches!(
        s.read(&wrong, None).await,
        Err(StorageError::BlobUnknown(_))
    ));
}

#[tokio::test]
async fn uploads_resume_after_a_restart_and_publish_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.upload_create("u1").await.unwrap();
    let (size, h) = s
        .upload_append(
            "u1",
            0,
            Hasher::new(Algorithm::Sha256),
            body(&[b"hello ", b"wor"]),
            u64::MAX,
        )
        .await
        .unwrap();
    assert_eq!(size, 9);
    let saved = h.save();

    // A request that died mid-write left bytes past the recorded offset.
    let (_, _) = s
        .upload_append(
            "u1",
            9,
            Hasher::restore(&saved).unwrap(),
            body(&[b"GARBAGE"]),
            u64::MAX,
        )
        .await
        .unwrap();

    // "Restart": a new store on the same directory, state from the record.
    let s = store(dir.path());
    let (size, h) = s
        .upload_append(
            "u1",
            9,
            Hasher::restore(&saved).unwrap(),
            body(&[b"ld"]),
            u64::MAX,
        )
        .await
        .unwrap();
    assert_eq!(size, 11);
    let d = Digest::sha256_of(b"hello world");
    assert_eq!(s.upload_verify("u1", &d, h).await.unwrap(), 11);
    s.upload_publish("u1", &d).await.unwrap();
    assert_eq!(read(&s, &d, None).await, b"hello world");

    // The same content again: the second upload file just goes away.
    s.upload_create("u2").await.unwrap();
    let (_, h) = s
        .upload_append(
            "u2",
            0,
            Hasher::new(Algorithm::Sha256),
            body(&[b"hello world"]),
            u64::MAX,
        )
        .await
        .unwrap();
    s.upload_verify("u2", &d, h).await.unwrap();
    s.upload_publish("u2", &d).await.unwrap();
    assert!(s.upload_files().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_wrong_digest_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.upload_create("u1").await.unwrap();
    let (_, h) = s
        .upload_append(
            "u1",
            0,
            Hasher::new(Algorithm::Sha256),
            body(&[b"abc"]),
            u64::MAX,
        )
        .await
        .unwrap();
    let claimed = Digest::sha256_of(b"abd");
    assert!(matches!(
        s.upload_verify("u1", &claimed, h).await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(s.stat(&claimed).await.unwrap(), None);
    s.upload_abort("u1").await.unwrap();
    assert!(s.upload_files().await.unwrap().is_empty());
}

#[tokio::test]
async fn sha512_is_verified_even_when_hashed_as_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.upload_create("u1").await.unwrap();
    let (_, h) = s
        .upload_append(
            "u1",
            0,
            Hasher::new(Algorithm::Sha256),
            body(&[b"abc"]),
            u64::MAX,
        )
        .await
        .unwrap();
    let d = Digest::of(Algorithm::Sha512, b"abc");
    s.upload_verify("u1", &d, h).await.unwrap();
    s.upload_publish("u1", &d).await.unwrap();
    assert_eq!(read(&s, &d, None).await, b"abc");
}

#[tokio::test]
async fn size_limit_is_enforced_while_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.upload_create("u1").await.unwrap();
    let r = s
        .upload_append(
            "u1",
            0,
            Hasher::new(Algorithm::Sha256),
            body(&[b"abc", b"def"]),
            4,
        )
        .await;
    assert!(matches!(r, Err(StorageError::TooLarge(_))), "{r:?}");
}
