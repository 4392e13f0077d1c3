//! Bad input: malformed digests and names, bad `Content-Range`, bodies
//! that are not manifests; and the run-wide audits of error bodies and
//! server errors.

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE};

use super::{Ctx, OCTET_STREAM};
use crate::client::Request;
use crate::content::{Blob, Manifest, OCI_MANIFEST, random_bytes};
use crate::expect::{self, Outcome, ensure};

fn repo(cx: &Ctx) -> String {
    cx.repo("errors")
}

/// Closes a fresh upload with `digest` (and the bytes): expects 400
/// `DIGEST_INVALID`.
async fn close_with(cx: &Ctx, digest: &str) -> Outcome {
    let repo = repo(cx);
    let upload = cx.start_upload(&repo, &[]).await?;
    let r = cx
        .put_upload(
            &cx.client,
            &upload.location,
            digest,
            Some(Bytes::from_static(b"0123456789")),
        )
        .await?;
    let verdict = expect::error(&r, 400, &["DIGEST_INVALID"]);
    cx.cancel(&upload.location).await;
    verdict
}

/// `PUT ?digest=sha256:<not hex>`: 400 `DIGEST_INVALID`.
pub async fn digest_invalid_push(cx: &Ctx) -> Outcome {
    close_with(cx, "sha256:not-a-hex-digest").await
}

/// `PUT ?digest=md5:…` (an algorithm OCI does not have): 400
/// `DIGEST_INVALID`.
pub async fn digest_unsupported(cx: &Ctx) -> Outcome {
    close_with(cx, "md5:781e5e245d69b566979b86e28d23f2c7").await
}

/// `GET /blobs/sha256:<not hex>`: 400 `DIGEST_INVALID`.
pub async fn digest_invalid_pull(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    cx.push_blob(&repo, &Blob::random(10)).await?;
    let r = cx.get(cx.v2(&repo, "blobs/sha256:zzzz")?).await?;
    expect::error(&r, 400, &["DIGEST_INVALID"])
}

/// Pushing into a name outside the grammar (upper case): 400
/// `NAME_INVALID`, to the upload and to the manifest.
pub async fn name_invalid(cx: &Ctx) -> Outcome {
    let repo = cx.repo("Upper-Case");
    let r = cx
        .send(Request::new(Method::POST, cx.v2(&repo, "blobs/uploads/")?).body(Bytes::new()))
        .await?;
    expect::error(&r, 400, &["NAME_INVALID"])?;
    let m = Manifest::from_bytes(OCI_MANIFEST, &b"{}"[..]);
    let r = cx.put_manifest(&repo, "latest", &m).await?;
    expect::error(&r, 400, &["NAME_INVALID"])
}

/// `PATCH` with a `Content-Range` outside `^[0-9]+-[0-9]+$`, ending before
/// it starts, or longer than the body: a 4xx with the spec's error JSON.
pub async fn content_range_malformed(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    for range in ["abc", "9-0", "-9", "0-99"] {
        let upload = cx.start_upload(&repo, &[]).await?;
        let r = cx
            .send(
                Request::new(Method::PATCH, upload.location.clone())
                    .header(CONTENT_TYPE, OCTET_STREAM)
                    .header(CONTENT_RANGE, range)
                    .body(Bytes::from_static(b"0123456789")),
            )
            .await;
        cx.cancel(&upload.location).await;
        let r = r?;
        ensure!(
            r.status.is_client_error(),
            "{} with Content-Range {range:?}: expected a 4xx, got {}",
            r.request,
            r.summary()
        );
        expect::error_body(&r.body).map_err(|e| {
            format!(
                "{} with Content-Range {range:?} → {}: {e}",
                r.request,
                r.status()
            )
        })?;
    }
    Ok(())
}

/// Random bytes as a manifest: 400 `MANIFEST_INVALID`.
pub async fn manifest_binary(cx: &Ctx) -> Outcome {
    let m = Manifest::from_bytes(OCI_MANIFEST, random_bytes(256));
    let r = cx.put_manifest(&repo(cx), "binary", &m).await?;
    expect::error(&r, 400, &["MANIFEST_INVALID"])
}

/// Every 4xx answer of this run (but `HEAD`s) whose body is JSON (or
/// says it is) carried the spec's error JSON with the spec's codes ("If
/// the response body is in JSON format, it MUST have the following
/// format").
pub async fn error_bodies(cx: &Ctx) -> Outcome {
    let audit = cx.client.audit();
    let bad = &audit.bad_error_bodies;
    ensure!(
        bad.is_empty(),
        "{} JSON error responses not in the spec's error format, such as: {}",
        bad.len(),
        examples(bad)
    );
    Ok(())
}

/// Every 4xx answer of this run (but `HEAD`s) had a body, and it was the
/// spec's error JSON. The spec lets a 4xx body be "in any format"; this
/// suite wants the error JSON, which clients show to users.
pub async fn error_bodies_json(cx: &Ctx) -> Outcome {
    let audit = cx.client.audit();
    let bad = &audit.non_json_error_bodies;
    ensure!(
        bad.is_empty(),
        "{} error responses without a JSON body, such as: {}",
        bad.len(),
        examples(bad)
    );
    Ok(())
}

/// Every `Warning` header of this run was `299 - "<text>"`, with no date,
/// and at most 4096 bytes of them per response.
pub async fn warning_headers(cx: &Ctx) -> Outcome {
    let audit = cx.client.audit();
    let bad = &audit.bad_warnings;
    ensure!(
        bad.is_empty(),
        "{} responses with malformed Warning headers, such as: {}",
        bad.len(),
        examples(bad)
    );
    Ok(())
}

fn examples(lines: &[String]) -> String {
    lines.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
}

/// No request of this run was answered with a 5xx.
pub async fn no_server_errors(cx: &Ctx) -> Outcome {
    let audit = cx.client.audit();
    let bad = &audit.server_errors;
    ensure!(
        bad.is_empty(),
        "{} server errors, such as: {}",
        bad.len(),
        examples(bad)
    );
    Ok(())
}
