//! `/auth/token`: the Docker registry token endpoint.
//!
//! `GET` with Basic credentials or none (anonymous), `POST` with an OAuth2
//! form (`grant_type=password` or `refresh_token`). Scopes may be repeated
//! and space-separated. The token lists, per requested repository, the
//! actions the principal may do there: for a logged-in principal all of
//! them, whatever subset was asked (some clients ask for `pull` first and
//! never ask again before pushing); for anonymous, only what was asked.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use slipway_storage::RepoName;
use slipway_storage::meta::now_ms;

use super::tokens::{AccessEntry, Claims, TokenUse};
use super::{
    Actions, Credentials, Principal, account_version, parse_authorization, project_of, too_many,
};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::server::AppState;

/// Requested scopes, parsed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scopes {
    pub repositories: Vec<(String, Actions)>,
    pub catalog: bool,
}

/// Parses scope values (`repository:<name>:<actions>`, `registry:catalog:*`),
/// each possibly holding several space-separated scopes. Malformed scopes and
/// unknown types are ignored, as the token spec allows.
pub fn parse_scopes<'a>(values: impl IntoIterator<Item = &'a str>) -> Scopes {
    let mut scopes = Scopes::default();
    for scope in values.into_iter().flat_map(str::split_whitespace) {
        let Some((kind, rest)) = scope.split_once(':') else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        let kind = kind.split('(').next().unwrap_or(kind);
        match kind {
            "repository" if RepoName::parse(name).is_ok() => {
                let actions = Actions::parse(actions);
                match scopes.repositories.iter_mut().find(|(n, _)| n == name) {
                    Some((_, a)) => *a = a.union(actions),
                    None => scopes.repositories.push((name.to_owned(), actions)),
                }
            }
            "registry" if name == "catalog" => scopes.catalog = true,
            _ => {}
        }
    }
    scopes
}

pub async fn token(State(state): State<AppState>, req: Request) -> Response {
    match handle(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(state: &AppState, req: Request) -> ApiResult<Response> {
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let method = req.method().clone();
    let headers = req.headers().clone();
    let query = super::super::v2::query_pairs(req.uri());
    let params: Vec<(String, String)> = if method == Method::POST {
        let body = axum::body::to_bytes(req.into_body(), 64 * 1024)
            .await
            .map_err(|_| bad("the token request body is too large or unreadable"))?;
        form(&body)
    } else if method == Method::GET {
        query
    } else {
        return Err(ApiError::unsupported("use GET or POST on /auth/token"));
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let Some(service) = get("service")
        && service != state.config.auth.service
    {
        return Err(bad(&format!(
            "this registry is service {:?}, not {service:.100}",
            state.config.auth.service
        )));
    }

    if let Some(wait) = state.auth.limiter.blocked(remote) {
        return Err(too_many(wait));
    }
    let (principal, version) = match authenticate(state, &method, &headers, &get).await? {
        Some(p) => p,
        None => {
            state.auth.limiter.failed(remote);
            tracing::info!(
                user = get("username").unwrap_or(""),
                remote = ?remote,
                "a token request had wrong credentials"
            );
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "the user name or password is wrong",
            ));
        }
    };

    let scopes = parse_scopes(
        params
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    );
    let mut access = Vec::new();
    for (name, asked) in &scopes.repositories {
        let allowed = state.allowed(&principal, project_of(name)).await?;
        let granted = if principal == Principal::Anonymous {
            allowed.intersect(*asked)
        } else {
            allowed
        };
        access.push(AccessEntry::repository(name, granted));
    }
    if scopes.catalog {
        access.push(AccessEntry {
            kind: "registry".into(),
            name: "catalog".into(),
            actions: vec!["*".into()],
        });
    }

    let now = now_ms() / 1000;
    let ttl = state.config.auth.token_ttl_secs as i64;
    let claims = Claims {
        iss: state.config.auth.issuer.clone(),
        sub: principal.subject(),
        aud: state.config.auth.service.clone(),
        exp: now + ttl,
        nbf: now,
        iat: now,
        jti: uuid::Uuid::new_v4().simple().to_string(),
        access,
        token_use: TokenUse::Access,
        ver: version,
        pat: principal.personal_token().map(|t| t.id.clone()),
    };
    let token = state
        .auth
        .keys
        .sign(&claims)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let issued_at =
        humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(now as u64));
    let mut body = json!({
        "token": token,
        "access_token": token,
        "expires_in": ttl,
        "issued_at": issued_at.to_string(),
    });
    let offline = get("offline_token") == Some("true")
        || get("access_type") == Some("offline")
        || get("grant_type").is_some();
    if offline && principal != Principal::Anonymous {
        let refresh = Claims {
            exp: now + state.config.auth.refresh_ttl_secs as i64,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            access: Vec::new(),
            token_use: TokenUse::Refresh,
            ..claims
        };
        body["refresh_token"] = json!(
            state
                .auth
                .keys
                .sign(&refresh)
                .map_err(|e| ApiError::internal(e.to_string()))?
        );
    }
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

/// Who the request is from: `Ok(None)` for credentials that do not match.
async fn authenticate<'a>(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    get: &impl Fn(&str) -> Option<&'a str>,
) -> ApiResult<Option<(Principal, Option<i64>)>> {
    if *method == Method::POST {
        return match get("grant_type") {
            Some("password") => {
                let (Some(user), Some(password)) = (get("username"), get("password")) else {
                    return Err(bad("grant_type=password needs username and password"));
                };
                state.login(user, password).await
            }
            Some("refresh_token") => {
                let Some(token) = get("refresh_token") else {
                    return Err(bad("grant_type=refresh_token needs refresh_token"));
                };
                let Ok(claims) = state.auth.keys.verify(token, TokenUse::Refresh) else {
                    return Ok(None);
                };
                refreshed(state, &claims).await
            }
            Some(other) => Err(bad(&format!("grant_type {other:.50} is not supported"))),
            None => Err(bad("a POST to /auth/token needs grant_type")),
        };
    }
    match parse_authorization(headers) {
        Credentials::None => Ok(Some((Principal::Anonymous, None))),
        Credentials::Basic(user, secret) => state.login(&user, &secret).await,
        Credentials::Bearer(_) | Credentials::Invalid => Ok(None),
    }
}

/// The principal of a valid refresh token, if its credentials did not change.
async fn refreshed(
    state: &AppState,
    claims: &Claims,
) -> ApiResult<Option<(Principal, Option<i64>)>> {
    let Some(principal) = state.token_principal(claims).await? else {
        return Ok(None);
    };
    match &principal {
        Principal::Admin | Principal::Builder => {
            let hash = state.meta.account_hash(&principal.subject()).await?;
            let current = hash.as_deref().map(account_version);
            if current.is_none() || current != claims.ver {
                return Ok(None);
            }
        }
        Principal::Anonymous => return Ok(None),
        // Version checked by token_principal; a person's token must hold.
        Principal::Robot { .. } | Principal::Person { .. } => {}
    }
    Ok(Some((principal, claims.ver)))
}

fn form(body: &Bytes) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn bad(message: &str) -> ApiError {
    ApiError::bad_request(ErrorCode::Unsupported, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let s = parse_scopes([
            "repository:tool-a/web:pull repository:tool-b/x:push,pull",
            "repository:tool-a/web:push",
            "registry:catalog:*",
            "repository(plugin):tool-c/p:pull",
            "repository:Bad/Name:pull",
            "nonsense",
            "repository:tool-d:",
        ]);
        assert_eq!(
            s.repositories,
            vec![
                ("tool-a/web".to_string(), Actions::PULL.union(Actions::PUSH)),
                ("tool-b/x".to_string(), Actions::PULL.union(Actions::PUSH)),
                ("tool-c/p".to_string(), Actions::PULL),
                ("tool-d".to_string(), Actions::NONE),
            ]
        );
        assert!(s.catalog);
    }
}
