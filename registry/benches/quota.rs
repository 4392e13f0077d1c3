//! Quota and GC benchmarks (`cargo bench -p slipway-registry --bench quota`).
//!
//! 1. Quota check overhead: 1,000 small images pushed over HTTP into a
//!    project with a quota and into one without, in alternating batches on
//!    the same server; prints both rates and the ratio (target: the quota
//!    costs under 5 %).
//! 2. `usage recompute` and GC on SQLite with 100,000 blobs and 20,000
//!    manifests: prints the time of each.
//!
//! Options (environment): `QUOTA_BENCH_IMAGES` (default 1000),
//! `QUOTA_BENCH_BLOBS` (100000), `QUOTA_BENCH_MANIFESTS` (20000).

use std::time::{Duration, Instant};

use serde_json::json;
use slipway_registry::testing::TestServer;
use slipway_storage::meta::ManifestRef;
use slipway_storage::{Digest, Metadata, RepoName};

mod common;

use common::{digest, env_usize};

async fn push_image(http: &reqwest::Client, url: &str, auth: &str, repo: &str, i: usize) {
    let layer = format!("layer {repo} {i} ").repeat(64).into_bytes();
    let config = json!({"os": "linux", "architecture": "amd64", "i": i})
        .to_string()
        .into_bytes();
    for b in [&layer, &config] {
        let r = http
            .post(format!(
                "{url}/v2/{repo}/blobs/uploads/?digest={}",
                digest(b)
            ))
            .header("authorization", auth)
            .body(b.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len()}],
    });
    let r = http
        .put(format!("{url}/v2/{repo}/manifests/v{i}"))
        .header("authorization", auth)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

async fn quota_overhead(images: usize) -> (f64, f64) {
    let server = TestServer::start().await;
    server.create_project("tool-free", false).await;
    server.create_project("tool-quota", false).await;
    server
        .state
        .meta
        .set_quota("tool-quota", Some(1 << 40))
        .await
        .unwrap();
    server.state.auth.forget_project("tool-quota");
    let auth = {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(server.admin_creds())
        )
    };
    let http = reqwest::Client::new();
    // Warm up both paths.
    for i in 0..20 {
        push_image(&http, &server.url, &auth, "tool-free/warm", i).await;
        push_image(&http, &server.url, &auth, "tool-quota/warm", i).await;
    }
    let (mut free, mut quota) = (Duration::ZERO, Duration::ZERO);
    let batch = 50;
    let mut done = 0;
    let mut round = 0;
    while done < images {
        let n = batch.min(images - done);
        // Alternating which goes first, so drift hits both alike.
        let mut order = [("tool-quota/app", true), ("tool-free/app", false)];
        if round % 2 == 1 {
            order.reverse();
        }
        for (repo, with_quota) in order {
            let t = Instant::now();
            for i in done..done + n {
                push_image(&http, &server.url, &auth, repo, i).await;
            }
            if with_quota {
                quota += t.elapsed();
            } else {
                free += t.elapsed();
            }
        }
        done += n;
        round += 1;
    }
    (
        images as f64 / free.as_secs_f64(),
        images as f64 / quota.as_secs_f64(),
    )
}

async fn recompute_and_gc(
    blobs: usize,
    manifests: usize,
) -> (Duration, Duration, Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    // Reservations lapse at once, so leftovers are collectable right away.
    let meta = Metadata::connect(&Metadata::sqlite_url(&dir.path().join("m.db")), 8)
        .await
        .unwrap()
        .with_reservation_ttl(Duration::ZERO);
    let projects = 50;
    for p in 0..projects {
        meta.project_create(&format!("tool-{p}"), true, Some(1 << 40), false)
            .await
            .unwrap();
    }
    let t = Instant::now();
    let digests: Vec<Digest> = (0..blobs)
        .map(|i| Digest::sha256_of(format!("blob {i}").as_bytes()))
        .collect();
    let per_manifest = 3;
    for m in 0..manifests {
        let project = format!("tool-{}", m % projects);
        let repo = RepoName::parse(&format!("{project}/app{}", m % 7)).unwrap();
        let id = meta.ensure_repo(&repo).await.unwrap();
        let refs: Vec<ManifestRef> = (0..per_manifest)
            .map(|k| {
                let d = &digests[(m * per_manifest + k) % blobs];
                ManifestRef {
                    digest: d.clone(),
                    size: 1000,
                    is_manifest: false,
                }
            })
            .collect();
        common::put_image(
            &meta,
            &repo,
            id,
            refs,
            &format!("manifest {m}"),
            format!("v{m}"),
        )
        .await;
    }
    // The blobs no manifest reached: uploaded, never referenced.
    let leftover_repo = RepoName::parse("tool-0/leftovers").unwrap();
    let leftover_id = meta.ensure_repo(&leftover_repo).await.unwrap();
    for d in digests.iter().skip(manifests * per_manifest) {
        meta.blob_claim(d, 1000).await.unwrap();
        meta.blob_complete(None, leftover_id, "tool-0", d, 1000, false)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    eprintln!(
        "populated {blobs} blobs and {manifests} manifests in {:.1?}",
        t.elapsed()
    );
    let t = Instant::now();
    let drifts = meta.recompute(false).await.unwrap();
    let recompute = t.elapsed();
    assert!(drifts.is_empty());
    let store = slipway_storage::BlobStore::Fs(
        slipway_storage::blob::fs::FsBlobStore::open(dir.path().join("blobs")).unwrap(),
    );
    let opts = |dry_run| slipway_storage::gc::GcOptions {
        dry_run,
        blob_grace: Duration::ZERO,
        untagged_grace: Duration::from_secs(3600),
        keep_default: 1_000_000,
        project: None,
        retention: true,
    };
    let t = Instant::now();
    let dry = slipway_storage::gc::collect(&meta, &store, &opts(true))
        .await
        .unwrap();
    let gc_dry = t.elapsed();
    let t = Instant::now();
    let run = slipway_storage::gc::collect(&meta, &store, &opts(false))
        .await
        .unwrap();
    let gc = t.elapsed();
    eprintln!(
        "GC candidates: {} (dry run), {} removed",
        dry.blobs.len(),
        run.blobs.len()
    );
    let t = Instant::now();
    let usages = meta.usages().await.unwrap();
    let usage_all = t.elapsed();
    assert_eq!(usages.len(), projects);
    (recompute, gc_dry, gc, usage_all)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let images = env_usize("QUOTA_BENCH_IMAGES", 1000);
        let (free, quota) = quota_overhead(images).await;
        let blobs = env_usize("QUOTA_BENCH_BLOBS", 100_000);
        let manifests = env_usize("QUOTA_BENCH_MANIFESTS", 20_000);
        let (recompute, gc_dry, gc, usage_all) = recompute_and_gc(blobs, manifests).await;
        println!("| Measurement | Figure |");
        println!("|---|--:|");
        println!("| Push of {images} small images, no quota | {free:.0} images/s |");
        println!("| Push of {images} small images, with a quota | {quota:.0} images/s |");
        println!(
            "| Quota overhead (time with ÷ time without − 1; target < 5 %) | {:+.1} % |",
            (free / quota - 1.0) * 100.0
        );
        println!(
            "| `usage recompute` over {blobs} blobs / {manifests} manifests (SQLite) | {:.2} s |",
            recompute.as_secs_f64()
        );
        println!(
            "| GC dry run over the same | {:.2} s |",
            gc_dry.as_secs_f64()
        );
        println!("| GC over the same | {:.2} s |", gc.as_secs_f64());
        println!(
            "| Usage of all 50 projects | {:.3} s |",
            usage_all.as_secs_f64()
        );
    });
}
