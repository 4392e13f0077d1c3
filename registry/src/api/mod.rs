//! The admin API under `/api/v1`: projects, robots, the audit log; its
//! OpenAPI document at `/api/v1/openapi.json`.
//!
//! Every route but the document and the webhook receiver needs the admin
//! (Basic credentials or a bearer token from `/auth/token`) or, where
//! builds are concerned, a project's build token; the receiver checks the
//! forge's signature over the body instead. Errors are `{"error": "<sentence>"}`;
//! the status comes from the same table as on `/v2` (`ApiError`).

pub mod audit;
pub mod builds;
pub mod images;
pub mod me;
pub mod members;
pub mod projects;
pub mod rebase;
pub mod robots;
pub mod storage;
pub mod triggers;

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Serialize;
use slipway_storage::StorageError;
use slipway_storage::meta::NewAuditEntry;
use utoipa::OpenApi;

use crate::auth::{Caller, Credentials, Principal, parse_authorization};
use crate::error::ApiError;
use crate::server::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Slipway admin API", description = "Projects, robot accounts, builds, stack rebase and the audit log."),
    paths(
        projects::list, projects::create, projects::get, projects::update, projects::delete,
        robots::list, robots::create, robots::get, robots::update, robots::rotate, robots::delete,
        members::list, members::grant, members::revoke, members::people, members::person,
        members::unbind_subject,
        me::sign_in, me::sign_in_options, me::oidc_start, me::oidc_callback,
        me::oidc_device_start, me::oidc_device_poll, me::me, me::tokens, me::token_create, me::token_delete,
        me::person_tokens, me::person_token_delete,
        audit::list,
        storage::project_usage, storage::all_usage, storage::recompute, storage::gc, storage::fsck, storage::backup,
        builds::start, builds::list, builds::latest, builds::get, builds::cancel, builds::retry,
        builds::delete, builds::logs, builds::tokens, builds::token_create, builds::token_delete,
        builds::builders, builds::builder_approve, builds::builder_revoke,
        rebase::rebase,
        triggers::secrets_list, triggers::secret_set, triggers::secret_delete,
        triggers::create, triggers::list, triggers::list_all, triggers::get, triggers::update,
        triggers::delete, triggers::deliveries, triggers::receive,
        images::list, images::clean_all, images::clean_one,
    ),
    components(schemas(
        ErrorBody,
        projects::ProjectView, projects::NewProject, projects::ProjectUpdate,
        projects::BuildLimitsView, projects::BuildLimitsUpdate,
        robots::RobotView, robots::NewRobot, robots::RobotUpdateBody, robots::RobotSecret,
        members::MemberView, members::PersonView, members::MemberBody,
        me::SignIn, me::SignInOptions, me::OidcStart, me::OidcStarted, me::OidcReturn, me::DeviceStartedView, me::DevicePollBody,
        me::SessionView, me::MeView, me::TokenView, me::TokenSecret, me::NewToken,
        audit::AuditPage, audit::AuditView,
        storage::UsageView, storage::RecomputeReport, storage::DriftView, storage::GcRequest,
        storage::GcReportView, storage::GcManifestView, storage::FsckRequest,
        storage::FsckReportView, storage::QuarantinedView, storage::BackupRequest,
        crate::backup::BackupReport,
        builds::BuildView, builds::NewBuild, builds::LogLineView, builds::BuildTokenView,
        builds::BuildTokenSecret, builds::NewBuildToken, builds::BuilderView, builds::BuilderBody,
        rebase::RebaseRequest, crate::rebase::FleetReport, crate::rebase::ImageReport,
        triggers::SecretView, triggers::SecretBody, triggers::TriggerView, triggers::TriggerSecret,
        triggers::NewTrigger, triggers::TriggerUpdate, triggers::TriggerUpdated,
        triggers::DeliveryView, triggers::HookAnswer,
        images::ImageView, images::ImagesView, images::CleanReport,
    )),
    modifiers(&BasicAuth),
    security(("basic" = [])),
)]
pub struct ApiDoc;

struct BasicAuth;

impl utoipa::Modify for BasicAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route(
            "/api/v1/projects",
            get(projects::list).post(projects::create),
        )
        .route(
            "/api/v1/projects/{project}",
            get(projects::get)
                .patch(projects::update)
                .delete(projects::delete),
        )
        .route(
            "/api/v1/projects/{project}/robots",
            get(robots::list).post(robots::create),
        )
        .route("/api/v1/projects/{project}/members", get(members::list))
        .route(
            "/api/v1/projects/{project}/members/{person}",
            put(members::grant).delete(members::revoke),
        )
        .route("/api/v1/people", get(members::people))
        .route("/api/v1/people/{person}", get(members::person))
        .route(
            "/api/v1/people/{person}/oidc-subject",
            axum::routing::delete(members::unbind_subject),
        )
        .route("/api/v1/people/{person}/tokens", get(me::person_tokens))
        .route(
            "/api/v1/people/{person}/tokens/{id}",
            axum::routing::delete(me::person_token_delete),
        )
        .route(
            "/api/v1/sign-in",
            get(me::sign_in_options).post(me::sign_in),
        )
        .route("/api/v1/sign-in/oidc", post(me::oidc_start))
        .route("/api/v1/sign-in/oidc/callback", post(me::oidc_callback))
        .route("/api/v1/sign-in/oidc/device", post(me::oidc_device_start))
        .route(
            "/api/v1/sign-in/oidc/device/poll",
            post(me::oidc_device_poll),
        )
        .route("/api/v1/me", get(me::me))
        .route("/api/v1/me/tokens", get(me::tokens).post(me::token_create))
        .route(
            "/api/v1/me/tokens/{id}",
            axum::routing::delete(me::token_delete),
        )
        .route(
            "/api/v1/projects/{project}/robots/{robot}",
            get(robots::get)
                .patch(robots::update)
                .delete(robots::delete),
        )
        .route(
            "/api/v1/projects/{project}/robots/{robot}/rotate",
            post(robots::rotate),
        )
        .route("/api/v1/audit", get(audit::list))
        .route(
            "/api/v1/projects/{project}/usage",
            get(storage::project_usage),
        )
        .route("/api/v1/usage", get(storage::all_usage))
        .route("/api/v1/usage/recompute", post(storage::recompute))
        .route("/api/v1/gc", post(storage::gc))
        .route("/api/v1/fsck", post(storage::fsck))
        .route("/api/v1/backup", post(storage::backup))
        .route(
            "/api/v1/projects/{project}/builds",
            get(builds::list).post(builds::start),
        )
        .route(
            "/api/v1/projects/{project}/builds/latest",
            get(builds::latest),
        )
        .route(
            "/api/v1/projects/{project}/builds/{id}",
            get(builds::get).delete(builds::delete),
        )
        .route(
            "/api/v1/projects/{project}/builds/{id}/logs",
            get(builds::logs),
        )
        .route(
            "/api/v1/projects/{project}/builds/{id}/cancel",
            post(builds::cancel),
        )
        .route(
            "/api/v1/projects/{project}/builds/{id}/retry",
            post(builds::retry),
        )
        .route(
            "/api/v1/projects/{project}/build-tokens",
            get(builds::tokens).post(builds::token_create),
        )
        .route(
            "/api/v1/projects/{project}/build-tokens/{name}",
            axum::routing::delete(builds::token_delete),
        )
        .route(
            "/api/v1/builders",
            get(builds::builders)
                .post(builds::builder_approve)
                .delete(builds::builder_revoke),
        )
        .route("/api/v1/admin/rebase", post(rebase::rebase))
        .route(
            "/api/v1/projects/{project}/secrets",
            get(triggers::secrets_list),
        )
        .route(
            "/api/v1/projects/{project}/secrets/{name}",
            axum::routing::put(triggers::secret_set).delete(triggers::secret_delete),
        )
        .route(
            "/api/v1/projects/{project}/triggers",
            get(triggers::list).post(triggers::create),
        )
        .route(
            "/api/v1/projects/{project}/images",
            get(images::list).delete(images::clean_all),
        )
        .route(
            "/api/v1/projects/{project}/images/{name}",
            axum::routing::delete(images::clean_one),
        )
        .route("/api/v1/triggers", get(triggers::list_all))
        .route(
            "/api/v1/triggers/{id}",
            get(triggers::get)
                .patch(triggers::update)
                .delete(triggers::delete),
        )
        .route(
            "/api/v1/triggers/{id}/deliveries",
            get(triggers::deliveries),
        )
        // The forges' deliveries: no credentials, a signature over the body.
        .route("/api/v1/hooks/{id}", post(triggers::receive))
        .fallback(|| async {
            Error::new(StatusCode::NOT_FOUND, "no such endpoint in the admin API")
        })
}

async fn openapi() -> Response {
    match ApiDoc::openapi().to_pretty_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `{"error": "<sentence>"}`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug)]
pub struct Error {
    status: StatusCode,
    pub(crate) message: String,
    pub(crate) challenge: bool,
}

impl Error {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn new(status: StatusCode, message: impl Into<String>) -> Error {
        Error {
            status,
            message: message.into(),
            challenge: false,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Error::new(e.status, e.message)
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(ErrorBody {
                error: self.message.clone(),
            }),
        )
            .into_response();
        if self.challenge {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"slipway\""),
            );
        }
        if self.status.is_server_error() {
            resp.extensions_mut()
                .insert(crate::error::ErrorCause(self.message));
        }
        resp
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Anyone with valid credentials: the admin, a robot, a person with a
/// session (the CLI's `slipway login`) or a personal token that is not
/// pull-only. Routes check what the caller may do with
/// [`AppState::may`].
pub struct Signed(pub Caller);

impl FromRequestParts<AppState> for Signed {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Signed> {
        let caller = authenticate(parts, state).await?;
        // Mutual TLS: the admin's powers need the client certificate on
        // every route, the maintainers' ones included.
        if caller.principal.is_admin() && state.config.tls.mutual() && !client_certified(parts) {
            return Err(mutual_tls_needed());
        }
        if caller
            .principal
            .personal_token()
            .is_some_and(|t| t.pull_only)
        {
            return Err(Error::new(
                StatusCode::FORBIDDEN,
                "this personal token is pull-only: it cannot use the API",
            ));
        }
        Ok(Signed(caller))
    }
}

/// The caller of an API route, authenticated (Basic credentials, a bearer
/// token from `/auth/token`, or a person's session token).
async fn authenticate(parts: &mut Parts, state: &AppState) -> Result<Caller> {
    let remote = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let unauthorized = || Error {
        status: StatusCode::UNAUTHORIZED,
        message: "the API needs credentials: the admin's, a robot's, or a person's \
                  (`slipway login`)"
            .into(),
        challenge: true,
    };
    let principal = match parse_authorization(&parts.headers) {
        Credentials::Basic(user, secret) => {
            // Without the client certificate the admin's password is not
            // even looked at (no answer tells whether it was right).
            if user == crate::auth::ADMIN && state.config.tls.mutual() && !client_certified(parts) {
                return Err(mutual_tls_needed());
            }
            if let Some(wait) = state.auth.limiter.blocked(remote) {
                return Err(Error::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "too many failed logins from this address; try again in {} seconds",
                        wait.as_secs().max(1)
                    ),
                ));
            }
            match state.login(&user, &secret).await? {
                Some((p, _)) => p,
                None => {
                    state.auth.limiter.failed(remote);
                    return Err(unauthorized());
                }
            }
        }
        Credentials::Bearer(token) => {
            let claims = state.api_claims(&token).ok_or_else(unauthorized)?;
            state
                .token_principal(&claims)
                .await?
                .ok_or_else(unauthorized)?
        }
        Credentials::None | Credentials::Invalid => return Err(unauthorized()),
    };
    if principal == Principal::Anonymous {
        return Err(unauthorized());
    }
    Ok(Caller { principal, remote })
}

pub(crate) fn client_certified(parts: &Parts) -> bool {
    parts
        .extensions
        .get::<crate::tls::ClientCertificate>()
        .is_some()
}

pub(crate) fn mutual_tls_needed() -> Error {
    Error::new(
        StatusCode::FORBIDDEN,
        "the admin API needs a client certificate signed by an authority in \
         tls.client_ca_file, over HTTPS",
    )
}

/// The admin (or a person in the directory's admin group), authenticated.
/// Extracting it refuses everyone else.
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Admin> {
        // Mutual TLS: without the client certificate, the admin's password
        // is not even looked at.
        if state.config.tls.mutual() && !client_certified(parts) {
            return Err(mutual_tls_needed());
        }
        let Signed(caller) = Signed::from_request_parts(parts, state).await?;
        if !caller.principal.is_admin() {
            return Err(Error::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{} may not use the admin API; only the admin may",
                    caller.principal.subject()
                ),
            ));
        }
        Ok(Admin(caller))
    }
}

/// Records an admin action. A failure to record is reported to the caller
/// (the database is then failing, and the caller should look).
pub async fn audit(
    state: &AppState,
    caller: &Caller,
    action: &str,
    project: Option<&str>,
    target: &str,
    detail: serde_json::Value,
) -> Result<()> {
    state
        .meta
        .audit(&NewAuditEntry {
            principal: caller.principal.subject(),
            action: action.to_owned(),
            project: project.map(str::to_owned),
            target: Some(target.to_owned()),
            detail: Some(detail.to_string()),
            remote_addr: caller.remote.map(|r| r.to_string()),
        })
        .await?;
    Ok(())
}

/// Epoch milliseconds as RFC 3339, for people.
pub fn time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Refuses (403, audited as `denied`) a caller who may not exercise
/// `right` on `project`.
pub async fn require(
    state: &AppState,
    caller: &Caller,
    project: &str,
    right: crate::auth::people::Right,
) -> Result<()> {
    if state.may(&caller.principal, project, right).await? {
        return Ok(());
    }
    audit(
        state,
        caller,
        "denied",
        Some(project),
        project,
        serde_json::json!({"needed": right.describe()}),
    )
    .await?;
    Err(Error::new(
        StatusCode::FORBIDDEN,
        format!(
            "{} may not {} project {project:.100}",
            caller.principal.subject(),
            right.describe()
        ),
    ))
}
