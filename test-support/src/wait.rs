//! Bounded waits: every poll gives up with a message naming what it
//! waited for. `eventually` is for async tests; `wait_for` (and
//! `wait_until`, its boolean form) for blocking ones.

use std::time::{Duration, Instant};

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `check` every 20 ms until it holds or `WAIT` passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after
/// `limit` with `what` and the last state `describe` gives.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if started.elapsed() > limit {
            panic!(
                "timed out after {limit:?} waiting for {what}; state:\n{}",
                describe()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `check` until it holds, for at most `WAIT`.
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    wait_for(what, WAIT, || check().then_some(()), String::new)
}
