//! Quotas: exact and deduplication-aware.
//!
//! - Usage of a project = the sizes of the distinct blobs in its
//!   `project_blobs` rows (manifests, configs, layers referenced by any of
//!   its manifests), each counted once. For a project that is not a base
//!   project, blobs that a base project (`platform`) also holds cost nothing.
//! - Reserved = unexpired reservations of blobs uploaded or mounted but not
//!   yet referenced by a manifest (and of builds about to export).
//!   Reservations are never usage: a failed push leaves usage as it was,
//!   and its reservations expire.
//! - Bytes of uploads in flight are neither: an upload may turn out to be a
//!   blob the project already holds, so it is judged when it completes and
//!   its digest is known. In flight, a project's uploads may hold at most
//!   the larger of its quota and the upload headroom.
//! - Every change that can grow usage or reservations locks the project's
//!   row first (`FOR UPDATE` on PostgreSQL; SQLite has one writer), checks
//!   `used + reserved + needed <= quota`, and writes in the same
//!   transaction: concurrent pushes cannot overshoot, and pushes to
//!   different projects lock different rows.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Metadata, Tx, now_ms};
use crate::digest::Digest;
use crate::error::{Result, StorageError};

/// A project's numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub project: String,
    pub used_bytes: u64,
    pub reserved_bytes: u64,
    /// Bytes of uploads in flight (not usage, not reserved: bounded by the
    /// upload headroom).
    pub uploading_bytes: u64,
    /// Distinct blobs (manifests included) counted, base-project blobs too.
    pub blob_count: u64,
    pub quota_bytes: Option<u64>,
    pub is_base: bool,
    /// Highest warning threshold (percent) recorded for the project.
    pub warned_percent: u32,
}

impl Usage {
    pub fn percent(&self) -> Option<f64> {
        self.quota_bytes.map(|q| {
            if q == 0 {
                100.0
            } else {
                self.used_bytes as f64 * 100.0 / q as f64
            }
        })
    }
}

/// A project's quota, read under its lock.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    pub project: String,
    pub quota: Option<u64>,
    pub is_base: bool,
    /// The running usage when the lock was taken.
    pub used: u64,
    /// The highest warning threshold recorded (percent).
    pub warned_percent: u32,
}

/// A difference between the running (project, blob) rows and a recompute
/// from the manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub project: String,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub used_before: u64,
    pub used_after: u64,
}

// PostgreSQL's SUM of BIGINT is NUMERIC: cast back.
const USED_SQL: &str = "SELECT CAST(COALESCE(SUM(pb.size), 0) AS BIGINT), COUNT(*) FROM project_blobs pb \
     WHERE pb.project = $1 AND ($2 = 1 OR NOT EXISTS ( \
       SELECT 1 FROM project_blobs b JOIN projects bp ON bp.name = b.project \
       WHERE bp.is_base = 1 AND b.digest = pb.digest))";

const RESERVED_SQL: &str = "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM reservations \
     WHERE project = $1 AND expires_at > $2";

/// Bytes of the project's uploads in flight: received, and announced by
/// chunks being read.
const IN_FLIGHT_SQL: &str = "SELECT CAST(COALESCE(SUM(u.size + u.pending), 0) AS BIGINT) \
     FROM uploads u JOIN repositories r ON r.id = u.repo_id WHERE r.project = $1";

/// What an upload into a project may take, known before its body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobBudget {
    /// The project holds the blob already (a manifest of it references the
    /// blob, or a recent upload or mount reserved it), or a base project
    /// holds it: it costs nothing. `size` is the stored blob's size.
    Free { size: Option<u64> },
    /// The blob is new to the project: it may have at most this many bytes
    /// (`None`: the project has no quota).
    Room(Option<u64>),
}

impl Metadata {
    /// Locks the project's row for the rest of the transaction and reads
    /// its quota. A repository without a project row (none should exist)
    /// has no quota.
    pub(crate) async fn lock_project(&self, tx: &mut Tx<'_>, project: &str) -> Result<Budget> {
        let row = sqlx::query(self.pick(
            "SELECT quota_bytes, is_base, used_bytes, warned_percent FROM projects WHERE name = $1",
            "SELECT quota_bytes, is_base, used_bytes, warned_percent FROM projects WHERE name = $1 FOR UPDATE",
        ))
        .bind(project)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(budget(project, row))
    }

    /// Whether holding `digest` adds nothing to the project's usage: the
    /// project counts it already, or a base project holds it.
    pub(crate) async fn costs_nothing(
        &self,
        tx: &mut Tx<'_>,
        budget: &Budget,
        digest: &Digest,
    ) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM project_blobs pb JOIN projects p ON p.name = pb.project \
             WHERE pb.digest = $1 AND (pb.project = $2 OR (p.is_base = 1 AND $3 = 0)) LIMIT 1",
        )
        .bind(digest.as_str())
        .bind(&budget.project)
        .bind(budget.is_base as i64)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.is_some())
    }

    /// Whether `digest` costs the project nothing more: as
    /// [`Metadata::costs_nothing`], or the project holds an unexpired
    /// reservation of it (an upload or mount of it, into any of its
    /// repositories, that no manifest references yet).
    pub(crate) async fn already_paid(
        &self,
        tx: &mut Tx<'_>,
        budget: &Budget,
        digest: &Digest,
        now: i64,
    ) -> Result<bool> {
        Ok(self.costs_nothing(tx, budget, digest).await?
            || self
                .reservation_of(tx, &budget.project, digest, now)
                .await?
                > 0)
    }

    /// Refuses when `needed` more bytes (after `released` reserved bytes
    /// turn into usage) would take the project over its quota.
    pub(crate) async fn admit(
        &self,
        tx: &mut Tx<'_>,
        budget: &Budget,
        needed: u64,
        released: u64,
    ) -> Result<()> {
        let Some(quota) = budget.quota else {
            return Ok(());
        };
        if needed <= released {
            return Ok(());
        }
        let used = budget.used;
        let reserved = reserved_in(tx, &budget.project, now_ms()).await?;
        let after = used + reserved.saturating_sub(released) + needed;
        if after > quota {
            return Err(StorageError::QuotaExceeded {
                project: budget.project.clone(),
                used,
                reserved,
                quota,
                needed,
            });
        }
        Ok(())
    }

    /// Holds a blob uploaded or mounted into the project against its quota.
    pub(crate) async fn reserve_blob(
        &self,
        tx: &mut Tx<'_>,
        project: &str,
        digest: &Digest,
        size: u64,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO reservations (project, digest, bytes, expires_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (project, digest) DO UPDATE SET expires_at = excluded.expires_at",
        )
        .bind(project)
        .bind(digest.as_str())
        .bind(size as i64)
        .bind(now + self.reservation_ttl_ms)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The unexpired reservation of `digest` in the project, in bytes.
    pub(crate) async fn reservation_of(
        &self,
        tx: &mut Tx<'_>,
        project: &str,
        digest: &Digest,
        now: i64,
    ) -> Result<u64> {
        let row = sqlx::query(
            "SELECT bytes FROM reservations WHERE project = $1 AND digest = $2 AND expires_at > $3",
        )
        .bind(project)
        .bind(digest.as_str())
        .bind(now)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.map(|r| r.get::<i64, _>(0) as u64).unwrap_or(0))
    }

    /// Announces `bytes` more for upload `id` (a chunk about to stream).
    /// Bytes in flight are not usage and are not refused for the quota
    /// (they may turn out to be a blob the project holds already: that is
    /// decided when the upload completes), but a project's uploads in
    /// flight may hold at most the larger of its quota and the upload
    /// headroom, so a client cannot fill the disk with uploads it never
    /// completes. A project without a quota has no such bound.
    pub async fn upload_reserve(&self, id: &str, project: &str, bytes: u64) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let budget = self.lock_project(&mut tx, project).await?;
        if let Some(quota) = budget.quota {
            let limit = quota.max(self.upload_headroom);
            let in_flight = in_flight_in(&mut tx, project).await?;
            if in_flight.saturating_add(bytes) > limit {
                return Err(StorageError::UploadHeadroom {
                    project: project.to_owned(),
                    in_flight,
                    limit,
                    needed: bytes,
                });
            }
        }
        let n = sqlx::query("UPDATE uploads SET pending = pending + $1 WHERE id = $2")
            .bind(bytes as i64)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StorageError::UploadUnknown(id.to_owned()));
        }
        tx.commit().await?;
        Ok(())
    }

    /// What an upload of `digest` into the project may take, decided before
    /// its body is read: nothing if the project already pays for the blob
    /// (or a base project holds it), else the room left under the quota.
    /// Checked again, under the project's lock, when the blob is linked.
    pub async fn blob_budget(&self, project: &str, digest: &Digest) -> Result<BlobBudget> {
        let mut tx = self.read.begin().await?;
        let budget = self.lock_project_read(&mut tx, project).await?;
        let now = now_ms();
        if self.already_paid(&mut tx, &budget, digest, now).await? {
            let size = sqlx::query("SELECT size FROM blobs WHERE digest = $1")
                .bind(digest.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.get::<i64, _>(0).max(0) as u64);
            tx.commit().await?;
            return Ok(BlobBudget::Free { size });
        }
        let room = match budget.quota {
            None => None,
            Some(quota) => {
                let reserved = reserved_in(&mut tx, project, now).await?;
                Some(quota.saturating_sub(budget.used + reserved))
            }
        };
        tx.commit().await?;
        Ok(BlobBudget::Room(room))
    }

    /// Checks, without reserving, that the project may take blob `digest`
    /// of `size` bytes: it costs nothing, or it fits the quota. (The upload
    /// is complete and verified; its blob is linked, and checked again,
    /// next.)
    pub async fn check_blob(&self, project: &str, digest: &Digest, size: u64) -> Result<()> {
        let mut tx = self.read.begin().await?;
        let budget = self.lock_project_read(&mut tx, project).await?;
        if budget.quota.is_some()
            && !self
                .already_paid(&mut tx, &budget, digest, now_ms())
                .await?
        {
            self.admit(&mut tx, &budget, size, 0).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Checks, without reserving, that the project has room for `bytes`
    /// (a monolithic upload, checked again when it completes).
    pub async fn check_room(&self, project: &str, bytes: u64) -> Result<()> {
        let mut tx = self.read.begin().await?;
        let budget = self.lock_project_read(&mut tx, project).await?;
        self.admit(&mut tx, &budget, bytes, 0).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Bytes the project can still take (quota − used − reserved), or
    /// `None` when it has no quota.
    pub async fn room(&self, project: &str) -> Result<Option<u64>> {
        let mut tx = self.read.begin().await?;
        let budget = self.lock_project_read(&mut tx, project).await?;
        let Some(quota) = budget.quota else {
            return Ok(None);
        };
        let reserved = reserved_in(&mut tx, project, now_ms()).await?;
        tx.commit().await?;
        Ok(Some(quota.saturating_sub(budget.used + reserved)))
    }

    async fn lock_project_read(&self, tx: &mut Tx<'_>, project: &str) -> Result<Budget> {
        let row = sqlx::query(
            "SELECT quota_bytes, is_base, used_bytes, warned_percent FROM projects WHERE name = $1",
        )
        .bind(project)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(budget(project, row))
    }

    /// A project's usage, or `None` if it does not exist.
    pub async fn usage(&self, project: &str) -> Result<Option<Usage>> {
        let mut tx = self.read.begin().await?;
        let row = sqlx::query(
            "SELECT quota_bytes, is_base, warned_percent FROM projects WHERE name = $1",
        )
        .bind(project)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let is_base = row.get::<i64, _>(1) != 0;
        let used = running_used(&mut tx, project).await?;
        let reserved = reserved_in(&mut tx, project, now_ms()).await?;
        let uploading = in_flight_in(&mut tx, project).await?;
        let all = sqlx::query("SELECT COUNT(*) FROM project_blobs WHERE project = $1")
            .bind(project)
            .fetch_one(&mut *tx)
            .await?
            .get::<i64, _>(0) as u64;
        tx.commit().await?;
        Ok(Some(Usage {
            project: project.to_owned(),
            used_bytes: used,
            reserved_bytes: reserved,
            uploading_bytes: uploading,
            blob_count: all,
            quota_bytes: row.get::<Option<i64>, _>(0).map(|q| q.max(0) as u64),
            is_base,
            warned_percent: row.get::<i64, _>(2).max(0) as u32,
        }))
    }

    /// A project's running usage, quota and warning level in one row read
    /// (cheap enough to run after every push).
    pub async fn quota_state(&self, project: &str) -> Result<Option<(u64, Option<u64>, u32)>> {
        let row = sqlx::query(
            "SELECT used_bytes, quota_bytes, warned_percent FROM projects WHERE name = $1",
        )
        .bind(project)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| {
            (
                r.get::<i64, _>(0).max(0) as u64,
                r.get::<Option<i64>, _>(1).map(|q| q.max(0) as u64),
                r.get::<i64, _>(2).max(0) as u32,
            )
        }))
    }

    /// Every project's running usage, quota and warning level in one query
    /// (what the dashboard's lists show: reservations, uploads in flight
    /// and blob counts are left at 0).
    pub async fn usages_running(&self) -> Result<Vec<Usage>> {
        let rows = sqlx::query(
            "SELECT name, used_bytes, quota_bytes, is_base, warned_percent FROM projects ORDER BY name",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Usage {
                project: r.get(0),
                used_bytes: r.get::<i64, _>(1).max(0) as u64,
                reserved_bytes: 0,
                uploading_bytes: 0,
                blob_count: 0,
                quota_bytes: r.get::<Option<i64>, _>(2).map(|q| q.max(0) as u64),
                is_base: r.get::<i64, _>(3) != 0,
                warned_percent: r.get::<i64, _>(4).max(0) as u32,
            })
            .collect())
    }

    /// Every project's usage, by name.
    pub async fn usages(&self) -> Result<Vec<Usage>> {
        let mut out = Vec::new();
        for p in self.projects().await? {
            if let Some(u) = self.usage(&p.name).await? {
                out.push(u);
            }
        }
        Ok(out)
    }

    /// Sets (or with `None` removes) a project's quota. False if the
    /// project does not exist.
    pub async fn set_quota(&self, project: &str, quota: Option<u64>) -> Result<bool> {
        let n =
            sqlx::query("UPDATE projects SET quota_bytes = $1, updated_at = $2 WHERE name = $3")
                .bind(quota.map(|q| q as i64))
                .bind(now_ms())
                .bind(project)
                .execute(&self.write)
                .await?
                .rows_affected();
        Ok(n == 1)
    }

    /// Marks exactly `names` as base projects. When that changes which
    /// projects are base, every running count is recomputed.
    pub async fn set_base_projects(&self, names: &[String]) -> Result<()> {
        let current: Vec<String> = self
            .projects()
            .await?
            .into_iter()
            .filter(|p| p.is_base)
            .map(|p| p.name)
            .collect();
        let existing: Vec<&String> = {
            let all = self.projects().await?;
            names
                .iter()
                .filter(|n| all.iter().any(|p| &p.name == *n))
                .collect()
        };
        let mut wanted: Vec<String> = existing.into_iter().cloned().collect();
        wanted.sort();
        let mut current = current;
        current.sort();
        if wanted == current {
            return Ok(());
        }
        let mut tx = self.write.begin().await?;
        sqlx::query("UPDATE projects SET is_base = 0")
            .execute(&mut *tx)
            .await?;
        for name in &wanted {
            sqlx::query("UPDATE projects SET is_base = 1 WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        let projects: Vec<(String, bool)> = sqlx::query("SELECT name, is_base FROM projects")
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) != 0))
            .collect();
        for (name, is_base) in projects {
            let (used, _) = used_in(&mut tx, &name, is_base).await?;
            sqlx::query("UPDATE projects SET used_bytes = $1 WHERE name = $2")
                .bind(used as i64)
                .bind(&name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records the warning threshold reached (or, going down, left). Returns
    /// the previous value.
    pub async fn set_warned_percent(&self, project: &str, percent: u32) -> Result<u32> {
        let mut tx = self.write.begin().await?;
        let before = sqlx::query("SELECT warned_percent FROM projects WHERE name = $1")
            .bind(project)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get::<i64, _>(0).max(0) as u32)
            .unwrap_or(0);
        sqlx::query("UPDATE projects SET warned_percent = $1 WHERE name = $2")
            .bind(percent as i64)
            .bind(project)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(before)
    }

    /// Removes expired reservations. Returns how many went.
    pub async fn expire_reservations(&self) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM reservations WHERE expires_at <= $1")
                .bind(now_ms())
                .execute(&self.write)
                .await?
                .rows_affected(),
        )
    }

    /// Recomputes every project's (project, blob) rows from its manifests,
    /// and its usage from those rows, and reports where they differ from
    /// the running rows and count; with `fix`, keeps the recomputed ones.
    /// Runs in one transaction, so it sees one consistent state.
    pub async fn recompute(&self, fix: bool) -> Result<Vec<Drift>> {
        let projects = self.projects().await?;
        let mut tx = self.write.begin().await?;
        let mut drifts = Vec::new();
        let mut counters = Vec::new();
        for p in &projects {
            self.lock_project(&mut tx, &p.name).await?;
            let counter = running_used(&mut tx, &p.name).await?;
            counters.push(counter);
            let expected: BTreeMap<String, i64> = sqlx::query(
                "SELECT m.digest, m.size FROM manifests m JOIN repositories r ON r.id = m.repo_id \
                 WHERE r.project = $1 \
                 UNION \
                 SELECT mr.ref_digest, b.size FROM manifest_refs mr \
                 JOIN repositories r ON r.id = mr.repo_id JOIN blobs b ON b.digest = mr.ref_digest \
                 WHERE r.project = $1 AND mr.is_manifest = 0",
            )
            .bind(&p.name)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
            .collect();
            let running: BTreeMap<String, i64> =
                sqlx::query("SELECT digest, size FROM project_blobs WHERE project = $1")
                    .bind(&p.name)
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
                    .collect();
            if expected == running {
                drifts.push(None);
                continue;
            }
            let missing = expected
                .iter()
                .filter(|(d, s)| running.get(*d) != Some(s))
                .map(|(d, _)| d.clone())
                .collect();
            let extra = running
                .keys()
                .filter(|d| !expected.contains_key(*d))
                .cloned()
                .collect();
            sqlx::query("DELETE FROM project_blobs WHERE project = $1")
                .bind(&p.name)
                .execute(&mut *tx)
                .await?;
            for (d, s) in &expected {
                sqlx::query(
                    "INSERT INTO project_blobs (project, digest, size) VALUES ($1, $2, $3)",
                )
                .bind(&p.name)
                .bind(d)
                .bind(*s)
                .execute(&mut *tx)
                .await?;
            }
            drifts.push(Some((missing, extra)));
        }
        // Usage from the (recomputed) rows, against the running count.
        let mut out = Vec::new();
        for ((p, counter), rows) in projects.iter().zip(counters).zip(drifts) {
            let (computed, _) = used_in(&mut tx, &p.name, p.is_base).await?;
            if rows.is_none() && computed == counter {
                continue;
            }
            sqlx::query("UPDATE projects SET used_bytes = $1 WHERE name = $2")
                .bind(computed as i64)
                .bind(&p.name)
                .execute(&mut *tx)
                .await?;
            let (missing, extra) = rows.unwrap_or_default();
            out.push(Drift {
                project: p.name.clone(),
                missing,
                extra,
                used_before: counter,
                used_after: computed,
            });
        }
        if fix {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(out)
    }

    /// Adds `delta` bytes to a project's running usage.
    pub(crate) async fn charge(&self, tx: &mut Tx<'_>, project: &str, delta: i64) -> Result<()> {
        if delta != 0 {
            sqlx::query("UPDATE projects SET used_bytes = used_bytes + $1 WHERE name = $2")
                .bind(delta)
                .bind(project)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Whether a base project other than `except` holds `digest`.
    pub(crate) async fn base_holds(
        &self,
        tx: &mut Tx<'_>,
        digest: &str,
        except: &str,
    ) -> Result<bool> {
        Ok(sqlx::query(
            "SELECT 1 FROM project_blobs pb JOIN projects p ON p.name = pb.project \
             WHERE pb.digest = $1 AND p.is_base = 1 AND pb.project <> $2 LIMIT 1",
        )
        .bind(digest)
        .bind(except)
        .fetch_optional(&mut **tx)
        .await?
        .is_some())
    }

    /// A base project gained (`sign` −1) or lost (+1) `digest`, and no other
    /// base project holds it: every other project holding it pays `size`
    /// less (or more).
    pub(crate) async fn shift_base_blob(
        &self,
        tx: &mut Tx<'_>,
        base: &str,
        digest: &str,
        size: u64,
        sign: i64,
    ) -> Result<()> {
        if self.base_holds(tx, digest, base).await? {
            return Ok(());
        }
        sqlx::query(
            "UPDATE projects SET used_bytes = used_bytes + $1 WHERE is_base = 0 \
             AND name IN (SELECT project FROM project_blobs WHERE digest = $2)",
        )
        .bind(sign * size as i64)
        .bind(digest)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

fn budget(project: &str, row: Option<sqlx::any::AnyRow>) -> Budget {
    match row {
        Some(r) => Budget {
            project: project.to_owned(),
            quota: r.get::<Option<i64>, _>(0).map(|q| q.max(0) as u64),
            is_base: r.get::<i64, _>(1) != 0,
            used: r.get::<i64, _>(2).max(0) as u64,
            warned_percent: r.get::<i64, _>(3).max(0) as u32,
        },
        None => Budget {
            project: project.to_owned(),
            quota: None,
            is_base: false,
            used: 0,
            warned_percent: 0,
        },
    }
}

/// The running count.
async fn running_used(tx: &mut Tx<'_>, project: &str) -> Result<u64> {
    let row = sqlx::query("SELECT used_bytes FROM projects WHERE name = $1")
        .bind(project)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|r| r.get::<i64, _>(0).max(0) as u64).unwrap_or(0))
}

async fn used_in(tx: &mut Tx<'_>, project: &str, is_base: bool) -> Result<(u64, u64)> {
    let row = sqlx::query(USED_SQL)
        .bind(project)
        .bind(is_base as i64)
        .fetch_one(&mut **tx)
        .await?;
    Ok((
        row.get::<i64, _>(0).max(0) as u64,
        row.get::<i64, _>(1).max(0) as u64,
    ))
}

async fn reserved_in(tx: &mut Tx<'_>, project: &str, now: i64) -> Result<u64> {
    let row = sqlx::query(RESERVED_SQL)
        .bind(project)
        .bind(now)
        .fetch_one(&mut **tx)
        .await?;
    Ok(row.get::<i64, _>(0).max(0) as u64)
}

async fn in_flight_in(tx: &mut Tx<'_>, project: &str) -> Result<u64> {
    let row = sqlx::query(IN_FLIGHT_SQL)
        .bind(project)
        .fetch_one(&mut **tx)
        .await?;
    Ok(row.get::<i64, _>(0).max(0) as u64)
}
