//! The fleet rebaser: every tagged image built on a run image moved onto
//! its newest digest, inside the registry, by manifest surgery.
//!
//! For a run image reference (`platform/run:bookworm`) it resolves the
//! current manifest and config, then pages through every tagged image of
//! every project. An image is a *candidate* when its
//! `io.buildpacks.lifecycle.metadata` names a run image digest that is (or
//! was) in the run image's repository, or names the run image among its run
//! image and mirrors. Each candidate goes through the buildpacks rebaser's
//! checks and surgery (`slipway_builder::rebase`); only its new config is
//! written to the blob store (a few KiB), and the new manifest is committed
//! with [`Metadata::rebase_commit`] — no layer is read, copied or uploaded:
//! the new run image's layers are linked into the app's repository.
//!
//! Quota policy: a rebase is admitted even over the project's quota. It adds
//! only a config and a manifest (a few KiB, counted in the usage), and
//! run-image layers from a base project (`platform`) are free; a tool must
//! not stay on a vulnerable base because it is full. Layers that are not
//! free (a run image outside the base projects) are checked like any push.
//!
//! No lost update: a tag moves only if it still points at the manifest that
//! was rebased; an image a build or push replaced meanwhile is reported as
//! skipped and nothing of its rebase is written.
//!
//! Automatic mode (`[rebase] auto_run_images`): a push that moves one of
//! those tags to a new digest queues a fleet rebase onto it
//! ([`Rebaser::queue`]); one task per process runs the queue, one fleet at a
//! time, and pushes that arrive while a fleet runs are folded into one more.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use slipway_builder::rebase::{self as surgery, AppImage, NewBase, Outcome};
use slipway_storage::meta::{
    BuildRecord, BuildSource, NewAuditEntry, NewManifest, RebaseCommitted, RebaseWrite,
    TaggedImage, now_ms,
};
use slipway_storage::{Digest, RepoName, StorageError};

use crate::server::AppState;

/// Repositories read per page of tagged images (a page's rebases are
/// committed in one transaction).
const PAGE_REPOS: u32 = 1000;
/// A project's images checked and written together.
const COMMIT_BATCH: usize = 200;

/// Called between reading a page's images and committing their rebases.
pub type BeforeCommit =
    std::sync::Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// What to rebase onto, and how.
#[derive(Clone)]
pub struct FleetRequest {
    /// `platform/run:bookworm` (a tag, or `@sha256:…`).
    pub run_image: String,
    /// Compute the report; write nothing.
    pub dry_run: bool,
    /// Rebase images that do not list the run image's name (the other
    /// checks still apply).
    pub force: bool,
    /// Who asked: `admin`, or `auto` for automatic mode.
    pub requested_by: String,
    pub remote_addr: Option<String>,
    /// Runs after each page's images are read and their configs stored,
    /// before the commit: tests race a push against a rebase with it.
    pub before_commit: Option<BeforeCommit>,
}

/// A fleet rebase's report.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetReport {
    pub run_image: String,
    /// The run image's manifest digest the images were rebased onto.
    pub run_image_digest: String,
    pub dry_run: bool,
    pub force: bool,
    /// Tagged images looked at.
    pub scanned: usize,
    /// Rebased (in a dry run: would be), old digest → new digest.
    pub rebased: Vec<ImageReport>,
    /// Already on the run image's digest.
    pub current: Vec<ImageReport>,
    /// Left as they are, with the reason (a check failed, or the image
    /// changed meanwhile).
    pub skipped: Vec<ImageReport>,
    /// Could not be rebased, with the reason.
    pub failed: Vec<ImageReport>,
    pub seconds: f64,
}

/// One image in a report.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
pub struct ImageReport {
    pub repository: String,
    pub tags: Vec<String>,
    /// The image's manifest digest before.
    pub digest: String,
    /// Its digest after (rebased only).
    pub new_digest: Option<String>,
    /// The run image digest it was built on (or last rebased onto).
    pub old_base: Option<String>,
    /// Why it was skipped or failed.
    pub reason: Option<String>,
}

/// Why a fleet rebase cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0:.200} is not a run image reference such as platform/run:bookworm")]
    BadReference(String),
    #[error("the run image {0} does not exist in this registry")]
    RunImageUnknown(String),
    #[error(transparent)]
    InvalidBase(#[from] surgery::InvalidBase),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The automatic mode's queue and the lock that runs one fleet at a time.
#[derive(Default)]
pub struct Rebaser {
    /// One fleet rebase that writes at a time in this process.
    running: tokio::sync::Mutex<()>,
    pending: Mutex<BTreeSet<String>>,
    wake: tokio::sync::Notify,
    /// Automatic fleets finished (for tests and logs).
    finished: tokio::sync::watch::Sender<u64>,
}

impl Rebaser {
    /// Queues a fleet rebase onto `run_image` (a configured name); a name
    /// already queued is not queued twice.
    pub fn queue(&self, run_image: &str) {
        self.pending
            .lock()
            .expect("rebase queue")
            .insert(run_image.to_owned());
        self.wake.notify_one();
    }

    /// The number of automatic fleets finished so far, to wait on.
    pub fn finished(&self) -> tokio::sync::watch::Receiver<u64> {
        self.finished.subscribe()
    }

    /// Runs a fleet rebase (one that writes waits for any other to end).
    pub async fn run(
        &self,
        state: &AppState,
        req: &FleetRequest,
    ) -> Result<FleetReport, FleetError> {
        let _one = if req.dry_run {
            None
        } else {
            Some(self.running.lock().await)
        };
        fleet(state, req).await
    }
}

/// Which configured automatic run image, if any, `repo:tag` is.
pub fn auto_run_image<'a>(state: &'a AppState, repo: &RepoName, tag: &str) -> Option<&'a str> {
    let pushed = format!("{repo}:{tag}");
    state
        .config
        .rebase
        .auto_run_images
        .iter()
        .find(|n| surgery::name_listed(&pushed, std::slice::from_ref(*n)))
        .map(String::as_str)
}

/// The automatic mode's task: runs queued fleet rebases, one at a time.
pub async fn auto_worker(state: AppState) {
    loop {
        state.rebase.wake.notified().await;
        loop {
            let next = {
                let mut q = state.rebase.pending.lock().expect("rebase queue");
                q.pop_first()
            };
            let Some(run_image) = next else { break };
            let req = FleetRequest {
                run_image: run_image.clone(),
                dry_run: false,
                force: false,
                requested_by: "auto".into(),
                remote_addr: None,
                before_commit: None,
            };
            match state.rebase.run(&state, &req).await {
                Ok(r) => tracing::info!(
                    run_image = %r.run_image,
                    oci.digest = %r.run_image_digest,
                    rebased = r.rebased.len(),
                    current = r.current.len(),
                    skipped = r.skipped.len(),
                    failed = r.failed.len(),
                    duration_ms = (r.seconds * 1000.0) as u64,
                    "automatic fleet rebase done"
                ),
                Err(e) => {
                    tracing::warn!(run_image = %run_image, error = %e, "automatic fleet rebase failed")
                }
            }
            state.rebase.finished.send_modify(|n| *n += 1);
        }
    }
}

/// `[host/]repo[:tag|@digest]` → (repository, tag or digest).
fn split_reference(s: &str) -> Result<(RepoName, String), FleetError> {
    let bad = || FleetError::BadReference(s.to_owned());
    let s = s.trim();
    // A leading registry host is ignored: this registry is the one asked.
    let s = match s.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            rest
        }
        _ => s,
    };
    let (name, reference) = if let Some((n, d)) = s.split_once('@') {
        (n, d.to_owned())
    } else {
        match s.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t.to_owned()),
            _ => (s, "latest".to_owned()),
        }
    };
    let repo = RepoName::parse(name).map_err(|_| bad())?;
    if reference.contains(':') {
        reference.parse::<Digest>().map_err(|_| bad())?;
    } else if !slipway_storage::names::valid_tag(&reference) {
        return Err(bad());
    }
    Ok((repo, reference))
}

/// The run image: its manifest and config, checked.
async fn resolve_base(
    state: &AppState,
    run_image: &str,
) -> Result<(RepoName, NewBase), FleetError> {
    let (repo, reference) = split_reference(run_image)?;
    let record = if reference.contains(':') {
        let d: Digest = reference
            .parse()
            .map_err(|_| FleetError::BadReference(run_image.into()))?;
        state.meta.manifest_by_digest(&repo, &d).await?
    } else {
        state.meta.manifest_by_tag(&repo, &reference).await?
    }
    .ok_or_else(|| FleetError::RunImageUnknown(run_image.to_owned()))?;
    let invalid = |reason: String| surgery::InvalidBase {
        name: run_image.to_owned(),
        reason,
    };
    let config_digest = config_digest(&record.body)
        .ok_or_else(|| invalid("its manifest names no config (is it an index?)".into()))?;
    let config = state
        .blobs
        .read_all(&config_digest)
        .await
        .map_err(|e| invalid(format!("its config {config_digest} cannot be read: {e}")))?;
    // The name images list: the reference without a digest.
    let name = if reference.contains(':') {
        repo.to_string()
    } else {
        format!("{repo}:{reference}")
    };
    let base = NewBase::parse(&name, record.digest.as_str(), &record.body, &config)?;
    Ok((repo, base))
}

fn config_digest(manifest: &[u8]) -> Option<Digest> {
    #[derive(Deserialize)]
    struct M {
        config: Option<C>,
    }
    #[derive(Deserialize)]
    struct C {
        digest: String,
    }
    serde_json::from_slice::<M>(manifest)
        .ok()?
        .config?
        .digest
        .parse()
        .ok()
}

/// What became of one image before anything is written.
enum Looked {
    /// Not built on this run image: not part of the report.
    Unrelated,
    Current(ImageReport),
    Skipped(ImageReport),
    Failed(ImageReport),
    Rebase(Box<Pending>),
}

struct Pending {
    image: TaggedImage,
    repo: RepoName,
    report: ImageReport,
    rebased: surgery::Rebased,
}

fn report_of(image: &TaggedImage, old_base: Option<String>) -> ImageReport {
    ImageReport {
        repository: image.repository.clone(),
        tags: image.tags.clone(),
        digest: image.digest.clone(),
        new_digest: None,
        old_base,
        reason: None,
    }
}

fn with_reason(mut r: ImageReport, reason: impl Into<String>) -> ImageReport {
    r.reason = Some(reason.into());
    r
}

/// Reads an image's config and decides (pure after the read).
async fn look(
    state: &AppState,
    base: &NewBase,
    run_repo: &RepoName,
    run_digests: &HashSet<String>,
    force: bool,
    image: TaggedImage,
) -> Looked {
    if image.repository == run_repo.as_str() {
        return Looked::Unrelated;
    }
    let Some(config_digest) = config_digest(&image.body) else {
        return index_on_base(state, base, run_digests, image).await;
    };
    let config = match state.blobs.read_all(&config_digest).await {
        Ok(c) => c,
        Err(e) => {
            // Unreadable: whether it is built on the run image cannot be
            // told, so it is reported rather than passed over in silence.
            tracing::warn!(oci.repo = %image.repository, oci.digest = %image.digest, error = %e, "rebase: cannot read an image's config");
            return Looked::Failed(with_reason(
                report_of(&image, None),
                format!("its config {config_digest} cannot be read: {e}"),
            ));
        }
    };
    let Some(info) = surgery::base_info(&config) else {
        return Looked::Unrelated; // not built with buildpacks
    };
    let related =
        run_digests.contains(&info.digest) || surgery::name_listed(&base.name, &info.names);
    if !related {
        return Looked::Unrelated;
    }
    let report = report_of(&image, Some(info.digest.clone()).filter(|d| !d.is_empty()));
    let app = AppImage {
        media_type: &image.media_type,
        manifest: &image.body,
        config: &config,
    };
    match surgery::rebase(&app, base, force) {
        Ok(Outcome::Current) => Looked::Current(report),
        Ok(Outcome::Rebased(rebased)) => {
            let repo = match RepoName::parse(&image.repository) {
                Ok(r) => r,
                Err(e) => return Looked::Failed(with_reason(report, e.to_string())),
            };
            let mut report = report;
            report.new_digest = Some(rebased.manifest_digest.clone());
            Looked::Rebase(Box::new(Pending {
                image,
                repo,
                report,
                rebased: *rebased,
            }))
        }
        Err(why) => Looked::Skipped(with_reason(report, format!("skipped: {why}"))),
    }
}

/// An image index (multi-arch) is not rebased: its images' run image would
/// have to be an index of the same platforms, and the index rewritten with
/// them. When one of its images is built on the run image, the index is
/// reported as skipped with that reason, not passed over in silence.
async fn index_on_base(
    state: &AppState,
    base: &NewBase,
    run_digests: &HashSet<String>,
    image: TaggedImage,
) -> Looked {
    #[derive(Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Child>,
    }
    #[derive(Deserialize)]
    struct Child {
        digest: String,
    }
    let Ok(index) = serde_json::from_slice::<Index>(&image.body) else {
        return Looked::Unrelated;
    };
    let Ok(repo) = RepoName::parse(&image.repository) else {
        return Looked::Unrelated;
    };
    let mut on_new_base = None;
    for child in index.manifests {
        let Ok(digest) = child.digest.parse::<Digest>() else {
            continue;
        };
        let Ok(Some(m)) = state.meta.manifest_by_digest(&repo, &digest).await else {
            continue;
        };
        let Some(config) = config_digest(&m.body) else {
            continue;
        };
        let Ok(config) = state.blobs.read_all(&config).await else {
            continue;
        };
        let Some(info) = surgery::base_info(&config) else {
            continue;
        };
        if run_digests.contains(&info.digest) || surgery::name_listed(&base.name, &info.names) {
            let current = info.digest == base.digest;
            let report = report_of(&image, Some(info.digest).filter(|d| !d.is_empty()));
            if current {
                // On the new run image; another of its images may not be.
                on_new_base = Some(report);
                continue;
            }
            return Looked::Skipped(with_reason(
                report,
                format!(
                    "skipped: an image index (multi-arch) whose image {digest} is built on this \
                     run image; indexes are not rebased, rebuild it"
                ),
            ));
        }
    }
    match on_new_base {
        Some(report) => Looked::Current(report),
        None => Looked::Unrelated,
    }
}

/// Runs a fleet rebase (see the module documentation).
pub async fn fleet(state: &AppState, req: &FleetRequest) -> Result<FleetReport, FleetError> {
    let started = Instant::now();
    let (run_repo, base) = resolve_base(state, &req.run_image).await?;
    let run_digests: HashSet<String> = state
        .meta
        .repo_manifest_digests(&run_repo)
        .await?
        .into_iter()
        .collect();
    let concurrency = state.config.rebase.concurrency.max(1);
    let mut report = FleetReport {
        run_image: base.name.clone(),
        run_image_digest: base.digest.clone(),
        dry_run: req.dry_run,
        force: req.force,
        scanned: 0,
        rebased: Vec::new(),
        current: Vec::new(),
        skipped: Vec::new(),
        failed: Vec::new(),
        seconds: 0.0,
    };
    // Pages are pipelined: while a page's manifests are committed, the next
    // pages are read, looked at, their configs claimed and stored (the
    // database's writer, the readers and the blob store work at once). One
    // page waits for the commit at most.
    let mut phases = Phases::default();
    let (to_commit, mut queue) = tokio::sync::mpsc::channel::<Batches>(1);
    // Its own task, so that it goes on while this one works on the next
    // page (and not longer than this one runs: an abandoned fleet rebase
    // stops after the page it is committing, which is written whole or not
    // at all).
    let mut committer = crate::builds::AbortOnDrop(tokio::spawn({
        let (state, req) = (state.clone(), req.clone());
        async move {
            let mut done = Vec::new();
            let mut took = std::time::Duration::ZERO;
            while let Some(batches) = queue.recv().await {
                let t = Instant::now();
                done.push(commit(&state, &req, batches).await);
                took += t.elapsed();
            }
            (done, took)
        }
    }));
    let reader = async {
        let to_commit = to_commit;
        let mut sources: HashMap<String, HashMap<String, Vec<BuildSource>>> = HashMap::new();
        let mut after = 0;
        loop {
            let t = Instant::now();
            let page = state
                .meta
                .tagged_images(after, PAGE_REPOS, None, None)
                .await?;
            phases.scan += t.elapsed();
            report.scanned += page.images.len();
            let t = Instant::now();
            let looked: Vec<Looked> = futures::stream::iter(page.images)
                .map(|image| look(state, &base, &run_repo, &run_digests, req.force, image))
                .buffer_unordered(concurrency)
                .collect()
                .await;
            phases.look += t.elapsed();
            let mut pending = Vec::new();
            for l in looked {
                match l {
                    Looked::Unrelated => {}
                    Looked::Current(r) => report.current.push(r),
                    Looked::Skipped(r) => report.skipped.push(r),
                    Looked::Failed(r) => report.failed.push(r),
                    Looked::Rebase(p) => pending.push(*p),
                }
            }
            if req.dry_run {
                report.rebased.extend(pending.into_iter().map(|p| p.report));
            } else if !pending.is_empty() {
                let t = Instant::now();
                let claimed = claim(state, pending, &mut report).await?;
                phases.claim += t.elapsed();
                let t = Instant::now();
                let stored = store(state, req, &base, claimed, &mut sources, &mut report).await?;
                phases.store += t.elapsed();
                if to_commit.send(stored).await.is_err() {
                    break; // the committer is gone: nothing more can be written
                }
            }
            match page.next {
                Some(next) => after = next,
                None => break,
            }
        }
        Ok::<(), FleetError>(())
    };
    let read = reader.await;
    let (committed, commit_took) = (&mut committer.0)
        .await
        .map_err(|e| StorageError::Io(std::io::Error::other(format!("the commit task: {e}"))))?;
    phases.commit = commit_took;
    // What was committed is reported even when reading a later page failed.
    for c in committed {
        c.merge_into(&mut report);
    }
    read?;
    for list in [
        &mut report.rebased,
        &mut report.current,
        &mut report.skipped,
        &mut report.failed,
    ] {
        list.sort_by(|a, b| (&a.repository, &a.digest).cmp(&(&b.repository, &b.digest)));
    }
    report.seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        run_image = %report.run_image,
        scanned = report.scanned,
        rebased = report.rebased.len(),
        seconds = report.seconds,
        scan_s = phases.scan.as_secs_f64(),
        look_s = phases.look.as_secs_f64(),
        claim_s = phases.claim.as_secs_f64(),
        store_s = phases.store.as_secs_f64(),
        commit_s = phases.commit.as_secs_f64(),
        "fleet rebase finished"
    );
    if !req.dry_run {
        let audit = NewAuditEntry {
            principal: req.requested_by.clone(),
            action: "rebase.fleet".into(),
            project: None,
            target: Some(format!("{}@{}", report.run_image, report.run_image_digest)),
            detail: Some(
                serde_json::json!({
                    "force": req.force,
                    "scanned": report.scanned,
                    "rebased": report.rebased.len(),
                    "current": report.current.len(),
                    "skipped": report.skipped.len(),
                    "failed": report.failed.len(),
                })
                .to_string(),
            ),
            remote_addr: req.remote_addr.clone(),
        };
        state.meta.audit(&audit).await?;
    }
    Ok(report)
}

/// Where a fleet rebase's time went (logged when it ends). Commits run
/// while the next pages are read and stored.
#[derive(Default)]
struct Phases {
    scan: std::time::Duration,
    look: std::time::Duration,
    claim: std::time::Duration,
    store: std::time::Duration,
    commit: std::time::Duration,
}

/// One project's rebases, ready to commit.
type Batches = Vec<(String, Vec<(RebaseWrite, ImageReport)>)>;

/// What commits gave, to merge into the report.
#[derive(Default)]
struct Committed {
    rebased: Vec<ImageReport>,
    skipped: Vec<ImageReport>,
    failed: Vec<ImageReport>,
}

impl Committed {
    fn merge_into(self, report: &mut FleetReport) {
        report.rebased.extend(self.rebased);
        report.skipped.extend(self.skipped);
        report.failed.extend(self.failed);
    }
}

/// Claims the new configs (GC leaves them alone until they are linked).
async fn claim(
    state: &AppState,
    pending: Vec<Pending>,
    report: &mut FleetReport,
) -> Result<Vec<(Pending, Digest)>, FleetError> {
    let mut claims = Vec::with_capacity(pending.len());
    let mut claimed = Vec::with_capacity(pending.len());
    for p in pending {
        match p.rebased.config_digest.parse::<Digest>() {
            Ok(d) => {
                claims.push((d.clone(), p.rebased.config.len() as u64));
                claimed.push((p, d));
            }
            Err(e) => report
                .failed
                .push(with_reason(p.report, format!("its new config digest: {e}"))),
        }
    }
    state.meta.rebase_claim(&claims).await?;
    Ok(claimed)
}

/// Stores the claimed configs and makes the writes, grouped by project.
async fn store(
    state: &AppState,
    req: &FleetRequest,
    base: &NewBase,
    claimed: Vec<(Pending, Digest)>,
    sources: &mut HashMap<String, HashMap<String, Vec<BuildSource>>>,
    report: &mut FleetReport,
) -> Result<Batches, FleetError> {
    let blobs: Vec<(Digest, Bytes)> = claimed
        .iter()
        .map(|(p, d)| (d.clone(), Bytes::from(p.rebased.config.clone())))
        .collect();
    let results = state
        .blobs
        .put_many(blobs, state.config.rebase.concurrency)
        .await;
    let stored = claimed
        .into_iter()
        .zip(results)
        .map(|((p, d), r)| (p, d, r));

    let now = now_ms();
    let mut by_project: HashMap<String, Vec<(RebaseWrite, ImageReport)>> = HashMap::new();
    for (p, config, stored) in stored {
        if let Err(e) = stored {
            report.failed.push(with_reason(
                p.report,
                format!("its new config could not be stored: {e}"),
            ));
            continue;
        }
        let project = p.repo.project().to_owned();
        if !sources.contains_key(&project) {
            let s = state.meta.build_sources(&project).await?;
            sources.insert(project.clone(), s);
        }
        let image_name = p
            .repo
            .as_str()
            .strip_prefix(&format!("{project}/"))
            .unwrap_or(p.repo.as_str())
            .to_owned();
        let source = sources[&project].get(&image_name).and_then(|list| {
            list.iter()
                .find(|s| s.image_digest.as_deref() == Some(p.image.digest.as_str()))
                .or_else(|| list.first())
        });
        match write_of(req, base, &p, config, &project, &image_name, source, now) {
            Ok(w) => by_project.entry(project).or_default().push((w, p.report)),
            Err(why) => report.failed.push(with_reason(p.report, why)),
        }
    }
    let mut batches: Batches = by_project.into_iter().collect();
    batches.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(batches)
}

/// Commits a page's rebased manifests in one transaction, in batches of
/// one project's images.
async fn commit(state: &AppState, req: &FleetRequest, batches: Batches) -> Committed {
    let mut out = Committed::default();
    if batches.is_empty() {
        return out;
    }
    if let Some(hook) = &req.before_commit {
        hook().await;
    }
    // One transaction for the page: fewer, larger commits.
    let mut calls: Vec<(String, Vec<RebaseWrite>)> = Vec::new();
    let mut reports: Vec<Vec<ImageReport>> = Vec::new();
    for (project, items) in batches {
        let mut items = items.into_iter();
        loop {
            let chunk: Vec<(RebaseWrite, ImageReport)> =
                items.by_ref().take(COMMIT_BATCH).collect();
            if chunk.is_empty() {
                break;
            }
            let (writes, r): (Vec<RebaseWrite>, Vec<ImageReport>) = chunk.into_iter().unzip();
            calls.push((project.clone(), writes));
            reports.push(r);
        }
    }
    let results = match state.meta.rebase_commit_projects(&calls).await {
        Ok(r) => r,
        Err(e) => {
            // The page's transaction failed as a whole: nothing of it is
            // written.
            tracing::warn!(error = %e, "rebase: committing a page failed");
            for mut r in reports.into_iter().flatten() {
                r.new_digest = None;
                out.failed
                    .push(with_reason(r, format!("the commit failed: {e}")));
            }
            return out;
        }
    };
    for (batch, results) in reports.into_iter().zip(results) {
        for (mut r, result) in batch.into_iter().zip(results) {
            match result {
                RebaseCommitted::Done { tags, .. } => {
                    r.tags = tags;
                    out.rebased.push(r);
                }
                RebaseCommitted::Moved => {
                    r.new_digest = None;
                    out.skipped.push(with_reason(
                        r,
                        "changed meanwhile, skipped: a build or push moved its tags \
                         after it was read; nothing was written",
                    ));
                }
                RebaseCommitted::Refused(e) => {
                    r.new_digest = None;
                    out.failed.push(with_reason(r, e.to_string()));
                }
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn write_of(
    req: &FleetRequest,
    base: &NewBase,
    p: &Pending,
    config: Digest,
    project: &str,
    image_name: &str,
    source: Option<&BuildSource>,
    now: i64,
) -> Result<RebaseWrite, String> {
    let r = &p.rebased;
    let parsed = crate::manifest::parse(Some(&r.media_type), &r.manifest)
        .map_err(|e| format!("the rebased manifest is not valid: {e:?}"))?;
    // Computed by the surgery from these bytes; not hashed again.
    let digest: Digest = r
        .manifest_digest
        .parse()
        .map_err(|e| format!("the rebased manifest's digest: {e}"))?;
    let old_digest: Digest = p
        .image
        .digest
        .parse()
        .map_err(|e| format!("its digest: {e}"))?;
    let mut link = Vec::with_capacity(r.base_layers.len());
    for l in &r.base_layers {
        link.push(
            l.digest
                .parse::<Digest>()
                .map_err(|e| format!("a run image layer's digest: {e}"))?,
        );
    }
    let id = {
        let u = uuid::Uuid::new_v4().simple().to_string();
        format!("b{}", &u[..12])
    };
    let source = source.cloned().unwrap_or_default();
    let mut log = vec![
        format!(
            "rebased {}@{} onto {}@{}",
            p.repo, p.image.digest, base.name, base.digest
        ),
        format!(
            "run image layers: top {} replaced by {} ({} layers); {} app layers kept",
            r.old_top_layer,
            r.new_top_layer,
            r.base_layers.len(),
            r.app_layers.len()
        ),
        format!(
            "new image {}@{} (config {})",
            p.repo, digest, r.config_digest
        ),
    ];
    if let Some(names) = &r.renamed_from {
        log.push(format!(
            "forced: it listed {} as its run image; it now names {}",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            },
            base.name
        ));
    }
    log.push(format!("requested by {}", req.requested_by));
    let detail = serde_json::json!({
        "new_digest": digest.as_str(),
        "run_image": base.name,
        "run_image_digest": base.digest,
        "old_base": r.old_base_digest,
        "forced": r.renamed_from.is_some(),
        "requested_by": req.requested_by,
    });
    Ok(RebaseWrite {
        repo: p.repo.clone(),
        repo_id: p.image.repo_id,
        old_digest,
        manifest: NewManifest {
            digest: digest.clone(),
            media_type: parsed.media_type,
            body: Bytes::from(r.manifest.clone()),
            artifact_type: parsed.artifact_type,
            subject: parsed.subject,
            annotations: parsed.annotations,
            refs: parsed.refs,
            tag: None,
        },
        config,
        link,
        build: BuildRecord {
            id,
            project: project.to_owned(),
            image_name: image_name.to_owned(),
            source_url: source.source_url,
            git_ref: source.git_ref,
            git_commit: source.git_commit,
            builder: source.builder,
            env: if source.env.is_empty() {
                "{}".into()
            } else {
                source.env
            },
            state: "succeeded".into(),
            reason: None,
            image_digest: Some(digest.to_string()),
            requested_by: req.requested_by.clone(),
            created_at: now,
            started_at: Some(now),
            finished_at: Some(now),
            worker: None,
            cancel_requested: false,
            inputs: source.inputs,
            git_tree: source.git_tree,
            ..Default::default()
        },
        log,
        audit: NewAuditEntry {
            principal: crate::auth::BUILDER.into(),
            action: "image.rebase".into(),
            project: Some(project.to_owned()),
            target: Some(format!("{}@{}", p.repo, p.image.digest)),
            detail: Some(detail.to_string()),
            remote_addr: req.remote_addr.clone(),
        },
    })
}

/// The report for people: a summary line, then one line per image.
pub fn report_text(r: &FleetReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let verb = if r.dry_run { "would rebase" } else { "rebased" };
    let _ = writeln!(
        out,
        "Fleet rebase onto {}@{}{}{}: {} images scanned in {:.2} s.",
        r.run_image,
        r.run_image_digest,
        if r.dry_run { " (dry run)" } else { "" },
        if r.force { " (forced)" } else { "" },
        r.scanned,
        r.seconds
    );
    let _ = writeln!(
        out,
        "{} {verb}, {} already current, {} skipped, {} failed.",
        r.rebased.len(),
        r.current.len(),
        r.skipped.len(),
        r.failed.len()
    );
    let name = |i: &ImageReport| {
        if i.tags.is_empty() {
            i.repository.clone()
        } else {
            format!("{}:{}", i.repository, i.tags.join(","))
        }
    };
    let short = |d: &str| d.get(..19).unwrap_or(d).to_owned();
    for i in &r.rebased {
        let _ = writeln!(
            out,
            "  {verb:<12} {}  {} → {}",
            name(i),
            short(&i.digest),
            short(i.new_digest.as_deref().unwrap_or("?"))
        );
    }
    for i in &r.current {
        let _ = writeln!(out, "  {:<12} {}  {}", "current", name(i), short(&i.digest));
    }
    for (label, list) in [("skipped", &r.skipped), ("failed", &r.failed)] {
        for i in list {
            let _ = writeln!(
                out,
                "  {label:<12} {}  {}: {}",
                name(i),
                short(&i.digest),
                i.reason.as_deref().unwrap_or("")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let ok = [
            ("platform/run:bookworm", "platform/run", "bookworm"),
            ("platform/run", "platform/run", "latest"),
            ("127.0.0.1:5000/platform/run:v2", "platform/run", "v2"),
            ("registry.example/platform/run", "platform/run", "latest"),
            (
                "platform/run@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "platform/run",
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ),
        ];
        for (input, repo, reference) in ok {
            let (r, t) = split_reference(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!((r.as_str(), t.as_str()), (repo, reference), "{input}");
        }
        for bad in [
            "",
            "Platform/Run:x",
            "platform/run:-x",
            "platform/run@sha256:12",
        ] {
            assert!(split_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn report_text_lists_every_image() {
        let img = |repo: &str, reason: Option<&str>| ImageReport {
            repository: repo.into(),
            tags: vec!["latest".into()],
            digest: format!("sha256:{}", "a".repeat(64)),
            new_digest: Some(format!("sha256:{}", "b".repeat(64))),
            old_base: None,
            reason: reason.map(str::to_owned),
        };
        let r = FleetReport {
            run_image: "platform/run:bookworm".into(),
            run_image_digest: "sha256:cc".into(),
            dry_run: true,
            force: false,
            scanned: 4,
            rebased: vec![img("tool-a/web", None)],
            current: vec![img("tool-b/web", None)],
            skipped: vec![img(
                "tool-c/web",
                Some("skipped: it is marked io.buildpacks.rebasable=false"),
            )],
            failed: vec![],
            seconds: 0.5,
        };
        let text = report_text(&r);
        assert!(text.contains("(dry run)"), "{text}");
        assert!(
            text.contains("1 would rebase, 1 already current, 1 skipped, 0 failed"),
            "{text}"
        );
        assert!(
            text.contains("tool-a/web:latest  sha256:aaaaaaaaaaaa → sha256:bbbbbbbbbbbb"),
            "{text}"
        );
        assert!(
            text.contains("tool-c/web:latest  sha256:aaaaaaaaaaaa: skipped: it is marked"),
            "{text}"
        );
    }
}
