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

mod access;
mod audit;

pub use access::{Project, Robot, RobotUpdate};
pub use audit::{AuditEntry, AuditQuery, NewAuditEntry};

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
macro_rules! for_share {
    ($sql:ident) => {
        concat!($sql!(), " FOR SHARE")
    };
}

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
}

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

#[derive(Debug, Clone)]
pub struct UploadRecord {
    pub id: String,
    pub repo_id: i64,
    pub repo: String,
    pub size: u64,
    pub hash_state: Vec<u8>,
    pub updated_at: i64,
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
                let options = || {
                    AnyPoolOptions::new()
                        .acquire_timeout(Duration::from_secs(30))
                        .after_connect(|conn, _| {
                            Box::pin(async move {
                                conn.execute(
                                    "PRAGMA journal_mode = WAL; \
                                     PRAGMA synchronous = NORMAL; \
                                     PRAGMA foreign_keys = ON; \
                                     PRAGMA busy_timeout = 10000;",
                                )
                                .await?;
                                Ok(())
                            })
                        })
                };
                let write = options().max_connections(1).connect(url).await?;
                SQLITE_MIGRATIONS.run(&write).await?;
                let read = options()
                    .max_connections(max_connections.max(1))
                    .connect(url)
                    .await?;
                Metadata {
                    backend,
                    read,
                    write,
                }
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(max_connections.max(2))
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?;
                POSTGRES_MIGRATIONS.run(&pool).await?;
                Metadata {
                    backend,
                    read: pool.clone(),
                    write: pool,
                }
            }
        };
        Ok(meta)
    }

    /// The URL of a SQLite database file, created if missing.
    pub fn sqlite_url(path: &std::path::Path) -> String {
        format!("sqlite://{}?mode=rwc", path.display())
    }

    pub fn backend(&self) -> Backend {
        self.backend
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

    // ----- blobs ----------------------------------------------------------

    /// Size of `digest` if this repository may see it.
    pub async fn repo_blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let row = sqlx::query(
            "SELECT b.size FROM repositories r \
             JOIN repo_blobs rb ON rb.repo_id = r.id \
             JOIN blobs b ON b.digest = rb.digest \
             WHERE r.name = $1 AND rb.digest = $2",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| r.get::<i64, _>(0) as u64))
    }

    /// Size of a stored blob, whichever repositories link it.
    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let row = sqlx::query("SELECT size FROM blobs WHERE digest = $1")
            .bind(digest.as_str())
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| r.get::<i64, _>(0) as u64))
    }

    /// Records a verified, stored blob and makes it visible in a repository.
    pub async fn link_blob(&self, repo_id: i64, digest: &Digest, size: u64) -> Result<()> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO blobs (digest, size, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest.as_str())
        .bind(size as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO repo_blobs (repo_id, digest, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (repo_id, digest) DO NOTHING",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Links a blob that `from` can see into `repo_id`. Returns the size, or
    /// `None` when `from` does not have the blob.
    pub async fn mount_blob(
        &self,
        repo_id: i64,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        let mut tx = self.write.begin().await?;
        let row = sqlx::query(self.pick(mount_source_sql!(), for_share!(mount_source_sql)))
            .bind(from.as_str())
            .bind(digest.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let size = row.get::<i64, _>(0) as u64;
        sqlx::query(
            "INSERT INTO repo_blobs (repo_id, digest, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (repo_id, digest) DO NOTHING",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(size))
    }

    /// Removes a blob from a repository. Refused while a manifest of that
    /// repository references it.
    pub async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let Some(repo_id) = repo_id_tx(&mut tx, repo).await? else {
            return Err(StorageError::BlobUnknown(digest.clone()));
        };
        let used = sqlx::query(
            "SELECT manifest_digest FROM manifest_refs WHERE repo_id = $1 AND ref_digest = $2 LIMIT 1",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = used {
            return Err(StorageError::Conflict(format!(
                "blob {digest} is referenced by manifest {} in {repo}; delete that manifest first",
                row.get::<String, _>(0)
            )));
        }
        let deleted = sqlx::query("DELETE FROM repo_blobs WHERE repo_id = $1 AND digest = $2")
            .bind(repo_id)
            .bind(digest.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StorageError::BlobUnknown(digest.clone()));
        }
        tx.commit().await?;
        Ok(())
    }

    // ----- uploads --------------------------------------------------------

    pub async fn upload_insert(&self, id: &str, repo_id: i64, hash_state: &[u8]) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO uploads (id, repo_id, size, hash_state, created_at, updated_at) \
             VALUES ($1, $2, 0, $3, $4, $4)",
        )
        .bind(id)
        .bind(repo_id)
        .bind(hash_state)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub async fn upload_get(&self, id: &str) -> Result<Option<UploadRecord>> {
        let row = sqlx::query(
            "SELECT u.id, u.repo_id, r.name, u.size, u.hash_state, u.updated_at \
             FROM uploads u JOIN repositories r ON r.id = u.repo_id WHERE u.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.write)
        .await?;
        Ok(row.map(|r| UploadRecord {
            id: r.get(0),
            repo_id: r.get(1),
            repo: r.get(2),
            size: r.get::<i64, _>(3) as u64,
            hash_state: r.get(4),
            updated_at: r.get(5),
        }))
    }

    /// Moves an upload from `old_size` to `new_size`. Returns false when the
    /// upload changed meanwhile (another request appended or it was removed).
    pub async fn upload_advance(
        &self,
        id: &str,
        old_size: u64,
        new_size: u64,
        hash_state: &[u8],
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE uploads SET size = $1, hash_state = $2, updated_at = $3 \
             WHERE id = $4 AND size = $5",
        )
        .bind(new_size as i64)
        .bind(hash_state)
        .bind(now_ms())
        .bind(id)
        .bind(old_size as i64)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn upload_delete(&self, id: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Finishes an upload: the blob is recorded and linked, and the upload
    /// row removed, in one transaction.
    pub async fn upload_complete(
        &self,
        id: &str,
        repo_id: i64,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO blobs (digest, size, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest.as_str())
        .bind(size as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO repo_blobs (repo_id, digest, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (repo_id, digest) DO NOTHING",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ids of uploads not touched since `before_ms`.
    pub async fn uploads_idle_since(&self, before_ms: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM uploads WHERE updated_at < $1")
            .bind(before_ms)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.into_iter().map(|r| r.get::<String, _>(0)).collect())
    }

    pub async fn upload_exists(&self, id: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM uploads WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.is_some())
    }

    pub async fn upload_count(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) FROM uploads")
            .fetch_one(&self.read)
            .await?;
        Ok(row.get::<i64, _>(0) as u64)
    }

    // ----- manifests and tags ---------------------------------------------

    pub async fn manifest_by_tag(
        &self,
        repo: &RepoName,
        tag: &str,
    ) -> Result<Option<ManifestRecord>> {
        let row = sqlx::query(
            "SELECT mb.digest, mb.media_type, mb.body FROM repositories r \
             JOIN tags t ON t.repo_id = r.id \
             JOIN manifest_bodies mb ON mb.digest = t.digest \
             WHERE r.name = $1 AND t.name = $2",
        )
        .bind(repo.as_str())
        .bind(tag)
        .fetch_optional(&self.read)
        .await?;
        row.map(manifest_record).transpose()
    }

    pub async fn manifest_by_digest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>> {
        let row = sqlx::query(
            "SELECT mb.digest, mb.media_type, mb.body FROM repositories r \
             JOIN manifests m ON m.repo_id = r.id \
             JOIN manifest_bodies mb ON mb.digest = m.digest \
             WHERE r.name = $1 AND m.digest = $2",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.map(manifest_record).transpose()
    }

    /// Commits a manifest, its references and optionally a tag, after
    /// checking in the same transaction that every referenced blob and child
    /// manifest is present in the repository with the declared size.
    pub async fn manifest_put(&self, repo_id: i64, m: &NewManifest) -> Result<()> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        for r in &m.refs {
            let sql = if r.is_manifest {
                self.pick(manifest_size_sql!(), for_share!(manifest_size_sql))
            } else {
                self.pick(repo_blob_size_sql!(), for_share!(repo_blob_size_sql))
            };
            let row = sqlx::query(sql)
                .bind(repo_id)
                .bind(r.digest.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                return Err(StorageError::ManifestBlobUnknown(r.digest.clone()));
            };
            let size = row.get::<i64, _>(0) as u64;
            if size != r.size {
                return Err(StorageError::ManifestInvalid(format!(
                    "the descriptor of {} gives size {}, but it has {size} bytes",
                    r.digest, r.size
                )));
            }
        }
        sqlx::query(
            "INSERT INTO manifest_bodies (digest, media_type, size, body, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (digest) DO NOTHING",
        )
        .bind(m.digest.as_str())
        .bind(&m.media_type)
        .bind(m.body.len() as i64)
        .bind(m.body.as_ref())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO manifests (repo_id, digest, media_type, size, artifact_type, subject, \
             annotations, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (repo_id, digest) DO NOTHING",
        )
        .bind(repo_id)
        .bind(m.digest.as_str())
        .bind(&m.media_type)
        .bind(m.body.len() as i64)
        .bind(m.artifact_type.as_deref())
        .bind(m.subject.as_ref().map(|d| d.as_str()))
        .bind(m.annotations.as_deref())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            for r in &m.refs {
                sqlx::query(
                    "INSERT INTO manifest_refs (repo_id, manifest_digest, ref_digest, is_manifest) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(repo_id)
                .bind(m.digest.as_str())
                .bind(r.digest.as_str())
                .bind(r.is_manifest as i64)
                .execute(&mut *tx)
                .await?;
            }
        }
        if let Some(tag) = &m.tag {
            sqlx::query(
                "INSERT INTO tags (repo_id, name, digest, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repo_id, name) DO UPDATE SET digest = excluded.digest, \
                 updated_at = excluded.updated_at",
            )
            .bind(repo_id)
            .bind(tag)
            .bind(m.digest.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a manifest and the tags that point to it. Refused while an
    /// index of the same repository lists it.
    pub async fn manifest_delete(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let unknown = || StorageError::ManifestUnknown(digest.to_string());
        let Some(repo_id) = repo_id_tx(&mut tx, repo).await? else {
            return Err(unknown());
        };
        let parent = sqlx::query(
            "SELECT manifest_digest FROM manifest_refs \
             WHERE repo_id = $1 AND ref_digest = $2 AND is_manifest = 1 LIMIT 1",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = parent {
            return Err(StorageError::Conflict(format!(
                "manifest {digest} is listed by index {} in {repo}; delete the index first",
                row.get::<String, _>(0)
            )));
        }
        sqlx::query("DELETE FROM tags WHERE repo_id = $1 AND digest = $2")
            .bind(repo_id)
            .bind(digest.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM manifest_refs WHERE repo_id = $1 AND manifest_digest = $2")
            .bind(repo_id)
            .bind(digest.as_str())
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM manifests WHERE repo_id = $1 AND digest = $2")
            .bind(repo_id)
            .bind(digest.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(unknown());
        }
        sqlx::query(
            "DELETE FROM manifest_bodies WHERE digest = $1 \
             AND NOT EXISTS (SELECT 1 FROM manifests WHERE digest = $1)",
        )
        .bind(digest.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a tag; the manifest stays. Returns false when there was none.
    pub async fn tag_delete(&self, repo: &RepoName, tag: &str) -> Result<bool> {
        let n = sqlx::query(
            "DELETE FROM tags WHERE name = $1 \
             AND repo_id = (SELECT id FROM repositories WHERE name = $2)",
        )
        .bind(tag)
        .bind(repo.as_str())
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Tags after `last`, in lexical order; `None` when the repository is unknown.
    pub async fn tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Option<Vec<String>>> {
        let Some(repo_id) = self.repo_id(repo).await? else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT name FROM tags WHERE repo_id = $1 AND name > $2 ORDER BY name LIMIT $3",
        )
        .bind(repo_id)
        .bind(last.unwrap_or(""))
        .bind(limit as i64)
        .fetch_all(&self.read)
        .await?;
        Ok(Some(
            rows.into_iter().map(|r| r.get::<String, _>(0)).collect(),
        ))
    }

    /// Manifests of the repository whose `subject` is `digest`.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        let rows = sqlx::query(
            "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations \
             FROM repositories r JOIN manifests m ON m.repo_id = r.id \
             WHERE r.name = $1 AND m.subject = $2 AND ($3 IS NULL OR m.artifact_type = $3) \
             ORDER BY m.created_at, m.digest",
        )
        .bind(repo.as_str())
        .bind(subject.as_str())
        .bind(artifact_type)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Referrer {
                digest: r.get(0),
                media_type: r.get(1),
                size: r.get::<i64, _>(2) as u64,
                artifact_type: r.get(3),
                annotations: r.get(4),
            })
            .collect())
    }

    /// Every (digest, size) pair the repositories reference, for consistency
    /// checks: manifests' blob references.
    pub async fn referenced_blobs(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT r.name, mr.ref_digest FROM manifest_refs mr \
             JOIN repositories r ON r.id = mr.repo_id WHERE mr.is_manifest = 0",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
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
