//! A real Slipway server for tests: bound to `127.0.0.1:0`, with its own
//! temporary data directory, stopped (gracefully) when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::auth::secrets;
use crate::config::{Config, Secret};
use crate::server::{AppState, Server};

pub struct TestServer {
    /// `http://127.0.0.1:<port>`, without a trailing slash.
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
            url: format!("http://{addr}"),
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
