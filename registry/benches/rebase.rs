//! Fleet rebase benchmark (`cargo bench -p slipway-registry --bench rebase`).
//!
//! N synthetic buildpacks images (each: the run image's two layers, one
//! small layer of its own, a CNB-shaped config with the lifecycle label),
//! spread over projects and repositories on one server (SQLite +
//! filesystem), all built on `platform/run:bookworm` v1. Then:
//!
//! 1. v2 of the run image is pushed and the whole fleet is rebased with one
//!    `POST /api/v1/admin/rebase`: total seconds and images/s (target for
//!    10,000 images: under 10 s).
//! 2. v3 is pushed and the same images are rebased one by one over the
//!    distribution API, the way an external tool must: per image GET
//!    manifest, GET config, a mount of each run image layer into the
//!    image's repository (the manifest PUT is refused without them), PUT
//!    config (a monolithic `POST ?digest=`), PUT manifest — the surgery done
//!    client side with the same code, with `REBASE_BENCH_HTTP_CONCURRENCY`
//!    images in flight.
//!
//! Prints both and the ratio. Options (environment): `REBASE_BENCH_IMAGES`
//! (default 10000), `REBASE_BENCH_PROJECTS` (100),
//! `REBASE_BENCH_HTTP_CONCURRENCY` (16), `REBASE_BENCH_FLEET_RUNS` (3: the
//! fleet rebase is run that many times, onto v2, v3, …, and the median is
//! reported), `REBASE_BENCH_HTTP` (1; 0 leaves out the one-by-one run and
//! the ratio, for quick runs while working on the fleet rebase). With
//! `RUST_LOG=slipway_registry=info` the server logs where each fleet
//! rebase's time went.

use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use slipway_builder::rebase::{AppImage, NewBase, Outcome};
use slipway_registry::testing::TestServer;
use slipway_storage::meta::NewManifest;
use slipway_storage::{Digest, RepoName};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

mod common;

use common::{digest, env_usize};

struct Run {
    digest: String,
    /// (digest, size, diff id)
    layers: Vec<(String, usize, String)>,
    config: Value,
}

/// Stores a blob and makes it visible in `repo` (as a finished upload).
async fn blob(server: &TestServer, repo: &RepoName, repo_id: i64, bytes: &[u8]) -> (String, usize) {
    let d: Digest = digest(bytes).parse().unwrap();
    let st = &server.state;
    st.meta.blob_claim(&d, bytes.len() as u64).await.unwrap();
    st.blobs
        .put(&d, Bytes::copy_from_slice(bytes))
        .await
        .unwrap();
    st.meta
        .blob_complete(None, repo_id, repo.project(), &d, bytes.len() as u64, false)
        .await
        .unwrap();
    (d.to_string(), bytes.len())
}

async fn manifest(
    server: &TestServer,
    repo: &RepoName,
    repo_id: i64,
    body: Vec<u8>,
    tag: &str,
) -> String {
    let parsed = slipway_registry::manifest::parse(Some(OCI_MANIFEST), &body).unwrap();
    let d: Digest = digest(&body).parse().unwrap();
    server
        .state
        .meta
        .manifest_put(
            repo,
            repo_id,
            &NewManifest {
                digest: d.clone(),
                media_type: parsed.media_type,
                body: Bytes::from(body),
                artifact_type: None,
                subject: None,
                annotations: None,
                refs: parsed.refs,
                tag: Some(tag.into()),
            },
        )
        .await
        .unwrap();
    d.to_string()
}

async fn push_run(server: &TestServer, version: &str) -> Run {
    let repo = RepoName::parse("platform/run").unwrap();
    let id = server.state.meta.ensure_repo(&repo).await.unwrap();
    let mut layers = Vec::new();
    for part in ["os", "certs"] {
        let bytes = format!("run {version} {part} ").repeat(100).into_bytes();
        let (d, size) = blob(server, &repo, id, &bytes).await;
        layers.push((d, size, digest(format!("diff {version} {part}").as_bytes())));
    }
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {
            "io.buildpacks.base.distro.name": "debian",
            "io.buildpacks.base.distro.version": "12",
            "io.buildpacks.base.id": format!("run {version}"),
        }},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.2.clone()).collect::<Vec<_>>()},
        "history": layers.iter().map(|_| json!({"created_by": "run"})).collect::<Vec<_>>(),
    });
    let cb = config.to_string().into_bytes();
    let (cd, cs) = blob(server, &repo, id, &cb).await;
    let body = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": cs},
        "layers": layers.iter().map(|l| json!({"mediaType": LAYER, "digest": l.0, "size": l.1})).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    let digest = manifest(server, &repo, id, body, "bookworm").await;
    Run {
        digest,
        layers,
        config,
    }
}

fn repo_of(i: usize, projects: usize) -> String {
    format!("tool-{}/app{}", i % projects, i / projects)
}

async fn push_app(server: &TestServer, run: &Run, i: usize, projects: usize) {
    let repo = RepoName::parse(&repo_of(i, projects)).unwrap();
    let st = &server.state;
    let id = st.meta.ensure_repo(&repo).await.unwrap();
    let from = RepoName::parse("platform/run").unwrap();
    for l in &run.layers {
        let d: Digest = l.0.parse().unwrap();
        st.meta
            .mount_blob(id, repo.project(), &from, &d)
            .await
            .unwrap()
            .unwrap();
    }
    let own = format!("app {i} ").repeat(50).into_bytes();
    let (od, os) = blob(server, &repo, id, &own).await;
    let own_diff = digest(format!("diff app {i}").as_bytes());
    let mut config = run.config.clone();
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(json!(own_diff));
    config["history"]
        .as_array_mut()
        .unwrap()
        .push(json!({"created_by": "buildpacks:app"}));
    let lifecycle = json!({
        "app": [{"sha": own_diff}],
        "runImage": {"topLayer": run.layers.last().unwrap().2, "reference": run.digest, "image": "platform/run:bookworm"},
    });
    config["config"]["Labels"]["io.buildpacks.lifecycle.metadata"] = json!(lifecycle.to_string());
    config["config"]["Labels"]["io.buildpacks.project.metadata"] =
        json!(format!("{{\"app\":{i}}}"));
    let cb = config.to_string().into_bytes();
    let (cd, cs) = blob(server, &repo, id, &cb).await;
    let mut layers: Vec<Value> = run
        .layers
        .iter()
        .map(|l| json!({"mediaType": LAYER, "digest": l.0, "size": l.1}))
        .collect();
    layers.push(json!({"mediaType": LAYER, "digest": od, "size": os}));
    let body = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": cs},
        "layers": layers,
    })
    .to_string()
    .into_bytes();
    manifest(server, &repo, id, body, "latest").await;
}

/// What an external tool does for one image.
async fn rebase_over_http(
    http: &reqwest::Client,
    url: &str,
    auth: &str,
    base: &NewBase,
    repo: &str,
) {
    let r = http
        .get(format!("{url}/v2/{repo}/manifests/latest"))
        .header("authorization", auth)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let manifest = r.bytes().await.unwrap();
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    let r = http
        .get(format!(
            "{url}/v2/{repo}/blobs/{}",
            m["config"]["digest"].as_str().unwrap()
        ))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let config = r.bytes().await.unwrap();
    let app = AppImage {
        media_type: OCI_MANIFEST,
        manifest: &manifest,
        config: &config,
    };
    let Outcome::Rebased(new) = slipway_builder::rebase::rebase(&app, base, false).unwrap() else {
        panic!("{repo} is current already");
    };
    for l in &new.base_layers {
        let r = http
            .post(format!(
                "{url}/v2/{repo}/blobs/uploads/?mount={}&from=platform/run",
                l.digest
            ))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = http
        .post(format!(
            "{url}/v2/{repo}/blobs/uploads/?digest={}",
            new.config_digest
        ))
        .header("authorization", auth)
        .body(new.config.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .put(format!("{url}/v2/{repo}/manifests/latest"))
        .header("authorization", auth)
        .header("content-type", new.media_type.as_str())
        .body(new.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    rt.block_on(async {
        let images = env_usize("REBASE_BENCH_IMAGES", 10_000);
        let fleet_runs = env_usize("REBASE_BENCH_FLEET_RUNS", 3).max(1);
        let with_http = env_usize("REBASE_BENCH_HTTP", 1) != 0;
        let projects = env_usize("REBASE_BENCH_PROJECTS", 100).max(1);
        let http_concurrency = env_usize("REBASE_BENCH_HTTP_CONCURRENCY", 16).max(1);
        let server = TestServer::start_with(|c| {
            c.gc.interval_secs = 0;
            c.builds.workers = 0;
        })
        .await;
        server.create_project("platform", true).await;
        for p in 0..projects {
            server.create_project(&format!("tool-{p}"), true).await;
        }
        let t = Instant::now();
        let v1 = push_run(&server, "v1").await;
        futures::stream::iter(0..images)
            .map(|i| push_app(&server, &v1, i, projects))
            .buffer_unordered(8)
            .collect::<Vec<()>>()
            .await;
        eprintln!(
            "populated {images} images in {projects} projects in {:.1?}",
            t.elapsed()
        );

        let auth = {
            use base64::Engine;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(server.admin_creds())
            )
        };
        let http = reqwest::Client::new();

        // 1. The fleet rebase, server side, onto v2, v3, …
        let mut fleet_times = Vec::new();
        for run in 0..fleet_runs {
            let version = format!("v{}", run + 2);
            let vn = push_run(&server, &version).await;
            let t = Instant::now();
            let r = http
                .post(format!("{}/api/v1/admin/rebase", server.url))
                .header("authorization", &auth)
                .json(&json!({"run_image": "platform/run:bookworm"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let report: Value = r.json().await.unwrap();
            let took = t.elapsed().as_secs_f64();
            let rebased = report["rebased"].as_array().unwrap().len();
            assert_eq!(
                (
                    rebased,
                    report["skipped"].as_array().unwrap().len(),
                    report["failed"].as_array().unwrap().len()
                ),
                (images, 0, 0),
                "every image rebased"
            );
            assert_eq!(report["run_image_digest"], vn.digest.as_str());
            eprintln!("fleet rebase onto {version}: {took:.2} s");
            fleet_times.push(took);
        }
        let fleet = median(&mut fleet_times.clone());

        println!("| Measurement ({images} images, {projects} projects, SQLite + filesystem) | Figure |");
        println!("|---|--:|");
        println!(
            "| Fleet rebase, one admin API call, median of {fleet_runs} (target < 10 s) | {fleet:.2} s ({:.0} images/s; runs {}) |",
            images as f64 / fleet,
            fleet_times
                .iter()
                .map(|t| format!("{t:.2} s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !with_http {
            return;
        }

        // 2. One by one over HTTP, onto the next version.
        let next = push_run(&server, &format!("v{}", fleet_runs + 2)).await;
        let base = {
            let st = &server.state;
            let repo = RepoName::parse("platform/run").unwrap();
            let m = st
                .meta
                .manifest_by_tag(&repo, "bookworm")
                .await
                .unwrap()
                .unwrap();
            let mv: Value = serde_json::from_slice(&m.body).unwrap();
            let cd: Digest = mv["config"]["digest"].as_str().unwrap().parse().unwrap();
            let c = st.blobs.read_all(&cd).await.unwrap();
            NewBase::parse("platform/run:bookworm", m.digest.as_str(), &m.body, &c).unwrap()
        };
        assert_eq!(base.digest, next.digest);
        let t = Instant::now();
        futures::stream::iter(0..images)
            .map(|i| {
                let repo = repo_of(i, projects);
                let (http, url, auth, base) = (&http, &server.url, &auth, &base);
                async move { rebase_over_http(http, url, auth, base, &repo).await }
            })
            .buffer_unordered(http_concurrency)
            .collect::<Vec<()>>()
            .await;
        let one_by_one = t.elapsed().as_secs_f64();

        println!(
            "| One by one over HTTP ({http_concurrency} images in flight; GET manifest, GET config, {} mounts, PUT config, PUT manifest) | {one_by_one:.2} s ({:.0} images/s) |",
            base.layers().len(),
            images as f64 / one_by_one
        );
        println!(
            "| Ratio (one by one ÷ fleet) | {:.1}× |",
            one_by_one / fleet
        );
    });
}
