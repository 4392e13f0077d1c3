//! Real clients against an in-process Slipway, run as subprocesses, with
//! Slipway's projects and token authentication as a cluster meets them: the
//! public project `tool-interop` (anyone pulls, the admin pushes) and the
//! private `tool-hidden` (a pull-only robot pulls).
//!
//! - skopeo: a three-layer image (one layer of 4 MiB of random bytes) copied
//!   in from an OCI layout with the admin's credentials and back out
//!   anonymously to another layout, byte for byte; `inspect`, `list-tags`,
//!   and `delete`, which needs credentials.
//! - containerd's `ctr`, the kubelet's path: a private containerd daemon
//!   pulls anonymously by tag (`--plain-http`) and by digest (through a
//!   `hosts.toml`, as a cluster is configured), and from the private project
//!   with a robot's credentials (an image pull secret); it unpacks, and the
//!   mounted image holds the files that were put in it.
//! - podman: pulls from the private project with a robot's credentials,
//!   retags, pushes into the public project as the admin, and pulls that
//!   back anonymously.
//! - oras, the Python SDK (driven by `conformance/tests/oras_helper.py`):
//!   pushes, as the admin, an artifact whose `subject` is an image; pulls it
//!   back and finds it through the referrers API.
//!
//! Test images are built with umoci from fresh random bytes (see `image`),
//! never fetched. Apart from skopeo's, the tests put images into the registry
//! over plain HTTP (see `registry`), so each needs only its own client. A
//! missing tool fails the test with a sentence naming where it comes from
//! (`./conformance/test.sh` installs them all). Every command runs under a
//! deadline (see `tools`); waits poll with a deadline, with no fixed sleeps.

pub(crate) mod image;
mod registry;
pub(crate) mod tools;

use std::path::Path;
use std::time::Instant;

use reqwest::StatusCode;
use serde_json::{Value, json};

use image::{Image, Layout, referenced_blobs};
use registry::{OCI_INDEX, OCI_MANIFEST, PRIVATE, PUBLIC, Registry};
use tools::{Containerd, Mounted, Podman, Skopeo, Tool, require_root, run, run_failing};

// ---------------------------------------------------------------------------
// skopeo

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_a_multi_layer_image_in_and_out_byte_for_byte() {
    let started = Instant::now();
    let work = tempfile::tempdir().expect("temporary directory");
    let skopeo = Skopeo::find(work.path());
    let image = Image::build(&work.path().join("in"), 4 << 20).await;
    let registry = Registry::start().await;
    let admin = registry.admin().joined();

    let (desc, manifest) = image.manifest();
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

    let remote = format!("docker://{}/{PUBLIC}/skopeo:v1", registry.host());
    let copy_in = [
        "copy",
        "--dest-tls-verify=false",
        &image.reference(),
        &remote,
    ];
    let err = run_failing(skopeo.cmd(copy_in)).await;
    assert!(
        wants_credentials(&err),
        "skopeo copy without credentials should be refused for want of them; it said:\n{err}"
    );
    run(skopeo.cmd(copy_in).args(["--dest-creds", &admin])).await;
    let (digest, stored) = registry.manifest(&format!("{PUBLIC}/skopeo"), "v1").await;
    assert_eq!(
        digest, desc.digest,
        "the registry names the copied manifest by another digest"
    );
    assert!(
        stored == manifest,
        "the registry holds other manifest bytes than skopeo copied in"
    );

    // Out again, anonymously: the project is public.
    let out = Layout(work.path().join("out"));
    run(skopeo.cmd([
        "copy",
        "--src-tls-verify=false",
        &remote,
        &out.reference("v1"),
    ]))
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
        "interop skopeo copy: {} blobs in and out in {:?}",
        blobs.len(),
        started.elapsed()
    );
}

/// A tool's project nearly at its quota: one image in `tool-full/a`, room
/// for 64 KiB more. skopeo copies the same image into `tool-full/b` — it
/// does not know the registry has its blobs (they were pushed by another
/// client), so it uploads every one again (POST, PATCH, PUT) — and the
/// copy must succeed: those bytes are blobs the project already holds, and
/// add nothing to its usage. A copy to `tool-full/c` (skopeo now knows
/// where the blobs are, and mounts them) succeeds too; a different image of
/// 4 MiB is refused for quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_an_image_again_into_a_nearly_full_project() {
    let work = tempfile::tempdir().expect("temporary directory");
    let skopeo = Skopeo::find(work.path());
    let image = Image::build(&work.path().join("in"), 4 << 20).await;
    let other = Image::build(&work.path().join("other"), 4 << 20).await;
    let registry = Registry::start().await;
    let meta = &registry.server.state.meta;
    registry.server.create_project("tool-full", true).await;
    let digest = registry.push(&image, "tool-full/a", "v1").await;
    let used = meta.usage("tool-full").await.unwrap().unwrap().used_bytes;
    assert!(used > 4 << 20, "the image is counted: {used}");
    meta.set_quota("tool-full", Some(used + (64 << 10)))
        .await
        .unwrap();
    registry.server.state.auth.forget_project("tool-full");
    let admin = registry.admin().joined();
    for repo in ["b", "c"] {
        let remote = format!("docker://{}/tool-full/{repo}:v1", registry.host());
        run(skopeo.cmd([
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &admin,
            &image.reference(),
            &remote,
        ]))
        .await;
        let (copied, _) = registry.manifest(&format!("tool-full/{repo}"), "v1").await;
        assert_eq!(copied, digest, "tool-full/{repo}:v1");
        let u = meta.usage("tool-full").await.unwrap().unwrap();
        assert_eq!(
            (u.used_bytes, u.reserved_bytes),
            (used, 0),
            "the copy into tool-full/{repo} adds nothing"
        );
    }
    let err = run_failing(skopeo.cmd([
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &admin,
        &other.reference(),
        &format!("docker://{}/tool-full/d:v1", registry.host()),
    ]))
    .await;
    assert!(
        err.contains("quota exceeded for project tool-full"),
        "new bytes over the quota are refused with the quota's sentence; skopeo said:\n{err}"
    );
    assert_eq!(
        meta.usage("tool-full").await.unwrap().unwrap().used_bytes,
        used
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_inspects_lists_tags_and_deletes() {
    let work = tempfile::tempdir().expect("temporary directory");
    let skopeo = Skopeo::find(work.path());
    let image = Image::build(work.path(), 64 << 10).await;
    let other = image.variant("other").await;
    let registry = Registry::start().await;
    let admin = registry.admin().joined();
    let name = format!("{PUBLIC}/tags");
    let repo = format!("docker://{}/{name}", registry.host());
    let (desc, manifest) = image.manifest();
    let (other_desc, _) = image.layout.manifest(other);

    for (source, tag) in [
        (image.tag, "v1"),
        (image.tag, "v2"),
        (image.tag, "latest"),
        (other, "keep"),
    ] {
        let source = image.layout.reference(source);
        let dest = format!("{repo}:{tag}");
        run(skopeo.cmd([
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &admin,
            &source,
            &dest,
        ]))
        .await;
    }

    let shown = inspect(&skopeo, &format!("{repo}:v1")).await;
    assert_eq!(
        shown["Digest"],
        desc.digest.as_str(),
        "skopeo inspect: {shown:#}"
    );
    let layers: Vec<String> = referenced_blobs(&manifest)[1..]
        .iter()
        .map(|b| b.digest.clone())
        .collect();
    assert_eq!(shown["Layers"], json!(layers), "skopeo inspect: {shown:#}");
    let raw = run(skopeo.cmd([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("{repo}:latest"),
    ]))
    .await;
    assert!(
        raw.as_bytes() == manifest,
        "skopeo inspect --raw shows other bytes than were pushed:\n{raw}"
    );

    assert_eq!(
        list_tags(&skopeo, &repo).await,
        ["keep", "latest", "v1", "v2"]
    );

    // Deleting needs credentials. Through a tag it deletes the manifest, and
    // with it every tag that named it; the other image stays.
    let delete = ["delete", "--tls-verify=false", &format!("{repo}:v1")];
    let err = run_failing(skopeo.cmd(delete)).await;
    assert!(
        wants_credentials(&err),
        "skopeo delete without credentials should be refused for want of them; it said:\n{err}"
    );
    assert_eq!(registry.manifest_status(&name, "v1").await, StatusCode::OK);
    run(skopeo.cmd(delete).args(["--creds", &admin])).await;
    for reference in [desc.digest.as_str(), "v1", "v2", "latest"] {
        assert_eq!(
            registry.manifest_status(&name, reference).await,
            StatusCode::NOT_FOUND,
            "the manifest is still served as {reference} after skopeo delete"
        );
    }
    let err =
        run_failing(skopeo.cmd(["inspect", "--tls-verify=false", &format!("{repo}:v1")])).await;
    assert!(
        err.contains("manifest unknown"),
        "skopeo inspect after the delete says:\n{err}"
    );
    assert_eq!(list_tags(&skopeo, &repo).await, ["keep"]);
    let shown = inspect(&skopeo, &format!("{repo}:keep")).await;
    assert_eq!(
        shown["Digest"],
        other_desc.digest.as_str(),
        "skopeo inspect: {shown:#}"
    );
}

/// `skopeo inspect`, anonymously.
async fn inspect(skopeo: &Skopeo, reference: &str) -> Value {
    json(&run(skopeo.cmd(["inspect", "--tls-verify=false", reference])).await)
}

/// `skopeo list-tags`, anonymously, sorted.
async fn list_tags(skopeo: &Skopeo, repo: &str) -> Vec<String> {
    let out = json(&run(skopeo.cmd(["list-tags", "--tls-verify=false", repo])).await);
    let mut tags: Vec<String> = serde_json::from_value(out["Tags"].clone())
        .unwrap_or_else(|e| panic!("skopeo list-tags printed no list of tags ({e}): {out:#}"));
    tags.sort();
    tags
}

// ---------------------------------------------------------------------------
// containerd

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_pulls_unpacks_and_mounts_images() {
    let started = Instant::now();
    require_root("containerd and ctr image mount");
    let work = tempfile::tempdir().expect("temporary directory");
    let image = Image::build(&work.path().join("public"), 256 << 10).await;
    let hidden = Image::build(&work.path().join("private"), 64 << 10).await;
    let registry = Registry::start().await;
    let digest = registry.push(&image, &format!("{PUBLIC}/ctr"), "v1").await;
    let hidden_digest = registry
        .push(&hidden, &format!("{PRIVATE}/ctr"), "v1")
        .await;
    let robot = registry.pull_robot(PRIVATE, "kubelet").await;
    let daemon = Containerd::start().await;
    let by_tag = format!("{}/{PUBLIC}/ctr:v1", registry.host());

    // Anonymously by tag, with ctr's own switch for plain HTTP; `pull` unpacks.
    let out = run(daemon.ctr(["image", "pull", "--plain-http", "--print-chainid", &by_tag])).await;
    assert!(
        out.contains("image chain ID: sha256:"),
        "ctr image pull did not unpack:\n{out}"
    );
    check_pulled(&daemon, &by_tag, &digest).await;

    // Anonymously by digest, through a hosts directory: how a cluster's
    // containerd is told that a registry speaks plain HTTP.
    let hosts = work.path().join("certs.d");
    let host_dir = hosts.join(registry.host());
    std::fs::create_dir_all(&host_dir).expect("create certs.d");
    let hosts_toml = format!(
        "server = \"{0}\"\n\n[host.\"{0}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        registry.server.url
    );
    std::fs::write(host_dir.join("hosts.toml"), hosts_toml).expect("write hosts.toml");
    let by_digest = format!("{}/{PUBLIC}/ctr@{digest}", registry.host());
    run(daemon
        .ctr(["image", "pull", "--hosts-dir"])
        .arg(&hosts)
        .arg(&by_digest))
    .await;
    check_pulled(&daemon, &by_digest, &digest).await;

    // From the private project: refused without credentials, pulled with a
    // robot's (what an image pull secret gives the kubelet).
    let private = format!("{}/{PRIVATE}/ctr:v1", registry.host());
    let err = run_failing(daemon.ctr(["image", "pull", "--plain-http", &private])).await;
    assert!(
        wants_credentials(&err),
        "ctr pulling from a private project without credentials should be refused for want of \
         them; it said:\n{err}"
    );
    run(daemon.ctr([
        "image",
        "pull",
        "--plain-http",
        "--user",
        &robot.joined(),
        &private,
    ]))
    .await;
    check_pulled(&daemon, &private, &hidden_digest).await;

    // The unpacked images hold the files that were put in them.
    for (reference, image) in [(&by_tag, &image), (&private, &hidden)] {
        let target = work.path().join("rootfs");
        std::fs::create_dir_all(&target).expect("create mount point");
        run(daemon.ctr(["image", "mount"]).arg(reference).arg(&target)).await;
        let mounted = Mounted(target.clone());
        check_files(
            image,
            &target,
            &format!("the image {reference} mounted by ctr"),
        );
        run(daemon.ctr(["image", "unmount", "--rm"]).arg(&target)).await;
        drop(mounted);
    }
    eprintln!(
        "interop ctr: pulled, unpacked and mounted in {:?}",
        started.elapsed()
    );
}

/// containerd's push (also BuildKit's and nerdctl's): pull an image of a
/// public project anonymously, retag it, and push it back with the admin's
/// credentials. containerd asks for credentials only when a request is
/// refused, and cannot send a manifest body a second time: had its blob
/// `HEAD`s been answered anonymously, its first challenge would come on the
/// manifest `PUT`, and it would wait forever for a retry it cannot make.
/// The push must end, under the command deadline, with the new tag on the
/// same digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_pushes_a_retagged_image_back() {
    require_root("containerd");
    let work = tempfile::tempdir().expect("temporary directory");
    let image = Image::build(&work.path().join("public"), 128 << 10).await;
    let registry = Registry::start().await;
    let digest = registry
        .push(&image, &format!("{PUBLIC}/ctr-push"), "v1")
        .await;
    let daemon = Containerd::start().await;
    let source = format!("{}/{PUBLIC}/ctr-push:v1", registry.host());
    run(daemon.ctr(["image", "pull", "--plain-http", &source])).await;
    for (repo, tag) in [("ctr-push", "retagged"), ("ctr-push-copy", "v1")] {
        let target = format!("{}/{PUBLIC}/{repo}:{tag}", registry.host());
        run(daemon.ctr(["image", "tag", &source, &target])).await;
        run(daemon.ctr([
            "image",
            "push",
            "--plain-http",
            "--user",
            &registry.admin().joined(),
            &target,
        ]))
        .await;
        let (pushed, _) = registry.manifest(&format!("{PUBLIC}/{repo}"), tag).await;
        assert_eq!(pushed, digest, "{target} names the image that was pulled");
    }
}

/// `ctr image check` shows `reference` whole, unpacked, as `digest`.
pub(crate) async fn check_pulled(daemon: &Containerd, reference: &str, digest: &str) {
    let listed = run(daemon.ctr(["image", "check"])).await;
    let line = listed
        .lines()
        .find(|l| l.starts_with(&format!("{reference} ")))
        .unwrap_or_else(|| panic!("ctr image check does not list {reference}:\n{listed}"));
    assert!(
        line.contains(digest),
        "ctr holds {reference} under another digest than {digest}:\n{line}"
    );
    assert!(
        line.contains("complete (4/4)") && line.trim_end().ends_with("true"),
        "ctr holds {reference} incomplete or not unpacked:\n{listed}"
    );
}

/// Every file put in `image` is under `root` with the same content.
fn check_files(image: &Image, root: &Path, what: &str) {
    for (path, content) in &image.files {
        let found = std::fs::read(root.join(path))
            .unwrap_or_else(|e| panic!("{what} has no readable /{path}: {e}"));
        assert!(
            &found == content,
            "/{path} in {what} differs from what was put in"
        );
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
    let image = Image::build(&work.path().join("image"), 256 << 10).await;
    let registry = Registry::start().await;
    let (desc, manifest) = image.manifest();
    let config = referenced_blobs(&manifest)[0].digest.clone();
    registry
        .push(&image, &format!("{PRIVATE}/podman"), "v1")
        .await;
    let robot = registry.pull_robot(PRIVATE, "podman").await;
    let admin = registry.admin().joined();
    let src = format!("{}/{PRIVATE}/podman:v1", registry.host());
    let dst = format!("{}/{PUBLIC}/podman:v2", registry.host());
    let policy = podman.policy.clone();
    let pull = |reference: &str| {
        let mut cmd = podman.cmd(["pull", "--tls-verify=false", "--signature-policy"]);
        cmd.arg(&policy).arg(reference);
        cmd
    };

    let err = run_failing(pull(&src)).await;
    assert!(
        wants_credentials(&err),
        "podman pulling from a private project without credentials should be refused for want \
         of them; it said:\n{err}"
    );
    run(pull(&src).args(["--creds", &robot.joined()])).await;
    let id = run(podman.cmd(["image", "inspect", "--format", "{{.Id}} {{.Digest}}", &src])).await;
    assert_eq!(
        id.trim(),
        format!("{} {}", config.trim_start_matches("sha256:"), desc.digest),
        "podman holds the pulled image under another id or digest"
    );

    run(podman.cmd(["tag", &src, &dst])).await;
    run(podman
        .cmd([
            "push",
            "--tls-verify=false",
            "--creds",
            &admin,
            "--signature-policy",
        ])
        .arg(&policy)
        .arg(&dst))
    .await;

    // Whatever podman chose to send, the public repository holds a whole
    // image with the same config.
    let dst_repo = format!("{PUBLIC}/podman");
    let (_, pushed) = registry.manifest(&dst_repo, "v2").await;
    let blobs = referenced_blobs(&pushed);
    assert_eq!(blobs[0].digest, config, "podman pushed another config");
    assert_eq!(blobs.len(), 4, "podman pushed another number of layers");
    for blob in &blobs {
        let got = registry.blob(&dst_repo, &blob.digest).await;
        assert_eq!(
            got.len() as u64,
            blob.size,
            "blob {} has another size than its descriptor",
            blob.digest
        );
    }

    // Anyone can pull it from there, with the same files in it.
    run(podman.cmd(["rmi", "--all", "--force"])).await;
    run(pull(&dst)).await;
    let root = run(podman.cmd(["image", "mount", &dst])).await;
    check_files(
        &image,
        Path::new(root.trim()),
        "the image podman pulled back",
    );
    run(podman.cmd(["image", "unmount", &dst])).await;
    eprintln!(
        "interop podman: pull, push, pull in {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// every client, with a robot's credentials and with the admin's

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_pulls_a_private_image_with_a_robot_and_with_the_admin() {
    require_root("containerd and podman");
    let work = tempfile::tempdir().expect("temporary directory");
    let image = Image::build(&work.path().join("image"), 64 << 10).await;
    let registry = Registry::start().await;
    let repo = format!("{PRIVATE}/creds");
    let digest = registry.push(&image, &repo, "v1").await;
    let robot = registry.pull_robot(PRIVATE, "everyone").await.joined();
    let admin = registry.admin().joined();
    let reference = format!("{}/{repo}:v1", registry.host());

    // skopeo
    let skopeo = Skopeo::find(work.path());
    for creds in [&robot, &admin] {
        let out = run(skopeo.cmd([
            "inspect",
            "--tls-verify=false",
            "--creds",
            creds,
            &format!("docker://{reference}"),
        ]))
        .await;
        assert_eq!(
            json(&out)["Digest"],
            digest.as_str(),
            "skopeo with {creds:.20}…"
        );
    }
    let err = run_failing(skopeo.cmd([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]))
    .await;
    assert!(wants_credentials(&err), "skopeo without credentials: {err}");

    // containerd (the kubelet's path)
    let daemon = Containerd::start().await;
    for creds in [&robot, &admin] {
        run(daemon.ctr(["image", "pull", "--plain-http", "--user", creds, &reference])).await;
        check_pulled(&daemon, &reference, &digest).await;
        run(daemon.ctr(["image", "rm", &reference])).await;
    }
    drop(daemon);

    // podman
    let podman = Podman::find(work.path());
    let policy = podman.policy.clone();
    for creds in [&robot, &admin] {
        run(podman
            .cmd([
                "pull",
                "--tls-verify=false",
                "--creds",
                creds,
                "--signature-policy",
            ])
            .arg(&policy)
            .arg(&reference))
        .await;
        let got =
            run(podman.cmd(["image", "inspect", "--format", "{{.Digest}}", &reference])).await;
        assert_eq!(got.trim(), digest, "podman with {creds:.20}…");
        run(podman.cmd(["rmi", "--all", "--force"])).await;
    }
}

// ---------------------------------------------------------------------------
// oras

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oras_pushes_a_referrer_and_finds_it_through_the_referrers_api() {
    const ARTIFACT_TYPE: &str = "application/vnd.slipway.test.report.v1+json";
    let work = tempfile::tempdir().expect("temporary directory");
    let python = Tool::find("python3", "Debian's python3 (with the PyPI package oras)");
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oras_helper.py");
    let image = Image::build(&work.path().join("image"), 16 << 10).await;
    let registry = Registry::start().await;
    let host = registry.host();
    let repo = format!("{PUBLIC}/oras");
    let subject = registry.push(&image, &repo, "v1").await;
    let (_, subject_manifest) = image.manifest();
    let oras = |args: &[&str]| {
        let mut cmd = python.cmd([&helper]);
        cmd.args(args)
            .env("ORAS_HELPER_PASSWORD", &registry.server.admin_password);
        cmd
    };

    let report = work.path().join("report.json");
    let content = format!("{{\"image\": \"{subject}\", \"verdict\": \"fine\"}}\n");
    std::fs::write(&report, &content).expect("write the artifact");
    let push = [
        "push",
        &host,
        &format!("{repo}:report"),
        report.to_str().expect("UTF-8 path"),
        "--artifact-type",
        ARTIFACT_TYPE,
        "--subject-digest",
        &subject,
        "--subject-size",
        &subject_manifest.len().to_string(),
        "--subject-media-type",
        OCI_MANIFEST,
    ];
    let err = run_failing(oras(&push)).await;
    assert!(
        wants_credentials(&err),
        "oras push without credentials should be refused for want of them; it said:\n{err}"
    );
    let pushed = helper_json(&run(oras(&push).args(["--username", "admin"])).await);
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

    // Anonymously, as everything below: the project is public.
    let outdir = work.path().join("pulled");
    let pulled =
        helper_json(&run(oras(&["pull", &host, &format!("{repo}:report")]).arg(&outdir)).await);
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
    let expected = json!([{
        "mediaType": OCI_MANIFEST,
        "digest": artifact,
        "size": pushed["manifest_size"],
        "artifactType": ARTIFACT_TYPE,
        "annotations": {"org.slipway.test": "referrer"},
    }]);
    let (status, content_type, index) = registry.referrers(&repo, &subject).await;
    assert_eq!(status, StatusCode::OK, "GET referrers: {index:#}");
    assert_eq!(content_type.as_deref(), Some(OCI_INDEX), "GET referrers");
    assert_eq!(index["schemaVersion"], 2, "referrers index: {index:#}");
    assert_eq!(index["manifests"], expected, "referrers index: {index:#}");

    // ...and through oras's own HTTP path, with and without a filter.
    let found = helper_json(&run(oras(&["referrers", &host, &repo, &subject])).await);
    assert_eq!(found["status"], 200, "oras referrers: {found:#}");
    assert_eq!(
        found["body"]["manifests"], expected,
        "oras referrers: {found:#}"
    );
    let filter = ["referrers", &host, &repo, &subject, "--artifact-type"];
    let filtered = helper_json(&run(oras(&filter).arg(ARTIFACT_TYPE)).await);
    assert_eq!(
        filtered["body"]["manifests"], expected,
        "oras referrers, filtered: {filtered:#}"
    );
    assert_eq!(
        filtered["filters_applied"], "artifactType",
        "oras referrers, filtered: {filtered:#}"
    );
    let other = helper_json(&run(oras(&filter).arg("application/x-other")).await);
    assert_eq!(
        other["body"]["manifests"],
        json!([]),
        "oras referrers, other type: {other:#}"
    );

    // The artifact is not a referrer of itself.
    let none = helper_json(&run(oras(&["referrers", &host, &repo, &artifact])).await);
    assert_eq!(
        none["status"], 200,
        "oras referrers of the artifact: {none:#}"
    );
    assert_eq!(
        none["body"]["manifests"],
        json!([]),
        "oras referrers of the artifact: {none:#}"
    );
}

/// Whether a client's error says the registry asked for credentials (a 401,
/// which containerd words as "may require authorization").
fn wants_credentials(err: &str) -> bool {
    let err = err.to_lowercase();
    [
        "401",
        "unauthorized",
        "authentication required",
        "may require authorization",
    ]
    .iter()
    .any(|s| err.contains(s))
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

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("expected JSON ({e}), got:\n{text}"))
}
