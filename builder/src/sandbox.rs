//! Where buildpacks run: bubblewrap, with fresh user, mount, pid, IPC,
//! UTS and network namespaces, as the unprivileged CNB user, on the
//! builder image's root file system mounted read-only. Only `/workspace`,
//! `/layers`, `/platform` and `/tmp` are bound from the host, writable;
//! nothing else of the host is visible — not the server's data directory,
//! not its credentials (the environment is cleared and set explicitly),
//! not its network: the namespace has only a loopback device. The way out
//! is the build's egress proxy (`crate::egress`): its Unix socket is bound
//! at `/run/slipway/egress.sock`, and every program runs under the
//! forwarder (the launcher binary as `/run/slipway/egress-forward`), which
//! listens on `127.0.0.1:3128` inside and carries connections to that
//! socket; `HTTP_PROXY`, `HTTPS_PROXY` and their lower-case forms point
//! there.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use slipway_launcher::Env;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::{CNB_GID, CNB_UID};

#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The builder image's unpacked root file system.
    pub root: PathBuf,
    pub workspace: PathBuf,
    pub layers: PathBuf,
    pub platform: PathBuf,
    pub tmp: PathBuf,
    /// The way out; `None`: no network at all.
    pub egress: Option<Egress>,
    /// A certificate bundle (the stack's and the site's authorities) bound
    /// at [`CA_BUNDLE`], with the variables TLS clients read pointing at it.
    pub ca_bundle: Option<PathBuf>,
    /// The build's cgroups (or rlimits), which every process joins.
    pub limits: Option<std::sync::Arc<crate::limits::BuildLimits>>,
}

/// A sandbox's way out: the build's egress proxy.
#[derive(Debug, Clone)]
pub struct Egress {
    /// The proxy's Unix socket, on the host.
    pub socket: PathBuf,
    /// The launcher binary (the forwarder), on the host.
    pub forwarder: PathBuf,
}

/// Where the forwarder listens inside the sandbox.
pub const PROXY_PORT: u16 = 3128;
/// Where the build's certificate bundle is, inside the sandbox.
pub const CA_BUNDLE: &str = "/run/slipway/ca-certificates.crt";
const EGRESS_SOCKET: &str = "/run/slipway/egress.sock";
const FORWARDER: &str = "/run/slipway/egress-forward";

/// The mount points a root file system needs for [`Sandbox`]; created in
/// an unpacked builder root (which is then only ever mounted read-only).
pub const MOUNT_POINTS: &[&str] = &[
    "workspace",
    "layers",
    "platform",
    "tmp",
    "proc",
    "dev",
    "run",
];

/// Prepares an unpacked root for sandboxes: its mount points. (Names are
/// not resolved inside: the network namespace has none, and clients send
/// names to the egress proxy, which resolves them.)
pub fn prepare_root(root: &Path) -> std::io::Result<()> {
    for m in MOUNT_POINTS {
        std::fs::create_dir_all(root.join(m))?;
    }
    Ok(())
}

/// The variables that point clients at the egress proxy and at the
/// build's certificate bundle; set last, over the buildpacks' own.
pub fn network_env(egress: bool, ca_bundle: bool) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    if egress {
        let proxy = format!("http://127.0.0.1:{PROXY_PORT}");
        for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            env.push((k, proxy.clone()));
        }
        for k in ["NO_PROXY", "no_proxy"] {
            env.push((k, "localhost,127.0.0.1,::1".to_owned()));
        }
    }
    if ca_bundle {
        for k in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "PIP_CERT",
            "NODE_EXTRA_CA_CERTS",
            "GIT_SSL_CAINFO",
            "CURL_CA_BUNDLE",
        ] {
            env.push((k, CA_BUNDLE.to_owned()));
        }
    }
    env
}

impl Sandbox {
    /// Runs `program` (a path inside the sandbox) with `args`, exactly the
    /// environment `env`, in `cwd`; every line it prints goes to `log`.
    pub async fn run(
        &self,
        program: &str,
        args: &[String],
        env: &Env,
        cwd: &str,
        log: &(dyn Fn(&str) + Send + Sync),
    ) -> std::io::Result<ExitStatus> {
        let mut cmd = Command::new("bwrap");
        cmd.arg("--die-with-parent")
            .arg("--new-session")
            .args([
                "--unshare-user",
                "--unshare-pid",
                "--unshare-ipc",
                "--unshare-uts",
                "--unshare-net",
                "--unshare-cgroup-try",
            ])
            .args(["--uid", &CNB_UID.to_string(), "--gid", &CNB_GID.to_string()])
            .args(["--hostname", "buildpacks"])
            .arg("--ro-bind")
            .arg(&self.root)
            .arg("/")
            .args(["--dev", "/dev", "--proc", "/proc"])
            .arg("--bind")
            .arg(&self.workspace)
            .arg("/workspace")
            .arg("--bind")
            .arg(&self.layers)
            .arg("/layers")
            .arg("--ro-bind")
            .arg(&self.platform)
            .arg("/platform")
            .arg("--bind")
            .arg(&self.tmp)
            .arg("/tmp")
            .args(["--tmpfs", "/run"]);
        if let Some(e) = &self.egress {
            cmd.arg("--ro-bind")
                .arg(&e.socket)
                .arg(EGRESS_SOCKET)
                .arg("--ro-bind")
                .arg(&e.forwarder)
                .arg(FORWARDER);
        }
        if let Some(b) = &self.ca_bundle {
            cmd.arg("--ro-bind").arg(b).arg(CA_BUNDLE);
        }
        cmd.arg("--remount-ro").arg("/run").arg("--clearenv");
        for (k, v) in env {
            cmd.arg("--setenv").arg(k).arg(v);
        }
        for (k, v) in network_env(self.egress.is_some(), self.ca_bundle.is_some()) {
            cmd.arg("--setenv").arg(k).arg(v);
        }
        cmd.arg("--chdir").arg(cwd).arg("--");
        if self.egress.is_some() {
            cmd.arg(FORWARDER)
                .arg(PROXY_PORT.to_string())
                .arg(EGRESS_SOCKET)
                .arg("--");
        }
        cmd.arg(program).args(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(l) = &self.limits {
            // SAFETY: the hook only writes to descriptors opened before the
            // fork, and calls setrlimit (both async-signal-safe).
            unsafe {
                cmd.pre_exec(l.pre_exec());
            }
        }
        let mut child = cmd.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot start bubblewrap (Debian package bubblewrap): {e}"),
            )
        })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut out = BufReader::new(stdout).lines();
        let mut err = BufReader::new(stderr).lines();
        let (mut out_done, mut err_done) = (false, false);
        while !(out_done && err_done) {
            tokio::select! {
                line = out.next_line(), if !out_done => match line? {
                    Some(l) => log(&l),
                    None => out_done = true,
                },
                line = err.next_line(), if !err_done => match line? {
                    Some(l) => log(&l),
                    None => err_done = true,
                },
            }
        }
        child.wait().await
    }
}
