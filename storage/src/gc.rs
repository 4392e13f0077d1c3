//! Online garbage collection: retention first (manifests), then blobs.
//! No read-only mode: pushes and pulls go on while it runs (see
//! `meta::gc` for why it cannot remove what a push is about to use).

use std::time::Duration;

use crate::blob::BlobStore;
use crate::digest::Digest;
use crate::error::{Result, StorageError};
use crate::meta::{GcCandidate, Metadata, PrunableManifest, now_ms};
use crate::names::RepoName;

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Only list what would go.
    pub dry_run: bool,
    /// Blobs whose references last changed within this are kept.
    pub blob_grace: Duration,
    /// Untagged manifests are kept this long.
    pub untagged_grace: Duration,
    /// Tagged images kept per repository, unless the project says otherwise.
    pub keep_default: u32,
    /// Limit retention to one project (blobs are global).
    pub project: Option<String>,
    /// Whether to apply retention at all.
    pub retention: bool,
}

#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub dry_run: bool,
    pub manifests: Vec<PrunableManifest>,
    /// Manifests retention wanted to remove but could not (with why).
    pub manifests_skipped: Vec<(PrunableManifest, String)>,
    pub blobs: Vec<GcCandidate>,
    pub bytes_freed: u64,
}

pub async fn collect(meta: &Metadata, blobs: &BlobStore, opts: &GcOptions) -> Result<GcReport> {
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    if opts.retention {
        let mut prunable = meta
            .retention_candidates(
                opts.project.as_deref(),
                opts.keep_default,
                opts.untagged_grace.as_millis() as i64,
            )
            .await?;
        // Indexes before the manifests they list.
        prunable.sort_by_key(|m| !is_index(&m.media_type));
        for m in prunable {
            if opts.dry_run {
                report.manifests.push(m);
                continue;
            }
            let (Ok(repo), Ok(digest)) =
                (RepoName::parse(&m.repository), m.digest.parse::<Digest>())
            else {
                continue;
            };
            match meta.manifest_delete(&repo, &digest).await {
                Ok(()) => report.manifests.push(m),
                Err(e @ (StorageError::Conflict(_) | StorageError::ManifestUnknown(_))) => {
                    report.manifests_skipped.push((m, e.to_string()))
                }
                Err(e) => return Err(e),
            }
        }
    }
    let cutoff = now_ms() - opts.blob_grace.as_millis() as i64;
    for c in meta.gc_candidates(cutoff).await? {
        if opts.dry_run {
            report.bytes_freed += c.size;
            report.blobs.push(c);
            continue;
        }
        let Ok(digest) = c.digest.parse::<Digest>() else {
            continue;
        };
        let removed = meta
            .gc_delete(&c.digest, cutoff, || async { blobs.delete(&digest).await })
            .await?;
        if removed {
            report.bytes_freed += c.size;
            report.blobs.push(c);
        }
    }
    Ok(report)
}

fn is_index(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}
