//! The build front end: the Cloud Native Buildpacks lifecycle, run natively,
//! each buildpack in an unprivileged sandbox; and stack rebase.
//!
//! This crate depends on neither `slipway-storage` nor `slipway-registry`:
//! it reads and writes images only through the OCI distribution API
//! ([`oci::Client`]), as the `builder` identity. The registry crate hosts
//! the build API and the queue, and calls in here to run a build.
//!
//! Image layout conventions (the buildpacks platform spec's):
//! - builder images hold `/cnb/buildpacks/<id with / as _>/<version>/`,
//!   `/cnb/order.toml` and `/cnb/run.toml` (the run image reference);
//! - app images hold `/cnb/lifecycle/launcher` (see [`launcher`]),
//!   `/cnb/process/<type>` symlinks to it, the launch layers under
//!   `/layers/<buildpack id with / as _>/<layer>/`, the app under
//!   `/workspace`, and `/layers/config/metadata.toml`
//!   ([`slipway_launcher::metadata`]).
//!
//! The launch metadata and the layer environment rules (env files, layer
//! paths) live once, in the launcher's library (`slipway-launcher`): the
//! exporter writes `metadata.toml` with its types, and the build phase
//! makes each buildpack's environment with its `env` module
//! ([`slipway_launcher::env::Phase::Build`]).

pub mod buildpack;
pub mod egress;
pub mod export;
pub mod job;
pub mod launcher;
pub mod layers;
pub mod lifecycle;
pub mod limits;
pub mod oci;
pub mod project;
pub mod rebase;
pub mod sandbox;
pub mod stack;

/// Where the app's source is, in the build sandbox and in the image.
pub const WORKSPACE: &str = "/workspace";
/// Where buildpacks write their layers, in the build sandbox and the image.
pub const LAYERS: &str = "/layers";
/// The launcher's path in app images.
pub const LAUNCHER_PATH: &str = "/cnb/lifecycle/launcher";
/// The directory of per-process symlinks to the launcher.
pub const PROCESS_DIR: &str = "/cnb/process";
/// The user and group buildpacks run as, and that own the layers.
pub const CNB_UID: u32 = 1000;
pub const CNB_GID: u32 = 1000;
