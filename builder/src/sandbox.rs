//! Where buildpacks run: bubblewrap, with fresh user, mount, pid, IPC and
//! UTS namespaces, as the unprivileged CNB user, on the builder image's
//! root file system mounted read-only. Only `/workspace`, `/layers`,
//! `/platform` and `/tmp` are bound from the host, writable; nothing else of
//! the host is visible — not the server's data directory, not its
//! credentials (the environment is cleared and set explicitly). The network
//! is shared: dependencies come from package registries.

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
}

/// The mount points a root file system needs for [`Sandbox`]; created in
/// an unpacked builder root (which is then only ever mounted read-only).
pub const MOUNT_POINTS: &[&str] = &["workspace", "layers", "platform", "tmp", "proc", "dev"];

/// Prepares an unpacked root for sandboxes: mount points, and the host's
/// name resolution (buildpacks download dependencies).
pub fn prepare_root(root: &Path) -> std::io::Result<()> {
    for m in MOUNT_POINTS {
        std::fs::create_dir_all(root.join(m))?;
    }
    std::fs::create_dir_all(root.join("etc"))?;
    if let Ok(resolv) = std::fs::read("/etc/resolv.conf") {
        let target = root.join("etc/resolv.conf");
        // A dangling symlink (to systemd's stub) would make the write go
        // elsewhere: replace it with a file.
        let _ = std::fs::remove_file(&target);
        std::fs::write(target, resolv)?;
    }
    Ok(())
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
            .arg("--clearenv");
        for (k, v) in env {
            cmd.arg("--setenv").arg(k).arg(v);
        }
        cmd.arg("--chdir")
            .arg(cwd)
            .arg("--")
            .arg(program)
            .args(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
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
