//! Stack rebase by manifest surgery: an app image's run-image layers are
//! replaced by a newer run image's, and nothing else changes — no layer is
//! read, written or uploaded.
//!
//! The rules are the buildpacks rebaser's (Platform API 0.12+, `rebaser`):
//! - the app image is made of the run image's layers up to and including
//!   `io.buildpacks.lifecycle.metadata` `runImage.topLayer` (a diff id),
//!   then the app's own layers, which are kept in order, byte for byte;
//! - the new image is checked first: not `io.buildpacks.rebasable=false`,
//!   the same os, architecture and variant, the same distro where the app
//!   names one, and the new run image's name among the app's run image and
//!   its mirrors (only that last check gives way to `force`);
//! - the config is the app's, with `rootfs.diff_ids` and `history` stitched
//!   from the new base and the app's own part, os and architecture fields
//!   from the new base, the `io.buildpacks.base.*` and
//!   `io.buildpacks.stack.*` labels synced from the new base, and the
//!   lifecycle metadata's `runImage.topLayer` and `reference` updated;
//! - the manifest is the app's, with the new config descriptor and the new
//!   base's layer descriptors in place of the old base's.
//!
//! Everything here is pure: manifests and configs in, bytes out. Where the
//! bytes go (over the OCI API, or straight into storage for a fleet
//! rebase) is the caller's business.

use serde_json::{Map, Value, json};

use crate::export::LIFECYCLE_METADATA;
use crate::oci::{DOCKER_LIST, OCI_INDEX, OCI_MANIFEST, sha256_digest};

/// `"false"` on an app image: its base must not be replaced.
pub const REBASABLE: &str = "io.buildpacks.rebasable";
pub const DISTRO_NAME: &str = "io.buildpacks.base.distro.name";
pub const DISTRO_VERSION: &str = "io.buildpacks.base.distro.version";
/// Label prefixes that describe the base, copied from the new run image.
pub const BASE_LABEL_PREFIXES: [&str; 2] = ["io.buildpacks.base.", "io.buildpacks.stack."];
/// The config fields that describe the platform, taken from the new base.
const PLATFORM_FIELDS: [&str; 5] = ["os", "architecture", "variant", "os.version", "os.features"];

/// An app image as the registry holds it.
#[derive(Debug, Clone, Copy)]
pub struct AppImage<'a> {
    /// The manifest's media type (used when the body names none).
    pub media_type: &'a str,
    pub manifest: &'a [u8],
    pub config: &'a [u8],
}

/// A content descriptor: what a manifest references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// The run image to rebase onto, checked once for a whole fleet.
#[derive(Debug, Clone)]
pub struct NewBase {
    /// The name app images list as their run image: `platform/run:bookworm`.
    pub name: String,
    /// Its manifest's digest.
    pub digest: String,
    layers: Vec<Value>,
    descriptors: Vec<Descriptor>,
    diff_ids: Vec<String>,
    history: Option<Vec<Value>>,
    platform: Map<String, Value>,
    labels: Map<String, Value>,
}

/// Why a run image cannot be a base at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the run image {name} cannot be rebased onto: {reason}")]
pub struct InvalidBase {
    pub name: String,
    pub reason: String,
}

/// Why an app image is left as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Incompatible {
    #[error("it is not an image built with buildpacks (no io.buildpacks.lifecycle.metadata label)")]
    NotBuildpacks,
    #[error("it is marked io.buildpacks.rebasable=false")]
    NotRebasable,
    #[error("it is for {app}, the run image for {base}")]
    Platform { app: String, base: String },
    #[error("its distro is {app}, the run image's is {base}")]
    Distro { app: String, base: String },
    #[error(
        "{name} is not its run image or a mirror of it (it lists {}); --force rebases it anyway",
        if listed.is_empty() { "none".to_owned() } else { listed.join(", ") }
    )]
    NameNotListed { name: String, listed: Vec<String> },
    #[error("its run image top layer {0} is not one of its layers")]
    TopLayerMissing(String),
    #[error("{0}")]
    Malformed(String),
}

/// What a rebase gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The image's base already is the new run image.
    Current,
    Rebased(Box<Rebased>),
}

/// A rebased image: new config and manifest bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebased {
    pub media_type: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    /// The new run image's layers, which the app's repository must link.
    pub base_layers: Vec<Descriptor>,
    /// The app's own layers, kept.
    pub app_layers: Vec<Descriptor>,
    pub old_top_layer: String,
    pub new_top_layer: String,
    /// The run image digest the image was built on (or last rebased onto).
    pub old_base_digest: String,
    /// Set when `force` overrode the name check: the names it listed.
    pub renamed_from: Option<Vec<String>>,
}

impl NewBase {
    /// Checks a run image's manifest and config.
    pub fn parse(
        name: &str,
        digest: &str,
        manifest: &[u8],
        config: &[u8],
    ) -> Result<NewBase, InvalidBase> {
        let invalid = |reason: String| InvalidBase {
            name: name.to_owned(),
            reason,
        };
        let m: Value = serde_json::from_slice(manifest)
            .map_err(|e| invalid(format!("its manifest is not JSON ({e})")))?;
        let media_type = m["mediaType"].as_str().unwrap_or("");
        if m.get("manifests").is_some() || media_type == OCI_INDEX || media_type == DOCKER_LIST {
            return Err(invalid(
                "it is an index; name a single-platform image".into(),
            ));
        }
        let layers = m["layers"].as_array().cloned().unwrap_or_default();
        if layers.is_empty() {
            return Err(invalid("its manifest lists no layers".into()));
        }
        let descriptors = layers
            .iter()
            .map(descriptor)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("its manifest has {e}")))?;
        let c: Value = serde_json::from_slice(config)
            .map_err(|e| invalid(format!("its config is not JSON ({e})")))?;
        let diff_ids = strings(&c["rootfs"]["diff_ids"]);
        if diff_ids.len() != layers.len() {
            return Err(invalid(format!(
                "its config lists {} diff ids for {} layers",
                diff_ids.len(),
                layers.len()
            )));
        }
        let history = c["history"]
            .as_array()
            .filter(|h| non_empty_entries(h) == layers.len())
            .cloned();
        let platform = PLATFORM_FIELDS
            .iter()
            .filter_map(|f| c.get(*f).map(|v| ((*f).to_owned(), v.clone())))
            .collect();
        let labels = c["config"]["Labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        Ok(NewBase {
            name: name.to_owned(),
            digest: digest.to_owned(),
            layers,
            descriptors,
            diff_ids,
            history,
            platform,
            labels,
        })
    }

    /// The new base's layers.
    pub fn layers(&self) -> &[Descriptor] {
        &self.descriptors
    }

    /// The diff id of its top layer.
    pub fn top_layer(&self) -> &str {
        self.diff_ids.last().map(String::as_str).unwrap_or("")
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).and_then(Value::as_str)
    }

    fn platform_text(&self) -> String {
        platform_text(&self.platform)
    }
}

/// The run image an app image names, read from its config — to find the
/// images built on a given run image without rebasing them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BaseInfo {
    /// `runImage.image`, its mirrors, and the older `stack.runImage` names.
    pub names: Vec<String>,
    /// The run image's manifest digest the image was built on.
    pub digest: String,
    pub top_layer: String,
}

/// What an app image's config says about its run image; `None` when it
/// has no lifecycle metadata (it was not built with buildpacks).
pub fn base_info(config: &[u8]) -> Option<BaseInfo> {
    let c: Value = serde_json::from_slice(config).ok()?;
    let meta = lifecycle_metadata(&c).ok()??;
    Some(BaseInfo {
        names: listed_names(&meta),
        digest: digest_part(meta["runImage"]["reference"].as_str().unwrap_or("")).to_owned(),
        top_layer: meta["runImage"]["topLayer"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    })
}

/// Whether `name` is one of `names` (same repository and tag; a registry
/// host counts only when both name one).
pub fn name_listed(name: &str, names: &[String]) -> bool {
    let want = NameParts::of(name);
    names.iter().any(|n| NameParts::of(n).matches(&want))
}

/// Rebases `app` onto `base`. `force` overrides the run image name check
/// (and only that one).
pub fn rebase(app: &AppImage<'_>, base: &NewBase, force: bool) -> Result<Outcome, Incompatible> {
    let malformed = |s: String| Incompatible::Malformed(s);
    let mut manifest: Value = serde_json::from_slice(app.manifest)
        .map_err(|e| malformed(format!("its manifest is not JSON ({e})")))?;
    let media_type = manifest["mediaType"]
        .as_str()
        .unwrap_or(app.media_type)
        .to_owned();
    if manifest.get("manifests").is_some() || media_type == OCI_INDEX || media_type == DOCKER_LIST {
        return Err(malformed(
            "it is an index, not a single image; rebase its images one by one".into(),
        ));
    }
    let config_media_type = manifest["config"]["mediaType"]
        .as_str()
        .ok_or_else(|| malformed("its manifest has no config".into()))?
        .to_owned();
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let mut config: Value = serde_json::from_slice(app.config)
        .map_err(|e| malformed(format!("its config is not JSON ({e})")))?;
    let Some(mut meta) = lifecycle_metadata(&config)? else {
        return Err(Incompatible::NotBuildpacks);
    };
    let diff_ids = strings(&config["rootfs"]["diff_ids"]);
    if diff_ids.len() != layers.len() {
        return Err(malformed(format!(
            "its config lists {} diff ids for {} layers",
            diff_ids.len(),
            layers.len()
        )));
    }
    let old_top = meta["runImage"]["topLayer"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let old_reference = meta["runImage"]["reference"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let old_base_digest = digest_part(&old_reference).to_owned();
    // The last occurrence: a layer repeated in the app's part cannot be
    // the boundary, one repeated in the base's can.
    let Some(top) = diff_ids.iter().rposition(|d| *d == old_top) else {
        return Err(Incompatible::TopLayerMissing(if old_top.is_empty() {
            "(none recorded)".into()
        } else {
            old_top
        }));
    };
    if old_base_digest == base.digest || diff_ids[..=top] == base.diff_ids[..] {
        return Ok(Outcome::Current);
    }

    // The checks, in the rebaser's order.
    let labels = config["config"]["Labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if labels.get(REBASABLE).and_then(Value::as_str) == Some("false") {
        return Err(Incompatible::NotRebasable);
    }
    let app_platform: Map<String, Value> = ["os", "architecture", "variant"]
        .iter()
        .filter_map(|f| config.get(*f).map(|v| ((*f).to_owned(), v.clone())))
        .collect();
    let same = |f: &str| {
        let a = app_platform.get(f).and_then(Value::as_str).unwrap_or("");
        let b = base.platform.get(f).and_then(Value::as_str).unwrap_or("");
        a == b
    };
    if !(same("os") && same("architecture") && same("variant")) {
        return Err(Incompatible::Platform {
            app: platform_text(&app_platform),
            base: base.platform_text(),
        });
    }
    for key in [DISTRO_NAME, DISTRO_VERSION] {
        let Some(want) = labels.get(key).and_then(Value::as_str) else {
            continue;
        };
        if base.label(key) != Some(want) {
            let text = |name: Option<&str>, version: Option<&str>| match (name, version) {
                (None, _) => "unset".to_owned(),
                (Some(n), Some(v)) => format!("{n} {v}"),
                (Some(n), None) => n.to_owned(),
            };
            return Err(Incompatible::Distro {
                app: text(
                    labels.get(DISTRO_NAME).and_then(Value::as_str),
                    labels.get(DISTRO_VERSION).and_then(Value::as_str),
                ),
                base: text(base.label(DISTRO_NAME), base.label(DISTRO_VERSION)),
            });
        }
    }
    let listed = listed_names(&meta);
    let mut renamed_from = None;
    if !name_listed(&base.name, &listed) {
        if !force {
            return Err(Incompatible::NameNotListed {
                name: base.name.clone(),
                listed,
            });
        }
        meta["runImage"]["image"] = json!(base.name);
        meta["runImage"]["mirrors"] = json!([]);
        if meta["stack"]["runImage"].is_object() {
            meta["stack"]["runImage"] = json!({"image": base.name, "mirrors": []});
        }
        renamed_from = Some(listed);
    }

    let app_descriptors = layers[top + 1..]
        .iter()
        .map(descriptor)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(format!("its manifest has {e}")))?;

    // The config.
    let mut new_diff_ids = base.diff_ids.clone();
    new_diff_ids.extend(diff_ids[top + 1..].iter().cloned());
    config["rootfs"] = json!({"type": "layers", "diff_ids": new_diff_ids});
    let history = config["history"].as_array().cloned();
    match (history, &base.history) {
        (Some(h), Some(base_history)) if non_empty_entries(&h) == layers.len() => {
            let app_part = app_history(&h, layers.len() - top - 1);
            let mut stitched = base_history.clone();
            stitched.extend(app_part);
            config["history"] = Value::Array(stitched);
        }
        // A history that does not line up with the layers would mislead
        // whoever reads it: none is better.
        _ => {
            if let Some(c) = config.as_object_mut() {
                c.remove("history");
            }
        }
    }
    let c = config
        .as_object_mut()
        .ok_or_else(|| malformed("its config is not a JSON object".into()))?;
    for f in PLATFORM_FIELDS {
        match base.platform.get(f) {
            Some(v) => {
                c.insert(f.to_owned(), v.clone());
            }
            None => {
                c.remove(f);
            }
        }
    }
    let mut new_labels: Map<String, Value> = labels
        .into_iter()
        .filter(|(k, _)| !is_base_label(k))
        .collect();
    for (k, v) in &base.labels {
        if is_base_label(k) {
            new_labels.insert(k.clone(), v.clone());
        }
    }
    meta["runImage"]["topLayer"] = json!(base.top_layer());
    meta["runImage"]["reference"] = json!(match old_reference.split_once('@') {
        // `name@digest` stays in that form.
        Some(_) => format!("{}@{}", NameParts::of(&base.name).repository, base.digest),
        None => base.digest.clone(),
    });
    new_labels.insert(LIFECYCLE_METADATA.into(), json!(meta.to_string()));
    let inner = c
        .entry("config")
        .or_insert_with(|| Value::Object(Map::new()));
    if !inner.is_object() {
        *inner = Value::Object(Map::new());
    }
    inner["Labels"] = Value::Object(new_labels);
    let config_bytes = serde_json::to_vec(&config).expect("a config serialises");
    let config_digest = sha256_digest(&config_bytes);

    // The manifest.
    manifest["config"] = json!({
        "mediaType": config_media_type,
        "digest": config_digest,
        "size": config_bytes.len(),
    });
    let mut new_layers = base.layers.clone();
    new_layers.extend(layers[top + 1..].iter().cloned());
    manifest["layers"] = Value::Array(new_layers);
    let manifest_bytes = serde_json::to_vec(&manifest).expect("a manifest serialises");
    Ok(Outcome::Rebased(Box::new(Rebased {
        media_type: if media_type.is_empty() {
            OCI_MANIFEST.to_owned()
        } else {
            media_type
        },
        manifest_digest: sha256_digest(&manifest_bytes),
        manifest: manifest_bytes,
        config_digest,
        config: config_bytes,
        base_layers: base.descriptors.clone(),
        app_layers: app_descriptors,
        old_top_layer: old_top,
        new_top_layer: base.top_layer().to_owned(),
        old_base_digest,
        renamed_from,
    })))
}

fn is_base_label(key: &str) -> bool {
    BASE_LABEL_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The lifecycle metadata label, parsed; `Ok(None)` when absent.
fn lifecycle_metadata(config: &Value) -> Result<Option<Value>, Incompatible> {
    let Some(text) = config["config"]["Labels"][LIFECYCLE_METADATA].as_str() else {
        return Ok(None);
    };
    let meta: Value = serde_json::from_str(text).map_err(|e| {
        Incompatible::Malformed(format!("its {LIFECYCLE_METADATA} label is not JSON ({e})"))
    })?;
    if !meta.is_object() {
        return Err(Incompatible::Malformed(format!(
            "its {LIFECYCLE_METADATA} label is not a JSON object"
        )));
    }
    Ok(Some(meta))
}

/// `runImage.image` and mirrors, then the older `stack.runImage` ones.
fn listed_names(meta: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for ri in [&meta["runImage"], &meta["stack"]["runImage"]] {
        if let Some(n) = ri["image"].as_str().filter(|n| !n.is_empty()) {
            names.push(n.to_owned());
        }
        names.extend(strings(&ri["mirrors"]));
    }
    names.dedup();
    names
}

/// `name@sha256:…` → `sha256:…`; a bare digest stays.
fn digest_part(reference: &str) -> &str {
    reference
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or(reference)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn descriptor(v: &Value) -> Result<Descriptor, String> {
    let digest = v["digest"]
        .as_str()
        .filter(|d| d.contains(':'))
        .ok_or_else(|| "a layer without a digest".to_owned())?;
    let size = v["size"]
        .as_u64()
        .ok_or_else(|| format!("layer {digest} without a size"))?;
    Ok(Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or("").to_owned(),
        digest: digest.to_owned(),
        size,
    })
}

fn is_empty_layer(entry: &Value) -> bool {
    entry["empty_layer"].as_bool().unwrap_or(false)
}

fn non_empty_entries(history: &[Value]) -> usize {
    history.iter().filter(|e| !is_empty_layer(e)).count()
}

/// The entries of the last `app_layers` layers: from the entry of the
/// first of them to the end (empty-layer entries among them included).
fn app_history(history: &[Value], app_layers: usize) -> Vec<Value> {
    if app_layers == 0 {
        return Vec::new();
    }
    let mut seen = 0;
    for (i, e) in history.iter().enumerate().rev() {
        if !is_empty_layer(e) {
            seen += 1;
            if seen == app_layers {
                return history[i..].to_vec();
            }
        }
    }
    history.to_vec()
}

fn platform_text(p: &Map<String, Value>) -> String {
    let get = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("");
    let mut s = format!(
        "{}/{}",
        match get("os") {
            "" => "(no os)",
            os => os,
        },
        match get("architecture") {
            "" => "(no architecture)",
            a => a,
        }
    );
    if !get("variant").is_empty() {
        s.push('/');
        s.push_str(get("variant"));
    }
    s
}

/// A run image name, split for comparison: `[host/]repository[:tag][@digest]`.
struct NameParts {
    registry: String,
    repository: String,
    tag: String,
}

impl NameParts {
    fn of(name: &str) -> NameParts {
        let name = name.trim();
        let name = name.split_once('@').map(|(n, _)| n).unwrap_or(name);
        let (registry, rest) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest)
            }
            _ => (String::new(), name),
        };
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (rest, "latest"),
        };
        NameParts {
            registry,
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        }
    }

    fn matches(&self, other: &NameParts) -> bool {
        self.repository == other.repository
            && self.tag == other.tag
            && (self.registry.is_empty()
                || other.registry.is_empty()
                || self.registry == other.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

    /// A run image: `layers` fake layers, labels, a history with an
    /// empty-layer entry after each `empty_every`-th layer.
    #[derive(Debug, Clone)]
    struct Base {
        name: String,
        seed: String,
        layers: usize,
        empty_every: usize,
        arch: String,
        labels: Vec<(String, String)>,
    }

    impl Base {
        fn new(name: &str, seed: &str, layers: usize) -> Base {
            Base {
                name: name.into(),
                seed: seed.into(),
                layers,
                empty_every: 2,
                arch: "amd64".into(),
                labels: vec![
                    (DISTRO_NAME.into(), "debian".into()),
                    (DISTRO_VERSION.into(), "12".into()),
                    ("io.buildpacks.base.id".into(), "slipway.bookworm".into()),
                    (
                        "io.buildpacks.stack.id".into(),
                        "io.slipway.stacks.bookworm".into(),
                    ),
                    (
                        "io.buildpacks.base.released".into(),
                        format!("release {seed}"),
                    ),
                    (REBASABLE.into(), "true".into()),
                ],
            }
        }

        fn descriptors(&self) -> Vec<Value> {
            (0..self.layers)
                .map(|i| {
                    json!({"mediaType": LAYER, "digest": fake(&format!("{} blob {i}", self.seed)),
                           "size": 100 + i})
                })
                .collect()
        }

        fn diff_ids(&self) -> Vec<String> {
            (0..self.layers)
                .map(|i| fake(&format!("{} diff {i}", self.seed)))
                .collect()
        }

        fn config(&self) -> Value {
            let mut history = Vec::new();
            for i in 0..self.layers {
                history.push(json!({"created_by": format!("{} layer {i}", self.seed)}));
                if self.empty_every > 0 && i % self.empty_every == 0 {
                    history.push(json!({"created_by": format!("{} env {i}", self.seed), "empty_layer": true}));
                }
            }
            let labels: Map<String, Value> = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            json!({
                "os": "linux", "architecture": self.arch,
                "config": {"Env": ["PATH=/usr/bin"], "User": "1000:1000", "Labels": labels},
                "rootfs": {"type": "layers", "diff_ids": self.diff_ids()},
                "history": history,
            })
        }

        fn manifest_digest(&self) -> String {
            fake(&format!("{} manifest", self.seed))
        }

        fn parsed(&self) -> NewBase {
            let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": CONFIG, "digest": fake("c"), "size": 1},
                "layers": self.descriptors()});
            NewBase::parse(
                &self.name,
                &self.manifest_digest(),
                &serde_json::to_vec(&manifest).unwrap(),
                &serde_json::to_vec(&self.config()).unwrap(),
            )
            .unwrap()
        }
    }

    fn fake(s: &str) -> String {
        sha256_digest(s.as_bytes())
    }

    /// An app built the way the exporter builds one: the base's config and
    /// layers, then `app_layers` layers of its own.
    fn app_on(base: &Base, app_layers: usize, extra: &[(&str, &str)]) -> (Vec<u8>, Vec<u8>) {
        let mut config = base.config();
        let mut diff_ids = base.diff_ids();
        let mut layers = base.descriptors();
        let mut history = config["history"].as_array().cloned().unwrap();
        for i in 0..app_layers {
            diff_ids.push(fake(&format!("app diff {i}")));
            layers.push(json!({"mediaType": LAYER, "digest": fake(&format!("app blob {i}")), "size": 7 + i}));
            history.push(json!({"created_by": format!("buildpacks:layer {i}")}));
        }
        config["rootfs"]["diff_ids"] = json!(diff_ids);
        config["history"] = json!(history);
        let labels = config["config"]["Labels"].as_object_mut().unwrap();
        labels.insert(
            LIFECYCLE_METADATA.into(),
            json!(
                json!({
                    "app": [{"sha": fake("app diff 0")}],
                    "buildpacks": [{"key": "slipway/python", "version": "0.1.0"}],
                    "runImage": {"topLayer": base.diff_ids().last().unwrap(),
                                 "reference": base.manifest_digest(),
                                 "image": base.name},
                })
                .to_string()
            ),
        );
        labels.insert("org.example.team".into(), json!("payments"));
        for (k, v) in extra {
            labels.insert((*k).into(), json!(v));
        }
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG, "digest": sha256_digest(&config), "size": config.len()},
            "layers": layers,
        });
        (serde_json::to_vec(&manifest).unwrap(), config)
    }

    fn run(app: &(Vec<u8>, Vec<u8>), base: &Base, force: bool) -> Result<Outcome, Incompatible> {
        rebase(
            &AppImage {
                media_type: OCI_MANIFEST,
                manifest: &app.0,
                config: &app.1,
            },
            &base.parsed(),
            force,
        )
    }

    fn rebased(o: Result<Outcome, Incompatible>) -> Rebased {
        match o {
            Ok(Outcome::Rebased(r)) => *r,
            other => panic!("expected a rebase, got {other:?}"),
        }
    }

    fn labels_of(config: &[u8]) -> Map<String, Value> {
        let c: Value = serde_json::from_slice(config).unwrap();
        c["config"]["Labels"].as_object().cloned().unwrap()
    }

    #[test]
    fn a_rebase_swaps_the_base_and_keeps_the_app() {
        let v1 = Base::new("platform/run:bookworm", "v1", 3);
        let mut v2 = Base::new("platform/run:bookworm", "v2", 4);
        v2.labels.retain(|(k, _)| k != "io.buildpacks.stack.id");
        let app = app_on(&v1, 3, &[]);
        let r = rebased(run(&app, &v2, false));

        let m: Value = serde_json::from_slice(&r.manifest).unwrap();
        let old: Value = serde_json::from_slice(&app.0).unwrap();
        let layers = m["layers"].as_array().unwrap();
        assert_eq!(layers[..4], v2.descriptors()[..]);
        assert_eq!(layers[4..], old["layers"].as_array().unwrap()[3..]);
        assert_eq!(m["config"]["digest"], json!(r.config_digest));
        assert_eq!(m["config"]["size"], json!(r.config.len()));
        assert_eq!(r.manifest_digest, sha256_digest(&r.manifest));
        assert_eq!(r.config_digest, sha256_digest(&r.config));

        let c: Value = serde_json::from_slice(&r.config).unwrap();
        let mut want = v2.diff_ids();
        want.extend((0..3).map(|i| fake(&format!("app diff {i}"))));
        assert_eq!(c["rootfs"]["diff_ids"], json!(want));
        let history = c["history"].as_array().unwrap();
        assert_eq!(non_empty_entries(history), 7);
        assert_eq!(history.last().unwrap()["created_by"], "buildpacks:layer 2");
        assert_eq!(history[0]["created_by"], "v2 layer 0");

        let labels = labels_of(&r.config);
        assert_eq!(labels["io.buildpacks.base.released"], "release v2");
        assert!(
            !labels.contains_key("io.buildpacks.stack.id"),
            "a base label the new base dropped goes"
        );
        assert_eq!(labels["org.example.team"], "payments");
        let meta: Value =
            serde_json::from_str(labels[LIFECYCLE_METADATA].as_str().unwrap()).unwrap();
        assert_eq!(meta["runImage"]["topLayer"], json!(v2.diff_ids()[3]));
        assert_eq!(meta["runImage"]["reference"], json!(v2.manifest_digest()));
        assert_eq!(meta["runImage"]["image"], "platform/run:bookworm");
        assert_eq!(meta["buildpacks"][0]["key"], "slipway/python");
        assert_eq!(r.old_base_digest, v1.manifest_digest());
        assert_eq!(r.base_layers.len(), 4);
        assert_eq!(r.app_layers.len(), 3);
        assert_eq!(r.renamed_from, None);
    }

    #[test]
    fn the_refusals() {
        let v1 = Base::new("platform/run:bookworm", "v1", 2);
        let v2 = Base::new("platform/run:bookworm", "v2", 2);
        type Case = (&'static str, (Vec<u8>, Vec<u8>), Base, Incompatible);
        let cases: Vec<Case> = vec![
            (
                "rebasable=false",
                app_on(&v1, 1, &[(REBASABLE, "false")]),
                v2.clone(),
                Incompatible::NotRebasable,
            ),
            (
                "arm64 onto amd64",
                {
                    let mut arm = v1.clone();
                    arm.arch = "arm64".into();
                    app_on(&arm, 1, &[])
                },
                v2.clone(),
                Incompatible::Platform {
                    app: "linux/arm64".into(),
                    base: "linux/amd64".into(),
                },
            ),
            (
                "another distro",
                app_on(&v1, 1, &[(DISTRO_VERSION, "11")]),
                v2.clone(),
                Incompatible::Distro {
                    app: "debian 11".into(),
                    base: "debian 12".into(),
                },
            ),
            (
                "a run image it does not name",
                app_on(&v1, 1, &[]),
                Base::new("platform/run-other:bookworm", "v2", 2),
                Incompatible::NameNotListed {
                    name: "platform/run-other:bookworm".into(),
                    listed: vec!["platform/run:bookworm".into()],
                },
            ),
        ];
        for (what, app, base, want) in cases {
            assert_eq!(run(&app, &base, false), Err(want.clone()), "{what}");
            let forced = run(&app, &base, true);
            if matches!(want, Incompatible::NameNotListed { .. }) {
                let r = rebased(forced);
                assert_eq!(
                    r.renamed_from,
                    Some(vec!["platform/run:bookworm".to_owned()])
                );
                let labels = labels_of(&r.config);
                let meta: Value =
                    serde_json::from_str(labels[LIFECYCLE_METADATA].as_str().unwrap()).unwrap();
                assert_eq!(meta["runImage"]["image"], "platform/run-other:bookworm");
            } else {
                assert_eq!(forced, Err(want), "{what}: --force is for the name only");
            }
        }
        // Not built with buildpacks at all.
        let (m, mut c) = app_on(&v1, 1, &[]);
        let mut cv: Value = serde_json::from_slice(&c).unwrap();
        cv["config"]["Labels"]
            .as_object_mut()
            .unwrap()
            .remove(LIFECYCLE_METADATA);
        c = serde_json::to_vec(&cv).unwrap();
        assert_eq!(run(&(m, c), &v2, true), Err(Incompatible::NotBuildpacks));
        // A top layer that is not there.
        let (m, c) = app_on(&v1, 1, &[]);
        let mut cv: Value = serde_json::from_slice(&c).unwrap();
        let label = &mut cv["config"]["Labels"][LIFECYCLE_METADATA];
        let mut meta: Value = serde_json::from_str(label.as_str().unwrap()).unwrap();
        meta["runImage"]["topLayer"] = json!(fake("elsewhere"));
        *label = json!(meta.to_string());
        assert_eq!(
            run(&(m, serde_json::to_vec(&cv).unwrap()), &v2, false),
            Err(Incompatible::TopLayerMissing(fake("elsewhere")))
        );
    }

    #[test]
    fn indexes_are_not_bases() {
        let e = NewBase::parse(
            "platform/run:bookworm",
            &fake("i"),
            json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
                .to_string()
                .as_bytes(),
            b"{}",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the run image platform/run:bookworm cannot be rebased onto: it is an index; name a single-platform image"
        );
    }

    #[test]
    fn names_compare_by_repository_and_tag() {
        let names = vec![
            "platform/run:bookworm".to_owned(),
            "mirror.example.com/platform/run:bookworm".to_owned(),
        ];
        assert!(name_listed("platform/run:bookworm", &names));
        assert!(name_listed("127.0.0.1:5000/platform/run:bookworm", &names));
        assert!(name_listed("platform/run:bookworm@sha256:00", &names));
        assert!(!name_listed("platform/run:trixie", &names));
        assert!(!name_listed("platform/run", &names));
        assert!(name_listed("platform/run", &["platform/run:latest".into()]));
        assert!(!name_listed(
            "other.example.com/platform/run:bookworm",
            &["mirror.example.com/platform/run:bookworm".into()]
        ));
    }

    #[test]
    fn base_info_reads_the_label() {
        let v1 = Base::new("platform/run:bookworm", "v1", 2);
        let (_, c) = app_on(&v1, 1, &[]);
        let info = base_info(&c).unwrap();
        assert_eq!(info.names, vec!["platform/run:bookworm".to_owned()]);
        assert_eq!(info.digest, v1.manifest_digest());
        assert_eq!(info.top_layer, v1.diff_ids()[1]);
        assert_eq!(base_info(b"{\"config\": {}}"), None);
    }

    fn base_strategy(seed: &'static str) -> impl Strategy<Value = Base> {
        (1usize..5, 0usize..3, prop::bool::ANY).prop_map(move |(layers, empty_every, drop)| {
            let mut b = Base::new("platform/run:bookworm", seed, layers);
            b.empty_every = empty_every;
            if drop {
                b.labels.retain(|(k, _)| k != "io.buildpacks.stack.id");
            }
            b
        })
    }

    proptest! {
        /// Whatever the shapes: the app's layers are kept in order at the
        /// top, the base below is exactly the new one, the image is then
        /// current, and rebasing back gives the original bytes.
        #[test]
        fn rebases_keep_the_app_and_round_trip(
            v1 in base_strategy("v1"),
            v2 in base_strategy("v2"),
            app_layers in 0usize..6,
        ) {
            let app = app_on(&v1, app_layers, &[]);
            let r = rebased(run(&app, &v2, false));
            let old: Value = serde_json::from_slice(&app.0).unwrap();
            let new: Value = serde_json::from_slice(&r.manifest).unwrap();
            let old_layers = old["layers"].as_array().unwrap();
            let new_layers = new["layers"].as_array().unwrap();
            prop_assert_eq!(new_layers.len(), v2.layers + app_layers);
            prop_assert_eq!(&new_layers[..v2.layers], &v2.descriptors()[..]);
            prop_assert_eq!(&new_layers[v2.layers..], &old_layers[v1.layers..]);
            let c: Value = serde_json::from_slice(&r.config).unwrap();
            prop_assert_eq!(
                non_empty_entries(c["history"].as_array().unwrap()),
                v2.layers + app_layers
            );
            let labels = labels_of(&r.config);
            for (k, v) in &v2.labels {
                if is_base_label(k) {
                    prop_assert_eq!(&labels[k], &json!(v));
                }
            }
            for k in labels.keys().filter(|k| is_base_label(k)) {
                prop_assert!(v2.labels.iter().any(|(l, _)| l == k), "stale base label {}", k);
            }

            let again = run(&(r.manifest.clone(), r.config.clone()), &v2, false);
            prop_assert_eq!(again, Ok(Outcome::Current));

            let back = rebased(run(&(r.manifest.clone(), r.config.clone()), &v1, false));
            let original: Value = serde_json::from_slice(&app.1).unwrap();
            let returned: Value = serde_json::from_slice(&back.config).unwrap();
            prop_assert_eq!(returned, original);
            let original: Value = serde_json::from_slice(&app.0).unwrap();
            let returned: Value = serde_json::from_slice(&back.manifest).unwrap();
            prop_assert_eq!(returned, original);
        }
    }
}
