//! The Debian package, installed for real (CI runs as root):
//! `registry/debian/build-deb.sh` packages this test's binary; `dpkg -i`
//! adds the `slipway` user, `/var/lib/slipway` and the conffile; the unit's
//! `ExecStart` line, run as the `slipway` user with the unit's
//! `NoNewPrivileges=yes` and empty `CapabilityBoundingSet=` (by `setpriv`:
//! these machines have no systemd), serves a push and a pull by skopeo and
//! runs a build on the tiny stack — the sandbox (bubblewrap in fresh user
//! namespaces) works without privileges or capabilities; `dpkg -r` removes
//! the program and keeps the data and the configuration.
//!
//! It changes the machine: the package is purged before and after, the
//! `slipway` user stays (as after a real purge).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn purge() {
    let _ = Command::new("dpkg").args(["--purge", "slipway"]).output();
    let _ = std::fs::remove_dir_all("/var/lib/slipway");
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_package_installs_serves_a_pull_and_keeps_the_data_on_remove() {
    assert_eq!(
        sh(Command::new("id").arg("-u")).trim(),
        "0",
        "installing a Debian package needs root; run the suite as root, as CI does"
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().unwrap();
    let deb = sh(Command::new(repo.join("registry/debian/build-deb.sh"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_slipway"))
        .arg("--out")
        .arg(out.path())
        .arg("--fast"));
    let deb = deb.trim().lines().last().unwrap().to_owned();
    assert!(deb.ends_with("_amd64.deb"), "{deb}");
    let contents = sh(Command::new("dpkg-deb").args(["--contents", &deb]));
    for f in [
        "./usr/bin/slipway",
        "./lib/systemd/system/slipway.service",
        "./etc/slipway/slipway.toml",
        "./usr/share/doc/slipway/copyright",
    ] {
        assert!(
            contents.contains(f),
            "{f} is not in the package:\n{contents}"
        );
    }
    assert_eq!(
        sh(Command::new("dpkg-deb").args(["--info", &deb, "conffiles"])).trim(),
        "/etc/slipway/slipway.toml"
    );

    purge();
    sh(Command::new("dpkg").args(["-i", &deb]));
    let user = sh(Command::new("getent").args(["passwd", "slipway"]));
    assert!(user.contains(":/var/lib/slipway:"), "{user}");
    let owner = sh(Command::new("stat").args(["-c", "%U %a", "/var/lib/slipway"]));
    assert_eq!(owner.trim(), "slipway 750");

    // The unit's ExecStart, as its User= with its NoNewPrivileges= and
    // CapabilityBoundingSet=, on a free port (the packaged default is 5000).
    let unit = std::fs::read_to_string("/lib/systemd/system/slipway.service").unwrap();
    for line in [
        "User=slipway",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/slipway",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "the unit lacks {line}:\n{unit}"
        );
    }
    let exec: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(exec[0], "/usr/bin/slipway");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(out.path().join("serve.log")).unwrap();
    let mut server = Command::new("setpriv")
        .args([
            "--reuid=slipway",
            "--regid=slipway",
            "--init-groups",
            "--no-new-privs",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--",
        ])
        .args(&exec)
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("SLIPWAY_LISTEN", format!("127.0.0.1:{port}"))
        // What the test's build needs besides the packaged configuration:
        // a source on this machine, and the tiny stack's builder.
        .env("SLIPWAY_BUILDS__ALLOW_LOCAL_SOURCES", "true")
        .env("SLIPWAY_BUILDS__DEFAULT_BUILDER", "platform/builder:tiny")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        if let Some(status) = server.try_wait().unwrap() {
            panic!(
                "the packaged server exited ({status}):\n{}",
                std::fs::read_to_string(out.path().join("serve.log")).unwrap()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the packaged server did not answer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let password = std::fs::read_to_string("/var/lib/slipway/admin-password").unwrap();
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{}", password.trim()))
    );
    let r = http
        .post(format!("{base}/api/v1/projects"))
        .header("authorization", &auth)
        .json(&json!({"name": "tool-deb", "public": true}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let layer = b"a layer from the Debian package test".to_vec();
    let config = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
        .to_string()
        .into_bytes();
    for blob in [&layer, &config] {
        let r = http
            .post(format!(
                "{base}/v2/tool-deb/app/blobs/uploads/?digest={}",
                sha(blob)
            ))
            .header("authorization", &auth)
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(&layer), "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    let r = http
        .put(format!("{base}/v2/tool-deb/app/manifests/v1"))
        .header("authorization", &auth)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    // A pull by a real client, anonymously.
    let raw = sh(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://127.0.0.1:{port}/tool-deb/app:v1"),
    ]));
    assert_eq!(sha(raw.as_bytes()), sha(&manifest));
    let owner = sh(Command::new("stat").args(["-c", "%U", "/var/lib/slipway/slipway.db"]));
    assert_eq!(owner.trim(), "slipway");

    // A build, by the server running as the unit runs it.
    build_under_the_unit(&http, &base, &auth, password.trim(), out.path()).await;

    // SIGTERM, as systemctl stop sends it.
    sh(Command::new("kill").args(["-TERM", &server.id().to_string()]));
    let status = server.wait().unwrap();
    assert!(
        status.success(),
        "the server did not stop cleanly: {status}"
    );

    sh(Command::new("dpkg").args(["-r", "slipway"]));
    assert!(!Path::new("/usr/bin/slipway").exists());
    assert!(
        Path::new("/var/lib/slipway/slipway.db").exists(),
        "dpkg -r keeps the data"
    );
    assert!(
        Path::new("/etc/slipway/slipway.toml").exists(),
        "dpkg -r keeps the configuration"
    );
    purge();
}

/// The tiny stack pushed by the packaged CLI, then a static site built by
/// the packaged server (as `slipway`, without privileges): it succeeds and
/// its image is pulled by skopeo.
async fn build_under_the_unit(
    http: &reqwest::Client,
    base: &str,
    auth: &str,
    password: &str,
    out: &Path,
) {
    let r = http
        .post(format!("{base}/api/v1/projects"))
        .header("authorization", auth)
        .json(&json!({"name": "platform", "public": true}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    sh(Command::new("/usr/bin/slipway")
        .args(["admin", "stack", "build", "tiny", "--cache-dir"])
        .arg(crate::builds_e2e::stacks_dir())
        .env("SLIPWAY_URL", base)
        .env("SLIPWAY_PASSWORD", password));
    // The source, readable by the service's user (and its own, as git
    // refuses repositories of other owners).
    let site = out.join("site");
    crate::builds::git_repo(
        &site,
        &[("public/index.html", "<h1>from the package</h1>\n")],
    );
    sh(Command::new("chmod").args(["755"]).arg(out));
    sh(Command::new("chown")
        .args(["-R", "slipway:slipway"])
        .arg(&site));
    let r = http
        .post(format!("{base}/api/v1/projects/tool-deb/builds"))
        .header("authorization", auth)
        .json(&json!({"source_url": format!("file://{}", site.display()), "ref": "main", "image_name": "site"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(300);
    let build = loop {
        let b: serde_json::Value = http
            .get(format!("{base}/api/v1/projects/tool-deb/builds/{id}"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !matches!(b["state"].as_str(), Some("pending" | "running")) {
            break b;
        }
        assert!(Instant::now() < deadline, "the build did not end: {b}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let log = http
        .get(format!("{base}/api/v1/projects/tool-deb/builds/{id}/logs"))
        .header("authorization", auth)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(build["state"], "succeeded", "{build}\n{log}");
    let digest = build["image_digest"].as_str().unwrap();
    let raw = sh(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!(
            "docker://{}/tool-deb/site@{digest}",
            base.trim_start_matches("http://")
        ),
    ]));
    assert_eq!(sha(raw.as_bytes()), digest);
}
