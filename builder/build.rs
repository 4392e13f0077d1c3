//! Builds the launcher (`launcher/`, crate `slipway-launcher`) as a static
//! executable and leaves it at `$OUT_DIR/slipway-launcher`, which
//! `src/launcher.rs` embeds: every app image gets the same bytes, whatever
//! libc its run image has.
//!
//! A nested `cargo build`:
//! - with its own target directory inside `OUT_DIR`, so it never waits on
//!   the outer build's lock, and stays incremental between runs;
//! - `--offline --locked`: the outer build already resolved and fetched
//!   everything the launcher uses (serde and toml, at the workspace's
//!   versions);
//! - `--target` the builder's own target, so the static flag reaches only
//!   the launcher and not the proc-macros and build scripts it compiles;
//! - with the outer build's jobserver (cargo passes it in
//!   `CARGO_MAKEFLAGS`), so the two share the CPUs the user allowed;
//! - with its flags and release profile set here, not inherited: the
//!   outer `RUSTFLAGS` (in `CARGO_ENCODED_RUSTFLAGS`, which would win) and
//!   the workspace's release profile are for the server.
//!
//! It reruns when the launcher's sources or `Cargo.lock` change.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Static, and the same bytes wherever the checkout, the cargo home and
/// the target directory are (panic messages name source files): the
/// launcher layer of an image is then the same across machines.
fn rustflags(manifest_dir: &Path, target_dir: &Path) -> String {
    let workspace = manifest_dir.parent().expect("builder/ is in the workspace");
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let mut flags = vec!["-Ctarget-feature=+crt-static".to_owned()];
    let mut remap = |from: &Path, to: &str| {
        flags.push(format!("--remap-path-prefix={}={to}", from.display()));
    };
    // The last matching prefix wins: the most specific last.
    remap(workspace, "/slipway");
    if let Some(home) = cargo_home {
        remap(&home, "/cargo");
    }
    remap(target_dir, "/target");
    // Cargo's encoding: flags separated by 0x1f, so paths may hold spaces.
    flags.join("\x1f")
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=launcher");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    // Embedded by src/stack.rs (include_dir does not tell cargo).
    println!("cargo:rerun-if-changed=buildpacks");
    println!("cargo:rerun-if-changed=stacks");

    let var = |name: &str| env::var(name).unwrap_or_else(|_| panic!("cargo sets {name}"));
    let out_dir = PathBuf::from(var("OUT_DIR"));
    let manifest_dir = PathBuf::from(var("CARGO_MANIFEST_DIR"));
    let target = var("TARGET");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = out_dir.join("launcher-target");

    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(manifest_dir.join("launcher/Cargo.toml"))
        .args([
            "--bin",
            "slipway-launcher",
            "--release",
            "--offline",
            "--locked",
        ])
        .arg("--target")
        .arg(&target)
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            rustflags(&manifest_dir, &target_dir),
        )
        // `cargo clippy` would lint the launcher again, in here.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        // Small, and cheap to build: optimised for size, one codegen unit,
        // no unwinding (the launcher execs or exits; a panic is a bug
        // either way), no symbols. LTO would save 0.1 MB of 0.75 MB
        // compressed for a fifth more build time: not worth it.
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
        .env("CARGO_PROFILE_RELEASE_LTO", "false")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env("CARGO_PROFILE_RELEASE_INCREMENTAL", "false")
        .stdin(Stdio::null())
        // Cargo reads a build script's stdout for instructions; the nested
        // build's messages go to stderr, shown if this fails.
        .stdout(Stdio::from(std::io::stderr()));
    let started = Instant::now();
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo to build the launcher: {e}"));
    if !status.success() {
        panic!("building the launcher failed ({status}); its output is above");
    }
    let built = target_dir
        .join(&target)
        .join("release")
        .join("slipway-launcher");
    let dest = out_dir.join("slipway-launcher");
    fs::copy(&built, &dest).unwrap_or_else(|e| {
        panic!(
            "could not copy {} to {}: {e}",
            built.display(),
            dest.display()
        )
    });
    eprintln!(
        "built the launcher for {target} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
