//! The build API without running a buildpack: who may build, what a build
//! request must hold, the queue's limits, cancel, retry, delete, logs, and
//! builds interrupted by a restart. (Real builds: `builds_e2e`.)

use std::path::Path;
use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::security::{Env, basic};

/// A git repository with one commit on `main` and a tag `v1`.
pub fn git_repo(dir: &Path, files: &[(&str, &str)]) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.org")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.org")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git(&["init", "-q", "-b", "main"]);
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        // Programs (a buildpack's bin/) are executable.
        if Path::new(name).components().any(|c| c.as_os_str() == "bin") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "first"]);
    git(&["tag", "v1"]);
    git(&["rev-parse", "HEAD"])
}

impl Env {
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (s, _, b) = self
            .send(
                method,
                path,
                auth,
                body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
                Some("application/json"),
            )
            .await;
        let v = serde_json::from_slice(&b)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into_owned()));
        (s, v)
    }

    /// A build token of `project`, as `Basic` credentials.
    pub async fn build_token(&self, project: &str, name: &str) -> String {
        let (s, v) = self
            .api(
                Method::POST,
                &format!("/api/v1/projects/{project}/build-tokens"),
                Some(&self.admin()),
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        basic(
            v["token"]["username"].as_str().unwrap(),
            v["secret"].as_str().unwrap(),
        )
    }

    pub async fn approve(&self, image: &str) {
        let (s, v) = self
            .api(
                Method::POST,
                "/api/v1/builders",
                Some(&self.admin()),
                Some(json!({"image": image})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_default()
}

fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

#[tokio::test]
async fn who_may_build_and_what_a_request_must_hold() {
    let env = Env::with(|c| {
        c.builds.workers = 0;
        c.builds.allow_local_sources = true;
        c.builds.per_project = 2;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("app");
    let commit = git_repo(&repo, &[("app.py", "print('hi')\n")]);
    let url = file_url(&repo);
    let token_a = env.build_token("tool-a", "ci").await;
    env.approve("platform/builder:test").await;
    let builds_a = "/api/v1/projects/tool-a/builds";
    let request = json!({"source_url": url, "ref": "main", "builder": "platform/builder:test"});

    // Nobody without credentials, nor a robot, nor a wrong secret.
    let (s, v) = env
        .api(Method::POST, builds_a, None, Some(request.clone()))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let robot = env.robot("tool-a", "puller", &["pull"]).await;
    let (s, v) = env
        .api(
            Method::POST,
            builds_a,
            Some(&basic("robot$tool-a+puller", &robot)),
            Some(request.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(error_of(&v).contains("may not start builds"), "{v}");
    let (s, _) = env
        .api(
            Method::POST,
            builds_a,
            Some(&basic("build$tool-a+ci", "wrong")),
            Some(request.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // A token builds only in its own project.
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-b/builds",
            Some(&token_a),
            Some(request.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        error_of(&v).contains("it may not build in project tool-b"),
        "{v}"
    );
    let (s, _) = env
        .api(
            Method::GET,
            "/api/v1/projects/tool-b/builds",
            Some(&token_a),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Build tokens have no rights on /v2.
    let (s, _, _) = env.get("/v2/tool-a/web/manifests/v1", Some(&token_a)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Bad requests, each with its sentence.
    let cases = [
        (
            json!({"source_url": "file:///nonexistent/repo", "builder": "platform/builder:test"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "cannot be read",
        ),
        (
            json!({"source_url": url, "ref": "no-such-branch", "builder": "platform/builder:test"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "has no branch or tag no-such-branch",
        ),
        (
            json!({"source_url": url, "ref": "--upload-pack=touch /tmp/pwned", "builder": "platform/builder:test"}),
            StatusCode::BAD_REQUEST,
            "is not a branch, tag or commit name",
        ),
        (
            json!({"source_url": "ssh://git@example.org/x.git", "builder": "platform/builder:test"}),
            StatusCode::BAD_REQUEST,
            "use https://, http:// or git://",
        ),
        (
            json!({"source_url": url, "builder": "platform/unknown:1"}),
            StatusCode::FORBIDDEN,
            "the builder platform/unknown:1 is not approved",
        ),
        (
            json!({"source_url": url, "builder": "platform/builder:test", "image_name": "Web/App"}),
            StatusCode::BAD_REQUEST,
            "is not a valid image name",
        ),
        (
            json!({"source_url": url, "builder": "platform/builder:test", "env": {"CNB_APP_DIR": "/x"}}),
            StatusCode::BAD_REQUEST,
            "reserved for the build platform",
        ),
        (
            json!({"source_url": url, "builder": "platform/builder:test", "extra": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
        ),
    ];
    for (body, status, sentence) in cases {
        let (s, v) = env
            .api(Method::POST, builds_a, Some(&token_a), Some(body.clone()))
            .await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(v.to_string().contains(sentence), "{body}: {v}");
    }
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-nope/builds",
            Some(&env.admin()),
            Some(request.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // None of them was queued.
    let (s, v) = env.api(Method::GET, builds_a, Some(&token_a), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!([]));
    let (s, v) = env
        .api(
            Method::GET,
            &format!("{builds_a}/latest"),
            Some(&token_a),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    // Accepted: the ref is resolved and recorded, by branch and by tag.
    let (s, first) = env
        .api(
            Method::POST,
            builds_a,
            Some(&token_a),
            Some(request.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["state"], "pending");
    assert_eq!(first["commit"], commit);
    assert_eq!(first["image_name"], "tool-a");
    assert_eq!(first["requested_by"], "build$tool-a+ci");
    let id1 = first["id"].as_str().unwrap().to_owned();
    assert_eq!(first["image"], format!("tool-a/tool-a:{id1}"));
    let (s, second) = env
        .api(
            Method::POST,
            builds_a,
            Some(&token_a),
            Some(
                json!({"source_url": url, "ref": "v1", "builder": "platform/builder:test",
                        "image_name": "web", "env": {"SECRET_THING": "hunter2"}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{second}");
    assert_eq!(second["commit"], commit);
    assert_eq!(
        second["env"],
        json!(["SECRET_THING"]),
        "values are not shown"
    );
    let id2 = second["id"].as_str().unwrap().to_owned();

    // The per-project limit: a third is refused with a sentence.
    let (s, v) = env
        .api(
            Method::POST,
            builds_a,
            Some(&token_a),
            Some(request.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        error_of(&v).contains("already has 2 builds pending or running"),
        "{v}"
    );

    // Newest first; latest; one by id.
    let (_, list) = env.api(Method::GET, builds_a, Some(&token_a), None).await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id2.as_str(), id1.as_str()]);
    let (_, latest) = env
        .api(
            Method::GET,
            &format!("{builds_a}/latest"),
            Some(&token_a),
            None,
        )
        .await;
    assert_eq!(latest["id"], id2.as_str());

    // A pending build cannot be deleted; cancelled, it ends at once.
    let (s, v) = env
        .api(
            Method::DELETE,
            &format!("{builds_a}/{id1}"),
            Some(&token_a),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(error_of(&v).contains("cancel it before deleting it"), "{v}");
    let (s, v) = env
        .api(
            Method::POST,
            &format!("{builds_a}/{id1}/cancel"),
            Some(&token_a),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["state"], "cancelled");
    assert_eq!(v["reason"], "cancelled before it started");
    let (s, v) = env
        .api(
            Method::POST,
            &format!("{builds_a}/{id1}/cancel"),
            Some(&token_a),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        error_of(&v).contains("has ended already (cancelled)"),
        "{v}"
    );

    // A retry is a new build of the same commit.
    let (s, retry) = env
        .api(
            Method::POST,
            &format!("{builds_a}/{id1}/retry"),
            Some(&token_a),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{retry}");
    assert_ne!(retry["id"], id1.as_str());
    assert_eq!(retry["commit"], commit);
    assert_eq!(retry["state"], "pending");

    // A finished build is deleted with its log.
    let (s, _) = env
        .api(
            Method::DELETE,
            &format!("{builds_a}/{id1}"),
            Some(&token_a),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = env
        .api(
            Method::GET,
            &format!("{builds_a}/{id1}"),
            Some(&token_a),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Audited under the token's name; secrets nowhere.
    let (_, audit) = env
        .api(
            Method::GET,
            "/api/v1/audit?principal=build$tool-a%2Bci",
            Some(&env.admin()),
            None,
        )
        .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"build.start"), "{audit}");
    assert!(actions.contains(&"build.cancel"), "{audit}");
    assert!(!audit.to_string().contains("hunter2"), "{audit}");
    let (_, tokens) = env
        .api(
            Method::GET,
            "/api/v1/projects/tool-a/build-tokens",
            Some(&env.admin()),
            None,
        )
        .await;
    assert_eq!(tokens[0]["username"], "build$tool-a+ci");
    assert!(tokens[0].get("secret").is_none());
    assert!(tokens[0]["last_used_at"].is_string(), "{tokens}");

    // Build tokens and builders are the admin's.
    let (s, _) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-a/build-tokens",
            Some(&token_a),
            Some(json!({"name": "more"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = env
        .api(
            Method::POST,
            "/api/v1/builders",
            Some(&token_a),
            Some(json!({"image": "tool-a/evil:1"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // A deleted token stops working at once.
    let (s, _) = env
        .api(
            Method::DELETE,
            "/api/v1/projects/tool-a/build-tokens/ci",
            Some(&env.admin()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = env.api(Method::GET, builds_a, Some(&token_a), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // A revoked builder cannot be used any more.
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("image", "platform/builder:test");
    let (s, _) = env
        .api(
            Method::DELETE,
            &format!("/api/v1/builders?{}", q.finish()),
            Some(&env.admin()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-b/builds",
            Some(&env.admin()),
            Some(request.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
}

#[tokio::test]
async fn local_sources_are_refused_unless_allowed_and_full_projects_do_not_build() {
    let env = Env::with(|c| c.builds.workers = 0).await;
    let dir = tempfile::tempdir().unwrap();
    git_repo(&dir.path().join("app"), &[("a", "b")]);
    env.approve("platform/builder:test").await;
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-a/builds",
            Some(&env.admin()),
            Some(json!({"source_url": file_url(&dir.path().join("app")), "builder": "platform/builder:test"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_of(&v).contains("is a local repository"), "{v}");

    // A project at its quota: refused before anything starts.
    let (s, v) = env
        .api(
            Method::PATCH,
            "/api/v1/projects/tool-b",
            Some(&env.admin()),
            Some(json!({"quota_bytes": 100})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-b/builds",
            Some(&env.admin()),
            Some(json!({"source_url": "https://example.invalid/x.git", "builder": "platform/builder:test"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        error_of(&v).starts_with("quota exceeded for project tool-b"),
        "{v}"
    );
    assert!(error_of(&v).ends_with("the build was not started"), "{v}");
}

/// Polls a build until it has ended.
pub async fn wait_for_end(env: &Env, project: &str, id: &str, auth: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let (s, v) = env
            .api(
                Method::GET,
                &format!("/api/v1/projects/{project}/builds/{id}"),
                Some(auth),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if !matches!(v["state"].as_str(), Some("pending" | "running")) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "build {id} did not end: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_build_whose_builder_is_missing_fails_with_a_sentence_and_its_followed_log_ends() {
    let env = Env::with(|c| c.builds.allow_local_sources = true).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("app");
    git_repo(&repo, &[("a", "b")]);
    env.server.create_project("platform", true).await;
    env.approve("platform/builder:gone").await;
    let admin = env.admin();
    let (s, b) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-a/builds",
            Some(&admin),
            Some(json!({"source_url": file_url(&repo), "builder": "platform/builder:gone"})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let id = b["id"].as_str().unwrap();
    // Followed from the start, the log ends when the build does.
    let (s, _, log) = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        env.get(
            &format!("/api/v1/projects/tool-a/builds/{id}/logs?follow=true"),
            Some(&admin),
        ),
    )
    .await
    .expect("the followed log ends");
    assert_eq!(s, StatusCode::OK);
    let log = String::from_utf8(log).unwrap();
    let end = wait_for_end(&env, "tool-a", id, &admin).await;
    assert_eq!(end["state"], "failed", "{end}");
    assert_eq!(
        end["reason"],
        "the builder image platform/builder:gone is not in the registry (push it, or approve another builder)"
    );
    assert!(log.contains("===> FETCH"), "{log}");
    assert!(log.contains("failed: the builder image"), "{log}");
    // JSON lines, by phase, from a sequence number on.
    let (s, _, json_log) = env
        .get(
            &format!("/api/v1/projects/tool-a/builds/{id}/logs?format=json&after=1"),
            Some(&admin),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let lines: Vec<Value> = String::from_utf8(json_log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines[0]["seq"].as_i64().unwrap() == 2, "{lines:?}");
    assert_eq!(lines.last().unwrap()["phase"], "done");
    // Nothing was tagged.
    let (s, _, _) = env.get("/v2/tool-a/tool-a/tags/list", Some(&admin)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_build_running_when_slipway_stopped_is_failed_and_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let repo = dir.path().join("app");
    git_repo(&repo, &[("a", "b")]);
    let mut config = slipway_registry::Config::for_tests(&data);
    config.builds.workers = 0;
    config.builds.allow_local_sources = true;
    let server = slipway_registry::testing::TestServer::start_config(config.clone()).await;
    let env = Env {
        server,
        http: reqwest::Client::new(),
    };
    env.server.create_project("tool-a", false).await;
    env.approve("platform/builder:test").await;
    let admin = env.admin();
    let (s, b) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-a/builds",
            Some(&admin),
            Some(json!({"source_url": file_url(&repo), "builder": "platform/builder:test"})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let id = b["id"].as_str().unwrap().to_owned();
    // A worker of this data directory takes it, then the process dies.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let worker = format!(
        "{}:{}#0",
        host.trim(),
        std::fs::canonicalize(&data).unwrap().display()
    );
    let claimed = env
        .server
        .state
        .meta
        .build_claim(&worker, 2)
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(claimed.id, id);
    let admin_password = env.server.admin_password.clone();
    env.server.stop().await;

    // The next start of a worker there fails it, with a reason.
    config.builds.workers = 1;
    config.auth.admin_password = Some(slipway_registry::config::Secret::new(admin_password));
    let server = slipway_registry::testing::TestServer::start_config(config).await;
    let env = Env {
        server,
        http: reqwest::Client::new(),
    };
    let end = wait_for_end(&env, "tool-a", &id, &admin).await;
    assert_eq!(end["state"], "failed", "{end}");
    assert_eq!(
        end["reason"],
        "Slipway restarted while this build ran; retry it"
    );
    let (s, v) = env
        .api(
            Method::POST,
            &format!("/api/v1/projects/tool-a/builds/{id}/retry"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
}

/// Sources obey the egress policy: a repository whose host is, or resolves
/// to, a refused address is refused when the build is asked for (422, the
/// sentence names the rule), before git is run against it; with
/// `[builds.sources] allow_hosts`, only those hosts are accepted (decided
/// by the name, with no traffic). A server on loopback stands in for the
/// registry's neighbours: nothing may connect to it.
#[tokio::test]
async fn sources_that_resolve_to_refused_addresses_are_refused() {
    let neighbour = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = neighbour.local_addr().unwrap().port();
    let env = Env::with(|c| {
        c.builds.workers = 0;
        c.builds.sources.allow_hosts = vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "*.forge.example".into(),
        ];
    })
    .await;
    env.approve("platform/builder:test").await;
    let cases = [
        (
            format!("http://127.0.0.1:{port}/tool.git"),
            "127.0.0.1 resolves to 127.0.0.1: loopback".to_owned(),
        ),
        (
            format!("https://localhost:{port}/tool.git"),
            "localhost resolves to 127.0.0.1: loopback".to_owned(),
        ),
        (
            format!("git://127.0.0.1:{port}/tool.git"),
            "loopback".to_owned(),
        ),
        (
            "https://github.com/wikimedia/tool.git".to_owned(),
            "github.com: not in allow_hosts".to_owned(),
        ),
    ];
    for (url, why) in &cases {
        let (s, v) = env
            .api(
                Method::POST,
                "/api/v1/projects/tool-a/builds",
                Some(&env.admin()),
                Some(json!({"source_url": url, "builder": "platform/builder:test"})),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {v}");
        let e = error_of(&v);
        assert!(
            e.contains(&format!("the source {url} is refused")) && e.contains(why.as_str()),
            "{url}: {e}"
        );
    }
    // Nothing reached the neighbour.
    let accepted =
        tokio::time::timeout(std::time::Duration::from_millis(200), neighbour.accept()).await;
    assert!(accepted.is_err(), "a refused source was connected to");
}
