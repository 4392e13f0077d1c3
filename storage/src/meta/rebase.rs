//! Stack rebase: finding tagged images, and committing rebased manifests.
//!
//! A rebase writes what a push of the rebased manifest would — the same
//! checks (every reference in the repository with its declared size), the
//! same (project, blob) rows and running count, the same tag rules — with
//! three differences that make it a rebase:
//! - the new run image's layers are linked into the app's repository in
//!   the same transaction (they are in the run image's repository; no byte
//!   is copied);
//! - the tags move only if they still point at the manifest that was
//!   rebased: a build or push that moved one meanwhile wins, and the rebase
//!   of that image writes nothing;
//! - the config and the manifest a rebase adds are admitted even over the
//!   project's quota (they are counted, so the project is then over its
//!   quota and further pushes are refused until it frees room): a tool must
//!   not stay on a vulnerable base because it is full. Layers that are not
//!   free (a run image outside the base projects) are checked as usual.
//!
//! Writes are batched: one transaction per batch of one project's images,
//! the project row locked once. Every image's checks (its tags, its blobs
//! and their sizes, what the project holds) are read for the whole batch
//! first; an image that fails one is left out and reported, and the others
//! are written together in multi-row statements. A base project's own
//! images, or a batch with layers that are not free (their quota is checked
//! image by image), go image by image instead, each in a savepoint, so one
//! image's failure rolls back that image only. Either way the build history
//! row, its log and the audit entry are written with the image: a rebase
//! is recorded exactly when it happened.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use sqlx::{Acquire, Row};

use super::manifests::mark_if_untagged;
use super::quota::Budget;
use super::{BuildRecord, ManifestRef, Metadata, NewAuditEntry, NewManifest, Tx, now_ms};
use crate::digest::Digest;
use crate::error::{Result, StorageError};
use crate::names::RepoName;

/// A manifest some tags point to.
#[derive(Debug, Clone)]
pub struct TaggedImage {
    pub repo_id: i64,
    pub repository: String,
    pub digest: String,
    pub media_type: String,
    pub body: Bytes,
    /// Every tag of the repository that points to it, in order.
    pub tags: Vec<String>,
}

/// A page of tagged images, and where the next one starts.
#[derive(Debug, Clone, Default)]
pub struct TaggedPage {
    pub images: Vec<TaggedImage>,
    /// The repository id to pass as `after` for the next page; `None`
    /// when this was the last.
    pub next: Option<i64>,
}

/// Where an image was built from, as its build history says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuildSource {
    pub image_digest: Option<String>,
    pub source_url: String,
    pub git_ref: String,
    pub git_commit: String,
    pub builder: String,
    pub env: String,
    /// What an equal build request is compared with (see
    /// [`BuildRecord::inputs`]): a rebase keeps its build's.
    pub inputs: Option<String>,
    pub git_tree: Option<String>,
}

/// One rebased image to commit.
#[derive(Debug, Clone)]
pub struct RebaseWrite {
    pub repo: RepoName,
    pub repo_id: i64,
    /// The manifest that was rebased: tags move only from it.
    pub old_digest: Digest,
    /// The rebased manifest, its references, and the build history's tag.
    pub manifest: NewManifest,
    /// The rebased config (stored and claimed before the commit).
    pub config: Digest,
    /// Blobs to link into the repository: the new run image's layers.
    pub link: Vec<Digest>,
    /// The build history entry (`kind` rebase, finished when written).
    pub build: BuildRecord,
    pub log: Vec<String>,
    pub audit: NewAuditEntry,
}

impl RebaseWrite {
    /// The blobs linked into the repository: the new run image's layers,
    /// then the config.
    fn linked(&self) -> impl Iterator<Item = &Digest> {
        self.link.iter().chain(std::iter::once(&self.config))
    }

    /// What the project's usage counts for the image, with sizes: the
    /// manifest, then its references in order (repeats included).
    fn counted(&self) -> impl Iterator<Item = (&Digest, u64)> {
        let m = &self.manifest;
        std::iter::once((&m.digest, m.body.len() as u64))
            .chain(m.refs.iter().map(|r| (&r.digest, r.size)))
    }
}

/// What became of one write.
#[derive(Debug)]
pub enum RebaseCommitted {
    /// Committed; the tags that moved, and what the project's usage grew by.
    Done { tags: Vec<String>, added_bytes: u64 },
    /// No tag points at the old manifest any more (a build or a push moved
    /// them meanwhile): nothing was written.
    Moved,
    /// Refused (a reference missing, a quota for non-free layers…);
    /// nothing was written.
    Refused(StorageError),
}

/// Rows of a multi-row statement whose rows do not come one per image (an
/// image's references, its links).
const ROWS_PER_STATEMENT: usize = 1000;

macro_rules! tags_on_sql {
    () => {
        "SELECT name FROM tags WHERE repo_id = $1 AND digest = $2 ORDER BY name"
    };
}

impl Metadata {
    /// Tagged manifests of up to `repos` repositories after repository id
    /// `after` (0: from the start), optionally of one project or one
    /// repository — grouped, one entry per (repository, manifest).
    pub async fn tagged_images(
        &self,
        after: i64,
        repos: u32,
        project: Option<&str>,
        repository: Option<&str>,
    ) -> Result<TaggedPage> {
        let ids: Vec<i64> = sqlx::query(
            "SELECT id FROM repositories WHERE id > $1 AND ($2 IS NULL OR project = $2) \
             AND ($3 IS NULL OR name = $3) ORDER BY id LIMIT $4",
        )
        .bind(after)
        .bind(project)
        .bind(repository)
        .bind(repos.max(1) as i64)
        .fetch_all(&self.read)
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
        let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
            return Ok(TaggedPage::default());
        };
        let rows = sqlx::query(
            "SELECT r.id, r.name, t.name, t.digest, mb.media_type, mb.body \
             FROM repositories r JOIN tags t ON t.repo_id = r.id \
             JOIN manifest_bodies mb ON mb.digest = t.digest \
             WHERE r.id >= $1 AND r.id <= $2 AND ($3 IS NULL OR r.project = $3) \
             AND ($4 IS NULL OR r.name = $4) \
             ORDER BY r.id, t.digest, t.name",
        )
        .bind(first)
        .bind(last)
        .bind(project)
        .bind(repository)
        .fetch_all(&self.read)
        .await?;
        let mut images: Vec<TaggedImage> = Vec::new();
        for r in rows {
            let repo_id: i64 = r.get(0);
            let tag: String = r.get(2);
            let digest: String = r.get(3);
            match images.last_mut() {
                Some(i) if i.repo_id == repo_id && i.digest == digest => i.tags.push(tag),
                _ => images.push(TaggedImage {
                    repo_id,
                    repository: r.get(1),
                    digest,
                    media_type: r.get(4),
                    body: Bytes::from(r.get::<Vec<u8>, _>(5)),
                    tags: vec![tag],
                }),
            }
        }
        Ok(TaggedPage {
            images,
            next: (ids.len() as u32 >= repos.max(1)).then_some(*last),
        })
    }

    /// The digests of every manifest of a repository (tagged or not).
    pub async fn repo_manifest_digests(&self, repo: &RepoName) -> Result<Vec<String>> {
        Ok(sqlx::query(
            "SELECT m.digest FROM manifests m JOIN repositories r ON r.id = m.repo_id \
             WHERE r.name = $1 ORDER BY m.digest",
        )
        .bind(repo.as_str())
        .fetch_all(&self.read)
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
    }

    /// For each image name of a project, where its images came from: the
    /// succeeded builds (and rebases), newest first.
    pub async fn build_sources(&self, project: &str) -> Result<HashMap<String, Vec<BuildSource>>> {
        let rows = sqlx::query(
            "SELECT image_name, image_digest, source_url, git_ref, git_commit, builder, env, inputs, \
             git_tree \
             FROM builds WHERE project = $1 AND state IN ('succeeded', 'reused') \
             ORDER BY created_at DESC, id DESC",
        )
        .bind(project)
        .fetch_all(&self.read)
        .await?;
        let mut out: HashMap<String, Vec<BuildSource>> = HashMap::new();
        for r in rows {
            out.entry(r.get(0)).or_default().push(BuildSource {
                image_digest: r.get(1),
                source_url: r.get(2),
                git_ref: r.get(3),
                git_commit: r.get(4),
                builder: r.get(5),
                env: r.get(6),
                inputs: r.get(7),
                git_tree: r.get(8),
            });
        }
        Ok(out)
    }

    /// A build history entry's kind: `build` or `rebase`.
    pub async fn build_kind(&self, id: &str) -> Result<Option<String>> {
        Ok(sqlx::query("SELECT kind FROM builds WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .map(|r| r.get(0)))
    }

    /// Claims rebased configs in one transaction (as
    /// [`Metadata::blob_claim`] does one): the rows exist, and GC leaves
    /// them alone until the commit links them or the claim window passes.
    /// Claim before storing the bytes, as an upload does.
    pub async fn rebase_claim(&self, blobs: &[(Digest, u64)]) -> Result<()> {
        if blobs.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        for chunk in blobs.chunks(500) {
            let values = value_rows(chunk.len(), 3, 2, |p| format!("({p}, $1, $2)"));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO blobs (digest, size, created_at, last_ref_change) VALUES {values} \
                 ON CONFLICT (digest) DO UPDATE SET last_ref_change = excluded.last_ref_change"
            )))
            .bind(now)
            .bind(now + self.claim_window_ms);
            for (digest, size) in chunk {
                q = q.bind(digest.as_str()).bind(*size as i64);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Commits rebased images of one project (see the module
    /// documentation); one result per write, in order. An error of the
    /// database itself fails the whole batch, and nothing of it is written.
    pub async fn rebase_commit(
        &self,
        project: &str,
        writes: &[RebaseWrite],
    ) -> Result<Vec<RebaseCommitted>> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let out = self.rebase_commit_in(&mut tx, project, writes, now).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Commits the rebased images of several projects in one transaction
    /// (fewer, larger commits: each page the database changes is written
    /// once); the projects are locked in name order. One result list per
    /// project, in the order given.
    pub async fn rebase_commit_projects(
        &self,
        batches: &[(String, Vec<RebaseWrite>)],
    ) -> Result<Vec<Vec<RebaseCommitted>>> {
        let now = now_ms();
        let mut order: Vec<usize> = (0..batches.len()).collect();
        order.sort_by(|a, b| batches[*a].0.cmp(&batches[*b].0));
        let mut out: Vec<Vec<RebaseCommitted>> = batches.iter().map(|_| Vec::new()).collect();
        let mut tx = self.write.begin().await?;
        for i in order {
            let (project, writes) = &batches[i];
            out[i] = self.rebase_commit_in(&mut tx, project, writes, now).await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn rebase_commit_in(
        &self,
        tx: &mut Tx<'_>,
        project: &str,
        writes: &[RebaseWrite],
        now: i64,
    ) -> Result<Vec<RebaseCommitted>> {
        if let Some(w) = writes.iter().find(|w| w.repo.project() != project) {
            return Err(StorageError::Conflict(format!(
                "a rebase batch of project {project} holds {} of another project",
                w.repo
            )));
        }
        let mut budget = self.lock_project(tx, project).await?;
        if !budget.is_base
            && let Some(out) = self.rebase_batch(tx, &budget, writes, now).await?
        {
            return Ok(out);
        }
        // Image by image, each in a savepoint: a base project's own images
        // (their usage moves other projects' counts), or a batch that needs
        // layers that are not free checked against the quota.
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            let before = budget.clone();
            let mut sp = Acquire::begin(&mut **tx).await?;
            match self.rebase_one(&mut sp, &mut budget, w, now).await {
                Ok(Some(done)) => {
                    sp.commit().await?;
                    out.push(done);
                }
                Ok(None) => {
                    sp.rollback().await?;
                    budget = before;
                    out.push(RebaseCommitted::Moved);
                }
                Err(
                    e @ (StorageError::ManifestBlobUnknown(_)
                    | StorageError::ManifestInvalid(_)
                    | StorageError::QuotaExceeded { .. }),
                ) => {
                    sp.rollback().await?;
                    budget = before;
                    out.push(RebaseCommitted::Refused(e));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The whole batch in a few statements per table: the checks are read
    /// for every image first, then the images that pass are written
    /// together. `None` (nothing written) when an image needs layers that
    /// are not free checked against the quota: the caller goes image by
    /// image then.
    async fn rebase_batch(
        &self,
        tx: &mut Tx<'_>,
        budget: &Budget,
        writes: &[RebaseWrite],
        now: i64,
    ) -> Result<Option<Vec<RebaseCommitted>>> {
        let project = budget.project.as_str();
        if writes.is_empty() {
            return Ok(Some(Vec::new()));
        }
        if writes
            .iter()
            .any(|w| w.manifest.refs.iter().any(|r| r.is_manifest))
        {
            return Ok(None);
        }
        let mut out: Vec<Option<RebaseCommitted>> = writes.iter().map(|_| None).collect();
        let repo_ids: Vec<i64> = {
            let mut v: Vec<i64> = writes.iter().map(|w| w.repo_id).collect();
            v.sort_unstable();
            v.dedup();
            v
        };

        // The tags still on each rebased manifest, locked until commit.
        let olds: Vec<&str> = unique(writes.iter().map(|w| w.old_digest.as_str()));
        let sql = format!(
            "SELECT repo_id, digest, name FROM tags WHERE repo_id IN ({}) AND digest IN ({}) \
             ORDER BY name{}",
            placeholders(1, repo_ids.len()),
            placeholders(1 + repo_ids.len(), olds.len()),
            self.pick("", " FOR UPDATE")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in &repo_ids {
            q = q.bind(*id);
        }
        for d in &olds {
            q = q.bind(*d);
        }
        let mut tags: HashMap<(i64, String), Vec<String>> = HashMap::new();
        for r in q.fetch_all(&mut **tx).await? {
            tags.entry((r.get(0), r.get(1))).or_default().push(r.get(2));
        }
        for (i, w) in writes.iter().enumerate() {
            if !tags.contains_key(&(w.repo_id, w.old_digest.to_string())) {
                out[i] = Some(RebaseCommitted::Moved);
            }
        }

        // The blobs to link must exist; every other reference must be in
        // the repository already; all with their declared sizes.
        let linked: Vec<&str> = unique(writes.iter().flat_map(|w| w.linked()).map(|d| d.as_str()));
        let exists: HashMap<String, u64> = self
            .sizes(
                tx,
                "SELECT digest, size FROM blobs WHERE digest IN ({list})",
                &[],
                &linked,
            )
            .await?
            .into_iter()
            .map(|(_, d, s)| (d, s))
            .collect();
        let refs: Vec<&str> = unique(
            writes
                .iter()
                .flat_map(|w| w.manifest.refs.iter())
                .map(|r| r.digest.as_str()),
        );
        let in_repo: HashSet<(i64, String, u64)> = self
            .sizes(
                tx,
                &format!(
                    "SELECT rb.repo_id, rb.digest, b.size FROM repo_blobs rb \
                     JOIN blobs b ON b.digest = rb.digest \
                     WHERE rb.repo_id IN ({{ids}}) AND rb.digest IN ({{list}}){}",
                    self.pick("", " FOR SHARE")
                ),
                &repo_ids,
                &refs,
            )
            .await?
            .into_iter()
            .collect();
        let sizes_in_repo: HashMap<(i64, &str), u64> = in_repo
            .iter()
            .map(|(id, d, s)| ((*id, d.as_str()), *s))
            .collect();
        for (i, w) in writes.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            let linked: HashSet<&str> = w.linked().map(|d| d.as_str()).collect();
            if let Some(missing) = w.linked().find(|d| !exists.contains_key(d.as_str())) {
                out[i] = Some(RebaseCommitted::Refused(StorageError::ManifestBlobUnknown(
                    missing.clone(),
                )));
                continue;
            }
            for r in &w.manifest.refs {
                let have = if linked.contains(r.digest.as_str()) {
                    exists.get(r.digest.as_str()).copied()
                } else {
                    sizes_in_repo.get(&(w.repo_id, r.digest.as_str())).copied()
                };
                if let Some(e) = size_refusal(r, have) {
                    out[i] = Some(RebaseCommitted::Refused(e));
                    break;
                }
            }
        }

        // Usage: what the project does not hold yet, in order.
        let wanted_all: Vec<&str> = unique(
            writes
                .iter()
                .flat_map(|w| w.counted().map(|(d, _)| d.as_str())),
        );
        let (mut held, free) = holdings(tx, budget, &wanted_all).await?;
        let mut added_total = 0u64;
        let mut fresh_all: Vec<(&str, u64)> = Vec::new();
        let mut added_of: Vec<u64> = vec![0; writes.len()];
        for (i, w) in writes.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            // Held from now on: a later image of the batch adds nothing.
            let fresh = fresh_of(w, &mut held, &free);
            if fresh.checked > 0 {
                // Layers that are not free: their quota is checked image
                // by image.
                return Ok(None);
            }
            added_of[i] = fresh.added;
            added_total += fresh.added;
            fresh_all.extend(fresh.blobs);
        }
        let good: Vec<usize> = (0..writes.len()).filter(|i| out[*i].is_none()).collect();
        if good.is_empty() {
            return Ok(Some(out.into_iter().map(|o| o.expect("decided")).collect()));
        }

        // The writes.
        self.hold_fresh(tx, budget, &fresh_all, added_total, true)
            .await?;
        let touched: Vec<&str> = unique(
            good.iter()
                .flat_map(|i| writes[*i].manifest.refs.iter())
                .map(|r| r.digest.as_str()),
        );
        touch_blobs(tx, &touched, now).await?;
        // Links, manifests, references — in batches of images.
        for chunk in good.chunks(50) {
            let rows: Vec<(i64, &str)> = chunk
                .iter()
                .flat_map(|i| {
                    let w = &writes[*i];
                    w.linked().map(|d| (w.repo_id, d.as_str()))
                })
                .collect();
            link_blobs(tx, rows, now).await?;

            let bodies: Vec<usize> = {
                let mut seen = HashSet::new();
                chunk
                    .iter()
                    .copied()
                    .filter(|i| seen.insert(writes[*i].manifest.digest.as_str()))
                    .collect()
            };
            let values = value_rows(bodies.len(), 2, 4, |p| format!("({p}, $1)"));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO manifest_bodies (digest, media_type, size, body, created_at) \
                 VALUES {values} ON CONFLICT (digest) DO NOTHING"
            )))
            .bind(now);
            for i in &bodies {
                let m = &writes[*i].manifest;
                q = q
                    .bind(m.digest.as_str())
                    .bind(&m.media_type)
                    .bind(m.body.len() as i64)
                    .bind(m.body.as_ref());
            }
            q.execute(&mut **tx).await?;

            let manifests: Vec<usize> = {
                let mut seen = HashSet::new();
                chunk
                    .iter()
                    .copied()
                    .filter(|i| {
                        let w = &writes[*i];
                        seen.insert((w.repo_id, w.manifest.digest.as_str()))
                    })
                    .collect()
            };
            let values = value_rows(manifests.len(), 2, 7, |p| format!("({p}, $1, NULL)"));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO manifests (repo_id, digest, media_type, size, artifact_type, subject, \
                 annotations, created_at, untagged_at) VALUES {values} \
                 ON CONFLICT (repo_id, digest) DO UPDATE SET untagged_at = NULL"
            )))
            .bind(now);
            for i in &manifests {
                let w = &writes[*i];
                let m = &w.manifest;
                q = q
                    .bind(w.repo_id)
                    .bind(m.digest.as_str())
                    .bind(&m.media_type)
                    .bind(m.body.len() as i64)
                    .bind(m.artifact_type.as_deref())
                    .bind(m.subject.as_ref().map(|d| d.as_str()))
                    .bind(m.annotations.as_deref());
            }
            q.execute(&mut **tx).await?;

            let mut refs: Vec<(i64, &str, &str)> = Vec::new();
            for i in chunk {
                let w = &writes[*i];
                for r in &w.manifest.refs {
                    refs.push((w.repo_id, w.manifest.digest.as_str(), r.digest.as_str()));
                }
            }
            refs.sort_unstable();
            refs.dedup();
            // By rows, not images: an image may have hundreds of layers, and
            // a statement takes at most 32,766 parameters on SQLite.
            for refs in refs.chunks(ROWS_PER_STATEMENT) {
                let values = value_rows(refs.len(), 1, 3, |p| format!("({p}, 0)"));
                let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO manifest_refs (repo_id, manifest_digest, ref_digest, is_manifest) \
                     VALUES {values} ON CONFLICT DO NOTHING"
                )));
                for (id, m, r) in refs {
                    q = q.bind(*id).bind(*m).bind(*r);
                }
                q.execute(&mut **tx).await?;
            }
        }

        // The tags: each moves only from its old manifest (the rows read and
        // locked above).
        let done: Vec<(&RebaseWrite, Vec<String>)> = good
            .iter()
            .map(|i| {
                let w = &writes[*i];
                let on_old = tags
                    .remove(&(w.repo_id, w.old_digest.to_string()))
                    .unwrap_or_default();
                (w, on_old)
            })
            .collect();
        let moved = move_tags(tx, done, now).await?;
        for (i, moved) in good.iter().zip(moved) {
            out[*i] = Some(RebaseCommitted::Done {
                tags: moved,
                added_bytes: added_of[*i],
            });
        }
        // The old manifests left without tags start their untagged grace
        // period (what `mark_if_untagged` does for one), in one statement:
        // any manifest it reaches is one without tags and without a mark.
        let good_repos: Vec<i64> = {
            let mut v: Vec<i64> = good.iter().map(|i| writes[*i].repo_id).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let good_olds: Vec<&str> = unique(good.iter().map(|i| writes[*i].old_digest.as_str()));
        let sql = format!(
            "UPDATE manifests SET untagged_at = $1 WHERE untagged_at IS NULL \
             AND repo_id IN ({}) AND digest IN ({}) \
             AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = manifests.repo_id \
             AND t.digest = manifests.digest)",
            placeholders(2, good_repos.len()),
            placeholders(2 + good_repos.len(), good_olds.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        for id in &good_repos {
            q = q.bind(*id);
        }
        for d in &good_olds {
            q = q.bind(*d);
        }
        q.execute(&mut **tx).await?;

        // The build history entries, their logs, the audit entries.
        let done: Vec<&RebaseWrite> = good.iter().map(|i| &writes[*i]).collect();
        write_history(tx, project, &done, now).await?;
        Ok(Some(out.into_iter().map(|o| o.expect("decided")).collect()))
    }

    /// `(repo_id, digest, size)` rows of `sql`, where `{ids}` takes
    /// `ids` and `{list}` takes `digests` (repo id 0 when there are no ids).
    async fn sizes(
        &self,
        tx: &mut Tx<'_>,
        sql: &str,
        ids: &[i64],
        digests: &[&str],
    ) -> Result<Vec<(i64, String, u64)>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let sql = sql
            .replace("{ids}", &placeholders(1, ids.len()))
            .replace("{list}", &placeholders(1 + ids.len(), digests.len()));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in ids {
            q = q.bind(*id);
        }
        for d in digests {
            q = q.bind(*d);
        }
        Ok(q.fetch_all(&mut **tx)
            .await?
            .into_iter()
            .map(|r| {
                if ids.is_empty() {
                    (0, r.get::<String, _>(0), r.get::<i64, _>(1) as u64)
                } else {
                    (r.get(0), r.get::<String, _>(1), r.get::<i64, _>(2) as u64)
                }
            })
            .collect())
    }

    async fn rebase_one(
        &self,
        tx: &mut Tx<'_>,
        budget: &mut Budget,
        w: &RebaseWrite,
        now: i64,
    ) -> Result<Option<RebaseCommitted>> {
        let project = w.repo.project();
        let m = &w.manifest;
        // The tags still on the rebased manifest, locked until commit.
        let tags: Vec<String> =
            sqlx::query(self.pick(tags_on_sql!(), concat!(tags_on_sql!(), " FOR UPDATE")))
                .bind(w.repo_id)
                .bind(w.old_digest.as_str())
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
        if tags.is_empty() {
            return Ok(None);
        }

        // The new base's layers and the config, linked (a mount, without its
        // reservation: the manifest references them in this same
        // transaction).
        let rows: Vec<(i64, &str)> = w.linked().map(|d| (w.repo_id, d.as_str())).collect();
        link_blobs(tx, rows, now).await?;

        // Every reference in the repository with its declared size, as for
        // a push.
        let blobs: Vec<&ManifestRef> = m.refs.iter().filter(|r| !r.is_manifest).collect();
        if blobs.len() != m.refs.len() {
            return Err(StorageError::ManifestInvalid(
                "a rebased image references no manifests".into(),
            ));
        }
        let list = placeholders(2, blobs.len());
        let sql = format!(
            "SELECT rb.digest, b.size FROM repo_blobs rb JOIN blobs b ON b.digest = rb.digest \
             WHERE rb.repo_id = $1 AND rb.digest IN ({list}){}",
            self.pick("", " FOR SHARE")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(w.repo_id);
        for r in &blobs {
            q = q.bind(r.digest.as_str());
        }
        let sizes: HashMap<String, u64> = q
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u64))
            .collect();
        for r in &blobs {
            if let Some(e) = size_refusal(r, sizes.get(r.digest.as_str()).copied()) {
                return Err(e);
            }
        }

        // Usage: what the project does not hold yet. One query tells which
        // blobs the project holds and which a base project holds (free).
        let wanted: Vec<&str> = unique(w.counted().map(|(d, _)| d.as_str()));
        let (mut held, free) = holdings(tx, budget, &wanted).await?;
        let fresh = fresh_of(w, &mut held, &free);
        let mut reserved: HashMap<String, u64> = HashMap::new();
        if !fresh.blobs.is_empty() {
            let list = placeholders(3, fresh.blobs.len());
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT digest, bytes FROM reservations WHERE project = $1 AND expires_at > $2 \
                 AND digest IN ({list})"
            )))
            .bind(project)
            .bind(now);
            for (d, _) in &fresh.blobs {
                q = q.bind(*d);
            }
            for r in q.fetch_all(&mut **tx).await? {
                reserved.insert(r.get(0), r.get::<i64, _>(1).max(0) as u64);
            }
        }
        let released: u64 = fresh
            .blobs
            .iter()
            .map(|(d, _)| reserved.get(*d).copied().unwrap_or(0))
            .sum();
        // The rebase's own bytes are admitted whatever the quota.
        if fresh.checked > 0 {
            self.admit(tx, budget, fresh.checked, released).await?;
        }
        self.hold_fresh(tx, budget, &fresh.blobs, fresh.added, !reserved.is_empty())
            .await?;
        budget.used += fresh.added;
        let touched: Vec<&str> = unique(blobs.iter().map(|r| r.digest.as_str()));
        touch_blobs(tx, &touched, now).await?;

        // The manifest, its references, then the tags.
        sqlx::query(
            "INSERT INTO manifest_bodies (digest, media_type, size, body, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (digest) DO NOTHING",
        )
        .bind(m.digest.as_str())
        .bind(&m.media_type)
        .bind(m.body.len() as i64)
        .bind(m.body.as_ref())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO manifests (repo_id, digest, media_type, size, artifact_type, subject, \
             annotations, created_at, untagged_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL) \
             ON CONFLICT (repo_id, digest) DO UPDATE SET untagged_at = NULL",
        )
        .bind(w.repo_id)
        .bind(m.digest.as_str())
        .bind(&m.media_type)
        .bind(m.body.len() as i64)
        .bind(m.artifact_type.as_deref())
        .bind(m.subject.as_ref().map(|d| d.as_str()))
        .bind(m.annotations.as_deref())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        let values = value_rows(blobs.len(), 3, 1, |p| format!("($1, $2, {p}, 0)"));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO manifest_refs (repo_id, manifest_digest, ref_digest, is_manifest) \
             VALUES {values} ON CONFLICT DO NOTHING"
        )))
        .bind(w.repo_id)
        .bind(m.digest.as_str());
        for r in &blobs {
            q = q.bind(r.digest.as_str());
        }
        q.execute(&mut **tx).await?;
        let moved = move_tags(tx, vec![(w, tags)], now)
            .await?
            .pop()
            .unwrap_or_default();
        mark_if_untagged(tx, w.repo_id, w.old_digest.as_str(), now).await?;

        write_history(tx, project, &[w], now).await?;
        Ok(Some(RebaseCommitted::Done {
            tags: moved,
            added_bytes: fresh.added,
        }))
    }

    /// Counts blobs new to the project (`fresh`, from [`fresh_of`]): its
    /// running usage grows by `added`; a base project's new blobs cost
    /// every other project holding them nothing from now on; each gets its
    /// (project, blob) row; with `release`, their reservations end (a
    /// manifest references them now). Multi-row statements of 500 blobs.
    async fn hold_fresh(
        &self,
        tx: &mut Tx<'_>,
        budget: &Budget,
        fresh: &[(&str, u64)],
        added: u64,
        release: bool,
    ) -> Result<()> {
        let project = budget.project.as_str();
        self.charge(tx, project, added as i64).await?;
        if budget.is_base {
            for (digest, size) in fresh {
                self.shift_base_blob(tx, project, digest, *size, -1).await?;
            }
        }
        for chunk in fresh.chunks(500) {
            let values = value_rows(chunk.len(), 2, 2, |p| format!("($1, {p})"));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO project_blobs (project, digest, size) VALUES {values} \
                 ON CONFLICT (project, digest) DO NOTHING"
            )))
            .bind(project);
            for (d, size) in chunk {
                q = q.bind(*d).bind(*size as i64);
            }
            q.execute(&mut **tx).await?;
            if release {
                let list = placeholders(2, chunk.len());
                let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM reservations WHERE project = $1 AND digest IN ({list})"
                )))
                .bind(project);
                for (d, _) in chunk {
                    q = q.bind(*d);
                }
                q.execute(&mut **tx).await?;
            }
        }
        Ok(())
    }
}

/// Which of `digests` the project holds already (`held`), and which a base
/// project holds (`free`: they cost a project that is not a base project
/// nothing) — [`Metadata::costs_nothing`] for many blobs, in one statement.
async fn holdings(
    tx: &mut Tx<'_>,
    budget: &Budget,
    digests: &[&str],
) -> Result<(HashSet<String>, HashSet<String>)> {
    let list = placeholders(3, digests.len());
    let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT pb.digest, pb.project FROM project_blobs pb JOIN projects p ON p.name = pb.project \
         WHERE pb.digest IN ({list}) AND (pb.project = $1 OR (p.is_base = 1 AND $2 = 0))"
    )))
    .bind(&budget.project)
    .bind(budget.is_base as i64);
    for d in digests {
        q = q.bind(*d);
    }
    let (mut held, mut free) = (HashSet::new(), HashSet::new());
    for r in q.fetch_all(&mut **tx).await? {
        let (digest, owner): (String, String) = (r.get(0), r.get(1));
        if owner == budget.project {
            held.insert(digest);
        } else {
            free.insert(digest);
        }
    }
    Ok((held, free))
}

/// What an image adds to its project's usage.
struct Fresh<'a> {
    /// The blobs the project does not hold yet, each once, in the order of
    /// [`RebaseWrite::counted`].
    blobs: Vec<(&'a str, u64)>,
    /// The bytes of those no base project holds: what the usage grows by.
    added: u64,
    /// Of those, the bytes of layers (not the rebase's own manifest and
    /// config, admitted whatever the quota): what must fit the quota.
    checked: u64,
}

/// What `w` adds, given what the project holds (`held`, from
/// [`holdings`]) and what is free; `held` gains the image's new blobs, so
/// a later image of a batch adds nothing for them.
fn fresh_of<'a>(
    w: &'a RebaseWrite,
    held: &mut HashSet<String>,
    free: &HashSet<String>,
) -> Fresh<'a> {
    let m = &w.manifest;
    let mut fresh = Fresh {
        blobs: Vec::new(),
        added: 0,
        checked: 0,
    };
    for (d, size) in w.counted() {
        if held.contains(d.as_str()) {
            continue;
        }
        if !free.contains(d.as_str()) {
            fresh.added += size;
            if *d != m.digest && *d != w.config {
                fresh.checked += size;
            }
        }
        held.insert(d.to_string());
        fresh.blobs.push((d.as_str(), size));
    }
    fresh
}

/// Links blobs into repositories (`(repo id, digest)` rows; statements of
/// up to [`ROWS_PER_STATEMENT`] rows): a mount without its reservation, as
/// the manifest that references them is written in the same transaction.
/// A blob that does not exist is not linked (a reference to it is then
/// unknown).
async fn link_blobs(tx: &mut Tx<'_>, mut rows: Vec<(i64, &str)>, now: i64) -> Result<()> {
    rows.sort_unstable();
    rows.dedup();
    for rows in rows.chunks(ROWS_PER_STATEMENT) {
        let values = value_rows(rows.len(), 2, 2, |p| format!("({p})"));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH links (repo_id, digest) AS (VALUES {values}) \
             INSERT INTO repo_blobs (repo_id, digest, created_at) \
             SELECT links.repo_id, links.digest, $1 FROM links \
             WHERE EXISTS (SELECT 1 FROM blobs WHERE blobs.digest = links.digest) \
             ON CONFLICT (repo_id, digest) DO NOTHING"
        )))
        .bind(now);
        for (id, d) in rows {
            q = q.bind(*id).bind(*d);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Records that references to `digests` appeared (GC's clock), 500 blobs
/// a statement.
async fn touch_blobs(tx: &mut Tx<'_>, digests: &[&str], now: i64) -> Result<()> {
    for chunk in digests.chunks(500) {
        let list = placeholders(2, chunk.len());
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE blobs SET last_ref_change = $1 WHERE digest IN ({list})"
        )))
        .bind(now);
        for d in chunk {
            q = q.bind(*d);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Why a reference is refused, given the size of the blob it names where
/// the image may see it: unknown (`None`), or declared with another size.
fn size_refusal(r: &ManifestRef, have: Option<u64>) -> Option<StorageError> {
    match have {
        None => Some(StorageError::ManifestBlobUnknown(r.digest.clone())),
        Some(size) if size != r.size => Some(StorageError::ManifestInvalid(format!(
            "the descriptor of {} gives size {}, but it has {size} bytes",
            r.digest, r.size
        ))),
        Some(_) => None,
    }
}

/// The build history rows (kind `rebase`), their logs and the audit
/// entries of committed rebases, in multi-row statements.
async fn write_history(
    tx: &mut Tx<'_>,
    project: &str,
    writes: &[&RebaseWrite],
    now: i64,
) -> Result<()> {
    for chunk in writes.chunks(50) {
        let values = value_rows(chunk.len(), 2, 12, |p| {
            format!("({p}, 'succeeded', NULL, $1, $1, $1, 'rebase')")
        });
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO builds (id, project, image_name, source_url, git_ref, git_commit, builder, \
             env, image_digest, requested_by, inputs, git_tree, state, reason, created_at, started_at, \
             finished_at, kind) VALUES {values}"
        )))
        .bind(now);
        for w in chunk {
            let b = &w.build;
            q = q
                .bind(&b.id)
                .bind(project)
                .bind(&b.image_name)
                .bind(&b.source_url)
                .bind(&b.git_ref)
                .bind(&b.git_commit)
                .bind(&b.builder)
                .bind(&b.env)
                .bind(w.manifest.digest.as_str())
                .bind(&b.requested_by)
                .bind(&b.inputs)
                .bind(&b.git_tree);
        }
        q.execute(&mut **tx).await?;

        let lines: Vec<(&str, i64, &str)> = chunk
            .iter()
            .flat_map(|w| {
                w.log
                    .iter()
                    .enumerate()
                    .map(move |(n, l)| (w.build.id.as_str(), n as i64 + 1, l.as_str()))
            })
            .collect();
        if !lines.is_empty() {
            let values = value_rows(lines.len(), 2, 3, |p| format!("({p}, $1, 'rebase')"));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO build_logs (build_id, seq, line, at, phase) VALUES {values}"
            )))
            .bind(now);
            for (id, seq, line) in &lines {
                q = q.bind(*id).bind(*seq).bind(*line);
            }
            q.execute(&mut **tx).await?;
        }

        let values = value_rows(chunk.len(), 2, 6, |p| format!("($1, {p})"));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO audit_log (at, principal, action, project, target, detail, remote_addr) \
             VALUES {values}"
        )))
        .bind(now);
        for w in chunk {
            let a = &w.audit;
            q = q
                .bind(&a.principal)
                .bind(&a.action)
                .bind(a.project.as_deref())
                .bind(a.target.as_deref())
                .bind(a.detail.as_deref())
                .bind(a.remote_addr.as_deref());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Moves the tags on each write's old manifest to its new one (only those
/// still there: one statement per 300 images) and adds a write's extra tag
/// if no tag has that name: an extra tag is added, never moved — if it
/// names another manifest, a build or a push put it there, and it stays (no
/// lost update). Each write comes with the tags that were on its old
/// manifest; the tags now on each new one are returned, in order.
async fn move_tags(
    tx: &mut Tx<'_>,
    writes: Vec<(&RebaseWrite, Vec<String>)>,
    now: i64,
) -> Result<Vec<Vec<String>>> {
    for chunk in writes.chunks(300) {
        let values = value_rows(chunk.len(), 2, 3, |p| format!("({p})"));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH moves (repo_id, old_digest, new_digest) AS (VALUES {values}) \
             UPDATE tags SET digest = moves.new_digest, updated_at = $1 FROM moves \
             WHERE tags.repo_id = moves.repo_id AND tags.digest = moves.old_digest"
        )))
        .bind(now);
        for (w, _) in chunk {
            q = q
                .bind(w.repo_id)
                .bind(w.old_digest.as_str())
                .bind(w.manifest.digest.as_str());
        }
        q.execute(&mut **tx).await?;
    }
    let mut out = Vec::with_capacity(writes.len());
    for (w, mut moved) in writes {
        let m = &w.manifest;
        for tag in &moved {
            super::manifests::tag_moved(
                tx,
                w.repo_id,
                tag,
                now,
                Some(w.old_digest.as_str()),
                Some(m.digest.as_str()),
                "rebase",
            )
            .await?;
        }
        if let Some(tag) = m.tag.as_ref().filter(|t| !moved.contains(t)) {
            let added = sqlx::query(
                "INSERT INTO tags (repo_id, name, digest, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repo_id, name) DO NOTHING",
            )
            .bind(w.repo_id)
            .bind(tag)
            .bind(m.digest.as_str())
            .bind(now)
            .execute(&mut **tx)
            .await?;
            if added.rows_affected() == 1 {
                super::manifests::tag_moved(
                    tx,
                    w.repo_id,
                    tag,
                    now,
                    None,
                    Some(m.digest.as_str()),
                    "rebase",
                )
                .await?;
                moved.push(tag.clone());
            }
        }
        out.push(moved);
    }
    Ok(out)
}

/// The distinct items, in first-seen order.
fn unique<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    items.filter(|d| seen.insert(*d)).collect()
}

/// The rows of a multi-row `VALUES`: `n` rows of `width` numbered
/// parameters each, from `$first` on, each made into a row by `row` (which
/// places them among the row's constants and shared parameters):
/// `value_rows(2, 2, 2, |p| format!("($1, {p})"))` is
/// `($1, $2, $3), ($1, $4, $5)`.
fn value_rows(n: usize, first: usize, width: usize, row: impl Fn(&str) -> String) -> String {
    (0..n)
        .map(|k| row(&placeholders(first + k * width, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$first, $first+1, …` (`n` of them).
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_rows_number_the_parameters_row_after_row() {
        assert_eq!(
            value_rows(2, 2, 2, |p| format!("($1, {p})")),
            "($1, $2, $3), ($1, $4, $5)"
        );
        assert_eq!(
            value_rows(3, 3, 1, |p| format!("({p}, 0)")),
            "($3, 0), ($4, 0), ($5, 0)"
        );
        assert_eq!(value_rows(0, 1, 4, |p| p.to_owned()), "");
    }
}
