//! What the engine remembers of each (job, device) between cycles, and how
//! one evaluation moves it on.
//!
//! Kept apart from the cycle because it is where the engine's size is won:
//! the states are sparse (a device nothing happened to costs an id in a
//! list, not a state), and [`advance_job`] walks a job's answered, present
//! and stored devices in one merge, skipping the state machine for every
//! device whose verdict cannot move it.

use crate::rules::condition::JobEvaluation;
use crate::rules::device::DeviceId;
use crate::rules::state::{
    self, ActionHeld, JobState, Phase, PhaseName, SilenceHold, Timing, Transition,
};
use crate::rules::{Job, Verdict};

/// What the engine remembers of one job's devices between cycles.
///
/// Almost every device of almost every job sits in the default state
/// (inactive, nothing ever done) cycle after cycle. Storing a state for each
/// would cost over a hundred bytes per (job, device): tens of megabytes for
/// a thousand jobs over a large fleet. A device in the job's answers last
/// cycle is therefore only listed in `present`, and its state is stored only
/// when it is not the default. Together they hold exactly the (job, device)
/// pairs the engine knows.
#[derive(Debug, Default)]
pub(super) struct JobStates {
    /// Devices in the job's answers in the last cycle, in id order.
    present: Vec<DeviceId>,
    /// In id order, the states that `present` does not imply: every state
    /// other than the default, and the states loaded from the journal.
    stored: Vec<(DeviceId, JobState)>,
    /// How many known devices are in each phase (by [`phase_slot`]), for
    /// the `jobctl_job_devices` gauge.
    phases: [u64; 4],
    /// When the job was last evaluated.
    evaluated_at: Option<jiff::Timestamp>,
    /// The earliest moment one of its pending devices will have held the
    /// job's `for` ([`JobState::for_elapses_at`]), if one is counting.
    for_elapses_at: Option<jiff::Timestamp>,
}

/// The phases in the order of [`JobStates::phases`].
pub(super) const PHASES: [PhaseName; 4] =
    [PhaseName::Inactive, PhaseName::Pending, PhaseName::Firing, PhaseName::Resolved];

fn phase_slot(phase: PhaseName) -> usize {
    PHASES.iter().position(|&p| p == phase).expect("every phase has a slot")
}

impl JobStates {
    /// A device's state, if the engine knows the (job, device).
    pub(super) fn get<'s>(
        &'s self,
        device: DeviceId,
        default: &'s JobState,
    ) -> Option<&'s JobState> {
        match self.stored.binary_search_by_key(&device, |(d, _)| *d) {
            Ok(at) => Some(&self.stored[at].1),
            Err(_) => self.present.binary_search(&device).is_ok().then_some(default),
        }
    }

    /// Puts back a device's state (stepping back a cycle's decision).
    pub(super) fn restore(&mut self, device: DeviceId, state: JobState) {
        let slot = phase_slot(state.phase.name());
        match self.stored.binary_search_by_key(&device, |(d, _)| *d) {
            Ok(at) => {
                let old = std::mem::replace(&mut self.stored[at].1, state);
                let old = &mut self.phases[phase_slot(old.phase.name())];
                *old = old.saturating_sub(1);
            }
            Err(at) => {
                if self.present.binary_search(&device).is_ok() {
                    // It counted as the default (inactive) state.
                    let inactive = &mut self.phases[phase_slot(PhaseName::Inactive)];
                    *inactive = inactive.saturating_sub(1);
                }
                self.stored.insert(at, (device, state));
            }
        }
        self.phases[slot] += 1;
    }

    /// The states of a job's devices as the journal saved them.
    pub(super) fn loaded(mut stored: Vec<(DeviceId, JobState)>) -> JobStates {
        stored.sort_by_key(|(device, _)| *device);
        let mut states = JobStates { stored, ..JobStates::default() };
        states.count_phases();
        states
    }

    /// When the job was last evaluated (`None` before its first evaluation
    /// since the engine started).
    pub(super) fn evaluated_at(&self) -> Option<jiff::Timestamp> {
        self.evaluated_at
    }

    /// The earliest moment one of the job's pending devices will have held
    /// its `for`, if the condition keeps holding: when to evaluate the job
    /// again rather than wait for the next cycle.
    pub(super) fn for_elapses_at(&self) -> Option<jiff::Timestamp> {
        self.for_elapses_at
    }

    /// Replaces a stored state by `update`'s result, if it has one: for the
    /// engine's corrections after a cycle (the onset of a new pending).
    /// Returns whether the state changed.
    pub(super) fn update(
        &mut self,
        device: DeviceId,
        timing: &Timing,
        update: impl FnOnce(&JobState) -> Option<JobState>,
    ) -> bool {
        let Ok(at) = self.stored.binary_search_by_key(&device, |(d, _)| *d) else { return false };
        let Some(new) = update(&self.stored[at].1) else { return false };
        if let Some(due) = new.for_elapses_at(timing) {
            self.for_elapses_at = Some(self.for_elapses_at.map_or(due, |d| d.min(due)));
        }
        self.stored[at].1 = new;
        true
    }

    /// Folds each pending run of true evaluations into its state's time
    /// held ([`JobState::at_stop`]), as the daemon stops, and returns the
    /// states that changed, to be journalled.
    pub(super) fn fold_runs(&mut self) -> Vec<(DeviceId, JobState)> {
        let mut folded = Vec::new();
        for (device, state) in &mut self.stored {
            if let Some(stopped) = state.at_stop() {
                *state = stopped;
                folded.push((*device, state.clone()));
            }
        }
        folded
    }

    /// How many known devices are in each phase, in the order of [`PHASES`].
    pub(super) fn phases(&self) -> [u64; 4] {
        self.phases
    }

    /// Every device the states refer to (a device may come twice).
    pub(super) fn devices(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.present.iter().copied().chain(self.stored.iter().map(|(device, _)| *device))
    }

    /// Gives every device its new id after the device table was compacted
    /// (which keeps the ids' order).
    pub(super) fn renumber(&mut self, new: impl Fn(DeviceId) -> DeviceId) {
        self.present.iter_mut().for_each(|device| *device = new(*device));
        self.stored.iter_mut().for_each(|(device, _)| *device = new(*device));
    }

    /// Counts the known devices in each phase (after loading from the
    /// journal; cycles keep the counts as they go).
    fn count_phases(&mut self) {
        let mut implied = self.present.len() as u64;
        let mut stored = self.stored.iter().peekable();
        for device in &self.present {
            while stored.next_if(|(d, _)| d < device).is_some() {}
            if stored.peek().is_some_and(|(d, _)| d == device) {
                implied -= 1;
            }
        }
        self.phases = [implied, 0, 0, 0];
        for (_, state) in &self.stored {
            self.phases[phase_slot(state.phase.name())] += 1;
        }
    }
}

/// What a cycle has to log or do about one device of a job, kept until the
/// job's devices are all evaluated and then handled in device order.
pub(super) struct DeviceEvent {
    pub(super) device: DeviceId,
    /// Whether the device is in this cycle's answers.
    pub(super) present: bool,
    /// The phase held because the verdict is unknown, unless inactive.
    pub(super) unknown_in: Option<PhaseName>,
    pub(super) transitions: Vec<Transition>,
    /// The action due, the state after it and the state before.
    pub(super) action: Option<(state::ActionDue, JobState, JobState)>,
    /// The action a silence holds back instead, if one does.
    pub(super) silenced: Option<HeldBySilence>,
    /// The action the job's mass outage holds back instead, if it does:
    /// (episode, action number in it).
    pub(super) outage_held: Option<(u64, u32)>,
    /// The verification of an earlier action that ended.
    pub(super) concluded: Option<state::Concluded>,
    /// Why an action that would be due waits (cooldown, schedule window).
    pub(super) held: Option<ActionHeld>,
}

impl DeviceEvent {
    /// Whether all the event says is that an action waits for its cooldown
    /// or window: of use to the replay's timeline, nothing for a live cycle
    /// to log or do.
    pub(super) fn only_held(&self) -> bool {
        self.unknown_in.is_none()
            && self.transitions.is_empty()
            && self.action.is_none()
            && self.silenced.is_none()
            && self.concluded.is_none()
    }
}

/// An action a silence holds back, found in a cycle, to be logged and
/// journalled (once) by the engine.
#[derive(Debug, Clone)]
pub(super) struct HeldBySilence {
    /// The silence and its end.
    pub(super) hold: SilenceHold,
    /// The firing episode.
    pub(super) episode: u64,
    /// The action's number in the episode.
    pub(super) attempt: u32,
}

/// The limits of the state machine that `job` states.
pub(crate) fn timing(job: &Job) -> Timing {
    Timing { for_: job.hold_for, cooldown: job.cooldown, repeat: job.repeat, verify: job.verify }
}

/// Whether `job`'s schedule window allows actions at `now` (always, without
/// a schedule): the state machine's [`state::Evaluation::in_window`].
pub(crate) fn in_window(job: &Job, now: jiff::Timestamp) -> bool {
    job.schedule.as_ref().is_none_or(|s| s.allows(now))
}

/// Advances each (job, device) the engine knows by one evaluation: every
/// device in this cycle's answers with its verdict, and every other device
/// `states` holds with the verdict for absent devices. A device that left
/// the answers and never did anything is forgotten. Returns how many devices
/// were evaluated and how many of their verdicts were unknown; `changed` is
/// told each device whose state changed as the journal keeps it
/// ([`JobState::saves_as`]: not a pending run merely going on), `events`
/// gets what must be logged or done. `silence` says which silence, if any, holds a device's actions
/// back; it is asked only about a device whose action would be due (or is
/// held by the job's mass outage, which a silence comes before).
/// `mass_outage` is since when the job is in a mass outage, if it is.
#[allow(clippy::too_many_arguments, reason = "one call site, each argument a distinct role")]
pub(super) fn advance_job(
    job: &Job,
    evaluation: &JobEvaluation<'_>,
    now: jiff::Timestamp,
    states: &mut JobStates,
    default: &JobState,
    events: &mut Vec<DeviceEvent>,
    mut changed: impl FnMut(DeviceId),
    silence: impl Fn(DeviceId) -> Option<SilenceHold>,
    mass_outage: Option<jiff::Timestamp>,
) -> (usize, u64) {
    let timing = timing(job);
    let in_window = in_window(job, now);
    let answered = &evaluation.devices;
    let was_present = std::mem::replace(&mut states.present, Vec::with_capacity(answered.len()));
    // Sized for as many stored states as last cycle (most cycles, the same
    // number): grown by doubling from nothing, the list would be
    // reallocated many times and left with up to twice the room it needs.
    let stored = Vec::with_capacity(states.stored.len());
    let mut was_stored = std::mem::replace(&mut states.stored, stored);
    let (mut a, mut p, mut s) = (0, 0, 0);
    let (mut evaluated, mut unknown) = (0, 0);
    states.phases = [0; 4];
    states.evaluated_at = Some(now);
    states.for_elapses_at = None;
    loop {
        // The next device of the three lists, each in id order.
        let mut next = answered.get(a).map(|(device, _)| *device);
        if let Some(&device) = was_present.get(p) {
            next = Some(next.map_or(device, |n| n.min(device)));
        }
        if let Some(&(device, _)) = was_stored.get(s) {
            next = Some(next.map_or(device, |n| n.min(device)));
        }
        let Some(device) = next else { break };
        let current = answered.get(a).filter(|(d, _)| *d == device).map(|(_, quick)| *quick);
        a += usize::from(current.is_some());
        p += usize::from(was_present.get(p) == Some(&device));
        let previous = match was_stored.get_mut(s) {
            Some((d, state)) if *d == device => {
                s += 1;
                Some(std::mem::take(state))
            }
            _ => None,
        };
        let verdict = current.unwrap_or(evaluation.absent);
        evaluated += 1;
        if previous.is_none() && verdict.verdict != Verdict::True {
            // Most devices, most cycles: nothing ever happened to this one,
            // and only a true verdict changes that (an inactive state holds
            // on false and on unknown), so the state machine has nothing to
            // say. A device that left the answers is forgotten.
            unknown += u64::from(verdict.verdict == Verdict::Unknown);
            if current.is_some() {
                states.present.push(device);
                states.phases[phase_slot(PhaseName::Inactive)] += 1;
            }
            continue;
        }
        let previous = previous.as_ref().unwrap_or(default);
        let mut inputs = state::Evaluation {
            now,
            verdict: verdict.verdict,
            value: evaluation.first_value(device, &verdict),
            in_window,
            limit_reached: false,
            silence: None,
            mass_outage,
        };
        let mut step = previous.advance(&timing, &inputs);
        if step.action.is_some() || matches!(step.held, Some(ActionHeld::MassOutage { .. })) {
            // Rare (an action due), so only now is the device matched
            // against the silences, and the pure step taken again with it.
            inputs.silence = silence(device);
            if inputs.silence.is_some() {
                step = previous.advance(&timing, &inputs);
            }
        }
        let silenced = match (step.held, &step.state.phase) {
            (Some(ActionHeld::Silenced(hold)), Phase::Firing { episode, actions_taken, .. }) => {
                Some(HeldBySilence { hold, episode: *episode, attempt: actions_taken + 1 })
            }
            _ => None,
        };
        let outage_held = match (step.held, &step.state.phase) {
            (Some(ActionHeld::MassOutage { .. }), Phase::Firing { episode, actions_taken, .. }) => {
                Some((*episode, actions_taken + 1))
            }
            _ => None,
        };
        let mut unknown_in = None;
        if verdict.verdict == Verdict::Unknown {
            unknown += 1;
            unknown_in = Some(previous.phase.name()).filter(|&p| p != PhaseName::Inactive);
        }
        // Saved only when its journalled form changed: a pending state
        // whose run goes on is not rewritten because time passed.
        if !step.state.saves_as(previous) {
            changed(device);
        }
        if unknown_in.is_some()
            || !step.transitions.is_empty()
            || step.action.is_some()
            || silenced.is_some()
            || outage_held.is_some()
            || step.concluded.is_some()
            || step.held.is_some()
        {
            events.push(DeviceEvent {
                device,
                present: current.is_some(),
                unknown_in,
                transitions: step.transitions,
                action: step.action.map(|due| (due, step.state.clone(), previous.clone())),
                silenced,
                outage_held,
                concluded: step.concluded,
                held: step.held,
            });
        }
        if let Some(due) = step.state.for_elapses_at(&timing) {
            states.for_elapses_at = Some(states.for_elapses_at.map_or(due, |d| d.min(due)));
        }
        let phase = step.state.phase.name();
        if current.is_some() {
            states.present.push(device);
            states.phases[phase_slot(phase)] += 1;
            if step.state != *default {
                states.stored.push((device, step.state));
            }
        } else if phase != PhaseName::Inactive || step.state.last_action_at.is_some() {
            states.phases[phase_slot(phase)] += 1;
            states.stored.push((device, step.state));
        }
    }
    (evaluated, unknown)
}
