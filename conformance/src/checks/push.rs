//! Push: monolithic and chunked uploads, status, resume, cancel, digests,
//! sha512, the empty blob, and cross-repository mounts.

use bytes::Bytes;
use reqwest::Method;

use super::{Ctx, OCTET_STREAM, Upload, location, with_query};
use crate::client::{Client, Request, Response};
use crate::content::{self, Blob, unknown_digest};
use crate::expect::{self, Outcome, ensure};
use reqwest::header::CONTENT_TYPE;

fn repo(cx: &Ctx) -> String {
    cx.repo("push")
}

/// `POST ?digest=` with the bytes. A registry without single-POST uploads
/// may answer 202 with a session; the spec then has the client `PUT`.
/// Returns whether it had to.
async fn single_post(cx: &Ctx, repo: &str, blob: &Blob) -> Outcome<bool> {
    let url = with_query(&cx.v2(repo, "blobs/uploads/")?, &[("digest", &blob.digest)]);
    let r = cx
        .send(
            Request::new(Method::POST, url)
                .header(CONTENT_TYPE, OCTET_STREAM)
                .body(blob.data.clone()),
        )
        .await?;
    match r.status() {
        201 => {
            let at = location(&r)?;
            let got = cx.get(at).await?;
            expect::status(&got, 200).map_err(|e| format!("the blob Location: {e}"))?;
            expect::body_eq(&got, &blob.data)?;
            Ok(false)
        }
        202 => {
            let at = location(&r)?;
            let r = cx
                .put_upload(&cx.client, &at, &blob.digest, Some(blob.data.clone()))
                .await?;
            expect::status(&r, 201)?;
            expect::header(&r, "Location")?;
            Ok(true)
        }
        _ => Err(format!(
            "{}: expected 201 (or 202 to continue with PUT), got {}",
            r.request,
            r.summary()
        )),
    }
}

/// Single `POST ?digest=`: 201 with a `Location` to pull the blob from.
pub async fn monolithic_post(cx: &Ctx) -> Outcome {
    let blob = Blob::random(2048);
    if single_post(cx, &repo(cx), &blob).await? {
        cx.note("202: single-POST unsupported (MAY); finished with PUT");
    }
    cx.blob_is(&repo(cx), &blob).await
}

/// `POST` (202, `Location`), then `PUT <location>?digest=` with the bytes:
/// 201 with a pullable `Location`; `HEAD` then has its size.
pub async fn post_then_put(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let blob = Blob::random(5000);
    let upload = cx.start_upload(&repo, &[]).await?;
    let r = cx
        .put_upload(
            &cx.client,
            &upload.location,
            &blob.digest,
            Some(blob.data.clone()),
        )
        .await?;
    expect::status(&r, 201)?;
    let at = location(&r)?;
    let got = cx.get(at).await?;
    expect::status(&got, 200).map_err(|e| format!("the blob Location: {e}"))?;
    expect::body_eq(&got, &blob.data)?;
    let r = cx
        .head(cx.v2(&repo, &format!("blobs/{}", blob.digest))?)
        .await?;
    expect::status(&r, 200)?;
    expect::content_length(&r, blob.len(), true)
}

/// Chunk sizes for an upload: at least the registry's minimum.
fn chunk_size(upload: &Upload, wanted: usize) -> usize {
    wanted.max(upload.min_chunk)
}

/// `PATCH`es `data[from..to]` in chunks of `size`, each answered 202 with
/// `Location` and `Range: 0-<end>`. Returns the last `Location`.
async fn patch_chunks(
    cx: &Ctx,
    client: &Client,
    mut at: reqwest::Url,
    data: &[u8],
    from: usize,
    to: usize,
    size: usize,
) -> Outcome<reqwest::Url> {
    let mut start = from;
    while start < to {
        let end = (start + size).min(to);
        let r = cx.patch(client, &at, &data[start..end], start).await?;
        expect::status(&r, 202)?;
        expect::header_eq(&r, "Range", &format!("0-{}", end - 1))?;
        at = location(&r)?;
        start = end;
    }
    Ok(at)
}

/// `POST`, `PATCH` chunks in order (each 202 with `Range`), closing `PUT`
/// (201): the blob is whole. With `last_in_put`, the final chunk travels
/// in the `PUT` with its `Content-Range`.
pub async fn chunked(cx: &Ctx, last_in_put: bool) -> Outcome {
    let repo = repo(cx);
    let upload = cx.start_upload(&repo, &[]).await?;
    let size = chunk_size(&upload, 4000);
    let blob = Blob::random(size * 2 + size / 2);
    let patched = if last_in_put { size * 2 } else { blob.len() };
    let at = patch_chunks(
        cx,
        &cx.client,
        upload.location,
        &blob.data,
        0,
        patched,
        size,
    )
    .await?;
    let r = if last_in_put {
        let tail = &blob.data[patched..];
        let url = with_query(&at, &[("digest", &blob.digest)]);
        cx.send(
            Request::new(Method::PUT, url)
                .header(CONTENT_TYPE, OCTET_STREAM)
                .header(
                    reqwest::header::CONTENT_RANGE,
                    format!("{patched}-{}", blob.len() - 1),
                )
                .body(Bytes::copy_from_slice(tail)),
        )
        .await?
    } else {
        cx.put_upload(&cx.client, &at, &blob.digest, None).await?
    };
    expect::status(&r, 201)?;
    expect::header(&r, "Location")?;
    cx.blob_is(&repo, &blob).await
}

/// Single `POST ?digest=` whose bytes have another digest: 400
/// `DIGEST_INVALID` and no blob (or 202, for a registry without
/// single-POST uploads, which then must not have stored anything).
pub async fn monolithic_digest_mismatch(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let blob = Blob::random(1000);
    let claimed = unknown_digest();
    let url = with_query(&cx.v2(&repo, "blobs/uploads/")?, &[("digest", &claimed)]);
    let r = cx
        .send(
            Request::new(Method::POST, url)
                .header(CONTENT_TYPE, OCTET_STREAM)
                .body(blob.data.clone()),
        )
        .await?;
    if r.status() == 202 {
        if let Ok(at) = location(&r) {
            cx.cancel(&at).await;
        }
        cx.note("202: single-POST unsupported (MAY)");
    } else {
        expect::error(&r, 400, &["DIGEST_INVALID"])?;
    }
    cx.blob_absent(&repo, &claimed).await?;
    cx.blob_absent(&repo, &blob.digest).await
}

/// After the closing `PUT`, the session is over: `GET` on its location is
/// 404 `BLOB_UPLOAD_UNKNOWN`.
pub async fn upload_finished(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let blob = Blob::random(300);
    let upload = cx.start_upload(&repo, &[]).await?;
    let r = cx
        .put_upload(
            &cx.client,
            &upload.location,
            &blob.digest,
            Some(blob.data.clone()),
        )
        .await?;
    expect::status(&r, 201)?;
    let r = cx.get(upload.location).await?;
    expect::error(&r, 404, &["BLOB_UPLOAD_UNKNOWN"])
}

/// `GET <location>`: 204, `Location`, `Range: 0-<end>`.
async fn status_of(client: &Client, at: &reqwest::Url) -> Outcome<(Response, usize)> {
    let r = client.send(Request::new(Method::GET, at.clone())).await?;
    expect::status(&r, 204)?;
    expect::header(&r, "Location")?;
    let range = expect::header(&r, "Range")?;
    let end = range
        .strip_prefix("0-")
        .and_then(|e| e.parse::<usize>().ok())
        .ok_or_else(|| format!("{}: Range {range:?} is not 0-<end>", r.request))?;
    Ok((r, end))
}

/// A chunk that skips ahead: 416; the upload is unharmed (status still at
/// the last good byte, and it finishes).
pub async fn chunk_out_of_order(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let upload = cx.start_upload(&repo, &[]).await?;
    let size = chunk_size(&upload, 1000);
    let blob = Blob::random(size * 3);
    let at = patch_chunks(cx, &cx.client, upload.location, &blob.data, 0, size, size).await?;
    let r = cx
        .patch(&cx.client, &at, &blob.data[size * 2..], size * 2)
        .await?;
    let refused = expect::status(&r, 416);
    if refused.is_err() {
        cx.cancel(&at).await;
    }
    refused?;
    let (st, end) = status_of(&cx.client, &at).await?;
    ensure!(
        end == size - 1,
        "after the refused chunk, the upload status says Range 0-{end}, expected 0-{}",
        size - 1
    );
    let at = location(&st)?;
    let at = patch_chunks(cx, &cx.client, at, &blob.data, size, blob.len(), size).await?;
    let r = cx.put_upload(&cx.client, &at, &blob.digest, None).await?;
    expect::status(&r, 201)?;
    cx.blob_is(&repo, &blob).await
}

/// A first chunk that does not start at 0: 416.
pub async fn first_chunk_not_zero(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let upload = cx.start_upload(&repo, &[]).await?;
    let size = chunk_size(&upload, 100);
    let data = content::random_bytes(size);
    let r = cx.patch(&cx.client, &upload.location, &data, size).await;
    cx.cancel(&upload.location).await;
    expect::status(&r?, 416)
}

/// A closing `PUT` whose final chunk does not follow the last byte: 416;
/// the upload is unharmed and a `PUT` with the right chunk finishes it.
pub async fn final_chunk_out_of_order(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let upload = cx.start_upload(&repo, &[]).await?;
    let size = chunk_size(&upload, 1000);
    let blob = Blob::random(size * 3);
    let at = patch_chunks(cx, &cx.client, upload.location, &blob.data, 0, size, size).await?;
    let close = |from: usize| {
        let url = with_query(&at, &[("digest", &blob.digest)]);
        Request::new(Method::PUT, url)
            .header(CONTENT_TYPE, OCTET_STREAM)
            .header(
                reqwest::header::CONTENT_RANGE,
                format!("{from}-{}", blob.len() - 1),
            )
            .body(blob.data.slice(from..))
    };
    let r = cx.send(close(size * 2)).await?;
    let refused = expect::status(&r, 416);
    if refused.is_err() {
        cx.cancel(&at).await;
    }
    refused?;
    let (_, end) = status_of(&cx.client, &at).await?;
    ensure!(
        end == size - 1,
        "after the refused final chunk, the upload status says Range 0-{end}, expected 0-{}",
        size - 1
    );
    let r = cx.send(close(size)).await?;
    expect::status(&r, 201)?;
    cx.blob_is(&repo, &blob).await
}

/// Two sessions upload the same blob at once (the spec's "Layer Upload
/// De-duplication"): they have different locations, both finish with 201
/// and the blob is whole.
pub async fn concurrent_same_blob(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let a = cx.start_upload(&repo, &[]).await?;
    let b = cx.start_upload(&repo, &[]).await?;
    if a.location == b.location {
        cx.cancel(&a.location).await;
        return Err(format!(
            "two POSTs to blobs/uploads/ gave the same Location {}: a session id MUST be unique",
            a.location.path()
        ));
    }
    let size = chunk_size(&a, 2500).max(b.min_chunk);
    let blob = Blob::random(size * 2);
    let half = size;
    let a_at = patch_chunks(cx, &cx.client, a.location, &blob.data, 0, half, size).await?;
    let b_at = patch_chunks(cx, &cx.client, b.location, &blob.data, 0, half, size).await?;
    let a_at = patch_chunks(cx, &cx.client, a_at, &blob.data, half, blob.len(), size).await?;
    let b_at = patch_chunks(cx, &cx.client, b_at, &blob.data, half, blob.len(), size).await?;
    let (ra, rb) = futures::join!(
        cx.put_upload(&cx.client, &a_at, &blob.digest, None),
        cx.put_upload(&cx.client, &b_at, &blob.digest, None)
    );
    expect::status(&ra?, 201).map_err(|e| format!("first session: {e}"))?;
    expect::status(&rb?, 201).map_err(|e| format!("second session: {e}"))?;
    cx.blob_is(&repo, &blob).await
}

/// `GET <location>` during an upload: 204 with `Location` and
/// `Range: 0-<last byte>`.
pub async fn upload_status(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let upload = cx.start_upload(&repo, &[]).await?;
    let size = chunk_size(&upload, 1500);
    let data = content::random_bytes(size);
    let at = patch_chunks(cx, &cx.client, upload.location, &data, 0, size, size).await?;
    let result = async {
        let (r, end) = status_of(&cx.client, &at).await?;
        ensure!(
            end == size - 1,
            "{}: Range 0-{end}, expected 0-{}",
            r.request,
            size - 1
        );
        expect::no_body(&r)
    }
    .await;
    cx.cancel(&at).await;
    result
}

/// A client that restarts mid-upload: a fresh client (no tokens) asks for
/// the status, continues from the end of `Range`, and finishes.
pub async fn upload_resume(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let upload = cx.start_upload(&repo, &[]).await?;
    let size = chunk_size(&upload, 3000);
    let blob = Blob::random(size * 2 + 17);
    let at = patch_chunks(cx, &cx.client, upload.location, &blob.data, 0, size, size).await?;

    let fresh = cx.client.restarted()?;
    let (r, end) = status_of(&fresh, &at).await?;
    ensure!(
        end + 1 == size,
        "{}: Range 0-{end} after {size} bytes",
        r.request
    );
    let at = location(&r)?;
    let at = patch_chunks(cx, &fresh, at, &blob.data, end + 1, blob.len(), size).await?;
    let r = cx.put_upload(&fresh, &at, &blob.digest, None).await?;
    expect::status(&r, 201)?;
    cx.blob_is(&repo, &blob).await
}

/// `DELETE <location>`: 204; then the session is unknown (404
/// `BLOB_UPLOAD_UNKNOWN` to `GET` and `PATCH`) and no blob appeared.
pub async fn upload_cancel(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let upload = cx.start_upload(&repo, &[]).await?;
    let blob = Blob::random(200);
    let at = patch_chunks(cx, &cx.client, upload.location, &blob.data, 0, 100, 100).await?;
    let r = cx
        .send(Request::new(Method::DELETE, at.clone()).body(Bytes::new()))
        .await?;
    expect::status(&r, 204)?;
    let r = cx.get(at.clone()).await?;
    expect::error(&r, 404, &["BLOB_UPLOAD_UNKNOWN"])?;
    let r = cx.patch(&cx.client, &at, &blob.data[100..], 100).await?;
    expect::error(&r, 404, &["BLOB_UPLOAD_UNKNOWN"])?;
    cx.blob_absent(&repo, &blob.digest).await
}

/// A session id nobody opened: 404 `BLOB_UPLOAD_UNKNOWN` to `GET` and
/// `PATCH`.
pub async fn upload_unknown(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let id = hex::encode(content::random_bytes(16));
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &id[..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..]
    );
    let at = cx.v2(&repo, &format!("blobs/uploads/{uuid}"))?;
    let r = cx.get(at.clone()).await?;
    expect::error(&r, 404, &["BLOB_UPLOAD_UNKNOWN"])?;
    let r = cx.patch(&cx.client, &at, b"0123456789", 0).await?;
    expect::error(&r, 404, &["BLOB_UPLOAD_UNKNOWN"])
}

/// The closing `PUT` names a digest the bytes do not have: 400
/// `DIGEST_INVALID`, and neither digest is then a blob.
pub async fn digest_mismatch(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let blob = Blob::random(2000);
    let claimed = unknown_digest();
    let upload = cx.start_upload(&repo, &[]).await?;
    let r = cx
        .put_upload(
            &cx.client,
            &upload.location,
            &claimed,
            Some(blob.data.clone()),
        )
        .await?;
    let verdict = expect::error(&r, 400, &["DIGEST_INVALID"]);
    cx.cancel(&upload.location).await;
    verdict?;
    cx.blob_absent(&repo, &claimed).await?;
    cx.blob_absent(&repo, &blob.digest).await
}

/// The blob is there by its sha512 digest; `Docker-Content-Digest`, if
/// sent, is a digest of the bytes (sha512, or their sha256).
async fn sha512_visible(cx: &Ctx, repo: &str, blob: &Blob) -> Outcome {
    cx.blob_is(repo, blob).await?;
    let r = cx
        .head(cx.v2(repo, &format!("blobs/{}", blob.digest))?)
        .await?;
    expect::status(&r, 200)?;
    expect::content_length(&r, blob.len(), true)?;
    if let Some(d) = r.header("Docker-Content-Digest") {
        ensure!(
            d == blob.digest || d == content::sha256(&blob.data),
            "{}: Docker-Content-Digest {d:?} is not a digest of the blob",
            r.request
        );
    }
    Ok(())
}

/// Single `POST ?digest=sha512:…`: the blob is pullable by that digest.
pub async fn sha512_monolithic(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let blob = Blob::sha512(content::random_bytes(4096));
    if single_post(cx, &repo, &blob).await? {
        cx.note("202: single-POST unsupported (MAY); finished with PUT");
    }
    sha512_visible(cx, &repo, &blob).await
}

/// `POST ?digest-algorithm=sha512`, chunks, `PUT ?digest=sha512:…`.
pub async fn sha512_chunked(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let upload = cx
        .start_upload(&repo, &[("digest-algorithm", "sha512")])
        .await?;
    let size = chunk_size(&upload, 3000);
    let blob = Blob::sha512(content::random_bytes(size * 2 + 5));
    let at = patch_chunks(
        cx,
        &cx.client,
        upload.location,
        &blob.data,
        0,
        blob.len(),
        size,
    )
    .await?;
    let r = cx.put_upload(&cx.client, &at, &blob.digest, None).await?;
    expect::status(&r, 201)?;
    sha512_visible(cx, &repo, &blob).await
}

/// A zero-length blob: `POST` then `PUT` with `Content-Length: 0`; then
/// `HEAD` says 0 bytes and `GET` returns nothing.
pub async fn empty_blob(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let blob = Blob::new(Bytes::new());
    let upload = cx.start_upload(&repo, &[]).await?;
    let r = cx
        .put_upload(
            &cx.client,
            &upload.location,
            &blob.digest,
            Some(Bytes::new()),
        )
        .await?;
    expect::status(&r, 201)?;
    let url = cx.v2(&repo, &format!("blobs/{}", blob.digest))?;
    let r = cx.head(url.clone()).await?;
    expect::status(&r, 200)?;
    expect::content_length(&r, 0, true)?;
    let r = cx.get(url).await?;
    expect::status(&r, 200)?;
    expect::no_body(&r)
}

/// `POST ?mount=<digest>&from=<repo>`: 201 with `Location`; the blob is
/// then in the target repository.
pub async fn mount(cx: &Ctx) -> Outcome {
    let from = cx.repo("mount-src");
    let to = cx.repo("mount-dst");
    let blob = Blob::random(1500);
    cx.push_blob(&from, &blob).await?;
    let url = with_query(
        &cx.v2(&to, "blobs/uploads/")?,
        &[("mount", &blob.digest), ("from", &from)],
    );
    let r = cx
        .send(
            Request::new(Method::POST, url)
                .body(Bytes::new())
                .extra_scope(format!("repository:{from}:pull")),
        )
        .await?;
    if r.status() == 202
        && let Ok(at) = location(&r)
    {
        cx.cancel(&at).await;
    }
    expect::status(&r, 201)?;
    let at = location(&r)?;
    let got = cx.get(at).await?;
    expect::status(&got, 200).map_err(|e| format!("the mounted blob's Location: {e}"))?;
    expect::body_eq(&got, &blob.data)?;
    cx.blob_is(&to, &blob).await
}

/// Mounting a blob that no repository has: 202 and a usable upload
/// session (`GET` on its `Location` is 204).
pub async fn mount_missing(cx: &Ctx) -> Outcome {
    let from = cx.repo("mount-src");
    let to = cx.repo("mount-dst");
    cx.push_blob(&from, &Blob::random(100)).await?;
    let url = with_query(
        &cx.v2(&to, "blobs/uploads/")?,
        &[("mount", &unknown_digest()), ("from", &from)],
    );
    let r = cx
        .send(
            Request::new(Method::POST, url)
                .body(Bytes::new())
                .extra_scope(format!("repository:{from}:pull")),
        )
        .await?;
    expect::status(&r, 202)?;
    let at = location(&r)?;
    let result = async {
        let st = cx.get(at.clone()).await?;
        expect::status(&st, 204).map_err(|e| format!("the session from the mount: {e}"))
    }
    .await;
    cx.cancel(&at).await;
    result
}
