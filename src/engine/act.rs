//! From "an action is due" to a message: the devices of one socket due
//! together get one message, a socket gets no other first action from a
//! job within its cooldown, an action a budget holds back stays due, and a
//! device no socket powers is reported once per episode. Split from the
//! cycle (`mod.rs`) because it is the one place these rules live; the
//! outbox then journals and sends what it hands over.

use std::collections::HashMap;

use super::escalation;
use super::outbox::{Journalled, NotSent, Request};
use super::{describe, socket_waits, CycleReport, Due, Engine};
use crate::error::with_causes;
use crate::journal::{DeviceAction, Origin};
use crate::rules::state::{self, JobState};
use crate::rules::{DeviceVerdict, Job, Outgoing, Recipient, RuleSet};

/// A device a message of this cycle is for.
struct Target {
    /// The device's text form.
    device: String,
    /// The device in words, for logs.
    who: String,
    /// Its state after the step that made the action due.
    state_after: JobState,
    /// Its state before that step.
    previous: JobState,
    /// The device as an action notice names it, when the job tells
    /// webhooks of its actions (`webhooks_on_action`).
    told: Option<escalation::EscalatedDevice>,
}

/// One message of this cycle: a job's action, for one device or for the
/// devices of one socket due together.
struct DueMessage {
    /// Index of the job in the rules.
    job: usize,
    /// The socket it goes to; `None` for a person.
    socket: Option<String>,
    /// The devices it is for, the first one's labels in its text.
    targets: Vec<Target>,
    /// The first device's episode and action number, for logs.
    first: (u64, u32),
    /// The value that made the first device's condition true.
    value: Option<f64>,
}

impl Engine {
    /// Journals the messages of every action due this cycle in one batch
    /// (one commit, however many), then hands those that may leave to the
    /// sender: none leaves before all are committed. The devices of one
    /// socket due together for a job get one message, which lists them all;
    /// a device whose socket got a command from the job within its cooldown
    /// keeps its action due instead, and so does every device of a message
    /// a budget holds back. Returns the notices of the actions taken by jobs
    /// with `webhooks_on_action`.
    pub(super) async fn act(
        &mut self,
        rules: &RuleSet,
        dispatch: Vec<Due>,
        report: &mut CycleReport,
    ) -> Vec<escalation::Notice> {
        let mut notices = Vec::new();
        let now = self.clock.now();
        let mut requests: Vec<Request> = Vec::with_capacity(dispatch.len());
        // What each request is for, in the same order.
        let mut messages: Vec<DueMessage> = Vec::with_capacity(dispatch.len());
        let mut by_socket: HashMap<(usize, String), usize> = HashMap::new();
        for pending in dispatch {
            let job_rules = &rules.jobs[pending.job];
            let (outgoing, who) = match self.outgoing(job_rules, &pending.device, &pending.verdict)
            {
                Ok(found) => found,
                Err(why) => {
                    self.cannot_act(job_rules, &pending, &why, report);
                    continue;
                }
            };
            let told =
                (!job_rules.webhooks_on_action.is_empty()).then(|| escalation::EscalatedDevice {
                    key: pending.device.clone(),
                    who: who.clone(),
                    labels: pending.verdict.labels.clone(),
                });
            let Due { job, device, due, state_after, previous, .. } = pending;
            let socket = match &outgoing.to {
                Recipient::Sms { socket, .. } => socket.clone(),
                // A rule's action goes to a socket or a person, never to a
                // webhook (webhooks hear of it through a notice).
                Recipient::Webhook { .. } => None,
            };
            let action = DeviceAction {
                device_key: device.clone(),
                episode: due.episode,
                attempt: due.attempt_in_episode,
                trigger_value: due.trigger_value,
                state_after: crate::journal::EncodedState::new(&state_after),
            };
            let target = Target { device, who, state_after, previous, told };
            if let Some(socket) = &socket {
                if let Some(&at) = by_socket.get(&(job, socket.clone())) {
                    let Origin::Rule { also_for, .. } = &mut requests[at].origin else {
                        unreachable!("a job's request has a rule's origin")
                    };
                    also_for.push(action);
                    requests[at].by.push_str(&format!(", device {}", target.who));
                    messages[at].targets.push(target);
                    continue;
                }
                let last = self.socket_commands.get(&(job_rules.name.clone(), socket.clone()));
                if let Some(last) = socket_waits(job_rules, last.copied(), &due, now) {
                    self.hold_for_socket(job_rules, socket, last, target);
                    continue;
                }
                by_socket.insert((job, socket.clone()), requests.len());
            }
            let DeviceAction { device_key, episode, attempt, trigger_value, state_after } = action;
            let origin = Origin::Rule {
                job: job_rules.name.clone(),
                device_key,
                episode,
                attempt,
                trigger_value,
                state_after,
                also_for: Vec::new(),
            };
            let by = format!("job {:?}: device {}", job_rules.name, target.who);
            requests.push(Request { origin, outgoing, by });
            messages.push(DueMessage {
                job,
                socket,
                targets: vec![target],
                first: (episode, attempt),
                value: trigger_value,
            });
        }
        if requests.is_empty() {
            return notices;
        }
        let outcomes: Vec<Option<Journalled>> = match self.outbox.journal_messages(requests).await {
            Ok(outcomes) => outcomes.into_iter().map(Some).collect(),
            Err(err) => {
                tracing::error!(
                    "cannot journal {} messages: {}; nothing was sent; the actions stay due for the next cycle",
                    messages.len(),
                    with_causes(&err)
                );
                messages.iter().map(|_| None).collect()
            }
        };
        for (DueMessage { job, socket, targets, first, value }, outcome) in
            messages.into_iter().zip(outcomes)
        {
            let name = &rules.jobs[job].name;
            match outcome {
                Some(Ok(Err(NotSent::OverBudget { journalled_now, .. }))) => {
                    // Not sent, so not the episode's action: it stays due,
                    // and leaves once the budget allows if the device is
                    // still bad.
                    report.suppressed += usize::from(journalled_now);
                    for Target { device, state_after, previous, .. } in targets {
                        self.restore(name, &device, state_after.without_action(&previous));
                    }
                    continue;
                }
                Some(Ok(journalled)) => {
                    if let Some(socket) = socket {
                        self.socket_commands.insert((name.clone(), socket), now);
                    }
                    match journalled {
                        Ok(dispatch) => {
                            report.sends_started += 1;
                            let (episode, attempt) = first;
                            let told: Vec<_> =
                                targets.iter().filter_map(|t| t.told.clone()).collect();
                            if !told.is_empty() {
                                let (to, text) = dispatch.outgoing();
                                notices.push(escalation::action_notice(
                                    &rules.jobs[job],
                                    told,
                                    episode,
                                    attempt,
                                    dispatch.id(),
                                    value,
                                    to,
                                    text,
                                ));
                            }
                            tracing::info!(
                                "{}: sending (episode {episode}, action {attempt})",
                                dispatch.what()
                            );
                            self.outbox.deliver(dispatch);
                        }
                        Err(_dry_run) => report.suppressed += 1,
                    }
                    continue;
                }
                Some(Err(err)) => {
                    tracing::error!(
                        "{}; nothing was sent; the action stays due for the next cycle",
                        with_causes(&err)
                    );
                }
                None => {}
            }
            // The journal could not record the message, so it was not sent:
            // step back so that the action is due again next cycle rather
            // than lost for the whole episode.
            self.action_error(name, report);
            for target in targets {
                self.restore(name, &target.device, target.previous);
            }
        }
        notices
    }

    /// Puts a (job, device)'s state back to `state`.
    fn restore(&mut self, job: &str, device: &str, state: JobState) {
        if let (Some(states), Some(id)) = (self.states.get_mut(job), self.devices.find(device)) {
            states.restore(id, state);
        }
    }

    /// Keeps a device's action due because its socket got a command from
    /// the job at `last`, within the job's cooldown: the device keeps the
    /// state the step left it in, but for the action.
    fn hold_for_socket(&mut self, job: &Job, socket: &str, last: jiff::Timestamp, target: Target) {
        let Target { device, who, state_after, previous, .. } = target;
        let until = crate::clock::after(last, job.cooldown);
        // Said once, as the episode starts; later cycles only at debug level.
        if matches!(previous.phase, state::Phase::Firing { .. }) {
            tracing::debug!(
                "job {:?}: device {who}: action waits: socket {socket} got a command at {last}; until {until}",
                job.name
            );
        } else {
            tracing::info!(
                "job {:?}: device {who}: action waits: socket {socket} got a command from this job at {last}, within its cooldown (until {until})",
                job.name
            );
        }
        self.restore(&job.name, &device, state_after.without_action(&previous));
    }

    /// Counts an action that could not be carried out, in the cycle's report
    /// and in `jobctl_action_errors_total`.
    fn action_error(&self, job: &str, report: &mut CycleReport) {
        report.action_errors += 1;
        self.metrics.action_error(job);
    }

    /// The message an action due on `device` sends, and the device in
    /// words for logs; or why it cannot become one.
    fn outgoing(
        &self,
        job: &Job,
        device: &str,
        verdict: &DeviceVerdict,
    ) -> Result<(Outgoing, String), String> {
        let Some(key) = self.rules.device_key.key_of(&verdict.labels) else {
            return Err("its labels lack the device key".to_string());
        };
        match self.rules.outgoing(job, &key, &verdict.labels) {
            Ok(outgoing) => Ok((outgoing, describe(device, verdict))),
            Err(err) => Err(err.to_string()),
        }
    }

    /// An action that cannot become a message (no socket powers the device,
    /// most often): it stays due, so that a reload that gives the device a
    /// socket acts on it while it is still bad. Said (an ERROR, and
    /// `jobctl_action_errors_total`) once per (job, device) episode; the
    /// cycles after that, while it stays due, only at debug level.
    fn cannot_act(&mut self, job: &Job, due: &Due, why: &str, report: &mut CycleReport) {
        let who = describe(&due.device, &due.verdict);
        let pair = (job.name.clone(), due.device.clone());
        if self.cannot_act_said.insert(pair, due.due.episode) == Some(due.due.episode) {
            tracing::debug!("job {:?}: device {who}: still cannot act: {why}", job.name);
        } else {
            self.action_error(&job.name, report);
            tracing::error!(
                "job {:?}: device {who}: cannot act: {why}; the action stays due (said once per episode)",
                job.name
            );
        }
        self.restore(&job.name, &due.device, due.state_after.without_action(&due.previous));
    }
}
