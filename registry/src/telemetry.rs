//! Logs and metrics.
//!
//! One span per request (`request.id`, `http.method`, `http.route`) and one
//! completion event with `http.status` and `duration_ms`. Stable field names;
//! never logged: tokens, `Authorization`, secrets, bodies. 5xx causes are
//! logged here, once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;

use crate::config::{LogConfig, LogFormat};
use crate::error::ErrorCause;
use crate::server::AppState;
use crate::v2::path;

/// Installs the global tracing subscriber (for the binary; tests skip it).
pub fn init_logging(log: &LogConfig) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.filter)
        .map_err(|e| anyhow::anyhow!("log.filter {:?} is not a valid filter: {e}", log.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("slipway_http_request_duration_seconds".into()),
                    &buckets,
                )
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests that embed
            // several servers share one process): then this handle only
            // renders an empty set, which is acceptable there.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        "slipway_http_requests_total",
        "HTTP requests by route, method and status"
    );
    metrics::describe_histogram!(
        "slipway_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by route and method"
    );
    metrics::describe_counter!(
        "slipway_http_response_bytes_total",
        metrics::Unit::Bytes,
        "Bytes sent in response bodies"
    );
    metrics::describe_counter!(
        "slipway_upload_bytes_total",
        metrics::Unit::Bytes,
        "Blob bytes received in uploads"
    );
    metrics::describe_gauge!(
        "slipway_uploads_in_progress",
        "Uploads started and not yet finished or cancelled"
    );
}

/// The route label of a request path.
pub fn route_label(path: &str) -> &'static str {
    if let Some(rest) = path.strip_prefix("/v2/") {
        return path::parse(rest).map(|e| e.label()).unwrap_or("v2.other");
    }
    if path.starts_with("/api/v1/") {
        return "api";
    }
    match path {
        "/v2" => "v2.base",
        "/auth/token" => "auth.token",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        _ => "other",
    }
}

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// Request span, completion log, and metrics.
pub async fn track(State(_state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = route_label(req.uri().path());
    let id = REQUEST_SEQ.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "request",
        request.id = id,
        http.method = %method,
        http.route = route,
    );
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    let _enter = span.enter();
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    if let Some(cause) = response.extensions().get::<ErrorCause>() {
        tracing::error!(http.status = status, duration_ms, error = %cause.0, "request failed");
    } else {
        tracing::info!(http.status = status, duration_ms, "request done");
    }
    let method_label = method_label(&method);
    metrics::counter!(
        "slipway_http_requests_total",
        "route" => route,
        "method" => method_label,
        "status" => status_label(status),
    )
    .increment(1);
    metrics::histogram!(
        "slipway_http_request_duration_seconds",
        "route" => route,
        "method" => method_label,
    )
    .record(elapsed.as_secs_f64());
    if let Some(len) = response
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && method != axum::http::Method::HEAD
    {
        metrics::counter!("slipway_http_response_bytes_total", "route" => route).increment(len);
    }
    response
}

fn method_label(m: &axum::http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "POST" => "POST",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

fn status_label(status: u16) -> &'static str {
    // Statuses as static strings, so labels cost no allocation.
    const KNOWN: &[(u16, &str)] = &[
        (200, "200"),
        (201, "201"),
        (202, "202"),
        (204, "204"),
        (206, "206"),
        (307, "307"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (409, "409"),
        (413, "413"),
        (416, "416"),
        (429, "429"),
        (500, "500"),
        (503, "503"),
        (507, "507"),
    ];
    KNOWN
        .iter()
        .find(|(s, _)| *s == status)
        .map(|(_, l)| *l)
        .unwrap_or(match status / 100 {
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        })
}
