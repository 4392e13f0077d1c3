//! Content discovery: tags, the catalog, and referrers.

use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use slipway_storage::StorageError;

use super::{OCI_FILTERS_APPLIED, digest, query_pairs, query_param, repo_name, set};
use std::collections::HashMap;

use crate::auth::{Actions, Caller, project_of};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::manifest::OCI_INDEX;
use crate::server::AppState;

/// Most entries in one page, whatever `n` asks for.
const MAX_PAGE: u32 = 10_000;

/// Reads `n` and `last`.
fn page(uri: &Uri) -> ApiResult<(Option<u32>, Option<String>)> {
    let pairs = query_pairs(uri);
    let n = match query_param(&pairs, "n") {
        None | Some("") => None,
        Some(v) => Some(v.parse::<u32>().map_err(|_| {
            ApiError::bad_request(
                ErrorCode::Unsupported,
                format!("n must be a non-negative integer, not {v:.50}"),
            )
        })?),
    };
    let last = query_param(&pairs, "last").map(str::to_owned);
    Ok((n, last))
}

/// Lists with `n`/`last` pagination and a `Link` to the next page.
fn paged(
    path: &str,
    key: &str,
    extra: Value,
    mut items: Vec<String>,
    limit: u32,
    asked: Option<u32>,
) -> Response {
    let mut headers = HeaderMap::new();
    if items.len() > limit as usize {
        items.truncate(limit as usize);
        if let Some(last) = items.last() {
            let n = asked.unwrap_or(limit);
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("n", &n.to_string())
                .append_pair("last", last)
                .finish();
            set(
                &mut headers,
                header::LINK,
                &format!("<{path}?{query}>; rel=\"next\""),
            );
        }
    }
    let mut body = extra;
    body[key] = json!(items);
    set(&mut headers, header::CONTENT_TYPE, "application/json");
    (StatusCode::OK, headers, body.to_string()).into_response()
}

pub async fn tags(state: &AppState, name: &str, uri: &Uri) -> ApiResult<Response> {
    let repo = repo_name(name)?;
    let (n, last) = page(uri)?;
    let limit = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let tags = if limit == 0 {
        if state.meta.repo_id(&repo).await?.is_none() {
            return Err(StorageError::RepositoryUnknown(repo.to_string()).into());
        }
        Vec::new()
    } else {
        state
            .meta
            .tags(&repo, last.as_deref(), limit + 1)
            .await?
            .ok_or_else(|| ApiError::from(StorageError::RepositoryUnknown(repo.to_string())))?
    };
    Ok(paged(
        &format!("/v2/{repo}/tags/list"),
        "tags",
        json!({"name": repo.as_str()}),
        tags,
        limit,
        n,
    ))
}

/// The repositories the caller may pull from, in pages.
pub async fn catalog(state: &AppState, caller: &Caller, uri: &Uri) -> ApiResult<Response> {
    let (n, last) = page(uri)?;
    let limit = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let mut repos = Vec::new();
    let mut cursor = last;
    let mut verdicts: HashMap<String, bool> = HashMap::new();
    while limit > 0 && repos.len() <= limit as usize {
        let batch = state.meta.catalog(cursor.as_deref(), limit + 1).await?;
        let done = batch.len() <= limit as usize;
        for name in batch {
            let project = project_of(&name).to_owned();
            let visible = match verdicts.get(&project) {
                Some(v) => *v,
                None => {
                    let v = state
                        .allowed(&caller.principal, &project)
                        .await?
                        .contains(Actions::PULL);
                    verdicts.insert(project, v);
                    v
                }
            };
            cursor = Some(name.clone());
            if visible {
                repos.push(name);
            }
        }
        if done {
            break;
        }
    }
    Ok(paged(
        "/v2/_catalog",
        "repositories",
        json!({}),
        repos,
        limit,
        n,
    ))
}

pub async fn referrers(
    state: &AppState,
    name: &str,
    digest_str: &str,
    uri: &Uri,
) -> ApiResult<Response> {
    let repo = repo_name(name)?;
    let subject = digest(digest_str)?;
    let pairs = query_pairs(uri);
    let artifact_type = query_param(&pairs, "artifactType").filter(|s| !s.is_empty());
    let found = state.meta.referrers(&repo, &subject, artifact_type).await?;
    let manifests: Vec<Value> = found
        .into_iter()
        .map(|r| {
            let mut d = json!({
                "mediaType": r.media_type,
                "digest": r.digest,
                "size": r.size,
            });
            if let Some(t) = r.artifact_type {
                d["artifactType"] = json!(t);
            }
            if let Some(a) = r
                .annotations
                .and_then(|a| serde_json::from_str::<Value>(&a).ok())
            {
                d["annotations"] = a;
            }
            d
        })
        .collect();
    let body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let mut headers = HeaderMap::new();
    set(&mut headers, header::CONTENT_TYPE, OCI_INDEX);
    if artifact_type.is_some() {
        set(&mut headers, OCI_FILTERS_APPLIED, "artifactType");
    }
    Ok((StatusCode::OK, headers, body.to_string()).into_response())
}
