//! Passwords and secrets: generation, hashing (argon2id), verification off
//! the async threads, a short-lived cache of verified credentials, and a
//! limiter for failed logins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, SaltString, rand_core::OsRng};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use base64::Engine;
use rand_core::RngCore;
use sha2::{Digest, Sha256};

/// A new random secret: 32 bytes, URL-safe base64 (43 characters).
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Hashes a secret into a PHC string, on a blocking thread.
pub async fn hash(secret: &str) -> anyhow::Result<String> {
    let secret = secret.to_owned();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(secret.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing a secret failed: {e}"))
    })
    .await?
}

/// Whether `secret` matches the PHC `hash` (argon2 compares in constant
/// time), on a blocking thread.
pub async fn verify(secret: &str, hash: &str) -> bool {
    let (secret, hash) = (secret.to_owned(), hash.to_owned());
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(secret.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// Remembers credentials that verified, so Basic auth on every request does
/// not pay an argon2 hash each time. Keys are keyed hashes of the name and
/// secret (the key is random per process); entries expire after `ttl`. The
/// caller still checks the principal's live state (enabled, expiry).
pub struct VerifiedCache {
    key: [u8; 32],
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

impl VerifiedCache {
    pub fn new(ttl: Duration) -> VerifiedCache {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        VerifiedCache {
            key,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn fingerprint(&self, name: &str, secret: &str, hash: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        for part in [name, secret, hash] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    /// Whether `secret` for `name` verified against this very `hash` lately.
    pub fn check(&self, name: &str, secret: &str, hash: &str) -> bool {
        let fp = self.fingerprint(name, secret, hash);
        let entries = self.entries.lock().expect("cache lock");
        entries
            .get(&fp)
            .is_some_and(|(n, until)| n == name && *until > Instant::now())
    }

    pub fn remember(&self, name: &str, secret: &str, hash: &str) {
        let fp = self.fingerprint(name, secret, hash);
        let mut entries = self.entries.lock().expect("cache lock");
        let now = Instant::now();
        if entries.len() > 10_000 {
            entries.retain(|_, (_, until)| *until > now);
        }
        entries.insert(fp, (name.to_owned(), now + self.ttl));
    }
}

/// Bounds failed logins per client address: after `max` failures within
/// `window`, further attempts are refused until the window has passed.
pub struct FailureLimiter {
    max: u32,
    window: Duration,
    entries: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureLimiter {
    pub fn new(max: u32, window: Duration) -> FailureLimiter {
        FailureLimiter {
            max,
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(wait)` when `ip` must wait before trying again.
    pub fn blocked(&self, ip: Option<IpAddr>) -> Option<Duration> {
        let ip = ip?;
        let entries = self.entries.lock().expect("limiter lock");
        let (count, start) = entries.get(&ip)?;
        let elapsed = start.elapsed();
        (*count >= self.max && elapsed < self.window).then(|| self.window - elapsed)
    }

    pub fn failed(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        let mut entries = self.entries.lock().expect("limiter lock");
        let now = Instant::now();
        if entries.len() > 10_000 {
            entries.retain(|_, (_, start)| now.duration_since(*start) < self.window);
        }
        let entry = entries.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= self.window {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let s = generate();
        assert_eq!(s.len(), 43);
        assert_ne!(s, generate());
        let h = hash(&s).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains(&s));
        assert!(verify(&s, &h).await);
        assert!(!verify("wrong", &h).await);
        assert!(!verify(&s, "not a hash").await);
    }

    #[test]
    fn cache_is_bound_to_name_secret_and_hash() {
        let c = VerifiedCache::new(Duration::from_secs(60));
        c.remember("admin", "pw", "$h1");
        assert!(c.check("admin", "pw", "$h1"));
        assert!(!c.check("admin", "pw2", "$h1"));
        assert!(
            !c.check("admin", "pw", "$h2"),
            "a new hash (rotation) misses"
        );
        assert!(!c.check("builder", "pw", "$h1"));
        let expired = VerifiedCache::new(Duration::ZERO);
        expired.remember("admin", "pw", "$h1");
        assert!(!expired.check("admin", "pw", "$h1"));
    }

    #[test]
    fn limiter_blocks_after_max_failures() {
        let l = FailureLimiter::new(3, Duration::from_secs(60));
        let ip: Option<IpAddr> = Some("127.0.0.1".parse().unwrap());
        for _ in 0..3 {
            assert!(l.blocked(ip).is_none());
            l.failed(ip);
        }
        assert!(l.blocked(ip).is_some());
        assert!(l.blocked(Some("127.0.0.2".parse().unwrap())).is_none());
        assert!(l.blocked(None).is_none());
    }
}
