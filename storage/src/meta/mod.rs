//! Registry metadata in SQL: repositories, blob links, manifests, tags,
//! referrers and uploads.
//!
//! One implementation serves SQLite (the embedded default) and PostgreSQL via
//! sqlx's `Any` driver: queries use `$n` placeholders, which both accept, and
//! portable types only (TEXT, BIGINT, BLOB/BYTEA; booleans as 0/1). SQLite runs
//! in WAL mode with one writer connection and a pool of readers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, Row};

use crate::digest::Digest;
use crate::error::{Result, StorageError};
use crate::names::RepoName;

// Queries that differ between databases only by a trailing `FOR SHARE`,
// kept as macros so both texts stay literals.
macro_rules! manifest_size_sql {
    () => {
        "SELECT size FROM manifests WHERE repo_id = $1 AND digest = $2"
    };
}
macro_rules! repo_blob_size_sql {
    () => {
        "SELECT b.size FROM repo_blobs rb JOIN blobs b ON b.digest = rb.digest \
         WHERE rb.repo_id = $1 AND rb.digest = $2"
    };
}
macro_rules! mount_source_sql {
    () => {
        "SELECT b.size FROM repositories r JOIN repo_blobs rb ON rb.repo_id = r.id \
         JOIN blobs b ON b.digest = rb.digest WHERE r.name = $1 AND rb.digest = $2"
    };
}
macro_rules! project_source_sql {
    () => {
        "SELECT b.size FROM repositories r JOIN repo_blobs rb ON rb.repo_id = r.id \
         JOIN blobs b ON b.digest = rb.digest WHERE r.project = $1 AND rb.digest = $2 LIMIT 1"
    };
}
macro_rules! for_share {
    ($sql:ident) => {
        concat!($sql!(), " FOR SHARE")
    };
}

mod access;
mod audit;
mod blobs;
mod builds;
mod fsck;
mod gc;
mod manifests;
mod people;
mod quota;
mod rebase;
mod triggers;

pub use access::{ImageSummary, Overview, Project, Robot, RobotUpdate};
pub use audit::{AuditEntry, AuditQuery, NewAuditEntry};
pub use blobs::UploadRecord;
pub use builds::{BuildRecord, BuildToken, LogLine, Queued, Retention};
pub use fsck::{BlobRow, DanglingRef};
pub use gc::{GcCandidate, PrunableManifest};
pub use manifests::{QuotaAfter, TagDetail, TagMove};
pub use people::{
    Membership, Person, PersonalToken, Role, SOURCE_ADMIN, SOURCE_DIRECTORY, SignInRequest,
    SignInUse,
};
pub use quota::{BlobBudget, Drift, Usage};
pub use rebase::{BuildSource, RebaseCommitted, RebaseWrite, TaggedImage, TaggedPage};
pub use triggers::{Delivery, SecretInfo, Trigger};

pub(crate) type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Version numbers of the embedded migrations, per database.
pub fn migration_versions() -> (Vec<i64>, Vec<i64>) {
    let versions = |m: &sqlx::migrate::Migrator| m.iter().map(|m| m.version).collect();
    (versions(&SQLITE_MIGRATIONS), versions(&POSTGRES_MIGRATIONS))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct Metadata {
    backend: Backend,
    read: AnyPool,
    write: AnyPool,
    /// How long a blob uploaded or mounted, and not yet referenced by a
    /// manifest, is held against its project's quota.
    reservation_ttl_ms: i64,
    /// Bytes that a project's uploads in flight may hold on disk beyond its
    /// quota, at least: the bound is the larger of this and the quota.
    upload_headroom: u64,
    /// How long a claimed blob is protected from GC before it is linked
    /// ([`blobs::CLAIM_WINDOW_MS`]; shorter only in tests).
    claim_window_ms: i64,
}

/// Reservations last an hour unless configured otherwise.
const DEFAULT_RESERVATION_TTL_MS: i64 = 3_600_000;

/// Uploads in flight may hold 1 GiB (or the quota, if larger) unless
/// configured otherwise.
pub const DEFAULT_UPLOAD_HEADROOM: u64 = 1 << 30;

/// A manifest as served to clients.
#[derive(Debug, Clone)]
pub struct ManifestRecord {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// What a manifest references, for validation and for the reference table.
#[derive(Debug, Clone)]
pub struct ManifestRef {
    pub digest: Digest,
    pub size: u64,
    pub is_manifest: bool,
}

/// A manifest to commit into a repository.
#[derive(Debug, Clone)]
pub struct NewManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    /// The manifest's annotations as a JSON object, for referrers listings.
    pub annotations: Option<String>,
    pub refs: Vec<ManifestRef>,
    pub tag: Option<String>,
}

/// One entry of a referrers listing.
#[derive(Debug, Clone)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: Option<String>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Metadata {
    /// Connects to `url` (`sqlite://path` or `postgres://…`) and applies the
    /// migrations for that database.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Metadata> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StorageError::Unavailable(format!(
                "the database URL must start with sqlite: or postgres: (got {})",
                redact_url(url)
            )));
        };
        let meta = match backend {
            Backend::Sqlite => {
                // `extra`: statements for this pool's connections only.
                let options = |extra: &'static str| {
                    AnyPoolOptions::new()
                        .acquire_timeout(Duration::from_secs(30))
                        .after_connect(move |conn, _| {
                            Box::pin(async move {
                                conn.execute(
                                    "PRAGMA journal_mode = WAL; \
                                     PRAGMA synchronous = NORMAL; \
                                     PRAGMA foreign_keys = ON; \
                                     PRAGMA busy_timeout = 10000;",
                                )
                                .await?;
                                if !extra.is_empty() {
                                    conn.execute(extra).await?;
                                }
                                Ok(())
                            })
                        })
                };
                // The one writer keeps more of the database in its page
                // cache (64 MiB at most, instead of SQLite's 2 MiB): large
                // transactions (a fleet rebase, GC) touch index pages all
                // over the file, and spilling them before the commit costs.
                let write = options("PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY;")
                    .max_connections(1)
                    .connect(url)
                    .await?;
                SQLITE_MIGRATIONS.run(&write).await?;
                let read = options("")
                    .max_connections(max_connections.max(1))
                    .connect(url)
                    .await?;
                Metadata {
                    backend,
                    read,
                    write,
                    reservation_ttl_ms: DEFAULT_RESERVATION_TTL_MS,
                    upload_headroom: DEFAULT_UPLOAD_HEADROOM,
                    claim_window_ms: blobs::CLAIM_WINDOW_MS,
                }
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(max_connections.max(2))
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(url)
                    .await?;
                POSTGRES_MIGRATIONS.run(&pool).await?;
                Metadata {
                    backend,
                    read: pool.clone(),
                    write: pool,
                    reservation_ttl_ms: DEFAULT_RESERVATION_TTL_MS,
                    upload_headroom: DEFAULT_UPLOAD_HEADROOM,
                    claim_window_ms: blobs::CLAIM_WINDOW_MS,
                }
            }
        };
        Ok(meta)
    }

    /// Sets how long reservations of unreferenced blobs last.
    pub fn with_reservation_ttl(mut self, ttl: Duration) -> Metadata {
        self.reservation_ttl_ms = ttl.as_millis().min(i64::MAX as u128) as i64;
        self
    }

    /// Sets the upload headroom: a project's uploads in flight may hold the
    /// larger of this and its quota.
    pub fn with_upload_headroom(mut self, bytes: u64) -> Metadata {
        self.upload_headroom = bytes;
        self
    }

    /// Sets how long a claimed blob waits for its push to link it before
    /// GC may take it and fsck calls it an interrupted upload's leftover.
    /// Tests shorten it; a server keeps [`blobs::CLAIM_WINDOW_MS`].
    pub fn with_claim_window(mut self, window: Duration) -> Metadata {
        self.claim_window_ms = window.as_millis().min(i64::MAX as u128) as i64;
        self
    }

    /// The URL of a SQLite database file, created if missing.
    pub fn sqlite_url(path: &std::path::Path) -> String {
        format!("sqlite://{}?mode=rwc", path.display())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn read_pool(&self) -> &AnyPool {
        &self.read
    }

    pub(crate) fn write_pool(&self) -> &AnyPool {
        &self.write
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    /// Picks the SQLite or PostgreSQL text of a query where they differ:
    /// PostgreSQL takes `FOR SHARE` row locks so a checked row cannot change
    /// before commit; SQLite's single writer already guarantees that.
    fn pick(&self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self.backend {
            Backend::Sqlite => sqlite,
            Backend::Postgres => postgres,
        }
    }

    // ----- repositories -------------------------------------------------

    pub async fn repo_id(&self, name: &RepoName) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT id FROM repositories WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| r.get::<i64, _>(0)))
    }

    /// The repository's id, creating the repository on first use.
    pub async fn ensure_repo(&self, name: &RepoName) -> Result<i64> {
        if let Some(id) = self.repo_id(name).await? {
            return Ok(id);
        }
        sqlx::query(
            "INSERT INTO repositories (name, project, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name.as_str())
        .bind(name.project())
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        let row = sqlx::query("SELECT id FROM repositories WHERE name = $1")
            .bind(name.as_str())
            .fetch_one(&self.write)
            .await?;
        Ok(row.get::<i64, _>(0))
    }

    /// Repository names after `last`, in lexical order.
    pub async fn catalog(&self, last: Option<&str>, limit: u32) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2")
                .bind(last.unwrap_or(""))
                .bind(limit as i64)
                .fetch_all(&self.read)
                .await?;
        Ok(rows.into_iter().map(|r| r.get::<String, _>(0)).collect())
    }
}

pub(crate) async fn repo_id_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    repo: &RepoName,
) -> Result<Option<i64>> {
    let row = sqlx::query("SELECT id FROM repositories WHERE name = $1")
        .bind(repo.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|r| r.get::<i64, _>(0)))
}

fn manifest_record(r: sqlx::any::AnyRow) -> Result<ManifestRecord> {
    let digest: String = r.get(0);
    Ok(ManifestRecord {
        digest: digest
            .parse()
            .map_err(|_| StorageError::Corrupt(format!("stored manifest digest {digest:?}")))?,
        media_type: r.get(1),
        body: Bytes::from(r.get::<Vec<u8>, _>(2)),
    })
}

/// A database URL with any password removed, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_databases_have_the_same_migration_versions() {
        let (sqlite, postgres) = migration_versions();
        assert!(!sqlite.is_empty());
        assert_eq!(
            sqlite, postgres,
            "migrations/sqlite and migrations/postgres must stay in step"
        );
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
