//! The audit log: who did what, when, from where.

use sqlx::Row;

use super::{Metadata, now_ms};
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub id: i64,
    /// Epoch milliseconds.
    pub at: i64,
    pub principal: String,
    pub action: String,
    pub project: Option<String>,
    pub target: Option<String>,
    /// A JSON object with action-specific facts (never secrets).
    pub detail: Option<String>,
    pub remote_addr: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct NewAuditEntry {
    pub principal: String,
    pub action: String,
    pub project: Option<String>,
    pub target: Option<String>,
    pub detail: Option<String>,
    pub remote_addr: Option<String>,
}

/// Filters for listing, newest first. `before_id` pages backwards.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub project: Option<String>,
    pub principal: Option<String>,
    pub action: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub before_id: Option<i64>,
    pub limit: u32,
}

impl Metadata {
    pub async fn audit(&self, e: &NewAuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, principal, action, project, target, detail, remote_addr) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(now_ms())
        .bind(&e.principal)
        .bind(&e.action)
        .bind(e.project.as_deref())
        .bind(e.target.as_deref())
        .bind(e.detail.as_deref())
        .bind(e.remote_addr.as_deref())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub async fn audit_list(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at, principal, action, project, target, detail, remote_addr FROM audit_log \
             WHERE ($1 IS NULL OR project = $1) AND ($2 IS NULL OR principal = $2) \
             AND ($3 IS NULL OR action = $3) AND ($4 IS NULL OR at >= $4) \
             AND ($5 IS NULL OR at < $5) AND ($6 IS NULL OR id < $6) \
             ORDER BY id DESC LIMIT $7",
        )
        .bind(q.project.as_deref())
        .bind(q.principal.as_deref())
        .bind(q.action.as_deref())
        .bind(q.since)
        .bind(q.until)
        .bind(q.before_id)
        .bind(q.limit.clamp(1, 1000) as i64)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AuditEntry {
                id: r.get(0),
                at: r.get(1),
                principal: r.get(2),
                action: r.get(3),
                project: r.get(4),
                target: r.get(5),
                detail: r.get(6),
                remote_addr: r.get(7),
            })
            .collect())
    }
}
