//! Usage stays exact under any sequence of operations (a property test),
//! and GC running in a loop never takes a blob a manifest needs (a stress
//! test with concurrent pushers).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use proptest::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::reupload::FLOWS;
use crate::security::{Env, digest};

const PROJECTS: [&str; 3] = ["platform", "tool-x", "tool-y"];

/// A small layer from a shared pool, so images share blobs across
/// repositories and projects.
fn layer(i: u8) -> Vec<u8> {
    format!("layer-{i}-")
        .repeat(50 + i as usize * 7)
        .into_bytes()
}

#[derive(Debug, Clone)]
enum Op {
    Push {
        project: usize,
        repo: u8,
        layers: u8,
        tag: u8,
    },
    Mount {
        from: usize,
        to: usize,
        layer: u8,
    },
    DeleteManifest {
        project: usize,
        repo: u8,
        tag: u8,
    },
    DeleteTag {
        project: usize,
        repo: u8,
        tag: u8,
    },
    AbortedUpload {
        project: usize,
    },
    /// An upload of a pool layer the way `flow` does, whether or not the
    /// repository or project has it already (a client that does not ask
    /// first), without a manifest.
    ReUpload {
        project: usize,
        repo: u8,
        layer: u8,
        flow: usize,
    },
    Gc,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..2u8, 1..64u8, 0..3u8).prop_map(|(project, repo, layers, tag)| Op::Push { project, repo, layers, tag }),
        1 => (0..3usize, 0..3usize, 0..6u8).prop_map(|(from, to, layer)| Op::Mount { from, to, layer }),
        2 => (0..3usize, 0..2u8, 0..3u8).prop_map(|(project, repo, tag)| Op::DeleteManifest { project, repo, tag }),
        1 => (0..3usize, 0..2u8, 0..3u8).prop_map(|(project, repo, tag)| Op::DeleteTag { project, repo, tag }),
        1 => (0..3usize).prop_map(|project| Op::AbortedUpload { project }),
        2 => (0..3usize, 0..2u8, 0..6u8, 0..FLOWS.len()).prop_map(|(project, repo, layer, flow)| Op::ReUpload { project, repo, layer, flow }),
        1 => Just(Op::Gc),
    ]
}

/// Pushes an image made of the pool layers in `mask` (skipping uploads of
/// blobs the repository already has, as clients do).
async fn push(env: &Env, repo: &str, mask: u8, tag: &str) -> StatusCode {
    let admin = env.admin();
    let layers: Vec<Vec<u8>> = (0..6).filter(|i| mask & (1 << i) != 0).map(layer).collect();
    let config = json!({"os": "linux", "architecture": "amd64", "mask": mask})
        .to_string()
        .into_bytes();
    for b in layers.iter().chain(std::iter::once(&config)) {
        let (s, _, _) = env
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/blobs/{}", digest(b)),
                Some(&admin),
                Vec::new(),
                None,
            )
            .await;
        if s == StatusCode::OK {
            continue;
        }
        let (s, b) = env.put_blob(repo, b.clone()).await;
        if s != StatusCode::CREATED {
            return s;
        }
        let _ = b;
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": layers.iter().map(|l| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(l), "size": l.len()})).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    env.send(
        Method::PUT,
        &format!("/v2/{repo}/manifests/{tag}"),
        Some(&admin),
        manifest,
        Some("application/vnd.oci.image.manifest.v1+json"),
    )
    .await
    .0
}

async fn apply(env: &Env, op: &Op) {
    let admin = env.admin();
    match op {
        Op::Push {
            project,
            repo,
            layers,
            tag,
        } => {
            push(
                env,
                &format!("{}/r{repo}", PROJECTS[*project]),
                *layers,
                &format!("t{tag}"),
            )
            .await;
        }
        Op::Mount { from, to, layer: l } => {
            let d = digest(&layer(*l));
            env.send(
                Method::POST,
                &format!(
                    "/v2/{}/r0/blobs/uploads/?mount={d}&from={}/r0",
                    PROJECTS[*to], PROJECTS[*from]
                ),
                Some(&admin),
                Vec::new(),
                None,
            )
            .await;
        }
        Op::DeleteManifest { project, repo, tag } => {
            let path = format!("/v2/{}/r{repo}/manifests/t{tag}", PROJECTS[*project]);
            let (s, h, _) = env
                .send(Method::HEAD, &path, Some(&admin), Vec::new(), None)
                .await;
            if s == StatusCode::OK {
                let d = h["docker-content-digest"].to_str().unwrap().to_owned();
                env.send(
                    Method::DELETE,
                    &format!("/v2/{}/r{repo}/manifests/{d}", PROJECTS[*project]),
                    Some(&admin),
                    Vec::new(),
                    None,
                )
                .await;
            }
        }
        Op::DeleteTag { project, repo, tag } => {
            env.send(
                Method::DELETE,
                &format!("/v2/{}/r{repo}/manifests/t{tag}", PROJECTS[*project]),
                Some(&admin),
                Vec::new(),
                None,
            )
            .await;
        }
        Op::AbortedUpload { project } => {
            let (s, h, _) = env
                .send(
                    Method::POST,
                    &format!("/v2/{}/r0/blobs/uploads/", PROJECTS[*project]),
                    Some(&admin),
                    Vec::new(),
                    None,
                )
                .await;
            if s == StatusCode::ACCEPTED {
                let location = h["location"].to_str().unwrap().to_owned();
                env.send(
                    Method::PATCH,
                    &location,
                    Some(&admin),
                    b"half a layer".to_vec(),
                    None,
                )
                .await;
                env.send(Method::DELETE, &location, Some(&admin), Vec::new(), None)
                    .await;
            }
        }
        Op::ReUpload {
            project,
            repo,
            layer: l,
            flow,
        } => {
            let a = env
                .upload_by(
                    &format!("{}/r{repo}", PROJECTS[*project]),
                    &layer(*l),
                    FLOWS[*flow],
                )
                .await;
            assert!(
                a.status == StatusCode::CREATED || a.status == StatusCode::FORBIDDEN,
                "{op:?}: {} {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        Op::Gc => {
            let (s, v) = env
                .admin_json(
                    Method::POST,
                    "/api/v1/gc",
                    Some(json!({"retention": false})),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
    }
}

async fn assert_no_drift(env: &Env, after: &Op) {
    let (s, r) = env
        .admin_json(Method::POST, "/api/v1/usage/recompute?dry_run=true", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["drifts"], json!([]), "usage drifted after {after:?}: {r}");
}

/// The three projects; `tool_y_quota` in bytes for `tool-y` (the others
/// have 1 GiB).
async fn env_with_projects(blob_grace_secs: u64, tool_y_quota: u64) -> Env {
    let env = Env::with(|c| {
        c.gc.blob_grace_secs = blob_grace_secs;
        c.quota.base_projects = vec!["platform".into()];
    })
    .await;
    for p in PROJECTS {
        let (s, v) = env
            .admin_json(
                Method::POST,
                "/api/v1/projects",
                Some(json!({"name": p, "quota_bytes": if p == "tool-y" { tool_y_quota } else { 1u64 << 30 }})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    env
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn recompute_equals_running_usage_after_every_step(ops in proptest::collection::vec(op(), 1..14)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            // tool-y holds about four pool layers: some pushes and uploads
            // are refused, and must leave the counts exact too.
            let env = env_with_projects(0, 3000).await;
            for op in &ops {
                apply(&env, op).await;
                assert_no_drift(&env, op).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_in_a_loop_never_takes_what_a_manifest_needs() {
    let env = Arc::new(env_with_projects(2, 1 << 30).await);
    let stop = Arc::new(AtomicBool::new(false));
    let gc = {
        let (env, stop) = (env.clone(), stop.clone());
        tokio::spawn(async move {
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                let (s, v) = env
                    .admin_json(
                        Method::POST,
                        "/api/v1/gc",
                        Some(json!({"retention": false})),
                    )
                    .await;
                assert_eq!(s, StatusCode::OK, "{v}");
                runs += 1;
            }
            runs
        })
    };
    let mut clients = Vec::new();
    for c in 0..8u8 {
        let env = env.clone();
        clients.push(tokio::spawn(async move {
            let project = PROJECTS[1 + (c as usize % 2)];
            for round in 0..6u8 {
                let repo = format!("{project}/c{c}");
                let mask = 1 | ((c.wrapping_mul(7).wrapping_add(round)) % 63);
                let tag = format!("r{}", round % 3);
                let s = push(&env, &repo, mask, &tag).await;
                assert_eq!(s, StatusCode::CREATED, "client {c} round {round}");
                if round % 2 == 1 {
                    let path = format!("/v2/{repo}/manifests/{tag}");
                    let (s, h, _) = env
                        .send(Method::HEAD, &path, Some(&env.admin()), Vec::new(), None)
                        .await;
                    if s == StatusCode::OK {
                        let d = h["docker-content-digest"].to_str().unwrap().to_owned();
                        env.send(
                            Method::DELETE,
                            &format!("/v2/{repo}/manifests/{d}"),
                            Some(&env.admin()),
                            Vec::new(),
                            None,
                        )
                        .await;
                    }
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let runs = gc.await.unwrap();
    assert!(runs > 3, "GC ran only {runs} times during the pushes");

    // Every manifest's blobs are there and whole.
    let admin = env.admin();
    let (_, _, b) = env.get("/v2/_catalog", Some(&admin)).await;
    let catalog: Value = serde_json::from_slice(&b).unwrap();
    let mut checked = 0;
    for repo in catalog["repositories"].as_array().unwrap() {
        let repo = repo.as_str().unwrap();
        let (_, _, b) = env
            .get(&format!("/v2/{repo}/tags/list"), Some(&admin))
            .await;
        let tags: Value = serde_json::from_slice(&b).unwrap();
        for tag in tags["tags"].as_array().cloned().unwrap_or_default() {
            let (s, _, m) = env
                .get(
                    &format!("/v2/{repo}/manifests/{}", tag.as_str().unwrap()),
                    Some(&admin),
                )
                .await;
            assert_eq!(s, StatusCode::OK);
            let m: Value = serde_json::from_slice(&m).unwrap();
            let mut descriptors = vec![m["config"].clone()];
            descriptors.extend(m["layers"].as_array().unwrap().iter().cloned());
            for d in descriptors {
                let want = d["digest"].as_str().unwrap();
                let (s, _, bytes) = env
                    .get(&format!("/v2/{repo}/blobs/{want}"), Some(&admin))
                    .await;
                assert_eq!(s, StatusCode::OK, "{repo}: blob {want} is gone");
                assert_eq!(
                    format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
                    want
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "only {checked} blobs checked");
    assert_no_drift(&env, &Op::Gc).await;
}
