//! A server killed with SIGKILL in the middle of 20 concurrent pushes
//! restarts with no corrupted or half-visible blob and no manifest that
//! references a missing blob.
//!
//! The real `slipway` binary runs as a child process over one data
//! directory. Each round restarts it, checks everything left by the previous
//! kill, runs 20 concurrent pushes (see `push`), and kills it at a moment
//! set by the number of chunks acknowledged so far (the later rounds also
//! wait until four requests hold half-sent bodies) — a shared counter, not a
//! timer. A last restart checks what the last kill left. The checks are in
//! `verify`.

pub(crate) mod process;
pub(crate) mod push;
mod verify;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use process::Slipway;
use push::{Ctx, Ledger, PUSHES, Progress};
use verify::{Checker, Counts};

/// When each round kills the server.
struct Moment {
    /// Chunks (`PATCH`es) acknowledged.
    chunks: usize,
    /// Pushes finished (their manifests acknowledged).
    pushed: usize,
    /// Whether every gated request must also be holding its half body.
    gates_held: bool,
}

const MOMENTS: [Moment; 3] = [
    // Early: most pushes are at their first blobs.
    Moment {
        chunks: 1,
        pushed: 0,
        gates_held: false,
    },
    // Midway: layers in flight, a few manifests.
    Moment {
        chunks: 12,
        pushed: 0,
        gates_held: true,
    },
    // Late: most images are whole; the rest are mid-way.
    Moment {
        chunks: 0,
        pushed: 12,
        gates_held: true,
    },
];

/// Longest a round may take to reach its kill.
const ROUND_DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_concurrent_pushes_leaves_no_corrupt_or_half_visible_content() {
    let started = Instant::now();
    let data = tempfile::tempdir().expect("data directory");
    let logs = tempfile::tempdir().expect("log directory");
    let client = process::admin_client();
    let shared = push::shared_layers();
    let mut ledger = Ledger::default();

    let mut total = Counts::default();
    for (round, moment) in MOMENTS.iter().enumerate() {
        let log = logs.path().join(format!("slipway-{round}.log"));
        let server = Slipway::start(data.path(), log).await;
        if round > 0 {
            total.add(check(&client, &server, data.path(), &mut ledger, round).await);
        }

        let images = push::images(round, &shared);
        let gated = images.iter().filter(|i| i.is_gated()).count();
        let progress = Arc::new(Progress::default());
        let (killed_tx, killed_rx) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            client: client.clone(),
            url: server.url.clone(),
            ledger: Arc::new(Mutex::new(std::mem::take(&mut ledger))),
            progress: progress.clone(),
            killed: killed_rx,
        });
        let tasks: Vec<_> = images
            .into_iter()
            .map(|image| tokio::spawn(push::push(ctx.clone(), image)))
            .collect();

        let reached = tokio::time::timeout(ROUND_DEADLINE, async {
            loop {
                let acks = progress.acks.load(Ordering::SeqCst);
                let waiting = progress.gated.load(Ordering::SeqCst);
                let ended = progress.ended.load(Ordering::SeqCst);
                let gates_ok = !moment.gates_held || waiting == gated;
                // The moment has come, or nothing more can happen before the kill.
                let due = acks >= moment.chunks && ended >= moment.pushed && gates_ok;
                if due || ended + waiting >= PUSHES {
                    return (acks, waiting, ended);
                }
                progress.changed.notified().await;
            }
        })
        .await;
        let Ok((acks, waiting, ended)) = reached else {
            panic!(
                "round {round}: within {ROUND_DEADLINE:?} the pushes neither reached {} chunks \
                 acknowledged and {} pushes finished, nor ended; the server's log:\n{}",
                moment.chunks,
                moment.pushed,
                server.log_tail()
            );
        };
        killed_tx.send_replace(true);
        server.kill().await;
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("a push still runs 20 s after the server was killed")
                .expect("a push task panicked");
        }
        ledger = std::mem::take(&mut *ctx.ledger.lock().expect("ledger lock"));
        let failures = std::mem::take(&mut ledger.failures);
        assert!(
            failures.is_empty(),
            "round {round}: the server answered wrongly before it was killed:\n{}",
            failures.join("\n")
        );
        eprintln!(
            "crash round {round}: killed after {acks} acknowledged chunks with {waiting} half-sent \
             bodies; {ended} of {PUSHES} pushes had ended; {} uploads interrupted",
            ledger.open_uploads.len()
        );
    }

    let log = logs.path().join("slipway-last.log");
    let server = Slipway::start(data.path(), log).await;
    total.add(check(&client, &server, data.path(), &mut ledger, MOMENTS.len()).await);
    server.kill().await;
    // Guards against a workload that changed so the kills find nothing.
    assert!(
        total.manifests > 0 && total.blobs > 0 && total.files > 0 && total.resumed > 0,
        "the checks after the kills found too little to check ({total:?})"
    );
    eprintln!(
        "crash: {} kills in {:?}; checked {total:?}",
        MOMENTS.len(),
        started.elapsed()
    );
}

/// Checks the restarted server and its data directory against the ledger.
async fn check(
    client: &reqwest::Client,
    server: &Slipway,
    data_dir: &std::path::Path,
    ledger: &mut Ledger,
    kills: usize,
) -> Counts {
    let mut checker = Checker::new(client, &server.url);
    checker.api(ledger).await;
    checker.data_dir(data_dir, ledger);
    assert!(
        checker.problems.is_empty(),
        "after {kills} kill(s) and a restart, {} problem(s):\n{}\n\nthe restarted server's log:\n{}",
        checker.problems.len(),
        checker.problems.join("\n"),
        server.log_tail()
    );
    eprintln!("crash: after {kills} kill(s): checked {:?}", checker.counts);
    checker.counts
}
