//! Backup and restore of a single node (SQLite + filesystem), online.
//!
//! A backup is a directory: `slipway.db` (SQLite's `VACUUM INTO`, a
//! consistent snapshot taken while pushes go on), the blobs that snapshot
//! records under `blobs/` (hard links where the backup is on the same file
//! system — blobs never change once published — else copies), the keys
//! (`token-signing-key.pem`, `secrets-key`, `admin-password`,
//! `builder-password`) and `slipway-backup.json`. GC waits while a backup
//! runs, so no blob the snapshot records can go before it is linked.
//!
//! `slipway restore <dir> --data-dir <new>` lays a backup out as a data
//! directory that `slipway serve --data-dir <new>` serves.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::config::StorageBackend;
use crate::server::AppState;

const MARKER: &str = "slipway-backup.json";
const DB: &str = "slipway.db";
/// Key files a data directory may hold, copied with mode 0600.
const KEYS: &[&str] = &[
    "token-signing-key.pem",
    "secrets-key",
    "admin-password",
    "builder-password",
];

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupReport {
    pub dir: String,
    /// When the snapshot was taken (milliseconds since the epoch).
    pub taken_at_ms: i64,
    pub manifests: u64,
    pub blobs: u64,
    pub bytes: u64,
    /// Blobs hard-linked (the same file system) and copied.
    pub linked: u64,
    pub copied: u64,
    pub keys: Vec<String>,
}

/// Backs the running server up into `dir` (absolute; absent or empty).
pub async fn backup(state: &AppState, dir: &Path) -> anyhow::Result<BackupReport> {
    let config = &state.config;
    if !config.database_url().starts_with("sqlite:")
        || config.storage.backend != StorageBackend::Filesystem
    {
        bail!(
            "slipway admin backup copies a single node (SQLite and the filesystem); for \
             PostgreSQL and S3, back up the database with pg_dump or PITR first, then the bucket \
             (versioned), as the README's \"Backup and restore\" says"
        );
    }
    if !dir.is_absolute() {
        bail!(
            "the backup directory must be an absolute path on the server's machine, not {}",
            dir.display()
        );
    }
    empty_or_absent(dir)?;
    std::fs::create_dir_all(dir.join("blobs"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let made = copy_into(state, dir).await;
    if made.is_err() {
        // No half-written backup is left to be mistaken for one.
        let _ = std::fs::remove_dir_all(dir);
    }
    made
}

/// The copy itself, into the empty directory `dir`.
async fn copy_into(state: &AppState, dir: &Path) -> anyhow::Result<BackupReport> {
    let config = &state.config;
    // GC waits: every blob the snapshot records stays until it is linked.
    let _quiet = state.maintenance.lock().await;
    let taken_at_ms = slipway_storage::meta::now_ms();
    let db = dir.join(DB);
    state
        .meta
        .sqlite_snapshot(&db)
        .await
        .context("the database snapshot (VACUUM INTO) failed")?;
    let copy = slipway_storage::Metadata::connect(&slipway_storage::Metadata::sqlite_url(&db), 1)
        .await
        .context("cannot open the snapshot")?;
    let rows = copy.fsck_blob_rows().await?;
    let manifests = copy.manifest_count().await?;
    copy.close().await;
    let source = config.blob_path();
    let target = dir.join("blobs");
    let (linked, copied, bytes, blobs) = tokio::task::spawn_blocking(move || {
        let mut out = (0u64, 0u64, 0u64, 0u64);
        for row in rows {
            let Some(rel) = blob_rel(&row.digest) else {
                continue;
            };
            let from = source.join(&rel);
            let to = target.join(&rel);
            match link_or_copy(&from, &to) {
                Ok(linked) => {
                    if linked {
                        out.0 += 1;
                    } else {
                        out.1 += 1;
                    }
                    out.2 += row.size;
                    out.3 += 1;
                }
                // A push that claimed the digest but has not written it:
                // nothing references it yet.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && row.in_flight => {}
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "cannot back up blob {} ({}): {e}; `slipway admin fsck` checks the store",
                        row.digest,
                        from.display()
                    ));
                }
            }
        }
        Ok(out)
    })
    .await??;
    let mut keys = Vec::new();
    for (name, from) in [
        ("token-signing-key.pem", config.key_file()),
        ("secrets-key", config.secrets_key_file()),
        ("admin-password", config.data_dir.join("admin-password")),
        ("builder-password", config.data_dir.join("builder-password")),
    ] {
        if from.exists() {
            copy_private(&from, &dir.join(name))?;
            keys.push(name.to_owned());
        }
    }
    let report = BackupReport {
        dir: dir.display().to_string(),
        taken_at_ms,
        manifests,
        blobs,
        bytes,
        linked,
        copied,
        keys,
    };
    std::fs::write(dir.join(MARKER), serde_json::to_vec_pretty(&report)?)?;
    sync_dir(dir)?;
    Ok(report)
}

/// Lays the backup in `from` out as the data directory `data_dir`
/// (absent or empty). Returns a sentence saying what it did.
pub fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<String> {
    let marker = from.join(MARKER);
    let report: BackupReport =
        serde_json::from_slice(&std::fs::read(&marker).with_context(|| {
            format!("{} is not a Slipway backup (no {MARKER})", from.display())
        })?)
        .with_context(|| format!("{} is damaged", marker.display()))?;
    empty_or_absent(data_dir)?;
    std::fs::create_dir_all(data_dir)?;
    let made = lay_out(from, data_dir, &report);
    if made.is_err() {
        let _ = std::fs::remove_dir_all(data_dir);
    }
    made
}

/// Copies the backup `from` into the empty data directory `data_dir`.
fn lay_out(from: &Path, data_dir: &Path, report: &BackupReport) -> anyhow::Result<String> {
    std::fs::copy(from.join(DB), data_dir.join(DB))
        .with_context(|| format!("cannot copy {}", from.join(DB).display()))?;
    for name in KEYS {
        let f = from.join(name);
        if f.exists() {
            copy_private(&f, &data_dir.join(name))?;
        }
    }
    let (mut linked, mut copied) = (0u64, 0u64);
    let blobs = from.join("blobs");
    for file in walk(&blobs)? {
        let rel = file.strip_prefix(&blobs).expect("walked under blobs");
        if link_or_copy(&file, &data_dir.join("blobs").join(rel))? {
            linked += 1;
        } else {
            copied += 1;
        }
    }
    sync_dir(data_dir)?;
    Ok(format!(
        "restored the backup of {} ({} manifests, {} blobs, {} linked and {copied} copied) \
         into {}; start it with: slipway serve --data-dir {}",
        slipway_storage::error::human_bytes(report.bytes),
        report.manifests,
        report.blobs,
        linked,
        data_dir.display(),
        data_dir.display()
    ))
}

fn empty_or_absent(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!("{} is not empty; choose a new directory", dir.display());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", dir.display())),
    }
}

/// `blobs/<algorithm>/<two hex>/<hex>`, as the filesystem store lays a
/// blob out under its root.
fn blob_rel(digest: &str) -> Option<PathBuf> {
    let (alg, hex) = digest.split_once(':')?;
    if hex.len() < 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(PathBuf::from("blobs").join(alg).join(&hex[..2]).join(hex))
}

/// Hard-links `from` to `to` (true), or copies it where that cannot be
/// done (false), making `to`'s directories.
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<bool> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(e),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(true),
        Err(_) => {
            let tmp = to.with_extension("partial");
            std::fs::copy(from, &tmp)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, to)?;
            Ok(false)
        }
    }
}

fn copy_private(from: &Path, to: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to).with_context(|| format!("cannot copy {}", from.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
