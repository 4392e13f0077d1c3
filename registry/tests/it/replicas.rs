//! Several stateless replicas over PostgreSQL and S3 (SeaweedFS, started by
//! the tests): uploads hop between replicas, quotas hold across them, and
//! faults of the object store are answered cleanly.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use slipway_registry::Config;
use slipway_registry::config::Secret;
use slipway_registry::testing::{Replicas, TestServer, use_s3};
use slipway_storage::testing::{ACCESS_KEY, PostgresDb, PrivatePostgres, SECRET_KEY, SeaweedFs};

use crate::security::{basic, digest};

const MIB: usize = 1 << 20;

/// Replicas sharing one database, one bucket prefix, one signing key and
/// one admin password, with an HTTP client that speaks as the admin.
pub struct Deployment {
    pub replicas: Replicas,
    pub admin: String,
    pub http: reqwest::Client,
}

pub fn s3_config(c: &mut Config, weed: &SeaweedFs, prefix: &str) {
    use_s3(c, weed, prefix);
}

impl Deployment {
    pub async fn start(n: usize, weed: &SeaweedFs, adjust: impl Fn(&mut Config)) -> Deployment {
        Self::start_on(None, n, weed, adjust).await
    }

    /// Replicas on a fresh database of the PostgreSQL server `postgres`
    /// (default: the machine's).
    pub async fn start_on(
        postgres: Option<&str>,
        n: usize,
        weed: &SeaweedFs,
        adjust: impl Fn(&mut Config),
    ) -> Deployment {
        let replicas = Replicas::start(n, weed, postgres, adjust).await;
        let admin = basic("admin", &replicas.admin_password);
        Deployment {
            replicas,
            admin,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, replica: usize, path: &str) -> String {
        format!("{}{path}", self.replicas.servers[replica].url)
    }

    pub async fn send(
        &self,
        replica: usize,
        method: Method,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let make = || {
            let mut req = self
                .http
                .request(method.clone(), self.url(replica, path))
                .header("authorization", &self.admin)
                .body(body.clone());
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            req
        };
        // A server that answered before reading a whole request body (a
        // 503 mid-upload) closes that connection; a request the client
        // had already put on it fails without an answer. An idempotent
        // one is sent again, as clients do.
        let resp = match make().send().await {
            Err(e) if e.is_request() && matches!(method, Method::GET | Method::HEAD) => {
                eprintln!("sent again after {e}");
                make().send().await.expect("request sent")
            }
            r => r.expect("request sent"),
        };
        let (status, headers) = (resp.status(), resp.headers().clone());
        (status, headers, resp.bytes().await.unwrap().to_vec())
    }

    pub async fn project(&self, name: &str, quota: Option<u64>) {
        let (s, _, b) = self
            .send(
                0,
                Method::POST,
                "/api/v1/projects",
                json!({"name": name, "quota_bytes": quota})
                    .to_string()
                    .into_bytes(),
                &[("content-type", "application/json".into())],
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    }

    pub async fn stop(self) {
        self.replicas.stop().await;
    }
}

pub fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n as u32)
        .map(|i| ((i.wrapping_mul(2654435761) >> 11) as u8) ^ seed)
        .collect()
}

/// Pushes `blob` through `chunks` PATCHes whose replica alternates, and
/// finishes on the last replica. Returns the digest.
async fn chunked_across(d: &Deployment, repo: &str, blob: &[u8], chunks: usize) -> String {
    let (s, h, _) = d
        .send(
            0,
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            Vec::new(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let mut location = h["location"].to_str().unwrap().to_owned();
    let size = blob.len().div_ceil(chunks);
    for (i, chunk) in blob.chunks(size).enumerate() {
        let replica = i % d.replicas.servers.len();
        let start = i * size;
        let range = format!("{start}-{}", start + chunk.len() - 1);
        let (s, h, b) = d
            .send(
                replica,
                Method::PATCH,
                &location,
                chunk.to_vec(),
                &[
                    ("content-range", range),
                    ("content-type", "application/octet-stream".into()),
                ],
            )
            .await;
        assert_eq!(
            s,
            StatusCode::ACCEPTED,
            "chunk {i} on replica {replica}: {}",
            String::from_utf8_lossy(&b)
        );
        location = h["location"].to_str().unwrap().to_owned();
    }
    let dg = digest(blob);
    let last = chunks % d.replicas.servers.len();
    let (s, _, b) = d
        .send(
            last,
            Method::PUT,
            &format!("{location}?digest={dg}"),
            Vec::new(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    dg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_hop_between_replicas_and_pulls_work_on_any() {
    let weed = SeaweedFs::shared();
    let d = Deployment::start(2, weed, |_| {}).await;
    d.project("tool-r", None).await;
    // 12 MiB in three chunks over two replicas: parts and tails cross over.
    let blob = data(12 * MIB + 12345, 1);
    let dg = chunked_across(&d, "tool-r/web", &blob, 3).await;
    let config = json!({"os": "linux", "architecture": "amd64"})
        .to_string()
        .into_bytes();
    let (s, _, _) = d
        .send(
            1,
            Method::POST,
            &format!("/v2/tool-r/web/blobs/uploads/?digest={}", digest(&config)),
            config.clone(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": dg, "size": blob.len()}],
    })
    .to_string()
    .into_bytes();
    let (s, _, b) = d
        .send(
            0,
            Method::PUT,
            "/v2/tool-r/web/manifests/v1",
            manifest.clone(),
            &[(
                "content-type",
                "application/vnd.oci.image.manifest.v1+json".into(),
            )],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    // Pulled through the other replica, whole and in ranges.
    let (s, _, m) = d
        .send(
            1,
            Method::GET,
            "/v2/tool-r/web/manifests/v1",
            Vec::new(),
            &[],
        )
        .await;
    assert_eq!((s, m), (StatusCode::OK, manifest));
    let (s, _, got) = d
        .send(
            1,
            Method::GET,
            &format!("/v2/tool-r/web/blobs/{dg}"),
            Vec::new(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        got == blob,
        "the blob reads back whole through the other replica"
    );
    let (s, h, part) = d
        .send(
            1,
            Method::GET,
            &format!("/v2/tool-r/web/blobs/{dg}"),
            Vec::new(),
            &[("range", format!("bytes={}-{}", 5 * MIB - 3, 5 * MIB + 2))],
        )
        .await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part, &blob[5 * MIB - 3..5 * MIB + 3]);
    assert_eq!(
        h["content-range"],
        format!("bytes {}-{}/{}", 5 * MIB - 3, 5 * MIB + 2, blob.len()).as_str()
    );
    // The same blob pushed again is stored once (a HEAD says it is there).
    let (s, _, _) = d
        .send(
            0,
            Method::HEAD,
            &format!("/v2/tool-r/web/blobs/{dg}"),
            Vec::new(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_hold_across_replicas() {
    let weed = SeaweedFs::shared();
    let d = std::sync::Arc::new(Deployment::start(2, weed, |_| {}).await);
    d.project("tool-q", Some(3 * MIB as u64)).await;
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let replica = (i % 2) as usize;
            let blob = data(MIB, 10 + i);
            let (s, h, _) = d
                .send(
                    replica,
                    Method::POST,
                    "/v2/tool-q/web/blobs/uploads/",
                    Vec::new(),
                    &[],
                )
                .await;
            assert_eq!(s, StatusCode::ACCEPTED);
            let location = h["location"].to_str().unwrap().to_owned();
            let (s, _, _) = d
                .send(
                    replica,
                    Method::PATCH,
                    &location,
                    blob.clone(),
                    &[("content-range", format!("0-{}", MIB - 1))],
                )
                .await;
            if s != StatusCode::ACCEPTED {
                return s;
            }
            d.send(
                1 - replica,
                Method::PUT,
                &format!("{location}?digest={}", digest(&blob)),
                Vec::new(),
                &[],
            )
            .await
            .0
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::FORBIDDEN => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        created, 3,
        "room for exactly three, whichever replica took them"
    );
    let (_, _, b) = d
        .send(
            1,
            Method::GET,
            "/api/v1/projects/tool-q/usage",
            Vec::new(),
            &[],
        )
        .await;
    let u: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(u["reserved_bytes"], 3 * MIB as u64);
    std::sync::Arc::into_inner(d).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_redirects_serve_the_blob_and_its_ranges() {
    let weed = SeaweedFs::shared();
    let d = Deployment::start(1, weed, |c| c.storage.s3.redirect = true).await;
    d.project("tool-p", None).await;
    let blob = data(2 * MIB, 3);
    let (s, _, _) = d
        .send(
            0,
            Method::POST,
            &format!("/v2/tool-p/web/blobs/uploads/?digest={}", digest(&blob)),
            blob.clone(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .get(d.url(0, &format!("/v2/tool-p/web/blobs/{}", digest(&blob))))
        .header("authorization", &d.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&weed.endpoint), "{location}");
    // HEAD never touches the data: answered by the registry.
    let (s, h, _) = d
        .send(
            0,
            Method::HEAD,
            &format!("/v2/tool-p/web/blobs/{}", digest(&blob)),
            Vec::new(),
            &[],
        )
        .await;
    assert_eq!(
        (s, h["content-length"].to_str().unwrap()),
        (StatusCode::OK, "2097152")
    );
    // Following the redirect, whole and with a Range.
    let whole = reqwest::get(&location)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(whole == blob);
    let r = reqwest::Client::new()
        .get(&location)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), &blob[100..200]);
    // A client that follows redirects gets the bytes from one GET.
    let (s, _, got) = d
        .send(
            0,
            Method::GET,
            &format!("/v2/tool-p/web/blobs/{}", digest(&blob)),
            Vec::new(),
            &[("range", "bytes=0-9".into())],
        )
        .await;
    assert_eq!(
        (s, got.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &blob[..10])
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_mid_push_is_a_503_and_the_same_push_succeeds_after() {
    let mut weed = SeaweedFs::start();
    let d = Deployment::start(1, &weed, |_| {}).await;
    d.project("tool-f", None).await;
    let blob = data(11 * MIB, 7);
    let dg = digest(&blob);
    let (s, h, _) = d
        .send(
            0,
            Method::POST,
            "/v2/tool-f/web/blobs/uploads/",
            Vec::new(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let location = h["location"].to_str().unwrap().to_owned();
    let first = 6 * MIB;
    let (s, _, _) = d
        .send(
            0,
            Method::PATCH,
            &location,
            blob[..first].to_vec(),
            &[("content-range", format!("0-{}", first - 1))],
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);

    weed.stop();
    let (s, _, b) = d
        .send(
            0,
            Method::PATCH,
            &location,
            blob[first..].to_vec(),
            &[("content-range", format!("{first}-{}", blob.len() - 1))],
        )
        .await;
    assert_eq!(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&b)
    );
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAVAILABLE");
    // The registry itself still answers, and nothing half-written shows.
    let (s, _, _) = d
        .send(
            0,
            Method::HEAD,
            &format!("/v2/tool-f/web/blobs/{dg}"),
            Vec::new(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, h, _) = d.send(0, Method::GET, &location, Vec::new(), &[]).await;
    assert_eq!(
        (s, h["range"].to_str().unwrap()),
        (StatusCode::NO_CONTENT, format!("0-{}", first - 1).as_str())
    );

    weed.resume();
    // SeaweedFS answers writes before every old volume is registered again
    // (a read of the upload's tail may fail for a few seconds): a client
    // retries a 503, as the error asks; the upload must still be whole.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (s, _, b) = d
            .send(
                0,
                Method::PATCH,
                &location,
                blob[first..].to_vec(),
                &[("content-range", format!("{first}-{}", blob.len() - 1))],
            )
            .await;
        if s == StatusCode::SERVICE_UNAVAILABLE && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            continue;
        }
        assert_eq!(s, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&b));
        break;
    }
    let (s, _, b) = d
        .send(
            0,
            Method::PUT,
            &format!("{location}?digest={dg}"),
            Vec::new(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let (s, _, got) = d
        .send(
            0,
            Method::GET,
            &format!("/v2/tool-f/web/blobs/{dg}"),
            Vec::new(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(got == blob);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_is_answered_503_and_slipway_recovers_by_itself() {
    let pg = PrivatePostgres::start();
    let weed = SeaweedFs::shared();
    let d = Deployment::start_on(Some(&pg.url), 2, weed, |c| c.database.max_connections = 4).await;
    d.project("tool-db", None).await;
    let blob = data(1000, 5);
    let path = format!("/v2/tool-db/web/blobs/uploads/?digest={}", digest(&blob));
    let (s, _, _) = d.send(0, Method::POST, &path, blob.clone(), &[]).await;
    assert_eq!(s, StatusCode::CREATED);

    pg.stop();
    for replica in 0..2 {
        let started = std::time::Instant::now();
        let (s, _, b) = d
            .send(
                replica,
                Method::HEAD,
                &format!("/v2/tool-db/web/blobs/{}", digest(&blob)),
                Vec::new(),
                &[],
            )
            .await;
        assert_eq!(
            s,
            StatusCode::SERVICE_UNAVAILABLE,
            "replica {replica}: {}",
            String::from_utf8_lossy(&b)
        );
        let (s, _, b) = d
            .send(
                replica,
                Method::GET,
                "/v2/tool-db/web/tags/list",
                Vec::new(),
                &[],
            )
            .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["errors"][0]["code"], "UNAVAILABLE");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(40),
            "answered in {:?}",
            started.elapsed()
        );
        let (s, _, _) = d
            .send(replica, Method::GET, "/readyz", Vec::new(), &[])
            .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    }

    pg.resume();
    for replica in 0..2 {
        let (s, _, got) = d
            .send(
                replica,
                Method::GET,
                &format!("/v2/tool-db/web/blobs/{}", digest(&blob)),
                Vec::new(),
                &[],
            )
            .await;
        assert_eq!(
            (s, got),
            (StatusCode::OK, blob.clone()),
            "replica {replica} recovered"
        );
    }
    let more = data(2000, 6);
    let path = format!("/v2/tool-db/web/blobs/uploads/?digest={}", digest(&more));
    let (s, _, _) = d.send(1, Method::POST, &path, more, &[]).await;
    assert_eq!(s, StatusCode::CREATED);
    d.stop().await;
}

/// A `slipway serve` process (for what only a real process can show: a
/// replica killed with SIGKILL).
struct Process {
    child: tokio::process::Child,
    url: String,
}

impl Process {
    async fn start(config: &std::path::Path, password: &str) -> Process {
        Self::start_env(config, password, &[]).await
    }

    /// `slipway serve --config <config>` with `env` added to its environment.
    async fn start_env(config: &std::path::Path, password: &str, env: &[(&str, &str)]) -> Process {
        let text = std::fs::read_to_string(config).unwrap();
        let listen = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap()
            .to_owned();
        let log_path = config.with_extension("log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(["serve", "--config"])
            .arg(config)
            .env("SLIPWAY_ADMIN_PASSWORD", password)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start slipway");
        let url = format!("http://{listen}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("{url}/readyz")).await
                && r.status() == StatusCode::OK
            {
                return Process { child, url };
            }
            let exited = child.try_wait().unwrap();
            assert!(
                exited.is_none() && std::time::Instant::now() < deadline,
                "slipway at {url} did not become ready ({exited:?}); its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_chunk_leaves_an_upload_the_other_finishes() {
    let weed = SeaweedFs::shared();
    let db = PostgresDb::fresh(None).await;
    let dir = tempfile::tempdir().unwrap();
    let password = "kill-test-password";
    let prefix = format!("kill-{}/", uuid::Uuid::new_v4().simple());
    let mut configs = Vec::new();
    for name in ["a", "b"] {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{data}\"\n\n[database]\nurl = \"{db}\"\n\n\
                 [auth]\nkey_file = \"{key}\"\nsecrets_key_file = \"{secrets}\"\n\n[storage]\nbackend = \"s3\"\n\n[storage.s3]\n\
                 endpoint = \"{endpoint}\"\nbucket = \"slipway-test\"\nprefix = \"{prefix}\"\n\
                 access_key = \"{ACCESS_KEY}\"\nsecret_key = \"{SECRET_KEY}\"\npart_size_mib = 5\n\
                 create_bucket = true\n\n[log]\nfilter = \"warn\"\n",
                port = free_port(),
                data = dir.path().join(name).display(),
                db = db.url,
                key = dir.path().join("key.pem").display(),
                secrets = dir.path().join("secrets-key").display(),
                endpoint = weed.endpoint,
            ),
        )
        .unwrap();
        configs.push(path);
    }
    let mut a = Process::start(&configs[0], password).await;
    let b = Process::start(&configs[1], password).await;
    let admin = basic("admin", password);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/v1/projects", a.url))
        .header("authorization", &admin)
        .json(&json!({"name": "tool-k"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let blob = data(13 * MIB, 9);
    let dg = digest(&blob);
    let r = http
        .post(format!("{}/v2/tool-k/web/blobs/uploads/", a.url))
        .header("authorization", &admin)
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let first = 6 * MIB;
    let r = http
        .patch(format!("{}{location}", a.url))
        .header("authorization", &admin)
        .header("content-range", format!("0-{}", first - 1))
        .body(blob[..first].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // The second chunk starts streaming into A; A dies in the middle.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let patch = http
        .patch(format!("{}{location}", a.url))
        .header("authorization", &admin)
        .header("content-range", format!("{first}-{}", blob.len() - 1))
        .header("content-length", (blob.len() - first).to_string())
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let in_flight = tokio::spawn(patch);
    for piece in blob[first..first + 3 * MIB].chunks(256 * 1024) {
        tx.send(Ok(bytes::Bytes::copy_from_slice(piece)))
            .await
            .unwrap();
    }
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    drop(tx);
    let answer = in_flight.await.unwrap();
    assert!(
        answer.is_err() || !answer.unwrap().status().is_success(),
        "the killed chunk was not acknowledged"
    );

    // The client asks the other replica where the upload stands, and goes on.
    let r = http
        .get(format!("{}{location}", b.url))
        .header("authorization", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let range = r.headers()["range"].to_str().unwrap().to_owned();
    let next: usize = range.split('-').nth(1).unwrap().parse::<usize>().unwrap() + 1;
    assert_eq!(next, first, "only the acknowledged chunk counts");
    let r = http
        .patch(format!("{}{location}", b.url))
        .header("authorization", &admin)
        .header("content-range", format!("{next}-{}", blob.len() - 1))
        .body(blob[next..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = http
        .put(format!("{}{location}?digest={dg}", b.url))
        .header("authorization", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = http
        .get(format!("{}/v2/tool-k/web/blobs/{dg}", b.url))
        .header("authorization", &admin)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        got == blob,
        "the blob finished on the other replica is whole"
    );
    drop(b);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_migrates_to_postgres_and_s3() {
    use crate::security::Env;
    // A single node with projects, images, a robot and an audit trail.
    let env = Env::new().await;
    let secret = env.robot("tool-a", "ci", &["pull"]).await;
    let robot = basic("robot$tool-a+ci", &secret);
    let (_, _, manifest_before) = env.get("/v2/tool-a/web/manifests/v1", Some(&robot)).await;
    let usage_before = env.usage("tool-a").await;
    let catalog_before = env.repositories().await;
    // A sealed secret and a trigger whose webhook secret is sealed too.
    let (st, v) = env
        .api(
            Method::PUT,
            "/api/v1/projects/tool-a/secrets/TOKEN",
            Some(&env.admin()),
            Some(json!({"value": "a-secret-value"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-a/triggers",
            Some(&env.admin()),
            Some(
                json!({"source_url": "https://gitlab.example.org/tool-a.git",
                        "secrets": ["TOKEN"]}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let trigger = v["trigger"]["id"].as_str().unwrap().to_owned();
    let hook_secret = v["secret"].as_str().unwrap().to_owned();
    let from = env.server.config.clone();
    let admin_password = env.server.admin_password.clone();
    let kept = env.server.stop().await.expect("a temporary data directory");

    // Into PostgreSQL and S3.
    let weed = SeaweedFs::shared();
    let db = PostgresDb::fresh(None).await;
    let target = tempfile::tempdir().unwrap();
    let mut to = Config::for_tests(target.path());
    to.database.url = db.url.clone();
    s3_config(
        &mut to,
        weed,
        &format!("migrated-{}/", uuid::Uuid::new_v4().simple()),
    );
    let report = slipway_registry::migrate(&from, &to).await.unwrap();
    assert!(report.missing.is_empty());
    assert!(report.blobs >= 6, "{report:?}");
    assert!(
        report
            .rows
            .iter()
            .any(|(t, n)| *t == "manifests" && *n == 3),
        "{report:?}"
    );
    // The target is not empty any more: a second run refuses.
    assert!(slipway_registry::migrate(&from, &to).await.is_err());

    to.auth.admin_password = Some(Secret::new(admin_password));
    let server = TestServer::start_config(to).await;
    let http = reqwest::Client::new();
    let get = |path: String, auth: String| {
        let http = http.clone();
        let url = format!("{}{path}", server.url);
        async move {
            let r = http
                .get(url)
                .header("authorization", auth)
                .send()
                .await
                .unwrap();
            (r.status(), r.bytes().await.unwrap().to_vec())
        }
    };
    // The robot's secret still works; the image is whole; usage is the same.
    let (s, manifest_after) = get("/v2/tool-a/web/manifests/v1".into(), robot.clone()).await;
    assert_eq!((s, &manifest_after), (StatusCode::OK, &manifest_before));
    let m: Value = serde_json::from_slice(&manifest_after).unwrap();
    for layer in m["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        let (s, bytes) = get(format!("/v2/tool-a/web/blobs/{d}"), robot.clone()).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(digest(&bytes), d);
    }
    let admin = basic("admin", &server.admin_password);
    let (_, u) = get("/api/v1/projects/tool-a/usage".into(), admin.clone()).await;
    let u: Value = serde_json::from_slice(&u).unwrap();
    assert_eq!(u["used_bytes"], usage_before["used_bytes"]);
    let (_, c) = get("/v2/_catalog".into(), admin.clone()).await;
    let c: Value = serde_json::from_slice(&c).unwrap();
    assert_eq!(c["repositories"], json!(catalog_before));
    let (_, a) = get("/api/v1/audit?action=robot.create".into(), admin.clone()).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&a).unwrap()["entries"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The secrets came along, and the key that opens them (the server
    // refuses to start with a key that does not): the webhook secret still
    // signs deliveries.
    let (_, t) = get(format!("/api/v1/triggers/{trigger}"), admin.clone()).await;
    let t: Value = serde_json::from_slice(&t).unwrap();
    assert_eq!(t["secrets"], json!(["TOKEN"]), "{t}");
    let (_, l) = get("/api/v1/projects/tool-a/secrets".into(), admin.clone()).await;
    assert!(String::from_utf8_lossy(&l).contains("TOKEN"));
    let ping = br#"{"zen": "Keep it logically awesome.", "hook_id": 1}"#;
    let r = http
        .post(format!("{}/api/v1/hooks/{trigger}", server.url))
        .header("x-github-event", "ping")
        .header("x-github-delivery", "after-migration")
        .header(
            "x-hub-signature-256",
            format!(
                "sha256={}",
                slipway_registry::triggers::sign(hook_secret.as_bytes(), ping)
            ),
        )
        .body(ping.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    // New rows get new ids after the copied ones.
    let (s, _, b) = env_push_robot(&http, &server.url, &admin).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    server.stop().await;
    db.drop_db().await;
    std::fs::remove_dir_all(kept).ok();
}

async fn env_push_robot(
    http: &reqwest::Client,
    url: &str,
    admin: &str,
) -> (StatusCode, (), String) {
    let r = http
        .post(format!("{url}/api/v1/projects/tool-b/robots"))
        .header("authorization", admin)
        .json(&json!({"name": "after-migration"}))
        .send()
        .await
        .unwrap();
    (r.status(), (), r.text().await.unwrap())
}

/// One request with `auth`: status, headers, body.
async fn call(
    http: &reqwest::Client,
    method: Method,
    url: String,
    auth: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = http
        .request(method, url)
        .header("authorization", auth)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.expect("request sent");
    let (s, h) = (r.status(), r.headers().clone());
    (s, h, r.bytes().await.unwrap().to_vec())
}

/// README, "Running several replicas", done as written with the real
/// binary: a single node (`slipway serve`, SQLite + blob tree) holding an
/// image is stopped; `slipway migrate --from old.toml --to new.toml` moves
/// it to PostgreSQL + S3, the target's S3 secret coming from the
/// environment only; two `slipway serve` replicas on the README's
/// configuration (the same text for both, one signing key, the same admin
/// password) are ready, serve the image from either, accept each other's
/// tokens, and take a push whose requests alternate between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_moves_a_single_node_to_two_replicas() {
    let weed = SeaweedFs::shared();
    let dir = tempfile::tempdir().unwrap();
    let password = format!("readme-{}", uuid::Uuid::new_v4().simple());
    let admin = basic("admin", &password);
    let http = reqwest::Client::new();

    // The single node, with a private project and an image in it.
    let old = dir.path().join("old.toml");
    std::fs::write(
        &old,
        format!(
            "listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n",
            free_port(),
            dir.path().join("slipway-data").display()
        ),
    )
    .unwrap();
    let mut single = Process::start(&old, &password).await;
    let (s, _, b) = call(
        &http,
        Method::POST,
        format!("{}/api/v1/projects", single.url),
        &admin,
        json!({"name": "tool-m", "public": false})
            .to_string()
            .into_bytes(),
        &[("content-type", "application/json".into())],
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let layer = data(3 * MIB, 9);
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    for blob in [&layer, &config] {
        let (s, _, b) = call(
            &http,
            Method::POST,
            format!(
                "{}/v2/tool-m/web/blobs/uploads/?digest={}",
                single.url,
                digest(blob)
            ),
            &admin,
            blob.clone(),
            &[],
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    }
    let manifest = |config: &[u8], layer: &[u8]| {
        json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digest(config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": digest(layer), "size": layer.len()}],
        })
        .to_string()
        .into_bytes()
    };
    let v1 = manifest(&config, &layer);
    let oci = (
        "content-type",
        "application/vnd.oci.image.manifest.v1+json".to_owned(),
    );
    let (s, _, b) = call(
        &http,
        Method::PUT,
        format!("{}/v2/tool-m/web/manifests/v1", single.url),
        &admin,
        v1.clone(),
        std::slice::from_ref(&oci),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    // "stop it": SIGTERM, and the server drains and exits.
    let pid = single.child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = single.child.wait().await.unwrap();
    assert!(exit.success(), "the single node stopped cleanly: {exit}");

    // The README's configuration, the same text for every replica.
    let db = PostgresDb::fresh(None).await;
    let prefix = format!("readme-{}/", uuid::Uuid::new_v4().simple());
    let key_file = dir.path().join("token-signing-key.pem");
    let common = format!(
        "[database]\nurl = \"{}\"\n\n\
         [storage]\nbackend = \"s3\"\n\n\
         [storage.s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nbucket = \"slipway-test\"\n\
         prefix = \"{prefix}\"\npath_style = true\naccess_key = \"{ACCESS_KEY}\"\n\
         part_size_mib = 8\nredirect = false\npresign_ttl_secs = 300\n\n\
         [auth]\nkey_file = \"{}\"\nsecrets_key_file = \"{}\"\n",
        db.url,
        weed.endpoint,
        key_file.display(),
        dir.path().join("secrets-key").display()
    );
    assert!(!common.contains(SECRET_KEY));
    // Where each process keeps what is its own (its listen address and
    // data directory) comes before the shared sections.
    let own = |name: &str| {
        format!(
            "listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n\n",
            free_port(),
            dir.path().join(name).display()
        )
    };
    let new = dir.path().join("new.toml");
    std::fs::write(&new, own("migrate-data") + &common).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["migrate", "--from"])
        .arg(&old)
        .arg("--to")
        .arg(&new)
        .env("SLIPWAY_STORAGE__S3__SECRET_KEY", SECRET_KEY)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "slipway migrate: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("manifests: 1 rows"), "{stdout}");
    assert!(stdout.contains("Done."), "{stdout}");

    // Two replicas, one after the other (the first creates the signing key
    // the second reads), the S3 secret and admin password from the
    // environment as the README says.
    let mut replicas = Vec::new();
    for i in 1..=2 {
        let config = dir.path().join(format!("replica-{i}.toml"));
        std::fs::write(&config, own(&format!("replica-{i}")) + &common).unwrap();
        replicas.push(
            Process::start_env(
                &config,
                &password,
                &[("SLIPWAY_STORAGE__S3__SECRET_KEY", SECRET_KEY)],
            )
            .await,
        );
    }
    let [a, b] = [&replicas[0].url, &replicas[1].url];
    for url in [a, b] {
        let r = http.get(format!("{url}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{url}/readyz");
    }
    // The migrated image, from either replica.
    for url in [a, b] {
        let (s, _, got) = call(
            &http,
            Method::GET,
            format!("{url}/v2/tool-m/web/manifests/v1"),
            &admin,
            Vec::new(),
            &[],
        )
        .await;
        assert_eq!((s, got), (StatusCode::OK, v1.clone()), "{url}");
        let (s, _, got) = call(
            &http,
            Method::GET,
            format!("{url}/v2/tool-m/web/blobs/{}", digest(&layer)),
            &admin,
            Vec::new(),
            &[],
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{url}");
        assert!(got == layer, "the layer from {url} is the one pushed");
    }
    // A token from one replica is good on the other: one signing key.
    let (s, _, t) = call(
        &http,
        Method::GET,
        format!("{a}/auth/token?service=slipway&scope=repository:tool-m/web:pull,push"),
        &admin,
        Vec::new(),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let token: Value = serde_json::from_slice(&t).unwrap();
    let bearer = format!("Bearer {}", token["token"].as_str().unwrap());
    let (s, _, _) = call(
        &http,
        Method::GET,
        format!("{b}/v2/tool-m/web/manifests/v1"),
        &bearer,
        Vec::new(),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "replica 2 takes replica 1's token");
    // A push whose requests alternate: POST on 1, PATCH on 2, PUT on 1,
    // the manifest on 2; pulled from 1.
    let layer2 = data(6 * MIB, 10);
    let (s, h, _) = call(
        &http,
        Method::POST,
        format!("{a}/v2/tool-m/web/blobs/uploads/"),
        &bearer,
        Vec::new(),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let location = h["location"].to_str().unwrap().to_owned();
    let path = |l: &str| {
        l.find("/v2/")
            .map(|i| l[i..].to_owned())
            .expect("an upload location")
    };
    let (s, h, body) = call(
        &http,
        Method::PATCH,
        format!("{b}{}", path(&location)),
        &bearer,
        layer2.clone(),
        &[("content-type", "application/octet-stream".into())],
    )
    .await;
    assert_eq!(
        s,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let location = h["location"].to_str().unwrap().to_owned();
    let (s, _, body) = call(
        &http,
        Method::PUT,
        format!("{a}{}?digest={}", path(&location), digest(&layer2)),
        &bearer,
        Vec::new(),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    let v2 = manifest(&config, &layer2);
    let (s, _, body) = call(
        &http,
        Method::PUT,
        format!("{b}/v2/tool-m/web/manifests/v2"),
        &bearer,
        v2.clone(),
        std::slice::from_ref(&oci),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    let (s, _, got) = call(
        &http,
        Method::GET,
        format!("{a}/v2/tool-m/web/blobs/{}", digest(&layer2)),
        &bearer,
        Vec::new(),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        got == layer2,
        "the layer pushed across the replicas is whole"
    );
    drop(replicas);
    db.drop_db().await;
}
