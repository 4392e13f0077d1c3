//! The integrity check (`slipway admin fsck`), online: pushes and pulls go
//! on while it runs.
//!
//! It checks that every blob the metadata records is in the store with its
//! size and (re-hashed, at a chosen rate) its digest; that every stored blob
//! has a row; that every manifest's references resolve in its repository;
//! and that each project's usage equals a recount; on SQLite, that the
//! database file passes SQLite's own integrity check. Blobs a push has claimed
//! but not finished are skipped, as are stored bytes younger than the grace
//! period (a push publishes its bytes just before its row).
//!
//! With `repair`, a damaged blob (missing, wrong size, wrong digest) is
//! quarantined: the manifests that use it (and indexes above them) are
//! deleted — they answer 404 from then on rather than damaged bytes, and
//! the image can be pushed or built again — then its row is forgotten and
//! its bytes moved to `quarantine/`; stored bytes no row names are removed;
//! usage drift is corrected. Dangling references are only reported.

use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;

use crate::blob::BlobStore;
use crate::digest::{Digest, Hasher};
use crate::error::{Result, StorageError, human_bytes};
use crate::meta::{DanglingRef, Drift, Metadata};
use crate::names::RepoName;

#[derive(Debug, Clone)]
pub struct FsckOptions {
    /// Re-hash every blob (else sizes only).
    pub verify_digests: bool,
    /// Hashing reads at most this many bytes a second (0: no limit), so a
    /// live server keeps its disk for pulls.
    pub rate_bytes_per_sec: u64,
    pub repair: bool,
    /// Stored bytes without a row younger than this are left alone.
    pub orphan_grace: Duration,
}

/// One thing wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Missing {
        digest: String,
        size: u64,
    },
    WrongSize {
        digest: String,
        recorded: u64,
        stored: u64,
    },
    WrongDigest {
        digest: String,
        actual: String,
    },
    Orphan {
        digest: String,
    },
    Dangling(DanglingRef),
    UsageDrift {
        project: String,
        recorded: u64,
        recounted: u64,
    },
    /// SQLite's integrity check found damage in the database file.
    Database(String),
}

impl Finding {
    /// What is wrong, in a sentence.
    pub fn sentence(&self) -> String {
        match self {
            Finding::Missing { digest, size } => format!(
                "blob {digest} ({}) is recorded but not in the store",
                human_bytes(*size)
            ),
            Finding::WrongSize {
                digest,
                recorded,
                stored,
            } => format!(
                "blob {digest} is {stored} bytes in the store, but {recorded} bytes are recorded"
            ),
            Finding::WrongDigest { digest, actual } => {
                format!("blob {digest} is damaged in the store: its bytes hash to {actual}")
            }
            Finding::Orphan { digest } => {
                format!("blob {digest} is in the store but recorded nowhere")
            }
            Finding::Dangling(d) => format!(
                "manifest {}@{} references {} {}, which {} does not have",
                d.repository,
                d.manifest,
                if d.is_manifest { "manifest" } else { "blob" },
                d.reference,
                d.repository
            ),
            Finding::UsageDrift {
                project,
                recorded,
                recounted,
            } => format!(
                "project {project} is recorded as using {recorded} bytes, but its manifests \
                 reference {recounted}"
            ),
            Finding::Database(what) => {
                format!("the SQLite database is damaged ({what}); restore it from a backup")
            }
        }
    }

    /// The damaged blob, for the findings a repair quarantines.
    fn damaged(&self) -> Option<&str> {
        match self {
            Finding::Missing { digest, .. }
            | Finding::WrongSize { digest, .. }
            | Finding::WrongDigest { digest, .. } => Some(digest),
            _ => None,
        }
    }
}

/// A blob quarantined by a repair, and the manifests deleted with it.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub digest: String,
    /// `repository@digest`, indexes first.
    pub manifests: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct FsckReport {
    pub blobs_checked: u64,
    pub bytes_hashed: u64,
    pub stored_blobs: u64,
    pub findings: Vec<Finding>,
    pub quarantined: Vec<Quarantined>,
    pub orphans_removed: Vec<String>,
    pub usage_fixed: Vec<String>,
}

pub async fn check(meta: &Metadata, blobs: &BlobStore, opts: &FsckOptions) -> Result<FsckReport> {
    let mut report = FsckReport::default();
    if let Some(damage) = meta.sqlite_integrity().await? {
        report.findings.push(Finding::Database(damage));
    }
    let rows = meta.fsck_blob_rows().await?;
    let started = Instant::now();
    for row in &rows {
        if row.in_flight {
            continue;
        }
        report.blobs_checked += 1;
        let Ok(digest) = row.digest.parse::<Digest>() else {
            continue;
        };
        // GC may remove a blob while this runs: what looks wrong counts
        // only if the row is still there.
        let gone = || async { Ok::<_, StorageError>(meta.blob_size(&digest).await?.is_none()) };
        let stored = match blobs.stat(&digest).await? {
            None => {
                if !gone().await? {
                    report.findings.push(Finding::Missing {
                        digest: row.digest.clone(),
                        size: row.size,
                    });
                }
                continue;
            }
            Some(n) => n,
        };
        if stored != row.size {
            if !gone().await? {
                report.findings.push(Finding::WrongSize {
                    digest: row.digest.clone(),
                    recorded: row.size,
                    stored,
                });
            }
            continue;
        }
        if opts.verify_digests {
            let actual = match hash(blobs, &digest, opts, started, &mut report.bytes_hashed).await {
                Ok(a) => a,
                Err(_) if gone().await? => continue,
                Err(StorageError::BlobUnknown(_)) => {
                    report.findings.push(Finding::Missing {
                        digest: row.digest.clone(),
                        size: row.size,
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            if actual != digest && !gone().await? {
                report.findings.push(Finding::WrongDigest {
                    digest: row.digest.clone(),
                    actual: actual.to_string(),
                });
            }
        }
    }

    let now = SystemTime::now();
    let recorded: std::collections::HashSet<&str> =
        rows.iter().map(|r| r.digest.as_str()).collect();
    let stored = blobs.blobs_stored().await?;
    report.stored_blobs = stored.len() as u64;
    let mut orphans = Vec::new();
    for (d, modified) in stored {
        let young = now.duration_since(modified).unwrap_or_default() < opts.orphan_grace;
        // A row may have appeared since the rows were read: ask again.
        if !recorded.contains(d.as_str()) && !young && meta.blob_size(&d).await?.is_none() {
            report.findings.push(Finding::Orphan {
                digest: d.to_string(),
            });
            orphans.push(d);
        }
    }

    for d in meta.fsck_dangling_refs().await? {
        report.findings.push(Finding::Dangling(d));
    }
    let drift: Vec<Drift> = meta.recompute(false).await?;
    for d in &drift {
        report.findings.push(Finding::UsageDrift {
            project: d.project.clone(),
            recorded: d.used_before,
            recounted: d.used_after,
        });
    }

    if !opts.repair {
        return Ok(report);
    }
    let damaged: Vec<String> = report
        .findings
        .iter()
        .filter_map(|f| f.damaged().map(str::to_owned))
        .collect();
    for digest in damaged {
        let mut manifests = Vec::new();
        for (repo, m) in meta.manifests_using_blob(&digest).await? {
            let (Ok(name), Ok(md)) = (RepoName::parse(&repo), m.parse::<Digest>()) else {
                continue;
            };
            match meta.manifest_delete(&name, &md).await {
                Ok(()) | Err(StorageError::ManifestUnknown(_)) => {
                    manifests.push(format!("{repo}@{m}"))
                }
                Err(e) => return Err(e),
            }
        }
        let d: Digest = digest
            .parse()
            .map_err(|_| StorageError::Corrupt(format!("the blob row {digest} is not a digest")))?;
        meta.blob_forget(&digest, || blobs.quarantine(&d)).await?;
        report.quarantined.push(Quarantined { digest, manifests });
    }
    for d in orphans {
        if meta.orphan_delete(d.as_str(), || blobs.delete(&d)).await? {
            report.orphans_removed.push(d.to_string());
        }
    }
    if !drift.is_empty() {
        for d in meta.recompute(true).await? {
            report.usage_fixed.push(d.project);
        }
    }
    Ok(report)
}

/// The digest of a stored blob's bytes, read no faster than the rate.
async fn hash(
    blobs: &BlobStore,
    digest: &Digest,
    opts: &FsckOptions,
    started: Instant,
    total: &mut u64,
) -> Result<Digest> {
    let mut hasher = Hasher::new(digest.algorithm());
    let mut stream = blobs.read(digest, None).await?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        *total += chunk.len() as u64;
        if opts.rate_bytes_per_sec > 0 {
            // Ahead of the rate since the check began: wait the difference.
            let due = Duration::from_secs_f64(*total as f64 / opts.rate_bytes_per_sec as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    Ok(hasher.finish())
}
