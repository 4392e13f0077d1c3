//! Client programs as subprocesses: finding them, running them under a
//! deadline, and the set-up each needs to leave the machine's state alone
//! (skopeo's and podman's signature policy and storage, containerd's root,
//! state and socket).

use std::borrow::BorrowMut;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

/// Longest any one client command may run.
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);
/// Longest a containerd daemon may take to answer on its socket.
const DAEMON_DEADLINE: Duration = Duration::from_secs(30);

/// A client program found on `PATH`.
pub struct Tool {
    path: PathBuf,
}

impl Tool {
    /// Finds `name` on `PATH`, or fails the test saying where it comes from.
    pub fn find(name: &str, comes_from: &str) -> Tool {
        let found = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| is_executable(p))
        });
        match found {
            Some(path) => Tool { path },
            None => panic!(
                "{name} is not installed (not found on PATH); it comes from {comes_from}. \
                 ./conformance/test.sh installs everything the tests need."
            ),
        }
    }

    /// The program with `args`, no standard input, killed if the test drops it.
    pub fn cmd<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost");
        cmd
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Fails the test unless it runs as root, which `what` needs (CI runs as root).
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "{what} needs root, and this test runs as uid {euid}; run the suite as root, as CI does \
         (./conformance/test.sh)"
    );
}

/// Runs `cmd` and returns its standard output; fails the test, with the
/// command and all it printed, unless it succeeds.
pub async fn run(mut cmd: impl BorrowMut<Command>) -> String {
    let cmd = cmd.borrow_mut();
    let out = output(cmd).await;
    if !out.status.success() {
        panic!(
            "`{}` failed ({}).\nIts standard output:\n{}\nIts standard error:\n{}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout)
        .unwrap_or_else(|e| panic!("`{}` printed something other than UTF-8: {e}", show(cmd)))
}

/// Runs `cmd`, which must fail, and returns its standard error.
pub async fn run_failing(mut cmd: impl BorrowMut<Command>) -> String {
    let cmd = cmd.borrow_mut();
    let out = output(cmd).await;
    assert!(
        !out.status.success(),
        "`{}` succeeded but should have failed; it printed:\n{}",
        show(cmd),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `cmd` to its end under `COMMAND_DEADLINE`.
async fn output(cmd: &mut Command) -> std::process::Output {
    match tokio::time::timeout(COMMAND_DEADLINE, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("`{}` could not be run: {e}", show(cmd)),
        Err(_) => panic!(
            "`{}` did not finish within {COMMAND_DEADLINE:?}, so it was killed",
            show(cmd)
        ),
    }
}

/// The command line, for messages. Passwords given with `--creds`,
/// `--dest-creds` and `--user` are masked.
fn show(cmd: &Command) -> String {
    let cmd = cmd.as_std();
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    let mut secret_next = false;
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        words.push(match arg.split_once(':') {
            Some((user, _)) if secret_next => format!("{user}:***"),
            _ => arg.to_string(),
        });
        secret_next = matches!(&*arg, "--creds" | "--dest-creds" | "--src-creds" | "--user");
    }
    words.join(" ")
}

fn accept_anything_policy(dir: &Path) -> PathBuf {
    let path = dir.join("policy.json");
    std::fs::write(&path, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)
        .expect("write policy.json");
    path
}

/// skopeo with a signature policy of our own, so the machine's plays no part.
pub struct Skopeo {
    tool: Tool,
    policy: PathBuf,
}

impl Skopeo {
    pub fn find(work: &Path) -> Skopeo {
        Skopeo {
            tool: Tool::find("skopeo", "the Debian package skopeo"),
            policy: accept_anything_policy(work),
        }
    }

    pub fn cmd<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Command {
        let mut cmd = self.tool.cmd(["--policy"]);
        cmd.arg(&self.policy).args(args);
        cmd
    }
}

/// podman with its storage, run root, temporary files and signature policy
/// in a temporary directory (vfs driver), so it never touches the machine's.
pub struct Podman {
    tool: Tool,
    dir: PathBuf,
    pub policy: PathBuf,
}

impl Podman {
    pub fn find(work: &Path) -> Podman {
        let dir = work.join("podman");
        std::fs::create_dir_all(dir.join("tmp")).expect("create podman's directories");
        Podman {
            tool: Tool::find("podman", "the Debian package podman"),
            policy: accept_anything_policy(work),
            dir,
        }
    }

    pub fn cmd<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Command {
        let d = |name: &str| self.dir.join(name);
        let mut cmd = self.tool.cmd(["--root"]);
        cmd.env("TMPDIR", d("tmp"))
            .arg(d("root"))
            .arg("--runroot")
            .arg(d("run"))
            .arg("--tmpdir")
            .arg(d("tmp"))
            .args(["--storage-driver", "vfs"])
            .args(["--events-backend", "none"])
            .args(["--cgroup-manager", "cgroupfs"])
            .args(args);
        cmd
    }
}

/// A containerd daemon with its root, state, socket and config in a
/// temporary directory; killed when dropped.
pub struct Containerd {
    child: std::process::Child,
    ctr: Tool,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    pub async fn start() -> Containerd {
        let containerd = Tool::find("containerd", "the Debian package containerd");
        let ctr = Tool::find("ctr", "the Debian package containerd");
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        // Every path the daemon would write outside its root is set here too
        // (the `opt` plugin defaults to /opt/containerd). Without the CRI
        // plugin it starts in a fraction of a second.
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = {root:?}
state = {state:?}
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = {socket:?}

[ttrpc]
  address = {ttrpc:?}

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt:?}
"#,
                root = path("root"),
                state = path("state"),
                socket = path("containerd.sock"),
                ttrpc = path("containerd.sock.ttrpc"),
                opt = path("opt"),
            ),
        )
        .expect("write containerd's config");
        let log = std::fs::File::create(dir.path().join("containerd.log"))
            .expect("create containerd.log");
        let child = std::process::Command::new(&containerd.path)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("containerd could not be started: {e}"));
        let mut daemon = Containerd {
            child,
            ctr,
            socket,
            dir,
        };
        daemon.wait_ready().await;
        daemon
    }

    /// Polls `ctr version` until the daemon answers, exits, or the deadline passes.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + DAEMON_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("containerd's status") {
                panic!(
                    "containerd exited ({status}) before it answered; its log:\n{}",
                    self.log()
                );
            }
            if self.socket.exists() && output(&mut self.ctr(["version"])).await.status.success() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "containerd did not answer on {} within {DAEMON_DEADLINE:?}; its log:\n{}",
                    self.socket.display(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `ctr --address <socket> args…`
    pub fn ctr<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Command {
        let mut cmd = self.ctr.cmd(["--address"]);
        cmd.arg(&self.socket).args(args);
        cmd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Detaches the mount at its path when dropped (a no-op once unmounted), so
/// a failed test leaves no mount behind.
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.0.as_os_str().as_bytes()).expect("mount point path");
        // SAFETY: `path` is a valid NUL-terminated string for the call's duration.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}
