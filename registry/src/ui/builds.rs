//! A build's page: what it is, its log — live while it runs, as
//! server-sent events that resume after the last line a reconnecting
//! browser saw (`Last-Event-ID`) and end when the build ends —, the raw log
//! to download, and cancel and retry for those who may build there.
//!
//! Logs are shown to those signed in to the project (the admin, its build
//! token, its robots), as the build API shows them to build-token holders:
//! an anonymous viewer of a public project sees its builds, not their logs.

use std::convert::Infallible;
use std::time::Duration;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use slipway_storage::meta::BuildRecord;

use super::session::{Session, Viewer, csrf_ok};
use super::{CsrfForm, layout, refused, short_digest, when};
use crate::api::builds::Who;
use crate::server::AppState;

/// Lines sent in one page of the log (the rest follow as events).
const FIRST_LINES: u32 = 5000;

/// The build, if the viewer may see its project; `Err` is the page to
/// answer instead.
async fn visible_build(
    state: &AppState,
    session: &Session,
    project: &str,
    id: &str,
) -> Result<BuildRecord, Response> {
    let missing = || {
        refused(
            session,
            StatusCode::NOT_FOUND,
            "There is no such build, or its project is private and you are not signed in as \
             someone who may see it.",
        )
    };
    let p = match state.meta.project_get(project).await {
        Ok(Some(p)) => p,
        Ok(None) => return Err(missing()),
        Err(e) => return Err(super::pages::internal(session, e)),
    };
    if !session.viewer.may_see(&p.name, p.public) {
        return Err(missing());
    }
    match state.meta.build_get(project, id).await {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err(missing()),
        Err(e) => Err(super::pages::internal(session, e)),
    }
}

/// Whether the viewer may read the project's build logs.
fn may_read_logs(viewer: &Viewer, project: &str) -> bool {
    match viewer {
        Viewer::Admin => true,
        Viewer::Maintainer { project: p, .. } | Viewer::Robot { project: p, .. } => p == project,
        Viewer::Person { .. } => viewer.may_build(project),
        Viewer::Anonymous => false,
    }
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    Path((project, id)): Path<(String, String)>,
) -> Response {
    let b = match visible_build(&state, &session, &project, &id).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let logs = may_read_logs(&session.viewer, &project);
    let lines = if logs {
        match state.meta.build_log(&id, 0, FIRST_LINES).await {
            Ok(l) => l,
            Err(e) => return super::pages::internal(&session, e),
        }
    } else {
        Vec::new()
    };
    let last = lines.last().map(|l| l.seq).unwrap_or(0);
    let base = format!("/ui/projects/{project}/builds/{id}");
    let running = !b.finished();
    let may_build = session.viewer.may_build(&project);
    layout(
        &format!("Build {id}"),
        &session,
        html! {
            p.crumbs { a href={"/ui/projects/" (project)} { (project) } " / builds /" }
            h1 { "Build " code { (b.id) } " " span class={"state " (b.state)} #state { (b.state) } }
            dl.facts {
                dt { "Image" } dd { code { (b.project) "/" (b.image_name) } @if let Some(d) = &b.image_digest { " " (short_digest(d)) } }
                dt { "Source" } dd { (b.source_url) " at " code { (b.git_ref) } }
                dt { "Commit" } dd { code { (b.git_commit) } }
                dt { "Builder" } dd { code { (b.builder) } }
                dt { "Asked by" } dd { (b.requested_by) }
                dt { "Created" } dd { (when(b.created_at)) }
                @if let Some(f) = b.finished_at { dt { "Ended" } dd { (when(f)) } }
                @if let Some(r) = &b.reason { dt { "Why" } dd { (r) } }
            }
            @if may_build {
                div.actions {
                    @if running {
                        form.inline method="post" action={(base) "/cancel"} {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Cancel" }
                        }
                    } @else {
                        form.inline method="post" action={(base) "/retry"} {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Retry" }
                        }
                    }
                }
            }
            section {
                h2 { "Log" }
                @if logs {
                    p { a href={(base) "/log.txt"} download { "Download the raw log" } }
                    pre #log data-events={(base) "/events"} data-after=(last) data-running=(running) {
                        @for l in &lines { (l.line) "\n" }
                    }
                } @else {
                    p.empty { "Sign in as someone of this project to read its build logs." }
                }
            }
        },
    )
    .into_response()
}

pub async fn raw_log(
    State(state): State<AppState>,
    session: Session,
    Path((project, id)): Path<(String, String)>,
) -> Response {
    if let Err(r) = visible_build(&state, &session, &project, &id).await {
        return r;
    }
    if !may_read_logs(&session.viewer, &project) {
        return refused(
            &session,
            StatusCode::FORBIDDEN,
            "Sign in as someone of this project to read its build logs.",
        );
    }
    match state.meta.build_log(&id, 0, 1_000_000).await {
        Ok(lines) => {
            let mut text = String::new();
            for l in lines {
                text.push_str(&l.line);
                text.push('\n');
            }
            (
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{id}.log\""),
                    ),
                ],
                text,
            )
                .into_response()
        }
        Err(e) => super::pages::internal(&session, e),
    }
}

/// The log as server-sent events: `line` events (the id is the line's
/// number, so a reconnecting browser resumes after the last it saw), then
/// one `end` event with the build's state.
pub async fn events(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path((project, id)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<AfterQuery>,
) -> Response {
    if let Err(r) = visible_build(&state, &session, &project, &id).await {
        return r;
    }
    if !may_read_logs(&session.viewer, &project) {
        return refused(
            &session,
            StatusCode::FORBIDDEN,
            "Sign in as someone of this project to read its build logs.",
        );
    }
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .or(q.after)
        .unwrap_or(0);
    struct Follow {
        state: AppState,
        id: String,
        after: i64,
        pending: std::collections::VecDeque<Event>,
        ended: bool,
        done: bool,
    }
    let stream = futures::stream::unfold(
        Follow {
            state,
            id,
            after,
            pending: Default::default(),
            ended: false,
            done: false,
        },
        |mut f| async move {
            loop {
                if let Some(e) = f.pending.pop_front() {
                    return Some((Ok::<Event, Infallible>(e), f));
                }
                if f.done {
                    return None;
                }
                let lines = f
                    .state
                    .meta
                    .build_log(&f.id, f.after, 1000)
                    .await
                    .unwrap_or_default();
                if !lines.is_empty() {
                    for l in lines {
                        f.after = l.seq;
                        f.pending.push_back(
                            Event::default()
                                .event("line")
                                .id(l.seq.to_string())
                                .data(l.line),
                        );
                    }
                    continue;
                }
                if f.ended {
                    let state = match f.state.meta.build_by_id(&f.id).await {
                        Ok(Some(b)) => b.state,
                        _ => "gone".into(),
                    };
                    f.pending
                        .push_back(Event::default().event("end").data(state));
                    f.done = true;
                    continue;
                }
                match f.state.meta.build_by_id(&f.id).await {
                    // Its last lines were written before it ended: one more
                    // read gets them.
                    Ok(Some(b)) if b.finished() => f.ended = true,
                    Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(300)).await,
                    _ => f.ended = true,
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[derive(Debug, Deserialize)]
pub struct AfterQuery {
    #[serde(default)]
    after: Option<i64>,
}

async fn act(
    state: &AppState,
    session: &Session,
    project: &str,
    id: &str,
    form: &CsrfForm,
    retry: bool,
) -> Response {
    if let Err(r) = visible_build(state, session, project, id).await {
        return r;
    }
    if !csrf_ok(session, &form.csrf) {
        return super::forged(session);
    }
    if !session.viewer.may_build(project) {
        return refused(
            session,
            StatusCode::FORBIDDEN,
            "Only the admin and the project's build tokens may cancel or retry its builds.",
        );
    }
    let who = Who {
        subject: session.viewer.name(),
        remote: session.remote,
    };
    let done = if retry {
        crate::api::builds::retry_build(state, &who, project, id).await
    } else {
        crate::api::builds::cancel_build(state, &who, project, id).await
    };
    match done {
        Ok(b) => Redirect::to(&format!("/ui/projects/{project}/builds/{}", b.id)).into_response(),
        Err(e) => refused(session, e.status(), &e.message),
    }
}

pub async fn cancel(
    State(state): State<AppState>,
    session: Session,
    Path((project, id)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    act(&state, &session, &project, &id, &form, false).await
}

pub async fn retry(
    State(state): State<AppState>,
    session: Session,
    Path((project, id)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    act(&state, &session, &project, &id, &form, true).await
}
