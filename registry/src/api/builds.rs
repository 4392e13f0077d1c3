//! Builds: `/api/v1/projects/{project}/builds` (start, list, show, follow
//! the log, cancel, retry, delete), the projects' build tokens and the
//! approved builders.
//!
//! Who may build: the admin, or a build token of the same project, given
//! as Basic credentials `build$<project>+<name>:<secret>`. Build tokens and
//! approved builders are the admin's.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use slipway_storage::RepoName;
use slipway_storage::meta::{BuildRecord, BuildToken, NewAuditEntry, Trigger, now_ms};

use super::{Admin, Error, ErrorBody, Result, Signed, audit, time};
use crate::auth::people::Right;
use crate::auth::{Caller, Credentials, Principal, parse_authorization, secrets};
use crate::error::ApiError;
use crate::server::AppState;

/// Who asks for builds.
pub enum BuildCaller {
    Admin {
        remote: Option<IpAddr>,
    },
    Token {
        token: BuildToken,
        remote: Option<IpAddr>,
    },
    /// A person (a session, or a personal token that may use the API):
    /// what their role in the project holds.
    Person {
        caller: Caller,
    },
}

impl BuildCaller {
    pub fn subject(&self) -> String {
        match self {
            BuildCaller::Admin { .. } => crate::auth::ADMIN.into(),
            BuildCaller::Token { token, .. } => {
                format!("build${}+{}", token.project, token.name)
            }
            BuildCaller::Person { caller } => caller.principal.subject(),
        }
    }

    pub fn remote(&self) -> Option<IpAddr> {
        match self {
            BuildCaller::Admin { remote } | BuildCaller::Token { remote, .. } => *remote,
            BuildCaller::Person { caller } => caller.remote,
        }
    }

    /// Refuses a build token of another project, and a person whose role
    /// in `project` does not hold `right` (audited). A build token holds
    /// a maintainer's rights in its own project.
    pub async fn may(&self, state: &AppState, project: &str, right: Right) -> Result<()> {
        match self {
            BuildCaller::Admin { .. } => Ok(()),
            BuildCaller::Token { token, .. } if token.project == project => Ok(()),
            BuildCaller::Token { token, .. } => Err(Error::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the build token build${}+{} is for project {}; it may not build in project {project:.100}",
                    token.project, token.name, token.project
                ),
            )),
            BuildCaller::Person { caller } => super::require(state, caller, project, right).await,
        }
    }
}

impl FromRequestParts<AppState> for BuildCaller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<BuildCaller> {
        let remote = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let unauthorized = || {
            let mut e = Error::new(
                StatusCode::UNAUTHORIZED,
                "builds need a build token of the project (user build$<project>+<name>) or the admin's credentials",
            );
            e.challenge = true;
            e
        };
        // Mutual TLS: the admin's powers need the client certificate here
        // too (the admin's password is not looked at without it).
        let mutual = state.config.tls.mutual() && !super::client_certified(parts);
        let needs_certificate = super::mutual_tls_needed;
        match parse_authorization(&parts.headers) {
            Credentials::Basic(user, _) if mutual && user == crate::auth::ADMIN => {
                Err(needs_certificate())
            }
            Credentials::Basic(user, secret) => {
                if let Some(wait) = state.auth.limiter.blocked(remote) {
                    return Err(Error::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "too many failed logins from this address; try again in {} seconds",
                            wait.as_secs().max(1)
                        ),
                    ));
                }
                if user.starts_with("build$") {
                    return match state.build_token_login(&user, &secret).await? {
                        Some(token) => Ok(BuildCaller::Token { token, remote }),
                        None => {
                            state.auth.limiter.failed(remote);
                            Err(unauthorized())
                        }
                    };
                }
                match state.login(&user, &secret).await? {
                    Some((Principal::Admin, _)) => Ok(BuildCaller::Admin { remote }),
                    Some((p @ Principal::Person { .. }, _)) if mutual && p.is_admin() => {
                        Err(needs_certificate())
                    }
                    Some((p @ Principal::Person { .. }, _)) => person(p, remote),
                    Some((p, _)) => Err(Error::new(
                        StatusCode::FORBIDDEN,
                        format!(
                            "{} may not start builds; a build token of the project may",
                            p.subject()
                        ),
                    )),
                    None => {
                        state.auth.limiter.failed(remote);
                        Err(unauthorized())
                    }
                }
            }
            Credentials::Bearer(token) => {
                let claims = state.api_claims(&token).ok_or_else(unauthorized)?;
                match state.token_principal(&claims).await? {
                    Some(Principal::Admin) if mutual => Err(needs_certificate()),
                    Some(Principal::Admin) => Ok(BuildCaller::Admin { remote }),
                    Some(p @ Principal::Person { .. }) if mutual && p.is_admin() => {
                        Err(needs_certificate())
                    }
                    Some(p @ Principal::Person { .. }) => person(p, remote),
                    Some(p) => Err(Error::new(
                        StatusCode::FORBIDDEN,
                        format!(
                            "{} may not start builds; a build token of the project may",
                            p.subject()
                        ),
                    )),
                    None => Err(unauthorized()),
                }
            }
            Credentials::None | Credentials::Invalid => Err(unauthorized()),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildView {
    pub id: String,
    pub project: String,
    pub image_name: String,
    /// `<project>/<image_name>:<id>`, pushed (with `:latest`) on success.
    pub image: String,
    pub source_url: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The commit `ref` named when the build was asked for.
    pub commit: String,
    pub builder: String,
    /// The names of the build-time variables (their values are not shown).
    pub env: Vec<String>,
    /// The names of the project secrets given as `/platform/env` files.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// The project secret used as the source's git credentials.
    #[serde(default)]
    pub git_credentials: Option<String>,
    /// The trigger that asked for it.
    #[serde(default)]
    pub trigger: Option<String>,
    /// `pending`, `running`, `succeeded`, `failed`, `cancelled`,
    /// `timed_out`, or `reused` (an equal build's image was current: not
    /// run).
    pub state: String,
    /// Why it failed, was cancelled or timed out.
    pub reason: Option<String>,
    pub image_digest: Option<String>,
    /// The buildpacks that built it (`id@version`), once it succeeded.
    #[serde(default)]
    pub buildpacks: Vec<String>,
    pub requested_by: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_secs: Option<f64>,
    pub cancel_requested: bool,
}

pub(crate) fn view(b: &BuildRecord) -> BuildView {
    let env: BTreeMap<String, String> = serde_json::from_str(&b.env).unwrap_or_default();
    BuildView {
        id: b.id.clone(),
        project: b.project.clone(),
        image_name: b.image_name.clone(),
        image: format!("{}/{}:{}", b.project, b.image_name, b.id),
        source_url: b.source_url.clone(),
        git_ref: b.git_ref.clone(),
        commit: b.git_commit.clone(),
        builder: b.builder.clone(),
        env: env.into_keys().collect(),
        secrets: b.secret_env.clone(),
        git_credentials: b.git_credentials.clone(),
        trigger: b.trigger_id.clone(),
        state: b.state.clone(),
        reason: b.reason.clone(),
        image_digest: b.image_digest.clone(),
        buildpacks: b
            .buildpacks
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default(),
        requested_by: b.requested_by.clone(),
        created_at: time(b.created_at),
        started_at: b.started_at.map(time),
        finished_at: b.finished_at.map(time),
        duration_secs: match (b.started_at, b.finished_at) {
            (Some(s), Some(f)) => Some((f - s) as f64 / 1000.0),
            _ => None,
        },
        cancel_requested: b.cancel_requested,
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBuild {
    /// A git repository: `https://`, `http://` or `git://` (and `file://`
    /// when the server allows local sources). Without it: the trigger's
    /// (`trigger`, else the project's default trigger), with its image
    /// name, builder, variables and secrets unless given here.
    #[serde(default)]
    pub source_url: Option<String>,
    /// A branch, tag or commit; default `HEAD` (the default branch), or
    /// the trigger's branch.
    #[serde(rename = "ref", default)]
    pub git_ref: Option<String>,
    /// Default: the project's name.
    #[serde(default)]
    pub image_name: Option<String>,
    /// An approved builder image in this registry; default: the server's.
    #[serde(default)]
    pub builder: Option<String>,
    /// Build-time variables for the buildpacks.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Project secrets given to the buildpacks as `/platform/env/<NAME>`
    /// files (by name; masked in the log).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// A project secret holding the source's git credentials
    /// (`user:token`, or a token).
    #[serde(default)]
    pub git_credentials: Option<String>,
    /// Build this trigger's source (with its settings).
    #[serde(default)]
    pub trigger: Option<String>,
    /// Build even if an equal build's image is current (default: such a
    /// request ends `reused`, not run).
    #[serde(default)]
    pub force: bool,
}

/// Who asks for a build (for the record and the audit log).
/// A person asking, unless with a pull-only token.
fn person(principal: Principal, remote: Option<IpAddr>) -> Result<BuildCaller> {
    if principal.personal_token().is_some_and(|t| t.pull_only) {
        return Err(Error::new(
            StatusCode::FORBIDDEN,
            "this personal token is pull-only: it cannot use the API",
        ));
    }
    Ok(BuildCaller::Person {
        caller: Caller { principal, remote },
    })
}

#[derive(Debug, Clone)]
pub struct Who {
    pub subject: String,
    pub remote: Option<IpAddr>,
}

impl BuildCaller {
    pub fn who(&self) -> Who {
        Who {
            subject: self.subject(),
            remote: self.remote(),
        }
    }
}

/// A build asked for, from the API, a webhook or a poll.
#[derive(Debug, Clone, Default)]
pub struct BuildAsk {
    pub project: String,
    pub source_url: String,
    pub git_ref: String,
    /// The commit, when the asker knows it (a push); else `git_ref` is
    /// resolved now.
    pub commit: Option<String>,
    pub image_name: Option<String>,
    pub builder: Option<String>,
    pub env: BTreeMap<String, String>,
    pub secret_env: Vec<String>,
    pub git_credentials: Option<String>,
    pub trigger_id: Option<String>,
    pub force: bool,
}

impl BuildAsk {
    /// A build of `commit` (pushed to `git_ref`) with a trigger's settings.
    pub fn of_trigger(t: &Trigger, git_ref: String, commit: String) -> BuildAsk {
        BuildAsk {
            project: t.project.clone(),
            source_url: t.source_url.clone(),
            git_ref,
            commit: Some(commit),
            image_name: Some(t.image_name.clone()),
            builder: t.builder.clone(),
            env: serde_json::from_str(&t.env).unwrap_or_default(),
            secret_env: t.secret_env.clone(),
            git_credentials: t.git_credentials.clone(),
            trigger_id: Some(t.id.clone()),
            force: false,
        }
    }
}

/// What became of a build request.
#[derive(Debug, Clone)]
pub enum Requested {
    /// Queued; the pending builds of the same trigger it replaced.
    Queued {
        build: BuildRecord,
        replaced: Vec<String>,
    },
    /// Not run: an equal build's image is current; the record says which.
    Reused(BuildRecord),
}

impl Requested {
    pub fn build(&self) -> &BuildRecord {
        match self {
            Requested::Queued { build, .. } | Requested::Reused(build) => build,
        }
    }

    /// The delivery record's result, detail and build.
    pub fn delivery_result(&self) -> (String, String, Option<String>) {
        match self {
            Requested::Queued { build, replaced } => (
                "queued".into(),
                if replaced.is_empty() {
                    format!("queued build {} of {}", build.id, build.git_commit)
                } else {
                    format!(
                        "queued build {} of {}; it replaced the queued build {}",
                        build.id,
                        build.git_commit,
                        replaced.join(", ")
                    )
                },
                Some(build.id.clone()),
            ),
            Requested::Reused(b) => (
                "reused".into(),
                format!(
                    "not built: {} of {} was built already ({}); recorded as build {}",
                    b.image_name,
                    b.git_commit,
                    b.image_digest.as_deref().unwrap_or(""),
                    b.id
                ),
                Some(b.id.clone()),
            ),
        }
    }
}

pub(crate) async fn project_exists(state: &AppState, project: &str) -> Result<()> {
    if state.meta.project_get(project).await?.is_none() {
        return Err(Error::not_found(format!(
            "project {project:.100} does not exist"
        )));
    }
    Ok(())
}

async fn found(state: &AppState, project: &str, id: &str) -> Result<BuildRecord> {
    state.meta.build_get(project, id).await?.ok_or_else(|| {
        Error::not_found(format!(
            "build {id:.64} does not exist in project {project:.100}"
        ))
    })
}

async fn record(
    state: &AppState,
    caller: &BuildCaller,
    action: &str,
    project: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<()> {
    record_as(state, &caller.who(), action, project, target, detail).await
}

pub(crate) async fn record_as(
    state: &AppState,
    who: &Who,
    action: &str,
    project: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<()> {
    state
        .meta
        .audit(&NewAuditEntry {
            principal: who.subject.clone(),
            action: action.to_owned(),
            project: Some(project.to_owned()),
            target: Some(target.to_owned()),
            detail: Some(detail.to_string()),
            remote_addr: who.remote.map(|r| r.to_string()),
        })
        .await?;
    Ok(())
}

/// The source URL, checked: a scheme the server fetches from, and nothing
/// git could read as an option.
pub(crate) fn check_source(state: &AppState, url: &str) -> Result<()> {
    let url = url.trim();
    let allowed = ["https://", "http://", "git://"];
    let local = url.starts_with("file://");
    let ok = (allowed.iter().any(|p| url.starts_with(p))
        || (local && state.config.builds.allow_local_sources))
        && url.len() <= 2048
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        return Err(Error::bad_request(if local {
            format!(
                "{url:.200} is a local repository; this server builds only from https://, http:// and git:// URLs"
            )
        } else {
            format!(
                "{url:.200} is not a git repository URL Slipway can fetch: use https://, http:// or git://"
            )
        }));
    }
    Ok(())
}

pub(crate) fn check_ref(r: &str) -> Result<()> {
    let ok = !r.is_empty()
        && r.len() <= 255
        && !r.starts_with('-')
        && !r.contains("..")
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-+@".contains(&b));
    if !ok {
        return Err(Error::bad_request(format!(
            "{r:.100} is not a branch, tag or commit name"
        )));
    }
    Ok(())
}

pub(crate) fn check_image_name(project: &str, name: &str) -> Result<()> {
    if name.contains('/') || RepoName::parse(&format!("{project}/{name}")).is_err() {
        return Err(Error::bad_request(format!(
            "{name:.100} is not a valid image name: use lowercase letters and digits, \
             separated by '.', '_' or '-'"
        )));
    }
    Ok(())
}

pub(crate) fn check_env(env: &BTreeMap<String, String>) -> Result<()> {
    if env.len() > 100 {
        return Err(Error::bad_request("a build takes at most 100 variables"));
    }
    for (k, v) in env {
        let ok = !k.is_empty()
            && k.len() <= 128
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(Error::bad_request(format!(
                "{k:.100} is not a variable name: use letters, digits and '_', not first a digit"
            )));
        }
        if k.starts_with("CNB_") {
            return Err(Error::bad_request(format!(
                "{k:.100} is reserved for the build platform (variables starting with CNB_ are)"
            )));
        }
        if v.len() > 32 * 1024 {
            return Err(Error::bad_request(format!(
                "the value of {k} is longer than 32 KiB"
            )));
        }
    }
    Ok(())
}

/// `platform/builder` → `platform/builder:latest`.
pub(crate) fn normalize_builder(b: &str) -> String {
    let b = b.trim();
    let last = b.rsplit('/').next().unwrap_or(b);
    if last.contains(':') || b.contains('@') {
        b.to_owned()
    } else {
        format!("{b}:latest")
    }
}

pub(crate) async fn check_builder(state: &AppState, builder: &str) -> Result<()> {
    if !state.meta.builder_is_approved(builder).await? {
        return Err(Error::new(
            StatusCode::FORBIDDEN,
            format!(
                "the builder {builder:.200} is not approved; an admin approves builders \
                 with `slipway admin builder approve {builder:.200}`"
            ),
        ));
    }
    Ok(())
}

/// Refuses a build of a project already at its quota.
async fn check_quota(state: &AppState, project: &str) -> Result<()> {
    match state.meta.check_room(project, 1).await {
        Ok(()) => Ok(()),
        Err(e @ slipway_storage::StorageError::QuotaExceeded { .. }) => {
            let message = ApiError::from(e).message;
            Err(Error::new(
                StatusCode::FORBIDDEN,
                format!("{message}; the build was not started"),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

fn new_id() -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!("b{}", &u[..12])
}

/// Queues a build (its parameters checked, its ref resolved).
async fn queue(state: &AppState, who: &Who, b: BuildRecord) -> Result<Requested> {
    check_quota(state, &b.project).await?;
    let pending = state.meta.builds_pending().await?;
    if pending >= state.config.builds.max_pending as i64 {
        return Err(Error::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the build queue is full ({pending} builds waiting); try again later"),
        ));
    }
    let queued = state
        .meta
        .build_insert(&b, state.config.builds.per_project)
        .await?;
    record_as(
        state,
        who,
        "build.start",
        &b.project,
        &b.id,
        json!({"source_url": b.source_url, "ref": b.git_ref, "commit": b.git_commit,
               "image_name": b.image_name, "builder": b.builder, "trigger": b.trigger_id,
               "replaced": queued.replaced}),
    )
    .await?;
    tracing::info!(build = %b.id, project = %b.project, by = %who.subject, "build queued");
    Ok(Requested::Queued {
        build: b,
        replaced: queued.replaced,
    })
}

/// Checks secret names (they exist in the project, they are variable
/// names, they are not also plain variables).
pub(crate) async fn check_secret_names(state: &AppState, ask: &BuildAsk) -> Result<()> {
    if ask.secret_env.len() > 50 {
        return Err(Error::bad_request("a build takes at most 50 secrets"));
    }
    for name in ask.secret_env.iter().chain(ask.git_credentials.iter()) {
        super::triggers::check_secret_name(name)?;
        if state
            .meta
            .secret_sealed(&ask.project, name)
            .await?
            .is_none()
        {
            return Err(Error::bad_request(format!(
                "project {} has no secret {name}; set it first with \
                 `slipway admin secret set {} {name}`",
                ask.project, ask.project
            )));
        }
    }
    for name in &ask.secret_env {
        if name.starts_with("CNB_") {
            return Err(Error::bad_request(format!(
                "{name} is reserved for the build platform (variables starting with CNB_ are)"
            )));
        }
        if ask.env.contains_key(name) {
            return Err(Error::bad_request(format!(
                "{name} is given both as a variable and as a secret; give it once"
            )));
        }
    }
    Ok(())
}

/// The digest of a builder image (`platform/builder:bookworm`) in this
/// registry, if it is there.
async fn builder_digest(state: &AppState, builder: &str) -> Result<Option<String>> {
    if let Some((_, d)) = builder.split_once('@') {
        return Ok(Some(d.to_owned()));
    }
    let Some((repo, tag)) = builder.rsplit_once(':') else {
        return Ok(None);
    };
    let Ok(repo) = RepoName::parse(repo) else {
        return Ok(None);
    };
    Ok(state
        .meta
        .manifest_by_tag(&repo, tag)
        .await?
        .map(|m| m.digest.to_string()))
}

/// What makes two builds of the same commit (or tree) equal: the builder's
/// digest (which fixes its buildpacks and their versions), the variables,
/// and the secrets' names and values (as keyed fingerprints: the values are
/// never stored) and the git credentials' name.
async fn inputs_of(state: &AppState, ask: &BuildAsk, builder: &str) -> Result<Option<String>> {
    use sha2::Digest as _;
    let Some(digest) = builder_digest(state, builder).await? else {
        return Ok(None);
    };
    let mut secrets = BTreeMap::new();
    for name in &ask.secret_env {
        let value = super::triggers::open_secret(state, &ask.project, name).await?;
        secrets.insert(name.clone(), state.vault.fingerprint(&value));
    }
    let text = json!({
        "v": 2,
        "builder": digest,
        "env": ask.env,
        "secrets": secrets,
        "git_credentials": ask.git_credentials,
    })
    .to_string();
    Ok(Some(hex::encode(sha2::Sha256::digest(text.as_bytes()))))
}

/// Asks for a build: every parameter checked, the ref resolved unless the
/// commit is known, and then either queued, or — when the image's last
/// successful build had the same inputs and its image is still there, and
/// `force` is not set — recorded as `reused` with the tags moved back to
/// that image if they had moved.
pub async fn request_build(state: &AppState, who: &Who, ask: BuildAsk) -> Result<Requested> {
    let project = ask.project.clone();
    project_exists(state, &project).await?;
    let source_url = ask.source_url.trim().to_owned();
    check_source(state, &source_url)?;
    check_ref(&ask.git_ref)?;
    let image_name = ask.image_name.clone().unwrap_or_else(|| project.clone());
    check_image_name(&project, &image_name)?;
    check_env(&ask.env)?;
    check_secret_names(state, &ask).await?;
    let builder = normalize_builder(
        ask.builder
            .as_deref()
            .unwrap_or(&state.config.builds.default_builder),
    );
    check_builder(state, &builder).await?;
    check_quota(state, &project).await?;
    let commit = match &ask.commit {
        Some(c) => c.clone(),
        None => {
            let creds = match &ask.git_credentials {
                Some(name) => Some(super::triggers::git_credentials(state, &project, name).await?),
                None => None,
            };
            match tokio::time::timeout(
                Duration::from_secs(60),
                slipway_builder::job::resolve_ref(
                    &source_url,
                    &ask.git_ref,
                    &state.isolation,
                    creds.as_ref(),
                ),
            )
            .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    return Err(Error::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
                }
                Err(_) => {
                    return Err(Error::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!(
                            "the repository {source_url:.200} did not answer within 60 seconds"
                        ),
                    ));
                }
            }
        }
    };
    let inputs = inputs_of(state, &ask, &builder).await?;
    let now = now_ms();
    let b = BuildRecord {
        id: new_id(),
        project: project.clone(),
        image_name: image_name.clone(),
        source_url,
        git_ref: ask.git_ref.clone(),
        git_commit: commit,
        builder,
        env: serde_json::to_string(&ask.env).unwrap_or_else(|_| "{}".into()),
        state: "pending".into(),
        requested_by: who.subject.clone(),
        created_at: now,
        trigger_id: ask.trigger_id.clone(),
        secret_env: ask.secret_env.clone(),
        git_credentials: ask.git_credentials.clone(),
        inputs,
        force: ask.force,
        ..Default::default()
    };
    if let Some(reused) = reuse(state, who, &b).await? {
        return Ok(Requested::Reused(reused));
    }
    queue(state, who, b).await
}

/// The image of an image's last successful build whose inputs (builder,
/// variables, secrets) equal a build's, while that image is still in its
/// repository: what the build may use instead of building. The caller
/// compares the commit or the tree.
pub(crate) struct Reusable {
    pub(crate) last: BuildRecord,
    repo: RepoName,
    repo_id: i64,
    digest: slipway_storage::Digest,
    manifest: slipway_storage::meta::ManifestRecord,
}

pub(crate) async fn last_equal(state: &AppState, b: &BuildRecord) -> Result<Option<Reusable>> {
    if b.inputs.is_none() || b.force {
        return Ok(None);
    }
    let Some(last) = state
        .meta
        .build_last_success(&b.project, &b.image_name)
        .await?
    else {
        return Ok(None);
    };
    if last.inputs != b.inputs {
        return Ok(None);
    }
    let Some(digest) = last.image_digest.as_deref() else {
        return Ok(None);
    };
    let Ok(repo) = RepoName::parse(&format!("{}/{}", b.project, b.image_name)) else {
        return Ok(None);
    };
    let Ok(digest) = digest.parse::<slipway_storage::Digest>() else {
        return Ok(None);
    };
    let Some(manifest) = state.meta.manifest_by_digest(&repo, &digest).await? else {
        return Ok(None);
    };
    let Some(repo_id) = state.meta.repo_id(&repo).await? else {
        return Ok(None);
    };
    Ok(Some(Reusable {
        last,
        repo,
        repo_id,
        digest,
        manifest,
    }))
}

impl Reusable {
    pub(crate) fn digest_str(&self) -> String {
        self.digest.to_string()
    }

    /// Tags the image with the build's id, and `latest` if that had
    /// moved elsewhere; the sentence for the build's reason.
    pub(crate) async fn point_tags(
        &self,
        state: &AppState,
        b: &BuildRecord,
        same: &str,
    ) -> Result<String> {
        let moved = state
            .meta
            .manifest_by_tag(&self.repo, "latest")
            .await?
            .is_none_or(|l| l.digest != self.digest);
        let m = &self.manifest;
        let parsed = crate::manifest::parse(Some(&m.media_type), &m.body).map_err(|e| {
            Error::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "the image {} of build {} cannot be read again ({e:?}); build with force",
                    self.digest, self.last.id
                ),
            )
        })?;
        let mut tags = vec![b.id.clone()];
        if moved {
            tags.push("latest".into());
        }
        for tag in &tags {
            state
                .meta
                .manifest_put_by(
                    &self.repo,
                    self.repo_id,
                    &slipway_storage::meta::NewManifest {
                        digest: self.digest.clone(),
                        media_type: parsed.media_type.clone(),
                        body: m.body.clone(),
                        artifact_type: parsed.artifact_type.clone(),
                        subject: parsed.subject.clone(),
                        annotations: parsed.annotations.clone(),
                        refs: parsed.refs.clone(),
                        tag: Some(tag.clone()),
                    },
                    "reuse",
                )
                .await?;
        }
        Ok(format!(
            "not built: build {} of the same {same}, builder, variables and secrets made {}, \
             which is still there{}",
            self.last.id,
            self.digest,
            if moved {
                "; latest points at it again"
            } else {
                ""
            }
        ))
    }

    /// Audits, counts and logs a reuse (the record is the caller's).
    pub(crate) async fn recorded(
        &self,
        state: &AppState,
        who: &Who,
        r: &BuildRecord,
    ) -> Result<()> {
        record_as(
            state,
            who,
            "build.reuse",
            &r.project,
            &r.id,
            json!({"commit": r.git_commit, "image_name": r.image_name,
                   "digest": self.digest.as_str(), "of": self.last.id, "trigger": r.trigger_id}),
        )
        .await?;
        crate::builds::prune(state, &r.project, &r.image_name).await;
        metrics::counter!("slipway_builds_total", "state" => "reused").increment(1);
        tracing::info!(build = %r.id, project = %r.project, of = %self.last.id, "build reused");
        Ok(())
    }
}

/// Records `b` as `reused` if the image's last successful build was of
/// the same commit with the same inputs and its image is still in the
/// repository: the tags `latest` and the build's id point at that image.
/// (A new commit with an unchanged tree is found by the worker, once it
/// has fetched the source.)
async fn reuse(state: &AppState, who: &Who, b: &BuildRecord) -> Result<Option<BuildRecord>> {
    let Some(r) = last_equal(state, b).await? else {
        return Ok(None);
    };
    if r.last.git_commit != b.git_commit {
        return Ok(None);
    }
    let reason = r.point_tags(state, b, "commit").await?;
    let now = now_ms();
    let out = BuildRecord {
        state: "reused".into(),
        reason: Some(reason.clone()),
        image_digest: Some(r.digest.to_string()),
        started_at: Some(now),
        finished_at: Some(now),
        buildpacks: r.last.buildpacks.clone(),
        git_tree: r.last.git_tree.clone(),
        ..b.clone()
    };
    state.meta.build_record_ended(&out).await?;
    state
        .meta
        .build_log_append(&out.id, 1, &[("done".to_owned(), reason)])
        .await?;
    r.recorded(state, who, &out).await?;
    Ok(Some(out))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/builds", tag = "builds",
    params(("project" = String, Path)), request_body = NewBuild,
    responses((status = 202, body = BuildView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path(project): Path<String>,
    Json(body): Json<NewBuild>,
) -> Result<Response> {
    caller.may(&state, &project, Right::Build).await?;
    project_exists(&state, &project).await?;
    let ask = match body.source_url {
        Some(source_url) => BuildAsk {
            project: project.clone(),
            source_url,
            git_ref: body.git_ref.unwrap_or_else(|| "HEAD".into()),
            commit: None,
            image_name: body.image_name,
            builder: body.builder,
            env: body.env,
            secret_env: body.secrets,
            git_credentials: body.git_credentials,
            trigger_id: None,
            force: body.force,
        },
        None => {
            let t = match &body.trigger {
                Some(id) => state
                    .meta
                    .trigger_get(id)
                    .await?
                    .filter(|t| t.project == project)
                    .ok_or_else(|| {
                        Error::not_found(format!(
                            "trigger {id:.64} does not exist in project {project:.100}"
                        ))
                    })?,
                None => state.meta.trigger_default(&project).await?.ok_or_else(|| {
                    Error::bad_request(format!(
                        "give the repository to build (source_url): project {project:.100} \
                 has no trigger to build by default"
                    ))
                })?,
            };
            let git_ref = match body.git_ref {
                Some(r) => r,
                None if super::triggers::is_literal(&t.ref_pattern) => t.ref_pattern.clone(),
                None => {
                    return Err(Error::bad_request(format!(
                        "trigger {} builds the branches {}: say which (ref)",
                        t.id, t.ref_pattern
                    )));
                }
            };
            let mut env: BTreeMap<String, String> =
                serde_json::from_str(&t.env).unwrap_or_default();
            env.extend(body.env);
            let mut secrets = t.secret_env.clone();
            for s in body.secrets {
                if !secrets.contains(&s) {
                    secrets.push(s);
                }
            }
            BuildAsk {
                project: project.clone(),
                source_url: t.source_url.clone(),
                git_ref,
                commit: None,
                image_name: body.image_name.or(Some(t.image_name.clone())),
                builder: body.builder.or(t.builder.clone()),
                env,
                secret_env: secrets,
                git_credentials: body.git_credentials.or(t.git_credentials.clone()),
                trigger_id: Some(t.id.clone()),
                force: body.force,
            }
        }
    };
    let r = request_build(&state, &caller.who(), ask).await?;
    let status = match r {
        Requested::Queued { .. } => StatusCode::ACCEPTED,
        Requested::Reused(_) => StatusCode::OK,
    };
    Ok((status, Json(view(r.build()))).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/builds", tag = "builds",
    params(("project" = String, Path), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = [BuildView]), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path(project): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<BuildView>>> {
    caller.may(&state, &project, Right::Read).await?;
    project_exists(&state, &project).await?;
    let builds = state.meta.builds(&project, q.limit.unwrap_or(50)).await?;
    Ok(Json(builds.iter().map(view).collect()))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/builds/latest", tag = "builds",
    params(("project" = String, Path)),
    responses((status = 200, body = BuildView), (status = 404, body = ErrorBody)))]
pub async fn latest(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path(project): Path<String>,
) -> Result<Json<BuildView>> {
    caller.may(&state, &project, Right::Read).await?;
    project_exists(&state, &project).await?;
    let b = state.meta.builds(&project, 1).await?;
    let b = b
        .first()
        .ok_or_else(|| Error::not_found(format!("project {project:.100} has no builds yet")))?;
    Ok(Json(view(b)))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/builds/{id}", tag = "builds",
    params(("project" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = BuildView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path((project, id)): Path<(String, String)>,
) -> Result<Json<BuildView>> {
    caller.may(&state, &project, Right::Read).await?;
    Ok(Json(view(&found(&state, &project, &id).await?)))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/builds/{id}/cancel", tag = "builds",
    params(("project" = String, Path), ("id" = String, Path)),
    responses((status = 202, body = BuildView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path((project, id)): Path<(String, String)>,
) -> Result<Response> {
    caller.may(&state, &project, Right::Build).await?;
    let b = cancel_build(&state, &caller.who(), &project, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(view(&b))).into_response())
}

/// Cancels a build of `project` (the caller may build there); the build.
pub(crate) async fn cancel_build(
    state: &AppState,
    who: &Who,
    project: &str,
    id: &str,
) -> Result<BuildRecord> {
    found(state, project, id).await?;
    if !state.meta.build_cancel(id).await? {
        let b = found(state, project, id).await?;
        return Err(Error::new(
            StatusCode::CONFLICT,
            format!("build {id} has ended already ({})", b.state),
        ));
    }
    record_as(state, who, "build.cancel", project, id, json!({})).await?;
    found(state, project, id).await
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/builds/{id}/retry", tag = "builds",
    params(("project" = String, Path), ("id" = String, Path)),
    responses((status = 202, body = BuildView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn retry(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path((project, id)): Path<(String, String)>,
) -> Result<Response> {
    caller.may(&state, &project, Right::Build).await?;
    let b = retry_build(&state, &caller.who(), &project, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(view(&b))).into_response())
}

/// Queues a build of the same commit as an ended build of `project` (the
/// caller may build there); the new build.
pub(crate) async fn retry_build(
    state: &AppState,
    who: &Who,
    project: &str,
    id: &str,
) -> Result<BuildRecord> {
    let old = found(state, project, id).await?;
    if !old.finished() {
        return Err(Error::new(
            StatusCode::CONFLICT,
            format!(
                "build {id} is still {}; retry it when it has ended",
                old.state
            ),
        ));
    }
    check_builder(state, &old.builder).await?;
    let b = BuildRecord {
        id: new_id(),
        state: "pending".into(),
        reason: None,
        image_digest: None,
        requested_by: who.subject.clone(),
        created_at: now_ms(),
        started_at: None,
        finished_at: None,
        worker: None,
        cancel_requested: false,
        buildpacks: None,
        git_tree: None,
        // A retry is asked for by someone: it does not replace the
        // trigger's queued builds, and it builds (its inputs were those of
        // the build it repeats, whose secrets may have changed since).
        trigger_id: None,
        force: true,
        ..old
    };
    let r = queue(state, who, b).await?;
    Ok(r.build().clone())
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}/builds/{id}", tag = "builds",
    params(("project" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path((project, id)): Path<(String, String)>,
) -> Result<StatusCode> {
    caller.may(&state, &project, Right::Manage).await?;
    let b = found(&state, &project, &id).await?;
    if !state.meta.build_delete(&project, &id).await? {
        return Err(Error::new(
            StatusCode::CONFLICT,
            format!("build {id} is {}; cancel it before deleting it", b.state),
        ));
    }
    record(&state, &caller, "build.delete", &project, &id, json!({})).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    /// Keep the response open and send lines as they come, until the build
    /// ends.
    #[serde(default)]
    pub follow: bool,
    /// Only lines after this sequence number.
    #[serde(default)]
    pub after: Option<i64>,
    /// `text` (default: the lines) or `json` (one object per line:
    /// `{"seq", "at", "phase", "line"}`).
    #[serde(default)]
    pub format: Option<String>,
}

/// One log line, in the `json` format.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLineView {
    pub seq: i64,
    /// Epoch milliseconds.
    pub at: i64,
    pub phase: String,
    pub line: String,
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/builds/{id}/logs", tag = "builds",
    params(("project" = String, Path), ("id" = String, Path), ("follow" = Option<bool>, Query),
        ("after" = Option<i64>, Query), ("format" = Option<String>, Query)),
    responses((status = 200, description = "The log, as text or JSON lines"), (status = 404, body = ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    caller: BuildCaller,
    Path((project, id)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<Response> {
    caller.may(&state, &project, Right::Build).await?;
    found(&state, &project, &id).await?;
    let json = match q.format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(f) => {
            return Err(Error::bad_request(format!(
                "{f:.20} is not a log format; use text or json"
            )));
        }
    };
    let render = move |lines: Vec<slipway_storage::meta::LogLine>| -> Bytes {
        let mut out = String::new();
        for l in lines {
            if json {
                let v = LogLineView {
                    seq: l.seq,
                    at: l.at,
                    phase: l.phase,
                    line: l.line,
                };
                out.push_str(&serde_json::to_string(&v).unwrap_or_default());
            } else {
                out.push_str(&l.line);
            }
            out.push('\n');
        }
        Bytes::from(out)
    };
    let content_type = if json {
        "application/x-ndjson"
    } else {
        "text/plain; charset=utf-8"
    };
    let after = q.after.unwrap_or(0);
    if !q.follow {
        let lines = state.meta.build_log(&id, after, 100_000).await?;
        return Ok(([(header::CONTENT_TYPE, content_type)], render(lines)).into_response());
    }
    // Followed: poll the database (the build may run on another replica).
    struct Follow {
        state: AppState,
        id: String,
        after: i64,
        ended: bool,
    }
    let stream = futures::stream::unfold(
        Follow {
            state: state.clone(),
            id: id.clone(),
            after,
            ended: false,
        },
        move |mut f| async move {
            loop {
                let lines = match f.state.meta.build_log(&f.id, f.after, 1000).await {
                    Ok(l) => l,
                    Err(e) => return Some((Err(std::io::Error::other(e.to_string())), f)),
                };
                if let Some(last) = lines.last() {
                    f.after = last.seq;
                    let bytes = render(lines);
                    return Some((Ok::<Bytes, std::io::Error>(bytes), f));
                }
                if f.ended {
                    return None;
                }
                match f.state.meta.build_by_id(&f.id).await {
                    // Its last lines were written before it ended: one more
                    // read gets them.
                    Ok(Some(b)) if b.finished() => f.ended = true,
                    Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(300)).await,
                    Ok(None) => return None,
                    Err(e) => return Some((Err(std::io::Error::other(e.to_string())), f)),
                }
            }
        },
    );
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

// ----- build tokens (the admin's) ------------------------------------------

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildTokenView {
    /// `build$<project>+<name>`: the user name the build API takes.
    pub username: String,
    pub project: String,
    pub name: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

/// A build token and its secret, shown this once.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildTokenSecret {
    pub token: BuildTokenView,
    pub secret: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBuildToken {
    /// Default: `default`.
    #[serde(default)]
    pub name: Option<String>,
}

fn token_view(t: &BuildToken) -> BuildTokenView {
    BuildTokenView {
        username: format!("build${}+{}", t.project, t.name),
        project: t.project.clone(),
        name: t.name.clone(),
        created_at: time(t.created_at),
        last_used_at: t.last_used_at.map(time),
    }
}

fn check_token_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        return Err(Error::bad_request(format!(
            "{name:.100} is not a valid build token name: use 1 to 64 lowercase letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/build-tokens", tag = "builds",
    params(("project" = String, Path)),
    responses((status = 200, body = [BuildTokenView]), (status = 404, body = ErrorBody)))]
pub async fn tokens(
    State(state): State<AppState>,
    Signed(caller): Signed,
    Path(project): Path<String>,
) -> Result<Json<Vec<BuildTokenView>>> {
    super::require(&state, &caller, &project, Right::Manage).await?;
    project_exists(&state, &project).await?;
    let tokens = state.meta.build_tokens(&project).await?;
    Ok(Json(tokens.iter().map(token_view).collect()))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/build-tokens", tag = "builds",
    params(("project" = String, Path)), request_body = NewBuildToken,
    responses((status = 201, body = BuildTokenSecret), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn token_create(
    State(state): State<AppState>,
    Signed(caller): Signed,
    Path(project): Path<String>,
    Json(body): Json<NewBuildToken>,
) -> Result<Response> {
    super::require(&state, &caller, &project, Right::Manage).await?;
    let name = body.name.unwrap_or_else(|| "default".into());
    check_token_name(&name)?;
    project_exists(&state, &project).await?;
    let secret = secrets::generate();
    let hash = secrets::hash(&secret)
        .await
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let token = state
        .meta
        .build_token_create(&project, &name, &hash)
        .await?;
    audit(
        &state,
        &caller,
        "build_token.create",
        Some(&project),
        &format!("build${project}+{name}"),
        json!({}),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(BuildTokenSecret {
            token: token_view(&token),
            secret,
        }),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}/build-tokens/{name}", tag = "builds",
    params(("project" = String, Path), ("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn token_delete(
    State(state): State<AppState>,
    Signed(caller): Signed,
    Path((project, name)): Path<(String, String)>,
) -> Result<StatusCode> {
    super::require(&state, &caller, &project, Right::Manage).await?;
    if !state.meta.build_token_delete(&project, &name).await? {
        return Err(Error::not_found(format!(
            "build token {name:.64} does not exist in project {project:.100}"
        )));
    }
    audit(
        &state,
        &caller,
        "build_token.delete",
        Some(&project),
        &format!("build${project}+{name}"),
        json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- approved builders (the admin's) --------------------------------------

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuilderView {
    /// `platform/builder:bookworm`
    pub image: String,
    pub approved_by: String,
    pub approved_at: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuilderBody {
    pub image: String,
}

#[derive(Debug, Deserialize)]
pub struct BuilderQuery {
    pub image: String,
}

#[utoipa::path(get, path = "/api/v1/builders", tag = "builds",
    responses((status = 200, body = [BuilderView])))]
pub async fn builders(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Vec<BuilderView>>> {
    let list = state.meta.builders_approved().await?;
    Ok(Json(
        list.into_iter()
            .map(|(image, by, at)| BuilderView {
                image,
                approved_by: by,
                approved_at: time(at),
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/builders", tag = "builds", request_body = BuilderBody,
    responses((status = 201, body = BuilderView), (status = 400, body = ErrorBody)))]
pub async fn builder_approve(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Json(body): Json<BuilderBody>,
) -> Result<Response> {
    let image = normalize_builder(&body.image);
    let repo = image
        .split(['@'])
        .next()
        .map(|r| match r.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => name,
            _ => r,
        })
        .unwrap_or_default();
    if RepoName::parse(repo).is_err() {
        return Err(Error::bad_request(format!(
            "{image:.200} is not an image in this registry (project/name:tag)"
        )));
    }
    state
        .meta
        .builder_approve(&image, &caller.principal.subject())
        .await?;
    audit(&state, &caller, "builder.approve", None, &image, json!({})).await?;
    let view = state
        .meta
        .builders_approved()
        .await?
        .into_iter()
        .find(|(i, _, _)| *i == image)
        .map(|(image, by, at)| BuilderView {
            image,
            approved_by: by,
            approved_at: time(at),
        })
        .ok_or_else(|| Error::new(StatusCode::INTERNAL_SERVER_ERROR, "the approval vanished"))?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/builders", tag = "builds",
    params(("image" = String, Query)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn builder_revoke(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Query(q): Query<BuilderQuery>,
) -> Result<StatusCode> {
    let image = normalize_builder(&q.image);
    if !state.meta.builder_revoke(&image).await? {
        return Err(Error::not_found(format!(
            "the builder {image:.200} is not approved"
        )));
    }
    audit(&state, &caller, "builder.revoke", None, &image, json!({})).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_get_a_tag() {
        assert_eq!(
            normalize_builder("platform/builder"),
            "platform/builder:latest"
        );
        assert_eq!(
            normalize_builder("platform/builder:bookworm"),
            "platform/builder:bookworm"
        );
        assert_eq!(
            normalize_builder("localhost:5000/platform/builder"),
            "localhost:5000/platform/builder:latest"
        );
    }

    #[test]
    fn refs_that_git_could_read_as_options_are_refused() {
        assert!(check_ref("main").is_ok());
        assert!(check_ref("v1.2.3").is_ok());
        assert!(check_ref("feature/x").is_ok());
        assert!(check_ref("--upload-pack=touch /tmp/x").is_err());
        assert!(check_ref("-x").is_err());
        assert!(check_ref("a..b").is_err());
        assert!(check_ref("").is_err());
    }

    #[test]
    fn variables_are_checked() {
        let mut env = BTreeMap::new();
        env.insert("PIP_INDEX_URL".to_owned(), "x".to_owned());
        assert!(check_env(&env).is_ok());
        env.insert("CNB_PLATFORM_API".to_owned(), "x".to_owned());
        assert!(check_env(&env).is_err());
        let mut env = BTreeMap::new();
        env.insert("1X".to_owned(), "x".to_owned());
        assert!(check_env(&env).is_err());
    }
}
