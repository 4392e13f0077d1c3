//! Our spec-driven conformance suite (`slipway_conformance`) against an
//! in-process Slipway: the admin pushes into the private project
//! `conformance` through Docker token auth, and every check must pass.

use slipway_conformance::Target;
use slipway_registry::testing::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slipway_passes_every_conformance_check() {
    let server = TestServer::start().await;
    // Private: nothing is answered without the token round trip.
    server.create_project("conformance", false).await;
    let target = Target::new(server.url.clone()).with_credentials("admin", &server.admin_password);

    let report = slipway_conformance::run_all(&target).await;
    // Shown with --nocapture, or when the test fails.
    println!("{report}");

    assert!(
        report.results.len() >= 60,
        "the suite ran only {} checks:\n{report}",
        report.results.len()
    );
    assert!(
        report.passed(),
        "{} of {} conformance checks failed against Slipway:\n{}\n\nThe whole report:\n{report}",
        report.failures().len(),
        report.results.len(),
        report.failure_lines()
    );
    // The token flow was exercised, not bypassed.
    let challenge = report.get("base/auth-challenge").expect("the check ran");
    assert_eq!(challenge.reason, "Bearer token auth", "{report}");
}
