//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (new session, monolithic
//! push, or cross-repository mount), then `PATCH`/`PUT`/`GET`/`DELETE` on
//! `/v2/<name>/blobs/uploads/<id>`.
//!
//! An upload's state (bytes so far and the saved hash state at that offset)
//! lives in the database after every request, so a client can resume after
//! a restart of the server — or its own — by asking for the upload's status.
//!
//! Quotas are enforced while the bytes stream in: a chunk with a
//! `Content-Length` is reserved before it is read (and refused if the
//! project has no room); a body without one reserves as it goes, in steps.
//! Finishing an upload claims the digest, publishes the bytes, then links
//! the blob (see `slipway_storage::meta::blobs`).

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use slipway_storage::blob::UploadState;
use slipway_storage::meta::UploadRecord;
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
        // uploaded like any other (and never revealed to exist).
        if let Some(from) = query_param(&pairs, "from")
            && let Ok(from) = RepoName::parse(from)
            && state
                .allowed(&caller.principal, from.project())
                .await?
                .contains(Actions::PULL)
        {
            let repo_id = state.meta.ensure_repo(&repo).await?;
            if state
                .meta
                .mount_blob(repo_id, repo.project(), &from, &digest)
                .await?
                .is_some()
            {
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

/// `POST ?digest=` with the whole blob as the body. Checked against the
/// quota before reading (with `Content-Length`), while reading (never past
/// the room the project has), and finally when the blob is linked.
async fn monolithic(
    state: &AppState,
    repo: &RepoName,
    expected: &Digest,
    req: Request,
) -> ApiResult<Response> {
    let project = repo.project();
    let declared = check_declared_length(state, req.headers(), 0)?;
    let mut max = state.config.limits.max_blob_bytes;
    if state.has_quota(project).await? {
        // Early refusal; the exact check runs when the blob is linked.
        if let Some(room) = state.room_hint(project, declared.unwrap_or(0)).await? {
            max = max.min(room);
        }
    }
    let repo_id = state.meta.ensure_repo(repo).await?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut backend = state.blobs.upload_create(&id).await?;
    let result = async {
        let body = quota_limited(body_stream(req.into_body()), state, project, max);
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

pub async fn status(state: &AppState, name: &str, id: &str) -> ApiResult<Response> {
    let repo = repo_name(name)?;
    let upload = load(state, &repo, id).await?;
    Ok(empty(
        StatusCode::NO_CONTENT,
        session_headers(&repo, id, upload.size),
    ))
}

pub async fn patch(state: &AppState, name: &str, id: &str, req: Request) -> ApiResult<Response> {
    let repo = repo_name(name)?;
    let _guard = state.upload_locks.lock(id).await;
    let upload = load(state, &repo, id).await?;
    let (size, _, _) = append(state, &repo, &upload, req).await?;
    Ok(empty(
        StatusCode::ACCEPTED,
        session_headers(&repo, id, size),
    ))
}

pub async fn finish(state: &AppState, name: &str, id: &str, req: Request) -> ApiResult<Response> {
    let repo = repo_name(name)?;
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
        let (_, hasher, backend) = append(state, &repo, &upload, req).await?;
        (hasher, backend)
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
        state
            .meta
            .blob_complete(
                Some(id),
                upload.repo_id,
                repo.project(),
                &expected,
                upload.size,
                false,
            )
            .await?;
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
    state.meta.blob_claim(&expected, size).await?;
    state.blobs.upload_publish(id, &expected, &backend).await?;
    state
        .meta
        .blob_complete(
            Some(id),
            upload.repo_id,
            repo.project(),
            &expected,
            size,
            false,
        )
        .await?;
    Ok(blob_created(&repo, &expected))
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
/// given (it must start where the upload ends), reserving quota for it, and
/// records the new state.
async fn append(
    state: &AppState,
    repo: &RepoName,
    upload: &UploadRecord,
    req: Request,
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
    let body = body_stream(req.into_body());
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

/// Reserves quota for upload `id` in steps as a body of unknown length
/// streams in; a step the project has no room for ends the stream.
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

/// Ends a stream with the quota error once it passes `max` bytes (the room
/// the project had when the upload started).
fn quota_limited<'a>(
    body: impl Stream<Item = Result<Bytes, StorageError>> + Send + 'a,
    state: &'a AppState,
    project: &'a str,
    max: u64,
) -> impl Stream<Item = Result<Bytes, StorageError>> + Send + 'a {
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
        async move {
            if over {
                // Report the quota in its own words.
                return Err(match state.meta.check_room(project, received).await {
                    Err(e) => e,
                    Ok(()) => StorageError::TooLarge(format!(
                        "blobs are limited to {} bytes",
                        state.config.limits.max_blob_bytes
                    )),
                });
            }
            frame
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
