//! Manifest parsing and validation for `PUT /v2/<name>/manifests/<ref>`.
//!
//! Accepted: OCI image manifest and index, Docker schema 2 manifest and
//! manifest list. What a manifest references (config, layers, child
//! manifests) is returned so storage can check, in the commit transaction,
//! that every reference is present in the repository.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;
use slipway_storage::Digest;
use slipway_storage::meta::ManifestRef;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Layers that live outside the registry and need not be present.
const FOREIGN_LAYERS: &[&str] = &[
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

pub const KNOWN: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

#[derive(Debug)]
pub struct Parsed {
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    pub annotations: Option<String>,
    pub refs: Vec<ManifestRef>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    /// The manifest is malformed or of an unsupported type.
    Manifest(String),
    /// A descriptor has a malformed digest.
    Digest(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: Option<String>,
    digest: String,
    size: i64,
    #[serde(default)]
    urls: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Doc {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<serde_json::Map<String, Value>>,
}

/// `Content-Type` without parameters, lowercased.
pub fn bare_media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Parsed, Invalid> {
    let bad = |m: String| Invalid::Manifest(m);
    let doc: Doc = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the manifest is not valid JSON of a manifest: {e}")))?;
    if doc.schema_version != Some(2) {
        return Err(bad(
            "schemaVersion must be 2 (schema 1 manifests are not supported)".into(),
        ));
    }
    let header = content_type
        .map(bare_media_type)
        .filter(|c| !c.is_empty() && KNOWN.contains(&c.as_str()));
    let media_type = match (&header, &doc.media_type) {
        (Some(h), Some(f)) if h != f => {
            return Err(bad(format!(
                "the Content-Type {h} differs from the manifest's mediaType {f}"
            )));
        }
        (_, Some(f)) => f.clone(),
        (Some(h), None) => h.clone(),
        (None, None) => {
            // OCI manifests may omit mediaType; tell them apart by shape.
            if doc.manifests.is_some() {
                OCI_INDEX.to_owned()
            } else if doc.config.is_some() {
                OCI_MANIFEST.to_owned()
            } else {
                return Err(bad(
                    "the manifest has no mediaType and no Content-Type".into()
                ));
            }
        }
    };
    if !KNOWN.contains(&media_type.as_str()) {
        return Err(bad(format!(
            "manifests of media type {media_type:.100} are not supported; use one of {}",
            KNOWN.join(", ")
        )));
    }

    let mut refs = Vec::new();
    let mut seen = HashSet::new();
    let mut push_ref = |d: &Descriptor, is_manifest: bool| -> Result<(), Invalid> {
        let digest = descriptor_digest(d)?;
        if seen.insert(digest.clone()) {
            refs.push(ManifestRef {
                digest,
                size: d.size as u64,
                is_manifest,
            });
        }
        Ok(())
    };

    let artifact_type = if is_index(&media_type) {
        if doc.config.is_some() || doc.layers.is_some() {
            return Err(bad("an index has manifests, not config or layers".into()));
        }
        let children = doc
            .manifests
            .as_ref()
            .ok_or_else(|| bad("an index must have a manifests array".into()))?;
        for child in children {
            push_ref(child, true)?;
        }
        doc.artifact_type.clone().filter(|t| !t.is_empty())
    } else {
        if doc.manifests.is_some() {
            return Err(bad(
                "an image manifest has config and layers, not manifests".into(),
            ));
        }
        let config = doc
            .config
            .as_ref()
            .ok_or_else(|| bad("an image manifest must have a config descriptor".into()))?;
        let layers = doc
            .layers
            .as_ref()
            .ok_or_else(|| bad("an image manifest must have a layers array".into()))?;
        push_ref(config, false)?;
        for layer in layers {
            let foreign = layer
                .media_type
                .as_deref()
                .is_some_and(|m| FOREIGN_LAYERS.contains(&m))
                && !layer.urls.is_empty();
            if foreign {
                descriptor_digest(layer)?;
            } else {
                push_ref(layer, false)?;
            }
        }
        // Empty is missing (distribution-spec: "empty or missing").
        doc.artifact_type
            .clone()
            .filter(|t| !t.is_empty())
            .or_else(|| config.media_type.clone())
    };
    let subject = doc.subject.as_ref().map(descriptor_digest).transpose()?;
    let annotations = doc
        .annotations
        .as_ref()
        .filter(|a| !a.is_empty())
        .map(|a| Value::Object(a.clone()).to_string());
    Ok(Parsed {
        media_type,
        artifact_type,
        subject,
        annotations,
        refs,
    })
}

fn descriptor_digest(d: &Descriptor) -> Result<Digest, Invalid> {
    if d.size < 0 {
        return Err(Invalid::Manifest(format!(
            "descriptor {:.150} has a negative size",
            d.digest
        )));
    }
    d.digest
        .parse()
        .map_err(|e: slipway_storage::StorageError| Invalid::Digest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(c: u8) -> String {
        format!("sha256:{}", (c as char).to_string().repeat(64))
    }

    fn image(extra: Value) -> Vec<u8> {
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d(b'a'), "size": 10},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d(b'b'), "size": 20},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d(b'b'), "size": 20}
            ]
        });
        if let (Value::Object(m), Value::Object(e)) = (&mut m, extra) {
            m.extend(e);
        }
        serde_json::to_vec(&m).unwrap()
    }

    #[test]
    fn image_manifest_refs_are_deduplicated() {
        let p = parse(Some(OCI_MANIFEST), &image(json!({}))).unwrap();
        assert_eq!(p.media_type, OCI_MANIFEST);
        assert_eq!(p.refs.len(), 2);
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert!(p.subject.is_none());
    }

    #[test]
    fn subject_artifact_type_and_annotations() {
        let body = image(json!({
            "artifactType": "application/x-sbom",
            "subject": {"mediaType": OCI_MANIFEST, "digest": d(b'c'), "size": 5},
            "annotations": {"k": "v"}
        }));
        let p = parse(
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
            &body,
        )
        .unwrap();
        assert_eq!(p.artifact_type.as_deref(), Some("application/x-sbom"));
        assert_eq!(p.subject.unwrap().as_str(), d(b'c'));
        assert_eq!(p.annotations.as_deref(), Some(r#"{"k":"v"}"#));
        // The subject is not a reference that must exist.
        assert_eq!(p.refs.len(), 2);
    }

    #[test]
    fn index_children_are_manifest_refs() {
        let body = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": d(b'a'), "size": 3, "platform": {"os": "linux", "architecture": "amd64"}}]
        }))
        .unwrap();
        let p = parse(None, &body).unwrap();
        assert!(p.refs.iter().all(|r| r.is_manifest));
    }

    #[test]
    fn foreign_layers_need_not_exist() {
        let body = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": d(b'a'), "size": 10},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "digest": d(b'f'), "size": 1, "urls": ["https://example.com/l"]}]
        }))
        .unwrap();
        assert_eq!(parse(Some(DOCKER_MANIFEST), &body).unwrap().refs.len(), 1);
    }

    #[test]
    fn invalid_manifests() {
        let cases: Vec<(Option<&str>, Vec<u8>)> = vec![
            (Some(OCI_MANIFEST), b"not json".to_vec()),
            (Some(OCI_MANIFEST), b"[]".to_vec()),
            (Some(OCI_MANIFEST), br#"{"schemaVersion": 1}"#.to_vec()),
            (Some(DOCKER_MANIFEST), image(json!({}))),
            (None, image(json!({"mediaType": "application/x-unknown"}))),
            (None, image(json!({"config": null}))),
            (None, image(json!({"layers": null}))),
            (None, image(json!({"manifests": []}))),
            (
                None,
                image(json!({"config": {"digest": d(b'a'), "size": -1}})),
            ),
            (
                None,
                image(json!({"config": {"digest": "sha256:zz", "size": 1}})),
            ),
            (None, image(json!({"config": {"digest": d(b'a')}}))),
            (
                None,
                image(json!({"subject": {"digest": "nope", "size": 1}})),
            ),
            (None, br#"{"schemaVersion": 2}"#.to_vec()),
        ];
        for (ct, body) in cases {
            assert!(
                parse(ct, &body).is_err(),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}
