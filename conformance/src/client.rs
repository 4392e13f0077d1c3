//! The suite's HTTP client: plain requests with whole bodies in memory,
//! answering Docker token auth (`Bearer`) and `Basic` challenges, with
//! tokens cached per scope.
//!
//! Every response is also audited for the suite's run-wide checks: a 4xx
//! whose body is not the spec's error JSON, and any 5xx, are remembered.
//!
//! Redirects are followed here, not by reqwest, so that checks see the
//! registry's own answer too: the spec lets a registry hand a blob GET to
//! another server (a presigned object-store URL, say) with a redirect, and
//! what the registry said (`Docker-Content-Digest`) is on that redirect.
//! Credentials never leave the registry's origin: a request that follows a
//! redirect elsewhere goes without `Authorization` (a presigned URL carries
//! its own signature). Only the registry's answers are audited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use reqwest::header::{
    AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};

use crate::Target;
use crate::expect;

/// How long one request (or token request) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Redirects followed for one request before giving up.
const MAX_REDIRECTS: usize = 5;

/// A request, kept whole so that it can be sent again after a challenge.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    pub url: Url,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Option<Bytes>,
    /// Extra scopes for a token, beyond the one the path implies (the
    /// source repository of a cross-repository mount).
    pub extra_scopes: Vec<String>,
}

impl Request {
    pub fn new(method: Method, url: Url) -> Request {
        Request {
            method,
            url,
            headers: Vec::new(),
            body: None,
            extra_scopes: Vec::new(),
        }
    }

    pub fn header(mut self, name: HeaderName, value: impl Into<String>) -> Request {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Request {
        self.body = Some(body.into());
        self
    }

    pub fn extra_scope(mut self, scope: String) -> Request {
        self.extra_scopes.push(scope);
        self
    }

    /// `METHOD /path?query`, for reasons.
    pub fn describe(&self) -> String {
        describe(&self.method, &self.url)
    }
}

/// `METHOD /path?query`, a long query (such as a registry's upload
/// state) cut short.
fn describe(method: &Method, url: &Url) -> String {
    match url.query() {
        Some(q) if q.chars().count() > 60 => {
            let q: String = q.chars().take(40).collect();
            format!("{method} {}?{q}…", url.path())
        }
        Some(q) => format!("{method} {}?{q}", url.path()),
        None => format!("{method} {}", url.path()),
    }
}

/// A whole response.
#[derive(Clone, Debug)]
pub struct Response {
    /// `METHOD /path`, for reasons.
    pub request: String,
    /// The URL that answered (after any redirects).
    pub url: Url,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The redirects followed to get here, first first.
    pub redirects: Vec<Redirect>,
}

/// A redirect (3xx with a `Location`) that was followed.
#[derive(Clone, Debug)]
pub struct Redirect {
    /// The URL that answered with the redirect.
    pub url: Url,
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Whether the registry (the target's origin) answered it.
    pub from_registry: bool,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }

    /// The first value of a header, if it is present and readable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header (repeated headers and comma lists kept apart).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// A header of this answer or, when it is missing here, of the last
    /// redirect the registry itself answered on the way (where a registry
    /// that hands the body to another server says what it knows).
    pub fn header_or_registry_redirect(&self, name: &str) -> Option<&str> {
        self.header(name).or_else(|| {
            self.redirects
                .iter()
                .rev()
                .filter(|r| r.from_registry)
                .find_map(|r| r.headers.get(name).and_then(|v| v.to_str().ok()))
        })
    }

    /// Whether another server than the registry gave this answer.
    pub fn redirected_elsewhere(&self, registry: &Url) -> bool {
        !same_origin(&self.url, registry)
    }

    /// `404 MANIFEST_UNKNOWN`, `400 (body: "...")`: the status and what the
    /// body says, in a few words.
    pub fn summary(&self) -> String {
        let status = self.status.as_u16();
        if self.body.is_empty() {
            return status.to_string();
        }
        match expect::error_codes(&self.body) {
            Ok(codes) => format!("{status} {}", codes.join(",")),
            Err(_) => format!("{status} (body: {:?})", expect::snippet(&self.body)),
        }
    }
}

/// What the server asked for in `WWW-Authenticate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
/// Quoted values may contain commas (scopes such as `pull,push` do).
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
        scope: get("scope"),
    })
}

/// `a="x,y", b=z` → `[(a, x,y), (b, z)]`.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if chars.next().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(e) = chars.next() {
                            value.push(e);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((name.trim().to_owned(), value.trim().to_owned()));
    }
}

/// The repository a `/v2/<name>/…` path addresses, if any.
pub fn repository_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    ["/manifests/", "/blobs/", "/tags/list", "/referrers/"]
        .iter()
        .filter_map(|marker| rest.rfind(marker))
        .max()
        .map(|i| &rest[..i])
        .filter(|name| !name.is_empty())
}

/// The token scope a request needs, from its path and method.
fn scope_for(method: &Method, path: &str) -> Option<String> {
    let repo = repository_of(path)?;
    let actions = if *method == Method::GET || *method == Method::HEAD {
        "pull"
    } else if *method == Method::DELETE && !path.contains("/blobs/uploads/") {
        "delete"
    } else {
        "pull,push"
    };
    Some(format!("repository:{repo}:{actions}"))
}

#[derive(Default)]
struct AuthState {
    /// Where tokens come from, once a `Bearer` challenge has named it.
    realm: Option<(String, Option<String>)>,
    /// The server asked for `Basic`: send the credentials with everything.
    basic: bool,
    /// Tokens by the scopes they were asked for (space-joined).
    tokens: HashMap<String, String>,
}

/// What the run-wide checks look at.
#[derive(Default)]
pub struct Audit {
    /// 4xx responses with a JSON body (or a JSON `Content-Type`) that is
    /// not the spec's error JSON with the spec's codes: the spec's MUST.
    pub bad_error_bodies: Vec<String>,
    /// 4xx responses whose body is not JSON at all (or is empty), which
    /// the spec allows ("MAY return a body in any format").
    pub non_json_error_bodies: Vec<String>,
    /// `Warning` headers not of the form the spec requires.
    pub bad_warnings: Vec<String>,
    /// 5xx responses.
    pub server_errors: Vec<String>,
}

/// A client for one registry. Cheap to clone: clones share tokens.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    username: Option<String>,
    password: Option<String>,
    auth: Arc<Mutex<AuthState>>,
    audit: Arc<Mutex<Audit>>,
}

impl Client {
    pub fn new(target: &Target) -> Result<Client, String> {
        let base = Url::parse(target.base_url.trim_end_matches('/'))
            .map_err(|e| format!("the base URL {:?} is not a URL: {e}", target.base_url))?;
        Ok(Client {
            http: http_client()?,
            base,
            username: target.username.clone(),
            password: target.password.clone(),
            auth: Arc::default(),
            audit: Arc::default(),
        })
    }

    /// A client as if the process had restarted: no tokens, nothing learned
    /// about the server, but the same credentials (and the same audit).
    pub fn restarted(&self) -> Result<Client, String> {
        Ok(Client {
            http: http_client()?,
            auth: Arc::default(),
            ..self.clone()
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `path` (absolute, or relative such as a `Location`) against the base.
    pub fn url(&self, path: &str) -> Result<Url, String> {
        self.base
            .join(path)
            .map_err(|e| format!("{path:?} is not a URL: {e}"))
    }

    pub fn audit(&self) -> std::sync::MutexGuard<'_, Audit> {
        self.audit.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn auth_state(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `req`, answering one authentication challenge. (Boxed: the
    /// futures of reqwest are large, and checks nest many of them.)
    pub fn send(&self, req: Request) -> BoxFuture<'_, Result<Response, String>> {
        Box::pin(self.send_inner(req))
    }

    async fn send_inner(&self, req: Request) -> Result<Response, String> {
        let mut scopes: Vec<String> = scope_for(&req.method, req.url.path()).into_iter().collect();
        scopes.extend(req.extra_scopes.iter().cloned());

        // With a token service known, ask for the token before sending, so
        // that a body is never sent to be refused unread.
        let mut auth = self.known_auth(&scopes).await;
        let mut resp = self.send_once(&req, auth.as_deref()).await?;
        if resp.status == StatusCode::UNAUTHORIZED {
            let challenge = resp
                .header_all(WWW_AUTHENTICATE.as_str())
                .into_iter()
                .find_map(parse_challenge);
            let retry = match challenge {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope,
                }) => {
                    let mut wanted: Vec<String> = scope
                        .map(|s| s.split_whitespace().map(str::to_owned).collect())
                        .unwrap_or_default();
                    for s in &scopes {
                        if !wanted.contains(s) {
                            wanted.push(s.clone());
                        }
                    }
                    self.auth_state().realm = Some((realm.clone(), service.clone()));
                    let token = self
                        .fetch_token(&realm, service.as_deref(), &wanted)
                        .await
                        .map_err(|e| format!("{}: answered 401, then {e}", req.describe()))?;
                    self.auth_state()
                        .tokens
                        .insert(scopes.join(" "), token.clone());
                    Some(format!("Bearer {token}"))
                }
                Some(Challenge::Basic) if self.username.is_some() => {
                    self.auth_state().basic = true;
                    Some(self.basic_value())
                }
                _ => None,
            };
            if let Some(value) = retry
                && Some(&value) != auth.as_ref()
            {
                auth = Some(value);
                resp = self.send_once(&req, auth.as_deref()).await?;
            }
        }
        Ok(resp)
    }

    /// Sends `req` once, with no credentials and no answer to a challenge.
    pub async fn send_raw(&self, req: Request) -> Result<Response, String> {
        self.send_once(&req, None).await
    }

    /// The `Authorization` value to send before any challenge, from what
    /// earlier challenges taught.
    async fn known_auth(&self, scopes: &[String]) -> Option<String> {
        let realm = {
            let state = self.auth_state();
            if state.basic {
                return Some(self.basic_value());
            }
            if let Some(token) = state.tokens.get(&scopes.join(" ")) {
                return Some(format!("Bearer {token}"));
            }
            state.realm.clone()
        };
        let (realm, service) = realm?;
        if scopes.is_empty() {
            return None;
        }
        // A failure here is not fatal: the request goes out bare and the
        // challenge, if any, says what the server wants.
        let token = self
            .fetch_token(&realm, service.as_deref(), scopes)
            .await
            .ok()?;
        self.auth_state()
            .tokens
            .insert(scopes.join(" "), token.clone());
        Some(format!("Bearer {token}"))
    }

    fn basic_value(&self) -> String {
        use base64::Engine;
        let user = self.username.as_deref().unwrap_or_default();
        let pass = self.password.as_deref().unwrap_or_default();
        let raw = format!("{user}:{pass}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    /// `GET realm?service=…&scope=…` (Basic credentials if any); the token
    /// is `token` or `access_token` in the JSON answer.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<String, String> {
        let mut url = self
            .base
            .join(realm)
            .map_err(|e| format!("the token realm {realm:?} is not a URL: {e}"))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = service {
                q.append_pair("service", service);
            }
            for scope in scopes {
                q.append_pair("scope", scope);
            }
        }
        let mut builder = self.http.get(url.clone());
        if self.username.is_some() {
            builder = builder.header(AUTHORIZATION, self.basic_value());
        }
        let resp = builder
            .send()
            .await
            .map_err(|e| format!("the token request failed: {}", error_chain(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("the token response broke off: {}", error_chain(&e)))?;
        if !status.is_success() {
            return Err(format!(
                "the token request GET {} answered {status} ({:?})",
                url.path(),
                expect::snippet(&body)
            ));
        }
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("the token response is not JSON: {e}"))?;
        ["token", "access_token"]
            .iter()
            .find_map(|k| json.get(*k).and_then(|v| v.as_str()))
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| "the token response has neither `token` nor `access_token`".to_owned())
    }

    /// Sends `req` with `auth`, following redirects (see the module
    /// documentation).
    async fn send_once(&self, req: &Request, auth: Option<&str>) -> Result<Response, String> {
        let mut method = req.method.clone();
        let mut url = req.url.clone();
        let mut body = req.body.clone();
        let mut redirects = Vec::new();
        loop {
            let from_registry = same_origin(&url, &self.base);
            let resp = self
                .send_one(
                    req,
                    &method,
                    &url,
                    body.as_ref(),
                    auth.filter(|_| from_registry),
                )
                .await?;
            let location = resp
                .headers
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let follow = matches!(resp.status.as_u16(), 301 | 302 | 303 | 307 | 308);
            let (Some(location), true) = (location, follow) else {
                if from_registry {
                    self.record(&method, &resp);
                }
                let request = if redirects.is_empty() {
                    resp.request
                } else {
                    format!("{} (redirected to {})", req.describe(), resp.request)
                };
                return Ok(Response {
                    request,
                    redirects,
                    ..resp
                });
            };
            if from_registry {
                self.record(&method, &resp);
            }
            if redirects.len() == MAX_REDIRECTS {
                return Err(format!(
                    "{}: more than {MAX_REDIRECTS} redirects (the last to {location:?})",
                    req.describe()
                ));
            }
            let next = url.join(&location).map_err(|e| {
                format!(
                    "{} → {}: Location {location:?} is not a URL: {e}",
                    resp.request, resp.status
                )
            })?;
            // RFC 9110 15.4: 303, and 301/302 after a POST, continue as a
            // GET without the body; 307 and 308 repeat the request.
            if resp.status == StatusCode::SEE_OTHER
                || (matches!(resp.status.as_u16(), 301 | 302) && method == Method::POST)
            {
                if method != Method::HEAD {
                    method = Method::GET;
                }
                body = None;
            }
            redirects.push(Redirect {
                url: resp.url,
                status: resp.status,
                headers: resp.headers,
                from_registry,
            });
            url = next;
        }
    }

    /// One HTTP exchange: `method url` with `req`'s headers, `body` and
    /// `auth`, the whole answer read.
    async fn send_one(
        &self,
        req: &Request,
        method: &Method,
        url: &Url,
        body: Option<&Bytes>,
        auth: Option<&str>,
    ) -> Result<Response, String> {
        let what = describe(method, url);
        let mut builder = self.http.request(method.clone(), url.clone());
        for (name, value) in &req.headers {
            let value = HeaderValue::from_str(value)
                .map_err(|e| format!("{what}: bad header value: {e}"))?;
            builder = builder.header(name.clone(), value);
        }
        if let Some(auth) = auth {
            builder = builder.header(AUTHORIZATION, auth);
        }
        if let Some(body) = body {
            builder = builder.body(body.clone());
        }
        let resp = builder.send().await.map_err(|e| {
            // A server may answer and close the connection before it reads
            // a body; the client then sees a failed write, not the answer.
            let hint = if body.is_some_and(|b| !b.is_empty()) && !e.is_timeout() && !e.is_connect()
            {
                " (the server may have closed the connection without reading the body)"
            } else {
                ""
            };
            format!(
                "{what}: no response: {}{hint}",
                error_chain(&e.without_url())
            )
        })?;
        let status = resp.status();
        let url = resp.url().clone();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| {
            format!(
                "{what} → {status}, but the body broke off (a Content-Length the body did not fill?): {}",
                error_chain(&e.without_url())
            )
        })?;
        Ok(Response {
            request: what,
            url,
            status,
            headers,
            body,
            redirects: Vec::new(),
        })
    }

    fn record(&self, method: &Method, resp: &Response) {
        let status = resp.status.as_u16();
        let mut audit = self.audit();
        if let Err(why) = expect::warnings(&resp.header_all("Warning")) {
            audit
                .bad_warnings
                .push(format!("{} → {status}: {why}", resp.request));
        }
        if resp.status.is_server_error() {
            audit
                .server_errors
                .push(format!("{} → {}", resp.request, resp.summary()));
        } else if resp.status.is_client_error()
            && *method != Method::HEAD
            && let Err(why) = expect::error_body(&resp.body)
        {
            let line = format!("{} → {status}: {why}", resp.request);
            let json_typed = resp.header("Content-Type").is_some_and(|t| {
                t.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .ends_with("json")
            });
            if json_typed || serde_json::from_slice::<serde_json::Value>(&resp.body).is_ok() {
                audit.bad_error_bodies.push(line);
            } else {
                audit.non_json_error_bodies.push(line);
            }
        }
    }
}

/// Same scheme, host and port.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        // Followed by `Client::send_once`, which keeps each hop.
        .redirect(reqwest::redirect::Policy::none())
        // One connection per request: a server that answers before reading
        // a body may close the connection, and a pooled connection closing
        // under the next request would be reported against the wrong check.
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {}", error_chain(&e)))
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let base = Url::parse("http://127.0.0.1:5000").unwrap();
        let cases = [
            ("http://127.0.0.1:5000/v2/a/blobs/x", true),
            ("http://127.0.0.1:5001/bucket/x?X-Amz-Signature=s", false),
            ("https://127.0.0.1:5000/v2/", false),
            ("http://localhost:5000/v2/", false),
        ];
        for (url, want) in cases {
            assert_eq!(same_origin(&Url::parse(url).unwrap(), &base), want, "{url}");
        }
    }

    #[test]
    fn headers_of_the_registrys_redirect() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        let hop = |from_registry, h| Redirect {
            url: Url::parse("http://r/").unwrap(),
            status: StatusCode::TEMPORARY_REDIRECT,
            headers: h,
            from_registry,
        };
        let answer = |h, redirects| Response {
            request: "GET /v2/a/blobs/d".into(),
            url: Url::parse("http://s3/b/d").unwrap(),
            status: StatusCode::OK,
            headers: h,
            body: Bytes::new(),
            redirects,
        };
        let name = "Docker-Content-Digest";
        // Said by the registry before it handed the GET on.
        let r = answer(
            headers(&[]),
            vec![hop(true, headers(&[("docker-content-digest", "sha256:a")]))],
        );
        assert_eq!(r.header_or_registry_redirect(name), Some("sha256:a"));
        // The answer's own header wins.
        let r = answer(
            headers(&[("docker-content-digest", "sha256:b")]),
            vec![hop(true, headers(&[("docker-content-digest", "sha256:a")]))],
        );
        assert_eq!(r.header_or_registry_redirect(name), Some("sha256:b"));
        // Another server's redirect speaks not for the registry.
        let r = answer(
            headers(&[]),
            vec![
                hop(true, headers(&[])),
                hop(false, headers(&[("docker-content-digest", "sha256:a")])),
            ],
        );
        assert_eq!(r.header_or_registry_redirect(name), None);
        assert!(r.redirected_elsewhere(&Url::parse("http://r/").unwrap()));
    }

    #[test]
    fn challenges() {
        let table = [
            (
                r#"Bearer realm="http://r/auth/token",service="slipway",scope="repository:a/b:pull,push""#,
                Some(Challenge::Bearer {
                    realm: "http://r/auth/token".into(),
                    service: Some("slipway".into()),
                    scope: Some("repository:a/b:pull,push".into()),
                }),
            ),
            (
                r#"bearer realm="https://auth.example/token", service=reg"#,
                Some(Challenge::Bearer {
                    realm: "https://auth.example/token".into(),
                    service: Some("reg".into()),
                    scope: None,
                }),
            ),
            (r#"Basic realm="registry""#, Some(Challenge::Basic)),
            ("Bearer service=x", None),
            ("Negotiate abc", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_challenge(input), want, "{input}");
        }
    }

    #[test]
    fn repositories_and_scopes() {
        let table = [
            ("/v2/", None),
            ("/v2/a/b/manifests/latest", Some("a/b")),
            ("/v2/a/blobs/uploads/", Some("a")),
            ("/v2/a/blobs/uploads/123", Some("a")),
            ("/v2/x/referrers/blobs/sha256:00", Some("x/referrers")),
            ("/v2/a/manifests/manifests/t", Some("a/manifests")),
            ("/v2/a/tags/list", Some("a")),
            ("/v2/a/referrers/sha256:00", Some("a")),
        ];
        for (path, want) in table {
            assert_eq!(repository_of(path), want, "{path}");
        }
        assert_eq!(
            scope_for(&Method::DELETE, "/v2/a/blobs/uploads/1").as_deref(),
            Some("repository:a:pull,push")
        );
        assert_eq!(
            scope_for(&Method::DELETE, "/v2/a/manifests/t").as_deref(),
            Some("repository:a:delete")
        );
        assert_eq!(
            scope_for(&Method::HEAD, "/v2/a/blobs/sha256:00").as_deref(),
            Some("repository:a:pull")
        );
    }
}
