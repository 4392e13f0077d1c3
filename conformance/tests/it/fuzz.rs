//! Bad input — random bytes and random paths on every route — never yields a
//! 5xx or a panic, and every 4xx under `/v2` carries the spec's error JSON.
//!
//! - `random_requests_…`: a few thousand requests from a seeded RNG (see
//!   `requests`) against an in-process server with real content and real upload
//!   sessions to aim at. The seed is in every failure message; set
//!   `SLIPWAY_FUZZ_SEED` to run with another one.
//! - `malformed_http_…`: raw TCP (see `raw`) for what HTTP clients never
//!   send: garbage request lines, broken headers, bodies shorter than their
//!   `Content-Length` followed by a close.
//!
//! The server runs on a runtime whose threads are named, and panics on them
//! are recorded (see `panics`): a handler that panics fails the test with
//! the panic's message. Every request goes on its own connection, written
//! whole before the answer is read (see `raw::request`): a server may answer
//! without reading a body and close, which HTTP allows and which makes
//! pooled or hyper-based clients report errors that are not the server's.

mod panics;
mod raw;
mod requests;

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use slipway_registry::testing::TestServer;

use raw::End;
use requests::{Fixture, Req};

const DEFAULT_SEED: u64 = 0x5119_3a7e;
const REQUESTS: usize = 3000;
/// Fresh upload sessions (and re-pushed content) this often.
const REFRESH_EVERY: usize = 200;

/// The error codes of the distribution spec: the only ones allowed on `/v2`.
const SPEC_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];

/// Failures shown in full; the rest are counted.
const SHOWN: usize = 25;

fn seed() -> u64 {
    match std::env::var("SLIPWAY_FUZZ_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("SLIPWAY_FUZZ_SEED must be an integer, not {s:?}")),
        Err(_) => DEFAULT_SEED,
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `Basic <admin credentials>` for a test server.
fn admin_auth(server: &TestServer) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(server.admin_creds())
    )
}

/// A client that opens a new connection for every request, as the admin.
fn client(auth: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        auth.parse().expect("a header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

#[test]
fn random_requests_on_every_route_never_yield_a_server_error() {
    panics::runtime("random").block_on(random_requests());
}

async fn random_requests() {
    let seed = seed();
    let started = Instant::now();
    let server = TestServer::start().await;
    server.create_project("fuzz", false).await;
    let auth = admin_auth(&server);
    let client = client(&auth);
    let mut fx = Fixture {
        repos: vec!["fuzz/real".into(), "fuzz/other/deep".into()],
        tags: vec!["v1".into(), "multi".into(), "sig".into()],
        blobs: Vec::new(),
        manifests: Vec::new(),
        uploads: Vec::new(),
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut failures = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..REQUESTS {
        if i % REFRESH_EVERY == 0 {
            refresh(&client, &server.url, &mut fx, seed, i).await;
        }
        let req = requests::request(&mut rng, &fx);
        let target = encode_target(&req.target);
        // Most requests carry the admin's credentials, so they reach the
        // handlers; every eighth goes without, through the 401 path.
        let mut headers = req.headers.clone();
        if i % 8 != 0 {
            headers.push(("Authorization", auth.clone()));
        }
        let answer = raw::request(
            server.addr,
            req.method.as_str(),
            &target,
            &headers,
            &req.body,
        )
        .await;
        let panicked = panics::take("random");
        let verdict = if !panicked.is_empty() {
            Some(format!("the server panicked: {}", panicked.join("; ")))
        } else if let Some(status) = answer.status {
            *statuses.entry(status).or_default() += 1;
            let path = target.split('?').next().unwrap_or_default();
            let api_version = answer.header("docker-distribution-api-version").is_some();
            judge(&req.method, path, status, api_version, &answer.body)
        } else if answer.timed_out {
            Some(format!("no answer within {:?}", raw::ANSWER_DEADLINE))
        } else {
            Some(format!(
                "the connection closed without an answer: {:?}",
                answer.head
            ))
        };
        if let Some(why) = verdict {
            failures.push(format!("#{i} {}\n    {why}", describe(&req, &target)));
        }
    }

    let base = client
        .get(format!("{}/v2/", server.url))
        .send()
        .await
        .map(|r| r.status());
    assert!(
        matches!(base, Ok(StatusCode::OK)),
        "seed {seed}: after the fuzzing, GET /v2/ answers {base:?}"
    );
    let late = panics::take("random");
    assert!(
        late.is_empty(),
        "seed {seed}: the server panicked: {}",
        late.join("; ")
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {REQUESTS} requests failed (first {SHOWN} below; rerun with \
         SLIPWAY_FUZZ_SEED={seed}):\n{}",
        failures.len(),
        failures
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Guards against a generator that stopped reaching the handlers.
    let reached = |s: u16| statuses.get(&s).copied().unwrap_or(0);
    assert!(
        reached(400) > 100 && reached(404) > 100 && reached(201) + reached(202) > 10,
        "seed {seed}: the requests reached too few handlers: {statuses:?}"
    );
    eprintln!(
        "fuzz: seed {seed}: {REQUESTS} requests in {:?}; statuses {statuses:?}",
        started.elapsed()
    );
}

/// A request target as a client puts it on the wire: what may not appear
/// raw (spaces, controls, non-ASCII, delimiters) percent-encoded; `%`, `..`
/// and everything else left as generated.
fn encode_target(target: &str) -> String {
    let mut out = String::new();
    for c in target.chars() {
        if c.is_ascii_graphic() && !"\"<>\\^`{|}#".contains(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// Why a response breaks the rules, if it does.
fn judge(
    method: &Method,
    path: &str,
    status: u16,
    api_version: bool,
    body: &[u8],
) -> Option<String> {
    let shown = || String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
    if status >= 500 {
        return Some(format!("answered {status}: {}", shown()));
    }
    let on_v2 = path == "/v2" || path.starts_with("/v2/");
    if on_v2
        && (400..500).contains(&status)
        && method != Method::HEAD
        && let Err(why) = spec_error(body)
    {
        let source = if api_version {
            ""
        } else {
            " (without Docker-Distribution-API-Version)"
        };
        return Some(format!("answered {status}{source} {why}: {}", shown()));
    }
    None
}

/// Checks `{"errors":[{"code": <spec code>, "message": <string>}, …]}`.
fn spec_error(body: &[u8]) -> Result<(), String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("with a body that is not JSON ({e})"))?;
    let errors = v["errors"]
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or("without a non-empty errors array")?;
    for e in errors {
        let code = e["code"].as_str().unwrap_or_default();
        if !SPEC_CODES.contains(&code) {
            return Err(format!(
                "with error code {code:?}, which the spec does not define"
            ));
        }
        if !e["message"].is_string() {
            return Err("with an error that has no message".into());
        }
    }
    Ok(())
}

/// A reproduction of one request.
fn describe(req: &Req, target: &str) -> String {
    let mut s = format!("{} {target}", req.method);
    for (name, value) in &req.headers {
        s.push_str(&format!("\n    {name}: {:.300}", value.escape_debug()));
    }
    let preview = &req.body[..req.body.len().min(300)];
    s.push_str(&format!(
        "\n    body: {} bytes: \"{}\"{}",
        req.body.len(),
        preview.escape_ascii(),
        if req.body.len() > preview.len() {
            "…"
        } else {
            ""
        }
    ));
    s
}

/// (Re)pushes the content the generator aims at, and opens new upload
/// sessions: random requests delete tags, manifests and blobs, and finish
/// or cancel sessions.
async fn refresh(client: &reqwest::Client, url: &str, fx: &mut Fixture, seed: u64, at: usize) {
    let fail = |what: &str, got: String| -> ! {
        panic!("seed {seed}: before request #{at}, {what} failed: {got}")
    };
    let config = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
        .to_string()
        .into_bytes();
    let layer: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let blobs = [config, layer];
    let layer_descriptors =
        |media: &str, d: &[u8]| json!({"mediaType": media, "digest": sha256(d), "size": d.len()});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": layer_descriptors("application/vnd.oci.image.config.v1+json", &blobs[0]),
        "layers": [layer_descriptors("application/vnd.oci.image.layer.v1.tar", &blobs[1])],
    })
    .to_string()
    .into_bytes();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [layer_descriptors("application/vnd.oci.image.manifest.v1+json", &manifest)],
    })
    .to_string()
    .into_bytes();
    let signature = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.signature",
        "config": layer_descriptors("application/vnd.oci.empty.v1+json", &blobs[0]),
        "layers": [layer_descriptors("application/vnd.oci.image.layer.v1.tar", &blobs[1])],
        "subject": layer_descriptors("application/vnd.oci.image.manifest.v1+json", &manifest),
    })
    .to_string()
    .into_bytes();
    for repo in fx.repos.clone() {
        for blob in &blobs {
            let r = client
                .post(format!(
                    "{url}/v2/{repo}/blobs/uploads/?digest={}",
                    sha256(blob)
                ))
                .body(blob.clone())
                .send()
                .await;
            match r {
                Ok(r) if r.status() == StatusCode::CREATED => {}
                other => fail(&format!("pushing a blob to {repo}"), format!("{other:?}")),
            }
        }
        let media = [
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
        ];
        for ((tag, body), media) in fx
            .tags
            .iter()
            .zip([&manifest, &index, &signature])
            .zip(media)
        {
            let r = client
                .put(format!("{url}/v2/{repo}/manifests/{tag}"))
                .header("content-type", media)
                .body(body.clone())
                .send()
                .await;
            match r {
                Ok(r) if r.status() == StatusCode::CREATED => {}
                other => fail(&format!("pushing {repo}:{tag}"), format!("{other:?}")),
            }
        }
        for _ in 0..5 {
            let r = client
                .post(format!("{url}/v2/{repo}/blobs/uploads/"))
                .send()
                .await;
            let id = match r {
                Ok(r) if r.status() == StatusCode::ACCEPTED => r
                    .headers()
                    .get("docker-upload-uuid")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                _ => None,
            };
            match id {
                Some(id) => fx.uploads.push((repo.clone(), id)),
                None => fail(
                    &format!("opening an upload in {repo}"),
                    "no 202 with an id".into(),
                ),
            }
        }
    }
    // The newest sessions only: old ones are mostly finished or cancelled.
    let keep = fx.uploads.len().saturating_sub(30);
    fx.uploads.drain(..keep);
    fx.blobs = blobs.iter().map(|b| (sha256(b), b.len() as u64)).collect();
    fx.manifests = [&manifest, &index, &signature]
        .iter()
        .map(|m| sha256(m))
        .collect();
}

/// One raw case: bytes, what to do after sending them, and whether a
/// well-behaved server must answer.
struct Case {
    name: String,
    bytes: Vec<u8>,
    end: End,
    answer_required: bool,
}

#[test]
fn malformed_http_never_yields_a_server_error_or_stops_the_server() {
    panics::runtime("raw").block_on(malformed_http());
}

async fn malformed_http() {
    let seed = seed();
    let server = TestServer::start().await;
    server.create_project("fuzz", false).await;
    let auth = admin_auth(&server);
    let client = client(&auth);
    let url = &server.url;
    let repo = "fuzz/raw";

    // Real sessions for the truncated bodies, one per case.
    let mut sessions = Vec::new();
    for _ in 0..12 {
        let r = client
            .post(format!("{url}/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .expect("open an upload");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        sessions.push(
            r.headers()["location"]
                .to_str()
                .expect("a text Location")
                .to_owned(),
        );
    }
    let mut session = sessions.into_iter();
    let digest = sha256(b"a body that never arrives whole");
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
         \"config\":{{\"digest\":\"{digest}\",\"size\":31}},\"layers\":[]}}"
    );

    let mut cases = Vec::new();
    let mut case = |name: &str, bytes: Vec<u8>, end: End, answer_required: bool| {
        cases.push(Case {
            name: name.to_owned(),
            bytes,
            end,
            answer_required,
        });
    };
    // Request lines and headers no client sends.
    for (name, bytes) in [
        ("a garbage request line", &b"GARBAGE\r\n\r\n"[..]),
        ("a method alone", b"GET\r\n\r\n"),
        ("an HTTP/0.9 request", b"GET /v2/\r\n\r\n"),
        ("HTTP/9.9", b"GET /v2/ HTTP/9.9\r\nHost: x\r\n\r\n"),
        ("a request line with extra words", b"GET /v2/ HTTP/1.1 extra\r\nHost: x\r\n\r\n"),
        ("only blank lines", b"\r\n\r\n\r\n\r\n"),
        ("a NUL in the method", b"G\0T /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("a header line without a colon", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n"),
        ("a NUL in a header value", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n"),
        ("a space before the colon", b"GET /v2/ HTTP/1.1\r\nHost : x\r\n\r\n"),
        ("two different Hosts", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"),
        ("raw '..' in the path", b"GET /v2/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("raw '..' in a name", b"GET /v2/a/../b/tags/list HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("'..' as an upload id", b"GET /v2/fuzz/raw/blobs/uploads/.. HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("'..' as a reference", b"DELETE /v2/fuzz/raw/manifests/.. HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("non-UTF-8 bytes in the path", b"GET /v2/\xff\xfe/tags/list HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("an encoded NUL in the path", b"GET /v2/a%00/tags/list HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("an absolute-form target", b"GET http://x/v2/ HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("an asterisk target", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("CONNECT", b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n"),
        ("bare LF line ends", b"GET /v2/ HTTP/1.1\nHost: x\n\n"),
        ("an HTTP/2 preface, then garbage", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04garbage-garbage"),
        ("a Content-Length that is not a number", b"PUT /v2/fuzz/raw/manifests/x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}"),
        ("a negative Content-Length", b"PUT /v2/fuzz/raw/manifests/x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}"),
        ("an overflowing Content-Length", b"PUT /v2/fuzz/raw/manifests/x HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n{}"),
        ("two different Content-Lengths", b"PUT /v2/fuzz/raw/manifests/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
        ("Content-Length and chunked together", b"PUT /v2/fuzz/raw/manifests/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
        ("a chunk size that is not hex", b"PUT /v2/fuzz/raw/manifests/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
        ("an overflowing chunk size", b"PUT /v2/fuzz/raw/manifests/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffffff\r\n{}\r\n0\r\n\r\n"),
        ("an unknown transfer coding", b"PUT /v2/fuzz/raw/manifests/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}"),
        ("a Content-Length shorter than the body", b"PUT /v2/fuzz/raw/manifests/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GARBAGE AFTER THE BODY\r\n\r\n"),
    ] {
        case(name, bytes.to_vec(), End::HalfClose, false);
    }
    case(
        "a 200 KiB header",
        format!(
            "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(200 << 10)
        )
        .into_bytes(),
        End::HalfClose,
        false,
    );
    case(
        "a 100 KiB path",
        format!(
            "GET /v2/{}/tags/list HTTP/1.1\r\nHost: x\r\n\r\n",
            "a/".repeat(50 << 10)
        )
        .into_bytes(),
        End::HalfClose,
        false,
    );
    case(
        "a thousand headers",
        format!(
            "GET /v2/ HTTP/1.1\r\nHost: x\r\n{}\r\n",
            "X-A: b\r\n".repeat(1000)
        )
        .into_bytes(),
        End::HalfClose,
        false,
    );
    let mut rng = StdRng::seed_from_u64(seed);
    for k in 0..10 {
        let mut bytes = vec![0u8; rand::Rng::random_range(&mut rng, 1..2000)];
        rand::Rng::fill(&mut rng, &mut bytes[..]);
        case(&format!("random bytes #{k}"), bytes, End::HalfClose, false);
    }
    // Well-formed heads whose bodies stop short: announce 1000 bytes, send
    // 10, then half-close (the answer is read) or close (it is not).
    let short = "0123456789";
    for end in [End::HalfClose, End::Close] {
        let mut truncated = |name: &str, head: String| {
            let answer_required = end == End::HalfClose;
            case(
                &format!("{name}, body cut short ({end:?})"),
                format!("{head}\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{short}").into_bytes(),
                end,
                answer_required,
            );
        };
        let s = session.next().expect("a session");
        truncated(
            "a PATCH to an upload",
            format!("PATCH {s} HTTP/1.1\r\nContent-Type: application/octet-stream"),
        );
        let s = session.next().expect("a session");
        truncated(
            "a PATCH to an upload with Content-Range",
            format!("PATCH {s} HTTP/1.1\r\nContent-Range: 0-999"),
        );
        let s = session.next().expect("a session");
        let sep = if s.contains('?') { '&' } else { '?' };
        truncated(
            "a PUT finishing an upload",
            format!("PUT {s}{sep}digest={digest} HTTP/1.1"),
        );
        truncated(
            "a monolithic POST",
            format!("POST /v2/{repo}/blobs/uploads/?digest={digest} HTTP/1.1"),
        );
        truncated(
            "a manifest PUT",
            format!(
                "PUT /v2/{repo}/manifests/cut HTTP/1.1\r\nContent-Type: application/vnd.oci.image.manifest.v1+json"
            ),
        );
        truncated(
            "a POST opening an upload",
            format!("POST /v2/{repo}/blobs/uploads/ HTTP/1.1"),
        );
        truncated("a GET with a body", "GET /v2/ HTTP/1.1".to_owned());
    }
    let s = session.next().expect("a session");
    case(
        "a chunked PATCH cut inside a chunk",
        format!(
            "PATCH {s} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n{short}"
        )
        .into_bytes(),
        End::HalfClose,
        true,
    );
    case(
        "a manifest PUT cut inside a chunk",
        format!(
            "PUT /v2/{repo}/manifests/cut HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}",
            manifest.len() * 2,
            manifest
        )
        .into_bytes(),
        End::HalfClose,
        true,
    );
    case(
        "Expect: 100-continue and no body",
        format!("PUT /v2/{repo}/manifests/cut HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n").into_bytes(),
        End::HalfClose,
        true,
    );
    case(
        "fifty pipelined requests",
        "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
            .repeat(50)
            .into_bytes(),
        End::HalfClose,
        true,
    );

    let mut failures = Vec::new();
    for c in &cases {
        // With credentials, so cut bodies reach the upload handlers.
        let bytes = with_auth(&c.bytes, &auth);
        let a = raw::exchange(server.addr, &bytes, c.end).await;
        let preview = String::from_utf8_lossy(&c.bytes[..c.bytes.len().min(200)])
            .escape_debug()
            .to_string();
        let body = String::from_utf8_lossy(&a.body[..a.body.len().min(300)]).into_owned();
        let panicked = panics::take("raw");
        if !panicked.is_empty() {
            failures.push(format!(
                "{}: the server panicked: {}\n    sent: \"{preview}\"",
                c.name,
                panicked.join("; ")
            ));
            continue;
        }
        match a.status {
            Some(s) if s >= 500 => failures.push(format!(
                "{}: answered {s}: {body}\n    sent: \"{preview}\"",
                c.name
            )),
            Some(s)
                if (400..500).contains(&s)
                    && a.header("docker-distribution-api-version").is_some() =>
            {
                // Our handler answered: the spec's error JSON is due.
                if a.header("content-length").is_some()
                    && let Err(why) = spec_error(&a.body)
                {
                    failures.push(format!(
                        "{}: answered {s} {why}: {body}\n    sent: \"{preview}\"",
                        c.name
                    ));
                }
            }
            Some(_) => {}
            None if c.answer_required => failures.push(format!(
                "{}: no answer{} (did a handler panic?)\n    sent: \"{preview}\"",
                c.name,
                if a.timed_out {
                    " in time"
                } else {
                    ", the connection closed"
                }
            )),
            None => {}
        }
    }

    // Still alive, and still working.
    let base = client
        .get(format!("{url}/v2/"))
        .send()
        .await
        .map(|r| r.status());
    assert!(
        matches!(base, Ok(StatusCode::OK)),
        "after the malformed requests, GET /v2/ answers {base:?}"
    );
    let blob = b"still works".to_vec();
    let pushed = client
        .post(format!(
            "{url}/v2/{repo}/blobs/uploads/?digest={}",
            sha256(&blob)
        ))
        .body(blob)
        .send()
        .await
        .map(|r| r.status());
    assert!(
        matches!(pushed, Ok(StatusCode::CREATED)),
        "after the malformed requests, a monolithic push answers {pushed:?}"
    );
    // Handlers of closed connections may still have been running above.
    let late = panics::take("raw");
    assert!(late.is_empty(), "the server panicked: {}", late.join("; "));
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {} malformed requests were mishandled:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The request bytes with an `Authorization` header after the first `Host`.
fn with_auth(bytes: &[u8], auth: &str) -> Vec<u8> {
    let host = b"Host: x\r\n";
    match bytes.windows(host.len()).position(|w| w == host) {
        Some(at) => {
            let mut out = bytes[..at + host.len()].to_vec();
            out.extend_from_slice(format!("Authorization: {auth}\r\n").as_bytes());
            out.extend_from_slice(&bytes[at + host.len()..]);
            out
        }
        None => bytes.to_vec(),
    }
}
