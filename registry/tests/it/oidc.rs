//! People signing in through an OpenID Connect provider: a real one, the
//! PyPI package `oidc-provider-mock` (`conformance/test.sh` installs it),
//! started on loopback with users whose `groups` claim lists group DNs as
//! the Wikimedia provider sends them. Everything a browser would do is
//! scripted HTTP through the provider's authorization endpoint.
//!
//! Between Slipway and the provider sits a small proxy of the test's own
//! (the issuer Slipway is configured with): it passes everything through,
//! the provider's own signatures included, until the test asks it to
//! tamper with the ID token of the next answers — change a claim and keep
//! the provider's signature (a forgery), send `alg: none`, or sign with a
//! second key the proxy then publishes in the provider's JWKS (a key
//! rotation) with an `exp` in the past, another `aud` or another `nonce`.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::security::Env;

const TOOL_Y: &str = "cn=tools.y,ou=servicegroups,dc=wikimedia,dc=org";
const ADMINS: &str = "cn=tools.admin,ou=servicegroups,dc=wikimedia,dc=org";

/// The provider, on a free loopback port.
struct Provider {
    child: Child,
    url: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use crate::builds_e2e::free_port;

/// Runs `slipway login` against `url` (the session kept in `config`) until
/// a line of its standard error gives `wanted`: the process, what it said
/// so far, and what was wanted.
async fn slipway_login(
    url: &str,
    config: &std::path::Path,
    args: &[&str],
    wanted: impl Fn(&str) -> Option<String>,
) -> (tokio::process::Child, String, String) {
    use tokio::io::AsyncBufReadExt as _;
    let mut login = tokio::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["login", "--url", url])
        .args(args)
        .env("SLIPWAY_CONFIG_DIR", config)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(login.stderr.take().unwrap());
    let mut said = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), stderr.read_line(&mut line))
            .await
            .expect("slipway login says where to sign in within 30 s")
            .unwrap();
        assert!(n > 0, "slipway login ended: {said}");
        said.push_str(&line);
        if let Some(found) = wanted(line.trim()) {
            // The rest of what it says is read (and dropped): a closed pipe
            // would fail its next line.
            tokio::spawn(async move {
                let mut rest = String::new();
                while stderr.read_line(&mut rest).await.is_ok_and(|n| n > 0) {
                    rest.clear();
                }
            });
            return (login, said, found);
        }
    }
}

impl Provider {
    async fn start() -> Provider {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-W",
                "ignore",
                "-m",
                "oidc_provider_mock",
                "-H",
                "127.0.0.1",
            ])
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run python3 -m oidc_provider_mock (conformance/test.sh installs it)");
        let provider = Provider {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = reqwest::get(format!("{}/.well-known/openid-configuration", provider.url))
                .await
                .is_ok_and(|r| r.status().is_success());
            if found {
                return provider;
            }
            assert!(
                Instant::now() < deadline,
                "oidc-provider-mock did not start within 30 s (is the PyPI package \
                 oidc-provider-mock installed? conformance/test.sh installs it)"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Names a person with their claims.
    async fn user(&self, sub: &str, claims: Value) {
        let r = reqwest::Client::new()
            .put(format!("{}/users/{sub}", self.url))
            .json(&claims)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
}

/// What the proxy does to the ID token of the token endpoint's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tamper {
    /// Nothing: the provider's token as it is.
    Pass,
    /// The admin group added to `groups`, the provider's signature kept.
    Forge,
    /// `alg: none`, no signature.
    AlgNone,
    /// Signed with the second key, claims as they are.
    Resign,
    /// Signed with the second key, `exp` an hour ago.
    Expired,
    /// Signed with the second key, `aud` another client.
    Audience,
    /// Signed with the second key, another `nonce`.
    Nonce,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    tamper: Arc<Mutex<Tamper>>,
    /// The second key: published in the JWKS once `rotated`.
    key: Arc<(jsonwebtoken::EncodingKey, Value)>,
    rotated: Arc<Mutex<bool>>,
    http: reqwest::Client,
}

struct Proxy {
    url: String,
    state: ProxyState,
}

impl Proxy {
    fn tamper(&self, t: Tamper) {
        *self.state.tamper.lock().unwrap() = t;
    }
    fn rotate(&self) {
        *self.state.rotated.lock().unwrap() = true;
    }
}

/// An RSA key made with `openssl`, and its public JWK (`kid: second`).
fn second_key() -> (jsonwebtoken::EncodingKey, Value) {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("key.pem");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(ok.success());
    let out = Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let modulus = hex::decode(text.trim().trim_start_matches("Modulus=")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&pem).unwrap()).unwrap();
    let jwk = json!({"kty": "RSA", "kid": "second", "use": "sig", "alg": "RS256",
                     "n": B64.encode(modulus), "e": "AQAB"});
    (key, jwk)
}

fn claims_of(jwt: &str) -> Value {
    serde_json::from_slice(&B64.decode(jwt.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

fn tampered(state: &ProxyState, id_token: &str, how: Tamper) -> String {
    let mut claims = claims_of(id_token);
    let parts: Vec<&str> = id_token.split('.').collect();
    let resign = |claims: &Value| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("second".into());
        jsonwebtoken::encode(&header, claims, &state.key.0).unwrap()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    match how {
        Tamper::Pass => id_token.to_owned(),
        Tamper::Forge => {
            claims["groups"] = json!([TOOL_Y, ADMINS]);
            format!(
                "{}.{}.{}",
                parts[0],
                B64.encode(claims.to_string()),
                parts[2]
            )
        }
        Tamper::AlgNone => format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            B64.encode(claims.to_string())
        ),
        Tamper::Resign => resign(&claims),
        Tamper::Expired => {
            claims["iat"] = json!(now - 7200);
            claims["exp"] = json!(now - 3600);
            resign(&claims)
        }
        Tamper::Audience => {
            claims["aud"] = json!(["another-client"]);
            resign(&claims)
        }
        Tamper::Nonce => {
            claims["nonce"] = json!("not-the-nonce-slipway-sent");
            resign(&claims)
        }
    }
}

async fn proxied(
    axum::extract::State(state): axum::extract::State<ProxyState>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    // The Host header goes along: the provider names its issuer and its
    // endpoints after it, so they all point at the proxy.
    let mut forward = state
        .http
        .request(parts.method.clone(), format!("{}{path}", state.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        forward = forward.header(name, value);
    }
    let answer = forward.send().await.unwrap();
    let status = answer.status();
    let content_type = answer.headers().get("content-type").cloned();
    let location = answer.headers().get("location").cloned();
    let mut bytes = answer.bytes().await.unwrap().to_vec();
    if path.starts_with("/jwks") && *state.rotated.lock().unwrap() {
        let mut set: Value = serde_json::from_slice(&bytes).unwrap();
        set["keys"]
            .as_array_mut()
            .unwrap()
            .push(state.key.1.clone());
        bytes = serde_json::to_vec(&set).unwrap();
    }
    let how = *state.tamper.lock().unwrap();
    if path.starts_with("/oauth2/token") && status.is_success() && how != Tamper::Pass {
        let mut v: Value = serde_json::from_slice(&bytes).unwrap();
        let id_token = v["id_token"].as_str().unwrap().to_owned();
        v["id_token"] = json!(tampered(&state, &id_token, how));
        bytes = serde_json::to_vec(&v).unwrap();
    }
    let mut r = (status, bytes).into_response();
    if let Some(ct) = content_type {
        r.headers_mut().insert("content-type", ct);
    }
    if let Some(l) = location {
        r.headers_mut().insert("location", l);
    }
    r
}

async fn start_proxy(upstream: &str) -> Proxy {
    let state = ProxyState {
        upstream: upstream.to_owned(),
        tamper: Arc::new(Mutex::new(Tamper::Pass)),
        key: Arc::new(second_key()),
        rotated: Arc::new(Mutex::new(false)),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    };
    let app = axum::Router::new()
        .fallback(proxied)
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Proxy { url, state }
}

/// A browser at the provider: `sub` signs in (or declines) at the
/// authorization address; the provider's redirect back, parsed.
async fn at_provider(
    authorization_url: &str,
    sub: Option<&str>,
) -> (String, Vec<(String, String)>) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form: Vec<(&str, &str)> = match sub {
        Some(s) => vec![("sub", s)],
        None => vec![("action", "deny")],
    };
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let r = http
        .post(authorization_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{:?}", r.text().await);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let query = location.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let pairs = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    (location, pairs)
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `slipway login` finishing through the provider, the server-side flow
/// as the CLI drives it: start, the browser at the provider, back.
async fn api_sign_in(env: &Env, sub: &str) -> (StatusCode, Value) {
    let (s, started) = env
        .api(
            Method::POST,
            "/api/v1/sign-in/oidc",
            None,
            Some(json!({"redirect_uri": "http://127.0.0.1:9/callback", "proof_hash": PROOF_HASH})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{started}");
    let (_, back) = at_provider(started["authorization_url"].as_str().unwrap(), Some(sub)).await;
    assert_eq!(param(&back, "state"), started["state"].as_str());
    env.api(
        Method::POST,
        "/api/v1/sign-in/oidc/callback",
        None,
        Some(
            json!({"state": param(&back, "state"), "code": param(&back, "code"),
                    "proof": PROOF}),
        ),
    )
    .await
}

/// The test's CLI secret and its SHA-256.
const PROOF: &str = "the-cli-keeps-this";
const PROOF_HASH: &str = "dd4d4c7179b56e6ef6b483850432ce3e00c25db0a066250ad796f2be1f154fe0";

/// Sign-in through a real OpenID Connect provider, by the API (as the CLI
/// drives it), the dashboard's button and `slipway login` itself: groups
/// of DNs map to projects, the admin group administers, a personal token
/// made with the session pulls with skopeo; a replayed or unknown state,
/// a declined sign-in, a forged ID token, `alg: none`, an expired token,
/// another audience and another nonce are each refused with a sentence
/// and audited; the dashboard refuses a callback the browser did not
/// start; signing in again with fewer groups loses the project.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_sign_in_through_a_real_provider() {
    let provider = Provider::start().await;
    let proxy = start_proxy(&provider.url).await;
    provider
        .user(
            "dana-sub",
            json!({"preferred_username": "Dana", "groups": [TOOL_Y, "cn=other,dc=org"]}),
        )
        .await;
    provider
        .user(
            "ops-sub",
            json!({"preferred_username": "ops", "groups": [ADMINS]}),
        )
        .await;
    provider
        .user(
            "mallory-sub",
            json!({"preferred_username": "mallory", "groups": []}),
        )
        .await;
    let issuer = proxy.url.clone();
    let env = Env::with(move |c| {
        c.identity.oidc.issuer = issuer;
        c.identity.oidc.allow_http = true;
        c.identity.oidc.name = "Wikimedia".into();
        c.identity.oidc.client_id = "slipway".into();
        c.identity.oidc.client_secret = slipway_registry::config::Secret::new("client-secret");
        c.identity.oidc.scopes = vec!["profile".into()];
        c.identity.oidc.group_pattern =
            "cn=tools.{tool},ou=servicegroups,dc=wikimedia,dc=org".into();
        c.identity.oidc.project_pattern = "tool-{tool}".into();
        c.identity.oidc.admin_group = ADMINS.into();
        c.builds.workers = 0;
    })
    .await;
    env.server.create_project("tool-y", false).await;
    env.push_image("tool-y/web", "v1", b"tool-y").await;
    let host = env.server.addr.to_string();

    let (s, offers) = env.api(Method::GET, "/api/v1/sign-in", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        offers,
        json!({"ldap": false, "oidc": "Wikimedia", "oidc_device": false})
    );

    // The authorization request: code flow, PKCE S256, state and nonce.
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/sign-in/oidc",
            None,
            Some(
                json!({"redirect_uri": "https://evil.example/callback", "proof_hash": PROOF_HASH}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not a loopback address"),
        "{v}"
    );
    let (_, started) = env
        .api(
            Method::POST,
            "/api/v1/sign-in/oidc",
            None,
            Some(json!({"redirect_uri": "http://127.0.0.1:9/callback", "proof_hash": PROOF_HASH})),
        )
        .await;
    let url = started["authorization_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/oauth2/authorize?", proxy.url)),
        "{url}"
    );
    for part in [
        "response_type=code",
        "client_id=slipway",
        "code_challenge=",
        "code_challenge_method=S256",
        "nonce=",
        "scope=openid+profile",
        "redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcallback",
    ] {
        assert!(url.contains(part), "{part} in {url}");
    }

    // Dana: her groups' DNs map to tool-y; her session makes a personal
    // token that skopeo pulls tool-y with, not tool-a.
    let (s, dana) = api_sign_in(&env, "dana-sub").await;
    assert_eq!(s, StatusCode::OK, "{dana}");
    assert_eq!(dana["me"]["name"], "dana");
    assert_eq!(dana["me"]["admin"], false);
    assert_eq!(
        dana["me"]["memberships"],
        json!([{"person": "dana", "project": "tool-y", "role": "maintainer",
                "source": "directory", "granted_at": dana["me"]["memberships"][0]["granted_at"]}])
    );
    let session = format!("Bearer {}", dana["token"].as_str().unwrap());
    let (s, made) = env
        .api(
            Method::POST,
            "/api/v1/me/tokens",
            Some(&session),
            Some(json!({"name": "laptop", "expires": "30d"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    let creds = format!("dana:{}", made["secret"].as_str().unwrap());
    let (ok, err) = crate::people::skopeo_pull(&format!("{host}/tool-y/web:v1"), &creds);
    assert!(ok, "dana pulls her tool: {err}");
    let (ok, _) = crate::people::skopeo_pull(&format!("{host}/tool-a/web:v1"), &creds);
    assert!(!ok, "tool-a is not dana's");
    let (s, v) = env
        .api(Method::GET, "/api/v1/people", Some(&session), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "dana does not administer: {v}");

    // An admin-group member administers.
    let (s, ops) = api_sign_in(&env, "ops-sub").await;
    assert_eq!(s, StatusCode::OK, "{ops}");
    assert_eq!(ops["me"]["admin"], true);
    let ops_session = format!("Bearer {}", ops["token"].as_str().unwrap());
    let (s, people) = env
        .api(Method::GET, "/api/v1/people", Some(&ops_session), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{people}");
    assert!(people.to_string().contains("\"dana\""), "{people}");

    // A state is good once: the same answer again is a replay.
    let refuse = |v: &Value, want: &str| {
        assert!(
            v["error"].as_str().unwrap_or_default().contains(want),
            "{want:?} in {v}"
        );
    };
    let (_, started) = env
        .api(
            Method::POST,
            "/api/v1/sign-in/oidc",
            None,
            Some(json!({"redirect_uri": "http://127.0.0.1:9/callback", "proof_hash": PROOF_HASH})),
        )
        .await;
    let (_, back) = at_provider(
        started["authorization_url"].as_str().unwrap(),
        Some("dana-sub"),
    )
    .await;
    // Without the CLI's secret, the code and state are of no use.
    let answer = json!({"state": param(&back, "state"), "code": param(&back, "code"),
                        "proof": "someone-else"});
    let callback = |body: Value| {
        let env = &env;
        async move {
            env.api(
                Method::POST,
                "/api/v1/sign-in/oidc/callback",
                None,
                Some(body),
            )
            .await
        }
    };
    let (s, v) = callback(answer.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    refuse(&v, "its proof does not match");
    let (_, started) = env
        .api(
            Method::POST,
            "/api/v1/sign-in/oidc",
            None,
            Some(json!({"redirect_uri": "http://127.0.0.1:9/callback", "proof_hash": PROOF_HASH})),
        )
        .await;
    let (_, back) = at_provider(
        started["authorization_url"].as_str().unwrap(),
        Some("dana-sub"),
    )
    .await;
    let answer = json!({"state": param(&back, "state"), "code": param(&back, "code"),
                        "proof": PROOF});
    let (s, v) = callback(answer.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = callback(answer).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    refuse(&v, "this sign-in was already used");
    let (s, v) = callback(json!({"state": "made-up", "code": "x"})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    refuse(&v, "was not started here");

    // Another account at the provider naming itself dana is not dana.
    provider
        .user(
            "impostor-sub",
            json!({"preferred_username": "dana", "groups": [TOOL_Y]}),
        )
        .await;
    let (s, v) = api_sign_in(&env, "impostor-sub").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    refuse(
        &v,
        "dana signed in before with another account at the identity provider",
    );
    // The admin sees the binding, and can undo it (a person whose account
    // at the provider was made anew); the next sign-in binds again.
    let (s, v) = env
        .api(Method::GET, "/api/v1/people/dana", Some(&ops_session), None)
        .await;
    assert_eq!(
        (s, &v["oidc_subject"]),
        (StatusCode::OK, &json!("dana-sub")),
        "{v}"
    );
    let (s, v) = env
        .api(
            Method::DELETE,
            "/api/v1/people/dana/oidc-subject",
            Some(&session),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "dana may not undo her own binding: {v}"
    );
    let (s, v) = env
        .api(
            Method::DELETE,
            "/api/v1/people/dana/oidc-subject",
            Some(&ops_session),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (_, v) = env
        .api(Method::GET, "/api/v1/people/dana", Some(&ops_session), None)
        .await;
    assert_eq!(v["oidc_subject"], Value::Null, "{v}");
    let (s, v) = api_sign_in(&env, "dana-sub").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = env
        .api(Method::GET, "/api/v1/people/dana", Some(&ops_session), None)
        .await;
    assert_eq!(v["oidc_subject"], "dana-sub", "{v}");

    // The person declines at the provider.
    let (_, started) = env
        .api(
            Method::POST,
            "/api/v1/sign-in/oidc",
            None,
            Some(json!({"redirect_uri": "http://127.0.0.1:9/callback", "proof_hash": PROOF_HASH})),
        )
        .await;
    let (_, back) = at_provider(started["authorization_url"].as_str().unwrap(), None).await;
    assert_eq!(param(&back, "error"), Some("access_denied"));
    // (This provider's refusal carries no state: the CLI sends its own.)
    let (s, v) = callback(json!({"state": started["state"], "error": "access_denied",
                                 "proof": PROOF}))
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    refuse(
        &v,
        "the identity provider did not sign you in: access_denied",
    );

    // The dashboard: "Sign in with Wikimedia", there and back, the state
    // bound to the browser by a cookie.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = browser
        .get(format!("{}/ui/login", env.server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("href=\"/ui/sign-in/oidc\"") && page.contains("Sign in with Wikimedia"),
        "{page}"
    );
    let dashboard_round = |sub: &'static str| {
        let (browser, env) = (&browser, &env);
        async move {
            let r = browser
                .get(format!("{}/ui/sign-in/oidc", env.server.url))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_redirection(), "{}", r.status());
            let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
            let cookie = cookie.split(';').next().unwrap().to_owned();
            assert!(cookie.starts_with("slipway_oidc="), "{cookie}");
            let to = r.headers()["location"].to_str().unwrap().to_owned();
            assert!(
                to.contains(&format!(
                    "redirect_uri=http%3A%2F%2F{}%2Fui%2Fsign-in%2Foidc%2Fcallback",
                    env.server.addr.to_string().replace(':', "%3A")
                )),
                "{to}"
            );
            let (location, _) = at_provider(&to, Some(sub)).await;
            (cookie, location)
        }
    };
    let (cookie, location) = dashboard_round("dana-sub").await;
    // Another browser (no cookie) brought there by a link is refused.
    let r = browser.get(&location).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("This sign-in was not started in this browser")
    );
    let (cookie, location) = {
        let _ = cookie;
        dashboard_round("dana-sub").await
    };
    let r = browser
        .get(&location)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{:?}", r.text().await);
    let session_cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("slipway_session=") && c.len() > "slipway_session=".len())
        .expect("a session cookie");
    let overview = browser
        .get(format!("{}/ui/", env.server.url))
        .header("cookie", &session_cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        overview.contains("dana") && overview.contains("tool-y") && !overview.contains("tool-a"),
        "{overview}"
    );

    // `slipway login` itself: it listens on a loopback port, prints the
    // address; the browser (here: the test) signs in and comes back.
    let config = tempfile::tempdir().unwrap();
    let (login, said, url) =
        slipway_login(&env.server.url, config.path(), &["--no-browser"], |line| {
            line.strip_prefix("http").map(|u| format!("http{u}"))
        })
        .await;
    assert!(said.contains("To sign in with Wikimedia"), "{said}");
    let (back, pairs) = at_provider(&url, Some("dana-sub")).await;
    assert!(back.starts_with("http://127.0.0.1:"), "{back}");
    assert!(param(&pairs, "code").is_some());
    let page = reqwest::get(&back).await.unwrap().text().await.unwrap();
    assert!(page.contains("Signed in to Slipway"), "{page}");
    let out = tokio::time::timeout(Duration::from_secs(30), login.wait_with_output())
        .await
        .expect("slipway login ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("as dana") && stdout.contains("tool-y (maintainer)"),
        "{stdout}"
    );
    let listed = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["token", "list", "--url", &env.server.url])
        .env("SLIPWAY_CONFIG_DIR", config.path())
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("laptop"));

    // Membership is re-read at every sign-in: out of the group, dana
    // loses tool-y, and her token with it.
    provider
        .user(
            "dana-sub",
            json!({"preferred_username": "dana", "groups": []}),
        )
        .await;
    let (s, dana) = api_sign_in(&env, "dana-sub").await;
    assert_eq!(s, StatusCode::OK, "{dana}");
    assert_eq!(dana["me"]["memberships"], json!([]));
    let (ok, _) = crate::people::skopeo_pull(&format!("{host}/tool-y/web:v1"), &creds);
    assert!(!ok, "dana's token no longer pulls tool-y");
    // Forged ID tokens: a claim changed under the provider's signature,
    // and no signature at all.
    proxy.tamper(Tamper::Forge);
    let (s, v) = api_sign_in(&env, "mallory-sub").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    refuse(
        &v,
        "the ID token is not valid: Signature verification failed",
    );
    proxy.tamper(Tamper::AlgNone);
    let (s, v) = api_sign_in(&env, "mallory-sub").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    refuse(&v, "the ID token is not valid");

    // The provider rotates its keys: a token signed with the new key is
    // taken (the JWKS read again); signed with it but expired, for another
    // audience or with another nonce, it is refused.
    proxy.rotate();
    proxy.tamper(Tamper::Resign);
    let (s, v) = api_sign_in(&env, "mallory-sub").await;
    assert_eq!(s, StatusCode::OK, "the provider's new key is trusted: {v}");
    assert_eq!(v["me"]["name"], "mallory");
    proxy.tamper(Tamper::Expired);
    let (s, v) = api_sign_in(&env, "mallory-sub").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    refuse(&v, "the ID token is not valid: Expired");
    proxy.tamper(Tamper::Audience);
    let (s, v) = api_sign_in(&env, "mallory-sub").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    refuse(&v, "the ID token is not valid: Invalid audiences");
    proxy.tamper(Tamper::Nonce);
    let (s, v) = api_sign_in(&env, "mallory-sub").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    refuse(&v, "the ID token is not valid: Invalid nonce");
    proxy.tamper(Tamper::Pass);

    // Every refusal is in the audit log, with its sentence (read by ops,
    // an admin by the directory: this address made too many failed
    // sign-ins for a password to be looked at now).
    let (_, audit) = env
        .api(
            Method::GET,
            "/api/v1/audit?action=person.sign_in_refused&limit=100",
            Some(&ops_session),
            None,
        )
        .await;
    let refusals = audit.to_string();
    for reason in [
        "its proof does not match",
        "already used",
        "another account at the identity provider",
        "was not started here",
        "access_denied",
        "Signature verification failed",
        "Expired",
        "Invalid audiences",
        "Invalid nonce",
    ] {
        assert!(refusals.contains(reason), "{reason} audited: {audit}");
    }
    let (_, audit) = env
        .api(
            Method::GET,
            "/api/v1/audit?action=person.sign_in&limit=100",
            Some(&ops_session),
            None,
        )
        .await;
    let entries = audit["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["principal"] == "ops"
            && e["detail"]["via"] == "oidc"
            && e["detail"]["admin"] == true),
        "{audit}"
    );

    // One address may have 20 sign-ins under way, no more.
    let mut refused_at = None;
    for i in 0..25 {
        let (s, v) = env
            .api(
                Method::POST,
                "/api/v1/sign-in/oidc",
                None,
                Some(json!({"redirect_uri": "http://127.0.0.1:9/callback", "proof_hash": PROOF_HASH})),
            )
            .await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert!(
                v["error"]
                    .as_str()
                    .unwrap()
                    .contains("sign-ins started from this address are under way"),
                "{v}"
            );
            refused_at = Some(i);
            break;
        }
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    assert!(refused_at.is_some_and(|i| i <= 20), "{refused_at:?}");
}

const TOOL_Z: &str = "cn=tools.z,ou=servicegroups,dc=wikimedia,dc=org";

/// A provider that offers the device flow (RFC 8628): panva's
/// `oidc-provider` from npm, in `registry/tests/fixtures/oidc-device`
/// (`conformance/test.sh` runs `npm ci` there). Any username signs in at
/// its login page; `groups` come from the map it is started with.
struct DeviceProvider {
    child: Child,
    url: String,
}

impl Drop for DeviceProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DeviceProvider {
    async fn start(groups: Value) -> DeviceProvider {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oidc-device");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "{}/node_modules lacks oidc-provider: conformance/test.sh runs npm ci there",
            dir.display()
        );
        let port = free_port();
        let mut child = Command::new("node")
            .arg(dir.join("provider.mjs"))
            .arg(port.to_string())
            .arg(groups.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run node (conformance/test.sh checks it is installed)");
        let stdout = child.stdout.take().unwrap();
        let ready = tokio::task::spawn_blocking(move || {
            use std::io::BufRead as _;
            let mut line = String::new();
            std::io::BufReader::new(stdout).read_line(&mut line).ok();
            line
        });
        let line = tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .expect("the device-flow provider starts within 30 s")
            .unwrap();
        assert_eq!(line.trim(), "ready");
        DeviceProvider {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

/// A browser at the device-flow provider, with the few cookies it needs
/// (by name and path, as the provider sets them).
struct DeviceBrowser {
    http: reqwest::Client,
    jar: Vec<(String, String, String)>,
}

impl DeviceBrowser {
    fn new() -> DeviceBrowser {
        DeviceBrowser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            jar: Vec::new(),
        }
    }

    async fn go(
        &mut self,
        method: Method,
        url: &str,
        form: &[(&str, &str)],
    ) -> (StatusCode, String, String) {
        let path = url
            .splitn(4, '/')
            .nth(3)
            .map(|p| format!("/{p}"))
            .unwrap_or("/".into());
        let path = path.split('?').next().unwrap().to_owned();
        let cookies: Vec<String> = self
            .jar
            .iter()
            .filter(|(_, p, _)| p == "/" || path == *p || path.starts_with(&format!("{p}/")))
            .map(|(n, _, v)| format!("{n}={v}"))
            .collect();
        let mut request = self
            .http
            .request(method, url)
            .header("cookie", cookies.join("; "));
        if !form.is_empty() {
            let body: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish();
            request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let r = request.send().await.unwrap();
        for c in r.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (name, value) = pair.split_once('=').unwrap();
            let path = attrs
                .split(';')
                .find_map(|a| a.trim().strip_prefix("path="))
                .unwrap_or("/")
                .to_owned();
            self.jar.retain(|(n, p, _)| !(n == name && *p == path));
            if !value.is_empty() {
                self.jar.push((name.to_owned(), path, value.to_owned()));
            }
        }
        let status = r.status();
        let location = r
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, location, r.text().await.unwrap())
    }

    /// At `verification_uri_complete`: signs in as `login`, or aborts.
    async fn device(&mut self, complete: &str, login: Option<&str>) {
        let base = complete
            .splitn(4, '/')
            .take(3)
            .collect::<Vec<_>>()
            .join("/");
        let (_, _, page) = self.go(Method::GET, complete, &[]).await;
        let field = |name: &str| {
            let at = page
                .find(&format!("name=\"{name}\" value=\""))
                .unwrap_or_else(|| panic!("{name} in {page}"));
            let rest = &page[at + name.len() + 15..];
            rest[..rest.find('"').unwrap()].to_owned()
        };
        let (xsrf, code) = (field("xsrf"), field("user_code"));
        let device = format!("{base}/device");
        let Some(login) = login else {
            let (s, _, page) = self
                .go(
                    Method::POST,
                    &device,
                    &[("xsrf", &xsrf), ("user_code", &code), ("abort", "yes")],
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{page}");
            return;
        };
        let (s, to, _) = self
            .go(
                Method::POST,
                &device,
                &[("xsrf", &xsrf), ("user_code", &code), ("confirm", "yes")],
            )
            .await;
        assert_eq!(s, StatusCode::SEE_OTHER);
        let interaction = format!("{base}{to}");
        let (s, _, page) = self.go(Method::GET, &interaction, &[]).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let (s, to, _) = self
            .go(
                Method::POST,
                &interaction,
                &[
                    ("prompt", "login"),
                    ("login", login),
                    ("password", "anything"),
                ],
            )
            .await;
        assert_eq!(s, StatusCode::SEE_OTHER);
        let (s, _, page) = self.go(Method::GET, &to, &[]).await;
        assert_eq!(s, StatusCode::OK);
        assert!(page.contains("Sign-in Success"), "{page}");
    }
}

/// `slipway login` where the provider offers the device flow: the CLI
/// prints a code and an address, the person signs in there (on any
/// device), the CLI polls the server, which keeps the device code, checks
/// the ID token (no nonce in this flow) and answers a session; a declined
/// device sign-in, an unknown handle and a second poll after success are
/// refused with a sentence and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_device_flow_signs_the_cli_in_without_a_browser() {
    let provider = DeviceProvider::start(json!({"erin": [TOOL_Z, "cn=other,dc=org"]})).await;
    let issuer = provider.url.clone();
    let env = Env::with(move |c| {
        c.identity.oidc.issuer = issuer;
        c.identity.oidc.allow_http = true;
        c.identity.oidc.name = "Wikimedia".into();
        c.identity.oidc.client_id = "slipway".into();
        c.identity.oidc.client_secret = slipway_registry::config::Secret::new("client-secret");
        c.identity.oidc.group_pattern =
            "cn=tools.{tool},ou=servicegroups,dc=wikimedia,dc=org".into();
        c.identity.oidc.project_pattern = "tool-{tool}".into();
        c.builds.workers = 0;
    })
    .await;
    env.server.create_project("tool-z", false).await;
    let (_, offers) = env.api(Method::GET, "/api/v1/sign-in", None, None).await;
    assert_eq!(
        offers,
        json!({"ldap": false, "oidc": "Wikimedia", "oidc_device": true})
    );

    // The CLI, as a person on a machine without a browser runs it.
    let config = tempfile::tempdir().unwrap();
    let (login, said, complete) = slipway_login(&env.server.url, config.path(), &[], |line| {
        line.strip_prefix("(or open ")
            .map(|u| u.trim_end_matches(')').to_owned())
    })
    .await;
    assert!(
        said.contains("To sign in with Wikimedia, open http")
            && said.contains("/device on any device and enter the code "),
        "{said}"
    );
    DeviceBrowser::new().device(&complete, Some("erin")).await;
    let out = tokio::time::timeout(Duration::from_secs(60), login.wait_with_output())
        .await
        .expect("slipway login ends once the person signed in")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("as erin") && stdout.contains("tool-z (maintainer)"),
        "{stdout}"
    );

    // The same through the API: pending until the person has finished,
    // then a session, once.
    let start = || {
        let env = &env;
        async move {
            let (s, v) = env
                .api(Method::POST, "/api/v1/sign-in/oidc/device", None, None)
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v
        }
    };
    let poll = |handle: Value| {
        let env = &env;
        async move {
            env.api(
                Method::POST,
                "/api/v1/sign-in/oidc/device/poll",
                None,
                Some(json!({"handle": handle})),
            )
            .await
        }
    };
    // Polls until the answer is no longer "pending" (the provider is
    // asked at most once per interval: faster polls are told to slow down).
    let settled = |handle: Value| {
        let poll = &poll;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (s, v) = poll(handle.clone()).await;
                if s != StatusCode::ACCEPTED {
                    return (s, v);
                }
                assert!(Instant::now() < deadline, "still pending: {v}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let started = start().await;
    assert!(
        started.get("device_code").is_none(),
        "the device code stays on the server: {started}"
    );
    let (s, v) = poll(started["handle"].clone()).await;
    assert_eq!(
        (s, &v["pending"]),
        (StatusCode::ACCEPTED, &json!(true)),
        "{v}"
    );
    DeviceBrowser::new()
        .device(
            started["verification_uri_complete"].as_str().unwrap(),
            Some("erin"),
        )
        .await;
    let (s, v) = poll(started["handle"].clone()).await;
    assert_eq!(
        (s, &v["slow_down"]),
        (StatusCode::ACCEPTED, &json!(true)),
        "the provider was asked a moment ago: {v}"
    );
    let (s, v) = settled(started["handle"].clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["me"]["name"], "erin");
    assert_eq!(v["me"]["memberships"][0]["project"], "tool-z");
    let (s, v) = poll(started["handle"].clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["error"].as_str().unwrap().contains("already used"), "{v}");

    // Declined at the provider; a handle never given.
    let started = start().await;
    DeviceBrowser::new()
        .device(started["verification_uri_complete"].as_str().unwrap(), None)
        .await;
    let (s, v) = settled(started["handle"].clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("did not sign you in: access_denied"),
        "{v}"
    );
    let (s, v) = poll(json!("made-up")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("was not started here"),
        "{v}"
    );
    let (_, audit) = env
        .api(
            Method::GET,
            "/api/v1/audit?action=person.sign_in_refused",
            Some(&env.admin()),
            None,
        )
        .await;
    let audit = audit.to_string();
    for reason in ["already used", "access_denied", "was not started here"] {
        assert!(audit.contains(reason), "{reason} audited: {audit}");
    }
}
