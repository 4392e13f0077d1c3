//! A small OCI distribution client: what the builder needs to read builder
//! and run images and to export app images — as a registry client, with
//! Basic credentials or Docker token authentication, so the builder works
//! against any registry and every write goes through the registry's own
//! permission and quota checks.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("the registry refused: {status} {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach the registry: {0}")]
    Transport(String),
    #[error("{0}")]
    Invalid(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl OciError {
    /// The registry's error code (`DENIED`, `MANIFEST_UNKNOWN`, …), if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            OciError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<reqwest::Error> for OciError {
    fn from(e: reqwest::Error) -> Self {
        OciError::Transport(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, OciError>;

/// How long [`Client`] keeps asking a registry that answers 503 or cannot
/// be reached, and its first wait.
const RETRY_FOR: Duration = Duration::from_secs(30);
const RETRY_FIRST_DELAY: Duration = Duration::from_millis(250);

/// A `Retry-After` in seconds, capped at 8.
fn retry_after(resp: &Response) -> Option<Duration> {
    let secs: u64 = resp
        .headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.clamp(1, 8)))
}

/// `registry/name:tag` or `registry/name@digest`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host:port`, or empty for "the registry this client talks to".
    pub registry: String,
    pub repository: String,
    pub reference: String,
}

impl ImageRef {
    /// Parses `[host[:port]/]name[:tag|@digest]`; the first component is a
    /// registry when it has a `.` or a `:`, or is `localhost`.
    pub fn parse(s: &str) -> Result<ImageRef> {
        let invalid = || OciError::Invalid(format!("{s:.200} is not an image reference"));
        let (registry, rest) = match s.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest)
            }
            _ => (String::new(), s),
        };
        let (repository, reference) = if let Some((name, digest)) = rest.split_once('@') {
            (name, digest.to_owned())
        } else {
            match rest.rsplit_once(':') {
                Some((name, tag)) if !tag.contains('/') => (name, tag.to_owned()),
                _ => (rest, "latest".to_owned()),
            }
        };
        if repository.is_empty() || reference.is_empty() {
            return Err(invalid());
        }
        Ok(ImageRef {
            registry,
            repository: repository.to_owned(),
            reference,
        })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.registry.is_empty() {
            write!(f, "{}/", self.registry)?;
        }
        let sep = if self.reference.contains(':') {
            '@'
        } else {
            ':'
        };
        write!(f, "{}{sep}{}", self.repository, self.reference)
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    user: String,
    password: String,
    tokens: Mutex<HashMap<String, String>>,
}

/// A fetched manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub body: Bytes,
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Client {
    /// A client for the registry at `base_url` (e.g. `http://127.0.0.1:5000`).
    pub fn new(base_url: &str, user: &str, password: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("an HTTP client"),
            base: base_url.trim_end_matches('/').to_owned(),
            user: user.to_owned(),
            password: password.to_owned(),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends a request for `repo` needing `actions`; on a Bearer challenge,
    /// fetches a token for the scope and sends it again (`make` rebuilds the
    /// request, bodies included). A registry that answers 503 (its database
    /// or store is briefly unavailable, e.g. a busy SQLite writer or a
    /// PostgreSQL failover) or cannot be reached is asked again, with
    /// backoff, for about half a minute: every request this client makes is
    /// idempotent (blob uploads name their digest, manifests their tag).
    async fn send(
        &self,
        repo: &str,
        actions: &str,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Response> {
        let mut delay = RETRY_FIRST_DELAY;
        let mut waited = Duration::ZERO;
        loop {
            let answer = self.send_once(repo, actions, &make).await;
            let again = match &answer {
                Ok(r) => r.status() == StatusCode::SERVICE_UNAVAILABLE,
                Err(OciError::Transport(_)) => true,
                Err(_) => false,
            };
            if !again || waited >= RETRY_FOR {
                return answer;
            }
            let wait = match &answer {
                Ok(r) => retry_after(r).unwrap_or(delay),
                Err(_) => delay,
            }
            .min(RETRY_FOR.saturating_sub(waited).max(RETRY_FIRST_DELAY));
            tracing::debug!(
                repo,
                wait_ms = wait.as_millis() as u64,
                "registry unavailable; retrying"
            );
            tokio::time::sleep(wait).await;
            waited += wait;
            delay = (delay * 2).min(Duration::from_secs(8));
        }
    }

    async fn send_once(
        &self,
        repo: &str,
        actions: &str,
        make: &impl Fn() -> RequestBuilder,
    ) -> Result<Response> {
        let scope = format!("repository:{repo}:{actions}");
        let token = self
            .tokens
            .lock()
            .expect("token cache")
            .get(&scope)
            .cloned();
        let with_auth = |r: RequestBuilder, token: &Option<String>| match token {
            Some(t) => r.bearer_auth(t),
            None => r.basic_auth(&self.user, Some(&self.password)),
        };
        let resp = with_auth(make(), &token).send().await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if !challenge.to_ascii_lowercase().starts_with("bearer ") {
            return Ok(resp);
        }
        let params = parse_challenge(&challenge);
        let Some(realm) = params.get("realm") else {
            return Ok(resp);
        };
        let mut req = self
            .http
            .get(realm)
            .basic_auth(&self.user, Some(&self.password))
            .query(&[("scope", scope.as_str())]);
        if let Some(service) = params.get("service") {
            req = req.query(&[("service", service.as_str())]);
        }
        let answer = req.send().await?;
        if !answer.status().is_success() {
            return Err(refused(answer).await);
        }
        let body: serde_json::Value = answer.json().await?;
        let token = body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .ok_or_else(|| OciError::Invalid("the token endpoint gave no token".into()))?
            .to_owned();
        self.tokens
            .lock()
            .expect("token cache")
            .insert(scope, token.clone());
        Ok(with_auth(make(), &Some(token)).send().await?)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A manifest by tag or digest (any of the four manifest types).
    pub async fn manifest(&self, repo: &str, reference: &str) -> Result<Manifest> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self
            .send(repo, "pull", || {
                self.http.get(&url).header(
                    header::ACCEPT,
                    format!("{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_LIST}"),
                )
            })
            .await?;
        if !resp.status().is_success() {
            return Err(refused(resp).await);
        }
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(OCI_MANIFEST)
            .to_owned();
        let body = resp.bytes().await?;
        let digest = sha256_digest(&body);
        if reference.starts_with("sha256:") && reference != digest {
            return Err(OciError::Invalid(format!(
                "manifest {reference} hashes to {digest}"
            )));
        }
        Ok(Manifest {
            digest,
            media_type,
            body,
        })
    }

    /// A blob, written to `path` and checked against its digest.
    pub async fn blob_to_file(&self, repo: &str, digest: &str, path: &Path) -> Result<u64> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self.send(repo, "pull", || self.http.get(&url)).await?;
        if !resp.status().is_success() {
            return Err(refused(resp).await);
        }
        let mut file = tokio::fs::File::create(path).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.try_next().await? {
            hasher.update(&chunk);
            size += chunk.len() as u64;
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file).await?;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            let _ = tokio::fs::remove_file(path).await;
            return Err(OciError::Invalid(format!(
                "blob {digest} arrived as {actual}"
            )));
        }
        Ok(size)
    }

    /// A small blob (a config) in memory, checked against its digest.
    pub async fn blob_bytes(&self, repo: &str, digest: &str) -> Result<Bytes> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self.send(repo, "pull", || self.http.get(&url)).await?;
        if !resp.status().is_success() {
            return Err(refused(resp).await);
        }
        let body = resp.bytes().await?;
        if sha256_digest(&body) != digest {
            return Err(OciError::Invalid(format!(
                "blob {digest} arrived with other content"
            )));
        }
        Ok(body)
    }

    /// Whether `repo` has the blob.
    pub async fn has_blob(&self, repo: &str, digest: &str) -> Result<bool> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self
            .send(repo, "pull,push", || self.http.head(&url))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(refused(resp).await),
        }
    }

    /// Mounts a blob from `from` into `repo`; false when the registry could
    /// not (it then opened an upload, which is cancelled).
    pub async fn mount(&self, repo: &str, digest: &str, from: &str) -> Result<bool> {
        let url = self.url(&format!(
            "/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"
        ));
        let resp = self
            .send(repo, "pull,push", || self.http.post(&url))
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                if let Some(location) = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                {
                    let location = self.absolute(location);
                    let _ = self
                        .send(repo, "pull,push", || self.http.delete(&location))
                        .await;
                }
                Ok(false)
            }
            _ => Err(refused(resp).await),
        }
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with('/') {
            self.url(location)
        } else {
            location.to_owned()
        }
    }

    /// Uploads a blob from a file in one request (`POST ?digest=`).
    pub async fn push_blob_file(&self, repo: &str, digest: &str, path: &Path) -> Result<()> {
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}"));
        let len = tokio::fs::metadata(path).await?.len();
        let resp = self
            .send(repo, "pull,push", || {
                let path = path.to_owned();
                let stream =
                    futures::stream::once(async move { tokio::fs::File::open(path).await })
                        .map_ok(tokio_util_reader)
                        .try_flatten();
                self.http
                    .post(&url)
                    .header(header::CONTENT_LENGTH, len)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(reqwest::Body::wrap_stream(stream))
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(refused(resp).await);
        }
        Ok(())
    }

    /// Uploads a small blob from memory.
    pub async fn push_blob_bytes(&self, repo: &str, bytes: Bytes) -> Result<String> {
        let digest = sha256_digest(&bytes);
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}"));
        let resp = self
            .send(repo, "pull,push", || {
                self.http
                    .post(&url)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(bytes.clone())
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(refused(resp).await);
        }
        Ok(digest)
    }

    /// Puts a manifest under `reference` (a tag or its digest); returns its
    /// digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: Bytes,
    ) -> Result<String> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self
            .send(repo, "pull,push", || {
                self.http
                    .put(&url)
                    .header(header::CONTENT_TYPE, media_type)
                    .body(body.clone())
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(refused(resp).await);
        }
        Ok(sha256_digest(&body))
    }

    /// Sends a request as this client (for calls outside `/v2`).
    pub async fn request(&self, method: Method, path: &str) -> Result<Response> {
        let url = self.url(path);
        Ok(self
            .http
            .request(method, url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await?)
    }
}

fn tokio_util_reader(file: tokio::fs::File) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    futures::stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 1 << 20];
        let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), file)))
    })
}

/// Turns an error response into [`OciError::Refused`], with the spec's
/// error JSON's first code and message when there is one.
async fn refused(resp: Response) -> OciError {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let (code, message) = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            let e = v["errors"].get(0)?.clone();
            Some((
                e["code"].as_str().unwrap_or("").to_owned(),
                e["message"].as_str().unwrap_or("").to_owned(),
            ))
        })
        .unwrap_or_else(|| (String::new(), text.chars().take(300).collect()));
    OciError::Refused {
        status,
        code,
        message,
    }
}

/// `Bearer realm="…",service="…",scope="…"` → its parameters.
fn parse_challenge(value: &str) -> HashMap<String, String> {
    let rest = value.split_once(' ').map(|(_, r)| r).unwrap_or("");
    let mut out = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_owned();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                val.push(c);
            }
        } else {
            val = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        out.insert(key, val);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry that answers 503 twice, then accepts: the manifest is put
    /// once the registry is back, sent again whole each time.
    #[tokio::test]
    async fn a_503_is_asked_again_until_the_registry_is_back() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for answer in [503, 503, 201] {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then the 2-byte body the test sends.
                while !req.ends_with(b"\r\n\r\n{}") {
                    let n = conn.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the request ended early: {req:?}");
                    req.extend_from_slice(&buf[..n]);
                }
                bodies.push(String::from_utf8_lossy(&req).into_owned());
                let reason = if answer == 503 {
                    "Service Unavailable"
                } else {
                    "Created"
                };
                let head = format!(
                    "HTTP/1.1 {answer} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                conn.write_all(head.as_bytes()).await.unwrap();
            }
            bodies
        });
        let client = Client::new(&format!("http://{addr}"), "u", "p");
        let digest = client
            .put_manifest("p/r", "v1", "application/json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(digest, sha256_digest(b"{}"));
        let seen = server.await.unwrap();
        assert_eq!(seen.len(), 3);
        assert!(
            seen.iter()
                .all(|r| r.starts_with("PUT /v2/p/r/manifests/v1 "))
        );
    }

    /// Other refusals are not asked again.
    #[tokio::test]
    async fn a_refusal_is_not_asked_again() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await.unwrap();
            let body = r#"{"errors":[{"code":"DENIED","message":"over quota"}]}"#;
            let head = format!(
                "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(head.as_bytes()).await.unwrap();
            // A second request would find nobody listening.
        });
        let client = Client::new(&format!("http://{addr}"), "u", "p");
        let err = client
            .put_manifest("p/r", "v1", "application/json", Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("DENIED"), "{err}");
        server.await.unwrap();
    }

    #[test]
    fn image_references() {
        let cases = [
            ("platform/run:bookworm", ("", "platform/run", "bookworm")),
            ("platform/run", ("", "platform/run", "latest")),
            (
                "127.0.0.1:5000/platform/run:v1",
                ("127.0.0.1:5000", "platform/run", "v1"),
            ),
            (
                "localhost/a/b@sha256:abc",
                ("localhost", "a/b", "sha256:abc"),
            ),
            ("registry.example/x", ("registry.example", "x", "latest")),
        ];
        for (input, (reg, repo, reference)) in cases {
            let r = ImageRef::parse(input).unwrap();
            assert_eq!(
                (
                    r.registry.as_str(),
                    r.repository.as_str(),
                    r.reference.as_str()
                ),
                (reg, repo, reference),
                "{input}"
            );
        }
        assert_eq!(ImageRef::parse("a/b:c").unwrap().to_string(), "a/b:c");
        assert_eq!(
            ImageRef::parse("a/b@sha256:1").unwrap().to_string(),
            "a/b@sha256:1"
        );
        assert!(ImageRef::parse("").is_err());
    }

    #[test]
    fn challenges() {
        let p = parse_challenge(
            r#"Bearer realm="http://h/auth/token",service="slipway",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(p["realm"], "http://h/auth/token");
        assert_eq!(p["service"], "slipway");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
    }
}
