//! Test images, built with umoci in OCI layouts from fresh random bytes.

use std::path::{Path, PathBuf};

use rand::RngCore;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::tools::{Tool, run};

/// A test image in an OCI layout.
pub struct Image {
    pub layout: Layout,
    pub tag: &'static str,
    /// Every file put in the image: its path inside, without the leading
    /// slash, and its content.
    pub files: Vec<(&'static str, Vec<u8>)>,
}

impl Image {
    /// Builds an image in `work` with three layers, one per file:
    /// `random_len` random bytes at /data/random.bin, then /hello.txt, then
    /// /etc/slipway/motd — each with a fresh nonce, so no two images share a
    /// layer.
    pub async fn build(work: &Path, random_len: usize) -> Image {
        const TAG: &str = "v1";
        let umoci = umoci();
        let src = work.join("src");
        std::fs::create_dir_all(&src).expect("create the image's source directory");
        let mut random = vec![0u8; random_len];
        rand::rng().fill_bytes(&mut random);
        let mut nonce = [0u8; 8];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = hex::encode(nonce);
        let files = vec![
            ("data/random.bin", random),
            (
                "hello.txt",
                format!("hello from slipway {nonce}\n").into_bytes(),
            ),
            (
                "etc/slipway/motd",
                format!("built for an interop test, {nonce}\n").into_bytes(),
            ),
        ];

        let layout = Layout(work.join("layout"));
        let image = format!("{}:{TAG}", layout.0.display());
        run(umoci.cmd(["init", "--layout"]).arg(&layout.0)).await;
        run(umoci.cmd(["new", "--image", &image])).await;
        for (i, (path, content)) in files.iter().enumerate() {
            let file = src.join(format!("file-{i}"));
            std::fs::write(&file, content).expect("write a file for the image");
            run(umoci
                .cmd(["insert", "--image", &image])
                .arg(&file)
                .arg(format!("/{path}")))
            .await;
        }
        // Drops the manifests and configs of the intermediate images.
        run(umoci.cmd(["gc", "--layout"]).arg(&layout.0)).await;
        Image {
            layout,
            tag: TAG,
            files,
        }
    }

    /// `oci:<layout>:<tag>`, as skopeo names it.
    pub fn reference(&self) -> String {
        self.layout.reference(self.tag)
    }

    /// The descriptor and bytes of the image's manifest.
    pub fn manifest(&self) -> (Descriptor, Vec<u8>) {
        self.layout.manifest(self.tag)
    }

    /// Tags, as `tag`, a variant of the image: the same layers under another
    /// config (a label), so another manifest. Returns `tag`.
    pub async fn variant(&self, tag: &'static str) -> &'static str {
        run(umoci()
            .cmd([
                "config",
                "--image",
                &format!("{}:{}", self.layout.0.display(), self.tag),
            ])
            .args([
                "--tag",
                tag,
                "--config.label",
                &format!("org.slipway.variant={tag}"),
            ]))
        .await;
        tag
    }
}

fn umoci() -> Tool {
    Tool::find("umoci", "the Debian package umoci")
}

/// An OCI image layout on disk.
pub struct Layout(pub PathBuf);

#[derive(Debug, Clone)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn from_json(v: &Value) -> Descriptor {
        Descriptor {
            media_type: v["mediaType"].as_str().unwrap_or_default().to_owned(),
            digest: v["digest"]
                .as_str()
                .unwrap_or_else(|| panic!("descriptor without a digest: {v}"))
                .to_owned(),
            size: v["size"]
                .as_u64()
                .unwrap_or_else(|| panic!("descriptor without a size: {v}")),
        }
    }
}

impl Layout {
    /// `oci:<layout>:<tag>`, as skopeo names it.
    pub fn reference(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.0.display())
    }

    /// The descriptor and bytes of the manifest tagged `tag` in index.json.
    pub fn manifest(&self, tag: &str) -> (Descriptor, Vec<u8>) {
        let path = self.0.join("index.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let index = super::json(&text);
        let desc = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .map(Descriptor::from_json)
            .unwrap_or_else(|| {
                panic!("{} has no manifest tagged {tag}: {index:#}", path.display())
            });
        let bytes = self.blob(&desc.digest);
        assert_eq!(
            bytes.len() as u64,
            desc.size,
            "the manifest tagged {tag} has another size than its descriptor"
        );
        (desc, bytes)
    }

    /// A blob's bytes, checked against its digest.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
        let path = self.0.join("blobs/sha256").join(hex);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert_eq!(
            sha256(&bytes),
            digest,
            "{} does not hash to its name",
            path.display()
        );
        bytes
    }
}

/// The config and then the layers an image manifest references.
pub fn referenced_blobs(manifest: &[u8]) -> Vec<Descriptor> {
    let m: Value = serde_json::from_slice(manifest).expect("manifest JSON");
    std::iter::once(&m["config"])
        .chain(m["layers"].as_array().into_iter().flatten())
        .map(Descriptor::from_json)
        .collect()
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
