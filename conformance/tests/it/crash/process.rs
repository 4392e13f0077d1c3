//! The real `slipway` binary as a child process: found next to this test
//! binary (and built first when it is missing or older), started on a free
//! loopback port over a given data directory, and killed with SIGKILL.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Signal 9 (libc is not a dependency of these tests).
const SIGKILL: i32 = 9;

/// Longest wait for a started server to answer `/healthz`.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// A running `slipway serve`.
pub struct Slipway {
    child: Child,
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub url: String,
    log: PathBuf,
}

/// The admin password the test gives the server.
pub const ADMIN_PASSWORD: &str = "crash-test-admin-password";
/// The project every pushed repository belongs to.
pub const PROJECT: &str = "crash";

/// A client that sends the admin's credentials with every request.
pub fn admin_client() -> reqwest::Client {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("admin:{ADMIN_PASSWORD}"));
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Basic {basic}").parse().expect("a header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client")
}

impl Slipway {
    /// Starts `slipway serve` over `data_dir`, logging to `log`, and waits
    /// until it answers `/healthz`. A port taken between choosing and
    /// binding it means another try on another port.
    pub async fn start(data_dir: &Path, log: PathBuf) -> Slipway {
        Slipway::start_with(data_dir, log, &[]).await
    }

    /// `start`, with settings given as `SLIPWAY_…` variables.
    pub async fn start_with(data_dir: &Path, log: PathBuf, env: &[(&str, &str)]) -> Slipway {
        for _ in 0..3 {
            match Slipway::try_start(data_dir, log.clone(), env).await {
                Ok(server) => return server,
                Err(log_text) if log_text.contains("cannot listen") => continue,
                Err(log_text) => {
                    panic!("slipway exited before it was ready; its log:\n{log_text}")
                }
            }
        }
        panic!(
            "slipway could not listen on a free port three times; see {}",
            log.display()
        );
    }

    /// Starts the server; `Err` with its log when it exits before it is ready.
    async fn try_start(
        data_dir: &Path,
        log: PathBuf,
        env: &[(&str, &str)],
    ) -> Result<Slipway, String> {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log_file = std::fs::File::create(&log).expect("create the server log");
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log handle"))
            .stderr(log_file)
            .kill_on_drop(true);
        // Only the flags configure it: no SLIPWAY_… setting of the caller
        // (a PostgreSQL URL, another storage path) may leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SLIPWAY_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("SLIPWAY_ADMIN_PASSWORD", ADMIN_PASSWORD);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start the slipway binary");
        let mut server = Slipway { child, url, log };
        server.wait_ready().await?;
        server.ensure_project().await;
        Ok(server)
    }

    /// Creates the test's project (already there after a restart).
    async fn ensure_project(&self) {
        let r = admin_client()
            .post(format!("{}/api/v1/projects", self.url))
            .json(&serde_json::json!({"name": PROJECT, "public": false}))
            .send()
            .await
            .expect("create the project");
        assert!(
            r.status() == reqwest::StatusCode::CREATED
                || r.status() == reqwest::StatusCode::CONFLICT,
            "creating project {PROJECT} answered {}",
            r.status()
        );
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("HTTP client");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the server process") {
                return Err(format!("({status})\n{}", self.log_tail()));
            }
            if let Ok(resp) = client.get(format!("{}/healthz", self.url)).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            assert!(
                started.elapsed() < READY_DEADLINE,
                "slipway did not answer /healthz within {READY_DEADLINE:?}; its log:\n{}",
                self.log_tail()
            );
            // Polling interval, not synchronisation: readiness is the answer.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server with SIGKILL and waits for it to be gone. Fails if
    /// it had already exited by itself (a crash the test did not cause).
    pub async fn kill(mut self) {
        if let Some(status) = self.child.try_wait().expect("poll the server process") {
            panic!(
                "slipway exited by itself ({status}) before the test killed it; its log:\n{}",
                self.log_tail()
            );
        }
        self.child.start_kill().expect("send SIGKILL");
        let status = self.child.wait().await.expect("wait for the killed server");
        assert_eq!(
            status.signal(),
            Some(SIGKILL),
            "slipway should have died of SIGKILL, not {status}"
        );
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// A port that was free a moment ago (the server binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// `<target>/<profile>/slipway`, built once per test run when it is missing
/// or older than this test binary (so it holds the registry being tested).
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let test_exe = std::env::current_exe().expect("path of the test binary");
        // The test binary is <target>/<profile>/deps/it-<hash>.
        let profile_dir = test_exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in <target>/<profile>/deps");
        let bin = profile_dir.join("slipway");
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let stale = match (modified(&bin), modified(&test_exe)) {
            (Some(b), Some(t)) => b < t,
            _ => true,
        };
        if stale {
            build(profile_dir);
        }
        assert!(
            bin.is_file(),
            "{} is missing: run `cargo build -p slipway-registry --bin slipway` first",
            bin.display()
        );
        bin
    })
}

fn build(profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-p", "slipway-registry", "--bin", "slipway"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    let status = cmd.status().expect("run cargo");
    assert!(
        status.success(),
        "`cargo build -p slipway-registry --bin slipway` failed ({status}); build it by hand to see why"
    );
}
