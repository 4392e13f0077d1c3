//! A scaled-out deployment as a load balancer without stickiness shows it:
//! replicas sharing one PostgreSQL database and one SeaweedFS prefix
//! (`slipway_registry::testing::Replicas`) behind [`RoundRobin`], a reverse
//! proxy that sends each request to the next replica in turn. Used by the
//! conformance suite (`suite.rs`) and the real clients (`replicas.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use futures::TryStreamExt;
use slipway_registry::Config;
use slipway_registry::testing::Replicas;
use slipway_storage::testing::SeaweedFs;

/// A reverse proxy that sends each request to the next replica in turn,
/// like a load balancer without stickiness.
pub struct RoundRobin {
    /// `host:port` of the proxy.
    pub host: String,
    hits: Arc<Vec<AtomicUsize>>,
    redirects: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Upstreams {
    urls: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    hits: Arc<Vec<AtomicUsize>>,
    redirects: Arc<AtomicUsize>,
    client: reqwest::Client,
}

async fn forward(State(up): State<Upstreams>, req: Request) -> Response {
    let i = up.next.fetch_add(1, Ordering::Relaxed) % up.urls.len();
    up.hits[i].fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let target = format!(
        "{}{}",
        up.urls[i],
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut out = up.client.request(parts.method, target);
    for (name, value) in &parts.headers {
        // Host stays the proxy's: the token realm must point back here.
        out = out.header(name, value);
    }
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    let resp = match out.body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            return Response::builder()
                .status(502)
                .body(Body::from(format!("proxy: {e}")))
                .expect("a response");
        }
    };
    if resp.status().is_redirection() {
        up.redirects.fetch_add(1, Ordering::Relaxed);
    }
    let mut builder = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        builder = builder.header(name, value);
    }
    builder
        .body(Body::from_stream(
            resp.bytes_stream().map_err(std::io::Error::other),
        ))
        .expect("a response")
}

impl RoundRobin {
    pub async fn start(urls: Vec<String>) -> RoundRobin {
        let hits: Arc<Vec<AtomicUsize>> =
            Arc::new(urls.iter().map(|_| AtomicUsize::new(0)).collect());
        let redirects = Arc::new(AtomicUsize::new(0));
        let state = Upstreams {
            urls: Arc::new(urls),
            next: Arc::new(AtomicUsize::new(0)),
            hits: hits.clone(),
            redirects: redirects.clone(),
            client: reqwest::Client::builder()
                // Redirects go back to the client, as a load balancer does.
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
                .expect("HTTP client"),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let host = listener.local_addr().expect("address").to_string();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("proxy serves");
        });
        RoundRobin {
            host,
            hits,
            redirects,
            _task: task,
        }
    }

    /// How many requests each upstream received.
    pub fn hits(&self) -> Vec<usize> {
        self.hits
            .iter()
            .map(|h| h.load(Ordering::Relaxed))
            .collect()
    }

    /// How many answers were redirects (3xx).
    pub fn redirects(&self) -> usize {
        self.redirects.load(Ordering::Relaxed)
    }
}

/// Two replicas over one fresh PostgreSQL database and one prefix of the
/// shared SeaweedFS, and the round-robin proxy in front of them.
pub struct ScaledOut {
    pub replicas: Replicas,
    pub proxy: RoundRobin,
}

impl ScaledOut {
    /// Starts the deployment after `adjust` has changed each replica's
    /// configuration.
    pub async fn start(adjust: impl Fn(&mut Config)) -> ScaledOut {
        let replicas = Replicas::start(2, SeaweedFs::shared(), None, adjust).await;
        let urls = replicas.servers.iter().map(|s| s.url.clone()).collect();
        let proxy = RoundRobin::start(urls).await;
        ScaledOut { replicas, proxy }
    }

    /// `http://<proxy>`: what clients are given.
    pub fn url(&self) -> String {
        format!("http://{}", self.proxy.host)
    }

    /// Stops the replicas and drops the database.
    pub async fn stop(self) {
        self.replicas.stop().await;
    }
}
