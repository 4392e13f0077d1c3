//! Real clients against a deployment of two replicas sharing PostgreSQL and
//! SeaweedFS: skopeo pushes through a round-robin proxy, so consecutive
//! requests of one push (POST, PATCH, PUT) land on different replicas; then
//! skopeo and containerd pull from one replica directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use futures::TryStreamExt;
use slipway_registry::testing::Replicas;
use slipway_storage::testing::SeaweedFs;

use crate::interop::check_pulled;
use crate::interop::image::{Image, Layout, referenced_blobs};
use crate::interop::tools::{Containerd, Skopeo, require_root, run};

/// A reverse proxy that sends each request to the next replica in turn,
/// like a load balancer without stickiness.
struct RoundRobin {
    host: String,
    hits: Arc<Vec<AtomicUsize>>,
    _task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Upstreams {
    urls: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    hits: Arc<Vec<AtomicUsize>>,
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
    async fn start(urls: Vec<String>) -> RoundRobin {
        let hits: Arc<Vec<AtomicUsize>> =
            Arc::new(urls.iter().map(|_| AtomicUsize::new(0)).collect());
        let state = Upstreams {
            urls: Arc::new(urls),
            next: Arc::new(AtomicUsize::new(0)),
            hits: hits.clone(),
            client: reqwest::Client::builder()
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
            _task: task,
        }
    }

    fn hits(&self) -> Vec<usize> {
        self.hits
            .iter()
            .map(|h| h.load(Ordering::Relaxed))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_through_alternating_replicas_and_skopeo_and_ctr_pull_from_one() {
    require_root("containerd and ctr");
    let weed = SeaweedFs::shared();
    let replicas = Replicas::start(2, weed, None, |_| {}).await;
    replicas.create_project("tool-replicas", true).await;
    let urls: Vec<String> = replicas.servers.iter().map(|s| s.url.clone()).collect();
    let proxy = RoundRobin::start(urls).await;
    let work = tempfile::tempdir().expect("temporary directory");
    let skopeo = Skopeo::find(work.path());
    // Layers over 5 MiB: S3 parts and tails cross replicas too.
    let image = Image::build(&work.path().join("in"), 7 << 20).await;
    let (desc, manifest) = image.manifest();

    run(skopeo.cmd([
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &replicas.admin_creds(),
        &image.reference(),
        &format!("docker://{}/tool-replicas/app:v1", proxy.host),
    ]))
    .await;
    let hits = proxy.hits();
    assert!(
        hits.iter().all(|h| *h >= 5),
        "both replicas took part of the push: {hits:?}"
    );

    // Out of the second replica with skopeo, byte for byte.
    let b = replicas.servers[1].host();
    let out = Layout(work.path().join("out"));
    run(skopeo.cmd([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{b}/tool-replicas/app:v1"),
        &out.reference("v1"),
    ]))
    .await;
    let (out_desc, out_manifest) = out.manifest("v1");
    assert_eq!(out_desc.digest, desc.digest);
    assert!(out_manifest == manifest);
    for blob in referenced_blobs(&manifest) {
        assert!(
            out.blob(&blob.digest) == image.layout.blob(&blob.digest),
            "blob {} read back from the other replica differs",
            blob.digest
        );
    }

    // And with containerd, the kubelet's path, from the first replica.
    let a = replicas.servers[0].host();
    let daemon = Containerd::start().await;
    let reference = format!("{a}/tool-replicas/app:v1");
    run(daemon.ctr(["image", "pull", "--plain-http", &reference])).await;
    check_pulled(&daemon, &reference, &desc.digest).await;
    drop(daemon);
    replicas.stop().await;
}
