//! The export phase: an app image made of the run image's layers (mounted
//! in the registry, never downloaded or uploaded), one reproducible layer
//! per launch layer, the app, the launcher and its configuration; a config
//! with the labels rebase and tools read; pushed through the OCI API, each
//! layer only if the registry does not have it yet, and tagged last — so a
//! failed export (over quota, say) moves no tag.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::{Value, json};
use slipway_launcher::metadata::{self as launch, escape_id};

use crate::layers::{Entry, LAYER_GZIP, WrittenLayer, write_layer};
use crate::lifecycle::Built;
use crate::oci::{Client, ImageRef, OCI_MANIFEST, OciError};
use crate::{LAUNCHER_PATH, PROCESS_DIR};

pub const LIFECYCLE_METADATA: &str = "io.buildpacks.lifecycle.metadata";
pub const BUILD_METADATA: &str = "io.buildpacks.build.metadata";
pub const PROJECT_METADATA: &str = "io.buildpacks.project.metadata";
/// The time every exported layer, and the image, claims: reproducible.
pub const CREATED: &str = "1980-01-01T00:00:01Z";
/// The Platform API this lifecycle implements.
pub const PLATFORM_API: &str = "0.13";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Registry(#[from] OciError),
    #[error("{0}")]
    Invalid(String),
    #[error("writing a layer failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The run image, as fetched.
#[derive(Debug, Clone)]
pub struct RunImage {
    pub reference: ImageRef,
    pub manifest_digest: String,
    pub manifest: Value,
    pub config: Value,
}

impl RunImage {
    pub async fn fetch(client: &Client, reference: &ImageRef) -> Result<RunImage, ExportError> {
        let m = client
            .manifest(&reference.repository, &reference.reference)
            .await?;
        let manifest: Value = serde_json::from_slice(&m.body).map_err(|e| {
            ExportError::Invalid(format!("the run image's manifest is not JSON: {e}"))
        })?;
        if manifest.get("manifests").is_some() {
            return Err(ExportError::Invalid(format!(
                "the run image {reference} is an index; give a single-platform image"
            )));
        }
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| ExportError::Invalid("the run image's manifest has no config".into()))?;
        let config_bytes = client
            .blob_bytes(&reference.repository, config_digest)
            .await?;
        let config: Value = serde_json::from_slice(&config_bytes).map_err(|e| {
            ExportError::Invalid(format!("the run image's config is not JSON: {e}"))
        })?;
        Ok(RunImage {
            reference: reference.clone(),
            manifest_digest: m.digest,
            manifest,
            config,
        })
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.config["config"]["Labels"][key].as_str()
    }

    pub fn layers(&self) -> Vec<Value> {
        self.manifest["layers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The previous image of the same name, for layer reuse.
#[derive(Debug, Clone, Default)]
pub struct Previous {
    /// The lifecycle metadata label, parsed.
    pub metadata: Value,
    /// Layer digest → (descriptor, diff_id).
    pub layers: Vec<(Value, String)>,
}

impl Previous {
    pub async fn fetch(
        client: &Client,
        repo: &str,
        tag: &str,
    ) -> Result<Option<Previous>, ExportError> {
        let m = match client.manifest(repo, tag).await {
            Ok(m) => m,
            Err(OciError::Refused { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let manifest: Value =
            serde_json::from_slice(&m.body).map_err(|e| ExportError::Invalid(e.to_string()))?;
        let Some(config_digest) = manifest["config"]["digest"].as_str() else {
            return Ok(None);
        };
        let config: Value = serde_json::from_slice(&client.blob_bytes(repo, config_digest).await?)
            .map_err(|e| ExportError::Invalid(e.to_string()))?;
        let metadata = config["config"]["Labels"][LIFECYCLE_METADATA]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null);
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let layers = manifest["layers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .zip(diff_ids)
            .collect();
        Ok(Some(Previous { metadata, layers }))
    }

    /// The previous image's layer of `buildpack`/`layer`: descriptor and diff id.
    fn layer(&self, buildpack: &str, layer: &str) -> Option<(Value, String)> {
        let bps = self.metadata["buildpacks"].as_array()?;
        let bp = bps.iter().find(|b| b["key"] == buildpack)?;
        let sha = bp["layers"][layer]["sha"].as_str()?;
        self.layers.iter().find(|(_, diff)| diff == sha).cloned()
    }

    /// The layer metadata (`[metadata]`) the previous image recorded.
    pub fn layer_metadata(&self, buildpack: &str) -> Vec<(String, Value)> {
        let Some(bps) = self.metadata["buildpacks"].as_array() else {
            return Vec::new();
        };
        let Some(bp) = bps.iter().find(|b| b["key"] == buildpack) else {
            return Vec::new();
        };
        bp["layers"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}

/// Everything the exporter needs.
pub struct Export<'a> {
    pub client: &'a Client,
    /// `<project>/<image>`.
    pub repository: &'a str,
    /// Tags to move, in order, once everything is uploaded.
    pub tags: &'a [String],
    pub run_image: &'a RunImage,
    pub built: &'a [Built],
    /// Host paths of `/layers` and `/workspace`.
    pub layers_dir: &'a Path,
    pub workspace: &'a Path,
    pub launcher: &'a [u8],
    pub previous: Option<&'a Previous>,
    /// `io.buildpacks.project.metadata` (the source: git URL and commit).
    pub project: Value,
    /// Where layer tarballs are written.
    pub scratch: &'a Path,
    pub log: &'a (dyn Fn(&str) + Send + Sync),
    /// Layers restored from the cache, with what they were exported as.
    pub restored: Option<&'a Restored>,
}

/// Layers restored from the cache before the build: what each was
/// exported as when it was cached, and the moment the restore ended. A
/// layer whose every entry's ctime is older than that moment is byte for
/// byte what was restored (ctime cannot be set back, unlike mtime), so its
/// recorded digest stands and it is not archived again.
#[derive(Debug, Default, Clone)]
pub struct Restored {
    /// (buildpack id, layer name) → what it was exported as.
    pub exports: std::collections::BTreeMap<(String, String), CachedExport>,
    /// ctime of a file made after the restore (seconds, nanoseconds).
    pub marker: Option<(i64, i64)>,
}

/// What a launch layer was exported as (kept beside it in the cache).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CachedExport {
    pub descriptor: Value,
    pub diff_id: String,
}

impl Restored {
    /// The cached export of `dir` if nothing in it changed since the
    /// restore.
    pub fn unchanged(&self, buildpack: &str, name: &str, dir: &Path) -> Option<&CachedExport> {
        let marker = self.marker?;
        let export = self.exports.get(&(buildpack.to_owned(), name.to_owned()))?;
        older_than(dir, marker).ok()?.then_some(export)
    }
}

/// Whether `path` and everything under it have a ctime before `marker`.
fn older_than(path: &Path, marker: (i64, i64)) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    if (meta.ctime(), meta.ctime_nsec()) >= marker {
        return Ok(false);
    }
    if meta.is_dir() {
        for e in std::fs::read_dir(path)? {
            if !older_than(&e?.path(), marker)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// What was exported.
#[derive(Debug, Clone)]
pub struct Exported {
    pub digest: String,
    pub size: u64,
    /// Layers uploaded (bytes the registry did not have).
    pub uploaded: Vec<String>,
    pub uploaded_bytes: u64,
    /// Layers the registry already had or that were mounted.
    pub reused: Vec<String>,
    /// The launch layers, as exported: (buildpack id, layer name) → export.
    pub launch_layers: std::collections::BTreeMap<(String, String), CachedExport>,
}

struct OurLayer {
    descriptor: Value,
    diff_id: String,
    created_by: String,
    file: Option<PathBuf>,
    /// Known to be in the repository already (checked when chosen).
    present: bool,
}

impl Export<'_> {
    pub async fn run(&self) -> Result<Exported, ExportError> {
        let run_repo = &self.run_image.reference.repository;
        let mut uploaded = Vec::new();
        let mut uploaded_bytes = 0;
        let mut reused = Vec::new();

        // The run image's layers: mounted, never copied.
        for layer in self.run_image.layers() {
            let digest = layer["digest"]
                .as_str()
                .ok_or_else(|| ExportError::Invalid("a run image layer has no digest".into()))?;
            if self.client.has_blob(self.repository, digest).await? {
                reused.push(digest.to_owned());
                continue;
            }
            if !self.client.mount(self.repository, digest, run_repo).await? {
                return Err(ExportError::Invalid(format!(
                    "the registry could not mount run image layer {digest} from {run_repo} into {}",
                    self.repository
                )));
            }
            reused.push(digest.to_owned());
        }

        // Our layers.
        let mut ours: Vec<OurLayer> = Vec::new();
        let mut launch_layers = std::collections::BTreeMap::new();
        let mut lifecycle_bps = Vec::new();
        let mut n = 0;
        let mut write = |entries: Vec<Entry>,
                         created_by: String|
         -> Result<OurLayer, ExportError> {
            n += 1;
            let w: WrittenLayer =
                write_layer(&entries, &self.scratch.join(format!("layer-{n}.tar.gz")))?;
            Ok(OurLayer {
                descriptor: json!({"mediaType": LAYER_GZIP, "digest": w.digest, "size": w.size}),
                diff_id: w.diff_id,
                created_by,
                file: Some(w.path),
                present: false,
            })
        };
        for b in self.built {
            let id = b.buildpack.id();
            let mut layer_meta = serde_json::Map::new();
            for (name, toml) in &b.layers {
                let types = toml.types();
                let data = serde_json::to_value(&toml.metadata).unwrap_or(Value::Null);
                if !types.launch {
                    if types.cache || types.build {
                        layer_meta.insert(name.clone(), json!({"data": data, "launch": false, "build": types.build, "cache": types.cache}));
                    }
                    continue;
                }
                let dir = self.layers_dir.join(escape_id(id)).join(name);
                let as_restored = match self.restored.and_then(|r| r.unchanged(id, name, &dir)) {
                    Some(c) => {
                        let digest = c.descriptor["digest"].as_str().unwrap_or_default();
                        // Only while the registry still has it (else archived anew).
                        self.client
                            .has_blob(self.repository, digest)
                            .await?
                            .then(|| c.clone())
                    }
                    None => None,
                };
                let layer = if let Some(c) = as_restored {
                    (self.log)(&format!(
                        "layer {id}:{name} is as restored from the cache: not archived again"
                    ));
                    OurLayer {
                        descriptor: c.descriptor,
                        diff_id: c.diff_id,
                        created_by: format!("buildpacks:{id}:{name}"),
                        file: None,
                        present: true,
                    }
                } else if dir.is_dir() {
                    write(
                        vec![Entry::Tree {
                            source: dir,
                            target: format!("layers/{}/{name}", escape_id(id)).into(),
                        }],
                        format!("buildpacks:{id}:{name}"),
                    )?
                } else if let Some((descriptor, diff_id)) =
                    self.previous.and_then(|p| p.layer(id, name))
                {
                    (self.log)(&format!(
                        "reusing layer {id}:{name} from the previous image"
                    ));
                    OurLayer {
                        descriptor,
                        diff_id,
                        created_by: format!("buildpacks:{id}:{name}"),
                        file: None,
                        present: false,
                    }
                } else {
                    (self.log)(&format!(
                        "warning: {id} marked layer {name} for launch but left no directory and no previous image has it; it is left out"
                    ));
                    continue;
                };
                layer_meta.insert(
                    name.clone(),
                    json!({"sha": layer.diff_id, "data": data, "launch": true, "build": types.build, "cache": types.cache}),
                );
                launch_layers.insert(
                    (id.to_owned(), name.clone()),
                    CachedExport {
                        descriptor: layer.descriptor.clone(),
                        diff_id: layer.diff_id.clone(),
                    },
                );
                ours.push(layer);
            }
            lifecycle_bps
                .push(json!({"key": id, "version": b.buildpack.version(), "layers": layer_meta}));
        }
        let app = write(
            vec![Entry::Tree {
                source: self.workspace.to_owned(),
                target: "workspace".into(),
            }],
            "buildpacks:application".into(),
        )?;
        let app_sha = app.diff_id.clone();
        ours.push(app);

        let metadata = self.launch_metadata();
        let mut launcher_entries = vec![Entry::File {
            target: LAUNCHER_PATH.trim_start_matches('/').into(),
            bytes: self.launcher.to_vec(),
            mode: 0o755,
        }];
        for p in &metadata.processes {
            launcher_entries.push(Entry::Symlink {
                target: format!("{}/{}", PROCESS_DIR.trim_start_matches('/'), p.kind).into(),
                points_to: LAUNCHER_PATH.into(),
            });
        }
        let launcher = write(launcher_entries, "buildpacks:launcher".into())?;
        let launcher_sha = launcher.diff_id.clone();
        ours.push(launcher);
        let config_layer = write(
            vec![Entry::File {
                target: "layers/config/metadata.toml".into(),
                bytes: metadata.to_toml().into_bytes(),
                mode: 0o644,
            }],
            "buildpacks:config".into(),
        )?;
        let config_sha = config_layer.diff_id.clone();
        ours.push(config_layer);

        for layer in &ours {
            let digest = layer.descriptor["digest"]
                .as_str()
                .expect("a digest")
                .to_owned();
            if layer.present || self.client.has_blob(self.repository, &digest).await? {
                reused.push(digest);
                continue;
            }
            let Some(file) = &layer.file else {
                // A previous image's layer, or one as restored from the
                // cache: it is in this repository already.
                return Err(ExportError::Invalid(format!(
                    "layer {digest} of the previous image is gone from {}",
                    self.repository
                )));
            };
            self.client
                .push_blob_file(self.repository, &digest, file)
                .await?;
            uploaded_bytes += layer.descriptor["size"].as_u64().unwrap_or(0);
            uploaded.push(digest);
        }

        // The config.
        let run_diff_ids = self.run_image.diff_ids();
        let top_layer = run_diff_ids.last().cloned().unwrap_or_default();
        let mut config = self.run_image.config.clone();
        let mut diff_ids = run_diff_ids.clone();
        diff_ids.extend(ours.iter().map(|l| l.diff_id.clone()));
        config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
        let mut history = config["history"].as_array().cloned().unwrap_or_default();
        for l in &ours {
            history.push(json!({"created": CREATED, "created_by": l.created_by}));
        }
        config["history"] = Value::Array(history);
        config["created"] = json!(CREATED);
        let c = &mut config["config"];
        if !c.is_object() {
            *c = json!({});
        }
        let mut env: Vec<Value> = c["Env"].as_array().cloned().unwrap_or_default();
        env.retain(|e| {
            !e.as_str()
                .is_some_and(|s| s.starts_with("CNB_PLATFORM_API="))
        });
        env.push(json!(format!("CNB_PLATFORM_API={PLATFORM_API}")));
        c["Env"] = Value::Array(env);
        c["WorkingDir"] = json!(crate::WORKSPACE);
        c["Entrypoint"] = match metadata.default_process() {
            Some(p) => json!([format!("{PROCESS_DIR}/{}", p.kind)]),
            None => json!([LAUNCHER_PATH]),
        };
        c["Cmd"] = Value::Null;
        if c["User"].as_str().is_none_or(str::is_empty) {
            c["User"] = json!(format!("{}:{}", crate::CNB_UID, crate::CNB_GID));
        }
        let mut labels = c["Labels"].as_object().cloned().unwrap_or_default();
        for b in self.built {
            for l in &b.launch.labels {
                labels.insert(l.key.clone(), json!(l.value));
            }
        }
        let lifecycle = json!({
            "app": [{"sha": app_sha}],
            "config": {"sha": config_sha},
            "launcher": {"sha": launcher_sha},
            "buildpacks": lifecycle_bps,
            "runImage": {
                "topLayer": top_layer,
                "reference": self.run_image.manifest_digest,
                "image": self.run_image.reference.to_string(),
            },
        });
        labels.insert(LIFECYCLE_METADATA.into(), json!(lifecycle.to_string()));
        let build = json!({
            "processes": metadata.processes.iter().map(|p| json!({
                "type": p.kind, "command": p.command, "args": p.args, "direct": p.direct,
                "buildpackID": p.buildpack_id, "default": p.default,
            })).collect::<Vec<_>>(),
            "buildpacks": metadata.buildpacks.iter().map(|b| json!({"id": b.id, "version": b.version})).collect::<Vec<_>>(),
            "launcher": {"source": {"git": {"repository": "slipway", "commit": env!("CARGO_PKG_VERSION")}}},
        });
        labels.insert(BUILD_METADATA.into(), json!(build.to_string()));
        labels.insert(PROJECT_METADATA.into(), json!(self.project.to_string()));
        c["Labels"] = Value::Object(labels);
        let config_bytes = Bytes::from(serde_json::to_vec(&config).expect("config serialises"));
        let config_digest = self
            .client
            .push_blob_bytes(self.repository, config_bytes.clone())
            .await?;

        // The manifest, then the tags.
        let mut layer_descriptors = self.run_image.layers();
        layer_descriptors.extend(ours.iter().map(|l| l.descriptor.clone()));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
            "layers": layer_descriptors,
        });
        let body = Bytes::from(serde_json::to_vec(&manifest).expect("manifest serialises"));
        let digest = crate::oci::sha256_digest(&body);
        self.client
            .put_manifest(self.repository, &digest, OCI_MANIFEST, body.clone())
            .await?;
        for tag in self.tags {
            self.client
                .put_manifest(self.repository, tag, OCI_MANIFEST, body.clone())
                .await?;
        }
        (self.log)(&format!(
            "exported {}@{digest}: {} layers uploaded ({} bytes), {} already there",
            self.repository,
            uploaded.len(),
            uploaded_bytes,
            reused.len()
        ));
        Ok(Exported {
            digest,
            size: body.len() as u64,
            uploaded,
            uploaded_bytes,
            reused,
            launch_layers,
        })
    }

    /// Processes (the last definition of a type wins; the last default is
    /// the default) and the buildpacks, for the launcher.
    pub fn launch_metadata(&self) -> launch::Metadata {
        let mut processes: Vec<launch::Process> = Vec::new();
        let mut default: Option<String> = None;
        for b in self.built {
            let old_api = b.buildpack.api() < (0, 9);
            for p in &b.launch.processes {
                let (command, direct) = match &p.command {
                    crate::buildpack::Command::Exec(c) => (c.clone(), true),
                    crate::buildpack::Command::Shell(s)
                        if old_api && !p.direct.unwrap_or(false) =>
                    {
                        (vec![s.clone()], false)
                    }
                    crate::buildpack::Command::Shell(s) => (vec![s.clone()], true),
                };
                processes.retain(|q| q.kind != p.kind);
                if p.default {
                    default = Some(p.kind.clone());
                } else if default.as_deref() == Some(p.kind.as_str()) {
                    default = None;
                }
                processes.push(launch::Process {
                    kind: p.kind.clone(),
                    command,
                    args: p.args.clone(),
                    direct,
                    default: false,
                    working_dir: p.working_dir.clone(),
                    buildpack_id: Some(b.buildpack.id().to_owned()),
                    exec_env: Vec::new(),
                });
            }
        }
        for p in &mut processes {
            p.default = default.as_deref() == Some(p.kind.as_str());
        }
        launch::Metadata {
            buildpacks: self
                .built
                .iter()
                .map(|b| launch::Buildpack {
                    id: b.buildpack.id().to_owned(),
                    version: b.buildpack.version().to_owned(),
                    api: b.buildpack.descriptor.api.clone(),
                })
                .collect(),
            processes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A layer `l` under a temp dir, restored, then the marker.
    fn restored_layer() -> (tempfile::TempDir, PathBuf, Restored) {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("l");
        std::fs::create_dir_all(layer.join("bin")).unwrap();
        std::fs::write(layer.join("bin/tool"), "v1").unwrap();
        std::fs::write(layer.join("keep"), "k").unwrap();
        std::os::unix::fs::symlink("bin/tool", layer.join("link")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let marker = dir.path().join("marker");
        std::fs::write(&marker, "").unwrap();
        let m = std::fs::metadata(&marker).unwrap();
        let mut r = Restored {
            marker: Some((m.ctime(), m.ctime_nsec())),
            ..Default::default()
        };
        r.exports.insert(
            ("bp".into(), "l".into()),
            CachedExport {
                descriptor: json!({"digest": "sha256:00"}),
                diff_id: "sha256:11".into(),
            },
        );
        (dir, layer, r)
    }

    #[test]
    fn a_restored_layer_is_unchanged_until_anything_in_it_changes() {
        let (_d, layer, r) = restored_layer();
        assert!(r.unchanged("bp", "l", &layer).is_some());
        // Another layer or buildpack has no recorded export.
        assert!(r.unchanged("bp", "other", &layer).is_none());
        assert!(r.unchanged("bp2", "l", &layer).is_none());
        type Change = fn(&Path);
        let changes: [(&str, Change); 6] = [
            ("rewrite a file", |l| {
                std::fs::write(l.join("bin/tool"), "v2").unwrap()
            }),
            ("rewrite with the same bytes", |l| {
                std::fs::write(l.join("keep"), "k").unwrap()
            }),
            ("chmod", |l| {
                std::fs::set_permissions(l.join("keep"), std::fs::Permissions::from_mode(0o600))
                    .unwrap()
            }),
            ("add a file", |l| {
                std::fs::write(l.join("bin/new"), "").unwrap()
            }),
            ("remove a file", |l| {
                std::fs::remove_file(l.join("keep")).unwrap()
            }),
            ("replace a symlink", |l| {
                std::fs::remove_file(l.join("link")).unwrap();
                std::os::unix::fs::symlink("keep", l.join("link")).unwrap();
            }),
        ];
        for (what, change) in changes {
            let (_d, layer, r) = restored_layer();
            change(&layer);
            assert!(r.unchanged("bp", "l", &layer).is_none(), "{what}");
        }
        // An mtime set back does not hide a change (ctime moves anyway).
        let (_d, layer, r) = restored_layer();
        let old = std::fs::metadata(layer.join("keep"))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::write(layer.join("keep"), "x").unwrap();
        std::fs::File::options()
            .write(true)
            .open(layer.join("keep"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(r.unchanged("bp", "l", &layer).is_none());
        // No marker (nothing restored): never unchanged.
        let (_d, layer, mut r) = restored_layer();
        r.marker = None;
        assert!(r.unchanged("bp", "l", &layer).is_none());
    }
}
