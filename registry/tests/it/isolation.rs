//! The attack suite: builds whose build-time code is hostile, each a real
//! build through the API, each refused or contained, with the build's log
//! and state saying so — and nothing of it left behind: no process, no
//! working file, no tag, no reservation.
//!
//! - A hostile buildpack (in a test builder on the tiny stack) runs a fork
//!   bomb, allocates past the memory limit, writes past the disk limit,
//!   prints past the log limit, and sleeps past the timeout.
//! - An npm `postinstall` script (an app on the bookworm stack) tries the
//!   registry's own port on 127.0.0.1, on `localhost` and on `[::1]`,
//!   PostgreSQL, another loopback address — directly and through the
//!   egress proxy — and reads other processes' `/proc`.
//!
//! The network probes of a hostile buildpack are in
//! `builds_e2e::a_buildpack_cannot_escape_its_sandbox`; the policy's
//! private and metadata ranges in the unit tests of
//! `slipway_builder::egress` (no traffic leaves loopback in any test).

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::builds::git_repo;
use crate::builds_e2e::{build, env_with_stack, log_of, push_script_builder};
use crate::security::Env;

/// The hostile buildpack: what it does is `$ATTACK`. Its processes carry a
/// marker in their command lines (`slipway-attack-<name>`, `sleep 424x`)
/// so the test can look for survivors.
const HOSTILE: &str = r#"#!/usr/bin/env bash
echo "attack: $ATTACK"
case "$ATTACK" in
fork-bomb)
    exec -a slipway-attack-fork-bomb bash -c 'bomb() { sleep 4241 & bomb & }; bomb; wait'
    ;;
memory)
    exec -a slipway-attack-memory bash -c 'x=$(head -c 400000000 /dev/zero | tr "\0" x); echo "held ${#x} bytes"'
    ;;
disk)
    exec -a slipway-attack-disk bash -c 'head -c 200000000 /dev/zero > "$CNB_LAYERS_DIR/big"; sleep 4243'
    ;;
log)
    exec -a slipway-attack-log bash -c 'while :; do echo "spam spam spam spam spam spam spam spam spam spam"; done'
    ;;
timeout)
    exec sleep 4245
    ;;
esac
"#;

/// A build server with small limits, and the hostile builder.
async fn hostile_env(dir: &Path) -> Env {
    let env = env_with_stack("tiny", |c| {
        c.builds.limits.memory_bytes = 256 << 20;
        c.builds.limits.processes = 64;
        c.builds.limits.disk_bytes = 64 << 20;
        c.builds.limits.log_bytes = 256 << 10;
        c.builds.timeout_secs = 20;
    })
    .await;
    push_script_builder(
        &env,
        dir,
        "platform/builder:hostile",
        "test/hostile",
        HOSTILE,
    )
    .await;
    // The project's own process limit, below the server's.
    let (s, v) = env
        .api(
            Method::PATCH,
            "/api/v1/projects/tool-a",
            Some(&env.admin()),
            Some(json!({"build_limits": {"processes": 48}})),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::OK, "{v}");
    assert_eq!(v["build_limits"], json!({"processes": 48}));
    env
}

/// Processes of this machine whose command line names `marker`.
fn survivors(marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(marker) {
                out.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

async fn attack(env: &Env, dir: &Path, name: &str) -> (Value, String) {
    let token = env.build_token("tool-a", name).await;
    let repo = dir.join(format!("app-{name}"));
    git_repo(&repo, &[("README", "hostile\n")]);
    let b = build(
        env,
        "tool-a",
        &token,
        json!({
            "source_url": format!("file://{}", repo.display()),
            "ref": "main",
            "builder": "platform/builder:hostile",
            "env": {"ATTACK": name},
        }),
    )
    .await;
    let log = log_of(env, "tool-a", b["id"].as_str().unwrap(), &token).await;
    (b, log)
}

/// What every contained attack leaves: nothing.
async fn nothing_left(env: &Env, b: &Value, marker: &str) {
    let id = b["id"].as_str().unwrap();
    // No survivor (they are killed with the build; give the kernel a
    // moment to reap them).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = survivors(marker);
        left.extend(survivors("sleep 424"));
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "processes of build {id} outlived it: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !slipway_registry::builds::work_dir(&env.server.state, id).exists(),
        "the build's working files are removed"
    );
    let (s, _, _) = env
        .get(
            &format!("/v2/tool-a/tool-a/manifests/{id}"),
            Some(&env.admin()),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::NOT_FOUND, "nothing is tagged");
    let (_, u) = env
        .api(
            Method::GET,
            "/api/v1/projects/tool-a/usage",
            Some(&env.admin()),
            None,
        )
        .await;
    assert_eq!(u["reserved_bytes"], 0, "the reservation is released: {u}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_builds_are_stopped_at_their_limits_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let env = hostile_env(dir.path()).await;
    let cases = [
        (
            "fork-bomb",
            "the build tried to run more than 48 processes at once and was stopped",
        ),
        (
            "memory",
            "the build used more than 256 MiB of memory and was stopped",
        ),
        (
            "disk",
            "the build wrote more than 64 MiB to its disk and was stopped",
        ),
        (
            "log",
            "the build printed more than 256 KiB of log and was stopped",
        ),
    ];
    for (name, sentence) in cases {
        let started = std::time::Instant::now();
        let (b, log) = attack(&env, dir.path(), name).await;
        assert_eq!(b["state"], "failed", "{name}: {b}\n{log:.4000}");
        assert!(
            b["reason"].as_str().unwrap_or("").contains(sentence),
            "{name}: {b}"
        );
        assert!(log.contains(sentence), "{name}: the log says why");
        assert!(
            log.contains("limits: memory 256 MiB, 48 processes, 1 CPU, disk 64 MiB, log 256 KiB"),
            "{name}: the limits are in the log"
        );
        if name == "log" {
            assert!(
                log.contains("(the log was cut here: builds.limits.log)"),
                "{log:.2000}"
            );
            assert!(
                log.len() < (256 << 10) + (64 << 10),
                "{} bytes of log",
                log.len()
            );
        }
        nothing_left(&env, &b, &format!("slipway-attack-{name}")).await;
        eprintln!("attack {name}: contained in {:?}", started.elapsed());
    }
    // Past the timeout: the existing deadline ends it, and nothing is left.
    let (b, log) = attack(&env, dir.path(), "timeout").await;
    assert_eq!(b["state"], "timed_out", "{b}\n{log}");
    assert!(
        log.contains("the build ran longer than 20 seconds, the limit"),
        "{log}"
    );
    nothing_left(&env, &b, "slipway-attack-timeout").await;
    // The server kept serving all along.
    let (s, _, _) = env
        .get("/v2/tool-a/web/manifests/v1", Some(&env.admin()))
        .await;
    assert_eq!(s, reqwest::StatusCode::OK);
}

/// The npm `postinstall` of the app below: it tries the registry, PostgreSQL
/// and another loopback address, directly and through the egress proxy, and
/// looks for the server among the processes it can see; one line each.
const POSTINSTALL: &str = r#"
const net = require("net");
const fs = require("fs");
const port = +process.env.ATTACK_PORT;
const say = (what, ok) => console.log(`ATTACK ${what}: ${ok ? "POSSIBLE" : "refused"}`);
const direct = (what, host, p) => new Promise((done) => {
  const s = net.connect(p, host);
  s.setTimeout(3000, () => { s.destroy(); say(what, false); done(); });
  s.on("connect", () => { s.destroy(); say(what, true); done(); });
  s.on("error", () => { say(what, false); done(); });
});
const viaProxy = (what, target) => new Promise((done) => {
  const s = net.connect(3128, "127.0.0.1");
  let got = "";
  s.on("connect", () => s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`));
  s.on("data", (d) => { got += d; if (got.includes("\r\n")) { s.destroy(); say(what, / 200 /.test(got.split("\r\n")[0])); done(); } });
  s.on("error", () => { say(what, false); done(); });
  s.setTimeout(5000, () => { s.destroy(); say(what, false); done(); });
});
(async () => {
  await direct("direct-registry", "127.0.0.1", port);
  await direct("direct-registry-v6", "::1", port);
  await direct("direct-postgres", "127.0.0.1", 5432);
  await viaProxy("proxy-registry", `127.0.0.1:${port}`);
  await viaProxy("proxy-registry-localhost", `localhost:${port}`);
  await viaProxy("proxy-registry-v6", `[::1]:${port}`);
  await viaProxy("proxy-postgres", "127.0.0.1:5432");
  await viaProxy("proxy-other-loopback", `127.0.0.2:${port}`);
  const seen = fs.readdirSync("/proc").filter((d) => /^\d+$/.test(d)).map((p) => {
    try { return fs.readFileSync(`/proc/${p}/cmdline`, "utf8").replace(/\0/g, " "); } catch { return ""; }
  });
  say("see-server-process", seen.some((c) => /slipwa[y] serve|\/deps\/i[t]-/.test(c)));
  console.log(`ATTACK processes visible: ${seen.length}`);
})();
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_npm_postinstall_script_cannot_reach_the_host() {
    let env = env_with_stack("bookworm", |_| {}).await;
    env.server.create_project("tool-npm", true).await;
    let token = env.build_token("tool-npm", "ci").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("app");
    let package = r#"{"name": "tool-npm", "version": "1.0.0", "private": true, "scripts": {"postinstall": "node attack.js", "start": "node -e 0"}}"#;
    let lock = r#"{"name": "tool-npm", "version": "1.0.0", "lockfileVersion": 3, "requires": true, "packages": {"": {"name": "tool-npm", "version": "1.0.0"}}}"#;
    git_repo(
        &repo,
        &[
            ("package.json", package),
            ("package-lock.json", lock),
            ("attack.js", POSTINSTALL),
        ],
    );
    let port = env.server.addr.port();
    let b = build(
        &env,
        "tool-npm",
        &token,
        json!({
            "source_url": format!("file://{}", repo.display()),
            "ref": "main",
            "env": {"ATTACK_PORT": port.to_string()},
        }),
    )
    .await;
    let log = log_of(&env, "tool-npm", b["id"].as_str().unwrap(), &token).await;
    assert_eq!(b["state"], "succeeded", "{b}\n{log}");
    for what in [
        "direct-registry",
        "direct-registry-v6",
        "direct-postgres",
        "proxy-registry",
        "proxy-registry-localhost",
        "proxy-registry-v6",
        "proxy-postgres",
        "proxy-other-loopback",
        "see-server-process",
    ] {
        assert!(
            log.contains(&format!("ATTACK {what}: refused")),
            "{what}:\n{log}"
        );
    }
    assert!(!log.contains("POSSIBLE"), "{log}");
    for refusal in [
        format!("egress: refused egress to 127.0.0.1:{port}: loopback"),
        format!("egress: refused egress to localhost:{port} (127.0.0.1): loopback"),
        format!("egress: refused egress to [::1]:{port}: loopback"),
        "egress: refused egress to 127.0.0.1:5432: loopback".to_owned(),
        format!("egress: refused egress to 127.0.0.2:{port}: loopback"),
    ] {
        assert!(log.contains(&refusal), "{refusal}:\n{log}");
    }
    // Counted in the metrics, by rule.
    let (_, _, metrics) = env.get("/metrics", None).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("slipway_build_egress_refused_total{rule=\"loopback\"}"),
        "{metrics}"
    );
}

/// A project's own build limits: set, shown, checked (a bad one changes
/// nothing), and returned to the server's with null.
#[tokio::test]
async fn project_build_limits_are_checked_and_reset() {
    let env = Env::with(|c| c.builds.workers = 0).await;
    let patch = |body: Value| {
        let env = &env;
        async move {
            env.api(
                Method::PATCH,
                "/api/v1/projects/tool-a",
                Some(&env.admin()),
                Some(body),
            )
            .await
        }
    };
    let (s, v) = patch(json!({"build_limits": {"memory_bytes": 1u64 << 30, "cpus": 0.5}})).await;
    assert_eq!(s, reqwest::StatusCode::OK, "{v}");
    assert_eq!(
        v["build_limits"],
        json!({"memory_bytes": 1u64 << 30, "cpus": 0.5})
    );
    for (body, sentence) in [
        (
            json!({"public": true, "build_limits": {"cpus": 4096.0}}),
            "build_limits.cpus is 4096, but must be above 0 and at most this machine's",
        ),
        (
            json!({"build_limits": {"processes": 0}}),
            "build_limits.processes must be between 16 and",
        ),
        (
            json!({"build_limits": {"memory_bytes": 1u64 << 50}}),
            "more than this machine has",
        ),
        (json!({"build_limits": {"swap": 1}}), ""),
    ] {
        let (s, v) = patch(body.clone()).await;
        assert!(s.is_client_error(), "{body}: {s} {v}");
        assert!(v.to_string().contains(sentence), "{body}: {v}");
    }
    let (_, v) = env
        .api(
            Method::GET,
            "/api/v1/projects/tool-a",
            Some(&env.admin()),
            None,
        )
        .await;
    assert_eq!(v["public"], false, "a refused update changed nothing");
    assert_eq!(
        v["build_limits"],
        json!({"memory_bytes": 1u64 << 30, "cpus": 0.5})
    );
    let (s, v) = patch(json!({"build_limits": {"memory_bytes": null, "cpus": null}})).await;
    assert_eq!(s, reqwest::StatusCode::OK, "{v}");
    assert_eq!(v["build_limits"], json!({}));
}

/// A source on a git HTTP server is fetched by Slipway through its source
/// proxy, under the source policy: refused while its address (loopback) is
/// refused — when the build is asked for, before git runs —, built once
/// the site allows that address (`allow_cidrs`: here 127.0.0.2, a stand-in
/// for a forge on a private network; the registry is on 127.0.0.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_source_is_fetched_through_the_source_policy() {
    let dir = tempfile::tempdir().unwrap();
    // A bare repository served by "dumb" HTTP from 127.0.0.2.
    let work = dir.path().join("work");
    git_repo(&work, &[("public/index.html", "<h1>over http</h1>\n")]);
    let bare = dir.path().join("srv/tool.git");
    for args in [
        vec![
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
        vec!["-C", bare.to_str().unwrap(), "update-server-info"],
    ] {
        let out = std::process::Command::new("git")
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log_path = dir.path().join("http.log");
    let mut server = tokio::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.2",
            &port.to_string(),
        ])
        .current_dir(dir.path().join("srv"))
        .stderr(std::fs::File::create(&log_path).unwrap())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.2:{port}/tool.git");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{url}/HEAD")).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the git HTTP server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Refused: 127.0.0.2 is loopback.
    let refusing = env_with_stack("tiny", |_| {}).await;
    let token = refusing.build_token("tool-a", "ci").await;
    let (s, v) = refusing
        .api(
            Method::POST,
            "/api/v1/projects/tool-a/builds",
            Some(&token),
            Some(json!({"source_url": url, "ref": "main"})),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v.to_string()
            .contains("127.0.0.2 resolves to 127.0.0.2: loopback"),
        "{v}"
    );
    let requests_before = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !requests_before.contains("tool.git/info/refs"),
        "git was not run against a refused source: {requests_before}"
    );

    // Allowed for this site: fetched (through the proxy) and built.
    let allowing = env_with_stack("tiny", |c| {
        c.builds.egress.allow_cidrs = vec!["127.0.0.2/32".into()];
    })
    .await;
    let token = allowing.build_token("tool-a", "ci").await;
    let b = build(
        &allowing,
        "tool-a",
        &token,
        json!({"source_url": url, "ref": "main", "image_name": "site"}),
    )
    .await;
    let log = log_of(&allowing, "tool-a", b["id"].as_str().unwrap(), &token).await;
    assert_eq!(b["state"], "succeeded", "{b}\n{log}");
    let requests = std::fs::read_to_string(&log_path).unwrap();
    assert!(requests.contains("GET /tool.git/info/refs"), "{requests}");
    let _ = server.kill().await;
}

/// Where memory and processes cannot be limited (here: a mount namespace
/// whose /sys/fs/cgroup is empty, as root, so setrlimit cannot bound
/// processes either), `slipway serve` refuses to start its build workers,
/// saying why and what to set; with `builds.limits.enforce = false` it
/// starts, and logs that builds run unlimited.
#[tokio::test]
async fn without_cgroups_the_build_workers_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let serve = |extra: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs none /sys/fs/cgroup && exec {} serve --listen 127.0.0.1:{port} --data-dir {}",
                env!("CARGO_BIN_EXE_slipway"),
                dir.path().join("data").display()
            ))
            .env("SLIPWAY_ADMIN_PASSWORD", "pw")
            .env("SLIPWAY_LOG__FILTER", "info");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    };
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::from(serve(&[])).output(),
    )
    .await
    .expect("slipway serve ends by itself")
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("builds cannot be held to their memory and process limits on this machine")
            && err.contains("builds.limits.enforce = false")
            && err.contains("setrlimit: address space only"),
        "{err}"
    );
    // Told to build without them: it starts and says so.
    let mut child =
        tokio::process::Command::from(serve(&[("SLIPWAY_BUILDS__LIMITS__ENFORCE", "false")]))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await
            && r.status() == reqwest::StatusCode::OK
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "it did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.start_kill();
    let out = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("builds.limits.enforce = false: builds run without memory or process limits"),
        "{log}"
    );
}
