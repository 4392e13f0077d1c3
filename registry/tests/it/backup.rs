//! Backup and restore of a single node: `slipway admin backup` while a
//! pusher keeps pushing, `slipway restore` into a new data directory, and a
//! server started on it serves every image that existed when the backup
//! began, byte for byte; the blobs were hard-linked (same file system).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use slipway_registry::testing::TestServer;

use crate::security::{Env, basic, digest};

/// Every tagged manifest: `repo:tag` → its bytes.
async fn images(url: &str, auth: &str) -> BTreeMap<String, Vec<u8>> {
    let http = reqwest::Client::new();
    let get = |path: String| {
        http.get(format!("{url}{path}"))
            .header("authorization", auth)
            .header(
                "accept",
                "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
            )
            .send()
    };
    let catalog: Value = get("/v2/_catalog?n=1000".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for repo in catalog["repositories"].as_array().unwrap() {
        let repo = repo.as_str().unwrap();
        let tags: Value = get(format!("/v2/{repo}/tags/list"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for tag in tags["tags"].as_array().into_iter().flatten() {
            let tag = tag.as_str().unwrap();
            let r = get(format!("/v2/{repo}/manifests/{tag}")).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{repo}:{tag}");
            out.insert(format!("{repo}:{tag}"), r.bytes().await.unwrap().to_vec());
        }
    }
    out
}

fn slipway(args: &[&str], password: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .env("SLIPWAY_PASSWORD", password)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_pushes_go_on_restores_every_image_byte_for_byte() {
    let env = Arc::new(Env::new().await);
    for i in 0..8 {
        env.push_image(
            &format!("tool-a/app{i}"),
            "v1",
            format!("seed {i}").as_bytes(),
        )
        .await;
    }
    let admin = env.admin();

    // A pusher that keeps pushing new images until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(AtomicU64::new(0));
    let pusher = {
        let (env, stop, pushed) = (env.clone(), stop.clone(), pushed.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                env.push_image(
                    "tool-b/live",
                    &format!("t{n}"),
                    format!("live {n}").as_bytes(),
                )
                .await;
                n += 1;
                pushed.store(n, Ordering::SeqCst);
            }
        })
    };
    while pushed.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before = images(&env.server.url, &admin).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("backup");
    let url = env.server.url.clone();
    let password = env.server.admin_password.clone();
    let d = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        slipway(
            &["admin", "backup", d.to_str().unwrap(), "--url", &url],
            &password,
        )
    })
    .await
    .unwrap();
    let during = pushed.load(Ordering::SeqCst);
    while pushed.load(Ordering::SeqCst) < during + 3 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    pusher.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("backed up "),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("copied) and the keys token-signing-key.pem, secrets-key"),
        "{stdout}"
    );

    // Same file system: the blobs are hard links, not copies.
    let layer = digest(b"seed 3-layer");
    let hex = layer.strip_prefix("sha256:").unwrap();
    let rel = format!("blobs/sha256/{}/{hex}", &hex[..2]);
    let backed = std::fs::metadata(dir.join("blobs").join(&rel)).unwrap();
    let live = std::fs::metadata(env.server.data_dir().join("blobs").join(&rel)).unwrap();
    assert_eq!(backed.ino(), live.ino(), "a hard link");

    // Refusals: a directory that is not empty; a relative path.
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/backup",
            Some(&admin),
            Some(json!({"dir": dir.display().to_string()})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(v["error"].as_str().unwrap().contains("is not empty"), "{v}");
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/backup",
            Some(&admin),
            Some(json!({"dir": "relative/dir"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        v["error"].as_str().unwrap().contains("absolute path"),
        "{v}"
    );

    // Restore into a new data directory, and serve it.
    let data = work.path().join("restored");
    let out = slipway(
        &[
            "restore",
            dir.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        "",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("start it with: slipway serve --data-dir"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = slipway(
        &[
            "restore",
            dir.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        "",
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not empty"),
        "restoring over a data directory is refused"
    );
    let mut config = slipway_registry::Config::for_tests(&data);
    config.auth.admin_password = env.server.config.auth.admin_password.clone();
    let restored = TestServer::start_config(config).await;
    let after = images(&restored.url, &basic("admin", &restored.admin_password)).await;
    assert!(before.len() >= 3 + 8 + 3, "{}", before.len());
    for (image, bytes) in &before {
        assert_eq!(
            after.get(image),
            Some(bytes),
            "{image} is not served the same after the restore"
        );
        let m: Value = serde_json::from_slice(bytes).unwrap();
        let repo = image.split(':').next().unwrap();
        let mut refs = vec![m["config"].clone()];
        refs.extend(m["layers"].as_array().unwrap().iter().cloned());
        for r in refs {
            let d = r["digest"].as_str().unwrap();
            let got = reqwest::Client::new()
                .get(format!("{}/v2/{repo}/blobs/{d}", restored.url))
                .header("authorization", basic("admin", &restored.admin_password))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(digest(&got), d, "{image}: blob {d}");
        }
    }
    // Consistent: the restored registry passes its integrity check.
    let r: Value = reqwest::Client::new()
        .post(format!("{}/api/v1/fsck", restored.url))
        .header("authorization", basic("admin", &restored.admin_password))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["problems"], json!([]), "{r}");
    eprintln!(
        "backup: {} images before, {} pushes during and after, {} images restored",
        before.len(),
        pushed.load(Ordering::SeqCst),
        after.len()
    );
}
