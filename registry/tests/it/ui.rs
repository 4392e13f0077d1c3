//! The dashboard through the real router over HTTP: who sees which pages
//! (anonymous, a robot, a build token, the admin), sign-in with its CSRF
//! nonce and rate limit, sign-out's CSRF check, sessions that end when the
//! credential goes, escaping of hostile text, the security headers.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::security::Env;

/// A browser of the dashboard: no redirects followed, its cookies kept.
pub struct Browser {
    pub http: reqwest::Client,
    pub base: String,
    pub cookies: Vec<(String, String)>,
}

pub struct Page {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Browser {
    pub fn new(env: &Env) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: env.server.url.clone(),
            cookies: Vec::new(),
        }
    }

    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        form: Option<&[(&str, &str)]>,
    ) -> Page {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("accept", "text/html");
        if !self.cookies.is_empty() {
            let c: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header("cookie", c.join("; "));
        }
        if let Some(f) = form {
            let enc = |v: &str| {
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            };
            let body: Vec<String> = f
                .iter()
                .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
                .collect();
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.join("&"));
        }
        let r = req.send().await.unwrap();
        for c in r.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (kv, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != k);
            if !v.is_empty() && !c.contains("Max-Age=0") {
                self.cookies.push((k.to_owned(), v.to_owned()));
            }
        }
        Page {
            status: r.status(),
            headers: r.headers().clone(),
            body: r.text().await.unwrap(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        self.request(Method::GET, path, None).await
    }

    /// The value of a form's hidden `csrf` field on `page`.
    pub fn csrf(page: &Page) -> String {
        let at = page
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a csrf field")
            + 19;
        page.body[at..].split('"').next().unwrap().to_owned()
    }

    pub async fn sign_in(&mut self, user: &str, password: &str) -> Page {
        let form = self.get("/ui/login").await;
        assert_eq!(form.status, StatusCode::OK);
        let csrf = Browser::csrf(&form);
        self.request(
            Method::POST,
            "/ui/login",
            Some(&[("user", user), ("password", password), ("csrf", &csrf)]),
        )
        .await
    }
}

#[tokio::test]
async fn each_viewer_sees_what_it_may_and_private_names_never_leak() {
    let env = Env::new().await;
    // Hostile text where users may write it: a robot's description.
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-a/robots",
            Some(&env.admin()),
            Some(
                json!({"name": "puller", "description": "<script>alert(\"owned\")</script>",
                        "permissions": ["pull"]}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let robot_secret = v["secret"].as_str().unwrap().to_owned();
    let token = env.build_token("tool-b", "ci").await;
    let token_user = {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(token.strip_prefix("Basic ").unwrap())
            .unwrap();
        String::from_utf8(raw).unwrap()
    };
    let (token_name, token_secret) = token_user.split_once(':').unwrap();

    // Anonymous: the public project only; a private one is as absent as
    // one that does not exist.
    let mut anon = Browser::new(&env);
    let root = anon.get("/").await;
    assert_eq!(root.status, StatusCode::SEE_OTHER);
    assert_eq!(root.headers["location"], "/ui/");
    let (s, _, _) = env.get("/", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "clients that are not browsers");
    for path in ["/ui/", "/ui/projects"] {
        let p = anon.get(path).await;
        assert_eq!(p.status, StatusCode::OK, "{path}");
        assert!(p.body.contains("tool-pub"), "{path}: {}", p.body);
        assert!(
            !p.body.contains("tool-a") && !p.body.contains("tool-b"),
            "{path}"
        );
        let csp = p.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert_eq!(p.headers["cache-control"], "no-store");
        assert_eq!(p.headers["x-frame-options"], "DENY");
    }
    let private = anon.get("/ui/projects/tool-a").await;
    let missing = anon.get("/ui/projects/tool-nope").await;
    assert_eq!(private.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(private.body, missing.body);
    let public = anon.get("/ui/projects/tool-pub").await;
    assert_eq!(public.status, StatusCode::OK);
    assert!(public.body.contains("<code>web</code>"), "{}", public.body);
    assert!(!public.body.contains("Robot accounts"));
    let css = anon.get("/ui/assets/style.css").await;
    assert_eq!(css.headers["content-type"], "text/css; charset=utf-8");

    // The admin: everything, the registry's figures, robots, events; the
    // robot's description escaped.
    let mut admin = Browser::new(&env);
    let signed = admin.sign_in("admin", &env.server.admin_password).await;
    assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.body);
    let cookie = signed
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap())
        .find(|c| c.starts_with("slipway_session="))
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let home = admin.get("/ui/").await;
    assert!(
        home.body.contains("Saved by deduplication"),
        "{}",
        home.body
    );
    assert!(home.body.contains("tool-a") && home.body.contains("tool-b"));
    assert!(home.body.contains("admin"), "who is signed in");
    let a = admin.get("/ui/projects/tool-a").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains("robot$tool-a+puller"), "{}", a.body);
    assert!(
        a.body
            .contains("&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;"),
        "{}",
        a.body
    );
    assert!(!a.body.contains("<script>alert"), "escaped");

    // A robot: its own project, read-only (no robots, no events).
    let mut robot = Browser::new(&env);
    let s = robot.sign_in("robot$tool-a+puller", &robot_secret).await;
    assert_eq!(s.status, StatusCode::SEE_OTHER, "{}", s.body);
    let list = robot.get("/ui/projects").await;
    assert!(list.body.contains("tool-a") && list.body.contains("tool-pub"));
    assert!(!list.body.contains("tool-b"));
    let a = robot.get("/ui/projects/tool-a").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(!a.body.contains("Robot accounts") && !a.body.contains("Events"));
    assert_eq!(
        robot.get("/ui/projects/tool-b").await.status,
        StatusCode::NOT_FOUND
    );

    // A build token: its project, with its triggers.
    let mut maintainer = Browser::new(&env);
    let s = maintainer.sign_in(token_name, token_secret).await;
    assert_eq!(s.status, StatusCode::SEE_OTHER, "{}", s.body);
    let b = maintainer.get("/ui/projects/tool-b").await;
    assert_eq!(b.status, StatusCode::OK);
    assert!(b.body.contains("Triggers"), "{}", b.body);
    assert_eq!(
        maintainer.get("/ui/projects/tool-a").await.status,
        StatusCode::NOT_FOUND
    );
    // The token deleted: its session ends with it.
    let (s, _) = env
        .api(
            Method::DELETE,
            "/api/v1/projects/tool-b/build-tokens/ci",
            Some(&env.admin()),
            None,
        )
        .await;
    assert!(s.is_success(), "{s}");
    assert_eq!(
        maintainer.get("/ui/projects/tool-b").await.status,
        StatusCode::NOT_FOUND
    );
    assert!(maintainer.get("/ui/").await.body.contains("Sign in"));

    // Sign-out needs the session's CSRF token.
    let home = admin.get("/ui/").await;
    let csrf = Browser::csrf(&home);
    let forged = admin
        .request(Method::POST, "/ui/logout", Some(&[("csrf", "forged")]))
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(
        admin
            .get("/ui/")
            .await
            .body
            .contains("Saved by deduplication"),
        "still signed in"
    );
    let out = admin
        .request(Method::POST, "/ui/logout", Some(&[("csrf", &csrf)]))
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(admin.get("/ui/").await.body.contains("Sign in"));
}

#[tokio::test]
async fn sign_in_checks_its_nonce_and_is_rate_limited() {
    let env = Env::new().await;
    let mut b = Browser::new(&env);
    // Without the nonce the sign-in form set (a form posted from elsewhere).
    let p = b
        .request(
            Method::POST,
            "/ui/login",
            Some(&[("user", "admin"), ("password", &env.server.admin_password)]),
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
    assert!(p.body.contains("sign in again"), "{}", p.body);
    let wrong = b.sign_in("admin", "not-the-password").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("The user name or password is wrong."));
    let mut last = wrong.status;
    for _ in 0..12 {
        last = b.sign_in("admin", "not-the-password").await.status;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    // Even the right password waits now.
    let right = b.sign_in("admin", &env.server.admin_password).await;
    assert_eq!(right.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(right.body.contains("Too many failed sign-ins"));
}

#[tokio::test]
async fn a_repository_s_tags_sort_across_pages_with_their_pull_lines() {
    let env = Env::new().await;
    // tool-pub/web has v1 (from Env); more tags after it, the last "a-…".
    for k in 0..55 {
        env.push_image(
            "tool-pub/web",
            &format!("t{k:02}"),
            format!("seed {k}").as_bytes(),
        )
        .await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    env.push_image("tool-pub/web", "a-latest", b"the newest")
        .await;
    let mut anon = Browser::new(&env);
    let first = anon.get("/ui/r/tool-pub/web").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert!(
        first.body.contains("57 tags, page 1 of 2"),
        "{}",
        first.body
    );
    let pull = format!("podman pull {}/tool-pub/web:a-latest", env.server.addr);
    assert!(first.body.contains(&pull), "{}", first.body);
    assert!(first.body.contains(&format!("data-copy=\"{pull}\"")));
    // By name: a-latest first, v1 last (on page 2).
    let order = |body: &str, tags: &[&str]| {
        let at: Vec<usize> = tags
            .iter()
            .map(|t| {
                body.find(&format!("<code>{t}</code>"))
                    .unwrap_or(usize::MAX)
            })
            .collect();
        at.windows(2).all(|w| w[0] < w[1]) && at.iter().all(|a| *a != usize::MAX)
    };
    assert!(
        order(&first.body, &["a-latest", "t00", "t48"]),
        "{}",
        first.body
    );
    let second = anon.get("/ui/r/tool-pub/web?sort=name&page=1").await;
    assert!(second.body.contains("<code>v1</code>"), "{}", second.body);
    // By date, newest first: a-latest, then the t… in reverse, v1 last.
    let newest = anon.get("/ui/r/tool-pub/web?sort=date&desc=true").await;
    assert!(
        order(&newest.body, &["a-latest", "t54", "t53"]),
        "{}",
        newest.body
    );
    let oldest = anon.get("/ui/r/tool-pub/web?sort=date").await;
    assert!(
        order(&oldest.body, &["v1", "t00", "t01"]),
        "{}",
        oldest.body
    );
    // A private repository is not there for anonymous viewers.
    assert_eq!(
        anon.get("/ui/r/tool-a/web").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        anon.get("/ui/r/tool-pub/nothing").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        anon.get("/ui/no-such-page").await.status,
        StatusCode::NOT_FOUND
    );
    // A pull shows as the tag's (and the repository's) last pull.
    let never = |body: &str| body.matches("<td class=\"pulled\">never</td>").count();
    assert_eq!(never(&first.body), 50, "{}", first.body);
    let (s, _, _) = env
        .send(
            Method::GET,
            "/v2/tool-pub/web/manifests/a-latest",
            None,
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let page = anon.get("/ui/r/tool-pub/web").await.body;
        if never(&page) == 49 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pull was not recorded: {page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let project = anon.get("/ui/projects/tool-pub").await.body;
    assert!(!project.contains(">never</td>"), "{project}");
    // The tag history: created, moved by a push, deleted.
    let first = env.push_image("tool-pub/web", "moving", b"first").await;
    let second = env.push_image("tool-pub/web", "moving", b"second").await;
    let (s, _) = env
        .api(
            Method::DELETE,
            "/v2/tool-pub/web/manifests/moving",
            Some(&env.admin()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let h = anon.get("/ui/r/tool-pub/web").await.body;
    let history = &h[h.find("Tag history").expect(&h)..];
    let short = |d: &str| d.chars().take(19).collect::<String>();
    let deleted = history
        .find(&format!(
            "deleted (was <a href=\"/ui/i/tool-pub/web@{second}\">"
        ))
        .expect(history);
    let moved = history
        .find(&format!("moved from <a href=\"/ui/i/tool-pub/web@{first}\"><code title=\"{first}\">{}…</code></a> to", short(&first)))
        .expect(history);
    let created = history.find("created at").expect(history);
    assert!(
        deleted < moved && moved < created,
        "newest first: {history}"
    );
    assert!(history.contains("class=\"cause push\"") && history.contains("class=\"cause delete\""));
    // The project page links the repository.
    let p = anon.get("/ui/projects/tool-pub").await;
    assert!(p.body.contains("href=\"/ui/r/tool-pub/web\""), "{}", p.body);
}

#[tokio::test]
async fn a_build_s_page_streams_its_log_to_its_end_and_offers_cancel_and_retry() {
    let env = Env::with(|c| {
        c.builds.workers = 0;
        c.builds.allow_local_sources = true;
    })
    .await;
    env.server.create_project("platform", true).await;
    env.push_image("platform/builder", "bookworm", b"a builder")
        .await;
    env.approve("platform/builder:bookworm").await;
    let token = env.build_token("tool-pub", "ci").await;
    let dir = tempfile::tempdir().unwrap();
    crate::builds::git_repo(&dir.path().join("app"), &[("index.html", "hi\n")]);
    let (s, v) = env
        .api(
            Method::POST,
            "/api/v1/projects/tool-pub/builds",
            Some(&token),
            Some(json!({"source_url": format!("file://{}", dir.path().join("app").display())})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let meta = &env.server.state.meta;
    let lines: Vec<(String, String)> = ["one", "two <b>bold</b>", "three"]
        .iter()
        .map(|l| ("build".to_owned(), l.to_string()))
        .collect();
    meta.build_log_append(&id, 1, &lines).await.unwrap();
    let page = format!("/ui/projects/tool-pub/builds/{id}");

    // Anonymous: the build of a public project, not its log.
    let mut anon = Browser::new(&env);
    let p = anon.get(&page).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(p.body.contains(&id) && p.body.contains("Sign in as someone of this project"));
    assert!(!p.body.contains("two"));
    assert_eq!(
        anon.get(&format!("{page}/events")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        anon.get(&format!("{page}/log.txt")).await.status,
        StatusCode::FORBIDDEN
    );
    let list = anon.get("/ui/projects/tool-pub").await;
    assert!(
        list.body.contains(&format!("href=\"{page}\"")),
        "{}",
        list.body
    );
    let all = anon.get("/ui/builds").await;
    assert!(
        all.body.contains(&format!("href=\"{page}\"")),
        "{}",
        all.body
    );
    let pending = anon.get("/ui/builds?state=pending").await;
    assert!(
        pending.body.contains(&format!("href=\"{page}\"")),
        "{}",
        pending.body
    );
    let failed = anon.get("/ui/builds?state=failed").await;
    assert!(
        !failed.body.contains(&format!("href=\"{page}\"")),
        "{}",
        failed.body
    );

    // The maintainer: the log (escaped), live from line 2 on, to its end.
    let mut m = Browser::new(&env);
    let (user, secret) = {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(token.strip_prefix("Basic ").unwrap())
            .unwrap();
        let s = String::from_utf8(raw).unwrap();
        let (u, p) = s.split_once(':').unwrap();
        (u.to_owned(), p.to_owned())
    };
    assert_eq!(
        m.sign_in(&user, &secret).await.status,
        StatusCode::SEE_OTHER
    );
    let p = m.get(&page).await;
    assert!(p.body.contains("two &lt;b&gt;bold&lt;/b&gt;"), "{}", p.body);
    assert!(p.body.contains("data-running=\"true\""), "{}", p.body);
    let csrf = Browser::csrf(&p);
    let raw = m.get(&format!("{page}/log.txt")).await;
    assert_eq!(raw.body, "one\ntwo <b>bold</b>\nthree\n");
    assert!(
        raw.headers["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );

    let cookie: Vec<String> = m.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut events = m
        .http
        .get(format!("{}{page}/events", m.base))
        .header("cookie", cookie.join("; "))
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    assert!(
        events.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // A line written while the page follows, then the build cancelled.
    meta.build_log_append(&id, 4, &[("build".to_owned(), "four".to_owned())])
        .await
        .unwrap();
    let forged = m
        .request(
            Method::POST,
            &format!("{page}/cancel"),
            Some(&[("csrf", "x")]),
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let cancelled = m
        .request(
            Method::POST,
            &format!("{page}/cancel"),
            Some(&[("csrf", &csrf)]),
        )
        .await;
    assert_eq!(
        cancelled.status,
        StatusCode::SEE_OTHER,
        "{}",
        cancelled.body
    );
    let mut text = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !text.contains("event: end") {
        assert!(std::time::Instant::now() < deadline, "no end event: {text}");
        match tokio::time::timeout(std::time::Duration::from_secs(5), events.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            other => panic!("the stream stopped ({other:?}): {text}"),
        }
    }
    assert!(!text.contains("data: one"), "resumed after line 1: {text}");
    let two = text.find("data: two <b>bold</b>").expect(&text);
    let four = text.find("data: four").expect(&text);
    let end = text.find("event: end\ndata: cancelled").expect(&text);
    assert!(two < four && four < end, "{text}");
    assert!(text.contains("id: 4"), "{text}");

    // Retry: a new build of the same commit, its page.
    let retried = m
        .request(
            Method::POST,
            &format!("{page}/retry"),
            Some(&[("csrf", &csrf)]),
        )
        .await;
    assert_eq!(retried.status, StatusCode::SEE_OTHER, "{}", retried.body);
    let to = retried.headers["location"].to_str().unwrap().to_owned();
    assert!(
        to.starts_with("/ui/projects/tool-pub/builds/b") && !to.ends_with(&id),
        "{to}"
    );
    assert!(m.get(&to).await.body.contains("pending"));
    // A robot of another project may not act here even with a session.
    let secret = env.robot("tool-a", "viewer", &["pull"]).await;
    let mut r = Browser::new(&env);
    assert_eq!(
        r.sign_in("robot$tool-a+viewer", &secret).await.status,
        StatusCode::SEE_OTHER
    );
    let home = r.get("/ui/").await;
    let rc = Browser::csrf(&home);
    let denied = r
        .request(
            Method::POST,
            &format!("{page}/retry"),
            Some(&[("csrf", &rc)]),
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.body);
}

/// Pushes an image of `layers` and `config` as the admin; its digest.
pub async fn push(
    env: &Env,
    repo: &str,
    tag: &str,
    layers: &[&[u8]],
    config: serde_json::Value,
) -> String {
    use crate::security::digest;
    let config = config.to_string().into_bytes();
    for blob in layers.iter().copied().chain([config.as_slice()]) {
        let (s, _, b) = env
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={}", digest(blob)),
                Some(&env.admin()),
                blob.to_vec(),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": layers.iter().map(|l| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(l), "size": l.len()})).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    let (s, h, b) = env
        .send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{tag}"),
            Some(&env.admin()),
            manifest,
            Some("application/vnd.oci.image.manifest.v1+json"),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    h["docker-content-digest"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_image_s_page_says_which_layers_cost_and_whether_its_run_image_is_current() {
    let env = Env::new().await;
    env.server.create_project("platform", true).await;
    let base: &[u8] = b"the run image's layer";
    let run_config = json!({"os": "linux", "architecture": "amd64",
        "history": [{"created_by": "debootstrap bookworm"}]});
    let run_v1 = push(
        &env,
        "platform/run",
        "bookworm",
        &[base],
        run_config.clone(),
    )
    .await;
    let meta = json!({"runImage": {"image": "platform/run:bookworm", "reference": run_v1,
                                   "topLayer": "sha256:00"}})
    .to_string();
    let app: &[u8] = b"the app's own layer <script>";
    let app_digest = push(
        &env,
        "tool-pub/app",
        "latest",
        &[base, app],
        json!({"os": "linux", "architecture": "amd64",
               "config": {"Labels": {"io.buildpacks.lifecycle.metadata": meta}},
               "history": [{"created_by": "debootstrap bookworm"},
                           {"created_by": "buildpack <b>tool/web</b>"}]}),
    )
    .await;
    let mut anon = Browser::new(&env);
    let page = format!("/ui/i/tool-pub/app@{app_digest}");
    let p = anon.get(&page).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(p.body.contains("platform/run:bookworm"), "{}", p.body);
    assert!(p.body.contains(">current<"), "{}", p.body);
    assert!(
        p.body.contains("no: the run image&#39;s") || p.body.contains("no: the run image's"),
        "{}",
        p.body
    );
    assert!(
        p.body.contains("buildpack &lt;b&gt;tool/web&lt;/b&gt;"),
        "{}",
        p.body
    );
    let repo = anon.get("/ui/r/tool-pub/app").await;
    assert!(
        repo.body.contains(&format!("href=\"{page}\"")),
        "{}",
        repo.body
    );

    // The platform patches its run image: the app is outdated.
    push(
        &env,
        "platform/run",
        "bookworm",
        &[b"a patched layer"],
        run_config,
    )
    .await;
    let p = anon.get(&page).await;
    assert!(p.body.contains("outdated: rebase available"), "{}", p.body);
    // A private project's image is not there for anonymous viewers.
    let (s, h, _) = env
        .send(
            Method::HEAD,
            "/v2/tool-a/web/manifests/v1",
            Some(&env.admin()),
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let private = format!(
        "/ui/i/tool-a/web@{}",
        h["docker-content-digest"].to_str().unwrap()
    );
    assert_eq!(anon.get(&private).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        anon.get("/ui/i/tool-pub/app@sha256:nothing").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_admin_creates_a_project_sets_its_quota_and_starts_a_build_from_forms() {
    let env = Env::with(|c| {
        c.builds.workers = 0;
        c.builds.allow_local_sources = true;
    })
    .await;
    env.server.create_project("platform", true).await;
    env.push_image("platform/builder", "bookworm", b"a builder")
        .await;
    env.approve("platform/builder:bookworm").await;
    let mut admin = Browser::new(&env);
    admin.sign_in("admin", &env.server.admin_password).await;
    let list = admin.get("/ui/projects").await;
    let csrf = Browser::csrf(&list);
    let made = admin
        .request(
            Method::POST,
            "/ui/projects",
            Some(&[
                ("csrf", &csrf),
                ("name", "tool-new"),
                ("public", "yes"),
                ("quota", "2GiB"),
            ]),
        )
        .await;
    assert_eq!(made.status, StatusCode::SEE_OTHER, "{}", made.body);
    assert_eq!(made.headers["location"], "/ui/projects/tool-new");
    let p = admin.get("/ui/projects/tool-new").await;
    assert!(p.body.contains("0 B of 2 GiB"), "{}", p.body);
    let (_, v) = env
        .api(
            Method::GET,
            "/api/v1/projects/tool-new",
            Some(&env.admin()),
            None,
        )
        .await;
    assert_eq!(v["quota_bytes"], 2u64 << 30, "{v}");
    for (form, status, says) in [
        (
            vec![("csrf", csrf.as_str()), ("name", "Bad/Name")],
            StatusCode::BAD_REQUEST,
            "not a valid project name",
        ),
        (
            vec![("csrf", csrf.as_str()), ("name", "tool-new")],
            StatusCode::CONFLICT,
            "exists",
        ),
        (
            vec![
                ("csrf", csrf.as_str()),
                ("name", "tool-q"),
                ("quota", "lots"),
            ],
            StatusCode::BAD_REQUEST,
            "not a size",
        ),
        (vec![("name", "tool-x")], StatusCode::FORBIDDEN, "CSRF"),
    ] {
        let r = admin
            .request(Method::POST, "/ui/projects", Some(&form))
            .await;
        assert_eq!(r.status, status, "{form:?}: {}", r.body);
        assert!(r.body.contains(says), "{form:?}: {}", r.body);
    }
    let q = admin
        .request(
            Method::POST,
            "/ui/projects/tool-new/quota",
            Some(&[("csrf", &csrf), ("quota", "500MiB")]),
        )
        .await;
    assert_eq!(q.status, StatusCode::SEE_OTHER, "{}", q.body);
    assert!(
        admin
            .get("/ui/projects/tool-new")
            .await
            .body
            .contains("of 500 MiB")
    );

    let dir = tempfile::tempdir().unwrap();
    crate::builds::git_repo(&dir.path().join("app"), &[("index.html", "hi\n")]);
    let source = format!("file://{}", dir.path().join("app").display());
    let started = admin
        .request(
            Method::POST,
            "/ui/projects/tool-new/builds",
            Some(&[
                ("csrf", &csrf),
                ("source_url", &source),
                ("ref", "main"),
                ("image_name", "web"),
            ]),
        )
        .await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.body);
    let to = started.headers["location"].to_str().unwrap().to_owned();
    assert!(to.starts_with("/ui/projects/tool-new/builds/b"), "{to}");
    assert!(admin.get(&to).await.body.contains("pending"));

    // Nobody else may use these forms.
    let mut anon = Browser::new(&env);
    let r = anon
        .request(Method::POST, "/ui/projects", Some(&[("name", "tool-y")]))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_admin_manages_robot_accounts_with_the_secret_shown_once() {
    let env = Env::new().await;
    let mut admin = Browser::new(&env);
    admin.sign_in("admin", &env.server.admin_password).await;
    let page = admin.get("/ui/projects/tool-a").await;
    let csrf = Browser::csrf(&page);
    let made = admin
        .request(
            Method::POST,
            "/ui/projects/tool-a/robots",
            Some(&[
                ("csrf", &csrf),
                ("name", "deployer"),
                ("description", "CD"),
                ("expires_in_days", "30"),
            ]),
        )
        .await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.body);
    assert!(made.body.contains("robot$tool-a+deployer"));
    assert!(made.body.contains("shown only this once"));
    let at = made.body.find("id=\"robot-secret\">").unwrap() + 18;
    let secret = made.body[at..].split('<').next().unwrap().to_owned();
    // The secret works (a token for the robot), and is not shown again.
    let (s, _, _) = env
        .get(
            "/auth/token?service=slipway&scope=repository:tool-a/web:pull",
            Some(&crate::security::basic("robot$tool-a+deployer", &secret)),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let page = admin.get("/ui/projects/tool-a").await;
    assert!(page.body.contains("robot$tool-a+deployer") && !page.body.contains(&secret));
    assert!(page.body.contains("<td>pull</td>"), "{}", page.body);
    // Disabled: its secret stops working; deleted: gone.
    let r = admin
        .request(
            Method::POST,
            "/ui/projects/tool-a/robots/deployer",
            Some(&[("csrf", &csrf), ("action", "disable")]),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let (s, _, _) = env
        .get(
            "/auth/token?service=slipway&scope=repository:tool-a/web:pull",
            Some(&crate::security::basic("robot$tool-a+deployer", &secret)),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        admin
            .get("/ui/projects/tool-a")
            .await
            .body
            .contains(">disabled<")
    );
    let forged = admin
        .request(
            Method::POST,
            "/ui/projects/tool-a/robots/deployer",
            Some(&[("action", "delete")]),
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let r = admin
        .request(
            Method::POST,
            "/ui/projects/tool-a/robots/deployer",
            Some(&[("csrf", &csrf), ("action", "delete")]),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let after = admin.get("/ui/projects/tool-a").await.body;
    let robots = &after[after.find("Robot accounts").unwrap()..after.find("<h2>Events").unwrap()];
    assert!(!robots.contains("robot$tool-a+deployer"), "{robots}");
    let (_, audit) = env
        .api(
            Method::GET,
            "/api/v1/audit?project=tool-a",
            Some(&env.admin()),
            None,
        )
        .await;
    let audit = audit.to_string();
    assert!(
        audit.contains("robot.create") && audit.contains("robot.delete"),
        "{audit}"
    );
    assert!(!audit.contains(&secret));
}
