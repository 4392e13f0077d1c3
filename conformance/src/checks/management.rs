//! Content management: deleting tags, manifests and blobs.

use reqwest::Method;
use serde_json::json;

use super::{Ctx, discovery, short};
use crate::content::{Image, artifact, random_name, unknown_digest};
use crate::expect::{self, Outcome, ensure};

fn repo(cx: &Ctx) -> String {
    cx.repo("delete")
}

/// The repository's tags (one page, no paging parameters).
async fn tags(cx: &Ctx, repo: &str) -> Outcome<Vec<String>> {
    let r = cx.get(cx.v2(repo, "tags/list")?).await?;
    if r.status() == 404 {
        return Ok(Vec::new());
    }
    expect::status(&r, 200)?;
    let v = expect::json(&r)?;
    Ok(v.get("tags")
        .and_then(|t| t.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// `DELETE /manifests/<tag>`: 202; the tag is gone (404
/// `MANIFEST_UNKNOWN`, also to a second `DELETE`), the manifest and its
/// other tags stay.
pub async fn delete_tag(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let image = Image::oci(&[100]);
    cx.push_image(&repo, "keep", &image).await?;
    cx.push_manifest(&repo, "drop", &image.manifest).await?;
    let r = cx.delete(cx.v2(&repo, "manifests/drop")?).await?;
    expect::status(&r, 202)?;
    let r = cx.fetch_manifest(Method::GET, &repo, "drop").await?;
    expect::error(&r, 404, &["MANIFEST_UNKNOWN"])
        .map_err(|e| format!("after deleting the tag: {e}"))?;
    for reference in ["keep", image.manifest.digest.as_str()] {
        let r = cx.fetch_manifest(Method::GET, &repo, reference).await?;
        expect::status(&r, 200).map_err(|e| format!("after deleting another tag: {e}"))?;
    }
    let listed = tags(cx, &repo).await?;
    ensure!(
        listed.iter().any(|t| t == "keep") && !listed.iter().any(|t| t == "drop"),
        "after deleting tag drop, the tags list is {listed:?}"
    );
    let r = cx.delete(cx.v2(&repo, "manifests/drop")?).await?;
    expect::error(&r, 404, &["MANIFEST_UNKNOWN"]).map_err(|e| format!("deleting it again: {e}"))
}

/// `DELETE /manifests/<digest>`: 202; the digest and every tag that named
/// it are 404, and the tags list no longer has them.
pub async fn delete_manifest(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let image = Image::oci(&[100]);
    cx.push_image(&repo, "gone-1", &image).await?;
    cx.push_manifest(&repo, "gone-2", &image.manifest).await?;
    let d = &image.manifest.digest;
    let r = cx.delete(cx.v2(&repo, &format!("manifests/{d}"))?).await?;
    expect::status(&r, 202)?;
    let r = cx.fetch_manifest(Method::GET, &repo, d).await?;
    expect::error(&r, 404, &["MANIFEST_UNKNOWN"])?;
    let r = cx.fetch_manifest(Method::HEAD, &repo, d).await?;
    expect::status(&r, 404)?;
    for tag in ["gone-1", "gone-2"] {
        let r = cx.fetch_manifest(Method::GET, &repo, tag).await?;
        expect::error(&r, 404, &["MANIFEST_UNKNOWN"])
            .map_err(|e| format!("a tag of the deleted manifest: {e}"))?;
    }
    let listed = tags(cx, &repo).await?;
    ensure!(
        !listed.iter().any(|t| t.starts_with("gone-")),
        "after deleting the manifest, the tags list still has {listed:?}"
    );
    Ok(())
}

/// With its manifest deleted, `DELETE /blobs/<digest>`: 202; then the blob
/// is 404 (`BLOB_UNKNOWN`).
pub async fn delete_blob(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let image = Image::oci(&[300]);
    cx.push_image(&repo, "with-blob", &image).await?;
    let d = &image.manifest.digest;
    let r = cx.delete(cx.v2(&repo, &format!("manifests/{d}"))?).await?;
    expect::status(&r, 202).map_err(|e| format!("deleting the manifest first: {e}"))?;
    for blob in &image.blobs {
        let url = cx.v2(&repo, &format!("blobs/{}", blob.digest))?;
        let r = cx.delete(url.clone()).await?;
        expect::status(&r, 202)?;
        let r = cx.head(url.clone()).await?;
        expect::status(&r, 404).map_err(|e| format!("after deleting the blob: {e}"))?;
        let r = cx.get(url).await?;
        expect::error(&r, 404, &["BLOB_UNKNOWN"])
            .map_err(|e| format!("after deleting the blob: {e}"))?;
    }
    Ok(())
}

/// After a manifest and its blobs are deleted, the same blobs and the same
/// manifest push again (201) and are served.
pub async fn push_after_delete(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let image = Image::oci(&[400]);
    cx.push_image(&repo, "again", &image).await?;
    let d = &image.manifest.digest;
    let r = cx.delete(cx.v2(&repo, &format!("manifests/{d}"))?).await?;
    expect::status(&r, 202)?;
    for blob in &image.blobs {
        let r = cx
            .delete(cx.v2(&repo, &format!("blobs/{}", blob.digest))?)
            .await?;
        expect::status(&r, 202)?;
    }
    cx.push_image(&repo, "again", &image)
        .await
        .map_err(|e| format!("pushing again after the delete: {e}"))?;
    for blob in &image.blobs {
        cx.blob_is(&repo, blob).await?;
    }
    let r = cx.fetch_manifest(Method::GET, &repo, "again").await?;
    expect::status(&r, 200)?;
    expect::body_eq(&r, &image.manifest.body)
}

/// `DELETE` of a manifest digest the repository never had: 404
/// `MANIFEST_UNKNOWN`; in a repository that does not exist: 404 ("If the
/// repository does not exist, the response MUST return 404"), with
/// `NAME_UNKNOWN` or `MANIFEST_UNKNOWN`.
pub async fn delete_unknown_manifest(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let image = Image::oci(&[10]);
    cx.push_image(&repo, "present", &image).await?;
    let r = cx
        .delete(cx.v2(&repo, &format!("manifests/{}", unknown_digest()))?)
        .await?;
    expect::error(&r, 404, &["MANIFEST_UNKNOWN"])?;
    let nowhere = cx.repo(&format!("no-such-repo-{}", random_name()));
    let r = cx
        .delete(cx.v2(&nowhere, &format!("manifests/{}", unknown_digest()))?)
        .await?;
    expect::error(&r, 404, &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"])
        .map_err(|e| format!("in a repository that does not exist: {e}"))
}

/// `DELETE` of a blob the repository never had: 404 `BLOB_UNKNOWN`.
pub async fn delete_unknown_blob(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let image = Image::oci(&[10]);
    cx.push_image(&repo, "present", &image).await?;
    let r = cx
        .delete(cx.v2(&repo, &format!("blobs/{}", unknown_digest()))?)
        .await?;
    expect::error(&r, 404, &["BLOB_UNKNOWN"])
}

/// A deleted referrer leaves the referrers list of its subject.
pub async fn referrers_after_delete(cx: &Ctx) -> Outcome {
    let repo = repo(cx);
    let subject = Image::oci(&[100]);
    cx.push_image(&repo, "referred", &subject).await?;
    let keep = artifact(
        &subject.manifest,
        Some(discovery::SBOM),
        None,
        json!({"k": "keep"}),
    );
    let drop = artifact(
        &subject.manifest,
        Some(discovery::SBOM),
        None,
        json!({"k": "drop"}),
    );
    for a in [&keep, &drop] {
        cx.push_blobs(&repo, &a.blobs).await?;
        cx.push_manifest(&repo, &a.manifest.digest, &a.manifest)
            .await?;
    }
    let before = discovery::referrer_digests(cx, &repo, &subject.manifest.digest).await?;
    ensure!(
        before.contains(&drop.manifest.digest) && before.contains(&keep.manifest.digest),
        "before the delete, the referrers list lacks a referrer: {} listed",
        before.len()
    );
    let r = cx
        .delete(cx.v2(&repo, &format!("manifests/{}", drop.manifest.digest))?)
        .await?;
    expect::status(&r, 202)?;
    let after = discovery::referrer_digests(cx, &repo, &subject.manifest.digest).await?;
    ensure!(
        !after.contains(&drop.manifest.digest),
        "the deleted referrer {} is still listed",
        short(&drop.manifest.digest)
    );
    ensure!(
        after.contains(&keep.manifest.digest),
        "the other referrer {} is no longer listed",
        short(&keep.manifest.digest)
    );
    Ok(())
}
