//! Blobs: which repositories see them, uploads in progress, and the
//! reservations they hold against their project's quota.
//!
//! Finishing an upload is three steps, so GC can never remove a blob a push
//! is about to make visible: [`Metadata::blob_claim`] (the blob row, with a
//! fresh `last_ref_change`: GC leaves it alone, and waits on it while it is
//! busy with it), then the bytes are published, then
//! [`Metadata::blob_complete`] links the blob to the repository.

use sqlx::Row;

use super::quota::Budget;
use super::{Metadata, Tx, now_ms, repo_id_tx};
use crate::digest::Digest;
use crate::error::{Result, StorageError};
use crate::names::RepoName;

/// How long a claimed blob is protected from GC before it is linked.
pub const CLAIM_WINDOW_MS: i64 = 10 * 60 * 1000;

#[derive(Debug, Clone)]
pub struct UploadRecord {
    pub id: String,
    pub repo_id: i64,
    pub repo: String,
    pub size: u64,
    pub hash_state: Vec<u8>,
    /// The blob store's own state of the upload (see `blob::UploadState`).
    pub backend_state: Vec<u8>,
    pub updated_at: i64,
}

impl Metadata {
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

    /// Restarts GC's grace period for `digest` (a pusher is about to
    /// reference it). Skips the write when it was refreshed in the last
    /// second.
    pub async fn blob_touch(&self, digest: &Digest) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE blobs SET last_ref_change = $1 WHERE digest = $2 AND last_ref_change < $3",
        )
        .bind(now)
        .bind(digest.as_str())
        .bind(now - 1000)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Claims `digest` before its bytes are published: records the blob and
    /// sets its `last_ref_change` ahead by the claim window ([`CLAIM_WINDOW_MS`]), so GC leaves
    /// it alone whatever its grace period, until [`Metadata::blob_complete`]
    /// links it (or the window passes, after a crash). While GC holds the
    /// row, this waits.
    pub async fn blob_claim(&self, digest: &Digest, size: u64) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO blobs (digest, size, created_at, last_ref_change) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (digest) DO UPDATE SET last_ref_change = excluded.last_ref_change",
        )
        .bind(digest.as_str())
        .bind(size as i64)
        .bind(now)
        .bind(now + self.claim_window_ms)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Makes a claimed, published blob visible in a repository, ends the
    /// upload `upload` if any, and holds the blob against the project's
    /// quota until a manifest references it. With `admit`, a blob new to
    /// the project must fit its quota (every upload: bytes in flight were
    /// never admitted); without, it is held unchecked (tools that load
    /// data they have admitted otherwise). A blob the project already pays
    /// for, or a base project's, is never refused.
    pub async fn blob_complete(
        &self,
        upload: Option<&str>,
        repo_id: i64,
        project: &str,
        digest: &Digest,
        size: u64,
        admit: bool,
    ) -> Result<()> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let budget = self.lock_project(&mut tx, project).await?;
        if let Some(id) = upload {
            let n = sqlx::query("DELETE FROM uploads WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StorageError::UploadUnknown(id.to_owned()));
            }
        }
        self.hold_blob(&mut tx, &budget, digest, size, admit, now)
            .await?;
        link(&mut tx, repo_id, digest, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Links a blob that `from` can see into `repo_id`, after checking the
    /// target project's quota. Returns the size, or `None` when `from` does
    /// not have the blob.
    pub async fn mount_blob(
        &self,
        repo_id: i64,
        project: &str,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        self.mount(
            repo_id,
            project,
            self.pick(mount_source_sql!(), for_share!(mount_source_sql)),
            from.as_str(),
            digest,
        )
        .await
    }

    /// Links into `repo_id` a blob that some repository of the same
    /// project has (a mount without `from`: the spec's automatic content
    /// discovery, kept inside the project). Returns the size, or `None`
    /// when no repository of the project has the blob.
    pub async fn mount_blob_in_project(
        &self,
        repo_id: i64,
        project: &str,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        self.mount(
            repo_id,
            project,
            self.pick(project_source_sql!(), for_share!(project_source_sql)),
            project,
            digest,
        )
        .await
    }

    /// A mount: `source_sql` finds the blob's size where the source may
    /// see it (`$1` names the source, `$2` the digest).
    async fn mount(
        &self,
        repo_id: i64,
        project: &str,
        source_sql: &'static str,
        source: &str,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let budget = self.lock_project(&mut tx, project).await?;
        let row = sqlx::query(source_sql)
            .bind(source)
            .bind(digest.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let size = row.get::<i64, _>(0) as u64;
        self.hold_blob(&mut tx, &budget, digest, size, true, now)
            .await?;
        link(&mut tx, repo_id, digest, now).await?;
        tx.commit().await?;
        Ok(Some(size))
    }

    /// Holds a blob that just became visible in a repository of the
    /// project against its quota until a manifest references it. A blob
    /// the project already pays for (referenced by one of its manifests,
    /// or reserved by an earlier upload or mount), or a base project's,
    /// needs no room: a re-upload of it is never refused; its reservation,
    /// if any, is renewed. Any other blob is admitted first when `admit`.
    async fn hold_blob(
        &self,
        tx: &mut Tx<'_>,
        budget: &Budget,
        digest: &Digest,
        size: u64,
        admit: bool,
        now: i64,
    ) -> Result<()> {
        if self.costs_nothing(tx, budget, digest).await? {
            return Ok(());
        }
        let reserved = self
            .reservation_of(tx, &budget.project, digest, now)
            .await?
            > 0;
        if admit && !reserved {
            self.admit(tx, budget, size, 0).await?;
        }
        self.reserve_blob(tx, &budget.project, digest, size, now)
            .await
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
        // No longer held for a manifest of this project, unless another
        // repository of the project still has it.
        sqlx::query(
            "DELETE FROM reservations WHERE project = $1 AND digest = $2 AND NOT EXISTS ( \
             SELECT 1 FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id \
             WHERE r.project = $1 AND rb.digest = $2)",
        )
        .bind(repo.project())
        .bind(digest.as_str())
        .execute(&mut *tx)
        .await?;
        touch_blob(&mut tx, digest, now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }

    // ----- uploads --------------------------------------------------------

    pub async fn upload_insert(
        &self,
        id: &str,
        repo_id: i64,
        hash_state: &[u8],
        backend_state: &[u8],
    ) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO uploads (id, repo_id, size, hash_state, created_at, updated_at, backend_state) \
             VALUES ($1, $2, 0, $3, $4, $4, $5)",
        )
        .bind(id)
        .bind(repo_id)
        .bind(hash_state)
        .bind(now)
        .bind(backend_state)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub async fn upload_get(&self, id: &str) -> Result<Option<UploadRecord>> {
        let row = sqlx::query(
            "SELECT u.id, u.repo_id, r.name, u.size, u.hash_state, u.updated_at, u.backend_state \
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
            backend_state: r.get::<Option<Vec<u8>>, _>(6).unwrap_or_default(),
        }))
    }

    /// Moves an upload from `old_size` to `new_size` and drops what its
    /// chunk had reserved. Returns false when the upload changed meanwhile
    /// (another request appended, or it was removed).
    pub async fn upload_advance(
        &self,
        id: &str,
        old_size: u64,
        new_size: u64,
        hash_state: &[u8],
        backend_state: &[u8],
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE uploads SET size = $1, hash_state = $2, updated_at = $3, pending = 0, \
             backend_state = $6 WHERE id = $4 AND size = $5",
        )
        .bind(new_size as i64)
        .bind(hash_state)
        .bind(now_ms())
        .bind(id)
        .bind(old_size as i64)
        .bind(backend_state)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Forgets what a failed chunk had reserved.
    pub async fn upload_release(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE uploads SET pending = 0 WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    pub async fn upload_delete(&self, id: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await?
            .rows_affected();
        Ok(n == 1)
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
}

/// Makes `digest` visible in `repo_id`.
async fn link(tx: &mut Tx<'_>, repo_id: i64, digest: &Digest, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO repo_blobs (repo_id, digest, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (repo_id, digest) DO NOTHING",
    )
    .bind(repo_id)
    .bind(digest.as_str())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    touch_blob(tx, digest, now).await
}

/// Records that a reference to `digest` appeared or went: GC's clock.
pub(crate) async fn touch_blob(tx: &mut Tx<'_>, digest: &Digest, now: i64) -> Result<()> {
    sqlx::query("UPDATE blobs SET last_ref_change = $1 WHERE digest = $2")
        .bind(now)
        .bind(digest.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
