//! The README's command lines, run as a new user would run them, in order,
//! against a real `slipway serve` started by this test in a fresh
//! directory — so the README cannot drift from the CLI again.
//!
//! Every line of every `sh` block is either run (through bash, with the
//! placeholders a reader fills in filled in: the server's address for
//! `127.0.0.1:5000`, the secrets and build ids printed by earlier lines for
//! `SECRET`, `…`, `BUILD`, `TRIGGER` and `b0123456789ab`, a local git repository for
//! the example forge's URL) and must succeed, or is listed in `NOT_RUN`
//! with the reason it cannot run against a local server. A line that is
//! neither fails the test: a new command in the README needs a decision
//! here. The configuration block said to hold every key at its default
//! must hold exactly the defaults.
//!
//! The builds section needs the bookworm stack's root file systems
//! (`SLIPWAY_TEST_STACKS`, made by conformance/test.sh); `slipway admin
//! stack build bookworm` finds them through `XDG_CACHE_HOME`, as a user's
//! second run finds its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::builds::git_repo;
use crate::builds_e2e::stacks_dir;

/// Lines that cannot run against a local server, and why. Matched by
/// prefix.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "cargo run --release -- serve",
        "this test runs the same binary's `serve` itself (`slipway serve --listen <free port>`, \
         in a fresh directory, with no other configuration)",
    ),
    (
        "slipway migrate ",
        "needs PostgreSQL and S3 targets; replicas::the_readme_moves_a_single_node_to_two_replicas \
         runs it with the slipway binary",
    ),
    ("./conformance/test.sh", "the command that runs this test"),
    (
        "SLIPWAY_SOAK_SECS=",
        "a nested cargo test of half an hour; the suite runs the same soak for 45 s",
    ),
    (
        "registry/debian/build-deb.sh",
        "a release build; debian.rs runs the same script on this build's binary",
    ),
    (
        "slipway restore ",
        "needs a backup directory of the server; backup.rs backs up a live server, restores it \
         with the slipway binary and serves the result",
    ),
    (
        "slipway admin backup /srv",
        "writes outside the test's directory; backup.rs runs `slipway admin backup` against a \
         live server",
    ),
    (
        "slipway serve --data-dir",
        "backup.rs serves a restored data directory",
    ),
    (
        "sudo dpkg -i ",
        "installs on the machine; debian.rs installs the package it made with dpkg -i",
    ),
    (
        "cargo run -p slipway-conformance --bin oci-conformance",
        "a nested cargo build; conformance/tests/it/suite.rs runs the same checks against Slipway",
    ),
];

/// The README's `sh` blocks as command lines: continuations joined,
/// comments and blank lines dropped. Each with its line number.
fn command_lines(readme: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in readme.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = !in_sh && trimmed == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let text = strip_comment(line);
        let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        if !joined.is_empty() {
            joined.push(' ');
        }
        joined.push_str(text.trim());
        if let Some(rest) = joined.strip_suffix('\\') {
            pending = Some((start, rest.trim_end().to_owned()));
            continue;
        }
        if !joined.trim().is_empty() {
            out.push((start, joined.trim().to_owned()));
        }
    }
    out
}

/// A line without its `# comment` (a `#` at the start, or after a space,
/// outside quotes).
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

/// The TOML block after `marker` in the README.
fn toml_after(readme: &str, marker: &str) -> String {
    let from = readme
        .find(marker)
        .unwrap_or_else(|| panic!("the README no longer says {marker:?}"));
    let rest = &readme[from..];
    let start = rest.find("```toml\n").expect("a toml block follows") + "```toml\n".len();
    let end = rest[start..].find("```").expect("the block ends");
    rest[start..start + end].to_owned()
}

/// A `slipway serve` child process in `dir`, killed on drop.
struct Serve {
    _child: tokio::process::Child,
    addr: String,
}

async fn serve(dir: &Path) -> Serve {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let log_path = dir.join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["serve", "--listen", &addr])
        .current_dir(dir)
        // The README's build of a repository on the example forge becomes a
        // build of a local repository: those are refused unless allowed.
        .env("SLIPWAY_BUILDS__ALLOW_LOCAL_SOURCES", "true")
        .env_remove("SLIPWAY_ADMIN_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start slipway serve");
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("http://{addr}/readyz")).await
            && r.status() == StatusCode::OK
        {
            return Serve {
                _child: child,
                addr,
            };
        }
        let exited = child.try_wait().unwrap();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "slipway serve did not become ready ({exited:?}); its log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What earlier lines printed that later lines need, and the shell's
/// environment.
struct Session {
    dir: PathBuf,
    env: HashMap<String, String>,
    addr: String,
    source: String,
    robot_secret: Option<String>,
    build_token: Option<String>,
    /// The build `slipway build start --follow` made.
    first_build: Option<String>,
    /// A build queued (by this test) for `slipway build cancel`.
    to_cancel: Option<String>,
    /// The build the README's `curl … /builds` started.
    curl_build: Option<String>,
    /// The trigger `slipway admin trigger create` made.
    trigger: Option<String>,
}

impl Session {
    /// The line with its placeholders filled in, or why it cannot be yet.
    fn fill(&self, line: &str) -> String {
        let mut l = line.replace("127.0.0.1:5000", &self.addr);
        l = l.replace("https://gitlab.example.org/tool-foo.git", &self.source);
        if l.contains("robot$tool-bar+ci-pull:SECRET") {
            let s = self
                .robot_secret
                .as_deref()
                .expect("a robot was created before");
            l = l.replace(
                "robot$tool-bar+ci-pull:SECRET",
                &format!("robot$tool-bar+ci-pull:{s}"),
            );
        }
        if let Some(t) = &self.build_token {
            l = l.replace("build$tool-foo+default:SECRET", t);
            l = l.replace("build$tool-foo+default:…", t);
        }
        if l.contains("b0123456789ab") {
            // The build the test queued is cancelled, then retried.
            let id =
                if l.starts_with("slipway build cancel") || l.starts_with("slipway build retry") {
                    &self.to_cancel
                } else {
                    &self.first_build
                };
            l = l.replace("b0123456789ab", id.as_deref().expect("a build to name"));
        }
        if l.contains(" TRIGGER") {
            let id = self
                .trigger
                .as_deref()
                .expect("a trigger was created before");
            l = l.replace(" TRIGGER", &format!(" {id}"));
        }
        if l.contains("/builds/BUILD/") {
            let id = self.curl_build.as_deref().expect("curl started a build");
            l = l.replace("/builds/BUILD/", &format!("/builds/{id}/"));
        }
        l
    }

    async fn run(&mut self, number: usize, line: &str) -> String {
        let filled = self.fill(line);
        if let Some(rest) = filled.strip_prefix("export ") {
            let (name, value) = rest.split_once('=').expect("export NAME=VALUE");
            let value = value.trim_matches('\'').trim_matches('"');
            self.env.insert(name.to_owned(), value.to_owned());
            return String::new();
        }
        let started = Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(600),
            tokio::process::Command::new("bash")
                .args(["-euo", "pipefail", "-c", &filled])
                .current_dir(&self.dir)
                .envs(&self.env)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("README line {number} ran over 10 minutes: {line}"))
        .expect("bash runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "README line {number} failed ({}): {line}\nrun as: {filled}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "readme: line {number} ok in {:.1} s: {line}",
            started.elapsed().as_secs_f64()
        );
        stdout
    }

    /// Reads what a line printed that later lines need.
    fn remember(&mut self, line: &str, stdout: &str) {
        if line.starts_with("slipway admin robot create tool-bar ci-pull") {
            self.robot_secret = stdout
                .lines()
                .find_map(|l| l.strip_prefix("Secret:"))
                .map(|s| s.trim().to_owned());
            assert!(self.robot_secret.is_some(), "no secret printed:\n{stdout}");
        }
        if line.starts_with("slipway admin build-token create tool-foo") {
            self.build_token = stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix("SLIPWAY_BUILD_TOKEN='"))
                .and_then(|l| l.strip_suffix('\''))
                .map(str::to_owned);
            assert!(self.build_token.is_some(), "no token printed:\n{stdout}");
        }
        if line.starts_with("slipway admin trigger create") {
            // `delivery  http://…/api/v1/hooks/<id>`
            self.trigger = stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix("delivery"))
                .and_then(|l| l.trim().rsplit_once("/api/v1/hooks/"))
                .map(|(_, id)| id.to_owned());
            assert!(self.trigger.is_some(), "no delivery URL printed:\n{stdout}");
        }
        if line.starts_with("curl") && line.contains("-d ") {
            let v: Value = serde_json::from_str(stdout)
                .unwrap_or_else(|e| panic!("curl printed no build ({e}):\n{stdout}"));
            self.curl_build = v["id"].as_str().map(str::to_owned);
        }
    }

    /// Waits, under a deadline, until build `id` of tool-foo has ended.
    async fn wait_for_end(&self, id: String) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self
                .api(
                    reqwest::Method::GET,
                    &format!("/api/v1/projects/tool-foo/builds/{id}"),
                    None,
                )
                .await;
            if !matches!(v["state"].as_str(), Some("pending" | "running")) {
                return;
            }
            assert!(Instant::now() < deadline, "build {id} did not end: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The newest build of tool-foo, through the API as the admin.
    async fn latest_build(&self) -> String {
        let v = self
            .api(
                reqwest::Method::GET,
                "/api/v1/projects/tool-foo/builds/latest",
                None,
            )
            .await;
        v["id"].as_str().unwrap().to_owned()
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let password = std::fs::read_to_string(self.dir.join("slipway-data/admin-password"))
            .expect("the admin password file the first start wrote");
        let mut req = reqwest::Client::new()
            .request(method, format!("http://{}{path}", self.addr))
            .basic_auth("admin", Some(password.trim()));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_line_of_the_readme_runs() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let lines = command_lines(&readme);
    assert!(lines.len() > 30, "only {} command lines found", lines.len());

    // Decide for every line first: a line neither run nor explained fails.
    let runnable = |l: &str| {
        [
            "slipway ", "skopeo ", "podman ", "curl ", "export ", "printf ",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    };
    let unknown: Vec<&(usize, String)> = lines
        .iter()
        .filter(|(_, l)| !runnable(l) && !NOT_RUN.iter().any(|(p, _)| l.starts_with(p)))
        .collect();
    assert!(
        unknown.is_empty(),
        "README lines this test neither runs nor explains (add them to NOT_RUN with the \
         reason, or teach the test to run them): {unknown:?}"
    );

    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_owned();
    // What a reader has: an OCI layout to copy in (umoci), and a git
    // repository to build (a static site).
    let layout = dir.join("my-layout");
    for args in [
        vec!["init", "--layout", layout.to_str().unwrap()],
        vec!["new", "--image", &format!("{}:latest", layout.display())],
    ] {
        let out = std::process::Command::new("umoci")
            .args(&args)
            .output()
            .expect("umoci (Debian package umoci; conformance/test.sh installs it)");
        assert!(
            out.status.success(),
            "umoci {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("hello.txt"), "hello from the README\n").unwrap();
    let out = std::process::Command::new("umoci")
        .args(["insert", "--image", &format!("{}:latest", layout.display())])
        .arg(files.join("hello.txt"))
        .arg("/hello.txt")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci insert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    git_repo(
        &dir.join("tool-foo.git"),
        &[("index.html", "<h1>tool-foo, built from the README</h1>\n")],
    );
    // `slipway admin stack build` finds the test machine's root file
    // systems where it would find a user's: $XDG_CACHE_HOME/slipway/stacks.
    let xdg = dir.join("xdg");
    std::fs::create_dir_all(xdg.join("slipway")).unwrap();
    std::os::unix::fs::symlink(stacks_dir(), xdg.join("slipway/stacks")).unwrap();
    // `slipway` on PATH is this build's binary.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_slipway"), bin.join("slipway")).unwrap();

    let server = serve(&dir).await;
    let mut env = HashMap::new();
    env.insert(
        "PATH".to_owned(),
        format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    env.insert("SLIPWAY_URL".to_owned(), format!("http://{}", server.addr));
    env.insert("XDG_CACHE_HOME".to_owned(), xdg.display().to_string());
    let mut session = Session {
        source: format!("file://{}", dir.join("tool-foo.git").display()),
        dir,
        env,
        addr: server.addr.clone(),
        robot_secret: None,
        build_token: None,
        first_build: None,
        to_cancel: None,
        curl_build: None,
        trigger: None,
    };

    let mut ran = 0;
    for (number, line) in &lines {
        if let Some((_, why)) = NOT_RUN.iter().find(|(p, _)| line.starts_with(p)) {
            eprintln!("readme: line {number} not run ({why}): {line}");
            continue;
        }
        if line.starts_with("slipway build cancel") {
            // A build to cancel: queued now, as a maintainer's would be
            // (forced: the same commit was built already, and would be
            // reused at once).
            let v = session
                .api(
                    reqwest::Method::POST,
                    "/api/v1/projects/tool-foo/builds",
                    Some(
                        serde_json::json!({"source_url": session.source, "ref": "main",
                                            "force": true}),
                    ),
                )
                .await;
            session.to_cancel = v["id"].as_str().map(str::to_owned);
        }
        if line.starts_with("slipway build retry") {
            // As a reader would: retry once the cancelled build has ended.
            session
                .wait_for_end(session.to_cancel.clone().unwrap())
                .await;
        }
        let stdout = session.run(*number, line).await;
        session.remember(line, &stdout);
        if line.starts_with("slipway build start") {
            session.first_build = Some(session.latest_build().await);
        }
        ran += 1;
    }
    assert!(ran > 30, "only {ran} lines ran");

    // What the lines did is there: the images, the build's image, the tag.
    let v = session
        .api(
            reqwest::Method::GET,
            "/api/v1/projects/tool-foo/builds?limit=50",
            None,
        )
        .await;
    let builds = v.as_array().unwrap();
    assert!(
        builds.iter().any(|b| b["state"] == "succeeded"),
        "a build succeeded: {v}"
    );
    for image in [
        "tool-foo/web:latest",
        "tool-bar/web:latest",
        "tool-foo/tool-foo:latest",
    ] {
        let (repo, tag) = image.split_once(':').unwrap();
        let r = reqwest::Client::new()
            .head(format!("http://{}/v2/{repo}/manifests/{tag}", server.addr))
            .basic_auth(
                "admin",
                Some(
                    std::fs::read_to_string(session.dir.join("slipway-data/admin-password"))
                        .unwrap()
                        .trim(),
                ),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{image}");
    }
}

#[test]
fn the_readme_configuration_block_holds_every_default() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let text = toml_after(
        &readme,
        "A configuration file with every key at its default",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("slipway.toml");
    std::fs::write(&file, &text).unwrap();
    let loaded = slipway_registry::Config::load(
        Some(&file),
        std::iter::empty(),
        &slipway_registry::config::Overrides::default(),
    )
    .unwrap_or_else(|e| panic!("the README's configuration does not load: {e}"));
    let defaults = slipway_registry::Config::load(
        None,
        std::iter::empty(),
        &slipway_registry::config::Overrides::default(),
    )
    .unwrap();
    let (loaded, defaults) = (
        serde_json::to_value(&loaded).unwrap(),
        serde_json::to_value(&defaults).unwrap(),
    );
    let mut differ = Vec::new();
    diff("", &loaded, &defaults, &mut differ);
    assert!(
        differ.is_empty(),
        "the README's \"every key at its default\" block differs from the defaults at: {differ:?}"
    );
    // And it names every key the configuration has.
    let written: toml::Value = toml::from_str(&text).unwrap();
    let written = serde_json::to_value(written).unwrap();
    let mut missing = Vec::new();
    keys_missing("", &defaults, &written, &mut missing);
    assert!(
        missing.is_empty(),
        "the README's \"every key at its default\" block lacks: {missing:?}"
    );
}

/// Keys of `all` (leaves) that `written` does not have.
fn keys_missing(path: &str, all: &Value, written: &Value, out: &mut Vec<String>) {
    let Value::Object(all) = all else { return };
    for (k, v) in all {
        let p = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match written.get(k) {
            None => out.push(p),
            Some(w) if v.is_object() => keys_missing(&p, v, w, out),
            Some(_) => {}
        }
    }
}

fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => diff(&p, va, vb, out),
                    _ => out.push(p),
                }
            }
        }
        _ if a != b => out.push(format!("{path} ({a} ≠ {b})")),
        _ => {}
    }
}

#[test]
fn readme_lines_are_read_as_a_shell_reads_them() {
    let md = "text\n```sh\nslipway a   # comment\n# only a comment\n\ncurl -u 'x#y' \\\n    -d '{}' \\\n    http://h/p\n```\n```toml\nnot = \"sh\"\n```\n";
    assert_eq!(
        command_lines(md),
        vec![
            (3, "slipway a".to_owned()),
            (6, "curl -u 'x#y' -d '{}' http://h/p".to_owned())
        ]
    );
}
