//! Application state, the router, and the server's life cycle.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::serve::ListenerExt;
use slipway_storage::blob::fs::FsBlobStore;
use slipway_storage::blob::s3::{S3BlobStore, S3Connection, S3Options};
use slipway_storage::{BlobStore, Metadata};
use tokio::net::TcpListener;

use crate::auth::{self, Authenticator, tokens::TokenKeys};
use crate::config::{Config, StorageBackend};
use crate::telemetry;
use crate::v2;

/// Shared by every request.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub meta: Metadata,
    pub blobs: BlobStore,
    pub upload_locks: UploadLocks,
    pub auth: Authenticator,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Fleet rebases: one writing at a time, and the automatic mode's queue.
    pub rebase: crate::rebase::Rebaser,
    /// What builds (and the fetch of their sources) may reach.
    pub isolation: Arc<slipway_builder::job::Isolation>,
    /// Seals and opens secrets (projects' and triggers').
    pub vault: crate::vault::Vault,
    /// Held by GC and by a backup: no blob goes while a backup copies.
    pub maintenance: tokio::sync::Mutex<()>,
    /// The LDAP directory people sign in with, if configured.
    pub directory: Option<Arc<crate::identity::ldap::Directory>>,
    /// The OpenID Connect provider people sign in through, if configured.
    pub oidc: Option<Arc<crate::identity::oidc::Provider>>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Serialises requests on the same upload within this process.
#[derive(Default)]
pub struct UploadLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

pub struct UploadGuard<'a> {
    locks: &'a UploadLocks,
    id: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl UploadLocks {
    pub async fn lock(&self, id: &str) -> UploadGuard<'_> {
        let m = {
            let mut map = self.0.lock().expect("upload lock map");
            map.entry(id.to_owned()).or_default().clone()
        };
        let guard = m.lock_owned().await;
        UploadGuard {
            locks: self,
            id: id.to_owned(),
            guard: Some(guard),
        }
    }
}

impl Drop for UploadGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.0.lock().expect("upload lock map");
        if let Some(m) = map.get(&self.id) {
            // Only the map holds it: nobody waits, so the entry can go.
            if Arc::strong_count(m) == 1 {
                map.remove(&self.id);
            }
        }
    }
}

impl AppState {
    /// Opens storage as configured.
    pub async fn open(config: Config) -> anyhow::Result<AppState> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the data directory {}: {e}",
                config.data_dir.display()
            )
        })?;
        let (meta, blobs) = open_stores(&config).await?;
        meta.set_base_projects(&config.quota.base_projects).await?;
        let keys = TokenKeys::load_or_create(
            &config.key_file(),
            &config.auth.service,
            &config.auth.issuer,
            config.auth.clock_skew_secs,
        )?;
        auth::bootstrap::ensure_accounts(&meta, &config).await?;
        let isolation = Arc::new(crate::builds::isolation(&config)?);
        let vault = crate::vault::Vault::load(
            config.auth.secrets_key.as_ref().map(|k| k.expose()),
            &config.secrets_key_file(),
        )?;
        vault.check(&meta).await?;
        let directory = crate::identity::ldap::Directory::new(&config.identity.ldap)?.map(Arc::new);
        let oidc = crate::identity::oidc::Provider::new(&config.identity.oidc)?.map(Arc::new);
        if oidc.is_some()
            && config.identity.oidc.public_url.is_empty()
            && config.builds.public_url.is_empty()
        {
            tracing::warn!(
                "identity.oidc.public_url is not set: the dashboard's redirect URI is built from \
                 each request's Host header; set it to the address registered with the provider"
            );
        }
        Ok(AppState(Arc::new(Inner {
            config,
            meta,
            blobs,
            upload_locks: UploadLocks::default(),
            auth: Authenticator::new(keys),
            metrics: telemetry::metrics_handle(),
            rebase: crate::rebase::Rebaser::default(),
            isolation,
            vault,
            maintenance: tokio::sync::Mutex::new(()),
            directory,
            oidc,
        })))
    }
}

/// The scheme and Host a request was sent to (`https://registry.example.org`):
/// the scheme as the listener or a trusted proxy says (`X-Forwarded-Proto`
/// is set by the server for every request).
pub fn request_base(headers: &axum::http::HeaderMap) -> String {
    use axum::http::header;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

/// The database and the blob store as configured (migrations applied;
/// nothing else written).
pub async fn open_stores(config: &Config) -> anyhow::Result<(Metadata, BlobStore)> {
    let meta = Metadata::connect(&config.database_url(), config.database.max_connections)
        .await?
        .with_reservation_ttl(Duration::from_secs(config.quota.reservation_ttl_secs))
        .with_upload_headroom(config.quota.upload_headroom_bytes);
    let blobs = match config.storage.backend {
        StorageBackend::Filesystem => BlobStore::Fs(FsBlobStore::open(config.blob_path())?),
        StorageBackend::S3 => {
            let s3 = &config.storage.s3;
            let store = S3BlobStore::connect(
                &S3Connection {
                    endpoint: s3.endpoint.clone(),
                    region: s3.region.clone(),
                    path_style: s3.path_style,
                    access_key: s3.access_key.clone(),
                    secret_key: s3.secret_key.expose().to_owned(),
                },
                S3Options {
                    bucket: s3.bucket.clone(),
                    prefix: s3.prefix.clone(),
                    part_size: s3.part_size_mib << 20,
                },
            )
            .await;
            if s3.create_bucket {
                store.ensure_bucket().await?;
            }
            BlobStore::S3(store)
        }
    };
    Ok((meta, blobs))
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v2", any(v2::dispatch))
        .route("/v2/", any(v2::dispatch))
        .route("/v2/{*rest}", any(v2::dispatch))
        .route(
            "/auth/token",
            get(auth::endpoint::token).post(auth::endpoint::token),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(crate::ui::root))
        .merge(crate::ui::router())
        .merge(crate::api::router())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            telemetry::track,
        ))
        .layer(axum::middleware::from_fn_with_state(
            crate::tls::Proxies(Arc::new(state.config.server.proxies().unwrap_or_default())),
            crate::tls::scheme,
        ))
        // Blob bodies stream; manifests are bounded where they are read.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.meta.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the database does not answer: {e}\n"),
        ),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Ok(n) = state.meta.upload_count().await {
        metrics::gauge!("slipway_uploads_in_progress").set(n as f64);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

/// A bound, ready-to-run server.
pub struct Server {
    listener: TcpListener,
    state: AppState,
    /// With `[tls]`: the certificate in use, and a plain-HTTP listener on
    /// loopback for this server's own build workers (they push to it; the
    /// certificate names the public host, not 127.0.0.1).
    tls: Option<(Arc<crate::tls::Tls>, TcpListener)>,
}

impl Server {
    /// Opens storage and binds the listening socket.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let listen = config.listen;
        let tls = if config.tls.enabled() {
            let tls = crate::tls::Tls::load(&config.tls)
                .map_err(|e| anyhow::anyhow!("cannot serve HTTPS: {e}"))?;
            let internal = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on 127.0.0.1 for the builds: {e}"))?;
            Some((Arc::new(tls), internal))
        } else {
            None
        };
        let state = AppState::open(config).await?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        Ok(Server {
            listener,
            state,
            tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound socket has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish
    /// (up to the configured grace period).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        let janitor = tokio::spawn(janitor(state.clone()));
        // Polled triggers: every replica looks, one at a time (a lease in
        // the database) checks a trigger.
        let poller = tokio::spawn(crate::triggers::poller(state.clone()));
        let auto_rebase = (!state.config.rebase.auto_run_images.is_empty())
            .then(|| tokio::spawn(crate::rebase::auto_worker(state.clone())));
        let registry_url = if let (true, Some((_, internal))) =
            (state.config.builds.registry_url.is_empty(), &self.tls)
        {
            format!("http://{}", internal.local_addr()?)
        } else if state.config.builds.registry_url.is_empty() {
            let mut addr = self.local_addr();
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        } else {
            state.config.builds.registry_url.clone()
        };
        let workers = crate::builds::spawn_workers(state.clone(), registry_url).await?;
        let grace = Duration::from_secs(state.config.limits.shutdown_grace_secs);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let app = router(state.clone());
        let stopped = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        let mut extra = Vec::new();
        let serve: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> =
            match self.tls {
                Some((tls, internal)) => {
                    extra.push(tokio::spawn(tls.clone().watch()));
                    let mut stop = stop_rx.clone();
                    let plain = axum::serve(
                        internal,
                        app.clone()
                            .into_make_service_with_connect_info::<SocketAddr>(),
                    )
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    });
                    extra.push(tokio::spawn(async move {
                        if let Err(e) = plain.await {
                            tracing::error!(error = %e, "the builds' loopback listener failed");
                        }
                    }));
                    Box::pin(async move {
                        crate::tls::serve(self.listener, app, tls, stopped).await;
                        Ok(())
                    })
                }
                None => {
                    // No Nagle delay: streamed bodies are written after
                    // their headers.
                    let listener = self.listener.tap_io(|tcp| {
                        if let Err(e) = tcp.set_nodelay(true) {
                            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                        }
                    });
                    let app = app.into_make_service_with_connect_info::<SocketAddr>();
                    Box::pin(
                        axum::serve(listener, app)
                            .with_graceful_shutdown(stopped)
                            .into_future(),
                    )
                }
            };
        let mut serve = serve;
        let mut stop_rx = stop_rx;
        let result = tokio::select! {
            r = &mut serve => r,
            _ = async {
                let _ = stop_rx.wait_for(|stop| *stop).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_secs = grace.as_secs(), "requests still running after the grace period; stopping anyway");
                Ok(())
            }
        };
        janitor.abort();
        poller.abort();
        for task in extra {
            task.abort();
        }
        if let Some(task) = auto_rebase {
            // A fleet stopped mid-way loses only its open transaction.
            task.abort();
        }
        workers.stop(&state).await;
        state.meta.close().await;
        result.map_err(Into::into)
    }
}

/// Removes idle uploads, upload files left by a crash and expired
/// reservations every ten minutes (or every half of the idle limit or the
/// reservation lifetime, when those are shorter), and build records beyond
/// each project's retention (a build prunes its own image's as it ends;
/// this catches a retention lowered since); runs GC on its own schedule.
async fn janitor(state: AppState) {
    let every = state
        .config
        .upload_idle()
        .min(Duration::from_secs(state.config.quota.reservation_ttl_secs))
        / 2;
    let mut tick =
        tokio::time::interval(every.clamp(Duration::from_secs(1), Duration::from_secs(600)));
    let gc_every = state.config.gc.interval_secs;
    let mut last_gc = std::time::Instant::now();
    loop {
        tick.tick().await;
        if let Err(e) = v2::uploads::expire(&state).await {
            tracing::warn!(error = %e, "removing idle uploads failed");
        }
        crate::builds::prune_all(&state).await;
        if gc_every > 0 && last_gc.elapsed() >= Duration::from_secs(gc_every) {
            last_gc = std::time::Instant::now();
            let opts =
                crate::api::storage::gc_options(&state, false, None, state.config.gc.retention);
            let quiet = state.maintenance.lock().await;
            let collected = slipway_storage::gc::collect(&state.meta, &state.blobs, &opts).await;
            drop(quiet);
            match collected {
                Ok(r) => {
                    tracing::info!(
                        manifests = r.manifests.len(),
                        blobs = r.blobs.len(),
                        size_bytes = r.bytes_freed,
                        "periodic garbage collection done"
                    );
                    let entry = slipway_storage::meta::NewAuditEntry {
                        principal: "janitor".into(),
                        action: "gc.run".into(),
                        project: None,
                        target: Some("registry".into()),
                        detail: Some(
                            serde_json::json!({"dry_run": false, "manifests": r.manifests.len(),
                                "blobs": r.blobs.len(), "bytes_freed": r.bytes_freed})
                            .to_string(),
                        ),
                        remote_addr: None,
                    };
                    if let Err(e) = state.meta.audit(&entry).await {
                        tracing::warn!(error = %e, "cannot audit a garbage collection");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "periodic garbage collection failed"),
            }
        }
    }
}
