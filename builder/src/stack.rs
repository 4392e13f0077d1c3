//! The platform's own stacks and builders, made from Debian's packages and
//! pushed into the registry like any image.
//!
//! A stack (`builder/stacks/<name>/`, embedded in the binary) names a root
//! file system recipe (`stack.toml`), the packages of its build and run
//! images (`packages.build`, `packages.run`) and its builder's order
//! (`order.toml`). Making it:
//!
//! 1. the root file systems, as tar files in a cache directory keyed by the
//!    recipe (so a changed package list makes new ones): `mmdebstrap`
//!    (variant minbase, user `cnb` 1000:1000 added, docs and man pages
//!    left out), or, for `busybox`, this machine's static busybox and bash;
//! 2. `platform/build:<name>` and `platform/run:<name>`: one gzipped layer
//!    each, configs with the spec's `io.buildpacks.base.*` labels,
//!    `CNB_USER_ID`/`CNB_GROUP_ID` and user 1000:1000;
//! 3. `platform/builder:<name>`: the build image's layers (mounted, not
//!    copied) plus one root-owned layer with `/cnb/buildpacks/<id>/<version>/`
//!    (the platform's own buildpacks, `builder/buildpacks/`, embedded),
//!    `/cnb/order.toml`, `/cnb/run.toml` and `/cnb/stack.toml`, labelled
//!    `io.buildpacks.builder.metadata`.
//!
//! Everything goes through the OCI API ([`Client`]), so the registry's
//! permission checks apply (pushing into `platform` takes the admin).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use flate2::Compression;
use include_dir::{Dir, include_dir};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::layers::{Entry, Hashing, LAYER_MTIME, WrittenLayer, write_layer_owned};
use crate::oci::{Client, ImageRef, OciError};
use crate::{CNB_GID, CNB_UID};

static BUILDPACKS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/buildpacks");
static STACKS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/stacks");

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Where builds find the run image and mirrors (Platform API 0.12).
const RUN_TOML: &str = "cnb/run.toml";
/// The project stacks and builders live in.
pub const PLATFORM_PROJECT: &str = "platform";

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// Bad input: an unknown stack, a recipe that does not parse.
    #[error("{0}")]
    Invalid(String),
    /// A tool (mmdebstrap, busybox) missing or failing.
    #[error("{0}")]
    Tool(String),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Oci(#[from] OciError),
}

type Result<T, E = StackError> = std::result::Result<T, E>;

/// `stack.toml`.
#[derive(Debug, Clone, Deserialize)]
pub struct Recipe {
    pub description: String,
    pub distro: Distro,
    pub rootfs: RootfsRecipe,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Distro {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RootfsRecipe {
    /// Debian packages of `suite`, with mmdebstrap.
    Mmdebstrap { suite: String },
    /// This machine's static busybox and bash.
    Busybox,
}

/// A stack this binary can make.
#[derive(Debug, Clone)]
pub struct Stack {
    pub name: String,
    pub recipe: Recipe,
    pub build_packages: Vec<String>,
    pub run_packages: Vec<String>,
    /// The builder's `/cnb/order.toml`.
    pub order: String,
}

/// The stacks embedded in this binary, by name.
pub fn names() -> Vec<String> {
    let mut v: Vec<String> = STACKS
        .dirs()
        .filter(|d| d.get_file(d.path().join("stack.toml")).is_some())
        .map(|d| d.path().display().to_string())
        .collect();
    v.sort();
    v
}

fn packages(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Stack {
    /// The embedded stack `name`.
    pub fn load(name: &str) -> Result<Stack> {
        let unknown = || {
            StackError::Invalid(format!(
                "there is no stack {name:?}; this Slipway knows: {}",
                names().join(", ")
            ))
        };
        if name.is_empty() || name.contains(['/', '.']) {
            return Err(unknown());
        }
        let dir = STACKS.get_dir(name).ok_or_else(unknown)?;
        let text = |file: &str| -> Option<&'static str> {
            dir.get_file(dir.path().join(file))
                .and_then(|f| f.contents_utf8())
        };
        let recipe: Recipe = toml::from_str(text("stack.toml").ok_or_else(unknown)?)
            .map_err(|e| StackError::Invalid(format!("stack {name}: stack.toml: {e}")))?;
        let order = text("order.toml")
            .ok_or_else(|| StackError::Invalid(format!("stack {name} has no order.toml")))?
            .to_owned();
        Ok(Stack {
            name: name.to_owned(),
            recipe,
            build_packages: text("packages.build").map(packages).unwrap_or_default(),
            run_packages: text("packages.run").map(packages).unwrap_or_default(),
            order,
        })
    }

    /// `platform/build:<name>`, `platform/run:<name>`, `platform/builder:<name>`.
    pub fn image(&self, what: &str) -> String {
        format!("{PLATFORM_PROJECT}/{what}:{}", self.name)
    }

    /// The buildpacks the order names, from the embedded ones.
    pub fn buildpacks(&self) -> Result<Vec<BuildpackFiles>> {
        #[derive(Deserialize)]
        struct Order {
            order: Vec<Group>,
        }
        #[derive(Deserialize)]
        struct Group {
            group: Vec<Member>,
        }
        #[derive(Deserialize)]
        struct Member {
            id: String,
            version: Option<String>,
        }
        let order: Order = toml::from_str(&self.order)
            .map_err(|e| StackError::Invalid(format!("stack {}: order.toml: {e}", self.name)))?;
        let all = embedded_buildpacks()?;
        let mut out: Vec<BuildpackFiles> = Vec::new();
        for m in order.order.iter().flat_map(|g| &g.group) {
            if out.iter().any(|b| b.id == m.id) {
                continue;
            }
            let bp = all
                .iter()
                .find(|b| b.id == m.id && m.version.as_ref().is_none_or(|v| *v == b.version))
                .ok_or_else(|| {
                    StackError::Invalid(format!(
                        "stack {}: order.toml names {}{}, which is not among the buildpacks",
                        self.name,
                        m.id,
                        m.version
                            .as_ref()
                            .map(|v| format!("@{v}"))
                            .unwrap_or_default()
                    ))
                })?;
            out.push(bp.clone());
        }
        Ok(out)
    }

    /// The cache key of a root file system: what makes it.
    fn rootfs_key(&self, packages: &[String]) -> String {
        let mut h = Sha256::new();
        h.update(format!("{:?}\n{:?}\n", self.recipe.rootfs, packages));
        hex::encode(h.finalize())[..16].to_owned()
    }
}

/// A buildpack's files, to put in a builder.
#[derive(Debug, Clone)]
pub struct BuildpackFiles {
    pub id: String,
    pub version: String,
    /// (path inside the buildpack, bytes, mode).
    pub files: Vec<(PathBuf, Vec<u8>, u32)>,
}

#[derive(Deserialize)]
struct Descriptor {
    buildpack: DescriptorInfo,
}

#[derive(Deserialize)]
struct DescriptorInfo {
    id: String,
    version: String,
}

impl BuildpackFiles {
    /// A buildpack directory on disk (its `buildpack.toml`, `bin/` and
    /// whatever else it holds; modes kept).
    pub fn from_dir(dir: &Path) -> Result<BuildpackFiles> {
        use std::os::unix::fs::PermissionsExt;
        let text = fs::read_to_string(dir.join("buildpack.toml")).map_err(|e| {
            StackError::Invalid(format!("{}: no buildpack.toml: {e}", dir.display()))
        })?;
        let d: Descriptor = toml::from_str(&text)
            .map_err(|e| StackError::Invalid(format!("{}/buildpack.toml: {e}", dir.display())))?;
        let mut files = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d)? {
                let e = e?;
                let meta = e.metadata()?;
                if meta.is_dir() {
                    stack.push(e.path());
                } else if meta.is_file() {
                    let rel = e.path().strip_prefix(dir).expect("under dir").to_owned();
                    files.push((rel, fs::read(e.path())?, meta.permissions().mode() & 0o777));
                }
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(BuildpackFiles {
            id: d.buildpack.id,
            version: d.buildpack.version,
            files,
        })
    }
}

/// Every buildpack under `builder/buildpacks/`.
pub fn embedded_buildpacks() -> Result<Vec<BuildpackFiles>> {
    let mut out = Vec::new();
    for dir in BUILDPACKS.dirs() {
        let Some(toml_file) = dir.get_file(dir.path().join("buildpack.toml")) else {
            continue;
        };
        let d: Descriptor = toml::from_str(toml_file.contents_utf8().unwrap_or(""))
            .map_err(|e| StackError::Invalid(format!("{}: {e}", toml_file.path().display())))?;
        let mut files = Vec::new();
        collect_files(dir, dir.path(), &mut files);
        files.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(BuildpackFiles {
            id: d.buildpack.id,
            version: d.buildpack.version,
            files,
        });
    }
    Ok(out)
}

fn collect_files(dir: &'static Dir<'static>, base: &Path, out: &mut Vec<(PathBuf, Vec<u8>, u32)>) {
    for f in dir.files() {
        let rel = f.path().strip_prefix(base).unwrap_or(f.path()).to_owned();
        // include_dir keeps no modes: programs are what is under bin/.
        let mode = if rel.starts_with("bin") { 0o755 } else { 0o644 };
        out.push((rel, f.contents().to_vec(), mode));
    }
    for d in dir.dirs() {
        collect_files(d, base, out);
    }
}

/// What [`make`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Made {
    pub build: Pushed,
    pub run: Pushed,
    pub builder: Pushed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pushed {
    pub image: String,
    pub digest: String,
    /// Compressed bytes of all its layers.
    pub size: u64,
}

/// How [`make`] runs.
#[derive(Clone)]
pub struct Options {
    /// Where root file systems and their compressed layers are kept.
    pub cache_dir: PathBuf,
    /// The Debian mirror (mmdebstrap's default when `None`).
    pub mirror: Option<String>,
    /// Make the root file systems again even if cached.
    pub refresh: bool,
    /// Never download: a Debian root file system must be cached already
    /// (tests, which reach only loopback).
    pub offline: bool,
    /// Progress lines.
    pub log: std::sync::Arc<dyn Fn(&str) + Send + Sync>,
}

/// The root file systems of `stack` (build, run), made if not cached.
pub fn rootfs(stack: &Stack, opts: &Options) -> Result<(PathBuf, PathBuf)> {
    fs::create_dir_all(&opts.cache_dir)?;
    match &stack.recipe.rootfs {
        RootfsRecipe::Busybox => {
            let tar = opts
                .cache_dir
                .join(format!("{}-{}.tar", stack.name, stack.rootfs_key(&[])));
            if opts.refresh || !tar.is_file() {
                (opts.log)(&format!(
                    "making the busybox root file system {}",
                    tar.display()
                ));
                busybox_rootfs(&tar)?;
            }
            Ok((tar.clone(), tar))
        }
        RootfsRecipe::Mmdebstrap { suite } => {
            let mut made = Vec::new();
            for (what, pkgs) in [
                ("build", &stack.build_packages),
                ("run", &stack.run_packages),
            ] {
                let tar = opts.cache_dir.join(format!(
                    "{}-{what}-{}.tar",
                    stack.name,
                    stack.rootfs_key(pkgs)
                ));
                if opts.offline && !tar.is_file() {
                    return Err(StackError::Tool(format!(
                        "the {what} root file system of stack {} is not made yet ({}); make it with \
                         `slipway admin stack build {} --rootfs-only --cache-dir {}` \
                         (conformance/test.sh does)",
                        stack.name,
                        tar.display(),
                        stack.name,
                        opts.cache_dir.display()
                    )));
                }
                if opts.refresh || !tar.is_file() {
                    (opts.log)(&format!(
                        "making the {what} root file system with mmdebstrap ({suite}: {})",
                        pkgs.join(", ")
                    ));
                    mmdebstrap(suite, pkgs, opts.mirror.as_deref(), &tar)?;
                }
                made.push(tar);
            }
            let run = made.pop().expect("two");
            Ok((made.pop().expect("two"), run))
        }
    }
}

/// Runs mmdebstrap into `out` (written under a temporary name, renamed
/// when whole).
fn mmdebstrap(suite: &str, packages: &[String], mirror: Option<&str>, out: &Path) -> Result<()> {
    // mmdebstrap picks its output format by the name's extension; the name
    // is this run's own (two builds of one stack at once write apart).
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let tmp = out.with_extension(format!("{}.partial.tar", &unique[..12]));
    let _ = fs::remove_file(&tmp);
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg("--quiet")
        .arg("--variant=minbase")
        .arg(format!("--include={}", packages.join(",")))
        // Smaller images: no documentation but the licences, no man pages
        // or translations.
        .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
        .arg("--dpkgopt=path-include=/usr/share/doc/*/copyright")
        .arg("--dpkgopt=path-exclude=/usr/share/man/*")
        .arg("--dpkgopt=path-exclude=/usr/share/locale/*")
        .arg("--dpkgopt=path-exclude=/usr/share/info/*")
        // Packages whose scripts make alternatives for man pages (the
        // JDK's) need the directory the path-exclude above leaves out.
        .arg("--setup-hook=mkdir -p \"$1/usr/share/man/man1\"")
        // The user buildpacks and apps run as.
        .arg(format!(
            "--customize-hook=chroot \"$1\" groupadd --gid {CNB_GID} cnb"
        ))
        .arg(format!(
            "--customize-hook=chroot \"$1\" useradd --uid {CNB_UID} --gid {CNB_GID} --create-home --shell /bin/bash cnb"
        ))
        .arg(suite)
        .arg(&tmp);
    if let Some(m) = mirror {
        cmd.arg(m);
    }
    // Reproducible file times.
    cmd.env("SOURCE_DATE_EPOCH", LAYER_MTIME.to_string());
    let output = cmd.output().map_err(|e| {
        StackError::Tool(format!(
            "cannot run mmdebstrap ({e}); install the Debian package mmdebstrap"
        ))
    })?;
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(StackError::Tool(format!(
            "mmdebstrap {suite} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    fs::rename(&tmp, out)?;
    Ok(())
}

/// Finds a command on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// Whether `bytes` are an ELF executable without a program interpreter
/// (statically linked).
fn is_static_elf(bytes: &[u8]) -> bool {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        // PT_INTERP = 3.
        o + 4 <= bytes.len() && u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) != 3
    })
}

/// The tiny root file system: static busybox with every applet linked,
/// static bash at /bin/bash, users root and cnb, /tmp.
fn busybox_rootfs(out: &Path) -> Result<()> {
    let find_static = |names: &[&str], package: &str| -> Result<Vec<u8>> {
        for n in names {
            if let Some(path) = which(n).or_else(|| {
                [Path::new("/usr/bin"), Path::new("/bin")]
                    .iter()
                    .map(|d| d.join(n))
                    .find(|p| p.is_file())
            }) {
                let bytes = fs::read(&path)?;
                if is_static_elf(&bytes) {
                    return Ok(bytes);
                }
            }
        }
        Err(StackError::Tool(format!(
            "no static {} on this machine; install the Debian package {package}",
            names[0]
        )))
    };
    let busybox = find_static(&["busybox"], "busybox-static")?;
    let bash = find_static(&["bash-static"], "bash-static")?;
    // The applets, from the binary that will run them.
    let dir = tempfile::tempdir()?;
    let bb = dir.path().join("busybox");
    fs::write(&bb, &busybox)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&bb, fs::Permissions::from_mode(0o755))?;
    let list = Command::new(&bb).arg("--list-full").output()?;
    if !list.status.success() {
        return Err(StackError::Tool("busybox --list-full failed".into()));
    }
    let mut dirs: BTreeMap<PathBuf, (u32, u32, u32)> = BTreeMap::new();
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "dev", "proc", "sys",
    ] {
        dirs.insert(d.into(), (0o755, 0, 0));
    }
    dirs.insert("root".into(), (0o700, 0, 0));
    dirs.insert("tmp".into(), (0o1777, 0, 0));
    dirs.insert("home".into(), (0o755, 0, 0));
    dirs.insert("home/cnb".into(), (0o755, CNB_UID, CNB_GID));
    let mut links: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let p = PathBuf::from(applet.trim().trim_start_matches('/'));
        if p.as_os_str().is_empty() || p == Path::new("bin/busybox") || p == Path::new("bin/bash") {
            continue;
        }
        links.insert(p, "/bin/busybox".into());
    }
    let mut files: BTreeMap<PathBuf, (Vec<u8>, u32)> = BTreeMap::new();
    files.insert("bin/busybox".into(), (busybox, 0o755));
    files.insert("bin/bash".into(), (bash, 0o755));
    files.insert(
        "etc/passwd".into(),
        (
            format!(
                "root:x:0:0:root:/root:/bin/sh\ncnb:x:{CNB_UID}:{CNB_GID}:cnb:/home/cnb:/bin/bash\n"
            )
            .into_bytes(),
            0o644,
        ),
    );
    files.insert(
        "etc/group".into(),
        (format!("root:x:0:\ncnb:x:{CNB_GID}:\n").into_bytes(), 0o644),
    );
    files.insert(
        "etc/os-release".into(),
        (
            b"NAME=\"Slipway tiny\"\nID=busybox\nVERSION_ID=1\nPRETTY_NAME=\"Slipway tiny (busybox and bash)\"\n".to_vec(),
            0o644,
        ),
    );

    // One sorted tar: directories, then files and links in path order.
    let tmp = partial_path(out);
    let mut b = tar::Builder::new(BufWriter::new(File::create(&tmp)?));
    let mut all: BTreeMap<PathBuf, u8> = BTreeMap::new();
    for p in dirs.keys() {
        all.insert(p.clone(), 0);
    }
    for p in files.keys() {
        all.insert(p.clone(), 1);
    }
    for p in links.keys() {
        all.entry(p.clone()).or_insert(2);
    }
    for (path, kind) in &all {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(LAYER_MTIME);
        match kind {
            0 => {
                let (mode, uid, gid) = dirs[path];
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(mode);
                h.set_uid(uid as u64);
                h.set_gid(gid as u64);
                h.set_size(0);
                b.append_data(&mut h, path, io::empty())?;
            }
            1 => {
                let (bytes, mode) = &files[path];
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(0);
                h.set_gid(0);
                h.set_size(bytes.len() as u64);
                b.append_data(&mut h, path, bytes.as_slice())?;
            }
            _ => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_uid(0);
                h.set_gid(0);
                h.set_size(0);
                b.append_link(&mut h, path, &links[path])?;
            }
        }
    }
    b.into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    fs::rename(&tmp, out)?;
    Ok(())
}

#[derive(Serialize, Deserialize, PartialEq)]
struct CompressedOf {
    source_size: u64,
    source_mtime_ns: i128,
    digest: String,
    diff_id: String,
    size: u64,
}

/// `tar` gzipped to `<tar>.gz`, with its digest and diff id; kept beside
/// the tar and reused while the tar is unchanged.
/// A staging path next to `out`, unique to this write.
fn partial_path(out: &Path) -> PathBuf {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    PathBuf::from(format!("{}.{}.partial", out.display(), &unique[..12]))
}

pub fn compress_tar(tar: &Path) -> Result<WrittenLayer> {
    let meta = fs::metadata(tar)?;
    let mtime_ns = meta
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    let out = PathBuf::from(format!("{}.gz", tar.display()));
    let sidecar = PathBuf::from(format!("{}.gz.json", tar.display()));
    if let Ok(text) = fs::read(&sidecar)
        && let Ok(c) = serde_json::from_slice::<CompressedOf>(&text)
        && c.source_size == meta.len()
        && c.source_mtime_ns == mtime_ns
        && fs::metadata(&out).map(|m| m.len()).ok() == Some(c.size)
    {
        return Ok(WrittenLayer {
            path: out,
            digest: c.digest,
            diff_id: c.diff_id,
            size: c.size,
        });
    }
    // Of its own: two builds of the same stack at once (two tests, two
    // admins) must not write into one file. The output is the same bytes
    // either way (fixed gzip header and level); the renames are atomic.
    let tmp = partial_path(&out);
    let gz_hash = Hashing {
        inner: BufWriter::new(File::create(&tmp)?),
        hasher: Sha256::new(),
        count: 0,
    };
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(gz_hash, Compression::new(6));
    let mut input = BufReader::with_capacity(1 << 20, File::open(tar)?);
    let mut tar_hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        tar_hasher.update(&buf[..n]);
        gz.write_all(&buf[..n])?;
    }
    let gz_hash = gz.finish()?;
    let c = CompressedOf {
        source_size: meta.len(),
        source_mtime_ns: mtime_ns,
        digest: format!("sha256:{}", hex::encode(gz_hash.hasher.finalize())),
        diff_id: format!("sha256:{}", hex::encode(tar_hasher.finalize())),
        size: gz_hash.count,
    };
    gz_hash
        .inner
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    fs::rename(&tmp, &out)?;
    let sidecar_tmp = partial_path(&sidecar);
    fs::write(&sidecar_tmp, serde_json::to_vec(&c).expect("serializable"))?;
    fs::rename(&sidecar_tmp, &sidecar)?;
    Ok(WrittenLayer {
        path: out,
        digest: c.digest,
        diff_id: c.diff_id,
        size: c.size,
    })
}

/// The OCI architecture name of this machine.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn created() -> &'static str {
    // LAYER_MTIME: reproducible images.
    "1980-01-01T00:00:01Z"
}

async fn put_image(
    client: &Client,
    image: &ImageRef,
    config: &Value,
    layers: &[(String, u64)],
) -> Result<Pushed> {
    let config_bytes = Bytes::from(serde_json::to_vec(config).expect("serializable"));
    let config_size = config_bytes.len() as u64;
    let config_digest = client
        .push_blob_bytes(&image.repository, config_bytes)
        .await?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": layers.iter().map(|(d, s)| json!({"mediaType": OCI_LAYER_GZIP, "digest": d, "size": s})).collect::<Vec<_>>(),
    });
    let digest = client
        .put_manifest(
            &image.repository,
            &image.reference,
            OCI_MANIFEST,
            Bytes::from(serde_json::to_vec(&manifest).expect("serializable")),
        )
        .await?;
    Ok(Pushed {
        image: image.to_string(),
        digest,
        size: layers.iter().map(|(_, s)| s).sum(),
    })
}

/// Pushes a one-layer base image (build or run image) of `stack` made from
/// the root file system `tar`.
pub async fn push_base(
    client: &Client,
    stack: &Stack,
    what: &str,
    tar: &Path,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Pushed> {
    let image = ImageRef::parse(&stack.image(what)).map_err(StackError::Oci)?;
    let t = tar.to_owned();
    log(&format!("compressing {}", tar.display()));
    let layer = tokio::task::spawn_blocking(move || compress_tar(&t))
        .await
        .map_err(|e| StackError::Io(io::Error::other(e)))??;
    if client.has_blob(&image.repository, &layer.digest).await? {
        log(&format!(
            "{} has layer {} already",
            image.repository, layer.digest
        ));
    } else {
        log(&format!(
            "uploading layer {} ({} bytes) to {}",
            layer.digest, layer.size, image.repository
        ));
        client
            .push_blob_file(&image.repository, &layer.digest, &layer.path)
            .await?;
    }
    let mut labels = json!({
        "io.buildpacks.base.distro.name": stack.recipe.distro.name,
        "io.buildpacks.base.distro.version": stack.recipe.distro.version,
        "io.buildpacks.base.maintainer": "Slipway",
        "io.buildpacks.base.description": stack.recipe.description,
        "io.buildpacks.base.id": format!("slipway.{}", stack.name),
        // Platform API before 0.12, and older tools, read the stack id.
        "io.buildpacks.stack.id": format!("slipway.{}", stack.name),
        "org.opencontainers.image.title": stack.image(what),
    });
    let env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        format!("CNB_USER_ID={CNB_UID}"),
        format!("CNB_GROUP_ID={CNB_GID}"),
    ];
    if what == "run" {
        labels["io.buildpacks.rebasable"] = json!("true");
    }
    let config = json!({
        "created": created(),
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": env,
            "User": format!("{CNB_UID}:{CNB_GID}"),
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{
            "created": created(),
            "created_by": format!("slipway admin stack build {} ({} image)", stack.name, what),
        }],
    });
    put_image(client, &image, &config, &[(layer.digest, layer.size)]).await
}

/// What a builder image is made of.
pub struct BuilderSpec<'a> {
    /// Where it goes, e.g. `platform/builder:bookworm`.
    pub image: &'a str,
    /// The build image it is based on (in the same registry).
    pub build_image: &'a str,
    /// The run image apps get (`/cnb/run.toml`).
    pub run_image: &'a str,
    /// `/cnb/order.toml`.
    pub order: &'a str,
    pub buildpacks: &'a [BuildpackFiles],
    pub description: &'a str,
    /// More files for the `/cnb` layer: (path under the root, bytes), such
    /// as `cnb/stack/run-dpkg-status`, the run image's package list.
    pub files: &'a [(String, Vec<u8>)],
}

/// Pushes a builder: the build image's layers (mounted, not copied) plus
/// one root-owned layer with `/cnb`.
pub async fn push_builder(
    client: &Client,
    spec: &BuilderSpec<'_>,
    scratch: &Path,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Pushed> {
    let build = ImageRef::parse(spec.build_image).map_err(StackError::Oci)?;
    let builder = ImageRef::parse(spec.image).map_err(StackError::Oci)?;
    let run_image = spec.run_image;
    let m = client.manifest(&build.repository, &build.reference).await?;
    let manifest: Value = serde_json::from_slice(&m.body)
        .map_err(|e| StackError::Invalid(format!("the build image's manifest: {e}")))?;
    let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default();
    let mut config: Value =
        serde_json::from_slice(&client.blob_bytes(&build.repository, config_digest).await?)
            .map_err(|e| StackError::Invalid(format!("the build image's config: {e}")))?;
    let mut layers: Vec<(String, u64)> = Vec::new();
    for l in manifest["layers"].as_array().cloned().unwrap_or_default() {
        let digest = l["digest"].as_str().unwrap_or_default().to_owned();
        if build.repository != builder.repository
            && !client
                .mount(&builder.repository, &digest, &build.repository)
                .await?
        {
            return Err(StackError::Invalid(format!(
                "the registry would not mount {digest} from {} into {}",
                build.repository, builder.repository
            )));
        }
        layers.push((digest, l["size"].as_u64().unwrap_or(0)));
    }

    let buildpacks = spec.buildpacks;
    let mut entries = vec![
        Entry::File {
            target: "cnb/order.toml".into(),
            bytes: spec.order.as_bytes().to_vec(),
            mode: 0o644,
        },
        Entry::File {
            target: RUN_TOML.into(),
            bytes: format!("[[images]]\nimage = \"{run_image}\"\nmirrors = []\n").into_bytes(),
            mode: 0o644,
        },
        // Platform API before 0.12.
        Entry::File {
            target: "cnb/stack.toml".into(),
            bytes: format!("[run-image]\nimage = \"{run_image}\"\nmirrors = []\n").into_bytes(),
            mode: 0o644,
        },
    ];
    for (target, bytes) in spec.files {
        entries.push(Entry::File {
            target: target.into(),
            bytes: bytes.clone(),
            mode: 0o644,
        });
    }
    for bp in buildpacks {
        let dir = PathBuf::from("cnb/buildpacks")
            .join(bp.id.replace('/', "_"))
            .join(&bp.version);
        for (rel, bytes, mode) in &bp.files {
            entries.push(Entry::File {
                target: dir.join(rel),
                bytes: bytes.clone(),
                mode: *mode,
            });
        }
    }
    fs::create_dir_all(scratch)?;
    let out = scratch.join(format!("cnb-{}.tar.gz", uuid::Uuid::new_v4().simple()));
    let cnb = tokio::task::spawn_blocking(move || write_layer_owned(&entries, &out, 0, 0))
        .await
        .map_err(|e| StackError::Io(io::Error::other(e)))??;
    let pushed = if client.has_blob(&builder.repository, &cnb.digest).await? {
        Ok(())
    } else {
        client
            .push_blob_file(&builder.repository, &cnb.digest, &cnb.path)
            .await
    };
    let _ = fs::remove_file(&cnb.path);
    pushed?;
    log(&format!(
        "builder {}: {} buildpacks ({})",
        builder,
        buildpacks.len(),
        buildpacks
            .iter()
            .map(|b| format!("{}@{}", b.id, b.version))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    layers.push((cnb.digest.clone(), cnb.size));
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .ok_or_else(|| StackError::Invalid("the build image's config has no diff_ids".into()))?
        .push(json!(cnb.diff_id));
    if let Some(h) = config["history"].as_array_mut() {
        h.push(json!({"created": created(), "created_by": format!("slipway builder {}: /cnb", spec.image)}));
    }
    let labels = &mut config["config"]["Labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    labels["io.buildpacks.builder.metadata"] = json!(serde_json::to_string(&json!({
        "description": spec.description,
        "buildpacks": buildpacks.iter().map(|b| json!({"id": b.id, "version": b.version})).collect::<Vec<_>>(),
        "stack": {"runImage": {"image": run_image, "mirrors": []}},
        "images": [{"image": run_image, "mirrors": []}],
        "createdBy": {"name": "Slipway", "version": env!("CARGO_PKG_VERSION")},
    }))
    .expect("serializable"));
    labels["org.opencontainers.image.title"] = json!(spec.image);
    put_image(client, &builder, &config, &layers).await
}

/// Where a builder holds its run image's dpkg status.
pub const RUN_DPKG_STATUS: &str = "cnb/stack/run-dpkg-status";

/// One file of an uncompressed tar (`./` prefixes ignored), if it has it.
fn tar_member(tar: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut archive = tar::Archive::new(fs::File::open(tar)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_path_buf();
        if path.strip_prefix("./").unwrap_or(&path) == Path::new(name) {
            let mut out = Vec::new();
            entry.read_to_end(&mut out)?;
            return Ok(Some(out));
        }
    }
    Ok(None)
}

/// Makes `stack`'s root file systems (or takes them from the cache) and
/// pushes its build, run and builder images.
pub async fn make(client: &Client, stack: &Stack, opts: &Options) -> Result<Made> {
    let (build_tar, run_tar) = {
        let stack = stack.clone();
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || rootfs(&stack, &opts))
            .await
            .map_err(|e| StackError::Io(io::Error::other(e)))??
    };
    let log = &*opts.log;
    let build = push_base(client, stack, "build", &build_tar, log).await?;
    let run = push_base(client, stack, "run", &run_tar, log).await?;
    let buildpacks = stack.buildpacks()?;
    // The run image's package list: what the Debian packages buildpack
    // resolves dependencies against (the app gets what the run image lacks).
    let files: Vec<(String, Vec<u8>)> = {
        let run_tar = run_tar.clone();
        tokio::task::spawn_blocking(move || tar_member(&run_tar, "var/lib/dpkg/status"))
            .await
            .map_err(|e| StackError::Io(io::Error::other(e)))??
            .map(|b| vec![(RUN_DPKG_STATUS.to_owned(), b)])
            .unwrap_or_default()
    };
    let builder = push_builder(
        client,
        &BuilderSpec {
            image: &stack.image("builder"),
            build_image: &stack.image("build"),
            run_image: &stack.image("run"),
            order: &stack.order,
            buildpacks: &buildpacks,
            description: &stack.recipe.description,
            files: &files,
        },
        &opts.cache_dir.join("scratch"),
        log,
    )
    .await?;
    Ok(Made {
        build,
        run,
        builder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stack_loads_and_its_order_names_embedded_buildpacks() {
        let names = names();
        assert!(names.contains(&"bookworm".to_owned()) && names.contains(&"tiny".to_owned()));
        for n in &names {
            let s = Stack::load(n).unwrap();
            let bps = s.buildpacks().unwrap();
            assert!(!bps.is_empty(), "{n}");
            for bp in &bps {
                let detect = bp
                    .files
                    .iter()
                    .find(|(p, _, _)| p == Path::new("bin/detect"))
                    .unwrap_or_else(|| panic!("{} has no bin/detect", bp.id));
                assert_eq!(detect.2, 0o755);
                assert!(
                    bp.files
                        .iter()
                        .any(|(p, _, m)| p == Path::new("buildpack.toml") && *m == 0o644)
                );
            }
        }
        let bookworm = Stack::load("bookworm").unwrap();
        assert!(bookworm.build_packages.contains(&"python3-venv".to_owned()));
        assert!(!bookworm.build_packages.iter().any(|p| p.contains('#')));
        assert!(
            matches!(bookworm.recipe.rootfs, RootfsRecipe::Mmdebstrap { ref suite } if suite == "bookworm")
        );
    }

    #[test]
    fn unknown_stacks_are_refused_with_the_known_ones() {
        for bad in ["", "nope", "../tiny", "tiny/x"] {
            let e = Stack::load(bad).unwrap_err().to_string();
            assert!(e.contains("bookworm, tiny"), "{e}");
        }
    }

    #[test]
    fn the_rootfs_key_follows_the_packages() {
        let s = Stack::load("bookworm").unwrap();
        let a = s.rootfs_key(&s.build_packages);
        let mut more = s.build_packages.clone();
        more.push("curl".into());
        assert_ne!(a, s.rootfs_key(&more));
        assert_eq!(a, s.rootfs_key(&s.build_packages));
    }

    #[test]
    fn compressing_is_cached_until_the_tar_changes() {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("x.tar");
        fs::write(&tar, vec![7u8; 10_000]).unwrap();
        let a = compress_tar(&tar).unwrap();
        assert_eq!(
            a.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(vec![7u8; 10_000])))
        );
        let gz = fs::read(&a.path).unwrap();
        assert_eq!(
            a.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&gz)))
        );
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, vec![7u8; 10_000]);
        // The same answer from the cache; a changed tar is compressed anew.
        assert_eq!(compress_tar(&tar).unwrap().digest, a.digest);
        fs::write(&tar, vec![8u8; 10_001]).unwrap();
        let b = compress_tar(&tar).unwrap();
        assert_ne!(b.digest, a.digest);
        assert_eq!(
            b.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(vec![8u8; 10_001])))
        );
    }

    #[test]
    fn static_elf_is_told_from_dynamic() {
        assert!(is_static_elf(crate::launcher::LAUNCHER));
        let sh = fs::read("/bin/sh").unwrap();
        assert!(
            !is_static_elf(&sh),
            "/bin/sh is dynamically linked on Debian"
        );
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }

    #[test]
    fn the_tiny_rootfs_has_busybox_bash_and_the_cnb_user() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tiny.tar");
        busybox_rootfs(&out).unwrap();
        let mut a = tar::Archive::new(File::open(&out).unwrap());
        let mut seen = BTreeMap::new();
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            seen.insert(
                e.path().unwrap().display().to_string(),
                (
                    h.entry_type(),
                    h.uid().unwrap(),
                    h.mode().unwrap(),
                    e.link_name().unwrap().map(|l| l.display().to_string()),
                ),
            );
        }
        assert_eq!(seen["bin/bash"].0, tar::EntryType::Regular);
        assert_eq!(seen["usr/bin/env"].3.as_deref(), Some("/bin/busybox"));
        assert_eq!(seen["bin/sh"].3.as_deref(), Some("/bin/busybox"));
        assert_eq!(seen["tmp"].2, 0o1777);
        assert_eq!(seen["home/cnb"].1, CNB_UID as u64);
        // Reproducible: the same bytes again.
        let again = dir.path().join("again.tar");
        busybox_rootfs(&again).unwrap();
        assert_eq!(fs::read(&out).unwrap(), fs::read(&again).unwrap());
    }
}
