//! The OCI distribution API under `/v2/`.
//!
//! One route takes every `/v2/…` path; [`path::parse`] names the endpoint and
//! [`dispatch`] picks the handler by endpoint and method.

pub mod blobs;
pub mod listing;
pub mod manifests;
pub mod path;
pub mod uploads;

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use slipway_storage::{Digest, RepoName};

use crate::auth::{Actions, Caller, Need};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::server::AppState;
use path::{Endpoint, PathError};
use slipway_storage::meta::NewAuditEntry;

pub const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
pub const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
pub const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
pub const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
pub const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

pub async fn dispatch(State(state): State<AppState>, req: Request) -> Response {
    let mut resp = match route(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    resp.headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    resp
}

async fn route(state: AppState, req: Request) -> ApiResult<Response> {
    let path = req.uri().path().to_owned();
    let rest = if path == "/v2" {
        ""
    } else {
        path.strip_prefix("/v2/").unwrap_or("")
    };
    let endpoint = match path::parse(rest) {
        Ok(e) => e,
        Err(PathError::Encoded) => {
            return Err(ApiError::bad_request(
                ErrorCode::NameInvalid,
                "repository names, tags, digests and upload ids never contain '%'",
            ));
        }
        Err(PathError::NotFound) => {
            return Err(ApiError::not_found(
                ErrorCode::NameUnknown,
                format!("no endpoint of the distribution API matches {path:.300}"),
            ));
        }
    };
    let method = req.method().clone();
    let head = method == Method::HEAD;
    let Some(need) = need(&endpoint, &method) else {
        let allow = allowed(&endpoint);
        return Err(ApiError::unsupported(format!(
            "{method} is not supported on this endpoint; use {allow}"
        ))
        .with_header(header::ALLOW, allow));
    };
    if let Some(name) = endpoint.name() {
        repo_name(name)?;
    }
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let caller = state.authorize(req.headers(), remote, need).await?;
    match (&endpoint, &method) {
        (Endpoint::Base, &Method::GET | &Method::HEAD) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], "{}").into_response())
        }
        (Endpoint::Catalog, &Method::GET) => listing::catalog(&state, &caller, req.uri()).await,
        (Endpoint::Tags { name }, &Method::GET) => listing::tags(&state, name, req.uri()).await,
        (Endpoint::Referrers { name, digest }, &Method::GET) => {
            listing::referrers(&state, name, digest, req.uri()).await
        }
        (Endpoint::Manifest { name, reference }, &Method::GET | &Method::HEAD) => {
            manifests::get(&state, name, reference, req.headers(), head).await
        }
        (Endpoint::Manifest { name, reference }, &Method::PUT) => {
            manifests::put(&state, &caller, name, reference, req).await
        }
        (Endpoint::Manifest { name, reference }, &Method::DELETE) => {
            manifests::delete(&state, &caller, name, reference).await
        }
        (Endpoint::Blob { name, digest }, &Method::GET | &Method::HEAD) => {
            blobs::get(&state, &caller, name, digest, req.headers(), head).await
        }
        (Endpoint::Blob { name, digest }, &Method::DELETE) => {
            blobs::delete(&state, &caller, name, digest).await
        }
        (Endpoint::UploadStart { name }, &Method::POST) => {
            uploads::start(&state, &caller, name, req).await
        }
        (Endpoint::Upload { name, id }, &Method::GET) => uploads::status(&state, name, id).await,
        (Endpoint::Upload { name, id }, &Method::PATCH) => {
            uploads::patch(&state, name, id, req).await
        }
        (Endpoint::Upload { name, id }, &Method::PUT) => {
            uploads::finish(&state, name, id, req).await
        }
        (Endpoint::Upload { name, id }, &Method::DELETE) => uploads::cancel(&state, name, id).await,
        _ => unreachable!("need() accepts only the pairs handled here"),
    }
}

/// What a request on `endpoint` with `method` needs; `None` when the
/// method is not supported there.
///
/// Anonymous reads of public content are answered without a token round
/// trip — except a blob `HEAD`. Pull clients `GET` blobs; a `HEAD` on a blob
/// is how pushers (containerd, BuildKit, nerdctl, skopeo, podman) ask
/// whether to upload it. containerd sends credentials only after a
/// challenge, and cannot send a manifest body twice: had its blob `HEAD`s
/// been answered anonymously, its first challenge would come on the
/// manifest `PUT`, whose retry never comes (the push hangs). Challenging
/// the `HEAD` (401 with the pull scope; an anonymous token from
/// `/auth/token` is enough for it) makes it authenticate before it pushes,
/// as every request on a registry with token auth (CNCF distribution)
/// does. Pulls are not slowed: they do not `HEAD` blobs.
fn need<'a>(endpoint: &Endpoint<'a>, method: &Method) -> Option<Need<'a>> {
    let repo = |name: &'a str, actions| {
        Some(Need::Repository {
            name,
            actions,
            open: true,
        })
    };
    let read = *method == Method::GET || *method == Method::HEAD;
    match endpoint {
        Endpoint::Blob { name, .. } if *method == Method::HEAD => Some(Need::Repository {
            name,
            actions: Actions::PULL,
            open: false,
        }),
        Endpoint::Base if read => Some(Need::Login),
        Endpoint::Catalog if *method == Method::GET => Some(Need::Catalog),
        Endpoint::Tags { name } | Endpoint::Referrers { name, .. } if *method == Method::GET => {
            repo(name, Actions::PULL)
        }
        Endpoint::Manifest { name, .. } | Endpoint::Blob { name, .. } if read => {
            repo(name, Actions::PULL)
        }
        Endpoint::Manifest { name, .. } if *method == Method::PUT => repo(name, Actions::PUSH),
        Endpoint::Manifest { name, .. } | Endpoint::Blob { name, .. }
            if *method == Method::DELETE =>
        {
            repo(name, Actions::DELETE)
        }
        Endpoint::UploadStart { name } if *method == Method::POST => repo(name, Actions::PUSH),
        Endpoint::Upload { name, .. }
            if matches!(
                *method,
                Method::GET | Method::PATCH | Method::PUT | Method::DELETE
            ) =>
        {
            repo(name, Actions::PUSH)
        }
        _ => None,
    }
}

/// Records an action in the audit log; a failure to record is logged, not
/// returned (the action itself already happened).
pub(crate) async fn audit(
    state: &AppState,
    caller: &Caller,
    action: &str,
    repo: &RepoName,
    target: String,
    detail: serde_json::Value,
) {
    let entry = NewAuditEntry {
        principal: caller.principal.subject(),
        action: action.to_owned(),
        project: Some(repo.project().to_owned()),
        target: Some(target),
        detail: Some(detail.to_string()),
        remote_addr: caller.remote.map(|r| r.to_string()),
    };
    if let Err(e) = state.meta.audit(&entry).await {
        tracing::error!(error = %e, action, "writing the audit log failed");
    }
}

fn allowed(e: &Endpoint<'_>) -> &'static str {
    match e {
        Endpoint::Base => "GET, HEAD",
        Endpoint::Catalog | Endpoint::Tags { .. } | Endpoint::Referrers { .. } => "GET",
        Endpoint::Manifest { .. } => "GET, HEAD, PUT, DELETE",
        Endpoint::Blob { .. } => "GET, HEAD, DELETE",
        Endpoint::UploadStart { .. } => "POST",
        Endpoint::Upload { .. } => "GET, PATCH, PUT, DELETE",
    }
}

pub(crate) fn repo_name(name: &str) -> ApiResult<RepoName> {
    Ok(RepoName::parse(name)?)
}

pub(crate) fn digest(s: &str) -> ApiResult<Digest> {
    Ok(s.parse::<Digest>()?)
}

/// Query parameters in order, decoded.
pub(crate) fn query_pairs(uri: &axum::http::Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn query_param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A response with no body and the given headers.
pub(crate) fn empty(status: StatusCode, headers: HeaderMap) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

pub(crate) fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}
