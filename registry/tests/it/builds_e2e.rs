//! Real builds, end to end: the platform's stacks made by
//! `slipway_builder::stack` and pushed into the registry, git repositories
//! built through the build API by the lifecycle in its sandbox, and the
//! images pulled and run by podman (runc), answering over HTTP.
//!
//! The bookworm stack's root file systems come from `SLIPWAY_TEST_STACKS`
//! (conformance/test.sh makes them with mmdebstrap before the tests: these
//! reach only loopback); the tiny stack is made from this machine's static
//! busybox and bash.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use slipway_builder::oci;
use slipway_builder::stack::{self, Options, Stack};

use crate::builds::{git_repo, wait_for_end};
use crate::security::Env;

pub fn stacks_dir() -> PathBuf {
    std::env::var_os("SLIPWAY_TEST_STACKS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/slipway/test-stacks")
        })
}

fn registry_client(env: &Env) -> oci::Client {
    oci::Client::new(
        &format!("http://{}", env.server.addr),
        "admin",
        &env.server.admin_password,
    )
}

/// A server that builds, with `stack` pushed into `platform` and its
/// builder approved and the default.
pub async fn env_with_stack(name: &str, adjust: impl FnOnce(&mut slipway_registry::Config)) -> Env {
    let builder = format!("platform/builder:{name}");
    let b = builder.clone();
    let env = Env::with(move |c| {
        c.builds.allow_local_sources = true;
        c.builds.default_builder = b;
        // Sites (and these machines) whose egress re-signs TLS: the
        // authorities conformance/test.sh found (the host's bundle).
        // One unpacked builder for every test server (the same digest).
        c.builds.builders_dir = stacks_dir().join("builders");
        if let Some(ca) = std::env::var_os("SLIPWAY_TEST_CA_CERTIFICATES") {
            c.builds.ca_certificates = PathBuf::from(ca);
        }
        adjust(c);
    })
    .await;
    env.server.create_project("platform", true).await;
    stack::make(
        &registry_client(&env),
        &Stack::load(name).unwrap(),
        &Options {
            cache_dir: stacks_dir(),
            mirror: None,
            refresh: false,
            offline: true,
            log: Arc::new(|l: &str| eprintln!("stack: {l}")),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    env.approve(&builder).await;
    env
}

/// Starts a build and waits for its end; returns the build.
pub async fn build(env: &Env, project: &str, auth: &str, body: Value) -> Value {
    let (s, v) = env
        .api(
            Method::POST,
            &format!("/api/v1/projects/{project}/builds"),
            Some(auth),
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    wait_for_end(env, project, v["id"].as_str().unwrap(), auth).await
}

pub async fn log_of(env: &Env, project: &str, id: &str, auth: &str) -> String {
    let (s, _, b) = env
        .send(
            Method::GET,
            &format!("/api/v1/projects/{project}/builds/{id}/logs"),
            Some(auth),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    String::from_utf8(b).unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (conformance/test.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// podman, with what this machine needs to run containers (runc, explicit
/// ulimits: see ../shared/MACHINE-NOTES.md).
const PODMAN_RUN: &[&str] = &[
    "--runtime",
    "runc",
    "run",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// Pulls `image` anonymously (a public project) and runs it with `args`
/// before the image name; the container's id. (Images are never removed
/// by these tests: they run at once, share base layers in the machine's
/// podman storage, and a `podman rmi` of one can pull a shared layer from
/// under another test's pull: "layer not known".)
pub fn pull_and_start(image: &str, args: &[&str]) -> String {
    run("podman", &["pull", "-q", "--tls-verify=false", image]);
    let mut all: Vec<&str> = PODMAN_RUN.to_vec();
    all.extend_from_slice(&["-d", "--network", "host"]);
    all.extend_from_slice(args);
    all.push(image);
    run("podman", &all)
}

/// A wheel of the package `greeting` (pure Python), made by hand: the app's
/// only dependency, so that pip needs no index.
fn write_wheel(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let script = r#"
import sys, zipfile
files = {
    "greeting/__init__.py": "def hello(who):\n    return f'hello, {who}, from a wheel'\n",
    "greeting-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: greeting\nVersion: 1.0\n",
    "greeting-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: slipway-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
files["greeting-1.0.dist-info/RECORD"] = "".join(f"{n},,\n" for n in list(files) + ["greeting-1.0.dist-info/RECORD"])
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for name, text in files.items():
        z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), text)
"#;
    run("python3", &["-c", script, path.to_str().unwrap()]);
}

const SERVER_PY: &str = r#"import os
from http.server import BaseHTTPRequestHandler, HTTPServer

import greeting
import six


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{greeting.hello('toolforge')}, six {six.__version__}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8000"))), Hello).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_app_is_built_pulled_run_and_answers_and_its_second_build_uploads_nothing() {
    let env = env_with_stack("bookworm", |_| {}).await;
    env.server.create_project("tool-py", true).await;
    let token = env.build_token("tool-py", "ci").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("app");
    write_wheel(&repo.join("wheels/greeting-1.0-py3-none-any.whl"));
    git_repo(
        &repo,
        &[
            (
                "requirements.txt",
                "./wheels/greeting-1.0-py3-none-any.whl\nsix==1.16.0\n",
            ),
            ("Procfile", "web: python server.py\n"),
            ("server.py", SERVER_PY),
        ],
    );
    let request = json!({
        "source_url": format!("file://{}", repo.display()),
        "ref": "main",
        "image_name": "web",
    });

    let cold = build(&env, "tool-py", &token, request.clone()).await;
    let cold_log = log_of(&env, "tool-py", cold["id"].as_str().unwrap(), &token).await;
    assert_eq!(cold["state"], "succeeded", "{cold}\n{cold_log}");
    assert!(
        cold_log.contains("installing requirements.txt"),
        "{cold_log}"
    );
    // six came from PyPI, through the egress proxy.
    assert!(
        cold_log.contains("egress: ") && cold_log.contains("pypi.org"),
        "{cold_log}"
    );

    // The same commit again is not built: its image is reused.
    let (s, again) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-py/builds",
            Some(&token),
            Some(request.clone()),
        )
        .await;
    assert_eq!(
        (s, again["state"].as_str()),
        (StatusCode::OK, Some("reused")),
        "{again}"
    );
    assert_eq!(again["image_digest"], cold["image_digest"]);
    // Forced, it is built, from the cache.
    let mut forced = request.clone();
    forced["force"] = json!(true);
    let warm = build(&env, "tool-py", &token, forced).await;
    let warm_log = log_of(&env, "tool-py", warm["id"].as_str().unwrap(), &token).await;
    assert_eq!(warm["state"], "succeeded", "{warm}\n{warm_log}");
    // The venv came from the cache, and every layer was in the registry.
    assert!(warm_log.contains("reusing the cached venv"), "{warm_log}");
    // Untouched since the restore: taken as it was, not archived again.
    assert!(
        warm_log.contains("layer slipway/python:venv is as restored from the cache"),
        "{warm_log}"
    );
    assert!(
        warm_log.contains(": 0 layers uploaded (0 bytes)"),
        "{warm_log}"
    );
    // Cold again, with the builder unpacked already: another image name
    // has no cache.
    let mut other = request.clone();
    other["image_name"] = json!("web-again");
    let cold_unpacked = build(&env, "tool-py", &token, other).await;
    assert_eq!(cold_unpacked["state"], "succeeded", "{cold_unpacked}");
    eprintln!(
        "cold build {:.1} s (builder unpacked on first use), warm build {:.1} s, \
         cold build with the builder unpacked {:.1} s",
        cold["duration_secs"].as_f64().unwrap(),
        warm["duration_secs"].as_f64().unwrap(),
        cold_unpacked["duration_secs"].as_f64().unwrap()
    );

    // Pulled and run by podman (anonymously: tool-py is public).
    let image = format!("{}/tool-py/web:latest", env.server.addr);
    let port = free_port();
    let id = pull_and_start(&image, &["-e", &format!("PORT={port}")]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        match reqwest::get(format!("http://127.0.0.1:{port}/")).await {
            Ok(r) => break (r.status(), r.text().await.unwrap()),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                let logs = Command::new("podman").args(["logs", &id]).output().unwrap();
                panic!(
                    "the app does not answer: {e}\n{}{}",
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
        }
    };
    let _ = Command::new("podman").args(["rm", "-f", &id]).output();
    assert_eq!(
        answer,
        (
            StatusCode::OK,
            "hello, toolforge, from a wheel, six 1.16.0".to_owned()
        )
    );
}

/// The selftest buildpack's image runs under podman: the launcher picks the
/// default process or the one named, and applies the launch env files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tiny_stack_builds_an_image_whose_processes_run_under_podman() {
    let env = env_with_stack("tiny", |_| {}).await;
    env.server.create_project("tool-t", true).await;
    let token = env.build_token("tool-t", "ci").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("app");
    git_repo(&repo, &[(".slipway-selftest", "from a test\n")]);
    let b = build(
        &env,
        "tool-t",
        &token,
        json!({"source_url": format!("file://{}", repo.display()), "ref": "v1"}),
    )
    .await;
    let log = log_of(&env, "tool-t", b["id"].as_str().unwrap(), &token).await;
    assert_eq!(b["state"], "succeeded", "{b}\n{log}");
    assert!(log.contains("note = \"from a test\""), "{log}");
    let image = format!("{}/tool-t/tool-t:latest", env.server.addr);
    run("podman", &["pull", "-q", "--tls-verify=false", &image]);
    let mut web: Vec<&str> = PODMAN_RUN.to_vec();
    web.extend_from_slice(&["--rm", &image]);
    assert_eq!(
        run("podman", &web),
        "selftest web: hello, world! PORT=8080 SELFTEST_PATH=/selftest/first"
    );
    let mut worker: Vec<&str> = PODMAN_RUN.to_vec();
    worker.extend_from_slice(&["--rm", "--entrypoint", "/cnb/process/worker", &image]);
    assert_eq!(run("podman", &worker), "selftest worker: hello from bash");
}

/// The tags of `repo`, or none when it does not exist.
async fn tags(env: &Env, repo: &str) -> Vec<String> {
    let (s, v) = env
        .api(
            Method::GET,
            &format!("/v2/{repo}/tags/list"),
            Some(&env.admin()),
            None,
        )
        .await;
    match s {
        StatusCode::OK => v["tags"]
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default(),
        StatusCode::NOT_FOUND => Vec::new(),
        other => panic!("tags list of {repo}: {other} {v}"),
    }
}

/// Builds that cannot succeed end with a state and a sentence, and tag
/// nothing: no buildpack detects, a buildpack fails, the export would go
/// over the quota, the build is cancelled while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_cancelled_builds_say_why_and_tag_nothing() {
    let env = env_with_stack("tiny", |c| c.builds.per_project = 4).await;
    env.server.create_project("tool-bad", false).await;
    let token = env.build_token("tool-bad", "ci").await;
    let dir = tempfile::tempdir().unwrap();
    let source = |name: &str, files: &[(&str, &str)]| {
        let repo = dir.path().join(name);
        git_repo(&repo, files);
        json!({"source_url": format!("file://{}", repo.display()), "ref": "main", "image_name": name})
    };

    // Nothing detects.
    let b = build(
        &env,
        "tool-bad",
        &token,
        source("nothing", &[("README", "hi\n")]),
    )
    .await;
    assert_eq!(b["state"], "failed", "{b}");
    let reason = b["reason"].as_str().unwrap();
    assert!(reason.contains("detect"), "{reason}");
    assert!(tags(&env, "tool-bad/nothing").await.is_empty());

    // A buildpack fails (the Procfile buildpack on a line it cannot read).
    let b = build(
        &env,
        "tool-bad",
        &token,
        source("badproc", &[("Procfile", "this is no process line\n")]),
    )
    .await;
    assert_eq!(b["state"], "failed", "{b}");
    let log = log_of(&env, "tool-bad", b["id"].as_str().unwrap(), &token).await;
    assert!(
        b["reason"].as_str().unwrap().contains("slipway/procfile"),
        "{b}\n{log}"
    );
    assert!(tags(&env, "tool-bad/badproc").await.is_empty());

    // Over the quota at export: the project is empty, so the build starts,
    // but the image (the launcher alone is hundreds of KiB) does not fit.
    let (s, v) = env
        .api(
            Method::PATCH,
            "/api/v1/projects/tool-bad",
            Some(&env.admin()),
            Some(json!({"quota_bytes": 64 * 1024})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let b = build(
        &env,
        "tool-bad",
        &token,
        source("big", &[(".slipway-selftest", "x\n")]),
    )
    .await;
    assert_eq!(b["state"], "failed", "{b}");
    assert!(
        b["reason"]
            .as_str()
            .unwrap()
            .contains("quota exceeded for project tool-bad"),
        "{b}"
    );
    assert!(tags(&env, "tool-bad/big").await.is_empty());
    let (_, usage) = env
        .api(
            Method::GET,
            "/api/v1/projects/tool-bad/usage",
            Some(&env.admin()),
            None,
        )
        .await;
    assert_eq!(usage["used_bytes"], 0, "{usage}");
    let (s, v) = env
        .api(
            Method::PATCH,
            "/api/v1/projects/tool-bad",
            Some(&env.admin()),
            Some(json!({"quota_bytes": null})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Cancelled while its buildpack runs.
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-bad/builds",
            Some(&token),
            Some(source(
                "slow",
                &[
                    (".slipway-selftest", "x\n"),
                    (".slipway-selftest-sleep", "300\n"),
                ],
            )),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !log_of(&env, "tool-bad", &id, &token)
        .await
        .contains("sleeping 300 s")
    {
        assert!(Instant::now() < deadline, "the slow build never started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, v) = env
        .api(
            Method::POST,
            &format!("/api/v1/projects/tool-bad/builds/{id}/cancel"),
            Some(&token),
            None,
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    let started = Instant::now();
    let b = wait_for_end(&env, "tool-bad", &id, &token).await;
    assert_eq!(b["state"], "cancelled", "{b}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the cancel took {:?}",
        started.elapsed()
    );
    assert!(tags(&env, "tool-bad/slow").await.is_empty());
}

const PROBE_BUILD: &str = r#"#!/usr/bin/env bash
# Tries what a buildpack must not be able to do; each line says whether it
# could. The test passes the server's data directory as PROBE_DATA_DIR.
probe() {
    if (eval "$2") >/dev/null 2>&1; then echo "PROBE $1: POSSIBLE"; else echo "PROBE $1: refused"; fi
}
probe list-data-dir 'ls "$PROBE_DATA_DIR" | grep -q .'
probe read-admin-password 'cat "$PROBE_DATA_DIR/admin-password"'
probe write-data-dir 'touch "$PROBE_DATA_DIR/probe"'
probe write-root 'touch /probe'
probe write-cnb 'touch /cnb/probe'
probe write-etc 'touch /etc/probe'
probe write-usr 'touch /usr/bin/probe'
probe write-platform 'touch /platform/probe'
# (The pattern is written so that grep's own command line does not match.)
probe builder-secret-in-env 'env | grep -q "builder-secret-marke[r]"'
probe builder-secret-in-processes 'cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr "\0" "\n" | grep -q "builder-secret-marke[r]"'
probe builder-secret-in-files 'grep -rqs "builder-secret-marke[r]" /platform /workspace /layers /tmp /cnb'
probe see-server-process 'cat /proc/[0-9]*/cmdline 2>/dev/null | tr "\0" " " | grep -q "slipwa[y] serve\|/deps/i[t]-"'
probe be-root '[ "$(id -u)" = 0 ]'
# The network: no way out but the egress proxy, which refuses the
# registry (on every loopback name), PostgreSQL and the rest of 127/8.
probe connect-registry-direct "exec 3<>/dev/tcp/127.0.0.1/$PROBE_REGISTRY_PORT"
probe connect-postgres-direct 'exec 3<>/dev/tcp/127.0.0.1/5432'
via_proxy() {
    exec 3<>/dev/tcp/127.0.0.1/3128 || return 1
    printf 'CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n' "$1" "$1" >&3
    IFS= read -r status <&3
    exec 3>&-
    case "$status" in *" 200 "*) return 0 ;; *) return 1 ;; esac
}
probe proxy-registry "via_proxy 127.0.0.1:$PROBE_REGISTRY_PORT"
probe proxy-registry-localhost "via_proxy localhost:$PROBE_REGISTRY_PORT"
probe proxy-registry-v6 "via_proxy [::1]:$PROBE_REGISTRY_PORT"
probe proxy-postgres 'via_proxy 127.0.0.1:5432'
probe proxy-other-loopback "via_proxy 127.0.0.2:$PROBE_REGISTRY_PORT"
[ "$HTTPS_PROXY" = http://127.0.0.1:3128 ] && [ "$http_proxy" = http://127.0.0.1:3128 ] && echo "PROBE proxy-variables: set"
# What it may do: write its layers, the workspace and /tmp.
probe write-layers 'touch "$CNB_LAYERS_DIR/ok"' | sed 's/POSSIBLE/allowed/'
probe write-tmp 'touch /tmp/ok' | sed 's/POSSIBLE/allowed/'
printf '[[processes]]\ntype = "web"\ncommand = ["true"]\ndefault = true\n' >"$CNB_LAYERS_DIR/launch.toml"
"#;

/// Pushes (into `platform`, on the tiny stack) and approves a builder
/// `image` of one buildpack `id` that always detects and whose build is
/// `script`.
pub async fn push_script_builder(env: &Env, dir: &Path, image: &str, id: &str, script: &str) {
    let bp = dir.join(id.replace('/', "-"));
    std::fs::create_dir_all(bp.join("bin")).unwrap();
    std::fs::write(
        bp.join("buildpack.toml"),
        format!("api = \"0.10\"\n[buildpack]\nid = \"{id}\"\nversion = \"1.0.0\"\n[[targets]]\nos = \"linux\"\n"),
    )
    .unwrap();
    std::fs::write(bp.join("bin/detect"), "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::write(bp.join("bin/build"), script).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["bin/detect", "bin/build"] {
            std::fs::set_permissions(bp.join(f), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    stack::push_builder(
        &registry_client(env),
        &stack::BuilderSpec {
            image,
            build_image: "platform/build:tiny",
            run_image: "platform/run:tiny",
            order: &format!("[[order]]\n[[order.group]]\nid = \"{id}\"\nversion = \"1.0.0\"\n"),
            buildpacks: &[stack::BuildpackFiles::from_dir(&bp).unwrap()],
            description: "a test's buildpack",
            files: &[],
        },
        dir,
        &|_| {},
    )
    .await
    .unwrap();
    env.approve(image).await;
}

/// A buildpack cannot read or write the server's data directory, write
/// outside its layers, the workspace and /tmp, see the builder's registry
/// secret or the server's processes, or be root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buildpack_cannot_escape_its_sandbox() {
    let env = env_with_stack("tiny", |c| {
        c.builds.builder_password =
            slipway_registry::config::Secret::new("builder-secret-marker-5f1c9a");
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    push_script_builder(
        &env,
        dir.path(),
        "platform/builder:probe",
        "test/probe",
        PROBE_BUILD,
    )
    .await;
    let token = env.build_token("tool-a", "ci").await;
    let repo = dir.path().join("app");
    git_repo(&repo, &[("README", "probe\n")]);
    let data_dir = std::fs::canonicalize(env.server.data_dir()).unwrap();
    assert!(data_dir.join("admin-password").exists() || data_dir.is_dir());
    let b = build(
        &env,
        "tool-a",
        &token,
        json!({
            "source_url": format!("file://{}", repo.display()),
            "ref": "main",
            "builder": "platform/builder:probe",
            "env": {
                "PROBE_DATA_DIR": data_dir.display().to_string(),
                "PROBE_REGISTRY_PORT": env.server.addr.port().to_string(),
            },
        }),
    )
    .await;
    let log = log_of(&env, "tool-a", b["id"].as_str().unwrap(), &token).await;
    assert_eq!(b["state"], "succeeded", "{b}\n{log}");
    for p in [
        "list-data-dir",
        "read-admin-password",
        "write-data-dir",
        "write-root",
        "write-cnb",
        "write-etc",
        "write-usr",
        "write-platform",
        "builder-secret-in-env",
        "builder-secret-in-processes",
        "builder-secret-in-files",
        "see-server-process",
        "be-root",
        "connect-registry-direct",
        "connect-postgres-direct",
        "proxy-registry",
        "proxy-registry-localhost",
        "proxy-registry-v6",
        "proxy-postgres",
        "proxy-other-loopback",
    ] {
        assert!(log.contains(&format!("PROBE {p}: refused")), "{p}:\n{log}");
    }
    // The proxy said why, in the build's log.
    let port = env.server.addr.port();
    for refusal in [
        format!("egress: refused egress to 127.0.0.1:{port}: loopback"),
        format!("egress: refused egress to localhost:{port} (127.0.0.1): loopback"),
        format!("egress: refused egress to [::1]:{port}: loopback"),
        "egress: refused egress to 127.0.0.1:5432: loopback".to_owned(),
        format!("egress: refused egress to 127.0.0.2:{port}: loopback"),
    ] {
        assert!(log.contains(&refusal), "{refusal}:\n{log}");
    }
    assert!(log.contains("PROBE proxy-variables: set"), "{log}");
    assert!(log.contains("PROBE write-layers: allowed"), "{log}");
    assert!(log.contains("PROBE write-tmp: allowed"), "{log}");
    assert!(!log.contains("POSSIBLE"), "{log}");
    assert!(!data_dir.join("probe").exists());
}

/// The upstream samples (github.com/buildpacks/samples: hello-world and
/// hello-processes, Buildpack API 0.11, bash) run unchanged: detection with
/// a build plan, the plan given to build, a launch layer and a process the
/// image runs; and apps/bash-script, whose project.toml names its app-local
/// buildpack and excludes it and the README from the app. Not in CI: the samples cannot be committed here and CI does
/// not reach GitHub; run it with a checkout:
/// `SLIPWAY_UPSTREAM_SAMPLES=/path/to/samples cargo test -p slipway-registry
/// --test it upstream_samples -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLIPWAY_UPSTREAM_SAMPLES, a checkout of github.com/buildpacks/samples"]
async fn upstream_sample_buildpacks_run_unchanged() {
    let samples = PathBuf::from(
        std::env::var_os("SLIPWAY_UPSTREAM_SAMPLES")
            .expect("SLIPWAY_UPSTREAM_SAMPLES: a checkout of github.com/buildpacks/samples"),
    );
    let env = env_with_stack("tiny", |_| {}).await;
    let buildpacks: Vec<_> = ["hello-world", "hello-processes"]
        .iter()
        .map(|b| stack::BuildpackFiles::from_dir(&samples.join("buildpacks").join(b)).unwrap())
        .collect();
    let order = buildpacks
        .iter()
        .map(|b| {
            format!(
                "[[order.group]]\nid = \"{}\"\nversion = \"{}\"\n",
                b.id, b.version
            )
        })
        .collect::<String>();
    let dir = tempfile::tempdir().unwrap();
    stack::push_builder(
        &registry_client(&env),
        &stack::BuilderSpec {
            image: "platform/builder:samples",
            build_image: "platform/build:tiny",
            run_image: "platform/run:tiny",
            order: &format!("[[order]]\n{order}"),
            buildpacks: &buildpacks,
            description: "upstream samples",
            files: &[],
        },
        dir.path(),
        &|_| {},
    )
    .await
    .unwrap();
    env.approve("platform/builder:samples").await;
    env.server.create_project("tool-samples", true).await;
    let token = env.build_token("tool-samples", "ci").await;
    let repo = dir.path().join("app");
    git_repo(&repo, &[("README", "samples\n")]);
    let b = build(
        &env,
        "tool-samples",
        &token,
        json!({
            "source_url": format!("file://{}", repo.display()),
            "ref": "main",
            "builder": "platform/builder:samples",
            "env": {"GREETING": "hi"},
        }),
    )
    .await;
    let log = log_of(&env, "tool-samples", b["id"].as_str().unwrap(), &token).await;
    assert_eq!(b["state"], "succeeded", "{b}\n{log}");
    for want in [
        "samples/hello-world@0.0.2 passed detection",
        "---> Hello World buildpack",
        // The platform directory's env/ holds the build variables.
        "GREETING",
        // The plan entry hello-world required (and provided).
        "name = \"some-world\"",
        "---> Hello processes buildpack",
        "---> Adding sys-info process",
    ] {
        assert!(log.contains(want), "{want}:\n{log}");
    }
    let image = format!("{}/tool-samples/tool-samples:latest", env.server.addr);
    run("podman", &["pull", "-q", "--tls-verify=false", &image]);
    let mut sysinfo: Vec<&str> = PODMAN_RUN.to_vec();
    sysinfo.extend_from_slice(&["--rm", "--entrypoint", "/cnb/process/sys-info", &image]);
    let out = run("podman", &sysinfo);
    assert!(out.contains("env vars:") && out.contains("CNB_"), "{out}");

    // apps/bash-script: its project.toml names its app-local buildpack and
    // excludes that buildpack's directory and the README from the app.
    let app = dir.path().join("bash-script");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(samples.join("apps/bash-script"))
        .arg(&app)
        .status()
        .unwrap();
    assert!(copied.success());
    git_repo(&app, &[]);
    let b = build(
        &env,
        "tool-samples",
        &token,
        json!({
            "source_url": format!("file://{}", app.display()),
            "ref": "main",
            "builder": "platform/builder:samples",
            "image_name": "bash-script",
        }),
    )
    .await;
    let log = log_of(&env, "tool-samples", b["id"].as_str().unwrap(), &token).await;
    assert_eq!(b["state"], "succeeded", "{b}\n{log}");
    assert!(log.contains("---> Bash Script buildpack"), "{log}");
    assert!(
        log.contains("project.toml names the buildpacks: samples/bash-script@0.0.1"),
        "{log}"
    );
    let image = format!("{}/tool-samples/bash-script:latest", env.server.addr);
    run("podman", &["pull", "-q", "--tls-verify=false", &image]);
    let mut web: Vec<&str> = PODMAN_RUN.to_vec();
    web.extend_from_slice(&["--rm", &image]);
    let out = run("podman", &web);
    assert!(
        out.contains("Here are the contents of the current working directory"),
        "{out}"
    );
    assert!(out.contains("app.sh"), "{out}");
    assert!(
        !out.contains("README.md") && !out.contains("bash-script-buildpack"),
        "{out}"
    );
}

/// Waits for `http://127.0.0.1:<port><path>` to answer; the status and body.
pub async fn answer(port: u16, path: &str, container: &str) -> (StatusCode, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match reqwest::get(format!("http://127.0.0.1:{port}{path}")).await {
            Ok(r) => return (r.status(), r.text().await.unwrap()),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                let logs = Command::new("podman")
                    .args(["logs", container])
                    .output()
                    .unwrap();
                panic!(
                    "the app does not answer: {e}\n{}{}",
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
        }
    }
}

/// Builds `files` in `project` (public), runs the image with PORT set and
/// returns what `path` answers.
async fn build_and_ask(
    env: &Env,
    project: &str,
    files: &[(&str, &str)],
    path: &str,
) -> (StatusCode, String) {
    env.server.create_project(project, true).await;
    let token = env.build_token(project, "ci").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("app");
    git_repo(&repo, files);
    let b = build(
        env,
        project,
        &token,
        json!({"source_url": format!("file://{}", repo.display()), "ref": "main", "image_name": "web"}),
    )
    .await;
    let log = log_of(env, project, b["id"].as_str().unwrap(), &token).await;
    assert_eq!(b["state"], "succeeded", "{b}\n{log}");
    let image = format!("{}/{project}/web:latest", env.server.addr);
    let port = free_port();
    let id = pull_and_start(&image, &["-e", &format!("PORT={port}")]);
    let got = answer(port, path, &id).await;
    let _ = Command::new("podman").args(["rm", "-f", &id]).output();
    got
}

/// A static site on the tiny stack: served by busybox httpd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_site_is_served_by_its_image() {
    let env = env_with_stack("tiny", |_| {}).await;
    let (s, body) = build_and_ask(
        &env,
        "tool-site",
        &[
            ("public/index.html", "<h1>tool-site</h1>\n"),
            ("README", "x\n"),
        ],
        "/index.html",
    )
    .await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "<h1>tool-site</h1>\n"));
}

/// A Node.js app on the bookworm stack: npm ci of a real dependency from
/// the npm registry (through the egress proxy), the start script as the
/// web process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_app_is_built_and_answers() {
    let env = env_with_stack("bookworm", |_| {}).await;
    let package = r#"{"name": "tool-node", "version": "1.0.0", "private": true, "scripts": {"start": "node server.js"}, "dependencies": {"is-number": "7.0.0"}}"#;
    let lock = r#"{"name": "tool-node", "version": "1.0.0", "lockfileVersion": 3, "requires": true, "packages": {"": {"name": "tool-node", "version": "1.0.0", "dependencies": {"is-number": "7.0.0"}}, "node_modules/is-number": {"version": "7.0.0", "resolved": "https://registry.npmjs.org/is-number/-/is-number-7.0.0.tgz", "integrity": "sha512-41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng==", "engines": {"node": ">=0.12.0"}}}}"#;
    let server = r#"const isNumber = require("is-number"); require("http").createServer((req, res) => res.end("node says hi " + process.version.split(".")[0] + ", 42 is a number: " + isNumber(42))).listen(+process.env.PORT, "127.0.0.1");"#;
    let (s, body) = build_and_ask(
        &env,
        "tool-node",
        &[
            ("package.json", package),
            ("package-lock.json", lock),
            ("server.js", server),
        ],
        "/",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.starts_with("node says hi v"), "{body}");
    assert!(body.ends_with(", 42 is a number: true"), "{body}");
}

/// The blob files of a filesystem-backed test server.
fn blob_files(env: &Env) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&env.server.data_dir().join("blobs/blobs"), &mut out);
    out.sort();
    out
}

async fn manifest(env: &Env, repo: &str, reference: &str) -> (StatusCode, Value) {
    let (s, _, b) = env
        .send(
            Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            Some(&env.admin()),
            Vec::new(),
            None,
        )
        .await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn layer_digests(m: &Value) -> Vec<String> {
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// Stack rebase end to end: two apps built on run image v1; v2 pushed (a
/// new file, a changed os-release); the fleet rebase moves both with only
/// two new config blobs stored (no layer uploaded); the apps keep their
/// layers, run from podman with the new base file, answer, and carry the
/// new labels (skopeo); the old digests stay pullable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_rebase_moves_built_apps_onto_the_patched_run_image() {
    let env = env_with_stack("tiny", |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    for (project, files) in [
        ("tool-site", vec![("public/index.html", "<h1>site</h1>\n")]),
        ("tool-t", vec![(".slipway-selftest", "rebase\n")]),
    ] {
        env.server.create_project(project, true).await;
        let token = env.build_token(project, "ci").await;
        let repo = dir.path().join(project);
        git_repo(&repo, &files);
        let b = build(
            &env,
            project,
            &token,
            json!({"source_url": format!("file://{}", repo.display()), "ref": "main", "image_name": "web"}),
        )
        .await;
        assert_eq!(b["state"], "succeeded", "{b}");
    }
    let (_, run_v1) = manifest(&env, "platform/run", "tiny").await;
    let v1_base = layer_digests(&run_v1);
    let mut before = Vec::new();
    for project in ["tool-site", "tool-t"] {
        let (s, m) = manifest(&env, &format!("{project}/web"), "latest").await;
        assert_eq!(s, StatusCode::OK);
        before.push(m);
    }

    // Run image v2: the v1 root file system with a new file and a changed
    // os-release (a patched package, in miniature).
    let v1_tar = std::fs::read_dir(stacks_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("tiny-") && n.ends_with(".tar")
        })
        .expect("the tiny root file system (made by env_with_stack)");
    let v2_tar = dir.path().join("tiny-v2.tar");
    let script = r#"
import io, sys, tarfile
patched = {"etc/os-release": b"NAME=\"Slipway tiny\"\nID=busybox\nVERSION_ID=1.1\n"}
with tarfile.open(sys.argv[1]) as src, tarfile.open(sys.argv[2], "w", format=tarfile.GNU_FORMAT) as dst:
    for m in src.getmembers():
        if m.name in patched:
            m.size = len(patched[m.name])
            dst.addfile(m, io.BytesIO(patched[m.name]))
        elif m.isfile():
            dst.addfile(m, src.extractfile(m))
        else:
            dst.addfile(m)
    extra = tarfile.TarInfo("etc/slipway-patch")
    extra.size, extra.mode, extra.mtime = 8, 0o644, 315532801
    dst.addfile(extra, io.BytesIO(b"patched\n"))
"#;
    run(
        "python3",
        &[
            "-c",
            script,
            v1_tar.to_str().unwrap(),
            v2_tar.to_str().unwrap(),
        ],
    );
    let v2 = stack::push_base(
        &registry_client(&env),
        &Stack::load("tiny").unwrap(),
        "run",
        &v2_tar,
        &|_| {},
    )
    .await
    .unwrap();
    let (_, run_v2) = manifest(&env, "platform/run", "tiny").await;
    let v2_base = layer_digests(&run_v2);
    assert_ne!(v1_base, v2_base);

    // The fleet rebase, through the admin API.
    let blobs_before = blob_files(&env);
    let (s, report) = env
        .api(
            Method::POST,
            "/api/v1/admin/rebase",
            Some(&env.admin()),
            Some(json!({"run_image": "platform/run:tiny"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{report}");
    assert_eq!(report["run_image_digest"], v2.digest, "{report}");
    let rebased: Vec<&str> = report["rebased"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["repository"].as_str().unwrap())
        .collect();
    assert!(
        rebased.contains(&"tool-site/web") && rebased.contains(&"tool-t/web"),
        "{report}"
    );
    assert!(report["failed"].as_array().unwrap().is_empty(), "{report}");
    // Stored: one new config per rebased image, nothing else (no layer).
    let blobs_after = blob_files(&env);
    let new: Vec<_> = blobs_after
        .iter()
        .filter(|p| !blobs_before.contains(p))
        .collect();
    assert_eq!(new.len(), rebased.len(), "{new:?}");
    for p in &new {
        let config: Value = serde_json::from_slice(&std::fs::read(p).unwrap())
            .unwrap_or_else(|_| panic!("{} is not a config", p.display()));
        assert!(config["rootfs"]["diff_ids"].is_array(), "{config}");
    }

    for (project, old) in ["tool-site", "tool-t"].iter().zip(&before) {
        let repo = format!("{project}/web");
        let (_, now) = manifest(&env, &repo, "latest").await;
        let old_layers = layer_digests(old);
        let new_layers = layer_digests(&now);
        // The base swapped, the app's layers untouched.
        assert_eq!(&new_layers[..v2_base.len()], v2_base.as_slice());
        assert_eq!(
            &new_layers[v2_base.len()..],
            &old_layers[v1_base.len()..],
            "{project}"
        );
        // The old image is still pullable by digest.
        let old_digest = report["rebased"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["repository"] == repo)
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        let (s, _) = manifest(&env, &repo, &old_digest).await;
        assert_eq!(s, StatusCode::OK, "{repo}@{old_digest}");
        // skopeo sees the new labels.
        let image = format!("{}/{repo}:latest", env.server.addr);
        let inspect: Value = serde_json::from_str(&run(
            "skopeo",
            &[
                "inspect",
                "--tls-verify=false",
                &format!("docker://{image}"),
            ],
        ))
        .unwrap();
        let meta: Value = serde_json::from_str(
            inspect["Labels"]["io.buildpacks.lifecycle.metadata"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            meta["runImage"]["reference"].as_str().unwrap_or_default(),
            v2.digest,
            "{meta}"
        );
        // The new base file is in the image, and the app still runs.
        run("podman", &["pull", "-q", "--tls-verify=false", &image]);
        let mut cat: Vec<&str> = PODMAN_RUN.to_vec();
        cat.extend_from_slice(&[
            "--rm",
            "--entrypoint",
            "/bin/cat",
            &image,
            "/etc/slipway-patch",
        ]);
        assert_eq!(run("podman", &cat), "patched");
        let mut os: Vec<&str> = PODMAN_RUN.to_vec();
        os.extend_from_slice(&[
            "--rm",
            "--entrypoint",
            "/bin/cat",
            &image,
            "/etc/os-release",
        ]);
        assert!(run("podman", &os).contains("VERSION_ID=1.1"));
        if *project == "tool-t" {
            let mut web: Vec<&str> = PODMAN_RUN.to_vec();
            web.extend_from_slice(&["--rm", &image]);
            assert_eq!(
                run("podman", &web),
                "selftest web: hello, world! PORT=8080 SELFTEST_PATH=/selftest/first"
            );
        } else {
            let port = free_port();
            let mut all: Vec<&str> = PODMAN_RUN.to_vec();
            let env_port = format!("PORT={port}");
            all.extend_from_slice(&["-d", "--network", "host", "-e", &env_port, &image]);
            let id = run("podman", &all);
            let got = answer(port, "/index.html", &id).await;
            let _ = Command::new("podman").args(["rm", "-f", &id]).output();
            assert_eq!(got, (StatusCode::OK, "<h1>site</h1>\n".to_owned()));
        }
    }
}

/// A rebuild holds, while it runs, what the previous image cost the
/// project — not the run image's layers, which the `platform` project
/// holds and which cost tools nothing: a project whose quota fits its
/// image twice (and not the run image) builds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_reserves_what_the_image_costs_not_the_free_run_image() {
    let env = env_with_stack("tiny", |_| {}).await;
    env.server.create_project("tool-full", true).await;
    let token = env.build_token("tool-full", "ci").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("site");
    git_repo(&repo, &[("public/index.html", "<h1>one</h1>\n")]);
    let source = json!({"source_url": format!("file://{}", repo.display()), "ref": "main", "image_name": "site"});
    let b = build(&env, "tool-full", &token, source.clone()).await;
    assert_eq!(b["state"], "succeeded", "{b}");
    let usage = async |env: &Env| {
        env.api(
            Method::GET,
            "/api/v1/projects/tool-full/usage",
            Some(&env.admin()),
            None,
        )
        .await
        .1
    };
    let used = usage(&env).await["used_bytes"].as_u64().unwrap();
    let (_, run) = manifest(&env, "platform/run", "tiny").await;
    let run_bytes: u64 = run["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    let quota = 2 * used + 200 * 1024;
    assert!(
        used + used + run_bytes > quota,
        "the run image ({run_bytes} bytes) must not fit beside the image ({used} bytes)"
    );
    let (s, v) = env
        .api(
            Method::PATCH,
            "/api/v1/projects/tool-full",
            Some(&env.admin()),
            Some(json!({"quota_bytes": quota})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    std::fs::write(repo.join("public/index.html"), "<h1>two</h1>\n").unwrap();
    for args in [&["add", "-A"][..], &["commit", "-q", "-m", "two"]] {
        let out = Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.org")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.org")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}");
    }
    let b = build(&env, "tool-full", &token, source).await;
    assert_eq!(b["state"], "succeeded", "{b}");
    let after = usage(&env).await;
    assert_eq!(after["reserved_bytes"], 0, "{after}");
    assert!(after["used_bytes"].as_u64().unwrap() <= quota, "{after}");
}
