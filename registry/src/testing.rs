//! A real Slipway server for tests: bound to `127.0.0.1:0`, with its own
//! temporary data directory, stopped (gracefully) when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use slipway_storage::testing::{self as s3_testing, PostgresDb, SeaweedFs};

use crate::auth::secrets;
use crate::config::{Config, Secret, StorageBackend};
use crate::server::{AppState, Server};

pub struct TestServer {
    /// `http://127.0.0.1:<port>` (`https://localhost:<port>` with `[tls]`),
    /// without a trailing slash.
    pub url: String,
    pub addr: SocketAddr,
    pub config: Config,
    /// The admin's password (user `admin`).
    pub admin_password: String,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server with default settings in a fresh temporary directory.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` has changed its test configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = Config::for_tests(dir.path());
        adjust(&mut config);
        let mut server = Self::start_config(config).await;
        server._dir = Some(dir);
        server
    }

    /// Starts a server with exactly `config` (its `listen` should be port 0).
    /// Without an admin password in it, one is generated.
    pub async fn start_config(mut config: Config) -> TestServer {
        let admin_password = match &config.auth.admin_password {
            Some(p) => p.expose().to_owned(),
            None => {
                let p = secrets::generate();
                config.auth.admin_password = Some(Secret::new(p.clone()));
                p
            }
        };
        let server = Server::bind(config.clone()).await.expect("server starts");
        let addr = server.local_addr();
        let state = server.state().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        TestServer {
            url: if config.tls.enabled() {
                // The certificate names localhost, not the address.
                format!("https://localhost:{}", addr.port())
            } else {
                format!("http://{addr}")
            },
            addr,
            config,
            admin_password,
            state,
            stop: Some(tx),
            task: Some(task),
            _dir: None,
        }
    }

    /// Creates a project directly in the database (as the admin would).
    pub async fn create_project(&self, name: &str, public: bool) {
        self.state
            .meta
            .project_create(
                name,
                public,
                None,
                self.config.quota.base_projects.iter().any(|b| b == name),
            )
            .await
            .expect("project created");
        self.state.auth.forget_project(name);
    }

    /// `admin:<password>`, as skopeo's `--creds` wants it.
    pub fn admin_creds(&self) -> String {
        format!("admin:{}", self.admin_password)
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// `host:port`, as clients such as skopeo want it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Stops the server and waits until it has finished.
    pub async fn stop(mut self) -> Option<PathBuf> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ran");
        }
        self._dir.take().map(|d| d.keep())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Points `config` at the S3 store of a test SeaweedFS, under `prefix`.
pub fn use_s3(config: &mut Config, weed: &SeaweedFs, prefix: &str) {
    config.storage.backend = StorageBackend::S3;
    config.storage.s3.endpoint = weed.endpoint.clone();
    config.storage.s3.bucket = "slipway-test".into();
    config.storage.s3.prefix = prefix.to_owned();
    config.storage.s3.access_key = s3_testing::ACCESS_KEY.into();
    config.storage.s3.secret_key = Secret::new(s3_testing::SECRET_KEY);
    config.storage.s3.part_size_mib = 5;
    config.storage.s3.create_bucket = true;
}

/// Several replicas of one deployment: one fresh PostgreSQL database, one
/// S3 prefix, one token signing key, one admin password.
pub struct Replicas {
    pub servers: Vec<TestServer>,
    pub admin_password: String,
    db: Option<PostgresDb>,
    _dir: tempfile::TempDir,
}

impl Replicas {
    /// `n` replicas over a fresh database on the PostgreSQL server at
    /// `postgres` (default: `SLIPWAY_TEST_POSTGRES_URL`, else the machine's)
    /// and the SeaweedFS `weed`; `adjust` may change each configuration.
    pub async fn start(
        n: usize,
        weed: &SeaweedFs,
        postgres: Option<&str>,
        adjust: impl Fn(&mut Config),
    ) -> Replicas {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = PostgresDb::fresh(postgres).await;
        let prefix = format!("replicas-{}/", uuid::Uuid::new_v4().simple());
        let admin_password = secrets::generate();
        let mut servers = Vec::new();
        for i in 0..n {
            let mut c = Config::for_tests(&dir.path().join(format!("replica-{i}")));
            c.database.url = db.url.clone();
            use_s3(&mut c, weed, &prefix);
            c.auth.key_file = dir.path().join("token-signing-key.pem");
            c.auth.secrets_key_file = dir.path().join("secrets-key");
            c.auth.admin_password = Some(Secret::new(admin_password.clone()));
            adjust(&mut c);
            servers.push(TestServer::start_config(c).await);
        }
        Replicas {
            servers,
            admin_password,
            db: Some(db),
            _dir: dir,
        }
    }

    /// `admin:<password>`.
    pub fn admin_creds(&self) -> String {
        format!("admin:{}", self.admin_password)
    }

    /// Creates a project (in the shared database).
    pub async fn create_project(&self, name: &str, public: bool) {
        self.servers[0].create_project(name, public).await;
        for s in &self.servers {
            s.state.auth.forget_project(name);
        }
    }

    /// Stops every replica and drops the database.
    pub async fn stop(mut self) {
        for s in self.servers.drain(..) {
            s.stop().await;
        }
        if let Some(db) = self.db.take() {
            db.drop_db().await;
        }
    }
}
