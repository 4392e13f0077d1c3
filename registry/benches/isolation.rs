//! Does a hostile build starve the registry? (`cargo bench -p
//! slipway-registry --bench isolation`)
//!
//! One server (SQLite + filesystem, a build worker, the default build
//! limits: 2 GiB, 512 processes, 1 CPU, 4 GiB of disk) holds a public image
//! (a manifest and a 1 MiB blob). wrk (Debian's `wrk`) pulls the manifest,
//! then the blob, for `ISOLATION_BENCH_SECS` (10) each with
//! `ISOLATION_BENCH_CONNECTIONS` (16) connections — first with nothing else
//! running, then while a hostile build runs: its buildpack spins on every
//! core it can (8 busy loops), allocates memory up to its limit, writes its
//! disk up to its limit and keeps forking. Prints requests/s and p99
//! latency of both runs and the ratio with ÷ without (1.0: unaffected),
//! and what stopped the hostile build. `ISOLATION_BENCH_ATTACKS` (a comma
//! list of cpu, memory, disk, fork; all by default) runs only some.
//!
//! The build runs on the tiny stack (this machine's static busybox and
//! bash: nothing is downloaded). Only loopback is used.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_builder::oci;
use slipway_builder::stack::{self, BuilderSpec, BuildpackFiles, Options, Stack};
use slipway_registry::testing::TestServer;

mod common;

use common::{digest, env_usize};

const HOSTILE: &str = r#"#!/usr/bin/env bash
# Every core it can get, memory to its limit, its disk to its limit, and
# forks: for as long as it is let run. ($ATTACKS: which of them; all by
# default.)
want() { [ -z "$ATTACKS" ] || [[ ",$ATTACKS," == *",$1,"* ]]; }
want cpu && for i in 1 2 3 4 5 6 7 8; do ( while :; do :; done ) & done
want memory && ( x=$(head -c 3000000000 /dev/zero | tr "\0" x) ) &
want disk && ( i=0; while :; do head -c 100000000 /dev/zero > "/tmp/fill-$i" || break; i=$((i+1)); done ) &
want fork && ( while :; do sleep 1 & done ) &
wait
"#;

#[derive(Debug, Clone, Copy)]
struct Load {
    requests_per_sec: f64,
    p99_ms: f64,
}

/// wrk against `url`: requests/s and the 99th percentile latency.
fn wrk(url: &str, secs: usize, connections: usize) -> Load {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--latency",
            url,
        ])
        .output()
        .expect("wrk (Debian package wrk; conformance/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_duration_ms(v.trim()))
        .unwrap_or_else(|| panic!("no 99% line in wrk's output:\n{text}"));
    assert!(
        !text.contains("Non-2xx"),
        "wrk saw errors (the registry failed requests):\n{text}"
    );
    Load {
        requests_per_sec: rps,
        p99_ms: p99,
    }
}

/// `1.23ms`, `456.00us`, `1.02s` → milliseconds.
fn parse_duration_ms(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

async fn api(
    http: &reqwest::Client,
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut req = http
        .request(method, format!("{}{path}", server.url))
        .basic_auth("admin", Some(&server.admin_password));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

/// A public image: a 1 MiB blob, a config, a manifest.
async fn push_image(http: &reqwest::Client, server: &TestServer) -> (String, String) {
    let blob: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    for b in [&blob, &config] {
        let r = http
            .post(format!(
                "{}/v2/tool-bench/app/blobs/uploads/?digest={}",
                server.url,
                digest(b)
            ))
            .basic_auth("admin", Some(&server.admin_password))
            .body(b.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&blob), "size": blob.len()}],
    })
    .to_string();
    let r = http
        .put(format!("{}/v2/tool-bench/app/manifests/v1", server.url))
        .basic_auth("admin", Some(&server.admin_password))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    (
        format!("{}/v2/tool-bench/app/manifests/v1", server.url),
        format!("{}/v2/tool-bench/app/blobs/{}", server.url, digest(&blob)),
    )
}

fn git_repo(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("README"), "hostile\n").unwrap();
    for args in [
        vec!["init", "-q", "-b", "main"],
        vec!["add", "-A"],
        vec![
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@example.org",
            "commit",
            "-q",
            "-m",
            "x",
        ],
    ] {
        let ok = Command::new("git")
            .args(&args)
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

fn main() {
    let secs = env_usize("ISOLATION_BENCH_SECS", 10);
    let connections = env_usize("ISOLATION_BENCH_CONNECTIONS", 16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let server = TestServer::start_with(|c| {
            c.builds.allow_local_sources = true;
            c.builds.default_builder = "platform/builder:hostile".into();
            c.builds.timeout_secs = (secs as u64) * 3 + 60;
        })
        .await;
        let http = reqwest::Client::new();
        server.create_project("platform", true).await;
        server.create_project("tool-bench", true).await;
        let work = tempfile::tempdir().unwrap();
        let client = oci::Client::new(&server.url, "admin", &server.admin_password);
        stack::make(
            &client,
            &Stack::load("tiny").unwrap(),
            &Options {
                cache_dir: work.path().join("stacks"),
                mirror: None,
                refresh: false,
                offline: true,
                log: Arc::new(|_: &str| {}),
            },
        )
        .await
        .unwrap();
        let bp = work.path().join("bp");
        std::fs::create_dir_all(bp.join("bin")).unwrap();
        std::fs::write(
            bp.join("buildpack.toml"),
            "api = \"0.10\"\n[buildpack]\nid = \"bench/hostile\"\nversion = \"1.0.0\"\n[[targets]]\nos = \"linux\"\n",
        )
        .unwrap();
        std::fs::write(bp.join("bin/detect"), "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::write(bp.join("bin/build"), HOSTILE).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["bin/detect", "bin/build"] {
                std::fs::set_permissions(bp.join(f), std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        stack::push_builder(
            &client,
            &BuilderSpec {
                image: "platform/builder:hostile",
                build_image: "platform/build:tiny",
                run_image: "platform/run:tiny",
                order: "[[order]]\n[[order.group]]\nid = \"bench/hostile\"\nversion = \"1.0.0\"\n",
                buildpacks: &[BuildpackFiles::from_dir(&bp).unwrap()],
                description: "hostile",
                files: &[],
            },
            work.path(),
            &|_| {},
        )
        .await
        .unwrap();
        api(&http, &server, reqwest::Method::POST, "/api/v1/builders", Some(json!({"image": "platform/builder:hostile"}))).await;
        let (manifest_url, blob_url) = push_image(&http, &server).await;

        let measure = |label: &'static str| {
            let (m, b) = (manifest_url.clone(), blob_url.clone());
            async move {
                let (manifest, blob) = tokio::task::spawn_blocking(move || {
                    (wrk(&m, secs, connections), wrk(&b, secs, connections))
                })
                .await
                .unwrap();
                eprintln!("{label}: manifest {manifest:?}, blob {blob:?}");
                (manifest, blob)
            }
        };
        let quiet = measure("without a build").await;

        let repo = work.path().join("app");
        git_repo(&repo);
        let b = api(
            &http,
            &server,
            reqwest::Method::POST,
            "/api/v1/projects/tool-bench/builds",
            Some(json!({"source_url": format!("file://{}", repo.display()), "ref": "main",
                "env": {"ATTACKS": std::env::var("ISOLATION_BENCH_ATTACKS").unwrap_or_default()}})),
        )
        .await;
        let id = b["id"].as_str().unwrap().to_owned();
        // Measured once the hostile buildpack runs.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = http
                .get(format!("{}/api/v1/projects/tool-bench/builds/{id}/logs", server.url))
                .basic_auth("admin", Some(&server.admin_password))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if text.contains("===> BUILD") {
                break;
            }
            assert!(Instant::now() < deadline, "the hostile build never started:\n{text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let started = Instant::now();
        let hostile = measure("during a hostile build").await;
        let state = api(&http, &server, reqwest::Method::GET, &format!("/api/v1/projects/tool-bench/builds/{id}"), None).await;
        if state["state"] == "running" {
            api(&http, &server, reqwest::Method::POST, &format!("/api/v1/projects/tool-bench/builds/{id}/cancel"), None).await;
        }
        let ended = loop {
            let v = api(&http, &server, reqwest::Method::GET, &format!("/api/v1/projects/tool-bench/builds/{id}"), None).await;
            if !matches!(v["state"].as_str(), Some("pending" | "running")) {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        println!(
            "\nA hostile build (8 busy loops, memory and disk to their limits, forks) beside pulls \
             ({connections} connections, {secs} s each; the build ran {:.0} s under the loads and ended {}: {})\n",
            started.elapsed().as_secs_f64(),
            ended["state"].as_str().unwrap_or("?"),
            ended["reason"].as_str().unwrap_or("")
        );
        println!("| Pull | without a build | during the hostile build | ratio (during ÷ without) |");
        println!("|---|--:|--:|--:|");
        for (name, q, h) in [("manifest GET", quiet.0, hostile.0), ("1 MiB blob GET", quiet.1, hostile.1)] {
            println!(
                "| {name}, p99 | {:.2} ms | {:.2} ms | {:.2}× |",
                q.p99_ms,
                h.p99_ms,
                h.p99_ms / q.p99_ms
            );
            println!(
                "| {name}, requests/s | {:.0} | {:.0} | {:.2}× |",
                q.requests_per_sec,
                h.requests_per_sec,
                h.requests_per_sec / q.requests_per_sec
            );
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_durations() {
        assert_eq!(super::parse_duration_ms("1.50ms"), 1.5);
        assert_eq!(super::parse_duration_ms("500.00us"), 0.5);
        assert_eq!(super::parse_duration_ms("1.02s"), 1020.0);
    }
}
