//! Slipway's registry: the OCI distribution API over `slipway-storage`.
//!
//! Entry points: [`server::Server`] (bind, then run until shutdown),
//! [`server::router`] (the axum router, for in-process tests), and
//! [`testing::TestServer`] (a server on `127.0.0.1:0` with its own data
//! directory). This is the only crate that speaks HTTP and OCI error JSON.

pub mod api;
pub mod auth;
pub mod backup;
pub mod builds;
pub mod config;
pub mod error;
pub mod identity;
pub mod manifest;
pub mod rebase;
pub mod server;
pub mod sizes;
pub mod telemetry;
pub mod testing;
pub mod throttle;
pub mod tls;
pub mod triggers;
pub mod ui;
pub mod v2;
pub mod vault;

pub use config::Config;
pub use server::{AppState, Server};

/// Copies a stopped registry (metadata, then blobs) from the stores `from`
/// configures to the (empty) stores `to` configures.
pub async fn migrate(
    from: &Config,
    to: &Config,
) -> anyhow::Result<slipway_storage::migrate::MigrationReport> {
    use slipway_storage::migrate::{MigrationReport, copy_blobs, copy_metadata};
    let (src_meta, src_blobs) = server::open_stores(from).await?;
    std::fs::create_dir_all(&to.data_dir)?;
    let (dst_meta, dst_blobs) = server::open_stores(to).await?;
    let mut report = MigrationReport::default();
    copy_metadata(&src_meta, &dst_meta, &mut report).await?;
    copy_blobs(&src_meta, &src_blobs, &dst_blobs, &mut report).await?;
    // The target's key file: tokens signed before stay valid if it is the
    // same key; copy it when the target looks for it elsewhere.
    let (src_key, dst_key) = (from.key_file(), to.key_file());
    if src_key != dst_key && src_key.exists() && !dst_key.exists() {
        std::fs::copy(&src_key, &dst_key)?;
    }
    // The secrets key, without which the copied secrets cannot be opened.
    let (src_key, dst_key) = (from.secrets_key_file(), to.secrets_key_file());
    if src_key != dst_key && src_key.exists() && !dst_key.exists() {
        std::fs::copy(&src_key, &dst_key)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dst_key, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(report)
}
