// Each benchmark uses part of this module.
#![allow(dead_code)]

//! What the benchmarks share.

use sha2::{Digest as _, Sha256};

/// A size from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `sha256:<hex>` of `b`.
pub fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Stores an image through the metadata layer, as a push would: its blobs
/// claimed and linked to `repo` (id `repo_id`), then its manifest (made
/// from `seed`) tagged `tag`.
pub async fn put_image(
    meta: &slipway_storage::Metadata,
    repo: &slipway_storage::RepoName,
    repo_id: i64,
    refs: Vec<slipway_storage::meta::ManifestRef>,
    seed: &str,
    tag: String,
) {
    for r in &refs {
        meta.blob_claim(&r.digest, r.size).await.unwrap();
        meta.blob_complete(None, repo_id, repo.project(), &r.digest, r.size, false)
            .await
            .unwrap();
    }
    let body = bytes::Bytes::from(seed.to_owned());
    meta.manifest_put(
        repo,
        repo_id,
        &slipway_storage::meta::NewManifest {
            digest: slipway_storage::Digest::sha256_of(&body),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            body,
            artifact_type: None,
            subject: None,
            annotations: None,
            refs,
            tag: Some(tag),
        },
    )
    .await
    .unwrap();
}
