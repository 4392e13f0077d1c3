//! At most `n` events per key in a time window, in this process: what may
//! be written when anyone can cause it (a refused webhook delivery, a pull's
//! "last pulled" time) without one write per request.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Keys tracked before the ones whose window has passed are forgotten.
const FORGET_ABOVE: usize = 100_000;

pub struct Throttle {
    per_window: u32,
    window: Duration,
    seen: OnceLock<Mutex<HashMap<String, (Instant, u32)>>>,
}

impl Throttle {
    pub const fn new(per_window: u32, window: Duration) -> Throttle {
        Throttle {
            per_window,
            window,
            seen: OnceLock::new(),
        }
    }

    /// Whether one more event of `key` fits in its current window (and
    /// counts it if it does).
    pub fn allow(&self, key: &str) -> bool {
        let mut seen = self
            .seen
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if seen.len() > FORGET_ABOVE {
            seen.retain(|_, (since, _)| since.elapsed() < self.window);
        }
        if let Some((since, n)) = seen.get_mut(key) {
            if since.elapsed() >= self.window {
                (*since, *n) = (Instant::now(), 0);
            }
            *n += 1;
            return *n <= self.per_window;
        }
        seen.insert(key.to_owned(), (Instant::now(), 1));
        self.per_window >= 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_share_of_a_window_and_others_their_own() {
        let t = Throttle::new(2, Duration::from_secs(60));
        assert!(t.allow("a") && t.allow("a"));
        assert!(!t.allow("a"));
        assert!(t.allow("b"));
        let short = Throttle::new(1, Duration::from_millis(20));
        assert!(short.allow("a") && !short.allow("a"));
        std::thread::sleep(Duration::from_millis(30));
        assert!(short.allow("a"), "a new window");
    }
}
