//! People acting for themselves: `POST /api/v1/sign-in` (the directory
//! checks the password; the answer is a session token for the CLI),
//! `GET /api/v1/me`, and their personal access tokens under
//! `/api/v1/me/tokens` — shown once, hashed at rest, listed with their last
//! use, revocable by the person and (under `/api/v1/people/{person}/tokens`)
//! by the admin.

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use slipway_storage::meta::{PersonalToken, now_ms};

use super::members::{MemberView, check_person, member_view};
use super::{Admin, Error, ErrorBody, Result, Signed, audit, time};
use crate::auth::people::{RESERVED, SESSION_SECS, new_token};
use crate::auth::{Caller, Principal, secrets};
use crate::identity::ldap::LdapError;
use crate::identity::oidc::OidcError;
use crate::server::AppState;

/// Personal tokens last at most this long.
const MAX_TOKEN_DAYS: u64 = 366;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionView {
    /// A bearer token for the API (`Authorization: Bearer …`), not for
    /// `/v2`: registry clients use personal tokens.
    pub token: String,
    pub expires_in: i64,
    pub me: MeView,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MeView {
    pub name: String,
    /// Administers Slipway (the admin, or the directory's admin group).
    pub admin: bool,
    pub memberships: Vec<MemberView>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub person: String,
    /// Only this project; none: every project of the person.
    pub project: Option<String>,
    /// Registry pulls only, no API.
    pub pull_only: bool,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenSecret {
    pub token: TokenView,
    /// Shown once: `podman login -u <person> -p <secret>`.
    pub secret: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
    /// `90d`, `12h`, … (at most 366 days); default 90 days.
    #[serde(default)]
    pub expires: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub pull_only: bool,
}

fn token_view(t: &PersonalToken) -> TokenView {
    TokenView {
        id: t.id.clone(),
        name: t.name.clone(),
        person: t.person.clone(),
        project: t.project.clone(),
        pull_only: t.pull_only,
        created_at: time(t.created_at),
        expires_at: t.expires_at.map(time),
        last_used_at: t.last_used_at.map(time),
    }
}

/// The person a caller is, or a 403 for the admin account and robots.
fn person_of(caller: &Caller) -> Result<&str> {
    match &caller.principal {
        Principal::Person { name, .. } => Ok(name),
        p => Err(Error::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} is not a person: personal tokens belong to people who signed in",
                p.subject()
            ),
        )),
    }
}

#[utoipa::path(post, path = "/api/v1/sign-in", tag = "people", request_body = SignIn,
    security(()),
    responses((status = 200, body = SessionView), (status = 401, body = ErrorBody),
        (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
    Json(body): Json<SignIn>,
) -> Result<Response> {
    let remote = Some(addr.ip());
    let Some(directory) = state.directory.clone() else {
        return Err(Error::new(
            StatusCode::NOT_FOUND,
            "no directory is configured: set [identity.ldap] to let people sign in",
        ));
    };
    not_blocked(&state, remote)?;
    let anonymous = Caller {
        principal: Principal::Anonymous,
        remote,
    };
    // Directories match uids without case: one person, one name.
    let body = SignIn {
        username: body.username.to_ascii_lowercase(),
        password: body.password,
    };
    if RESERVED.contains(&body.username.as_str()) {
        state.auth.limiter.failed(remote);
        return refused(
            &state,
            &anonymous,
            &body.username,
            StatusCode::UNAUTHORIZED,
            LdapError::Refused.to_string(),
        )
        .await;
    }
    let answer = match directory.sign_in(&body.username, &body.password).await {
        Ok(a) => a,
        Err(e @ LdapError::Unavailable(_)) => {
            tracing::warn!(error = %e, "a sign-in could not reach the directory");
            return Err(Error::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the directory cannot be reached; try again later",
            ));
        }
        Err(e) => {
            state.auth.limiter.failed(remote);
            let status = match e {
                LdapError::InvalidName(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::UNAUTHORIZED,
            };
            return refused(&state, &anonymous, &body.username, status, e.to_string()).await;
        }
    };
    let unknown = state.directory_signed_in(&answer).await?;
    let caller = signed_in_caller(&state, &answer.user, remote).await?;
    audit(
        &state,
        &caller,
        "person.sign_in",
        None,
        &answer.user,
        json!({"via": "ldap", "admin": answer.is_admin, "groups": answer.groups,
               "projects": answer.grants.iter().map(|(p, _)| p).collect::<Vec<_>>(),
               "projects_not_created": unknown}),
    )
    .await?;
    session_for(&state, &caller, &answer.user).await
}

/// The caller a person who just signed in is (refused when disabled here).
async fn signed_in_caller(
    state: &AppState,
    user: &str,
    remote: Option<std::net::IpAddr>,
) -> Result<Caller> {
    let person = state.person_principal(user, None).await?.ok_or_else(|| {
        Error::new(
            StatusCode::FORBIDDEN,
            format!("{user} is disabled in Slipway"),
        )
    })?;
    Ok(Caller {
        principal: person,
        remote,
    })
}

/// A new session for a person who signed in.
async fn session_for(state: &AppState, caller: &Caller, user: &str) -> Result<Response> {
    let token = state
        .session_token(user, None)
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let me = me_view(state, caller).await?;
    Ok(Json(SessionView {
        token,
        expires_in: SESSION_SECS,
        me,
    })
    .into_response())
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignInOptions {
    /// `POST /api/v1/sign-in` takes the directory's username and password.
    pub ldap: bool,
    /// The OpenID Connect provider's name, when people sign in through it
    /// (`POST /api/v1/sign-in/oidc`).
    pub oidc: Option<String>,
    /// The provider offers the device flow (`POST
    /// /api/v1/sign-in/oidc/device`): a CLI needs no browser on its machine.
    pub oidc_device: bool,
}

#[utoipa::path(get, path = "/api/v1/sign-in", tag = "people", security(()),
    responses((status = 200, body = SignInOptions)))]
pub async fn sign_in_options(State(state): State<AppState>) -> Json<SignInOptions> {
    let oidc_device = match &state.oidc {
        Some(p) => p.device_offered().await,
        None => false,
    };
    Json(SignInOptions {
        ldap: state.directory.is_some(),
        oidc: state.oidc.as_ref().map(|p| p.name().to_owned()),
        oidc_device,
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcStart {
    /// Where the provider sends the person back: a loopback address the
    /// CLI listens on (`http://127.0.0.1:<port>/…`).
    pub redirect_uri: String,
    /// SHA-256 (hex) of a secret the CLI keeps and sends back with the
    /// code: a redirect caught by another program is of no use to it.
    pub proof_hash: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OidcStarted {
    /// Open this in a browser.
    pub authorization_url: String,
    /// What the provider sends back with the code; check it, then send both
    /// to `POST /api/v1/sign-in/oidc/callback`.
    pub state: String,
    pub expires_in: i64,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcReturn {
    pub state: String,
    #[serde(default)]
    pub code: Option<String>,
    /// The provider's `error` (`access_denied`), when it sent one.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_description: Option<String>,
    /// The secret whose hash was given at the start.
    #[serde(default)]
    pub proof: Option<String>,
}

fn oidc_error(e: OidcError) -> Error {
    let status = match &e {
        OidcError::Refused(_) | OidcError::BadState(_) => StatusCode::UNAUTHORIZED,
        OidcError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
        OidcError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        OidcError::NotConfigured => StatusCode::NOT_FOUND,
        OidcError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Error::new(status, e.to_string())
}

/// Refuses a caller that failed too many sign-ins lately.
fn not_blocked(state: &AppState, remote: Option<std::net::IpAddr>) -> Result<()> {
    match state.auth.limiter.blocked(remote) {
        Some(wait) => Err(Error::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many failed sign-ins from this address; try again in {} seconds",
                wait.as_secs().max(1)
            ),
        )),
        None => Ok(()),
    }
}

/// Starts a sign-in through the OpenID Connect provider for a CLI that
/// listens on a loopback address.
#[utoipa::path(post, path = "/api/v1/sign-in/oidc", tag = "people", request_body = OidcStart,
    security(()),
    responses((status = 200, body = OidcStarted), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn oidc_start(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
    Json(body): Json<OidcStart>,
) -> Result<Json<OidcStarted>> {
    not_blocked(&state, Some(addr.ip()))?;
    if !crate::identity::oidc::loopback_redirect(&body.redirect_uri) {
        return Err(Error::bad_request(format!(
            "redirect_uri {:.200} is not a loopback address (http://127.0.0.1:<port>/…): \
             the CLI's sign-in comes back to the machine it runs on",
            body.redirect_uri
        )));
    }
    let hex = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(&body.proof_hash) {
        return Err(Error::bad_request(
            "proof_hash must be the SHA-256 (64 hex digits) of a secret the client keeps",
        ));
    }
    let begun = state
        .oidc_begin(
            crate::auth::oidc::CLI,
            &body.redirect_uri,
            Some(addr.ip()),
            Some(&body.proof_hash.to_ascii_lowercase()),
        )
        .await
        .map_err(oidc_error)?;
    Ok(Json(OidcStarted {
        authorization_url: begun.authorization_url,
        state: begun.state,
        expires_in: crate::auth::oidc::WINDOW_MS / 1000,
    }))
}

/// Finishes a CLI's sign-in with what the provider sent to its loopback
/// address: a session, as `POST /api/v1/sign-in` gives.
#[utoipa::path(post, path = "/api/v1/sign-in/oidc/callback", tag = "people",
    request_body = OidcReturn, security(()),
    responses((status = 200, body = SessionView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn oidc_callback(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
    Json(body): Json<OidcReturn>,
) -> Result<Response> {
    let remote = Some(addr.ip());
    not_blocked(&state, remote)?;
    let answer = state
        .oidc_finish(
            crate::auth::oidc::CLI,
            crate::auth::oidc::Returned {
                state: &body.state,
                code: body.code.as_deref(),
                error: body.error.as_deref(),
                error_description: body.error_description.as_deref(),
                proof: body.proof.as_deref(),
            },
            remote,
        )
        .await
        .map_err(oidc_error)?;
    let caller = signed_in_caller(&state, &answer.user, remote).await?;
    session_for(&state, &caller, &answer.user).await
}

/// Audits a refused sign-in and answers it with its reason.
async fn refused(
    state: &AppState,
    anonymous: &Caller,
    username: &str,
    status: StatusCode,
    reason: String,
) -> Result<Response> {
    audit(
        state,
        anonymous,
        "person.sign_in_refused",
        None,
        &username.chars().take(80).collect::<String>(),
        json!({"reason": reason}),
    )
    .await?;
    Err(Error::new(status, reason))
}

async fn me_view(state: &AppState, caller: &Caller) -> Result<MeView> {
    let memberships = match &caller.principal {
        Principal::Person { name, .. } => state.meta.memberships_of(name).await?,
        _ => Vec::new(),
    };
    Ok(MeView {
        name: caller.principal.subject(),
        admin: caller.principal.is_admin(),
        memberships: memberships.iter().map(member_view).collect(),
    })
}

#[utoipa::path(get, path = "/api/v1/me", tag = "people",
    responses((status = 200, body = MeView), (status = 401, body = ErrorBody)))]
pub async fn me(State(state): State<AppState>, Signed(caller): Signed) -> Result<Json<MeView>> {
    Ok(Json(me_view(&state, &caller).await?))
}

#[utoipa::path(get, path = "/api/v1/me/tokens", tag = "people",
    responses((status = 200, body = [TokenView]), (status = 403, body = ErrorBody)))]
pub async fn tokens(
    State(state): State<AppState>,
    Signed(caller): Signed,
) -> Result<Json<Vec<TokenView>>> {
    let person = person_of(&caller)?;
    let tokens = state.meta.tokens_of(person).await?;
    Ok(Json(tokens.iter().map(token_view).collect()))
}

#[utoipa::path(post, path = "/api/v1/me/tokens", tag = "people", request_body = NewToken,
    responses((status = 201, body = TokenSecret), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn token_create(
    State(state): State<AppState>,
    Signed(caller): Signed,
    Json(body): Json<NewToken>,
) -> Result<Response> {
    let person = person_of(&caller)?.to_owned();
    if caller.principal.personal_token().is_some() {
        return Err(Error::new(
            StatusCode::FORBIDDEN,
            "personal tokens are made with a session (`slipway login`), not with another token",
        ));
    }
    let name_ok = (1..=64).contains(&body.name.len())
        && body
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !name_ok {
        return Err(Error::bad_request(format!(
            "{:.80} is not a token name: use 1 to 64 letters, digits, '.', '_' or '-'",
            body.name
        )));
    }
    let lifetime = match body.expires.as_deref() {
        None => std::time::Duration::from_secs(90 * 86_400),
        Some(text) => humantime::parse_duration(text).map_err(|_| {
            Error::bad_request(format!(
                "{text:.40} is not a lifetime: write it like 90d, 12h or 30m"
            ))
        })?,
    };
    if lifetime.is_zero() || lifetime.as_secs() > MAX_TOKEN_DAYS * 86_400 {
        return Err(Error::bad_request(format!(
            "a personal token lasts between a second and {MAX_TOKEN_DAYS} days"
        )));
    }
    // Issued on the directory's word now, not on what it said minutes ago.
    let Some(now) = state.person_now(&person).await? else {
        return Err(Error::new(
            StatusCode::FORBIDDEN,
            format!("{person} is disabled in Slipway"),
        ));
    };
    // A token limited to a project its owner cannot see would be useless;
    // one limited beyond the caller's own token would widen it.
    let inherited = caller.principal.personal_token().cloned();
    let project = body
        .project
        .clone()
        .or_else(|| inherited.as_ref().and_then(|t| t.project.clone()));
    if let Some(p) = &project {
        if inherited
            .as_ref()
            .and_then(|t| t.project.as_deref())
            .is_some_and(|only| only != p)
        {
            return Err(Error::new(
                StatusCode::FORBIDDEN,
                format!("the token in use is limited to another project than {p:.100}"),
            ));
        }
        if state.role(&caller.principal, p).await?.is_none() && !now.is_admin {
            return Err(Error::new(
                StatusCode::FORBIDDEN,
                format!("{person} has no role in project {p:.100}"),
            ));
        }
    }
    let (id, text) = new_token();
    let hash = secrets::hash(&text)
        .await
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let now = now_ms();
    let token = PersonalToken {
        id,
        person: person.clone(),
        name: body.name.clone(),
        secret_hash: hash,
        project: project.clone(),
        pull_only: body.pull_only || inherited.is_some_and(|t| t.pull_only),
        created_at: now,
        expires_at: Some(now + lifetime.as_millis() as i64),
        last_used_at: None,
    };
    state.meta.token_create(&token).await?;
    audit(
        &state,
        &caller,
        "token.create",
        project.as_deref(),
        &format!("{person}/{}", token.name),
        json!({"id": token.id, "pull_only": token.pull_only, "expires_at": token.expires_at}),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenSecret {
            token: token_view(&token),
            secret: text,
        }),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/api/v1/me/tokens/{id}", tag = "people",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn token_delete(
    State(state): State<AppState>,
    Signed(caller): Signed,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let person = person_of(&caller)?.to_owned();
    revoke(&state, &caller, &person, &id).await
}

async fn revoke(state: &AppState, caller: &Caller, person: &str, id: &str) -> Result<StatusCode> {
    if !state.meta.token_delete(person, id).await? {
        return Err(Error::not_found(format!(
            "{person} has no personal token {id:.40}"
        )));
    }
    audit(
        state,
        caller,
        "token.revoke",
        None,
        &format!("{person}/{id}"),
        json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/people/{person}/tokens", tag = "people",
    params(("person" = String, Path)),
    responses((status = 200, body = [TokenView])))]
pub async fn person_tokens(
    State(state): State<AppState>,
    _admin: Admin,
    Path(person): Path<String>,
) -> Result<Json<Vec<TokenView>>> {
    check_person(&person)?;
    let tokens = state.meta.tokens_of(&person).await?;
    Ok(Json(tokens.iter().map(token_view).collect()))
}

#[utoipa::path(delete, path = "/api/v1/people/{person}/tokens/{id}", tag = "people",
    params(("person" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn person_token_delete(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path((person, id)): Path<(String, String)>,
) -> Result<StatusCode> {
    check_person(&person)?;
    revoke(&state, &caller, &person, &id).await
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceStartedView {
    /// What to poll `POST /api/v1/sign-in/oidc/device/poll` with (a secret:
    /// whoever holds it gets the session).
    pub handle: String,
    /// What the person enters at `verification_uri`.
    pub user_code: String,
    pub verification_uri: String,
    /// The address with the code filled in, where the provider gives one.
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    /// Seconds between polls.
    pub interval: u64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePollBody {
    pub handle: String,
}

/// Starts a device sign-in (RFC 8628) through the OpenID Connect provider,
/// for a CLI on a machine without a browser.
#[utoipa::path(post, path = "/api/v1/sign-in/oidc/device", tag = "people", security(()),
    responses((status = 200, body = DeviceStartedView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn oidc_device_start(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
) -> Result<Json<DeviceStartedView>> {
    not_blocked(&state, Some(addr.ip()))?;
    let d = state
        .oidc_device_begin(Some(addr.ip()))
        .await
        .map_err(oidc_error)?;
    Ok(Json(DeviceStartedView {
        handle: d.handle,
        user_code: d.user_code,
        verification_uri: d.verification_uri,
        verification_uri_complete: d.verification_uri_complete,
        expires_in: d.expires_in,
        interval: d.interval,
    }))
}

/// Polls a device sign-in: 202 `{"pending": true}` until the person has
/// finished at the provider, then a session as `POST /api/v1/sign-in`
/// gives (once).
#[utoipa::path(post, path = "/api/v1/sign-in/oidc/device/poll", tag = "people",
    request_body = DevicePollBody, security(()),
    responses((status = 200, body = SessionView), (status = 202), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn oidc_device_poll(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
    Json(body): Json<DevicePollBody>,
) -> Result<Response> {
    let remote = Some(addr.ip());
    not_blocked(&state, remote)?;
    match state
        .oidc_device_poll(&body.handle, remote)
        .await
        .map_err(oidc_error)?
    {
        crate::auth::oidc::DeviceState::Pending { slow_down } => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"pending": true, "slow_down": slow_down})),
        )
            .into_response()),
        crate::auth::oidc::DeviceState::Done(answer) => {
            let caller = signed_in_caller(&state, &answer.user, remote).await?;
            session_for(&state, &caller, &answer.user).await
        }
    }
}
