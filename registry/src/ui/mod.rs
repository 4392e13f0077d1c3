//! The web dashboard at `/ui/…`: server-rendered HTML (maud: every value
//! escaped at compile-checked call sites), one stylesheet and one small
//! script served from the binary, a Content-Security-Policy that allows
//! nothing inline and nothing from elsewhere. Pages work without
//! JavaScript.
//!
//! Who sees what (`session::Viewer`): public projects' pages are readable
//! by anyone, as their images are pullable by anyone; a private project's
//! pages answer 404, as a project that does not exist does, to whoever may
//! not pull there — its name is never shown to them.

pub mod builds;
pub mod fleet;
pub mod forms;
pub mod image;
pub mod pages;
pub mod session;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use crate::server::AppState;
use session::{Session, Viewer};

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(pages::overview))
        .route(
            "/ui/projects",
            get(pages::projects).post(forms::create_project),
        )
        .route("/ui/projects/{project}", get(pages::project))
        .route("/ui/projects/{project}/quota", post(forms::set_quota))
        .route("/ui/projects/{project}/robots", post(forms::create_robot))
        .route(
            "/ui/projects/{project}/robots/{robot}",
            post(forms::robot_action),
        )
        .route("/ui/projects/{project}/builds", post(forms::start_build))
        .route("/ui/builds", get(pages::builds))
        .route("/ui/r/{*repository}", get(pages::repository))
        .route("/ui/i/{*image}", get(image::page))
        .route("/ui/fleet", get(fleet::page).post(fleet::act))
        .route("/ui/projects/{project}/builds/{id}", get(builds::page))
        .route(
            "/ui/projects/{project}/builds/{id}/log.txt",
            get(builds::raw_log),
        )
        .route(
            "/ui/projects/{project}/builds/{id}/events",
            get(builds::events),
        )
        .route(
            "/ui/projects/{project}/builds/{id}/cancel",
            post(builds::cancel),
        )
        .route(
            "/ui/projects/{project}/builds/{id}/retry",
            post(builds::retry),
        )
        .route("/ui/login", get(session::login_form).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/sign-in/oidc", get(session::oidc_start))
        .route("/ui/sign-in/oidc/callback", get(session::oidc_callback))
        .route("/ui/assets/style.css", get(style))
        .route("/ui/assets/app.js", get(script))
        // (The admin API's router holds the server's fallback.)
        .route(
            "/ui/{*rest}",
            get(|s: Session| async move {
                refused(&s, StatusCode::NOT_FOUND, "There is no such page.")
            }),
        )
        .layer(axum::middleware::from_fn(security_headers))
}

/// `/`: browsers go to the dashboard; other clients get 404 as before.
pub async fn root(headers: axum::http::HeaderMap) -> Response {
    let html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if html {
        Redirect::to("/ui/").into_response()
    } else {
        (StatusCode::NOT_FOUND, "not found\n").into_response()
    }
}

async fn security_headers(req: Request, next: Next) -> Response {
    let asset = req.uri().path().starts_with("/ui/assets/");
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !asset {
        // Pages show who is signed in: never from a shared cache.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLE,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        SCRIPT,
    )
        .into_response()
}

/// A page: the header with the navigation and who is signed in, then
/// `body`.
pub fn layout(title: &str, session: &Session, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Slipway" }
                link rel="stylesheet" href="/ui/assets/style.css";
                script src="/ui/assets/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to the content" }
                header.top {
                    a.brand href="/ui/" { "Slipway" }
                    nav {
                        a href="/ui/" { "Overview" }
                        a href="/ui/projects" { "Projects" }
                        a href="/ui/builds" { "Builds" }
                        @if session.viewer.is_admin() {
                            a href="/ui/fleet" { "Fleet" }
                        }
                    }
                    div.who {
                        @match &session.viewer {
                            Viewer::Anonymous => {
                                a href="/ui/login" { "Sign in" }
                            }
                            v => {
                                span { (v.name()) }
                                form.inline method="post" action="/ui/logout" {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main #main tabindex="-1" { (body) }
            }
        }
    }
}

/// An error page with a sentence.
pub fn refused(session: &Session, status: StatusCode, sentence: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    (
        status,
        layout(
            title,
            session,
            html! {
                h1 { (title) }
                p.error { (sentence) }
                p { a href="/ui/" { "Back to the overview" } }
            },
        ),
    )
        .into_response()
}

/// The answer to a form whose CSRF token is not the session's.
pub fn forged(session: &Session) -> Response {
    refused(
        session,
        StatusCode::FORBIDDEN,
        "This form did not come from this dashboard (its CSRF token is missing or wrong).",
    )
}

/// A form that carries only its CSRF token.
#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// A digest shortened for a table (the whole one in its title).
pub fn short_digest(digest: &str) -> Markup {
    html! { code title=(digest) { (digest.chars().take(19).collect::<String>()) "…" } }
}

/// A commit's first twelve characters.
pub fn short_commit(commit: &str) -> String {
    commit.chars().take(12).collect()
}

/// A usage bar: "X of Y (p %)" or "X (unlimited)", amber and red at the
/// `[quota] warn_percent` thresholds.
pub fn usage_bar(used: u64, quota: Option<u64>, warn: &[u32]) -> Markup {
    let human = slipway_storage::error::human_bytes;
    match quota {
        Some(q) if q > 0 => {
            let pct = used as f64 * 100.0 / q as f64;
            let class = if warn.len() > 1 && pct >= warn[1] as f64 {
                "bar red"
            } else if !warn.is_empty() && pct >= warn[0] as f64 {
                "bar amber"
            } else {
                "bar"
            };
            html! {
                span.usage {
                    meter class=(class) min="0" max="100" value=(format!("{:.1}", pct.min(100.0))) {}
                    " " (human(used)) " of " (human(q)) " (" (format!("{pct:.1}")) " %)"
                }
            }
        }
        _ => html! { span.usage { (human(used)) " (unlimited)" } },
    }
}

/// A UTC time with a relative hint.
pub fn when(ms: i64) -> Markup {
    let now = slipway_storage::meta::now_ms();
    let secs = (now - ms).abs() / 1000;
    let span = match secs {
        0..60 => String::new(),
        60..3600 => format!("{} min", secs / 60),
        3600..86400 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86400),
    };
    let ago = match (span.is_empty(), ms > now) {
        (true, _) => "just now".to_owned(),
        (false, true) => format!("in {span}"),
        (false, false) => format!("{span} ago"),
    };
    let stamp = crate::api::time(ms);
    html! { time datetime=(stamp) title=(stamp) { (stamp.replace('T', " ").trim_end_matches('Z')) " UTC · " (ago) } }
}
