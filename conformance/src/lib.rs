//! Slipway's conformance suite for the OCI distribution spec v1.1, written
//! from the spec (`spec.md` of opencontainers/distribution-spec, and the
//! image-spec for descriptors and media types).
//!
//! It runs against any registry URL, with optional credentials: the client
//! answers Docker token auth (`WWW-Authenticate: Bearer realm=…`) and Basic
//! challenges. Every check builds its own content (random blobs, configs,
//! manifests) in repositories under [`Target::namespace`], so runs do not
//! interfere, and reports pass or fail with a one-line reason:
//!
//! ```no_run
//! # async fn demo() {
//! let target = slipway_conformance::Target::new("http://127.0.0.1:5000")
//!     .with_credentials("admin", "secret");
//! let report = slipway_conformance::run_all(&target).await;
//! for failure in report.failures() {
//!     eprintln!("{}: {}", failure.name, failure.reason);
//! }
//! # }
//! ```
//!
//! Checks are strict: exact status codes, the headers the spec requires,
//! and the spec's error JSON with the spec's codes. Where the spec leaves
//! a choice (`MAY`/`SHOULD`), a check accepts every allowed answer unless
//! its section says otherwise (the `Link` header of paged tags lists and
//! the referrers `artifactType` filter are required here).

use std::fmt;

mod checks;
pub mod client;
pub mod content;
mod expect;
mod report;

pub use report::{CheckResult, Report};

/// The registry under test.
#[derive(Clone)]
pub struct Target {
    /// `http://host:port`, without `/v2`.
    pub base_url: String,
    /// The prefix of every repository the suite creates, such as
    /// `conformance/3f9a01c2`. On registries with projects, its first
    /// component must exist and allow pushes.
    pub namespace: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Target {
    /// A target with no credentials and a fresh `conformance/<random>`
    /// namespace.
    pub fn new(base_url: impl Into<String>) -> Target {
        Target {
            base_url: base_url.into(),
            namespace: format!("conformance/{}", content::random_name()),
            username: None,
            password: None,
        }
    }

    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Target {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Target {
        self.namespace = namespace.into();
        self
    }
}

/// The password never shows.
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("base_url", &self.base_url)
            .field("namespace", &self.namespace)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Runs every check against `target`.
pub async fn run_all(target: &Target) -> Report {
    Box::pin(checks::run(target, &|_| true)).await
}

/// Runs the checks whose names `select` keeps (the run-wide audits judge
/// only what ran).
pub async fn run_selected(target: &Target, select: &dyn Fn(&str) -> bool) -> Report {
    Box::pin(checks::run(target, select)).await
}
