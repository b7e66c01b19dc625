//! Sign-in throttling (sans-IO: the counters and `now` are passed in; the directory stores
//! them, so the limits hold across restarts).
//!
//! Three counters of failed sign-ins are consulted for each attempt with a password or secret:
//!
//! - **source** — the account from one address (`src:<account>|<address>`): a small free
//!   budget (`auth.max_failures_per_source`), then exponential backoff.
//! - **account** — the account from anywhere (`acct:<account>`): a larger budget
//!   (`auth.max_failures_per_account`), then backoff. An address that signed in to the account
//!   successfully within `auth.trusted_source_secs` is exempt, so an attacker guessing from
//!   many addresses slows down the guessing but does not lock the real user out from the
//!   address they use.
//! - **address** — one address for any account (`addr:<address>`), against password spraying
//!   (`auth.max_failures_per_address`); `resume` with a bad token counts here too.
//!
//! Backoff, not a lock: once a counter is past its budget, the next attempt must wait
//! `backoff_base_secs × 2^(failures − budget)` after the last failure, at most
//! `backoff_max_secs`. A counter is forgotten after `failure_window_secs` without a failure.
//!
//! Atomic under concurrency: [`Throttle::begin`] checks *and counts the attempt as a failure*
//! on the **source** and **account** counters in one directory transaction, before the
//! password is checked; a success (or an attempt that was never checked) takes that count back.
//! So 300 parallel guesses at one account see those counters grow one by one, and only the
//! budget's worth get to the password check.
//!
//! The **address** counter is checked there but counted only when a check fails
//! ([`Throttle::failed`]): an office behind one NAT signs in (or resumes, after a server
//! restart) dozens of browsers at once, and counting each one in flight as a failure refused
//! the 21st with `rate_limited` though nobody had failed. A burst of guesses at many accounts
//! from one address can therefore pass the address budget by the checks in flight (at most
//! `max_concurrent_hashes` + `max_queued_hashes`) once, before its failures land.

use crate::config::AuthConfig;
use crate::directory::{Directory, DirectoryError, ThrottleCounter, UnixMs};

/// The limits, in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub source_free: u32,
    pub account_free: u32,
    pub address_free: u32,
    pub window_ms: i64,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    pub trusted_ms: i64,
}

impl Policy {
    pub fn from_config(a: &AuthConfig) -> Policy {
        let ms = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
        Policy {
            source_free: a.max_failures_per_source,
            account_free: a.max_failures_per_account,
            address_free: a.max_failures_per_address,
            window_ms: ms(a.failure_window_secs),
            backoff_base_ms: ms(a.backoff_base_secs),
            backoff_max_ms: ms(a.backoff_max_secs),
            trusted_ms: ms(a.trusted_source_secs),
        }
    }

    /// Failures still counted at `now` (0 once the window passed without a failure).
    fn current(&self, c: &ThrottleCounter, now: UnixMs) -> u32 {
        if c.failures == 0 || now.saturating_sub(c.last_failure_ms) >= self.window_ms { 0 } else { c.failures }
    }

    /// When the next attempt may be made under a budget of `free` failures (`None`: now).
    pub fn next_allowed(&self, c: &ThrottleCounter, free: u32, now: UnixMs) -> Option<UnixMs> {
        let n = self.current(c, now);
        if n < free {
            return None;
        }
        let doublings = (n - free).min(40);
        let delay = self.backoff_base_ms.saturating_mul(1i64 << doublings).min(self.backoff_max_ms);
        let at = c.last_failure_ms.saturating_add(delay);
        (at > now).then_some(at)
    }

    fn is_trusted(&self, source: &ThrottleCounter, now: UnixMs) -> bool {
        source.last_success_ms.is_some_and(|t| now.saturating_sub(t) < self.trusted_ms)
    }
}

/// Which limit refused an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Source,
    Account,
    Address,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Source => "source",
            Limit::Account => "account",
            Limit::Address => "address",
        }
    }
}

/// A refused attempt: which limit, and how long until the next one may be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub limit: Limit,
    pub retry_after_ms: i64,
}

/// An attempt that passed the check; settle it with [`Throttle::succeeded`],
/// [`Throttle::failed`] or [`Throttle::not_checked`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    keys: Vec<String>,
}

/// The directory-backed throttle.
pub struct Throttle {
    pub policy: Policy,
}

/// `src:`, `acct:`, `addr:` keys of a password sign-in (`account` is a number, or
/// `switch:<id>` for a gateway).
fn keys_for(account: Option<&str>, address: &str) -> Vec<String> {
    match account {
        Some(a) => vec![format!("src:{a}|{address}"), format!("acct:{a}"), format!("addr:{address}")],
        None => vec![format!("addr:{address}")],
    }
}

impl Throttle {
    pub fn new(policy: Policy) -> Throttle {
        Throttle { policy }
    }

    /// Check the limits for a sign-in to `account` (`None`: a `resume`, only the address
    /// counts) from `address`, and count it as a failure if allowed — atomically.
    pub async fn begin(
        &self,
        dir: &dyn Directory,
        account: Option<&str>,
        address: &str,
        now: UnixMs,
    ) -> Result<Result<Attempt, Refused>, DirectoryError> {
        let keys = keys_for(account, address);
        let p = &self.policy;
        let mut refused: Option<Refused> = None;
        let mut decide = |c: &mut [ThrottleCounter]| -> bool {
            let mut worst: Option<Refused> = None;
            let mut check = |limit: Limit, counter: &ThrottleCounter, free: u32| {
                if let Some(at) = p.next_allowed(counter, free, now) {
                    let r = Refused { limit, retry_after_ms: at - now };
                    if worst.is_none_or(|w| r.retry_after_ms > w.retry_after_ms) {
                        worst = Some(r);
                    }
                }
            };
            if c.len() == 3 {
                check(Limit::Source, &c[0], p.source_free);
                if !p.is_trusted(&c[0], now) {
                    check(Limit::Account, &c[1], p.account_free);
                }
                check(Limit::Address, &c[2], p.address_free);
            } else {
                check(Limit::Address, &c[0], p.address_free);
            }
            if let Some(w) = worst {
                refused = Some(w);
                return false;
            }
            // Not the address counter (the last): see the module's doc. Nothing counted (a
            // `resume`): nothing to write.
            let n = c.len() - 1;
            for counter in c[..n].iter_mut() {
                counter.failures = p.current(counter, now).saturating_add(1);
                counter.last_failure_ms = now;
            }
            n > 0
        };
        dir.update_throttle(&keys, &mut decide).await?;
        Ok(match refused {
            Some(r) => Err(r),
            None => Ok(Attempt { keys }),
        })
    }

    /// The password was right: take the attempt's count back, and remember the source as
    /// trusted for the account (its failures are cleared).
    pub async fn succeeded(&self, dir: &dyn Directory, attempt: Attempt, now: UnixMs) -> Result<(), DirectoryError> {
        if attempt.keys.len() == 1 {
            // A `resume`: only the address counter, which `begin` did not count.
            return Ok(());
        }
        let keys = &attempt.keys[..attempt.keys.len() - 1];
        let mut settle = |c: &mut [ThrottleCounter]| -> bool {
            c[0].failures = 0;
            c[0].last_success_ms = Some(now);
            for counter in c[1..].iter_mut() {
                counter.failures = counter.failures.saturating_sub(1);
            }
            true
        };
        dir.update_throttle(keys, &mut settle).await.map(|_| ())
    }

    /// The password (or token) was wrong: the source and account counters already hold the
    /// failure; count it on the address's too.
    pub async fn failed(&self, dir: &dyn Directory, attempt: Attempt, now: UnixMs) -> Result<(), DirectoryError> {
        let p = &self.policy;
        let keys = &attempt.keys[attempt.keys.len() - 1..];
        let mut count = |c: &mut [ThrottleCounter]| -> bool {
            c[0].failures = p.current(&c[0], now).saturating_add(1);
            c[0].last_failure_ms = now;
            true
        };
        dir.update_throttle(keys, &mut count).await.map(|_| ())
    }

    /// The attempt was never checked (e.g. the server was too busy to hash): take its count back.
    pub async fn not_checked(&self, dir: &dyn Directory, attempt: Attempt) -> Result<(), DirectoryError> {
        if attempt.keys.len() == 1 {
            return Ok(());
        }
        let keys = &attempt.keys[..attempt.keys.len() - 1];
        let mut undo = |c: &mut [ThrottleCounter]| -> bool {
            for counter in c.iter_mut() {
                counter.failures = counter.failures.saturating_sub(1);
            }
            true
        };
        dir.update_throttle(keys, &mut undo).await.map(|_| ())
    }

    /// Rows nobody needs any more: no failure within the window, no success within the
    /// trusted time.
    pub fn stale_before(&self, now: UnixMs) -> (UnixMs, UnixMs) {
        (now - self.policy.window_ms, now - self.policy.trusted_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::sqlite::SqliteDirectory;

    fn policy() -> Policy {
        Policy {
            source_free: 3,
            account_free: 9,
            address_free: 10,
            window_ms: 60_000,
            backoff_base_ms: 1_000,
            backoff_max_ms: 8_000,
            trusted_ms: 100_000,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_the_window_forgets() {
        let p = policy();
        let c = |failures, last| ThrottleCounter { failures, last_failure_ms: last, last_success_ms: None };
        assert_eq!(p.next_allowed(&c(2, 100), 3, 100), None, "within the budget");
        assert_eq!(p.next_allowed(&c(3, 100), 3, 100), Some(1_100));
        assert_eq!(p.next_allowed(&c(4, 100), 3, 100), Some(2_100));
        assert_eq!(p.next_allowed(&c(5, 100), 3, 100), Some(4_100));
        assert_eq!(p.next_allowed(&c(50, 100), 3, 100), Some(8_100), "capped");
        assert_eq!(p.next_allowed(&c(50, 100), 3, 8_100), None, "waited long enough");
        assert_eq!(p.next_allowed(&c(50, 100), 3, 60_100), None, "window passed: forgotten");
    }

    #[tokio::test]
    async fn parallel_attempts_are_counted_atomically() {
        let dir = std::sync::Arc::new(SqliteDirectory::open("sqlite::memory:").await.unwrap());
        let t = std::sync::Arc::new(Throttle::new(policy()));
        let mut tasks = vec![];
        for _ in 0..50 {
            let (dir, t) = (dir.clone(), t.clone());
            tasks.push(tokio::spawn(async move { t.begin(&*dir, Some("2001"), "10.0.0.1", 1_000).await.unwrap().is_ok() }));
        }
        let mut passed = 0;
        for task in tasks {
            passed += task.await.unwrap() as u32;
        }
        assert_eq!(passed, 3, "exactly the source budget got through");
    }

    #[tokio::test]
    async fn another_address_is_not_locked_out_and_a_trusted_one_skips_the_account_budget() {
        let dir = SqliteDirectory::open("sqlite::memory:").await.unwrap();
        let t = Throttle::new(policy());
        // The real user signed in from .9 earlier.
        let a = t.begin(&dir, Some("2001"), "10.0.0.9", 0).await.unwrap().unwrap();
        t.succeeded(&dir, a, 0).await.unwrap();
        // Attackers from 3 addresses use up the source budgets and the account budget (9).
        for addr in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            for _ in 0..3 {
                t.begin(&dir, Some("2001"), addr, 1_000).await.unwrap().unwrap();
            }
            let r = t.begin(&dir, Some("2001"), addr, 1_000).await.unwrap().unwrap_err();
            assert_eq!(r.limit, Limit::Source);
        }
        // A new address now meets the account budget…
        let r = t.begin(&dir, Some("2001"), "10.0.0.4", 1_000).await.unwrap().unwrap_err();
        assert_eq!(r.limit, Limit::Account);
        assert!(r.retry_after_ms > 0 && r.retry_after_ms <= 8_000);
        // …but the user's own address does not.
        let a = t.begin(&dir, Some("2001"), "10.0.0.9", 1_000).await.unwrap().unwrap();
        t.succeeded(&dir, a, 1_000).await.unwrap();
        // Another account from an attacker address is fine (address budget 10 not used up).
        assert!(t.begin(&dir, Some("2002"), "10.0.0.1", 1_000).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn many_sign_ins_in_flight_from_one_address_are_not_failures() {
        // An office behind one NAT: 50 browsers sign in (or resume) at once, more than the
        // address budget (10): every one gets to its check, and succeeds.
        let dir = std::sync::Arc::new(SqliteDirectory::open("sqlite::memory:").await.unwrap());
        let t = std::sync::Arc::new(Throttle::new(policy()));
        let mut tasks = vec![];
        for i in 0..50 {
            let (dir, t) = (dir.clone(), t.clone());
            tasks.push(tokio::spawn(async move {
                let account = format!("{}", 3000 + i);
                let a = t.begin(&*dir, Some(&account), "10.0.0.7", 1_000).await.unwrap().ok()?;
                let r = t.begin(&*dir, None, "10.0.0.7", 1_000).await.unwrap().ok()?;
                Some((a, r))
            }));
        }
        let mut began = vec![];
        for task in tasks {
            began.push(task.await.unwrap().expect("no sign-in in flight is refused"));
        }
        for (a, r) in began {
            t.succeeded(&*dir, a, 1_000).await.unwrap();
            t.succeeded(&*dir, r, 1_000).await.unwrap();
        }
        assert!(t.begin(&*dir, Some("4000"), "10.0.0.7", 1_000).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn failures_at_many_accounts_use_up_the_address_budget() {
        // Password spraying: one guess at each of many accounts from one address.
        let dir = SqliteDirectory::open("sqlite::memory:").await.unwrap();
        let t = Throttle::new(policy());
        for i in 0..10 {
            let a = t.begin(&dir, Some(&format!("{}", 3000 + i)), "10.0.0.8", 1_000).await.unwrap().unwrap();
            t.failed(&dir, a, 1_000).await.unwrap();
        }
        let r = t.begin(&dir, Some("3999"), "10.0.0.8", 1_000).await.unwrap().unwrap_err();
        assert_eq!(r.limit, Limit::Address);
        // Bad resume tokens count there too.
        let r = t.begin(&dir, None, "10.0.0.8", 1_000).await.unwrap().unwrap_err();
        assert_eq!(r.limit, Limit::Address);
        // Another address is not affected.
        assert!(t.begin(&dir, Some("3999"), "10.0.0.9", 1_000).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn unchecked_attempts_are_taken_back() {
        let dir = SqliteDirectory::open("sqlite::memory:").await.unwrap();
        let t = Throttle::new(policy());
        for _ in 0..10 {
            let a = t.begin(&dir, Some("2001"), "10.0.0.1", 0).await.unwrap().unwrap();
            t.not_checked(&dir, a).await.unwrap();
        }
        assert!(t.begin(&dir, Some("2001"), "10.0.0.1", 0).await.unwrap().is_ok());
    }
}
