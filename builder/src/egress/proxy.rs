//! The egress proxy: an HTTP proxy (`CONNECT` for TLS, absolute-form
//! requests for plain HTTP) that is a build's only way out. Each
//! connection's name is resolved here, every address is judged by the
//! [`Policy`], and only an allowed address is connected to — the one that
//! was judged, so a name that resolves elsewhere a moment later (DNS
//! rebinding) cannot slip past. Refusals are answered `403` with the
//! sentence, and reported to the build's log.
//!
//! A thin I/O loop: concurrent connections, bytes streamed both ways, an
//! idle timeout, a connect timeout, and a byte budget for everything the
//! build downloads. It serves a Unix socket (bound into the sandbox, whose
//! network namespace has no route out) or, for Slipway's own git fetch of
//! the source, a TCP port on the host's loopback. An `upstream` HTTP proxy,
//! when a site's egress needs one, is asked to `CONNECT` to the address
//! that was judged, never to the name.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::policy::{Decision, Policy, Rule};

/// Largest request head a client may send.
const MAX_HEAD: usize = 64 << 10;
const BUF: usize = 32 << 10;

#[derive(Debug, Clone)]
pub struct Settings {
    pub connect_timeout: Duration,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Bytes the build may download through the proxy in all.
    pub max_download_bytes: u64,
    /// An HTTP proxy to go through (`host:port`).
    pub upstream: Option<String>,
    /// Connections one build may hold open at once (each is two sockets
    /// of the server's): more are answered 503.
    pub max_connections: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_download_bytes: 4 << 30,
            upstream: None,
            max_connections: 256,
        }
    }
}

/// Where the proxy reports what it refused (to the build's log, and the
/// server's metrics).
pub trait Events: Sync {
    fn line(&self, text: &str);
    fn refused(&self, _rule: Rule) {}
}

/// One build's proxy: its policy, and what it has let through so far.
pub struct Proxy {
    policy: Policy,
    settings: Settings,
    downloaded: AtomicU64,
    uploaded: AtomicU64,
    connections: AtomicU64,
    refusals: AtomicU64,
    over_budget: AtomicBool,
    crowded: AtomicBool,
    hosts: Mutex<std::collections::BTreeSet<String>>,
    /// Names resolved here rather than by the system (see
    /// [`Proxy::with_hosts`]).
    static_hosts: std::collections::HashMap<String, Vec<IpAddr>>,
}

/// What went through the proxy, for the build's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub connections: u64,
    pub refused: u64,
    pub downloaded: u64,
    pub uploaded: u64,
    pub hosts: Vec<String>,
}

impl Proxy {
    pub fn new(policy: Policy, settings: Settings) -> Proxy {
        Proxy {
            policy,
            settings,
            downloaded: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            over_budget: AtomicBool::new(false),
            crowded: AtomicBool::new(false),
            hosts: Mutex::new(Default::default()),
            static_hosts: Default::default(),
        }
    }

    /// Resolves these names to these addresses instead of asking the
    /// system, as an `/etc/hosts` would: how tests make a name point at a
    /// private or metadata address without any traffic going there.
    pub fn with_hosts(mut self, hosts: impl IntoIterator<Item = (String, Vec<IpAddr>)>) -> Proxy {
        self.static_hosts = hosts
            .into_iter()
            .map(|(h, a)| (h.to_ascii_lowercase(), a))
            .collect();
        self
    }

    pub fn summary(&self) -> Summary {
        Summary {
            connections: self.connections.load(Ordering::Relaxed),
            refused: self.refusals.load(Ordering::Relaxed),
            downloaded: self.downloaded.load(Ordering::Relaxed),
            uploaded: self.uploaded.load(Ordering::Relaxed),
            hosts: self
                .hosts
                .lock()
                .expect("proxy hosts")
                .iter()
                .cloned()
                .collect(),
        }
    }

    /// Serves connections from `listener` until the future is dropped
    /// (every connection is served inside it: dropping it closes them all).
    pub async fn serve_unix(&self, listener: tokio::net::UnixListener, events: &dyn Events) {
        self.serve(|| async { listener.accept().await.map(|(s, _)| s) }, events)
            .await
    }

    /// As [`Proxy::serve_unix`], on a TCP listener.
    pub async fn serve_tcp(&self, listener: tokio::net::TcpListener, events: &dyn Events) {
        self.serve(|| async { listener.accept().await.map(|(s, _)| s) }, events)
            .await
    }

    async fn serve<S, A, F>(&self, mut accept: A, events: &dyn Events)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
        A: FnMut() -> F,
        F: Future<Output = std::io::Result<S>>,
    {
        let mut conns: FuturesUnordered<std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>> =
            FuturesUnordered::new();
        loop {
            tokio::select! {
                accepted = accept() => match accepted {
                    Ok(stream) if conns.len() >= self.settings.max_connections => {
                        conns.push(Box::pin(self.busy(stream, events)));
                    }
                    Ok(stream) => conns.push(Box::pin(self.handle(stream, events))),
                    Err(e) => {
                        tracing::warn!(error = %e, "egress proxy: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(()) = conns.next(), if !conns.is_empty() => {}
            }
        }
    }

    /// Over the connection limit: a 503 with the sentence, once logged.
    async fn busy<S: AsyncRead + AsyncWrite + Unpin>(&self, mut client: S, events: &dyn Events) {
        let sentence = format!(
            "the build holds {} connections open already; no more at once",
            self.settings.max_connections
        );
        if !self.crowded.swap(true, Ordering::Relaxed) {
            events.line(&format!("egress: {sentence}"));
        }
        let body = format!("{sentence}\n");
        let _ = client
            .write_all(
                format!(
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
    }

    async fn handle<S: AsyncRead + AsyncWrite + Unpin>(&self, mut client: S, events: &dyn Events) {
        if let Err(answer) = self.handle_inner(&mut client, events).await
            && let Some((status, reason, sentence)) = answer
        {
            let body = format!("{sentence}\n");
            let _ = client
                .write_all(
                    format!(
                        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
            let _ = client.shutdown().await;
        }
    }

    /// `Err(Some(answer))`: answer the client so; `Err(None)`: just close.
    async fn handle_inner<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut S,
        events: &dyn Events,
    ) -> Result<(), Option<(u16, &'static str, String)>> {
        let idle = self.settings.idle_timeout;
        let (head, rest) = match tokio::time::timeout(idle, read_head(client)).await {
            Ok(Ok(h)) => h,
            Ok(Err(HeadError::Closed)) | Err(_) => return Err(None),
            Ok(Err(HeadError::TooLarge)) => {
                return Err(Some((
                    431,
                    "Request Header Fields Too Large",
                    "the request head is too large".into(),
                )));
            }
            Ok(Err(HeadError::Malformed)) => {
                return Err(Some((
                    400,
                    "Bad Request",
                    "not an HTTP proxy request".into(),
                )));
            }
        };
        let target = match Target::of(&head) {
            Ok(t) => t,
            Err(sentence) => return Err(Some((400, "Bad Request", sentence))),
        };
        if self.over_budget.load(Ordering::Relaxed) {
            return Err(Some((
                403,
                "Forbidden",
                format!(
                    "the build downloaded more than {} already; nothing more is let through",
                    human(self.settings.max_download_bytes)
                ),
            )));
        }
        let upstream = self.connect(&target, events).await?;
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.hosts
            .lock()
            .expect("proxy hosts")
            .insert(target.host.clone());
        let mut upstream = upstream;
        let first = match &target.kind {
            Kind::Connect => {
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .map_err(|_| None)?;
                rest
            }
            Kind::Http { origin_form } => {
                let mut out = rewrite_head(&head, origin_form);
                out.extend_from_slice(&rest);
                out
            }
        };
        if !first.is_empty() {
            upstream.write_all(&first).await.map_err(|_| None)?;
            self.uploaded
                .fetch_add(first.len() as u64, Ordering::Relaxed);
        }
        match self.pipe(client, &mut upstream).await {
            Ok(()) => Ok(()),
            Err(PipeError::Budget) => {
                if !self.over_budget.swap(true, Ordering::Relaxed) {
                    events.line(&format!(
                        "egress: the build downloaded more than {} (builds.egress.max_download_bytes); \
                         its connections are closed and nothing more is let through",
                        human(self.settings.max_download_bytes)
                    ));
                }
                Err(None)
            }
            Err(PipeError::Idle) | Err(PipeError::Io) => Err(None),
        }
    }

    /// Resolves the target, judges every address, and connects to the
    /// first allowed one (through the upstream proxy, if any).
    async fn connect(
        &self,
        target: &Target,
        events: &dyn Events,
    ) -> Result<TcpStream, Option<(u16, &'static str, String)>> {
        let refuse = |addr: Option<IpAddr>, rule: Rule| {
            self.refusals.fetch_add(1, Ordering::Relaxed);
            events.refused(rule);
            let at = match addr {
                Some(a) if a.to_string() != target.host.trim_matches(['[', ']']) => {
                    format!("{}:{} ({a})", target.host, target.port)
                }
                _ => format!("{}:{}", target.host, target.port),
            };
            let sentence = format!("refused egress to {at}: {rule}");
            events.line(&format!("egress: {sentence}"));
            Some((403, "Forbidden", sentence))
        };
        if let Decision::Refuse(rule) = self.policy.decide_name(&target.host) {
            return Err(refuse(None, rule));
        }
        let addrs: Vec<IpAddr> = match target.host.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) if self.static_hosts.contains_key(&target.host) => {
                self.static_hosts[&target.host].clone()
            }
            Err(_) => {
                let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
                match tokio::time::timeout(self.settings.connect_timeout, lookup).await {
                    Ok(Ok(a)) => a.map(|s| s.ip()).collect(),
                    _ => {
                        let sentence = format!("cannot resolve {}", target.host);
                        events.line(&format!("egress: {sentence}"));
                        return Err(Some((502, "Bad Gateway", sentence)));
                    }
                }
            }
        };
        let mut allowed = Vec::new();
        let mut first_refusal = None;
        for a in addrs {
            match self.policy.decide(&target.host, a) {
                Decision::Allow => allowed.push(a),
                Decision::Refuse(rule) => {
                    first_refusal.get_or_insert((a, rule));
                }
            }
        }
        if allowed.is_empty() {
            let (a, rule) = first_refusal.expect("an address was judged");
            return Err(refuse(Some(a), rule));
        }
        let mut last_error = String::new();
        for a in allowed {
            let addr = SocketAddr::new(a, target.port);
            let attempt = async {
                match &self.settings.upstream {
                    None => TcpStream::connect(addr).await,
                    Some(up) => connect_via(up, addr).await,
                }
            };
            match tokio::time::timeout(self.settings.connect_timeout, attempt).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = "timed out".into(),
            }
        }
        let sentence = format!(
            "cannot connect to {}:{}: {last_error}",
            target.host, target.port
        );
        events.line(&format!("egress: {sentence}"));
        Err(Some((502, "Bad Gateway", sentence)))
    }

    /// Copies both ways until both sides are done, counting what comes
    /// down against the budget; no bytes either way for the idle timeout
    /// ends it.
    async fn pipe<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut S,
        upstream: &mut TcpStream,
    ) -> Result<(), PipeError> {
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut ur, mut uw) = upstream.split();
        let mut up_buf = vec![0u8; BUF];
        let mut down_buf = vec![0u8; BUF];
        let (mut up_open, mut down_open) = (true, true);
        while up_open || down_open {
            tokio::select! {
                r = cr.read(&mut up_buf), if up_open => match r.map_err(|_| PipeError::Io)? {
                    0 => {
                        up_open = false;
                        let _ = uw.shutdown().await;
                    }
                    n => {
                        uw.write_all(&up_buf[..n]).await.map_err(|_| PipeError::Io)?;
                        self.uploaded.fetch_add(n as u64, Ordering::Relaxed);
                    }
                },
                r = ur.read(&mut down_buf), if down_open => match r.map_err(|_| PipeError::Io)? {
                    0 => {
                        down_open = false;
                        let _ = cw.shutdown().await;
                    }
                    n => {
                        let total = self.downloaded.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                        if total > self.settings.max_download_bytes {
                            return Err(PipeError::Budget);
                        }
                        cw.write_all(&down_buf[..n]).await.map_err(|_| PipeError::Io)?;
                    }
                },
                _ = tokio::time::sleep(self.settings.idle_timeout) => return Err(PipeError::Idle),
            }
        }
        Ok(())
    }
}

enum PipeError {
    Budget,
    Idle,
    Io,
}

enum HeadError {
    Closed,
    TooLarge,
    Malformed,
}

/// Reads up to the end of the request head; returns it and any bytes
/// read past it.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Result<(Vec<u8>, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Malformed
            });
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf[searched_from..], b"\r\n\r\n") {
            let end = searched_from + end + 4;
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Where a request wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Connect,
    /// A plain HTTP request; its request line in origin form.
    Http {
        origin_form: String,
    },
}

impl Target {
    fn of(head: &[u8]) -> Result<Target, String> {
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err("the request head is not HTTP".into()),
        }
        let method = req.method.unwrap_or_default();
        let path = req.path.unwrap_or_default();
        if method == "CONNECT" {
            let (host, port) = split_host_port(path, None)
                .ok_or_else(|| format!("CONNECT needs host:port, not {path:.100}"))?;
            return Ok(Target {
                host,
                port,
                kind: Kind::Connect,
            });
        }
        let Some(rest) = path.strip_prefix("http://") else {
            return Err(format!(
                "a proxy request needs an absolute http:// URL (or CONNECT for https), not {path:.100}"
            ));
        };
        let (authority, origin) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let (host, port) = split_host_port(authority, Some(80))
            .ok_or_else(|| format!("no host in {path:.100}"))?;
        let origin = if origin.starts_with('?') {
            format!("/{origin}")
        } else {
            origin.to_owned()
        };
        Ok(Target {
            host,
            port,
            kind: Kind::Http {
                origin_form: format!("{method} {origin} HTTP/1.1"),
            },
        })
    }
}

/// `host:port`, `[v6]:port`, or (with a default port) just the host.
fn split_host_port(s: &str, default: Option<u16>) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default?,
            None => return None,
        };
        (format!("[{h}]"), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()?),
            None => (s.to_owned(), default?),
        }
    };
    let bare = host.trim_matches(['[', ']']);
    let ok = !bare.is_empty()
        && bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    (ok && port != 0).then(|| (host.to_ascii_lowercase(), port))
}

/// The request head for the origin server: the request line in origin
/// form, no proxy headers, and one request per connection.
fn rewrite_head(head: &[u8], request_line: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = format!("{request_line}\r\n");
    for line in text.split("\r\n").skip(1) {
        if line.is_empty() {
            continue;
        }
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if name.starts_with("proxy-") || name == "connection" || name == "keep-alive" {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

/// A tunnel to `addr` through an HTTP proxy at `upstream`.
async fn connect_via(upstream: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(upstream).await?;
    s.write_all(format!("CONNECT {addr} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let (head, rest) = read_head(&mut s).await.map_err(|_| {
        std::io::Error::other(format!("the upstream proxy {upstream} closed the tunnel"))
    })?;
    let line = String::from_utf8_lossy(&head);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if status != "200" || !rest.is_empty() {
        return Err(std::io::Error::other(format!(
            "the upstream proxy {upstream} answered {}",
            line.lines().next().unwrap_or("nothing")
        )));
    }
    Ok(s)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u]).replace(".0 ", " ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_targets() {
        let t = |head: &str| Target::of(head.as_bytes());
        assert_eq!(
            t("CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n").unwrap(),
            Target {
                host: "pypi.org".into(),
                port: 443,
                kind: Kind::Connect
            }
        );
        assert_eq!(
            t("CONNECT [::1]:5000 HTTP/1.1\r\n\r\n").unwrap().host,
            "[::1]"
        );
        assert_eq!(
            t("GET http://deb.debian.org/debian/dists?x=1 HTTP/1.1\r\nHost: deb.debian.org\r\n\r\n")
                .unwrap(),
            Target {
                host: "deb.debian.org".into(),
                port: 80,
                kind: Kind::Http {
                    origin_form: "GET /debian/dists?x=1 HTTP/1.1".into()
                }
            }
        );
        assert_eq!(
            t("GET http://user:pw@Example.ORG:8080 HTTP/1.1\r\n\r\n").unwrap(),
            Target {
                host: "example.org".into(),
                port: 8080,
                kind: Kind::Http {
                    origin_form: "GET / HTTP/1.1".into()
                }
            }
        );
        for bad in [
            "GET /relative HTTP/1.1\r\n\r\n",
            "CONNECT pypi.org HTTP/1.1\r\n\r\n",
            "CONNECT pypi.org:0 HTTP/1.1\r\n\r\n",
            "CONNECT a/b:443 HTTP/1.1\r\n\r\n",
            "GET https://pypi.org/ HTTP/1.1\r\n\r\n",
            "nonsense\r\n\r\n",
        ] {
            assert!(t(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn heads_are_rewritten_for_the_origin() {
        let head = b"GET http://h/x HTTP/1.1\r\nHost: h\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic x\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n";
        assert_eq!(
            String::from_utf8(rewrite_head(head, "GET /x HTTP/1.1")).unwrap(),
            "GET /x HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
    }

    // ----- the proxy, against servers on loopback ---------------------------

    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::{TcpListener, UnixListener, UnixStream};

    use crate::egress::policy::{Mode, parse_cidr};

    #[derive(Default)]
    struct Recorded {
        lines: Mutex<Vec<String>>,
        rules: Mutex<Vec<Rule>>,
    }

    impl Events for Recorded {
        fn line(&self, text: &str) {
            self.lines.lock().unwrap().push(text.to_owned());
        }
        fn refused(&self, rule: Rule) {
            self.rules.lock().unwrap().push(rule);
        }
    }

    /// A proxy on a Unix socket in `dir`, served in a task.
    fn start(
        dir: &std::path::Path,
        proxy: Proxy,
    ) -> (std::path::PathBuf, Arc<Proxy>, Arc<Recorded>) {
        let sock = dir.join("egress.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let proxy = Arc::new(proxy);
        let events = Arc::new(Recorded::default());
        let (p, e) = (proxy.clone(), events.clone());
        tokio::spawn(async move { p.serve_unix(listener, &*e).await });
        (sock, proxy, events)
    }

    fn loopback_allowed() -> Policy {
        Policy {
            allow_cidrs: vec![parse_cidr("127.0.0.1/32").unwrap()],
            ..Policy::default()
        }
    }

    /// An echo server on 127.0.0.1 that upper-cases; its port.
    async fn echo() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match c.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                c.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
                            }
                        }
                    }
                });
            }
        });
        port
    }

    /// Sends a request head through the proxy; the status line and the
    /// stream (positioned after the answer's head).
    async fn ask(sock: &std::path::Path, head: &str) -> (String, BufReader<UnixStream>) {
        let mut c = UnixStream::connect(sock).await.unwrap();
        c.write_all(head.as_bytes()).await.unwrap();
        let mut r = BufReader::new(c);
        let mut status = String::new();
        r.read_line(&mut status).await.unwrap();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).await.unwrap();
            if l == "\r\n" || l.is_empty() {
                break;
            }
        }
        (status.trim().to_owned(), r)
    }

    #[tokio::test]
    async fn connect_tunnels_to_an_allowed_address() {
        let dir = tempfile::tempdir().unwrap();
        let port = echo().await;
        let (sock, proxy, _) = start(
            dir.path(),
            Proxy::new(loopback_allowed(), Settings::default()),
        );
        let (status, mut r) =
            ask(&sock, &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n")).await;
        assert_eq!(status, "HTTP/1.1 200 Connection established");
        r.get_mut().write_all(b"through").await.unwrap();
        let mut got = [0u8; 7];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"THROUGH");
        // Many at once.
        let mut all = Vec::new();
        for i in 0..20u8 {
            let sock = sock.clone();
            all.push(tokio::spawn(async move {
                let (status, mut r) =
                    ask(&sock, &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n")).await;
                assert!(status.contains("200"), "{status}");
                let msg = format!("conn{i:02}");
                r.get_mut().write_all(msg.as_bytes()).await.unwrap();
                let mut got = vec![0u8; msg.len()];
                r.read_exact(&mut got).await.unwrap();
                assert_eq!(got, msg.to_ascii_uppercase().into_bytes());
            }));
        }
        for t in all {
            t.await.unwrap();
        }
        assert_eq!(proxy.summary().connections, 21);
        assert!(proxy.summary().downloaded >= 7 + 20 * 6);
    }

    #[tokio::test]
    async fn refused_targets_are_answered_and_logged_without_any_traffic() {
        let dir = tempfile::tempdir().unwrap();
        let port = echo().await;
        let proxy = Proxy::new(Policy::default(), Settings::default()).with_hosts([
            (
                "metadata.test".to_owned(),
                vec!["169.254.169.254".parse().unwrap()],
            ),
            ("private.test".to_owned(), vec!["10.1.2.3".parse().unwrap()]),
            ("cgnat.test".to_owned(), vec!["100.64.1.1".parse().unwrap()]),
            ("rebind.test".to_owned(), vec!["127.0.0.1".parse().unwrap()]),
            ("ula.test".to_owned(), vec!["fd00::1".parse().unwrap()]),
        ]);
        let (sock, proxy, events) = start(dir.path(), proxy);
        let cases = [
            (format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n"), format!("refused egress to 127.0.0.1:{port}: loopback")),
            (format!("CONNECT 127.0.0.2:{port} HTTP/1.1\r\n\r\n"), format!("refused egress to 127.0.0.2:{port}: loopback")),
            (format!("CONNECT [::1]:{port} HTTP/1.1\r\n\r\n"), format!("refused egress to [::1]:{port}: loopback")),
            (format!("CONNECT localhost:{port} HTTP/1.1\r\n\r\n"), format!("refused egress to localhost:{port} (")),
            (format!("CONNECT rebind.test:{port} HTTP/1.1\r\n\r\n"), format!("refused egress to rebind.test:{port} (127.0.0.1): loopback")),
            ("CONNECT metadata.test:80 HTTP/1.1\r\n\r\n".into(), "refused egress to metadata.test:80 (169.254.169.254): link-local".into()),
            ("GET http://metadata.test/latest/meta-data/ HTTP/1.1\r\nHost: metadata.test\r\n\r\n".into(), "refused egress to metadata.test:80 (169.254.169.254): link-local".into()),
            ("CONNECT private.test:5432 HTTP/1.1\r\n\r\n".into(), "refused egress to private.test:5432 (10.1.2.3): private network".into()),
            ("CONNECT cgnat.test:443 HTTP/1.1\r\n\r\n".into(), "refused egress to cgnat.test:443 (100.64.1.1): shared address space".into()),
            ("CONNECT ula.test:443 HTTP/1.1\r\n\r\n".into(), "refused egress to ula.test:443 (fd00::1): unique local".into()),
        ];
        for (head, want) in &cases {
            let (status, mut r) = ask(&sock, head).await;
            assert_eq!(status, "HTTP/1.1 403 Forbidden", "{head}");
            let mut body = String::new();
            r.read_to_string(&mut body).await.unwrap();
            assert!(body.starts_with(want.as_str()), "{head}: {body}");
        }
        assert_eq!(proxy.summary().connections, 0, "nothing was connected to");
        assert_eq!(proxy.summary().refused, cases.len() as u64);
        let lines = events.lines.lock().unwrap().clone();
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with("egress: refused egress to ")),
            "{lines:?}"
        );
        assert!(events.rules.lock().unwrap().contains(&Rule::LinkLocal));
        // An allowlist refuses other names before resolving them.
        let dir2 = tempfile::tempdir().unwrap();
        let allowlist = Policy {
            mode: Mode::Allowlist,
            allow_hosts: vec!["pypi.org".parse().unwrap()],
            ..Policy::default()
        };
        let (sock, _, _) = start(dir2.path(), Proxy::new(allowlist, Settings::default()));
        let (status, mut r) = ask(&sock, "CONNECT registry.npmjs.org:443 HTTP/1.1\r\n\r\n").await;
        assert!(status.contains("403"));
        let mut body = String::new();
        r.read_to_string(&mut body).await.unwrap();
        assert_eq!(
            body.trim(),
            "refused egress to registry.npmjs.org:443: not in allow_hosts"
        );
    }

    #[tokio::test]
    async fn plain_http_is_forwarded_in_origin_form() {
        let dir = tempfile::tempdir().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (c, _) = l.accept().await.unwrap();
            let mut r = BufReader::new(c);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            r.get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            head
        });
        let (sock, _, _) = start(
            dir.path(),
            Proxy::new(loopback_allowed(), Settings::default()),
        );
        let (status, mut r) = ask(
            &sock,
            &format!("GET http://127.0.0.1:{port}/simple/six/?a=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nProxy-Connection: keep-alive\r\n\r\n"),
        )
        .await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        let mut body = String::new();
        r.read_to_string(&mut body).await.unwrap();
        assert_eq!(body, "ok");
        let head = server.await.unwrap();
        assert!(
            head.starts_with("GET /simple/six/?a=1 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            !head.to_ascii_lowercase().contains("proxy-connection"),
            "{head}"
        );
        assert!(head.contains("Connection: close"), "{head}");
    }

    #[tokio::test]
    async fn the_download_budget_and_the_idle_timeout_end_connections() {
        let dir = tempfile::tempdir().unwrap();
        // A server that sends 64 KiB at once, then stays silent.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let _ = c.write_all(&vec![b'x'; 64 << 10]).await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                });
            }
        });
        let settings = Settings {
            max_download_bytes: 10_000,
            idle_timeout: Duration::from_millis(300),
            ..Settings::default()
        };
        let (sock, proxy, events) = start(dir.path(), Proxy::new(loopback_allowed(), settings));
        let (status, mut r) =
            ask(&sock, &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n")).await;
        assert!(status.contains("200"));
        let mut got = Vec::new();
        let _ = r.read_to_end(&mut got).await;
        assert!(
            got.len() <= 10_000 + BUF,
            "cut near the budget: {}",
            got.len()
        );
        assert!(
            events
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("downloaded more than 9.8 KiB")),
            "{:?}",
            events.lines.lock().unwrap()
        );
        let (status, _) = ask(&sock, &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n")).await;
        assert!(
            status.contains("403"),
            "nothing more after the budget: {status}"
        );
        // Idle: a fresh proxy, a silent server after its first bytes.
        let dir2 = tempfile::tempdir().unwrap();
        let settings = Settings {
            idle_timeout: Duration::from_millis(300),
            ..Settings::default()
        };
        let (sock, _, _) = start(dir2.path(), Proxy::new(loopback_allowed(), settings));
        let (_, mut r) = ask(&sock, &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n")).await;
        let started = std::time::Instant::now();
        let mut all = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut all))
            .await
            .expect("the idle connection was closed");
        assert_eq!(all.len(), 64 << 10);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(proxy.summary().refused, 0);
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_answered_503() {
        let dir = tempfile::tempdir().unwrap();
        let port = echo().await;
        let settings = Settings {
            max_connections: 2,
            ..Settings::default()
        };
        let (sock, _, events) = start(dir.path(), Proxy::new(loopback_allowed(), settings));
        let head = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n");
        let (a, _ra) = ask(&sock, &head).await;
        let (b, _rb) = ask(&sock, &head).await;
        assert!(a.contains("200") && b.contains("200"));
        let (c, _) = ask(&sock, &head).await;
        assert_eq!(c, "HTTP/1.1 503 Service Unavailable");
        assert!(
            events
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("holds 2 connections open"))
        );
        drop((_ra, _rb));
    }

    /// Through an upstream HTTP proxy, the tunnel is asked for by the
    /// address the policy judged, never by the name (which the upstream
    /// would resolve again).
    #[tokio::test]
    async fn an_upstream_proxy_is_asked_for_the_judged_address() {
        let dir = tempfile::tempdir().unwrap();
        let port = echo().await;
        // A minimal upstream: records the CONNECT line, then tunnels.
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<String>();
        tokio::spawn(async move {
            let (c, _) = up.accept().await.unwrap();
            let mut r = BufReader::new(c);
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            loop {
                let mut l = String::new();
                r.read_line(&mut l).await.unwrap();
                if l == "\r\n" {
                    break;
                }
            }
            let target = line.split_whitespace().nth(1).unwrap().to_owned();
            seen_tx.send(line.trim().to_owned()).unwrap();
            let mut origin = tokio::net::TcpStream::connect(&target).await.unwrap();
            let mut c = r.into_inner();
            c.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            let _ = tokio::io::copy_bidirectional(&mut c, &mut origin).await;
        });
        let settings = Settings {
            upstream: Some(up_addr.to_string()),
            ..Settings::default()
        };
        let proxy = Proxy::new(loopback_allowed(), settings)
            .with_hosts([("echo.test".to_owned(), vec!["127.0.0.1".parse().unwrap()])]);
        let (sock, _, _) = start(dir.path(), proxy);
        let (status, mut r) =
            ask(&sock, &format!("CONNECT echo.test:{port} HTTP/1.1\r\n\r\n")).await;
        assert!(status.contains("200"), "{status}");
        r.get_mut().write_all(b"via upstream").await.unwrap();
        let mut got = [0u8; 12];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"VIA UPSTREAM");
        assert_eq!(
            seen_rx.await.unwrap(),
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1")
        );
    }
}
