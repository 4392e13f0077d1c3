//! `/api/v1/projects`

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use slipway_storage::RepoName;
use slipway_storage::meta::Project;

use super::{Admin, Error, ErrorBody, Result, audit, time};
use crate::server::AppState;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectView {
    pub name: String,
    /// Anyone may pull from a public project, without credentials.
    pub public: bool,
    pub created_at: String,
    pub updated_at: String,
    /// Storage quota in bytes; absent: unlimited.
    pub quota_bytes: Option<u64>,
    /// A shared base project: its blobs cost the other projects nothing.
    pub base: bool,
    /// Tagged images kept per repository; absent: the server's default.
    pub retention_keep: Option<u32>,
    /// The project's own build limits, each overriding the server's
    /// `[builds.limits]`; absent keys: the server's.
    pub build_limits: BuildLimitsView,
    /// Build records kept per image name, overriding the server's
    /// `builds.keep_succeeded` / `keep_failed`; absent keys: the server's.
    #[serde(default)]
    pub build_retention: BuildRetentionView,
    /// Repositories and the number of manifests each holds (single project only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repositories: Option<Vec<RepositoryView>>,
}

/// A project's build limits (overrides of the server's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildLimitsView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<u64>,
}

impl BuildLimitsView {
    /// The stored overrides (a JSON object), or none.
    pub fn of(p: &Project) -> BuildLimitsView {
        p.build_limits
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default()
    }

    /// The server's limits with these overrides.
    pub fn over(&self, server: slipway_builder::limits::Limits) -> slipway_builder::limits::Limits {
        slipway_builder::limits::Limits {
            memory_bytes: self.memory_bytes.unwrap_or(server.memory_bytes),
            processes: self.processes.unwrap_or(server.processes),
            cpus: self.cpus.unwrap_or(server.cpus),
            disk_bytes: self.disk_bytes.unwrap_or(server.disk_bytes),
            log_bytes: self.log_bytes.unwrap_or(server.log_bytes),
        }
    }
}

/// A project's build record retention (overrides of the server's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildRetentionView {
    /// Successful builds (reused ones and rebases count) kept per image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_succeeded: Option<u32>,
    /// Failed, cancelled and timed-out builds kept per image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_failed: Option<u32>,
}

impl BuildRetentionView {
    pub fn of(p: &Project) -> BuildRetentionView {
        p.build_retention
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default()
    }

    pub fn over(
        &self,
        server: slipway_storage::meta::Retention,
    ) -> slipway_storage::meta::Retention {
        slipway_storage::meta::Retention {
            keep_succeeded: self.keep_succeeded.unwrap_or(server.keep_succeeded),
            keep_failed: self.keep_failed.unwrap_or(server.keep_failed),
        }
    }
}

/// Changes to a project's build limits: a number sets one, `null` returns
/// it to the server's, an absent key keeps it.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildLimitsUpdate {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub memory_bytes: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub processes: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>)]
    pub cpus: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub disk_bytes: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub log_bytes: Option<Option<u64>>,
}

impl BuildLimitsUpdate {
    fn apply(&self, to: &mut BuildLimitsView) {
        fn set<T: Copy>(field: &mut Option<T>, change: Option<Option<T>>) {
            if let Some(v) = change {
                *field = v;
            }
        }
        set(&mut to.memory_bytes, self.memory_bytes);
        set(&mut to.processes, self.processes);
        set(&mut to.cpus, self.cpus);
        set(&mut to.disk_bytes, self.disk_bytes);
        set(&mut to.log_bytes, self.log_bytes);
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RepositoryView {
    pub name: String,
    pub manifests: u64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// `tool-<name>` for tools, `platform` for stacks and builders: one
    /// component of a repository name.
    pub name: String,
    #[serde(default = "yes")]
    pub public: bool,
    /// Storage quota in bytes; absent: unlimited.
    #[serde(default)]
    pub quota_bytes: Option<u64>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectUpdate {
    pub public: Option<bool>,
    /// Bytes; `null` removes the quota.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub quota_bytes: Option<Option<u64>>,
    /// Tagged images kept per repository; `null`: the server's default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub retention_keep: Option<Option<u32>>,
    /// The project's own build limits (each key: a number, or `null` for
    /// the server's).
    #[serde(default)]
    pub build_limits: Option<BuildLimitsUpdate>,
    /// The project's build record retention (replaces it; `{}`: the
    /// server's).
    #[serde(default)]
    pub build_retention: Option<BuildRetentionView>,
}

/// Tells a field set to `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn view(p: Project) -> ProjectView {
    let build_limits = BuildLimitsView::of(&p);
    let build_retention = BuildRetentionView::of(&p);
    ProjectView {
        build_limits,
        build_retention,
        name: p.name,
        public: p.public,
        created_at: time(p.created_at),
        updated_at: time(p.updated_at),
        quota_bytes: p.quota_bytes,
        base: p.is_base,
        retention_keep: p.retention_keep,
        repositories: None,
    }
}

/// A project name is one component of the repository name grammar.
fn check_name(name: &str) -> Result<()> {
    if name.contains('/') || RepoName::parse(name).is_err() {
        return Err(Error::bad_request(format!(
            "{name:.100} is not a valid project name: use lowercase letters and digits, \
             separated by '.', '_', '__' or '-' (one path component, no '/')"
        )));
    }
    Ok(())
}

async fn found(state: &AppState, name: &str) -> Result<Project> {
    state
        .meta
        .project_get(name)
        .await?
        .ok_or_else(|| Error::not_found(format!("project {name:.100} does not exist")))
}

#[utoipa::path(get, path = "/api/v1/projects", tag = "projects",
    responses((status = 200, body = [ProjectView]), (status = 401, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, _admin: Admin) -> Result<Json<Vec<ProjectView>>> {
    Ok(Json(
        state.meta.projects().await?.into_iter().map(view).collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", request_body = NewProject,
    responses((status = 201, body = ProjectView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Json(body): Json<NewProject>,
) -> Result<Response> {
    check_name(&body.name)?;
    let is_base = state.config.quota.base_projects.contains(&body.name);
    let p = state
        .meta
        .project_create(&body.name, body.public, body.quota_bytes, is_base)
        .await?;
    state.auth.forget_project(&p.name);
    audit(
        &state,
        &caller,
        "project.create",
        Some(&p.name),
        &p.name,
        json!({"public": p.public, "quota_bytes": p.quota_bytes}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view(p))).into_response())
}

#[utoipa::path(get, path = "/api/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path)),
    responses((status = 200, body = ProjectView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<ProjectView>> {
    let p = found(&state, &name).await?;
    let repos = state.meta.project_repositories(&name).await?;
    let mut v = view(p);
    v.repositories = Some(
        repos
            .into_iter()
            .map(|(name, manifests)| RepositoryView { name, manifests })
            .collect(),
    );
    Ok(Json(v))
}

#[utoipa::path(patch, path = "/api/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path)), request_body = ProjectUpdate,
    responses((status = 200, body = ProjectView), (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(name): Path<String>,
    Json(body): Json<ProjectUpdate>,
) -> Result<Json<ProjectView>> {
    let project = found(&state, &name).await?;
    // Checked before anything is written: a bad request changes nothing.
    let build_limits = match &body.build_limits {
        Some(change) => {
            let mut limits = BuildLimitsView::of(&project);
            change.apply(&mut limits);
            crate::config::check_limits(
                &limits.over(state.config.builds.limits.limits()),
                "build_limits",
            )
            .map_err(|e| Error::bad_request(e.sentence()))?;
            Some(
                (limits != BuildLimitsView::default())
                    .then(|| serde_json::to_string(&limits).expect("serialisable")),
            )
        }
        None => None,
    };
    if let Some(r) = &body.build_retention
        && r.keep_succeeded == Some(0)
    {
        return Err(Error::bad_request(
            "build_retention.keep_succeeded must be at least 1 (the last successful build is \
             what an equal build reuses)",
        ));
    }
    if let Some(public) = body.public {
        state.meta.project_set_public(&name, public).await?;
    }
    if let Some(r) = &body.build_retention {
        let stored = (*r != BuildRetentionView::default())
            .then(|| serde_json::to_string(r).expect("serialisable"));
        state
            .meta
            .set_build_retention(&name, stored.as_deref())
            .await?;
    }
    if let Some(quota) = body.quota_bytes {
        state.meta.set_quota(&name, quota).await?;
    }
    if let Some(keep) = body.retention_keep {
        state.meta.set_retention(&name, keep).await?;
    }
    if let Some(stored) = build_limits {
        state
            .meta
            .set_build_limits(&name, stored.as_deref())
            .await?;
    }
    state.auth.forget_project(&name);
    audit(
        &state,
        &caller,
        "project.update",
        Some(&name),
        &name,
        json!({"public": body.public, "quota_bytes": body.quota_bytes, "retention_keep": body.retention_keep,
            "build_limits": body.build_limits.is_some().then(|| view_limits(&body)),
            "build_retention": body.build_retention}),
    )
    .await?;
    Ok(Json(view(found(&state, &name).await?)))
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    found(&state, &name).await?;
    state.meta.project_delete(&name).await?;
    state.auth.forget_project(&name);
    audit(
        &state,
        &caller,
        "project.delete",
        Some(&name),
        &name,
        json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What a project update asked of its build limits, for the audit log.
fn view_limits(body: &ProjectUpdate) -> serde_json::Value {
    let Some(b) = &body.build_limits else {
        return serde_json::Value::Null;
    };
    json!({"memory_bytes": b.memory_bytes, "processes": b.processes, "cpus": b.cpus,
        "disk_bytes": b.disk_bytes, "log_bytes": b.log_bytes})
}
