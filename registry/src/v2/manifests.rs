//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use slipway_storage::meta::{ManifestRecord, NewManifest};
use slipway_storage::names::valid_tag;
use slipway_storage::{Algorithm, Digest, RepoName, StorageError};

use serde_json::json;

use super::{CONTENT_DIGEST, OCI_SUBJECT, audit, empty, repo_name, set};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::manifest::{self, Invalid};
use crate::server::AppState;

/// A reference: a tag or a digest.
enum Reference {
    Tag(String),
    Digest(Digest),
}

fn reference(s: &str) -> ApiResult<Reference> {
    if s.contains(':') {
        Ok(Reference::Digest(s.parse()?))
    } else if valid_tag(s) {
        Ok(Reference::Tag(s.to_owned()))
    } else {
        Err(ApiError::bad_request(
            ErrorCode::ManifestInvalid,
            format!(
                "{s:.200} is neither a digest nor a valid tag (letters, digits, '_', '.', '-', \
                 at most 128, not starting with '.' or '-')"
            ),
        ))
    }
}

pub async fn get(
    state: &AppState,
    name: &str,
    reference_str: &str,
    req_headers: &HeaderMap,
    head: bool,
) -> ApiResult<Response> {
    let repo = repo_name(name)?;
    // No manifest can exist under a reference that is neither a valid tag
    // nor a digest: for reads that is "not known" (404), as the spec's
    // conformance suite requires, not a bad request.
    let Ok(reference) = reference(reference_str) else {
        return Err(unknown(state, &repo, reference_str).await);
    };
    let record = match &reference {
        Reference::Tag(tag) => state.meta.manifest_by_tag(&repo, tag).await?,
        Reference::Digest(d) => state.meta.manifest_by_digest(&repo, d).await?,
    };
    let Some(record) = record else {
        return Err(unknown(state, &repo, reference_str).await);
    };
    // A digest names exact content: serve it as it is. A tag is negotiated.
    if matches!(reference, Reference::Tag(_)) && !accepts(req_headers, &record.media_type) {
        return Err(ApiError::not_found(
            ErrorCode::ManifestUnknown,
            format!(
                "{repo}:{reference_str} is a {}, which the Accept header does not list",
                record.media_type
            ),
        ));
    }
    if !head {
        pulled(state, &repo, record.digest.as_str());
    }
    Ok(manifest_response(record, head))
}

/// Records a pull for the dashboard's "last pulled": in the background, at
/// most every five minutes per manifest in this process (kubelets pull
/// often; the pull answers without waiting for the write).
fn pulled(state: &AppState, repo: &RepoName, digest: &str) {
    static PULLS: crate::throttle::Throttle =
        crate::throttle::Throttle::new(1, std::time::Duration::from_secs(300));
    if !PULLS.allow(&format!("{repo}@{digest}")) {
        return;
    }
    let meta = state.meta.clone();
    let repo = repo.clone();
    let digest = digest.to_owned();
    tokio::spawn(async move {
        if let Err(e) = meta
            .manifest_pulled(&repo, &digest, slipway_storage::meta::now_ms())
            .await
        {
            tracing::debug!(error = %e, "cannot record a pull");
        }
    });
}

async fn unknown(state: &AppState, repo: &RepoName, reference: &str) -> ApiError {
    match state.meta.repo_id(repo).await {
        Ok(None) => ApiError::from(StorageError::RepositoryUnknown(repo.to_string())),
        Err(e) => e.into(),
        Ok(Some(_)) => ApiError::not_found(
            ErrorCode::ManifestUnknown,
            format!("manifest {reference:.200} is not known in {repo}"),
        ),
    }
}

fn manifest_response(record: ManifestRecord, head: bool) -> Response {
    let mut headers = HeaderMap::new();
    set(&mut headers, header::CONTENT_TYPE, &record.media_type);
    set(&mut headers, CONTENT_DIGEST, record.digest.as_str());
    set(
        &mut headers,
        header::ETAG,
        &format!("\"{}\"", record.digest),
    );
    set(
        &mut headers,
        header::CONTENT_LENGTH,
        &record.body.len().to_string(),
    );
    let mut resp = empty(StatusCode::OK, headers);
    if !head {
        *resp.body_mut() = Body::from(record.body);
    }
    resp
}

/// Whether the request's `Accept` headers allow `media_type`. No Accept
/// header, or a wildcard, allows everything.
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut any = false;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let item = manifest::bare_media_type(item);
            if item.is_empty() {
                continue;
            }
            any = true;
            if item == "*/*" || item == "application/*" || item == media_type {
                return true;
            }
        }
    }
    !any
}

pub async fn put(
    state: &AppState,
    caller: &Caller,
    name: &str,
    reference_str: &str,
    req: Request,
) -> ApiResult<Response> {
    let repo = repo_name(name)?;
    let reference = reference(reference_str)?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_bounded(req.into_body(), state.config.limits.max_manifest_bytes).await?;
    let (digest, tag) = match reference {
        Reference::Digest(expected) => {
            let actual = Digest::of(expected.algorithm(), &body);
            if actual != expected {
                return Err(StorageError::DigestMismatch { expected, actual }.into());
            }
            (expected, None)
        }
        Reference::Tag(tag) => (Digest::of(Algorithm::Sha256, &body), Some(tag)),
    };
    let parsed = manifest::parse(content_type.as_deref(), &body).map_err(|e| match e {
        Invalid::Manifest(m) => ApiError::bad_request(ErrorCode::ManifestInvalid, m),
        Invalid::Digest(m) => ApiError::bad_request(ErrorCode::DigestInvalid, m),
    })?;
    let repo_id = state.meta.ensure_repo(&repo).await?;
    // A configured run image tag: a new digest queues a fleet rebase.
    let auto_rebase = match tag
        .as_deref()
        .and_then(|t| crate::rebase::auto_run_image(state, &repo, t))
    {
        Some(run_image) => {
            let before = state
                .meta
                .manifest_by_tag(&repo, tag.as_deref().unwrap_or_default())
                .await?;
            (before.map(|m| m.digest) != Some(digest.clone())).then_some(run_image)
        }
        None => None,
    };
    let subject = parsed.subject.clone();
    let detail = json!({"tag": tag, "media_type": parsed.media_type, "size": body.len()});
    let after = state
        .meta
        .manifest_put_by(
            &repo,
            repo_id,
            &NewManifest {
                digest: digest.clone(),
                media_type: parsed.media_type,
                body,
                artifact_type: parsed.artifact_type,
                subject: parsed.subject,
                annotations: parsed.annotations,
                refs: parsed.refs,
                tag,
            },
            // What moved the tag, for its history.
            if matches!(caller.principal, crate::auth::Principal::Builder) {
                "build"
            } else {
                "push"
            },
        )
        .await?;
    audit(
        state,
        caller,
        "manifest.push",
        &repo,
        format!("{repo}@{digest}"),
        detail,
    )
    .await;
    if let Some(run_image) = auto_rebase {
        tracing::info!(oci.repo = %repo, oci.digest = %digest, "a run image moved: fleet rebase queued");
        state.rebase.queue(run_image);
    }
    if let Some(quota) = after.quota {
        quota_warnings(
            state,
            caller,
            &repo,
            Some((after.used, Some(quota), after.warned_percent)),
        )
        .await;
    }
    let mut headers = HeaderMap::new();
    set(
        &mut headers,
        header::LOCATION,
        &format!("/v2/{repo}/manifests/{digest}"),
    );
    set(&mut headers, CONTENT_DIGEST, digest.as_str());
    set(&mut headers, header::CONTENT_LENGTH, "0");
    if let Some(subject) = subject {
        set(&mut headers, OCI_SUBJECT, subject.as_str());
    }
    Ok(empty(StatusCode::CREATED, headers))
}

pub async fn delete(
    state: &AppState,
    caller: &Caller,
    name: &str,
    reference_str: &str,
) -> ApiResult<Response> {
    let repo = repo_name(name)?;
    match reference(reference_str)? {
        Reference::Digest(d) => {
            state.meta.manifest_delete(&repo, &d).await?;
            audit(
                state,
                caller,
                "manifest.delete",
                &repo,
                format!("{repo}@{d}"),
                json!({}),
            )
            .await;
            quota_warnings(state, caller, &repo, None).await;
        }
        Reference::Tag(tag) => {
            if !state.meta.tag_delete(&repo, &tag).await? {
                return Err(unknown(state, &repo, reference_str).await);
            }
            audit(
                state,
                caller,
                "tag.delete",
                &repo,
                format!("{repo}:{tag}"),
                json!({}),
            )
            .await;
        }
    }
    let mut headers = HeaderMap::new();
    set(&mut headers, header::CONTENT_LENGTH, "0");
    Ok(empty(StatusCode::ACCEPTED, headers))
}

/// Records in the audit log when a project's usage reaches a configured
/// warning threshold (once per threshold; going back below re-arms it).
/// `known`: the state right after a write (else it is read).
async fn quota_warnings(
    state: &AppState,
    caller: &Caller,
    repo: &RepoName,
    known: Option<(u64, Option<u64>, u32)>,
) {
    let project = repo.project();
    let current = match known {
        Some(k) => Some(k),
        None => {
            match state.has_quota(project).await {
                Ok(true) => {}
                _ => return,
            }
            state.meta.quota_state(project).await.ok().flatten()
        }
    };
    let Some((used, Some(quota), warned)) = current else {
        return;
    };
    let percent = if quota == 0 {
        100.0
    } else {
        used as f64 * 100.0 / quota as f64
    };
    let reached = state
        .config
        .quota
        .warn_percent
        .iter()
        .copied()
        .filter(|t| percent >= *t as f64)
        .max()
        .unwrap_or(0);
    if reached == warned {
        return;
    }
    match state.meta.set_warned_percent(project, reached).await {
        Ok(before) if reached > before => {
            audit(
                state,
                caller,
                "quota.warning",
                repo,
                project.to_owned(),
                json!({
                    "threshold_percent": reached,
                    "percent": (percent * 10.0).round() / 10.0,
                    "used_bytes": used,
                    "quota_bytes": quota,
                }),
            )
            .await;
            tracing::warn!(
                project,
                threshold_percent = reached,
                "a project reached a quota warning threshold"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, project, "recording a quota warning failed"),
    }
}

/// Reads a request body of at most `max` bytes.
async fn read_bounded(body: Body, max: usize) -> ApiResult<Bytes> {
    let too_large = || {
        ApiError::from(StorageError::TooLarge(format!(
            "manifests are limited to {max} bytes"
        )))
    };
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(
                ErrorCode::ManifestInvalid,
                format!("reading the manifest failed: {e}"),
            )
        })?;
        if buf.len() + chunk.len() > max {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn accept_negotiation() {
        let m = manifest::OCI_MANIFEST;
        let mut h = HeaderMap::new();
        assert!(accepts(&h, m));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(manifest::DOCKER_MANIFEST),
        );
        assert!(!accepts(&h, m));
        h.append(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json; q=0.5"),
        );
        assert!(accepts(&h, m));
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, */*;q=0.1"),
        );
        assert!(accepts(&h, m));
    }
}
