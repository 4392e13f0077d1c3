//! Push to deploy over the API: triggers (`/api/v1/projects/{project}/
//! triggers`, `/api/v1/triggers/{id}`), their deliveries, the webhook
//! receiver (`POST /api/v1/hooks/{id}`, public: the signature is the
//! credential), and projects' secrets (`/api/v1/projects/{project}/
//! secrets`).
//!
//! Who: triggers and secrets are managed by the admin or a build token of
//! the project (whoever may build there). A secret's value is taken, never
//! given back; it is not in the audit log.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use slipway_storage::meta::{Delivery, NewAuditEntry, Trigger, now_ms};

use super::builds::{
    BuildAsk, BuildCaller, Requested, Who, check_builder, check_env, check_image_name,
    check_source, normalize_builder, project_exists, record_as, request_build,
};
use super::{Admin, Error, ErrorBody, Result, time};
use crate::auth::people::Right;
use crate::auth::secrets;
use crate::server::AppState;
use crate::triggers::{self as hooks, Decision, Event};

/// Where a secret is sealed (its associated data).
fn secret_place(project: &str, name: &str) -> String {
    format!("secret/{project}/{name}")
}

fn hook_place(id: &str) -> String {
    format!("hook/{id}")
}

/// Secret names are variable names (they may become `/platform/env` files).
pub fn check_secret_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(Error::bad_request(format!(
            "{name:.100} is not a secret name: use letters, digits and '_', not first a digit"
        )));
    }
    Ok(())
}

/// A project secret's value (opened).
pub async fn open_secret(state: &AppState, project: &str, name: &str) -> Result<Vec<u8>> {
    let sealed = state
        .meta
        .secret_sealed(project, name)
        .await?
        .ok_or_else(|| Error::bad_request(format!("project {project} has no secret {name}")))?;
    state
        .vault
        .open(&secret_place(project, name), &sealed)
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// A project secret read as git credentials.
pub async fn git_credentials(
    state: &AppState,
    project: &str,
    name: &str,
) -> Result<slipway_builder::job::GitCredentials> {
    let value = open_secret(state, project, name).await?;
    let text = String::from_utf8(value).map_err(|_| {
        Error::bad_request(format!(
            "the secret {name} of project {project} is not text; git credentials are \
             user:token or a token"
        ))
    })?;
    Ok(slipway_builder::job::GitCredentials::parse(&text))
}

/// A pattern without glob characters: one branch.
pub fn is_literal(pattern: &str) -> bool {
    !pattern.contains(['*', '?', '['])
}

// ----- secrets ----------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretView {
    pub project: String,
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretBody {
    /// The value (at most 32 KiB). Never shown again.
    pub value: String,
}

impl std::fmt::Debug for SecretBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBody(***)")
    }
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/secrets", tag = "triggers",
    params(("project" = String, Path)),
    responses((status = 200, body = [SecretView]), (status = 404, body = ErrorBody)))]
pub async fn secrets_list(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path(project): Path<String>,
) -> Result<Json<Vec<SecretView>>> {
    caller.may(&state, &project, Right::Manage).await?;
    project_exists(&state, &project).await?;
    let list = state.meta.secrets(&project).await?;
    Ok(Json(
        list.into_iter()
            .map(|s| SecretView {
                project: s.project,
                name: s.name,
                created_at: time(s.created_at),
                updated_at: time(s.updated_at),
            })
            .collect(),
    ))
}

#[utoipa::path(put, path = "/api/v1/projects/{project}/secrets/{name}", tag = "triggers",
    params(("project" = String, Path), ("name" = String, Path)), request_body = SecretBody,
    responses((status = 201, body = SecretView), (status = 200, body = SecretView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn secret_set(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path((project, name)): Path<(String, String)>,
    Json(body): Json<SecretBody>,
) -> Result<Response> {
    caller.may(&state, &project, Right::Manage).await?;
    check_secret_name(&name)?;
    project_exists(&state, &project).await?;
    if body.value.is_empty() {
        return Err(Error::bad_request("a secret cannot be empty"));
    }
    if body.value.len() > 32 * 1024 {
        return Err(Error::bad_request("a secret holds at most 32 KiB"));
    }
    let sealed = state
        .vault
        .seal(&secret_place(&project, &name), body.value.as_bytes());
    let replaced = state.meta.secret_set(&project, &name, &sealed).await?;
    record_as(
        &state,
        &caller.who(),
        if replaced {
            "secret.replace"
        } else {
            "secret.set"
        },
        &project,
        &name,
        json!({}),
    )
    .await?;
    let s = state
        .meta
        .secrets(&project)
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::new(StatusCode::INTERNAL_SERVER_ERROR, "the secret vanished"))?;
    Ok((
        if replaced {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        Json(SecretView {
            project: s.project,
            name: s.name,
            created_at: time(s.created_at),
            updated_at: time(s.updated_at),
        }),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}/secrets/{name}", tag = "triggers",
    params(("project" = String, Path), ("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn secret_delete(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path((project, name)): Path<(String, String)>,
) -> Result<StatusCode> {
    caller.may(&state, &project, Right::Manage).await?;
    if !state.meta.secret_delete(&project, &name).await? {
        return Err(Error::not_found(format!(
            "project {project:.100} has no secret {name:.100}"
        )));
    }
    record_as(
        &state,
        &caller.who(),
        "secret.delete",
        &project,
        &name,
        json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- triggers ---------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerView {
    pub id: String,
    pub project: String,
    pub source_url: String,
    /// The branches that build (a name or a glob).
    #[serde(rename = "ref")]
    pub ref_pattern: String,
    /// Whether tag pushes build (those matching `tag_pattern`).
    pub tags: bool,
    pub tag_pattern: Option<String>,
    pub image_name: String,
    /// `None`: the server's default builder.
    pub builder: Option<String>,
    /// The names of its build variables.
    pub env: Vec<String>,
    /// Secrets given to its builds as `/platform/env` files.
    pub secrets: Vec<String>,
    pub git_credentials: Option<String>,
    /// Seconds between polls of the branch; `None`: webhooks only.
    pub poll_interval_secs: Option<i64>,
    /// The commit the last poll saw.
    pub polled_commit: Option<String>,
    /// Whether `slipway build start` without a source builds this one.
    pub default: bool,
    /// Where the forge posts its events.
    pub delivery_url: String,
    pub created_by: String,
    pub created_at: String,
}

/// A new trigger, with its webhook secret, shown this once.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerSecret {
    pub trigger: TriggerView,
    /// The webhook secret: GitHub's and Gitea's/Forgejo's "Secret",
    /// GitLab's "Secret token".
    pub secret: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTrigger {
    pub source_url: String,
    /// The branches that build: a name or a glob (`release/*`); default
    /// `main`.
    #[serde(rename = "ref", default)]
    pub ref_pattern: Option<String>,
    /// Whether tag pushes build (default no).
    #[serde(default)]
    pub tags: bool,
    /// The tags that build when `tags` (default `*`).
    #[serde(default)]
    pub tag_pattern: Option<String>,
    /// Default: the project's name.
    #[serde(default)]
    pub image_name: Option<String>,
    #[serde(default)]
    pub builder: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Project secrets given to builds as `/platform/env/<NAME>` files.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// A project secret with the source's git credentials.
    #[serde(default)]
    pub git_credentials: Option<String>,
    /// Poll the branch every this many seconds (at least
    /// `builds.min_poll_interval_secs`), for forges that cannot send
    /// webhooks.
    #[serde(default)]
    pub poll_interval_secs: Option<u64>,
    /// Make it the project's default trigger (the first one is).
    #[serde(default)]
    pub default: bool,
}

/// Changes to a trigger; what is not given stays.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerUpdate {
    #[serde(default)]
    pub source_url: Option<String>,
    #[serde(rename = "ref", default)]
    pub ref_pattern: Option<String>,
    #[serde(default)]
    pub tags: Option<bool>,
    #[serde(default)]
    pub tag_pattern: Option<String>,
    #[serde(default)]
    pub image_name: Option<String>,
    #[serde(default)]
    pub builder: Option<String>,
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub secrets: Option<Vec<String>>,
    /// A secret's name; `""` removes it.
    #[serde(default)]
    pub git_credentials: Option<String>,
    /// Seconds; `0` stops polling.
    #[serde(default)]
    pub poll_interval_secs: Option<u64>,
    #[serde(default)]
    pub default: Option<bool>,
    /// A new webhook secret (shown in the answer, once).
    #[serde(default)]
    pub rotate_secret: bool,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerUpdated {
    pub trigger: TriggerView,
    /// The new webhook secret, when it was rotated.
    pub secret: Option<String>,
}

/// The address forges reach: `builds.public_url`, else the request's.
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if !state.config.builds.public_url.is_empty() {
        return state
            .config
            .builds
            .public_url
            .trim_end_matches('/')
            .to_owned();
    }
    crate::server::request_base(headers)
}

fn trigger_view(t: &Trigger, base: &str) -> TriggerView {
    let env: BTreeMap<String, String> = serde_json::from_str(&t.env).unwrap_or_default();
    TriggerView {
        id: t.id.clone(),
        project: t.project.clone(),
        source_url: t.source_url.clone(),
        ref_pattern: t.ref_pattern.clone(),
        tags: t.tag_pattern.is_some(),
        tag_pattern: t.tag_pattern.clone(),
        image_name: t.image_name.clone(),
        builder: t.builder.clone(),
        env: env.into_keys().collect(),
        secrets: t.secret_env.clone(),
        git_credentials: t.git_credentials.clone(),
        poll_interval_secs: t.poll_interval_secs,
        polled_commit: t.poll_commit.clone(),
        default: t.is_default,
        delivery_url: format!("{base}/api/v1/hooks/{}", t.id),
        created_by: t.created_by.clone(),
        created_at: time(t.created_at),
    }
}

/// Checks a trigger's settings as they would be stored.
async fn check_trigger(state: &AppState, t: &Trigger) -> Result<()> {
    check_source(state, &t.source_url)?;
    hooks::check_pattern(&t.ref_pattern).map_err(Error::bad_request)?;
    if let Some(p) = &t.tag_pattern {
        hooks::check_pattern(p).map_err(Error::bad_request)?;
    }
    check_image_name(&t.project, &t.image_name)?;
    let env: BTreeMap<String, String> = serde_json::from_str(&t.env).unwrap_or_default();
    check_env(&env)?;
    // The secrets exist (as a build would check).
    let ask = BuildAsk {
        project: t.project.clone(),
        env,
        secret_env: t.secret_env.clone(),
        git_credentials: t.git_credentials.clone(),
        ..Default::default()
    };
    super::builds::check_secret_names(state, &ask).await?;
    if let Some(b) = &t.builder {
        check_builder(state, b).await?;
    }
    if let Some(secs) = t.poll_interval_secs {
        let min = state.config.builds.min_poll_interval_secs;
        if (secs as u64) < min {
            return Err(Error::bad_request(format!(
                "poll_interval_secs is {secs}; a trigger polls at most every {min} seconds"
            )));
        }
        if secs as u64 > hooks::MAX_POLL_INTERVAL_SECS {
            return Err(Error::bad_request(format!(
                "poll_interval_secs is {secs}; a trigger polls at least once a week ({} seconds)",
                hooks::MAX_POLL_INTERVAL_SECS
            )));
        }
        if !is_literal(&t.ref_pattern) {
            return Err(Error::bad_request(format!(
                "a polling trigger watches one branch: {} is a pattern",
                t.ref_pattern
            )));
        }
    }
    Ok(())
}

async fn found_trigger(state: &AppState, id: &str) -> Result<Trigger> {
    state
        .meta
        .trigger_get(id)
        .await?
        .ok_or_else(|| Error::not_found(format!("trigger {id:.64} does not exist")))
}

fn new_trigger_id() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/triggers", tag = "triggers",
    params(("project" = String, Path)), request_body = NewTrigger,
    responses((status = 201, body = TriggerSecret), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path(project): Path<String>,
    headers: HeaderMap,
    Json(body): Json<NewTrigger>,
) -> Result<Response> {
    caller.may(&state, &project, Right::Manage).await?;
    project_exists(&state, &project).await?;
    let secret = secrets::generate();
    let id = new_trigger_id();
    let t = Trigger {
        id: id.clone(),
        project: project.clone(),
        source_url: body.source_url.trim().to_owned(),
        ref_pattern: body.ref_pattern.unwrap_or_else(|| "main".into()),
        tag_pattern: body
            .tags
            .then(|| body.tag_pattern.unwrap_or_else(|| "*".into())),
        image_name: body.image_name.unwrap_or_else(|| project.clone()),
        builder: body.builder.as_deref().map(normalize_builder),
        env: serde_json::to_string(&body.env).unwrap_or_else(|_| "{}".into()),
        secret_env: body.secrets,
        git_credentials: body.git_credentials,
        hook_secret: state.vault.seal(&hook_place(&id), secret.as_bytes()),
        poll_interval_secs: body
            .poll_interval_secs
            .map(|s| s.min(i64::MAX as u64) as i64),
        is_default: body.default,
        created_by: caller.subject(),
        created_at: now_ms(),
        ..Default::default()
    };
    check_trigger(&state, &t).await?;
    let t = state.meta.trigger_create(&t).await?;
    record_as(
        &state,
        &caller.who(),
        "trigger.create",
        &project,
        &t.id,
        json!({"source_url": t.source_url, "ref": t.ref_pattern, "tags": t.tag_pattern,
               "image_name": t.image_name, "poll_interval_secs": t.poll_interval_secs}),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(TriggerSecret {
            trigger: trigger_view(&t, &base_url(&state, &headers)),
            secret,
        }),
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/triggers", tag = "triggers",
    params(("project" = String, Path)),
    responses((status = 200, body = [TriggerView]), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path(project): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<TriggerView>>> {
    caller.may(&state, &project, Right::Manage).await?;
    project_exists(&state, &project).await?;
    let base = base_url(&state, &headers);
    let list = state.meta.triggers(Some(&project)).await?;
    Ok(Json(list.iter().map(|t| trigger_view(t, &base)).collect()))
}

#[utoipa::path(get, path = "/api/v1/triggers", tag = "triggers",
    responses((status = 200, body = [TriggerView])))]
pub async fn list_all(
    State(state): State<AppState>,
    _admin: Admin,
    headers: HeaderMap,
) -> Result<Json<Vec<TriggerView>>> {
    let base = base_url(&state, &headers);
    let list = state.meta.triggers(None).await?;
    Ok(Json(list.iter().map(|t| trigger_view(t, &base)).collect()))
}

#[utoipa::path(get, path = "/api/v1/triggers/{id}", tag = "triggers",
    params(("id" = String, Path)),
    responses((status = 200, body = TriggerView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<TriggerView>> {
    let t = found_trigger(&state, &id).await?;
    caller.may(&state, &t.project, Right::Manage).await?;
    Ok(Json(trigger_view(&t, &base_url(&state, &headers))))
}

#[utoipa::path(patch, path = "/api/v1/triggers/{id}", tag = "triggers",
    params(("id" = String, Path)), request_body = TriggerUpdate,
    responses((status = 200, body = TriggerUpdated), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<TriggerUpdate>,
) -> Result<Json<TriggerUpdated>> {
    let mut t = found_trigger(&state, &id).await?;
    caller.may(&state, &t.project, Right::Manage).await?;
    if let Some(u) = body.source_url {
        t.source_url = u.trim().to_owned();
    }
    if let Some(r) = body.ref_pattern {
        t.ref_pattern = r;
    }
    match (body.tags, body.tag_pattern) {
        (Some(false), _) => t.tag_pattern = None,
        (_, Some(p)) => t.tag_pattern = Some(p),
        (Some(true), None) if t.tag_pattern.is_none() => t.tag_pattern = Some("*".into()),
        _ => {}
    }
    if let Some(i) = body.image_name {
        t.image_name = i;
    }
    if let Some(b) = body.builder {
        t.builder = (!b.is_empty()).then(|| normalize_builder(&b));
    }
    if let Some(e) = body.env {
        t.env = serde_json::to_string(&e).unwrap_or_else(|_| "{}".into());
    }
    if let Some(s) = body.secrets {
        t.secret_env = s;
    }
    if let Some(c) = body.git_credentials {
        t.git_credentials = (!c.is_empty()).then_some(c);
    }
    if let Some(p) = body.poll_interval_secs {
        t.poll_interval_secs = (p > 0).then(|| p.min(i64::MAX as u64) as i64);
    }
    if let Some(d) = body.default {
        t.is_default = d;
    }
    let secret = body.rotate_secret.then(secrets::generate);
    if let Some(s) = &secret {
        t.hook_secret = state.vault.seal(&hook_place(&t.id), s.as_bytes());
    }
    check_trigger(&state, &t).await?;
    if !state.meta.trigger_update(&t).await? {
        return Err(Error::not_found(format!("trigger {id:.64} does not exist")));
    }
    record_as(
        &state,
        &caller.who(),
        "trigger.update",
        &t.project,
        &t.id,
        json!({"source_url": t.source_url, "ref": t.ref_pattern, "tags": t.tag_pattern,
               "image_name": t.image_name, "poll_interval_secs": t.poll_interval_secs,
               "secret_rotated": secret.is_some()}),
    )
    .await?;
    let t = found_trigger(&state, &id).await?;
    Ok(Json(TriggerUpdated {
        trigger: trigger_view(&t, &base_url(&state, &headers)),
        secret,
    }))
}

#[utoipa::path(delete, path = "/api/v1/triggers/{id}", tag = "triggers",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let t = found_trigger(&state, &id).await?;
    caller.may(&state, &t.project, Right::Manage).await?;
    state.meta.trigger_delete(&t.project, &id).await?;
    record_as(
        &state,
        &caller.who(),
        "trigger.delete",
        &t.project,
        &id,
        json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub at: String,
    /// `github`, `gitlab`, `gitea`, `forgejo`, or `poll`.
    pub provider: String,
    pub event: String,
    /// The forge's delivery id.
    pub delivery: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub commit: Option<String>,
    /// `queued`, `reused`, `ignored`, `refused`, `failed`, `duplicate`,
    /// `unchanged` (a poll), `received` (being handled).
    pub result: String,
    pub detail: String,
    pub build: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct DeliveriesQuery {
    #[serde(default)]
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/triggers/{id}/deliveries", tag = "triggers",
    params(("id" = String, Path), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = [DeliveryView]), (status = 404, body = ErrorBody)))]
pub async fn deliveries(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path(id): Path<String>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<Vec<DeliveryView>>> {
    let t = found_trigger(&state, &id).await?;
    caller.may(&state, &t.project, Right::Manage).await?;
    let list = state.meta.deliveries(&id, q.limit.unwrap_or(50)).await?;
    Ok(Json(
        list.into_iter()
            .map(|d| DeliveryView {
                at: time(d.at),
                provider: d.provider,
                event: d.event,
                delivery: d.delivery_id,
                git_ref: d.git_ref,
                commit: d.git_commit,
                result: d.result,
                detail: d.detail,
                build: d.build_id,
            })
            .collect(),
    ))
}

// ----- the webhook receiver ----------------------------------------------------

/// What the receiver answers (besides errors, `{"error": …}`).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HookAnswer {
    /// `queued`, `reused`, `ignored`, `pong`, `duplicate`.
    pub result: String,
    pub message: String,
    pub build: Option<String>,
}

fn answer(status: StatusCode, result: &str, message: String, build: Option<String>) -> Response {
    (
        status,
        Json(HookAnswer {
            result: result.to_owned(),
            message,
            build,
        }),
    )
        .into_response()
}

fn refuse(status: StatusCode, message: String) -> Response {
    Error::new(status, message).into_response()
}

#[utoipa::path(post, path = "/api/v1/hooks/{id}", tag = "triggers",
    params(("id" = String, Path)),
    responses((status = 202, body = HookAnswer), (status = 200, body = HookAnswer),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn receive(
    State(state): State<AppState>,
    Path(id): Path<String>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let remote = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    match receive_inner(&state, &id, remote, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn receive_inner(
    state: &AppState,
    id: &str,
    remote: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let Some(t) = state.meta.trigger_get(id).await? else {
        return Ok(refuse(
            StatusCode::NOT_FOUND,
            format!("there is no trigger {id:.64} (was it deleted?)"),
        ));
    };
    let mut d = Delivery {
        trigger_id: t.id.clone(),
        at: now_ms(),
        provider: "unknown".into(),
        event: String::new(),
        ..Default::default()
    };
    let max = state.config.builds.max_hook_bytes;
    let bytes = match axum::body::to_bytes(body, max).await {
        Ok(b) => b,
        Err(_) => {
            let sentence = format!(
                "the delivery's body is larger than {} bytes, the most a webhook may send \
                 (builds.max_hook_bytes)",
                max
            );
            refused(state, &mut d, remote, "too_large", &sentence).await?;
            return Ok(refuse(StatusCode::PAYLOAD_TOO_LARGE, sentence));
        }
    };
    let secret = state
        .vault
        .open(&hook_place(&t.id), &t.hook_secret)
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let signed = match hooks::verify(headers, &bytes, &secret) {
        Ok(s) => s,
        Err(bad) => {
            if let Some(p) = bad.provider {
                d.provider = p.name().into();
            }
            refused(state, &mut d, remote, "signature", &bad.sentence).await?;
            return Ok(refuse(StatusCode::UNAUTHORIZED, bad.sentence));
        }
    };
    d.provider = signed.provider.name().into();
    d.event = signed.event.clone();
    let event = match hooks::parse(&signed, &bytes) {
        Ok(e) => e,
        Err(sentence) => {
            refused(state, &mut d, remote, "malformed", &sentence).await?;
            return Ok(refuse(StatusCode::BAD_REQUEST, sentence));
        }
    };
    if let Event::Push(p) = &event {
        d.git_ref = Some(p.git_ref.clone());
        d.git_commit = p.commit.clone();
        d.git_before = p.before.clone();
        if !hooks::same_repository(&t.source_url, p) {
            let sentence = format!(
                "the push is to {}, and this trigger builds {}: nothing was built",
                p.repo_urls.first().map(String::as_str).unwrap_or("?"),
                t.source_url
            );
            refused(state, &mut d, remote, "repository", &sentence).await?;
            return Ok(refuse(StatusCode::UNPROCESSABLE_ENTITY, sentence));
        }
    }
    // From here on the delivery is recorded under its id: a replay (or a
    // redelivery) of it does nothing.
    d.delivery_id = signed.delivery.clone();
    d.result = "received".into();
    let Some(row) = state.meta.delivery_record(&d).await? else {
        metrics::counter!("slipway_hook_deliveries_total", "provider" => signed.provider.name(), "result" => "duplicate").increment(1);
        return Ok(answer(
            StatusCode::OK,
            "duplicate",
            format!(
                "already received: delivery {} was handled before; nothing was done (ask for a \
                 build with `slipway build start` to build again)",
                signed.delivery.as_deref().unwrap_or("")
            ),
            None,
        ));
    };
    let done = |result: &'static str| {
        metrics::counter!("slipway_hook_deliveries_total", "provider" => signed.provider.name(), "result" => result).increment(1);
    };
    let push = match event {
        Event::Ping => {
            state
                .meta
                .delivery_result(row, "ignored", "ping: the webhook reaches Slipway", None)
                .await?;
            done("pong");
            return Ok(answer(
                StatusCode::OK,
                "pong",
                "pong: the webhook reaches Slipway and its signature holds".into(),
                None,
            ));
        }
        Event::Other(kind) => {
            let sentence = format!("ignored: {kind:.64} events build nothing (push events do)");
            state
                .meta
                .delivery_result(row, "ignored", &sentence, None)
                .await?;
            done("ignored");
            return Ok(answer(StatusCode::ACCEPTED, "ignored", sentence, None));
        }
        Event::Push(p) => p,
    };
    let (git_ref, commit) = match hooks::decide(&t, &push) {
        Decision::Ignore(sentence) => {
            state
                .meta
                .delivery_result(row, "ignored", &sentence, None)
                .await?;
            done("ignored");
            return Ok(answer(StatusCode::ACCEPTED, "ignored", sentence, None));
        }
        Decision::Build { git_ref, commit } => (git_ref, commit),
    };
    // A push of a commit this trigger was delivered before for the same
    // ref (a replay of an old signed body under a new delivery id, or a
    // delivery that arrived late), or one a later push was made on top of
    // (its `before`): it must not move the image back.
    if let Some(prev) = state
        .meta
        .delivery_commit_seen(&t.id, d.git_ref.as_deref().unwrap_or(""), &commit, row)
        .await?
    {
        let what = if prev.git_commit.as_deref() == Some(commit.as_str()) {
            "was delivered before"
        } else {
            "is older than a push delivered before, made on top of it"
        };
        let sentence = format!(
            "ignored: commit {commit:.12} of {git_ref} {what} ({} delivery at {}{}); \
             a replayed or late delivery builds nothing (`slipway build start --ref {git_ref}` \
             builds it on purpose)",
            prev.provider,
            time(prev.at),
            prev.build_id
                .as_deref()
                .map(|b| format!(", build {b}"))
                .unwrap_or_default()
        );
        state
            .meta
            .delivery_result(row, "ignored", &sentence, None)
            .await?;
        done("ignored");
        return Ok(answer(StatusCode::ACCEPTED, "ignored", sentence, None));
    }
    let who = Who {
        subject: format!(
            "trigger:{} ({} delivery {})",
            t.id,
            signed.provider.name(),
            signed.delivery.as_deref().unwrap_or("without id")
        ),
        remote,
    };
    match request_build(state, &who, BuildAsk::of_trigger(&t, git_ref, commit)).await {
        Ok(r) => {
            let (result, detail, build) = r.delivery_result();
            state
                .meta
                .delivery_result(row, &result, &detail, build.as_deref())
                .await?;
            done(if matches!(r, Requested::Reused(_)) {
                "reused"
            } else {
                "queued"
            });
            Ok(answer(StatusCode::ACCEPTED, &result, detail, build))
        }
        Err(e) => {
            let sentence = format!("no build: {}", e.message);
            state
                .meta
                .delivery_result(row, "failed", &sentence, None)
                .await?;
            done("failed");
            Ok(Error::new(e.status, sentence).into_response())
        }
    }
}

/// Refused deliveries recorded (a delivery row, an audit entry) per trigger
/// and minute; more are only counted in `/metrics`.
const REFUSALS_RECORDED_PER_MINUTE: u32 = 10;

/// Refusals recorded per trigger, this minute.
static REFUSALS: crate::throttle::Throttle = crate::throttle::Throttle::new(
    REFUSALS_RECORDED_PER_MINUTE,
    std::time::Duration::from_secs(60),
);

/// Records a refused delivery (without its delivery id: a forged one must
/// not make the real one look like a replay), audits it and counts it.
async fn refused(
    state: &AppState,
    d: &mut Delivery,
    remote: Option<std::net::IpAddr>,
    why: &'static str,
    sentence: &str,
) -> Result<()> {
    d.result = "refused".into();
    d.detail = sentence.to_owned();
    d.delivery_id = None;
    metrics::counter!("slipway_hook_refused_total", "reason" => why).increment(1);
    if !REFUSALS.allow(&d.trigger_id) {
        // Anyone may post here: beyond a few a minute, refusals are
        // counted, not written (no flood of the database or the audit log).
        tracing::debug!(trigger = %d.trigger_id, reason = why, "a webhook delivery was refused (not recorded: too many)");
        return Ok(());
    }
    state.meta.delivery_record(d).await?;
    let project = state
        .meta
        .trigger_get(&d.trigger_id)
        .await?
        .map(|t| t.project);
    state
        .meta
        .audit(&NewAuditEntry {
            principal: format!("webhook ({})", d.provider),
            action: "hook.refuse".into(),
            project,
            target: Some(d.trigger_id.clone()),
            detail: Some(json!({"reason": why, "sentence": sentence}).to_string()),
            remote_addr: remote.map(|r| r.to_string()),
        })
        .await?;
    tracing::warn!(trigger = %d.trigger_id, reason = why, "a webhook delivery was refused");
    Ok(())
}
