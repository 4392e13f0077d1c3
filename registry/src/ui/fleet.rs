//! The fleet (admin): a run image's tool images, how many are on its
//! current digest and how many on older ones, per project — from a dry run
//! of the fleet rebase, which then offers "Rebase now" —, and the history
//! of fleet rebases and of garbage collections (the audit log's).

use std::collections::BTreeMap;

use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use slipway_storage::meta::AuditQuery;

use super::session::{Session, csrf_ok};
use super::{layout, refused, when};
use crate::rebase::{FleetReport, FleetRequest};
use crate::server::AppState;

fn admin_only(session: &Session) -> Option<Response> {
    (!session.viewer.is_admin()).then(|| {
        refused(
            session,
            StatusCode::NOT_FOUND,
            "There is no such page, or you are not signed in as the admin.",
        )
    })
}

/// The tags of the base projects' repositories: the run images (and
/// builders) tool images are built on.
async fn run_images(state: &AppState) -> slipway_storage::Result<Vec<String>> {
    let mut out = Vec::new();
    for p in state.meta.projects().await? {
        if !p.is_base {
            continue;
        }
        for (repo, _) in state.meta.project_repositories(&p.name).await? {
            let Ok(name) = slipway_storage::RepoName::parse(&repo) else {
                continue;
            };
            for tag in state
                .meta
                .tags(&name, None, 1000)
                .await?
                .unwrap_or_default()
            {
                out.push(format!("{repo}:{tag}"));
            }
        }
    }
    // Run images first: what tool images are built on.
    out.sort_by_key(|n| (!n.contains("/run"), n.clone()));
    Ok(out)
}

pub async fn page(State(state): State<AppState>, session: Session) -> Response {
    if let Some(r) = admin_only(&session) {
        return r;
    }
    match fleet_page(&state, &session, None, None).await {
        Ok(m) => m.into_response(),
        Err(e) => super::pages::internal(&session, e),
    }
}

async fn fleet_page(
    state: &AppState,
    session: &Session,
    report: Option<&FleetReport>,
    error: Option<&str>,
) -> slipway_storage::Result<Markup> {
    let images = run_images(state).await?;
    let chosen = report.map(|r| r.run_image.clone());
    let history = |action: &str| AuditQuery {
        action: Some(action.to_owned()),
        limit: 20,
        ..Default::default()
    };
    let rebases = state.meta.audit_list(&history("rebase.fleet")).await?;
    let gcs = state.meta.audit_list(&history("gc.run")).await?;
    Ok(layout(
        "Fleet",
        session,
        html! {
            h1 { "Fleet" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.filter method="post" action="/ui/fleet" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="action" value="dry-run";
                label for="run_image" { "Run image" }
                select #run_image name="run_image" {
                    @for i in &images {
                        option value=(i) selected[chosen.as_deref() == Some(i.as_str())] { (i) }
                    }
                }
                button type="submit" { "Check (dry run)" }
            }
            @if let Some(r) = report { (report_view(session, r)) }
            section {
                h2 { "Fleet rebases" }
                (history_table(&rebases))
            }
            section {
                h2 { "Garbage collections" }
                (history_table(&gcs))
            }
        },
    ))
}

fn history_table(entries: &[slipway_storage::meta::AuditEntry]) -> Markup {
    html! {
        @if entries.is_empty() {
            p.empty { "None yet." }
        } @else {
            div.scroll {
                table {
                    thead { tr { th { "When" } th { "Who" } th { "What" } th { "Figures" } } }
                    tbody {
                        @for e in entries {
                            tr {
                                td { (when(e.at)) }
                                td { (e.principal) }
                                td { (e.target.as_deref().unwrap_or("")) }
                                td.detail { (e.detail.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn report_view(session: &Session, r: &FleetReport) -> Markup {
    // Per project: current, outdated (rebased, or would be), skipped, failed.
    let mut per: BTreeMap<&str, [usize; 4]> = BTreeMap::new();
    for (k, list) in [&r.current, &r.rebased, &r.skipped, &r.failed]
        .iter()
        .enumerate()
    {
        for i in list.iter() {
            let project = i.repository.split('/').next().unwrap_or("");
            per.entry(project).or_default()[k] += 1;
        }
    }
    html! {
        section.report #report {
            h2 {
                @if r.dry_run { "Dry run: " } @else { "Rebased: " }
                code { (r.run_image) } " at " (super::short_digest(&r.run_image_digest))
            }
            p {
                (r.scanned) " tool images looked at: "
                strong #current-count { (r.current.len()) } " current, "
                strong #outdated-count { (r.rebased.len()) }
                @if r.dry_run { " on older digests (would be rebased), " } @else { " rebased, " }
                (r.skipped.len()) " skipped, " (r.failed.len()) " failed"
                " (" (format!("{:.2}", r.seconds)) " s)."
            }
            @if !per.is_empty() {
                div.scroll {
                    table {
                        thead { tr { th { "Project" } th { "Current" } th { (if r.dry_run { "Outdated" } else { "Rebased" }) } th { "Skipped" } th { "Failed" } } }
                        tbody {
                            @for (p, n) in &per {
                                tr {
                                    td { a href={"/ui/projects/" (p)} { (p) } }
                                    td.num { (n[0]) } td.num { (n[1]) } td.num { (n[2]) } td.num { (n[3]) }
                                }
                            }
                        }
                    }
                }
            }
            @for i in r.skipped.iter().chain(&r.failed) {
                p.hint { code { (i.repository) } ": " (i.reason.as_deref().unwrap_or("")) }
            }
            @if r.dry_run && !r.rebased.is_empty() {
                form method="post" action="/ui/fleet" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="action" value="rebase";
                    input type="hidden" name="run_image" value=(r.run_image);
                    button #rebase-now type="submit" { "Rebase now" }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct FleetForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    run_image: String,
}

pub async fn act(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<FleetForm>,
) -> Response {
    if let Some(r) = admin_only(&session) {
        return r;
    }
    if !csrf_ok(&session, &form.csrf) {
        return super::forged(&session);
    }
    let req = FleetRequest {
        run_image: form.run_image.trim().to_owned(),
        dry_run: form.action != "rebase",
        force: false,
        requested_by: session.viewer.name(),
        remote_addr: session.remote.map(|r| r.to_string()),
        before_commit: None,
    };
    let (report, error) = match state.rebase.run(&state, &req).await {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    match fleet_page(&state, &session, report.as_ref(), error.as_deref()).await {
        Ok(m) => (status, m).into_response(),
        Err(e) => super::pages::internal(&session, e),
    }
}
