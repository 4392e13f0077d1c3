//! `storage` ← `registry`; `builder` depends on neither. Read from
//! `cargo metadata`, so a wrong edge fails here rather than in review.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

fn workspace_edges() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut edges = BTreeMap::new();
    for pkg in meta["packages"].as_array().unwrap() {
        let name = pkg["name"].as_str().unwrap().to_owned();
        let deps = pkg["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null()) // normal dependencies only
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect();
        edges.insert(name, deps);
    }
    edges
}

#[test]
fn dependencies_point_the_right_way() {
    let edges = workspace_edges();
    let deps = |p: &str| {
        edges
            .get(p)
            .unwrap_or_else(|| panic!("package {p} is missing"))
    };
    let storage = deps("slipway-storage");
    for forbidden in [
        "slipway-registry",
        "slipway-builder",
        "axum",
        "hyper",
        "http",
        "jsonwebtoken",
        "tower",
    ] {
        assert!(
            !storage.contains(forbidden),
            "storage must not depend on {forbidden}"
        );
    }
    let builder = deps("slipway-builder");
    for forbidden in ["slipway-registry", "slipway-storage", "axum"] {
        assert!(
            !builder.contains(forbidden),
            "builder must not depend on {forbidden}"
        );
    }
    assert!(deps("slipway-registry").contains("slipway-storage"));
}
