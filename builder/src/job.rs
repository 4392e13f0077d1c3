//! One build, from a git commit to a tagged app image: fetch and unpack the
//! builder image (cached by digest), check out the source, restore the
//! cache, detect, build, export, save the cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use slipway_launcher::Env;
use slipway_launcher::metadata::escape_id;

use crate::buildpack::{Catalog, LayerToml, Order, RunToml, read_toml};
use crate::export::{CachedExport, Export, ExportError, Exported, Previous, Restored, RunImage};
use crate::layers::apply_layer;
use crate::lifecycle::{Lifecycle, LifecycleError, Target};
use crate::oci::{Client, ImageRef, OciError};
use crate::sandbox::{Sandbox, prepare_root};

/// A build to run. `commit` was resolved from `git_ref` when the build was
/// asked for.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub build_id: String,
    pub project: String,
    pub image_name: String,
    pub source_url: String,
    pub git_ref: String,
    pub commit: String,
    /// `platform/builder:bookworm`: a repository in the registry.
    pub builder: String,
    /// Build-time variables for the buildpacks (`<platform>/env/`).
    pub env: BTreeMap<String, String>,
}

impl BuildRequest {
    pub fn repository(&self) -> String {
        format!("{}/{}", self.project, self.image_name)
    }
}

/// Where builds keep things between builds.
#[derive(Clone)]
pub struct Context {
    /// The registry, as the builder identity.
    pub client: Arc<Client>,
    /// Unpacked builder images (by digest) and layer caches (by project
    /// and image).
    pub cache_dir: PathBuf,
    /// Per-build scratch directories.
    pub work_dir: PathBuf,
    /// The launcher binary put in every app image.
    pub launcher: &'static [u8],
}

/// What a build reports as it goes.
pub trait BuildLog: Send + Sync {
    /// A phase starts: `fetch`, `detect`, `restore`, `build`, `export`.
    fn phase(&self, name: &str);
    fn line(&self, text: &str);
    /// Called when the export starts, before its first write (the
    /// registry releases the build's quota reservation here).
    fn before_export(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Lifecycle(#[from] LifecycleError),
    #[error("{0}")]
    Export(#[from] ExportError),
    #[error("{0}")]
    Registry(#[from] OciError),
    #[error("{0}")]
    Source(String),
    #[error("{0}")]
    Builder(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub exported: Exported,
    /// The buildpacks that built it.
    pub buildpacks: Vec<String>,
}

/// Resolves `git_ref` (a branch, tag or commit) of `url` to a commit.
pub async fn resolve_ref(url: &str, git_ref: &str) -> Result<String, BuildError> {
    if git_ref.len() == 40 && git_ref.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(git_ref.to_ascii_lowercase());
    }
    let out = tokio::process::Command::new("git")
        .args(["ls-remote", "--", url, git_ref])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .map_err(|e| BuildError::Source(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(BuildError::Source(format!(
            "the repository {url} cannot be read: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("git ls-remote failed")
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // Exact names first: refs/heads/<ref>, refs/tags/<ref>, then <ref>.
    let candidates = [
        format!("refs/heads/{git_ref}"),
        format!("refs/tags/{git_ref}^{{}}"),
        format!("refs/tags/{git_ref}"),
        git_ref.to_owned(),
    ];
    for want in &candidates {
        if let Some(line) = text
            .lines()
            .find(|l| l.split('\t').nth(1) == Some(want.as_str()))
        {
            return Ok(line.split('\t').next().unwrap_or_default().to_owned());
        }
    }
    Err(BuildError::Source(format!(
        "the repository {url} has no branch or tag {git_ref}"
    )))
}

async fn git(args: &[&str], dir: &Path) -> Result<(), BuildError> {
    let out = tokio::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .map_err(|e| BuildError::Source(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(BuildError::Source(format!(
            "git {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The builder image's root file system, unpacked once per digest.
async fn builder_root(
    ctx: &Context,
    image: &ImageRef,
    log: &dyn BuildLog,
) -> Result<(PathBuf, Value), BuildError> {
    let m = match ctx
        .client
        .manifest(&image.repository, &image.reference)
        .await
    {
        Ok(m) => m,
        Err(OciError::Refused { status: 404, .. }) => {
            return Err(BuildError::Builder(format!(
                "the builder image {image} is not in the registry (push it, or approve another builder)"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let manifest: Value = serde_json::from_slice(&m.body)
        .map_err(|e| BuildError::Builder(format!("the builder's manifest is not JSON: {e}")))?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| BuildError::Builder("the builder image has no config".into()))?;
    let config: Value = serde_json::from_slice(
        &ctx.client
            .blob_bytes(&image.repository, config_digest)
            .await?,
    )
    .map_err(|e| BuildError::Builder(format!("the builder's config is not JSON: {e}")))?;
    let root = ctx
        .cache_dir
        .join("builders")
        .join(m.digest.replace(':', "-"))
        .join("rootfs");
    if root.is_dir() {
        log.line(&format!(
            "builder {image} ({}) is unpacked already",
            m.digest
        ));
        return Ok((root, config));
    }
    log.line(&format!("unpacking builder {image} ({})", m.digest));
    let staging = ctx
        .cache_dir
        .join("builders")
        .join(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let staging_root = staging.join("rootfs");
    std::fs::create_dir_all(&staging_root)?;
    for layer in manifest["layers"].as_array().cloned().unwrap_or_default() {
        let digest = layer["digest"].as_str().unwrap_or_default().to_owned();
        let file = staging.join("layer");
        ctx.client
            .blob_to_file(&image.repository, &digest, &file)
            .await?;
        let root = staging_root.clone();
        tokio::task::spawn_blocking(move || apply_layer(&file, &root))
            .await
            .map_err(|e| BuildError::Builder(e.to_string()))??;
    }
    prepare_root(&staging_root)?;
    let _ = std::fs::remove_file(staging.join("layer"));
    let final_dir = root.parent().expect("a parent").to_owned();
    match std::fs::rename(&staging, &final_dir) {
        Ok(()) => {}
        // Another build unpacked the same builder meanwhile.
        Err(_) if root.is_dir() => {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(e) => return Err(e.into()),
    }
    Ok((root, config))
}

/// Runs a build to its end.
pub async fn run(
    ctx: &Context,
    req: &BuildRequest,
    log: &dyn BuildLog,
) -> Result<Outcome, BuildError> {
    let work = ctx.work_dir.join(&req.build_id);
    let _ = std::fs::remove_dir_all(&work);
    let result = run_in(ctx, req, log, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn run_in(
    ctx: &Context,
    req: &BuildRequest,
    log: &dyn BuildLog,
    work: &Path,
) -> Result<Outcome, BuildError> {
    let line = |s: &str| log.line(s);
    log.phase("fetch");
    let builder = ImageRef::parse(&req.builder)?;
    let (root, builder_config) = builder_root(ctx, &builder, log).await?;
    let order: Order = read_toml(&root.join("cnb/order.toml")).map_err(BuildError::Builder)?;
    if order.order.is_empty() {
        return Err(BuildError::Builder(format!(
            "the builder {} has no /cnb/order.toml",
            req.builder
        )));
    }
    let run_toml: RunToml = read_toml(&root.join("cnb/run.toml")).map_err(BuildError::Builder)?;
    let run_ref = run_toml.images.first().ok_or_else(|| {
        BuildError::Builder(format!(
            "the builder {} names no run image in /cnb/run.toml",
            req.builder
        ))
    })?;
    let mut run_ref = ImageRef::parse(&run_ref.image)?;
    run_ref.registry.clear();
    let run_image = RunImage::fetch(&ctx.client, &run_ref).await?;
    let catalog = Catalog::load(&root).map_err(BuildError::Builder)?;

    // The source, checked out at the recorded commit, without its history.
    let workspace = work.join("workspace");
    for d in ["workspace", "layers", "platform/env", "tmp", "scratch"] {
        std::fs::create_dir_all(work.join(d))?;
    }
    line(&format!(
        "checking out {} at {}",
        req.source_url, req.commit
    ));
    git(&["init", "-q"], &workspace).await?;
    // By commit (servers that allow it), else the ref's history.
    if git(
        &[
            "fetch",
            "-q",
            "--depth",
            "1",
            "--",
            &req.source_url,
            &req.commit,
        ],
        &workspace,
    )
    .await
    .is_ok()
    {
        git(&["checkout", "-q", "--detach", "FETCH_HEAD"], &workspace).await?;
    } else {
        git(
            &["fetch", "-q", "--", &req.source_url, &req.git_ref],
            &workspace,
        )
        .await
        .map_err(|e| {
            BuildError::Source(format!(
                "cannot fetch {} of {}: {e}",
                req.git_ref, req.source_url
            ))
        })?;
        git(&["checkout", "-q", "--detach", &req.commit], &workspace)
            .await
            .map_err(|_| {
                BuildError::Source(format!(
                    "commit {} is not on {} of {}",
                    req.commit, req.git_ref, req.source_url
                ))
            })?;
    }
    std::fs::remove_dir_all(workspace.join(".git"))?;
    for (k, v) in &req.env {
        std::fs::write(work.join("platform/env").join(k), v)?;
    }

    let sandbox = Sandbox {
        root: root.clone(),
        workspace: workspace.clone(),
        layers: work.join("layers"),
        platform: work.join("platform"),
        tmp: work.join("tmp"),
    };
    let mut base_env: Env = builder_config["config"]["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    e.as_str()?
                        .split_once('=')
                        .map(|(k, v)| (k.into(), v.into()))
                })
                .collect()
        })
        .unwrap_or_default();
    base_env
        .entry("PATH".into())
        .or_insert_with(|| "/usr/local/bin:/usr/bin:/bin".into());
    let target = Target {
        os: run_image.config["os"]
            .as_str()
            .unwrap_or("linux")
            .to_owned(),
        arch: run_image.config["architecture"]
            .as_str()
            .unwrap_or("amd64")
            .to_owned(),
        variant: run_image.config["variant"].as_str().map(str::to_owned),
        distro_name: run_image
            .label("io.buildpacks.base.distro.name")
            .map(str::to_owned),
        distro_version: run_image
            .label("io.buildpacks.base.distro.version")
            .map(str::to_owned),
    };
    let log_fn = |s: &str| log.line(s);
    let lifecycle = Lifecycle {
        sandbox: &sandbox,
        catalog: &catalog,
        base_env,
        user_env: req.env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
        target,
        log: &log_fn,
    };

    log.phase("detect");
    let detected = lifecycle.detect(&order).await?;

    log.phase("restore");
    let repository = req.repository();
    let previous = Previous::fetch(&ctx.client, &repository, "latest").await?;
    let cache = ctx
        .cache_dir
        .join("layers")
        .join(escape_id(&req.project))
        .join(escape_id(&req.image_name));
    let mut restored = restore(&cache, &sandbox.layers, previous.as_ref(), &detected, log)?;
    if !restored.exports.is_empty() {
        // A marker made after every restored file, a tick later: ctimes
        // older than its own are the restore's.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let marker = work.join("restored");
        std::fs::write(&marker, b"")?;
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&marker)?;
        restored.marker = Some((m.ctime(), m.ctime_nsec()));
    }

    log.phase("build");
    let built = lifecycle.build(&detected).await?;

    log.phase("export");
    log.before_export().await;
    let tags = vec![req.build_id.clone(), "latest".to_owned()];
    let project = json!({"source": {"type": "git", "version": {"commit": req.commit}, "metadata": {"repository": req.source_url, "refs": [req.git_ref]}}});
    let exported = Export {
        client: &ctx.client,
        repository: &repository,
        tags: &tags,
        run_image: &run_image,
        built: &built,
        layers_dir: &sandbox.layers,
        workspace: &workspace,
        launcher: ctx.launcher,
        previous: previous.as_ref(),
        project,
        scratch: &work.join("scratch"),
        log: &log_fn,
        restored: Some(&restored),
    }
    .run()
    .await?;

    save_cache(&cache, &sandbox.layers, &built, &exported)?;
    Ok(Outcome {
        exported,
        buildpacks: built
            .iter()
            .map(|b| format!("{}@{}", b.buildpack.id(), b.buildpack.version()))
            .collect(),
    })
}

/// Before the build: cached layers (contents and metadata, without their
/// types) and the previous image's launch-only layers (metadata only), as
/// the buildpack spec's layer types table says.
fn restore(
    cache: &Path,
    layers: &Path,
    previous: Option<&Previous>,
    detected: &crate::lifecycle::Detected,
    log: &dyn BuildLog,
) -> Result<Restored, BuildError> {
    let mut restored = Restored::default();
    for sel in &detected.group {
        let bp_dir = escape_id(sel.buildpack.id());
        let target = layers.join(&bp_dir);
        std::fs::create_dir_all(&target)?;
        let cached = cache.join(&bp_dir);
        if let Ok(entries) = std::fs::read_dir(&cached) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(layer) = name.strip_suffix(".toml") else {
                    continue;
                };
                let toml: LayerToml = read_toml(&e.path()).map_err(BuildError::Builder)?;
                write_untyped(&target.join(&name), &toml)?;
                if cached.join(layer).is_dir() {
                    copy_tree(&cached.join(layer), &target.join(layer))?;
                    if let Ok(text) = std::fs::read(cached.join(format!("{layer}.export.json")))
                        && let Ok(export) = serde_json::from_slice::<CachedExport>(&text)
                    {
                        restored
                            .exports
                            .insert((sel.buildpack.id().to_owned(), layer.to_owned()), export);
                    }
                }
                log.line(&format!(
                    "restored cached layer {}:{layer}",
                    sel.buildpack.id()
                ));
            }
        }
        if let Some(prev) = previous {
            for (layer, meta) in prev.layer_metadata(sel.buildpack.id()) {
                let file = target.join(format!("{layer}.toml"));
                if file.exists()
                    || meta["launch"].as_bool() != Some(true)
                    || meta["cache"].as_bool() == Some(true)
                {
                    continue;
                }
                let data: toml::Table =
                    serde_json::from_value(meta["data"].clone()).unwrap_or_default();
                write_untyped(
                    &file,
                    &LayerToml {
                        metadata: data,
                        ..Default::default()
                    },
                )?;
            }
        }
    }
    Ok(restored)
}

fn write_untyped(path: &Path, toml: &LayerToml) -> Result<(), BuildError> {
    let mut t = toml.clone();
    t.types = Default::default();
    std::fs::write(
        path,
        toml::to_string(&t).map_err(|e| BuildError::Builder(e.to_string()))?,
    )?;
    Ok(())
}

/// After a successful build: the `cache = true` layers replace the cache.
fn save_cache(
    cache: &Path,
    layers: &Path,
    built: &[crate::lifecycle::Built],
    exported: &Exported,
) -> Result<(), BuildError> {
    let staging = cache.with_extension(format!("new-{}", uuid::Uuid::new_v4().simple()));
    for b in built {
        let bp_dir = escape_id(b.buildpack.id());
        for (name, toml) in &b.layers {
            if !toml.types().cache {
                continue;
            }
            let dir = staging.join(&bp_dir);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(
                dir.join(format!("{name}.toml")),
                toml::to_string(toml).map_err(|e| BuildError::Builder(e.to_string()))?,
            )?;
            let src = layers.join(&bp_dir).join(name);
            if src.is_dir() {
                copy_tree(&src, &dir.join(name))?;
                // What it was exported as, so that an unchanged restore
                // is not archived again.
                if let Some(e) = exported
                    .launch_layers
                    .get(&(b.buildpack.id().to_owned(), name.clone()))
                {
                    std::fs::write(
                        dir.join(format!("{name}.export.json")),
                        serde_json::to_vec(e).expect("serializable"),
                    )?;
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(cache);
    if staging.exists() {
        if let Some(parent) = cache.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&staging, cache)?;
    }
    Ok(())
}

/// Copies a tree: directories, files (with their modes) and symlinks.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let src = e.path();
        let dst = to.join(e.file_name());
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.file_type().is_symlink() {
            let _ = std::fs::remove_file(&dst);
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if meta.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}
