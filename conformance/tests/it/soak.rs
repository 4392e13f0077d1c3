//! A soak under faults, single node: for `SLIPWAY_SOAK_SECS` (45 in CI; run
//! it for longer by hand, see the README) 32 pullers, 8 pushers of new and
//! shared layers into projects near their quota, a deleter, a GC every
//! 30 s, builds on the tiny stack (back to back) and a fleet rebase onto a
//! patched run image (every third of the soak, at most every two minutes)
//! run against the real `slipway` binary, while it is SIGKILLed and
//! restarted at random moments. With two replicas, the same workload while
//! their PostgreSQL and SeaweedFS are stopped in turn.
//!
//! Invariants, checked after each restart and at the end:
//! - every manifest whose push (or build, or rebase) was acknowledged is
//!   pullable with its bytes (and its blobs with theirs) until it is
//!   deleted;
//! - the integrity check finds nothing: no blob a manifest references is
//!   missing or damaged, usage equals a recount, SQLite's integrity check
//!   passes (stray bytes a kill left between GC's two steps, and rows of
//!   uploads a kill interrupted before their bytes were published, are
//!   counted, and the final repair must leave nothing);
//! - no project is over its quota, but for what rebases added (a config
//!   and a manifest per image: the allowance the README documents);
//! - at the end: every build ended, and no upload or reservation is left
//!   once the (short) idle limits have passed.
//!
//! It prints the counts (operations, restarts, violations — which must be
//! 0) and the throughput.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::RwLock;

use crate::crash::process::{Slipway, admin_client};
use crate::crash::push::sha256;

mod builds;

const PULLERS: usize = 32;
const PUSHERS: usize = 8;
const PROJECTS: usize = 4;
/// Each project's quota: a few dozen images fit, then pushes are refused
/// until the deleter makes room.
const QUOTA: u64 = 12 << 20;

/// An image whose push was acknowledged.
#[derive(Clone)]
struct Pushed {
    repo: String,
    digest: String,
    manifest: Vec<u8>,
    /// (digest, bytes) of its config and layers.
    blobs: Vec<(String, Arc<Vec<u8>>)>,
}

#[derive(Default)]
struct Ledger {
    live: Vec<Pushed>,
    /// Digests whose DELETE was sent (acknowledged or not): no longer
    /// promised.
    deleting: std::collections::HashSet<String>,
}

#[derive(Default)]
struct Counts {
    pushes: AtomicU64,
    refused: AtomicU64,
    pulls: AtomicU64,
    blob_pulls: AtomicU64,
    deletes: AtomicU64,
    gcs: AtomicU64,
    /// Requests that met a server being killed or restarted.
    unreachable: AtomicU64,
    /// Stored bytes recorded nowhere that fsck saw: what a kill between
    /// GC's two steps leaves (wasted space, not lost data; `fsck --repair`
    /// removes it, as the end of the soak checks).
    stray: AtomicU64,
    /// Blob rows without bytes that nothing uses, past their claim window:
    /// uploads a kill interrupted between claiming the blob and publishing
    /// it (a row, not lost data; the repair forgets it).
    leftovers: AtomicU64,
    /// Builds the server accepted, and those that succeeded.
    builds: AtomicU64,
    builds_ok: AtomicU64,
    /// Fleet rebases answered, and the images they rebased.
    rebases: AtomicU64,
    rebased: AtomicU64,
}

struct Soak {
    /// The servers (one, or the replicas), asked in turn.
    urls: RwLock<Vec<String>>,
    next: std::sync::atomic::AtomicUsize,
    http: reqwest::Client,
    ledger: std::sync::Mutex<Ledger>,
    counts: Counts,
    violations: std::sync::Mutex<Vec<String>>,
    stop: AtomicBool,
    shared: Vec<Arc<Vec<u8>>>,
    /// The last transport error, for messages.
    last_error: std::sync::Mutex<String>,
    builds: std::sync::Mutex<builds::Ledger>,
}

impl Soak {
    fn stop_now(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn violation(&self, what: String) {
        eprintln!("soak: VIOLATION: {what}");
        self.violations.lock().unwrap().push(what);
    }

    async fn url(&self) -> String {
        let urls = self.urls.read().await;
        urls[self.next.fetch_add(1, Ordering::Relaxed) % urls.len()].clone()
    }

    /// A request that met a server being restarted, or a database or store
    /// that is down (503): not a violation, nothing promised.
    fn unreachable(&self) {
        self.counts.unreachable.fetch_add(1, Ordering::Relaxed);
    }

    /// `unreachable`, remembering why (for the sweep's message).
    fn unreachable_because(&self, why: String) {
        *self.last_error.lock().unwrap() = why;
        self.unreachable();
    }
}

/// `len` pseudo-random bytes from `seed` (the crash test's generator).
fn random(seed: u64, len: usize) -> Vec<u8> {
    crate::crash::push::Blob::random(seed, len).bytes.to_vec()
}

async fn push_one(s: &Soak, worker: usize, n: u64) -> Result<(), ()> {
    let project = format!("tool-soak{}", (worker + n as usize) % PROJECTS);
    let repo = format!("{project}/app{}", worker % 3);
    let own = Arc::new(random(
        (worker as u64) << 32 | n,
        (64 << 10) + (n as usize % 4) * (32 << 10),
    ));
    let shared = s.shared[(worker + n as usize) % s.shared.len()].clone();
    let config = Arc::new(
        json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "n": format!("{worker}-{n}")})
            .to_string()
            .into_bytes(),
    );
    let url = s.url().await;
    let blobs = vec![
        (sha256(&config), config.clone()),
        (sha256(&shared), shared.clone()),
        (sha256(&own), own.clone()),
    ];
    for (d, b) in &blobs {
        let r = s
            .http
            .post(format!("{url}/v2/{repo}/blobs/uploads/?digest={d}"))
            .body(b.as_ref().clone())
            .send()
            .await;
        match r {
            Ok(r) if r.status() == StatusCode::CREATED => {}
            Ok(r) if r.status() == StatusCode::FORBIDDEN => {
                s.counts.refused.fetch_add(1, Ordering::Relaxed);
                return Err(());
            }
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                s.unreachable();
                return Err(());
            }
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                s.violation(format!("blob upload to {repo} answered {status}: {body}"));
                return Err(());
            }
            Err(_) => {
                s.counts.unreachable.fetch_add(1, Ordering::Relaxed);
                return Err(());
            }
        }
    }
    let desc = |d: &str, b: &[u8], mt: &str| json!({"mediaType": mt, "digest": d, "size": b.len()});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc(&blobs[0].0, &blobs[0].1, "application/vnd.oci.image.config.v1+json"),
        "layers": [desc(&blobs[1].0, &blobs[1].1, "application/vnd.oci.image.layer.v1.tar"),
                   desc(&blobs[2].0, &blobs[2].1, "application/vnd.oci.image.layer.v1.tar")],
    })
    .to_string()
    .into_bytes();
    let digest = sha256(&manifest);
    let r = s
        .http
        .put(format!("{url}/v2/{repo}/manifests/{digest}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await;
    match r {
        Ok(r) if r.status() == StatusCode::CREATED => {
            s.counts.pushes.fetch_add(1, Ordering::Relaxed);
            s.ledger.lock().unwrap().live.push(Pushed {
                repo,
                digest,
                manifest,
                blobs,
            });
            Ok(())
        }
        Ok(r) if r.status() == StatusCode::FORBIDDEN => {
            s.counts.refused.fetch_add(1, Ordering::Relaxed);
            Err(())
        }
        Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
            s.unreachable();
            Err(())
        }
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            s.violation(format!("manifest PUT to {repo} answered {status}: {body}"));
            Err(())
        }
        Err(_) => {
            s.counts.unreachable.fetch_add(1, Ordering::Relaxed);
            Err(())
        }
    }
}

/// Pulls `p` (its manifest, and one blob or all), checking the bytes.
/// `false` when the server could not be reached.
async fn pull(s: &Soak, p: &Pushed, all_blobs: bool, pick: usize) -> bool {
    let url = s.url().await;
    let r = s
        .http
        .get(format!("{url}/v2/{}/manifests/{}", p.repo, p.digest))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await;
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            s.unreachable_because(format!("GET manifest: {e:?}"));
            return false;
        }
    };
    let status = r.status();
    let body = match r.bytes().await {
        Ok(b) => b,
        Err(e) => {
            s.unreachable_because(format!("manifest body: {e:?}"));
            return false;
        }
    };
    let deleting = || s.ledger.lock().unwrap().deleting.contains(&p.digest);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        s.unreachable_because("503 for a manifest".into());
        return false;
    }
    if status != StatusCode::OK || body.as_ref() != p.manifest.as_slice() {
        if !deleting() {
            s.violation(format!(
                "acknowledged manifest {}@{} answered {status} ({} bytes)",
                p.repo,
                p.digest,
                body.len()
            ));
        }
        return true;
    }
    s.counts.pulls.fetch_add(1, Ordering::Relaxed);
    let which: Vec<&(String, Arc<Vec<u8>>)> = if all_blobs {
        p.blobs.iter().collect()
    } else {
        vec![&p.blobs[pick % p.blobs.len()]]
    };
    for (d, bytes) in which {
        let r = s
            .http
            .get(format!("{url}/v2/{}/blobs/{d}", p.repo))
            .send()
            .await;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                s.unreachable_because(format!("GET blob: {e:?}"));
                return false;
            }
        };
        let status = r.status();
        match r.bytes().await {
            Ok(b) if status == StatusCode::OK && b.as_ref() == bytes.as_slice() => {
                s.counts.blob_pulls.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) if status == StatusCode::SERVICE_UNAVAILABLE => {
                s.unreachable_because(format!("503 for blob {d}"));
                return false;
            }
            Ok(b) => {
                if !deleting() {
                    s.violation(format!(
                        "blob {d} of acknowledged {}@{} answered {status} ({} bytes)",
                        p.repo,
                        p.digest,
                        b.len()
                    ));
                }
            }
            Err(e) => {
                s.unreachable_because(format!("blob body: {e:?}"));
                return false;
            }
        }
    }
    true
}

fn sample(s: &Soak, at: usize) -> Option<Pushed> {
    let l = s.ledger.lock().unwrap();
    (!l.live.is_empty()).then(|| l.live[at % l.live.len()].clone())
}

/// Every acknowledged image, whole; then fsck and the quotas.
async fn check_all(s: &Soak, when: &str) {
    use futures::StreamExt;
    let began = Instant::now();
    let live: Vec<Pushed> = s.ledger.lock().unwrap().live.clone();
    // Sixteen at a time; a transport error (a keep-alive connection closed
    // as it was reused) or a 503 is tried again (for up to 10 s) before it
    // counts.
    let unanswered = futures::stream::iter(live.iter())
        .map(|p| async move {
            // A store just restarted may answer 503 for a few seconds.
            for _ in 0..40 {
                if pull(s, p, true, 0).await {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            true
        })
        .buffer_unordered(16)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    if unanswered > 0 {
        s.violation(format!(
            "{when}: the server did not answer the sweep for {unanswered} images: {}",
            s.last_error.lock().unwrap()
        ));
        return;
    }
    // The integrity check, once the stores answer (503 until then).
    let mut r = Value::Null;
    for _ in 0..40 {
        let url = s.url().await;
        if let Ok(resp) = s
            .http
            .post(format!("{url}/api/v1/fsck"))
            // It re-hashes every blob: minutes, once the store holds thousands.
            .timeout(Duration::from_secs(600))
            .json(&json!({}))
            .send()
            .await
            && resp.status() == StatusCode::OK
        {
            r = resp.json().await.expect("fsck's report");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if !r["problems"].is_array() {
        s.violation(format!("{when}: fsck did not answer within 10 s"));
    }
    for p in r["problems"].as_array().into_iter().flatten() {
        let p = p.as_str().unwrap_or_default();
        if p.ends_with("is in the store but recorded nowhere") {
            s.counts.stray.fetch_add(1, Ordering::Relaxed);
        } else if p.ends_with(
            "was claimed by an upload that never finished: it has no bytes and nothing uses it",
        ) {
            s.counts.leftovers.fetch_add(1, Ordering::Relaxed);
        } else {
            s.violation(format!("{when}: fsck: {p}"));
        }
    }
    let url = s.url().await;
    let usage: Value = s
        .http
        .get(format!("{url}/api/v1/usage"))
        .send()
        .await
        .expect("usage answered")
        .json()
        .await
        .expect("usage JSON");
    for u in usage.as_array().into_iter().flatten() {
        let allowance = u["project"]
            .as_str()
            .and_then(|p| s.builds.lock().unwrap().rebase_allowance.get(p).copied())
            .unwrap_or(0);
        if let (Some(used), Some(quota)) = (u["used_bytes"].as_u64(), u["quota_bytes"].as_u64())
            && used > quota + allowance
        {
            s.violation(format!(
                "{when}: {} uses {used} bytes of {quota} (rebases added {allowance})",
                u["project"]
            ));
        }
    }
    eprintln!(
        "soak: {when}: {} acknowledged images pulled whole, fsck {} ({:.1} s)",
        live.len(),
        r["problems"],
        began.elapsed().as_secs_f64()
    );
}

fn secs() -> u64 {
    std::env::var("SLIPWAY_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(45)
}

fn new_soak(urls: Vec<String>) -> Arc<Soak> {
    Arc::new(Soak {
        urls: RwLock::new(urls),
        next: Default::default(),
        http: admin_client(),
        ledger: Default::default(),
        counts: Counts::default(),
        violations: Default::default(),
        stop: AtomicBool::new(false),
        shared: (0..4)
            .map(|i| Arc::new(random(1000 + i, 256 << 10)))
            .collect(),
        last_error: Default::default(),
        builds: Default::default(),
    })
}

async fn create_projects(soak: &Soak) {
    let url = soak.url().await;
    for i in 0..PROJECTS {
        let r = soak
            .http
            .post(format!("{url}/api/v1/projects"))
            .json(&json!({"name": format!("tool-soak{i}"), "public": true, "quota_bytes": QUOTA}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
}

/// The pushers, pullers, deleter and GC.
fn spawn_workers(soak: &Arc<Soak>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for w in 0..PUSHERS {
        let s = soak.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !s.stop.load(Ordering::Relaxed) {
                if push_one(&s, w, n).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                n += 1;
            }
        }));
    }
    for w in 0..PULLERS {
        let s = soak.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w * 7919;
            while !s.stop.load(Ordering::Relaxed) {
                i += 1;
                match sample(&s, i) {
                    Some(p) => {
                        if !pull(&s, &p, false, i).await {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    {
        // The deleter: keeps the projects below their quota.
        let s = soak.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !s.stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(150)).await;
                i += 1;
                let victim = {
                    let mut l = s.ledger.lock().unwrap();
                    if l.live.len() < 12 {
                        continue;
                    }
                    let at = (i * 31) % l.live.len();
                    let p = l.live.remove(at);
                    l.deleting.insert(p.digest.clone());
                    p
                };
                let url = s.url().await;
                let r = s
                    .http
                    .delete(format!(
                        "{url}/v2/{}/manifests/{}",
                        victim.repo, victim.digest
                    ))
                    .send()
                    .await;
                let what = format!(
                    "DELETE {url}/v2/{}/manifests/{}",
                    victim.repo, victim.digest
                );
                if builds::expect(&s, r, StatusCode::ACCEPTED, &what)
                    .await
                    .is_some()
                {
                    s.counts.deletes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    {
        // GC every 30 s (and once early).
        let s = soak.clone();
        tasks.push(tokio::spawn(async move {
            let mut first = true;
            while !s.stop.load(Ordering::Relaxed) {
                let wait = if first { 8 } else { 30 };
                first = false;
                for _ in 0..wait * 10 {
                    if s.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let url = s.url().await;
                match s
                    .http
                    .post(format!("{url}/api/v1/gc"))
                    .json(&json!({"retention": false}))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == StatusCode::OK => {
                        s.counts.gcs.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => s.unreachable(),
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        s.violation(format!("GC answered {status}: {body}"))
                    }
                    Err(_) => {
                        s.counts.unreachable.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    tasks
}

/// A pause of 3 to 10 s, from a generator of the test's own (no sleep
/// past the soak's end).
async fn pause(rng: &mut u64, started: Instant, secs: u64) -> bool {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let left = Duration::from_secs(secs).saturating_sub(started.elapsed());
    tokio::time::sleep(Duration::from_millis(3000 + *rng % 7000).min(left)).await;
    started.elapsed() < Duration::from_secs(secs)
}

/// Once the workload stopped, no upload or reservation stays: the server
/// removes idle uploads and expired reservations by itself (the soak's
/// limits are seconds; the janitor runs at half of them).
async fn check_drained(s: &Soak) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let url = s.url().await;
        let left: Vec<String> = match s.http.get(format!("{url}/api/v1/usage")).send().await {
            Ok(r) if r.status() == StatusCode::OK => r
                .json::<Value>()
                .await
                .expect("usage JSON")
                .as_array()
                .into_iter()
                .flatten()
                .filter(|u| u["uploading_bytes"] != 0 || u["reserved_bytes"] != 0)
                .map(|u| {
                    format!(
                        "{}: {} bytes uploading, {} reserved",
                        u["project"], u["uploading_bytes"], u["reserved_bytes"]
                    )
                })
                .collect(),
            _ => vec!["the usage did not answer".into()],
        };
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            s.violation(format!(
                "uploads or reservations stuck 90 s after the workload ended: {}",
                left.join("; ")
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Stops the workers, checks everything a last time, prints the counts,
/// and fails on any violation.
async fn finish(
    soak: Arc<Soak>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
    faults: u32,
    what: &str,
) -> Vec<String> {
    soak.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    builds::check_ended(&soak).await;
    check_drained(&soak).await;
    check_all(&soak, "at the end").await;
    // Stray bytes and rows of interrupted uploads are removed by a repair,
    // after which nothing is wrong. A check may find more of them than the
    // repair before it did (an interrupted upload's claim window runs out
    // in between): then once more, at most three times.
    let url = soak.url().await;
    let fsck = |repair: bool| {
        let (soak, url) = (&soak, &url);
        async move {
            soak.http
                .post(format!("{url}/api/v1/fsck"))
                // It re-hashes every blob: minutes, once the store holds thousands.
                .timeout(Duration::from_secs(600))
                .json(&json!({"repair": repair}))
                .send()
                .await
                .expect("fsck answered")
                .json::<Value>()
                .await
                .expect("its report")
        }
    };
    let harmless = |p: &Value| {
        let p = p.as_str().unwrap_or_default();
        p.ends_with("is in the store but recorded nowhere")
            || p.ends_with(
                "was claimed by an upload that never finished: it has no bytes and nothing uses it",
            )
    };
    let (mut removed, mut forgotten) = (0, 0);
    for round in 1..=3 {
        let repaired = fsck(true).await;
        if repaired["quarantined"] != json!([]) {
            soak.violation(format!("the repair quarantined damaged blobs: {repaired}"));
        }
        removed += repaired["orphans_removed"].as_array().map_or(0, Vec::len);
        forgotten += repaired["leftovers_removed"].as_array().map_or(0, Vec::len);
        let after = fsck(false).await;
        let problems = after["problems"].as_array().cloned().unwrap_or_default();
        if problems.is_empty() {
            break;
        }
        if round == 3 || !problems.iter().all(harmless) {
            soak.violation(format!("after the repair: {}", after["problems"]));
            break;
        }
    }

    let c = &soak.counts;
    let ops = c.pushes.load(Ordering::Relaxed)
        + c.refused.load(Ordering::Relaxed)
        + c.pulls.load(Ordering::Relaxed)
        + c.blob_pulls.load(Ordering::Relaxed)
        + c.deletes.load(Ordering::Relaxed)
        + c.gcs.load(Ordering::Relaxed)
        + c.builds.load(Ordering::Relaxed)
        + c.rebases.load(Ordering::Relaxed);
    let violations = soak.violations.lock().unwrap().clone();
    let failures = soak.builds.lock().unwrap().failures.clone();
    let by_project: HashMap<String, usize> =
        soak.ledger
            .lock()
            .unwrap()
            .live
            .iter()
            .fold(HashMap::new(), |mut m, p| {
                *m.entry(p.repo.split('/').next().unwrap().to_owned())
                    .or_default() += 1;
                m
            });
    eprintln!(
        "soak: {:.0} s, {faults} {what}; {} pushes acknowledged, {} refused for \
         quota, {} manifest pulls and {} blob pulls verified, {} deletes, {} GC runs, {} builds \
         ({} succeeded; the others: {failures:?}), {} fleet rebases ({} images rebased), {} \
         requests met a server being restarted or a store down; {} stray blobs seen, {} removed \
         by the final repair; {} rows of interrupted uploads seen, {} forgotten by it; {} images live {by_project:?}; {ops} operations, {:.0} per \
         second; violations: {}",
        elapsed.as_secs_f64(),
        c.pushes.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
        c.pulls.load(Ordering::Relaxed),
        c.blob_pulls.load(Ordering::Relaxed),
        c.deletes.load(Ordering::Relaxed),
        c.gcs.load(Ordering::Relaxed),
        c.builds.load(Ordering::Relaxed),
        c.builds_ok.load(Ordering::Relaxed),
        c.rebases.load(Ordering::Relaxed),
        c.rebased.load(Ordering::Relaxed),
        c.unreachable.load(Ordering::Relaxed),
        c.stray.load(Ordering::Relaxed),
        removed,
        c.leftovers.load(Ordering::Relaxed),
        forgotten,
        by_project.values().sum::<usize>(),
        ops as f64 / elapsed.as_secs_f64(),
        violations.len()
    );
    assert!(faults >= 2, "the soak made only {faults} faults ({what})");
    assert!(c.pushes.load(Ordering::Relaxed) > 0 && c.pulls.load(Ordering::Relaxed) > 0);
    violations
}

/// Fails on violations, keeping the servers' logs (`work`) to read.
fn verdict(violations: Vec<String>, work: Option<tempfile::TempDir>) {
    if violations.is_empty() {
        return;
    }
    let kept = work
        .map(|w| format!("; the servers' logs are kept in {}", w.keep().display()))
        .unwrap_or_default();
    panic!(
        "{} violations{kept}:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_under_sigkills_loses_nothing_acknowledged() {
    let secs = secs();
    let work = tempfile::tempdir().expect("temporary directory");
    let data = work.path().join("data");
    // Short graces so GC collects during the soak; no retention (it would
    // delete acknowledged images on purpose).
    let mut env: Vec<(&str, String)> = [
        ("SLIPWAY_GC__BLOB_GRACE_SECS", "5"),
        ("SLIPWAY_GC__INTERVAL_SECS", "0"),
        ("SLIPWAY_LOG__FILTER", "warn"),
        // Short, so that the end can check that none is left behind.
        ("SLIPWAY_LIMITS__UPLOAD_IDLE_SECS", "10"),
        ("SLIPWAY_QUOTA__RESERVATION_TTL_SECS", "20"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect();
    env.extend(builds::server_env());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut restarts = 0u32;
    let mut server = Slipway::start_with(&data, work.path().join("serve-0.log"), &env).await;
    let soak = new_soak(vec![server.url.clone()]);
    create_projects(&soak).await;
    let builders = builds::start(&soak, work.path(), secs).await;
    let started = Instant::now();
    let mut tasks = spawn_workers(&soak);
    tasks.extend(builders);
    // The faults: SIGKILL at random moments, a restart, the checks.
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    while pause(&mut rng, started, secs).await {
        server.kill().await;
        restarts += 1;
        server = Slipway::start_with(
            &data,
            work.path().join(format!("serve-{restarts}.log")),
            &env,
        )
        .await;
        *soak.urls.write().await = vec![server.url.clone()];
        check_all(&soak, &format!("after restart {restarts}")).await;
    }
    let violations = finish(soak, tasks, started, restarts, "SIGKILLs and restarts").await;
    server.kill().await;
    verdict(violations, Some(work));
}

/// Two replicas over a PostgreSQL and a SeaweedFS of the test's own, which
/// it stops and starts again in turn while the same workload runs against
/// both replicas: requests meanwhile may be refused (503), nothing
/// acknowledged may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_soak_under_database_and_store_outages_loses_nothing_acknowledged() {
    use slipway_storage::testing::{PrivatePostgres, SeaweedFs};
    let secs = secs();
    let pg = PrivatePostgres::start();
    let mut weed = SeaweedFs::start();
    let replicas = slipway_registry::testing::Replicas::start(2, &weed, Some(&pg.url), |c| {
        c.gc.blob_grace_secs = 5;
        c.gc.interval_secs = 0;
        c.limits.upload_idle_secs = 10;
        c.quota.reservation_ttl_secs = 20;
        for (k, v) in builds::server_env() {
            match k {
                "SLIPWAY_BUILDS__ALLOW_LOCAL_SOURCES" => c.builds.allow_local_sources = true,
                "SLIPWAY_BUILDS__DEFAULT_BUILDER" => c.builds.default_builder = v,
                "SLIPWAY_BUILDS__BUILDERS_DIR" => c.builds.builders_dir = v.into(),
                "SLIPWAY_BUILDS__CA_CERTIFICATES" => c.builds.ca_certificates = v.into(),
                _ => unreachable!("{k}"),
            }
        }
        c.auth.admin_password = Some(slipway_registry::config::Secret::new(
            crate::crash::process::ADMIN_PASSWORD,
        ));
    })
    .await;
    let soak = new_soak(replicas.servers.iter().map(|s| s.url.clone()).collect());
    create_projects(&soak).await;
    let work = tempfile::tempdir().expect("temporary directory");
    let builders = builds::start(&soak, work.path(), secs).await;
    let started = Instant::now();
    let mut tasks = spawn_workers(&soak);
    tasks.extend(builders);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut outages = 0u32;
    while pause(&mut rng, started, secs).await {
        outages += 1;
        let what = if outages % 2 == 1 {
            pg.stop();
            tokio::time::sleep(Duration::from_secs(2)).await;
            pg.resume();
            "PostgreSQL"
        } else {
            weed.stop();
            tokio::time::sleep(Duration::from_secs(2)).await;
            weed.resume();
            "SeaweedFS"
        };
        // Back: both replicas answer their readiness check again.
        for url in soak.urls.read().await.iter() {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(r) = soak.http.get(format!("{url}/readyz")).send().await
                    && r.status() == StatusCode::OK
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{url} did not recover from the {what} outage"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        check_all(&soak, &format!("after {what} outage {outages}")).await;
    }
    let violations = finish(
        soak,
        tasks,
        started,
        outages,
        "PostgreSQL and SeaweedFS outages",
    )
    .await;
    replicas.stop().await;
    pg.stop();
    weed.stop();
    verdict(violations, None);
}
