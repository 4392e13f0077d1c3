//! Content built in code: random blobs, configs, manifests and indexes, with
//! their digests (OCI image-spec descriptors and media types).

use bytes::Bytes;
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256, Sha512};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest type a client typically accepts, as one `Accept` value.
pub fn accept_all() -> String {
    [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ")
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(Sha512::digest(data)))
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// A short random lowercase name part, such as `k3f9a01c`.
pub fn random_name() -> String {
    hex::encode(random_bytes(4))
}

/// The digest of content nobody pushed.
pub fn unknown_digest() -> String {
    sha256(&random_bytes(32))
}

/// Bytes with their digest.
#[derive(Clone, Debug)]
pub struct Blob {
    pub data: Bytes,
    pub digest: String,
}

impl Blob {
    pub fn new(data: impl Into<Bytes>) -> Blob {
        let data = data.into();
        let digest = sha256(&data);
        Blob { data, digest }
    }

    pub fn sha512(data: impl Into<Bytes>) -> Blob {
        let data = data.into();
        let digest = sha512(&data);
        Blob { data, digest }
    }

    pub fn random(n: usize) -> Blob {
        Blob::new(random_bytes(n))
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// An image-spec descriptor of this blob.
    pub fn descriptor(&self, media_type: &str) -> Value {
        json!({"mediaType": media_type, "digest": self.digest, "size": self.len()})
    }
}

/// The empty JSON object, `{}`: the image-spec's empty descriptor content.
pub fn empty_config() -> Blob {
    Blob::new(&b"{}"[..])
}

/// A config blob that differs from every other run's.
pub fn image_config(media_type_docker: bool, layers: &[&Blob]) -> Blob {
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let mut config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"org.example.conformance": random_name()}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if media_type_docker {
        config["config"]["Env"] = json!(["PATH=/usr/bin"]);
    }
    Blob::new(serde_json::to_vec(&config).expect("JSON"))
}

/// A manifest (or index) as pushed: its media type, exact bytes, digest.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub media_type: String,
    pub body: Bytes,
    pub digest: String,
}

impl Manifest {
    pub fn from_value(media_type: &str, value: &Value) -> Manifest {
        Manifest::from_bytes(media_type, serde_json::to_vec(value).expect("JSON"))
    }

    pub fn from_bytes(media_type: &str, body: impl Into<Bytes>) -> Manifest {
        let body = body.into();
        Manifest {
            media_type: media_type.to_owned(),
            digest: sha256(&body),
            body,
        }
    }

    pub fn len(&self) -> usize {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// An image-spec descriptor of this manifest.
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.len()})
    }
}

/// An image: the blobs to push first, then its manifest.
#[derive(Clone, Debug)]
pub struct Image {
    pub blobs: Vec<Blob>,
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Manifest,
}

impl Image {
    /// An OCI image with random layers of these sizes.
    pub fn oci(layer_sizes: &[usize]) -> Image {
        Image::build(false, layer_sizes, |_| {})
    }

    /// An OCI image, its manifest JSON adjusted by `edit` before hashing.
    pub fn oci_with(layer_sizes: &[usize], edit: impl FnOnce(&mut Value)) -> Image {
        Image::build(false, layer_sizes, edit)
    }

    /// A Docker schema 2 image.
    pub fn docker(layer_sizes: &[usize]) -> Image {
        Image::build(true, layer_sizes, |_| {})
    }

    fn build(docker: bool, layer_sizes: &[usize], edit: impl FnOnce(&mut Value)) -> Image {
        let layers: Vec<Blob> = layer_sizes.iter().map(|n| Blob::random(*n)).collect();
        let config = image_config(docker, &layers.iter().collect::<Vec<_>>());
        let (mt, config_mt, layer_mt) = if docker {
            (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
        } else {
            (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
        };
        let mut value = json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": config.descriptor(config_mt),
            "layers": layers.iter().map(|l| l.descriptor(layer_mt)).collect::<Vec<_>>(),
        });
        edit(&mut value);
        let manifest = Manifest::from_value(mt, &value);
        let mut blobs = vec![config.clone()];
        blobs.extend(layers.iter().cloned());
        Image {
            blobs,
            config,
            layers,
            manifest,
        }
    }
}

/// An index (OCI) or manifest list (Docker) of these manifests, each given
/// a platform.
pub fn index_of(media_type: &str, children: &[&Manifest]) -> Manifest {
    let manifests: Vec<Value> = children
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut d = m.descriptor();
            d["platform"] = json!({
                "architecture": if i % 2 == 0 { "amd64" } else { "arm64" },
                "os": "linux",
            });
            d
        })
        .collect();
    Manifest::from_value(
        media_type,
        &json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}),
    )
}

/// An artifact manifest (OCI image manifest with the empty config or the
/// given config) pointing at `subject`.
pub struct Artifact {
    pub blobs: Vec<Blob>,
    pub manifest: Manifest,
}

pub fn artifact(
    subject: &Manifest,
    artifact_type: Option<&str>,
    config_media_type: Option<&str>,
    annotations: Value,
) -> Artifact {
    let (config, config_mt) = match config_media_type {
        Some(mt) => (
            Blob::new(serde_json::to_vec(&json!({"n": random_name()})).expect("JSON")),
            mt,
        ),
        None => (empty_config(), OCI_EMPTY),
    };
    let layer = Blob::random(64);
    let mut value = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(config_mt),
        "layers": [layer.descriptor("application/octet-stream")],
        "subject": subject.descriptor(),
        "annotations": annotations,
    });
    if let Some(t) = artifact_type {
        value["artifactType"] = json!(t);
    }
    Artifact {
        blobs: vec![config, layer],
        manifest: Manifest::from_value(OCI_MANIFEST, &value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        assert_eq!(
            sha256(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256(b"{}"),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert!(sha512(b"").starts_with("sha512:cf83e1357eefb8bd"));
        assert_eq!(sha512(b"").len(), 7 + 128);
    }

    #[test]
    fn images_reference_their_blobs() {
        let image = Image::oci(&[10, 20]);
        let v: Value = serde_json::from_slice(&image.manifest.body).unwrap();
        assert_eq!(v["config"]["digest"], json!(image.config.digest));
        assert_eq!(v["layers"][1]["size"], json!(20));
        assert_eq!(image.blobs.len(), 3);
        assert_eq!(image.manifest.digest, sha256(&image.manifest.body));
    }
}
