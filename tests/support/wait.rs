//! Waiting for what a test cannot be told about directly: a poll of the
//! exporter, a daemon's cycle, a request reaching a fake, a process ending.
//!
//! A server started as a child process is waited for the same way
//! whatever it is ([`wait_ready`]): its readiness page answers, or it exits.
//!
//! Every test waits with the same patience ([`DEADLINE`]) and looks again
//! after the same pause ([`POLL`]), so that a slow machine is given the same
//! time everywhere and no test sleeps a fixed time instead of looking.

use std::future::Future;
use std::process::Child;
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

/// Polls `ready_url` until it answers 2xx, for at most [`DEADLINE`]; fails
/// early, saying how, if `child` (the server) exits meanwhile.
pub(crate) async fn wait_ready(child: &mut Child, ready_url: &str) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("build a readiness client");
    let outcome = poll_for_async(DEADLINE, || {
        let exited = child.try_wait().expect("poll the server process");
        let answer = http.get(ready_url).send();
        async move {
            if let Some(status) = exited {
                return Some(Err(format!("exited ({status}) while starting")));
            }
            let ready = answer.await.is_ok_and(|response| response.status().is_success());
            ready.then_some(Ok(()))
        }
    });
    outcome.await.unwrap_or_else(|| Err(format!("was not ready after {DEADLINE:?}")))
}
