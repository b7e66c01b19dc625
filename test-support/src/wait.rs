//! Waiting for a condition with a deadline: poll, and fail the test saying what never happened.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Upper bound for one wait on the server or a peer; reached only when a test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// How often [`eventually`] asks; also for loops that cannot lend a `&mut` client to a closure
/// (a browser's `history`, which a tight loop would push past its message rate limit).
pub const POLL: Duration = Duration::from_millis(50);

/// Poll the async `cond` every [`POLL`] until it holds; panic naming `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Poll the cheap synchronous `cond` every 2 ms (for state that changes within a packet or
/// two); panic naming `what` after `within`.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn eventually_returns_once_the_condition_holds() {
        let polls = AtomicU32::new(0);
        eventually("the third poll", WAIT, || async { polls.fetch_add(1, Ordering::Relaxed) >= 2 }).await;
        assert_eq!(polls.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out waiting for: never")]
    async fn eventually_names_what_never_happened() {
        eventually("never", Duration::from_millis(120), || async { false }).await;
    }

    #[tokio::test]
    #[should_panic(expected = "timed out waiting for never")]
    async fn wait_until_names_what_never_happened() {
        wait_until("never", Duration::from_millis(20), || false).await;
    }
}
