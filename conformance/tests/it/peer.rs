//! Our conformance suite against Debian's `docker-registry` (CNCF
//! distribution 2.8): it must fail exactly the checks for the faults that
//! registry really has — proof that the suite is strict, and that it does
//! not fail what distribution gets right.
//!
//! The registry runs as a child process on a free loopback port, with a
//! temporary configuration (filesystem storage in a temporary directory,
//! deletes enabled, no auth, warnings only, no access log); the test waits
//! for `/v2/` to answer, under a deadline, and kills it when done.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use slipway_conformance::Target;

const BINARY: &str = "/usr/bin/docker-registry";
const READY_DEADLINE: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// The checks distribution 2.8 fails, and why (seen on Debian 12's
/// 2.8.2+ds1).
const KNOWN_FAULTS: &[(&str, &str)] = &[
    (
        "pull/blob-range-unknown-unit",
        "Range: items=0-9 is answered 416 (with a short body), not ignored",
    ),
    (
        "pull/blob-range-unsatisfiable",
        "its 416 announces a Content-Length the body never fills",
    ),
    (
        "push/chunk-out-of-order",
        "a chunk that skips ahead is accepted (202), not refused with 416",
    ),
    (
        "push/first-chunk-not-zero",
        "a first chunk starting at 100 is accepted (202), not refused with 416",
    ),
    (
        "push/final-chunk-out-of-order",
        "an out-of-order final chunk in the closing PUT is 400 DIGEST_INVALID, not 416",
    ),
    (
        "push/upload-unknown",
        "an unknown upload session is BLOB_UPLOAD_INVALID, not BLOB_UPLOAD_UNKNOWN",
    ),
    (
        "manifest/subject-header",
        "no referrers support: no OCI-Subject header",
    ),
    (
        "discovery/tags-list",
        "tags come in storage order, not lexical order",
    ),
    ("discovery/tags-n", "`n` is ignored"),
    ("discovery/tags-last", "`last` is ignored"),
    (
        "discovery/tags-link",
        "no pagination, no Link header (a MAY; this suite requires it)",
    ),
    ("discovery/tags-n-zero", "n=0 lists every tag"),
    ("discovery/referrers-list", "no referrers API (404)"),
    ("discovery/referrers-filter", "no referrers API (404)"),
    (
        "discovery/referrers-empty-artifact-type",
        "no referrers API (404)",
    ),
    (
        "discovery/referrers-unknown-subject",
        "no referrers API (404)",
    ),
    (
        "discovery/referrers-invalid-digest",
        "no referrers API (404, not 400)",
    ),
    (
        "management/delete-tag",
        "deleting a tag is refused: 400 DIGEST_INVALID \
         (the spec allows refusing; this suite requires tag deletion)",
    ),
    (
        "management/referrers-after-delete",
        "no referrers API (404)",
    ),
    (
        "errors/name-invalid",
        "an upper-case name is a plain-text 404, not 400 NAME_INVALID",
    ),
    (
        "errors/content-range-malformed",
        "Content-Range: abc is accepted (202)",
    ),
    (
        "errors/error-bodies-json",
        "unrouted requests get a plain-text \"404 page not found\" \
         (the spec allows any format; this suite requires the error JSON)",
    ),
];

/// A `docker-registry` child process, killed on drop.
struct Distribution {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Distribution {
    async fn start() -> Distribution {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: this test runs the suite against CNCF distribution 2.8, \
             Debian's docker-registry package (apt-get install docker-registry; \
             ./conformance/test.sh installs it)"
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        // A port taken between our probe and the registry's bind makes it
        // exit at once: try again with another.
        let mut last_log = String::new();
        for attempt in 0..3 {
            let port = free_port();
            let config = dir.path().join(format!("config-{attempt}.yml"));
            std::fs::write(&config, config_text(&dir.path().join("data"), port))
                .expect("config written");
            let log = dir.path().join(format!("registry-{attempt}.log"));
            let out = File::create(&log).expect("log file");
            let mut command = Command::new(BINARY);
            // Distribution reads REGISTRY_* variables over its config file.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("REGISTRY_") {
                    command.env_remove(key);
                }
            }
            let mut child = command
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("log file"))
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("{BINARY} did not start: {e}"));
            let url = format!("http://127.0.0.1:{port}");
            match wait_ready(&mut child, &url).await {
                Ok(()) => {
                    return Distribution {
                        child,
                        url,
                        log,
                        _dir: dir,
                    };
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_log = format!("{e}\n{}", read_log(&log));
                }
            }
        }
        panic!("{BINARY} never became ready:\n{last_log}");
    }

    fn log_text(&self) -> String {
        read_log(&self.log)
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Polls `GET /v2/` until 200, the process exits, or the deadline.
async fn wait_ready(child: &mut Child, url: &str) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("HTTP client");
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            return Err(format!("{BINARY} exited with {status}"));
        }
        if let Ok(r) = http.get(format!("{url}/v2/")).send().await
            && r.status() == reqwest::StatusCode::OK
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{BINARY} did not answer GET /v2/ with 200 within {} s",
                READY_DEADLINE.as_secs()
            ));
        }
        // The interval between polls, not a wait for readiness.
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("local address").port()
}

fn config_text(data: &Path, port: u16) -> String {
    format!(
        "version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: conformance-peer-test
",
        data.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_fails_exactly_its_known_faults() {
    let registry = Distribution::start().await;
    let report = slipway_conformance::run_all(&Target::new(registry.url.clone())).await;
    println!("{report}");

    let failed: Vec<&str> = report.failed_names();
    let unexpected: Vec<String> = report
        .failures()
        .iter()
        .filter(|r| !KNOWN_FAULTS.iter().any(|(name, _)| *name == r.name))
        .map(|r| format!("{}: {}", r.name, r.reason))
        .collect();
    let missed: Vec<String> = KNOWN_FAULTS
        .iter()
        .filter(|(name, _)| !failed.contains(name))
        .map(|(name, why)| format!("{name} ({why})"))
        .collect();
    for (name, _) in KNOWN_FAULTS {
        assert!(
            report.get(name).is_some(),
            "{name} is listed as a known fault but the suite has no such check"
        );
    }
    assert!(
        missed.is_empty() && unexpected.is_empty(),
        "against distribution 2.8 the suite should fail exactly the known faults.\n\
         Known faults it did not find:\n  {}\n\
         Checks that failed but are not known faults:\n  {}\n\n\
         The whole report:\n{report}\n\nThe registry's log:\n{}",
        missed.join("\n  "),
        unexpected.join("\n  "),
        registry.log_text()
    );
}
