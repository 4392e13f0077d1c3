//! The security suite: every way in that must stay shut, against a real
//! server on 127.0.0.1. Each refusal is checked for its status, the spec's
//! error JSON, and that nothing was written.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use slipway_registry::auth::Actions;
use slipway_registry::auth::tokens::{AccessEntry, Claims, TokenKeys, TokenUse};
use slipway_registry::testing::TestServer;
use slipway_storage::meta::{RobotUpdate, now_ms};

pub struct Env {
    pub server: TestServer,
    pub http: reqwest::Client,
}

pub fn basic(user: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{secret}")))
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Env {
    /// A server with private `tool-a` and `tool-b`, public `tool-pub`, each
    /// holding `<project>/web:v1`.
    pub async fn new() -> Env {
        Self::with(|_| {}).await
    }

    pub async fn with(adjust: impl FnOnce(&mut slipway_registry::Config)) -> Env {
        let server = TestServer::start_with(adjust).await;
        let env = Env {
            server,
            http: reqwest::Client::new(),
        };
        for (p, public) in [("tool-a", false), ("tool-b", false), ("tool-pub", true)] {
            env.server.create_project(p, public).await;
            env.push_image(&format!("{p}/web"), "v1", p.as_bytes())
                .await;
        }
        env
    }

    pub fn admin(&self) -> String {
        basic("admin", &self.server.admin_password)
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Vec<u8>,
        content_type: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.server.url))
            .body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        (status, headers, resp.bytes().await.unwrap().to_vec())
    }

    pub async fn get(
        &self,
        path: &str,
        auth: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        self.send(Method::GET, path, auth, Vec::new(), None).await
    }

    /// Pushes a one-layer image as the admin; returns the manifest digest.
    pub async fn push_image(&self, repo: &str, tag: &str, seed: &[u8]) -> String {
        let admin = self.admin();
        let layer = [seed, b"-layer"].concat();
        let config = json!({"architecture": "amd64", "os": "linux", "seed": digest(seed)})
            .to_string()
            .into_bytes();
        for blob in [&layer, &config] {
            let (s, _, b) = self
                .send(
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/?digest={}", digest(blob)),
                    Some(&admin),
                    blob.to_vec(),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len()}],
        })
        .to_string()
        .into_bytes();
        let (s, _, b) = self
            .send(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{tag}"),
                Some(&admin),
                manifest.clone(),
                Some("application/vnd.oci.image.manifest.v1+json"),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
        digest(&manifest)
    }

    /// Creates a robot through the admin API; returns its secret.
    pub async fn robot(&self, project: &str, name: &str, permissions: &[&str]) -> String {
        let (s, _, b) = self
            .send(
                Method::POST,
                &format!("/api/v1/projects/{project}/robots"),
                Some(&self.admin()),
                json!({"name": name, "permissions": permissions})
                    .to_string()
                    .into_bytes(),
                Some("application/json"),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
        let v: Value = serde_json::from_slice(&b).unwrap();
        v["secret"].as_str().unwrap().to_owned()
    }

    /// A token from `/auth/token` (GET).
    pub async fn token(&self, auth: Option<&str>, scopes: &[&str]) -> (StatusCode, Value) {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("service", "slipway");
        for s in scopes {
            q.append_pair("scope", s);
        }
        let (s, _, b) = self.get(&format!("/auth/token?{}", q.finish()), auth).await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    pub async fn bearer(&self, auth: Option<&str>, scopes: &[&str]) -> String {
        let (s, v) = self.token(auth, scopes).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        format!("Bearer {}", v["token"].as_str().unwrap())
    }

    pub fn keys(&self) -> TokenKeys {
        let pem =
            std::fs::read_to_string(self.server.data_dir().join("token-signing-key.pem")).unwrap();
        TokenKeys::from_pem(&pem, "slipway", "slipway", 30).unwrap()
    }

    /// A request written by hand, so the path reaches the server exactly as
    /// given (HTTP clients resolve `..` segments before sending).
    pub async fn raw(&self, method: &str, path: &str, auth: &str) -> (StatusCode, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(self.server.addr)
            .await
            .unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\n{{}}",
            self.server.host()
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        // Bodies here are small JSON: skip a chunked-encoding length line if any.
        let body = body.find('{').map(|i| &body[i..]).unwrap_or(body);
        let body = body.rfind('}').map(|i| &body[..=i]).unwrap_or(body);
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT),
            body.as_bytes().to_vec(),
        )
    }

    pub async fn repositories(&self) -> Vec<String> {
        let (s, _, b) = self.get("/v2/_catalog", Some(&self.admin())).await;
        assert_eq!(s, StatusCode::OK);
        let v: Value = serde_json::from_slice(&b).unwrap();
        v["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    }
}

/// The spec's error JSON with `code`.
#[track_caller]
pub fn assert_error(status: StatusCode, body: &[u8], want_status: StatusCode, want_code: &str) {
    assert_eq!(status, want_status, "{}", String::from_utf8_lossy(body));
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)));
    assert_eq!(v["errors"][0]["code"], want_code, "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

fn now() -> i64 {
    now_ms() / 1000
}

fn claims(sub: &str, access: Vec<AccessEntry>) -> Claims {
    let n = now();
    Claims {
        iss: "slipway".into(),
        sub: sub.into(),
        aud: "slipway".into(),
        exp: n + 300,
        nbf: n,
        iat: n,
        jti: "test".into(),
        access,
        token_use: TokenUse::Access,
        ver: None,
        pat: None,
    }
}

const MANIFEST_V1: &str = "/v2/tool-a/web/manifests/v1";

#[tokio::test]
async fn base_endpoint_challenges_and_anonymous_pulls_only_public() {
    let env = Env::new().await;
    let (s, h, b) = env.get("/v2/", None).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let challenge = h["www-authenticate"].to_str().unwrap();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"{}/auth/token\",service=\"slipway\"",
            env.server.url
        )
    );

    let (s, _, _) = env.get("/v2/tool-pub/web/manifests/v1", None).await;
    assert_eq!(s, StatusCode::OK, "anonymous pull of a public project");
    let (s, h, b) = env.get(MANIFEST_V1, None).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"repository:tool-a/web:pull\"")
    );

    // An anonymous token: pull on public, nothing on private.
    let (s, v) = env
        .token(
            None,
            &[
                "repository:tool-pub/web:pull,push",
                "repository:tool-a/web:pull",
            ],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let claims = env
        .keys()
        .verify(v["token"].as_str().unwrap(), TokenUse::Access)
        .unwrap();
    assert_eq!(claims.sub, "anonymous");
    assert_eq!(
        claims.access,
        vec![
            AccessEntry::repository("tool-pub/web", Actions::PULL),
            AccessEntry::repository("tool-a/web", Actions::NONE),
        ]
    );
    assert!(v.get("refresh_token").is_none());
    let anon = format!("Bearer {}", v["token"].as_str().unwrap());
    assert_eq!(env.get("/v2/", Some(&anon)).await.0, StatusCode::OK);
    let (s, _, b) = env.get(MANIFEST_V1, Some(&anon)).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let (s, _, b) = env
        .send(
            Method::POST,
            "/v2/tool-pub/web/blobs/uploads/",
            Some(&anon),
            Vec::new(),
            None,
        )
        .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
}

#[tokio::test]
async fn token_endpoint_issues_complete_tokens() {
    let env = Env::new().await;
    let (s, v) = env
        .token(
            Some(&env.admin()),
            &[
                "repository:tool-a/web:pull repository:tool-b/web:pull",
                "repository:tool-pub/web:push",
            ],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["token"], v["access_token"]);
    assert_eq!(v["expires_in"], 300);
    assert!(v["issued_at"].as_str().unwrap().ends_with('Z'));
    let token = v["token"].as_str().unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], env.keys().kid());
    let c = env.keys().verify(token, TokenUse::Access).unwrap();
    assert_eq!(
        (c.iss.as_str(), c.aud.as_str(), c.sub.as_str()),
        ("slipway", "slipway", "admin")
    );
    assert_eq!(c.exp - c.iat, 300);
    assert!(c.nbf <= c.iat && !c.jti.is_empty());
    // Space-separated and repeated scopes; a logged-in principal gets all it may do.
    assert_eq!(c.access.len(), 3);
    assert!(
        c.access
            .iter()
            .all(|a| a.actions == ["pull", "push", "delete"])
    );

    // OAuth2 password grant, then the refresh grant.
    let form = |pairs: &[(&str, &str)]| {
        let mut f = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            f.append_pair(k, v);
        }
        f.finish().into_bytes()
    };
    let ct = Some("application/x-www-form-urlencoded");
    let (s, _, b) = env
        .send(
            Method::POST,
            "/auth/token",
            None,
            form(&[
                ("grant_type", "password"),
                ("username", "admin"),
                ("password", &env.server.admin_password),
                ("service", "slipway"),
                ("scope", "repository:tool-a/web:pull"),
                ("client_id", "test"),
                ("access_type", "offline"),
            ]),
            ct,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let v: Value = serde_json::from_slice(&b).unwrap();
    let refresh = v["refresh_token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {}", v["access_token"].as_str().unwrap());
    assert_eq!(env.get(MANIFEST_V1, Some(&bearer)).await.0, StatusCode::OK);
    // A refresh token is not an access token.
    let (s, _, b) = env
        .get(MANIFEST_V1, Some(&format!("Bearer {refresh}")))
        .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let (s, _, b) = env
        .send(
            Method::POST,
            "/auth/token",
            None,
            form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("service", "slipway"),
                ("scope", "repository:tool-b/web:pull"),
            ]),
            ct,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let v: Value = serde_json::from_slice(&b).unwrap();
    let bearer = format!("Bearer {}", v["access_token"].as_str().unwrap());
    assert_eq!(
        env.get("/v2/tool-b/web/manifests/v1", Some(&bearer))
            .await
            .0,
        StatusCode::OK
    );
    // An access token is not a refresh token.
    let access = v["access_token"].as_str().unwrap();
    let (s, _, _) = env
        .send(
            Method::POST,
            "/auth/token",
            None,
            form(&[("grant_type", "refresh_token"), ("refresh_token", access)]),
            ct,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The wrong service.
    let (s, _, _) = env
        .get("/auth/token?service=other", Some(&env.admin()))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn forged_and_stale_tokens_are_refused() {
    let env = Env::new().await;
    let keys = env.keys();
    let pull_a = vec![AccessEntry::repository("tool-a/web", Actions::PULL)];
    let good = keys.sign(&claims("admin", pull_a.clone())).unwrap();
    assert_eq!(
        env.get(MANIFEST_V1, Some(&format!("Bearer {good}")))
            .await
            .0,
        StatusCode::OK
    );

    let mut forged = Vec::new();
    // Altered payload under the original signature.
    let parts: Vec<&str> = good.split('.').collect();
    let mut c = claims(
        "admin",
        vec![AccessEntry::repository("tool-b/web", Actions::ALL)],
    );
    c.jti = "x".into();
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
    forged.push(("altered", format!("{}.{payload}.{}", parts[0], parts[2])));
    // alg none.
    let none = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
        keys.kid()
    ));
    forged.push(("alg none", format!("{none}.{}.", parts[1])));
    // HS256 keyed with the public key (algorithm confusion).
    let public_pem = {
        use p256::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
        let pem =
            std::fs::read_to_string(env.server.data_dir().join("token-signing-key.pem")).unwrap();
        p256::SecretKey::from_pkcs8_pem(&pem)
            .unwrap()
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    };
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some(keys.kid().to_owned()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims("admin", pull_a.clone()),
        &jsonwebtoken::EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    forged.push(("HS256 with the public key", hs));
    // Times, audience, issuer, use.
    let mut c = claims("admin", pull_a.clone());
    c.exp = now() - 120;
    forged.push(("expired", keys.sign(&c).unwrap()));
    let mut c = claims("admin", pull_a.clone());
    c.nbf = now() + 600;
    forged.push(("not yet valid", keys.sign(&c).unwrap()));
    let mut c = claims("admin", pull_a.clone());
    c.aud = "another-registry".into();
    forged.push(("wrong audience", keys.sign(&c).unwrap()));
    let mut c = claims("admin", pull_a.clone());
    c.iss = "someone-else".into();
    forged.push(("wrong issuer", keys.sign(&c).unwrap()));
    let mut c = claims("admin", pull_a.clone());
    c.token_use = TokenUse::Refresh;
    forged.push(("refresh used as access", keys.sign(&c).unwrap()));
    // Another key entirely.
    let other_dir = tempfile::tempdir().unwrap();
    let other =
        TokenKeys::load_or_create(&other_dir.path().join("k.pem"), "slipway", "slipway", 30)
            .unwrap();
    forged.push((
        "another key",
        other.sign(&claims("admin", pull_a.clone())).unwrap(),
    ));
    forged.push(("garbage", "not.a.token".into()));
    // A robot that does not exist.
    forged.push((
        "unknown robot",
        keys.sign(&claims("robot$tool-a+ghost", pull_a.clone()))
            .unwrap(),
    ));

    for (what, token) in forged {
        let (s, h, b) = env.get(MANIFEST_V1, Some(&format!("Bearer {token}"))).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            String::from_utf8_lossy(&b)
        );
        assert_error(s, &b, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        assert!(
            h["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\""),
            "{what}"
        );
        // Nothing written with it either.
        let (s, _, _) = env
            .send(
                Method::DELETE,
                "/v2/tool-a/web/manifests/v1",
                Some(&format!("Bearer {token}")),
                Vec::new(),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}");
    }
    assert_eq!(
        env.get(MANIFEST_V1, Some(&env.admin())).await.0,
        StatusCode::OK,
        "the tag survived"
    );
}

#[tokio::test]
async fn a_token_for_one_repository_does_not_open_another() {
    let env = Env::new().await;
    let for_a = env
        .bearer(Some(&env.admin()), &["repository:tool-a/web:pull"])
        .await;
    assert_eq!(env.get(MANIFEST_V1, Some(&for_a)).await.0, StatusCode::OK);
    let (s, h, b) = env.get("/v2/tool-b/web/manifests/v1", Some(&for_a)).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let c = h["www-authenticate"].to_str().unwrap();
    assert!(
        c.contains("error=\"insufficient_scope\"") && c.contains("repository:tool-b/web:pull"),
        "{c}"
    );
    // Nor another repository of the same project.
    let (s, _, _) = env.get("/v2/tool-a/other/tags/list", Some(&for_a)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn robots_stay_in_their_project_and_may_only_pull_by_default() {
    let env = Env::new().await;
    let secret = env.robot("tool-a", "ci", &["pull"]).await;
    let robot = basic("robot$tool-a+ci", &secret);
    assert_eq!(env.get(MANIFEST_V1, Some(&robot)).await.0, StatusCode::OK);
    assert_eq!(
        env.get("/v2/tool-pub/web/manifests/v1", Some(&robot))
            .await
            .0,
        StatusCode::OK
    );
    let (s, _, b) = env.get("/v2/tool-b/web/manifests/v1", Some(&robot)).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "DENIED");
    // Its token for tool-b grants nothing, and is refused there.
    let (_, v) = env
        .token(Some(&robot), &["repository:tool-b/web:pull,push"])
        .await;
    let c = env
        .keys()
        .verify(v["token"].as_str().unwrap(), TokenUse::Access)
        .unwrap();
    assert_eq!(
        c.access,
        vec![AccessEntry::repository("tool-b/web", Actions::NONE)]
    );
    let bearer = format!("Bearer {}", v["token"].as_str().unwrap());
    let (s, _, b) = env.get("/v2/tool-b/web/manifests/v1", Some(&bearer)).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "DENIED");
    // A pull-only robot cannot push or delete, in its own project either.
    let before = env.repositories().await;
    for (method, path) in [
        (Method::POST, "/v2/tool-a/web/blobs/uploads/"),
        (Method::POST, "/v2/tool-a/new/blobs/uploads/"),
        (Method::PUT, "/v2/tool-a/web/manifests/v2"),
        (Method::DELETE, "/v2/tool-a/web/manifests/v1"),
        (Method::POST, "/v2/tool-b/web/blobs/uploads/"),
    ] {
        let (s, _, b) = env
            .send(method.clone(), path, Some(&robot), b"{}".to_vec(), None)
            .await;
        assert_error(s, &b, StatusCode::FORBIDDEN, "DENIED");
    }
    assert_eq!(env.repositories().await, before, "nothing was created");
    assert_eq!(env.get(MANIFEST_V1, Some(&robot)).await.0, StatusCode::OK);
    // Asking for push permissions is refused while robots may not write.
    let (s, _, b) = env
        .send(
            Method::POST,
            "/api/v1/projects/tool-a/robots",
            Some(&env.admin()),
            json!({"name": "writer", "permissions": ["pull", "push"]})
                .to_string()
                .into_bytes(),
            Some("application/json"),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&b)
    );
}

#[tokio::test]
async fn writing_robots_when_configured_push_only_to_their_project() {
    let env = Env::with(|c| c.auth.robots_may_write = true).await;
    let secret = env.robot("tool-b", "ci", &["pull", "push"]).await;
    let robot = basic("robot$tool-b+ci", &secret);
    env.push_image("tool-b/web", "v2", b"b2").await;
    // Mounting from a repository it may not pull falls back to an upload.
    let layer = digest(b"tool-a-layer");
    let (s, _, _) = env
        .send(
            Method::POST,
            &format!("/v2/tool-b/web/blobs/uploads/?mount={layer}&from=tool-a/web"),
            Some(&robot),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::ACCEPTED,
        "no mount without pull on the source"
    );
    let (s, _, _) = env
        .send(
            Method::HEAD,
            &format!("/v2/tool-b/web/blobs/{layer}"),
            Some(&robot),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // From a public one it may.
    let public_layer = digest(b"tool-pub-layer");
    let (s, _, _) = env
        .send(
            Method::POST,
            &format!("/v2/tool-b/web/blobs/uploads/?mount={public_layer}&from=tool-pub/web"),
            Some(&robot),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // Still nothing in tool-a.
    let (s, _, b) = env
        .send(
            Method::POST,
            "/v2/tool-a/web/blobs/uploads/",
            Some(&robot),
            Vec::new(),
            None,
        )
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "DENIED");
}

#[tokio::test]
async fn disabled_rotated_expired_and_deleted_robots_are_refused_at_once() {
    let env = Env::new().await;
    let admin = env.admin();
    let secret = env.robot("tool-a", "ci", &["pull"]).await;
    let robot = basic("robot$tool-a+ci", &secret);
    let token = env
        .bearer(Some(&robot), &["repository:tool-a/web:pull"])
        .await;
    assert_eq!(env.get(MANIFEST_V1, Some(&token)).await.0, StatusCode::OK);
    let patch = |body: Value| {
        env.send(
            Method::PATCH,
            "/api/v1/projects/tool-a/robots/ci",
            Some(&admin),
            body.to_string().into_bytes(),
            Some("application/json"),
        )
    };

    // Disabled: the token and the secret stop working at once.
    assert_eq!(patch(json!({"enabled": false})).await.0, StatusCode::OK);
    for auth in [&token, &robot] {
        let (s, _, b) = env.get(MANIFEST_V1, Some(auth)).await;
        assert_error(s, &b, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    assert_eq!(
        env.token(Some(&robot), &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(patch(json!({"enabled": true})).await.0, StatusCode::OK);
    assert_eq!(env.get(MANIFEST_V1, Some(&robot)).await.0, StatusCode::OK);
    assert_eq!(
        env.get(MANIFEST_V1, Some(&token)).await.0,
        StatusCode::UNAUTHORIZED,
        "tokens from before stay dead"
    );

    // Rotated: the old secret and tokens die, the new secret works.
    let token = env
        .bearer(Some(&robot), &["repository:tool-a/web:pull"])
        .await;
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
    let new_secret = serde_json::from_slice::<Value>(&b).unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_secret, secret);
    assert_eq!(
        env.get(MANIFEST_V1, Some(&robot)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        env.get(MANIFEST_V1, Some(&token)).await.0,
        StatusCode::UNAUTHORIZED
    );
    let robot = basic("robot$tool-a+ci", &new_secret);
    assert_eq!(env.get(MANIFEST_V1, Some(&robot)).await.0, StatusCode::OK);

    // Expired.
    let token = env
        .bearer(Some(&robot), &["repository:tool-a/web:pull"])
        .await;
    env.server
        .state
        .meta
        .robot_update(
            "tool-a",
            "ci",
            &RobotUpdate {
                expires_at: Some(Some(now_ms() - 1000)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        env.get(MANIFEST_V1, Some(&robot)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        env.get(MANIFEST_V1, Some(&token)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(patch(json!({"expires_in_days": 0})).await.0, StatusCode::OK);
    assert_eq!(env.get(MANIFEST_V1, Some(&robot)).await.0, StatusCode::OK);

    // Deleted.
    let token = env
        .bearer(Some(&robot), &["repository:tool-a/web:pull"])
        .await;
    let (s, _, _) = env
        .send(
            Method::DELETE,
            "/api/v1/projects/tool-a/robots/ci",
            Some(&admin),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        env.get(MANIFEST_V1, Some(&robot)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        env.get(MANIFEST_V1, Some(&token)).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn wrong_passwords_are_refused_and_rate_limited() {
    let env = Env::new().await;
    for user in ["admin", "builder", "robot$tool-a+ghost", "nobody"] {
        let (s, _, b) = env.get(MANIFEST_V1, Some(&basic(user, "wrong"))).await;
        assert_error(s, &b, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    let mut limited = false;
    for _ in 0..10 {
        let (s, _) = env.token(Some(&basic("admin", "wrong")), &[]).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    assert!(limited, "ten wrong passwords in a minute are rate limited");
    let (s, h, b) = env.get(MANIFEST_V1, Some(&env.admin())).await;
    assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    assert!(h.contains_key("retry-after"));
}

#[tokio::test]
async fn path_tricks_are_invalid_names() {
    let env = Env::new().await;
    let admin = env.admin();
    let before = env.repositories().await;
    let long = "a".repeat(300);
    for path in [
        "/v2/tool-a/../tool-b/web/manifests/v1".to_string(),
        "/v2/tool-a/%2e%2e/tool-b/web/manifests/v1".into(),
        "/v2/tool-a%2fweb/manifests/v1".into(),
        "/v2/tool-a/%2Fweb/manifests/v1".into(),
        "/v2/Tool-A/web/manifests/v1".into(),
        "/v2/tool-a/WEB/blobs/uploads/".into(),
        format!("/v2/tool-a/{long}/manifests/v1"),
        "/v2/tool-a//web/manifests/v1".into(),
        "/v2/tool-a/web./manifests/v1".into(),
    ] {
        for method in ["GET", "PUT", "POST", "DELETE"] {
            let (s, b) = env.raw(method, &path, &admin).await;
            assert!(
                s == StatusCode::BAD_REQUEST
                    || s == StatusCode::METHOD_NOT_ALLOWED
                    || s == StatusCode::NOT_FOUND,
                "{method} {path}: {s}"
            );
            if s == StatusCode::BAD_REQUEST {
                assert_error(s, &b, StatusCode::BAD_REQUEST, "NAME_INVALID");
            }
        }
    }
    assert_eq!(env.repositories().await, before, "nothing was created");
    // `..` that would resolve to a real path is not followed either.
    let (s, b) = env
        .raw(
            "GET",
            "/v2/tool-a/web/../../tool-b/web/manifests/v1",
            &admin,
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "NAME_INVALID");
}

#[tokio::test]
async fn pushing_into_a_missing_project_says_so() {
    let env = Env::new().await;
    let (s, _, b) = env
        .send(
            Method::POST,
            "/v2/tool-nope/web/blobs/uploads/",
            Some(&env.admin()),
            Vec::new(),
            None,
        )
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "DENIED");
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("project tool-nope does not exist"),
        "{v}"
    );
    assert!(
        !env.repositories()
            .await
            .iter()
            .any(|r| r.starts_with("tool-nope"))
    );
}

#[tokio::test]
async fn the_catalog_shows_what_the_caller_may_pull() {
    let env = Env::new().await;
    let all = env.repositories().await;
    assert_eq!(all, ["tool-a/web", "tool-b/web", "tool-pub/web"]);
    let anon = env.bearer(None, &["registry:catalog:*"]).await;
    let (_, _, b) = env.get("/v2/_catalog", Some(&anon)).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["repositories"],
        json!(["tool-pub/web"])
    );
    let secret = env.robot("tool-b", "ci", &["pull"]).await;
    let (_, _, b) = env
        .get("/v2/_catalog?n=1", Some(&basic("robot$tool-b+ci", &secret)))
        .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["repositories"],
        json!(["tool-b/web"])
    );
    let (s, _, _) = env.get("/v2/_catalog", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_admin_api_is_for_the_admin_and_audited() {
    let env = Env::new().await;
    let (s, h, b) = env.get("/api/v1/projects", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(h.contains_key("www-authenticate"));
    assert!(serde_json::from_slice::<Value>(&b).unwrap()["error"].is_string());
    let secret = env.robot("tool-a", "ci", &["pull"]).await;
    let (s, _, b) = env
        .get("/api/v1/projects", Some(&basic("robot$tool-a+ci", &secret)))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(
        serde_json::from_slice::<Value>(&b).unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("only the admin")
    );
    let (s, _, _) = env
        .get("/api/v1/projects", Some(&basic("builder", "wrong")))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A token works as well as Basic.
    let bearer = env.bearer(Some(&env.admin()), &[]).await;
    assert_eq!(
        env.get("/api/v1/projects", Some(&bearer)).await.0,
        StatusCode::OK
    );

    // Bad input is a sentence.
    for body in [
        json!({"name": "Tool-X"}),
        json!({"name": "a/b"}),
        json!({"name": "tool-a"}),
        json!({"nme": "x"}),
    ] {
        let (s, _, b) = env
            .send(
                Method::POST,
                "/api/v1/projects",
                Some(&env.admin()),
                body.to_string().into_bytes(),
                Some("application/json"),
            )
            .await;
        assert!(s.is_client_error(), "{body}: {s}");
        if s != StatusCode::UNPROCESSABLE_ENTITY {
            assert!(
                serde_json::from_slice::<Value>(&b).unwrap()["error"].is_string(),
                "{body}"
            );
        }
    }
    let (s, _, b) = env
        .send(
            Method::DELETE,
            "/api/v1/projects/tool-a",
            Some(&env.admin()),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "a project with images stays: {}",
        String::from_utf8_lossy(&b)
    );

    // Admin actions, pushes and deletes are in the audit log, with who and where.
    let (s, _, _) = env
        .send(
            Method::DELETE,
            MANIFEST_V1,
            Some(&env.admin()),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _, b) = env
        .get("/api/v1/audit?limit=1000", Some(&env.admin()))
        .await;
    assert_eq!(s, StatusCode::OK);
    let page: Value = serde_json::from_slice(&b).unwrap();
    let entries = page["entries"].as_array().unwrap();
    let find = |action: &str, target: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["target"] == target)
            .unwrap_or_else(|| panic!("no {action} {target} in {page}"))
    };
    let e = find("robot.create", "robot$tool-a+ci");
    assert_eq!(
        (e["principal"].as_str(), e["remote_addr"].as_str()),
        (Some("admin"), Some("127.0.0.1"))
    );
    assert_eq!(find("tag.delete", "tool-a/web:v1")["principal"], "admin");
    let pushes = entries
        .iter()
        .filter(|e| e["action"] == "manifest.push")
        .count();
    assert_eq!(pushes, 3);
    let (_, _, b) = env
        .get("/api/v1/audit?project=tool-b&limit=10", Some(&env.admin()))
        .await;
    let page: Value = serde_json::from_slice(&b).unwrap();
    assert!(
        page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["project"] == "tool-b")
    );
    assert!(!page["entries"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn secrets_are_hashed_at_rest() {
    let env = Env::new().await;
    let secret = env.robot("tool-a", "ci", &["pull"]).await;
    let mut stored = Vec::new();
    for f in ["slipway.db", "slipway.db-wal"] {
        if let Ok(b) = std::fs::read(env.server.data_dir().join(f)) {
            stored.extend(b);
        }
    }
    assert!(!stored.is_empty());
    for s in [secret.as_str(), env.server.admin_password.as_str()] {
        assert!(
            !stored.windows(s.len()).any(|w| w == s.as_bytes()),
            "a secret is stored in clear"
        );
    }
}

/// The token realm and the dashboard's `Secure` cookies follow the scheme
/// the client used: a TLS-terminating proxy's `X-Forwarded-Proto` or
/// `Forwarded: proto=` counts only from `[server] trusted_proxies`.
#[tokio::test]
async fn only_a_trusted_proxy_says_the_client_used_https() {
    let untrusted = TestServer::start().await;
    let trusted = TestServer::start_with(|c| {
        c.server.trusted_proxies = vec!["10.0.0.0/8".into(), "127.0.0.1".into()];
    })
    .await;
    let http = reqwest::Client::new();
    let realm = |h: &reqwest::header::HeaderMap| {
        let v = h["www-authenticate"].to_str().unwrap().to_owned();
        v.split('"').nth(1).unwrap().to_owned()
    };
    let ask = |base: &str, header: Option<(&'static str, &'static str)>| {
        let mut r = http.get(format!("{base}/v2/"));
        if let Some((k, v)) = header {
            r = r.header(k, v);
        }
        r.send()
    };
    for (server, header, scheme) in [
        (&untrusted, Some(("x-forwarded-proto", "https")), "http"),
        (
            &untrusted,
            Some(("forwarded", "for=1.2.3.4;proto=https")),
            "http",
        ),
        (&trusted, None, "http"),
        (&trusted, Some(("x-forwarded-proto", "https")), "https"),
        (
            &trusted,
            Some(("forwarded", "for=1.2.3.4;proto=https")),
            "https",
        ),
        (&trusted, Some(("x-forwarded-proto", "http")), "http"),
    ] {
        let r = ask(&server.url, header).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let host = server.url.trim_start_matches("http://");
        assert_eq!(
            realm(r.headers()),
            format!("{scheme}://{host}/auth/token"),
            "{header:?}"
        );
    }
    for (server, secure) in [(&untrusted, false), (&trusted, true)] {
        let r = http
            .get(format!("{}/ui/login", server.url))
            .header("x-forwarded-proto", "https")
            .send()
            .await
            .unwrap();
        let cookie = r.headers()["set-cookie"].to_str().unwrap();
        assert_eq!(cookie.contains("; Secure"), secure, "{cookie}");
    }
    // A proxy list that is not addresses is a configuration error.
    let toml = "[server]\ntrusted_proxies = [\"lb.example\"]\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), toml).unwrap();
    let e = slipway_registry::Config::load(
        Some(&dir.path().join("c.toml")),
        Vec::new(),
        &Default::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("lb.example is neither an address"),
        "{e}"
    );
}

/// `slipway admin` over HTTPS to a server whose admin API demands client
/// certificates: `--cacert` trusts a private authority, `--client-cert`
/// presents the admin's certificate; without it the server's sentence is
/// what the command prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_an_admin_api_behind_mutual_tls() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    let authority = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_owned());
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    };
    let (servers, admins) = (authority("servers"), authority("admins"));
    let leaf = |ca: &CertifiedIssuer<'_, KeyPair>, name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (cert, key) = leaf(&servers, "localhost");
    std::fs::write(path("server.crt"), cert).unwrap();
    std::fs::write(path("server.key"), key).unwrap();
    std::fs::write(path("servers.pem"), servers.pem()).unwrap();
    std::fs::write(path("admins.pem"), admins.pem()).unwrap();
    let (cert, key) = leaf(&admins, "admin");
    std::fs::write(path("admin.pem"), format!("{cert}{key}")).unwrap();
    let p = dir.path().to_path_buf();
    let server = TestServer::start_with(move |c| {
        c.tls.cert_file = p.join("server.crt");
        c.tls.key_file = p.join("server.key");
        c.tls.client_ca_file = p.join("admins.pem");
    })
    .await;
    server.create_project("tool-mtls", true).await;
    let admin = |extra: &[&std::path::Path]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_slipway"));
        c.args(["admin", "project", "list", "--url", &server.url])
            .env("SLIPWAY_PASSWORD", &server.admin_password)
            .arg("--cacert")
            .arg(path("servers.pem"));
        for e in extra {
            c.arg("--client-cert").arg(e);
        }
        c.output().unwrap()
    };
    let out = admin(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("needs a client certificate"),
        "{err}"
    );
    let out = admin(&[&path("admin.pem")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tool-mtls"));
    let out = admin(&[&path("servers.pem")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("must hold a certificate and its private key"),
        "{err}"
    );
}
