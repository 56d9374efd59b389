//! Where "now" comes from, so that time is a parameter.
//!
//! `for` timers, cooldowns, repeats, schedule windows and budget windows all
//! depend on the current time. Code that needs it takes a [`Clock`] instead of
//! calling [`Timestamp::now`], so tests drive a [`ManualClock`] through hours
//! of simulated time without waiting, and the daemon uses [`SystemClock`].
//!
//! Instants are [`jiff::Timestamp`] (UTC, nanosecond precision); durations
//! are [`std::time::Duration`], the type `humantime-serde` produces from
//! `for = "10m"` in the rules file. [`elapsed`] and [`after`] bridge the two
//! without panicking when the wall clock steps backwards or a duration is
//! absurdly large.

use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock, for the daemons.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that only moves when told to, for tests.
///
/// Shared behind an `Arc` between the test and the code under test; a std
/// `Mutex` is enough because reading or moving the time never waits on
/// anything else.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock { now: Mutex::new(start) }
    }

    /// A clock stopped at `seconds` after the Unix epoch, the shortest way to
    /// write a fixed instant in a test.
    ///
    /// # Panics
    ///
    /// When `seconds` is outside the range [`Timestamp`] supports.
    pub fn at_unix_seconds(seconds: i64) -> ManualClock {
        ManualClock::new(Timestamp::from_second(seconds).expect("unix seconds within jiff's range"))
    }

    /// Moves the clock to `instant` (backwards too, to test clock steps).
    pub fn set(&self, instant: Timestamp) {
        *self.lock() = instant;
    }

    /// Moves the clock forward by `duration` and returns the new time.
    pub fn advance(&self, duration: Duration) -> Timestamp {
        let mut now = self.lock();
        *now = after(*now, duration);
        *now
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Timestamp> {
        // A panic elsewhere while holding the lock cannot leave a Timestamp
        // half-written, so a poisoned lock still holds a valid time.
        self.now.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.lock()
    }
}

/// A clock that runs `speed` times faster than the wall clock from a
/// chosen start, for `jobctl demo`: the engine, the journal and the
/// simulated fleet all read demo time from it, so a `for` of ten seconds
/// passes in two wall seconds at speed 5 and nothing else changes.
#[derive(Debug, Clone, Copy)]
pub struct ScaledClock {
    started: std::time::Instant,
    start: Timestamp,
    speed: f64,
}

impl ScaledClock {
    /// A clock that reads `start` now and then moves `speed` seconds per
    /// wall second (`speed` is at least 1; anything less, or not a number,
    /// is taken as 1).
    pub fn new(start: Timestamp, speed: f64) -> ScaledClock {
        let speed = if speed.is_finite() && speed >= 1.0 { speed } else { 1.0 };
        ScaledClock { started: std::time::Instant::now(), start, speed }
    }

    /// The wall time that `duration` of this clock's time takes.
    pub fn wall(&self, duration: Duration) -> Duration {
        duration.div_f64(self.speed)
    }

    /// This clock's time elapsed since it was made.
    pub fn since_start(&self) -> Duration {
        self.elapsed_at(std::time::Instant::now())
    }

    /// This clock's time elapsed since it was made, read at the wall
    /// instant `wall` (a pure function of it, so tests need not wait).
    fn elapsed_at(&self, wall: std::time::Instant) -> Duration {
        wall.saturating_duration_since(self.started).mul_f64(self.speed)
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> Timestamp {
        after(self.start, self.since_start())
    }
}

/// How long it has been from `earlier` to `later`; zero when `later` is not
/// after `earlier` (the wall clock was stepped back), so a clock step never
/// makes a timer elapse early.
pub(crate) fn elapsed(earlier: Timestamp, later: Timestamp) -> Duration {
    Duration::try_from(later.duration_since(earlier)).unwrap_or(Duration::ZERO)
}

/// The instant `duration` after `instant`, saturating at [`Timestamp::MAX`].
pub(crate) fn after(instant: Timestamp, duration: Duration) -> Timestamp {
    instant.checked_add(duration).unwrap_or(Timestamp::MAX)
}

/// Serde adapter storing a [`Timestamp`] as integer Unix milliseconds, the
/// representation the journal uses everywhere (`#[serde(with = ...)]`).
pub(crate) mod unix_millis {
    use jiff::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        instant: &Timestamp,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(instant.as_millisecond())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Timestamp, D::Error> {
        let millis = i64::deserialize(deserializer)?;
        Timestamp::from_millisecond(millis).map_err(serde::de::Error::custom)
    }
}

/// [`unix_millis`] for optional instants (`null` when absent).
pub(crate) mod unix_millis_option {
    use jiff::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        instant: &Option<Timestamp>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match instant {
            Some(instant) => serializer.serialize_some(&instant.as_millisecond()),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Timestamp>, D::Error> {
        match Option::<i64>::deserialize(deserializer)? {
            Some(millis) => {
                Timestamp::from_millisecond(millis).map(Some).map_err(serde::de::Error::custom)
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::at_unix_seconds(1_000);
        assert_eq!(clock.now().as_second(), 1_000);
        assert_eq!(clock.advance(Duration::from_secs(90)).as_second(), 1_090);
        assert_eq!(clock.now().as_second(), 1_090);
        clock.set(Timestamp::from_second(10).unwrap());
        assert_eq!(clock.now().as_second(), 10);
    }

    #[test]
    fn a_scaled_clock_runs_faster_by_its_speed() {
        let start = Timestamp::from_second(1_000).unwrap();
        let clock = ScaledClock::new(start, 10.0);
        assert_eq!(clock.wall(Duration::from_secs(60)), Duration::from_secs(6));
        // 20 ms of wall time later, without waiting for them.
        let moved = clock.elapsed_at(clock.started + Duration::from_millis(20));
        // Ten times the wall time that passed.
        assert!(moved >= Duration::from_millis(200), "{moved:?}");
        assert!(moved <= Duration::from_millis(200), "{moved:?}");
        // Its own reading starts from `start` and never runs backwards.
        assert!(clock.now() >= start);
        assert_eq!(clock.elapsed_at(clock.started), Duration::ZERO);
        for odd in [0.0, 0.5, f64::NAN, f64::INFINITY] {
            assert_eq!(
                ScaledClock::new(start, odd).wall(Duration::from_secs(3)),
                Duration::from_secs(3)
            );
        }
    }

    #[test]
    fn elapsed_is_zero_when_the_clock_went_backwards() {
        let early = Timestamp::from_second(100).unwrap();
        let late = Timestamp::from_second(160).unwrap();
        assert_eq!(elapsed(early, late), Duration::from_secs(60));
        assert_eq!(elapsed(late, early), Duration::ZERO);
    }

    #[test]
    fn after_saturates_instead_of_panicking() {
        let now = Timestamp::from_second(100).unwrap();
        assert_eq!(after(now, Duration::from_secs(5)).as_second(), 105);
        assert_eq!(after(now, Duration::MAX), Timestamp::MAX);
    }
}
