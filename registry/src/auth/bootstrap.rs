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
    if meta.account_hash(BUILDER).await?.is_none() {
        let (secret, _) = read_or_create(&config.data_dir.join("builder-password"))?;
        meta.account_set(BUILDER, &secrets::hash(&secret).await?)
            .await?;
    }
    Ok(())
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
