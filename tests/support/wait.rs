//! Waiting for what a test cannot be told about directly: a poll of the
//! exporter, a daemon's cycle, a request reaching a fake, a process ending.
//!
//! Every test waits with the same patience ([`DEADLINE`]) and looks again
//! after the same pause ([`POLL`]), so that a slow machine is given the same
//! time everywhere and no test sleeps a fixed time instead of looking.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long anything a test waits for may take before the test fails.
/// Generous: a loaded CI machine is slow, and a passing test never waits it.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// Pause between two looks at a condition.
pub(crate) const POLL: Duration = Duration::from_millis(10);

/// Calls `check` until it gives a value, for at most `deadline`, pausing
/// [`POLL`] between calls; `None` if it never did.
pub(crate) fn poll_for<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// [`poll_for`] for a check that awaits, pausing on the runtime rather
/// than blocking its thread.
pub(crate) async fn poll_for_async<T, F>(
    deadline: Duration,
    mut check: impl FnMut() -> F,
) -> Option<T>
where
    F: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Calls `check` until it gives a value and returns that value; panics
/// naming `what` after [`DEADLINE`].
#[track_caller]
pub(crate) fn wait_until<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    match poll_for(DEADLINE, check) {
        Some(value) => value,
        None => panic!("{what} did not happen within {DEADLINE:?}"),
    }
}

/// [`wait_until`] for a check that awaits.
pub(crate) async fn wait_until_async<T, F>(what: &str, check: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    match poll_for_async(DEADLINE, check).await {
        Some(value) => value,
        None => panic!("{what} did not happen within {DEADLINE:?}"),
    }
}
