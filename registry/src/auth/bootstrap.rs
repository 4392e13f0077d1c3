//! First start: the `admin` and `builder` accounts.
//!
//! `admin` gets the password from `SLIPWAY_ADMIN_PASSWORD` (which stays
//! authoritative: changing it changes the password at the next start) or,
//! without it, a generated one, written to `<data_dir>/admin-password`
//! (mode 0600) and printed once on standard output — never to the log.
//! `builder` gets a generated secret in `<data_dir>/builder-password`
//! (mode 0600), read by the build front end.

use std::path::Path;

use slipway_storage::Metadata;

use super::tokens::write_private;
use super::{ADMIN, BUILDER, secrets};
use crate::config::Config;

pub async fn ensure_accounts(meta: &Metadata, config: &Config) -> anyhow::Result<()> {
    let admin_file = config.data_dir.join("admin-password");
    match (&config.auth.admin_password, meta.account_hash(ADMIN).await?) {
        (Some(pw), Some(hash)) => {
            if !secrets::verify(pw.expose(), &hash).await {
                meta.account_set(ADMIN, &secrets::hash(pw.expose()).await?)
                    .await?;
                tracing::info!("the admin password was changed to SLIPWAY_ADMIN_PASSWORD");
            }
        }
        (Some(pw), None) => {
            meta.account_set(ADMIN, &secrets::hash(pw.expose()).await?)
                .await?
        }
        (None, Some(_)) => {}
        (None, None) => {
            let (pw, created) = read_or_create(&admin_file)?;
            meta.account_set(ADMIN, &secrets::hash(&pw).await?).await?;
            if created {
                // Shown once, on stdout, for the operator; the log never has it.
                println!(
                    "slipway: generated the admin password: {pw}\n\
                     slipway: it is saved in {} (mode 0600)",
                    admin_file.display()
                );
            }
        }
    }
    let configured = config.builds.builder_password.expose();
    match meta.account_hash(BUILDER).await? {
        // The configured password is authoritative, like the admin's.
        Some(hash) if !configured.is_empty() => {
            if !secrets::verify(configured, &hash).await {
                meta.account_set(BUILDER, &secrets::hash(configured).await?)
                    .await?;
                tracing::info!("the builder password was changed to builds.builder_password");
            }
        }
        Some(hash) => {
            // A replica with a file of its own cannot build: say so.
            if let Some(secret) = builder_secret(config)?
                && !secrets::verify(&secret, &hash).await
            {
                tracing::warn!(
                    "{} does not match the builder password in the database: builds here \
                     cannot write; set builds.builder_password on every replica",
                    config.data_dir.join("builder-password").display()
                );
            }
        }
        None => {
            let secret = if configured.is_empty() {
                read_or_create(&config.data_dir.join("builder-password"))?.0
            } else {
                configured.to_owned()
            };
            meta.account_set(BUILDER, &secrets::hash(&secret).await?)
                .await?;
        }
    }
    Ok(())
}

/// The builder identity's password: `builds.builder_password`, else the
/// one in `<data_dir>/builder-password` (created at the first start).
pub fn builder_secret(config: &Config) -> anyhow::Result<Option<String>> {
    let configured = config.builds.builder_password.expose();
    if !configured.is_empty() {
        return Ok(Some(configured.to_owned()));
    }
    match std::fs::read_to_string(config.data_dir.join("builder-password")) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!(
            "cannot read {}: {e}",
            config.data_dir.join("builder-password").display()
        )),
    }
}

/// The secret in `path`, or a new one written there. `true` when created.
fn read_or_create(path: &Path) -> anyhow::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok((s.trim().to_owned(), false)),
        Ok(_) => Err(anyhow::anyhow!(
            "{} is empty; remove it to get a new secret",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let s = secrets::generate();
            write_private(path, format!("{s}\n").as_bytes())?;
            Ok((s, true))
        }
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}
