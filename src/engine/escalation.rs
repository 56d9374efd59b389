//! What a person should hear about, as the engine finds it (an action that
//! did not help, a job that gave up on a device, a job in a mass outage),
//! and how it reaches them: the job's `escalate` targets (SMS to people,
//! webhooks), and the webhooks a job tells of each action it takes
//! (`webhooks_on_action`).
//!
//! The engine produces an [`Escalation`] at the one place each of these is
//! decided (and journalled, once); [`Engine::notify`] turns it into one
//! message per target, handed to the outbox like any other: journalled
//! before it leaves, retried while it certainly did not, `uncertain` when
//! it may have, never sent twice. An SMS to a person counts against the
//! `[budgets]`; a webhook does not.
//!
//! The escalation's messages are journalled in the same cycle as the result
//! that raised it, but in a transaction of their own: should jobctl die
//! between the two commits, that escalation is lost (never sent twice).
//!
//! A new kind of escalation is one more variant of [`Escalation`] and one
//! more arm in [`Escalation::notice`], which says what its messages carry;
//! the payload, the targets and the outbox stay as they are.
//!
//! # The webhook payload (version 1)
//!
//! ```json
//! {
//!   "version": 1,
//!   "event": "not_recovered",
//!   "job": "offline",
//!   "summary": "job \"offline\": device …: not recovered: …",
//!   "devices": [{ "key": "{platform_id=\"12\", device_id=\"30785\"}",
//!                 "labels": { "device_id": "30785", "name": "Lobby", … } }],
//!   "episode": 2,
//!   "attempt": 1,
//!   "execution_id": 7,
//!   "value": 0,
//!   "outcome": "not_recovered",
//!   "details": { "verify_within_seconds": 600 },
//!   "at": "2026-11-28T09:25:00Z"
//! }
//! ```
//!
//! The README documents each field; a field is only ever added within a
//! version, never renamed or removed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::json;

use super::outbox::Request;
use super::Engine;
use crate::error::with_causes;
use crate::journal::{ExecutionId, Origin};
use crate::rules::escalate::EscalationTarget;
use crate::rules::{Job, Outgoing, Recipient, RuleSet};

/// The version of the webhook payload this build sends.
pub(crate) const PAYLOAD_VERSION: u32 = 1;

/// The device an escalation is about: its journal key and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EscalatedDevice {
    /// The device's text form, as the journal keys it.
    pub(crate) key: String,
    /// The device, as logs name it (key and name).
    pub(crate) who: String,
    /// The labels of its series, for SMS templates and the payload.
    pub(crate) labels: BTreeMap<String, String>,
}

/// Something a person should hear about.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Escalation {
    /// A remediation did not recover the device: the condition was still
    /// seen true when its `verify.within` window ended.
    NotRecovered {
        /// The job.
        job: String,
        /// The device.
        device: EscalatedDevice,
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
        /// The device.
        device: EscalatedDevice,
        /// The episode given up.
        episode: u64,
        /// The `gave_up` row, when the journal has it (not in a dry run).
        execution: Option<ExecutionId>,
        /// The value that made the condition true.
        value: Option<f64>,
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
                    "job {job:?}: device {}: not recovered: still bad {} after action {attempt} of episode {episode}{}",
                    device.who,
                    humantime::format_duration(*window),
                    row(execution)
                )
            }
            Escalation::GaveUp { job, device, episode, execution, reason, .. } => write!(
                f,
                "job {job:?}: device {}: gave up: {reason}; no more actions in episode {episode}{}",
                device.who,
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
    /// What its messages carry.
    pub(super) fn notice(&self) -> Notice {
        match self {
            Escalation::NotRecovered { job, device, episode, attempt, execution, window } => {
                Notice {
                    event: "not_recovered",
                    job: job.clone(),
                    devices: vec![device.clone()],
                    episode: Some(*episode),
                    attempt: Some(*attempt),
                    about: *execution,
                    value: None,
                    summary: self.to_string(),
                    details: json!({ "verify_within_seconds": window.as_secs() }),
                }
            }
            Escalation::GaveUp { job, device, episode, execution, value, reason } => Notice {
                event: "gave_up",
                job: job.clone(),
                devices: vec![device.clone()],
                episode: Some(*episode),
                attempt: None,
                about: *execution,
                value: *value,
                summary: self.to_string(),
                details: json!({ "reason": reason }),
            },
            Escalation::MassOutage { job, bad, known, since } => Notice {
                event: "mass_outage",
                job: job.clone(),
                devices: Vec::new(),
                episode: None,
                attempt: None,
                about: None,
                value: None,
                summary: self.to_string(),
                details: json!({ "bad": bad, "known": known, "since": since.to_string() }),
            },
        }
    }
}

/// What a message about an event carries, whatever its channel.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Notice {
    /// The event (`not_recovered`, `gave_up`, `action`): the payload's
    /// `event` and `outcome`, and the journal row's `event`.
    pub(super) event: &'static str,
    /// The job.
    pub(super) job: String,
    /// The devices it is about.
    pub(super) devices: Vec<EscalatedDevice>,
    /// The episode, when the event is about one.
    pub(super) episode: Option<u64>,
    /// The action's number within it, when the event is about one.
    pub(super) attempt: Option<u32>,
    /// The execution the event is about.
    pub(super) about: Option<ExecutionId>,
    /// The value that made the condition true, when known.
    pub(super) value: Option<f64>,
    /// The event in words, as logged.
    pub(super) summary: String,
    /// What only this kind of event has.
    pub(super) details: serde_json::Value,
}

impl Notice {
    /// The webhook payload, `at` the moment the event was found.
    pub(super) fn payload(&self, at: jiff::Timestamp) -> String {
        let devices: Vec<serde_json::Value> =
            self.devices.iter().map(|d| json!({ "key": d.key, "labels": d.labels })).collect();
        json!({
            "version": PAYLOAD_VERSION,
            "event": self.event,
            "job": self.job,
            "summary": self.summary,
            "devices": devices,
            "episode": self.episode,
            "attempt": self.attempt,
            "execution_id": self.about.map(|id| id.0),
            "value": self.value.filter(|v| v.is_finite()),
            "outcome": self.event,
            "details": self.details,
            "at": at.to_string(),
        })
        .to_string()
    }

    /// An escalation SMS's text: its `{label}` placeholders filled from the
    /// first device's labels (control characters made spaces), and
    /// `{event}`, `{job}`, `{summary}` from the event.
    fn sms_text(&self, template: &crate::rules::template::Template) -> String {
        let labels = self.devices.first().map(|d| &d.labels);
        template.render(|field| match field {
            "event" => Some(self.event.to_string()),
            "job" => Some(self.job.clone()),
            "summary" => Some(self.summary.clone()),
            label => labels?
                .get(label)
                .map(|v| v.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()),
        })
    }

    /// The journal's record of why a message about it is sent.
    fn origin(&self) -> Origin {
        Origin::Notice {
            job: self.job.clone(),
            device_key: (self.devices.len() == 1).then(|| self.devices[0].key.clone()),
            event: self.event.to_string(),
            about: self.about,
            episode: self.episode,
            attempt: self.attempt,
        }
    }

    /// One message per target: an SMS to each person, the payload to each
    /// webhook (one the rules no longer have is logged and skipped).
    pub(super) fn requests(
        &self,
        rules: &RuleSet,
        targets: &[EscalationTarget],
        at: jiff::Timestamp,
    ) -> Vec<Request> {
        let by = format!("job {:?}: {}", self.job, self.event);
        let mut requests = Vec::new();
        let request = |to: Recipient, text: String| Request {
            origin: self.origin(),
            outgoing: Outgoing { to, text },
            by: by.clone(),
        };
        for target in targets {
            match target {
                EscalationTarget::Sms { text, to } => {
                    let text = self.sms_text(text);
                    for phone in to {
                        let to = Recipient::Sms { socket: None, phone: phone.clone() };
                        requests.push(request(to, text.clone()));
                    }
                }
                EscalationTarget::Webhook { name } => match rules.webhook(name) {
                    Some(hook) => {
                        let to = Recipient::Webhook { name: name.clone(), url: hook.shown_url() };
                        requests.push(request(to, self.payload(at)));
                    }
                    None => tracing::error!(
                        "{by}: webhook {name:?} is not in the rules; nothing sent to it"
                    ),
                },
            }
        }
        requests
    }
}

/// The notice of an action a job took, for its `webhooks_on_action`: one
/// message, for one device or for the devices of one socket that shared it.
#[allow(clippy::too_many_arguments, reason = "one call site, each a distinct fact")]
pub(super) fn action_notice(
    job: &Job,
    devices: Vec<EscalatedDevice>,
    episode: u64,
    attempt: u32,
    execution: ExecutionId,
    value: Option<f64>,
    to: &Recipient,
    text: &str,
) -> Notice {
    let socket = match to {
        Recipient::Sms { socket, .. } => socket.clone(),
        Recipient::Webhook { .. } => None,
    };
    let who: Vec<&str> = devices.iter().map(|d| d.who.as_str()).collect();
    let summary = format!(
        "job {:?}: device {}: action {attempt} of episode {episode}: {text:?} to {to} (execution {execution})",
        job.name,
        who.join(", device ")
    );
    Notice {
        event: "action",
        job: job.name.clone(),
        devices,
        episode: Some(episode),
        attempt: Some(attempt),
        about: Some(execution),
        value,
        summary,
        details: json!({ "socket": socket, "text": text, "status": "sending" }),
    }
}

impl Engine {
    /// Logs each escalation found this cycle and sends its messages to its
    /// job's `escalate` targets, with the action notices for the jobs'
    /// `webhooks_on_action`: all journalled in one batch before any leaves.
    pub(super) async fn notify(
        &mut self,
        rules: &RuleSet,
        escalations: Vec<Escalation>,
        actions: Vec<Notice>,
        now: jiff::Timestamp,
    ) {
        let mut requests = Vec::new();
        for escalation in escalations {
            tracing::warn!("{escalation}");
            let notice = escalation.notice();
            let Some(job) = rules.job(&notice.job) else { continue };
            requests.extend(notice.requests(rules, &job.escalate.targets, now));
        }
        for notice in actions {
            let Some(job) = rules.job(&notice.job) else { continue };
            let hooks: Vec<EscalationTarget> = job
                .webhooks_on_action
                .iter()
                .map(|name| EscalationTarget::Webhook { name: name.clone() })
                .collect();
            requests.extend(notice.requests(rules, &hooks, now));
        }
        if requests.is_empty() {
            return;
        }
        let count = requests.len();
        let journalled = match self.outbox.journal_messages(requests).await {
            Ok(journalled) => journalled,
            Err(err) => {
                tracing::error!(
                    "cannot journal {count} escalation and notice messages: {}; they are not sent",
                    with_causes(&err)
                );
                return;
            }
        };
        for outcome in journalled {
            match outcome {
                Ok(Ok(dispatch)) => {
                    tracing::info!("{}: sending", dispatch.what());
                    self.outbox.deliver(dispatch);
                }
                Ok(Err(_suppressed)) => {}
                Err(err) => tracing::error!("{}; not sent", with_causes(&err)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> EscalatedDevice {
        EscalatedDevice {
            key: "{device_id=\"1\"}".into(),
            who: "{device_id=\"1\"} (Lobby)".into(),
            labels: BTreeMap::from([
                ("device_id".to_string(), "1".to_string()),
                ("name".to_string(), "Lobby\nplayer".to_string()),
            ]),
        }
    }

    #[test]
    fn escalations_read_as_log_lines() {
        let not_recovered = Escalation::NotRecovered {
            job: "offline".into(),
            device: device(),
            episode: 2,
            attempt: 1,
            execution: Some(ExecutionId(7)),
            window: Duration::from_secs(600),
        };
        assert_eq!(
            not_recovered.to_string(),
            "job \"offline\": device {device_id=\"1\"} (Lobby): not recovered: still bad 10m after action 1 of episode 2 (execution #7)"
        );
        let gave_up = Escalation::GaveUp {
            job: "offline".into(),
            device: device(),
            episode: 4,
            execution: None,
            value: Some(0.0),
            reason: "3 actions in 24h on this device".into(),
        };
        assert_eq!(
            gave_up.to_string(),
            "job \"offline\": device {device_id=\"1\"} (Lobby): gave up: 3 actions in 24h on this device; no more actions in episode 4"
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
        let at: jiff::Timestamp = "2026-11-28T09:01:00Z".parse().unwrap();
        let payload: serde_json::Value =
            serde_json::from_str(&outage.notice().payload(at)).unwrap();
        assert_eq!(
            (&payload["event"], &payload["devices"], &payload["episode"], &payload["details"]),
            (
                &json!("mass_outage"),
                &json!([]),
                &json!(null),
                &json!({ "bad": 30, "known": 40, "since": "2026-11-28T09:00:00Z" })
            )
        );
    }

    #[test]
    fn the_payload_is_version_1_with_every_documented_field() {
        let escalation = Escalation::NotRecovered {
            job: "offline".into(),
            device: device(),
            episode: 2,
            attempt: 1,
            execution: Some(ExecutionId(7)),
            window: Duration::from_secs(600),
        };
        let at: jiff::Timestamp = "2026-11-28T09:25:00Z".parse().unwrap();
        let payload: serde_json::Value =
            serde_json::from_str(&escalation.notice().payload(at)).unwrap();
        assert_eq!(
            payload,
            json!({
                "version": 1,
                "event": "not_recovered",
                "job": "offline",
                "summary": escalation.to_string(),
                "devices": [{
                    "key": "{device_id=\"1\"}",
                    "labels": { "device_id": "1", "name": "Lobby\nplayer" },
                }],
                "episode": 2,
                "attempt": 1,
                "execution_id": 7,
                "value": null,
                "outcome": "not_recovered",
                "details": { "verify_within_seconds": 600 },
                "at": "2026-11-28T09:25:00Z",
            })
        );
    }

    #[test]
    fn an_escalation_sms_fills_labels_and_the_event() {
        let notice = Escalation::GaveUp {
            job: "offline".into(),
            device: device(),
            episode: 4,
            execution: None,
            value: None,
            reason: "limit".into(),
        }
        .notice();
        let template =
            crate::rules::template::Template::parse("{job}: {name} {event} {missing}").unwrap();
        assert_eq!(notice.sms_text(&template), "offline: Lobby player gave_up ?");
    }
}
