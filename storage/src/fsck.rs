//! The integrity check (`slipway admin fsck`), online: pushes and pulls go
//! on while it runs.
//!
//! It checks that every blob the metadata records is in the store with its
//! size and (re-hashed, at a chosen rate) its digest; that every stored blob
//! has a row; that every manifest's references resolve in its repository;
//! and that each project's usage equals a recount; on SQLite, that the
//! database file passes SQLite's own integrity check. Blobs a push has claimed
//! but not finished are skipped, as are stored bytes younger than the grace
//! period (a push publishes its bytes just before its row). A row without
//! bytes that nothing links, references or reserves, past its claim window,
//! is what a push killed between claiming and publishing leaves: reported
//! as a leftover, not as damage.
//!
//! With `repair`, a damaged blob (missing, wrong size, wrong digest) is
//! quarantined: the manifests that use it (and indexes above them) are
//! deleted — they answer 404 from then on rather than damaged bytes, and
//! the image can be pushed or built again — then its row is forgotten and
//! its bytes moved to `quarantine/`; stored bytes no row names, and the
//! rows of uploads that never finished, are removed;
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
    /// A row without bytes nothing uses: an upload interrupted between
    /// claiming the blob and publishing it.
    Leftover {
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
            Finding::Leftover { digest } => format!(
                "blob {digest} was claimed by an upload that never finished: it has no bytes \
                 and nothing uses it"
            ),
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
    /// Rows of uploads that never finished, forgotten.
    pub leftovers_removed: Vec<String>,
    pub usage_fixed: Vec<String>,
}

pub async fn check(meta: &Metadata, blobs: &BlobStore, opts: &FsckOptions) -> Result<FsckReport> {
    let mut report = FsckReport::default();
    let started = Instant::now();
    if let Some(damage) = meta.sqlite_integrity().await? {
        report.findings.push(Finding::Database(damage));
    }
    // The rows first, then one listing of the store: bytes go only after
    // their row (GC's order), so a row read here whose bytes the listing
    // lacks is missing — unless GC took the row meanwhile (asked again).
    let rows = meta.fsck_blob_rows().await?;
    let listed = blobs.blobs_stored().await?;
    report.stored_blobs = listed.len() as u64;
    let sizes: std::collections::HashMap<&str, u64> =
        listed.iter().map(|b| (b.digest.as_str(), b.size)).collect();
    let gone = |digest: &Digest| {
        let digest = digest.clone();
        async move { Ok::<_, StorageError>(meta.blob_size(&digest).await?.is_none()) }
    };
    let mut to_hash = Vec::new();
    for row in &rows {
        if row.in_flight {
            continue;
        }
        report.blobs_checked += 1;
        let Ok(digest) = row.digest.parse::<Digest>() else {
            continue;
        };
        // What the listing says, confirmed by a look at the blob itself
        // when it looks wrong (a listing may lag behind the store).
        let stored = match sizes.get(row.digest.as_str()) {
            Some(n) if *n == row.size => Some(*n),
            _ => blobs.stat(&digest).await?,
        };
        match stored {
            None if gone(&digest).await? => {}
            None if !row.used => report.findings.push(Finding::Leftover {
                digest: row.digest.clone(),
            }),
            None => report.findings.push(Finding::Missing {
                digest: row.digest.clone(),
                size: row.size,
            }),
            Some(n) if n != row.size => {
                if !gone(&digest).await? {
                    report.findings.push(Finding::WrongSize {
                        digest: row.digest.clone(),
                        recorded: row.size,
                        stored: n,
                    });
                }
            }
            Some(_) if opts.verify_digests => to_hash.push((row.digest.clone(), row.size, digest)),
            Some(_) => {}
        }
    }
    // Re-hashing: several at once unless held to a rate.
    let hashed = std::sync::atomic::AtomicU64::new(0);
    let at_once = if opts.rate_bytes_per_sec > 0 { 1 } else { 8 };
    let hashed_ref = &hashed;
    let results: Vec<(String, u64, Digest, Result<Digest>)> = futures::stream::iter(to_hash)
        .map(move |(name, size, digest)| async move {
            let r = hash(blobs, &digest, opts, started, hashed_ref).await;
            (name, size, digest, r)
        })
        .buffer_unordered(at_once)
        .collect()
        .await;
    report.bytes_hashed = hashed.load(std::sync::atomic::Ordering::Relaxed);
    for (name, size, digest, r) in results {
        match r {
            Ok(actual) if actual == digest => {}
            Ok(actual) => {
                if !gone(&digest).await? {
                    report.findings.push(Finding::WrongDigest {
                        digest: name,
                        actual: actual.to_string(),
                    });
                }
            }
            Err(_) if gone(&digest).await? => {}
            Err(StorageError::BlobUnknown(_)) => report
                .findings
                .push(Finding::Missing { digest: name, size }),
            Err(e) => return Err(e),
        }
    }

    let now = SystemTime::now();
    let recorded: std::collections::HashSet<&str> =
        rows.iter().map(|r| r.digest.as_str()).collect();
    let mut orphans = Vec::new();
    for b in listed {
        let young = now.duration_since(b.modified).unwrap_or_default() < opts.orphan_grace;
        // A row may have appeared since the rows were read: ask again.
        if !recorded.contains(b.digest.as_str())
            && !young
            && meta.blob_size(&b.digest).await?.is_none()
        {
            report.findings.push(Finding::Orphan {
                digest: b.digest.to_string(),
            });
            orphans.push(b.digest);
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
    let leftovers: Vec<String> = report
        .findings
        .iter()
        .filter_map(|f| match f {
            Finding::Leftover { digest } => Some(digest.clone()),
            _ => None,
        })
        .collect();
    for d in leftovers {
        if meta.leftover_forget(&d).await? {
            report.leftovers_removed.push(d);
        }
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
    total: &std::sync::atomic::AtomicU64,
) -> Result<Digest> {
    let mut hasher = Hasher::new(digest.algorithm());
    let mut stream = blobs.read(digest, None).await?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        let sum = total.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed)
            + chunk.len() as u64;
        if opts.rate_bytes_per_sec > 0 {
            // Ahead of the rate since the check began: wait the difference.
            let due = Duration::from_secs_f64(sum as f64 / opts.rate_bytes_per_sec as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    Ok(hasher.finish())
}
