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

/// The command-line clients live in `registry/src/cli/`, inside the binary:
/// they use the server's API types, and nothing of the server (the
/// library, `registry/src/` but `main.rs` and `cli/`) names them.
#[test]
fn the_server_does_not_depend_on_the_cli() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    assert!(
        !lib.lines()
            .any(|l| l.trim_start().starts_with("pub mod cli")
                || l.trim_start().starts_with("mod cli")),
        "lib.rs must not declare the cli module"
    );
    let mut stack = vec![src.clone()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path == src.join("cli") || path == src.join("main.rs") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                seen += 1;
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    !text.contains("crate::cli") && !text.contains("cli::"),
                    "{} refers to the command-line clients",
                    path.display()
                );
            }
        }
    }
    assert!(seen > 20, "only {seen} server files read");
    assert!(src.join("cli/admin.rs").exists() && src.join("cli/build.rs").exists());
}
