//! Push to deploy: triggers (webhooks and polling), the record of their
//! deliveries, and per-project secrets (stored sealed: this layer never
//! sees a secret's value).
//!
//! Polling runs on every replica; a trigger due for a check is leased to
//! one of them with a conditional update (as builds are claimed), so one
//! replica checks it and a replica that dies mid-check loses the lease when
//! it expires.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Metadata, now_ms};
use crate::error::{Result, StorageError};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trigger {
    pub id: String,
    pub project: String,
    pub source_url: String,
    /// Branches that build: a name or glob (`main`, `release/*`, `*`).
    pub ref_pattern: String,
    /// Tags that build (a name or glob); `None`: tag pushes build nothing.
    pub tag_pattern: Option<String>,
    pub image_name: String,
    /// `None`: the server's default builder.
    pub builder: Option<String>,
    /// A JSON object of build variables.
    pub env: String,
    /// Secret names given to builds as `/platform/env/<NAME>` files.
    pub secret_env: Vec<String>,
    /// A secret's name: the source's git credentials.
    pub git_credentials: Option<String>,
    /// The webhook secret, sealed.
    pub hook_secret: String,
    /// Seconds between polls; `None`: webhooks only.
    pub poll_interval_secs: Option<i64>,
    /// The commit the last poll saw.
    pub poll_commit: Option<String>,
    pub poll_next_at: Option<i64>,
    pub is_default: bool,
    pub created_by: String,
    pub created_at: i64,
}

/// One delivery (or poll) and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delivery {
    pub id: i64,
    pub trigger_id: String,
    pub delivery_id: Option<String>,
    pub at: i64,
    pub provider: String,
    pub event: String,
    pub git_ref: Option<String>,
    pub git_commit: Option<String>,
    /// The commit the ref was at before the push, when the forge says.
    pub git_before: Option<String>,
    /// `received` (being handled), `queued`, `reused`, `ignored`,
    /// `refused`, `failed`.
    pub result: String,
    pub detail: String,
    pub build_id: Option<String>,
}

/// A project secret's name and times (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    pub project: String,
    pub name: String,
    pub created_at: i64,
    pub updated_at: i64,
}

macro_rules! trigger_select {
    ($rest:literal) => {
        concat!(
            "SELECT id, project, source_url, ref_pattern, tag_pattern, image_name, builder, env, secret_env, ",
            "git_credentials, hook_secret, poll_interval_secs, poll_commit, poll_next_at, is_default, ",
            "created_by, created_at FROM triggers ",
            $rest
        )
    };
}

fn trigger(r: AnyRow) -> Trigger {
    Trigger {
        id: r.get(0),
        project: r.get(1),
        source_url: r.get(2),
        ref_pattern: r.get(3),
        tag_pattern: r.get(4),
        image_name: r.get(5),
        builder: r.get(6),
        env: r.get(7),
        secret_env: serde_json::from_str(&r.get::<String, _>(8)).unwrap_or_default(),
        git_credentials: r.get(9),
        hook_secret: r.get(10),
        poll_interval_secs: r.get(11),
        poll_commit: r.get(12),
        poll_next_at: r.get(13),
        is_default: r.get::<i64, _>(14) != 0,
        created_by: r.get(15),
        created_at: r.get(16),
    }
}

macro_rules! delivery_select {
    ($rest:literal) => {
        concat!(
            "SELECT id, trigger_id, delivery_id, at, provider, event, git_ref, git_commit, result, ",
            "detail, build_id, git_before FROM trigger_deliveries ",
            $rest
        )
    };
}

fn delivery(r: AnyRow) -> Delivery {
    Delivery {
        id: r.get(0),
        trigger_id: r.get(1),
        delivery_id: r.get(2),
        at: r.get(3),
        provider: r.get(4),
        event: r.get(5),
        git_ref: r.get(6),
        git_commit: r.get(7),
        result: r.get(8),
        detail: r.get(9),
        build_id: r.get(10),
        git_before: r.get(11),
    }
}

/// Deliveries kept per trigger; older ones are removed as new ones come.
const DELIVERIES_KEPT: i64 = 200;

impl Metadata {
    // ----- triggers ---------------------------------------------------------

    /// Creates a trigger; the project's first trigger (or one marked so) is
    /// its default.
    pub async fn trigger_create(&self, t: &Trigger) -> Result<Trigger> {
        let mut tx = self.write.begin().await?;
        self.lock_project(&mut tx, &t.project).await?;
        let existing: i64 = sqlx::query("SELECT COUNT(*) FROM triggers WHERE project = $1")
            .bind(&t.project)
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        let is_default = t.is_default || existing == 0;
        if is_default {
            sqlx::query("UPDATE triggers SET is_default = 0 WHERE project = $1")
                .bind(&t.project)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO triggers (id, project, source_url, ref_pattern, tag_pattern, image_name, builder, env, \
             secret_env, git_credentials, hook_secret, poll_interval_secs, poll_commit, poll_next_at, \
             is_default, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL, $13, $14, $15, $16)",
        )
        .bind(&t.id)
        .bind(&t.project)
        .bind(&t.source_url)
        .bind(&t.ref_pattern)
        .bind(&t.tag_pattern)
        .bind(&t.image_name)
        .bind(&t.builder)
        .bind(&t.env)
        .bind(serde_json::to_string(&t.secret_env).unwrap_or_else(|_| "[]".into()))
        .bind(&t.git_credentials)
        .bind(&t.hook_secret)
        .bind(t.poll_interval_secs)
        .bind(t.poll_interval_secs.map(|_| now_ms()))
        .bind(is_default as i64)
        .bind(&t.created_by)
        .bind(t.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.trigger_get(&t.id)
            .await?
            .ok_or_else(|| StorageError::Corrupt("a trigger vanished after its creation".into()))
    }

    pub async fn trigger_get(&self, id: &str) -> Result<Option<Trigger>> {
        let row = sqlx::query(trigger_select!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.write)
            .await?;
        Ok(row.map(trigger))
    }

    /// A project's triggers (all projects' with `None`), oldest first.
    pub async fn triggers(&self, project: Option<&str>) -> Result<Vec<Trigger>> {
        let rows = match project {
            Some(p) => {
                sqlx::query(trigger_select!(
                    "WHERE project = $1 ORDER BY created_at, id"
                ))
                .bind(p)
                .fetch_all(&self.read)
                .await?
            }
            None => {
                sqlx::query(trigger_select!("ORDER BY project, created_at, id"))
                    .fetch_all(&self.read)
                    .await?
            }
        };
        Ok(rows.into_iter().map(trigger).collect())
    }

    /// Writes a trigger's settings (not its polling state). A trigger made
    /// the default takes that from the project's others.
    pub async fn trigger_update(&self, t: &Trigger) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        self.lock_project(&mut tx, &t.project).await?;
        if t.is_default {
            sqlx::query("UPDATE triggers SET is_default = 0 WHERE project = $1 AND id <> $2")
                .bind(&t.project)
                .bind(&t.id)
                .execute(&mut *tx)
                .await?;
        }
        let n = sqlx::query(
            "UPDATE triggers SET source_url = $1, ref_pattern = $2, tag_pattern = $3, image_name = $4, \
             builder = $5, env = $6, secret_env = $7, git_credentials = $8, hook_secret = $9, \
             poll_interval_secs = $10, \
             poll_next_at = CASE WHEN $10 IS NULL THEN NULL ELSE COALESCE(poll_next_at, $11) END, \
             is_default = $12 WHERE id = $13 AND project = $14",
        )
        .bind(&t.source_url)
        .bind(&t.ref_pattern)
        .bind(&t.tag_pattern)
        .bind(&t.image_name)
        .bind(&t.builder)
        .bind(&t.env)
        .bind(serde_json::to_string(&t.secret_env).unwrap_or_else(|_| "[]".into()))
        .bind(&t.git_credentials)
        .bind(&t.hook_secret)
        .bind(t.poll_interval_secs)
        .bind(now_ms())
        .bind(t.is_default as i64)
        .bind(&t.id)
        .bind(&t.project)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Deletes a trigger and its deliveries (its builds stay).
    pub async fn trigger_delete(&self, project: &str, id: &str) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        sqlx::query("DELETE FROM trigger_deliveries WHERE trigger_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM triggers WHERE id = $1 AND project = $2")
            .bind(id)
            .bind(project)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    /// The project's default trigger, if it has one.
    pub async fn trigger_default(&self, project: &str) -> Result<Option<Trigger>> {
        let row = sqlx::query(trigger_select!(
            "WHERE project = $1 ORDER BY is_default DESC, created_at LIMIT 1"
        ))
        .bind(project)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(trigger))
    }

    // ----- deliveries ------------------------------------------------------

    /// Records a delivery as `d.result` says; its row id. With a delivery
    /// id, only the first delivery of that id is recorded: `None` when it
    /// was seen before (a replay or a redelivery), and nothing is written —
    /// unless that one failed (the quota, a builder not approved) or was
    /// left `received` for over ten minutes (its process stopped): then the
    /// forge's redelivery is taken as a new attempt, in the same row.
    pub async fn delivery_record(&self, d: &Delivery) -> Result<Option<i64>> {
        let mut tx = self.write.begin().await?;
        let row = sqlx::query(
            "INSERT INTO trigger_deliveries (trigger_id, delivery_id, at, provider, event, git_ref, \
             git_commit, result, detail, build_id, git_before) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (trigger_id, delivery_id) DO NOTHING RETURNING id",
        )
        .bind(&d.trigger_id)
        .bind(&d.delivery_id)
        .bind(d.at)
        .bind(&d.provider)
        .bind(&d.event)
        .bind(&d.git_ref)
        .bind(&d.git_commit)
        .bind(&d.result)
        .bind(&d.detail)
        .bind(&d.build_id)
        .bind(&d.git_before)
        .fetch_optional(&mut *tx)
        .await?;
        let id: i64 = match row {
            Some(row) => row.get(0),
            None => {
                let again = sqlx::query(
                    "UPDATE trigger_deliveries SET at = $1, result = $2, detail = $3, \
                     build_id = NULL, git_ref = $4, git_commit = $5, git_before = $9 \
                     WHERE trigger_id = $6 AND delivery_id = $7 \
                     AND (result = 'failed' OR (result = 'received' AND at < $8)) RETURNING id",
                )
                .bind(d.at)
                .bind(&d.result)
                .bind(&d.detail)
                .bind(&d.git_ref)
                .bind(&d.git_commit)
                .bind(&d.trigger_id)
                .bind(&d.delivery_id)
                .bind(d.at - 600_000)
                .bind(&d.git_before)
                .fetch_optional(&mut *tx)
                .await?;
                match again {
                    Some(row) => {
                        tx.commit().await?;
                        return Ok(Some(row.get(0)));
                    }
                    None => return Ok(None),
                }
            }
        };
        // The oldest of this trigger's go when it has too many.
        let oldest_kept: Option<i64> = sqlx::query(
            "SELECT id FROM trigger_deliveries WHERE trigger_id = $1 ORDER BY id DESC \
             LIMIT 1 OFFSET $2",
        )
        .bind(&d.trigger_id)
        .bind(DELIVERIES_KEPT - 1)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.get(0));
        if let Some(oldest) = oldest_kept {
            sqlx::query("DELETE FROM trigger_deliveries WHERE trigger_id = $1 AND id < $2")
                .bind(&d.trigger_id)
                .bind(oldest)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(id))
    }

    /// Whether this trigger built (or reused) `commit` of `git_ref` for an
    /// earlier delivery — a replayed or late delivery of an old push — or
    /// for a later push on top of it (that push's `before` is `commit`): a
    /// late delivery of an older push. The delivery that says so.
    pub async fn delivery_commit_seen(
        &self,
        trigger_id: &str,
        git_ref: &str,
        commit: &str,
        except: i64,
    ) -> Result<Option<Delivery>> {
        let row = sqlx::query(delivery_select!(
            "WHERE trigger_id = $1 AND git_ref = $2 AND (git_commit = $3 OR git_before = $3) \
             AND id <> $4 AND provider <> 'poll' AND result IN ('queued', 'reused') \
             ORDER BY id DESC LIMIT 1"
        ))
        .bind(trigger_id)
        .bind(git_ref)
        .bind(commit)
        .bind(except)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(delivery))
    }

    /// Says what became of a recorded delivery.
    pub async fn delivery_result(
        &self,
        id: i64,
        result: &str,
        detail: &str,
        build_id: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE trigger_deliveries SET result = $1, detail = $2, build_id = $3 WHERE id = $4",
        )
        .bind(result)
        .bind(detail)
        .bind(build_id)
        .bind(id)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// A trigger's deliveries, newest first.
    pub async fn deliveries(&self, trigger_id: &str, limit: u32) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(delivery_select!(
            "WHERE trigger_id = $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(trigger_id)
        .bind(limit.clamp(1, 1000) as i64)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(delivery).collect())
    }

    // ----- polling ---------------------------------------------------------

    /// Leases up to `limit` triggers whose poll is due to `owner` until
    /// `lease_ms` from now; no other replica takes them meanwhile.
    pub async fn triggers_poll_claim(
        &self,
        owner: &str,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<Trigger>> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT id FROM triggers WHERE poll_interval_secs IS NOT NULL AND poll_next_at <= $1 \
             AND (poll_lease_until IS NULL OR poll_lease_until < $1) ORDER BY poll_next_at LIMIT $2",
        )
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.write)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let id: String = r.get(0);
            let n = sqlx::query(
                "UPDATE triggers SET poll_lease_owner = $1, poll_lease_until = $2 WHERE id = $3 \
                 AND poll_interval_secs IS NOT NULL AND poll_next_at <= $4 \
                 AND (poll_lease_until IS NULL OR poll_lease_until < $4)",
            )
            .bind(owner)
            .bind(now + lease_ms)
            .bind(&id)
            .bind(now)
            .execute(&self.write)
            .await?
            .rows_affected();
            if n == 1
                && let Some(t) = self.trigger_get(&id).await?
            {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Ends `owner`'s poll of a trigger: the commit it saw (if it read
    /// one), the next poll's time, the lease released.
    pub async fn trigger_poll_done(
        &self,
        id: &str,
        owner: &str,
        commit: Option<&str>,
        next_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE triggers SET poll_commit = COALESCE($1, poll_commit), poll_next_at = $2, \
             poll_lease_owner = NULL, poll_lease_until = NULL WHERE id = $3 AND poll_lease_owner = $4",
        )
        .bind(commit)
        .bind(next_at)
        .bind(id)
        .bind(owner)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    // ----- secrets ---------------------------------------------------------

    /// Sets a project secret (sealed); true when it replaced one.
    pub async fn secret_set(&self, project: &str, name: &str, sealed: &str) -> Result<bool> {
        let now = now_ms();
        let existed = self.secret_sealed(project, name).await?.is_some();
        sqlx::query(
            "INSERT INTO project_secrets (project, name, sealed, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) ON CONFLICT (project, name) \
             DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
        )
        .bind(project)
        .bind(name)
        .bind(sealed)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(existed)
    }

    /// A secret, sealed.
    pub async fn secret_sealed(&self, project: &str, name: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query("SELECT sealed FROM project_secrets WHERE project = $1 AND name = $2")
                .bind(project)
                .bind(name)
                .fetch_optional(&self.write)
                .await?
                .map(|r| r.get(0)),
        )
    }

    pub async fn secrets(&self, project: &str) -> Result<Vec<SecretInfo>> {
        let rows = sqlx::query(
            "SELECT project, name, created_at, updated_at FROM project_secrets WHERE project = $1 \
             ORDER BY name",
        )
        .bind(project)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| SecretInfo {
                project: r.get(0),
                name: r.get(1),
                created_at: r.get(2),
                updated_at: r.get(3),
            })
            .collect())
    }

    pub async fn secret_delete(&self, project: &str, name: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM project_secrets WHERE project = $1 AND name = $2")
                .bind(project)
                .bind(name)
                .execute(&self.write)
                .await?
                .rows_affected()
                == 1,
        )
    }

    /// The sealed check value of the secrets key, if one was stored.
    pub async fn secrets_key_check(&self) -> Result<Option<String>> {
        Ok(
            sqlx::query("SELECT sealed FROM secrets_key_check WHERE id = 1")
                .fetch_optional(&self.write)
                .await?
                .map(|r| r.get(0)),
        )
    }

    /// Stores the check value unless one is there; returns the one stored.
    pub async fn secrets_key_check_init(&self, sealed: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO secrets_key_check (id, sealed) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        )
        .bind(sealed)
        .execute(&self.write)
        .await?;
        self.secrets_key_check()
            .await?
            .ok_or_else(|| StorageError::Corrupt("the secrets key check vanished".into()))
    }
}
