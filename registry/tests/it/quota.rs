//! Quotas through the HTTP API: refusals while streaming, races for the last
//! bytes, base-project blobs for free, warnings, usage and recompute.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::security::{Env, digest};

const MIB: u64 = 1 << 20;

impl Env {
    pub async fn admin_json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (s, _, b) = self
            .send(
                method,
                path,
                Some(&self.admin()),
                body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
                Some("application/json"),
            )
            .await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    pub async fn project_with_quota(&self, name: &str, quota: u64) {
        let (s, v) = self
            .admin_json(
                Method::POST,
                "/api/v1/projects",
                Some(json!({"name": name, "quota_bytes": quota})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    pub async fn usage(&self, project: &str) -> Value {
        let (s, v) = self
            .admin_json(
                Method::GET,
                &format!("/api/v1/projects/{project}/usage"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// `POST ?digest=` of `bytes` as the admin.
    pub async fn put_blob(&self, repo: &str, bytes: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let (s, _, b) = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={}", digest(&bytes)),
                Some(&self.admin()),
                bytes,
                None,
            )
            .await;
        (s, b)
    }
}

fn random(n: u64, seed: u8) -> Vec<u8> {
    // Cheap, distinct, incompressible enough for a test.
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed as u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test]
async fn a_push_over_quota_is_refused_before_its_body_is_read() {
    let env = Env::new().await;
    env.project_with_quota("tool-q", MIB).await;
    // Headers only: the server must answer without waiting for 2 MiB.
    let mut c = tokio::net::TcpStream::connect(env.server.addr)
        .await
        .unwrap();
    let head = format!(
        "POST /v2/tool-q/web/blobs/uploads/?digest={} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
        digest(b"whatever"),
        env.admin(),
        2 * MIB
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("the server answers before the body arrives")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    let body = &text[text.find('{').unwrap()..];
    let body = &body[..=body.rfind('}').unwrap()];
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["errors"][0]["code"], "DENIED");
    assert_eq!(
        v["errors"][0]["message"],
        "quota exceeded for project tool-q: 0 B used of 1 MiB, this push needs 2 MiB"
    );
    assert_eq!(
        v["errors"][0]["detail"],
        json!({
            "project": "tool-q", "used_bytes": 0, "reserved_bytes": 0, "quota_bytes": MIB, "needed_bytes": 2 * MIB,
        })
    );
    let u = env.usage("tool-q").await;
    assert_eq!(
        (u["used_bytes"].as_u64(), u["reserved_bytes"].as_u64()),
        (Some(0), Some(0))
    );
}

#[tokio::test]
async fn racing_pushes_never_overshoot() {
    let env = Env::new().await;
    env.project_with_quota("tool-q", 3 * MIB).await;
    // Eight clients, 1 MiB each, chunked with Content-Length; room for three.
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let http = env.http.clone();
        let url = env.server.url.clone();
        let admin = env.admin();
        tasks.push(tokio::spawn(async move {
            let data = random(MIB, 100 + i);
            let r = http
                .post(format!("{url}/v2/tool-q/web/blobs/uploads/"))
                .header("authorization", &admin)
                .send()
                .await
                .unwrap();
            let location = r.headers()["location"].to_str().unwrap().to_owned();
            let r = http
                .patch(format!("{url}{location}"))
                .header("authorization", &admin)
                .header("content-range", format!("0-{}", MIB - 1))
                .body(data.clone())
                .send()
                .await
                .unwrap();
            if r.status() != StatusCode::ACCEPTED {
                return r.status();
            }
            http.put(format!("{url}{location}?digest={}", digest(&data)))
                .header("authorization", &admin)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::CREATED => ok += 1,
            StatusCode::FORBIDDEN => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 3, "exactly the room for three");
    let u = env.usage("tool-q").await;
    assert_eq!(u["reserved_bytes"], 3 * MIB);
    assert!(u["reserved_bytes"].as_u64().unwrap() + u["used_bytes"].as_u64().unwrap() <= 3 * MIB);
}

#[tokio::test]
async fn base_project_layers_cost_tools_nothing_and_usage_is_reported() {
    let env = Env::new().await;
    env.project_with_quota("platform", 100 * MIB).await;
    env.project_with_quota("tool-q", 100 * MIB).await;
    let base_layer = random(2 * MIB, 1);
    let app_layer = random(MIB / 2, 2);
    let admin = env.admin();
    let push = |repo: &'static str, layers: Vec<Vec<u8>>| {
        let env = &env;
        let admin = admin.clone();
        async move {
            let config = json!({"architecture": "amd64", "os": "linux", "repo": repo})
                .to_string()
                .into_bytes();
            for b in layers.iter().chain(std::iter::once(&config)) {
                let (s, body) = env.put_blob(repo, b.clone()).await;
                assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
            }
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
                "layers": layers.iter().map(|l| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(l), "size": l.len()})).collect::<Vec<_>>(),
            })
            .to_string()
            .into_bytes();
            let (s, _, b) = env
                .send(
                    Method::PUT,
                    &format!("/v2/{repo}/manifests/v1"),
                    Some(&admin),
                    manifest.clone(),
                    Some("application/vnd.oci.image.manifest.v1+json"),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
            (config.len() + manifest.len()) as u64
        }
    };
    let platform_meta = push("platform/run", vec![base_layer.clone()]).await;
    let tool_meta = push("tool-q/web", vec![base_layer.clone(), app_layer.clone()]).await;
    let u = env.usage("tool-q").await;
    assert_eq!(u["used_bytes"], app_layer.len() as u64 + tool_meta, "{u}");
    assert_eq!(u["blob_count"], 4);
    let p = env.usage("platform").await;
    assert_eq!(p["used_bytes"], base_layer.len() as u64 + platform_meta);
    assert_eq!(p["base"], true);
    // Listing every project, and recompute finds no drift.
    let (s, all) = env.admin_json(Method::GET, "/api/v1/usage", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|u| u["project"] == "tool-q")
    );
    let (s, r) = env
        .admin_json(Method::POST, "/api/v1/usage/recompute?dry_run=true", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["drifts"], json!([]), "{r}");
}

#[tokio::test]
async fn crossing_a_threshold_is_audited_once() {
    let env = Env::new().await;
    env.project_with_quota("tool-q", 2 * MIB).await;
    env.push_image("tool-q/web", "v1", &random(MIB * 17 / 10, 7))
        .await; // ~85 %
    let (_, page) = env
        .admin_json(Method::GET, "/api/v1/audit?action=quota.warning", None)
        .await;
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{page}");
    assert_eq!(entries[0]["detail"]["threshold_percent"], 80);
    assert_eq!(env.usage("tool-q").await["warnings"], json!([80]));
    env.push_image("tool-q/web", "v2", b"tiny").await;
    let (_, page) = env
        .admin_json(Method::GET, "/api/v1/audit?action=quota.warning", None)
        .await;
    assert_eq!(
        page["entries"].as_array().unwrap().len(),
        1,
        "not again for the same threshold"
    );
}

#[tokio::test]
async fn deleting_releases_and_gc_removes_unreferenced_blobs() {
    let env = Env::with(|c| {
        c.gc.blob_grace_secs = 0;
        c.quota.reservation_ttl_secs = 0;
    })
    .await;
    env.project_with_quota("tool-q", 10 * MIB).await;
    let d = env.push_image("tool-q/web", "v1", &random(MIB, 9)).await;
    let used = env.usage("tool-q").await["used_bytes"].as_u64().unwrap();
    assert!(used > MIB);
    let (s, _, _) = env
        .send(
            Method::DELETE,
            &format!("/v2/tool-q/web/manifests/{d}"),
            Some(&env.admin()),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(
        env.usage("tool-q").await["used_bytes"],
        0,
        "released at once"
    );
    // GC: dry run lists, the real run removes, pulls of what stays work.
    let (s, dry) = env
        .admin_json(Method::POST, "/api/v1/gc", Some(json!({"dry_run": true})))
        .await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    assert!(dry["blobs"].as_u64().unwrap() >= 2, "{dry}");
    let (_, run) = env
        .admin_json(Method::POST, "/api/v1/gc", Some(json!({})))
        .await;
    assert_eq!(run["blobs"], dry["blobs"], "{run}");
    assert!(run["bytes_freed"].as_u64().unwrap() > MIB);
    assert_eq!(
        env.get("/v2/tool-a/web/manifests/v1", Some(&env.admin()))
            .await
            .0,
        StatusCode::OK
    );
    let (s, again) = env
        .admin_json(Method::POST, "/api/v1/gc", Some(json!({})))
        .await;
    assert_eq!((s, again["blobs"].as_u64()), (StatusCode::OK, Some(0)));
}

#[tokio::test]
async fn reservations_last_as_configured_and_base_projects_follow_the_configuration() {
    let env = Env::with(|c| c.quota.reservation_ttl_secs = 0).await;
    env.project_with_quota("tool-q", 10 * MIB).await;
    let (s, _) = env.put_blob("tool-q/web", random(MIB, 3)).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        env.usage("tool-q").await["reserved_bytes"],
        0,
        "a reservation of 0 s holds nothing"
    );
    let env = Env::with(|c| c.quota.reservation_ttl_secs = 3600).await;
    env.project_with_quota("tool-q", 10 * MIB).await;
    env.put_blob("tool-q/web", random(MIB, 3)).await;
    assert_eq!(env.usage("tool-q").await["reserved_bytes"], MIB);
    // `tool-pub` becomes a base project when the configuration says so.
    let (_, p) = env
        .admin_json(Method::GET, "/api/v1/projects/tool-pub", None)
        .await;
    assert_eq!(p["base"], false);
    let meta = env.server.state.meta.clone();
    meta.set_base_projects(&["platform".into(), "tool-pub".into()])
        .await
        .unwrap();
    env.server.state.auth.forget_project("tool-pub");
    let (_, p) = env
        .admin_json(Method::GET, "/api/v1/projects/tool-pub", None)
        .await;
    assert_eq!(p["base"], true);
    let (_, r) = env
        .admin_json(Method::POST, "/api/v1/usage/recompute?dry_run=true", None)
        .await;
    assert_eq!(
        r["drifts"],
        json!([]),
        "changing the base projects keeps the counts exact: {r}"
    );
}
