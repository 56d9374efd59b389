//! Proof, for systemd's watchdog, that every platform's poll loop goes on.
//!
//! Under `WatchdogSec=` systemd restarts the exporter when its `WATCHDOG=1`
//! pings stop. A timer of its own pinging would prove only that the async
//! runtime runs, and one poll loop pinging would hide another one hung
//! behind it. So each platform's loop marks its progress in
//! [`PollProgress`] (when a poll starts, each time a page of devices has
//! been read, and when the poll ends), and the exporter pings only while no
//! platform has gone longer than [`stall_bound`] without a mark
//! ([`PollProgress::stalled`]). A loop that hangs, or a poll task that died
//! (a panic ends the task, so it never marks again), stops the pings; the
//! status line says which platform, and systemd restarts the exporter
//! `WatchdogSec` later.
//!
//! # The bound
//!
//! A healthy loop goes from one mark to the next within the longest of:
//!
//! - `poll_interval`: waiting for its next poll;
//! - one page, retries included: `max_attempts × request_timeout +
//!   (max_attempts − 1) × max_delay` (`RetryPolicy::longest_page`). The
//!   client cuts every request, from connecting to the last byte of the
//!   body, at `request_timeout`, and never waits longer than `max_delay`
//!   between two attempts, `Retry-After` included, whatever the API does;
//! - writing the poll to the cache and rendering it (about a second for
//!   100,000 devices), after the last page or a failed one.
//!
//! The bound is `poll_interval` plus the longest page: whichever of the two
//! is shorter is the margin for the cache write and the render. With the
//! defaults (60 s, 4 attempts of 15 s, waits of at most 15 s) that is
//! 60 + 4 × 15 + 3 × 15 = 165 s. Measured per page rather than per poll, it
//! does not grow with the fleet: 100,000 devices are 334 pages, each of
//! which must come within the bound. A slow or failing API (timeouts,
//! retries, 429 with `Retry-After`, 5xx) keeps the pings going; only a poll
//! stuck outside the client's own limits (a cache write blocked on a disk
//! or a lock, a task that died) stops them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::addreality::client::RetryPolicy;

/// The longest a healthy platform's poll loop goes without marking its
/// progress (see the module's docs): `poll_interval` plus the longest a
/// page can take with `request_timeout` and `retry`.
pub(crate) fn stall_bound(
    poll_interval: Duration,
    request_timeout: Duration,
    retry: &RetryPolicy,
) -> Duration {
    poll_interval.saturating_add(retry.longest_page(request_timeout))
}

/// When each platform's poll loop last showed progress.
#[derive(Debug)]
pub(crate) struct PollProgress {
    /// The longest a platform may go without a mark ([`stall_bound`]).
    stall_after: Duration,
    /// Each platform's last mark. Std mutexes: held to read or write one
    /// instant, never across an `.await`.
    marks: BTreeMap<String, Mutex<Instant>>,
}

/// A platform whose poll loop has not marked progress within the bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stall {
    /// The platform's id.
    pub(crate) platform: String,
    /// How long since its last mark.
    pub(crate) for_: Duration,
}

impl PollProgress {
    /// Every platform marked now (start-up counts as progress).
    pub(crate) fn new(platforms: impl IntoIterator<Item = String>, stall_after: Duration) -> Self {
        let now = Instant::now();
        let marks = platforms.into_iter().map(|id| (id, Mutex::new(now))).collect();
        PollProgress { stall_after, marks }
    }

    /// The bound this watchdog holds the loops to.
    pub(crate) fn stall_after(&self) -> Duration {
        self.stall_after
    }

    /// The platform's loop made progress now.
    pub(crate) fn mark(&self, platform: &str) {
        if let Some(mark) = self.marks.get(platform) {
            *mark.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        }
    }

    /// The platforms whose loops have gone longer than the bound without a
    /// mark at `now`, in id order; empty while every loop makes progress.
    pub(crate) fn stalled(&self, now: Instant) -> Vec<Stall> {
        self.marks
            .iter()
            .filter_map(|(platform, mark)| {
                let at = *mark.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let since = now.saturating_duration_since(at);
                (since > self.stall_after)
                    .then(|| Stall { platform: platform.clone(), for_: since })
            })
            .collect()
    }
}

/// The status line's part about stalled platforms, which `systemctl status`
/// shows while the pings are held back.
pub(crate) fn stalled_status(stalls: &[Stall], stall_after: Duration) -> String {
    let platforms: Vec<String> = stalls
        .iter()
        .map(|stall| {
            format!("platform {} stuck for {:.0} s", stall.platform, stall.for_.as_secs_f64())
        })
        .collect();
    format!(
        "{} (limit {}): watchdog pings stopped",
        platforms.join(", "),
        humantime::format_duration(round_to_millis(stall_after))
    )
}

/// Logs a stall when it begins and its end, not at each look: `previous`
/// holds the platforms stalled at the last look.
pub(crate) fn log_changes(previous: &mut Vec<String>, stalls: &[Stall], stall_after: Duration) {
    let now: Vec<String> = stalls.iter().map(|stall| stall.platform.clone()).collect();
    for stall in stalls.iter().filter(|stall| !previous.contains(&stall.platform)) {
        tracing::error!(
            "platform {}: its poll loop has shown no progress for {:.0} s, longer than a poll step can take ({}: poll_interval + max_attempts × request_timeout + the waits between attempts); watchdog pings stopped, so systemd restarts the exporter if this lasts WatchdogSec",
            stall.platform,
            stall.for_.as_secs_f64(),
            humantime::format_duration(round_to_millis(stall_after)),
        );
    }
    for platform in previous.iter().filter(|platform| !now.contains(platform)) {
        tracing::info!("platform {platform}: poll loop going again; watchdog pings resumed");
    }
    *previous = now;
}

/// `duration` without its sub-millisecond part, for messages.
fn round_to_millis(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_the_interval_plus_the_longest_page() {
        let retry = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(15),
        };
        // The defaults: 60 s + 4 × 15 s + 3 × 15 s.
        let bound = stall_bound(Duration::from_secs(60), Duration::from_secs(15), &retry);
        assert_eq!(bound, Duration::from_secs(165));
        let once = RetryPolicy { max_attempts: 1, ..retry };
        let bound = stall_bound(Duration::from_secs(10), Duration::from_secs(5), &once);
        assert_eq!(bound, Duration::from_secs(15), "no wait without a second attempt");
        let huge = stall_bound(Duration::MAX, Duration::MAX, &retry);
        assert_eq!(huge, Duration::MAX, "saturates rather than overflows");
    }

    #[tokio::test(start_paused = true)]
    async fn a_platform_is_stalled_only_past_the_bound_since_its_last_mark() {
        let bound = Duration::from_secs(10);
        let progress = PollProgress::new(["12".to_string(), "14".to_string()], bound);
        tokio::time::advance(bound).await;
        assert_eq!(progress.stalled(Instant::now()), [], "exactly the bound is still healthy");
        progress.mark("14");
        progress.mark("unknown platform");
        tokio::time::advance(Duration::from_secs(1)).await;
        let stalled = progress.stalled(Instant::now());
        assert_eq!(
            stalled,
            [Stall { platform: "12".into(), for_: Duration::from_secs(11) }],
            "14 marked a second ago"
        );
        assert_eq!(
            stalled_status(&stalled, Duration::from_millis(3_600_400)),
            "platform 12 stuck for 11 s (limit 1h 400ms): watchdog pings stopped"
        );
        progress.mark("12");
        assert_eq!(progress.stalled(Instant::now()), []);
    }
}
