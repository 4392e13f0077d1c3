//! `POST /api/v1/admin/rebase`: a fleet rebase onto a run image (see
//! `crate::rebase`), the report as JSON. Admin only.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::{Admin, Error, ErrorBody, Result};
use crate::rebase::{FleetError, FleetReport, FleetRequest};
use crate::server::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebaseRequest {
    /// The run image to rebase onto: `platform/run:bookworm`.
    pub run_image: String,
    /// Compute the report; write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Also rebase images that do not list the run image's name among their
    /// run image and mirrors (the other checks still apply).
    #[serde(default)]
    pub force: bool,
}

impl From<FleetError> for Error {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::BadReference(_) => Error::bad_request(e.to_string()),
            FleetError::RunImageUnknown(_) => Error::not_found(e.to_string()),
            FleetError::InvalidBase(_) => Error::new(StatusCode::CONFLICT, e.to_string()),
            FleetError::Storage(s) => s.into(),
        }
    }
}

#[utoipa::path(post, path = "/api/v1/admin/rebase", tag = "rebase", request_body = RebaseRequest,
    responses((status = 200, body = FleetReport), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn rebase(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Json(body): Json<RebaseRequest>,
) -> Result<Json<FleetReport>> {
    let req = FleetRequest {
        run_image: body.run_image,
        dry_run: body.dry_run,
        force: body.force,
        requested_by: caller.principal.subject(),
        remote_addr: caller.remote.map(|r| r.to_string()),
        before_commit: None,
    };
    let report = state.rebase.run(&state, &req).await?;
    tracing::info!(
        run_image = %report.run_image,
        oci.digest = %report.run_image_digest,
        dry_run = report.dry_run,
        rebased = report.rebased.len(),
        current = report.current.len(),
        skipped = report.skipped.len(),
        failed = report.failed.len(),
        duration_ms = (report.seconds * 1000.0) as u64,
        "fleet rebase done"
    );
    Ok(Json(report))
}
