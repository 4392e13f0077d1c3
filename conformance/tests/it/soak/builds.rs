//! The soak's builds and fleet rebases: a static site on the tiny stack,
//! built again from a new commit every few seconds into the projects near
//! their quota, and the run image patched and the fleet rebased onto it
//! every so often — while the server is killed under them.
//!
//! A build or rebase that succeeded is acknowledged: its image joins the
//! ledger and must stay pullable whole. Every build must end (succeeded,
//! failed with a reason, cancelled): none may stay queued or running once
//! the workload stops. A rebase may take a full project over its quota by
//! what it adds (a config and a manifest per image, README "Stack rebase");
//! the quota check allows exactly that.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{PROJECTS, Pushed, Soak};
use crate::crash::process::{ADMIN_PASSWORD, binary};
use crate::crash::push::sha256;

const RUN_IMAGE: &str = "platform/run:tiny";

/// The root file systems `conformance/test.sh` made (as the registry's
/// build tests use them).
fn stacks_dir() -> PathBuf {
    std::env::var_os("SLIPWAY_TEST_STACKS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/slipway/test-stacks")
        })
}

/// The server settings builds need: local sources, the tiny builder, the
/// shared unpacked builders, the host's authorities.
pub fn server_env() -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("SLIPWAY_BUILDS__ALLOW_LOCAL_SOURCES", "true".to_owned()),
        (
            "SLIPWAY_BUILDS__DEFAULT_BUILDER",
            "platform/builder:tiny".to_owned(),
        ),
        (
            "SLIPWAY_BUILDS__BUILDERS_DIR",
            stacks_dir().join("builders").display().to_string(),
        ),
    ];
    if let Some(ca) = std::env::var_os("SLIPWAY_TEST_CA_CERTIFICATES") {
        env.push((
            "SLIPWAY_BUILDS__CA_CERTIFICATES",
            ca.to_string_lossy().into_owned(),
        ));
    }
    env
}

/// `slipway admin stack build tiny` against the server (the platform
/// project first).
async fn make_stack(s: &Soak) {
    let url = s.url().await;
    let r = s
        .http
        .post(format!("{url}/api/v1/projects"))
        .json(&json!({"name": "platform", "public": true}))
        .send()
        .await
        .unwrap();
    assert!(
        matches!(r.status(), StatusCode::CREATED | StatusCode::CONFLICT),
        "creating platform answered {}",
        r.status()
    );
    let out = tokio::process::Command::new(binary())
        .args(["admin", "stack", "build", "tiny", "--cache-dir"])
        .arg(stacks_dir())
        .env("SLIPWAY_URL", &url)
        .env("SLIPWAY_PASSWORD", ADMIN_PASSWORD)
        .output()
        .await
        .expect("run slipway admin stack build");
    assert!(
        out.status.success(),
        "slipway admin stack build tiny: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The site's git repository, one commit per build.
struct Site {
    dir: PathBuf,
}

impl Site {
    fn new(dir: &Path) -> Site {
        let site = Site {
            dir: dir.to_owned(),
        };
        std::fs::create_dir_all(dir.join("public")).unwrap();
        site.git(&["init", "-q", "-b", "main"]);
        site.commit(0);
        site
    }

    fn git(&self, args: &[&str]) {
        let out = Command::new("git")
            .args(args)
            .current_dir(&self.dir)
            .env("GIT_AUTHOR_NAME", "soak")
            .env("GIT_AUTHOR_EMAIL", "soak@example.org")
            .env("GIT_COMMITTER_NAME", "soak")
            .env("GIT_COMMITTER_EMAIL", "soak@example.org")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn commit(&self, n: u64) {
        std::fs::write(
            self.dir.join("public/index.html"),
            format!("<h1>soak site, commit {n}</h1>\n"),
        )
        .unwrap();
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", &format!("commit {n}")]);
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

/// Builds, rebases and what they left.
#[derive(Default)]
pub struct Ledger {
    /// (project, build id) of every build the server accepted.
    pub started: Vec<(String, String)>,
    /// Bytes a rebase added to each project (new configs and manifests).
    pub rebase_allowance: HashMap<String, u64>,
    /// Blobs already fetched, by digest (the run image's layers are shared).
    cache: HashMap<String, Arc<Vec<u8>>>,
    /// Why builds failed, and how often.
    pub failures: HashMap<String, u64>,
}

/// What a build or a rebase made, fetched whole (with retries while the
/// server restarts) and checked against its digests; `None` when it could
/// not be fetched within a minute (a violation) or is gone (deleted).
async fn fetch(s: &Soak, repo: &str, digest: &str) -> Option<Pushed> {
    let deadline = Instant::now() + Duration::from_secs(60);
    'again: while Instant::now() < deadline {
        if s.stop_now() {
            return None;
        }
        let url = s.url().await;
        let Ok(r) = s
            .http
            .get(format!("{url}/v2/{repo}/manifests/{digest}"))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        let status = r.status();
        let Ok(manifest) = r.bytes().await else {
            continue;
        };
        if status == StatusCode::NOT_FOUND {
            return None;
        }
        if status != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        if sha256(&manifest) != digest {
            s.violation(format!("{repo}@{digest} answered other bytes"));
            return None;
        }
        let m: Value = serde_json::from_slice(&manifest).expect("a manifest");
        let mut blobs = Vec::new();
        for d in std::iter::once(&m["config"])
            .chain(m["layers"].as_array().into_iter().flatten())
            .filter_map(|d| d["digest"].as_str())
        {
            let cached = s.builds.lock().unwrap().cache.get(d).cloned();
            let bytes = match cached {
                Some(b) => b,
                None => {
                    let Ok(r) = s
                        .http
                        .get(format!("{url}/v2/{repo}/blobs/{d}"))
                        .send()
                        .await
                    else {
                        continue 'again;
                    };
                    if r.status() != StatusCode::OK {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue 'again;
                    }
                    let Ok(b) = r.bytes().await else {
                        continue 'again;
                    };
                    if sha256(&b) != d {
                        s.violation(format!("blob {d} of {repo}@{digest} answered other bytes"));
                        return None;
                    }
                    let b = Arc::new(b.to_vec());
                    s.builds
                        .lock()
                        .unwrap()
                        .cache
                        .insert(d.to_owned(), b.clone());
                    b
                }
            };
            blobs.push((d.to_owned(), bytes));
        }
        return Some(Pushed {
            repo: repo.to_owned(),
            digest: digest.to_owned(),
            manifest: manifest.to_vec(),
            blobs,
        });
    }
    if !s.stop_now() {
        s.violation(format!(
            "{repo}@{digest}, acknowledged, could not be fetched within a minute"
        ));
    }
    None
}

/// A build's state, `None` while the server cannot answer. A build no
/// longer there was pruned (the project keeps its newest build records;
/// only ended builds are pruned): `{"state": "pruned"}`.
async fn state_of(s: &Soak, project: &str, id: &str) -> Option<Value> {
    let url = s.url().await;
    let r = s
        .http
        .get(format!("{url}/api/v1/projects/{project}/builds/{id}"))
        .send()
        .await
        .ok()?;
    match r.status() {
        StatusCode::OK => r.json().await.ok(),
        StatusCode::NOT_FOUND => Some(json!({"state": "pruned"})),
        _ => None,
    }
}

fn ended(b: &Value) -> bool {
    matches!(
        b["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled" | "timed_out" | "pruned")
    )
}

/// The answer when it is `want`; `None` otherwise: a server being
/// restarted or a store down (503, no answer) is counted as unreachable,
/// anything else is a violation naming `what`.
pub(super) async fn expect(
    s: &Soak,
    r: reqwest::Result<reqwest::Response>,
    want: StatusCode,
    what: &str,
) -> Option<reqwest::Response> {
    match r {
        Ok(r) if r.status() == want => Some(r),
        Ok(r) if r.status() != StatusCode::SERVICE_UNAVAILABLE => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            s.violation(format!("{what} answered {status}: {body}"));
            None
        }
        _ => {
            s.unreachable();
            None
        }
    }
}

/// One build of a new commit into a project; waits for its end (or the
/// soak's), and puts a succeeded build's image into the ledger.
async fn build_one(s: &Soak, site: &Site, n: u64) {
    site.commit(n);
    let project = format!("tool-soak{}", n as usize % PROJECTS);
    let url = s.url().await;
    let r = s
        .http
        .post(format!("{url}/api/v1/projects/{project}/builds"))
        .json(&json!({"source_url": site.url(), "ref": "main", "image_name": "site"}))
        .send()
        .await;
    let Some(r) = expect(s, r, StatusCode::ACCEPTED, &format!("a build of {project}")).await else {
        return;
    };
    let v: Value = r.json().await.unwrap_or_default();
    let id = v["id"].as_str().unwrap_or_default().to_owned();
    s.counts.builds.fetch_add(1, Ordering::Relaxed);
    s.builds
        .lock()
        .unwrap()
        .started
        .push((project.clone(), id.clone()));
    while !s.stop_now() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(b) = state_of(s, &project, &id).await else {
            continue;
        };
        if !ended(&b) {
            continue;
        }
        if b["state"] == "pruned" {
            // Ended and pruned before this look: what it made is unknown.
            return;
        }
        if b["state"] == "succeeded" {
            s.counts.builds_ok.fetch_add(1, Ordering::Relaxed);
            let digest = b["image_digest"]
                .as_str()
                .expect("a succeeded build's digest");
            if let Some(p) = fetch(s, &format!("{project}/site"), digest).await {
                s.ledger.lock().unwrap().live.push(p);
            }
        } else {
            let reason = b["reason"].as_str().unwrap_or("no reason");
            // One line for every "quota exceeded for project …: 11.8 MiB used …".
            let reason = match reason.split_once(':') {
                Some((head, _)) if head.starts_with("quota exceeded") => {
                    "quota exceeded (the build's reservation)".to_owned()
                }
                _ => reason.to_owned(),
            };
            *s.builds.lock().unwrap().failures.entry(reason).or_default() += 1;
        }
        return;
    }
}

/// A tar holding one file (ustar; what a security update's layer is, in
/// small).
fn one_file_tar(name: &str, body: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = len - 1);
        h[at..at + len].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, 0o644);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, body.len() as u64);
    octal(&mut h, 136, 12, 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    let mut tar = h.to_vec();
    tar.extend_from_slice(body);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    tar
}

/// The run image as `slipway admin stack build` pushed it: (manifest,
/// config, media type).
type Base = (Value, Value, String);

async fn fetch_base(s: &Soak) -> Option<Base> {
    let url = s.url().await;
    let accept = "application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.v2+json";
    let r = s
        .http
        .get(format!("{url}/v2/platform/run/manifests/tiny"))
        .header("accept", accept)
        .send()
        .await
        .ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    let media_type = r.headers().get("content-type")?.to_str().ok()?.to_owned();
    let m: Value = r.json().await.ok()?;
    let config_digest = m["config"]["digest"].as_str()?.to_owned();
    let r = s
        .http
        .get(format!("{url}/v2/platform/run/blobs/{config_digest}"))
        .send()
        .await
        .ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    let config: Value = r.json().await.ok()?;
    Some((m, config, media_type))
}

async fn upload(s: &Soak, bytes: Vec<u8>) -> Option<String> {
    let url = s.url().await;
    let digest = sha256(&bytes);
    let r = s
        .http
        .post(format!(
            "{url}/v2/platform/run/blobs/uploads/?digest={digest}"
        ))
        .body(bytes)
        .send()
        .await
        .ok()?;
    (r.status() == StatusCode::CREATED).then_some(digest)
}

/// Pushes the run image again with one more layer on top of the stack's
/// (a file naming patch `n`): a new digest and a new top layer, as a
/// security update makes.
async fn patch_run_image(s: &Soak, base: &Base, n: u64) -> bool {
    let (manifest, config, media_type) = base;
    let layer = one_file_tar("etc/slipway-soak-patch", format!("patch {n}\n").as_bytes());
    let size = layer.len();
    let Some(layer_digest) = upload(s, layer).await else {
        return false;
    };
    let mut config = config.clone();
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .expect("the run image's diff ids")
        .push(json!(layer_digest));
    config["config"]["Labels"]["org.slipway.soak.patch"] = json!(n.to_string());
    let config = serde_json::to_vec(&config).unwrap();
    let config_size = config.len();
    let Some(config_digest) = upload(s, config).await else {
        return false;
    };
    let layer_type = if media_type.contains("docker") {
        "application/vnd.docker.image.rootfs.diff.tar"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    };
    let mut m = manifest.clone();
    m["config"]["digest"] = json!(config_digest);
    m["config"]["size"] = json!(config_size);
    m["layers"]
        .as_array_mut()
        .expect("the run image's layers")
        .push(json!({"mediaType": layer_type, "digest": layer_digest, "size": size}));
    let url = s.url().await;
    let Ok(r) = s
        .http
        .put(format!("{url}/v2/platform/run/manifests/tiny"))
        .header("content-type", media_type)
        .body(serde_json::to_vec(&m).unwrap())
        .send()
        .await
    else {
        return false;
    };
    r.status() == StatusCode::CREATED
}

/// A patched run image and a fleet rebase onto it; the rebased images join
/// the ledger, and what they added to their projects is the allowance.
async fn rebase_once(s: &Soak, base: &Base, n: u64) {
    if !patch_run_image(s, base, n).await {
        s.unreachable();
        return;
    }
    let url = s.url().await;
    let r = s
        .http
        .post(format!("{url}/api/v1/admin/rebase"))
        .json(&json!({"run_image": RUN_IMAGE}))
        .send()
        .await;
    let Some(r) = expect(s, r, StatusCode::OK, "the fleet rebase").await else {
        return;
    };
    let report: Value = r.json().await.expect("the rebase report");
    s.counts.rebases.fetch_add(1, Ordering::Relaxed);
    for i in report["rebased"].as_array().into_iter().flatten() {
        let (Some(repo), Some(new)) = (i["repository"].as_str(), i["new_digest"].as_str()) else {
            continue;
        };
        s.counts.rebased.fetch_add(1, Ordering::Relaxed);
        let Some(p) = fetch(s, repo, new).await else {
            continue;
        };
        let added = (p.manifest.len() + p.blobs[0].1.len()) as u64;
        let project = repo.split('/').next().unwrap().to_owned();
        *s.builds
            .lock()
            .unwrap()
            .rebase_allowance
            .entry(project)
            .or_default() += added;
        s.ledger.lock().unwrap().live.push(p);
    }
    for (what, list) in [
        ("failed", &report["failed"]),
        ("skipped", &report["skipped"]),
    ] {
        for i in list.as_array().into_iter().flatten() {
            let reason = format!(
                "rebase {what}: {}",
                i["reason"].as_str().unwrap_or("no reason")
            );
            *s.builds.lock().unwrap().failures.entry(reason).or_default() += 1;
        }
    }
    eprintln!(
        "soak: fleet rebase {n}: {} scanned, {} rebased, {} current, {} skipped, {} failed",
        report["scanned"],
        report["rebased"].as_array().map_or(0, Vec::len),
        report["current"].as_array().map_or(0, Vec::len),
        report["skipped"].as_array().map_or(0, Vec::len),
        report["failed"].as_array().map_or(0, Vec::len),
    );
}

/// The tiny stack pushed, the site's repository made in `dir`, then the
/// builder (a build at a time, back to back) and the rebaser (every third
/// of a soak of `secs`, between 12 s and two minutes).
pub async fn start(s: &Arc<Soak>, dir: &Path, secs: u64) -> Vec<tokio::task::JoinHandle<()>> {
    make_stack(s).await;
    let site = Arc::new(Site::new(&dir.join("site")));
    let rebase_every = Duration::from_secs((secs / 3).clamp(12, 120));
    let builder = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !s.stop_now() {
                n += 1;
                build_one(&s, &site, n).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let rebaser = {
        let s = s.clone();
        tokio::spawn(async move {
            // The stack's run image, patched anew each time.
            let base = loop {
                if s.stop_now() {
                    return;
                }
                if let Some(b) = fetch_base(&s).await {
                    break b;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            let mut n = 0;
            loop {
                let next = Instant::now() + rebase_every;
                while Instant::now() < next {
                    if s.stop_now() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                n += 1;
                rebase_once(&s, &base, n).await;
            }
        })
    };
    vec![builder, rebaser]
}

/// Every build the server accepted ends (within five minutes of the
/// workload's end: a build just started runs to its end, one a kill
/// interrupted is failed by the restarted server).
pub async fn check_ended(s: &Soak) {
    let started = s.builds.lock().unwrap().started.clone();
    let deadline = Instant::now() + Duration::from_secs(300);
    for (project, id) in started {
        loop {
            let b = state_of(s, &project, &id).await;
            if b.as_ref().is_some_and(ended) {
                break;
            }
            if Instant::now() > deadline {
                s.violation(format!(
                    "build {id} of {project} is stuck: it never ended ({})",
                    b.unwrap_or_default()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
