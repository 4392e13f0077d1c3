//! The app's `project.toml`, end to end on the tiny stack: an app-local
//! buildpack and an inline one named instead of detection, build-time
//! variables below the request's, files kept out of the build (and so out
//! of the image), unknown keys warned about; a descriptor that cannot be
//! used fails the build with a sentence naming the key.

use std::process::Command;

use serde_json::json;

use crate::builds::git_repo;
use crate::builds_e2e::{build, env_with_stack, log_of};

const PROJECT_TOML: &str = r#"
[_]
schema-version = "0.2"
id = "org.toolforge.descriptor-test"

[io.buildpacks]
exclude = ["secrets/", "*.log"]
colour = "blue"

[[io.buildpacks.group]]
uri = "buildpacks/hello"

[[io.buildpacks.group]]
id = "tool/inline"
  [io.buildpacks.group.script]
  api = "0.10"
  shell = "bash"
  inline = "echo \"inline says $GREETING\" > /workspace/inline.txt"

[[io.buildpacks.build.env]]
name = "GREETING"
value = "from project.toml"

[[io.buildpacks.build.env]]
name = "WHO"
value = "nobody"
"#;

const HELLO_TOML: &str = "api = \"0.10\"\n[buildpack]\nid = \"app/hello\"\nversion = \"1.0.0\"\n[[targets]]\nos = \"linux\"\n";

const HELLO_BUILD: &str = r#"#!/usr/bin/env bash
set -euo pipefail
echo "hello buildpack: GREETING=$GREETING WHO=$WHO"
printf '%s, %s\n' "$GREETING" "$WHO" > /workspace/greeting.txt
cat > "$CNB_LAYERS_DIR/launch.toml" <<'TOML'
[[processes]]
type = "web"
command = ["sh", "-c", "cat /workspace/greeting.txt /workspace/inline.txt"]
default = true
TOML
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_descriptor_names_the_buildpacks_and_keeps_files_out() {
    let env = env_with_stack("tiny", |_| {}).await;
    env.server.create_project("tool-desc", true).await;
    let token = env.build_token("tool-desc", "ci").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("app");
    git_repo(
        &repo,
        &[
            ("project.toml", PROJECT_TOML),
            ("buildpacks/hello/buildpack.toml", HELLO_TOML),
            ("buildpacks/hello/bin/detect", "#!/bin/sh\nexit 0\n"),
            ("buildpacks/hello/bin/build", HELLO_BUILD),
            ("secrets/token.txt", "do not ship me\n"),
            ("debug.log", "noise\n"),
            ("README", "kept\n"),
        ],
    );
    // (git_repo keeps the buildpack's bin/ programs executable.)
    let b = build(
        &env,
        "tool-desc",
        &token,
        json!({
            "source_url": format!("file://{}", repo.display()),
            "ref": "main",
            "env": {"WHO": "the request"},
        }),
    )
    .await;
    let log = log_of(&env, "tool-desc", b["id"].as_str().unwrap(), &token).await;
    assert_eq!(b["state"], "succeeded", "{b}\n{log}");
    for want in [
        "project.toml: io.buildpacks.colour is not a key Slipway knows; ignored",
        "project.toml: 2 files kept out of the build (include/exclude)",
        "project.toml names the buildpacks: app/hello@1.0.0, tool/inline@0.0.0",
        "hello buildpack: GREETING=from project.toml WHO=the request",
    ] {
        assert!(log.contains(want), "{want}:\n{log}");
    }

    let image = format!("{}/tool-desc/tool-desc:latest", env.server.addr);
    let podman = |args: &[&str]| {
        let out = Command::new("podman").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    podman(&["pull", "-q", "--tls-verify=false", &image]);
    let run = [
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ];
    let mut web: Vec<&str> = run.to_vec();
    web.push(&image);
    assert_eq!(
        podman(&web),
        "from project.toml, the request\ninline says from project.toml"
    );
    // What project.toml excluded never reached the image.
    let mut ls: Vec<&str> = run.to_vec();
    ls.extend_from_slice(&["--entrypoint", "ls", &image, "-a", "/workspace"]);
    let files = podman(&ls);
    assert!(
        files.contains("README") && files.contains("greeting.txt"),
        "{files}"
    );
    assert!(
        !files.contains("secrets") && !files.contains("debug.log"),
        "{files}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_that_cannot_be_used_fails_the_build_naming_the_key() {
    let env = env_with_stack("tiny", |_| {}).await;
    env.server.create_project("tool-desc", true).await;
    let token = env.build_token("tool-desc", "ci").await;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[[io.buildpacks.group]]\nuri = \"../outside\"\n",
            "project.toml: io.buildpacks.group[0].uri \"../outside\" is outside the app",
        ),
        (
            "[[io.buildpacks.group]]\nid = \"nobody/nothing\"\n",
            "project.toml: io.buildpacks.group[0]: the builder has no buildpack nobody/nothing",
        ),
        (
            "[[io.buildpacks.group]]\nid = \"x\"\n[io.buildpacks.group.script]\napi = \"0.10\"\n",
            "project.toml: io.buildpacks.group[0].script has no inline script",
        ),
        (
            "[_]\nschema-version = \"7\"\n",
            "project.toml: _.schema-version \"7\" is not a schema Slipway knows",
        ),
        ("this is not toml", "project.toml is not valid TOML"),
    ];
    // Links out of the app are not followed by the server.
    {
        let repo = dir.path().join("linked");
        git_repo(&repo, &[(".slipway-selftest", "x\n"), ("README", "x\n")]);
        std::os::unix::fs::symlink("/etc", repo.join("outside")).unwrap();
        std::fs::write(
            repo.join("project.toml"),
            "[[io.buildpacks.group]]\nuri = \"outside/ssl\"\n",
        )
        .unwrap();
        let out = Command::new("git")
            .args(["add", "-A"])
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(out.status.success());
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.org",
                "commit",
                "-q",
                "-m",
                "link",
            ])
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(out.status.success());
        let b = build(
            &env,
            "tool-desc",
            &token,
            json!({"source_url": format!("file://{}", repo.display()), "ref": "main"}),
        )
        .await;
        assert_eq!(b["state"], "failed", "{b}");
        assert!(
            b["reason"]
                .as_str()
                .unwrap_or("")
                .contains("the app has no directory outside/ssl (links are not followed)"),
            "{b}"
        );
    }
    for (i, (text, sentence)) in cases.iter().enumerate() {
        let repo = dir.path().join(format!("app{i}"));
        git_repo(
            &repo,
            &[("project.toml", text), (".slipway-selftest", "x\n")],
        );
        let b = build(
            &env,
            "tool-desc",
            &token,
            json!({"source_url": format!("file://{}", repo.display()), "ref": "main"}),
        )
        .await;
        assert_eq!(b["state"], "failed", "{text}: {b}");
        assert!(
            b["reason"].as_str().unwrap_or("").contains(sentence),
            "{text}: {b}"
        );
    }
}
