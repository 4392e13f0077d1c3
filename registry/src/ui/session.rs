//! Who is looking at the dashboard: signed in with the admin password, a
//! build token (a project's maintainer), a robot (read-only, its project),
//! a person (the directory's password or a personal token: what their
//! roles show), or nobody (public projects only).
//!
//! The session is a cookie holding a token signed like `/auth/token`'s
//! (`use: session`, audience and issuer checked, twelve hours), `HttpOnly`,
//! `SameSite=Lax`, `Secure` when the request came over TLS. Each request
//! checks that the account is still what signed in (the admin's password
//! unchanged, the robot enabled at the same version, the build token not
//! deleted). Forms carry a CSRF token derived from the session; the sign-in
//! form, before any session, a random one also set as a cookie.

use std::net::{IpAddr, SocketAddr};

use axum::Form;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use sha2::Digest as _;
use slipway_storage::meta::{NewAuditEntry, Role};

use crate::auth::people::SESSION_SECS;
use crate::auth::tokens::TokenUse;
use crate::auth::{Actions, Principal, account_version, parse_build_token_name};
use crate::server::AppState;

pub const SESSION_COOKIE: &str = "slipway_session";
const LOGIN_COOKIE: &str = "slipway_login";
/// The state of a sign-in sent to the OpenID Connect provider: the browser
/// that comes back must be the one that left.
const OIDC_COOKIE: &str = "slipway_oidc";

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    Anonymous,
    Admin,
    /// A robot: read-only, in its project (if it may pull).
    Robot {
        project: String,
        name: String,
        pull: bool,
    },
    /// A project's build token: the maintainer's view of that project.
    Maintainer {
        project: String,
        name: String,
    },
    /// A person from the directory: what their roles show (their
    /// memberships as of this request), everything for the admin group.
    Person {
        name: String,
        admin: bool,
        roles: std::collections::BTreeMap<String, Role>,
    },
}

impl Viewer {
    pub fn is_admin(&self) -> bool {
        matches!(self, Viewer::Admin | Viewer::Person { admin: true, .. })
    }

    /// A person's role in `project`.
    pub fn role(&self, project: &str) -> Option<Role> {
        match self {
            Viewer::Person { roles, .. } => roles.get(project).copied(),
            _ => None,
        }
    }

    /// Whether pages about `project` (public or not) may be shown.
    pub fn may_see(&self, project: &str, public: bool) -> bool {
        public
            || match self {
                Viewer::Anonymous => false,
                Viewer::Admin => true,
                Viewer::Robot {
                    project: p, pull, ..
                } => p == project && *pull,
                Viewer::Maintainer { project: p, .. } => p == project,
                Viewer::Person { admin, roles, .. } => *admin || roles.contains_key(project),
            }
    }

    /// Whether its builds may be cancelled and retried from the pages.
    pub fn may_build(&self, project: &str) -> bool {
        match self {
            Viewer::Admin => true,
            Viewer::Maintainer { project: p, .. } => p == project,
            Viewer::Person { admin: true, .. } => true,
            Viewer::Person { .. } => {
                matches!(self.role(project), Some(Role::Developer | Role::Maintainer))
            }
            _ => false,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Viewer::Anonymous => "anonymous".into(),
            Viewer::Admin => crate::auth::ADMIN.into(),
            Viewer::Robot { project, name, .. } => format!("robot${project}+{name}"),
            Viewer::Maintainer { project, name } => format!("build${project}+{name}"),
            Viewer::Person { name, .. } => name.clone(),
        }
    }
}

/// The viewer, and the CSRF token its forms carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub viewer: Viewer,
    pub csrf: String,
    pub remote: Option<IpAddr>,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let remote = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Ok(Session {
                viewer: Viewer::Anonymous,
                csrf: String::new(),
                remote,
            });
        };
        let viewer = match viewer_of(state, &token).await {
            Some(v) => v,
            None => Viewer::Anonymous,
        };
        let csrf = if viewer == Viewer::Anonymous {
            String::new()
        } else {
            csrf_of(&token)
        };
        Ok(Session {
            viewer,
            csrf,
            remote,
        })
    }
}

/// A cookie's value.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The CSRF token of a session: a digest of the session's own token (which
/// a page on another site cannot read).
fn csrf_of(session_token: &str) -> String {
    hex::encode(&sha2::Sha256::digest(format!("slipway-csrf:{session_token}").as_bytes())[..16])
}

/// Whether a form's CSRF token is the session's (compared in constant time).
pub fn csrf_ok(session: &Session, given: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    !session.csrf.is_empty() && bool::from(session.csrf.as_bytes().ct_eq(given.as_bytes()))
}

async fn viewer_of(state: &AppState, token: &str) -> Option<Viewer> {
    let claims = state.auth.keys.verify(token, TokenUse::Session).ok()?;
    if claims.aud != state.config.auth.service || claims.iss != state.config.auth.issuer {
        return None;
    }
    if let Some((project, name)) = parse_build_token_name(&claims.sub) {
        let t = state.meta.build_token(project, name).await.ok()??;
        return (Some(t.id) == claims.ver).then(|| Viewer::Maintainer {
            project: project.to_owned(),
            name: name.to_owned(),
        });
    }
    if claims.sub == crate::auth::ADMIN {
        let hash = state.meta.account_hash(crate::auth::ADMIN).await.ok()??;
        return (Some(account_version(&hash)) == claims.ver).then_some(Viewer::Admin);
    }
    match state.token_principal(&claims).await.ok()?? {
        Principal::Robot {
            project,
            name,
            permissions,
            ..
        } => Some(Viewer::Robot {
            project,
            name,
            pull: permissions.contains(Actions::PULL),
        }),
        Principal::Person { name, admin, .. } => {
            let mut roles = std::collections::BTreeMap::new();
            for m in state.meta.memberships_of(&name).await.ok()? {
                let r: &mut Role = roles.entry(m.project).or_insert(m.role);
                if m.role > *r {
                    *r = m.role;
                }
            }
            Some(Viewer::Person { name, admin, roles })
        }
        _ => None,
    }
}

fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p == "https")
}

fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Lax; Max-Age={max_age}");
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).expect("cookie values are ASCII")
}

pub async fn login_form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let nonce = crate::auth::secrets::generate();
    let page = login_page(&state, &nonce, None);
    let mut r = page.into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &nonce, 3600, over_tls(&headers)),
    );
    r
}

fn login_page(state: &AppState, nonce: &str, error: Option<&str>) -> maud::Markup {
    let provider = state.oidc.as_ref().map(|p| p.name().to_owned());
    super::layout(
        "Sign in",
        &Session {
            viewer: Viewer::Anonymous,
            csrf: String::new(),
            remote: None,
        },
        html! {
            h1 { "Sign in" }
            @if let Some(e) = error {
                p.error role="alert" { (e) }
            }
            @if let Some(name) = &provider {
                p { a.button #oidc href="/ui/sign-in/oidc" { "Sign in with " (name) } }
                p.hint { "Or with a password:" }
            }
            form.signin method="post" action="/ui/login" {
                input type="hidden" name="csrf" value=(nonce);
                label for="user" { "User" }
                input #user name="user" autocomplete="username" required
                    placeholder="admin, build$<project>+<name> or robot$<project>+<name>";
                label for="password" { "Password or secret" }
                input #password type="password" name="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
            p.hint { "Public projects are readable without signing in." }
        },
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    #[serde(default)]
    csrf: String,
}

pub async fn login(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    use subtle::ConstantTimeEq as _;
    let nonce = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    let again = |status: StatusCode, error: &str| sign_in_failed(&state, &headers, status, error);
    if nonce.is_empty() || !bool::from(nonce.as_bytes().ct_eq(form.csrf.as_bytes())) {
        return again(
            StatusCode::FORBIDDEN,
            "The form had expired or came from another page; sign in again.",
        );
    }
    if let Some(wait) = state.auth.limiter.blocked(session.remote) {
        return again(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "Too many failed sign-ins from this address; try again in {} seconds.",
                wait.as_secs().max(1)
            ),
        );
    }
    let user = form.user.trim();
    let (sub, ver) = match authenticate(&state, user, &form.password).await {
        Some(found) => found,
        None => {
            state.auth.limiter.failed(session.remote);
            tracing::info!(user, remote = ?session.remote, "a dashboard sign-in had wrong credentials");
            return again(
                StatusCode::UNAUTHORIZED,
                "The user name or password is wrong.",
            );
        }
    };
    let Ok(token) = state.session_token(&sub, ver) else {
        return again(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot sign a session now.",
        );
    };
    let project = sub
        .split_once('$')
        .and_then(|(_, r)| r.rsplit_once('+'))
        .map(|(p, _)| p.to_owned());
    if let Err(e) = state
        .meta
        .audit(&NewAuditEntry {
            principal: sub,
            action: "ui.login".into(),
            project,
            target: None,
            detail: None,
            remote_addr: session.remote.map(|r| r.to_string()),
        })
        .await
    {
        tracing::warn!(error = %e, "cannot audit a sign-in");
    }
    let mut r = Redirect::to("/ui/").into_response();
    let secure = over_tls(&headers);
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &token, SESSION_SECS, secure),
    );
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0, secure));
    r
}

/// The session's subject and version for a user name and secret.
async fn authenticate(state: &AppState, user: &str, secret: &str) -> Option<(String, Option<i64>)> {
    if parse_build_token_name(user).is_some() {
        let t = state.build_token_login(user, secret).await.ok()??;
        return Some((user.to_owned(), Some(t.id)));
    }
    match state.login(user, secret).await.ok()? {
        Some((Principal::Builder, _)) => None,
        // A personal token's limits would not carry over to a session:
        // people sign in here with the directory's password.
        Some((Principal::Person { .. }, _)) => None,
        Some((p, ver)) => Some((p.subject(), ver)),
        None => person_sign_in(state, user, secret).await,
    }
}

/// A person signing in with the directory's password: their memberships
/// synced, as `POST /api/v1/sign-in` does.
async fn person_sign_in(
    state: &AppState,
    user: &str,
    password: &str,
) -> Option<(String, Option<i64>)> {
    let directory = state.directory.as_ref()?;
    // Directories match uids without case: one person, one name.
    let user = &user.to_ascii_lowercase();
    if crate::auth::people::RESERVED.contains(&user.as_str()) {
        return None;
    }
    let answer = match directory.sign_in(user, password).await {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(user, error = %e, "a dashboard sign-in was refused by the directory");
            return None;
        }
    };
    state.directory_signed_in(&answer).await.ok()?;
    state.person(&answer.user).await.ok()??;
    Some((answer.user, None))
}

pub async fn logout(
    session: Session,
    headers: HeaderMap,
    Form(form): Form<super::CsrfForm>,
) -> Response {
    if !csrf_ok(&session, &form.csrf) {
        return super::forged(&session);
    }
    let mut r = Redirect::to("/ui/").into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", 0, over_tls(&headers)),
    );
    r
}

/// "Sign in with <provider>": off to the provider's authorization endpoint,
/// the state kept in a cookie for the way back.
pub async fn oidc_start(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
) -> Response {
    let Some(provider) = state.oidc.clone() else {
        return sign_in_failed(
            &state,
            &headers,
            StatusCode::NOT_FOUND,
            "no OpenID Connect provider is configured",
        );
    };
    let base = [
        provider.public_url(),
        state.config.builds.public_url.as_str(),
    ]
    .into_iter()
    .find(|u| !u.is_empty())
    .map(|u| u.trim_end_matches('/').to_owned())
    .unwrap_or_else(|| crate::server::request_base(&headers));
    let redirect = format!("{base}/ui/sign-in/oidc/callback");
    match state
        .oidc_begin(
            crate::auth::oidc::DASHBOARD,
            &redirect,
            session.remote,
            None,
        )
        .await
    {
        Ok(begun) => {
            let mut r = Redirect::to(&begun.authorization_url).into_response();
            r.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(
                    OIDC_COOKIE,
                    &begun.state,
                    crate::auth::oidc::WINDOW_MS / 1000,
                    over_tls(&headers),
                ),
            );
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start an OpenID Connect sign-in");
            sign_in_failed(
                &state,
                &headers,
                StatusCode::SERVICE_UNAVAILABLE,
                &e.to_string(),
            )
        }
    }
}

#[derive(Deserialize)]
pub struct OidcBack {
    #[serde(default)]
    state: String,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The provider sends the person back here: the state must be this
/// browser's, then the code is exchanged and the ID token checked.
pub async fn oidc_callback(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    axum::extract::Query(back): axum::extract::Query<OidcBack>,
) -> Response {
    use subtle::ConstantTimeEq as _;
    let client = crate::auth::oidc::DASHBOARD;
    let mine = cookie(&headers, OIDC_COOKIE).unwrap_or_default();
    if mine.is_empty() || !bool::from(mine.as_bytes().ct_eq(back.state.as_bytes())) {
        // A sign-in this browser did not start (a link someone sent):
        // finishing it would sign this browser in as someone else.
        let refusal = crate::identity::oidc::OidcError::BadState(
            "this sign-in was not started in this browser: sign in again".to_owned(),
        );
        // Burnt: the code in this address (seen by whoever sent the link,
        // or leaked from it) cannot finish the sign-in anywhere else now.
        if !back.state.is_empty() {
            let _ = state
                .meta
                .sign_in_request_use(
                    &crate::auth::oidc::state_hash(&back.state),
                    slipway_storage::meta::now_ms(),
                )
                .await;
        }
        state.oidc_refused(client, &refusal, session.remote).await;
        return sign_in_failed(
            &state,
            &headers,
            StatusCode::UNAUTHORIZED,
            &refusal.to_string(),
        );
    }
    let returned = crate::auth::oidc::Returned {
        state: &back.state,
        code: back.code.as_deref(),
        error: back.error.as_deref(),
        error_description: back.error_description.as_deref(),
        proof: None,
    };
    let answer = match state.oidc_finish(client, returned, session.remote).await {
        Ok(a) => a,
        Err(e) => {
            use crate::identity::oidc::OidcError;
            let status = match e {
                OidcError::Refused(_) | OidcError::BadState(_) => StatusCode::UNAUTHORIZED,
                OidcError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            return sign_in_failed(&state, &headers, status, &e.to_string());
        }
    };
    let Ok(token) = state.session_token(&answer.user, None) else {
        return sign_in_failed(
            &state,
            &headers,
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot sign a session now",
        );
    };
    let secure = over_tls(&headers);
    let mut r = Redirect::to("/ui/").into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &token, SESSION_SECS, secure),
    );
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(OIDC_COOKIE, "", 0, secure));
    r
}

/// The sign-in page again, saying why (the sentence capitalised), with a
/// fresh form and the provider's state cookie cleared.
fn sign_in_failed(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    why: &str,
) -> Response {
    let fresh = crate::auth::secrets::generate();
    let mut sentence = why.to_owned();
    if let Some(first) = sentence.get(..1) {
        sentence.replace_range(..1, &first.to_uppercase());
    }
    if !sentence.ends_with('.') {
        sentence.push('.');
    }
    let secure = over_tls(headers);
    let mut r = (status, login_page(state, &fresh, Some(&sentence))).into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &fresh, 3600, secure),
    );
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(OIDC_COOKIE, "", 0, secure));
    r
}
