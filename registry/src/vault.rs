//! Sealing secrets at rest: projects' build secrets and triggers' webhook
//! secrets are stored encrypted (XChaCha20-Poly1305, a random 192-bit nonce
//! per value) under one 32-byte key, with the secret's place (project and
//! name) as associated data, so a sealed value copied to another place
//! does not open.
//!
//! The key comes from `SLIPWAY_SECRETS_KEY` (64 hex digits or base64), else
//! from `auth.secrets_key_file` (default `<data_dir>/secrets-key`, created
//! with mode 0600 on first start). Replicas must share it; the database
//! keeps a value sealed with the first key used, and a server started with
//! another key refuses to start, saying so, rather than failing builds one
//! by one.

use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::RngCore as _;

/// Sealed values start with this (a later format can be told apart).
const PREFIX: &str = "v1.";
/// What the key check seals.
const CHECK: &[u8] = b"slipway secrets key check";

pub struct Vault {
    cipher: XChaCha20Poly1305,
    /// Keys the fingerprints of secret values (derived from the key).
    mac_key: [u8; 32],
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(***)")
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "a sealed secret cannot be opened: it was sealed with another secrets key, or altered \
     (every replica needs the same SLIPWAY_SECRETS_KEY or auth.secrets_key_file)"
)]
pub struct CannotOpen;

impl Vault {
    pub fn from_key(key: &[u8; 32]) -> Vault {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(b"slipway secret fingerprints\0");
        h.update(key);
        Vault {
            cipher: XChaCha20Poly1305::new(key.into()),
            mac_key: h.finalize().into(),
        }
    }

    /// A keyed fingerprint of a secret value (HMAC-SHA256, hex): equal
    /// values have equal fingerprints, and without the key a fingerprint
    /// says nothing about the value.
    pub fn fingerprint(&self, value: &[u8]) -> String {
        crate::triggers::sign(&self.mac_key, value)
    }

    /// The key from `env_key` (the value of `SLIPWAY_SECRETS_KEY`), else
    /// from `file`, created if missing.
    pub fn load(env_key: Option<&str>, file: &Path) -> anyhow::Result<Vault> {
        if let Some(k) = env_key.filter(|k| !k.trim().is_empty()) {
            let key = parse_key(k).ok_or_else(|| {
                anyhow::anyhow!(
                    "SLIPWAY_SECRETS_KEY is not a 32-byte key: give 64 hex digits or 44 base64 \
                     characters (for example the output of `openssl rand -hex 32`)"
                )
            })?;
            return Ok(Vault::from_key(&key));
        }
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand_core::OsRng.fill_bytes(&mut key);
                let text = format!("{}\n", hex::encode(key));
                crate::auth::tokens::write_private(file, text.as_bytes())?;
                text
            }
            Err(e) => {
                anyhow::bail!("cannot read the secrets key {}: {e}", file.display());
            }
        };
        let key = parse_key(&text).ok_or_else(|| {
            anyhow::anyhow!(
                "the secrets key {} does not hold a 32-byte key (64 hex digits or base64)",
                file.display()
            )
        })?;
        Ok(Vault::from_key(&key))
    }

    /// Seals `value` for `place` (such as `secret/<project>/<name>`).
    pub fn seal(&self, place: &str, value: &[u8]) -> String {
        let mut nonce = [0u8; 24];
        rand_core::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: value,
                    aad: place.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 seals any length a secret has");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(out)
        )
    }

    /// Opens what [`Vault::seal`] sealed for the same `place`.
    pub fn open(&self, place: &str, sealed: &str) -> Result<Vec<u8>, CannotOpen> {
        let raw = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(b)
                    .ok()
            })
            .filter(|r| r.len() > 24)
            .ok_or(CannotOpen)?;
        let (nonce, body) = raw.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| CannotOpen)?;
        self.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: body,
                    aad: place.as_bytes(),
                },
            )
            .map_err(|_| CannotOpen)
    }

    /// Checks this key against the database's check value (stored by the
    /// first server that had a key): another key is an error that says
    /// what to do.
    pub async fn check(&self, meta: &slipway_storage::meta::Metadata) -> anyhow::Result<()> {
        let stored = match meta.secrets_key_check().await? {
            Some(s) => s,
            None => {
                meta.secrets_key_check_init(&self.seal("key-check", CHECK))
                    .await?
            }
        };
        if self.open("key-check", &stored).ok().as_deref() != Some(CHECK) {
            anyhow::bail!(
                "the secrets key is not the one this database's secrets were sealed with: \
                 give every replica the same key (SLIPWAY_SECRETS_KEY or auth.secrets_key_file; \
                 copy the first server's <data_dir>/secrets-key)"
            );
        }
        Ok(())
    }
}

/// 64 hex digits, or base64 (standard or URL-safe, padded or not) of 32
/// bytes.
fn parse_key(text: &str) -> Option<[u8; 32]> {
    let t = text.trim();
    let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(t).ok()?
    } else {
        let t = t.trim_end_matches('=');
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(t)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
            .ok()?
    };
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_place() {
        let v = Vault::from_key(&[7; 32]);
        let s = v.seal("secret/tool-a/TOKEN", b"hunter2");
        assert!(!s.contains("hunter2"));
        assert_eq!(v.open("secret/tool-a/TOKEN", &s).unwrap(), b"hunter2");
        // Another place, another key, or a changed byte: nothing.
        assert!(v.open("secret/tool-b/TOKEN", &s).is_err());
        assert!(
            Vault::from_key(&[8; 32])
                .open("secret/tool-a/TOKEN", &s)
                .is_err()
        );
        let mut bad = s.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert!(
            v.open("secret/tool-a/TOKEN", &String::from_utf8(bad).unwrap())
                .is_err()
        );
        // Two seals of one value differ (a nonce each).
        assert_ne!(s, v.seal("secret/tool-a/TOKEN", b"hunter2"));
    }

    #[test]
    fn keys_are_hex_or_base64_of_32_bytes() {
        let hex = "00".repeat(32);
        assert_eq!(parse_key(&hex), Some([0; 32]));
        let b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert_eq!(parse_key(&format!("{b64}\n")), Some([1; 32]));
        assert_eq!(parse_key("short"), None);
        assert_eq!(parse_key(&"00".repeat(31)), None);
    }

    #[test]
    fn a_key_file_is_created_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets-key");
        let a = Vault::load(None, &file).unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Vault::load(None, &file).unwrap();
        let s = a.seal("p", b"x");
        assert_eq!(b.open("p", &s).unwrap(), b"x");
        // The variable wins over the file.
        let c = Vault::load(Some(&"ab".repeat(32)), &file).unwrap();
        assert!(c.open("p", &s).is_err());
        assert!(Vault::load(Some("nonsense"), &file).is_err());
    }
}
