//! `oci-conformance --url URL [--user U --password P] [--namespace N]`:
//! runs Slipway's OCI distribution-spec conformance suite against a
//! registry, prints a table (check, result, reason), and exits non-zero if
//! any check failed.

use std::process::ExitCode;

use clap::Parser;
use slipway_conformance::{Target, run_selected};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "OCI distribution-spec v1.1 conformance checks against a registry"
)]
struct Args {
    /// The registry's base URL, such as http://127.0.0.1:5000.
    #[arg(long)]
    url: String,
    /// User name for Basic or token authentication.
    #[arg(long, requires = "password")]
    user: Option<String>,
    /// Password for that user (or set OCI_CONFORMANCE_PASSWORD).
    #[arg(
        long,
        env = "OCI_CONFORMANCE_PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    password: Option<String>,
    /// Prefix of every repository created, such as conformance/run1
    /// (default: conformance/<random>). On registries with projects, its
    /// first component must exist.
    #[arg(long)]
    namespace: Option<String>,
    /// Run only the checks whose names start with one of these prefixes
    /// (such as push/ or discovery/tags).
    #[arg(long = "only", value_name = "PREFIX")]
    only: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut target = Target::new(args.url);
    if let (Some(user), Some(password)) = (args.user, args.password) {
        target = target.with_credentials(user, password);
    }
    if let Some(ns) = args.namespace {
        target = target.with_namespace(ns);
    }
    let only = args.only;
    let report = run_selected(&target, &|name| {
        only.is_empty() || only.iter().any(|p| name.starts_with(p.as_str()))
    })
    .await;
    println!("{report}");
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
