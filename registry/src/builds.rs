//! The build workers: each claims the oldest pending build from the queue in
//! the database, runs it (`slipway_builder::job`) as the `builder` identity
//! against this registry's own OCI API — so every layer and tag it writes
//! goes through the same permission and quota checks as any push — and
//! records its log and its end.
//!
//! A running build sends a heartbeat every few seconds, which is also when
//! it learns it was cancelled. A build whose heartbeat stops (its process
//! died) is failed by any replica's reaper; a process that restarts fails
//! the builds it was running at once. Either way the build can be retried.
//!
//! Quota: when a build starts it reserves the size of the previous image of
//! the same name, so other writes cannot take the room it will need; the
//! reservation is released when the export starts, and the export's pushes
//! are then checked exactly like any push — an export over the quota fails
//! the build with the quota's sentence, and no tag moves (tags are written
//! last).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_builder::egress::Settings as EgressSettings;
use slipway_builder::job::{self, BuildError, BuildLog, BuildRequest, Context, Isolation};
use slipway_builder::limits::Mechanism;
use slipway_builder::oci::{Client, OciError};
use slipway_storage::meta::{BuildRecord, now_ms};
use slipway_storage::{RepoName, StorageError};

use crate::server::AppState;

pub mod mask;

/// How often a running build says it still runs (and looks for a cancel).
pub const HEARTBEAT: Duration = Duration::from_secs(3);
/// A running build whose heartbeat is older than this is failed.
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// How often an idle worker looks at the queue.
const POLL: Duration = Duration::from_millis(500);
/// Log lines kept per build; later lines are dropped (and counted).
const MAX_LOG_LINES: i64 = 50_000;
/// Longest log line kept, in bytes.
const MAX_LINE: usize = 4096;

/// The build workers of this process.
#[derive(Default)]
pub struct Workers {
    handles: Vec<tokio::task::JoinHandle<()>>,
    ids: Vec<String>,
    /// The builds' parent cgroups, removed (when empty) at stop.
    cgroups: Vec<std::path::PathBuf>,
}

impl Drop for Workers {
    /// The builds' parent cgroups go with the workers (when empty: a build
    /// still running keeps them).
    fn drop(&mut self) {
        for g in &self.cgroups {
            let _ = std::fs::remove_dir(g);
        }
    }
}

impl Workers {
    /// Stops the workers; the builds they ran are failed with a reason
    /// (and can be retried).
    pub async fn stop(mut self, state: &AppState) {
        for h in &self.handles {
            h.abort();
        }
        for h in std::mem::take(&mut self.handles) {
            let _ = h.await;
        }

        for w in &self.ids {
            if let Err(e) = state
                .meta
                .builds_fail_worker(w, "Slipway stopped while this build ran; retry it")
                .await
            {
                tracing::warn!(error = %e, "cannot fail the builds a stop interrupted");
            }
        }
    }
}

/// How builds are isolated, from the configuration: the egress policy
/// (with this server's own addresses refused), the proxy's settings, the
/// source hosts, and the extra certificate authorities (read now: a
/// missing or empty file is an error at startup).
pub fn isolation(config: &crate::Config) -> anyhow::Result<Isolation> {
    let mut policy = config.egress_policy()?;
    policy.own_addrs = slipway_builder::egress::own_addrs(config.listen.ip());
    let b = &config.builds;
    let ca_certificates = if b.ca_certificates.as_os_str().is_empty() {
        None
    } else {
        let pem = std::fs::read(&b.ca_certificates).map_err(|e| {
            anyhow::anyhow!(
                "builds.ca_certificates: cannot read {}: {e}",
                b.ca_certificates.display()
            )
        })?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            anyhow::bail!(
                "builds.ca_certificates: {} holds no PEM certificate",
                b.ca_certificates.display()
            );
        }
        Some(pem)
    };
    Ok(Isolation {
        policy,
        proxy: EgressSettings {
            connect_timeout: std::time::Duration::from_secs(b.egress.connect_timeout_secs),
            idle_timeout: std::time::Duration::from_secs(b.egress.idle_timeout_secs),
            max_download_bytes: b.egress.max_download_bytes,
            upstream: (!b.upstream_proxy.is_empty()).then(|| b.upstream_proxy.clone()),
            ..EgressSettings::default()
        },
        source_hosts: config.source_hosts()?,
        ca_certificates,
    })
}

/// A project's build limits: the server's, with the project's overrides.
async fn project_limits(state: &AppState, project: &str) -> slipway_builder::limits::Limits {
    let server = state.config.builds.limits.limits();
    match state.meta.project_get(project).await {
        Ok(Some(p)) => crate::api::projects::BuildLimitsView::of(&p).over(server),
        _ => server,
    }
}

/// The cgroup (under each controller) that this server's builds go in:
/// one per data directory, so two servers on a machine keep theirs apart.
fn cgroup_parent(config: &crate::Config) -> String {
    use sha2::Digest as _;
    let data = std::fs::canonicalize(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    let hash = sha2::Sha256::digest(data.display().to_string().as_bytes());
    format!("slipway-builds/{}", &hex::encode(hash)[..12])
}

/// Starts the configured number of build workers.
pub async fn spawn_workers(state: AppState, registry_url: String) -> anyhow::Result<Workers> {
    let n = state.config.builds.workers;
    if n == 0 {
        return Ok(Workers::default());
    }
    let Some(password) = crate::auth::bootstrap::builder_secret(&state.config)? else {
        tracing::warn!(
            "no builder password (builds.builder_password or <data_dir>/builder-password): \
             this process runs no builds"
        );
        return Ok(Workers::default());
    };
    let cache_dir = state.config.build_cache_dir();
    let work_dir = cache_dir.join("work");
    std::fs::create_dir_all(&work_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the build directory {}: {e}",
            work_dir.display()
        )
    })?;
    let client = Arc::new(Client::new(
        &registry_url,
        crate::auth::BUILDER,
        password.trim(),
    ));
    let mechanism = Mechanism::detect(&cgroup_parent(&state.config));
    tracing::info!(limits = %mechanism.describe(), "build limits are enforced by");
    if !mechanism.enforces_memory_and_processes() {
        if state.config.builds.limits.enforce {
            anyhow::bail!(
                "builds cannot be held to their memory and process limits on this machine ({}); \
                 build workers do not start. Give Slipway cgroup v1 memory and pids controllers \
                 (run it as root, or delegate them), set builds.limits.enforce = false to \
                 build without those limits, or builds.workers = 0 to run no builds here",
                mechanism.describe()
            );
        }
        tracing::warn!(
            "builds.limits.enforce = false: builds run without memory or process limits ({})",
            mechanism.describe()
        );
    }
    let isolation = state.isolation.clone();
    tracing::info!(
        egress.mode = %state.config.builds.egress.mode,
        egress.refused_own = isolation.policy.own_addrs.len(),
        "builds run without host network: their egress goes through Slipway's proxy"
    );
    let ctx = Context {
        client,
        builders_dir: state.config.builders_dir(),
        cache_dir,
        work_dir,
        launcher: slipway_builder::launcher::LAUNCHER,
        isolation,
        mechanism,
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    let data_dir = std::fs::canonicalize(&state.config.data_dir)
        .unwrap_or_else(|_| state.config.data_dir.clone());
    let mut workers = Workers::default();
    if let Mechanism::CgroupV1 {
        memory, pids, cpu, ..
    } = &ctx.mechanism
    {
        workers.cgroups = [Some(memory), Some(pids), cpu.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
    }
    if let Mechanism::CgroupV2 { builds, .. } = &ctx.mechanism {
        workers.cgroups = vec![builds.clone()];
    }
    for i in 0..n {
        // Stable across restarts of the same process: what it ran before
        // a crash is failed when it starts again.
        let worker = format!("{host}:{}#{i}", data_dir.display());
        match state
            .meta
            .builds_fail_worker(&worker, "Slipway restarted while this build ran; retry it")
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(builds = n, %worker, "failed the builds a restart interrupted"),
            Err(e) => tracing::warn!(error = %e, "cannot fail the builds a restart interrupted"),
        }
        workers.ids.push(worker.clone());
        workers.handles.push(tokio::spawn(worker_loop(
            state.clone(),
            ctx.clone(),
            worker,
        )));
    }
    workers
        .handles
        .push(tokio::spawn(reaper(state, workers.ids.clone())));
    Ok(workers)
}

async fn worker_loop(state: AppState, ctx: Context, worker: String) {
    loop {
        match state
            .meta
            .build_claim(&worker, state.config.builds.per_project)
            .await
        {
            Ok(Some(build)) => run_one(&state, &ctx, build).await,
            Ok(None) => tokio::time::sleep(POLL).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the build queue");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// Fails running builds whose process stopped sending heartbeats — other
/// processes' builds only: this process's own are alive while it runs
/// (their heartbeats may lag when the machine is loaded; each has its own
/// timeout), and are failed when it restarts.
async fn reaper(state: AppState, own: Vec<String>) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        let before = now_ms() - STALE_AFTER.as_millis() as i64;
        match state
            .meta
            .builds_fail_stale(
                before,
                &own,
                "the build's worker stopped answering (its process died?); retry it",
            )
            .await
        {
            Ok(ids) => {
                for id in ids {
                    tracing::warn!(build = %id, "failed a build whose worker stopped");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot look for stale builds"),
        }
    }
}

/// A build's log: lines collected in memory and written to the database
/// in batches, so a follower on any replica reads them as they come.
struct DbLog {
    inner: Mutex<LogBuf>,
    /// The build's secrets, masked in every line.
    mask: mask::Mask,
}

#[derive(Default)]
struct LogBuf {
    phase: String,
    pending: Vec<(String, String)>,
    next_seq: i64,
    dropped: u64,
}

impl DbLog {
    fn new() -> DbLog {
        DbLog {
            inner: Mutex::new(LogBuf {
                phase: "queue".into(),
                next_seq: 1,
                ..Default::default()
            }),
            mask: mask::Mask::default(),
        }
    }

    fn push(&self, phase: Option<&str>, text: &str) {
        let masked;
        let text = if self.mask.is_empty() {
            text
        } else {
            masked = self.mask.apply(text);
            masked.as_str()
        };
        let mut b = self.inner.lock().expect("build log");
        if let Some(p) = phase {
            b.phase = p.to_owned();
        }
        let phase = b.phase.clone();
        for line in text.lines() {
            if b.next_seq + b.pending.len() as i64 > MAX_LOG_LINES {
                b.dropped += 1;
                continue;
            }
            let mut line = line.to_owned();
            if line.len() > MAX_LINE {
                let mut end = MAX_LINE;
                while !line.is_char_boundary(end) {
                    end -= 1;
                }
                line.truncate(end);
                line.push('…');
            }
            b.pending.push((phase.clone(), line));
        }
    }

    fn phase_now(&self) -> String {
        self.inner.lock().expect("build log").phase.clone()
    }

    async fn flush(&self, state: &AppState, id: &str) {
        let (first, lines) = {
            let mut b = self.inner.lock().expect("build log");
            if b.pending.is_empty() {
                return;
            }
            let lines = std::mem::take(&mut b.pending);
            let first = b.next_seq;
            b.next_seq += lines.len() as i64;
            (first, lines)
        };
        // A busy database (a loaded machine, a replica's failover) is
        // waited for a little: lines are not dropped at the first error.
        let mut wait = Duration::from_millis(100);
        for attempt in 1..=5 {
            match state.meta.build_log_append(id, first, &lines).await {
                Ok(()) => return,
                Err(e) if attempt == 5 => {
                    tracing::warn!(build = %id, error = %e, lines = lines.len(), "cannot write build log lines");
                }
                Err(e) => {
                    tracing::info!(build = %id, error = %e, attempt, "writing build log lines failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }
}

impl BuildLog for DbLog {
    fn phase(&self, name: &str) {
        self.push(Some(name), &format!("===> {}", name.to_ascii_uppercase()));
    }

    fn line(&self, text: &str) {
        self.push(None, text);
    }

    fn egress_refused(&self, rule: slipway_builder::egress::Rule) {
        metrics::counter!("slipway_build_egress_refused_total", "rule" => rule.name()).increment(1);
    }
}

/// How a build ended.
enum End {
    /// The image's digest, the buildpacks that built it and the tree.
    Succeeded(String, Vec<String>, String),
    /// The tree is the one an equal build made an image of, still there.
    Reused(Box<crate::api::builds::Reusable>, String),
    Failed(String),
    Cancelled,
    TimedOut,
}

async fn run_one(state: &AppState, ctx: &Context, build: BuildRecord) {
    let started = Instant::now();
    let id = build.id.clone();
    // The secrets first: every line of the log is masked with them.
    let secrets = load_secrets(state, &build).await;
    let mut log = DbLog::new();
    if let Ok(s) = &secrets {
        let mut values: Vec<String> = s.env.values().cloned().collect();
        if let Some(c) = &s.git {
            values.push(c.password.clone());
            values.push(c.header());
        }
        log.mask = mask::Mask::new(values.iter().map(|v| v.as_bytes()));
    }
    let log = Arc::new(log);
    tracing::info!(build = %id, project = %build.project, image = %build.image_name, "build started");
    log.line(&format!(
        "build {id} of {} at {} ({}) with {}",
        build.source_url, build.git_ref, build.git_commit, build.builder
    ));
    if !build.secret_env.is_empty() {
        log.line(&format!(
            "secrets (as /platform/env files, masked in this log): {}",
            build.secret_env.join(", ")
        ));
    }

    let reserved = match secrets {
        Err(reason) => Err(reason),
        Ok(secrets) => reserve(state, &build).await.map(|r| (r, secrets)),
    };
    let end = match reserved {
        Err(reason) => End::Failed(reason),
        Ok((reserved, secrets)) => {
            if reserved > 0 {
                log.line(&format!(
                    "reserved {} of the project's quota (the previous image's size)",
                    slipway_storage::error::human_bytes(reserved)
                ));
            }
            // An equal build's image, kept: a source whose tree is that
            // build's is not built again.
            let equal = match crate::api::builds::last_equal(state, &build).await {
                Ok(r) => r.filter(|r| r.last.git_tree.is_some()),
                Err(e) => {
                    tracing::warn!(build = %id, error = %e.message, "cannot look for an equal build");
                    None
                }
            };
            let end = supervise(state, ctx, &build, &log, secrets, equal).await;
            if let Err(e) = state.meta.build_release(&build.project, &id).await {
                tracing::warn!(build = %id, error = %e, "cannot release a build's reservation");
            }
            end
        }
    };
    // The work directory goes whatever happened (a cancelled build's job
    // was dropped before it could clean up).
    let _ = std::fs::remove_dir_all(ctx.work_dir.join(&id));

    let (state_name, reason, digest) = match &end {
        End::Succeeded(d, buildpacks, tree) => {
            log.push(Some("done"), &format!("built {d}"));
            if let Err(e) = state
                .meta
                .build_set_built(
                    &id,
                    &serde_json::to_string(buildpacks).unwrap_or_else(|_| "[]".into()),
                    tree,
                )
                .await
            {
                tracing::warn!(build = %id, error = %e, "cannot record what a build built");
            }
            ("succeeded", None, Some(d.clone()))
        }
        End::Reused(r, tree) => match r.point_tags(state, &build, "tree").await {
            Ok(reason) => {
                log.push(Some("done"), &reason);
                let buildpacks = r.last.buildpacks.clone().unwrap_or_else(|| "[]".into());
                if let Err(e) = state.meta.build_set_built(&id, &buildpacks, tree).await {
                    tracing::warn!(build = %id, error = %e, "cannot record what a build reused");
                }
                let who = crate::api::builds::Who {
                    subject: crate::auth::BUILDER.into(),
                    remote: None,
                };
                let ended = BuildRecord {
                    state: "reused".into(),
                    ..build.clone()
                };
                if let Err(e) = r.recorded(state, &who, &ended).await {
                    tracing::warn!(build = %id, error = %e.message, "cannot audit a reuse");
                }
                ("reused", Some(reason), Some(r.digest_str()))
            }
            Err(e) => {
                let reason = format!("cannot use the equal build's image again: {}", e.message);
                log.push(Some("done"), &format!("failed: {reason}"));
                ("failed", Some(reason), None)
            }
        },
        End::Failed(r) => {
            log.push(Some("done"), &format!("failed: {r}"));
            ("failed", Some(r.clone()), None)
        }
        End::Cancelled => {
            log.push(Some("done"), "cancelled");
            ("cancelled", Some("cancelled while it ran".to_owned()), None)
        }
        End::TimedOut => {
            let r = format!(
                "the build ran longer than {} seconds, the limit",
                state.config.builds.timeout_secs
            );
            log.push(Some("done"), &r);
            ("timed_out", Some(r), None)
        }
    };
    {
        let dropped = log.inner.lock().expect("build log").dropped;
        if dropped > 0 {
            log.line(&format!("({dropped} more log lines were dropped)"));
        }
    }
    // A reason may quote what git or a buildpack printed: masked as well.
    let reason = reason.map(|r| log.mask.apply(&r));
    // The log first: who follows it stops when the build has ended.
    log.flush(state, &id).await;
    match state
        .meta
        .build_finish(&id, state_name, reason.as_deref(), digest.as_deref())
        .await
    {
        Ok(true) => {}
        Ok(false) => tracing::warn!(build = %id, "the build had been ended elsewhere"),
        Err(e) => tracing::error!(build = %id, error = %e, "cannot record a build's end"),
    }
    if state_name != "reused" {
        // (a reuse counted and pruned as it was recorded)
        metrics::counter!("slipway_builds_total", "state" => state_name).increment(1);
        prune(state, &build.project, &build.image_name).await;
    }
    tracing::info!(
        build = %id,
        state = state_name,
        reason = reason.as_deref().unwrap_or(""),
        secs = started.elapsed().as_secs_f64(),
        "build ended"
    );
}

/// Reserves the previous image's size; the quota's sentence when it does
/// not fit.
async fn reserve(state: &AppState, build: &BuildRecord) -> Result<u64, String> {
    let bytes = previous_size(state, build).await.unwrap_or(0);
    let ttl = (state.config.builds.timeout_secs as i64 + 60) * 1000;
    match state
        .meta
        .build_reserve(&build.project, &build.id, bytes, ttl)
        .await
    {
        Ok(()) => Ok(bytes),
        Err(e @ StorageError::QuotaExceeded { .. }) => Err(format!(
            "{} (the build reserves the size of the previous image)",
            crate::error::ApiError::from(e).message
        )),
        Err(e) => Err(format!("cannot reserve quota for the build: {e}")),
    }
}

/// What `<project>/<image>:latest` costs the project (config and layers,
/// but the layers a base project holds: the run image's, free), if any.
async fn previous_size(state: &AppState, build: &BuildRecord) -> Option<u64> {
    let repo = RepoName::parse(&format!("{}/{}", build.project, build.image_name)).ok()?;
    let m = state.meta.manifest_by_tag(&repo, "latest").await.ok()??;
    let v: serde_json::Value = serde_json::from_slice(&m.body).ok()?;
    let config = v["config"]["size"].as_u64().unwrap_or(0);
    let layers: Vec<(String, u64)> = v["layers"]
        .as_array()?
        .iter()
        .filter_map(|l| Some((l["digest"].as_str()?.to_owned(), l["size"].as_u64()?)))
        .collect();
    let digests: Vec<String> = layers.iter().map(|(d, _)| d.clone()).collect();
    let free = state.meta.held_by_base(&digests).await.ok()?;
    let layers: u64 = layers
        .iter()
        .filter(|(d, _)| !free.contains(d))
        .map(|(_, n)| n)
        .sum();
    Some(config + layers)
}

/// A build's secrets, opened: its `/platform/env` secrets and its git
/// credentials.
struct Secrets {
    env: BTreeMap<String, String>,
    git: Option<slipway_builder::job::GitCredentials>,
}

/// Opens the secrets a build names; a sentence when one is missing.
async fn load_secrets(state: &AppState, build: &BuildRecord) -> Result<Secrets, String> {
    let mut env = BTreeMap::new();
    for name in &build.secret_env {
        let v = crate::api::triggers::open_secret(state, &build.project, name)
            .await
            .map_err(|e| format!("{}: the build names it as a secret", e.message))?;
        let v = String::from_utf8(v)
            .map_err(|_| format!("the secret {name} is not text; /platform/env files are"))?;
        env.insert(name.clone(), v);
    }
    let git = match &build.git_credentials {
        Some(name) => Some(
            crate::api::triggers::git_credentials(state, &build.project, name)
                .await
                .map_err(|e| format!("{}: the build names it as git credentials", e.message))?,
        ),
        None => None,
    };
    Ok(Secrets { env, git })
}

/// Removes one image's build records beyond the project's retention (or
/// the server's: `builds.keep_succeeded`, `builds.keep_failed`).
pub async fn prune(state: &AppState, project: &str, image_name: &str) {
    let keep = retention(state, project).await;
    match state.meta.builds_prune(project, image_name, keep).await {
        Ok(ids) if !ids.is_empty() => {
            tracing::info!(
                project,
                image = image_name,
                removed = ids.len(),
                "build records pruned"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(project, error = %e, "cannot prune build records"),
    }
}

/// Prunes every image of every project (the janitor, every ten minutes).
pub async fn prune_all(state: &AppState) -> u64 {
    let mut removed = 0;
    let Ok(projects) = state.meta.projects().await else {
        return 0;
    };
    for p in projects {
        let keep = retention(state, &p.name).await;
        for image in state
            .meta
            .build_image_names(&p.name)
            .await
            .unwrap_or_default()
        {
            if let Ok(ids) = state.meta.builds_prune(&p.name, &image, keep).await {
                removed += ids.len() as u64;
            }
        }
    }
    removed
}

/// A project's build record retention: its own, else the server's.
pub async fn retention(state: &AppState, project: &str) -> slipway_storage::meta::Retention {
    let server = slipway_storage::meta::Retention {
        keep_succeeded: state.config.builds.keep_succeeded,
        keep_failed: state.config.builds.keep_failed,
    };
    match state.meta.project_get(project).await {
        Ok(Some(p)) => crate::api::projects::BuildRetentionView::of(&p).over(server),
        _ => server,
    }
}

/// Runs the job with heartbeats, cancellation and the timeout.
async fn supervise(
    state: &AppState,
    ctx: &Context,
    build: &BuildRecord,
    log: &Arc<DbLog>,
    secrets: Secrets,
    equal: Option<crate::api::builds::Reusable>,
) -> End {
    let env: BTreeMap<String, String> = serde_json::from_str(&build.env).unwrap_or_default();
    let req = BuildRequest {
        build_id: build.id.clone(),
        project: build.project.clone(),
        image_name: build.image_name.clone(),
        source_url: build.source_url.clone(),
        git_ref: build.git_ref.clone(),
        commit: build.git_commit.clone(),
        builder: build.builder.clone(),
        env,
        secret_env: secrets.env,
        git_credentials: secrets.git,
        limits: project_limits(state, &build.project).await,
        unchanged_tree: equal.as_ref().and_then(|r| r.last.git_tree.clone()),
    };
    let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log_dyn: Arc<DbLog> = log.clone();
    let job = {
        let ctx = ctx.clone();
        let state = state.clone();
        let released = released.clone();
        let log = log_dyn.clone();
        async move {
            let log = ReleasingLog {
                log: &log,
                state: &state,
                project: &req.project,
                build_id: &req.build_id,
                released: &released,
            };
            job::run(&ctx, &req, &log).await
        }
    };
    let deadline = tokio::time::sleep(Duration::from_secs(state.config.builds.timeout_secs));
    // Heartbeats from a task of their own: a job busy on a runtime thread
    // (unpacking, copying a cache) never makes its build look dead.
    let cancel_asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let heart = {
        let state = state.clone();
        let id = build.id.clone();
        let cancel_asked = cancel_asked.clone();
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(HEARTBEAT);
            loop {
                beat.tick().await;
                match state.meta.build_heartbeat(&id).await {
                    Ok(cancel) => {
                        if cancel {
                            cancel_asked.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    Err(e) => tracing::warn!(build = %id, error = %e, "build heartbeat failed"),
                }
            }
        })
    };
    let _stop_heart = AbortOnDrop(heart);
    // The log is written from a task of its own too, never from a branch
    // of the loop below: while a branch runs, `job` is not polled, and a
    // job paused holding the database's one writer connection (releasing
    // its reservation before the export) would keep the flush waiting for
    // that connection until the pool's timeout — every writer of the
    // process with it (the soak found this).
    // Stopped, not aborted, at the end: a flush cut short would lose the
    // lines it took.
    let (stop_flusher, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let flusher = {
        let state = state.clone();
        let id = build.id.clone();
        let log = log.clone();
        tokio::spawn(async move {
            let mut flush = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = flush.tick() => log.flush(&state, &id).await,
                    _ = &mut stopped => return,
                }
            }
        })
    };
    let end = supervise_loop(log, job, deadline, cancel_asked, equal).await;
    let _ = stop_flusher.send(());
    let _ = flusher.await;
    end
}

/// [`supervise`]'s loop: the job's end, its deadline, a cancellation.
async fn supervise_loop(
    log: &Arc<DbLog>,
    job: impl std::future::Future<Output = Result<job::Outcome, BuildError>>,
    deadline: tokio::time::Sleep,
    cancel_asked: Arc<std::sync::atomic::AtomicBool>,
    equal: Option<crate::api::builds::Reusable>,
) -> End {
    let mut job = std::pin::pin!(job);
    let mut deadline = std::pin::pin!(deadline);
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.tick().await;
    let mut cancel_seen = false;
    loop {
        tokio::select! {
            r = &mut job => {
                return match r {
                    Ok(outcome) => {
                        log.line(&format!(
                            "exported {} ({} uploaded in {} layers, {} layers reused)",
                            outcome.exported.digest,
                            slipway_storage::error::human_bytes(outcome.exported.uploaded_bytes),
                            outcome.exported.uploaded.len(),
                            outcome.exported.reused.len()
                        ));
                        End::Succeeded(outcome.exported.digest, outcome.buildpacks, outcome.tree)
                    }
                    Err(BuildError::Unchanged(tree)) => match equal {
                        Some(r) => End::Reused(Box::new(r), tree),
                        None => End::Failed("the source's tree is unchanged, but no image to use again".into()),
                    },
                    Err(e) => End::Failed(reason_of(&e)),
                };
            }
            _ = &mut deadline => {
                if log.phase_now() == "export" {
                    // Not cut in the middle of tagging: the export is short.
                    deadline.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(60));
                    continue;
                }
                return End::TimedOut;
            }
            _ = beat.tick() => {
                if cancel_asked.load(std::sync::atomic::Ordering::SeqCst) {
                    if log.phase_now() != "export" {
                        return End::Cancelled;
                    }
                    if !cancel_seen {
                        cancel_seen = true;
                        log.line("cancel asked during the export: the export finishes first");
                    }
                }
            }
        }
    }
}

/// Aborts a task when dropped.
/// A spawned task that does not outlive its owner.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The build log, which also releases the build's reservation when the
/// export starts (from then on the export's own pushes are checked).
struct ReleasingLog<'a> {
    log: &'a DbLog,
    state: &'a AppState,
    project: &'a str,
    build_id: &'a str,
    released: &'a std::sync::atomic::AtomicBool,
}

impl BuildLog for ReleasingLog<'_> {
    fn phase(&self, name: &str) {
        self.log.phase(name);
    }

    fn line(&self, text: &str) {
        self.log.line(text);
    }

    fn egress_refused(&self, rule: slipway_builder::egress::Rule) {
        self.log.egress_refused(rule);
    }

    fn before_export(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if !self
                .released
                .swap(true, std::sync::atomic::Ordering::SeqCst)
                && let Err(e) = self
                    .state
                    .meta
                    .build_release(self.project, self.build_id)
                    .await
            {
                tracing::warn!(build = %self.build_id, error = %e, "cannot release a build's reservation");
            }
        })
    }
}

/// The sentence a failed build ends with. The registry's refusals keep
/// their own words (the quota's sentence above all).
pub fn reason_of(e: &BuildError) -> String {
    let registry = match e {
        BuildError::Registry(r) => Some(r),
        BuildError::Export(slipway_builder::export::ExportError::Registry(r)) => Some(r),
        _ => None,
    };
    if let Some(OciError::Refused { message, .. }) = registry
        && message.starts_with("quota exceeded")
    {
        return message.clone();
    }
    e.to_string()
}

/// The directory where a worker builds `id` (for cleanup and tests).
pub fn work_dir(state: &AppState, id: &str) -> PathBuf {
    state.config.build_cache_dir().join("work").join(id)
}
