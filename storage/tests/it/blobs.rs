//! The blob store contract, on the filesystem and on S3 (SeaweedFS, started
//! by the test): verification before visibility, dedup, resumable uploads.

use bytes::Bytes;
use futures::TryStreamExt;
use slipway_storage::blob::fs::FsBlobStore;
use slipway_storage::testing::SeaweedFs;
use slipway_storage::{Algorithm, BlobStore, Digest, Hasher, StorageError};

/// A store and what keeps it alive.
struct Backend {
    store: BlobStore,
    _dir: Option<tempfile::TempDir>,
}

async fn fs() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    Backend {
        store: BlobStore::Fs(FsBlobStore::open(dir.path()).unwrap()),
        _dir: Some(dir),
    }
}

async fn s3() -> Backend {
    let prefix = format!("blobs-test-{}/", uuid::Uuid::new_v4().simple());
    Backend {
        store: BlobStore::S3(SeaweedFs::shared().store(&prefix).await),
        _dir: None,
    }
}

/// Runs a contract test on both backends.
macro_rules! contract {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn filesystem() {
                super::$name(&super::fs().await.store).await;
            }

            #[tokio::test]
            async fn s3() {
                super::$name(&super::s3().await.store).await;
            }
        }
    };
}

contract!(put_verifies_and_reads_ranges);
contract!(uploads_resume_across_requests_and_publish_once);
contract!(a_wrong_digest_publishes_nothing);
contract!(sha512_is_verified_even_when_hashed_as_sha256);
contract!(size_limit_is_enforced_while_streaming);
contract!(large_uploads_cross_part_boundaries);
contract!(put_many_stores_each_blob_or_says_why_not);

fn body(parts: Vec<Bytes>) -> impl futures::Stream<Item = Result<Bytes, StorageError>> + Send {
    futures::stream::iter(parts.into_iter().map(Ok).collect::<Vec<_>>())
}

fn parts(p: &[&'static [u8]]) -> Vec<Bytes> {
    p.iter().map(|b| Bytes::from_static(b)).collect()
}

async fn read(s: &BlobStore, d: &Digest, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let parts: Vec<Bytes> = s.read(d, range).await.unwrap().try_collect().await.unwrap();
    parts.concat()
}

async fn put_verifies_and_reads_ranges(s: &BlobStore) {
    let d = Digest::sha256_of(b"hello world");
    let wrong = Digest::sha256_of(b"other");
    assert!(matches!(
        s.put(&wrong, Bytes::from_static(b"hello world")).await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(s.stat(&wrong).await.unwrap(), None);
    s.put(&d, Bytes::from_static(b"hello world")).await.unwrap();
    assert_eq!(s.stat(&d).await.unwrap(), Some(11));
    assert_eq!(read(s, &d, None).await, b"hello world");
    assert_eq!(read(s, &d, Some(6..11)).await, b"world");
    assert!(matches!(
        s.read(&wrong, None).await,
        Err(StorageError::BlobUnknown(_))
    ));
    s.delete(&d).await.unwrap();
    assert_eq!(s.stat(&d).await.unwrap(), None);
    s.delete(&d).await.unwrap();
}

async fn uploads_resume_across_requests_and_publish_once(s: &BlobStore) {
    let st = s.upload_create("u1").await.unwrap();
    let (size, h, st) = s
        .upload_append(
            "u1",
            0,
            Hasher::new(Algorithm::Sha256),
            &st,
            body(parts(&[b"hello ", b"wor"])),
            u64::MAX,
        )
        .await
        .unwrap();
    assert_eq!(size, 9);
    let saved = h.save();

    // A request that died: its result was never recorded.
    let _ = s
        .upload_append(
            "u1",
            9,
            Hasher::restore(&saved).unwrap(),
            &st,
            body(parts(&[b"GARBAGE"])),
            u64::MAX,
        )
        .await
        .unwrap();

    // The next request resumes from the recorded state (any replica).
    let (size, h, st) = s
        .upload_append(
            "u1",
            9,
            Hasher::restore(&saved).unwrap(),
            &st,
            body(parts(&[b"ld"])),
            u64::MAX,
        )
        .await
        .unwrap();
    assert_eq!(size, 11);
    let d = Digest::sha256_of(b"hello world");
    let (verified, st) = s.upload_verify("u1", &d, h, &st).await.unwrap();
    assert_eq!(verified, 11);
    assert_eq!(
        s.stat(&d).await.unwrap(),
        None,
        "not visible before publishing"
    );
    s.upload_publish("u1", &d, &st).await.unwrap();
    assert_eq!(read(s, &d, None).await, b"hello world");

    // The same content again: nothing is stored twice, the upload goes.
    let st = s.upload_create("u2").await.unwrap();
    let (_, h, st) = s
        .upload_append(
            "u2",
            0,
            Hasher::new(Algorithm::Sha256),
            &st,
            body(parts(&[b"hello world"])),
            u64::MAX,
        )
        .await
        .unwrap();
    let (_, st) = s.upload_verify("u2", &d, h, &st).await.unwrap();
    s.upload_publish("u2", &d, &st).await.unwrap();
    let ids: Vec<String> = s
        .upload_files()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(
        !ids.contains(&"u1".to_string()) && !ids.contains(&"u2".to_string()),
        "{ids:?}"
    );
}

async fn a_wrong_digest_publishes_nothing(s: &BlobStore) {
    let st = s.upload_create("u1").await.unwrap();
    let (_, h, st) = s
        .upload_append(
            "u1",
            0,
            Hasher::new(Algorithm::Sha256),
            &st,
            body(parts(&[b"abc"])),
            u64::MAX,
        )
        .await
        .unwrap();
    let claimed = Digest::sha256_of(b"abd");
    assert!(matches!(
        s.upload_verify("u1", &claimed, h, &st).await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(s.stat(&claimed).await.unwrap(), None);
    s.upload_abort("u1", &st).await.unwrap();
    assert!(
        s.upload_files()
            .await
            .unwrap()
            .iter()
            .all(|(id, _)| id != "u1")
    );
}

async fn sha512_is_verified_even_when_hashed_as_sha256(s: &BlobStore) {
    let st = s.upload_create("u1").await.unwrap();
    let (_, h, st) = s
        .upload_append(
            "u1",
            0,
            Hasher::new(Algorithm::Sha256),
            &st,
            body(parts(&[b"abc"])),
            u64::MAX,
        )
        .await
        .unwrap();
    let d = Digest::of(Algorithm::Sha512, b"abc");
    let (_, st) = s.upload_verify("u1", &d, h, &st).await.unwrap();
    s.upload_publish("u1", &d, &st).await.unwrap();
    assert_eq!(read(s, &d, None).await, b"abc");
}

async fn size_limit_is_enforced_while_streaming(s: &BlobStore) {
    let st = s.upload_create("u1").await.unwrap();
    let r = s
        .upload_append(
            "u1",
            0,
            Hasher::new(Algorithm::Sha256),
            &st,
            body(parts(&[b"abc", b"def"])),
            4,
        )
        .await;
    assert!(matches!(r, Err(StorageError::TooLarge(_))), "{r:?}");
    s.upload_abort("u1", &st).await.unwrap();
}

/// 21 MiB in odd chunks over three requests: several S3 parts, tails
/// carried between requests, and a range read across part boundaries.
async fn large_uploads_cross_part_boundaries(s: &BlobStore) {
    let data: Vec<u8> = (0..21u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let d = Digest::sha256_of(&data);
    let mut st = s.upload_create("big").await.unwrap();
    let mut h = Hasher::new(Algorithm::Sha256);
    let mut offset = 0u64;
    for request in [3_000_001usize, 9_000_000, 10_020_151] {
        let end = (offset as usize + request).min(data.len());
        let chunk = Bytes::copy_from_slice(&data[offset as usize..end]);
        let pieces: Vec<Bytes> = chunk.chunks(777_777).map(Bytes::copy_from_slice).collect();
        let (size, nh, nst) = s
            .upload_append("big", offset, h, &st, body(pieces), u64::MAX)
            .await
            .unwrap();
        assert_eq!(size, end as u64);
        (offset, h, st) = (size, nh, nst);
    }
    assert_eq!(offset, data.len() as u64);
    let (_, st) = s.upload_verify("big", &d, h, &st).await.unwrap();
    s.upload_publish("big", &d, &st).await.unwrap();
    assert_eq!(s.stat(&d).await.unwrap(), Some(data.len() as u64));
    let mid = (8 << 20) - 10..(8 << 20) + 10;
    assert_eq!(
        read(s, &d, Some(mid.clone())).await,
        &data[mid.start as usize..mid.end as usize]
    );
    let all = read(s, &d, None).await;
    assert!(all == data, "the whole blob reads back");
}

async fn put_many_stores_each_blob_or_says_why_not(s: &BlobStore) {
    let old = Digest::sha256_of(b"stored before");
    s.put(&old, Bytes::from_static(b"stored before"))
        .await
        .unwrap();
    let fresh: Vec<(Digest, Bytes)> = (0..40)
        .map(|i| {
            let b = Bytes::from(format!("config {i}").repeat(i + 1));
            (Digest::sha256_of(&b), b)
        })
        .collect();
    let wrong = Digest::sha256_of(b"what was claimed");
    let mut batch = fresh.clone();
    batch.insert(7, (wrong.clone(), Bytes::from_static(b"what was sent")));
    batch.push((old.clone(), Bytes::from_static(b"stored before")));
    let results = s.put_many(batch, 4).await;
    assert_eq!(results.len(), fresh.len() + 2, "one result per blob");
    for (i, r) in results.iter().enumerate() {
        if i == 7 {
            assert!(
                matches!(r, Err(StorageError::DigestMismatch { .. })),
                "{r:?}"
            );
        } else {
            assert!(r.is_ok(), "blob {i}: {r:?}");
        }
    }
    assert_eq!(
        s.stat(&wrong).await.unwrap(),
        None,
        "nothing under a wrong digest"
    );
    for (d, b) in &fresh {
        assert_eq!(read(s, d, None).await, b.as_ref());
    }
    assert_eq!(read(s, &old, None).await, b"stored before");
    assert!(s.put_many(Vec::new(), 4).await.is_empty());
}

#[tokio::test]
async fn put_many_on_the_filesystem_leaves_no_staging_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::Fs(FsBlobStore::open(dir.path()).unwrap());
    let wrong = Digest::sha256_of(b"claimed");
    let good = Digest::sha256_of(b"sent");
    let results = store
        .put_many(
            vec![
                (wrong, Bytes::from_static(b"not what was claimed")),
                (good.clone(), Bytes::from_static(b"sent")),
            ],
            1,
        )
        .await;
    assert!(results[0].is_err() && results[1].is_ok(), "{results:?}");
    let staged: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
    assert!(staged.is_empty(), "{staged:?}");
    assert_eq!(store.stat(&good).await.unwrap(), Some(4));
}
