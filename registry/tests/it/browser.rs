//! The dashboard in a real browser: `conformance/browser/dashboard.py`
//! (selenium, Debian's chromium and chromium-driver; conformance/test.sh
//! installs them) against a server with the tiny stack. Screenshots of
//! each page are kept in `target/tmp/dashboard-screenshots/`.

use std::process::Command;

use crate::builds_e2e::env_with_stack;

const SLOW_APP: &str = r#"
[_]
schema-version = "0.2"

[[io.buildpacks.group]]
id = "tool/slow"
  [io.buildpacks.group.script]
  api = "0.10"
  shell = "bash"
  inline = """
for i in 1 2 3 4 5; do
  echo "step $i of 5"
  sleep 1
done
mkdir -p "$CNB_LAYERS_DIR/web"
printf '[types]\\nlaunch = true\\n' > "$CNB_LAYERS_DIR/web.toml"
echo hello > "$CNB_LAYERS_DIR/web/greeting"
"""
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_chromium() {
    let env = env_with_stack("tiny", |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("app");
    crate::builds::git_repo(&repo, &[("project.toml", SLOW_APP)]);
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../conformance/browser/dashboard.py");
    let _ = std::fs::remove_dir_all(&artifacts);
    let url = env.server.url.clone();
    let password = env.server.admin_password.clone();
    let source = format!("file://{}", repo.display());
    let artifacts_arg = artifacts.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .args(["--url", &url, "--password", &password, "--source", &source])
            .args([
                "--run-image",
                "platform/run:tiny",
                "--artifacts",
                &artifacts_arg,
            ])
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs (conformance/test.sh installs selenium, chromium and chromium-driver)");
    assert!(
        out.status.success(),
        "the browser test failed (screenshots in {}):\n{}{}",
        artifacts.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "login",
        "overview",
        "projects",
        "project",
        "repository",
        "build",
        "image",
        "fleet-dry-run",
        "fleet",
        "phone-overview",
        "phone-repository",
        "phone-image",
    ] {
        assert!(
            artifacts.join(format!("{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}
