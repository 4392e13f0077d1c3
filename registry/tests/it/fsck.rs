//! The integrity check on a live server, against damage done to its files:
//! a layer's bytes changed on disk (same size), a config blob deleted, a
//! stored blob that no row names. A pull of the damaged layer never
//! completes; `fsck` names each problem in a sentence (the CLI exits 1);
//! `fsck --repair` quarantines the damaged blobs — the manifests using them
//! answer 404, the audit log says so — and removes the stray bytes; a
//! second check finds nothing, and the same image pushed again is served.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::PathBuf;

use crate::security::{Env, digest};

fn blob_path(env: &Env, d: &str) -> PathBuf {
    let hex = d.strip_prefix("sha256:").unwrap();
    env.server
        .data_dir()
        .join("blobs/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
}

async fn fsck(env: &Env, body: Value) -> Value {
    let (s, v) = env
        .api(Method::POST, "/api/v1/fsck", Some(&env.admin()), Some(body))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_finds_damage_a_pull_refuses_it_and_repair_quarantines_it() {
    let env = Env::new().await;
    let clean = fsck(&env, json!({})).await;
    assert_eq!(clean["problems"], json!([]), "{clean}");
    assert!(clean["blobs_checked"].as_u64().unwrap() >= 6, "{clean}");
    assert!(clean["bytes_hashed"].as_u64().unwrap() > 0, "{clean}");

    // Damage: tool-pub's layer changed in place, tool-b's config gone, and
    // bytes that no row names (an hour old, past the grace period).
    let layer = digest(b"tool-pub-layer");
    let path = blob_path(&env, &layer);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let config = {
        let (_, _, m) = env
            .get("/v2/tool-b/web/manifests/v1", Some(&env.admin()))
            .await;
        let m: Value = serde_json::from_slice(&m).unwrap();
        m["config"]["digest"].as_str().unwrap().to_owned()
    };
    std::fs::remove_file(blob_path(&env, &config)).unwrap();
    let stray = b"bytes nobody recorded".to_vec();
    let stray_digest = digest(&stray);
    let stray_path = blob_path(&env, &stray_digest);
    std::fs::create_dir_all(stray_path.parent().unwrap()).unwrap();
    std::fs::write(&stray_path, &stray).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stray_path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 3600))
        .unwrap();

    // A pull of the damaged layer: the response never completes (this
    // one-chunk blob is held back whole, so the connection closes before
    // even the headers).
    let r = env
        .http
        .get(format!("{}/v2/tool-pub/web/blobs/{layer}", env.server.url))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.bytes().await.is_err(),
            "a pull of damaged bytes must not complete"
        );
    }
    // Untouched blobs are still served whole.
    let other = digest(b"tool-a-layer");
    let (s, _, b) = env
        .get(&format!("/v2/tool-a/web/blobs/{other}"), Some(&env.admin()))
        .await;
    assert_eq!((s, digest(&b)), (StatusCode::OK, other.clone()));

    // The check: one sentence per problem; the CLI exits 1.
    let found = fsck(&env, json!({})).await;
    let problems: Vec<&str> = found["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), 3, "{found}");
    assert!(
        problems.contains(
            &format!(
                "blob {layer} is damaged in the store: its bytes hash to {}",
                digest(&bytes)
            )
            .as_str()
        ),
        "{found}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(&format!("blob {config} ("))
                && p.ends_with("is recorded but not in the store")),
        "{found}"
    );
    assert!(
        problems.contains(
            &format!("blob {stray_digest} is in the store but recorded nowhere").as_str()
        ),
        "{found}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["admin", "fsck", "--rate", "64MiB", "--url", &env.server.url])
        .env("SLIPWAY_PASSWORD", &env.server.admin_password)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "blob {stray_digest} is in the store but recorded nowhere"
        )),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fsck found 3 problem(s)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The repair.
    let repaired = fsck(&env, json!({"repair": true})).await;
    let quarantined: Vec<&str> = repaired["quarantined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["digest"].as_str().unwrap())
        .collect();
    assert_eq!(quarantined.len(), 2, "{repaired}");
    assert!(quarantined.contains(&layer.as_str()) && quarantined.contains(&config.as_str()));
    assert_eq!(
        repaired["orphans_removed"],
        json!([stray_digest]),
        "{repaired}"
    );
    assert!(!stray_path.exists());
    let q = env
        .server
        .data_dir()
        .join("blobs/quarantine/sha256")
        .join(layer.strip_prefix("sha256:").unwrap());
    assert_eq!(
        std::fs::read(&q).unwrap(),
        bytes,
        "the damaged bytes are kept aside"
    );
    for repo in ["tool-pub", "tool-b"] {
        let (s, _, _) = env
            .get(&format!("/v2/{repo}/web/manifests/v1"), Some(&env.admin()))
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{repo}/web:v1 answers 404 now");
    }
    let (s, _, _) = env
        .get(&format!("/v2/tool-pub/web/blobs/{layer}"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, _, a) = env
        .get("/api/v1/audit?action=fsck.quarantine", Some(&env.admin()))
        .await;
    let audit = String::from_utf8_lossy(&a);
    assert!(
        audit.contains(&layer) && audit.contains("tool-pub/web@"),
        "{audit}"
    );
    // tool-a is untouched.
    let (s, _, _) = env
        .get("/v2/tool-a/web/manifests/v1", Some(&env.admin()))
        .await;
    assert_eq!(s, StatusCode::OK);

    let again = fsck(&env, json!({})).await;
    assert_eq!(again["problems"], json!([]), "{again}");
    // The same image pushed again is whole.
    env.push_image("tool-pub/web", "v1", b"tool-pub").await;
    let (s, _, b) = env
        .get(&format!("/v2/tool-pub/web/blobs/{layer}"), None)
        .await;
    assert_eq!((s, b), (StatusCode::OK, b"tool-pub-layer".to_vec()));
    let last = fsck(&env, json!({"sizes_only": true})).await;
    assert_eq!(last["problems"], json!([]), "{last}");
    assert_eq!(last["bytes_hashed"], 0, "{last}");
}
