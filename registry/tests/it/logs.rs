//! Secrets and tokens never reach the logs, at any level.

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::security::{Env, basic};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_and_tokens_never_appear_in_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("this test owns the global logger");

    let env = Env::new().await;
    let admin = env.admin();
    let admin_password = env.server.admin_password.clone();
    let secret = env.robot("tool-a", "ci", &["pull"]).await;
    let robot = basic("robot$tool-a+ci", &secret);
    let (_, v) = env
        .token(Some(&robot), &["repository:tool-a/web:pull"])
        .await;
    let robot_token = v["token"].as_str().unwrap().to_owned();
    assert_eq!(
        env.get(
            "/v2/tool-a/web/manifests/v1",
            Some(&format!("Bearer {robot_token}"))
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        env.get("/v2/tool-a/web/manifests/v1", Some(&robot)).await.0,
        StatusCode::OK
    );
    let form = format!(
        "grant_type=password&username=admin&password={}&service=slipway&access_type=offline",
        env.server.admin_password
    );
    let (s, _, b) = env
        .send(
            Method::POST,
            "/auth/token",
            None,
            form.into_bytes(),
            Some("application/x-www-form-urlencoded"),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_slice(&b).unwrap();
    let admin_token = v["access_token"].as_str().unwrap().to_owned();
    let refresh = v["refresh_token"].as_str().unwrap().to_owned();
    let (s, _, b) = env
        .send(
            Method::POST,
            "/api/v1/projects/tool-a/robots/ci/rotate",
            Some(&admin),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let rotated = serde_json::from_slice::<Value>(&b).unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    // Failures log too: wrong secrets and bad tokens.
    env.get(
        "/v2/tool-a/web/manifests/v1",
        Some(&basic("robot$tool-a+ci", "wrong-secret-xyz")),
    )
    .await;
    env.get(
        "/v2/tool-a/web/manifests/v1",
        Some(&format!("Bearer {robot_token}")),
    )
    .await;
    env.send(
        Method::POST,
        "/api/v1/projects",
        Some(&admin),
        json!({"name": "tool-z"}).to_string().into_bytes(),
        Some("application/json"),
    )
    .await;
    drop(env);

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("request done"),
        "the capture works: {}",
        &logs[..logs.len().min(500)]
    );
    let admin_basic = admin.trim_start_matches("Basic ").to_owned();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&admin_basic)
            .unwrap(),
        format!("admin:{}", admin_password).into_bytes()
    );
    for (what, needle) in [
        ("admin password", admin_password.clone()),
        ("admin Basic header", admin_basic),
        ("robot secret", secret.clone()),
        ("rotated secret", rotated),
        ("robot token", robot_token),
        ("admin token", admin_token),
        ("refresh token", refresh),
        (
            "Basic header",
            robot.trim_start_matches("Basic ").to_owned(),
        ),
        ("wrong secret", "wrong-secret-xyz".to_owned()),
    ] {
        assert!(!logs.contains(&needle), "the {what} is in the logs");
    }
    assert!(
        !logs.to_ascii_lowercase().contains("authorization: "),
        "an Authorization header is in the logs"
    );
}
