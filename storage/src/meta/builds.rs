//! The build queue, build logs, build tokens and approved builders.
//!
//! The queue is the `builds` table: a worker claims the oldest pending
//! build whose project has room (a per-project limit on running builds) in
//! one conditional update, so several workers — in one process or several —
//! never take the same build. Running builds say they still run with a
//! heartbeat; a build whose heartbeat stops (its process died) is failed
//! with a reason and can be retried.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Metadata, now_ms};
use crate::error::{Result, StorageError};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuildRecord {
    pub id: String,
    pub project: String,
    pub image_name: String,
    pub source_url: String,
    pub git_ref: String,
    pub git_commit: String,
    pub builder: String,
    /// A JSON object of build-time variables.
    pub env: String,
    pub state: String,
    pub reason: Option<String>,
    pub image_digest: Option<String>,
    pub requested_by: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub worker: Option<String>,
    pub cancel_requested: bool,
    /// The trigger that asked for it (a webhook delivery or a poll).
    pub trigger_id: Option<String>,
    /// Names of project secrets given to the buildpacks as
    /// `/platform/env/<NAME>` files (a JSON array; values are never here).
    pub secret_env: Vec<String>,
    /// The name of a project secret: the git credentials of its source.
    pub git_credentials: Option<String>,
    /// What decides, with the commit or the tree, whether an equal build
    /// may be reused instead (see [`Metadata::build_last_success`]): a
    /// digest of the builder's digest, the variables and the secrets;
    /// `None`: never reused.
    pub inputs: Option<String>,
    /// The git tree the build checked out (once it has).
    pub git_tree: Option<String>,
    /// Build even when an equal build's image could be reused.
    pub force: bool,
    /// The buildpacks that built it (`id@version`, a JSON array), when
    /// it succeeded.
    pub buildpacks: Option<String>,
}

impl BuildRecord {
    pub fn finished(&self) -> bool {
        matches!(
            self.state.as_str(),
            "succeeded" | "failed" | "cancelled" | "timed_out" | "reused"
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub seq: i64,
    pub at: i64,
    pub phase: String,
    pub line: String,
}

#[derive(Debug, Clone)]
pub struct BuildToken {
    pub id: i64,
    pub project: String,
    pub name: String,
    pub secret_hash: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

macro_rules! build_select {
    ($rest:literal) => {
        concat!(
            "SELECT id, project, image_name, source_url, git_ref, git_commit, builder, env, state, reason, ",
            "image_digest, requested_by, created_at, started_at, finished_at, worker, cancel_requested, ",
            "trigger_id, secret_env, git_credentials, inputs, buildpacks, git_tree, force FROM builds ",
            $rest
        )
    };
}

fn build(r: AnyRow) -> BuildRecord {
    BuildRecord {
        id: r.get(0),
        project: r.get(1),
        image_name: r.get(2),
        source_url: r.get(3),
        git_ref: r.get(4),
        git_commit: r.get(5),
        builder: r.get(6),
        env: r.get(7),
        state: r.get(8),
        reason: r.get(9),
        image_digest: r.get(10),
        requested_by: r.get(11),
        created_at: r.get(12),
        started_at: r.get(13),
        finished_at: r.get(14),
        worker: r.get(15),
        cancel_requested: r.get::<i64, _>(16) != 0,
        trigger_id: r.get(17),
        secret_env: r
            .get::<Option<String>, _>(18)
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default(),
        git_credentials: r.get(19),
        inputs: r.get(20),
        buildpacks: r.get(21),
        git_tree: r.get(22),
        force: r.get::<i64, _>(23) != 0,
    }
}

/// How many build records of one image a project keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Succeeded (and reused) builds, and rebases.
    pub keep_succeeded: u32,
    /// Failed, cancelled and timed-out builds.
    pub keep_failed: u32,
}

/// A build that replaced queued ones, or was refused.
#[derive(Debug, Clone, Default)]
pub struct Queued {
    /// Pending builds of the same trigger it cancelled (the newest push
    /// wins).
    pub replaced: Vec<String>,
}

impl Metadata {
    /// Queues a build, unless the project already has `per_project` builds
    /// pending or running. A build a trigger asked for (a delivery or a
    /// poll: `requested_by` starts with `trigger:`) first cancels the
    /// pending builds that trigger asked for of the same ref (a newer push
    /// replaces a queued one; running ones go on).
    pub async fn build_insert(&self, b: &BuildRecord, per_project: u32) -> Result<Queued> {
        let mut tx = self.write.begin().await?;
        // One build queued at a time per project, across replicas: the
        // project's row is the lock.
        self.lock_project(&mut tx, &b.project).await?;
        let queued = Queued {
            replaced: replace_pending(&mut tx, b).await?,
        };
        let active: i64 = sqlx::query(
            "SELECT COUNT(*) FROM builds WHERE project = $1 AND state IN ('pending', 'running')",
        )
        .bind(&b.project)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        if active >= per_project as i64 {
            return Err(StorageError::Conflict(format!(
                "project {} already has {active} builds pending or running (at most {per_project}); \
                 wait for one to finish or cancel one",
                b.project
            )));
        }
        insert_build(&mut tx, b).await?;
        tx.commit().await?;
        Ok(queued)
    }

    /// Records a build that ended without running: `reused` (an equal
    /// build's image was current), with its image digest.
    pub async fn build_record_ended(&self, b: &BuildRecord) -> Result<()> {
        let mut tx = self.write.begin().await?;
        // A trigger's reuse is its newest push too: what it queued before
        // for the same ref must not run after it.
        self.lock_project(&mut tx, &b.project).await?;
        replace_pending(&mut tx, b).await?;
        insert_build(&mut tx, b).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The newest successful build (or rebase, or reuse) of one image of a
    /// project: what an equal request reuses.
    pub async fn build_last_success(
        &self,
        project: &str,
        image_name: &str,
    ) -> Result<Option<BuildRecord>> {
        let row = sqlx::query(build_select!(
            "WHERE project = $1 AND image_name = $2 AND state IN ('succeeded', 'reused') \
             AND image_digest IS NOT NULL ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(project)
        .bind(image_name)
        .fetch_optional(&self.write)
        .await?;
        Ok(row.map(build))
    }

    /// Records the buildpacks that built a build, and the tree it built.
    pub async fn build_set_built(&self, id: &str, buildpacks: &str, tree: &str) -> Result<()> {
        sqlx::query("UPDATE builds SET buildpacks = $1, git_tree = $2 WHERE id = $3")
            .bind(buildpacks)
            .bind(tree)
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Removes the records (and logs) of one image's builds beyond what
    /// `keep` keeps: the newest `keep_succeeded` succeeded ones (reuses
    /// and rebases count as such) and the newest `keep_failed` that failed,
    /// were cancelled or timed out. Pending and running builds stay.
    /// Returns the ids removed.
    pub async fn builds_prune(
        &self,
        project: &str,
        image_name: &str,
        keep: Retention,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT id, state, image_digest FROM builds WHERE project = $1 AND image_name = $2 \
             AND state NOT IN ('pending', 'running') ORDER BY created_at DESC, id DESC",
        )
        .bind(project)
        .bind(image_name)
        .fetch_all(&self.write)
        .await?;
        let (mut ok, mut bad) = (0u32, 0u32);
        let mut doomed = Vec::new();
        // Images the kept records name (reuses name the build that made
        // theirs: that build stays, beyond the count, while they do).
        let mut kept_images = std::collections::HashSet::new();
        for r in rows {
            let id: String = r.get(0);
            let state: String = r.get(1);
            let digest: Option<String> = r.get(2);
            let (n, limit) = if matches!(state.as_str(), "succeeded" | "reused") {
                (&mut ok, keep.keep_succeeded)
            } else {
                (&mut bad, keep.keep_failed)
            };
            *n += 1;
            if *n <= limit {
                if state == "reused" {
                    kept_images.extend(digest);
                }
            } else if state == "succeeded" && digest.as_ref().is_some_and(|d| kept_images.remove(d))
            {
                // The build that made a kept reuse's image.
            } else {
                doomed.push(id);
            }
        }
        if doomed.is_empty() {
            return Ok(doomed);
        }
        let mut tx = self.write.begin().await?;
        for id in &doomed {
            sqlx::query("DELETE FROM builds WHERE id = $1 AND state NOT IN ('pending', 'running')")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM build_logs WHERE build_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(doomed)
    }

    /// The (first) build that made `digest` in a project, if its record is
    /// kept.
    pub async fn build_of_image(&self, project: &str, digest: &str) -> Result<Option<BuildRecord>> {
        let row = sqlx::query(build_select!(
            "WHERE project = $1 AND image_digest = $2 AND state = 'succeeded' \
             ORDER BY created_at, id LIMIT 1"
        ))
        .bind(project)
        .bind(digest)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(build))
    }

    /// The newest builds of every project.
    pub async fn builds_recent(&self, limit: u32) -> Result<Vec<BuildRecord>> {
        let rows = sqlx::query(build_select!("ORDER BY created_at DESC, id DESC LIMIT $1"))
            .bind(limit.clamp(1, 1000) as i64)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.into_iter().map(build).collect())
    }

    /// The image names a project has build records of.
    pub async fn build_image_names(&self, project: &str) -> Result<Vec<String>> {
        Ok(sqlx::query(
            "SELECT DISTINCT image_name FROM builds WHERE project = $1 ORDER BY image_name",
        )
        .bind(project)
        .fetch_all(&self.read)
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
    }

    pub async fn build_get(&self, project: &str, id: &str) -> Result<Option<BuildRecord>> {
        let row = sqlx::query(build_select!("WHERE project = $1 AND id = $2"))
            .bind(project)
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(build))
    }

    pub async fn build_by_id(&self, id: &str) -> Result<Option<BuildRecord>> {
        let row = sqlx::query(build_select!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.write)
            .await?;
        Ok(row.map(build))
    }

    /// A project's builds, newest first.
    pub async fn builds(&self, project: &str, limit: u32) -> Result<Vec<BuildRecord>> {
        let rows = sqlx::query(build_select!(
            "WHERE project = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(project)
        .bind(limit.clamp(1, 1000) as i64)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(build).collect())
    }

    /// Builds waiting in the whole queue.
    pub async fn builds_pending(&self) -> Result<i64> {
        Ok(
            sqlx::query("SELECT COUNT(*) FROM builds WHERE state = 'pending'")
                .fetch_one(&self.read)
                .await?
                .get(0),
        )
    }

    /// Takes the oldest pending build whose project runs fewer than
    /// `per_project` builds, for `worker`.
    pub async fn build_claim(&self, worker: &str, per_project: u32) -> Result<Option<BuildRecord>> {
        let now = now_ms();
        let candidates = sqlx::query(
            "SELECT id FROM builds b WHERE state = 'pending' AND \
             (SELECT COUNT(*) FROM builds r WHERE r.project = b.project AND r.state = 'running') < $1 \
             ORDER BY created_at, id LIMIT 5",
        )
        .bind(per_project as i64)
        .fetch_all(&self.write)
        .await?;
        for c in candidates {
            let id: String = c.get(0);
            let n = sqlx::query(
                "UPDATE builds SET state = 'running', started_at = $1, heartbeat_at = $1, worker = $2 \
                 WHERE id = $3 AND state = 'pending'",
            )
            .bind(now)
            .bind(worker)
            .bind(&id)
            .execute(&self.write)
            .await?
            .rows_affected();
            if n == 1 {
                return self.build_by_id(&id).await;
            }
        }
        Ok(None)
    }

    /// Says a running build still runs; returns whether it was asked to
    /// stop.
    pub async fn build_heartbeat(&self, id: &str) -> Result<bool> {
        sqlx::query("UPDATE builds SET heartbeat_at = $1 WHERE id = $2 AND state = 'running'")
            .bind(now_ms())
            .bind(id)
            .execute(&self.write)
            .await?;
        let row = sqlx::query("SELECT cancel_requested FROM builds WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.write)
            .await?;
        Ok(row.is_some_and(|r| r.get::<i64, _>(0) != 0))
    }

    /// Ends a build (only once: a finished build stays as it ended).
    pub async fn build_finish(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
        digest: Option<&str>,
    ) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let n = sqlx::query(
            "UPDATE builds SET state = $1, reason = $2, image_digest = $3, finished_at = $4 \
             WHERE id = $5 AND state IN ('pending', 'running')",
        )
        .bind(state)
        .bind(reason)
        .bind(digest)
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // An ended build holds no quota, whoever ended it (its worker, a
        // reaper after its process died).
        sqlx::query("DELETE FROM reservations WHERE digest = $1")
            .bind(format!("build:{id}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Asks a build to stop: a pending one is cancelled at once, a running
    /// one by its worker when it notices (at its next heartbeat). False
    /// when it had finished already.
    pub async fn build_cancel(&self, id: &str) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE builds SET state = 'cancelled', reason = 'cancelled before it started', finished_at = $1 \
             WHERE id = $2 AND state = 'pending'",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.write)
        .await?
        .rows_affected();
        if n == 1 {
            return Ok(true);
        }
        Ok(sqlx::query(
            "UPDATE builds SET cancel_requested = 1 WHERE id = $1 AND state = 'running'",
        )
        .bind(id)
        .execute(&self.write)
        .await?
        .rows_affected()
            == 1)
    }

    /// Fails running builds whose heartbeat stopped before `before_ms`.
    pub async fn builds_fail_stale(
        &self,
        before_ms: i64,
        except_workers: &[String],
        reason: &str,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT id, worker FROM builds WHERE state = 'running' AND heartbeat_at < $1",
        )
        .bind(before_ms)
        .fetch_all(&self.write)
        .await?;
        let mut failed = Vec::new();
        for r in rows {
            let id: String = r.get(0);
            let worker: Option<String> = r.get(1);
            if worker.is_some_and(|w| except_workers.contains(&w)) {
                continue;
            }
            if self.build_finish(&id, "failed", Some(reason), None).await? {
                failed.push(id);
            }
        }
        Ok(failed)
    }

    /// Fails the running builds of `worker` (its process restarted).
    /// Their quota reservations go with them.
    pub async fn builds_fail_worker(&self, worker: &str, reason: &str) -> Result<u64> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "DELETE FROM reservations WHERE digest IN \
             (SELECT 'build:' || id FROM builds WHERE worker = $1 AND state = 'running')",
        )
        .bind(worker)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query(
            "UPDATE builds SET state = 'failed', reason = $1, finished_at = $2 \
             WHERE worker = $3 AND state = 'running'",
        )
        .bind(reason)
        .bind(now_ms())
        .bind(worker)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Deletes a finished build and its log.
    pub async fn build_delete(&self, project: &str, id: &str) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let n = sqlx::query(
            "DELETE FROM builds WHERE project = $1 AND id = $2 \
             AND state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'reused')",
        )
        .bind(project)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            sqlx::query("DELETE FROM build_logs WHERE build_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Appends log lines (phase, text) after sequence number `first_seq`.
    pub async fn build_log_append(
        &self,
        id: &str,
        first_seq: i64,
        lines: &[(String, String)],
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let now = now_ms();
        for (i, (phase, line)) in lines.iter().enumerate() {
            sqlx::query(
                "INSERT INTO build_logs (build_id, seq, at, phase, line) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (build_id, seq) DO NOTHING",
            )
            .bind(id)
            .bind(first_seq + i as i64)
            .bind(now)
            .bind(phase)
            .bind(line)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Log lines after `after_seq`, in order.
    pub async fn build_log(&self, id: &str, after_seq: i64, limit: u32) -> Result<Vec<LogLine>> {
        let rows = sqlx::query(
            "SELECT seq, at, phase, line FROM build_logs WHERE build_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after_seq)
        .bind(limit.clamp(1, 100_000) as i64)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| LogLine {
                seq: r.get(0),
                at: r.get(1),
                phase: r.get(2),
                line: r.get(3),
            })
            .collect())
    }

    // ----- build tokens ----------------------------------------------------

    pub async fn build_token_create(
        &self,
        project: &str,
        name: &str,
        secret_hash: &str,
    ) -> Result<BuildToken> {
        let n = sqlx::query(
            "INSERT INTO build_tokens (project, name, secret_hash, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (project, name) DO NOTHING",
        )
        .bind(project)
        .bind(name)
        .bind(secret_hash)
        .bind(now_ms())
        .execute(&self.write)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StorageError::Conflict(format!(
                "build token {name} already exists in project {project}"
            )));
        }
        self.build_token(project, name).await?.ok_or_else(|| {
            StorageError::Corrupt("a build token vanished after its creation".into())
        })
    }

    pub async fn build_token(&self, project: &str, name: &str) -> Result<Option<BuildToken>> {
        let row = sqlx::query(
            "SELECT id, project, name, secret_hash, created_at, last_used_at FROM build_tokens \
             WHERE project = $1 AND name = $2",
        )
        .bind(project)
        .bind(name)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| BuildToken {
            id: r.get(0),
            project: r.get(1),
            name: r.get(2),
            secret_hash: r.get(3),
            created_at: r.get(4),
            last_used_at: r.get(5),
        }))
    }

    pub async fn build_tokens(&self, project: &str) -> Result<Vec<BuildToken>> {
        let rows = sqlx::query(
            "SELECT id, project, name, secret_hash, created_at, last_used_at FROM build_tokens \
             WHERE project = $1 ORDER BY name",
        )
        .bind(project)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| BuildToken {
                id: r.get(0),
                project: r.get(1),
                name: r.get(2),
                secret_hash: r.get(3),
                created_at: r.get(4),
                last_used_at: r.get(5),
            })
            .collect())
    }

    pub async fn build_token_delete(&self, project: &str, name: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM build_tokens WHERE project = $1 AND name = $2")
                .bind(project)
                .bind(name)
                .execute(&self.write)
                .await?
                .rows_affected()
                == 1,
        )
    }

    pub async fn build_token_touch(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE build_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    // ----- approved builders ------------------------------------------------

    pub async fn builder_approve(&self, image: &str, by: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO approved_builders (image, approved_by, approved_at) VALUES ($1, $2, $3) \
             ON CONFLICT (image) DO NOTHING",
        )
        .bind(image)
        .bind(by)
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub async fn builder_revoke(&self, image: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM approved_builders WHERE image = $1")
                .bind(image)
                .execute(&self.write)
                .await?
                .rows_affected()
                == 1,
        )
    }

    pub async fn builders_approved(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT image, approved_by, approved_at FROM approved_builders ORDER BY image",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    pub async fn builder_is_approved(&self, image: &str) -> Result<bool> {
        Ok(
            sqlx::query("SELECT 1 FROM approved_builders WHERE image = $1")
                .bind(image)
                .fetch_optional(&self.read)
                .await?
                .is_some(),
        )
    }

    /// Holds `bytes` of the project's quota for a build, under a key of its
    /// own, until it ends or `ttl_ms` passes. Refused when it does not fit.
    pub async fn build_reserve(
        &self,
        project: &str,
        build_id: &str,
        bytes: u64,
        ttl_ms: i64,
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let budget = self.lock_project(&mut tx, project).await?;
        self.admit(&mut tx, &budget, bytes, 0).await?;
        sqlx::query(
            "INSERT INTO reservations (project, digest, bytes, expires_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (project, digest) DO UPDATE SET bytes = excluded.bytes, expires_at = excluded.expires_at",
        )
        .bind(project)
        .bind(format!("build:{build_id}"))
        .bind(bytes as i64)
        .bind(now_ms() + ttl_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn build_release(&self, project: &str, build_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM reservations WHERE project = $1 AND digest = $2")
            .bind(project)
            .bind(format!("build:{build_id}"))
            .execute(&self.write)
            .await?;
        Ok(())
    }
}

/// Cancels the pending builds that `b`'s trigger asked for of `b`'s ref,
/// when a trigger asks for `b`; their ids.
async fn replace_pending(tx: &mut super::Tx<'_>, b: &BuildRecord) -> Result<Vec<String>> {
    let Some(trigger) = &b.trigger_id else {
        return Ok(Vec::new());
    };
    if !b.requested_by.starts_with("trigger:") {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT id FROM builds WHERE project = $1 AND trigger_id = $2 AND git_ref = $3 \
         AND state = 'pending' AND requested_by LIKE 'trigger:%' ORDER BY created_at",
    )
    .bind(&b.project)
    .bind(trigger)
    .bind(&b.git_ref)
    .fetch_all(&mut **tx)
    .await?;
    let mut replaced = Vec::new();
    for r in rows {
        let id: String = r.get(0);
        sqlx::query(
            "UPDATE builds SET state = 'cancelled', reason = $1, finished_at = $2 \
             WHERE id = $3 AND state = 'pending'",
        )
        .bind(format!(
            "replaced by build {} of a newer push of {} ({}) before it started",
            b.id,
            b.git_ref,
            &b.git_commit[..b.git_commit.len().min(12)]
        ))
        .bind(now_ms())
        .bind(&id)
        .execute(&mut **tx)
        .await?;
        replaced.push(id);
    }
    Ok(replaced)
}

/// Inserts a build row as it is.
async fn insert_build(tx: &mut super::Tx<'_>, b: &BuildRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO builds (id, project, image_name, source_url, git_ref, git_commit, builder, env, \
         state, reason, image_digest, requested_by, created_at, started_at, finished_at, \
         trigger_id, secret_env, git_credentials, inputs, buildpacks, git_tree, force) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
         $19, $20, $21, $22)",
    )
    .bind(&b.id)
    .bind(&b.project)
    .bind(&b.image_name)
    .bind(&b.source_url)
    .bind(&b.git_ref)
    .bind(&b.git_commit)
    .bind(&b.builder)
    .bind(&b.env)
    .bind(&b.state)
    .bind(&b.reason)
    .bind(&b.image_digest)
    .bind(&b.requested_by)
    .bind(b.created_at)
    .bind(b.started_at)
    .bind(b.finished_at)
    .bind(&b.trigger_id)
    .bind(if b.secret_env.is_empty() {
        None
    } else {
        serde_json::to_string(&b.secret_env).ok()
    })
    .bind(&b.git_credentials)
    .bind(&b.inputs)
    .bind(&b.buildpacks)
    .bind(&b.git_tree)
    .bind(i64::from(b.force))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
