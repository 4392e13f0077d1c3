//! Our spec-driven conformance suite (`slipway_conformance`) against
//! Slipway: an in-process single node, and a deployment of two replicas
//! sharing PostgreSQL and SeaweedFS behind a round-robin proxy (consecutive
//! requests of one push land on different replicas), with blob GETs
//! streamed through the replicas or redirected to presigned S3 URLs. The
//! admin pushes into the private project `conformance` through Docker token
//! auth, and every check must pass.

use slipway_conformance::{Report, Target};
use slipway_registry::testing::TestServer;

use crate::deployment::ScaledOut;

/// Every check ran and passed, and the token flow was exercised.
fn assert_passes(report: &Report, what: &str) {
    assert!(
        report.results.len() >= 60,
        "the suite ran only {} checks against {what}:\n{report}",
        report.results.len()
    );
    assert!(
        report.passed(),
        "{} of {} conformance checks failed against {what}:\n{}\n\nThe whole report:\n{report}",
        report.failures().len(),
        report.results.len(),
        report.failure_lines()
    );
    // The token flow was exercised, not bypassed.
    let challenge = report.get("base/auth-challenge").expect("the check ran");
    assert_eq!(challenge.reason, "Bearer token auth", "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slipway_passes_every_conformance_check() {
    let server = TestServer::start().await;
    // Private: nothing is answered without the token round trip.
    server.create_project("conformance", false).await;
    let target = Target::new(server.url.clone()).with_credentials("admin", &server.admin_password);

    let report = slipway_conformance::run_all(&target).await;
    // Shown with --nocapture, or when the test fails.
    println!("{report}");
    assert_passes(&report, "Slipway");
}

/// The suite through the proxy; returns the proxy's count of redirects.
async fn replicas_pass(redirect: bool) -> usize {
    let deployment = ScaledOut::start(|c| c.storage.s3.redirect = redirect).await;
    deployment
        .replicas
        .create_project("conformance", false)
        .await;
    let target = Target::new(deployment.url())
        .with_credentials("admin", &deployment.replicas.admin_password);

    let report = slipway_conformance::run_all(&target).await;
    println!("{report}");
    assert_passes(&report, "two replicas behind a round-robin proxy");
    let hits = deployment.proxy.hits();
    assert!(
        hits.iter().all(|h| *h >= 100),
        "both replicas answered the suite: {hits:?}"
    );
    let redirects = deployment.proxy.redirects();
    deployment.stop().await;
    redirects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_behind_a_round_robin_proxy_pass_every_conformance_check() {
    let redirects = replicas_pass(false).await;
    assert_eq!(redirects, 0, "blob GETs are streamed: no redirect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_redirecting_blob_gets_to_s3_pass_every_conformance_check() {
    let redirects = replicas_pass(true).await;
    // Every blob GET check went through a presigned URL.
    assert!(
        redirects >= 5,
        "blob GETs were redirected to presigned URLs only {redirects} times"
    );
}
