//! Requests through the real router, in process (`tower::ServiceExt::oneshot`).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use slipway_registry::config::Secret;
use slipway_registry::{AppState, Config, server::router};
use tower::ServiceExt;

const ADMIN_PASSWORD: &str = "api-test-password";

async fn app() -> (axum::Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.auth.admin_password = Some(Secret::new(ADMIN_PASSWORD));
    let state = AppState::open(config).await.unwrap();
    state
        .meta
        .project_create("tool-a", false, None, false)
        .await
        .unwrap();
    (router(state), dir)
}

async fn send(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: &'static [u8],
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("admin:{ADMIN_PASSWORD}"));
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Basic {basic}"))
        .body(Body::from(body))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes().to_vec(),
    )
}

#[tokio::test]
async fn health_and_readiness() {
    let (app, _dir) = app().await;
    assert_eq!(send(&app, "GET", "/healthz", b"").await.0, StatusCode::OK);
    assert_eq!(send(&app, "GET", "/readyz", b"").await.0, StatusCode::OK);
}

#[tokio::test]
async fn wrong_methods_are_refused_with_allow() {
    let (app, _dir) = app().await;
    let (status, headers, body) = send(&app, "POST", "/v2/a/manifests/latest", b"").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET, HEAD, PUT, DELETE");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["errors"][0]["code"], "UNSUPPORTED");
}

#[tokio::test]
async fn metrics_count_requests_by_route() {
    let (app, _dir) = app().await;
    send(&app, "GET", "/v2/", b"").await;
    send(&app, "POST", "/v2/tool-a/x/blobs/uploads/", b"").await;
    let (status, _, body) = send(&app, "GET", "/metrics", b"").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("slipway_http_requests_total{route=\"v2.base\""),
        "{text}"
    );
    assert!(text.contains("route=\"v2.upload_start\""), "{text}");
    assert!(text.contains("slipway_uploads_in_progress 1"), "{text}");
    assert!(
        text.contains("slipway_http_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn the_openapi_document_lists_the_admin_routes() {
    let (app, _dir) = app().await;
    let (status, _, body) = send(&app, "GET", "/api/v1/openapi.json", b"").await;
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for path in [
        "/api/v1/projects",
        "/api/v1/projects/{project}",
        "/api/v1/projects/{project}/robots",
        "/api/v1/projects/{project}/robots/{robot}",
        "/api/v1/projects/{project}/robots/{robot}/rotate",
        "/api/v1/audit",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
}
