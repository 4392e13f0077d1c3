//! The checks, by spec area, and the runner that turns each into a result.
//!
//! A check is an `async fn(&Ctx) -> Outcome`: it builds what it needs
//! (blobs, manifests) in its own repository under the target's namespace,
//! makes its requests, and returns `Err` with a one-line reason at the first
//! thing the spec does not allow. The runner catches panics and time-outs,
//! so a check can only ever fail, never stop the run.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use reqwest::header::{ACCEPT, CONTENT_RANGE, CONTENT_TYPE};
use reqwest::{Method, Url};
use tokio::sync::OnceCell;

use crate::Target;
use crate::client::{Client, Request, Response};
use crate::content::{Blob, Image, Manifest, accept_all};
use crate::expect::{self, Outcome, ensure};
use crate::report::{CheckResult, Report};

mod base;
mod discovery;
mod errors;
mod management;
mod manifests;
mod pull;
mod push;

/// How long one check may take, setup included.
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

pub const OCTET_STREAM: &str = "application/octet-stream";

/// What every check gets: the client, the namespace, shared fixtures.
pub struct Ctx {
    pub client: Client,
    pub target: Target,
    note: Mutex<Option<String>>,
    pull: OnceCell<Outcome<pull::Fixture>>,
    tags: OnceCell<Outcome<discovery::TagsFixture>>,
    referrers: OnceCell<Outcome<discovery::ReferrersFixture>>,
}

/// An upload session: where to send the next request, and the smallest
/// chunk the registry wants (`OCI-Chunk-Min-Length`, 0 when not given).
pub struct Upload {
    pub location: Url,
    pub min_chunk: usize,
}

impl Ctx {
    /// `<namespace>/<name>`.
    pub fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.target.namespace.trim_matches('/'))
    }

    /// `/v2/<repo>/<rest>` against the base URL.
    pub fn v2(&self, repo: &str, rest: &str) -> Outcome<Url> {
        self.client.url(&format!("/v2/{repo}/{rest}"))
    }

    pub async fn send(&self, req: Request) -> Outcome<Response> {
        self.client.send(req).await
    }

    /// Records a note that goes with a pass.
    pub fn note(&self, note: impl Into<String>) {
        *self.note.lock().unwrap_or_else(|p| p.into_inner()) = Some(note.into());
    }

    fn take_note(&self) -> Option<String> {
        self.note.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub async fn get(&self, url: Url) -> Outcome<Response> {
        self.send(Request::new(Method::GET, url)).await
    }

    pub async fn head(&self, url: Url) -> Outcome<Response> {
        self.send(Request::new(Method::HEAD, url)).await
    }

    pub async fn delete(&self, url: Url) -> Outcome<Response> {
        self.send(Request::new(Method::DELETE, url)).await
    }

    /// `GET` (or `HEAD`) of a manifest, accepting every manifest type.
    pub async fn fetch_manifest(
        &self,
        method: Method,
        repo: &str,
        reference: &str,
    ) -> Outcome<Response> {
        let url = self.v2(repo, &format!("manifests/{reference}"))?;
        self.send(Request::new(method, url).header(ACCEPT, accept_all()))
            .await
    }

    /// `POST /v2/<repo>/blobs/uploads/` with an empty body: 202 and a
    /// `Location`.
    pub async fn start_upload(&self, repo: &str, query: &[(&str, &str)]) -> Outcome<Upload> {
        let url = with_query(&self.v2(repo, "blobs/uploads/")?, query);
        let r = self
            .send(Request::new(Method::POST, url).body(Bytes::new()))
            .await?;
        expect::status(&r, 202)?;
        let min_chunk = r
            .header("OCI-Chunk-Min-Length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Ok(Upload {
            location: location(&r)?,
            min_chunk,
        })
    }

    /// `PATCH` a chunk that starts at `start`, with `Content-Range` and
    /// `Content-Length`.
    pub async fn patch(
        &self,
        client: &Client,
        at: &Url,
        chunk: &[u8],
        start: usize,
    ) -> Outcome<Response> {
        let range = format!("{start}-{}", (start + chunk.len()).saturating_sub(1));
        client
            .send(
                Request::new(Method::PATCH, at.clone())
                    .header(CONTENT_TYPE, OCTET_STREAM)
                    .header(CONTENT_RANGE, range)
                    .body(Bytes::copy_from_slice(chunk)),
            )
            .await
    }

    /// The closing `PUT <location>?digest=…`, with an optional last chunk.
    pub async fn put_upload(
        &self,
        client: &Client,
        at: &Url,
        digest: &str,
        body: Option<Bytes>,
    ) -> Outcome<Response> {
        let url = with_query(at, &[("digest", digest)]);
        let req = Request::new(Method::PUT, url)
            .header(CONTENT_TYPE, OCTET_STREAM)
            .body(body.unwrap_or_default());
        client.send(req).await
    }

    /// Pushes a blob the most common way (POST, then PUT with the bytes).
    pub async fn push_blob(&self, repo: &str, blob: &Blob) -> Outcome {
        let upload = self
            .start_upload(repo, &[])
            .await
            .map_err(|e| format!("pushing blob {}: {e}", short(&blob.digest)))?;
        let r = self
            .put_upload(
                &self.client,
                &upload.location,
                &blob.digest,
                Some(blob.data.clone()),
            )
            .await?;
        expect::status(&r, 201).map_err(|e| format!("pushing blob {}: {e}", short(&blob.digest)))
    }

    pub async fn push_blobs(&self, repo: &str, blobs: &[Blob]) -> Outcome {
        for b in blobs {
            self.push_blob(repo, b).await?;
        }
        Ok(())
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with the manifest's type.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        m: &Manifest,
    ) -> Outcome<Response> {
        let url = self.v2(repo, &format!("manifests/{reference}"))?;
        self.send(
            Request::new(Method::PUT, url)
                .header(CONTENT_TYPE, m.media_type.clone())
                .body(m.body.clone()),
        )
        .await
    }

    /// Pushes a manifest and expects 201.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        m: &Manifest,
    ) -> Outcome<Response> {
        let r = self.put_manifest(repo, reference, m).await?;
        expect::status(&r, 201)?;
        Ok(r)
    }

    /// Pushes an image's blobs, then its manifest by `reference`.
    pub async fn push_image(&self, repo: &str, reference: &str, image: &Image) -> Outcome {
        self.push_blobs(repo, &image.blobs).await?;
        self.push_manifest(repo, reference, &image.manifest).await?;
        Ok(())
    }

    /// The blob is there with exactly these bytes.
    pub async fn blob_is(&self, repo: &str, blob: &Blob) -> Outcome {
        let r = self
            .get(self.v2(repo, &format!("blobs/{}", blob.digest))?)
            .await?;
        expect::status(&r, 200)?;
        expect::body_eq(&r, &blob.data)
    }

    /// `HEAD` of the blob is 404.
    pub async fn blob_absent(&self, repo: &str, digest: &str) -> Outcome {
        let r = self
            .head(self.v2(repo, &format!("blobs/{digest}"))?)
            .await?;
        ensure!(
            r.status() == 404,
            "{}: the blob should not exist, got {}",
            r.request,
            r.status()
        );
        Ok(())
    }

    /// Ends an upload session, ignoring failures (clean-up only).
    pub async fn cancel(&self, at: &Url) {
        let _ = self.delete(at.clone()).await;
    }

    pub async fn pull_fixture(&self) -> Outcome<&pull::Fixture> {
        fixture(&self.pull, pull::fixture(self)).await
    }

    pub async fn tags_fixture(&self) -> Outcome<&discovery::TagsFixture> {
        fixture(&self.tags, discovery::tags_fixture(self)).await
    }

    pub async fn referrers_fixture(&self) -> Outcome<&discovery::ReferrersFixture> {
        fixture(&self.referrers, discovery::referrers_fixture(self)).await
    }
}

async fn fixture<T>(
    cell: &OnceCell<Outcome<T>>,
    make: impl Future<Output = Outcome<T>>,
) -> Outcome<&T> {
    cell.get_or_init(|| make)
        .await
        .as_ref()
        .map_err(|e| format!("setup failed: {e}"))
}

/// The `Location` of a response, resolved against the request's URL.
pub fn location(r: &Response) -> Outcome<Url> {
    let value = expect::header(r, "Location")?;
    r.url
        .join(value)
        .map_err(|e| format!("{}: Location {value:?} is not a URL: {e}", r.request))
}

/// `url` with more query parameters (kept after any it has).
pub fn with_query(url: &Url, pairs: &[(&str, &str)]) -> Url {
    let mut url = url.clone();
    if !pairs.is_empty() {
        let mut q = url.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    url
}

/// `sha256:0123456789ab…`, for reasons.
pub fn short(digest: &str) -> String {
    digest.chars().take(19).collect::<String>() + "…"
}

/// Runs each check in order: `"name", "spec section" => future;`.
macro_rules! checks {
    ($runner:ident; $($name:literal, $section:literal => $check:expr;)*) => {
        $($runner.check($name, $section, $check).await;)*
    };
}

/// Runs every check (or those `select` keeps) and reports.
pub async fn run(target: &Target, select: &dyn Fn(&str) -> bool) -> Report {
    let client = match Client::new(target) {
        Ok(c) => c,
        Err(e) => {
            return Report {
                results: vec![CheckResult {
                    name: "base/api-version",
                    section: "Determining Support (end-1)",
                    passed: false,
                    reason: e,
                }],
            };
        }
    };
    let cx = Ctx {
        client,
        target: target.clone(),
        note: Mutex::new(None),
        pull: OnceCell::new(),
        tags: OnceCell::new(),
        referrers: OnceCell::new(),
    };
    let mut r = Runner {
        cx: &cx,
        select,
        report: Report::default(),
    };
    let cx = &cx;

    checks! { r;
        "base/api-version", "Determining Support (end-1)"
            => base::api_version(cx);
        "base/auth-challenge", "Error Codes: UNAUTHORIZED (end-1)"
            => base::auth_challenge(cx);

        "pull/manifest-get-by-tag", "Pull: Pulling manifests (end-3)"
            => pull::manifest_get(cx, pull::ByTag);
        "pull/manifest-head-by-tag", "Pull: Checking if content exists (end-3)"
            => pull::manifest_head(cx, pull::ByTag);
        "pull/manifest-get-by-digest", "Pull: Pulling manifests (end-3)"
            => pull::manifest_get(cx, pull::ByDigest);
        "pull/manifest-head-by-digest", "Pull: Checking if content exists (end-3)"
            => pull::manifest_head(cx, pull::ByDigest);
        "pull/negotiate-oci-manifest", "Pull: Pulling manifests, Content Negotiation"
            => pull::negotiate(cx, pull::Kind::OciManifest);
        "pull/negotiate-oci-index", "Pull: Pulling manifests, Content Negotiation"
            => pull::negotiate(cx, pull::Kind::OciIndex);
        "pull/negotiate-docker-manifest", "Pull: Pulling manifests, Content Negotiation"
            => pull::negotiate(cx, pull::Kind::DockerManifest);
        "pull/negotiate-docker-list", "Pull: Pulling manifests, Content Negotiation"
            => pull::negotiate(cx, pull::Kind::DockerList);
        "pull/blob-get", "Pull: Pulling blobs (end-2)"
            => pull::blob_get(cx);
        "pull/blob-head", "Pull: Checking if content exists (end-2)"
            => pull::blob_head(cx);
        "pull/blob-range", "Pull: Pulling blobs, Range (RFC 9110 14)"
            => pull::blob_range(cx);
        "pull/blob-range-open-ended", "Pull: Pulling blobs, Range (RFC 9110 14)"
            => pull::blob_range_open(cx);
        "pull/blob-range-unknown-unit", "Pull: Pulling blobs, Range with an unknown unit is ignored (RFC 9110 14.2)"
            => pull::blob_range_unknown_unit(cx);
        "pull/blob-range-unsatisfiable", "Pull: Pulling blobs, Range (RFC 9110 15.5.17)"
            => pull::blob_range_unsatisfiable(cx);
        "pull/manifest-unknown", "Pull: Pulling manifests (end-3, code-7)"
            => pull::manifest_unknown(cx);
        "pull/manifest-invalid-reference", "Pull: Pulling manifests, a reference that cannot exist: 404 (end-3; official suite v1.1)"
            => pull::manifest_invalid_reference(cx);
        "pull/blob-unknown", "Pull: Pulling blobs (end-2, code-1)"
            => pull::blob_unknown(cx);
        "pull/repository-unknown", "Push: Pushing Manifests, nonexistent repository (code-9)"
            => pull::repository_unknown(cx);
        "pull/repository-scoping", "Pull: content of another repository is not found (end-2, end-3)"
            => pull::repository_scoping(cx);

        "push/monolithic-post", "Push: Single POST (end-4b)"
            => push::monolithic_post(cx);
        "push/monolithic-digest-mismatch", "Push: Single POST with a wrong digest (end-4b, code-4)"
            => push::monolithic_digest_mismatch(cx);
        "push/post-then-put", "Push: POST then PUT (end-4a, end-6)"
            => push::post_then_put(cx);
        "push/chunked", "Push: Pushing a blob in chunks (end-5, end-6)"
            => push::chunked(cx, false);
        "push/chunked-last-in-put", "Push: Pushing a blob in chunks, final chunk in PUT (end-6)"
            => push::chunked(cx, true);
        "push/chunk-out-of-order", "Push: Pushing a blob in chunks, out of order: 416 (end-5)"
            => push::chunk_out_of_order(cx);
        "push/first-chunk-not-zero", "Push: the first chunk's range MUST begin with 0: 416 (end-5)"
            => push::first_chunk_not_zero(cx);
        "push/final-chunk-out-of-order", "Push: closing PUT with an out-of-order final chunk: 416 (end-6)"
            => push::final_chunk_out_of_order(cx);
        "push/upload-status", "Push: upload status (end-13)"
            => push::upload_status(cx);
        "push/upload-resume", "Use Cases: Resumable Push (end-13, end-5)"
            => push::upload_resume(cx);
        "push/upload-cancel", "Push: Cancel a blob upload (end-14, code-3)"
            => push::upload_cancel(cx);
        "push/upload-unknown", "Push: unknown upload session (end-5, end-13, code-3)"
            => push::upload_unknown(cx);
        "push/upload-finished", "Push: a closed session is unknown (end-13, code-3)"
            => push::upload_finished(cx);
        "push/digest-mismatch", "Push: closing PUT with a wrong digest (end-6, code-4)"
            => push::digest_mismatch(cx);
        "push/sha512-monolithic", "Push: sha512 blobs, single POST (end-4b; image-spec MAY, required here)"
            => push::sha512_monolithic(cx);
        "push/sha512-chunked", "Push: sha512 blobs, digest-algorithm=sha512 (end-4c, end-5, end-6; MAY, required here)"
            => push::sha512_chunked(cx);
        "push/empty-blob", "Push: POST then PUT of a zero-length blob (end-6)"
            => push::empty_blob(cx);
        "push/mount", "Push: Mounting a blob from another repository (end-11)"
            => push::mount(cx);
        "push/mount-missing", "Push: Mounting a blob, not mountable: 202 (end-11)"
            => push::mount_missing(cx);
        "push/concurrent-same-blob", "Use Cases: Layer Upload De-duplication (end-6)"
            => push::concurrent_same_blob(cx);

        "manifest/put-by-tag", "Push: Pushing Manifests (end-7a)"
            => manifests::put_by_tag(cx);
        "manifest/put-by-digest", "Push: Pushing Manifests (end-7a)"
            => manifests::put_by_digest(cx);
        "manifest/put-by-sha512-digest", "Push: Pushing Manifests, Docker-Content-Digest equals the client's digest (end-7a)"
            => manifests::put_by_sha512_digest(cx);
        "manifest/byte-exact", "Push: Pushing Manifests, exact byte representation"
            => manifests::byte_exact(cx);
        "manifest/content-type-parameters", "Push: Pushing Manifests, Content-Type parameters ignored (SHOULD)"
            => manifests::content_type_parameters(cx);
        "manifest/digest-mismatch", "Push: Pushing Manifests by digest (code-4)"
            => manifests::digest_mismatch(cx);
        "manifest/invalid-json", "Push: Pushing Manifests (code-6)"
            => manifests::invalid_json(cx);
        "manifest/invalid-schema", "Push: Pushing Manifests (code-6)"
            => manifests::invalid_schema(cx);
        "manifest/unknown-media-type", "Push: Pushing Manifests (code-6)"
            => manifests::unknown_media_type(cx);
        "manifest/blob-unknown", "Push: manifests referencing missing blobs (code-5)"
            => manifests::blob_unknown(cx);
        "manifest/index-child-unknown", "Push: indexes referencing missing manifests (code-5)"
            => manifests::index_child_unknown(cx);
        "manifest/subject-header", "Push: Pushing Manifests with Subject (OCI-Subject)"
            => manifests::subject_header(cx);
        "manifest/subject-unknown-accepted", "Push: subject referencing a missing manifest is accepted"
            => manifests::subject_unknown(cx);
        "manifest/tag-overwrite", "Push: Pushing Manifests, a tag moves (end-7a, end-3)"
            => manifests::tag_overwrite(cx);
        "manifest/tag-parameters", "Push: Pushing Manifests with ?tag= (end-7b, OCI-Tag)"
            => manifests::tag_parameters(cx);
        "manifest/large", "Push: Pushing Manifests of 4 megabytes (SHOULD)"
            => manifests::large(cx);
        "manifest/tag-max-length", "Pulling manifests: a 128-character tag"
            => manifests::tag_max_length(cx);

        "discovery/tags-list", "Content Discovery: Listing Tags (end-8a)"
            => discovery::tags_list(cx);
        "discovery/tags-n", "Content Discovery: Listing Tags, n (end-8b)"
            => discovery::tags_n(cx);
        "discovery/tags-last", "Content Discovery: Listing Tags, last (end-8b)"
            => discovery::tags_last(cx);
        "discovery/tags-link", "Content Discovery: Listing Tags, Link rel=\"next\" (end-8b; MAY, required here)"
            => discovery::tags_link(cx);
        "discovery/tags-n-zero", "Content Discovery: Listing Tags, n=0 (end-8b)"
            => discovery::tags_n_zero(cx);
        "discovery/tags-unknown-repo", "Content Discovery: Listing Tags, unknown repository (end-8a, code-9)"
            => discovery::tags_unknown_repo(cx);
        "discovery/referrers-list", "Content Discovery: Listing Referrers (end-12a)"
            => discovery::referrers_list(cx);
        "discovery/referrers-filter", "Content Discovery: Listing Referrers, artifactType (end-12b; SHOULD, required here)"
            => discovery::referrers_filter(cx);
        "discovery/referrers-empty-artifact-type", "Content Discovery: Listing Referrers, empty artifactType: the config's mediaType (end-12a)"
            => discovery::referrers_empty_artifact_type(cx);
        "discovery/referrers-unknown-subject", "Content Discovery: Listing Referrers, no referrers (end-12a)"
            => discovery::referrers_unknown_subject(cx);
        "discovery/referrers-invalid-digest", "Content Discovery: Listing Referrers, invalid digest: 400 (end-12a)"
            => discovery::referrers_invalid_digest(cx);

        "management/delete-tag", "Content Management: Deleting tags (end-9; MAY, required here)"
            => management::delete_tag(cx);
        "management/delete-manifest", "Content Management: Deleting Manifests (end-9)"
            => management::delete_manifest(cx);
        "management/delete-blob", "Content Management: Deleting Blobs (end-10)"
            => management::delete_blob(cx);
        "management/push-after-delete", "Content Management: deleted content can be pushed again (end-9, end-10)"
            => management::push_after_delete(cx);
        "management/delete-unknown-manifest", "Content Management: Deleting Manifests, unknown (end-9, code-7)"
            => management::delete_unknown_manifest(cx);
        "management/delete-unknown-blob", "Content Management: Deleting Blobs, unknown (end-10, code-1)"
            => management::delete_unknown_blob(cx);
        "management/referrers-after-delete", "Content Management: a deleted referrer leaves the list (end-9, end-12a)"
            => management::referrers_after_delete(cx);

        "errors/digest-invalid-push", "Push: invalid digest: 400 (end-6, code-4)"
            => errors::digest_invalid_push(cx);
        "errors/digest-unsupported-algorithm", "Push: unsupported algorithm: 400 (end-6, code-4)"
            => errors::digest_unsupported(cx);
        "errors/digest-invalid-pull", "Pull: malformed digest (end-2, code-4)"
            => errors::digest_invalid_pull(cx);
        "errors/name-invalid", "Pulling manifests: <name> grammar (code-8)"
            => errors::name_invalid(cx);
        "errors/content-range-malformed", "Push: chunk Content-Range ^[0-9]+-[0-9]+$ (end-5)"
            => errors::content_range_malformed(cx);
        "errors/manifest-binary", "Push: Pushing Manifests, not JSON (code-6)"
            => errors::manifest_binary(cx);
        "errors/error-bodies", "Error Codes: every 4xx JSON body in this run has the error format"
            => errors::error_bodies(cx);
        "errors/error-bodies-json", "Error Codes: every 4xx body in this run is error JSON (MAY any format; required here)"
            => errors::error_bodies_json(cx);
        "errors/warning-headers", "Warnings: 299 - \"<text>\", no date, at most 4096 bytes"
            => errors::warning_headers(cx);
        "errors/no-server-errors", "API: no 5xx in this run"
            => errors::no_server_errors(cx);
    }

    r.report
}

struct Runner<'a> {
    cx: &'a Ctx,
    select: &'a dyn Fn(&str) -> bool,
    report: Report,
}

impl Runner<'_> {
    async fn check(
        &mut self,
        name: &'static str,
        section: &'static str,
        check: impl Future<Output = Outcome>,
    ) {
        // On the heap: a check's future is large in debug builds, and tests
        // run on threads with small stacks.
        let check = Box::pin(check);
        if !(self.select)(name) {
            return;
        }
        let outcome =
            tokio::time::timeout(CHECK_TIMEOUT, AssertUnwindSafe(check).catch_unwind()).await;
        let note = self.cx.take_note();
        let (passed, reason) = match outcome {
            Ok(Ok(Ok(()))) => (true, note.unwrap_or_default()),
            Ok(Ok(Err(reason))) => (false, reason),
            Ok(Err(panic)) => (
                false,
                format!("the check panicked: {}", panic_message(&panic)),
            ),
            Err(_) => (
                false,
                format!("did not finish within {} s", CHECK_TIMEOUT.as_secs()),
            ),
        };
        self.report.results.push(CheckResult {
            name,
            section,
            passed,
            reason: one_line(&reason),
        });
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
