//! What jobctl did, as the demo tells it: each (job, device)'s phase as
//! the engine holds it after a cycle, and each message and result as the
//! journal records them.
//!
//! The demo reads the engine and the journal the way `jobctl status` and
//! `history` would, and changes nothing: the journal is opened read-only
//! (beside the engine's writer, as those commands are) and read on the
//! blocking pool.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::Timestamp;

use super::view::JobPhases;
use crate::engine::Engine;
use crate::journal::{
    ActionResult, Execution, ExecutionStatus, HistoryFilter, Journal, JournalError,
};
use crate::rules::state::PhaseName;

/// A device the demo watches: its key's text form and how lines name it.
#[derive(Debug, Clone)]
pub(crate) struct Watched {
    /// `{platform_id="1", device_id="30815"}`.
    pub(crate) key: String,
    /// `30815 "Arzamas_Lesnaia_3"`.
    pub(crate) label: String,
}

/// What the demo remembers of the engine and the journal, to tell what
/// changed.
pub(crate) struct Watch {
    journal: Arc<Mutex<Journal>>,
    devices: Vec<Watched>,
    labels: HashMap<String, String>,
    /// (job, device key) → the phase last seen, for those not inactive.
    phases: HashMap<(String, String), PhaseName>,
    /// Execution → what the journal said of it last.
    executions: HashMap<i64, Seen>,
    /// Messages that left, with when.
    sent: Vec<Timestamp>,
}

/// What the demo last saw of one execution.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    status: ExecutionStatus,
    result: Option<ActionResult>,
    /// Each device's result (one for a message for one device).
    results: Vec<Option<ActionResult>>,
    /// For an escalation, the execution it is about.
    escalates: Option<i64>,
}

impl Seen {
    fn of(execution: &Execution) -> Seen {
        let results = if execution.device_results.is_empty() {
            vec![execution.result]
        } else {
            execution.device_results.iter().map(|d| d.result).collect()
        };
        let escalates = match (&execution.event, execution.about) {
            (Some(event), Some(about)) if event != "action" => Some(about.0),
            _ => None,
        };
        Seen { status: execution.status, result: execution.result, results, escalates }
    }
}

/// The journal's counts for the summary and the view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct JournalCounts {
    /// Messages sent.
    pub(crate) sent: usize,
    /// Actions verified `recovered`.
    pub(crate) recovered: usize,
    /// Actions `not_recovered` or `gave_up`.
    pub(crate) not_recovered: usize,
    /// Distinct actions escalated.
    pub(crate) escalated: usize,
}

impl Watch {
    /// Watches `devices` in the journal at `path` (which the engine has
    /// created).
    pub(crate) fn open(path: &Path, devices: Vec<Watched>) -> Result<Watch, JournalError> {
        let journal = Journal::open_read_only(path)?;
        let labels = devices.iter().map(|d| (d.key.clone(), d.label.clone())).collect();
        Ok(Watch {
            journal: Arc::new(Mutex::new(journal)),
            devices,
            labels,
            phases: HashMap::new(),
            executions: HashMap::new(),
            sent: Vec::new(),
        })
    }

    /// The phases of the engine's enabled jobs that changed since the last
    /// call, as lines, and each job's devices by phase.
    pub(crate) fn engine(&mut self, engine: &Engine) -> (Vec<String>, Vec<JobPhases>) {
        let mut lines = Vec::new();
        let mut jobs = Vec::new();
        for job in engine.rules().jobs.iter().filter(|job| job.enabled) {
            let mut phases = JobPhases { job: job.name.clone(), ..JobPhases::default() };
            for device in &self.devices {
                let state = engine.state(&job.name, &device.key);
                let phase = state.map_or(PhaseName::Inactive, |s| s.phase.name());
                match phase {
                    PhaseName::Pending => phases.pending += 1,
                    PhaseName::Firing => phases.firing += 1,
                    PhaseName::Inactive | PhaseName::Resolved => {}
                }
                phases.verifying += usize::from(state.is_some_and(|s| s.verifying.is_some()));
                let pair = (job.name.clone(), device.key.clone());
                let before = self.phases.get(&pair).copied().unwrap_or(PhaseName::Inactive);
                if phase != before {
                    if let Some(line) = phase_line(before, phase, job.hold_for) {
                        lines.push(format!("{}: {} {line}", job.name, device.label));
                    }
                }
                if matches!(phase, PhaseName::Inactive) {
                    self.phases.remove(&pair);
                } else {
                    self.phases.insert(pair, phase);
                }
            }
            jobs.push(phases);
        }
        (lines, jobs)
    }

    /// Messages and results journalled since `since` that are new or
    /// changed, as lines; [`Watch::counts`] then counts them.
    pub(crate) async fn journal(&mut self, since: Timestamp) -> Result<Vec<String>, JournalError> {
        let executions = self.read(Some(since)).await?;
        let mut lines = Vec::new();
        // Oldest first, as they happened.
        for execution in executions.iter().rev() {
            let seen = Seen::of(execution);
            let before = self.executions.insert(execution.id.0, seen.clone());
            if before.as_ref() == Some(&seen) {
                continue;
            }
            if before.as_ref().map(|b| b.status) != Some(seen.status) {
                lines.extend(self.message_line(execution));
            }
            if before.and_then(|b| b.result) != seen.result {
                lines.extend(self.result_line(execution));
            }
        }
        Ok(lines)
    }

    /// The counts over every execution seen so far.
    pub(crate) fn counts(&self) -> JournalCounts {
        let mut counts = JournalCounts::default();
        let mut escalated = BTreeSet::new();
        for seen in self.executions.values() {
            counts.sent += usize::from(seen.status == ExecutionStatus::Sent);
            escalated.extend(seen.escalates);
            for result in &seen.results {
                match result {
                    Some(ActionResult::Recovered) => counts.recovered += 1,
                    Some(ActionResult::NotRecovered | ActionResult::GaveUp) => {
                        counts.not_recovered += 1;
                    }
                    _ => {}
                }
            }
        }
        counts.escalated = escalated.len();
        counts
    }

    /// Messages sent within `window` before `now`, as far as seen.
    pub(crate) fn sent_within(&self, now: Timestamp, window: Duration) -> usize {
        let since = now.checked_sub(window).unwrap_or(Timestamp::MIN);
        self.sent.iter().filter(|&&at| at >= since).count()
    }

    async fn read(&self, since: Option<Timestamp>) -> Result<Vec<Execution>, JournalError> {
        let journal = self.journal.clone();
        let filter = HistoryFilter { since, ..HistoryFilter::default() };
        tokio::task::spawn_blocking(move || {
            journal.lock().unwrap_or_else(PoisonError::into_inner).history(&filter)
        })
        .await
        .expect("reading the journal does not panic")
    }

    fn device_label(&self, execution: &Execution) -> String {
        let keys = if execution.devices.is_empty() {
            execution.device_key.iter().cloned().collect()
        } else {
            execution.devices.clone()
        };
        let labels: Vec<&str> = keys
            .iter()
            .map(|key| self.labels.get(key).map_or(key.as_str(), String::as_str))
            .collect();
        labels.join(", ")
    }

    fn message_line(&mut self, execution: &Execution) -> Option<String> {
        // A person's number has no socket (`-` in the journal).
        let to = match execution.socket.as_str() {
            "-" => execution.phone.clone(),
            socket => format!("{socket} ({})", execution.phone),
        };
        let what = match &execution.event {
            Some(event) => format!("escalation ({event})"),
            None => format!(
                "{} for {}",
                execution.job.as_deref().unwrap_or("manual"),
                self.device_label(execution)
            ),
        };
        match execution.status {
            ExecutionStatus::Sent => {
                self.sent.push(execution.updated_at);
                Some(format!("SMS sent: {what}: {:?} to {to}", execution.text))
            }
            ExecutionStatus::Suppressed => Some(format!(
                "SMS held: {what}: {}",
                execution.detail.as_deref().unwrap_or("suppressed")
            )),
            ExecutionStatus::Failed | ExecutionStatus::Uncertain => Some(format!(
                "SMS {}: {what}: {}",
                execution.status,
                execution.detail.as_deref().unwrap_or("")
            )),
            _ => None,
        }
    }

    fn result_line(&self, execution: &Execution) -> Option<String> {
        let result = execution.result?;
        let job = execution.job.as_deref().unwrap_or("manual");
        let devices = self.device_label(execution);
        Some(match (result, execution.recovered_after) {
            (ActionResult::Recovered, Some(after)) => {
                format!("{job}: {devices} recovered {:.0}s after the SMS", after.as_secs_f64())
            }
            (result, _) => format!("{job}: {devices} {result}"),
        })
    }
}

/// The line for a change of phase, if it is worth one.
fn phase_line(before: PhaseName, after: PhaseName, for_duration: Duration) -> Option<String> {
    use PhaseName::{Firing, Inactive, Pending, Resolved};
    match (before, after) {
        (_, Pending) => Some(format!(
            "pending (condition true; fires after {})",
            humantime::format_duration(for_duration)
        )),
        (_, Firing) => Some("firing: action due".to_string()),
        (Pending, Inactive | Resolved) => {
            Some("no longer bad before `for` elapsed: nothing sent".to_string())
        }
        (Firing, Inactive | Resolved) => Some("resolved".to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_of_phase_worth_telling_has_its_line() {
        use PhaseName::{Firing, Inactive, Pending, Resolved};
        let for_ = Duration::from_secs(10);
        assert_eq!(
            phase_line(Inactive, Pending, for_).as_deref(),
            Some("pending (condition true; fires after 10s)")
        );
        assert_eq!(phase_line(Pending, Firing, for_).as_deref(), Some("firing: action due"));
        assert_eq!(
            phase_line(Pending, Inactive, for_).as_deref(),
            Some("no longer bad before `for` elapsed: nothing sent")
        );
        assert_eq!(phase_line(Firing, Resolved, for_).as_deref(), Some("resolved"));
        assert_eq!(phase_line(Resolved, Inactive, for_), None);
    }
}
