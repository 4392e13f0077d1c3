//! HTTPS: the listener with rustls (HTTP/1.1 and HTTP/2 by ALPN), the
//! certificate and key read again when their files change or on SIGHUP
//! (a broken new pair is refused with a log line and the old one kept),
//! client certificates for the admin API, and the scheme each request came
//! in on — also behind a TLS-terminating proxy, when it is trusted.
//!
//! Each connection is served by its own task: a slow handshake never holds
//! up the next client.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::config::TlsConfig;

/// How long a client may take over its handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Set on every request that came over this server's TLS listener.
#[derive(Debug, Clone, Copy)]
pub struct Https;

/// Set on a request whose connection presented a client certificate that
/// `tls.client_ca_file`'s authorities signed (rustls verified it).
#[derive(Debug, Clone, Copy)]
pub struct ClientCertificate;

/// The serving configuration, replaced whole when the files change.
pub struct Tls {
    config: TlsConfig,
    current: RwLock<Arc<rustls::ServerConfig>>,
    /// What the files looked like when last read.
    seen: Mutex<Vec<Option<Stamp>>>,
}

/// A file's identity and version: a renewal that writes a new file and
/// renames it over the old one changes the inode; one that rewrites it in
/// place changes the time or the size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Tls {
    /// Reads the files; an error is a sentence naming the file at fault.
    pub fn load(config: &TlsConfig) -> Result<Tls, String> {
        let seen = stamps(config);
        let server = server_config(config)?;
        Ok(Tls {
            config: config.clone(),
            current: RwLock::new(server),
            seen: Mutex::new(seen),
        })
    }

    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().expect("not poisoned").clone()
    }

    /// Reads the files again when they changed since last read (or always,
    /// with `force`); on success new connections get the new pair.
    pub fn reload(&self, force: bool, why: &str) {
        let now = stamps(&self.config);
        {
            let mut seen = self.seen.lock().expect("not poisoned");
            if !force && *seen == now {
                return;
            }
            // Remembered even when the pair is broken: it is tried again
            // when a file changes again (a renewal that wrote the
            // certificate but not yet the key), not logged every check.
            *seen = now;
        }
        match server_config(&self.config) {
            Ok(server) => {
                *self.current.write().expect("not poisoned") = server;
                metrics::counter!("slipway_tls_reloads_total", "result" => "loaded").increment(1);
                tracing::info!(reason = why, "TLS certificate and key reloaded");
            }
            Err(e) => {
                metrics::counter!("slipway_tls_reloads_total", "result" => "refused").increment(1);
                tracing::error!(
                    reason = why,
                    error = %e,
                    "the new TLS certificate or key is not usable; still serving the previous pair"
                );
            }
        }
    }

    /// Checks the files every `reload_check_secs` and on SIGHUP.
    pub async fn watch(self: Arc<Tls>) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup()).ok();
        let mut tick =
            tokio::time::interval(Duration::from_secs(self.config.reload_check_secs.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            let this = self.clone();
            let why = if forced {
                "SIGHUP"
            } else {
                "the files changed"
            };
            // Reading and parsing files: off the async workers.
            let _ = tokio::task::spawn_blocking(move || this.reload(forced, why)).await;
        }
    }
}

fn stamps(config: &TlsConfig) -> Vec<Option<Stamp>> {
    use std::os::unix::fs::MetadataExt;
    [&config.cert_file, &config.key_file, &config.client_ca_file]
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some(Stamp {
                modified: m.modified().ok(),
                len: m.len(),
                inode: m.ino(),
            })
        })
        .collect()
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {} holds no certificate (no PEM \"CERTIFICATE\" block)",
            path.display()
        ));
    }
    Ok(certs)
}

fn server_config(config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    let (cert_file, key_file) = (&config.cert_file, &config.key_file);
    let chain = certificates(cert_file, "tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        format!(
            "tls.key_file {} holds no usable private key (PKCS#8, RSA or EC in PEM): {e}",
            key_file.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        format!(
            "the key in {} does not go with the certificate in {}: {e}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(format!(
                "the key in {} does not go with the certificate in {}: {e}",
                key_file.display(),
                cert_file.display()
            ));
        }
    }
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match config.mutual().then_some(&config.client_ca_file) {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(path, "tls.client_ca_file")? {
                roots
                    .add(c)
                    .map_err(|e| format!("tls.client_ca_file {}: {e}", path.display()))?;
            }
            // Asked of every client, demanded only by the admin API (see
            // `ClientCertificate`): pulls and pushes need none.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("tls.client_ca_file {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server =
        builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then
/// waits for the open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Arc<Tls>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, as
                    // axum::serve does, rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let client_certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let ext = req.extensions_mut();
                    ext.insert(ConnectInfo(peer));
                    ext.insert(Https);
                    if client_certificate {
                        ext.insert(ClientCertificate);
                    }
                    app.clone().oneshot(req)
                },
            );
            let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The trusted proxies, for [`scheme`].
#[derive(Clone)]
pub struct Proxies(pub Arc<Vec<ipnet::IpNet>>);

/// Settles which scheme (and, over HTTP/2, which host) a request came in
/// on, and says so in its
/// `X-Forwarded-Proto` header for the handlers (the token realm, secure
/// cookies): `https` over this server's TLS, or when a trusted proxy says
/// the client used it; `http` otherwise. What an untrusted client wrote in
/// `X-Forwarded-Proto` or `Forwarded` is dropped.
pub async fn scheme(State(proxies): State<Proxies>, mut req: Request, next: Next) -> Response {
    let peer: Option<IpAddr> = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let trusted = peer.is_some_and(|ip| proxies.0.iter().any(|n| n.contains(&ip)));
    let https =
        req.extensions().get::<Https>().is_some() || (trusted && forwarded_https(req.headers()));
    // HTTP/2 names the host in the `:authority` pseudo-header, not `Host`:
    // the handlers (the realm, the pull lines) read `Host`.
    if !req.headers().contains_key(axum::http::header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(axum::http::header::HOST, v);
    }
    let headers = req.headers_mut();
    headers.remove("x-forwarded-proto");
    if !trusted {
        headers.remove("forwarded");
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    next.run(req).await
}

/// Whether a proxy's headers say the client spoke HTTPS to it: the first
/// (client-most) `Forwarded` element's `proto`, else the first
/// `X-Forwarded-Proto` value.
fn forwarded_https(headers: &HeaderMap) -> bool {
    if let Some(f) = headers.get("forwarded").and_then(|v| v.to_str().ok()) {
        let first = f.split(',').next().unwrap_or("");
        for pair in first.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k.trim().eq_ignore_ascii_case("proto")
            {
                return v.trim().trim_matches('"').eq_ignore_ascii_case("https");
            }
        }
    }
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn a_proxy_s_headers_name_the_client_s_scheme() {
        assert!(forwarded_https(&h(&[("x-forwarded-proto", "https")])));
        assert!(forwarded_https(&h(&[("x-forwarded-proto", "HTTPS, http")])));
        assert!(!forwarded_https(&h(&[(
            "x-forwarded-proto",
            "http, https"
        )])));
        assert!(forwarded_https(&h(&[(
            "forwarded",
            "for=192.0.2.60;proto=https;by=203.0.113.43, for=10.0.0.1;proto=http"
        )])));
        assert!(forwarded_https(&h(&[(
            "forwarded",
            "for=\"[2001:db8::1]\"; proto=\"https\""
        )])));
        // Forwarded wins over the older header.
        assert!(!forwarded_https(&h(&[
            ("forwarded", "proto=http"),
            ("x-forwarded-proto", "https")
        ])));
        assert!(!forwarded_https(&h(&[])));
    }

    fn pair(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn config(cert: &Path, key: &Path) -> TlsConfig {
        TlsConfig {
            cert_file: cert.to_path_buf(),
            key_file: key.to_path_buf(),
            ..TlsConfig::default()
        }
    }

    #[test]
    fn a_broken_pair_is_refused_with_a_sentence_and_the_old_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let (_, other_key) = pair(dir.path(), "b");
        let tls = Tls::load(&config(&cert, &key)).unwrap();
        let before = tls.current();
        assert_eq!(
            before.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );

        let e = Tls::load(&config(&cert, &other_key)).err().unwrap();
        assert!(e.contains("does not go with the certificate"), "{e}");
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "").unwrap();
        let e = Tls::load(&config(&empty, &key)).err().unwrap();
        assert!(e.contains("holds no certificate"), "{e}");
        let e = Tls::load(&config(&cert, &cert)).err().unwrap();
        assert!(e.contains("holds no usable private key"), "{e}");
        let e = Tls::load(&config(&dir.path().join("missing.crt"), &key))
            .err()
            .unwrap();
        assert!(e.contains("cannot read tls.cert_file"), "{e}");

        // The key file replaced by another key: the reload is refused and
        // the pair in use stays; unchanged files are not read again.
        std::fs::copy(&other_key, &key).unwrap();
        tls.reload(false, "test");
        assert!(Arc::ptr_eq(&before, &tls.current()));
        tls.reload(false, "test");
        assert!(Arc::ptr_eq(&before, &tls.current()), "nothing changed");
        // A good pair written: the next check loads it.
        pair(dir.path(), "a");
        tls.reload(false, "test");
        assert!(!Arc::ptr_eq(&before, &tls.current()), "a good pair again");
        let now = tls.current();
        tls.reload(true, "SIGHUP");
        assert!(
            !Arc::ptr_eq(&now, &tls.current()),
            "SIGHUP reads the files again"
        );
    }
}
