//! The closed loop: whether an action helped (`verify`) and when a job stops
//! acting on a device (`limit`), between the cycle's evaluations and its
//! actions.
//!
//! The state machine ([`crate::rules::state`]) decides both, purely; this
//! is where the engine gives it what only the journal knows and writes down
//! what it decided:
//!
//! - **Limits** are counted from the journal (the actions of the job on the
//!   device, and to its socket, within `limit.per`; the devices of one
//!   socket due in the same cycle share one message, which is one command
//!   to the socket), so restarts and reloads never reset them. An
//!   action due past its limit is taken back: its state is advanced again
//!   from the one before, told the limit is reached, which gives the episode
//!   up; a `gave_up` row (not sent) is journalled with that state in one
//!   transaction, so it is given up once.
//! - **Results** of the verifications that ended are written on the
//!   actions' rows, each once ([`crate::journal::Journal::record_result`]
//!   refuses a second), before the cycle's actions are journalled: a
//!   restart that replays the cycle finds the result written and records
//!   nothing twice. A result the journal could not take is retried with the
//!   next cycle.
//!
//! What a person should hear about becomes an [`Escalation`], sent with
//! the cycle's messages once its actions are journalled; every result
//! is counted in `jobctl_executions_total{job,outcome}`.

use std::collections::HashSet;

use super::escalation::{EscalatedDevice, Escalation};
use super::outbox::blocking;
use super::states::timing;
use super::{CycleReport, Due, Engine};
use crate::error::with_causes;
use crate::journal::{
    ActionRef, ActionResult, Channel, EncodedState, ExecutionId, JournalError, Origin, PlannedSend,
};
use crate::rules::job::Limit;
use crate::rules::state::{Concluded, Evaluation, JobState, Recovery, Verdict};
use crate::rules::{Recipient, RuleSet};

/// A verification that ended, on its way to the journal.
pub(super) struct Conclusion {
    /// The job's name.
    pub(super) job: String,
    /// The device's text form (its journal key).
    pub(super) device: String,
    /// The device in words, for logs.
    pub(super) who: String,
    /// The device's labels, for the escalation's messages.
    pub(super) labels: std::collections::BTreeMap<String, String>,
    /// What the state machine concluded.
    pub(super) concluded: Concluded,
}

impl Conclusion {
    fn action(&self) -> ActionRef {
        ActionRef {
            job: self.job.clone(),
            device_key: self.device.clone(),
            episode: self.concluded.episode,
            attempt: self.concluded.attempt,
        }
    }

    fn result(&self) -> ActionResult {
        match self.concluded.recovery {
            Recovery::Recovered { .. } => ActionResult::Recovered,
            Recovery::NotRecovered => ActionResult::NotRecovered,
            Recovery::Unverified => ActionResult::Unverified,
        }
    }

    fn recovered_after(&self) -> Option<std::time::Duration> {
        match self.concluded.recovery {
            Recovery::Recovered { after } => Some(after),
            Recovery::NotRecovered | Recovery::Unverified => None,
        }
    }
}

/// What writing a result came to.
enum Recorded {
    /// Written now, on this row.
    On(ExecutionId),
    /// Written before (a cycle replayed after a restart), or the action has
    /// no row to write it on.
    Before,
    /// Not written: a dry run writes nothing a live run reads.
    InDryRun,
}

/// A due action to check against its job's limit.
struct LimitCheck {
    /// Its place in the cycle's dispatch.
    at: usize,
    job: String,
    device: String,
    socket: Option<String>,
    phone: String,
    text: String,
    since: jiff::Timestamp,
    limit: Limit,
}

/// A due action its job's limit refuses.
struct Refusal {
    at: usize,
    planned: PlannedSend,
    reason: String,
    state: JobState,
    episode: u64,
}

impl Engine {
    /// Takes back the due actions past their job's limit (giving their
    /// episodes up) and records the results of the verifications that
    /// ended, before `dispatch` is journalled and sent.
    pub(super) async fn close_loop(
        &mut self,
        rules: &RuleSet,
        dispatch: &mut Vec<Due>,
        concluded: Vec<Conclusion>,
        now: jiff::Timestamp,
        report: &mut CycleReport,
    ) {
        let mut results = std::mem::take(&mut self.unrecorded_results);
        results.extend(concluded);
        let refusals = self.refusals(rules, dispatch, now).await;
        if refusals.is_empty() && results.is_empty() {
            return;
        }
        let written: Result<_, JournalError> = if self.dry_run {
            // A dry run writes nothing a live run reads: results and refusals
            // are logged and counted only.
            Ok((
                refusals.iter().map(|_| Ok(None)).collect(),
                results.iter().map(|_| Ok(Recorded::InDryRun)).collect(),
            ))
        } else {
            let planned: Vec<(PlannedSend, String)> =
                refusals.iter().map(|r| (r.planned.clone(), r.reason.clone())).collect();
            let actions: Vec<_> =
                results.iter().map(|c| (c.action(), c.result(), c.recovered_after())).collect();
            blocking(&self.journal, move |journal| {
                journal.batch("recording action results", |journal| {
                    let gave_up: Vec<Result<Option<ExecutionId>, JournalError>> = planned
                        .iter()
                        .map(|(planned, reason)| journal.record_gave_up(planned, reason).map(Some))
                        .collect();
                    let recorded: Vec<Result<Recorded, JournalError>> = actions
                        .iter()
                        .map(|(action, result, after)| {
                            let id = journal.record_result(action, *result, *after)?;
                            Ok(id.map_or(Recorded::Before, Recorded::On))
                        })
                        .collect();
                    (gave_up, recorded)
                })
            })
            .await
        };
        let (gave_up, recorded) = match written {
            Ok(written) => written,
            Err(err) => {
                tracing::error!(
                    "cannot journal {} action results: {}; refused actions stay due, results are recorded with the next cycle",
                    refusals.len() + results.len(),
                    with_causes(&err)
                );
                let undone = || JournalError::BatchUndone { path: Default::default() };
                (
                    refusals.iter().map(|_| Err(undone())).collect(),
                    results.iter().map(|_| Err(undone())).collect(),
                )
            }
        };

        let taken_back: HashSet<usize> = refusals.iter().map(|r| r.at).collect();
        for (refusal, written) in refusals.into_iter().zip(gave_up) {
            let due = &dispatch[refusal.at];
            let job = &rules.jobs[due.job].name;
            let id = self.devices.find(&due.device);
            let states = self.states.get_mut(job);
            let (Some(states), Some(id)) = (states, id) else { continue };
            let execution = match written {
                Ok(execution) => execution,
                Err(err) => {
                    if !matches!(err, JournalError::BatchUndone { .. }) {
                        tracing::error!(
                            "{}; the action stays due for the next cycle",
                            with_causes(&err)
                        );
                    }
                    // Nothing was journalled: as if the action were not due
                    // yet, so the next cycle decides it again.
                    states.restore(id, due.previous.clone());
                    continue;
                }
            };
            states.restore(id, refusal.state);
            report.gave_up += 1;
            self.metrics.action_result(job, ActionResult::GaveUp.as_str());
            self.escalations.push(Escalation::GaveUp {
                job: job.clone(),
                device: EscalatedDevice {
                    key: due.device.clone(),
                    who: super::describe(&due.device, &due.verdict),
                    labels: due.verdict.labels.clone(),
                },
                episode: refusal.episode,
                execution,
                value: due.due.trigger_value,
                reason: refusal.reason,
            });
        }
        let mut at = 0;
        dispatch.retain(|_| {
            at += 1;
            !taken_back.contains(&(at - 1))
        });

        for (conclusion, written) in results.into_iter().zip(recorded) {
            match written {
                Ok(Recorded::On(id)) => self.announce(&conclusion, Some(id)),
                Ok(Recorded::InDryRun) => self.announce(&conclusion, None),
                // Recorded before (a cycle replayed after a restart), or the
                // action never reached the journal: nothing to add.
                Ok(Recorded::Before) => {}
                Err(err) => {
                    if !matches!(err, JournalError::BatchUndone { .. }) {
                        tracing::error!(
                            "job {:?}: device {}: cannot record the result of action {} of episode {}: {}; retried with the next cycle",
                            conclusion.job,
                            conclusion.who,
                            conclusion.concluded.attempt,
                            conclusion.concluded.episode,
                            with_causes(&err)
                        );
                    }
                    self.unrecorded_results.push(conclusion);
                }
            }
        }
    }

    /// Logs, counts and escalates a result just recorded on `execution`.
    fn announce(&mut self, conclusion: &Conclusion, execution: Option<ExecutionId>) {
        let Conclusion { job, device, who, labels, concluded } = conclusion;
        self.metrics.action_result(job, conclusion.result().as_str());
        let row = execution.map(|id| format!(" (execution {id})")).unwrap_or_default();
        let action = format!("action {} of episode {}{row}", concluded.attempt, concluded.episode);
        match concluded.recovery {
            Recovery::Recovered { after } => {
                let after = std::time::Duration::from_secs(after.as_secs());
                tracing::info!(
                    "job {job:?}: device {who}: recovered {} after {action}",
                    humantime::format_duration(after)
                );
            }
            Recovery::Unverified => tracing::info!(
                "job {job:?}: device {who}: unverified: its condition was unknown throughout the {} after {action}",
                humantime::format_duration(concluded.window)
            ),
            Recovery::NotRecovered => self.escalations.push(Escalation::NotRecovered {
                job: job.clone(),
                device: EscalatedDevice {
                    key: device.clone(),
                    who: who.clone(),
                    labels: labels.clone(),
                },
                episode: concluded.episode,
                attempt: concluded.attempt,
                execution,
                window: concluded.window,
            }),
        }
    }

    /// The due actions of `dispatch` that their job's limit refuses, each
    /// with the state that gives its episode up and the row to journal.
    async fn refusals(
        &self,
        rules: &RuleSet,
        dispatch: &[Due],
        now: jiff::Timestamp,
    ) -> Vec<Refusal> {
        let mut checks = Vec::new();
        for (at, due) in dispatch.iter().enumerate() {
            let job = &rules.jobs[due.job];
            let Some(limit) = job.limit else { continue };
            // An action that cannot become a message is reported when it is
            // acted upon; there is nothing to limit.
            let Some(key) = rules.device_key.key_of(&due.verdict.labels) else { continue };
            let Ok(outgoing) = rules.outgoing(job, &key, &due.verdict.labels) else { continue };
            // A job's action is always an SMS; a webhook is never limited.
            let Recipient::Sms { socket, phone } = &outgoing.to else { continue };
            checks.push(LimitCheck {
                at,
                job: job.name.clone(),
                device: due.device.clone(),
                socket: socket.clone(),
                phone: phone.as_str().to_string(),
                text: outgoing.text.clone(),
                since: limit_since(limit, now),
                limit,
            });
        }
        if checks.is_empty() {
            return Vec::new();
        }
        let (counted, checks) = blocking(&self.journal, move |journal| {
            let counted: Result<Vec<(u32, u32)>, JournalError> = checks
                .iter()
                .map(|c| {
                    journal.count_actions_since(&c.job, &c.device, c.socket.as_deref(), c.since)
                })
                .collect();
            (counted, checks)
        })
        .await;
        let counted = match counted {
            Ok(counted) => counted,
            Err(err) => {
                // The actions go on to the journal, which will most likely
                // refuse them too; then they stay due.
                tracing::error!(
                    "cannot count actions against the jobs' limits: {}",
                    with_causes(&err)
                );
                return Vec::new();
            }
        };
        // The (job, socket) pairs an action was allowed for earlier in this
        // cycle: the outbox gives a socket one message for all of a job's
        // devices due together, so a later device of the same socket rides
        // along on it and is no further command to the socket.
        let mut allowed: HashSet<(String, String)> = HashSet::new();
        let mut refusals = Vec::new();
        for (check, (on_device, to_socket)) in checks.into_iter().zip(counted) {
            let socket_key = check.socket.clone().map(|s| (check.job.clone(), s));
            let rides_along = socket_key.as_ref().is_some_and(|k| allowed.contains(k));
            let counted = LimitCount { on_device, to_socket, rides_along };
            let Some(reason) = limit_refusal(check.limit, counted, check.socket.as_deref()) else {
                if let Some(key) = socket_key {
                    allowed.insert(key);
                }
                continue;
            };
            let due = &dispatch[check.at];
            let step = give_up(&rules.jobs[due.job], &due.previous, &due.due, now);
            let planned = PlannedSend {
                channel: Channel::Sms,
                origin: Origin::Rule {
                    job: check.job,
                    device_key: check.device,
                    episode: due.due.episode,
                    attempt: due.due.attempt_in_episode,
                    trigger_value: due.due.trigger_value,
                    state_after: EncodedState::new(&step.state),
                    also_for: Vec::new(),
                },
                socket: check.socket.unwrap_or_else(|| "-".to_string()),
                phone: check.phone,
                text: check.text,
            };
            let episode = step.gave_up.unwrap_or(due.due.episode);
            refusals.push(Refusal { at: check.at, planned, reason, state: step.state, episode });
        }
        refusals
    }
}

/// What a due action's job has done within its `limit.per`, as
/// [`limit_refusal`] weighs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LimitCount {
    /// Actions of the job on the device.
    pub(crate) on_device: u32,
    /// Commands of the job to the device's socket.
    pub(crate) to_socket: u32,
    /// Whether the action rides along on a message to its socket already
    /// allowed in the same cycle (so it is no further command to the socket).
    pub(crate) rides_along: bool,
}

/// Why the job's `limit` refuses an action, given what was counted; `None`
/// when it allows it. The live engine counts from the journal, the replay
/// from what it simulated; both decide here.
pub(crate) fn limit_refusal(
    limit: crate::rules::job::Limit,
    counted: LimitCount,
    socket: Option<&str>,
) -> Option<String> {
    let per = humantime::format_duration(limit.per);
    let max = limit.actions;
    let LimitCount { on_device, to_socket, rides_along } = counted;
    if on_device >= max {
        Some(format!(
            "limit reached: {on_device} actions on this device in the last {per} (limit {max} per {per})"
        ))
    } else if let (Some(socket), true) = (socket, !rides_along && to_socket >= max) {
        Some(format!(
            "limit reached: {to_socket} actions to socket {socket} in the last {per} (limit {max} per {per})"
        ))
    } else {
        None
    }
}

/// The step that gives an episode up instead of taking the action `due`
/// that `previous` was advanced to: the same evaluation, told the limit is
/// reached.
pub(super) fn give_up(
    job: &crate::rules::Job,
    previous: &JobState,
    due: &crate::rules::state::ActionDue,
    now: jiff::Timestamp,
) -> crate::rules::state::Step {
    let step = previous.advance(
        &timing(job),
        &Evaluation {
            now,
            verdict: Verdict::True,
            value: due.trigger_value,
            in_window: true,
            limit_reached: true,
            // The action was due, so no silence or outage held it.
            silence: None,
            mass_outage: None,
        },
    );
    debug_assert!(step.action.is_none(), "a reached limit makes no action due");
    step
}

/// The start of a job's `limit.per` window ending at `now`.
pub(crate) fn limit_since(
    limit: crate::rules::job::Limit,
    now: jiff::Timestamp,
) -> jiff::Timestamp {
    now.checked_sub(jiff::SignedDuration::try_from(limit.per).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(jiff::Timestamp::MIN)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rules::job::Limit;

    const LIMIT: Limit = Limit { actions: 3, per: Duration::from_secs(24 * 3600) };

    fn refusal(
        on_device: u32,
        to_socket: u32,
        rides_along: bool,
        socket: Option<&str>,
    ) -> Option<String> {
        limit_refusal(LIMIT, LimitCount { on_device, to_socket, rides_along }, socket)
    }

    #[test]
    fn the_device_count_refuses_first_then_the_socket_count_unless_riding_along() {
        assert_eq!(refusal(2, 2, false, Some("hall")), None);
        assert_eq!(
            refusal(3, 5, false, Some("hall")).as_deref(),
            Some("limit reached: 3 actions on this device in the last 1day (limit 3 per 1day)")
        );
        assert_eq!(
            refusal(1, 3, false, Some("hall")).as_deref(),
            Some("limit reached: 3 actions to socket hall in the last 1day (limit 3 per 1day)")
        );
        assert_eq!(refusal(1, 3, true, Some("hall")), None, "no further command to the socket");
        assert_eq!(refusal(1, 3, false, None), None, "a message to a person has no socket");
    }

    #[test]
    fn the_window_starts_per_before_now() {
        let now: jiff::Timestamp = "2026-11-02T12:00:00Z".parse().unwrap();
        assert_eq!(limit_since(LIMIT, now), "2026-11-01T12:00:00Z".parse().unwrap());
    }
}
