//! Stack rebase through the registry: synthetic CNB images (configs and
//! labels shaped as `slipway_builder::export` writes them) pushed over the
//! OCI API, then fleet rebases through the admin API — what moves, what is
//! left and why, what is written (and what is not), quotas, races with
//! pushes, and the automatic mode.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use slipway_registry::rebase::{FleetRequest, fleet};
use slipway_storage::meta::AuditQuery;

use crate::security::{Env, basic, digest};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const LIFECYCLE: &str = "io.buildpacks.lifecycle.metadata";
const RUN: &str = "platform/run:bookworm";

#[derive(Clone)]
struct Layer {
    digest: String,
    size: usize,
    diff_id: String,
}

/// A run image as pushed: its digest, layers and config.
#[derive(Clone)]
struct Run {
    digest: String,
    layers: Vec<Layer>,
    config: Value,
}

/// An app image as pushed.
struct App {
    repo: String,
    digest: String,
    /// The app's own layers (above the run image's).
    own: Vec<String>,
}

fn layer_bytes(seed: &str) -> Vec<u8> {
    format!("{seed}:").repeat(40).into_bytes()
}

fn layer_of(seed: &str) -> (Vec<u8>, Layer) {
    let bytes = layer_bytes(seed);
    let l = Layer {
        digest: digest(&bytes),
        size: bytes.len(),
        diff_id: digest(format!("uncompressed {seed}").as_bytes()),
    };
    (bytes, l)
}

fn descriptors(layers: &[Layer]) -> Vec<Value> {
    layers
        .iter()
        .map(|l| json!({"mediaType": LAYER, "digest": l.digest, "size": l.size}))
        .collect()
}

impl Env {
    async fn put_manifest(&self, repo: &str, reference: &str, body: &[u8]) -> String {
        let (s, _, b) = self
            .send(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
                Some(&self.admin()),
                body.to_vec(),
                Some(OCI_MANIFEST),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
        digest(body)
    }

    async fn upload(&self, repo: &str, bytes: Vec<u8>) {
        let (s, b) = self.put_blob(repo, bytes).await;
        assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    }

    /// A run image `platform/run:<tag>` of layers made from `seeds`.
    async fn push_run(&self, tag: &str, seeds: &[&str], arch: &str, distro: &str) -> Run {
        let mut layers = Vec::new();
        for seed in seeds {
            let (bytes, l) = layer_of(seed);
            self.upload("platform/run", bytes).await;
            layers.push(l);
        }
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "created": "1980-01-01T00:00:01Z",
            "config": {
                "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
                "User": "1000:1000",
                "Labels": {
                    "io.buildpacks.base.distro.name": "debian",
                    "io.buildpacks.base.distro.version": distro,
                    "io.buildpacks.stack.id": "io.slipway.stacks.bookworm",
                    "io.buildpacks.base.maintainer": format!("platform {}", seeds.join("+")),
                },
            },
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
            "history": seeds.iter().map(|s| json!({"created": "1980-01-01T00:00:01Z", "created_by": format!("run layer {s}")})).collect::<Vec<_>>(),
        });
        let config_bytes = config.to_string().into_bytes();
        self.upload("platform/run", config_bytes.clone()).await;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest(&config_bytes), "size": config_bytes.len()},
            "layers": descriptors(&layers),
        })
        .to_string()
        .into_bytes();
        let digest = self.put_manifest("platform/run", tag, &manifest).await;
        Run {
            digest,
            layers,
            config,
        }
    }

    /// An app built on `run` as the exporter writes it: the run image's
    /// layers mounted, two layers of its own, lifecycle labels; `adjust`
    /// changes its config (labels, platform) before it is pushed.
    async fn push_app(
        &self,
        repo: &str,
        tags: &[&str],
        run: &Run,
        seed: &str,
        adjust: impl FnOnce(&mut Value),
    ) -> App {
        for l in &run.layers {
            let (s, _, b) = self
                .send(
                    Method::POST,
                    &format!(
                        "/v2/{repo}/blobs/uploads/?mount={}&from=platform/run",
                        l.digest
                    ),
                    Some(&self.admin()),
                    Vec::new(),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
        }
        let mut own = Vec::new();
        for part in ["app", "launcher"] {
            let (bytes, l) = layer_of(&format!("{seed}-{part}"));
            self.upload(repo, bytes).await;
            own.push(l);
        }
        let mut config = run.config.clone();
        let mut diff_ids: Vec<Value> = config["rootfs"]["diff_ids"].as_array().unwrap().clone();
        diff_ids.extend(own.iter().map(|l| json!(l.diff_id)));
        config["rootfs"]["diff_ids"] = Value::Array(diff_ids);
        let history = config["history"].as_array_mut().unwrap();
        for part in ["app", "launcher"] {
            history.push(json!({"created": "1980-01-01T00:00:01Z", "created_by": format!("buildpacks:{part}")}));
        }
        config["config"]["Entrypoint"] = json!(["/cnb/process/web"]);
        let lifecycle = json!({
            "app": [{"sha": own[0].diff_id}],
            "launcher": {"sha": own[1].diff_id},
            "buildpacks": [{"key": "slipway/static", "version": "0.1.0"}],
            "runImage": {
                "topLayer": run.layers.last().unwrap().diff_id,
                "reference": run.digest,
                "image": RUN,
            },
        });
        let labels = config["config"]["Labels"].as_object_mut().unwrap();
        labels.insert(LIFECYCLE.into(), json!(lifecycle.to_string()));
        labels.insert(
            "io.buildpacks.build.metadata".into(),
            json!(json!({"processes": [{"type": "web", "command": ["serve"]}]}).to_string()),
        );
        labels.insert(
            "io.buildpacks.project.metadata".into(),
            json!(json!({"source": {"type": "git", "version": {"commit": seed}}}).to_string()),
        );
        adjust(&mut config);
        let config_bytes = config.to_string().into_bytes();
        self.upload(repo, config_bytes.clone()).await;
        let mut layers = run.layers.clone();
        layers.extend(own.iter().cloned());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest(&config_bytes), "size": config_bytes.len()},
            "layers": descriptors(&layers),
        })
        .to_string()
        .into_bytes();
        let mut d = String::new();
        for tag in tags {
            d = self.put_manifest(repo, tag, &manifest).await;
        }
        App {
            repo: repo.into(),
            digest: d,
            own: own.into_iter().map(|l| l.digest).collect(),
        }
    }

    async fn fleet(&self, body: Value) -> (StatusCode, Value) {
        self.admin_json(Method::POST, "/api/v1/admin/rebase", Some(body))
            .await
    }

    async fn tag_digest(&self, repo: &str, tag: &str) -> String {
        let (s, h, b) = self
            .get(&format!("/v2/{repo}/manifests/{tag}"), Some(&self.admin()))
            .await;
        assert_eq!(s, StatusCode::OK, "{repo}:{tag}");
        let d = h["docker-content-digest"].to_str().unwrap().to_owned();
        assert_eq!(d, digest(&b));
        d
    }

    /// The manifest and config of `repo@reference`.
    async fn image(&self, repo: &str, reference: &str) -> (Value, Value) {
        let (s, _, b) = self
            .get(
                &format!("/v2/{repo}/manifests/{reference}"),
                Some(&self.admin()),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{repo}@{reference}");
        let m: Value = serde_json::from_slice(&b).unwrap();
        let (s, _, c) = self
            .get(
                &format!(
                    "/v2/{repo}/blobs/{}",
                    m["config"]["digest"].as_str().unwrap()
                ),
                Some(&self.admin()),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        (m, serde_json::from_slice(&c).unwrap())
    }

    async fn audit(&self, action: &str) -> Vec<slipway_storage::meta::AuditEntry> {
        self.server
            .state
            .meta
            .audit_list(&AuditQuery {
                action: Some(action.into()),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
    }
}

/// Every blob file under the data directory's blob tree.
fn blob_files(root: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                out.insert(name.to_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&root.join("blobs").join("blobs").join("sha256"), &mut out);
    walk(&root.join("blobs").join("sha256"), &mut out);
    out
}

fn digests_of(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["repository"].as_str().unwrap().to_owned(),
                i["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn repos_of(list: &Value) -> Vec<String> {
    digests_of(list).into_iter().map(|(r, _)| r).collect()
}

async fn platform_env(adjust: impl FnOnce(&mut slipway_registry::Config)) -> Env {
    let env = Env::with(adjust).await;
    env.server.create_project("platform", true).await;
    env
}

#[tokio::test]
async fn a_fleet_rebase_moves_every_app_onto_the_new_run_image() {
    let env = platform_env(|_| {}).await;
    let v1 = env
        .push_run("bookworm", &["debian-12.1", "ca-certs-1"], "amd64", "12")
        .await;
    let web = env
        .push_app("tool-a/web", &["latest", "b1"], &v1, "web", |_| {})
        .await;
    let api = env
        .push_app("tool-b/api", &["latest"], &v1, "api", |_| {})
        .await;
    // v2: a changed package and an extra file.
    let v2 = env
        .push_run(
            "bookworm",
            &["debian-12.2", "ca-certs-1", "extra-file"],
            "amd64",
            "12",
        )
        .await;
    assert_ne!(v1.digest, v2.digest);

    // A dry run reports and writes nothing.
    let files_before = blob_files(env.server.data_dir());
    let (s, dry) = env.fleet(json!({"run_image": RUN, "dry_run": true})).await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    assert_eq!(dry["run_image_digest"], v2.digest.as_str());
    assert_eq!(repos_of(&dry["rebased"]), ["tool-a/web", "tool-b/api"]);
    assert!(dry["skipped"].as_array().unwrap().is_empty(), "{dry}");
    assert!(dry["failed"].as_array().unwrap().is_empty(), "{dry}");
    assert_eq!(env.tag_digest("tool-a/web", "latest").await, web.digest);
    assert_eq!(env.tag_digest("tool-b/api", "latest").await, api.digest);
    assert_eq!(blob_files(env.server.data_dir()), files_before);
    assert!(env.audit("image.rebase").await.is_empty());
    assert!(env.audit("rebase.fleet").await.is_empty());

    // The rebase.
    let (s, report) = env.fleet(json!({"run_image": RUN})).await;
    assert_eq!(s, StatusCode::OK, "{report}");
    assert_eq!(
        digests_of(&report["rebased"]),
        [
            ("tool-a/web".to_owned(), web.digest.clone()),
            ("tool-b/api".to_owned(), api.digest.clone())
        ]
    );
    // The dry run computed the same images.
    for i in 0..2 {
        assert_eq!(
            report["rebased"][i]["new_digest"],
            dry["rebased"][i]["new_digest"]
        );
    }
    // Unrelated images (the plain tool-*/web:v1) are not in the report.
    assert!(report["current"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(
        report["rebased"][0]["tags"],
        json!(["b1", "latest"]),
        "{report}"
    );

    let mut new_configs = BTreeSet::new();
    for (app, entry) in [(&web, &report["rebased"][0]), (&api, &report["rebased"][1])] {
        let new_digest = entry["new_digest"].as_str().unwrap();
        assert_eq!(env.tag_digest(&app.repo, "latest").await, new_digest);
        let (m, c) = env.image(&app.repo, "latest").await;
        let layers: Vec<&str> = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = v2
            .layers
            .iter()
            .map(|l| l.digest.as_str())
            .chain(app.own.iter().map(String::as_str))
            .collect();
        assert_eq!(
            layers, want,
            "the new base, then the app's layers unchanged"
        );
        // Every layer pullable from the app's repository (the base linked).
        for l in &layers {
            let (s, _, _) = env
                .get(&format!("/v2/{}/blobs/{l}", app.repo), Some(&env.admin()))
                .await;
            assert_eq!(s, StatusCode::OK, "{l}");
        }
        let labels = &c["config"]["Labels"];
        let meta: Value = serde_json::from_str(labels[LIFECYCLE].as_str().unwrap()).unwrap();
        assert_eq!(meta["runImage"]["reference"], v2.digest.as_str());
        assert_eq!(
            meta["runImage"]["topLayer"],
            v2.layers.last().unwrap().diff_id.as_str()
        );
        assert_eq!(meta["runImage"]["image"], RUN);
        assert_eq!(
            labels["io.buildpacks.base.maintainer"],
            "platform debian-12.2+ca-certs-1+extra-file"
        );
        assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 5);
        assert_eq!(c["history"].as_array().unwrap().len(), 5);
        assert_eq!(c["config"]["Entrypoint"], json!(["/cnb/process/web"]));
        new_configs.insert(
            m["config"]["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_owned(),
        );
        // The old image stays pullable by digest (rollback = retag).
        let (s, _, _) = env
            .get(
                &format!("/v2/{}/manifests/{}", app.repo, app.digest),
                Some(&env.admin()),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let tool_a_b1 = env.tag_digest("tool-a/web", "b1").await;
    assert_eq!(
        tool_a_b1,
        report["rebased"][0]["new_digest"].as_str().unwrap()
    );

    // Nothing was uploaded: the only new blobs are the two new configs, and
    // no upload session is open.
    let files_after = blob_files(env.server.data_dir());
    let added: BTreeSet<String> = files_after.difference(&files_before).cloned().collect();
    assert_eq!(added, new_configs);
    assert_eq!(env.server.state.meta.upload_count().await.unwrap(), 0);

    // Recorded: one audit entry per image (as the builder), one for the
    // fleet (as the admin), a build history row of kind rebase with a log.
    let entries = env.audit("image.rebase").await;
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.principal == "builder"));
    let fleet_entries = env.audit("rebase.fleet").await;
    assert_eq!(fleet_entries.len(), 1);
    assert_eq!(fleet_entries[0].principal, "admin");
    for (project, image, new_digest) in [
        ("tool-a", "web", &report["rebased"][0]["new_digest"]),
        ("tool-b", "api", &report["rebased"][1]["new_digest"]),
    ] {
        let builds = env.server.state.meta.builds(project, 10).await.unwrap();
        let b = builds
            .iter()
            .find(|b| b.image_digest.as_deref() == new_digest.as_str())
            .expect("a build history row for the rebase");
        assert_eq!(
            (b.image_name.as_str(), b.state.as_str()),
            (image, "succeeded")
        );
        assert_eq!(
            env.server
                .state
                .meta
                .build_kind(&b.id)
                .await
                .unwrap()
                .as_deref(),
            Some("rebase")
        );
        let log = env.server.state.meta.build_log(&b.id, 0, 10).await.unwrap();
        assert!(log.len() >= 3, "{log:?}");
    }
    assert!(
        env.server
            .state
            .meta
            .recompute(false)
            .await
            .unwrap()
            .is_empty()
    );

    // Again: everything is current, nothing written.
    let (s, again) = env.fleet(json!({"run_image": RUN})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(repos_of(&again["current"]), ["tool-a/web", "tool-b/api"]);
    assert!(again["rebased"].as_array().unwrap().is_empty());
    assert_eq!(env.audit("image.rebase").await.len(), 2);
}

#[tokio::test]
async fn incompatible_images_are_skipped_with_the_reason() {
    let env = platform_env(|_| {}).await;
    let v1 = env.push_run("bookworm", &["base-1"], "amd64", "12").await;
    let pinned = env
        .push_app("tool-a/pinned", &["latest"], &v1, "pinned", |c| {
            c["config"]["Labels"]["io.buildpacks.rebasable"] = json!("false");
        })
        .await;
    let arm = env
        .push_app("tool-a/arm", &["latest"], &v1, "arm", |c| {
            c["architecture"] = json!("arm64");
        })
        .await;
    let renamed = env
        .push_app("tool-b/renamed", &["latest"], &v1, "renamed", |c| {
            let labels = &mut c["config"]["Labels"];
            let mut meta: Value =
                serde_json::from_str(labels[LIFECYCLE].as_str().unwrap()).unwrap();
            meta["runImage"]["image"] = json!("mirror.example/run:bookworm");
            labels[LIFECYCLE] = json!(meta.to_string());
        })
        .await;
    let oldstable = env
        .push_app("tool-b/oldstable", &["latest"], &v1, "old", |c| {
            c["config"]["Labels"]["io.buildpacks.base.distro.version"] = json!("11");
        })
        .await;
    env.push_run("bookworm", &["base-2"], "amd64", "12").await;

    let (s, r) = env.fleet(json!({"run_image": RUN})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(r["rebased"].as_array().unwrap().is_empty(), "{r}");
    let reasons: Vec<(String, String)> = r["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["repository"].as_str().unwrap().to_owned(),
                i["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let reason = |repo: &str| {
        reasons
            .iter()
            .find(|(r, _)| r == repo)
            .map(|(_, why)| why.clone())
            .unwrap_or_else(|| panic!("{repo} not skipped: {reasons:?}"))
    };
    assert!(reason("tool-a/pinned").contains("io.buildpacks.rebasable=false"));
    assert!(
        reason("tool-a/arm").contains("linux/arm64")
            && reason("tool-a/arm").contains("linux/amd64")
    );
    assert!(reason("tool-b/renamed").contains("is not its run image or a mirror"));
    assert!(reason("tool-b/renamed").contains("--force"));
    assert!(reason("tool-b/oldstable").contains("debian 11"));
    assert_eq!(reasons.len(), 4);
    for app in [&pinned, &arm, &renamed, &oldstable] {
        assert_eq!(env.tag_digest(&app.repo, "latest").await, app.digest);
    }
    assert!(env.audit("image.rebase").await.is_empty());

    // --force overrides the name check, and only that one.
    let (s, r) = env.fleet(json!({"run_image": RUN, "force": true})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(repos_of(&r["rebased"]), ["tool-b/renamed"]);
    assert_eq!(
        repos_of(&r["skipped"]),
        ["tool-a/arm", "tool-a/pinned", "tool-b/oldstable"]
    );
    let (_, c) = env.image("tool-b/renamed", "latest").await;
    let meta: Value =
        serde_json::from_str(c["config"]["Labels"][LIFECYCLE].as_str().unwrap()).unwrap();
    assert_eq!(meta["runImage"]["image"], RUN);

    // Only the admin may ask; a run image that does not exist is a 404.
    let secret = env.robot("tool-a", "ci", &["pull"]).await;
    let (s, _, _) = env
        .send(
            Method::POST,
            "/api/v1/admin/rebase",
            Some(&basic("robot$tool-a+ci", &secret)),
            json!({"run_image": RUN}).to_string().into_bytes(),
            Some("application/json"),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = env
        .send(
            Method::POST,
            "/api/v1/admin/rebase",
            None,
            json!({"run_image": RUN}).to_string().into_bytes(),
            Some("application/json"),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = env.fleet(json!({"run_image": "platform/run:nope"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(v["error"].as_str().unwrap().contains("platform/run:nope"));
    let (s, _) = env.fleet(json!({"run_image": "Not A Name"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_project_over_its_quota_is_still_rebased() {
    let env = platform_env(|_| {}).await;
    let v1 = env.push_run("bookworm", &["q-base-1"], "amd64", "12").await;
    env.project_with_quota("tool-q", 1 << 20).await;
    let app = env
        .push_app("tool-q/web", &["latest"], &v1, "q", |_| {})
        .await;
    let used = env.usage("tool-q").await["used_bytes"].as_u64().unwrap();
    // The project is full: the quota is what it uses.
    let (s, v) = env
        .admin_json(
            Method::PATCH,
            "/api/v1/projects/tool-q",
            Some(json!({"quota_bytes": used})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = env
        .put_blob("tool-q/web", b"one byte too many".to_vec())
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a push is refused");
    env.push_run("bookworm", &["q-base-2"], "amd64", "12").await;

    let (s, r) = env.fleet(json!({"run_image": RUN})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(repos_of(&r["rebased"]), ["tool-q/web"], "{r}");
    assert_ne!(env.tag_digest("tool-q/web", "latest").await, app.digest);
    // Counted: the config and the manifest; the run image's layers are free.
    let (m, _) = env.image("tool-q/web", "latest").await;
    let new_manifest_len = serde_json::to_vec(&m).unwrap().len() as u64;
    let after = env.usage("tool-q").await["used_bytes"].as_u64().unwrap();
    assert!(after > used, "{after} > {used}");
    assert!(
        after - used <= m["config"]["size"].as_u64().unwrap() + new_manifest_len + 64,
        "only the config and the manifest are added: {} bytes",
        after - used
    );
    assert!(
        env.server
            .state
            .meta
            .recompute(false)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_tag_moved_meanwhile_is_not_overwritten() {
    let env = Arc::new(platform_env(|_| {}).await);
    let v1 = env
        .push_run("bookworm", &["race-base-1"], "amd64", "12")
        .await;
    // Two tags on one image: a build moves one while the rebase runs.
    let web = env
        .push_app("tool-a/web", &["latest", "stable"], &v1, "race", |_| {})
        .await;
    let other = env
        .push_app("tool-b/web", &["latest"], &v1, "race-b", |_| {})
        .await;
    let v2 = env
        .push_run("bookworm", &["race-base-2"], "amd64", "12")
        .await;

    let rebuilt: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let (env2, v1c, v2c, out) = (env.clone(), v1.clone(), v2.clone(), rebuilt.clone());
    let req = FleetRequest {
        run_image: RUN.into(),
        dry_run: false,
        force: false,
        requested_by: "admin".into(),
        remote_addr: None,
        before_commit: Some(Arc::new(move || {
            let (env, v1, v2, out) = (env2.clone(), v1c.clone(), v2c.clone(), out.clone());
            Box::pin(async move {
                // A build of tool-a/web:latest (already on v2) and a new
                // push to tool-b/web:latest land between read and commit.
                let a = env
                    .push_app("tool-a/web", &["latest"], &v2, "race-rebuilt", |_| {})
                    .await;
                let b = env
                    .push_app("tool-b/web", &["latest"], &v1, "race-b-new", |_| {})
                    .await;
                out.lock().unwrap().extend([a.digest, b.digest]);
            })
        })),
    };
    let r = fleet(&env.server.state, &req).await.unwrap();
    let [a_new, b_new] = rebuilt.lock().unwrap().clone().try_into().unwrap();
    // tool-a/web: `stable` still pointed at the old image and moved;
    // `latest` stays on the build.
    assert_eq!(r.rebased.len(), 1, "{:?}", r);
    assert_eq!(r.rebased[0].repository, "tool-a/web");
    assert_eq!(r.rebased[0].tags, ["stable"]);
    assert_eq!(env.tag_digest("tool-a/web", "latest").await, a_new);
    assert_eq!(
        env.tag_digest("tool-a/web", "stable").await,
        r.rebased[0].new_digest.clone().unwrap()
    );
    // tool-b/web: its only tag moved: skipped, nothing written.
    assert_eq!(r.skipped.len(), 1, "{:?}", r);
    assert_eq!(r.skipped[0].repository, "tool-b/web");
    assert_eq!(r.skipped[0].digest, other.digest);
    assert!(
        r.skipped[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("changed meanwhile, skipped")
    );
    assert_eq!(env.tag_digest("tool-b/web", "latest").await, b_new);
    let builds = env.server.state.meta.builds("tool-b", 10).await.unwrap();
    assert!(builds.is_empty(), "no history row for a skipped rebase");
    assert_ne!(web.digest, a_new);
    assert!(
        env.server
            .state
            .meta
            .recompute(false)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn pushing_a_configured_run_image_rebases_the_fleet() {
    let env = platform_env(|c| c.rebase.auto_run_images = vec![RUN.into()]).await;
    let mut finished = env.server.state.rebase.finished();
    let v1 = env
        .push_run("bookworm", &["auto-base-1"], "amd64", "12")
        .await;
    // The first push of the tag queued a fleet (with nothing to rebase).
    tokio::time::timeout(Duration::from_secs(30), finished.wait_for(|n| *n >= 1))
        .await
        .expect("the automatic fleet ends")
        .unwrap();
    let app = env
        .push_app("tool-a/web", &["latest"], &v1, "auto", |_| {})
        .await;
    let v2 = env
        .push_run("bookworm", &["auto-base-2"], "amd64", "12")
        .await;
    tokio::time::timeout(Duration::from_secs(30), finished.wait_for(|n| *n >= 2))
        .await
        .expect("the automatic fleet ends")
        .unwrap();
    let now = env.tag_digest("tool-a/web", "latest").await;
    assert_ne!(now, app.digest);
    let (_, c) = env.image("tool-a/web", "latest").await;
    let meta: Value =
        serde_json::from_str(c["config"]["Labels"][LIFECYCLE].as_str().unwrap()).unwrap();
    assert_eq!(meta["runImage"]["reference"], v2.digest.as_str());
    let fleets = env.audit("rebase.fleet").await;
    assert!(fleets.iter().all(|e| e.principal == "auto"), "{fleets:?}");
    assert_eq!(fleets.len(), 2);
    let rebases = env.audit("image.rebase").await;
    assert_eq!(rebases.len(), 1);
    assert!(
        rebases[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("\"requested_by\":\"auto\"")
    );
}

/// `slipway admin rebase`, the real binary against the server: a dry run
/// that changes nothing, the rebase, a second run that finds the image
/// current, and a bad reference refused with a sentence.
#[tokio::test]
async fn the_admin_command_rebases_and_prints_the_report() {
    let env = platform_env(|_| {}).await;
    let v1 = env
        .push_run("bookworm", &["cli-base-1"], "amd64", "12")
        .await;
    let app = env
        .push_app("tool-b/cli", &["latest"], &v1, "cli", |_| {})
        .await;
    let v2 = env
        .push_run("bookworm", &["cli-base-2"], "amd64", "12")
        .await;
    let cli = |args: &'static [&'static str]| {
        let (url, password) = (env.server.url.clone(), env.server.admin_password.clone());
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
                .args(["admin", "rebase"])
                .args(args)
                .env("SLIPWAY_URL", url)
                .env("SLIPWAY_PASSWORD", password)
                .env_remove("SLIPWAY_USER")
                .output()
                .await
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };

    let (ok, out, err) = cli(&["--run-image", "platform/run:bookworm", "--dry-run"]).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("onto platform/run:bookworm@{}", v2.digest))
            && out.contains("(dry run)")
            && out.contains("1 would rebase, 0 already current, 0 skipped, 0 failed."),
        "{out}"
    );
    assert!(out.contains("tool-b/cli:latest"), "{out}");
    assert_eq!(env.tag_digest("tool-b/cli", "latest").await, app.digest);

    let (ok, out, err) = cli(&["--run-image", "platform/run:bookworm"]).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("1 rebased, 0 already current, 0 skipped, 0 failed."),
        "{out}"
    );
    let now = env.tag_digest("tool-b/cli", "latest").await;
    assert_ne!(now, app.digest);
    assert!(out.contains(&now[..19]), "the new digest is shown: {out}");

    let (ok, out, err) = cli(&["--run-image", "platform/run:bookworm"]).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("0 rebased, 1 already current, 0 skipped, 0 failed."),
        "{out}"
    );

    let (ok, out, err) = cli(&["--run-image", "platform/run:nope"]).await;
    assert!(!ok, "{out}");
    assert!(
        err.contains("platform/run:nope") && !err.contains("panicked"),
        "a sentence: {err}"
    );
}

/// An image index whose image is built on the run image is not rebased
/// (indexes are not), and says so in the report instead of being passed
/// over; the image tagged on its own is rebased.
#[tokio::test]
async fn an_image_index_on_the_run_image_is_reported_not_rebased() {
    let env = platform_env(|_| {}).await;
    let v1 = env
        .push_run("bookworm", &["idx-base-1"], "amd64", "12")
        .await;
    let app = env
        .push_app("tool-a/multi", &["amd64"], &v1, "idx", |_| {})
        .await;
    let (s, _, child) = env
        .send(
            Method::GET,
            &format!("/v2/tool-a/multi/manifests/{}", app.digest),
            Some(&env.admin()),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": app.digest, "size": child.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    })
    .to_string()
    .into_bytes();
    let (s, _, b) = env
        .send(
            Method::PUT,
            "/v2/tool-a/multi/manifests/latest",
            Some(&env.admin()),
            index.clone(),
            Some(OCI_INDEX),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    env.push_run("bookworm", &["idx-base-2"], "amd64", "12")
        .await;

    let (s, r) = env.fleet(json!({"run_image": RUN})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let rebased = r["rebased"].as_array().unwrap();
    assert_eq!(rebased.len(), 1, "{r}");
    assert_eq!(rebased[0]["tags"], json!(["amd64"]), "{r}");
    let skipped = r["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{r}");
    assert_eq!(skipped[0]["tags"], json!(["latest"]), "{r}");
    assert_eq!(skipped[0]["old_base"], json!(v1.digest), "{r}");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("an image index (multi-arch)"),
        "{r}"
    );
    assert_eq!(
        env.tag_digest("tool-a/multi", "latest").await,
        digest(&index),
        "the index is left as it was"
    );
}

/// The dashboard's Fleet page: a dry run counts the images on the run
/// image's current digest and on older ones, per project; "Rebase now"
/// rebases them; the image's page then says current; the history lists
/// the rebase. Only the admin sees the page, and its forms need the CSRF
/// token.
#[tokio::test]
async fn the_fleet_page_finds_outdated_images_and_rebases_them() {
    use crate::ui::Browser;
    let env = platform_env(|_| {}).await;
    let v1 = env
        .push_run("bookworm", &["debian-12.1", "ca-certs-1"], "amd64", "12")
        .await;
    let web = env
        .push_app("tool-a/web", &["latest"], &v1, "web", |_| {})
        .await;
    env.push_app("tool-b/api", &["latest"], &v1, "api", |_| {})
        .await;
    let page = format!("/ui/i/tool-a/web@{}", web.digest);

    let mut admin = Browser::new(&env);
    admin.sign_in("admin", &env.server.admin_password).await;
    let fleet = admin.get("/ui/fleet").await;
    assert_eq!(fleet.status, StatusCode::OK, "{}", fleet.body);
    assert!(
        fleet
            .body
            .contains("<option value=\"platform/run:bookworm\""),
        "{}",
        fleet.body
    );
    let csrf = Browser::csrf(&fleet);
    assert!(admin.get(&page).await.body.contains(">current<"));

    env.push_run("bookworm", &["debian-12.2", "ca-certs-1"], "amd64", "12")
        .await;
    assert!(
        admin
            .get(&page)
            .await
            .body
            .contains("outdated: rebase available")
    );
    let forged = admin
        .request(
            Method::POST,
            "/ui/fleet",
            Some(&[("csrf", "x"), ("action", "dry-run"), ("run_image", RUN)]),
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let dry = admin
        .request(
            Method::POST,
            "/ui/fleet",
            Some(&[("csrf", &csrf), ("action", "dry-run"), ("run_image", RUN)]),
        )
        .await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.body);
    assert!(
        dry.body
            .contains("<strong id=\"outdated-count\">2</strong>"),
        "{}",
        dry.body
    );
    assert!(
        dry.body.contains("<strong id=\"current-count\">0</strong>"),
        "{}",
        dry.body
    );
    assert!(dry.body.contains("id=\"rebase-now\""), "{}", dry.body);
    assert_eq!(
        env.tag_digest("tool-a/web", "latest").await,
        web.digest,
        "a dry run writes nothing"
    );

    let done = admin
        .request(
            Method::POST,
            "/ui/fleet",
            Some(&[("csrf", &csrf), ("action", "rebase"), ("run_image", RUN)]),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("Rebased: "), "{}", done.body);
    let new = env.tag_digest("tool-a/web", "latest").await;
    assert_ne!(new, web.digest);
    let now = admin.get(&format!("/ui/i/tool-a/web@{new}")).await;
    assert!(now.body.contains(">current<"), "{}", now.body);
    let history = admin.get("/ui/r/tool-a/web").await.body;
    assert!(
        history.contains(&format!(
            "moved from <a href=\"/ui/i/tool-a/web@{}\">",
            web.digest
        )) && history.contains("class=\"cause rebase\""),
        "{history}"
    );
    let again = admin.get("/ui/fleet").await;
    assert!(
        again.body.contains("platform/run:bookworm@"),
        "the history: {}",
        again.body
    );

    // Nobody else sees the page.
    let mut anon = Browser::new(&env);
    assert_eq!(anon.get("/ui/fleet").await.status, StatusCode::NOT_FOUND);
    let secret = env.robot("tool-a", "viewer", &["pull"]).await;
    let mut robot = Browser::new(&env);
    robot.sign_in("robot$tool-a+viewer", &secret).await;
    assert_eq!(robot.get("/ui/fleet").await.status, StatusCode::NOT_FOUND);
}
