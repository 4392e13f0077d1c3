//! The dashboard's forms that change things: a new project and a
//! project's quota (the admin), a build (the admin or the project's build
//! token). Each checks the CSRF token, then does what the admin API or
//! the build API does, with the same checks and audit entries.

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;
use slipway_storage::meta::NewAuditEntry;

use super::session::{Session, csrf_ok};
use super::{forged, refused};
use crate::api::builds::{BuildAsk, Who, request_build};
use crate::server::AppState;

async fn audit(
    state: &AppState,
    session: &Session,
    action: &str,
    project: &str,
    detail: serde_json::Value,
) {
    let e = NewAuditEntry {
        principal: session.viewer.name(),
        action: action.to_owned(),
        project: Some(project.to_owned()),
        target: Some(project.to_owned()),
        detail: Some(detail.to_string()),
        remote_addr: session.remote.map(|r| r.to_string()),
    };
    if let Err(e) = state.meta.audit(&e).await {
        tracing::warn!(error = %e, "cannot audit a dashboard form");
    }
}

#[derive(Deserialize)]
pub struct NewProjectForm {
    #[serde(default)]
    csrf: String,
    name: String,
    /// A checkbox: present when checked.
    #[serde(default)]
    public: Option<String>,
    #[serde(default)]
    quota: String,
}

pub async fn create_project(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<NewProjectForm>,
) -> Response {
    if !session.viewer.is_admin() {
        return refused(
            &session,
            StatusCode::FORBIDDEN,
            "Only the admin creates projects.",
        );
    }
    if !csrf_ok(&session, &form.csrf) {
        return forged(&session);
    }
    let name = form.name.trim();
    if name.is_empty() || name.contains('/') || slipway_storage::RepoName::parse(name).is_err() {
        return refused(
            &session,
            StatusCode::BAD_REQUEST,
            &format!(
                "{name:.100} is not a valid project name: use lowercase letters and digits, \
                 separated by '.', '_' or '-'."
            ),
        );
    }
    let quota = if form.quota.trim().is_empty() {
        None
    } else {
        match crate::sizes::parse_size(&form.quota) {
            Ok(q) => q,
            Err(e) => return refused(&session, StatusCode::BAD_REQUEST, &e),
        }
    };
    let public = form.public.is_some();
    let is_base = state.config.quota.base_projects.iter().any(|b| b == name);
    match state
        .meta
        .project_create(name, public, quota, is_base)
        .await
    {
        Ok(p) => {
            state.auth.forget_project(&p.name);
            audit(
                &state,
                &session,
                "project.create",
                &p.name,
                json!({"public": p.public, "quota_bytes": p.quota_bytes}),
            )
            .await;
            Redirect::to(&format!("/ui/projects/{}", p.name)).into_response()
        }
        Err(e) => {
            let e = crate::api::Error::from(e);
            refused(&session, e.status(), &e.message)
        }
    }
}

#[derive(Deserialize)]
pub struct QuotaForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    quota: String,
}

pub async fn set_quota(
    State(state): State<AppState>,
    session: Session,
    Path(project): Path<String>,
    Form(form): Form<QuotaForm>,
) -> Response {
    if !session.viewer.is_admin() {
        return refused(
            &session,
            StatusCode::FORBIDDEN,
            "Only the admin sets quotas.",
        );
    }
    if !csrf_ok(&session, &form.csrf) {
        return forged(&session);
    }
    let quota = match crate::sizes::parse_size(if form.quota.trim().is_empty() {
        "none"
    } else {
        &form.quota
    }) {
        Ok(q) => q,
        Err(e) => return refused(&session, StatusCode::BAD_REQUEST, &e),
    };
    match state.meta.set_quota(&project, quota).await {
        Ok(true) => {
            state.auth.forget_project(&project);
            audit(
                &state,
                &session,
                "quota.set",
                &project,
                json!({"quota_bytes": quota}),
            )
            .await;
            Redirect::to(&format!("/ui/projects/{project}")).into_response()
        }
        Ok(false) => refused(&session, StatusCode::NOT_FOUND, "There is no such project."),
        Err(e) => {
            let e = crate::api::Error::from(e);
            refused(&session, e.status(), &e.message)
        }
    }
}

#[derive(Deserialize)]
pub struct BuildForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    source_url: String,
    #[serde(default, rename = "ref")]
    git_ref: String,
    #[serde(default)]
    image_name: String,
}

pub async fn start_build(
    State(state): State<AppState>,
    session: Session,
    Path(project): Path<String>,
    Form(form): Form<BuildForm>,
) -> Response {
    if !session.viewer.may_build(&project) {
        return refused(
            &session,
            StatusCode::FORBIDDEN,
            "Only the admin and the project's build tokens start its builds.",
        );
    }
    if !csrf_ok(&session, &form.csrf) {
        return forged(&session);
    }
    let who = Who {
        subject: session.viewer.name(),
        remote: session.remote,
    };
    let ask = BuildAsk {
        project: project.clone(),
        source_url: form.source_url.trim().to_owned(),
        git_ref: if form.git_ref.trim().is_empty() {
            "HEAD".into()
        } else {
            form.git_ref.trim().to_owned()
        },
        image_name: Some(form.image_name.trim().to_owned()).filter(|n| !n.is_empty()),
        ..Default::default()
    };
    match request_build(&state, &who, ask).await {
        Ok(r) => {
            Redirect::to(&format!("/ui/projects/{project}/builds/{}", r.build().id)).into_response()
        }
        Err(e) => refused(&session, e.status(), &e.message),
    }
}

#[derive(Deserialize)]
pub struct RobotForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    /// Checkboxes: present when checked.
    #[serde(default)]
    push: Option<String>,
    #[serde(default)]
    delete: Option<String>,
    #[serde(default)]
    expires_in_days: String,
}

fn admin_caller(session: &Session) -> crate::auth::Caller {
    crate::auth::Caller {
        principal: crate::auth::Principal::Admin,
        remote: session.remote,
    }
}

/// A new robot account; the page that shows its secret, once.
pub async fn create_robot(
    State(state): State<AppState>,
    session: Session,
    Path(project): Path<String>,
    Form(form): Form<RobotForm>,
) -> Response {
    if !session.viewer.is_admin() {
        return refused(
            &session,
            StatusCode::FORBIDDEN,
            "Only the admin manages robot accounts.",
        );
    }
    if !csrf_ok(&session, &form.csrf) {
        return forged(&session);
    }
    let mut permissions = vec!["pull".to_owned()];
    if form.push.is_some() {
        permissions.push("push".into());
    }
    if form.delete.is_some() {
        permissions.push("delete".into());
    }
    let days = match form.expires_in_days.trim() {
        "" => None,
        d => match d.parse::<u32>() {
            Ok(d) => Some(d),
            Err(_) => {
                return refused(
                    &session,
                    StatusCode::BAD_REQUEST,
                    "The expiry is a number of days (or empty: never).",
                );
            }
        },
    };
    let body = crate::api::robots::NewRobot {
        name: form.name.trim().to_owned(),
        description: form.description.clone(),
        permissions: Some(permissions),
        expires_in_days: days,
    };
    match crate::api::robots::create_robot(&state, &admin_caller(&session), &project, &body).await {
        Ok((robot, secret)) => {
            let user = robot.full_name();
            super::layout(
                "Robot account created",
                &session,
                maud::html! {
                    h1 { "Robot account created" }
                    dl.facts {
                        dt { "User name" } dd { code #robot-user { (user) } " " button.copy type="button" data-copy=(user) { "Copy" } }
                        dt { "Secret" } dd { code #robot-secret { (secret) } " " button.copy type="button" data-copy=(secret) { "Copy" } }
                        dt { "Permissions" } dd { (robot.permissions) }
                    }
                    p.error { "The secret is shown only this once: store it now." }
                    p { a href={"/ui/projects/" (project)} { "Back to " (project) } }
                },
            )
            .into_response()
        }
        Err(e) => refused(&session, e.status(), &e.message),
    }
}

#[derive(Deserialize)]
pub struct RobotAction {
    #[serde(default)]
    csrf: String,
    /// `disable`, `enable` or `delete`.
    #[serde(default)]
    action: String,
}

pub async fn robot_action(
    State(state): State<AppState>,
    session: Session,
    Path((project, name)): Path<(String, String)>,
    Form(form): Form<RobotAction>,
) -> Response {
    if !session.viewer.is_admin() {
        return refused(
            &session,
            StatusCode::FORBIDDEN,
            "Only the admin manages robot accounts.",
        );
    }
    if !csrf_ok(&session, &form.csrf) {
        return forged(&session);
    }
    let full = format!("robot${project}+{name}");
    let done = match form.action.as_str() {
        "disable" | "enable" => {
            let update = slipway_storage::meta::RobotUpdate {
                enabled: Some(form.action == "enable"),
                ..Default::default()
            };
            state
                .meta
                .robot_update(&project, &name, &update)
                .await
                .map(|r| r.is_some())
        }
        "delete" => state.meta.robot_delete(&project, &name).await,
        _ => {
            return refused(
                &session,
                StatusCode::BAD_REQUEST,
                "Disable, enable or delete.",
            );
        }
    };
    match done {
        Ok(true) => {
            state.auth.forget_project(&project);
            let e = NewAuditEntry {
                principal: session.viewer.name(),
                action: if form.action == "delete" {
                    "robot.delete"
                } else {
                    "robot.update"
                }
                .into(),
                project: Some(project.clone()),
                target: Some(full),
                detail: Some(json!({"via": "dashboard", "action": form.action}).to_string()),
                remote_addr: session.remote.map(|r| r.to_string()),
            };
            if let Err(e) = state.meta.audit(&e).await {
                tracing::warn!(error = %e, "cannot audit a dashboard form");
            }
            Redirect::to(&format!("/ui/projects/{project}")).into_response()
        }
        Ok(false) => refused(
            &session,
            StatusCode::NOT_FOUND,
            "There is no such robot account.",
        ),
        Err(e) => {
            let e = crate::api::Error::from(e);
            refused(&session, e.status(), &e.message)
        }
    }
}
