//! Push to deploy, end to end: the forges' push events (GitHub, GitLab,
//! Gitea, Forgejo; fixtures written from their documentation, in
//! `tests/fixtures/hooks`) posted to a running server; a self-hosted forge
//! (a bare repository served by Debian's `git http-backend` behind
//! lighttpd, its post-receive hook posting a GitLab event); polling with
//! two replicas; a private repository with a secret as git credentials;
//! build record retention and `build clean`.
//!
//! The forge listens on 127.0.0.2 (loopback, but not the registry's own
//! address, which builds may never reach): the builds' egress policy allows
//! that one address (`builds.egress.allow_cidrs`).

use std::io::Read as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::builds::wait_for_end;
use crate::builds_e2e::{env_with_stack, log_of};
use crate::security::Env;

const FORGE_ADDR: &str = "127.0.0.2";

/// lighttpd serving bare repositories with `git http-backend` under
/// `/git/` (anyone may read, and push: `http.receivepack`) and under
/// `/private/` (HTTP Basic: `maintainer` and [`Forge::PASSWORD`]).
pub struct Forge {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl Forge {
    pub const PASSWORD: &str = "glpat-Zx81kQvT3mRr0aLw2NcE";

    pub fn start() -> Forge {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["repos", "www"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(
            root.join("users"),
            format!("maintainer:{}\n", Forge::PASSWORD),
        )
        .unwrap();
        let port = std::net::TcpListener::bind((FORGE_ADDR, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let backend = "/usr/lib/git-core/git-http-backend";
        assert!(
            Path::new(backend).exists(),
            "{backend} is missing (Debian's git package has it)"
        );
        std::fs::write(
            root.join("lighttpd.conf"),
            format!(
                r#"server.document-root = "{root}/www"
server.bind = "{FORGE_ADDR}"
server.port = {port}
server.errorlog = "{root}/error.log"
server.modules = ("mod_alias", "mod_setenv", "mod_auth", "mod_authn_file", "mod_cgi")
alias.url = ("/git/" => "{backend}/", "/private/" => "{backend}/")
cgi.assign = ("" => "")
setenv.add-environment = ("GIT_PROJECT_ROOT" => "{root}/repos", "GIT_HTTP_EXPORT_ALL" => "", "PATH" => "/usr/bin:/bin")
auth.backend = "plain"
auth.backend.plain.userfile = "{root}/users"
auth.require = ("/private/" => ("method" => "basic", "realm" => "forge", "require" => "valid-user"))
"#,
                root = root.display()
            ),
        )
        .unwrap();
        let child = Command::new("lighttpd")
            .args(["-D", "-f"])
            .arg(root.join("lighttpd.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run lighttpd (conformance/test.sh installs it): {e}")
            });
        let mut forge = Forge { dir, port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((FORGE_ADDR, port)).is_err() {
            if let Ok(Some(status)) = forge.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = forge.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("lighttpd exited ({status}): {err}");
            }
            assert!(Instant::now() < deadline, "lighttpd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        forge
    }

    /// A new bare repository; `hook`: its post-receive hook.
    pub fn bare(&self, name: &str, hook: Option<&str>) -> PathBuf {
        let path = self.dir.path().join("repos").join(format!("{name}.git"));
        git_ok(
            self.dir.path(),
            &["init", "-q", "--bare", "-b", "main", path.to_str().unwrap()],
        );
        git_ok(&path, &["config", "http.receivepack", "true"]);
        if let Some(script) = hook {
            use std::os::unix::fs::PermissionsExt;
            let h = path.join("hooks/post-receive");
            std::fs::write(&h, script).unwrap();
            std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        path
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{FORGE_ADDR}:{}/git/{name}.git", self.port)
    }

    pub fn private_url(&self, name: &str) -> String {
        format!("http://{FORGE_ADDR}:{}/private/{name}.git", self.port)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Forge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs git in `dir` as a test author; its output.
fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.org")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.org")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A maintainer's working tree.
pub struct Work {
    pub dir: PathBuf,
}

impl Work {
    pub fn new(dir: &Path, files: &[(&str, &str)]) -> Work {
        std::fs::create_dir_all(dir).unwrap();
        git_ok(dir, &["init", "-q", "-b", "main"]);
        let w = Work {
            dir: dir.to_owned(),
        };
        w.commit(files, "first");
        w
    }

    /// Writes `files` and commits; the new commit.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (name, text) in files {
            let path = self.dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        git_ok(&self.dir, &["add", "-A"]);
        git_ok(&self.dir, &["commit", "-q", "--allow-empty", "-m", message]);
        self.head()
    }

    pub fn head(&self) -> String {
        git_ok(&self.dir, &["rev-parse", "HEAD"])
    }

    pub fn push(&self, url: &str, refspec: &str) {
        git_ok(&self.dir, &["push", "-q", url, refspec]);
    }
}

/// A fixture with its placeholders filled for the repository at `clone_url`.
fn fixture(name: &str, clone_url: &str, git_ref: &str, before: &str, after: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hooks")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let html = clone_url.strip_suffix(".git").unwrap_or(clone_url);
    let host = clone_url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap();
    let ssh = format!(
        "git@{}:{}",
        host.split(':').next().unwrap(),
        clone_url.splitn(4, '/').nth(3).unwrap()
    );
    text.replace("@CLONE_URL@", clone_url)
        .replace("@HTML_URL@", html)
        .replace("@SSH_URL@", &ssh)
        .replace("@HOST@", host)
        .replace("@REF@", git_ref)
        .replace("@BEFORE@", before)
        .replace("@AFTER@", after)
        .into_bytes()
}

/// A delivery: what it is, its headers and body, the status and a piece
/// of the sentence it is answered with.
type Case = (
    &'static str,
    Vec<(String, String)>,
    Vec<u8>,
    StatusCode,
    &'static str,
);

const ZERO: &str = "0000000000000000000000000000000000000000";

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    slipway_registry::triggers::sign(secret.as_bytes(), body)
}

/// The headers `provider` sends with `body` (`event` in its own words).
fn headers(
    provider: &str,
    event: &str,
    secret: &str,
    body: &[u8],
    delivery: &str,
) -> Vec<(String, String)> {
    let sig = hmac_hex(secret, body);
    let h = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    match provider {
        "github" => vec![
            h("user-agent", "GitHub-Hookshot/3f3a1b7"),
            h("x-github-event", event),
            h("x-github-delivery", delivery),
            h("x-github-hook-id", "109948940"),
            h("x-github-hook-installation-target-type", "repository"),
            h("x-hub-signature-256", &format!("sha256={sig}")),
        ],
        "gitlab" => vec![
            h("user-agent", "GitLab/17.5.0"),
            h("x-gitlab-event", event),
            h("x-gitlab-token", secret),
            h("x-gitlab-event-uuid", delivery),
            h(
                "x-gitlab-webhook-uuid",
                "5a7f1c2e-0a65-4b6c-9a39-ef0d3e1d6b11",
            ),
            h("x-gitlab-instance", "https://gitlab.example.org"),
        ],
        // Gitea sends GitHub's and Gogs' headers too, and (since 1.21)
        // X-Hub-Signature-256 as well.
        "gitea" => vec![
            h("user-agent", "Go-http-client/1.1"),
            h("x-gitea-event", event),
            h("x-gitea-event-type", event),
            h("x-gitea-delivery", delivery),
            h("x-gitea-signature", &sig),
            h("x-gogs-event", event),
            h("x-gogs-delivery", delivery),
            h("x-gogs-signature", &sig),
            h("x-github-event", event),
            h("x-github-delivery", delivery),
            h("x-hub-signature-256", &format!("sha256={sig}")),
        ],
        "forgejo" => vec![
            h("user-agent", "Go-http-client/1.1"),
            h("x-forgejo-event", event),
            h("x-forgejo-event-type", event),
            h("x-forgejo-delivery", delivery),
            h("x-forgejo-signature", &sig),
            h("x-gitea-event", event),
            h("x-gitea-delivery", delivery),
            h("x-gitea-signature", &sig),
            h("x-gogs-event", event),
            h("x-github-event", event),
            h("x-github-delivery", delivery),
            h("x-hub-signature-256", &format!("sha256={sig}")),
        ],
        other => panic!("no provider {other}"),
    }
}

async fn post_hook(
    env: &Env,
    id: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = env
        .http
        .post(format!("{}/api/v1/hooks/{id}", env.server.url))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let started = Instant::now();
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let v = resp.json().await.unwrap_or(Value::Null);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the receiver answers at once (the build is queued): {:?}",
        started.elapsed()
    );
    (status, v)
}

async fn create_trigger(env: &Env, project: &str, body: Value) -> (String, String) {
    let (s, v) = env
        .api(
            Method::POST,
            &format!("/api/v1/projects/{project}/triggers"),
            Some(&env.admin()),
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["trigger"]["id"].as_str().unwrap().to_owned();
    assert!(
        v["trigger"]["delivery_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/api/v1/hooks/{id}")),
        "{v}"
    );
    (id, v["secret"].as_str().unwrap().to_owned())
}

/// `io.buildpacks.project.metadata` of `<repo>:<reference>`: where the
/// image was built from.
async fn source_label(env: &Env, repo: &str, reference: &str) -> String {
    let (s, _, m) = env
        .send(
            Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            Some(&env.admin()),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{repo}:{reference}");
    let m: Value = serde_json::from_slice(&m).unwrap();
    let (s, _, c) = env
        .get(
            &format!(
                "/v2/{repo}/blobs/{}",
                m["config"]["digest"].as_str().unwrap()
            ),
            Some(&env.admin()),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let c: Value = serde_json::from_slice(&c).unwrap();
    c["config"]["Labels"]["io.buildpacks.project.metadata"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn builds_of(env: &Env, project: &str) -> Vec<Value> {
    let (s, v) = env
        .api(
            Method::GET,
            &format!("/api/v1/projects/{project}/builds?limit=100"),
            Some(&env.admin()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

async fn deliveries(env: &Env, trigger: &str) -> Vec<Value> {
    let (s, v) = env
        .api(
            Method::GET,
            &format!("/api/v1/triggers/{trigger}/deliveries"),
            Some(&env.admin()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array().cloned().unwrap()
}

fn forge_egress(c: &mut slipway_registry::Config) {
    c.builds.egress.allow_cidrs = vec![format!("{FORGE_ADDR}/32")];
}

/// A push from each forge, in its own format and with its own signature,
/// builds the pushed commit into the trigger's image; GitHub's ping is
/// answered; a GitLab tag push builds the tag's commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_forge_s_push_builds_the_pushed_commit() {
    let env = env_with_stack("tiny", forge_egress).await;
    env.server.create_project("tool-hooks", true).await;
    let forge = Forge::start();
    forge.bare("app", None);
    let url = forge.url("app");
    let tmp = tempfile::tempdir().unwrap();
    let work = Work::new(&tmp.path().join("app"), &[(".slipway-selftest", "v0\n")]);
    work.push(&url, "main");
    let (id, secret) = create_trigger(
        &env,
        "tool-hooks",
        json!({"source_url": url, "ref": "main", "tags": true, "tag_pattern": "v*", "image_name": "web"}),
    )
    .await;

    let ping = fixture("github-ping.json", &url, "", "", "");
    let (s, v) = post_hook(
        &env,
        &id,
        &headers("github", "ping", &secret, &ping, "d-ping"),
        ping,
    )
    .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("pong")),
        "{v}"
    );

    for (provider, event) in [
        ("github", "push"),
        ("gitlab", "Push Hook"),
        ("gitea", "push"),
        ("forgejo", "push"),
    ] {
        let before = work.head();
        let after = work.commit(
            &[(".slipway-selftest", &format!("from {provider}\n"))],
            provider,
        );
        work.push(&url, "main");
        let body = fixture(
            &format!("{provider}-push.json"),
            &url,
            "refs/heads/main",
            &before,
            &after,
        );
        let delivery = format!("{provider}-{after}");
        let (s, v) = post_hook(
            &env,
            &id,
            &headers(provider, event, &secret, &body, &delivery),
            body,
        )
        .await;
        assert_eq!(
            (s, v["result"].as_str()),
            (StatusCode::ACCEPTED, Some("queued")),
            "{provider}: {v}"
        );
        let build = v["build"].as_str().unwrap().to_owned();
        let b = wait_for_end(&env, "tool-hooks", &build, &env.admin()).await;
        let log = log_of(&env, "tool-hooks", &build, &env.admin()).await;
        assert_eq!(b["state"], "succeeded", "{provider}: {b}\n{log}");
        assert_eq!(b["commit"], after.as_str(), "{b}");
        assert_eq!(b["trigger"], id.as_str(), "{b}");
        assert!(
            log.contains(&format!("note = \"from {provider}\"")),
            "{log}"
        );
        let label = source_label(&env, "tool-hooks/web", "latest").await;
        assert!(label.contains(&after), "{provider}: {label}");
    }

    // A tag push (GitLab's Tag Push Hook) builds the tag's commit.
    let tagged = work.commit(&[(".slipway-selftest", "release\n")], "release");
    git_ok(&work.dir, &["tag", "v2.0"]);
    work.push(&url, "v2.0");
    let body = fixture(
        "gitlab-tag-push.json",
        &url,
        "refs/tags/v2.0",
        ZERO,
        &tagged,
    );
    let (s, v) = post_hook(
        &env,
        &id,
        &headers("gitlab", "Tag Push Hook", &secret, &body, "tag-1"),
        body,
    )
    .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::ACCEPTED, Some("queued")),
        "{v}"
    );
    let b = wait_for_end(
        &env,
        "tool-hooks",
        v["build"].as_str().unwrap(),
        &env.admin(),
    )
    .await;
    assert_eq!(b["state"], "succeeded", "{b}");
    assert_eq!(b["ref"], "v2.0", "{b}");
    assert!(
        source_label(&env, "tool-hooks/web", "latest")
            .await
            .contains(&tagged)
    );

    let d = deliveries(&env, &id).await;
    let results: Vec<(&str, &str)> = d
        .iter()
        .map(|d| {
            (
                d["provider"].as_str().unwrap(),
                d["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            ("gitlab", "queued"),
            ("forgejo", "queued"),
            ("gitea", "queued"),
            ("gitlab", "queued"),
            ("github", "queued"),
            ("github", "ignored"),
        ],
        "{d:?}"
    );
}

/// Deliveries that must build nothing, each with its status and sentence,
/// each recorded; a newer push replaces its trigger's queued build. (No
/// worker runs here: every build stays queued, and none may appear.)
#[tokio::test]
async fn bad_deliveries_build_nothing_and_a_newer_push_replaces_the_queued_build() {
    let env = Env::with(|c| {
        c.builds.workers = 0;
        c.builds.max_hook_bytes = 64 * 1024;
    })
    .await;
    env.server.create_project("platform", true).await;
    env.push_image("platform/builder", "bookworm", b"a builder")
        .await;
    env.approve("platform/builder:bookworm").await;
    env.server.create_project("tool-q", true).await;
    let url = "https://gitlab.example.org/toolforge/app.git";
    let (id, secret) =
        create_trigger(&env, "tool-q", json!({"source_url": url, "ref": "main"})).await;
    let (other_id, other_secret) = create_trigger(
        &env,
        "tool-q",
        json!({"source_url": url, "ref": "release/*", "image_name": "other"}),
    )
    .await;
    let c1 = "1111111111111111111111111111111111111111";
    let c2 = "2222222222222222222222222222222222222222";
    let main = "refs/heads/main";
    let push =
        |r: &str, before: &str, after: &str| fixture("github-push.json", url, r, before, after);

    // Anonymous callers reach none of the trigger and secret routes.
    for (m, path) in [
        (Method::GET, "/api/v1/projects/tool-q/triggers".to_owned()),
        (Method::POST, "/api/v1/projects/tool-q/triggers".to_owned()),
        (Method::GET, "/api/v1/triggers".to_owned()),
        (Method::GET, format!("/api/v1/triggers/{id}")),
        (Method::PATCH, format!("/api/v1/triggers/{id}")),
        (Method::DELETE, format!("/api/v1/triggers/{id}")),
        (Method::GET, format!("/api/v1/triggers/{id}/deliveries")),
        (Method::GET, "/api/v1/projects/tool-q/secrets".to_owned()),
        (
            Method::PUT,
            "/api/v1/projects/tool-q/secrets/TOKEN".to_owned(),
        ),
        (
            Method::DELETE,
            "/api/v1/projects/tool-q/secrets/TOKEN".to_owned(),
        ),
        (Method::GET, "/api/v1/projects/tool-q/images".to_owned()),
        (Method::DELETE, "/api/v1/projects/tool-q/images".to_owned()),
    ] {
        let (s, v) = env.api(m.clone(), &path, None, Some(json!({}))).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {path}: {v}");
    }

    let body = push(main, ZERO, c1);
    let good = headers("github", "push", &secret, &body, "delivery-1");
    let mut cases: Vec<Case> = Vec::new();
    // A signature made with another secret; none at all.
    cases.push((
        "wrong signature",
        headers("github", "push", "not-the-secret", &body, "d-wrong"),
        body.clone(),
        StatusCode::UNAUTHORIZED,
        "signature",
    ));
    cases.push((
        "GitLab token of another trigger",
        headers(
            "gitlab",
            "Push Hook",
            &other_secret,
            &fixture("gitlab-push.json", url, main, ZERO, c1),
            "d-gl",
        ),
        fixture("gitlab-push.json", url, main, ZERO, c1),
        StatusCode::UNAUTHORIZED,
        "token",
    ));
    cases.push((
        "missing signature",
        vec![
            ("x-github-event".into(), "push".into()),
            ("x-github-delivery".into(), "d-none".into()),
        ],
        body.clone(),
        StatusCode::UNAUTHORIZED,
        "has no signature",
    ));
    // The body changed after signing: the signature is over other bytes.
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    cases.push((
        "body changed after signing",
        good.clone(),
        tampered,
        StatusCode::UNAUTHORIZED,
        "signature",
    ));
    let elsewhere = fixture(
        "github-push.json",
        "https://github.com/someone/else.git",
        main,
        ZERO,
        c1,
    );
    cases.push((
        "another repository",
        headers("github", "push", &secret, &elsewhere, "d-else"),
        elsewhere,
        StatusCode::UNPROCESSABLE_ENTITY,
        "this trigger builds https://gitlab.example.org/toolforge/app.git",
    ));
    let malformed = b"{\"ref\": \"refs/heads/main\", ".to_vec();
    cases.push((
        "malformed JSON",
        headers("github", "push", &secret, &malformed, "d-bad"),
        malformed,
        StatusCode::BAD_REQUEST,
        "not JSON",
    ));
    let big = vec![b' '; 64 * 1024 + 1];
    cases.push((
        "oversized body",
        headers("github", "push", &secret, &big, "d-big"),
        big,
        StatusCode::PAYLOAD_TOO_LARGE,
        "larger than 65536 bytes",
    ));
    for (what, h, b, status, says) in cases {
        let (s, v) = post_hook(&env, &id, &h, b).await;
        assert_eq!(s, status, "{what}: {v}");
        assert!(
            v["error"].as_str().unwrap_or_default().contains(says),
            "{what}: {v}"
        );
    }
    let (s, v) = post_hook(&env, "tnosuchtrigger", &good, body.clone()).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(
        builds_of(&env, "tool-q").await.is_empty(),
        "nothing was built"
    );

    // Ignored: a deletion (GitHub's and GitLab's), a branch outside the
    // pattern, a tag push to a trigger without tags, another event.
    let mut deleted: Value = serde_json::from_slice(&push(main, c1, ZERO)).unwrap();
    deleted["deleted"] = json!(true);
    let deleted = deleted.to_string().into_bytes();
    let mut gl_deleted: Value =
        serde_json::from_slice(&fixture("gitlab-push.json", url, main, c1, ZERO)).unwrap();
    gl_deleted["checkout_sha"] = Value::Null;
    let gl_deleted = gl_deleted.to_string().into_bytes();
    let feature = push("refs/heads/feature", ZERO, c1);
    let tag = fixture("gitlab-tag-push.json", url, "refs/tags/v1.0", ZERO, c1);
    for (what, h, b, says) in [
        (
            "GitHub deletion",
            headers("github", "push", &secret, &deleted, "d-del"),
            deleted.clone(),
            "deleted",
        ),
        (
            "GitLab deletion",
            headers("gitlab", "Push Hook", &secret, &gl_deleted, "d-gldel"),
            gl_deleted.clone(),
            "deleted",
        ),
        (
            "another branch",
            headers("github", "push", &secret, &feature, "d-feat"),
            feature.clone(),
            "the branch feature",
        ),
        (
            "tag push, tags off",
            headers("gitlab", "Tag Push Hook", &secret, &tag, "d-tag"),
            tag.clone(),
            "tag",
        ),
        (
            "another event",
            headers("github", "issues", &secret, b"{}", "d-issue"),
            b"{}".to_vec(),
            "issues",
        ),
    ] {
        let (s, v) = post_hook(&env, &id, &h, b).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{what}: {v}");
        assert_eq!(v["result"], "ignored", "{what}: {v}");
        let message = v["message"].as_str().unwrap();
        assert!(
            message.starts_with("ignored: ") && message.contains(says),
            "{what}: {v}"
        );
    }
    assert!(
        builds_of(&env, "tool-q").await.is_empty(),
        "nothing was built"
    );

    // A valid push queues a build of the pushed commit; its replay does
    // nothing; a newer push replaces the queued build.
    let (s, v) = post_hook(&env, &id, &good, body.clone()).await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::ACCEPTED, Some("queued")),
        "{v}"
    );
    let first = v["build"].as_str().unwrap().to_owned();
    let (s, v) = post_hook(&env, &id, &good, body.clone()).await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("duplicate")),
        "{v}"
    );
    // The same signed body under a new delivery id (a replay by whoever
    // kept it, or a late delivery): builds nothing either.
    let (s, v) = post_hook(
        &env,
        &id,
        &headers("github", "push", &secret, &body, "delivery-1-again"),
        body.clone(),
    )
    .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::ACCEPTED, Some("ignored")),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("was delivered before"),
        "{v}"
    );
    let body2 = push(main, c1, c2);
    let (s, v) = post_hook(
        &env,
        &id,
        &headers("github", "push", &secret, &body2, "delivery-2"),
        body2,
    )
    .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::ACCEPTED, Some("queued")),
        "{v}"
    );
    let second = v["build"].as_str().unwrap().to_owned();
    let builds = builds_of(&env, "tool-q").await;
    assert_eq!(builds.len(), 2, "{builds:?}");
    let state_of = |id: &str| {
        builds
            .iter()
            .find(|b| b["id"] == id)
            .map(|b| {
                (
                    b["state"].as_str().unwrap().to_owned(),
                    b["commit"].as_str().unwrap().to_owned(),
                )
            })
            .unwrap()
    };
    assert_eq!(state_of(&first), ("cancelled".to_owned(), c1.to_owned()));
    assert_eq!(state_of(&second), ("pending".to_owned(), c2.to_owned()));
    // Two pushes delivered out of order: the older, arriving last (its
    // commit is the newer one's `before`), builds nothing.
    let (c3, c4) = ("3".repeat(40), "4".repeat(40));
    let newer = push(main, &c3, &c4);
    let (s, v) = post_hook(
        &env,
        &id,
        &headers("github", "push", &secret, &newer, "delivery-4"),
        newer,
    )
    .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::ACCEPTED, Some("queued")),
        "{v}"
    );
    let late = push(main, c2, &c3);
    let (s, v) = post_hook(
        &env,
        &id,
        &headers("github", "push", &secret, &late, "delivery-3"),
        late,
    )
    .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::ACCEPTED, Some("ignored")),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("is older than a push delivered before"),
        "{v}"
    );
    // The other trigger's pushes are its own.
    let rel = push("refs/heads/release/1", ZERO, c1);
    let (s, v) = post_hook(
        &env,
        &other_id,
        &headers("github", "push", &other_secret, &rel, "delivery-1"),
        rel,
    )
    .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::ACCEPTED, Some("queued")),
        "{v}"
    );

    // Every delivery is on record, refusals with their reason.
    let d = deliveries(&env, &id).await;
    let count = |result: &str| d.iter().filter(|d| d["result"] == result).count();
    assert_eq!(count("refused"), 7, "{d:#?}");
    assert_eq!(count("ignored"), 7, "{d:#?}");
    assert_eq!(count("queued"), 3, "{d:#?}");
    assert!(
        d.iter().any(
            |d| d["result"] == "refused" && d["detail"].as_str().unwrap().contains("signature")
        )
    );
    let (_, _, metrics) = env.get("/metrics", Some(&env.admin())).await;
    let metrics = String::from_utf8(metrics).unwrap();
    // (One recorder for every server of this test process: at least ours.)
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("slipway_hook_refused_total{reason=\"signature\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refused signatures counted:\n{metrics}"));
    assert!(refused >= 4, "{metrics}");
    let (_, audit) = env
        .api(
            Method::GET,
            "/api/v1/audit?project=tool-q",
            Some(&env.admin()),
            None,
        )
        .await;
    assert!(audit.to_string().contains("hook.refuse"), "{audit}");
}

/// Waits for the build of `commit` to appear in the project, then for its
/// end.
async fn build_of_commit(env: &Env, project: &str, commit: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(b) = builds_of(env, project)
            .await
            .into_iter()
            .find(|b| b["commit"] == commit)
        {
            return wait_for_end(env, project, b["id"].as_str().unwrap(), &env.admin()).await;
        }
        assert!(Instant::now() < deadline, "no build of {commit} appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A self-hosted forge: a bare repository served by `git http-backend`
/// behind lighttpd, whose post-receive hook posts GitLab's push event with
/// curl. A push builds the pushed commit; a push whose tree did not change
/// is `reused`; asking again for the same commit is reused at once, unless
/// forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_hosted_forge_s_post_receive_hook_deploys_each_push() {
    let env = env_with_stack("tiny", forge_egress).await;
    env.server.create_project("tool-selfhosted", true).await;
    let forge = Forge::start();
    let url = forge.url("app");
    let (id, secret) = create_trigger(
        &env,
        "tool-selfhosted",
        json!({"source_url": url, "ref": "main", "image_name": "web"}),
    )
    .await;
    let hook_log = forge.path().join("hook.log");
    let hook = format!(
        r#"#!/bin/sh
# GitLab's push event, as a self-hosted forge's post-receive hook sends it.
while read -r old new ref; do
  checkout="\"$new\""
  [ "$new" = {ZERO} ] && checkout=null
  body=$(printf '{{"object_kind":"push","event_name":"push","before":"%s","after":"%s","ref":"%s","checkout_sha":%s,"project":{{"name":"app","git_http_url":"{url}","web_url":"{html}"}},"repository":{{"name":"app","git_http_url":"{url}","homepage":"{html}"}},"commits":[],"total_commits_count":0}}' "$old" "$new" "$ref" "$checkout")
  curl -sS -o /dev/null -w '%{{http_code}}\n' -H 'Content-Type: application/json' \
    -H 'X-Gitlab-Event: Push Hook' -H 'X-Gitlab-Token: {secret}' \
    -H "X-Gitlab-Event-UUID: $new-$ref" --data-binary "$body" \
    '{server}/api/v1/hooks/{id}' >> '{log}' 2>&1
done
"#,
        html = url.strip_suffix(".git").unwrap(),
        server = env.server.url,
        log = hook_log.display(),
    );
    forge.bare("app", Some(&hook));
    let tmp = tempfile::tempdir().unwrap();
    let work = Work::new(
        &tmp.path().join("app"),
        &[(".slipway-selftest", "first push\n")],
    );
    work.push(&url, "main");
    let first = work.head();
    let b = build_of_commit(&env, "tool-selfhosted", &first).await;
    let log = log_of(
        &env,
        "tool-selfhosted",
        b["id"].as_str().unwrap(),
        &env.admin(),
    )
    .await;
    assert_eq!(b["state"], "succeeded", "{b}\n{log}");
    assert!(
        source_label(&env, "tool-selfhosted/web", "latest")
            .await
            .contains(&first)
    );
    assert_eq!(std::fs::read_to_string(&hook_log).unwrap().trim(), "202");

    // A new commit with the same tree: the worker fetches it, sees the
    // tree of the image's last build, and builds nothing.
    let empty = work.commit(&[], "nothing changed");
    work.push(&url, "main");
    let r = build_of_commit(&env, "tool-selfhosted", &empty).await;
    assert_eq!(r["state"], "reused", "{r}");
    assert_eq!(r["image_digest"], b["image_digest"], "{r}");
    assert!(r["reason"].as_str().unwrap().contains("same tree"), "{r}");
    let (s, _) = env
        .api(
            Method::HEAD,
            &format!(
                "/v2/tool-selfhosted/web/manifests/{}",
                r["id"].as_str().unwrap()
            ),
            Some(&env.admin()),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "a reused build tags the image with its id"
    );

    // The same commit again, by the API (the default trigger): reused at
    // once; with force, built.
    let token = env.build_token("tool-selfhosted", "ci").await;
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-selfhosted/builds",
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "reused", "{v}");
    assert_eq!(v["commit"], empty.as_str(), "{v}");
    assert_eq!(v["trigger"], id.as_str(), "{v}");
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-selfhosted/builds",
            Some(&token),
            Some(json!({"force": true})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let f = wait_for_end(&env, "tool-selfhosted", v["id"].as_str().unwrap(), &token).await;
    assert_eq!(f["state"], "succeeded", "{f}");
    assert_eq!(
        std::fs::read_to_string(&hook_log).unwrap().lines().count(),
        2
    );

    // latest moved elsewhere (a push by hand): a reuse moves it back.
    let elsewhere = env
        .push_image("tool-selfhosted/web", "latest", b"by hand")
        .await;
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-selfhosted/builds",
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("reused")),
        "{v}"
    );
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("latest points at it again"),
        "{v}"
    );
    let (s, h, _) = env
        .send(
            Method::HEAD,
            "/v2/tool-selfhosted/web/manifests/latest",
            Some(&env.admin()),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let latest = h["docker-content-digest"].to_str().unwrap();
    assert_ne!(latest, elsewhere);
    assert_eq!(latest, f["image_digest"].as_str().unwrap());

    // The dashboard's repository page (a public project: anonymous) says
    // what moved `latest` each time, and the built image's platform.
    let page = reqwest::Client::new()
        .get(format!("{}/ui/r/tool-selfhosted/web", env.server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let history = &page[page.find("Tag history").expect(&page)..];
    for cause in ["build", "reuse", "push"] {
        assert!(
            history.contains(&format!("class=\"cause {cause}\"")),
            "no {cause} in the tag history: {history}"
        );
    }
    let tags = &page[..page.find("Tag history").unwrap()];
    assert!(tags.contains("<td>linux/amd64</td>"), "{tags}");
}

const API_KEY: &str = "sk-live-7Hq2mZ9pX4vR8tY1wK3nB5";

/// An app whose inline buildpack prints the secret it is given, plainly,
/// in base64 and URL-encoded, and says whether it is in its environment.
const LEAKY_PROJECT_TOML: &str = r#"
[_]
schema-version = "0.2"

[[io.buildpacks.group]]
id = "tool/leaky"
  [io.buildpacks.group.script]
  api = "0.10"
  shell = "bash"
  inline = """
set -eu
key=$(cat "$CNB_PLATFORM_DIR/env/API_KEY")
echo "plain: $key"
echo "base64: $(printf %s "$key" | base64)"
echo "url: $(printf %s "$key" | sed 's/-/%2D/g')"
echo "in the environment: ${API_KEY:-no}"
mkdir -p "$CNB_LAYERS_DIR/web"
printf '[types]\\nlaunch = true\\n' > "$CNB_LAYERS_DIR/web.toml"
echo 'hello' > "$CNB_LAYERS_DIR/web/greeting"
cat > "$CNB_LAYERS_DIR/launch.toml" <<'TOML'
[[processes]]
type = "web"
command = ["cat", "/layers/tool_leaky/web/greeting"]
default = true
TOML
"""
"#;

/// Every blob of an image (config and layers, gzip or not), as bytes.
async fn image_bytes(env: &Env, repo: &str, reference: &str) -> Vec<Vec<u8>> {
    let (s, _, m) = env
        .send(
            Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            Some(&env.admin()),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let m: Value = serde_json::from_slice(&m).unwrap();
    let mut digests = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    for l in m["layers"].as_array().unwrap() {
        digests.push(l["digest"].as_str().unwrap().to_owned());
    }
    let mut out = vec![serde_json::to_vec(&m).unwrap()];
    for d in digests {
        let (s, _, b) = env
            .get(&format!("/v2/{repo}/blobs/{d}"), Some(&env.admin()))
            .await;
        assert_eq!(s, StatusCode::OK);
        if b.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&b[..])
                .read_to_end(&mut plain)
                .unwrap();
            out.push(plain);
        } else {
            out.push(b);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every file under `dir`, read whole (the server's data: its database,
/// its blobs).
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p, bytes));
            }
        }
    }
    out
}

/// A private repository (HTTP Basic) builds with a project secret as its
/// git credentials and fails with a sentence without them; a secret given
/// to the buildpacks reaches them as a file only, is masked in the log in
/// every form, and is in no API answer, no layer and no file of the
/// server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_repository_builds_with_a_secret_that_goes_nowhere_else() {
    let env = env_with_stack("tiny", forge_egress).await;
    env.server.create_project("tool-private", true).await;
    let forge = Forge::start();
    forge.bare("app", None);
    let url = forge.private_url("app");
    let tmp = tempfile::tempdir().unwrap();
    let work = Work::new(
        &tmp.path().join("app"),
        &[("project.toml", LEAKY_PROJECT_TOML)],
    );
    work.push(
        &url.replace(
            "http://",
            &format!("http://maintainer:{}@", Forge::PASSWORD),
        ),
        "main",
    );
    let token = env.build_token("tool-private", "ci").await;
    let creds = format!("maintainer:{}", Forge::PASSWORD);
    for (name, value) in [("GIT_TOKEN", creds.as_str()), ("API_KEY", API_KEY)] {
        let (s, v) = env
            .api(
                Method::PUT,
                &format!("/api/v1/projects/tool-private/secrets/{name}"),
                Some(&token),
                Some(json!({"value": value})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert!(!v.to_string().contains(value), "{v}");
    }

    // Without credentials: refused with a sentence that says what to do.
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-private/builds",
            Some(&token),
            Some(json!({"source_url": url, "ref": "main", "secrets": ["API_KEY"]})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("asks for credentials") && e.contains("git_credentials"),
        "{v}"
    );

    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-private/builds",
            Some(&token),
            Some(
                json!({"source_url": url, "ref": "main", "secrets": ["API_KEY"],
                        "git_credentials": "GIT_TOKEN"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let b = wait_for_end(&env, "tool-private", &id, &token).await;
    let log = log_of(&env, "tool-private", &id, &token).await;
    assert_eq!(b["state"], "succeeded", "{b}\n{log}");
    for want in [
        "plain: ****",
        "base64: ****",
        "url: ****",
        "in the environment: no",
        "secrets (as /platform/env files, masked in this log): API_KEY",
    ] {
        assert!(log.contains(want), "{want}:\n{log}");
    }
    use base64::Engine as _;
    let forms = [
        API_KEY.to_owned(),
        base64::engine::general_purpose::STANDARD.encode(API_KEY),
        API_KEY.replace('-', "%2D"),
        Forge::PASSWORD.to_owned(),
        base64::engine::general_purpose::STANDARD.encode(&creds),
    ];
    for f in &forms {
        assert!(!log.contains(f.as_str()), "{f} in the log:\n{log}");
    }

    // Not in any answer of the API about the build, the secrets, the
    // project, or the audit log.
    let mut answers = String::new();
    for path in [
        format!("/api/v1/projects/tool-private/builds/{id}"),
        "/api/v1/projects/tool-private/builds".to_owned(),
        "/api/v1/projects/tool-private/secrets".to_owned(),
        "/api/v1/projects/tool-private".to_owned(),
        "/api/v1/audit?project=tool-private".to_owned(),
    ] {
        let (s, v) = env.api(Method::GET, &path, Some(&env.admin()), None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        answers.push_str(&v.to_string());
    }
    assert!(answers.contains("API_KEY") && answers.contains("GIT_TOKEN"));
    // Not in the image: no layer, not its config.
    let blobs = image_bytes(&env, "tool-private/tool-private", "latest").await;
    assert!(blobs.len() >= 3);
    // Not in any file of the server (its database holds them sealed).
    let files = files_under(env.server.data_dir());
    assert!(files.iter().any(|(p, _)| p.ends_with("slipway.db")));
    for f in &forms[..4] {
        assert!(!answers.contains(f.as_str()), "{f} in an API answer");
        for b in &blobs {
            assert!(!contains(b, f), "{f} in the image");
        }
        for (p, bytes) in &files {
            assert!(!contains(bytes, f), "{f} in {}", p.display());
        }
    }
}

/// Build records beyond the project's retention go as builds end: after
/// ten builds of one image, exactly the configured ones remain. `build
/// clean` then deletes every image: the usage is 0, and a recompute
/// agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_configured_records_and_clean_frees_the_quota() {
    let env = env_with_stack("tiny", |_| {}).await;
    env.server.create_project("tool-keep", true).await;
    let (s, v) = env
        .api(
            Method::PATCH,
            "/api/v1/projects/tool-keep",
            Some(&env.admin()),
            Some(json!({"build_retention": {"keep_succeeded": 3, "keep_failed": 1}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = env.build_token("tool-keep", "ci").await;
    let tmp = tempfile::tempdir().unwrap();
    let work = Work::new(&tmp.path().join("app"), &[(".slipway-selftest", "0\n")]);
    let source = format!("file://{}", work.dir.display());
    let mut ended = Vec::new();
    for k in 1..=10 {
        // Builds 4 and 8 fail: nothing detects an app without the file.
        if k == 4 || k == 8 {
            std::fs::remove_file(work.dir.join(".slipway-selftest")).unwrap();
            work.commit(&[], &format!("build {k}"));
        } else {
            work.commit(
                &[(".slipway-selftest", &format!("{k}\n"))],
                &format!("build {k}"),
            );
        }
        let (s, v) = env
            .api(
                Method::POST,
                "/api/v1/projects/tool-keep/builds",
                Some(&token),
                Some(json!({"source_url": source, "ref": "main", "image_name": "web"})),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        let b = wait_for_end(&env, "tool-keep", v["id"].as_str().unwrap(), &token).await;
        let want = if k == 4 || k == 8 {
            "failed"
        } else {
            "succeeded"
        };
        assert_eq!(b["state"], want, "build {k}: {b}");
        ended.push(b["id"].as_str().unwrap().to_owned());
    }
    let kept: Vec<String> = builds_of(&env, "tool-keep")
        .await
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    // The newest three that succeeded (10, 9, 7) and the newest failure (8).
    let want: Vec<String> = [10, 9, 8, 7].iter().map(|k| ended[k - 1].clone()).collect();
    assert_eq!(kept, want);
    let (s, _) = env
        .api(
            Method::GET,
            &format!("/api/v1/projects/tool-keep/builds/{}/logs", ended[0]),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "a pruned build's log goes with it"
    );

    // A second image, then the quota and the clean (with the CLI).
    env.push_image("tool-keep/other", "v1", b"other").await;
    let slipway = env!("CARGO_BIN_EXE_slipway");
    let cli = |args: &[&str]| {
        let out = Command::new(slipway)
            .args(args)
            .env("SLIPWAY_URL", &env.server.url)
            .env("SLIPWAY_BUILD_TOKEN", build_token_value(&token))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, quota) = cli(&["build", "quota"]);
    assert!(ok, "{quota}");
    assert!(quota.contains("web") && quota.contains("other"), "{quota}");
    let (ok, refused) = cli(&["build", "clean"]);
    assert!(!ok && refused.contains("--yes"), "{refused}");
    let (ok, cleaned) = cli(&["build", "clean", "--yes"]);
    assert!(ok, "{cleaned}");
    let (s, u) = env
        .api(
            Method::GET,
            "/api/v1/projects/tool-keep/usage",
            Some(&env.admin()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(u["used_bytes"], 0, "{u}");
    let (s, r) = env
        .api(
            Method::POST,
            "/api/v1/usage/recompute",
            Some(&env.admin()),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(!r.to_string().contains("tool-keep"), "no drift: {r}");
    let (s, v) = env
        .api(
            Method::GET,
            "/api/v1/projects/tool-keep/images",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        v["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["manifests"] == 0),
        "{v}"
    );
}

/// `build$<project>+<name>:<secret>` from a Basic header.
fn build_token_value(basic: &str) -> String {
    use base64::Engine as _;
    let b64 = basic.strip_prefix("Basic ").unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

/// Polling, for forges that cannot send webhooks: two replicas poll the
/// same trigger (one at a time, by a lease in PostgreSQL) and each new
/// commit is built once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_branch_builds_each_new_commit_once_with_two_replicas() {
    use slipway_builder::stack::{self, Options, Stack};
    use slipway_registry::testing::Replicas;
    use slipway_storage::testing::SeaweedFs;

    let builders = crate::builds_e2e::stacks_dir().join("builders");
    let replicas = Replicas::start(2, SeaweedFs::shared(), None, |c| {
        c.builds.default_builder = "platform/builder:tiny".into();
        c.builds.builders_dir = builders.clone();
        c.builds.min_poll_interval_secs = 1;
        forge_egress(c);
    })
    .await;
    let admin = crate::security::basic("admin", &replicas.admin_password);
    let http = reqwest::Client::new();
    let api = |replica: usize, method: Method, path: &str, body: Option<Value>| {
        let mut req = http
            .request(method, format!("{}{path}", replicas.servers[replica].url))
            .header("authorization", &admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let resp = req.send().await.unwrap();
            let s = resp.status();
            (s, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    replicas.create_project("platform", true).await;
    stack::make(
        &slipway_builder::oci::Client::new(
            &replicas.servers[0].url,
            "admin",
            &replicas.admin_password,
        ),
        &Stack::load("tiny").unwrap(),
        &Options {
            cache_dir: crate::builds_e2e::stacks_dir(),
            mirror: None,
            refresh: false,
            offline: true,
            log: std::sync::Arc::new(|l: &str| eprintln!("stack: {l}")),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (s, v) = api(
        0,
        Method::POST,
        "/api/v1/builders",
        Some(json!({"image": "platform/builder:tiny"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    replicas.create_project("tool-poll", true).await;

    let forge = Forge::start();
    forge.bare("app", None);
    let url = forge.url("app");
    let tmp = tempfile::tempdir().unwrap();
    let work = Work::new(&tmp.path().join("app"), &[(".slipway-selftest", "one\n")]);
    work.push(&url, "main");
    let (s, v) = api(
        1,
        Method::POST,
        "/api/v1/projects/tool-poll/triggers",
        Some(
            json!({"source_url": url, "ref": "main", "poll_interval_secs": 1, "image_name": "web"}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let trigger = v["trigger"]["id"].as_str().unwrap().to_owned();

    let builds = || async {
        let (s, v) = api(
            0,
            Method::GET,
            "/api/v1/projects/tool-poll/builds?limit=100",
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v.as_array().cloned().unwrap()
    };
    let ended = |commit: String| {
        let builds = &builds;
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                if let Some(b) = builds()
                    .await
                    .into_iter()
                    .find(|b| b["commit"] == commit.as_str())
                    && !matches!(b["state"].as_str(), Some("pending" | "running"))
                {
                    return b;
                }
                assert!(Instant::now() < deadline, "no build of {commit} ended");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    // Several rounds of both pollers after each build: still one build.
    let rounds = Duration::from_secs(12);
    let first = work.head();
    let b = ended(first.clone()).await;
    assert_eq!(b["state"], "succeeded", "{b}");
    tokio::time::sleep(rounds).await;
    assert_eq!(builds().await.len(), 1, "{:#?}", builds().await);

    let second = work.commit(&[(".slipway-selftest", "two\n")], "second");
    work.push(&url, "main");
    let b = ended(second.clone()).await;
    assert_eq!(b["state"], "succeeded", "{b}");
    tokio::time::sleep(rounds).await;
    let all = builds().await;
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(
        all.iter()
            .filter(|b| b["commit"] == second.as_str())
            .count(),
        1,
        "{all:#?}"
    );

    let (s, d) = api(
        1,
        Method::GET,
        &format!("/api/v1/triggers/{trigger}/deliveries"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let d = d.as_array().unwrap();
    assert_eq!(
        d.iter().filter(|d| d["result"] == "queued").count(),
        2,
        "{d:#?}"
    );
    assert!(d.iter().all(|d| d["provider"] == "poll"), "{d:#?}");
    assert!(d.iter().any(|d| d["result"] == "unchanged"), "{d:#?}");
    drop(forge);
    replicas.stop().await;
}
