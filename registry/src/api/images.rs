//! A project's images for the tools that build them: what they hold and
//! cost against the quota (`slipway build quota`), and removing them
//! (`slipway build clean`). The admin or the project's build token.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::json;
use slipway_storage::{Digest, RepoName, StorageError};

use super::builds::{BuildCaller, record_as};
use super::storage::{UsageView, usage_view};
use super::{Error, ErrorBody, Result};
use crate::auth::people::Right;
use crate::server::AppState;

/// One image name of a project (the repository `<project>/<name>`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImageView {
    /// The image name (`web` for `tool/web`).
    pub name: String,
    pub repository: String,
    /// Manifests it holds (tagged or not).
    pub manifests: u64,
    pub tags: Vec<String>,
    /// Distinct bytes of its manifests and layers; base-project layers
    /// (the run image's) excluded, as the quota excludes them. Images of
    /// a project share layers, so these may add up to more than the usage.
    pub bytes: u64,
    pub size: String,
    /// Milliseconds since the epoch.
    pub last_push: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImagesView {
    pub project: String,
    pub usage: UsageView,
    pub images: Vec<ImageView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CleanReport {
    pub project: String,
    /// The image names cleaned.
    pub images: Vec<String>,
    pub deleted_manifests: u64,
    /// The project's usage afterwards.
    pub usage: UsageView,
}

async fn usage(state: &AppState, project: &str) -> Result<UsageView> {
    let u = state
        .meta
        .usage(project)
        .await?
        .ok_or_else(|| Error::not_found(format!("project {project:.100} does not exist")))?;
    Ok(usage_view(u, &state.config.quota.warn_percent))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/images", tag = "builds",
    params(("project" = String, Path)),
    responses((status = 200, body = ImagesView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path(project): Path<String>,
) -> Result<Json<ImagesView>> {
    caller.may(&state, &project, Right::Read).await?;
    let usage = usage(&state, &project).await?;
    let prefix = format!("{project}/");
    let images = state
        .meta
        .project_images(&project)
        .await?
        .into_iter()
        .map(|i| ImageView {
            name: i
                .repository
                .strip_prefix(&prefix)
                .unwrap_or(&i.repository)
                .to_owned(),
            size: slipway_storage::error::human_bytes(i.bytes),
            repository: i.repository,
            manifests: i.manifests,
            tags: i.tags,
            bytes: i.bytes,
            last_push: i.last_push,
        })
        .collect();
    Ok(Json(ImagesView {
        project,
        usage,
        images,
    }))
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}/images", tag = "builds",
    params(("project" = String, Path)),
    responses((status = 200, body = CleanReport), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn clean_all(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path(project): Path<String>,
) -> Result<Json<CleanReport>> {
    clean(&state, &caller, &project, None).await.map(Json)
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}/images/{name}", tag = "builds",
    params(("project" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = CleanReport), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn clean_one(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<CleanReport>> {
    clean(&state, &caller, &project, Some(&name))
        .await
        .map(Json)
}

/// Deletes every manifest of the project's repositories (or of one image
/// name): indexes before what they list. Blobs nothing references then
/// leave the usage at once and the store at the next GC.
async fn clean(
    state: &AppState,
    caller: &BuildCaller,
    project: &str,
    name: Option<&str>,
) -> Result<CleanReport> {
    caller.may(state, project, Right::Manage).await?;
    usage(state, project).await?;
    let mut repos: Vec<String> = state
        .meta
        .project_repositories(project)
        .await?
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    if let Some(name) = name {
        let wanted = format!("{project}/{name}");
        repos.retain(|r| *r == wanted);
        if repos.is_empty() {
            return Err(Error::not_found(format!(
                "project {project:.100} has no image named {name:.100}"
            )));
        }
    }
    let mut deleted = 0u64;
    let mut names = Vec::new();
    for r in &repos {
        let repo = RepoName::parse(r)?;
        let mut left: Vec<Digest> = state
            .meta
            .repo_manifest_digests(&repo)
            .await?
            .iter()
            .filter_map(|d| d.parse().ok())
            .collect();
        // An index is refused while listed by another, and a manifest
        // while an index lists it: delete what may go, round after round.
        while !left.is_empty() {
            let before = left.len();
            let mut refused = Vec::new();
            let mut why = String::new();
            for d in left.drain(..) {
                match state.meta.manifest_delete(&repo, &d).await {
                    Ok(()) | Err(StorageError::ManifestUnknown(_)) => deleted += 1,
                    Err(StorageError::Conflict(m)) => {
                        why = m;
                        refused.push(d);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if refused.len() == before {
                return Err(Error::new(
                    StatusCode::CONFLICT,
                    format!("cannot delete the manifests left in {r}: {why}"),
                ));
            }
            left = refused;
        }
        names.push(
            r.strip_prefix(&format!("{project}/"))
                .unwrap_or(r)
                .to_owned(),
        );
    }
    record_as(
        state,
        &caller.who(),
        "images.clean",
        project,
        name.unwrap_or("*"),
        json!({"images": names, "manifests": deleted}),
    )
    .await?;
    Ok(CleanReport {
        project: project.to_owned(),
        images: names,
        deleted_manifests: deleted,
        usage: usage(state, project).await?,
    })
}
