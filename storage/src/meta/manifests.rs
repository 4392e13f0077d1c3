//! Manifests, tags and referrers — and the (project, blob) rows that make a
//! project's usage, written in the same transactions.

use sqlx::Row;

use super::blobs::touch_blob;
use super::{
    ManifestRecord, Metadata, NewManifest, Referrer, Tx, manifest_record, now_ms, repo_id_tx,
};
use crate::digest::Digest;
use crate::error::{Result, StorageError};
use crate::names::RepoName;

/// The project's quota state right after a manifest was committed (for
/// warnings, without another query).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaAfter {
    pub used: u64,
    pub quota: Option<u64>,
    pub warned_percent: u32,
}

/// One entry of a tag's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagMove {
    pub tag: String,
    pub at: i64,
    /// `None`: the tag was created.
    pub old_digest: Option<String>,
    /// `None`: the tag was deleted.
    pub new_digest: Option<String>,
    /// `push`, `build`, `reuse`, `rebase` or `delete`.
    pub cause: String,
}

/// A tag and the manifest it points at.
#[derive(Debug, Clone)]
pub struct TagDetail {
    pub name: String,
    pub digest: String,
    /// When the tag was last set (epoch milliseconds).
    pub updated_at: i64,
    pub media_type: String,
    pub body: Vec<u8>,
    /// When its manifest was last pulled (epoch milliseconds).
    pub last_pulled: Option<i64>,
}

impl Metadata {
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

    /// Commits a manifest, its references and optionally a tag. In the same
    /// transaction: every referenced blob and child manifest must be in the
    /// repository with the declared size; what the manifest adds to the
    /// project's usage must fit its quota (blobs the project already holds,
    /// or that a base project holds, add nothing; their reservations are
    /// released as they become usage).
    pub async fn manifest_put(
        &self,
        repo: &RepoName,
        repo_id: i64,
        m: &NewManifest,
    ) -> Result<QuotaAfter> {
        self.manifest_put_by(repo, repo_id, m, "push").await
    }

    /// [`Metadata::manifest_put`], saying in the tag's history what moved
    /// it (`push`, `build`, `reuse`).
    pub async fn manifest_put_by(
        &self,
        repo: &RepoName,
        repo_id: i64,
        m: &NewManifest,
        cause: &str,
    ) -> Result<QuotaAfter> {
        let now = now_ms();
        let project = repo.project();
        let mut tx = self.write.begin().await?;
        let budget = self.lock_project(&mut tx, project).await?;
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

        // What becomes usage: the manifest itself and every blob it
        // references (child manifests are already the project's).
        let mut new_rows: Vec<(&Digest, u64)> = vec![(&m.digest, m.body.len() as u64)];
        new_rows.extend(
            m.refs
                .iter()
                .filter(|r| !r.is_manifest)
                .map(|r| (&r.digest, r.size)),
        );
        let (mut added, mut released) = (0u64, 0u64);
        let mut fresh = Vec::new();
        for (digest, size) in new_rows {
            if self.project_has(&mut tx, project, digest).await? {
                continue;
            }
            if !self.costs_nothing(&mut tx, &budget, digest).await? {
                added += size;
            }
            released += self.reservation_of(&mut tx, project, digest, now).await?;
            fresh.push((digest, size));
        }
        self.admit(&mut tx, &budget, added, released).await?;
        self.charge(&mut tx, project, added as i64).await?;
        if budget.is_base {
            for (digest, size) in &fresh {
                self.shift_base_blob(&mut tx, project, digest.as_str(), *size, -1)
                    .await?;
            }
        }
        for (digest, size) in &fresh {
            sqlx::query(
                "INSERT INTO project_blobs (project, digest, size) VALUES ($1, $2, $3) \
                 ON CONFLICT (project, digest) DO NOTHING",
            )
            .bind(project)
            .bind(digest.as_str())
            .bind(*size as i64)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM reservations WHERE project = $1 AND digest = $2")
                .bind(project)
                .bind(digest.as_str())
                .execute(&mut *tx)
                .await?;
        }
        for r in m.refs.iter().filter(|r| !r.is_manifest) {
            touch_blob(&mut tx, &r.digest, now).await?;
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
        let untagged_at = if m.tag.is_some() { None } else { Some(now) };
        let inserted = sqlx::query(
            "INSERT INTO manifests (repo_id, digest, media_type, size, artifact_type, subject, \
             annotations, created_at, untagged_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
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
        .bind(untagged_at)
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
            let previous = sqlx::query("SELECT digest FROM tags WHERE repo_id = $1 AND name = $2")
                .bind(repo_id)
                .bind(tag)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.get::<String, _>(0));
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
            sqlx::query(
                "UPDATE manifests SET untagged_at = NULL WHERE repo_id = $1 AND digest = $2",
            )
            .bind(repo_id)
            .bind(m.digest.as_str())
            .execute(&mut *tx)
            .await?;
            if previous.as_deref() != Some(m.digest.as_str()) {
                tag_moved(
                    &mut tx,
                    repo_id,
                    tag,
                    now,
                    previous.as_deref(),
                    Some(m.digest.as_str()),
                    cause,
                )
                .await?;
            }
            if let Some(prev) = previous.filter(|p| p != m.digest.as_str()) {
                mark_if_untagged(&mut tx, repo_id, &prev, now).await?;
            }
        }
        tx.commit().await?;
        Ok(QuotaAfter {
            used: budget.used + added,
            quota: budget.quota,
            warned_percent: budget.warned_percent,
        })
    }

    /// Deletes a manifest and the tags that point to it, and releases from
    /// the project's usage what nothing else in the project references.
    /// Refused while an index of the same repository lists it.
    pub async fn manifest_delete(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let now = now_ms();
        let unknown = || StorageError::ManifestUnknown(digest.to_string());
        let Some(repo_id) = repo_id_tx(&mut tx, repo).await? else {
            return Err(unknown());
        };
        let budget = self.lock_project(&mut tx, repo.project()).await?;
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
        let refs: Vec<String> = sqlx::query(
            "SELECT ref_digest FROM manifest_refs WHERE repo_id = $1 AND manifest_digest = $2 \
             AND is_manifest = 0",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
        let tags: Vec<String> =
            sqlx::query("SELECT name FROM tags WHERE repo_id = $1 AND digest = $2")
                .bind(repo_id)
                .bind(digest.as_str())
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
        for t in &tags {
            tag_moved(
                &mut tx,
                repo_id,
                t,
                now,
                Some(digest.as_str()),
                None,
                "delete",
            )
            .await?;
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
        for d in std::iter::once(digest.as_str()).chain(refs.iter().map(String::as_str)) {
            let still = sqlx::query(
                "SELECT 1 FROM manifests m JOIN repositories r ON r.id = m.repo_id \
                 WHERE r.project = $1 AND m.digest = $2 \
                 UNION ALL \
                 SELECT 1 FROM manifest_refs mr JOIN repositories r ON r.id = mr.repo_id \
                 WHERE r.project = $1 AND mr.ref_digest = $2",
            )
            .bind(repo.project())
            .bind(d)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
            if !still {
                let size = sqlx::query(
                    "SELECT size FROM project_blobs WHERE project = $1 AND digest = $2",
                )
                .bind(repo.project())
                .bind(d)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.get::<i64, _>(0).max(0) as u64);
                let Some(size) = size else { continue };
                sqlx::query("DELETE FROM project_blobs WHERE project = $1 AND digest = $2")
                    .bind(repo.project())
                    .bind(d)
                    .execute(&mut *tx)
                    .await?;
                if budget.is_base {
                    self.charge(&mut tx, repo.project(), -(size as i64)).await?;
                    self.shift_base_blob(&mut tx, repo.project(), d, size, 1)
                        .await?;
                } else if !self.base_holds(&mut tx, d, "").await? {
                    self.charge(&mut tx, repo.project(), -(size as i64)).await?;
                }
            }
        }
        for r in &refs {
            sqlx::query("UPDATE blobs SET last_ref_change = $1 WHERE digest = $2")
                .bind(now)
                .bind(r)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes a tag; the manifest stays (and keeps its blobs counted until
    /// it is deleted, by a client or by retention). Returns false when there
    /// was no such tag.
    pub async fn tag_delete(&self, repo: &RepoName, tag: &str) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let Some(repo_id) = repo_id_tx(&mut tx, repo).await? else {
            return Ok(false);
        };
        let Some(digest) = sqlx::query("SELECT digest FROM tags WHERE repo_id = $1 AND name = $2")
            .bind(repo_id)
            .bind(tag)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get::<String, _>(0))
        else {
            return Ok(false);
        };
        sqlx::query("DELETE FROM tags WHERE repo_id = $1 AND name = $2")
            .bind(repo_id)
            .bind(tag)
            .execute(&mut *tx)
            .await?;
        tag_moved(
            &mut tx,
            repo_id,
            tag,
            now_ms(),
            Some(&digest),
            None,
            "delete",
        )
        .await?;
        mark_if_untagged(&mut tx, repo_id, &digest, now_ms()).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Every tag of a repository with its manifest (the dashboard sorts and
    /// pages them); `None` when the repository is unknown.
    pub async fn tags_detailed(&self, repo: &RepoName) -> Result<Option<Vec<TagDetail>>> {
        let Some(repo_id) = self.repo_id(repo).await? else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT t.name, t.digest, t.updated_at, mb.media_type, mb.body, m.last_pulled_at \
             FROM tags t JOIN manifest_bodies mb ON mb.digest = t.digest \
             LEFT JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest \
             WHERE t.repo_id = $1 ORDER BY t.name",
        )
        .bind(repo_id)
        .fetch_all(&self.read)
        .await?;
        Ok(Some(
            rows.into_iter()
                .map(|r| TagDetail {
                    name: r.get(0),
                    digest: r.get(1),
                    updated_at: r.get(2),
                    media_type: r.get(3),
                    body: r.get(4),
                    last_pulled: r.get(5),
                })
                .collect(),
        ))
    }

    /// Records that a manifest was pulled at `at`.
    pub async fn manifest_pulled(&self, repo: &RepoName, digest: &str, at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE manifests SET last_pulled_at = $1 WHERE digest = $2 \
             AND repo_id = (SELECT id FROM repositories WHERE name = $3)",
        )
        .bind(at)
        .bind(digest)
        .bind(repo.as_str())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// A repository's tag history, newest first.
    pub async fn tag_history(&self, repo: &RepoName, limit: u32) -> Result<Vec<TagMove>> {
        let rows = sqlx::query(
            "SELECT h.tag, h.at, h.old_digest, h.new_digest, h.cause FROM tag_history h \
             JOIN repositories r ON r.id = h.repo_id WHERE r.name = $1 ORDER BY h.id DESC LIMIT $2",
        )
        .bind(repo.as_str())
        .bind(limit.clamp(1, 1000) as i64)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| TagMove {
                tag: r.get(0),
                at: r.get(1),
                old_digest: r.get(2),
                new_digest: r.get(3),
                cause: r.get(4),
            })
            .collect())
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

    /// Whether the project already counts `digest`.
    pub(crate) async fn project_has(
        &self,
        tx: &mut Tx<'_>,
        project: &str,
        digest: &Digest,
    ) -> Result<bool> {
        Ok(
            sqlx::query("SELECT 1 FROM project_blobs WHERE project = $1 AND digest = $2")
                .bind(project)
                .bind(digest.as_str())
                .fetch_optional(&mut **tx)
                .await?
                .is_some(),
        )
    }
}

/// Starts the untagged clock of a manifest that has no tag left.
pub(super) async fn mark_if_untagged(
    tx: &mut Tx<'_>,
    repo_id: i64,
    digest: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE manifests SET untagged_at = $1 WHERE repo_id = $2 AND digest = $3 \
         AND untagged_at IS NULL \
         AND NOT EXISTS (SELECT 1 FROM tags WHERE repo_id = $2 AND digest = $3)",
    )
    .bind(now)
    .bind(repo_id)
    .bind(digest)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records a tag's move in its history.
pub(crate) async fn tag_moved(
    tx: &mut super::Tx<'_>,
    repo_id: i64,
    tag: &str,
    at: i64,
    old: Option<&str>,
    new: Option<&str>,
    cause: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO tag_history (repo_id, tag, at, old_digest, new_digest, cause) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(repo_id)
    .bind(tag)
    .bind(at)
    .bind(old)
    .bind(new)
    .bind(cause)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
