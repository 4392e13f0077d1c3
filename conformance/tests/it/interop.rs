//! Real clients against an in-process Slipway, run as subprocesses.
//!
//! - skopeo: a three-layer image (one layer of 4 MiB of random bytes) copied
//!   in from an OCI layout and back out to another, byte for byte; then
//!   `inspect`, `list-tags` and `delete`.
//! - containerd's `ctr`, the kubelet's path: a private containerd daemon
//!   pulls over plain HTTP (by tag with `--plain-http`, by digest through a
//!   `hosts.toml` as a cluster configures it), unpacks into snapshots, and
//!   the mounted image holds the files that were put in it.
//! - podman: pull, retag, push into another repository, pull that back.
//! - oras, the Python SDK (driven by `conformance/tests/oras_helper.py`): an
//!   artifact whose `subject` is an image, pulled back and found through the
//!   referrers API.
//!
//! Test images are built here with umoci from fresh random bytes, never
//! fetched. Apart from the skopeo tests, images reach the registry through
//! `push` (plain HTTP from this file), so each test needs only its own client.
//! A missing tool fails the test with a sentence naming where it comes from
//! (`./conformance/test.sh` installs them all). Every command runs under a
//! deadline; waits poll with a deadline, never sleep.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::RngCore;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use slipway_registry::testing::TestServer;
use tokio::process::Command;

/// Longest any one client command may run.
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);
/// Longest a containerd daemon may take to answer on its socket.
const DAEMON_DEADLINE: Duration = Duration::from_secs(30);

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

// ---------------------------------------------------------------------------
// skopeo

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_a_multi_layer_image_in_and_out_byte_for_byte() {
    let started = Instant::now();
    let work = tempfile::tempdir().expect("temporary directory");
    let skopeo = Skopeo::find(work.path());
    let image = build_image(&work.path().join("in"), 4 << 20).await;
    let server = TestServer::start().await;
    let http = http();

    let (desc, manifest) = image.layout.manifest(image.tag);
    let blobs = referenced_blobs(&manifest);
    assert_eq!(
        blobs.len(),
        4,
        "the test image should have a config and three layers"
    );
    assert!(
        blobs.iter().any(|b| b.size >= 4 << 20),
        "the test image should have a layer of at least 4 MiB: {blobs:?}"
    );

    let remote = format!("docker://{}/interop/skopeo:v1", server.host());
    run(skopeo
        .command()
        .args(["copy", "--dest-tls-verify=false"])
        .arg(image.reference())
        .arg(&remote))
    .await;
    let (digest, stored) = get_manifest(&http, &server.url, "interop/skopeo", "v1").await;
    assert_eq!(
        digest, desc.digest,
        "the registry names the copied manifest by another digest"
    );
    assert!(
        stored == manifest,
        "the registry holds other manifest bytes than skopeo copied in"
    );

    let out = Layout(work.path().join("out"));
    run(skopeo
        .command()
        .args(["copy", "--src-tls-verify=false"])
        .arg(&remote)
        .arg(format!("oci:{}:v1", out.0.display())))
    .await;
    let (out_desc, out_manifest) = out.manifest("v1");
    assert_eq!(
        out_desc.digest, desc.digest,
        "the manifest copied out has another digest"
    );
    assert!(
        out_manifest == manifest,
        "the manifest copied out differs from the one copied in"
    );
    for blob in &blobs {
        assert!(
            out.blob(&blob.digest) == image.layout.blob(&blob.digest),
            "blob {} ({} bytes) copied out differs from the one copied in",
            blob.digest,
            blob.size
        );
    }
    eprintln!(
        "interop skopeo copy: {} blobs round-tripped in {:?}",
        blobs.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_inspects_lists_tags_and_deletes() {
    let work = tempfile::tempdir().expect("temporary directory");
    let skopeo = Skopeo::find(work.path());
    let image = build_image(work.path(), 64 << 10).await;
    let other = image.variant("other").await;
    let server = TestServer::start().await;
    let http = http();
    let repo = format!("docker://{}/interop/tags", server.host());
    let (desc, manifest) = image.layout.manifest(image.tag);
    let (other_desc, _) = image.layout.manifest(other);

    for tag in ["v1", "v2", "latest"] {
        run(skopeo
            .command()
            .args(["copy", "--dest-tls-verify=false"])
            .arg(image.reference())
            .arg(format!("{repo}:{tag}")))
        .await;
    }
    run(skopeo
        .command()
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{other}", image.layout.0.display()))
        .arg(format!("{repo}:keep")))
    .await;

    let inspect = json(
        &run(skopeo
            .command()
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("{repo}:v1")))
        .await,
    );
    assert_eq!(
        inspect["Digest"],
        desc.digest.as_str(),
        "skopeo inspect: {inspect:#}"
    );
    let layers: Vec<String> = referenced_blobs(&manifest)[1..]
        .iter()
        .map(|b| b.digest.clone())
        .collect();
    assert_eq!(
        inspect["Layers"],
        serde_json::json!(layers),
        "skopeo inspect: {inspect:#}"
    );
    let raw = run(skopeo
        .command()
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("{repo}:latest")))
    .await;
    assert!(
        raw.as_bytes() == manifest,
        "skopeo inspect --raw shows other bytes than were pushed:\n{raw}"
    );

    assert_eq!(
        list_tags(&skopeo, &repo).await,
        ["keep", "latest", "v1", "v2"]
    );

    // Deleting through a tag deletes the manifest, and with it every tag
    // that named it; the other image stays.
    run(skopeo
        .command()
        .args(["delete", "--tls-verify=false"])
        .arg(format!("{repo}:v1")))
    .await;
    for reference in [desc.digest.as_str(), "v1", "v2", "latest"] {
        assert_eq!(
            manifest_status(&http, &server.url, "interop/tags", reference).await,
            StatusCode::NOT_FOUND,
            "the manifest is still served as {reference} after skopeo delete"
        );
    }
    let err = run_failing(
        skopeo
            .command()
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("{repo}:v1")),
    )
    .await;
    assert!(
        err.contains("manifest unknown"),
        "skopeo inspect after the delete says:\n{err}"
    );
    assert_eq!(list_tags(&skopeo, &repo).await, ["keep"]);
    let inspect = json(
        &run(skopeo
            .command()
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("{repo}:keep")))
        .await,
    );
    assert_eq!(
        inspect["Digest"],
        other_desc.digest.as_str(),
        "skopeo inspect: {inspect:#}"
    );
}

/// `skopeo list-tags`, sorted.
async fn list_tags(skopeo: &Skopeo, repo: &str) -> Vec<String> {
    let out = json(
        &run(skopeo
            .command()
            .args(["list-tags", "--tls-verify=false"])
            .arg(repo))
        .await,
    );
    let mut tags: Vec<String> = serde_json::from_value(out["Tags"].clone())
        .unwrap_or_else(|e| panic!("skopeo list-tags printed no list of tags ({e}): {out:#}"));
    tags.sort();
    tags
}

/// skopeo with a signature policy of our own, so the machine's policy plays no part.
struct Skopeo {
    tool: Tool,
    policy: PathBuf,
}

impl Skopeo {
    fn find(work: &Path) -> Skopeo {
        Skopeo {
            tool: Tool::find("skopeo", "the Debian package skopeo"),
            policy: accept_anything_policy(work),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = self.tool.command();
        cmd.arg("--policy").arg(&self.policy);
        cmd
    }
}

fn accept_anything_policy(dir: &Path) -> PathBuf {
    let path = dir.join("policy.json");
    std::fs::write(&path, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)
        .expect("write policy.json");
    path
}

// ---------------------------------------------------------------------------
// containerd

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_pulls_unpacks_and_mounts_an_image() {
    let started = Instant::now();
    require_root("containerd and ctr image mount");
    let work = tempfile::tempdir().expect("temporary directory");
    let image = build_image(work.path(), 256 << 10).await;
    let server = TestServer::start().await;
    let http = http();
    let digest = push(&http, &server.url, &image, "interop/ctr", "v1").await;
    let daemon = Containerd::start().await;
    let by_tag = format!("{}/interop/ctr:v1", server.host());

    // By tag, with ctr's own switch for plain HTTP; `pull` unpacks.
    let out = run(daemon
        .ctr()
        .args(["image", "pull", "--plain-http", "--print-chainid"])
        .arg(&by_tag))
    .await;
    assert!(
        out.contains("image chain ID: sha256:"),
        "ctr image pull did not unpack:\n{out}"
    );
    let listed = run(daemon.ctr().args(["image", "check"])).await;
    let line = listed
        .lines()
        .find(|l| l.starts_with(&format!("{by_tag} ")))
        .unwrap_or_else(|| panic!("ctr image check does not list {by_tag}:\n{listed}"));
    assert!(
        line.contains(&digest),
        "ctr holds {by_tag} under another digest than {digest}:\n{line}"
    );
    assert!(
        line.contains("complete (4/4)") && line.trim_end().ends_with("true"),
        "ctr holds {by_tag} incomplete or not unpacked:\n{listed}"
    );

    // By digest, through a hosts directory: how a cluster's containerd is
    // told that a registry speaks plain HTTP.
    let hosts = work.path().join("certs.d");
    let host_dir = hosts.join(server.host());
    std::fs::create_dir_all(&host_dir).expect("create certs.d");
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"{0}\"\n\n[host.\"{0}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            server.url
        ),
    )
    .expect("write hosts.toml");
    let by_digest = format!("{}/interop/ctr@{digest}", server.host());
    run(daemon
        .ctr()
        .args(["image", "pull", "--hosts-dir"])
        .arg(&hosts)
        .arg(&by_digest))
    .await;

    // The unpacked image holds the files that were put in it.
    let target = work.path().join("rootfs");
    std::fs::create_dir(&target).expect("create mount point");
    run(daemon
        .ctr()
        .args(["image", "mount"])
        .arg(&by_tag)
        .arg(&target))
    .await;
    let mounted = Mounted(target.clone());
    for (path, content) in &image.files {
        let found = std::fs::read(target.join(path))
            .unwrap_or_else(|e| panic!("the image mounted by ctr has no readable /{path}: {e}"));
        assert!(
            &found == content,
            "/{path} in the image mounted by ctr differs from what was put in"
        );
    }
    run(daemon.ctr().args(["image", "unmount"]).arg(&target)).await;
    drop(mounted);
    eprintln!(
        "interop ctr: pulled, unpacked and mounted in {:?}",
        started.elapsed()
    );
}

/// A containerd daemon with its root, state, socket and config in a
/// temporary directory; killed when dropped.
struct Containerd {
    child: std::process::Child,
    ctr: Tool,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    async fn start() -> Containerd {
        let containerd = Tool::find("containerd", "the Debian package containerd");
        let ctr = Tool::find("ctr", "the Debian package containerd");
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        // Every path the daemon would write outside its root is set here too
        // (the `opt` plugin defaults to /opt/containerd). Without the CRI
        // plugin it starts in a fraction of a second.
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = {root:?}
state = {state:?}
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = {socket:?}

[ttrpc]
  address = {ttrpc:?}

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt:?}
"#,
                root = path("root"),
                state = path("state"),
                socket = path("containerd.sock"),
                ttrpc = path("containerd.sock.ttrpc"),
                opt = path("opt"),
            ),
        )
        .expect("write containerd's config");
        let log = std::fs::File::create(dir.path().join("containerd.log"))
            .expect("create containerd.log");
        let child = std::process::Command::new(&containerd.path)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("containerd could not be started: {e}"));
        let mut daemon = Containerd {
            child,
            ctr,
            socket,
            dir,
        };
        daemon.wait_ready().await;
        daemon
    }

    /// Polls `ctr version` until the daemon answers, it exits, or the deadline passes.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + DAEMON_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("containerd's status") {
                panic!(
                    "containerd exited ({status}) before it answered; its log:\n{}",
                    self.log()
                );
            }
            if self.socket.exists() {
                let out = output(self.ctr().arg("version")).await;
                if out.status.success() {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "containerd did not answer on {} within {DAEMON_DEADLINE:?}; its log:\n{}",
                    self.socket.display(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn ctr(&self) -> Command {
        let mut cmd = self.ctr.command();
        cmd.arg("--address").arg(&self.socket);
        cmd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Detaches the mount at its path when dropped (a no-op once unmounted), so
/// a failed test leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.0.as_os_str().as_bytes()).expect("mount point path");
        // SAFETY: `path` is a valid NUL-terminated string for the call's duration.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

// ---------------------------------------------------------------------------
// podman

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_retags_and_pushes_to_another_repository() {
    let started = Instant::now();
    require_root("podman image mount with vfs storage");
    let work = tempfile::tempdir().expect("temporary directory");
    let podman = Podman::find(work.path());
    let image = build_image(&work.path().join("image"), 256 << 10).await;
    let server = TestServer::start().await;
    let http = http();
    let (desc, manifest) = image.layout.manifest(image.tag);
    let config = referenced_blobs(&manifest)[0].digest.clone();
    push(&http, &server.url, &image, "interop/podman-src", "v1").await;
    let src = format!("{}/interop/podman-src:v1", server.host());
    let dst = format!("{}/interop/podman-dst:v2", server.host());

    run(podman
        .command()
        .args(["pull", "--tls-verify=false", "--signature-policy"])
        .arg(&podman.policy)
        .arg(&src))
    .await;
    let id = run(podman
        .command()
        .args(["image", "inspect", "--format", "{{.Id}} {{.Digest}}"])
        .arg(&src))
    .await;
    assert_eq!(
        id.trim(),
        format!("{} {}", config.trim_start_matches("sha256:"), desc.digest),
        "podman holds the pulled image under another id or digest"
    );

    run(podman.command().arg("tag").arg(&src).arg(&dst)).await;
    run(podman
        .command()
        .args(["push", "--tls-verify=false", "--signature-policy"])
        .arg(&podman.policy)
        .arg(&dst))
    .await;

    // Whatever podman chose to send, the new repository holds a whole image
    // with the same config.
    let (_, pushed) = get_manifest(&http, &server.url, "interop/podman-dst", "v2").await;
    let blobs = referenced_blobs(&pushed);
    assert_eq!(blobs[0].digest, config, "podman pushed another config");
    assert_eq!(blobs.len(), 4, "podman pushed another number of layers");
    for blob in &blobs {
        let got = get_blob(&http, &server.url, "interop/podman-dst", &blob.digest).await;
        assert_eq!(
            got.len() as u64,
            blob.size,
            "blob {} has another size than its descriptor",
            blob.digest
        );
    }

    // And podman can pull it back from there, with the same files in it.
    run(podman.command().args(["rmi", "--all", "--force"])).await;
    run(podman
        .command()
        .args(["pull", "--tls-verify=false", "--signature-policy"])
        .arg(&podman.policy)
        .arg(&dst))
    .await;
    let root = run(podman.command().args(["image", "mount"]).arg(&dst)).await;
    let root = Path::new(root.trim());
    for (path, content) in &image.files {
        let found = std::fs::read(root.join(path)).unwrap_or_else(|e| {
            panic!("the image podman pulled back has no readable /{path}: {e}")
        });
        assert!(
            &found == content,
            "/{path} in the image podman pulled back differs from what was put in"
        );
    }
    run(podman.command().args(["image", "unmount"]).arg(&dst)).await;
    eprintln!(
        "interop podman: pull, push, pull in {:?}",
        started.elapsed()
    );
}

/// podman with its storage, run root, temporary files and signature policy
/// in a temporary directory (vfs driver), so it never touches the machine's.
struct Podman {
    tool: Tool,
    dir: PathBuf,
    policy: PathBuf,
}

impl Podman {
    fn find(work: &Path) -> Podman {
        let dir = work.join("podman");
        std::fs::create_dir_all(dir.join("tmp")).expect("create podman's directories");
        Podman {
            tool: Tool::find("podman", "the Debian package podman"),
            policy: accept_anything_policy(work),
            dir,
        }
    }

    fn command(&self) -> Command {
        let mut cmd = self.tool.command();
        cmd.env("TMPDIR", self.dir.join("tmp"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--events-backend",
                "none",
                "--cgroup-manager",
                "cgroupfs",
            ]);
        cmd
    }
}

// ---------------------------------------------------------------------------
// oras

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oras_pushes_a_referrer_and_finds_it_through_the_referrers_api() {
    let work = tempfile::tempdir().expect("temporary directory");
    let python = Tool::find("python3", "Debian's python3 (with the PyPI package oras)");
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oras_helper.py");
    let oras = |args: &[&dyn AsRef<OsStr>]| {
        let mut cmd = python.command();
        cmd.arg(&helper);
        for a in args {
            cmd.arg(a);
        }
        cmd
    };
    let image = build_image(&work.path().join("image"), 16 << 10).await;
    let server = TestServer::start().await;
    let http = http();
    let host = server.host();
    let subject = push(&http, &server.url, &image, "interop/oras", "v1").await;
    let (_, subject_manifest) = image.layout.manifest(image.tag);
    const ARTIFACT_TYPE: &str = "application/vnd.slipway.test.report.v1+json";

    let report = work.path().join("report.json");
    let content = format!("{{\"image\": \"{subject}\", \"verdict\": \"fine\"}}\n");
    std::fs::write(&report, &content).expect("write the artifact");
    let size = subject_manifest.len().to_string();
    let pushed = helper_json(
        &run(&mut oras(&[
            &"push",
            &host,
            &"interop/oras:report",
            &report,
            &"--artifact-type",
            &ARTIFACT_TYPE,
            &"--subject-digest",
            &subject,
            &"--subject-size",
            &size,
            &"--subject-media-type",
            &OCI_MANIFEST,
        ]))
        .await,
    );
    assert_eq!(pushed["status"], 201, "oras push: {pushed:#}");
    let artifact = pushed["manifest_digest"]
        .as_str()
        .expect("manifest digest")
        .to_owned();
    assert_eq!(
        pushed["docker_content_digest"],
        artifact.as_str(),
        "oras push: {pushed:#}"
    );
    assert_eq!(
        pushed["oci_subject"],
        subject.as_str(),
        "the push answered no OCI-Subject: {pushed:#}"
    );

    let outdir = work.path().join("pulled");
    let pulled = helper_json(
        &run(&mut oras(&[
            &"pull",
            &host,
            &"interop/oras:report",
            &outdir,
        ]))
        .await,
    );
    assert_eq!(
        pulled["manifest"]["subject"]["digest"],
        subject.as_str(),
        "oras pull: {pulled:#}"
    );
    let got = std::fs::read_to_string(outdir.join("report.json")).expect("oras pulled report.json");
    assert_eq!(
        got, content,
        "the artifact oras pulled back differs from the one it pushed"
    );

    // The referrers API, asked directly...
    let url = format!("{}/v2/interop/oras/referrers/{subject}", server.url);
    let resp = http.get(&url).send().await.expect("GET referrers");
    assert_eq!(resp.status(), StatusCode::OK, "GET {url}");
    let content_type = header(&resp, "content-type");
    assert_eq!(content_type.as_deref(), Some(OCI_INDEX), "GET {url}");
    let index: Value = resp.json().await.expect("referrers index JSON");
    let expected = serde_json::json!([{
        "mediaType": OCI_MANIFEST,
        "digest": artifact,
        "size": pushed["manifest_size"],
        "artifactType": ARTIFACT_TYPE,
        "annotations": {"org.slipway.test": "referrer"},
    }]);
    assert_eq!(index["schemaVersion"], 2, "referrers index: {index:#}");
    assert_eq!(index["manifests"], expected, "referrers index: {index:#}");

    // ...and through oras's own HTTP path, with and without a filter.
    let found =
        helper_json(&run(&mut oras(&[&"referrers", &host, &"interop/oras", &subject])).await);
    assert_eq!(found["status"], 200, "oras referrers: {found:#}");
    assert_eq!(
        found["body"]["manifests"], expected,
        "oras referrers: {found:#}"
    );
    let filtered = helper_json(
        &run(&mut oras(&[
            &"referrers",
            &host,
            &"interop/oras",
            &subject,
            &"--artifact-type",
            &ARTIFACT_TYPE,
        ]))
        .await,
    );
    assert_eq!(
        filtered["body"]["manifests"], expected,
        "oras referrers, filtered: {filtered:#}"
    );
    assert_eq!(
        filtered["filters_applied"], "artifactType",
        "oras referrers, filtered: {filtered:#}"
    );
    let other = helper_json(
        &run(&mut oras(&[
            &"referrers",
            &host,
            &"interop/oras",
            &subject,
            &"--artifact-type",
            &"application/x-other",
        ]))
        .await,
    );
    assert_eq!(
        other["body"]["manifests"],
        serde_json::json!([]),
        "oras referrers, other type: {other:#}"
    );

    // The artifact is not a referrer of itself.
    let none = helper_json(
        &run(&mut oras(&[
            &"referrers",
            &host,
            &"interop/oras",
            &artifact,
        ]))
        .await,
    );
    assert_eq!(
        none["status"], 200,
        "oras referrers of the artifact: {none:#}"
    );
    assert_eq!(
        none["body"]["manifests"],
        serde_json::json!([]),
        "oras referrers of the artifact: {none:#}"
    );
}

/// The JSON object on the helper's last line of output.
fn helper_json(stdout: &str) -> Value {
    json(
        stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or(""),
    )
}

// ---------------------------------------------------------------------------
// Clients as subprocesses

/// A client program found on `PATH`.
struct Tool {
    path: PathBuf,
}

impl Tool {
    /// Finds `name` on `PATH`, or fails the test saying where it comes from.
    fn find(name: &str, comes_from: &str) -> Tool {
        let found = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| is_executable(p))
        });
        match found {
            Some(path) => Tool { path },
            None => panic!(
                "{name} is not installed (not found on PATH); it comes from {comes_from}. \
                 ./conformance/test.sh installs everything the tests need."
            ),
        }
    }

    /// A command with no standard input, killed if the test drops it.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.stdin(Stdio::null())
            .kill_on_drop(true)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost");
        cmd
    }
}

/// Fails the test unless it runs as root, which `what` needs (CI runs as root).
fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "{what} needs root, and this test runs as uid {euid}; run the suite as root, as CI does \
         (./conformance/test.sh)"
    );
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs `cmd` and returns its standard output; fails the test, with the
/// command and all it printed, unless it succeeds.
async fn run(cmd: &mut Command) -> String {
    let out = output(cmd).await;
    if !out.status.success() {
        panic!(
            "`{}` failed ({}).\nIts standard output:\n{}\nIts standard error:\n{}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout)
        .unwrap_or_else(|e| panic!("`{}` printed something other than UTF-8: {e}", show(cmd)))
}

/// Runs `cmd`, which must fail, and returns its standard error.
async fn run_failing(cmd: &mut Command) -> String {
    let out = output(cmd).await;
    assert!(
        !out.status.success(),
        "`{}` succeeded but should have failed; it printed:\n{}",
        show(cmd),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `cmd` to its end under `COMMAND_DEADLINE`.
async fn output(cmd: &mut Command) -> std::process::Output {
    match tokio::time::timeout(COMMAND_DEADLINE, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("`{}` could not be run: {e}", show(cmd)),
        Err(_) => panic!(
            "`{}` did not finish within {COMMAND_DEADLINE:?}, so it was killed",
            show(cmd)
        ),
    }
}

fn show(cmd: &Command) -> String {
    let cmd = cmd.as_std();
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("expected JSON ({e}), got:\n{text}"))
}

// ---------------------------------------------------------------------------
// Test images

/// A test image built with umoci in an OCI layout.
struct Image {
    layout: Layout,
    tag: &'static str,
    /// Every file put in the image: its path inside, without the leading
    /// slash, and its content.
    files: Vec<(&'static str, Vec<u8>)>,
}

impl Image {
    /// `oci:<layout>:<tag>`, as skopeo names it.
    fn reference(&self) -> String {
        format!("oci:{}:{}", self.layout.0.display(), self.tag)
    }

    /// Tags, as `tag`, a variant of the image: the same layers under another
    /// config (a label), so another manifest. Returns `tag`.
    async fn variant(&self, tag: &'static str) -> &'static str {
        let umoci = Tool::find("umoci", "the Debian package umoci");
        run(umoci
            .command()
            .args(["config", "--image"])
            .arg(format!("{}:{}", self.layout.0.display(), self.tag))
            .args(["--tag", tag, "--config.label"])
            .arg(format!("org.slipway.variant={tag}")))
        .await;
        tag
    }
}

/// Builds an image in `work` with three layers, one per file: `random_len`
/// random bytes at /data/random.bin, then /hello.txt, then /etc/slipway/motd
/// — each with a fresh nonce, so no two images share a layer.
async fn build_image(work: &Path, random_len: usize) -> Image {
    let umoci = Tool::find("umoci", "the Debian package umoci");
    let src = work.join("src");
    std::fs::create_dir_all(&src).expect("create the image's source directory");
    let mut random = vec![0u8; random_len];
    rand::rng().fill_bytes(&mut random);
    let nonce = hex::encode(&random[..8.min(random_len)]);
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
    const TAG: &str = "v1";
    let image = format!("{}:{TAG}", layout.0.display());
    run(umoci.command().args(["init", "--layout"]).arg(&layout.0)).await;
    run(umoci.command().args(["new", "--image", &image])).await;
    for (i, (path, content)) in files.iter().enumerate() {
        let file = src.join(format!("file-{i}"));
        std::fs::write(&file, content).expect("write a file for the image");
        run(umoci
            .command()
            .args(["insert", "--image", &image])
            .arg(&file)
            .arg(format!("/{path}")))
        .await;
    }
    // Drops the manifests and configs of the intermediate images.
    run(umoci.command().args(["gc", "--layout"]).arg(&layout.0)).await;
    Image {
        layout,
        tag: TAG,
        files,
    }
}

/// An OCI image layout on disk.
struct Layout(PathBuf);

#[derive(Debug, Clone)]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
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
    /// The descriptor and bytes of the manifest tagged `tag` in index.json.
    fn manifest(&self, tag: &str) -> (Descriptor, Vec<u8>) {
        let index_path = self.0.join("index.json");
        let index = json(
            &std::fs::read_to_string(&index_path)
                .unwrap_or_else(|e| panic!("read {}: {e}", index_path.display())),
        );
        let desc = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .map(Descriptor::from_json)
            .unwrap_or_else(|| {
                panic!(
                    "{} has no manifest tagged {tag}: {index:#}",
                    index_path.display()
                )
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
    fn blob(&self, digest: &str) -> Vec<u8> {
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
fn referenced_blobs(manifest: &[u8]) -> Vec<Descriptor> {
    let m: Value = serde_json::from_slice(manifest).expect("manifest JSON");
    std::iter::once(&m["config"])
        .chain(m["layers"].as_array().into_iter().flatten())
        .map(Descriptor::from_json)
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

// ---------------------------------------------------------------------------
// The registry over plain HTTP

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client")
}

/// Pushes `image` to `repo:tag` (POST then PUT per blob, then the manifest);
/// returns the manifest's digest.
async fn push(http: &reqwest::Client, base: &str, image: &Image, repo: &str, tag: &str) -> String {
    let (desc, manifest) = image.layout.manifest(image.tag);
    for blob in referenced_blobs(&manifest) {
        let bytes = image.layout.blob(&blob.digest);
        let url = format!("{base}/v2/{repo}/blobs/uploads/");
        let resp = http.post(&url).send().await.expect("POST an upload");
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "POST {url}");
        let location =
            header(&resp, "location").unwrap_or_else(|| panic!("POST {url} answered no Location"));
        let location = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={}", blob.digest);
        let resp = http.put(&url).body(bytes).send().await.expect("PUT a blob");
        assert_eq!(resp.status(), StatusCode::CREATED, "PUT {url}");
    }
    let url = format!("{base}/v2/{repo}/manifests/{tag}");
    let resp = http
        .put(&url)
        .header("content-type", &desc.media_type)
        .body(manifest)
        .send()
        .await
        .expect("PUT the manifest");
    assert_eq!(resp.status(), StatusCode::CREATED, "PUT {url}");
    desc.digest
}

/// The `Docker-Content-Digest` and bytes of a manifest.
async fn get_manifest(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
) -> (String, Vec<u8>) {
    let url = format!("{base}/v2/{repo}/manifests/{reference}");
    let resp = http
        .get(&url)
        .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .expect("GET a manifest");
    assert_eq!(resp.status(), StatusCode::OK, "GET {url}");
    let digest = header(&resp, "docker-content-digest")
        .unwrap_or_else(|| panic!("GET {url} answered no Docker-Content-Digest"));
    let bytes = resp.bytes().await.expect("manifest body").to_vec();
    assert_eq!(
        sha256(&bytes),
        digest,
        "GET {url}: the body does not hash to Docker-Content-Digest"
    );
    (digest, bytes.to_vec())
}

async fn manifest_status(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
) -> StatusCode {
    let url = format!("{base}/v2/{repo}/manifests/{reference}");
    let resp = http
        .get(&url)
        .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .expect("GET a manifest");
    resp.status()
}

/// A blob's bytes, checked against its digest.
async fn get_blob(http: &reqwest::Client, base: &str, repo: &str, digest: &str) -> Vec<u8> {
    let url = format!("{base}/v2/{repo}/blobs/{digest}");
    let resp = http.get(&url).send().await.expect("GET a blob");
    assert_eq!(resp.status(), StatusCode::OK, "GET {url}");
    let bytes = resp.bytes().await.expect("blob body").to_vec();
    assert_eq!(
        sha256(&bytes),
        digest,
        "GET {url}: the body does not hash to the digest"
    );
    bytes
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
