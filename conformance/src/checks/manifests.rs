//! Pushing manifests: by tag and digest, exact bytes, and every way a
//! manifest is refused; `subject`; tags that move.

use reqwest::Method;
use serde_json::json;

use super::Ctx;
use crate::content::{
    Blob, Image, Manifest, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, artifact, index_of, unknown_digest,
};
use crate::expect::{self, Outcome, ensure};

fn repo(cx: &Ctx) -> String {
    cx.repo("images")
}

/// 201 with `Location` (which serves the manifest) and
/// `Docker-Content-Digest` equal to the digest of the bytes.
async fn created(cx: &Ctx, r: &crate::client::Response, m: &Manifest) -> Outcome {
    expect::status(r, 201)?;
    expect::header_eq(r, "Docker-Content-Digest", &m.digest)?;
    let at = super::location(r)?;
    let got = cx
        .send(
            crate::client::Request::new(Method::GET, at)
                .header(reqwest::header::ACCEPT, m.media_type.clone()),
        )
        .await?;
    expect::status(&got, 200).map_err(|e| format!("the manifest Location: {e}"))?;
    expect::body_eq(&got, &m.body)
}

/// `PUT /manifests/<tag>`: 201, `Location`, `Docker-Content-Digest`.
pub async fn put_by_tag(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let image = Image::oci(&[700]);
    cx.push_blobs(&repo, &image.blobs).await?;
    let r = cx.put_manifest(&repo, "by-tag", &image.manifest).await?;
    created(cx, &r, &image.manifest).await
}

/// `PUT /manifests/<digest>`: 201, `Location`, `Docker-Content-Digest`.
pub async fn put_by_digest(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let image = Image::oci(&[700]);
    cx.push_blobs(&repo, &image.blobs).await?;
    let r = cx
        .put_manifest(&repo, &image.manifest.digest, &image.manifest)
        .await?;
    created(cx, &r, &image.manifest).await?;
    let r = cx
        .fetch_manifest(Method::GET, &repo, &image.manifest.digest)
        .await?;
    expect::status(&r, 200)?;
    expect::body_eq(&r, &image.manifest.body)
}

/// `PUT /manifests/sha512:…`: 201, and `Docker-Content-Digest` is that
/// digest ("MUST be equal to the client provided digest"); the manifest
/// is then served by it. SHA-512 is optional (image-spec: MAY), so a
/// registry may refuse the algorithm: 400 `DIGEST_INVALID`.
pub async fn put_by_sha512_digest(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let image = Image::oci(&[300]);
    cx.push_blobs(&repo, &image.blobs).await?;
    let digest = crate::content::sha512(&image.manifest.body);
    let r = cx.put_manifest(&repo, &digest, &image.manifest).await?;
    if r.status() == 400 {
        expect::error(&r, 400, &["DIGEST_INVALID"])?;
        cx.note("refused: sha512 manifests unsupported (MAY)");
        return Ok(());
    }
    expect::status(&r, 201)?;
    expect::header_eq(&r, "Docker-Content-Digest", &digest)?;
    expect::header(&r, "Location")?;
    let r = cx.fetch_manifest(Method::GET, &repo, &digest).await?;
    expect::status(&r, 200)?;
    expect::body_eq(&r, &image.manifest.body)
}

/// A manifest with tabs, a trailing newline, escaped characters and an
/// unusual key order comes back byte for byte, by tag and by digest.
pub async fn byte_exact(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let image = Image::oci(&[100]);
    cx.push_blobs(&repo, &image.blobs).await?;
    let value = json!({
        "layers": [image.layers[0].descriptor(crate::content::OCI_LAYER)],
        "annotations": {"org.example.note": "PLACEHOLDER"},
        "config": image.config.descriptor(OCI_CONFIG),
        "mediaType": OCI_MANIFEST,
        "schemaVersion": 2,
    });
    let mut text = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut text, fmt);
    serde::Serialize::serialize(&value, &mut ser).map_err(|e| e.to_string())?;
    let text = String::from_utf8(text)
        .map_err(|e| e.to_string())?
        .replace("\"PLACEHOLDER\"", r#""caf\u00e9 \/ \"quoted\"""#)
        + "\n\n";
    let m = Manifest::from_bytes(OCI_MANIFEST, text.into_bytes());
    let r = cx.put_manifest(&repo, "byte-exact", &m).await?;
    expect::status(&r, 201)?;
    expect::header_eq(&r, "Docker-Content-Digest", &m.digest)?;
    for reference in ["byte-exact", m.digest.as_str()] {
        let r = cx.fetch_manifest(Method::GET, &repo, reference).await?;
        expect::status(&r, 200)?;
        expect::body_eq(&r, &m.body)?;
        expect::header_eq(&r, "Docker-Content-Digest", &m.digest)?;
    }
    Ok(())
}

/// `PUT /manifests/<digest>` with bytes of another digest: 400
/// `DIGEST_INVALID`; nothing is stored under that digest.
pub async fn digest_mismatch(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let image = Image::oci(&[100]);
    cx.push_blobs(&repo, &image.blobs).await?;
    let wrong = unknown_digest();
    let r = cx.put_manifest(&repo, &wrong, &image.manifest).await?;
    expect::error(&r, 400, &["DIGEST_INVALID"])?;
    let r = cx.fetch_manifest(Method::GET, &repo, &wrong).await?;
    expect::status(&r, 404)
}

/// Cut-off JSON: 400 `MANIFEST_INVALID`.
pub async fn invalid_json(cx: &Ctx) -> Outcome {
    let m = Manifest::from_bytes(
        OCI_MANIFEST,
        format!(r#"{{"schemaVersion": 2, "mediaType": "{OCI_MANIFEST}", "config": {{"#),
    );
    let r = cx.put_manifest(&repo(cx), "invalid-json", &m).await?;
    expect::error(&r, 400, &["MANIFEST_INVALID"])
}

/// JSON that is not a manifest (`config` a string, `layers` an object):
/// 400 `MANIFEST_INVALID`.
pub async fn invalid_schema(cx: &Ctx) -> Outcome {
    let m = Manifest::from_value(
        OCI_MANIFEST,
        &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": "nope", "layers": {}}),
    );
    let r = cx.put_manifest(&repo(cx), "invalid-schema", &m).await?;
    expect::error(&r, 400, &["MANIFEST_INVALID"])
}

/// A manifest type the registry does not know (`Content-Type` and
/// `mediaType` alike): 400 `MANIFEST_INVALID`.
pub async fn unknown_media_type(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let config = Blob::new(&b"{}"[..]);
    cx.push_blob(&repo, &config).await?;
    let mt = "application/vnd.example.unknown.manifest.v1+json";
    let m = Manifest::from_value(
        mt,
        &json!({"schemaVersion": 2, "mediaType": mt, "config": config.descriptor(OCI_CONFIG), "layers": []}),
    );
    let r = cx.put_manifest(&repo, "unknown-type", &m).await?;
    expect::error(&r, 400, &["MANIFEST_INVALID"])
}

/// A manifest whose layer, or whose config, was never pushed: 400
/// `MANIFEST_BLOB_UNKNOWN`.
pub async fn blob_unknown(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let image = Image::oci(&[100, 200]);
    // The config and the first layer only.
    cx.push_blobs(&repo, &image.blobs[..2]).await?;
    let r = cx
        .put_manifest(&repo, "missing-layer", &image.manifest)
        .await?;
    expect::error(&r, 400, &["MANIFEST_BLOB_UNKNOWN"])
        .map_err(|e| format!("missing layer: {e}"))?;
    let image = Image::oci(&[100]);
    cx.push_blobs(&repo, &image.layers).await?;
    let r = cx
        .put_manifest(&repo, "missing-config", &image.manifest)
        .await?;
    expect::error(&r, 400, &["MANIFEST_BLOB_UNKNOWN"]).map_err(|e| format!("missing config: {e}"))
}

/// An index listing a manifest that was never pushed: 400
/// `MANIFEST_BLOB_UNKNOWN` (a registry MAY reject it; "When a manifest is
/// rejected for this reason, it MUST result in one or more
/// `MANIFEST_BLOB_UNKNOWN` errors").
pub async fn index_child_unknown(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let pushed = Image::oci(&[100]);
    cx.push_image(&repo, &pushed.manifest.digest, &pushed)
        .await?;
    let missing = Image::oci(&[100]);
    let index = index_of(OCI_INDEX, &[&pushed.manifest, &missing.manifest]);
    let r = cx
        .put_manifest(&repo, "index-missing-child", &index)
        .await?;
    expect::error(&r, 400, &["MANIFEST_BLOB_UNKNOWN"])
}

/// A manifest with `subject`: 201 and `OCI-Subject: <subject digest>`.
pub async fn subject_header(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let subject = Image::oci(&[100]);
    cx.push_image(&repo, "subject", &subject).await?;
    let a = artifact(
        &subject.manifest,
        Some("application/vnd.example.sbom.v1"),
        None,
        json!({"org.example.n": "1"}),
    );
    cx.push_blobs(&repo, &a.blobs).await?;
    let r = cx
        .put_manifest(&repo, &a.manifest.digest, &a.manifest)
        .await?;
    expect::status(&r, 201)?;
    expect::header_eq(&r, "OCI-Subject", &subject.manifest.digest)
}

/// A `subject` that is not (yet) in the repository: accepted (201).
pub async fn subject_unknown(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let never = Image::oci(&[10]);
    let a = artifact(
        &never.manifest,
        Some("application/vnd.example.sbom.v1"),
        None,
        json!({}),
    );
    cx.push_blobs(&repo, &a.blobs).await?;
    let r = cx
        .put_manifest(&repo, &a.manifest.digest, &a.manifest)
        .await?;
    expect::status(&r, 201)
}

/// Pushing another manifest to a tag moves the tag; the first manifest
/// stays pullable by digest.
pub async fn tag_overwrite(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let first = Image::oci(&[100]);
    let second = Image::oci(&[100]);
    cx.push_image(&repo, "moving", &first).await?;
    cx.push_image(&repo, "moving", &second).await?;
    let r = cx.fetch_manifest(Method::GET, &repo, "moving").await?;
    expect::status(&r, 200)?;
    ensure!(
        r.body == second.manifest.body,
        "{}: the tag still serves the first manifest",
        r.request
    );
    expect::header_eq(&r, "Docker-Content-Digest", &second.manifest.digest)?;
    let r = cx
        .fetch_manifest(Method::GET, &repo, &first.manifest.digest)
        .await?;
    expect::status(&r, 200)?;
    expect::body_eq(&r, &first.manifest.body)?;
    Ok(())
}

/// `Content-Type` with a parameter (`; charset=utf-8`), which the registry
/// SHOULD ignore: 201, and the manifest comes back with its plain type.
pub async fn content_type_parameters(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let image = Image::oci(&[100]);
    cx.push_blobs(&repo, &image.blobs).await?;
    let m = Manifest {
        media_type: format!("{OCI_MANIFEST}; charset=utf-8"),
        ..image.manifest.clone()
    };
    let r = cx.put_manifest(&repo, "with-parameter", &m).await?;
    expect::status(&r, 201)?;
    let r = cx
        .fetch_manifest(Method::GET, &repo, "with-parameter")
        .await?;
    expect::status(&r, 200)?;
    expect::content_type(&r, OCI_MANIFEST)?;
    expect::body_eq(&r, &m.body)
}

/// `PUT /manifests/<digest>?tag=a&tag=b` (end-7b, MAY): a registry that
/// takes the tags names each in `OCI-Tag` and serves them; one that does
/// not sends no `OCI-Tag` and creates none.
pub async fn tag_parameters(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let image = Image::oci(&[100]);
    cx.push_blobs(&repo, &image.blobs).await?;
    let m = &image.manifest;
    let tags = ["param-a", "param-b"];
    let url = super::with_query(
        &cx.v2(&repo, &format!("manifests/{}", m.digest))?,
        &[("tag", tags[0]), ("tag", tags[1])],
    );
    let r = cx
        .send(
            crate::client::Request::new(Method::PUT, url)
                .header(reqwest::header::CONTENT_TYPE, m.media_type.clone())
                .body(m.body.clone()),
        )
        .await?;
    expect::status(&r, 201)?;
    expect::header_eq(&r, "Docker-Content-Digest", &m.digest)?;
    let announced: Vec<String> = r
        .header_all("OCI-Tag")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    for tag in tags {
        let got = cx.fetch_manifest(Method::GET, &repo, tag).await?;
        if announced.iter().any(|t| t == tag) {
            expect::status(&got, 200)
                .map_err(|e| format!("tag {tag} was announced in OCI-Tag: {e}"))?;
            expect::body_eq(&got, &m.body)?;
        } else {
            ensure!(
                got.status() == 404,
                "{}: tag {tag} exists ({}) but the PUT did not name it in OCI-Tag",
                got.request,
                got.status()
            );
        }
    }
    if announced.is_empty() {
        cx.note("?tag= not supported (MAY)");
    }
    Ok(())
}

/// A manifest of 4,000,000 bytes (the spec: registries SHOULD expect at
/// least 4 megabytes) is accepted and served whole.
pub async fn large(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let image = Image::oci(&[10]);
    cx.push_blobs(&repo, &image.blobs).await?;
    let mut value: serde_json::Value =
        serde_json::from_slice(&image.manifest.body).map_err(|e| e.to_string())?;
    value["annotations"] = json!({"org.example.padding": ""});
    let base = serde_json::to_vec(&value).map_err(|e| e.to_string())?.len();
    value["annotations"]["org.example.padding"] = json!("x".repeat(4_000_000 - base));
    let m = Manifest::from_value(OCI_MANIFEST, &value);
    ensure!(m.len() == 4_000_000, "built {} bytes", m.len());
    let r = cx.put_manifest(&repo, "large", &m).await?;
    expect::status(&r, 201)?;
    let r = cx.fetch_manifest(Method::GET, &repo, "large").await?;
    expect::status(&r, 200)?;
    expect::body_eq(&r, &m.body)
}

/// A tag of 128 characters, the longest the grammar allows, is accepted
/// and listed.
pub async fn tag_max_length(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let image = Image::oci(&[10]);
    let tag = format!("T_{}", "a.b-c".repeat(25)) + "x";
    ensure!(tag.len() == 128, "built a tag of {} characters", tag.len());
    cx.push_image(&repo, &tag, &image).await?;
    let r = cx.fetch_manifest(Method::GET, &repo, &tag).await?;
    expect::status(&r, 200)?;
    expect::body_eq(&r, &image.manifest.body)
}
