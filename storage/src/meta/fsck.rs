//! What the integrity check (`crate::fsck`) asks of the metadata, and its
//! repairs: forgetting a damaged blob once no manifest uses it, and
//! removing stored bytes no row names — each in a transaction that a push
//! of the same digest waits for, as GC's removals are.

use std::collections::HashSet;
use std::future::Future;

use sqlx::Row;

use super::{Metadata, now_ms};
use crate::error::{Result, StorageError};

/// A blob the metadata records.
#[derive(Debug, Clone)]
pub struct BlobRow {
    pub digest: String,
    pub size: u64,
    /// Claimed by a push still under way (its bytes may not be there yet).
    pub in_flight: bool,
    /// Linked to a repository, referenced by a manifest, or held by an
    /// unexpired reservation: something has seen it. A row nothing saw is
    /// one a push claimed and never finished (killed before its bytes
    /// were published).
    pub used: bool,
}

/// A manifest reference that does not resolve in its repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DanglingRef {
    pub repository: String,
    pub manifest: String,
    pub reference: String,
    pub is_manifest: bool,
}

impl Metadata {
    /// A consistent copy of a SQLite database in the file `path` (SQLite's
    /// `VACUUM INTO`: one read transaction, writers go on).
    pub async fn sqlite_snapshot(&self, path: &std::path::Path) -> Result<()> {
        if self.backend() != super::Backend::Sqlite {
            return Err(StorageError::Conflict(
                "a snapshot is SQLite's; back PostgreSQL up with pg_dump".into(),
            ));
        }
        sqlx::query("VACUUM INTO $1")
            .bind(path.display().to_string())
            .execute(&self.read)
            .await?;
        Ok(())
    }

    /// SQLite's own check of its file (`PRAGMA integrity_check`): `None`
    /// when it says ok (and on PostgreSQL, which checks itself), else what
    /// it found.
    pub async fn sqlite_integrity(&self) -> Result<Option<String>> {
        if self.backend() != super::Backend::Sqlite {
            return Ok(None);
        }
        let rows = sqlx::query("PRAGMA integrity_check")
            .fetch_all(&self.read)
            .await?;
        let lines: Vec<String> = rows.into_iter().map(|r| r.get(0)).collect();
        Ok((lines != ["ok"]).then(|| lines.join("; ")))
    }

    /// Manifests in all repositories.
    pub async fn manifest_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM manifests")
            .fetch_one(&self.read)
            .await?
            .get(0);
        Ok(n as u64)
    }

    /// Every blob row, in digest order.
    pub async fn fsck_blob_rows(&self) -> Result<Vec<BlobRow>> {
        let now = now_ms();
        let rows = sqlx::query(concat!(
            "SELECT b.digest, b.size, b.last_ref_change, ",
            "CASE WHEN EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest) ",
            "  OR EXISTS (SELECT 1 FROM manifest_refs mr WHERE mr.ref_digest = b.digest) ",
            "  OR EXISTS (SELECT 1 FROM reservations rs WHERE rs.digest = b.digest AND rs.expires_at > $1) ",
            "THEN 1 ELSE 0 END ",
            "FROM blobs b ORDER BY b.digest"
        ))
        .bind(now)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| BlobRow {
                digest: r.get(0),
                size: r.get::<i64, _>(1) as u64,
                in_flight: r.get::<i64, _>(2) > now,
                used: r.get::<i32, _>(3) != 0,
            })
            .collect())
    }

    /// Manifest references that name no blob linked to the manifest's
    /// repository, or no manifest there.
    pub async fn fsck_dangling_refs(&self) -> Result<Vec<DanglingRef>> {
        let rows = sqlx::query(concat!(
            "SELECT r.name, mr.manifest_digest, mr.ref_digest, mr.is_manifest ",
            "FROM manifest_refs mr JOIN repositories r ON r.id = mr.repo_id WHERE ",
            "(mr.is_manifest = 0 AND NOT EXISTS (SELECT 1 FROM repo_blobs rb JOIN blobs b ",
            "  ON b.digest = rb.digest WHERE rb.repo_id = mr.repo_id AND rb.digest = mr.ref_digest)) ",
            "OR (mr.is_manifest = 1 AND NOT EXISTS (SELECT 1 FROM manifests m ",
            "  WHERE m.repo_id = mr.repo_id AND m.digest = mr.ref_digest)) ",
            "ORDER BY r.name, mr.manifest_digest, mr.ref_digest"
        ))
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| DanglingRef {
                repository: r.get(0),
                manifest: r.get(1),
                reference: r.get(2),
                is_manifest: r.get::<i64, _>(3) != 0,
            })
            .collect())
    }

    /// The manifests (repository, digest) that reference blob `digest`,
    /// and every index above them, indexes first: the order they can be
    /// deleted in.
    pub async fn manifests_using_blob(&self, digest: &str) -> Result<Vec<(String, String)>> {
        let direct = sqlx::query(
            "SELECT r.name, mr.manifest_digest, mr.repo_id FROM manifest_refs mr \
             JOIN repositories r ON r.id = mr.repo_id \
             WHERE mr.ref_digest = $1 AND mr.is_manifest = 0",
        )
        .bind(digest)
        .fetch_all(&self.read)
        .await?;
        let mut order: Vec<(String, String, i64)> = direct
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let mut seen: HashSet<(i64, String)> =
            order.iter().map(|(_, d, id)| (*id, d.clone())).collect();
        let mut at = 0;
        while at < order.len() {
            let (_, child, repo_id) = order[at].clone();
            let parents = sqlx::query(
                "SELECT r.name, mr.manifest_digest FROM manifest_refs mr \
                 JOIN repositories r ON r.id = mr.repo_id \
                 WHERE mr.repo_id = $1 AND mr.ref_digest = $2 AND mr.is_manifest = 1",
            )
            .bind(repo_id)
            .bind(&child)
            .fetch_all(&self.read)
            .await?;
            for p in parents {
                let (name, d): (String, String) = (p.get(0), p.get(1));
                if seen.insert((repo_id, d.clone())) {
                    order.push((name, d, repo_id));
                }
            }
            at += 1;
        }
        order.reverse();
        Ok(order.into_iter().map(|(n, d, _)| (n, d)).collect())
    }

    /// Forgets a damaged blob no manifest references any more: its links,
    /// reservations and row, then its bytes through `remove` (as GC's
    /// removals: never before the rows are gone, and a push of the same
    /// digest waits, then uploads it again).
    pub async fn blob_forget<F, Fut>(&self, digest: &str, remove: F) -> Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut tx = self.write.begin().await?;
        let used = sqlx::query(
            "SELECT r.name, mr.manifest_digest FROM manifest_refs mr \
             JOIN repositories r ON r.id = mr.repo_id WHERE mr.ref_digest = $1 LIMIT 1",
        )
        .bind(digest)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = used {
            return Err(StorageError::Conflict(format!(
                "blob {digest} is still referenced by {}@{}",
                row.get::<String, _>(0),
                row.get::<String, _>(1)
            )));
        }
        super::gc::forget_rows(&mut tx, digest).await?;
        tx.commit().await?;
        // The bytes only once no row names them (see `gc_delete`).
        self.orphan_delete(digest, remove).await?;
        Ok(())
    }

    /// Forgets the row of a blob a push claimed and never finished, if it
    /// still is one: past its claim window, linked nowhere, referenced by
    /// no manifest, held by no reservation. A push claiming the digest
    /// meanwhile waits for this transaction (or moves the window, and the
    /// row stays). Returns whether the row went.
    pub async fn leftover_forget(&self, digest: &str) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let now = now_ms();
        // The row first (locked on PostgreSQL: a claim waits), then what
        // may hold it, asked after the lock so that a link committed while
        // this waited is seen.
        let row = sqlx::query(self.pick(
            "SELECT 1 FROM blobs WHERE digest = $1",
            "SELECT 1 FROM blobs WHERE digest = $1 FOR UPDATE",
        ))
        .bind(digest)
        .fetch_optional(&mut *tx)
        .await?;
        if row.is_none() {
            return Ok(false);
        }
        let held = sqlx::query(
            "SELECT 1 FROM repo_blobs WHERE digest = $1 \
             UNION ALL SELECT 1 FROM manifest_refs WHERE ref_digest = $1 \
             UNION ALL SELECT 1 FROM reservations WHERE digest = $1 AND expires_at > $2 \
             UNION ALL SELECT 1 FROM blobs WHERE digest = $1 AND last_ref_change > $2",
        )
        .bind(digest)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_some() {
            return Ok(false);
        }
        super::gc::forget_rows(&mut tx, digest).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Removes stored bytes that no row names, unless a push claims the
    /// digest meanwhile: a placeholder row is written first (a concurrent
    /// claim waits for this transaction), the bytes removed, the
    /// placeholder dropped. Returns whether the bytes went.
    pub async fn orphan_delete<F, Fut>(&self, digest: &str, remove: F) -> Result<bool>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut tx = self.write.begin().await?;
        let now = now_ms();
        let placed = sqlx::query(
            "INSERT INTO blobs (digest, size, created_at, last_ref_change) VALUES ($1, 0, $2, $2) \
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if placed == 0 {
            return Ok(false);
        }
        remove().await?;
        sqlx::query("DELETE FROM blobs WHERE digest = $1")
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}
