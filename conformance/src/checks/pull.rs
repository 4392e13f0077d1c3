//! Pull: manifests and blobs by tag and digest, `HEAD`, content
//! negotiation, ranges, and what is not there.

use reqwest::Method;
use reqwest::header::{ACCEPT, RANGE};

use super::Ctx;
use crate::client::Request;
use crate::content::{
    self, Blob, DOCKER_LIST, Image, Manifest, OCI_INDEX, OCI_MANIFEST, accept_all, index_of,
    unknown_digest,
};
use crate::expect::{self, Outcome, ensure};

/// An image pushed once for the pull checks.
pub struct Fixture {
    pub repo: String,
    pub tag: &'static str,
    pub image: Image,
}

pub async fn fixture(cx: &Ctx) -> Outcome<Fixture> {
    let repo = cx.repo("pull");
    let image = Image::oci(&[3000, 1024]);
    cx.push_image(&repo, "v1", &image).await?;
    Ok(Fixture {
        repo,
        tag: "v1",
        image,
    })
}

/// Which reference a manifest check uses.
#[derive(Clone, Copy)]
pub enum Reference {
    ByTag,
    ByDigest,
}
pub use Reference::{ByDigest, ByTag};

fn reference(f: &Fixture, by: Reference) -> String {
    match by {
        ByTag => f.tag.to_owned(),
        ByDigest => f.image.manifest.digest.clone(),
    }
}

/// `GET` a manifest: 200, the pushed bytes, its `Content-Type` and
/// `Docker-Content-Digest`.
pub async fn manifest_get(cx: &Ctx, by: Reference) -> Outcome {
    let f = cx.pull_fixture().await?;
    let m = &f.image.manifest;
    let r = cx
        .fetch_manifest(Method::GET, &f.repo, &reference(f, by))
        .await?;
    expect::status(&r, 200)?;
    expect::content_type(&r, OCI_MANIFEST)?;
    expect::header_eq(&r, "Docker-Content-Digest", &m.digest)?;
    expect::body_eq(&r, &m.body)?;
    expect::content_length(&r, m.len(), false)
}

/// `HEAD` a manifest: 200, `Content-Length`, `Docker-Content-Digest`,
/// `Content-Type`, no body.
pub async fn manifest_head(cx: &Ctx, by: Reference) -> Outcome {
    let f = cx.pull_fixture().await?;
    let m = &f.image.manifest;
    let r = cx
        .fetch_manifest(Method::HEAD, &f.repo, &reference(f, by))
        .await?;
    expect::status(&r, 200)?;
    expect::header_eq(&r, "Docker-Content-Digest", &m.digest)?;
    expect::content_length(&r, m.len(), true)?;
    expect::content_type(&r, OCI_MANIFEST)?;
    expect::no_body(&r)
}

/// The manifest types of content negotiation.
#[derive(Clone, Copy)]
pub enum Kind {
    OciManifest,
    OciIndex,
    DockerManifest,
    DockerList,
}

/// Pushes a manifest of `kind` (children first) and pulls it by tag with
/// `Accept` naming only its type, then with every type (in one header, then
/// in one header each): each time its own `Content-Type` and exact bytes.
pub async fn negotiate(cx: &Ctx, kind: Kind) -> Outcome {
    let repo = cx.repo("negotiate");
    let (tag, manifest) = match kind {
        Kind::OciManifest => {
            let image = Image::oci(&[512]);
            cx.push_blobs(&repo, &image.blobs).await?;
            ("oci-manifest", image.manifest)
        }
        Kind::DockerManifest => {
            let image = Image::docker(&[512]);
            cx.push_blobs(&repo, &image.blobs).await?;
            ("docker-manifest", image.manifest)
        }
        Kind::OciIndex => ("oci-index", push_index(cx, &repo, OCI_INDEX).await?),
        Kind::DockerList => ("docker-list", push_index(cx, &repo, DOCKER_LIST).await?),
    };
    cx.push_manifest(&repo, tag, &manifest).await?;
    let url = cx.v2(&repo, &format!("manifests/{tag}"))?;
    // Only its type; every type in one header; every type in a header of
    // its own, as Docker's client sends them.
    let all: Vec<String> = accept_all().split(", ").map(str::to_owned).collect();
    for accepts in [vec![manifest.media_type.clone()], vec![accept_all()], all] {
        let mut req = Request::new(Method::GET, url.clone());
        for a in &accepts {
            req = req.header(ACCEPT, a.clone());
        }
        let accept = accepts.join(" | ");
        let r = cx
            .send(req)
            .await
            .map_err(|e| format!("Accept: {accept}: {e}"))?;
        let with = |e: String| format!("{e} (Accept: {accept})");
        expect::status(&r, 200).map_err(with)?;
        expect::content_type(&r, &manifest.media_type).map_err(with)?;
        expect::header_eq(&r, "Docker-Content-Digest", &manifest.digest).map_err(with)?;
        expect::body_eq(&r, &manifest.body).map_err(with)?;
    }
    let r = cx
        .send(Request::new(Method::HEAD, url).header(ACCEPT, manifest.media_type.clone()))
        .await?;
    expect::status(&r, 200)?;
    expect::content_type(&r, &manifest.media_type)?;
    expect::content_length(&r, manifest.len(), true)
}

/// Pushes two images by digest and returns an index (or list) of them,
/// not yet pushed.
async fn push_index(cx: &Ctx, repo: &str, media_type: &str) -> Outcome<Manifest> {
    let docker = media_type == DOCKER_LIST;
    let mut children = Vec::new();
    for size in [300, 400] {
        let image = if docker {
            Image::docker(&[size])
        } else {
            Image::oci(&[size])
        };
        cx.push_image(repo, &image.manifest.digest, &image).await?;
        children.push(image.manifest);
    }
    Ok(index_of(media_type, &children.iter().collect::<Vec<_>>()))
}

fn first_layer(f: &Fixture) -> &Blob {
    &f.image.layers[0]
}

/// `GET` a blob: 200, its bytes, `Docker-Content-Digest`. A registry may
/// redirect the GET to another server (a presigned object-store URL): the
/// client follows, and the digest may then be on the registry's redirect
/// rather than on the other server's answer.
pub async fn blob_get(cx: &Ctx) -> Outcome {
    let f = cx.pull_fixture().await?;
    let blob = first_layer(f);
    let r = cx
        .get(cx.v2(&f.repo, &format!("blobs/{}", blob.digest))?)
        .await?;
    expect::status(&r, 200)?;
    let digest = r
        .header_or_registry_redirect("Docker-Content-Digest")
        .ok_or_else(|| format!("{} → 200: no Docker-Content-Digest header", r.request))?;
    ensure!(
        digest == blob.digest,
        "{}: Docker-Content-Digest is {digest:?}, expected {:?}",
        r.request,
        blob.digest
    );
    expect::body_eq(&r, &blob.data)?;
    expect::content_length(&r, blob.len(), false)?;
    note_redirect(cx, &r);
    Ok(())
}

/// Notes, with a pass, that another server answered after a redirect.
fn note_redirect(cx: &Ctx, r: &crate::client::Response) {
    if let Some(hop) = r.redirects.first()
        && r.redirected_elsewhere(cx.client.base())
    {
        cx.note(format!(
            "served by {}:{} after a {} redirect",
            r.url.host_str().unwrap_or("?"),
            r.url.port_or_known_default().unwrap_or(0),
            hop.status.as_u16()
        ));
    }
}

/// `HEAD` a blob: 200, `Content-Length`, `Docker-Content-Digest`, no body.
pub async fn blob_head(cx: &Ctx) -> Outcome {
    let f = cx.pull_fixture().await?;
    let blob = first_layer(f);
    let r = cx
        .head(cx.v2(&f.repo, &format!("blobs/{}", blob.digest))?)
        .await?;
    expect::status(&r, 200)?;
    expect::header_eq(&r, "Docker-Content-Digest", &blob.digest)?;
    expect::content_length(&r, blob.len(), true)?;
    expect::no_body(&r)
}

/// `Content-Range: bytes <first>-<last>/<size>`, or `/*` for the size
/// (RFC 9110 14.4: the complete length may be unknown).
fn content_range(r: &crate::client::Response, first: usize, last: usize, size: usize) -> Outcome {
    let got = expect::header(r, "Content-Range")?;
    let known = format!("bytes {first}-{last}/{size}");
    let unknown = format!("bytes {first}-{last}/*");
    ensure!(
        got == known || got == unknown,
        "{}: Content-Range is {got:?}, expected {known:?}",
        r.request
    );
    Ok(())
}

async fn ranged(cx: &Ctx, range: &str) -> Outcome<(crate::client::Response, Blob)> {
    let f = cx.pull_fixture().await?;
    let blob = first_layer(f).clone();
    let url = cx.v2(&f.repo, &format!("blobs/{}", blob.digest))?;
    let r = cx
        .send(Request::new(Method::GET, url).header(RANGE, range))
        .await?;
    Ok((r, blob))
}

/// `Range: bytes=100-199`: 206, `Content-Range: bytes 100-199/<size>`,
/// those bytes.
pub async fn blob_range(cx: &Ctx) -> Outcome {
    let (r, blob) = ranged(cx, "bytes=100-199").await?;
    expect::status(&r, 206)?;
    content_range(&r, 100, 199, blob.len())?;
    expect::body_eq(&r, &blob.data[100..200])?;
    expect::content_length(&r, 100, false)?;
    note_redirect(cx, &r);
    Ok(())
}

/// `Range: bytes=<size-100>-`: 206 with the last 100 bytes.
pub async fn blob_range_open(cx: &Ctx) -> Outcome {
    let f = cx.pull_fixture().await?;
    let size = first_layer(f).len();
    let (r, blob) = ranged(cx, &format!("bytes={}-", size - 100)).await?;
    expect::status(&r, 206)?;
    content_range(&r, size - 100, size - 1, size)?;
    expect::body_eq(&r, &blob.data[size - 100..])?;
    note_redirect(cx, &r);
    Ok(())
}

/// `Range: items=0-9`, a unit the server does not know: RFC 9110 14.2
/// says an origin server MUST ignore it, so 200 with the whole blob.
pub async fn blob_range_unknown_unit(cx: &Ctx) -> Outcome {
    let (r, blob) = ranged(cx, "items=0-9").await?;
    expect::status(&r, 200)?;
    expect::body_eq(&r, &blob.data)?;
    note_redirect(cx, &r);
    Ok(())
}

/// A range wholly past the end: 416, and `Content-Range: bytes */<size>`
/// if the header is sent.
pub async fn blob_range_unsatisfiable(cx: &Ctx) -> Outcome {
    let f = cx.pull_fixture().await?;
    let size = first_layer(f).len();
    let (r, _) = ranged(cx, &format!("bytes={}-{}", size + 10, size + 99)).await?;
    expect::status(&r, 416)?;
    if let Some(v) = r.header("Content-Range") {
        ensure!(
            v == format!("bytes */{size}"),
            "{}: 416 with Content-Range {v:?}, expected \"bytes */{size}\"",
            r.request
        );
    }
    Ok(())
}

/// An unknown tag or digest in a repository that exists: 404
/// `MANIFEST_UNKNOWN` (`GET`), 404 (`HEAD`).
pub async fn manifest_unknown(cx: &Ctx) -> Outcome {
    let f = cx.pull_fixture().await?;
    for reference in ["no-such-tag".to_owned(), unknown_digest()] {
        let r = cx.fetch_manifest(Method::GET, &f.repo, &reference).await?;
        expect::error(&r, 404, &["MANIFEST_UNKNOWN"])?;
        let r = cx.fetch_manifest(Method::HEAD, &f.repo, &reference).await?;
        expect::status(&r, 404)?;
    }
    Ok(())
}

/// A reference that is neither a valid tag nor a digest names no manifest:
/// reading it is 404 (`GET` and `HEAD`), not a bad request — no manifest
/// can exist there. The official suite (v1.1) reads
/// `.INVALID_MANIFEST_NAME` and requires 404.
pub async fn manifest_invalid_reference(cx: &Ctx) -> Outcome {
    let f = cx.pull_fixture().await?;
    for reference in [".INVALID_MANIFEST_NAME", "-dash-first"] {
        for method in [Method::GET, Method::HEAD] {
            let r = cx.fetch_manifest(method, &f.repo, reference).await?;
            expect::status(&r, 404)?;
        }
    }
    Ok(())
}

/// An unknown blob: 404 `BLOB_UNKNOWN` (`GET`), 404 (`HEAD`).
pub async fn blob_unknown(cx: &Ctx) -> Outcome {
    let f = cx.pull_fixture().await?;
    let url = cx.v2(&f.repo, &format!("blobs/{}", unknown_digest()))?;
    let r = cx.get(url.clone()).await?;
    expect::error(&r, 404, &["BLOB_UNKNOWN"])?;
    let r = cx.head(url).await?;
    expect::status(&r, 404)
}

/// A repository that does not exist: 404, `NAME_UNKNOWN` (or the unknown
/// manifest's or blob's code).
pub async fn repository_unknown(cx: &Ctx) -> Outcome {
    let repo = cx.repo(&format!("no-such-repo-{}", content::random_name()));
    let r = cx.fetch_manifest(Method::GET, &repo, "latest").await?;
    expect::error(&r, 404, &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"])?;
    let r = cx
        .get(cx.v2(&repo, &format!("blobs/{}", unknown_digest()))?)
        .await?;
    expect::error(&r, 404, &["NAME_UNKNOWN", "BLOB_UNKNOWN"])
}

/// A blob or manifest that exists only in another repository of the same
/// registry is not found here: 404 (`BLOB_UNKNOWN`, `MANIFEST_UNKNOWN`).
pub async fn repository_scoping(cx: &Ctx) -> Outcome {
    let f = cx.pull_fixture().await?;
    let elsewhere = cx.repo("pull-elsewhere");
    let own = Image::oci(&[32]);
    cx.push_image(&elsewhere, "own", &own).await?;
    let blob = first_layer(f);
    let url = cx.v2(&elsewhere, &format!("blobs/{}", blob.digest))?;
    let r = cx.head(url.clone()).await?;
    expect::status(&r, 404).map_err(|e| format!("a blob of another repository: {e}"))?;
    let r = cx.get(url).await?;
    expect::error(&r, 404, &["BLOB_UNKNOWN"])
        .map_err(|e| format!("a blob of another repository: {e}"))?;
    let r = cx
        .fetch_manifest(Method::GET, &elsewhere, &f.image.manifest.digest)
        .await?;
    expect::error(&r, 404, &["MANIFEST_UNKNOWN"])
        .map_err(|e| format!("a manifest of another repository: {e}"))
}
