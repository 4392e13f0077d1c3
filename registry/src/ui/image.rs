//! An image's page (`/ui/i/<repository>@<digest>`): an index's manifests,
//! or an image's config and layers — what made each layer, its size, and
//! whether it is the platform's run image's (held by a base project: it
//! costs the project nothing) —, the run image it is built on and whether
//! that is still the run image's current digest, the build that made it,
//! and its referrers (signatures, SBOMs).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde_json::Value;
use slipway_storage::error::human_bytes;
use slipway_storage::{Digest, RepoName};

use super::session::Session;
use super::{layout, refused, short_commit, short_digest, when};
use crate::server::AppState;

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    Path(reference): Path<String>,
) -> Response {
    match image_page(&state, &session, &reference).await {
        Ok(Some(m)) => m.into_response(),
        Ok(None) => refused(
            &session,
            StatusCode::NOT_FOUND,
            "There is no such image, or its project is private and you are not signed in as \
             someone who may see it.",
        ),
        Err(e) => super::pages::internal(&session, e),
    }
}

/// `platform/run:bookworm` (a registry host dropped) → the repository and
/// tag in this registry.
fn local_name(name: &str) -> Option<(RepoName, String)> {
    let name = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            rest
        }
        _ => name,
    };
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (name, "latest"),
    };
    Some((RepoName::parse(repo).ok()?, tag.to_owned()))
}

async fn image_page(
    state: &AppState,
    session: &Session,
    reference: &str,
) -> slipway_storage::Result<Option<Markup>> {
    let Some((repo, digest)) = reference.rsplit_once('@') else {
        return Ok(None);
    };
    let (Ok(repo), Ok(digest)) = (RepoName::parse(repo), digest.parse::<Digest>()) else {
        return Ok(None);
    };
    let Some(p) = state.meta.project_get(repo.project()).await? else {
        return Ok(None);
    };
    if !session.viewer.may_see(&p.name, p.public) {
        return Ok(None);
    }
    let Some(m) = state.meta.manifest_by_digest(&repo, &digest).await? else {
        return Ok(None);
    };
    let manifest: Value = serde_json::from_slice(&m.body).unwrap_or(Value::Null);
    let referrers = state.meta.referrers(&repo, &digest, None).await?;
    let build = state.meta.build_of_image(&p.name, digest.as_str()).await?;
    let link = |d: &str| format!("/ui/i/{}@{d}", repo.as_str());

    let body = if let Some(children) = manifest["manifests"].as_array() {
        html! {
            h2 { "Manifests" }
            table {
                thead { tr { th { "Platform" } th { "Digest" } th { "Size" } } }
                tbody {
                    @for c in children {
                        @let d = c["digest"].as_str().unwrap_or("");
                        @let pl = &c["platform"];
                        tr {
                            td { (pl["os"].as_str().unwrap_or("?")) "/" (pl["architecture"].as_str().unwrap_or("?")) }
                            td { a href=(link(d)) { code { (d) } } }
                            td { (human_bytes(c["size"].as_u64().unwrap_or(0))) }
                        }
                    }
                }
            }
        }
    } else {
        let config_digest = manifest["config"]["digest"].as_str().unwrap_or("");
        let config: Value = match config_digest.parse::<Digest>() {
            Ok(d) => match state.blobs.read_all(&d).await {
                Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
                Err(_) => Value::Null,
            },
            Err(_) => Value::Null,
        };
        // The history entries that made layers, in layer order.
        let made: Vec<String> = config["history"]
            .as_array()
            .map(|h| {
                h.iter()
                    .filter(|e| !e["empty_layer"].as_bool().unwrap_or(false))
                    .map(|e| e["created_by"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let descriptors = manifest["layers"].as_array().cloned().unwrap_or_default();
        let digests: Vec<String> = descriptors
            .iter()
            .map(|l| l["digest"].as_str().unwrap_or("").to_owned())
            .collect();
        let base_held = if p.is_base {
            Default::default()
        } else {
            state.meta.held_by_base(&digests).await?
        };
        let mut layers = Vec::new();
        let mut own = 0u64;
        for (i, (l, d)) in descriptors.iter().zip(digests).enumerate() {
            let size = l["size"].as_u64().unwrap_or(0);
            let base = base_held.contains(&d);
            if !base {
                own += size;
            }
            layers.push((d, size, base, made.get(i).cloned().unwrap_or_default()));
        }
        // The run image, and whether it moved since.
        let run = match slipway_builder::rebase::base_info(
            &serde_json::to_vec(&config).unwrap_or_default(),
        ) {
            Some(info) => {
                let name = info.names.first().cloned().unwrap_or_default();
                let current = match local_name(&name) {
                    Some((r, tag)) => state
                        .meta
                        .manifest_by_tag(&r, &tag)
                        .await?
                        .map(|m| m.digest.to_string()),
                    None => None,
                };
                Some((name, info.digest, current))
            }
            None => None,
        };
        html! {
            dl.facts {
                dt { "Platform" } dd { (config["os"].as_str().unwrap_or("?")) "/" (config["architecture"].as_str().unwrap_or("?")) }
                dt { "Layers" } dd { (layers.len()) ", " (human_bytes(layers.iter().map(|l| l.1).sum())) "; its own " (human_bytes(own)) }
                @if let Some((name, built_on, current)) = &run {
                    dt { "Run image" }
                    dd {
                        code { (name) } " " (short_digest(built_on))
                        " "
                        @match current {
                            Some(c) if c == built_on => { span.state.succeeded #freshness { "current" } }
                            Some(_) => { span.state.failed #freshness { "outdated: rebase available" } }
                            None => { span.state #freshness { "its run image is not in this registry" } }
                        }
                    }
                }
            }
            h2 { "Layers" }
            div.scroll {
                table {
                    thead { tr { th { "#" } th { "Made by" } th { "Size" } th { "Counts" } th { "Digest" } } }
                    tbody {
                        @for (i, (d, size, base, by)) in layers.iter().enumerate() {
                            tr {
                                td.num { (i + 1) }
                                td.detail { (by) }
                                td { (human_bytes(*size)) }
                                td { (if *base { "no: the run image's" } else { "yes" }) }
                                td { (short_digest(d)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(Some(layout(
        &format!("{}@{}", repo.as_str(), digest),
        session,
        html! {
            p.crumbs {
                a href={"/ui/projects/" (p.name)} { (p.name) } " / "
                a href={"/ui/r/" (repo.as_str())} { (repo.as_str()) }
            }
            h1 { "Image " code { (digest.as_str().chars().take(19).collect::<String>()) "…" } }
            p { code { (digest) } " · " (m.media_type) }
            (body)
            @if let Some(b) = &build {
                h2 { "Built by" }
                p {
                    a href={"/ui/projects/" (b.project) "/builds/" (b.id)} { "Build " code { (b.id) } }
                    " of " (b.source_url) " at " code { (short_commit(&b.git_commit)) }
                    ", " (when(b.created_at))
                }
            }
            h2 { "Referrers" }
            @if referrers.is_empty() {
                p.empty { "No signatures, SBOMs or other artifacts refer to it." }
            } @else {
                ul {
                    @for r in &referrers {
                        li {
                            a href=(link(&r.digest)) { code { (r.digest) } }
                            " " (r.artifact_type.as_deref().unwrap_or(&r.media_type))
                        }
                    }
                }
            }
        },
    )))
}
