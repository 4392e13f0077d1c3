//! Bearer tokens: ES256 JWTs signed with a key created on first start and
//! kept in a PEM file (mode 0600).
//!
//! Verification accepts only ES256 with our key id, and checks signature,
//! expiry and not-before (with the configured skew), audience (the service),
//! issuer, and the token's use (an access token is never a refresh token).

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Actions;

/// One entry of a token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl AccessEntry {
    pub fn repository(name: &str, actions: Actions) -> AccessEntry {
        AccessEntry {
            kind: "repository".into(),
            name: name.to_owned(),
            actions: actions.names().into_iter().map(str::to_owned).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenUse {
    Access,
    Refresh,
    /// The dashboard's session cookie.
    Session,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<AccessEntry>,
    #[serde(rename = "use")]
    pub token_use: TokenUse,
    /// The principal's credential version when the token was issued: a
    /// robot's `version`, or a fingerprint of an account's password hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ver: Option<i64>,
    /// The personal access token a person's registry token was issued for
    /// (its id): the token must still exist, unexpired, at each use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pat: Option<String>,
}

pub struct TokenKeys {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKeys(kid={})", self.kid)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the token is not valid: {0}")]
pub struct InvalidToken(pub String);

impl TokenKeys {
    /// Loads the signing key from `path`, creating it (mode 0600) if missing.
    pub fn load_or_create(
        path: &Path,
        service: &str,
        issuer: &str,
        skew_secs: u64,
    ) -> anyhow::Result<TokenKeys> {
        let pem = match std::fs::read_to_string(path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = p256::SecretKey::random(&mut rand_core::OsRng);
                let pem = key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| anyhow::anyhow!("cannot encode a new signing key: {e}"))?;
                write_private(path, pem.as_bytes())?;
                pem.to_string()
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "cannot read the token signing key {}: {e}",
                    path.display()
                ));
            }
        };
        Self::from_pem(&pem, service, issuer, skew_secs).map_err(|e| {
            anyhow::anyhow!("the token signing key {} is unusable: {e}", path.display())
        })
    }

    pub fn from_pem(
        pem: &str,
        service: &str,
        issuer: &str,
        skew_secs: u64,
    ) -> anyhow::Result<TokenKeys> {
        use p256::pkcs8::DecodePrivateKey;
        let key = p256::SecretKey::from_pkcs8_pem(pem).map_err(|e| anyhow::anyhow!("{e}"))?;
        let public_der = key
            .public_key()
            .to_public_key_der()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let public_pem = key
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let kid = hex::encode(&Sha256::digest(public_der.as_bytes())[..16]);
        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = skew_secs;
        validation.validate_nbf = true;
        validation.set_audience(&[service]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "aud", "iss", "sub"]);
        Ok(TokenKeys {
            kid,
            encoding: EncodingKey::from_ec_pem(pem.as_bytes())?,
            decoding: DecodingKey::from_ec_pem(public_pem.as_bytes())?,
            validation,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// Verifies a token fully and checks it is meant for `expected` use.
    pub fn verify(&self, token: &str, expected: TokenUse) -> Result<Claims, InvalidToken> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| InvalidToken(format!("bad header: {e}")))?;
        if header.alg != Algorithm::ES256 {
            return Err(InvalidToken(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(InvalidToken(
                "it was not signed by this registry's key".into(),
            ));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| InvalidToken(e.to_string()))?;
        if data.claims.token_use != expected {
            return Err(InvalidToken(format!(
                "a {:?} token cannot be used as a {expected:?} token",
                data.claims.token_use
            )));
        }
        Ok(data.claims)
    }
}

/// Writes a file only its owner can read, without a window where it is
/// readable by others.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: &Path) -> TokenKeys {
        TokenKeys::load_or_create(&dir.join("k.pem"), "svc", "iss", 30).unwrap()
    }

    fn claims(now: i64) -> Claims {
        Claims {
            iss: "iss".into(),
            sub: "admin".into(),
            aud: "svc".into(),
            exp: now + 300,
            nbf: now,
            iat: now,
            jti: "j".into(),
            access: vec![AccessEntry::repository("tool-a/web", Actions::PULL)],
            token_use: TokenUse::Access,
            ver: None,
            pat: None,
        }
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn key_is_created_once_with_mode_0600_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = keys(dir.path());
        let mode = std::fs::metadata(dir.path().join("k.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = keys(dir.path());
        assert_eq!(a.kid(), b.kid());
        let t = a.sign(&claims(now())).unwrap();
        assert_eq!(b.verify(&t, TokenUse::Access).unwrap().sub, "admin");
    }

    #[test]
    fn rejects_what_it_must() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path());
        let n = now();
        let ok = k.sign(&claims(n)).unwrap();
        assert!(k.verify(&ok, TokenUse::Access).is_ok());
        assert!(k.verify(&ok, TokenUse::Refresh).is_err(), "use is checked");

        let mut c = claims(n);
        c.exp = n - 100;
        assert!(
            k.verify(&k.sign(&c).unwrap(), TokenUse::Access).is_err(),
            "expired"
        );
        let mut c = claims(n);
        c.exp = n - 10;
        assert!(
            k.verify(&k.sign(&c).unwrap(), TokenUse::Access).is_ok(),
            "within skew"
        );
        let mut c = claims(n);
        c.nbf = n + 100;
        assert!(
            k.verify(&k.sign(&c).unwrap(), TokenUse::Access).is_err(),
            "not yet valid"
        );
        let mut c = claims(n);
        c.aud = "other".into();
        assert!(
            k.verify(&k.sign(&c).unwrap(), TokenUse::Access).is_err(),
            "audience"
        );
        let mut c = claims(n);
        c.iss = "other".into();
        assert!(
            k.verify(&k.sign(&c).unwrap(), TokenUse::Access).is_err(),
            "issuer"
        );

        // Another key with the same claims.
        let dir2 = tempfile::tempdir().unwrap();
        let other = keys(dir2.path());
        assert!(
            k.verify(&other.sign(&claims(n)).unwrap(), TokenUse::Access)
                .is_err()
        );

        // Tampered payload: signature no longer matches.
        let parts: Vec<&str> = ok.split('.').collect();
        let mut c = claims(n);
        c.sub = "robot$x+y".into();
        let forged_payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&c).unwrap(),
        );
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert!(k.verify(&forged, TokenUse::Access).is_err());

        // alg none, and HS256 keyed with the public key.
        let none_header = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            format!(r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#, k.kid()),
        );
        assert!(
            k.verify(&format!("{none_header}.{}.", parts[1]), TokenUse::Access)
                .is_err()
        );
        let hs = jsonwebtoken::encode(
            &Header {
                kid: Some(k.kid().to_owned()),
                ..Header::new(Algorithm::HS256)
            },
            &claims(n),
            &EncodingKey::from_secret(b"-----BEGIN PUBLIC KEY-----"),
        )
        .unwrap();
        assert!(k.verify(&hs, TokenUse::Access).is_err());
        assert!(k.verify("garbage", TokenUse::Access).is_err());
    }
}
