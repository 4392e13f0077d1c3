//! The dashboard on a big registry (`cargo bench -p slipway-registry
//! --bench dashboard`): 3,000 projects and 100,000 images in SQLite (made
//! through the metadata layer, as pushes make them), then the overview and
//! the projects list (first page, sorted by usage, a filtered one, a late
//! page) asked as the admin over HTTP, 20 times each; prints the median and
//! the slowest against the target (100 ms). There is no peer to compare
//! with: distribution has no web pages.
//!
//! Options (environment): `DASHBOARD_BENCH_PROJECTS` (default 3000),
//! `DASHBOARD_BENCH_IMAGES` (100000).

use std::time::{Duration, Instant};

use slipway_registry::testing::TestServer;
use slipway_storage::meta::ManifestRef;
use slipway_storage::{Digest, Metadata, RepoName};

mod common;

use common::env_usize;

async fn populate(dir: &std::path::Path, projects: usize, images: usize) {
    let meta = Metadata::connect(&Metadata::sqlite_url(&dir.join("slipway.db")), 8)
        .await
        .unwrap();
    for p in 0..projects {
        let quota = (p % 3 != 0).then_some(((p % 50) as u64 + 1) << 20);
        meta.project_create(&format!("tool-{p}"), p % 5 != 0, quota, false)
            .await
            .unwrap();
    }
    let t = Instant::now();
    for m in 0..images {
        let project = format!("tool-{}", m % projects);
        let repo = RepoName::parse(&format!("{project}/app{}", (m / projects) % 3)).unwrap();
        let id = meta.ensure_repo(&repo).await.unwrap();
        // Two layers of its own, one shared by every image of the project.
        let refs: Vec<ManifestRef> = [
            format!("own {m} a"),
            format!("own {m} b"),
            format!("shared {project}"),
        ]
        .iter()
        .map(|s| ManifestRef {
            digest: Digest::sha256_of(s.as_bytes()),
            size: 2000,
            is_manifest: false,
        })
        .collect();
        common::put_image(
            &meta,
            &repo,
            id,
            refs,
            &format!("manifest {m}"),
            format!("v{m}"),
        )
        .await;
        if m % 20_000 == 19_999 {
            eprintln!("  {} images in {:.0?}", m + 1, t.elapsed());
        }
    }
    meta.close().await;
    eprintln!(
        "populated {projects} projects and {images} images in {:.1?}",
        t.elapsed()
    );
}

/// Signs in as the admin; the session cookie.
async fn sign_in(http: &reqwest::Client, url: &str, password: &str) -> String {
    let form = http.get(format!("{url}/ui/login")).send().await.unwrap();
    let nonce_cookie = form.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let body = form.text().await.unwrap();
    let at = body.find("name=\"csrf\" value=\"").unwrap() + 19;
    let nonce = body[at..].split('"').next().unwrap().to_owned();
    let r = http
        .post(format!("{url}/ui/login"))
        .header("cookie", nonce_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("user=admin&password={password}&csrf={nonce}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap())
        .find(|c| c.starts_with("slipway_session="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

fn main() {
    let projects = env_usize("DASHBOARD_BENCH_PROJECTS", 3000);
    let images = env_usize("DASHBOARD_BENCH_IMAGES", 100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path(), projects, images).await;
        let mut config = slipway_registry::Config::for_tests(dir.path());
        config.builds.workers = 0;
        let server = TestServer::start_config(config).await;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let cookie = sign_in(&http, &server.url, &server.admin_password).await;
        let last_page = projects.div_ceil(50).saturating_sub(1);
        println!("\n| Page ({projects} projects, {images} images) | median | slowest | target |");
        println!("|---|--:|--:|--:|");
        for path in [
            "/ui/".to_owned(),
            "/ui/projects".to_owned(),
            "/ui/projects?sort=usage&desc=true".to_owned(),
            "/ui/projects?q=tool-12".to_owned(),
            format!("/ui/projects?sort=quota&page={last_page}"),
            "/ui/projects/tool-7".to_owned(),
        ] {
            let mut times: Vec<Duration> = Vec::new();
            for _ in 0..21 {
                let t = Instant::now();
                let r = http
                    .get(format!("{}{path}", server.url))
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{path}");
                let body = r.text().await.unwrap();
                assert!(body.contains("Sign out"), "signed in on {path}");
                times.push(t.elapsed());
            }
            times.remove(0); // the first: caches warming
            times.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "| `{path}` | {:.1} ms | {:.1} ms | {} |",
                ms(times[times.len() / 2]),
                ms(*times.last().unwrap()),
                if ms(times[times.len() / 2]) < 100.0 {
                    "under 100 ms"
                } else {
                    "OVER 100 ms"
                }
            );
        }
        server.stop().await;
    });
}
