//! The registry crate's integration tests.
//!
//! - `architecture`: the dependency direction between the crates.
//! - `api`: requests through the real router, in process.

mod api;
mod architecture;
mod backup;
mod browser;
mod builds;
mod builds_e2e;
mod debian;
mod descriptor;
mod fsck;
mod full_disk;
mod gc_stress;
mod isolation;
mod languages;
mod lifecycle;
mod logs;
mod oidc;
mod people;
mod push_to_deploy;
mod quota;
mod readme;
mod rebase;
mod replicas;
mod reupload;
mod security;
mod ui;
