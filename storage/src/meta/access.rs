//! Projects, system accounts and robot accounts.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Metadata, now_ms};
use crate::error::{Result, StorageError};

/// The registry at a glance (the dashboard's overview).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overview {
    pub projects: u64,
    pub repositories: u64,
    pub manifests: u64,
    /// Bytes stored once each: blobs and manifest bodies.
    pub stored_bytes: u64,
    /// The sum of the projects' usage (what they would store without
    /// deduplication across projects).
    pub usage_bytes: u64,
}

/// One repository of a project, summed up (see [`Metadata::project_images`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    pub repository: String,
    pub manifests: u64,
    pub tags: Vec<String>,
    pub bytes: u64,
    pub last_push: Option<i64>,
    pub last_pull: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub name: String,
    pub public: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// `None`: unlimited.
    pub quota_bytes: Option<u64>,
    /// A shared base project: its blobs cost the others nothing.
    pub is_base: bool,
    /// Tagged images kept per repository; `None`: the server's default.
    pub retention_keep: Option<u32>,
    /// The project's own build limits, a JSON object of overrides;
    /// `None`: the server's.
    pub build_limits: Option<String>,
    /// The project's own build record retention, a JSON object with
    /// `keep_succeeded` and/or `keep_failed`; `None`: the server's.
    pub build_retention: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Robot {
    pub id: i64,
    pub project: String,
    pub name: String,
    pub description: String,
    /// PHC string of the secret's hash. Never leaves the server.
    pub secret_hash: String,
    /// Comma-separated actions: `pull`, `push`, `delete`.
    pub permissions: String,
    pub enabled: bool,
    pub expires_at: Option<i64>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
}

impl Robot {
    /// `robot$<project>+<name>`.
    pub fn full_name(&self) -> String {
        format!("robot${}+{}", self.project, self.name)
    }

    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at.is_some_and(|t| t <= now_ms)
    }
}

/// Changes to a robot; `None` leaves a field as it is. Any change but the
/// description moves the robot's version, invalidating tokens issued before.
#[derive(Debug, Clone, Default)]
pub struct RobotUpdate {
    pub description: Option<String>,
    pub permissions: Option<String>,
    pub enabled: Option<bool>,
    pub expires_at: Option<Option<i64>>,
    pub secret_hash: Option<String>,
}

macro_rules! project_select {
    ($where:literal) => {
        concat!(
            "SELECT name, public, created_at, updated_at, quota_bytes, is_base, retention_keep, ",
            "build_limits, build_retention ",
            "FROM projects ",
            $where
        )
    };
}

fn project(r: AnyRow) -> Project {
    Project {
        name: r.get(0),
        public: r.get::<i64, _>(1) != 0,
        created_at: r.get(2),
        updated_at: r.get(3),
        quota_bytes: r.get::<Option<i64>, _>(4).map(|q| q.max(0) as u64),
        is_base: r.get::<i64, _>(5) != 0,
        retention_keep: r.get::<Option<i64>, _>(6).map(|k| k.max(0) as u32),
        build_limits: r.get::<Option<String>, _>(7),
        build_retention: r.get::<Option<String>, _>(8),
    }
}

macro_rules! robot_select {
    ($where:literal) => {
        concat!(
            "SELECT id, project, name, description, secret_hash, permissions, enabled, ",
            "expires_at, version, created_at, updated_at, last_used_at FROM robots ",
            $where
        )
    };
}

fn robot(r: AnyRow) -> Robot {
    Robot {
        id: r.get(0),
        project: r.get(1),
        name: r.get(2),
        description: r.get(3),
        secret_hash: r.get(4),
        permissions: r.get(5),
        enabled: r.get::<i64, _>(6) != 0,
        expires_at: r.get(7),
        version: r.get(8),
        created_at: r.get(9),
        updated_at: r.get(10),
        last_used_at: r.get(11),
    }
}

impl Metadata {
    // ----- projects -------------------------------------------------------

    /// Creates a project; `is_base` marks a shared base project.
    pub async fn project_create(
        &self,
        name: &str,
        public: bool,
        quota: Option<u64>,
        is_base: bool,
    ) -> Result<Project> {
        let now = now_ms();
        let n = sqlx::query(
            "INSERT INTO projects (name, public, created_at, updated_at, quota_bytes, is_base) \
             VALUES ($1, $2, $3, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(public as i64)
        .bind(now)
        .bind(quota.map(|q| q as i64))
        .bind(is_base as i64)
        .execute(&self.write)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StorageError::Conflict(format!(
                "project {name} already exists"
            )));
        }
        Ok(Project {
            name: name.to_owned(),
            public,
            created_at: now,
            updated_at: now,
            quota_bytes: quota,
            is_base,
            retention_keep: None,
            build_limits: None,
            build_retention: None,
        })
    }

    /// Sets (or with `None` removes) a project's own build limits (a JSON
    /// object of overrides).
    pub async fn set_build_limits(&self, project: &str, limits: Option<&str>) -> Result<bool> {
        let n =
            sqlx::query("UPDATE projects SET build_limits = $1, updated_at = $2 WHERE name = $3")
                .bind(limits)
                .bind(now_ms())
                .bind(project)
                .execute(&self.write)
                .await?
                .rows_affected();
        Ok(n == 1)
    }

    /// Sets (or with `None` removes) a project's own build record
    /// retention (a JSON object).
    pub async fn set_build_retention(
        &self,
        project: &str,
        retention: Option<&str>,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE projects SET build_retention = $1, updated_at = $2 WHERE name = $3",
        )
        .bind(retention)
        .bind(now_ms())
        .bind(project)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn project_get(&self, name: &str) -> Result<Option<Project>> {
        let row = sqlx::query(project_select!("WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(project))
    }

    pub async fn projects(&self) -> Result<Vec<Project>> {
        let rows = sqlx::query(project_select!("ORDER BY name"))
            .fetch_all(&self.read)
            .await?;
        Ok(rows.into_iter().map(project).collect())
    }

    pub async fn project_set_public(&self, name: &str, public: bool) -> Result<Option<Project>> {
        sqlx::query("UPDATE projects SET public = $1, updated_at = $2 WHERE name = $3")
            .bind(public as i64)
            .bind(now_ms())
            .bind(name)
            .execute(&self.write)
            .await?;
        self.project_get(name).await
    }

    /// Repositories of a project and how many manifests they hold.
    pub async fn project_repositories(&self, name: &str) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query(
            "SELECT r.name, (SELECT COUNT(*) FROM manifests m WHERE m.repo_id = r.id) \
             FROM repositories r WHERE r.project = $1 ORDER BY r.name",
        )
        .bind(name)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u64))
            .collect())
    }

    /// The registry at a glance.
    pub async fn overview(&self) -> Result<Overview> {
        // PostgreSQL's SUM of BIGINT is NUMERIC: cast back.
        let r = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM projects), (SELECT COUNT(*) FROM repositories), \
             (SELECT COUNT(*) FROM manifests), \
             CAST(COALESCE((SELECT SUM(size) FROM blobs), 0) AS BIGINT), \
             CAST(COALESCE((SELECT SUM(size) FROM manifest_bodies), 0) AS BIGINT), \
             CAST(COALESCE((SELECT SUM(used_bytes) FROM projects), 0) AS BIGINT)",
        )
        .fetch_one(&self.read)
        .await?;
        let n = |i: usize| r.get::<i64, _>(i).max(0) as u64;
        Ok(Overview {
            projects: n(0),
            repositories: n(1),
            manifests: n(2),
            stored_bytes: n(3) + n(4),
            usage_bytes: n(5),
        })
    }

    /// Which of `digests` a base project (`platform`) holds: they cost the
    /// other projects nothing. One query.
    pub async fn held_by_base(
        &self,
        digests: &[String],
    ) -> Result<std::collections::HashSet<String>> {
        if digests.is_empty() {
            return Ok(Default::default());
        }
        let list = (1..=digests.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT DISTINCT pb.digest FROM project_blobs pb JOIN projects p ON p.name = pb.project \
             WHERE p.is_base = 1 AND pb.digest IN ({list})"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for d in digests {
            q = q.bind(d);
        }
        Ok(q.fetch_all(&self.read)
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// How many repositories each project has.
    pub async fn repository_counts(&self) -> Result<std::collections::HashMap<String, u64>> {
        Ok(
            sqlx::query("SELECT project, COUNT(*) FROM repositories GROUP BY project")
                .fetch_all(&self.read)
                .await?
                .into_iter()
                .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u64))
                .collect(),
        )
    }

    /// A project's repositories with what they hold: manifests, tags, the
    /// distinct bytes their manifests reference (manifests included; blobs
    /// a base project holds excluded for a project that is not one, as its
    /// usage counts them), and the newest manifest's time.
    pub async fn project_images(&self, name: &str) -> Result<Vec<ImageSummary>> {
        let repos = sqlx::query(
            "SELECT r.id, r.name, p.is_base FROM repositories r JOIN projects p ON p.name = r.project \
             WHERE r.project = $1 ORDER BY r.name",
        )
        .bind(name)
        .fetch_all(&self.read)
        .await?;
        let mut out = Vec::with_capacity(repos.len());
        for r in repos {
            let repo_id: i64 = r.get(0);
            let is_base = r.get::<i64, _>(2) != 0;
            let row = sqlx::query(
                "SELECT COUNT(*), MAX(created_at), MAX(last_pulled_at) FROM manifests \
                 WHERE repo_id = $1",
            )
            .bind(repo_id)
            .fetch_one(&self.read)
            .await?;
            let manifests = row.get::<i64, _>(0) as u64;
            let last_push: Option<i64> = row.get(1);
            let last_pull: Option<i64> = row.get(2);
            // PostgreSQL's SUM of BIGINT is NUMERIC: cast back.
            let bytes: i64 = sqlx::query(
                "SELECT CAST(COALESCE(SUM(x.size), 0) AS BIGINT) FROM ( \
                   SELECT m.digest AS digest, m.size AS size FROM manifests m WHERE m.repo_id = $1 \
                   UNION \
                   SELECT b.digest, b.size FROM manifest_refs mr JOIN blobs b ON b.digest = mr.ref_digest \
                   WHERE mr.repo_id = $1 AND mr.is_manifest = 0) x \
                 WHERE $2 = 1 OR NOT EXISTS ( \
                   SELECT 1 FROM project_blobs pb JOIN projects bp ON bp.name = pb.project \
                   WHERE bp.is_base = 1 AND pb.digest = x.digest)",
            )
            .bind(repo_id)
            .bind(is_base as i64)
            .fetch_one(&self.read)
            .await?
            .get(0);
            let tags = sqlx::query("SELECT name FROM tags WHERE repo_id = $1 ORDER BY name")
                .bind(repo_id)
                .fetch_all(&self.read)
                .await?
                .into_iter()
                .map(|t| t.get::<String, _>(0))
                .collect();
            out.push(ImageSummary {
                repository: r.get(1),
                manifests,
                tags,
                bytes: bytes as u64,
                last_push,
                last_pull,
            });
        }
        Ok(out)
    }

    /// Deletes a project that holds no manifest, with its (empty)
    /// repositories, uploads and robots.
    pub async fn project_delete(&self, name: &str) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let images = sqlx::query(
            "SELECT COUNT(*) FROM manifests m JOIN repositories r ON r.id = m.repo_id WHERE r.project = $1",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await?
        .get::<i64, _>(0);
        if images > 0 {
            return Err(StorageError::Conflict(format!(
                "project {name} still holds {images} manifests; delete them first"
            )));
        }
        for sql in [
            "DELETE FROM repo_blobs WHERE repo_id IN (SELECT id FROM repositories WHERE project = $1)",
            "DELETE FROM uploads WHERE repo_id IN (SELECT id FROM repositories WHERE project = $1)",
            "DELETE FROM repositories WHERE project = $1",
            "DELETE FROM robots WHERE project = $1",
            "DELETE FROM project_blobs WHERE project = $1",
            "DELETE FROM reservations WHERE project = $1",
            "DELETE FROM trigger_deliveries WHERE trigger_id IN (SELECT id FROM triggers WHERE project = $1)",
            "DELETE FROM triggers WHERE project = $1",
            "DELETE FROM project_secrets WHERE project = $1",
            "DELETE FROM build_tokens WHERE project = $1",
            "DELETE FROM memberships WHERE project = $1",
            "DELETE FROM personal_tokens WHERE project = $1",
        ] {
            sqlx::query(sql).bind(name).execute(&mut *tx).await?;
        }
        let n = sqlx::query("DELETE FROM projects WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    // ----- system accounts -----------------------------------------------

    pub async fn account_hash(&self, name: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT password_hash FROM accounts WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn account_set(&self, name: &str, password_hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO accounts (name, password_hash, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash, \
             updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(password_hash)
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    // ----- robots --------------------------------------------------------

    pub async fn robot_create(
        &self,
        project: &str,
        name: &str,
        description: &str,
        secret_hash: &str,
        permissions: &str,
        expires_at: Option<i64>,
    ) -> Result<Robot> {
        let now = now_ms();
        let n = sqlx::query(
            "INSERT INTO robots (project, name, description, secret_hash, permissions, enabled, \
             expires_at, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 1, $6, 1, $7, $7) ON CONFLICT (project, name) DO NOTHING",
        )
        .bind(project)
        .bind(name)
        .bind(description)
        .bind(secret_hash)
        .bind(permissions)
        .bind(expires_at)
        .bind(now)
        .execute(&self.write)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StorageError::Conflict(format!(
                "robot {name} already exists in project {project}"
            )));
        }
        self.robot_get(project, name)
            .await?
            .ok_or_else(|| StorageError::Corrupt("a robot vanished after its creation".into()))
    }

    pub async fn robot_get(&self, project: &str, name: &str) -> Result<Option<Robot>> {
        let row = sqlx::query(robot_select!("WHERE project = $1 AND name = $2"))
            .bind(project)
            .bind(name)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(robot))
    }

    pub async fn robot_by_id(&self, id: i64) -> Result<Option<Robot>> {
        let row = sqlx::query(robot_select!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(robot))
    }

    pub async fn robots(&self, project: &str) -> Result<Vec<Robot>> {
        let rows = sqlx::query(robot_select!("WHERE project = $1 ORDER BY name"))
            .bind(project)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.into_iter().map(robot).collect())
    }

    pub async fn robot_update(
        &self,
        project: &str,
        name: &str,
        u: &RobotUpdate,
    ) -> Result<Option<Robot>> {
        let mut tx = self.write.begin().await?;
        let Some(row) = sqlx::query(robot_select!("WHERE project = $1 AND name = $2"))
            .bind(project)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let mut r = robot(row);
        let bump = u.permissions.is_some()
            || u.enabled.is_some()
            || u.expires_at.is_some()
            || u.secret_hash.is_some();
        if let Some(d) = &u.description {
            r.description = d.clone();
        }
        if let Some(p) = &u.permissions {
            r.permissions = p.clone();
        }
        if let Some(e) = u.enabled {
            r.enabled = e;
        }
        if let Some(e) = u.expires_at {
            r.expires_at = e;
        }
        if let Some(h) = &u.secret_hash {
            r.secret_hash = h.clone();
        }
        if bump {
            r.version += 1;
        }
        r.updated_at = now_ms();
        sqlx::query(
            "UPDATE robots SET description = $1, permissions = $2, enabled = $3, expires_at = $4, \
             secret_hash = $5, version = $6, updated_at = $7 WHERE id = $8",
        )
        .bind(&r.description)
        .bind(&r.permissions)
        .bind(r.enabled as i64)
        .bind(r.expires_at)
        .bind(&r.secret_hash)
        .bind(r.version)
        .bind(r.updated_at)
        .bind(r.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(r))
    }

    pub async fn robot_delete(&self, project: &str, name: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM robots WHERE project = $1 AND name = $2")
            .bind(project)
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Records a use of the robot (callers throttle how often).
    pub async fn robot_touch(&self, id: i64, at: i64) -> Result<()> {
        sqlx::query("UPDATE robots SET last_used_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
