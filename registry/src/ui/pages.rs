//! The dashboard's pages: the overview, the projects list and a project.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use maud::{Markup, html};
use serde::Deserialize;
use slipway_storage::Digest;
use slipway_storage::error::human_bytes;
use slipway_storage::meta::{AuditQuery, BuildRecord, Project, Usage};

use super::session::Session;
use super::{layout, refused, usage_bar, when};
use crate::server::AppState;

/// Projects listed per page.
const PAGE: usize = 50;

pub(crate) fn internal(session: &Session, e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "a dashboard page failed");
    refused(
        session,
        StatusCode::INTERNAL_SERVER_ERROR,
        "The page cannot be made now (the server logged why).",
    )
}

/// The projects the viewer may see, with their usage.
async fn visible(
    state: &AppState,
    session: &Session,
) -> slipway_storage::Result<Vec<(Project, Option<Usage>)>> {
    let mut usages: HashMap<String, Usage> = state
        .meta
        .usages_running()
        .await?
        .into_iter()
        .map(|u| (u.project.clone(), u))
        .collect();
    Ok(state
        .meta
        .projects()
        .await?
        .into_iter()
        .filter(|p| session.viewer.may_see(&p.name, p.public))
        .map(|p| {
            let u = usages.remove(&p.name);
            (p, u)
        })
        .collect())
}

fn percent(u: &Option<Usage>) -> f64 {
    u.as_ref().and_then(|u| u.percent()).unwrap_or(-1.0)
}

fn build_row(b: &BuildRecord) -> Markup {
    let duration = match (b.started_at, b.finished_at) {
        (Some(s), Some(f)) => format!("{:.1} s", (f - s) as f64 / 1000.0),
        _ => String::new(),
    };
    html! {
        tr {
            td { a href={"/ui/projects/" (b.project)} { (b.project) } }
            td { a href={"/ui/projects/" (b.project) "/builds/" (b.id)} { code { (b.id) } } }
            td { span class={"state " (b.state)} { (b.state) } }
            td { (b.image_name) }
            td { code title=(b.git_commit) { (super::short_commit(&b.git_commit)) } }
            td { (b.trigger_id.as_deref().map(|_| "trigger").unwrap_or("by hand")) }
            td { (duration) }
            td { (when(b.created_at)) }
        }
    }
}

fn builds_table(builds: &[BuildRecord]) -> Markup {
    html! {
        @if builds.is_empty() {
            p.empty { "No builds yet." }
        } @else {
            div.scroll {
                table {
                    thead { tr { th { "Project" } th { "Build" } th { "State" } th { "Image" } th { "Commit" } th { "Asked" } th { "Took" } th { "Created" } } }
                    tbody { @for b in builds { (build_row(b)) } }
                }
            }
        }
    }
}

pub async fn overview(State(state): State<AppState>, session: Session) -> Response {
    match overview_page(&state, &session).await {
        Ok(m) => m.into_response(),
        Err(e) => internal(&session, e),
    }
}

async fn overview_page(state: &AppState, session: &Session) -> slipway_storage::Result<Markup> {
    let warn = &state.config.quota.warn_percent;
    let projects = visible(state, session).await?;
    let mut nearest: Vec<&(Project, Option<Usage>)> = projects
        .iter()
        .filter(|(p, _)| p.quota_bytes.is_some())
        .collect();
    nearest.sort_by(|a, b| percent(&b.1).total_cmp(&percent(&a.1)));
    nearest.truncate(10);
    let builds: Vec<BuildRecord> = state
        .meta
        .builds_recent(200)
        .await?
        .into_iter()
        .filter(|b| projects.iter().any(|(p, _)| p.name == b.project))
        .take(10)
        .collect();
    let admin = session.viewer.is_admin();
    let stats = if admin {
        Some(state.meta.overview().await?)
    } else {
        None
    };
    let audit = if admin {
        state
            .meta
            .audit_list(&AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .await?
    } else {
        Vec::new()
    };
    Ok(layout(
        "Overview",
        session,
        html! {
            h1 { "Overview" }
            @if let Some(s) = &stats {
                dl.stats {
                    div { dt { "Projects" } dd { (s.projects) } }
                    div { dt { "Repositories" } dd { (s.repositories) } }
                    div { dt { "Images" } dd { (s.manifests) } }
                    div { dt { "Stored" } dd { (human_bytes(s.stored_bytes)) } }
                    div { dt { "Projects' usage" } dd { (human_bytes(s.usage_bytes)) } }
                    div {
                        dt { "Saved by deduplication" }
                        dd { (human_bytes(s.usage_bytes.saturating_sub(s.stored_bytes))) }
                    }
                }
            } @else {
                section {
                    h2 { "Projects you may see" }
                    ul.quotas {
                        @for (p, u) in projects.iter().take(20) {
                            li {
                                a href={"/ui/projects/" (p.name)} { (p.name) }
                                " "
                                (usage_bar(u.as_ref().map(|u| u.used_bytes).unwrap_or(0), p.quota_bytes, warn))
                            }
                        }
                    }
                    @if projects.len() > 20 {
                        p { a href="/ui/projects" { "All " (projects.len()) " projects" } }
                    }
                }
            }
            section {
                h2 { "Nearest their quota" }
                @if nearest.is_empty() {
                    p.empty { "No project has a quota." }
                } @else {
                    ul.quotas {
                        @for (p, u) in &nearest {
                            li {
                                a href={"/ui/projects/" (p.name)} { (p.name) }
                                " "
                                (usage_bar(u.as_ref().map(|u| u.used_bytes).unwrap_or(0), p.quota_bytes, warn))
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Recent builds" }
                (builds_table(&builds))
            }
            @if admin {
                section {
                    h2 { "Recent events" }
                    (audit_table(&audit))
                }
            }
        },
    ))
}

fn audit_table(entries: &[slipway_storage::meta::AuditEntry]) -> Markup {
    html! {
        @if entries.is_empty() {
            p.empty { "Nothing recorded yet." }
        } @else {
            div.scroll {
                table {
                    thead { tr { th { "When" } th { "Who" } th { "What" } th { "Project" } th { "Target" } th { "Detail" } } }
                    tbody {
                        @for e in entries {
                            tr {
                                td { (when(e.at)) }
                                td { (e.principal) }
                                td { code { (e.action) } }
                                td { (e.project.as_deref().unwrap_or("")) }
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

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    desc: bool,
    #[serde(default)]
    page: usize,
}

pub async fn projects(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<ListQuery>,
) -> Response {
    match projects_page(&state, &session, query).await {
        Ok(m) => m.into_response(),
        Err(e) => internal(&session, e),
    }
}

async fn projects_page(
    state: &AppState,
    session: &Session,
    query: ListQuery,
) -> slipway_storage::Result<Markup> {
    let warn = &state.config.quota.warn_percent;
    let repos = state.meta.repository_counts().await?;
    let needle = query.q.trim().to_ascii_lowercase();
    let mut rows: Vec<(Project, Option<Usage>)> = visible(state, session)
        .await?
        .into_iter()
        .filter(|(p, _)| needle.is_empty() || p.name.to_ascii_lowercase().contains(&needle))
        .collect();
    let used = |u: &Option<Usage>| u.as_ref().map(|u| u.used_bytes).unwrap_or(0);
    let sort = match query.sort.as_str() {
        "usage" | "repositories" | "created" | "quota" => query.sort.as_str(),
        _ => "name",
    };
    match sort {
        "usage" => rows.sort_by_key(|(p, u)| (used(u), p.name.clone())),
        "quota" => rows.sort_by(|a, b| percent(&a.1).total_cmp(&percent(&b.1))),
        "repositories" => {
            rows.sort_by_key(|(p, _)| (repos.get(&p.name).copied().unwrap_or(0), p.name.clone()))
        }
        "created" => rows.sort_by_key(|(p, _)| (p.created_at, p.name.clone())),
        _ => rows.sort_by(|a, b| a.0.name.cmp(&b.0.name)),
    }
    if query.desc {
        rows.reverse();
    }
    let total = rows.len();
    let pages = total.div_ceil(PAGE).max(1);
    let page = query.page.min(pages - 1);
    let shown = &rows[(page * PAGE).min(total)..((page + 1) * PAGE).min(total)];
    let link = |sort: &str, desc: bool, page: usize| {
        let mut s = format!("/ui/projects?sort={sort}&page={page}");
        if desc {
            s.push_str("&desc=true");
        }
        if !query.q.is_empty() {
            s.push_str("&q=");
            s.push_str(
                &percent_encoding::utf8_percent_encode(
                    &query.q,
                    percent_encoding::NON_ALPHANUMERIC,
                )
                .to_string(),
            );
        }
        s
    };
    let header = |key: &str, label: &str| {
        let desc = sort == key && !query.desc;
        let mark = if sort == key {
            if query.desc { " ↓" } else { " ↑" }
        } else {
            ""
        };
        html! { th { a href=(link(key, desc, 0)) { (label) (mark) } } }
    };
    Ok(layout(
        "Projects",
        session,
        html! {
            h1 { "Projects" }
            @if session.viewer.is_admin() {
                details.new {
                    summary { "New project" }
                    form.signin method="post" action="/ui/projects" {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="new-name" { "Name" }
                        input #new-name name="name" required placeholder="tool-example";
                        label { input type="checkbox" name="public" value="yes" checked; " Public (anyone may pull)" }
                        label for="new-quota" { "Quota" }
                        input #new-quota name="quota" placeholder="2GiB, or empty for unlimited";
                        button #create-project type="submit" { "Create" }
                    }
                }
            }
            form.filter method="get" action="/ui/projects" {
                label for="q" { "Filter" }
                input #q name="q" value=(query.q) placeholder="part of a name";
                input type="hidden" name="sort" value=(sort);
                button type="submit" { "Filter" }
            }
            p.count { (total) " projects" @if pages > 1 { ", page " (page + 1) " of " (pages) } }
            div.scroll {
                table.projects {
                    thead {
                        tr {
                            (header("name", "Name"))
                            th { "Visibility" }
                            (header("repositories", "Repositories"))
                            (header("usage", "Usage"))
                            (header("quota", "Of quota"))
                            th { "Retention" }
                            (header("created", "Created"))
                        }
                    }
                    tbody {
                        @for (p, u) in shown {
                            tr {
                                td { a href={"/ui/projects/" (p.name)} { (p.name) } }
                                td { (if p.public { "public" } else { "private" }) }
                                td.num { (repos.get(&p.name).copied().unwrap_or(0)) }
                                td { (human_bytes(used(u))) }
                                td { (usage_bar(used(u), p.quota_bytes, warn)) }
                                td { (p.retention_keep.map(|k| format!("{k} images")).unwrap_or_else(|| "server's".into())) }
                                td { (when(p.created_at)) }
                            }
                        }
                    }
                }
            }
            @if pages > 1 {
                nav.pages {
                    @if page > 0 { a rel="prev" href=(link(sort, query.desc, page - 1)) { "← Previous" } }
                    @if page + 1 < pages { a rel="next" href=(link(sort, query.desc, page + 1)) { "Next →" } }
                }
            }
        },
    ))
}

pub async fn project(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
) -> Response {
    match project_page(&state, &session, &name).await {
        Ok(Some(m)) => m.into_response(),
        // A private project looks like one that does not exist.
        Ok(None) => refused(
            &session,
            StatusCode::NOT_FOUND,
            "There is no such project, or it is private and you are not signed in as someone \
             who may see it.",
        ),
        Err(e) => internal(&session, e),
    }
}

async fn project_page(
    state: &AppState,
    session: &Session,
    name: &str,
) -> slipway_storage::Result<Option<Markup>> {
    let Some(p) = state.meta.project_get(name).await? else {
        return Ok(None);
    };
    if !session.viewer.may_see(&p.name, p.public) {
        return Ok(None);
    }
    let warn = &state.config.quota.warn_percent;
    let usage = state.meta.usage(&p.name).await?;
    let images = state.meta.project_images(&p.name).await?;
    let builds = state.meta.builds(&p.name, 20).await?;
    let admin = session.viewer.is_admin();
    let maintainer = session.viewer.may_build(&p.name);
    let triggers = if maintainer {
        state.meta.triggers(Some(&p.name)).await?
    } else {
        Vec::new()
    };
    let robots = if admin {
        state.meta.robots(&p.name).await?
    } else {
        Vec::new()
    };
    let audit = if admin {
        state
            .meta
            .audit_list(&AuditQuery {
                project: Some(p.name.clone()),
                limit: 20,
                ..Default::default()
            })
            .await?
    } else {
        Vec::new()
    };
    let prefix = format!("{}/", p.name);
    let used = usage.as_ref().map(|u| u.used_bytes).unwrap_or(0);
    Ok(Some(layout(
        &p.name,
        session,
        html! {
            h1 { (p.name) " " span.badge { (if p.public { "public" } else { "private" }) } }
            p { "Usage: " (usage_bar(used, p.quota_bytes, warn)) }
            @if admin {
                form.filter method="post" action={"/ui/projects/" (p.name) "/quota"} {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label for="quota" { "Quota" }
                    input #quota name="quota" value=(p.quota_bytes.map(human_bytes).unwrap_or_default()) placeholder="2GiB, or empty for unlimited";
                    button type="submit" { "Set" }
                }
            }
            @if maintainer {
                details.new {
                    summary { "Start a build" }
                    form.signin method="post" action={"/ui/projects/" (p.name) "/builds"} {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="source" { "Git repository" }
                        input #source name="source_url" required placeholder="https://gitlab.example.org/tool.git";
                        label for="ref" { "Branch, tag or commit" }
                        input #ref name="ref" value="main";
                        label for="image" { "Image name" }
                        input #image name="image_name" value=(p.name);
                        button #start-build type="submit" { "Build" }
                    }
                }
            }
            section {
                h2 { "Repositories" }
                @if images.is_empty() {
                    p.empty { "No repositories yet." }
                } @else {
                    div.scroll {
                        table {
                            thead { tr { th { "Name" } th { "Images" } th { "Tags" } th { "Size (counted)" } th { "Last push" } th { "Last pull" } } }
                            tbody {
                                @for i in &images {
                                    tr {
                                        td { a href={"/ui/r/" (i.repository)} { code { (i.repository.strip_prefix(&prefix).unwrap_or(&i.repository)) } } }
                                        td.num { (i.manifests) }
                                        td.num { (i.tags.len()) }
                                        td { (human_bytes(i.bytes)) }
                                        td { @if let Some(t) = i.last_push { (when(t)) } }
                                        td { @if let Some(t) = i.last_pull { (when(t)) } @else { "never" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Builds" }
                (builds_table(&builds))
            }
            @if maintainer {
                section {
                    h2 { "Triggers" }
                    @if triggers.is_empty() {
                        p.empty { "No triggers: builds start from the API or `slipway build start`." }
                    } @else {
                        div.scroll {
                            table {
                                thead { tr { th { "Id" } th { "Source" } th { "Branches" } th { "Tags" } th { "Image" } th { "Polls" } } }
                                tbody {
                                    @for t in &triggers {
                                        tr {
                                            td { code { (t.id) } }
                                            td { (t.source_url) }
                                            td { code { (t.ref_pattern) } }
                                            td { (t.tag_pattern.as_deref().unwrap_or("off")) }
                                            td { (t.image_name) }
                                            td { (t.poll_interval_secs.map(|s| format!("every {s} s")).unwrap_or_else(|| "webhooks".into())) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if admin {
                section {
                    h2 { "Robot accounts" }
                    details.new {
                        summary { "New robot account" }
                        form.signin method="post" action={"/ui/projects/" (p.name) "/robots"} {
                            input type="hidden" name="csrf" value=(session.csrf);
                            label for="robot-name" { "Name" }
                            input #robot-name name="name" required placeholder="ci-pull";
                            label for="robot-description" { "Description" }
                            input #robot-description name="description";
                            label { input type="checkbox" checked disabled; " pull" }
                            @if state.config.auth.robots_may_write {
                                label { input type="checkbox" name="push" value="yes"; " push" }
                                label { input type="checkbox" name="delete" value="yes"; " delete" }
                            }
                            label for="robot-expiry" { "Expires after (days)" }
                            input #robot-expiry name="expires_in_days" placeholder="empty: never";
                            button #create-robot type="submit" { "Create" }
                        }
                    }
                    @if robots.is_empty() {
                        p.empty { "No robot accounts." }
                    } @else {
                        div.scroll {
                            table {
                                thead { tr { th { "Name" } th { "Permissions" } th { "State" } th { "Expires" } th { "Last used" } th { "Description" } th {} } }
                                tbody {
                                    @for r in &robots {
                                        tr {
                                            td { code { "robot$" (r.project) "+" (r.name) } }
                                            td { (r.permissions) }
                                            td { (if r.enabled { "enabled" } else { "disabled" }) }
                                            td { @if let Some(e) = r.expires_at { (when(e)) } @else { "never" } }
                                            td { @if let Some(u) = r.last_used_at { (when(u)) } @else { "never" } }
                                            td { (r.description) }
                                            td {
                                                form.inline method="post" action={"/ui/projects/" (p.name) "/robots/" (r.name)} {
                                                    input type="hidden" name="csrf" value=(session.csrf);
                                                    input type="hidden" name="action" value=(if r.enabled { "disable" } else { "enable" });
                                                    button type="submit" { (if r.enabled { "Disable" } else { "Enable" }) }
                                                }
                                                " "
                                                form.inline method="post" action={"/ui/projects/" (p.name) "/robots/" (r.name)} {
                                                    input type="hidden" name="csrf" value=(session.csrf);
                                                    input type="hidden" name="action" value="delete";
                                                    button type="submit" { "Delete" }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                section {
                    h2 { "Events" }
                    (audit_table(&audit))
                }
            }
        },
    )))
}

#[derive(Debug, Default, Deserialize)]
pub struct TagQuery {
    #[serde(default)]
    sort: String,
    #[serde(default)]
    desc: bool,
    #[serde(default)]
    page: usize,
}

/// Tags listed per page.
const TAG_PAGE: usize = 50;

/// What a manifest body says of its image: its size (config and layers,
/// or the sum over an index's manifests) and its platforms (an index's).
fn manifest_facts(body: &[u8]) -> (u64, Vec<String>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (0, Vec::new());
    };
    let size = |d: &serde_json::Value| d["size"].as_u64().unwrap_or(0);
    if let Some(ms) = v["manifests"].as_array() {
        let platforms = ms
            .iter()
            .filter_map(|m| {
                let p = &m["platform"];
                let os = p["os"].as_str()?;
                let arch = p["architecture"].as_str()?;
                Some(match p["variant"].as_str() {
                    Some(var) => format!("{os}/{arch}/{var}"),
                    None => format!("{os}/{arch}"),
                })
            })
            .collect();
        return (ms.iter().map(size).sum(), platforms);
    }
    let layers: u64 = v["layers"]
        .as_array()
        .map(|l| l.iter().map(size).sum())
        .unwrap_or(0);
    (size(&v["config"]) + layers, Vec::new())
}

/// The platform of a single image (`os/arch[/variant]`), read from its
/// config blob; `None` for an index, an artifact or an unreadable config.
async fn image_platform(state: &AppState, body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let config = &v["config"];
    // Only image configs: artifacts (and the empty descriptor) carry none.
    let media = config["mediaType"].as_str()?;
    if !matches!(
        media,
        "application/vnd.oci.image.config.v1+json"
            | "application/vnd.docker.container.image.v1+json"
    ) || config["size"].as_u64()? > 1 << 20
    {
        return None;
    }
    let digest: Digest = config["digest"].as_str()?.parse().ok()?;
    let bytes = state.blobs.read_all(&digest).await.ok()?;
    let c: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let (os, arch) = (c["os"].as_str()?, c["architecture"].as_str()?);
    Some(match c["variant"].as_str() {
        Some(var) => format!("{os}/{arch}/{var}"),
        None => format!("{os}/{arch}"),
    })
}

pub async fn repository(
    State(state): State<AppState>,
    session: Session,
    headers: axum::http::HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<TagQuery>,
) -> Response {
    match repository_page(&state, &session, &headers, &name, query).await {
        Ok(Some(m)) => m.into_response(),
        Ok(None) => refused(
            &session,
            StatusCode::NOT_FOUND,
            "There is no such repository, or it is private and you are not signed in as \
             someone who may see it.",
        ),
        Err(e) => internal(&session, e),
    }
}

async fn repository_page(
    state: &AppState,
    session: &Session,
    headers: &axum::http::HeaderMap,
    name: &str,
    query: TagQuery,
) -> slipway_storage::Result<Option<Markup>> {
    let Ok(repo) = slipway_storage::RepoName::parse(name) else {
        return Ok(None);
    };
    let Some(p) = state.meta.project_get(repo.project()).await? else {
        return Ok(None);
    };
    if !session.viewer.may_see(&p.name, p.public) {
        return Ok(None);
    }
    let Some(mut tags) = state.meta.tags_detailed(&repo).await? else {
        return Ok(None);
    };
    let history = state.meta.tag_history(&repo, 50).await?;
    let by_date = query.sort == "date";
    if by_date {
        tags.sort_by(|a, b| {
            a.updated_at
                .cmp(&b.updated_at)
                .then_with(|| a.name.cmp(&b.name))
        });
    }
    if query.desc {
        tags.reverse();
    }
    let total = tags.len();
    let pages = total.div_ceil(TAG_PAGE).max(1);
    let page = query.page.min(pages - 1);
    let shown = &tags[(page * TAG_PAGE).min(total)..((page + 1) * TAG_PAGE).min(total)];
    // A single image's platform is in its config: read those of the page's
    // tags (at most TAG_PAGE small blobs, eight at a time).
    let reads: Vec<_> = shown
        .iter()
        .map(|t| image_platform(state, &t.body))
        .collect();
    let single: Vec<Option<String>> = futures::stream::iter(reads).buffered(8).collect().await;
    // The address clients pull from: the one this page was asked at.
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let sort = if by_date { "date" } else { "name" };
    let link = |sort: &str, desc: bool, page: usize| {
        let mut s = format!("/ui/r/{}?sort={sort}&page={page}", repo.as_str());
        if desc {
            s.push_str("&desc=true");
        }
        s
    };
    let header = |key: &str, label: &str| {
        let desc = sort == key && !query.desc;
        let mark = match (sort == key, query.desc) {
            (false, _) => "",
            (true, false) => " ↑",
            (true, true) => " ↓",
        };
        html! { th { a href=(link(key, desc, 0)) { (label) (mark) } } }
    };
    Ok(Some(layout(
        repo.as_str(),
        session,
        html! {
            p.crumbs { a href={"/ui/projects/" (p.name)} { (p.name) } " / " }
            h1 { (repo.as_str()) }
            p.count { (total) " tags" @if pages > 1 { ", page " (page + 1) " of " (pages) } }
            @if tags.is_empty() {
                p.empty { "No tags." }
            } @else {
                div.scroll {
                    table.tags {
                        thead {
                            tr {
                                (header("name", "Tag"))
                                th { "Digest" }
                                th { "Platform" }
                                th { "Size" }
                                (header("date", "Pushed"))
                                th { "Last pulled" }
                                th { "Pull" }
                            }
                        }
                        tbody {
                            @for (t, single) in shown.iter().zip(&single) {
                                @let (size, platforms) = manifest_facts(&t.body);
                                @let pull = format!("podman pull {host}/{}:{}", repo.as_str(), t.name);
                                tr {
                                    td { code { (t.name) } }
                                    td {
                                        a href={"/ui/i/" (repo.as_str()) "@" (t.digest)} {
                                            (super::short_digest(&t.digest))
                                        }
                                        " "
                                        button.copy type="button" data-copy=(t.digest) aria-label="Copy the digest" { "Copy" }
                                    }
                                    td {
                                        @if let Some(p) = single { (p) }
                                        @else if platforms.is_empty() { "artifact" }
                                        @else { (platforms.join(", ")) }
                                    }
                                    td { (human_bytes(size)) }
                                    td { (when(t.updated_at)) }
                                    td.pulled { @if let Some(p) = t.last_pulled { (when(p)) } @else { "never" } }
                                    td {
                                        code { (pull) }
                                        " "
                                        button.copy type="button" data-copy=(pull) aria-label="Copy the pull command" { "Copy" }
                                    }
                                }
                            }
                        }
                    }
                }
                @if pages > 1 {
                    nav.pages {
                        @if page > 0 { a rel="prev" href=(link(sort, query.desc, page - 1)) { "← Previous" } }
                        @if page + 1 < pages { a rel="next" href=(link(sort, query.desc, page + 1)) { "Next →" } }
                    }
                }
            }
            section {
                h2 { "Tag history" }
                @if history.is_empty() {
                    p.empty { "Nothing recorded yet." }
                } @else {
                    div.scroll {
                        table.history {
                            thead { tr { th { "When" } th { "Tag" } th { "What" } th { "By" } } }
                            tbody {
                                @for h in &history {
                                    tr {
                                        td { (when(h.at)) }
                                        td { code { (h.tag) } }
                                        td {
                                            @match (&h.old_digest, &h.new_digest) {
                                                (None, Some(n)) => { "created at " (short_link(&repo, n)) }
                                                (Some(o), Some(n)) => { "moved from " (short_link(&repo, o)) " to " (short_link(&repo, n)) }
                                                (Some(o), None) => { "deleted (was " (short_link(&repo, o)) ")" }
                                                (None, None) => {}
                                            }
                                        }
                                        td { span class={"cause " (h.cause)} { (h.cause) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )))
}

/// A digest, shortened, linking its image page.
fn short_link(repo: &slipway_storage::RepoName, digest: &str) -> Markup {
    html! {
        a href={"/ui/i/" (repo.as_str()) "@" (digest)} {
            (super::short_digest(digest))
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct BuildsQuery {
    #[serde(default)]
    state: String,
}

/// Every build the viewer may see, newest first (the newest 500 looked
/// at), optionally of one state.
pub async fn builds(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<BuildsQuery>,
) -> Response {
    let page = async {
        let projects = visible(&state, &session).await?;
        let visible: std::collections::HashSet<&str> =
            projects.iter().map(|(p, _)| p.name.as_str()).collect();
        let builds: Vec<BuildRecord> = state
            .meta
            .builds_recent(500)
            .await?
            .into_iter()
            .filter(|b| visible.contains(b.project.as_str()))
            .filter(|b| query.state.is_empty() || b.state == query.state)
            .take(100)
            .collect();
        Ok::<_, slipway_storage::StorageError>(layout(
            "Builds",
            &session,
            html! {
                h1 { "Builds" }
                nav.pages {
                    @for s in ["", "running", "pending", "succeeded", "reused", "failed", "cancelled"] {
                        @if s == query.state {
                            strong { (if s.is_empty() { "all" } else { s }) }
                        } @else {
                            a href={"/ui/builds" (if s.is_empty() { String::new() } else { format!("?state={s}") })} {
                                (if s.is_empty() { "all" } else { s })
                            }
                        }
                    }
                }
                (builds_table(&builds))
            },
        ))
    };
    match page.await {
        Ok(m) => m.into_response(),
        Err(e) => internal(&session, e),
    }
}
