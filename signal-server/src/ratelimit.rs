//! Sign-in failure limits, per account and per remote address (sans-IO: `now` passed in).
//!
//! A fixed window per key: after `max` failures within `window`, further attempts are refused
//! until the window that started with the first failure has passed. Successful sign-ins clear
//! the account's counter. The table is bounded: stale entries are swept as new ones arrive.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

pub struct FailureLimiter<K> {
    max: u32,
    window: Duration,
    entries: HashMap<K, (Instant, u32)>,
    last_sweep: Option<Instant>,
}

impl<K: Eq + Hash + Clone> FailureLimiter<K> {
    pub fn new(max: u32, window: Duration) -> Self {
        FailureLimiter { max, window, entries: HashMap::new(), last_sweep: None }
    }

    /// May `key` try now? `Err(retry_after)` if it is locked out.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        match self.entries.get(key) {
            Some((start, n)) if *n >= self.max && now < *start + self.window => Err(*start + self.window - now),
            _ => Ok(()),
        }
    }

    /// Count a failed attempt by `key`.
    pub fn failed(&mut self, key: K, now: Instant) {
        self.sweep(now);
        let e = self.entries.entry(key).or_insert((now, 0));
        if now >= e.0 + self.window {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }

    /// Forget `key`'s failures (after a successful sign-in).
    pub fn succeeded(&mut self, key: &K) {
        self.entries.remove(key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|t| now < t + self.window) {
            return;
        }
        self.last_sweep = Some(now);
        let w = self.window;
        self.entries.retain(|_, (start, _)| now < *start + w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_max_failures_and_unlocks_after_window() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(3, Duration::from_secs(60));
        for i in 0..3 {
            assert!(l.check(&"a", t0).is_ok(), "attempt {i}");
            l.failed("a", t0);
        }
        let retry = l.check(&"a", t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(retry, Duration::from_secs(50));
        assert!(l.check(&"b", t0).is_ok(), "other keys unaffected");
        assert!(l.check(&"a", t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn success_clears() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(1, Duration::from_secs(60));
        l.failed("a", t0);
        assert!(l.check(&"a", t0).is_err());
        l.succeeded(&"a");
        assert!(l.check(&"a", t0).is_ok());
    }

    #[test]
    fn stale_entries_are_swept() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(5, Duration::from_secs(1));
        for i in 0..100u32 {
            l.failed(i, t0);
        }
        l.failed(1000, t0 + Duration::from_secs(2));
        assert_eq!(l.len(), 1);
    }
}
