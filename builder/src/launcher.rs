//! The launcher: a small static binary (crate `slipway-launcher`, in
//! `builder/launcher/`) that the exporter puts at `/cnb/lifecycle/launcher`
//! in every app image. It picks the process (by the `/cnb/process/<type>`
//! name it was started as, `CNB_PROCESS_TYPE`, or the default), applies the
//! launch layers' environment, and execs — so an image runs on any OCI
//! runtime without the upstream lifecycle.
//!
//! Not built yet: see the build front end issue.

/// Placeholder until the launcher crate lands (an empty file: images built
/// with it do not start).
pub const LAUNCHER: &[u8] = &[];
