//! What garbage collection and retention may remove, and removing it
//! without racing a push.
//!
//! A blob may go when no manifest anywhere references it, no unexpired
//! reservation holds it, and no reference to it appeared or went for the
//! grace period (`last_ref_change`, bumped by uploads, mounts, manifest
//! commits and deletes — not the blob's age). The row is re-checked and
//! removed in one transaction; the bytes go after it commits, in a second
//! one holding a placeholder row, so a push that claims the blob meanwhile
//! either waits for GC to finish (and uploads the bytes again) or makes GC
//! leave the bytes. No failure in between leaves a row without its bytes.

use std::collections::{BTreeMap, HashSet};

use sqlx::Row;

use super::{Metadata, now_ms};
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcCandidate {
    pub digest: String,
    pub size: u64,
}

/// A manifest retention would remove, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunableManifest {
    pub repository: String,
    pub digest: String,
    pub media_type: String,
    pub tags: Vec<String>,
    pub reason: String,
}

impl Metadata {
    /// Blobs GC may remove: see the module documentation.
    pub async fn gc_candidates(&self, cutoff_ms: i64) -> Result<Vec<GcCandidate>> {
        let rows = sqlx::query(concat!(
            "SELECT b.digest, b.size FROM blobs b WHERE b.last_ref_change < $1 ",
            "AND NOT EXISTS (SELECT 1 FROM manifest_refs mr WHERE mr.ref_digest = b.digest) ",
            "AND NOT EXISTS (SELECT 1 FROM reservations rs WHERE rs.digest = b.digest AND rs.expires_at > $2) ",
            "ORDER BY b.digest"
        ))
        .bind(cutoff_ms)
        .bind(now_ms())
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| GcCandidate {
                digest: r.get(0),
                size: r.get::<i64, _>(1) as u64,
            })
            .collect())
    }

    /// Removes a candidate if it still qualifies: its links and row, then
    /// its bytes through `remove`, in a second transaction that a push
    /// claiming the digest waits for (and that leaves the bytes alone if one
    /// claimed it in between). Returns whether the rows went.
    pub async fn gc_delete<F, Fut>(&self, digest: &str, cutoff_ms: i64, remove: F) -> Result<bool>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut tx = self.write.begin().await?;
        let still = sqlx::query(self.pick(
            concat!(
                "SELECT b.digest, b.size FROM blobs b WHERE b.last_ref_change < $1 ",
                "AND NOT EXISTS (SELECT 1 FROM manifest_refs mr WHERE mr.ref_digest = b.digest) ",
                "AND NOT EXISTS (SELECT 1 FROM reservations rs WHERE rs.digest = b.digest AND rs.expires_at > $2) ",
                "AND b.digest = $3"
            ),
            concat!(
                "SELECT b.digest, b.size FROM blobs b WHERE b.last_ref_change < $1 ",
                "AND NOT EXISTS (SELECT 1 FROM manifest_refs mr WHERE mr.ref_digest = b.digest) ",
                "AND NOT EXISTS (SELECT 1 FROM reservations rs WHERE rs.digest = b.digest AND rs.expires_at > $2) ",
                "AND b.digest = $3 FOR UPDATE OF b"
            ),
        ))
        .bind(cutoff_ms)
        .bind(now_ms())
        .bind(digest)
        .fetch_optional(&mut *tx)
        .await?;
        if still.is_none() {
            return Ok(false);
        }
        forget_rows(&mut tx, digest).await?;
        tx.commit().await?;
        // The bytes after the rows are gone — never before a commit that
        // could fail (the database stopping) and leave a row without
        // bytes — and only if no push claimed the digest meanwhile.
        // Stopped in between, the bytes stay, recorded nowhere, for
        // `fsck --repair`.
        self.orphan_delete(digest, remove).await?;
        Ok(true)
    }

    /// Manifests retention would remove: in each repository, tagged images
    /// beyond the newest `keep` (the project's own setting, or
    /// `default_keep`), and manifests untagged for longer than
    /// `untagged_grace_ms` — except children of an index that stays and
    /// referrers (signatures, SBOMs) of a manifest that stays.
    pub async fn retention_candidates(
        &self,
        project: Option<&str>,
        default_keep: u32,
        untagged_grace_ms: i64,
    ) -> Result<Vec<PrunableManifest>> {
        let rows = sqlx::query(
            "SELECT r.id, r.name, p.retention_keep, m.digest, m.media_type, m.untagged_at, m.subject, \
             (SELECT MAX(t.updated_at) FROM tags t WHERE t.repo_id = m.repo_id AND t.digest = m.digest) \
             FROM manifests m JOIN repositories r ON r.id = m.repo_id \
             JOIN projects p ON p.name = r.project \
             WHERE ($1 IS NULL OR r.project = $1) ORDER BY r.name",
        )
        .bind(project)
        .fetch_all(&self.read)
        .await?;
        struct M {
            digest: String,
            media_type: String,
            untagged_at: Option<i64>,
            subject: Option<String>,
            last_tagged: Option<i64>,
        }
        let mut repos: BTreeMap<(i64, String), (u32, Vec<M>)> = BTreeMap::new();
        for r in rows {
            let keep = r
                .get::<Option<i64>, _>(2)
                .map(|k| k.max(0) as u32)
                .unwrap_or(default_keep);
            repos
                .entry((r.get(0), r.get(1)))
                .or_insert_with(|| (keep, Vec::new()))
                .1
                .push(M {
                    digest: r.get(3),
                    media_type: r.get(4),
                    untagged_at: r.get(5),
                    subject: r.get(6),
                    last_tagged: r.get(7),
                });
        }
        let now = now_ms();
        let mut out = Vec::new();
        for ((repo_id, name), (keep, mut manifests)) in repos {
            let children: HashSet<String> = sqlx::query(
                "SELECT ref_digest FROM manifest_refs WHERE repo_id = $1 AND is_manifest = 1",
            )
            .bind(repo_id)
            .fetch_all(&self.read)
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
            // Newest tagged first.
            manifests.sort_by(|a, b| {
                b.last_tagged
                    .cmp(&a.last_tagged)
                    .then(a.digest.cmp(&b.digest))
            });
            let mut going: HashSet<String> = HashSet::new();
            let mut found = Vec::new();
            let mut kept_tagged = 0;
            for m in &manifests {
                if m.last_tagged.is_none() || children.contains(&m.digest) {
                    continue;
                }
                if kept_tagged < keep {
                    kept_tagged += 1;
                    continue;
                }
                going.insert(m.digest.clone());
                found.push((m, format!("older than the newest {keep} tagged images")));
            }
            let present: HashSet<&str> = manifests.iter().map(|m| m.digest.as_str()).collect();
            for m in &manifests {
                let Some(since) = m.untagged_at else { continue };
                if m.last_tagged.is_some()
                    || since > now - untagged_grace_ms
                    || children.contains(&m.digest)
                {
                    continue;
                }
                let live_referrer = m
                    .subject
                    .as_deref()
                    .is_some_and(|s| present.contains(s) && !going.contains(s));
                if live_referrer {
                    continue;
                }
                going.insert(m.digest.clone());
                found.push((
                    m,
                    format!(
                        "untagged for more than {} hours",
                        untagged_grace_ms / 3_600_000
                    ),
                ));
            }
            for (m, reason) in found {
                let tags = sqlx::query(
                    "SELECT name FROM tags WHERE repo_id = $1 AND digest = $2 ORDER BY name",
                )
                .bind(repo_id)
                .bind(&m.digest)
                .fetch_all(&self.read)
                .await?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
                out.push(PrunableManifest {
                    repository: name.clone(),
                    digest: m.digest.clone(),
                    media_type: m.media_type.clone(),
                    tags,
                    reason,
                });
            }
        }
        Ok(out)
    }

    /// Sets (or with `None` removes) a project's own retention count.
    pub async fn set_retention(&self, project: &str, keep: Option<u32>) -> Result<bool> {
        let n =
            sqlx::query("UPDATE projects SET retention_keep = $1, updated_at = $2 WHERE name = $3")
                .bind(keep.map(|k| k as i64))
                .bind(now_ms())
                .bind(project)
                .execute(&self.write)
                .await?
                .rows_affected();
        Ok(n == 1)
    }
}

/// Deletes a blob's links, reservations and row (its bytes are the
/// caller's, after the commit).
pub(super) async fn forget_rows(tx: &mut super::Tx<'_>, digest: &str) -> Result<()> {
    for sql in [
        "DELETE FROM repo_blobs WHERE digest = $1",
        "DELETE FROM reservations WHERE digest = $1",
        "DELETE FROM blobs WHERE digest = $1",
    ] {
        sqlx::query(sql).bind(digest).execute(&mut **tx).await?;
    }
    Ok(())
}
