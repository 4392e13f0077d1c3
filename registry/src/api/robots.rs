//! `/api/v1/projects/{project}/robots`: robot accounts
//! `robot$<project>+<name>`. A secret is shown once, when it is made (at
//! creation and rotation), and stored only as an argon2 hash.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use slipway_storage::meta::{Robot, RobotUpdate, now_ms};

use super::{Error, ErrorBody, Result, Signed, audit, time};
use crate::auth::people::Right;
use crate::auth::{Actions, Caller, secrets};
use crate::server::AppState;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RobotView {
    /// `robot$<project>+<name>`: the user name for `docker login` and friends.
    pub username: String,
    pub project: String,
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
    /// Permissions in effect under the server's configuration (robots may
    /// be kept from writing).
    pub effective_permissions: Vec<String>,
    pub enabled: bool,
    pub expires_at: Option<String>,
    pub expired: bool,
    pub created_at: String,
    pub updated_at: String,
    pub last_used_at: Option<String>,
}

/// A robot and its secret, shown this once.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RobotSecret {
    pub robot: RobotView,
    pub secret: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRobot {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Any of `pull`, `push`, `delete`; default `["pull"]`.
    #[serde(default)]
    pub permissions: Option<Vec<String>>,
    /// Days until the robot stops working; absent or 0: never.
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RobotUpdateBody {
    pub description: Option<String>,
    pub permissions: Option<Vec<String>>,
    pub enabled: Option<bool>,
    /// Days from now until the robot stops working; 0: never.
    pub expires_in_days: Option<u32>,
}

fn view(state: &AppState, r: &Robot) -> RobotView {
    let perms = Actions::parse(&r.permissions);
    RobotView {
        username: r.full_name(),
        project: r.project.clone(),
        name: r.name.clone(),
        description: r.description.clone(),
        permissions: perms.names().into_iter().map(str::to_owned).collect(),
        effective_permissions: state
            .robot_rights(perms)
            .names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        enabled: r.enabled,
        expires_at: r.expires_at.map(time),
        expired: r.expired(now_ms()),
        created_at: time(r.created_at),
        updated_at: time(r.updated_at),
        last_used_at: r.last_used_at.map(time),
    }
}

/// Only the admin makes, changes or rotates a robot that may push or
/// delete: people never write images, not even through a robot.
fn writes_need_admin(caller: &Caller, actions: Actions) -> Result<()> {
    if !caller.principal.is_admin() && !Actions::PULL.contains(actions) {
        return Err(Error::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not give a robot push or delete: only the admin may",
                caller.principal.subject()
            ),
        ));
    }
    Ok(())
}

fn permissions(state: &AppState, list: &[String]) -> Result<Actions> {
    let mut actions = Actions::NONE;
    for p in list {
        let a = Actions::parse(p);
        if a.is_empty() || p == "*" {
            return Err(Error::bad_request(format!(
                "{p:.50} is not a permission; use pull, push or delete"
            )));
        }
        actions = actions.union(a);
    }
    if actions.is_empty() {
        return Err(Error::bad_request("a robot needs at least one permission"));
    }
    if !state.config.auth.robots_may_write && !Actions::PULL.contains(actions) {
        return Err(Error::bad_request(
            "robots may only pull: the build front end is the only writer \
             (set auth.robots_may_write = true to allow robots to push or delete)",
        ));
    }
    Ok(actions)
}

fn expiry(days: Option<u32>) -> Option<i64> {
    days.filter(|d| *d > 0)
        .map(|d| now_ms() + d as i64 * 86_400_000)
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        return Err(Error::bad_request(format!(
            "{name:.100} is not a valid robot name: use 1 to 64 lowercase letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

pub(crate) async fn project_exists(state: &AppState, project: &str) -> Result<()> {
    if state.meta.project_get(project).await?.is_none() {
        return Err(Error::not_found(format!(
            "project {project:.100} does not exist"
        )));
    }
    Ok(())
}

async fn found(state: &AppState, project: &str, name: &str) -> Result<Robot> {
    state.meta.robot_get(project, name).await?.ok_or_else(|| {
        Error::not_found(format!(
            "robot {name:.64} does not exist in project {project:.100}"
        ))
    })
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/robots", tag = "robots",
    params(("project" = String, Path)),
    responses((status = 200, body = [RobotView]), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Signed(caller): Signed,
    Path(project): Path<String>,
) -> Result<Json<Vec<RobotView>>> {
    super::require(&state, &caller, &project, Right::Manage).await?;
    project_exists(&state, &project).await?;
    let robots = state.meta.robots(&project).await?;
    Ok(Json(robots.iter().map(|r| view(&state, r)).collect()))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/robots", tag = "robots",
    params(("project" = String, Path)), request_body = NewRobot,
    responses((status = 201, body = RobotSecret), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Signed(caller): Signed,
    Path(project): Path<String>,
    Json(body): Json<NewRobot>,
) -> Result<Response> {
    super::require(&state, &caller, &project, Right::Manage).await?;
    let (robot, secret) = create_robot(&state, &caller, &project, &body).await?;
    Ok((
        StatusCode::CREATED,
        Json(RobotSecret {
            robot: view(&state, &robot),
            secret,
        }),
    )
        .into_response())
}

/// Creates a robot account (the caller is the admin); the robot and its
/// secret (shown once).
pub(crate) async fn create_robot(
    state: &AppState,
    caller: &Caller,
    project: &str,
    body: &NewRobot,
) -> Result<(Robot, String)> {
    check_name(&body.name)?;
    project_exists(state, project).await?;
    let actions = permissions(
        state,
        body.permissions.as_deref().unwrap_or(&["pull".to_owned()]),
    )?;
    writes_need_admin(caller, actions)?;
    let secret = secrets::generate();
    let hash = secrets::hash(&secret)
        .await
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let expires_at = expiry(body.expires_in_days);
    let robot = state
        .meta
        .robot_create(
            project,
            &body.name,
            &body.description,
            &hash,
            &actions.to_list(),
            expires_at,
        )
        .await?;
    audit(
        state,
        caller,
        "robot.create",
        Some(project),
        &robot.full_name(),
        json!({"permissions": actions.names(), "expires_at": expires_at}),
    )
    .await?;
    Ok((robot, secret))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/robots/{robot}", tag = "robots",
    params(("project" = String, Path), ("robot" = String, Path)),
    responses((status = 200, body = RobotView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Signed(caller): Signed,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<RobotView>> {
    super::require(&state, &caller, &project, Right::Manage).await?;
    Ok(Json(view(&state, &found(&state, &project, &name).await?)))
}

#[utoipa::path(patch, path = "/api/v1/projects/{project}/robots/{robot}", tag = "robots",
    params(("project" = String, Path), ("robot" = String, Path)), request_body = RobotUpdateBody,
    responses((status = 200, body = RobotView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Signed(caller): Signed,
    Path((project, name)): Path<(String, String)>,
    Json(body): Json<RobotUpdateBody>,
) -> Result<Json<RobotView>> {
    super::require(&state, &caller, &project, Right::Manage).await?;
    let before = found(&state, &project, &name).await?;
    writes_need_admin(&caller, Actions::parse(&before.permissions))?;
    if let Some(p) = body.permissions.as_deref() {
        writes_need_admin(&caller, permissions(&state, p)?)?;
    }
    let update = RobotUpdate {
        description: body.description.clone(),
        permissions: body
            .permissions
            .as_deref()
            .map(|p| permissions(&state, p))
            .transpose()?
            .map(Actions::to_list),
        enabled: body.enabled,
        expires_at: body.expires_in_days.map(|d| expiry(Some(d))),
        secret_hash: None,
    };
    let robot = state
        .meta
        .robot_update(&project, &name, &update)
        .await?
        .ok_or_else(|| {
            Error::not_found(format!(
                "robot {name:.64} does not exist in project {project:.100}"
            ))
        })?;
    audit(&state, &caller, "robot.update", Some(&project), &robot.full_name(), json!({
        "permissions": update.permissions, "enabled": update.enabled, "expires_at": update.expires_at,
        "description": update.description,
    })).await?;
    Ok(Json(view(&state, &robot)))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/robots/{robot}/rotate", tag = "robots",
    params(("project" = String, Path), ("robot" = String, Path)),
    responses((status = 200, body = RobotSecret), (status = 404, body = ErrorBody)))]
pub async fn rotate(
    State(state): State<AppState>,
    Signed(caller): Signed,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<RobotSecret>> {
    super::require(&state, &caller, &project, Right::Manage).await?;
    let before = found(&state, &project, &name).await?;
    writes_need_admin(&caller, Actions::parse(&before.permissions))?;
    let secret = secrets::generate();
    let hash = secrets::hash(&secret)
        .await
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let robot = state
        .meta
        .robot_update(
            &project,
            &name,
            &RobotUpdate {
                secret_hash: Some(hash),
                ..Default::default()
            },
        )
        .await?
        .ok_or_else(|| {
            Error::not_found(format!(
                "robot {name:.64} does not exist in project {project:.100}"
            ))
        })?;
    audit(
        &state,
        &caller,
        "robot.rotate",
        Some(&project),
        &robot.full_name(),
        json!({}),
    )
    .await?;
    Ok(Json(RobotSecret {
        robot: view(&state, &robot),
        secret,
    }))
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}/robots/{robot}", tag = "robots",
    params(("project" = String, Path), ("robot" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Signed(caller): Signed,
    Path((project, name)): Path<(String, String)>,
) -> Result<StatusCode> {
    super::require(&state, &caller, &project, Right::Manage).await?;
    let robot = found(&state, &project, &name).await?;
    state.meta.robot_delete(&project, &name).await?;
    audit(
        &state,
        &caller,
        "robot.delete",
        Some(&project),
        &robot.full_name(),
        json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
