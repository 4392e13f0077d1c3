//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (new session, monolithic
//! push, or cross-repository mount), then `PATCH`/`PUT`/`GET`/`DELETE` on
//! `/v2/<name>/blobs/uploads/<id>`.
//!
//! An upload's state (bytes so far and the saved hash state at that offset)
//! lives in the database after every request, so a client can resume after
//! a restart of the server — or its own — by asking for the upload's status.
//!
//! Quotas: an upload whose bytes turn out to be a blob the project already
//! pays for (or a base project's) is never refused for quota, whatever the
//! client's flow. Where the digest is known before the body (`POST
//! ?digest=`, `PUT ?digest=` with a body), that is decided before reading
//! it: a new blob that does not fit is refused at once, or cut off when it
//! passes the room. Chunks (`PATCH`) are not judged by the quota while in
//! flight; they are bounded by the project's upload headroom (a chunk with
//! a `Content-Length` is held before it is read, a body without one in
//! steps). Completion decides: a new blob must fit, or the upload is
//! refused and removed. Finishing an upload claims the digest, publishes
//! the bytes, then links the blob (see `slipway_storage::meta::blobs`).

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use slipway_storage::blob::UploadState;
use slipway_storage::meta::{BlobBudget, UploadRecord};
use slipway_storage::{Algorithm, Digest, Hasher, RepoName, StorageError};

use super::{CONTENT_DIGEST, UPLOAD_UUID, digest, empty, query_pairs, query_param, repo_name, set};
use crate::auth::{Actions, Caller};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::server::AppState;

/// A body without `Content-Length` reserves quota in steps of this size.
const RESERVE_STEP: u64 = 8 << 20;

pub async fn start(
    state: &AppState,
    caller: &Caller,
    name: &str,
    req: Request,
) -> ApiResult<Response> {
    let repo = repo_name(name)?;
    let pairs = query_pairs(req.uri());
    if let Some(mount) = query_param(&pairs, "mount") {
        let digest = digest(mount)?;
        // Mounting needs pull on the source: without it, the blob is
        // uploaded like any other (and never revealed to exist). Without
        // `from`, the source may be any repository of the same project.
        let from = match query_param(&pairs, "from") {
            Some(from) => RepoName::parse(from).ok(),
            None => Some(repo.clone()),
        };
        if let Some(from) = from
            && state
                .allowed(&caller.principal, from.project())
                .await?
                .contains(Actions::PULL)
        {
            let repo_id = state.meta.ensure_repo(&repo).await?;
            let mounted = if query_param(&pairs, "from").is_some() {
                state
                    .meta
                    .mount_blob(repo_id, repo.project(), &from, &digest)
                    .await?
            } else {
                state
                    .meta
                    .mount_blob_in_project(repo_id, repo.project(), &digest)
                    .await?
            };
            if mounted.is_some() {
                return Ok(blob_created(&repo, &digest));
            }
        }
        // Not mountable: fall back to a new upload session (spec: 202).
        return new_session(state, &repo).await;
    }
    if let Some(d) = query_param(&pairs, "digest") {
        let expected = digest(d)?;
        return monolithic(state, &repo, &expected, req).await;
    }
    new_session(state, &repo).await
}

async fn new_session(state: &AppState, repo: &RepoName) -> ApiResult<Response> {
    let repo_id = state.meta.ensure_repo(repo).await?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let backend = state.blobs.upload_create(&id).await?;
    if let Err(e) = state
        .meta
        .upload_insert(
            &id,
            repo_id,
            &Hasher::new(Algorithm::Sha256).save(),
            &backend,
        )
        .await
    {
        let _ = state.blobs.upload_abort(&id, &backend).await;
        return Err(e.into());
    }
    Ok(empty(StatusCode::ACCEPTED, session_headers(repo, &id, 0)))
}

/// `POST ?digest=` with the whole blob as the body. The digest is known
/// before the body: a blob the project already pays for (or a base
/// project's) is never refused for quota, and may have no more bytes than
/// that blob; a new one is refused before its body is read when its
/// `Content-Length` does not fit, cut off as soon as it passes the room
/// the project has, and checked again when the blob is linked.
async fn monolithic(
    state: &AppState,
    repo: &RepoName,
    expected: &Digest,
    req: Request,
) -> ApiResult<Response> {
    let project = repo.project();
    let declared = check_declared_length(state, req.headers(), 0)?;
    let limit = body_limit(state, project, expected, 0, declared).await?;
    let repo_id = state.meta.ensure_repo(repo).await?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut backend = state.blobs.upload_create(&id).await?;
    let result = async {
        let body = limited(body_stream(req.into_body()), state, project, limit);
        let (_, hasher, appended) = state
            .blobs
            .upload_append(
                &id,
                0,
                Hasher::new(expected.algorithm()),
                &backend,
                body,
                u64::MAX,
            )
            .await?;
        backend = appended;
        let (size, verified) = state
            .blobs
            .upload_verify(&id, expected, hasher, &backend)
            .await?;
        backend = verified;
        state.meta.blob_claim(expected, size).await?;
        state.blobs.upload_publish(&id, expected, &backend).await?;
        state
            .meta
            .blob_complete(None, repo_id, project, expected, size, true)
            .await
    }
    .await;
    if let Err(e) = result {
        let _ = state.blobs.upload_abort(&id, &backend).await;
        return Err(e.into());
    }
    Ok(blob_created(repo, expected))
}

/// How many more bytes an upload of `digest` into `project` that holds
/// `have` bytes may take, decided before the body (`declared` bytes, if
/// announced) is read. `None`: no bound but the blob size limit.
async fn body_limit(
    state: &AppState,
    project: &str,
    digest: &Digest,
    have: u64,
    declared: Option<u64>,
) -> ApiResult<Option<Limit>> {
    if !state.has_quota(project).await? {
        return Ok(None);
    }
    Ok(match state.meta.blob_budget(project, digest).await? {
        BlobBudget::Free { size: Some(size) } => {
            let left = size.saturating_sub(have);
            if let Some(len) = declared
                && len > left
            {
                return Err(too_long(digest, size).into());
            }
            Some(Limit::Blob {
                digest: digest.clone(),
                size,
                left,
            })
        }
        BlobBudget::Free { size: None } | BlobBudget::Room(None) => None,
        BlobBudget::Room(Some(room)) => {
            let need = have.saturating_add(declared.unwrap_or(0));
            if need > room {
                // In the quota's own words, with its numbers.
                state.meta.check_room(project, need).await?;
            }
            Some(Limit::Quota {
                left: room.saturating_sub(have),
                have,
            })
        }
    })
}

fn too_long(digest: &Digest, size: u64) -> StorageError {
    StorageError::SizeInvalid(format!(
        "the upload has more bytes than blob {digest} ({size} bytes), so it cannot be that blob"
    ))
}

/// A bound on the bytes a request body may add to an upload.
enum Limit {
    /// The blob is new to the project: `left` bytes fit its quota (the
    /// upload had `have` before this body).
    Quota { left: u64, have: u64 },
    /// The blob is one the project already pays for: the upload cannot
    /// become it with more than `size` bytes in all (`left` from here).
    Blob {
        digest: Digest,
        size: u64,
        left: u64,
    },
}

pub async fn status(state: &AppState, name: &str, id: &str) -> ApiResult<Response> {
    let repo = repo_name(name)?;
    let upload = load(state, &repo, id).await?;
    Ok(empty(
        StatusCode::NO_CONTENT,
        session_headers(&repo, id, upload.size),
    ))
}

pub async fn patch(state: &AppState, name: &str, id: &str, req: Request) -> ApiResult<Response> {
    let r = patch_chunk(state, name, id, req).await;
    discard_if_full(state, id, r).await
}

/// An upload that ran out of space is removed whole (its bytes and its
/// record): a full disk must not keep partial uploads; the client starts
/// again once space is freed.
async fn discard_if_full(
    state: &AppState,
    id: &str,
    r: ApiResult<Response>,
) -> ApiResult<Response> {
    if let Err(e) = &r
        && e.status == StatusCode::INSUFFICIENT_STORAGE
    {
        let _guard = state.upload_locks.lock(id).await;
        if let Ok(Some(u)) = state.meta.upload_get(id).await {
            // The bytes first: that frees the space the record needs.
            let _ = state.blobs.upload_abort(id, &u.backend_state).await;
            let _ = state.meta.upload_delete(id).await;
            tracing::warn!(upload = id, "removed an upload that ran out of space");
        }
    }
    r
}

async fn patch_chunk(state: &AppState, name: &str, id: &str, req: Request) -> ApiResult<Response> {
    let repo = repo_name(name)?;
    let _guard = state.upload_locks.lock(id).await;
    let upload = load(state, &repo, id).await?;
    let (size, _, _) = append(state, &repo, &upload, req, None).await?;
    Ok(empty(
        StatusCode::ACCEPTED,
        session_headers(&repo, id, size),
    ))
}

/// `PUT ?digest=`: the last chunk (if any) and completion. The digest is
/// known before the body, so the body is bounded as a monolithic push's
/// is. Completion is where the quota is decided for chunked uploads: a blob
/// the project already pays for (or a base project's) is never refused;
/// a new one must fit, or the upload is refused and removed, and nothing
/// of it is counted.
pub async fn finish(state: &AppState, name: &str, id: &str, req: Request) -> ApiResult<Response> {
    let r = finish_upload(state, name, id, req).await;
    discard_if_full(state, id, r).await
}

async fn finish_upload(
    state: &AppState,
    name: &str,
    id: &str,
    req: Request,
) -> ApiResult<Response> {
    let repo = repo_name(name)?;
    let project = repo.project();
    let pairs = query_pairs(req.uri());
    let expected = match query_param(&pairs, "digest") {
        Some(d) => digest(d)?,
        None => {
            return Err(ApiError::bad_request(
                ErrorCode::DigestInvalid,
                "finishing an upload needs the blob's digest as ?digest=",
            ));
        }
    };
    let _guard = state.upload_locks.lock(id).await;
    let upload = load(state, &repo, id).await?;
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() != "0");
    let (hasher, backend) = if has_body {
        let declared = check_declared_length(state, req.headers(), upload.size)?;
        let appended = async {
            let limit = body_limit(state, project, &expected, upload.size, declared).await?;
            append(state, &repo, &upload, req, limit).await
        }
        .await;
        match appended {
            Ok((_, hasher, backend)) => (hasher, backend),
            Err(e) if e.is_quota_refusal() => {
                // The upload cannot become a blob that fits: it ends here,
                // and nothing of it is kept.
                state.meta.upload_delete(id).await?;
                state.blobs.upload_abort(id, &upload.backend_state).await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    } else {
        (
            Hasher::restore(&upload.hash_state)?,
            upload.backend_state.clone(),
        )
    };
    let verified = state
        .blobs
        .upload_verify(id, &expected, hasher.clone(), &backend)
        .await;
    // A crash between publishing and linking leaves the record and a
    // published blob, but no upload file: the same PUT finishes the job.
    let published_before = matches!(verified, Err(StorageError::UploadUnknown(_)))
        && hasher.clone().finish() == expected
        && state.blobs.stat(&expected).await? == Some(upload.size);
    if published_before {
        state.meta.blob_claim(&expected, upload.size).await?;
        link_finished(state, &upload, project, &expected, upload.size).await?;
        return Ok(blob_created(&repo, &expected));
    }
    let (size, backend) = match verified {
        Ok(v) => v,
        Err(e @ StorageError::DigestMismatch { .. }) => {
            // The upload cannot become that blob: remove it, leave nothing.
            state.meta.upload_delete(id).await?;
            state.blobs.upload_abort(id, &backend).await?;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    if state.has_quota(project).await?
        && let Err(e) = state.meta.check_blob(project, &expected, size).await
    {
        if matches!(e, StorageError::QuotaExceeded { .. }) {
            // New bytes over the quota: refused, and nothing of them kept.
            state.meta.upload_delete(id).await?;
            state.blobs.upload_abort(id, &backend).await?;
        }
        return Err(e.into());
    }
    state.meta.blob_claim(&expected, size).await?;
    state.blobs.upload_publish(id, &expected, &backend).await?;
    link_finished(state, &upload, project, &expected, size).await?;
    Ok(blob_created(&repo, &expected))
}

/// Links a finished upload's published blob and ends the upload. Refused
/// for quota (another push took the room meanwhile), the upload is
/// removed all the same; its published bytes are linked nowhere, and GC
/// removes them once the claim's window has passed.
async fn link_finished(
    state: &AppState,
    upload: &UploadRecord,
    project: &str,
    digest: &Digest,
    size: u64,
) -> ApiResult<()> {
    let linked = state
        .meta
        .blob_complete(
            Some(&upload.id),
            upload.repo_id,
            project,
            digest,
            size,
            true,
        )
        .await;
    if let Err(e @ StorageError::QuotaExceeded { .. }) = linked {
        state.meta.upload_delete(&upload.id).await?;
        return Err(e.into());
    }
    Ok(linked?)
}

pub async fn cancel(state: &AppState, name: &str, id: &str) -> ApiResult<Response> {
    let repo = repo_name(name)?;
    let _guard = state.upload_locks.lock(id).await;
    let upload = load(state, &repo, id).await?;
    state.meta.upload_delete(id).await?;
    state.blobs.upload_abort(id, &upload.backend_state).await?;
    let mut headers = HeaderMap::new();
    set(&mut headers, header::CONTENT_LENGTH, "0");
    Ok(empty(StatusCode::NO_CONTENT, headers))
}

/// Loads an upload that belongs to `repo`; anything else is unknown.
async fn load(state: &AppState, repo: &RepoName, id: &str) -> ApiResult<UploadRecord> {
    let unknown = || ApiError::from(StorageError::UploadUnknown(format!("{id:.80}")));
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(unknown());
    }
    match state.meta.upload_get(id).await? {
        Some(u) if u.repo == repo.as_str() => Ok(u),
        _ => Err(unknown()),
    }
}

/// Appends the request body to the upload, honouring `Content-Range` when
/// given (it must start where the upload ends) and `limit`, holding it
/// against the project's upload headroom while it streams, and records
/// the new state.
async fn append(
    state: &AppState,
    repo: &RepoName,
    upload: &UploadRecord,
    req: Request,
    limit: Option<Limit>,
) -> ApiResult<(u64, Hasher, UploadState)> {
    let range = match req.headers().get(header::CONTENT_RANGE) {
        Some(v) => Some(
            parse_content_range(v.to_str().unwrap_or("")).ok_or_else(|| {
                ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    ErrorCode::BlobUploadInvalid,
                    "Content-Range must have the form start-end (inclusive byte offsets)",
                )
                .with_header(header::RANGE, &range_value(upload.size))
                .with_header(header::LOCATION, &upload_location(repo, &upload.id))
            })?,
        ),
        None => None,
    };
    if let Some((start, _)) = range
        && start != upload.size
    {
        return Err(ApiError::from(StorageError::UploadOffset {
            have: upload.size,
            offered: start,
        })
        .with_header(header::RANGE, &range_value(upload.size))
        .with_header(header::LOCATION, &upload_location(repo, &upload.id)));
    }
    let declared = check_declared_length(state, req.headers(), upload.size)?;
    if let (Some((start, end)), Some(len)) = (range, declared)
        && end - start + 1 != len
    {
        return Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid,
            format!("Content-Range {start}-{end} does not match Content-Length {len}"),
        )
        .with_header(header::RANGE, &range_value(upload.size)));
    }
    let project = repo.project();
    let quota = state.has_quota(project).await?;
    if quota && let Some(len) = declared.filter(|l| *l > 0) {
        state.meta.upload_reserve(&upload.id, project, len).await?;
    }
    let hasher = Hasher::restore(&upload.hash_state)?;
    let body = limited(body_stream(req.into_body()), state, project, limit);
    let body: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send + '_>> =
        if quota && declared.is_none() {
            Box::pin(reserving(body, state, &upload.id, project))
        } else {
            Box::pin(body)
        };
    let appended = state
        .blobs
        .upload_append(
            &upload.id,
            upload.size,
            hasher,
            &upload.backend_state,
            body,
            state.config.limits.max_blob_bytes,
        )
        .await;
    let (size, hasher, backend) = match appended {
        Ok(r) => r,
        Err(e) => {
            // What this chunk announced is not held any longer.
            if quota {
                let _ = state.meta.upload_release(&upload.id).await;
            }
            return Err(e.into());
        }
    };
    if let Some((start, end)) = range
        && size != end + 1
    {
        if quota {
            let _ = state.meta.upload_release(&upload.id).await;
        }
        return Err(ApiError::bad_request(
            ErrorCode::BlobUploadInvalid,
            format!(
                "Content-Range announced bytes {start}-{end} but the body had {} bytes; \
                 the chunk was not kept",
                size - start
            ),
        ));
    }
    let moved = state
        .meta
        .upload_advance(&upload.id, upload.size, size, &hasher.save(), &backend)
        .await?;
    if !moved {
        return Err(StorageError::UploadBusy(upload.id.clone()).into());
    }
    Ok((size, hasher, backend))
}

/// Reads `Content-Length`, refusing early a body that would make the blob
/// larger than allowed.
fn check_declared_length(
    state: &AppState,
    headers: &HeaderMap,
    offset: u64,
) -> ApiResult<Option<u64>> {
    let Some(v) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    let len: u64 = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            ApiError::bad_request(ErrorCode::SizeInvalid, "Content-Length is not a number")
        })?;
    let max = state.config.limits.max_blob_bytes;
    if offset.saturating_add(len) > max {
        return Err(StorageError::TooLarge(format!(
            "blobs are limited to {max} bytes; this one would have {}",
            offset.saturating_add(len)
        ))
        .into());
    }
    Ok(Some(len))
}

/// The body as a stream of bytes, counted into the upload metric.
fn body_stream(body: Body) -> impl Stream<Item = Result<Bytes, StorageError>> + Send {
    body.into_data_stream().map(|chunk| match chunk {
        Ok(c) => {
            metrics::counter!("slipway_upload_bytes_total").increment(c.len() as u64);
            Ok(c)
        }
        Err(e) => Err(StorageError::BodyIncomplete(e.to_string())),
    })
}

/// Holds the bytes of upload `id` against the project's upload headroom in
/// steps as a body of unknown length streams in; a step past the headroom
/// ends the stream.
fn reserving<'a>(
    body: impl Stream<Item = Result<Bytes, StorageError>> + Send + 'a,
    state: &'a AppState,
    id: &'a str,
    project: &'a str,
) -> impl Stream<Item = Result<Bytes, StorageError>> + Send + 'a {
    futures::stream::unfold(
        (Box::pin(body), 0u64, 0u64, false),
        move |(mut body, mut received, mut reserved, failed)| async move {
            if failed {
                return None;
            }
            let frame = match body.next().await? {
                Ok(f) => f,
                Err(e) => return Some((Err(e), (body, received, reserved, true))),
            };
            received += frame.len() as u64;
            while received > reserved {
                if let Err(e) = state.meta.upload_reserve(id, project, RESERVE_STEP).await {
                    return Some((Err(e), (body, received, reserved, true)));
                }
                reserved += RESERVE_STEP;
            }
            Some((Ok(frame), (body, received, reserved, false)))
        },
    )
}

/// Ends a stream with an error once it passes `limit`: the quota's for a
/// new blob, a size error for a blob the bytes can no longer be.
fn limited<'a>(
    body: impl Stream<Item = Result<Bytes, StorageError>> + Send + 'a,
    state: &'a AppState,
    project: &'a str,
    limit: Option<Limit>,
) -> impl Stream<Item = Result<Bytes, StorageError>> + Send + 'a {
    let max = match &limit {
        None => u64::MAX,
        Some(Limit::Quota { left, .. } | Limit::Blob { left, .. }) => *left,
    };
    let limit = std::sync::Arc::new(limit);
    let mut received = 0u64;
    let mut failed = false;
    body.then(move |frame| {
        let over = match &frame {
            Ok(f) => {
                received += f.len() as u64;
                received > max
            }
            Err(_) => false,
        };
        let (limit, received) = (limit.clone(), received);
        async move {
            if !over {
                return frame;
            }
            match limit.as_ref() {
                // Past the room the project had when the body started: the
                // quota's error in its own words and numbers (or, if room
                // was freed meanwhile, on it goes; linking checks again).
                Some(Limit::Quota { have, .. }) => state
                    .meta
                    .check_room(project, have + received)
                    .await
                    .and(frame),
                Some(Limit::Blob { digest, size, .. }) => Err(too_long(digest, *size)),
                None => frame,
            }
        }
    })
    .take_while(move |r| {
        let keep = !failed;
        failed |= r.is_err();
        futures::future::ready(keep)
    })
}

/// Parses `Content-Range` of a chunk: `start-end`, optionally prefixed by
/// `bytes ` or `bytes=` and followed by `/total`.
pub fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let v = v.trim();
    let v = v
        .strip_prefix("bytes=")
        .or_else(|| v.strip_prefix("bytes "))
        .unwrap_or(v)
        .trim();
    let v = v.split_once('/').map(|(r, _)| r).unwrap_or(v);
    let (a, b) = v.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (a, b) = (num(a)?, num(b)?);
    // An end of u64::MAX has no byte after it: no upload gets that large.
    (a <= b && b < u64::MAX).then_some((a, b))
}

fn upload_location(repo: &RepoName, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

/// `Range` of an upload holding `size` bytes: `0-<last byte>` (`0-0` when empty).
fn range_value(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

fn session_headers(repo: &RepoName, id: &str, size: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    set(&mut h, header::LOCATION, &upload_location(repo, id));
    set(&mut h, header::RANGE, &range_value(size));
    set(&mut h, UPLOAD_UUID, id);
    set(&mut h, header::CONTENT_LENGTH, "0");
    h
}

fn blob_created(repo: &RepoName, digest: &Digest) -> Response {
    let mut h = HeaderMap::new();
    set(
        &mut h,
        header::LOCATION,
        &format!("/v2/{repo}/blobs/{digest}"),
    );
    set(&mut h, CONTENT_DIGEST, digest.as_str());
    set(&mut h, header::CONTENT_LENGTH, "0");
    empty(StatusCode::CREATED, h)
}

/// Removes uploads idle longer than configured, upload files that have no
/// record (left by a crash between creating the file and the record, or by
/// a monolithic push that died) once they are as old, and expired quota
/// reservations.
pub async fn expire(state: &AppState) -> Result<(), StorageError> {
    let idle = state.config.upload_idle();
    let cutoff = slipway_storage::meta::now_ms() - idle.as_millis() as i64;
    for id in state.meta.uploads_idle_since(cutoff).await? {
        let _guard = state.upload_locks.lock(&id).await;
        let Some(upload) = state.meta.upload_get(&id).await? else {
            continue;
        };
        state.meta.upload_delete(&id).await?;
        state.blobs.upload_abort(&id, &upload.backend_state).await?;
        tracing::info!(upload.id = %id, "removed an idle upload");
    }
    let old = SystemTime::now() - idle.max(Duration::from_secs(3600));
    for (id, modified) in state.blobs.upload_files().await? {
        if modified < old && !state.meta.upload_exists(&id).await? {
            state.blobs.upload_abort(&id, &[]).await?;
            tracing::info!(upload.id = %id, "removed an upload file without a record");
        }
    }
    let n = state.meta.expire_reservations().await?;
    if n > 0 {
        tracing::info!(count = n, "removed expired quota reservations");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        let cases: &[(&str, Option<(u64, u64)>)] = &[
            ("0-9", Some((0, 9))),
            ("bytes 10-19", Some((10, 19))),
            ("bytes=10-19", Some((10, 19))),
            ("bytes 10-19/100", Some((10, 19))),
            ("10-19/*", Some((10, 19))),
            ("5-4", None),
            ("-4", None),
            ("a-b", None),
            ("", None),
            ("1-", None),
            ("18446744073709551616-1", None),
            ("0-18446744073709551615", None),
            ("0-18446744073709551614", Some((0, u64::MAX - 1))),
        ];
        for (v, want) in cases {
            assert_eq!(parse_content_range(v), *want, "{v}");
        }
    }

    #[test]
    fn range_values() {
        assert_eq!(range_value(0), "0-0");
        assert_eq!(range_value(1), "0-0");
        assert_eq!(range_value(10), "0-9");
    }
}
