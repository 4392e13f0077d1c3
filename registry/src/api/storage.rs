//! Usage, recompute, and garbage collection.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use slipway_storage::error::human_bytes;
use slipway_storage::gc::{GcOptions, GcReport};
use slipway_storage::meta::Usage;

use super::{Admin, Error, ErrorBody, Result, audit};
use crate::server::AppState;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageView {
    pub project: String,
    /// Distinct bytes referenced by the project's manifests (base-project
    /// blobs excluded unless this is a base project).
    pub used_bytes: u64,
    /// Bytes held for blobs uploaded or mounted but not yet in a manifest
    /// (and for builds about to export): counted against the quota.
    pub reserved_bytes: u64,
    /// Bytes of uploads in flight: not counted against the quota (judged
    /// when each upload completes), bounded by the upload headroom.
    pub uploading_bytes: u64,
    /// Absent: unlimited.
    pub quota_bytes: Option<u64>,
    /// Distinct blobs (manifests included) the project's manifests reference.
    pub blob_count: u64,
    /// Used bytes as a percentage of the quota.
    pub percent: Option<f64>,
    /// Warning thresholds (percent) the usage has reached.
    pub warnings: Vec<u32>,
    pub base: bool,
    /// `1.9 GiB of 2 GiB (95.0 %)`, for people.
    pub summary: String,
}

pub fn usage_view(u: Usage, thresholds: &[u32]) -> UsageView {
    let percent = u.percent();
    let warnings = match percent {
        Some(p) => thresholds
            .iter()
            .copied()
            .filter(|t| p >= *t as f64)
            .collect(),
        None => Vec::new(),
    };
    let summary = match (u.quota_bytes, percent) {
        (Some(q), Some(p)) => format!(
            "{} of {} ({p:.1} %)",
            human_bytes(u.used_bytes),
            human_bytes(q)
        ),
        _ => format!("{} (no quota)", human_bytes(u.used_bytes)),
    };
    UsageView {
        project: u.project,
        used_bytes: u.used_bytes,
        reserved_bytes: u.reserved_bytes,
        uploading_bytes: u.uploading_bytes,
        quota_bytes: u.quota_bytes,
        blob_count: u.blob_count,
        percent,
        warnings,
        base: u.is_base,
        summary,
    }
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/usage", tag = "quotas",
    params(("project" = String, Path)),
    responses((status = 200, body = UsageView), (status = 404, body = ErrorBody)))]
pub async fn project_usage(
    State(state): State<AppState>,
    _admin: Admin,
    Path(project): Path<String>,
) -> Result<Json<UsageView>> {
    let u = state
        .meta
        .usage(&project)
        .await?
        .ok_or_else(|| Error::not_found(format!("project {project:.100} does not exist")))?;
    Ok(Json(usage_view(u, &state.config.quota.warn_percent)))
}

#[utoipa::path(get, path = "/api/v1/usage", tag = "quotas",
    responses((status = 200, body = [UsageView])))]
pub async fn all_usage(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Vec<UsageView>>> {
    let all = state.meta.usages().await?;
    Ok(Json(
        all.into_iter()
            .map(|u| usage_view(u, &state.config.quota.warn_percent))
            .collect(),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RecomputeParams {
    /// Only report; keep the running rows as they are.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DriftView {
    pub project: String,
    /// Blobs the manifests reference that the running rows missed.
    pub missing: Vec<String>,
    /// Rows for blobs no manifest references.
    pub extra: Vec<String>,
    pub used_before: u64,
    pub used_after: u64,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecomputeReport {
    pub dry_run: bool,
    pub projects: usize,
    pub drifts: Vec<DriftView>,
}

#[utoipa::path(post, path = "/api/v1/usage/recompute", tag = "quotas", params(RecomputeParams),
    responses((status = 200, body = RecomputeReport)))]
pub async fn recompute(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Query(p): Query<RecomputeParams>,
) -> Result<Json<RecomputeReport>> {
    let projects = state.meta.projects().await?.len();
    let drifts = state.meta.recompute(!p.dry_run).await?;
    if !drifts.is_empty() {
        tracing::warn!(
            projects = drifts.len(),
            dry_run = p.dry_run,
            "usage recompute found drift"
        );
    }
    audit(
        &state,
        &caller,
        "usage.recompute",
        None,
        "all projects",
        json!({"dry_run": p.dry_run, "drifted": drifts.len()}),
    )
    .await?;
    Ok(Json(RecomputeReport {
        dry_run: p.dry_run,
        projects,
        drifts: drifts
            .into_iter()
            .map(|d| DriftView {
                project: d.project,
                missing: d.missing,
                extra: d.extra,
                used_before: d.used_before,
                used_after: d.used_after,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    /// Only list what would go.
    #[serde(default)]
    pub dry_run: bool,
    /// Apply retention to this project only (blobs are collected everywhere).
    #[serde(default)]
    pub project: Option<String>,
    /// Apply retention (default true).
    #[serde(default)]
    pub retention: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GcManifestView {
    pub repository: String,
    pub digest: String,
    pub tags: Vec<String>,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GcReportView {
    pub dry_run: bool,
    pub manifests: Vec<GcManifestView>,
    pub manifests_skipped: Vec<String>,
    pub blobs: usize,
    pub bytes_freed: u64,
}

pub fn gc_view(r: GcReport) -> GcReportView {
    GcReportView {
        dry_run: r.dry_run,
        manifests: r
            .manifests
            .into_iter()
            .map(|m| GcManifestView {
                repository: m.repository,
                digest: m.digest,
                tags: m.tags,
                reason: m.reason,
            })
            .collect(),
        manifests_skipped: r
            .manifests_skipped
            .into_iter()
            .map(|(m, why)| format!("{}@{}: {why}", m.repository, m.digest))
            .collect(),
        blobs: r.blobs.len(),
        bytes_freed: r.bytes_freed,
    }
}

pub fn gc_options(
    state: &AppState,
    dry_run: bool,
    project: Option<String>,
    retention: bool,
) -> GcOptions {
    let gc = &state.config.gc;
    GcOptions {
        dry_run,
        blob_grace: std::time::Duration::from_secs(gc.blob_grace_secs),
        untagged_grace: std::time::Duration::from_secs(gc.untagged_grace_secs),
        keep_default: gc.keep_images,
        project,
        retention,
    }
}

#[utoipa::path(post, path = "/api/v1/gc", tag = "quotas", request_body = GcRequest,
    responses((status = 200, body = GcReportView)))]
pub async fn gc(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Json(body): Json<GcRequest>,
) -> Result<Json<GcReportView>> {
    let opts = gc_options(
        &state,
        body.dry_run,
        body.project.clone(),
        body.retention.unwrap_or(true),
    );
    let quiet = state.maintenance.lock().await;
    let report = slipway_storage::gc::collect(&state.meta, &state.blobs, &opts).await?;
    drop(quiet);
    let view = gc_view(report);
    audit(&state, &caller, "gc.run", body.project.as_deref(), "registry", json!({
        "dry_run": view.dry_run, "manifests": view.manifests.len(), "blobs": view.blobs, "bytes_freed": view.bytes_freed,
    }))
    .await?;
    Ok(Json(view))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FsckRequest {
    /// Quarantine damaged blobs (deleting the manifests that use them),
    /// remove stored bytes recorded nowhere, correct usage.
    #[serde(default)]
    pub repair: bool,
    /// Check sizes only, without re-hashing (default false).
    #[serde(default)]
    pub sizes_only: bool,
    /// Hashing reads at most this many bytes a second (0 or absent: no
    /// limit).
    #[serde(default)]
    pub rate_bytes_per_sec: u64,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuarantinedView {
    pub digest: String,
    /// `repository@digest` of each manifest deleted with it.
    pub manifests: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FsckReportView {
    pub blobs_checked: u64,
    pub bytes_hashed: u64,
    pub stored_blobs: u64,
    /// What is wrong, a sentence each (empty: nothing).
    pub problems: Vec<String>,
    pub repaired: bool,
    pub quarantined: Vec<QuarantinedView>,
    pub orphans_removed: Vec<String>,
    /// Rows of uploads that never finished (no bytes, used nowhere), forgotten.
    pub leftovers_removed: Vec<String>,
    pub usage_fixed: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/fsck", tag = "quotas", request_body = FsckRequest,
    responses((status = 200, body = FsckReportView)))]
pub async fn fsck(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Json(body): Json<FsckRequest>,
) -> Result<Json<FsckReportView>> {
    let opts = slipway_storage::fsck::FsckOptions {
        verify_digests: !body.sizes_only,
        rate_bytes_per_sec: body.rate_bytes_per_sec,
        repair: body.repair,
        orphan_grace: std::time::Duration::from_secs(state.config.gc.blob_grace_secs),
    };
    // A repair removes blobs: not while a backup copies them.
    let quiet = if body.repair {
        Some(state.maintenance.lock().await)
    } else {
        None
    };
    let r = slipway_storage::fsck::check(&state.meta, &state.blobs, &opts).await?;
    drop(quiet);
    let problems: Vec<String> = r.findings.iter().map(|f| f.sentence()).collect();
    for p in &problems {
        tracing::warn!("fsck: {p}");
    }
    for q in &r.quarantined {
        tracing::error!(digest = %q.digest, manifests = ?q.manifests, "fsck quarantined a damaged blob");
        audit(
            &state,
            &caller,
            "fsck.quarantine",
            None,
            &q.digest,
            json!({
                "manifests_deleted": q.manifests,
            }),
        )
        .await?;
    }
    audit(
        &state,
        &caller,
        "fsck.run",
        None,
        "registry",
        json!({
            "repair": body.repair, "blobs_checked": r.blobs_checked, "bytes_hashed": r.bytes_hashed,
            "problems": problems.len(), "quarantined": r.quarantined.len(),
            "orphans_removed": r.orphans_removed.len(),
            "leftovers_removed": r.leftovers_removed.len(),
        }),
    )
    .await?;
    Ok(Json(FsckReportView {
        blobs_checked: r.blobs_checked,
        bytes_hashed: r.bytes_hashed,
        stored_blobs: r.stored_blobs,
        problems,
        repaired: body.repair,
        quarantined: r
            .quarantined
            .into_iter()
            .map(|q| QuarantinedView {
                digest: q.digest,
                manifests: q.manifests,
            })
            .collect(),
        orphans_removed: r.orphans_removed,
        leftovers_removed: r.leftovers_removed,
        usage_fixed: r.usage_fixed,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// An absolute path on the server's machine, absent or empty.
    pub dir: String,
}

#[utoipa::path(post, path = "/api/v1/backup", tag = "quotas", request_body = BackupRequest,
    responses((status = 200, body = crate::backup::BackupReport)))]
pub async fn backup(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Json(body): Json<BackupRequest>,
) -> Result<Json<crate::backup::BackupReport>> {
    let report = crate::backup::backup(&state, std::path::Path::new(&body.dir))
        .await
        .map_err(|e| Error::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")))?;
    audit(
        &state,
        &caller,
        "backup.run",
        None,
        "registry",
        json!({
            "dir": report.dir, "manifests": report.manifests, "blobs": report.blobs,
            "bytes": report.bytes, "linked": report.linked, "copied": report.copied,
        }),
    )
    .await?;
    Ok(Json(report))
}
