//! `/api/v1/audit`: the audit log, newest first, in pages.

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use slipway_storage::meta::{AuditEntry, AuditQuery};

use super::{Admin, Error, ErrorBody, Result, time};
use crate::server::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub project: Option<String>,
    pub principal: Option<String>,
    pub action: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only entries before this time (RFC 3339).
    pub until: Option<String>,
    /// Only entries older than this id (the previous page's `next_before`).
    pub before: Option<i64>,
    /// At most this many entries (default 100, at most 1000).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at: String,
    pub principal: String,
    pub action: String,
    pub project: Option<String>,
    pub target: Option<String>,
    pub detail: Option<serde_json::Value>,
    pub remote_addr: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditView>,
    /// Pass as `before` to get the next (older) page; absent on the last.
    pub next_before: Option<i64>,
}

fn parse_time(name: &str, value: Option<&str>) -> Result<Option<i64>> {
    value
        .map(|v| {
            humantime::parse_rfc3339_weak(v)
                .map(|t| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0)
                })
                .map_err(|_| {
                    Error::bad_request(format!(
                        "{name} must be a time like 2026-11-23T10:00:00Z, not {v:.50}"
                    ))
                })
        })
        .transpose()
}

fn view(e: AuditEntry) -> AuditView {
    AuditView {
        id: e.id,
        at: time(e.at),
        principal: e.principal,
        action: e.action,
        project: e.project,
        target: e.target,
        detail: e.detail.and_then(|d| serde_json::from_str(&d).ok()),
        remote_addr: e.remote_addr,
    }
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(Params),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    Query(p): Query<Params>,
) -> Result<Json<AuditPage>> {
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let q = AuditQuery {
        project: p.project,
        principal: p.principal,
        action: p.action,
        since: parse_time("since", p.since.as_deref())?,
        until: parse_time("until", p.until.as_deref())?,
        before_id: p.before,
        limit,
    };
    let entries = state.meta.audit_list(&q).await?;
    let next_before = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(AuditPage {
        entries: entries.into_iter().map(view).collect(),
        next_before,
    }))
}
