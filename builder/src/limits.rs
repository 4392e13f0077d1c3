//! What a build may use: memory, processes, CPU, disk, log and time, and
//! how the kernel holds it to that.
//!
//! Where the machine offers cgroups — v2 in a subtree delegated to this
//! process (systemd's `Delegate=yes`), else v1 controllers mounted at
//! `/sys/fs/cgroup/{memory,pids,cpu}` (as on this machine) — each build
//! gets a cgroup (per controller, in v1), created before its first sandbox
//! and removed after its last: every sandbox process joins it between fork
//! and exec (a pre-opened `cgroup.procs`, written `0`), so nothing of the
//! build escapes it. Memory (swap included where the kernel accounts it),
//! processes and CPU are then enforced by the kernel; the build's watchdog
//! (`job.rs`) reads the cgroups' counters to say which limit stopped it,
//! measures the build's disk, and stops the build when one is passed.
//! Without cgroups the fallback is setrlimit (address space for memory;
//! processes only when the server does not run as root, since a
//! sandbox's processes count against their host user).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// The limits of one build (after the project's overrides).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub processes: u64,
    /// CPUs the build may use at once (1.0 = one core).
    pub cpus: f64,
    /// `/workspace`, `/layers`, `/tmp` and the build's cache together.
    pub disk_bytes: u64,
    pub log_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 2 << 30,
            processes: 512,
            cpus: 1.0,
            disk_bytes: 4 << 30,
            log_bytes: 10 << 20,
        }
    }
}

impl Limits {
    /// For the build log: what this build may use, and how it is held.
    pub fn describe(&self, mechanism: &Mechanism) -> String {
        format!(
            "limits: memory {}, {} processes, {} CPU, disk {}, log {} ({})",
            human(self.memory_bytes),
            self.processes,
            self.cpus,
            human(self.disk_bytes),
            human(self.log_bytes),
            mechanism.describe()
        )
    }
}

/// How memory, processes and CPU are enforced on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    /// cgroup v1 controllers; builds go under `<controller>/<parent>`.
    CgroupV1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: Option<PathBuf>,
        /// Whether swap is accounted (`memory.memsw.limit_in_bytes`).
        swap: bool,
    },
    /// cgroup v2, in the subtree delegated to this process (systemd's
    /// `Delegate=yes`): builds go under `builds`, each a child with
    /// `memory.max`, `memory.swap.max`, `pids.max` and `cpu.max`.
    CgroupV2 {
        /// `<own cgroup>/<parent>`, with the memory, pids (and cpu)
        /// controllers enabled for its children.
        builds: PathBuf,
        cpu: bool,
    },
    /// setrlimit only: address space, and processes when not root.
    Rlimit { processes: bool },
}

impl Mechanism {
    /// Finds what this machine offers: cgroup v1 memory and pids
    /// controllers with a writable parent for builds, else setrlimit.
    pub fn detect(parent_name: &str) -> Mechanism {
        let root = Path::new("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            let own = std::fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|t| own_v2_path(&t));
            if let Some(own) = own
                && let Some(m) = delegate_v2(&root.join(own.trim_start_matches('/')), parent_name)
            {
                return m;
            }
        }
        let usable = |c: &str| {
            let dir = root.join(c);
            if !dir.join("cgroup.procs").exists() {
                return None;
            }
            let parent = dir.join(parent_name);
            std::fs::create_dir_all(&parent).ok()?;
            Some(parent)
        };
        if let (Some(memory), Some(pids)) = (usable("memory"), usable("pids")) {
            let swap = memory.join("memory.memsw.limit_in_bytes").exists();
            let cpu = usable("cpu");
            if let Some(cpu) = &cpu {
                // Weights are relative to siblings: every group from the
                // controller's root down to the builds' parent yields to
                // the server when the CPUs are contended, not only the
                // build's own.
                let top = root.join("cpu");
                let mut dir = cpu.clone();
                while dir != top {
                    let _ = std::fs::write(dir.join("cpu.shares"), BUILD_CPU_SHARES.to_string());
                    if !dir.pop() {
                        break;
                    }
                }
            }
            return Mechanism::CgroupV1 {
                memory,
                pids,
                cpu,
                swap,
            };
        }
        // SAFETY: geteuid has no preconditions.
        let root_user = unsafe { libc::geteuid() } == 0;
        Mechanism::Rlimit {
            processes: !root_user,
        }
    }

    /// Whether memory and processes are both enforced.
    pub fn enforces_memory_and_processes(&self) -> bool {
        match self {
            Mechanism::CgroupV1 { .. } | Mechanism::CgroupV2 { .. } => true,
            Mechanism::Rlimit { processes } => *processes,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Mechanism::CgroupV1 { swap, cpu, .. } => format!(
                "cgroup v1: memory{}, pids{}",
                if *swap { " and swap" } else { "" },
                if cpu.is_some() { ", cpu" } else { "" }
            ),
            Mechanism::CgroupV2 { builds, cpu } => format!(
                "cgroup v2 in {}: memory, pids{}",
                builds.display(),
                if *cpu { ", cpu" } else { "" }
            ),
            Mechanism::Rlimit { processes: true } => {
                "setrlimit: address space and processes".into()
            }
            Mechanism::Rlimit { processes: false } => {
                "setrlimit: address space only (processes cannot be limited for root without cgroups)".into()
            }
        }
    }
}

/// A build group's `cpu.shares` (a task's default is 1024): serving pulls
/// comes first when the CPUs are busy.
const BUILD_CPU_SHARES: u64 = 128;

/// One build's cgroups (or rlimits), from its first sandbox to its end.
#[derive(Debug)]
pub struct BuildLimits {
    pub limits: Limits,
    mechanism: Mechanism,
    groups: Vec<PathBuf>,
    /// `cgroup.procs` of each group, opened before any fork.
    procs: Vec<File>,
}

impl BuildLimits {
    /// Creates the build's cgroups with its limits set.
    pub fn create(
        mechanism: &Mechanism,
        build_id: &str,
        limits: Limits,
    ) -> std::io::Result<BuildLimits> {
        let mut b = BuildLimits {
            limits,
            mechanism: mechanism.clone(),
            groups: Vec::new(),
            procs: Vec::new(),
        };
        if let Mechanism::CgroupV1 {
            memory,
            pids,
            cpu,
            swap,
        } = mechanism
        {
            let mem = b.group(memory, build_id)?;
            write(&mem, "memory.limit_in_bytes", limits.memory_bytes)?;
            if *swap {
                write(&mem, "memory.memsw.limit_in_bytes", limits.memory_bytes)?;
            }
            let p = b.group(pids, build_id)?;
            write(&p, "pids.max", limits.processes)?;
            if let Some(cpu) = cpu {
                let c = b.group(cpu, build_id)?;
                let period = 100_000u64;
                write(&c, "cpu.cfs_period_us", period)?;
                write(
                    &c,
                    "cpu.cfs_quota_us",
                    (limits.cpus * period as f64).round() as u64,
                )?;
                // And when the CPUs are contended, a build yields to the
                // server: its whole group weighs an eighth of one task.
                write(&c, "cpu.shares", BUILD_CPU_SHARES)?;
            }
        }
        if let Mechanism::CgroupV2 { builds, cpu } = mechanism {
            let g = b.group(builds, build_id)?;
            let swap = g.join("memory.swap.max").exists();
            for (file, value) in v2_files(&limits, *cpu, swap) {
                std::fs::write(g.join(file), value).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot set {}: {e}", g.join(file).display()),
                    )
                })?;
            }
        }
        for g in &b.groups {
            b.procs.push(
                OpenOptions::new()
                    .write(true)
                    .open(g.join("cgroup.procs"))?,
            );
        }
        Ok(b)
    }

    fn group(&mut self, parent: &Path, build_id: &str) -> std::io::Result<PathBuf> {
        let dir = parent.join(build_id);
        // Left by a crash: emptied and made again.
        if dir.exists() {
            kill_all(&dir);
            let _ = std::fs::remove_dir(&dir);
        }
        std::fs::create_dir(&dir)?;
        self.groups.push(dir.clone());
        Ok(dir)
    }

    /// What a sandbox's child does between fork and exec: join the
    /// build's cgroups (or set its rlimits). Only async-signal-safe calls.
    pub fn pre_exec(&self) -> impl Fn() -> std::io::Result<()> + Send + Sync + 'static {
        let fds: Vec<RawFd> = self.procs.iter().map(|f| f.as_raw_fd()).collect();
        let rlimits = match self.mechanism {
            Mechanism::Rlimit { processes } => Some((
                self.limits.memory_bytes,
                processes.then_some(self.limits.processes),
            )),
            Mechanism::CgroupV1 { .. } | Mechanism::CgroupV2 { .. } => None,
        };
        move || {
            for fd in &fds {
                // SAFETY: writing two bytes from a static buffer to an open
                // descriptor; write(2) is async-signal-safe.
                let n = unsafe { libc::write(*fd, b"0\n".as_ptr().cast(), 2) };
                if n < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some((memory, processes)) = rlimits {
                let set = |res, v: u64| {
                    let l = libc::rlimit {
                        rlim_cur: v,
                        rlim_max: v,
                    };
                    // SAFETY: setrlimit with a valid pointer to a local.
                    if unsafe { libc::setrlimit(res, &l) } != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                };
                set(libc::RLIMIT_AS, memory)?;
                if let Some(p) = processes {
                    set(libc::RLIMIT_NPROC, p)?;
                }
            }
            Ok(())
        }
    }

    /// Which limit the kernel enforced, if any: a sentence for the build.
    pub fn breach(&self) -> Option<String> {
        for g in &self.groups {
            // v1: memory.oom_control; v2: memory.events. Both say oom_kill.
            let events = ["memory.oom_control", "memory.events"]
                .iter()
                .map(|f| g.join(f))
                .find(|f| f.exists());
            if let Some(events) = events {
                let killed = counter(&read(&events), "oom_kill");
                if killed > 0 {
                    return Some(format!(
                        "the build used more than {} of memory and was stopped (builds.limits.memory)",
                        human(self.limits.memory_bytes)
                    ));
                }
            }
            if g.join("pids.events").exists() {
                let hit = counter(&read(&g.join("pids.events")), "max");
                if hit > 0 {
                    return Some(format!(
                        "the build tried to run more than {} processes at once and was stopped \
                         (builds.limits.processes)",
                        self.limits.processes
                    ));
                }
            }
        }
        None
    }

    /// Processes still in the build's cgroups.
    pub fn processes(&self) -> usize {
        self.groups
            .iter()
            .map(|g| read(&g.join("cgroup.procs")).lines().count())
            .max()
            .unwrap_or(0)
    }
}

impl Drop for BuildLimits {
    /// Every process left is killed, and the cgroups removed.
    fn drop(&mut self) {
        self.procs.clear();
        for g in &self.groups {
            kill_all(g);
        }
        for g in &self.groups {
            // A group empties a moment after its last process is reaped.
            for _ in 0..200 {
                if std::fs::remove_dir(g).is_ok() || !g.exists() {
                    break;
                }
                kill_all(g);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// SIGKILL to every process in a cgroup, until none is left to kill.
fn kill_all(group: &Path) {
    // cgroup v2 (Linux 5.14): one write kills the whole group.
    let _ = std::fs::write(group.join("cgroup.kill"), "1");
    for _ in 0..50 {
        let pids: Vec<i32> = read(&group.join("cgroup.procs"))
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: kill with a pid read from the build's cgroup.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The files a cgroup v2 build group is given: memory (swap counts as
/// memory: none beyond the limit), processes, and CPU when the controller
/// is there.
fn v2_files(limits: &Limits, cpu: bool, swap: bool) -> Vec<(&'static str, String)> {
    let mut out = vec![("memory.max", limits.memory_bytes.to_string())];
    if swap {
        out.push(("memory.swap.max", "0".to_owned()));
    }
    out.push(("pids.max", limits.processes.to_string()));
    if cpu {
        let period = 100_000u64;
        let quota = (limits.cpus * period as f64).round() as u64;
        out.push(("cpu.max", format!("{quota} {period}")));
    }
    out
}

/// `name N` in a cgroup events file.
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// This process's cgroup v2 path, from `/proc/self/cgroup` (`0::/path`).
fn own_v2_path(proc_self_cgroup: &str) -> Option<String> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_owned())
}

/// Makes `<own>/<parent_name>` a parent for builds' cgroups in a
/// delegated cgroup v2 subtree: this process moves into a leaf of its own
/// (`<own>/server`: a cgroup with controllers for its children holds no
/// process), the memory, pids and cpu controllers are enabled below, and
/// the builds' parent weighs little (`cpu.weight` 10 of 100: builds yield
/// to the server). `None` when the subtree is not delegated to us (any
/// step refused): the caller falls back.
fn delegate_v2(own: &Path, parent_name: &str) -> Option<Mechanism> {
    let available = read(&own.join("cgroup.controllers"));
    let has = |c: &str| available.split_whitespace().any(|x| x == c);
    if !has("memory") || !has("pids") {
        return None;
    }
    let cpu = has("cpu");
    let leaf = own.join("server");
    std::fs::create_dir_all(&leaf).ok()?;
    // Every process of ours (there is one: us) into the leaf.
    std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string()).ok()?;
    let enable = if cpu {
        "+memory +pids +cpu"
    } else {
        "+memory +pids"
    };
    std::fs::write(own.join("cgroup.subtree_control"), enable).ok()?;
    let builds = own.join(parent_name);
    std::fs::create_dir_all(&builds).ok()?;
    std::fs::write(builds.join("cgroup.subtree_control"), enable).ok()?;
    if cpu {
        let _ = std::fs::write(builds.join("cpu.weight"), "10");
    }
    Some(Mechanism::CgroupV2 { builds, cpu })
}

fn write(dir: &Path, file: &str, value: u64) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value.to_string()).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot set {}: {e}", dir.join(file).display()),
        )
    })
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Bytes under `paths` (files' allocated sizes; links not followed),
/// stopping early once past `stop_at`.
pub fn disk_usage(paths: &[&Path], stop_at: u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut stack: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        total += meta.blocks() * 512;
        if total > stop_at {
            return total;
        }
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&p)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    total
}

/// Bytes for people: `2 GiB`, `1.5 KiB`, `12 B`.
pub fn human(bytes: u64) -> String {
    let mut v = bytes as f64;
    let mut unit = "B";
    for u in ["KiB", "MiB", "GiB", "TiB"] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if unit == "B" {
        format!("{bytes} B")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(2 << 30), "2 GiB");
        assert_eq!(human(10 << 20), "10 MiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(12), "12 B");
    }

    #[test]
    fn disk_usage_counts_and_stops_early() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), vec![1u8; 1 << 20]).unwrap();
        std::fs::write(d.path().join("g"), vec![1u8; 1 << 20]).unwrap();
        let all = disk_usage(&[d.path()], u64::MAX);
        assert!(all >= 2 << 20, "{all}");
        assert!(disk_usage(&[d.path()], 1000) < all);
    }

    /// Needs root and cgroup v1 (CI runs as root here): a child joins the
    /// build's cgroups, the pids limit holds, and dropping the limits kills
    /// what is left and removes the groups.
    #[test]
    fn a_build_cgroup_holds_its_processes_and_is_removed_with_them() {
        let mechanism = Mechanism::detect("slipway-unit-test");
        let Mechanism::CgroupV1 { pids, .. } = &mechanism else {
            panic!(
                "this machine was expected to have cgroup v1 controllers (run as root): {mechanism:?}"
            );
        };
        let limits = Limits {
            processes: 8,
            ..Limits::default()
        };
        let b = BuildLimits::create(&mechanism, "unit-b1", limits).unwrap();
        let group = pids.join("unit-b1");
        let mut cmd = std::process::Command::new("/bin/sh");
        // Sixteen sleepers: the ninth fork fails.
        cmd.args(["-c", "for i in $(seq 16); do sleep 30 & done; wait"]);
        use std::os::unix::process::CommandExt;
        // SAFETY: the hook only writes to pre-opened descriptors.
        unsafe {
            cmd.pre_exec(b.pre_exec());
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while b.breach().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the pids limit was never hit"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(b.breach().unwrap().contains("more than 8 processes"));
        assert!(b.processes() <= 8 && b.processes() > 0);
        drop(b);
        assert!(!group.exists(), "the group is removed");
        let status = child.wait().unwrap();
        assert!(!status.success(), "the shell was killed");
        let _ = std::fs::remove_dir(pids);
    }

    /// The CPU limit holds: a busy loop in a build limited to 0.2 CPU
    /// gets about a fifth of a core over a second of wall time.
    #[test]
    fn a_build_gets_no_more_cpu_than_its_limit() {
        let mechanism = Mechanism::detect("slipway-unit-test-cpu");
        assert!(
            matches!(&mechanism, Mechanism::CgroupV1 { cpu: Some(_), .. }),
            "this machine was expected to have the cgroup v1 cpu controller: {mechanism:?}"
        );
        let limits = Limits {
            cpus: 0.2,
            ..Limits::default()
        };
        let b = BuildLimits::create(&mechanism, "unit-cpu", limits).unwrap();
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", "while :; do :; done"]);
        use std::os::unix::process::CommandExt;
        // SAFETY: the hook only writes to pre-opened descriptors.
        unsafe {
            cmd.pre_exec(b.pre_exec());
        }
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(") ")
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        // utime and stime, fields 14 and 15 of stat (11 and 12 after the name).
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let cpu_secs = ticks as f64 / hz;
        let _ = child.kill();
        let _ = child.wait();
        drop(b);
        assert!(
            cpu_secs < 0.6,
            "a build limited to 0.2 CPU used {cpu_secs:.2} s of CPU in 1.5 s"
        );
        assert!(cpu_secs > 0.05, "it ran at all: {cpu_secs:.2} s");
        if let Mechanism::CgroupV1 {
            memory, pids, cpu, ..
        } = &mechanism
        {
            for d in [Some(memory), Some(pids), cpu.as_ref()]
                .into_iter()
                .flatten()
            {
                let _ = std::fs::remove_dir(d);
            }
        }
    }

    #[test]
    fn cgroup_v2_paths_and_counters() {
        assert_eq!(
            own_v2_path("0::/system.slice/slipway.service\n").as_deref(),
            Some("/system.slice/slipway.service")
        );
        assert_eq!(own_v2_path("4:memory:/x\n1:name=systemd:/\n"), None);
        assert_eq!(
            counter("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n", "oom_kill"),
            2
        );
        assert_eq!(counter("max 7\n", "max"), 7);
        assert_eq!(
            counter("oom_kill 0\n", "oom"),
            0,
            "a prefix is not the name"
        );
    }

    #[test]
    fn a_v2_build_group_gets_its_limits() {
        let limits = Limits {
            memory_bytes: 1 << 30,
            processes: 100,
            cpus: 0.5,
            ..Limits::default()
        };
        assert_eq!(
            v2_files(&limits, true, true),
            vec![
                ("memory.max", "1073741824".to_owned()),
                ("memory.swap.max", "0".to_owned()),
                ("pids.max", "100".to_owned()),
                ("cpu.max", "50000 100000".to_owned()),
            ]
        );
        assert_eq!(v2_files(&limits, false, false).len(), 2);
    }
}
