//! The life of one job on one device: inactive → pending → firing → resolved.
//!
//! This is the part of jobctl that decides *whether an SMS is due*, so it is
//! kept pure: it never reads a clock, never talks to Prometheus and never
//! sends anything. Each evaluation cycle the engine hands every (job, device)
//! its [`JobState`], the job's [`Timing`] and one [`Evaluation`] (the time,
//! the condition's [`Verdict`], whether the schedule allows actions now), and
//! gets back a [`Step`]: the new state, the [`Transition`]s worth a log line,
//! and at most one [`ActionDue`]. Tests drive it with made-up instants.
//!
//! # The rules
//!
//! The phases follow Prometheus alerting:
//!
//! - **Inactive** — nothing wrong seen. `True` → pending.
//! - **Pending** — the condition has been seen true; it must keep holding for
//!   the job's `for` before anything happens. It counts from the evaluation
//!   that saw it, or, once the engine has dated the onset from Prometheus's
//!   history, from that onset ([`JobState::pending_from`]); the engine
//!   evaluates again when `for` will have held ([`JobState::for_elapses_at`]). `False` → inactive, nothing
//!   sent. Once it has held for `for` (see *Unknown* below), the evaluation
//!   that observes this moves to firing and a new *episode* begins. With
//!   `for = 0` the first `True` goes straight to firing.
//! - **Firing** — an episode is under way. The first action of the episode
//!   is due at once, unless the `cooldown` since the last action on this
//!   (job, device) — in any earlier episode — has not elapsed, or the
//!   schedule window is closed. Then the action *waits*: it becomes due at the
//!   first evaluation that finds the condition still true and the cooldown
//!   over and the window open. It is never lost while the episode lasts, and
//!   it is dropped if the episode resolves first (the device recovered).
//!   After the first action, `repeat` allows up to `max` further actions in
//!   the same episode, each at least `every` after the previous one; a repeat
//!   waiting for the window to open is sent once when it opens, never as a
//!   burst of missed repeats. The cooldown gates an episode's first action
//!   only; repeats are spaced by `every`. `False` → resolved.
//! - **Resolved** — the episode ended with the condition false. It behaves as
//!   inactive (a later `True` starts a new pending) and remembers when and
//!   which episode ended, for `jobctl status`.
//!
//! # Why an action waits
//!
//! An action that would be due can be held back for several reasons at
//! once ([`ActionHeld`]); the step reports the first of them, in this
//! order, as "the first reason nothing would happen":
//!
//! 1. the **cooldown** since the previous action (first actions only);
//! 2. the job's **schedule window** is closed;
//! 3. a **silence** (`jobctl silence add`) matches the (job, device);
//! 4. a **mass outage** of the job: so many of its devices are bad at once
//!    that the cause is upstream of them (`mass_outage`; the engine decides
//!    it per job and cycle and hands it in as [`Evaluation::mass_outage`]).
//!
//! The per-device, deliberate reasons come first: a silenced device in an
//! outage is reported (and journalled) as silenced, because that is what a
//! person asked for and what will still hold it when the outage ends. A
//! limit is checked only after all of them, so a held action never gives
//! an episode up.
//!
//! Whatever holds it, the action stays due and nothing about the episode
//! changes: it leaves at the first evaluation that finds the condition
//! still true and nothing holding it, and it is dropped if the episode
//! resolves first. Phases, `for` timers and episodes move on as usual
//! while an action is held.
//!
//! # Did the action help? (`verify`) and when to stop (`limit`)
//!
//! With `verify = { within }`, an action opens a *verification* of itself
//! ([`Verifying`], kept in the state so a restart carries it on). The
//! condition is watched as before, and the verification ends with one
//! [`Recovery`] (in the step's `concluded`):
//!
//! - **recovered** at the first evaluation no later than `within` after the
//!   action that finds the condition false; the time it took is from the
//!   action to that evaluation.
//! - **not recovered** at the first evaluation at or after the deadline that
//!   finds it true, or, when that evaluation finds it false or unknown, if the
//!   last evaluation within the window found it true (seen bad when the
//!   window ended).
//! - **unverified** at the first evaluation after the deadline, when nothing
//!   seen within the window decides it: every evaluation in it was unknown
//!   (Prometheus down, series missing) or none was made (jobctl not
//!   running). Unknown is neither recovered nor not recovered.
//!
//! While a verification is open, a repeat waits for it to end: the next
//! action is due once the action is known not to have helped (and `every`
//! has passed), never while its effect is still awaited.
//!
//! A job's `limit` is counted by the engine (from the journal, per device
//! and per socket) and handed in as [`Evaluation::limit_reached`]. An action
//! that would be due while the limit is reached is not: the episode *gives
//! up* ([`Step::gave_up`], once per episode, remembered in
//! [`JobState::gave_up_in`]) and takes no further action until it ends; a
//! later episode acts again if the limit allows.
//!
//! # Unknown is not true, and not false either
//!
//! [`Verdict::Unknown`] (Prometheus unreachable, a query error, the device's
//! series missing, a guard failing or itself unknown) never moves a state
//! towards an action and never ends an episode:
//!
//! - In **pending**, Unknown *pauses* the `for` timer. Only time between two
//!   consecutive evaluations that both found the condition true counts
//!   towards `for`; an interval that begins or ends with Unknown does not
//!   count, and neither does the time the daemon was not running. Time
//!   already held is kept across the gap, so a Prometheus blip does not
//!   restart a 10-minute timer, but a device is never acted upon on the
//!   strength of minutes nobody observed. Moving to firing always happens
//!   on an evaluation that found the condition true.
//! - In **firing**, Unknown holds the episode: no action (first or repeat)
//!   becomes due, and the episode does not resolve. When data comes back,
//!   `True` makes any waiting action due, `False` resolves.
//! - In **inactive** and **resolved**, Unknown changes nothing.
//!
//! Because Unknown never resolves an episode, a device whose series vanishes
//! for good stays firing, but is not acted upon again; the engine reports
//! unknowns separately.
//!
//! # What is journalled, and restarts
//!
//! A state is journalled when something happens to it (a phase change, a
//! pending run starting or ending, an action, a step of a verification),
//! never because time passed: a pending state keeps the time held before
//! its current run of true evaluations and when that run began, not the
//! growing total ([`Phase::Pending`]). So a cycle that changes nothing
//! writes nothing.
//!
//! The price is paid at a crash: the journal knows when the current run
//! began but not when it was last seen true, so the run is lost, and the
//! first true evaluation after the restart starts a new one. The time held
//! before the run (up to the latest Unknown) is kept. A crash can thus
//! delay an action by up to the run's length, and never hastens one: the
//! daemon's downtime is never counted as held. A daemon that stops
//! cleanly journals each run's time first ([`JobState::at_stop`]), so a
//! restart loses nothing but its downtime.
//!
//! If the wall clock steps backwards, elapsed times count as zero rather than
//! negative, so a clock step can delay an action but never hasten one.

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::clock::{after, elapsed};
use crate::journal::SilenceId;

pub use super::condition::Verdict;

/// The timing limits of one job, as the rules file states them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    /// How long the condition must hold before the job fires (`for`).
    pub(crate) for_: Duration,
    /// Minimum time between the last action on a (job, device) and the first
    /// action of a later episode.
    pub(crate) cooldown: Duration,
    /// Further actions while the same episode keeps firing; `None` = one
    /// action per episode.
    pub(crate) repeat: Option<Repeat>,
    /// How long after an action the condition must be found false for the
    /// action to count as having helped (`verify.within`); `None` = actions
    /// are not verified.
    pub(crate) verify: Option<Duration>,
}

/// Repeated actions within one firing episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeat {
    /// Minimum time between two actions of the episode.
    pub(crate) every: Duration,
    /// How many actions may follow the episode's first one.
    pub(crate) max: u32,
}

/// The inputs of one evaluation of one job on one device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// When the evaluation happened.
    pub(crate) now: Timestamp,
    /// What the condition (and its guards) concluded.
    pub(crate) verdict: Verdict,
    /// The value that decided the verdict, if there is one; carried into
    /// [`ActionDue::trigger_value`] for the journal.
    pub(crate) value: Option<f64>,
    /// Whether the job's schedule window allows actions at `now`.
    pub(crate) in_window: bool,
    /// Whether the job's `limit` of actions on this device (or its socket)
    /// is reached now: an action that would be due gives the episode up
    /// instead.
    pub(crate) limit_reached: bool,
    /// The silence in force on this (job, device) at `now`, if one is.
    pub(crate) silence: Option<SilenceHold>,
    /// Since when the job is in a mass outage, if it is at `now`: its
    /// socket commands are held.
    pub(crate) mass_outage: Option<Timestamp>,
}

/// A silence that holds a (job, device)'s actions back, as the engine
/// matched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SilenceHold {
    /// The silence, as the journal numbers it.
    pub(crate) id: SilenceId,
    /// When it ends.
    pub(crate) until: Timestamp,
}

/// Everything jobctl remembers about one job on one device between
/// evaluations, and across restarts (the journal stores it as JSON).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobState {
    /// Where the device is in the job's life cycle.
    pub phase: Phase,
    /// Number of the latest episode (firing period) started on this
    /// (job, device); 0 before the first. Episodes are numbered from 1.
    pub episodes_started: u64,
    /// When the latest action on this (job, device) became due, in any
    /// episode; the cooldown counts from here.
    #[serde(with = "crate::clock::unix_millis_option")]
    pub last_action_at: Option<Timestamp>,
    /// The latest action, while the job waits to see whether it helped
    /// (`verify`); `None` when no verification is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifying: Option<Verifying>,
    /// The episode in which the job gave up on this device (its `limit` was
    /// reached), so that it gives up once per episode and acts no more in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gave_up_in: Option<u64>,
}

/// An action whose effect jobctl is waiting to see (`verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verifying {
    /// The action's episode.
    pub episode: u64,
    /// The action's number within the episode.
    pub attempt: u32,
    /// When the action became due; the time to recover counts from here.
    #[serde(with = "crate::clock::unix_millis")]
    pub action_at: Timestamp,
    /// When the window ends (`action_at` + `verify.within`).
    #[serde(with = "crate::clock::unix_millis")]
    pub until: Timestamp,
    /// What the latest evaluation within the window found.
    pub last_seen: Seen,
}

/// What the latest evaluation of a verification window found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seen {
    /// No evaluation yet since the action.
    Nothing,
    /// The condition still true.
    Bad,
    /// The verdict unknown.
    Unknown,
}

/// How a verification ended: whether the action helped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// The condition was found false within the window.
    Recovered {
        /// From the action to the first evaluation that found it false.
        after: Duration,
    },
    /// The condition was still seen true when the window ended.
    NotRecovered,
    /// Nothing seen within the window decides it (unknown throughout, or
    /// jobctl was not running).
    Unverified,
}

/// A verification that ended in this step, naming its action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Concluded {
    /// The action's episode.
    pub(crate) episode: u64,
    /// The action's number within the episode.
    pub(crate) attempt: u32,
    /// When the action became due.
    pub(crate) action_at: Timestamp,
    /// How long the window was.
    pub(crate) window: Duration,
    /// Whether it helped.
    pub(crate) recovery: Recovery,
}

/// The phase of a job on one device.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// The condition has not been seen true (or stopped being true before
    /// `for` elapsed).
    #[default]
    Inactive,
    /// The condition is true and must keep holding for `for`.
    ///
    /// The time held is kept as what changes only when something happens,
    /// never because the clock moved, so that a pending state is journalled
    /// when it starts, pauses or resumes and not at every evaluation: the
    /// time held *before* the current run of consecutive true evaluations
    /// (`held`), and when that run began (`counting_from`). The time held
    /// at the run's latest evaluation is their sum with the run's length
    /// ([`Phase::held_at`]).
    Pending {
        /// When the condition was first seen true.
        #[serde(with = "crate::clock::unix_millis")]
        since: Timestamp,
        /// Time observed true before the current run: the sum of the
        /// intervals between consecutive evaluations that both found the
        /// condition true, up to the latest Unknown. (A state journalled
        /// before runs were saved has its time held here; it counts as
        /// time before the run, which it is.)
        #[serde(with = "millis")]
        held: Duration,
        /// When the current run of true evaluations began (the evaluation
        /// that first found the condition true after pending started or
        /// after an Unknown); `None` while no run is under way (after an
        /// Unknown). Journalled, so that `jobctl status` and `explain` can
        /// tell the time held now; a run read back from the journal after a
        /// restart is not counted, see `last_true`.
        #[serde(
            default,
            with = "crate::clock::unix_millis_option",
            skip_serializing_if = "Option::is_none"
        )]
        counting_from: Option<Timestamp>,
        /// When the latest evaluation of the current run found the
        /// condition true, as this process saw it. Not journalled: a run
        /// without it was read back after a restart, nobody watched it
        /// between the last evaluation before the restart and the first
        /// after it, and it is not counted (the next true evaluation starts
        /// a run afresh), so the daemon's downtime never counts as held.
        #[serde(skip)]
        last_true: Option<Timestamp>,
    },
    /// The condition held for `for`: an episode is under way.
    Firing {
        /// When the episode began.
        #[serde(with = "crate::clock::unix_millis")]
        since: Timestamp,
        /// The episode's number on this (job, device).
        episode: u64,
        /// How many actions became due in this episode so far.
        actions_taken: u32,
    },
    /// The latest episode ended with the condition false.
    Resolved {
        /// When the condition was found false.
        #[serde(with = "crate::clock::unix_millis")]
        at: Timestamp,
        /// The episode that ended.
        episode: u64,
    },
}

/// The name of a [`Phase`], for log lines and the journal's `phase` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PhaseName {
    /// See [`Phase::Inactive`].
    Inactive,
    /// See [`Phase::Pending`].
    Pending,
    /// See [`Phase::Firing`].
    Firing,
    /// See [`Phase::Resolved`].
    Resolved,
}

impl PhaseName {
    /// The lower-case word used in logs and in the journal.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PhaseName::Inactive => "inactive",
            PhaseName::Pending => "pending",
            PhaseName::Firing => "firing",
            PhaseName::Resolved => "resolved",
        }
    }
}

impl fmt::Display for PhaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Phase {
    /// Pending: how long the condition has held by `now`, counting the
    /// current run up to `now` (as the daemon will when its next evaluation
    /// finds the condition still true); `None` in other phases. What
    /// `jobctl status` shows from the journal.
    pub fn held_at(&self, now: Timestamp) -> Option<Duration> {
        match self {
            Phase::Pending { held, counting_from, .. } => {
                Some(*held + counting_from.map_or(Duration::ZERO, |from| elapsed(from, now)))
            }
            _ => None,
        }
    }

    /// Pending: how long the condition has held as this process observed
    /// it, up to the latest true evaluation it saw; `None` in other phases.
    /// A run read back from the journal (not watched to its end) adds
    /// nothing.
    fn held_observed(&self) -> Option<Duration> {
        match self {
            Phase::Pending { held, counting_from, last_true, .. } => {
                let run = counting_from.zip(*last_true).map(|(from, last)| elapsed(from, last));
                Some(*held + run.unwrap_or_default())
            }
            _ => None,
        }
    }

    /// This phase's name.
    pub fn name(&self) -> PhaseName {
        match self {
            Phase::Inactive => PhaseName::Inactive,
            Phase::Pending { .. } => PhaseName::Pending,
            Phase::Firing { .. } => PhaseName::Firing,
            Phase::Resolved { .. } => PhaseName::Resolved,
        }
    }
}

/// A change of phase, for the log line "job X device Y: pending → firing
/// after 10m". The engine adds the job and the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    /// The phase left.
    pub(crate) from: PhaseName,
    /// The phase entered.
    pub(crate) to: PhaseName,
    /// When it happened.
    pub(crate) at: Timestamp,
    /// How long the left phase lasted (zero when leaving inactive or
    /// resolved, whose start is of no interest).
    pub(crate) after: Duration,
    /// The episode started (entering firing) or ended (entering resolved).
    pub(crate) episode: Option<u64>,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} → {}", self.from, self.to)?;
        if matches!(self.from, PhaseName::Pending | PhaseName::Firing) {
            let whole_seconds = Duration::from_secs(self.after.as_secs());
            write!(f, " after {}", humantime::format_duration(whole_seconds))?;
        }
        if let Some(episode) = self.episode {
            write!(f, " (episode {episode})")?;
        }
        Ok(())
    }
}

/// An action (an SMS) that the engine must now journal and send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ActionDue {
    /// The episode it belongs to.
    pub(crate) episode: u64,
    /// 1 for the episode's first action, 2 for its first repeat, and so on.
    pub(crate) attempt_in_episode: u32,
    /// The value that made the condition true at this evaluation, if known.
    pub(crate) trigger_value: Option<f64>,
}

/// Why a firing episode's action is waiting although it would be due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActionHeld {
    /// The cooldown since the previous action has not elapsed.
    Cooldown {
        /// When the cooldown ends.
        until: Timestamp,
    },
    /// The job's schedule window is closed now.
    OutsideWindow,
    /// A silence holds the (job, device)'s actions back.
    Silenced(SilenceHold),
    /// The job is in a mass outage: so many of its devices are bad at once
    /// that it sends no socket command.
    MassOutage {
        /// When the outage began.
        since: Timestamp,
    },
}

impl fmt::Display for ActionHeld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionHeld::Cooldown { until } => {
                write!(f, "action waits for the cooldown until {until}")
            }
            ActionHeld::OutsideWindow => f.write_str("action waits for the schedule window"),
            ActionHeld::Silenced(SilenceHold { id, until }) => {
                write!(f, "action held by silence {id} until {until}")
            }
            ActionHeld::MassOutage { since } => {
                write!(f, "action held by the job's mass outage since {since}")
            }
        }
    }
}

/// The outcome of one evaluation of one job on one device.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    /// The state to keep (and persist) until the next evaluation.
    pub(crate) state: JobState,
    /// Phase changes, in order, for the log.
    pub(crate) transitions: Vec<Transition>,
    /// The action to journal and send now, if one is due.
    pub(crate) action: Option<ActionDue>,
    /// Why an action that would be due is waiting, if it is.
    pub(crate) held: Option<ActionHeld>,
    /// The verification that ended at this evaluation, if one did.
    pub(crate) concluded: Option<Concluded>,
    /// The episode gave up at this evaluation (an action would be due but
    /// the job's limit is reached): its number. Once per episode.
    pub(crate) gave_up: Option<u64>,
}

impl JobState {
    /// Applies one evaluation, following the rules in the module docs.
    pub(crate) fn advance(&self, timing: &Timing, evaluation: &Evaluation) -> Step {
        let mut step = Step {
            state: self.clone(),
            transitions: Vec::new(),
            action: None,
            held: None,
            concluded: None,
            gave_up: None,
        };
        step.verify(evaluation);
        let now = evaluation.now;
        match (self.phase.clone(), evaluation.verdict) {
            (Phase::Inactive | Phase::Resolved { .. }, Verdict::True) => {
                step.enter(
                    Phase::Pending {
                        since: now,
                        held: Duration::ZERO,
                        counting_from: Some(now),
                        last_true: Some(now),
                    },
                    now,
                    Duration::ZERO,
                    None,
                );
                step.fire_if_held_long_enough(timing, evaluation);
            }
            (Phase::Inactive | Phase::Resolved { .. }, Verdict::False | Verdict::Unknown) => {}
            (Phase::Pending { since, held, counting_from, last_true }, Verdict::True) => {
                let (held, counting_from) = match (counting_from, last_true) {
                    // The run this process watched goes on.
                    (Some(from), Some(last)) if last <= now => (held, from),
                    // The clock stepped back: what the run held is kept, and
                    // a run starts afresh (the step counts as no time).
                    (Some(from), Some(last)) => (held + elapsed(from, last), now),
                    // No run (after an Unknown), or one read back after a
                    // restart that nobody watched to its end.
                    _ => (held, now),
                };
                let counting_from = Some(counting_from);
                step.state.phase =
                    Phase::Pending { since, held, counting_from, last_true: Some(now) };
                step.fire_if_held_long_enough(timing, evaluation);
            }
            (Phase::Pending { since, .. }, Verdict::False) => {
                step.enter(Phase::Inactive, now, elapsed(since, now), None);
            }
            (Phase::Pending { since, .. }, Verdict::Unknown) => {
                // The run ends at its last true evaluation: what it held is
                // kept, the time up to this evaluation is not counted.
                let held = self.phase.held_observed().unwrap_or_default();
                step.state.phase =
                    Phase::Pending { since, held, counting_from: None, last_true: None };
            }
            (Phase::Firing { .. }, Verdict::True) => step.act_if_allowed(timing, evaluation),
            (Phase::Firing { since, episode, .. }, Verdict::False) => {
                step.enter(
                    Phase::Resolved { at: now, episode },
                    now,
                    elapsed(since, now),
                    Some(episode),
                );
            }
            (Phase::Firing { .. }, Verdict::Unknown) => {}
        }
        step
    }
}

impl JobState {
    /// Whether `self` and `other` are journalled alike: equal but for what
    /// only the running process keeps (the latest true evaluation of a
    /// pending run). The engine saves a state only when this is false, so
    /// a state is written when something happens, not as time passes.
    pub(crate) fn saves_as(&self, other: &JobState) -> bool {
        fn saved(state: &JobState) -> JobState {
            let mut state = state.clone();
            if let Phase::Pending { last_true, .. } = &mut state.phase {
                *last_true = None;
            }
            state
        }
        saved(self) == saved(other)
    }

    /// The state to journal when the daemon stops: a pending run this
    /// process watched is folded into the time held, up to its latest true
    /// evaluation, so that the next start carries it on (as after an
    /// Unknown, the next true evaluation starts a new run; the time the
    /// daemon is stopped is not counted). `None` when there is no such run.
    pub(crate) fn at_stop(&self) -> Option<JobState> {
        let Phase::Pending { since, counting_from: Some(_), last_true: Some(_), .. } = self.phase
        else {
            return None;
        };
        let held = self.phase.held_observed()?;
        let phase = Phase::Pending { since, held, counting_from: None, last_true: None };
        Some(JobState { phase, ..self.clone() })
    }

    /// A state read from the journal as the running daemon holds it: a
    /// pending run is taken as watched, so that an evaluation finding the
    /// condition true now counts the run up to now, as the daemon's next
    /// cycle will. For `jobctl explain`, which predicts that cycle; the
    /// daemon itself never does this (after a restart, the run was not
    /// watched).
    pub(crate) fn as_the_daemon_holds_it(&self) -> JobState {
        let mut state = self.clone();
        if let Phase::Pending { counting_from: Some(from), last_true, .. } = &mut state.phase {
            last_true.get_or_insert(*from);
        }
        state
    }

    /// When this pending (job, device) will have held `for`, if the
    /// condition keeps holding from now on: the moment an evaluation would
    /// fire it. `None` unless pending and counting (after an unknown, the
    /// timer waits for the next true evaluation).
    pub(crate) fn for_elapses_at(&self, timing: &Timing) -> Option<Timestamp> {
        match self.phase {
            // A run read back from the journal (no latest true evaluation
            // seen by this process) is not counted: nothing is due.
            Phase::Pending { held, counting_from: Some(from), last_true: Some(_), .. } => {
                Some(after(from, timing.for_.saturating_sub(held)))
            }
            _ => None,
        }
    }

    /// This state, which has just entered pending, with the condition known
    /// to have held since `onset` (Prometheus's data says so): pending
    /// since `onset`, its `for` timer counting from `counting_from` (the
    /// onset, or a little after it; never later than `since`). `None` when
    /// the state is not a pending that has counted nothing yet, or the
    /// onset is not earlier than the evaluation that saw the condition.
    pub(crate) fn pending_from(
        &self,
        onset: Timestamp,
        counting_from: Timestamp,
    ) -> Option<JobState> {
        let Phase::Pending { since, held, counting_from: Some(from), last_true } = self.phase
        else {
            return None;
        };
        if held != Duration::ZERO || from != since || onset >= since {
            return None;
        }
        let mut state = self.clone();
        let counting_from = Some(counting_from.clamp(onset, since));
        state.phase =
            Phase::Pending { since: onset, held: Duration::ZERO, counting_from, last_true };
        Some(state)
    }

    /// This state, the result of a step that made an action due, with that
    /// action not taken: what the (job, device) keeps when something outside
    /// it holds the action back (its socket got a command from the job
    /// within the cooldown, or a budget is spent). The action stays due, as
    /// one held by the cooldown does. `before` is the state the step started from.
    pub(crate) fn without_action(&self, before: &JobState) -> JobState {
        let mut state = self.clone();
        if let Phase::Firing { since, episode, actions_taken } = state.phase {
            let actions_taken = actions_taken.saturating_sub(1);
            state.phase = Phase::Firing { since, episode, actions_taken };
            state.last_action_at = before.last_action_at;
        }
        state
    }
}

/// The journal keeps a state as JSON next to its phase's name.
impl crate::journal::JournalState for JobState {
    fn phase_name(&self) -> &'static str {
        self.phase.name().as_str()
    }
}

impl Step {
    /// Carries an open verification on by one evaluation, ending it when
    /// the rules in the module docs decide it. Runs before the phase's own
    /// rules, so that an action due at this evaluation opens a fresh one.
    fn verify(&mut self, evaluation: &Evaluation) {
        let Some(mut open) = self.state.verifying else { return };
        let now = evaluation.now;
        let within_window = now <= open.until;
        let recovery = match evaluation.verdict {
            Verdict::False if within_window => {
                Some(Recovery::Recovered { after: elapsed(open.action_at, now) })
            }
            Verdict::True if now >= open.until => Some(Recovery::NotRecovered),
            _ if within_window => None,
            // After the window, neither true: what the window saw decides.
            _ => Some(match open.last_seen {
                Seen::Bad => Recovery::NotRecovered,
                Seen::Nothing | Seen::Unknown => Recovery::Unverified,
            }),
        };
        match recovery {
            Some(recovery) => {
                self.state.verifying = None;
                self.concluded = Some(Concluded {
                    episode: open.episode,
                    attempt: open.attempt,
                    action_at: open.action_at,
                    window: elapsed(open.action_at, open.until),
                    recovery,
                });
            }
            None => {
                open.last_seen = match evaluation.verdict {
                    Verdict::True => Seen::Bad,
                    Verdict::Unknown => Seen::Unknown,
                    Verdict::False => open.last_seen,
                };
                self.state.verifying = Some(open);
            }
        }
    }

    fn enter(&mut self, phase: Phase, at: Timestamp, after: Duration, episode: Option<u64>) {
        let from = self.state.phase.name();
        let to = phase.name();
        self.state.phase = phase;
        self.transitions.push(Transition { from, to, at, after, episode });
    }

    /// Pending, just observed true: fire once `for` has been held.
    fn fire_if_held_long_enough(&mut self, timing: &Timing, evaluation: &Evaluation) {
        let Phase::Pending { since, .. } = self.state.phase else { return };
        if self.state.phase.held_observed().is_none_or(|held| held < timing.for_) {
            return;
        }
        let now = evaluation.now;
        let episode = self.state.episodes_started + 1;
        self.state.episodes_started = episode;
        self.enter(
            Phase::Firing { since: now, episode, actions_taken: 0 },
            now,
            elapsed(since, now),
            Some(episode),
        );
        self.act_if_allowed(timing, evaluation);
    }

    /// Firing, observed true: decide whether the next action is due.
    fn act_if_allowed(&mut self, timing: &Timing, evaluation: &Evaluation) {
        let Phase::Firing { since, episode, actions_taken } = self.state.phase else { return };
        if self.state.gave_up_in == Some(episode) {
            return;
        }
        let now = evaluation.now;
        if actions_taken == 0 {
            if let Some(last) = self.state.last_action_at {
                if elapsed(last, now) < timing.cooldown {
                    self.held = Some(ActionHeld::Cooldown { until: after(last, timing.cooldown) });
                    return;
                }
            }
        } else {
            let Some(repeat) = timing.repeat else { return };
            if actions_taken > repeat.max || self.state.verifying.is_some() {
                return;
            }
            // A repeat is scheduled, not held, until `every` has passed.
            let previous = self.state.last_action_at.unwrap_or(since);
            if elapsed(previous, now) < repeat.every {
                return;
            }
        }
        if !evaluation.in_window {
            self.held = Some(ActionHeld::OutsideWindow);
            return;
        }
        if let Some(silence) = evaluation.silence {
            self.held = Some(ActionHeld::Silenced(silence));
            return;
        }
        if let Some(since) = evaluation.mass_outage {
            self.held = Some(ActionHeld::MassOutage { since });
            return;
        }
        if evaluation.limit_reached {
            self.state.gave_up_in = Some(episode);
            self.gave_up = Some(episode);
            return;
        }
        let attempt_in_episode = actions_taken + 1;
        self.state.phase = Phase::Firing { since, episode, actions_taken: attempt_in_episode };
        self.state.last_action_at = Some(now);
        self.state.verifying = timing.verify.map(|within| Verifying {
            episode,
            attempt: attempt_in_episode,
            action_at: now,
            until: after(now, within),
            last_seen: Seen::Nothing,
        });
        self.action =
            Some(ActionDue { episode, attempt_in_episode, trigger_value: evaluation.value });
    }
}

/// Serde adapter storing a [`Duration`] as integer milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        duration: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60;

    fn minutes(n: u64) -> Duration {
        Duration::from_secs(n * MINUTE)
    }

    /// Drives one (job, device) through evaluations at minute offsets from a
    /// fixed origin, collecting every action and transition.
    struct Device {
        timing: Timing,
        state: JobState,
        actions: Vec<(u64, ActionDue)>,
        transitions: Vec<Transition>,
        last_held: Option<ActionHeld>,
        /// Every verification that ended, with the minute it ended.
        concluded: Vec<(u64, Concluded)>,
        /// The minutes at which an episode gave up.
        gave_up: Vec<(u64, u64)>,
        /// Whether the limit is reached, as the engine would say.
        limit_reached: bool,
        /// Since when the job is in a mass outage, as the engine would say.
        mass_outage: Option<Timestamp>,
    }

    const ORIGIN: i64 = 1_700_000_000;

    fn at_minute(minute: u64) -> Timestamp {
        Timestamp::from_second(ORIGIN + i64::try_from(minute * MINUTE).unwrap()).unwrap()
    }

    impl Device {
        fn new(timing: Timing) -> Device {
            Device {
                timing,
                state: JobState::default(),
                actions: Vec::new(),
                transitions: Vec::new(),
                last_held: None,
                concluded: Vec::new(),
                gave_up: Vec::new(),
                limit_reached: false,
                mass_outage: None,
            }
        }

        fn eval_with(&mut self, minute: u64, verdict: Verdict, in_window: bool) -> Step {
            self.eval_held(minute, verdict, in_window, None)
        }

        fn eval_held(
            &mut self,
            minute: u64,
            verdict: Verdict,
            in_window: bool,
            silence: Option<SilenceHold>,
        ) -> Step {
            let evaluation = Evaluation {
                now: at_minute(minute),
                verdict,
                value: Some(minute as f64),
                in_window,
                silence,
                limit_reached: self.limit_reached,
                mass_outage: self.mass_outage,
            };
            let step = self.state.advance(&self.timing, &evaluation);
            self.state = step.state.clone();
            if let Some(action) = step.action {
                self.actions.push((minute, action));
            }
            if let Some(concluded) = step.concluded {
                self.concluded.push((minute, concluded));
            }
            if let Some(episode) = step.gave_up {
                self.gave_up.push((minute, episode));
            }
            self.transitions.extend(step.transitions.iter().copied());
            self.last_held = step.held;
            step
        }

        fn eval(&mut self, minute: u64, verdict: Verdict) -> Step {
            self.eval_with(minute, verdict, true)
        }

        /// Evaluates every minute of `minutes` with the same verdict.
        fn run(&mut self, minutes: std::ops::RangeInclusive<u64>, verdict: Verdict) {
            for minute in minutes {
                self.eval(minute, verdict);
            }
        }

        fn action_minutes(&self) -> Vec<u64> {
            self.actions.iter().map(|(minute, _)| *minute).collect()
        }

        fn phase(&self) -> PhaseName {
            self.state.phase.name()
        }
    }

    fn timing(for_minutes: u64, cooldown_minutes: u64) -> Timing {
        Timing {
            for_: minutes(for_minutes),
            cooldown: minutes(cooldown_minutes),
            repeat: None,
            verify: None,
        }
    }

    #[test]
    fn exactly_one_action_after_for_and_none_during_it() {
        let mut device = Device::new(timing(10, 60));
        device.run(0..=9, Verdict::True);
        assert!(device.actions.is_empty(), "nothing may be sent while `for` runs");
        assert_eq!(device.phase(), PhaseName::Pending);

        device.run(10..=180, Verdict::True);
        assert_eq!(device.action_minutes(), vec![10]);
        let (_, action) = device.actions[0];
        assert_eq!(
            action,
            ActionDue { episode: 1, attempt_in_episode: 1, trigger_value: Some(10.0) }
        );
        assert_eq!(device.phase(), PhaseName::Firing);
    }

    #[test]
    fn early_recovery_sends_nothing_and_returns_to_inactive() {
        let mut device = Device::new(timing(10, 60));
        device.run(0..=9, Verdict::True);
        device.eval(10, Verdict::False);
        device.run(11..=60, Verdict::False);
        assert!(device.actions.is_empty());
        assert_eq!(device.phase(), PhaseName::Inactive);
        assert_eq!(device.state.episodes_started, 0);
        let names: Vec<_> = device.transitions.iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            names,
            vec![
                (PhaseName::Inactive, PhaseName::Pending),
                (PhaseName::Pending, PhaseName::Inactive)
            ]
        );
    }

    #[test]
    fn zero_for_fires_on_the_first_true_evaluation() {
        let mut device = Device::new(timing(0, 0));
        let step = device.eval(0, Verdict::True);
        assert_eq!(device.action_minutes(), vec![0]);
        let names: Vec<_> = step.transitions.iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            names,
            vec![
                (PhaseName::Inactive, PhaseName::Pending),
                (PhaseName::Pending, PhaseName::Firing)
            ]
        );
    }

    #[test]
    fn transitions_read_as_log_lines() {
        let mut device = Device::new(timing(10, 60));
        device.run(0..=10, Verdict::True);
        device.eval(35, Verdict::False);
        let lines: Vec<String> = device.transitions.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "inactive → pending",
                "pending → firing after 10m (episode 1)",
                "firing → resolved after 25m (episode 1)",
            ]
        );
    }

    #[test]
    fn cooldown_holds_a_new_episodes_action_until_it_elapses() {
        let mut device = Device::new(timing(10, 60));
        device.run(0..=10, Verdict::True); // episode 1, action at 10
        device.eval(20, Verdict::False);
        device.run(30..=40, Verdict::True); // episode 2 fires at 40
        assert_eq!(device.phase(), PhaseName::Firing);
        assert_eq!(device.state.episodes_started, 2);
        assert_eq!(device.last_held, Some(ActionHeld::Cooldown { until: at_minute(70) }));

        device.run(41..=69, Verdict::True);
        assert_eq!(device.action_minutes(), vec![10], "cooldown must hold until minute 70");
        device.run(70..=120, Verdict::True);
        assert_eq!(device.action_minutes(), vec![10, 70]);
        let (_, action) = device.actions[1];
        assert_eq!((action.episode, action.attempt_in_episode), (2, 1));
        assert_eq!(device.last_held, None);
    }

    #[test]
    fn an_action_held_by_cooldown_is_dropped_when_the_episode_resolves() {
        let mut device = Device::new(timing(10, 60));
        device.run(0..=10, Verdict::True);
        device.eval(20, Verdict::False);
        device.run(30..=45, Verdict::True); // firing at 40, held
        device.eval(46, Verdict::False);
        device.run(47..=200, Verdict::False);
        assert_eq!(device.action_minutes(), vec![10]);
        assert_eq!(device.state.phase, Phase::Resolved { at: at_minute(46), episode: 2 });
    }

    #[test]
    fn repeat_sends_every_interval_up_to_max_per_episode() {
        let mut device = Device::new(Timing {
            for_: minutes(10),
            cooldown: minutes(60),
            verify: None,
            repeat: Some(Repeat { every: minutes(15), max: 2 }),
        });
        device.run(0..=300, Verdict::True);
        assert_eq!(device.action_minutes(), vec![10, 25, 40]);
        let attempts: Vec<_> =
            device.actions.iter().map(|(_, a)| (a.episode, a.attempt_in_episode)).collect();
        assert_eq!(attempts, vec![(1, 1), (1, 2), (1, 3)]);
    }

    #[test]
    fn repeats_start_over_in_each_episode() {
        let mut device = Device::new(Timing {
            for_: minutes(0),
            cooldown: minutes(0),
            verify: None,
            repeat: Some(Repeat { every: minutes(5), max: 1 }),
        });
        device.run(0..=20, Verdict::True);
        device.eval(21, Verdict::False);
        device.run(22..=40, Verdict::True);
        assert_eq!(device.action_minutes(), vec![0, 5, 22, 27]);
        let attempts: Vec<_> =
            device.actions.iter().map(|(_, a)| (a.episode, a.attempt_in_episode)).collect();
        assert_eq!(attempts, vec![(1, 1), (1, 2), (2, 1), (2, 2)]);
    }

    #[test]
    fn closed_window_defers_the_first_action_until_it_opens() {
        let mut device = Device::new(timing(10, 60));
        for minute in 0..=29 {
            device.eval_with(minute, Verdict::True, false);
        }
        assert!(device.actions.is_empty());
        assert_eq!(device.phase(), PhaseName::Firing);
        assert_eq!(device.last_held, Some(ActionHeld::OutsideWindow));

        device.eval_with(30, Verdict::True, true);
        device.run(31..=100, Verdict::True);
        assert_eq!(device.action_minutes(), vec![30]);
    }

    fn silence(id: i64, until_minute: u64) -> Option<SilenceHold> {
        Some(SilenceHold { id: SilenceId(id), until: at_minute(until_minute) })
    }

    #[test]
    fn a_silence_holds_the_action_until_it_ends_and_the_episode_goes_on() {
        let mut device = Device::new(timing(10, 60));
        for minute in 0..=39 {
            device.eval_held(minute, Verdict::True, true, silence(3, 40));
        }
        assert!(device.actions.is_empty(), "nothing leaves while silenced");
        assert_eq!(
            device.state.phase,
            Phase::Firing { since: at_minute(10), episode: 1, actions_taken: 0 }
        );
        assert_eq!(device.last_held, Some(ActionHeld::Silenced(silence(3, 40).unwrap())));
        assert_eq!(
            device.last_held.unwrap().to_string(),
            "action held by silence #3 until 2023-11-14T22:53:20Z"
        );
        device.run(40..=100, Verdict::True);
        assert_eq!(device.action_minutes(), vec![40], "released at the first cycle after it");
        let (_, action) = device.actions[0];
        assert_eq!((action.episode, action.attempt_in_episode), (1, 1));
    }

    #[test]
    fn a_silenced_action_is_dropped_when_the_device_recovers_first() {
        let mut device = Device::new(timing(0, 0));
        for minute in 0..=20 {
            device.eval_held(minute, Verdict::True, true, silence(1, 60));
        }
        device.eval_held(21, Verdict::False, true, silence(1, 60));
        device.run(61..=70, Verdict::False);
        assert!(device.actions.is_empty());
        assert_eq!(device.state.phase, Phase::Resolved { at: at_minute(21), episode: 1 });
    }

    #[test]
    fn cooldown_then_window_then_silence_is_the_order_of_reasons() {
        let mut device = Device::new(timing(0, 60));
        device.eval(0, Verdict::True); // action at 0
        device.eval(1, Verdict::False);
        // Episode 2: cooldown, closed window and a silence all hold.
        device.eval_held(2, Verdict::True, false, silence(1, 200));
        assert!(matches!(device.last_held, Some(ActionHeld::Cooldown { .. })));
        device.eval_held(60, Verdict::True, false, silence(1, 200));
        assert_eq!(device.last_held, Some(ActionHeld::OutsideWindow));
        device.eval_held(61, Verdict::True, true, silence(1, 200));
        assert_eq!(device.last_held, Some(ActionHeld::Silenced(silence(1, 200).unwrap())));
        device.eval_held(62, Verdict::True, false, None);
        assert_eq!(device.last_held, Some(ActionHeld::OutsideWindow));
        device.eval(63, Verdict::True);
        assert_eq!(device.action_minutes(), vec![0, 63]);
    }

    #[test]
    fn a_mass_outage_holds_the_action_and_its_end_releases_it_in_the_same_episode() {
        let mut device = Device::new(timing(10, 60));
        device.mass_outage = Some(at_minute(5));
        device.run(0..=30, Verdict::True);
        assert!(device.actions.is_empty(), "nothing leaves during the outage");
        assert_eq!(
            device.state.phase,
            Phase::Firing { since: at_minute(10), episode: 1, actions_taken: 0 },
            "for elapsed and the episode began as usual"
        );
        assert_eq!(device.last_held, Some(ActionHeld::MassOutage { since: at_minute(5) }));
        assert_eq!(
            device.last_held.unwrap().to_string(),
            "action held by the job's mass outage since 2023-11-14T22:18:20Z"
        );
        device.mass_outage = None;
        device.run(31..=40, Verdict::True);
        assert_eq!(device.action_minutes(), vec![31], "released at the first cycle after it");
        let (_, action) = device.actions[0];
        assert_eq!((action.episode, action.attempt_in_episode), (1, 1));
    }

    #[test]
    fn a_device_back_before_the_outage_ends_gets_nothing_and_a_held_action_gives_nothing_up() {
        let mut device = Device::new(timing(0, 0));
        device.mass_outage = Some(at_minute(0));
        device.limit_reached = true;
        device.run(0..=10, Verdict::True);
        assert!(device.gave_up.is_empty(), "held, so the limit is not even looked at");
        device.eval(11, Verdict::False);
        device.mass_outage = None;
        device.run(12..=13, Verdict::False);
        assert!(device.actions.is_empty());
        assert_eq!(device.state.phase, Phase::Resolved { at: at_minute(11), episode: 1 });
    }

    #[test]
    fn a_silence_comes_before_a_mass_outage_and_a_mass_outage_before_the_limit() {
        let mut device = Device::new(timing(0, 0));
        device.mass_outage = Some(at_minute(0));
        device.eval_held(0, Verdict::True, true, silence(4, 60));
        assert_eq!(device.last_held, Some(ActionHeld::Silenced(silence(4, 60).unwrap())));
        device.eval_held(1, Verdict::True, false, silence(4, 60));
        assert_eq!(device.last_held, Some(ActionHeld::OutsideWindow));
        device.eval(2, Verdict::True);
        assert_eq!(device.last_held, Some(ActionHeld::MassOutage { since: at_minute(0) }));
        device.mass_outage = None;
        device.limit_reached = true;
        device.eval(3, Verdict::True);
        assert_eq!(device.gave_up, vec![(3, 1)]);
    }

    #[test]
    fn a_silence_holds_repeats_without_a_burst_afterwards() {
        let mut device = Device::new(Timing {
            for_: minutes(0),
            cooldown: minutes(0),
            repeat: Some(Repeat { every: minutes(10), max: 5 }),
            verify: None,
        });
        device.eval(0, Verdict::True);
        for minute in 1..=60 {
            device.eval_held(minute, Verdict::True, true, silence(2, 61));
        }
        device.run(61..=75, Verdict::True);
        assert_eq!(device.action_minutes(), vec![0, 61, 71]);
    }

    #[test]
    fn closed_window_defers_a_repeat_without_a_burst_afterwards() {
        let mut device = Device::new(Timing {
            for_: minutes(0),
            cooldown: minutes(0),
            verify: None,
            repeat: Some(Repeat { every: minutes(10), max: 5 }),
        });
        device.eval(0, Verdict::True);
        for minute in 1..=60 {
            device.eval_with(minute, Verdict::True, false);
        }
        device.run(61..=75, Verdict::True);
        assert_eq!(device.action_minutes(), vec![0, 61, 71], "one repeat at opening, then spaced");
    }

    #[test]
    fn unknown_pauses_the_for_timer_and_unobserved_time_does_not_count() {
        let mut device = Device::new(timing(10, 60));
        device.run(0..=5, Verdict::True); // 5 minutes held
        device.run(6..=20, Verdict::Unknown);
        assert_eq!(device.phase(), PhaseName::Pending, "unknown neither advances nor resets");
        device.run(21..=25, Verdict::True); // 21 restarts counting: 4 more minutes
        assert!(device.actions.is_empty());
        device.eval(26, Verdict::True); // 5 + 5 = 10 minutes observed
        assert_eq!(device.action_minutes(), vec![26]);
        let firing = device.transitions.iter().find(|t| t.to == PhaseName::Firing).unwrap();
        assert_eq!(firing.to_string(), "pending → firing after 26m (episode 1)");
    }

    #[test]
    fn unknown_never_fires_however_long_it_lasts() {
        let mut device = Device::new(timing(10, 60));
        device.eval(0, Verdict::True);
        device.run(1..=600, Verdict::Unknown);
        assert!(device.actions.is_empty());
        assert!(matches!(device.state.phase, Phase::Pending { held: Duration::ZERO, .. }));
    }

    #[test]
    fn false_after_an_unknown_gap_still_cancels_pending() {
        let mut device = Device::new(timing(10, 60));
        device.run(0..=8, Verdict::True);
        device.run(9..=30, Verdict::Unknown);
        device.eval(31, Verdict::False);
        device.run(32..=40, Verdict::True);
        assert!(device.actions.is_empty(), "pending restarted at 32, needs until 42");
        device.eval(42, Verdict::True);
        assert_eq!(device.action_minutes(), vec![42]);
    }

    #[test]
    fn unknown_during_firing_holds_the_episode_and_sends_nothing() {
        let mut device = Device::new(timing(10, 60));
        for minute in 0..=15 {
            device.eval_with(minute, Verdict::True, false); // firing at 10, window closed
        }
        for minute in 16..=90 {
            let step = device.eval_with(minute, Verdict::Unknown, true);
            assert_eq!(step.action, None);
            assert!(step.transitions.is_empty());
        }
        assert_eq!(device.phase(), PhaseName::Firing, "unknown must not resolve");
        device.eval(91, Verdict::True);
        assert_eq!(device.action_minutes(), vec![91]);
        device.run(92..=99, Verdict::Unknown);
        device.eval(100, Verdict::False);
        assert_eq!(device.state.phase, Phase::Resolved { at: at_minute(100), episode: 1 });
    }

    #[test]
    fn unknown_holds_a_due_repeat() {
        let mut device = Device::new(Timing {
            for_: minutes(0),
            cooldown: minutes(0),
            verify: None,
            repeat: Some(Repeat { every: minutes(10), max: 3 }),
        });
        device.eval(0, Verdict::True);
        device.run(1..=40, Verdict::Unknown);
        device.eval(41, Verdict::True);
        assert_eq!(device.action_minutes(), vec![0, 41]);
    }

    #[test]
    fn a_flapping_device_never_fires_when_it_never_holds_for_long_enough() {
        let mut device = Device::new(timing(5, 60));
        for minute in 0..=240 {
            let verdict = if minute % 4 == 3 { Verdict::False } else { Verdict::True };
            device.eval(minute, verdict);
        }
        assert!(device.actions.is_empty());
        assert_eq!(device.state.episodes_started, 0);
    }

    #[test]
    fn a_flapping_device_gets_at_most_one_action_per_cooldown() {
        let mut device = Device::new(timing(2, 60));
        // Bad for 5 minutes, fine for 1, over and over: an episode every 6 minutes.
        for minute in 0..=180 {
            let verdict = if minute % 6 == 5 { Verdict::False } else { Verdict::True };
            device.eval(minute, verdict);
        }
        assert_eq!(device.action_minutes(), vec![2, 62, 122]);
        assert!(device.state.episodes_started >= 30);
    }

    #[test]
    fn a_clock_stepping_back_counts_the_step_as_no_time() {
        let mut device = Device::new(timing(10, 60));
        device.run(100..=105, Verdict::True); // 5 minutes held
        device.run(0..=4, Verdict::True); // the wall clock jumped back: 0 + 4 minutes
        assert!(device.actions.is_empty());
        device.eval(5, Verdict::True);
        assert_eq!(device.action_minutes(), vec![5]);
    }

    fn json(state: &JobState) -> String {
        serde_json::to_string(state).unwrap()
    }

    /// `state` as the journal gives it back after a restart.
    fn reloaded(state: &JobState) -> JobState {
        serde_json::from_str(&json(state)).unwrap()
    }

    #[test]
    fn state_survives_serialisation_but_a_restart_loses_the_run_and_the_downtime() {
        let mut device = Device::new(timing(10, 60));
        device.run(0..=4, Verdict::True); // 4 minutes held
        device.eval(5, Verdict::Unknown); // kept as held before the next run
        device.run(6..=8, Verdict::True); // a run of 2 more minutes
        assert_eq!(device.state.phase.held_at(at_minute(8)), Some(minutes(6)));
        let restored = reloaded(&device.state);
        assert_eq!(
            restored.phase,
            Phase::Pending {
                since: at_minute(0),
                held: minutes(4),
                counting_from: Some(at_minute(6)),
                last_true: None,
            }
        );
        assert_eq!(restored.phase.held_at(at_minute(8)), Some(minutes(6)), "what status shows");

        // The daemon was down from 8 to 20: the run from 6 is lost, the 4
        // minutes before it are kept, and counting resumes at 20.
        device.state = restored;
        device.run(20..=25, Verdict::True);
        assert!(device.actions.is_empty());
        device.eval(26, Verdict::True);
        assert_eq!(device.action_minutes(), vec![26]);

        let restored = reloaded(&device.state);
        assert_eq!(restored, device.state);
        assert_eq!(restored.last_action_at, Some(at_minute(26)));
        assert_eq!(
            restored.phase,
            Phase::Firing { since: at_minute(26), episode: 1, actions_taken: 1 }
        );
    }

    #[test]
    fn a_pending_state_is_journalled_alike_while_true_and_differently_once_unknown() {
        let mut device = Device::new(timing(10, 60));
        device.eval(0, Verdict::True);
        let started = json(&device.state);
        assert_eq!(
            started,
            format!(
                r#"{{"phase":{{"phase":"pending","since":{ms},"held":0,"counting_from":{ms}}},"episodes_started":0,"last_action_at":null}}"#,
                ms = at_minute(0).as_millisecond()
            )
        );
        for minute in 1..=5 {
            let before = device.state.clone();
            device.eval(minute, Verdict::True);
            assert!(device.state.saves_as(&before), "minute {minute}: only the clock moved");
            assert_ne!(device.state, before, "the run's latest evaluation is kept in memory");
            assert_eq!(json(&device.state), started);
        }
        assert_eq!(device.state.phase.held_at(at_minute(5)), Some(minutes(5)));

        let before = device.state.clone();
        device.eval(6, Verdict::Unknown);
        assert!(!device.state.saves_as(&before), "the run ended: journalled");
        assert_eq!(
            device.state.phase,
            Phase::Pending {
                since: at_minute(0),
                held: minutes(5),
                counting_from: None,
                last_true: None
            },
            "the run's 5 minutes are kept; the minute ending in unknown is not counted"
        );
        let gap = device.state.clone();
        device.eval(7, Verdict::Unknown);
        assert!(device.state.saves_as(&gap), "nothing happens while unknown lasts");
        device.eval(8, Verdict::True);
        assert!(!device.state.saves_as(&gap), "a run starts: journalled");
        assert_eq!(device.state.phase.held_at(at_minute(8)), Some(minutes(5)));
    }

    #[test]
    fn a_clean_stop_journals_the_run_so_the_restart_loses_only_the_downtime() {
        let mut device = Device::new(timing(10, 60));
        device.run(0..=6, Verdict::True);
        let stopped = device.state.at_stop().expect("a run under way");
        assert_eq!(
            stopped.phase,
            Phase::Pending {
                since: at_minute(0),
                held: minutes(6),
                counting_from: None,
                last_true: None
            }
        );
        assert_eq!(stopped.at_stop(), None, "nothing more to fold");
        device.state = reloaded(&stopped);
        device.run(20..=23, Verdict::True); // 6 + 3 minutes
        assert!(device.actions.is_empty());
        device.eval(24, Verdict::True);
        assert_eq!(device.action_minutes(), vec![24]);
        assert_eq!(device.state.at_stop(), None, "only pending runs are folded");
    }

    #[test]
    fn a_pending_state_journalled_before_runs_were_saved_keeps_its_time_held() {
        // What jobctl wrote before: the time held so far, no run.
        let json = format!(
            r#"{{"phase":{{"phase":"pending","since":{},"held":360000}},"episodes_started":0,"last_action_at":null}}"#,
            at_minute(0).as_millisecond()
        );
        let mut device = Device::new(timing(10, 60));
        device.state = serde_json::from_str(&json).unwrap();
        assert_eq!(device.state.phase.held_at(at_minute(30)), Some(minutes(6)));
        device.run(30..=33, Verdict::True);
        assert!(device.actions.is_empty());
        device.eval(34, Verdict::True);
        assert_eq!(device.action_minutes(), vec![34], "6 minutes before and 4 after the restart");
    }

    #[test]
    fn explain_counts_a_journalled_run_as_the_running_daemon_does() {
        let mut device = Device::new(timing(10, 60));
        device.run(0..=8, Verdict::True);
        let as_held = reloaded(&device.state).as_the_daemon_holds_it();
        let at_ten = Evaluation {
            now: at_minute(10),
            verdict: Verdict::True,
            value: None,
            in_window: true,
            limit_reached: false,
            silence: None,
            mass_outage: None,
        };
        let daemon = device.state.advance(&device.timing, &at_ten);
        let explained = as_held.advance(&device.timing, &at_ten);
        assert_eq!(explained.action, daemon.action);
        assert!(explained.action.is_some(), "10 minutes held at minute 10");
        let after_restart = reloaded(&device.state).advance(&device.timing, &at_ten);
        assert_eq!(after_restart.action, None, "a restarted daemon does not count the run");
    }

    #[test]
    fn a_restored_firing_state_keeps_its_cooldown_and_sends_nothing_twice() {
        let mut device = Device::new(timing(0, 60));
        device.eval(0, Verdict::True);
        let json = serde_json::to_string(&device.state).unwrap();
        device.state = serde_json::from_str(&json).unwrap();
        device.run(1..=30, Verdict::True);
        device.eval(31, Verdict::False);
        device.run(32..=59, Verdict::True);
        assert_eq!(device.action_minutes(), vec![0]);
        device.state =
            serde_json::from_str(&serde_json::to_string(&device.state).unwrap()).unwrap();
        device.eval(60, Verdict::True);
        assert_eq!(device.action_minutes(), vec![0, 60]);
    }

    fn verified(for_minutes: u64, within_minutes: u64) -> Timing {
        Timing { verify: Some(minutes(within_minutes)), ..timing(for_minutes, 60) }
    }

    /// (minute it ended, attempt, recovery) of each verification.
    fn recoveries(device: &Device) -> Vec<(u64, u32, Recovery)> {
        device.concluded.iter().map(|(m, c)| (*m, c.attempt, c.recovery)).collect()
    }

    #[test]
    fn a_device_found_fine_within_the_window_recovered_after_the_time_it_took() {
        let mut device = Device::new(verified(0, 10));
        device.eval(0, Verdict::True);
        assert_eq!(device.action_minutes(), vec![0]);
        let open = device.state.verifying.expect("the action is being verified");
        assert_eq!((open.episode, open.attempt, open.until), (1, 1, at_minute(10)));
        device.run(1..=3, Verdict::True);
        device.eval(4, Verdict::False);
        assert_eq!(recoveries(&device), [(4, 1, Recovery::Recovered { after: minutes(4) })]);
        let (_, concluded) = device.concluded[0];
        assert_eq!((concluded.action_at, concluded.window), (at_minute(0), minutes(10)));
        assert_eq!(device.state.verifying, None);
        assert_eq!(device.phase(), PhaseName::Resolved);
    }

    #[test]
    fn a_device_still_bad_when_the_window_ends_did_not_recover_and_is_concluded_once() {
        let mut device = Device::new(verified(0, 10));
        device.run(0..=9, Verdict::True);
        assert!(device.concluded.is_empty(), "the window is still open");
        device.run(10..=30, Verdict::True);
        assert_eq!(recoveries(&device), [(10, 1, Recovery::NotRecovered)]);
        device.eval(31, Verdict::False);
        assert_eq!(device.concluded.len(), 1, "a later recovery changes nothing");
    }

    #[test]
    fn recovery_exactly_at_the_deadline_counts_and_just_after_does_not() {
        let mut device = Device::new(verified(0, 10));
        device.eval(0, Verdict::True);
        device.eval(10, Verdict::False);
        assert_eq!(recoveries(&device), [(10, 1, Recovery::Recovered { after: minutes(10) })]);

        let mut late = Device::new(verified(0, 10));
        late.eval(0, Verdict::True);
        late.eval(9, Verdict::True);
        late.eval(11, Verdict::False);
        assert_eq!(recoveries(&late), [(11, 1, Recovery::NotRecovered)], "seen bad at 9");
    }

    #[test]
    fn unknown_is_neither_recovered_nor_not_and_a_window_of_unknowns_is_unverified() {
        let mut device = Device::new(verified(0, 10));
        device.eval(0, Verdict::True);
        device.run(1..=10, Verdict::Unknown);
        assert!(device.concluded.is_empty(), "unknown decides nothing within the window");
        device.eval(11, Verdict::False);
        assert_eq!(recoveries(&device), [(11, 1, Recovery::Unverified)]);

        // Seen bad, then unknown past the deadline: the last look within
        // the window was unknown, so it is not known to have stayed bad.
        let mut gap = Device::new(verified(0, 10));
        gap.eval(0, Verdict::True);
        gap.eval(3, Verdict::True);
        gap.run(4..=12, Verdict::Unknown);
        assert_eq!(recoveries(&gap), [(11, 1, Recovery::Unverified)]);

        // Unknown within, true after: seen bad after the deadline.
        let mut bad = Device::new(verified(0, 10));
        bad.eval(0, Verdict::True);
        bad.run(1..=9, Verdict::Unknown);
        bad.eval(12, Verdict::True);
        assert_eq!(recoveries(&bad), [(12, 1, Recovery::NotRecovered)]);
    }

    #[test]
    fn a_window_nobody_watched_is_unverified_unless_seen_bad_after_it() {
        let mut device = Device::new(verified(0, 10));
        device.eval(0, Verdict::True);
        // jobctl was down from 0 to 30; the state came back from the journal.
        device.state =
            serde_json::from_str(&serde_json::to_string(&device.state).unwrap()).unwrap();
        device.eval(30, Verdict::False);
        assert_eq!(recoveries(&device), [(30, 1, Recovery::Unverified)]);
    }

    #[test]
    fn a_restart_within_the_window_carries_the_verification_on() {
        let mut device = Device::new(verified(0, 10));
        device.eval(0, Verdict::True);
        device.eval(2, Verdict::True);
        let json = serde_json::to_string(&device.state).unwrap();
        device.state = serde_json::from_str(&json).unwrap();
        assert_eq!(device.state.verifying.map(|v| v.last_seen), Some(Seen::Bad));
        device.eval(7, Verdict::False);
        assert_eq!(recoveries(&device), [(7, 1, Recovery::Recovered { after: minutes(7) })]);
    }

    #[test]
    fn a_repeat_waits_for_the_verification_of_the_previous_action() {
        let mut device = Device::new(Timing {
            repeat: Some(Repeat { every: minutes(5), max: 2 }),
            ..verified(0, 10)
        });
        device.run(0..=40, Verdict::True);
        assert_eq!(device.action_minutes(), vec![0, 10, 20]);
        assert_eq!(
            recoveries(&device),
            [
                (10, 1, Recovery::NotRecovered),
                (20, 2, Recovery::NotRecovered),
                (30, 3, Recovery::NotRecovered)
            ]
        );
    }

    #[test]
    fn without_verify_nothing_is_verified() {
        let mut device = Device::new(timing(0, 60));
        device.run(0..=30, Verdict::True);
        device.eval(31, Verdict::False);
        assert!(device.concluded.is_empty());
        assert_eq!(device.state.verifying, None);
    }

    #[test]
    fn a_reached_limit_gives_the_episode_up_once_and_a_later_episode_may_act() {
        let mut device = Device::new(Timing {
            repeat: Some(Repeat { every: minutes(5), max: 5 }),
            ..timing(0, 0)
        });
        device.run(0..=5, Verdict::True);
        assert_eq!(device.action_minutes(), vec![0, 5]);
        device.limit_reached = true;
        device.run(6..=30, Verdict::True);
        assert_eq!(device.action_minutes(), vec![0, 5], "nothing past the limit");
        assert_eq!(device.gave_up, [(10, 1)], "given up once, when the repeat fell due");
        assert_eq!(device.state.gave_up_in, Some(1));
        device.limit_reached = false;
        device.run(31..=40, Verdict::True);
        assert_eq!(device.action_minutes(), vec![0, 5], "the episode stays given up");

        device.eval(41, Verdict::False);
        device.eval(42, Verdict::True);
        assert_eq!(device.action_minutes(), vec![0, 5, 42], "a new episode acts again");
        assert_eq!(device.gave_up.len(), 1);
    }

    #[test]
    fn the_limit_is_only_asked_when_an_action_would_be_due() {
        let mut device = Device::new(timing(10, 60));
        device.limit_reached = true;
        device.run(0..=9, Verdict::True);
        assert!(device.gave_up.is_empty(), "nothing is due while `for` runs");
        for minute in 10..=20 {
            device.eval_with(minute, Verdict::True, false);
        }
        assert!(device.gave_up.is_empty(), "nothing is due outside the window");
        device.eval(21, Verdict::True);
        assert_eq!(device.gave_up, [(21, 1)]);
        assert!(device.actions.is_empty());
    }

    #[test]
    fn a_state_from_before_verify_and_limit_existed_still_loads() {
        let json = r#"{"phase":{"phase":"firing","since":1700000000000,"episode":2,"actions_taken":1},"episodes_started":2,"last_action_at":1700000000000}"#;
        let state: JobState = serde_json::from_str(json).unwrap();
        assert_eq!((state.verifying, state.gave_up_in), (None, None));
        assert_eq!(serde_json::to_string(&state).unwrap(), json, "nothing new is written");
    }

    #[test]
    fn a_pending_counted_from_its_onset_fires_when_for_has_held_since_then() {
        let mut device = Device::new(timing(10, 60));
        device.eval(4, Verdict::True);
        assert_eq!(device.state.for_elapses_at(&device.timing), Some(at_minute(14)));
        // Prometheus's data shows the condition true since minute 1; the
        // timer counts from a little after it.
        let counting = at_minute(1) + jiff::SignedDuration::from_millis(100);
        device.state = device.state.pending_from(at_minute(1), counting).unwrap();
        assert!(
            matches!(device.state.phase, Phase::Pending { since, .. } if since == at_minute(1))
        );
        let due = counting + jiff::SignedDuration::from_mins(10);
        assert_eq!(device.state.for_elapses_at(&device.timing), Some(due));
        // Only a state that has just entered pending is dated, once, and
        // only to an earlier onset.
        assert_eq!(device.state.pending_from(at_minute(0), at_minute(0)), None);
        device.eval(11, Verdict::True);
        assert!(device.actions.is_empty(), "10 minutes less 100 ms since the onset: not yet");
        device.eval(12, Verdict::True);
        assert_eq!(device.actions.len(), 1, "{:?}", device.transitions);
        assert_eq!(device.state.for_elapses_at(&device.timing), None, "firing counts nothing");
        let fresh = Device::new(timing(10, 60)).eval(3, Verdict::True).state;
        assert_eq!(fresh.pending_from(at_minute(3), at_minute(3)), None, "not earlier");
        assert_eq!(fresh.pending_from(at_minute(5), at_minute(5)), None, "later");
    }

    #[test]
    fn an_unknown_stops_the_for_clock_until_the_next_true_evaluation() {
        let mut device = Device::new(timing(10, 60));
        device.eval(0, Verdict::True);
        device.eval(2, Verdict::True);
        assert_eq!(device.state.for_elapses_at(&device.timing), Some(at_minute(10)));
        device.eval(3, Verdict::Unknown);
        assert_eq!(device.state.for_elapses_at(&device.timing), None);
        device.eval(5, Verdict::True);
        // Two minutes held; eight to go from minute 5.
        assert_eq!(device.state.for_elapses_at(&device.timing), Some(at_minute(13)));
    }
}
