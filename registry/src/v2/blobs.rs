//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use slipway_storage::StorageError;

use super::{CONTENT_DIGEST, audit, digest, empty, repo_name, set};
use crate::auth::{Actions, Caller, Principal};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::server::AppState;

pub async fn get(
    state: &AppState,
    caller: &Caller,
    name: &str,
    digest_str: &str,
    req_headers: &HeaderMap,
    head: bool,
) -> ApiResult<Response> {
    let repo = repo_name(name)?;
    let digest = digest(digest_str)?;
    let size = state
        .meta
        .repo_blob_size(&repo, &digest)
        .await?
        .ok_or_else(|| ApiError::from(StorageError::BlobUnknown(digest.clone())))?;
    // A pusher asking whether a blob is there is about to reference it:
    // restart GC's grace period for it (pulls never write).
    if head
        && caller.principal != Principal::Anonymous
        && state
            .allowed(&caller.principal, repo.project())
            .await?
            .contains(Actions::PUSH)
    {
        state.meta.blob_touch(&digest).await?;
    }
    // A unit other than bytes is ignored (RFC 9110 14.2): the whole blob.
    let range = match req_headers
        .get(header::RANGE)
        .filter(|v| v.as_bytes().trim_ascii_start().starts_with(b"bytes="))
    {
        Some(v) => Some(parse_range(v.to_str().unwrap_or(""), size).ok_or_else(|| {
            ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::SizeInvalid,
                format!(
                    "the range {:.100} cannot be served from a blob of {size} bytes; \
                     use one range of the form bytes=start-end",
                    v.to_str().unwrap_or("(not text)")
                ),
            )
            .with_header(header::CONTENT_RANGE, &format!("bytes */{size}"))
        })?),
        None => None,
    };

    let mut headers = HeaderMap::new();
    set(
        &mut headers,
        header::CONTENT_TYPE,
        "application/octet-stream",
    );
    set(&mut headers, CONTENT_DIGEST, digest.as_str());
    set(&mut headers, header::ETAG, &format!("\"{digest}\""));
    set(&mut headers, header::ACCEPT_RANGES, "bytes");
    set(&mut headers, header::CACHE_CONTROL, "max-age=31536000");
    let (status, start, end) = match range {
        Some((start, end)) => {
            set(
                &mut headers,
                header::CONTENT_RANGE,
                &format!("bytes {start}-{}/{size}", end - 1),
            );
            (StatusCode::PARTIAL_CONTENT, start, end)
        }
        None => (StatusCode::OK, 0, size),
    };
    set(
        &mut headers,
        header::CONTENT_LENGTH,
        &(end - start).to_string(),
    );
    if head {
        return Ok(empty(status, headers));
    }
    if state.config.storage.s3.redirect
        && let Some(url) = state
            .blobs
            .direct_url(
                &digest,
                Duration::from_secs(state.config.storage.s3.presign_ttl_secs),
            )
            .await?
    {
        // The object store serves the bytes (the client repeats any Range).
        let mut headers = HeaderMap::new();
        set(&mut headers, header::LOCATION, &url);
        set(&mut headers, CONTENT_DIGEST, digest.as_str());
        set(&mut headers, header::CONTENT_LENGTH, "0");
        return Ok(empty(StatusCode::TEMPORARY_REDIRECT, headers));
    }
    let stream = state
        .blobs
        .read(&digest, range.map(|(s, e)| s..e))
        .await
        .map_err(|e| match e {
            // The row says the blob exists: a missing file is damage.
            StorageError::BlobUnknown(d) => ApiError::from(StorageError::Corrupt(format!(
                "blob {d} is recorded but missing"
            ))),
            e => e.into(),
        })?;
    // A whole blob is hashed as it is served: damaged bytes end the
    // response with an error instead of completing it.
    let stream = match range {
        Some(_) => stream,
        None => {
            let repo = repo.to_string();
            slipway_storage::blob::verified(stream, digest.clone(), size, move |sentence| {
                metrics::counter!("slipway_blob_damaged_reads_total").increment(1);
                tracing::error!(repository = %repo, "{sentence}; run `slipway admin fsck --repair`");
            })
        }
    };
    let mut resp = empty(status, headers);
    *resp.body_mut() = Body::from_stream(stream);
    Ok(resp)
}

pub async fn delete(
    state: &AppState,
    caller: &Caller,
    name: &str,
    digest_str: &str,
) -> ApiResult<Response> {
    let repo = repo_name(name)?;
    let digest = digest(digest_str)?;
    state.meta.unlink_blob(&repo, &digest).await?;
    audit(
        state,
        caller,
        "blob.delete",
        &repo,
        format!("{repo}@{digest}"),
        serde_json::json!({}),
    )
    .await;
    let mut headers = HeaderMap::new();
    set(&mut headers, header::CONTENT_LENGTH, "0");
    Ok(empty(StatusCode::ACCEPTED, headers))
}

/// Parses a single-range `Range` header against a blob of `size` bytes into
/// a half-open byte range. `None` when it is malformed or unsatisfiable.
pub fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if a.is_empty() {
        // Suffix: the last `b` bytes.
        if !digits(b) {
            return None;
        }
        let n: u64 = b.parse().ok()?;
        if n == 0 || size == 0 {
            return None;
        }
        return Some((size - n.min(size), size));
    }
    if !digits(a) {
        return None;
    }
    let start: u64 = a.parse().ok()?;
    if start >= size {
        return None;
    }
    let end = if b.is_empty() {
        size
    } else {
        if !digits(b) {
            return None;
        }
        let last: u64 = b.parse().ok()?;
        if last < start {
            return None;
        }
        last.saturating_add(1).min(size)
    };
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        type Case = (&'static str, u64, Option<(u64, u64)>);
        let cases: &[Case] = &[
            ("bytes=0-0", 10, Some((0, 1))),
            ("bytes=0-9", 10, Some((0, 10))),
            ("bytes=2-100", 10, Some((2, 10))),
            ("bytes=5-", 10, Some((5, 10))),
            ("bytes=-3", 10, Some((7, 10))),
            ("bytes=-30", 10, Some((0, 10))),
            ("bytes=10-", 10, None),
            ("bytes=10-12", 10, None),
            ("bytes=5-4", 10, None),
            ("bytes=-0", 10, None),
            ("bytes=0-1,3-4", 10, None),
            ("bytes=a-b", 10, None),
            ("bytes=+1-2", 10, None),
            ("items=0-1", 10, None),
            ("0-1", 10, None),
            ("bytes=0-0", 0, None),
            ("bytes=-", 10, None),
            ("bytes=99999999999999999999999-", 10, None),
        ];
        for (value, size, want) in cases {
            assert_eq!(parse_range(value, *size), *want, "{value} of {size}");
        }
    }
}
