//! What a person should hear about, as the engine finds it: an action that
//! did not help, a job that gave up on a device, a job in a mass outage.
//!
//! This is the seam escalations hook to: the engine produces an
//! [`Escalation`] at the one place each of these is decided (and journalled,
//! once), and [`Escalation::raise`] is where it goes. Today it is a WARN
//! line; an SMS to people or a webhook is a new arm there, and its event
//! carries what such a message needs (job, device, episode, the execution
//! row).

use std::fmt;
use std::time::Duration;

use crate::journal::ExecutionId;

/// Something a person should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Escalation {
    /// A remediation did not recover the device: the condition was still
    /// seen true when its `verify.within` window ended.
    NotRecovered {
        /// The job.
        job: String,
        /// The device, as the journal names it, with its name if known.
        device: String,
        /// The episode of the action.
        episode: u64,
        /// The action's number within the episode.
        attempt: u32,
        /// The action's execution row, when the journal has it.
        execution: Option<ExecutionId>,
        /// The window the action had.
        window: Duration,
    },
    /// The job's `limit` was reached: it acts no more on the device in this
    /// episode.
    GaveUp {
        /// The job.
        job: String,
        /// The device, as the journal names it, with its name if known.
        device: String,
        /// The episode given up.
        episode: u64,
        /// The `gave_up` row, when the journal has it (not in a dry run).
        execution: Option<ExecutionId>,
        /// Which limit, in words.
        reason: String,
    },
    /// Many of the job's devices went bad at once (the site's uplink or the
    /// AddReality platform is down, most likely): the job holds its socket
    /// commands until the share falls below its threshold. Raised once per
    /// outage, restarts included.
    MassOutage {
        /// The job.
        job: String,
        /// Devices bad (condition true) when it began.
        bad: u64,
        /// Devices with a known verdict then.
        known: u64,
        /// When it began.
        since: jiff::Timestamp,
    },
}

impl fmt::Display for Escalation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |execution: &Option<ExecutionId>| {
            execution.map(|id| format!(" (execution {id})")).unwrap_or_default()
        };
        match self {
            Escalation::NotRecovered { job, device, episode, attempt, execution, window } => {
                write!(
                    f,
                    "job {job:?}: device {device}: not recovered: still bad {} after action {attempt} of episode {episode}{}",
                    humantime::format_duration(*window),
                    row(execution)
                )
            }
            Escalation::GaveUp { job, device, episode, execution, reason } => write!(
                f,
                "job {job:?}: device {device}: gave up: {reason}; no more actions in episode {episode}{}",
                row(execution)
            ),
            Escalation::MassOutage { job, bad, known, since } => write!(
                f,
                "job {job:?}: mass outage since {since}: {bad} of {known} devices bad at once; no socket commands until fewer are"
            ),
        }
    }
}

impl Escalation {
    /// Tells whoever must hear it. Today: a WARN line.
    pub(crate) fn raise(&self) {
        tracing::warn!("{self}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escalations_read_as_log_lines() {
        let not_recovered = Escalation::NotRecovered {
            job: "offline".into(),
            device: "{device_id=\"1\"}".into(),
            episode: 2,
            attempt: 1,
            execution: Some(ExecutionId(7)),
            window: Duration::from_secs(600),
        };
        assert_eq!(
            not_recovered.to_string(),
            "job \"offline\": device {device_id=\"1\"}: not recovered: still bad 10m after action 1 of episode 2 (execution #7)"
        );
        let gave_up = Escalation::GaveUp {
            job: "offline".into(),
            device: "{device_id=\"1\"}".into(),
            episode: 4,
            execution: None,
            reason: "3 actions in 24h on this device".into(),
        };
        assert_eq!(
            gave_up.to_string(),
            "job \"offline\": device {device_id=\"1\"}: gave up: 3 actions in 24h on this device; no more actions in episode 4"
        );
        let outage = Escalation::MassOutage {
            job: "offline".into(),
            bad: 30,
            known: 40,
            since: "2026-11-28T09:00:00Z".parse().unwrap(),
        };
        assert_eq!(
            outage.to_string(),
            "job \"offline\": mass outage since 2026-11-28T09:00:00Z: 30 of 40 devices bad at once; no socket commands until fewer are"
        );
    }
}
