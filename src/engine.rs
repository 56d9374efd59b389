//! jobctl's evaluation cycle: ask Prometheus, advance every (job, device),
//! journal and send what is due.
//!
//! One cycle:
//!
//! 1. sends each distinct query of the enabled jobs once (not once per job
//!    or device), concurrently; a query that fails is simply absent from the
//!    answers, which makes every verdict depending on it unknown;
//! 2. evaluates each job per device ([`crate::rules::Job::evaluate`]) and
//!    advances its state machine ([`crate::rules::state`]): unknown never
//!    moves anything towards an action;
//! 3. for each action due, journals the message *before* it leaves, then
//!    hands it to the SMS sender in a task of its own (a slow gateway or a
//!    retry never holds up other jobs or the next cycle), and records each
//!    attempt's outcome;
//! 4. saves every changed state in one transaction.
//!
//! The journal (SQLite) is only touched on the blocking pool. Because the
//! state after an action is written in the same transaction as the message,
//! a crash (even `kill -9`) at any point never makes the same action due
//! twice, and a message caught in flight is marked uncertain at the next
//! start rather than re-sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{GaugeVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::clock::Clock;
use crate::journal::{
    Execution, ExecutionId, Journal, JournalError, Origin, PlannedSend, SendResult, Suppression,
};
use crate::prometheus_api::PromClient;
use crate::rules::state::{self, JobState, PhaseName, Timing};
use crate::rules::{DeviceKey, DeviceVerdict, Job, RuleSet, Sample, Verdict};
use crate::sms::{text, Message, SendError, Sender};

/// How failed sends are retried. Only definite failures are retried; a send
/// that may have left is never repeated automatically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendRetry {
    /// Attempts per message, the first included.
    pub attempts: u32,
    /// Delay before the second attempt; doubled for each further one.
    pub first_delay: Duration,
}

impl Default for SendRetry {
    fn default() -> SendRetry {
        SendRetry { attempts: 3, first_delay: Duration::from_secs(15) }
    }
}

/// Message budgets: at most so many messages (that may have left) per
/// window, per socket and in all. Over budget, a message is journalled as
/// suppressed and counted, never silently dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budgets {
    /// Per socket, per rolling hour.
    pub socket_hour: Option<u32>,
    /// Per socket, per rolling day.
    pub socket_day: Option<u32>,
    /// All sockets together, per rolling hour.
    pub global_hour: Option<u32>,
    /// All sockets together, per rolling day.
    pub global_day: Option<u32>,
}

/// What the engine does with a due action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Journal and send.
    Live,
    /// Journal as `dry_run`, send nothing (`jobctl run --dry-run`).
    DryRun,
}

/// Options that are not part of the rules file.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Live or dry run.
    pub mode: Mode,
    /// Retries of failed sends.
    pub retry: SendRetry,
    /// Message budgets.
    pub budgets: Budgets,
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions { mode: Mode::Live, retry: SendRetry::default(), budgets: Budgets::default() }
    }
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The journal could not be read or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// What one cycle did, for `--once`, tests and logs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CycleReport {
    /// Distinct queries sent.
    pub queries: usize,
    /// How long the queries took, from sending the first to having every
    /// answer decoded; the rest of the cycle is evaluation, journal and
    /// dispatch.
    pub query_time: Duration,
    /// Queries that failed, with why.
    pub failed_queries: Vec<(String, String)>,
    /// (job, device) pairs evaluated.
    pub evaluations: usize,
    /// Of those, how many were unknown.
    pub unknown: usize,
    /// Phase changes.
    pub transitions: usize,
    /// Actions that became due.
    pub actions_due: usize,
    /// Executions journalled and handed to the sender.
    pub sends_started: usize,
    /// Executions journalled without sending (budget, dry run).
    pub suppressed: usize,
    /// Actions that could not become an SMS (no socket for the device…).
    pub action_errors: usize,
}

/// A message the cycle decided to send.
struct Dispatch {
    id: ExecutionId,
    message: Message,
    what: String,
}

/// The evaluation engine of `jobctl run`.
pub struct Engine {
    rules: Arc<RuleSet>,
    prometheus: Arc<PromClient>,
    clock: Arc<dyn Clock>,
    /// (job name, device key text) → state.
    states: HashMap<(String, String), JobState>,
    outbox: Outbox,
}

/// Where messages go: journalled (or suppressed by budget or dry run), then
/// handed to the sender in tasks of their own, retried within limits, each
/// attempt's outcome journalled. Shared by the engine and the manual
/// commands (`jobctl send`, `test-rule --send`), so every message obeys the
/// same journal and budgets.
pub struct Outbox {
    journal: Arc<Mutex<Journal>>,
    sender: Arc<dyn Sender>,
    clock: Arc<dyn Clock>,
    options: EngineOptions,
    sends: tokio::task::JoinSet<()>,
    metrics: Arc<EngineMetrics>,
}

impl Engine {
    /// Loads the saved states, settles sends a previous run left in flight
    /// (they become uncertain and are never re-sent), and is ready to cycle.
    pub async fn start(
        rules: RuleSet,
        prometheus: Arc<PromClient>,
        journal: Journal,
        sender: Arc<dyn Sender>,
        clock: Arc<dyn Clock>,
        options: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let outbox = Outbox::new(journal, sender, clock.clone(), options);
        let (recovered, states) = blocking(&outbox.journal, |journal| {
            let recovered = journal.recover_in_flight()?;
            Ok::<_, JournalError>((recovered, journal.load_states()?))
        })
        .await?;
        for execution in &recovered {
            tracing::warn!(
                "execution {} ({:?} to {} {}) was in flight when jobctl stopped; marked {}: it is not sent again",
                execution.id,
                execution.text,
                execution.socket,
                execution.phone,
                execution.status
            );
        }
        let mut engine = Engine { rules: Arc::new(rules), prometheus, clock, states, outbox };
        engine.forget_removed_jobs();
        Ok(engine)
    }

    /// The rules in force.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// The engine's metrics registry (served on `/metrics` by `jobctl run --listen`).
    pub fn metrics(&self) -> Arc<EngineMetrics> {
        self.outbox.metrics.clone()
    }

    /// A job's state on a device, as the engine holds it.
    pub fn state(&self, job: &str, device: &str) -> Option<&JobState> {
        self.states.get(&(job.to_string(), device.to_string()))
    }

    /// Replaces the rules (SIGHUP). Jobs that keep their name keep their
    /// states, even when their condition changed; states of jobs that are
    /// gone are dropped.
    pub fn replace_rules(&mut self, rules: RuleSet) {
        self.rules = Arc::new(rules);
        self.forget_removed_jobs();
    }

    fn forget_removed_jobs(&mut self) {
        let names: BTreeSet<&str> = self.rules.jobs.iter().map(|j| j.name.as_str()).collect();
        self.states.retain(|(job, _), _| names.contains(job.as_str()));
    }

    /// Waits for every send in progress to finish (retries included).
    pub async fn finish_sends(&mut self) {
        self.outbox.finish_sends().await;
    }

    /// Runs one evaluation cycle.
    pub async fn cycle(&mut self) -> CycleReport {
        let started = Instant::now();
        let now = self.clock.now();
        let mut report = CycleReport::default();
        // Reap sends that finished since the last cycle.
        while self.outbox.sends.try_join_next().is_some() {}

        let queries = self.rules.queries();
        report.queries = queries.len();
        let querying = Instant::now();
        let answers = self.query_all(&queries, &mut report).await;
        report.query_time = querying.elapsed();

        let mut dispatch: Vec<(
            Arc<Job>,
            DeviceKeyText,
            DeviceVerdict,
            state::ActionDue,
            JobState,
        )> = Vec::new();
        let mut changed: Vec<(String, String)> = Vec::new();
        let rules = self.rules.clone();
        for job in rules.jobs.iter().filter(|j| j.enabled) {
            let evaluation = job.evaluate(&answers, &rules.device_key);
            let timing = Timing { for_: job.hold_for, cooldown: job.cooldown, repeat: job.repeat };
            let in_window = job.schedule.as_ref().is_none_or(|s| s.allows(now));
            // Devices in this cycle's answers, then those known from earlier
            // cycles (their verdict is the evaluation's `absent` one).
            let mut devices: BTreeMap<String, (Option<DeviceKey>, &DeviceVerdict)> = evaluation
                .devices
                .iter()
                .map(|(key, verdict)| (key.to_string(), (Some(key.clone()), verdict)))
                .collect();
            for (name, device) in self.states.keys() {
                if name == &job.name && !devices.contains_key(device) {
                    devices.insert(device.clone(), (None, &evaluation.absent));
                }
            }
            let job_arc = Arc::new(job.clone());
            for (device, (key, verdict)) in devices {
                report.evaluations += 1;
                let state_key = (job.name.clone(), device.clone());
                let previous = self.states.get(&state_key).cloned().unwrap_or_default();
                let step = previous.advance(
                    &timing,
                    &state::Evaluation {
                        now,
                        verdict: verdict.verdict,
                        value: verdict.values.first().map(|v| v.value),
                        in_window,
                    },
                );
                if verdict.verdict == Verdict::Unknown {
                    report.unknown += 1;
                    self.outbox.metrics.unknown.with_label_values(&[job.name.as_str()]).inc();
                    if previous.phase.name() != PhaseName::Inactive {
                        let why = verdict
                            .unknown_because
                            .as_ref()
                            .map_or_else(|| "no data".to_string(), ToString::to_string);
                        tracing::debug!(
                            "job {:?}: device {}: unknown ({why}); state held as {}",
                            job.name,
                            describe(&device, verdict),
                            previous.phase.name()
                        );
                    }
                }
                for transition in &step.transitions {
                    report.transitions += 1;
                    let value = verdict.values.first().map(|v| format!(" (value {})", v.value));
                    tracing::info!(
                        "job {:?}: device {}: {transition}{}",
                        job.name,
                        describe(&device, verdict),
                        value.unwrap_or_default()
                    );
                }
                if let Some(due) = step.action {
                    report.actions_due += 1;
                    dispatch.push((
                        job_arc.clone(),
                        DeviceKeyText(device.clone()),
                        verdict.clone(),
                        due,
                        step.state.clone(),
                    ));
                }
                if step.state != previous {
                    changed.push(state_key.clone());
                }
                if step.state.phase.name() == PhaseName::Inactive
                    && step.state.last_action_at.is_none()
                    && key.is_none()
                {
                    // A device that left the answers and never did anything:
                    // nothing worth remembering.
                    self.states.remove(&state_key);
                } else {
                    self.states.insert(state_key, step.state);
                }
            }
        }

        for (job, device, verdict, due, state_after) in dispatch {
            self.act(&job, &device.0, &verdict, due, state_after, &mut report).await;
        }

        let to_save: Vec<(String, String, JobState)> = changed
            .into_iter()
            .filter_map(|key| {
                self.states.get(&key).map(|s| (key.0.clone(), key.1.clone(), s.clone()))
            })
            .collect();
        if !to_save.is_empty() {
            let result = blocking(&self.outbox.journal, move |journal| {
                journal.save_states(to_save.iter().map(|(j, d, s)| (j.as_str(), d.as_str(), s)))
            })
            .await;
            if let Err(err) = result {
                tracing::error!(
                    "cannot save job states: {err}; they are kept in memory and saved next cycle"
                );
            }
        }

        self.outbox.metrics.record_cycle(started.elapsed(), now, &self.states);
        report
    }

    async fn query_all(
        &self,
        queries: &[String],
        report: &mut CycleReport,
    ) -> HashMap<String, Vec<Sample>> {
        let mut tasks = tokio::task::JoinSet::new();
        for query in queries {
            let client = self.prometheus.clone();
            let query = query.clone();
            tasks.spawn(async move {
                let result = client.query(&query).await;
                (query, result)
            });
        }
        let mut answers = HashMap::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((query, result)) = joined else { continue };
            self.outbox.metrics.queries.inc();
            match result {
                Ok(samples) => {
                    let samples = samples
                        .into_iter()
                        .map(|s| Sample { labels: s.labels, value: s.value })
                        .collect();
                    answers.insert(query, samples);
                }
                Err(err) => {
                    self.outbox.metrics.query_failures.with_label_values(&[err.label()]).inc();
                    report.failed_queries.push((query, err.to_string()));
                }
            }
        }
        if !report.failed_queries.is_empty() {
            report.failed_queries.sort();
            let (query, why) = &report.failed_queries[0];
            tracing::warn!(
                "{} of {} Prometheus queries failed (first: {query:?}: {why}); devices that depend on them are unknown: nothing advances and nothing is sent",
                report.failed_queries.len(),
                queries.len()
            );
        }
        answers
    }

    async fn act(
        &mut self,
        job: &Job,
        device: &str,
        verdict: &DeviceVerdict,
        due: state::ActionDue,
        state_after: JobState,
        report: &mut CycleReport,
    ) {
        let who = describe(device, verdict);
        let Some(key) = self.rules.device_key.key_of(&verdict.labels) else {
            report.action_errors += 1;
            tracing::error!(
                "job {:?}: device {who}: cannot act: its labels lack the device key",
                job.name
            );
            return;
        };
        let outgoing = match self.rules.outgoing(job, &key, &verdict.labels) {
            Ok(outgoing) => outgoing,
            Err(err) => {
                report.action_errors += 1;
                self.outbox.metrics.action_errors.with_label_values(&[job.name.as_str()]).inc();
                tracing::error!("job {:?}: device {who}: cannot act: {err}", job.name);
                return;
            }
        };
        let text = text::sanitize(&outgoing.text, false, MAX_TEXT_CHARS);
        let socket = outgoing.socket.clone().unwrap_or_else(|| "-".to_string());
        let planned = PlannedSend {
            origin: Origin::Rule {
                job: job.name.clone(),
                device_key: device.to_string(),
                episode: due.episode,
                attempt: due.attempt_in_episode,
                trigger_value: due.trigger_value,
                state_after,
            },
            socket: socket.clone(),
            phone: outgoing.phone.as_str().to_string(),
            text: text.clone(),
        };
        let what = format!(
            "job {:?}: device {who}: {:?} to socket {socket} ({})",
            job.name,
            text,
            outgoing.phone.as_str()
        );
        match self.outbox.journal_and_dispatch(planned, what).await {
            Ok(Ok(dispatch)) => {
                report.sends_started += 1;
                tracing::info!(
                    "{}: sending (episode {}, action {})",
                    dispatch.what,
                    due.episode,
                    due.attempt_in_episode
                );
                self.outbox.spawn_send(dispatch);
            }
            Ok(Err(_suppressed)) => report.suppressed += 1,
            Err(err) => {
                report.action_errors += 1;
                tracing::error!("{err}; nothing was sent");
            }
        }
    }
}

impl Outbox {
    /// An outbox over `journal` (its clock set to `clock`) and `sender`.
    pub fn new(
        journal: Journal,
        sender: Arc<dyn Sender>,
        clock: Arc<dyn Clock>,
        options: EngineOptions,
    ) -> Outbox {
        Outbox {
            journal: Arc::new(Mutex::new(journal.with_clock(clock.clone()))),
            sender,
            clock,
            options,
            sends: tokio::task::JoinSet::new(),
            metrics: Arc::new(EngineMetrics::new()),
        }
    }

    /// Journals a planned message — suppressed (budget, dry run) or about to
    /// leave — and returns it for sending when it may leave.
    async fn journal_and_dispatch(
        &self,
        planned: PlannedSend,
        what: String,
    ) -> Result<Result<Dispatch, ExecutionId>, JournalError> {
        let budgets = self.options.budgets;
        let mode = self.options.mode;
        let now = self.clock.now();
        let message = Message { phone: planned.phone.clone(), text: planned.text.clone() };
        let (id, suppressed) = blocking(&self.journal, move |journal| {
            let over = over_budget(journal, &budgets, &planned.socket, now)?;
            match (over, mode) {
                (Some(reason), _) => {
                    let id = journal.record_suppressed(
                        &planned,
                        &Suppression::OverBudget { reason: reason.clone() },
                    )?;
                    Ok::<_, JournalError>((id, Some(format!("suppressed: {reason}"))))
                }
                (None, Mode::DryRun) => {
                    let id = journal.record_suppressed(&planned, &Suppression::DryRun)?;
                    Ok((id, Some("dry run: not sent".to_string())))
                }
                (None, Mode::Live) => Ok((journal.begin_send(&planned)?, None)),
            }
        })
        .await?;
        if let Some(why) = suppressed {
            self.metrics
                .sms
                .with_label_values(&[if why.starts_with("dry") { "dry_run" } else { "suppressed" }])
                .inc();
            tracing::warn!("{what}: {why} (execution {id})");
            return Ok(Err(id));
        }
        Ok(Ok(Dispatch { id, message, what }))
    }

    fn spawn_send(&mut self, dispatch: Dispatch) {
        let sender = self.sender.clone();
        let journal = self.journal.clone();
        let retry = self.options.retry;
        let metrics = self.metrics.clone();
        self.sends.spawn(send_with_retries(sender, journal, retry, metrics, dispatch));
    }

    /// Sends a message typed by a person (`jobctl send`, `test-rule --send`)
    /// through the same journal, budgets and retries, and waits for the
    /// outcome.
    pub async fn send_manual(
        &mut self,
        socket: &str,
        phone: &str,
        text: &str,
    ) -> Result<Execution, JournalError> {
        let text = text::sanitize(text, false, MAX_TEXT_CHARS);
        let planned = PlannedSend {
            origin: Origin::Manual,
            socket: socket.to_string(),
            phone: phone.to_string(),
            text: text.clone(),
        };
        let what = format!("manual: {text:?} to socket {socket} ({phone})");
        let id = match self.journal_and_dispatch(planned, what).await? {
            Ok(dispatch) => {
                let id = dispatch.id;
                tracing::info!("{}: sending", dispatch.what);
                self.spawn_send(dispatch);
                self.finish_sends().await;
                id
            }
            Err(suppressed) => suppressed,
        };
        blocking(&self.journal, move |journal| journal.execution(id)).await
    }

    /// The journal, for read-only views in the same process.
    pub fn journal(&self) -> Arc<Mutex<Journal>> {
        self.journal.clone()
    }

    /// Waits for every send in progress to finish (retries included).
    pub async fn finish_sends(&mut self) {
        while self.sends.join_next().await.is_some() {}
    }
}

/// Longest text a message may have: ten segments of GSM-7. Socket commands
/// are held to one segment at check time; this bounds notifications whose
/// labels came from metrics.
pub const MAX_TEXT_CHARS: usize = 1530;

struct DeviceKeyText(String);

/// `{platform_id="12", device_id="30785"} (Arzamas_Lesnaia_1)`: the key and,
/// when the series has one, the device's name.
fn describe(device: &str, verdict: &DeviceVerdict) -> String {
    match verdict.labels.get("name").filter(|n| !n.is_empty()) {
        Some(name) => format!("{device} ({})", text::sanitize(name, false, 80)),
        None => device.to_string(),
    }
}

fn over_budget(
    journal: &Journal,
    budgets: &Budgets,
    socket: &str,
    now: jiff::Timestamp,
) -> Result<Option<String>, JournalError> {
    let hour = now - jiff::SignedDuration::from_secs(3600);
    let day = now - jiff::SignedDuration::from_secs(86_400);
    let checks = [
        (budgets.socket_hour, Some(socket), hour, "per socket per hour"),
        (budgets.socket_day, Some(socket), day, "per socket per day"),
        (budgets.global_hour, None, hour, "in all per hour"),
        (budgets.global_day, None, day, "in all per day"),
    ];
    for (limit, scope, since, label) in checks {
        let Some(limit) = limit else { continue };
        let used = journal.count_sent_since(scope, since)?;
        if used >= limit {
            let whose = scope.map_or_else(|| "all sockets".to_string(), |s| format!("socket {s}"));
            return Ok(Some(format!(
                "budget of {limit} messages {label} reached ({whose}: {used})"
            )));
        }
    }
    Ok(None)
}

async fn send_with_retries(
    sender: Arc<dyn Sender>,
    journal: Arc<Mutex<Journal>>,
    retry: SendRetry,
    metrics: Arc<EngineMetrics>,
    dispatch: Dispatch,
) {
    let Dispatch { id, message, what } = dispatch;
    let attempts = retry.attempts.max(1);
    for attempt in 1..=attempts {
        if attempt > 1 {
            let delay = retry.first_delay.saturating_mul(1 << (attempt - 2).min(16));
            tokio::time::sleep(delay).await;
            if let Err(err) = blocking(&journal, move |j| j.mark_sending(id)).await {
                tracing::error!("{what}: cannot journal retry {attempt}: {err}; not retried");
                return;
            }
        }
        let outcome = sender.send(&message).await;
        let backend = sender.name().to_string();
        let (result, done) = match &outcome {
            Ok(delivered) => (
                SendResult::Sent {
                    backend: delivered.backend.clone(),
                    reference: delivered.reference.clone(),
                },
                true,
            ),
            Err(SendError::Definite { reason }) => {
                (SendResult::Failed { backend, reason: reason.clone() }, attempt == attempts)
            }
            Err(SendError::Uncertain { reason }) => {
                (SendResult::Uncertain { backend, reason: reason.clone() }, true)
            }
        };
        let label = match &outcome {
            Ok(_) => "sent",
            Err(err) => err.label(),
        };
        metrics.sms.with_label_values(&[label]).inc();
        let journalled = blocking(&journal, {
            let result = result.clone();
            move |j| j.finish_send(id, &result)
        })
        .await;
        if let Err(err) = journalled {
            tracing::error!("{what}: cannot journal the outcome of execution {id}: {err}");
        }
        match &outcome {
            Ok(delivered) => {
                let reference = delivered
                    .reference
                    .as_deref()
                    .map(|r| format!(", reference {r}"))
                    .unwrap_or_default();
                tracing::info!(
                    "{what}: sent via {}{reference} (execution {id})",
                    delivered.backend
                );
            }
            Err(SendError::Definite { reason }) if !done => {
                tracing::warn!("{what}: not sent: {reason}; attempt {attempt} of {attempts}, trying again (execution {id})");
            }
            Err(SendError::Definite { reason }) => {
                tracing::error!("{what}: not sent after {attempts} attempts: {reason}; journalled as failed (execution {id})");
            }
            Err(SendError::Uncertain { reason }) => {
                tracing::error!("{what}: may have been sent: {reason}; journalled as uncertain and not retried (execution {id})");
            }
        }
        if done {
            return;
        }
    }
}

/// Runs `work` on the journal on the blocking pool.
async fn blocking<T: Send + 'static>(
    journal: &Arc<Mutex<Journal>>,
    work: impl FnOnce(&mut Journal) -> T + Send + 'static,
) -> T {
    let journal = journal.clone();
    tokio::task::spawn_blocking(move || work(&mut journal.lock().expect("journal lock poisoned")))
        .await
        .expect("journal task panicked")
}

/// jobctl's own metrics.
pub struct EngineMetrics {
    registry: Registry,
    cycles: IntCounter,
    /// Prometheus queries sent.
    queries: IntCounter,
    /// Failed queries by reason.
    query_failures: IntCounterVec,
    /// Unknown verdicts by job.
    unknown: IntCounterVec,
    /// SMS outcomes.
    sms: IntCounterVec,
    /// Actions that could not become an SMS, by job.
    action_errors: IntCounterVec,
    devices: GaugeVec,
    cycle_duration: prometheus::Gauge,
    last_cycle: prometheus::Gauge,
}

impl EngineMetrics {
    fn new() -> EngineMetrics {
        let registry = Registry::new();
        let register =
            |c: Box<dyn prometheus::core::Collector>| registry.register(c).expect("unique metric");
        let cycles =
            IntCounter::new("jobctl_cycles_total", "Evaluation cycles run.").expect("valid");
        register(Box::new(cycles.clone()));
        let queries =
            IntCounter::new("jobctl_queries_total", "Prometheus queries sent.").expect("valid");
        register(Box::new(queries.clone()));
        let query_failures = IntCounterVec::new(
            Opts::new("jobctl_query_failures_total", "Prometheus queries that failed, by reason."),
            &["reason"],
        )
        .expect("valid");
        register(Box::new(query_failures.clone()));
        let unknown = IntCounterVec::new(
            Opts::new(
                "jobctl_unknown_evaluations_total",
                "Evaluations of a job on a device whose verdict was unknown (no data, failed query, guard not met).",
            ),
            &["job"],
        )
        .expect("valid");
        register(Box::new(unknown.clone()));
        let sms = IntCounterVec::new(
            Opts::new(
                "jobctl_sms_total",
                "SMS attempts and decisions by outcome (sent, failed, uncertain, suppressed, dry_run).",
            ),
            &["outcome"],
        )
        .expect("valid");
        register(Box::new(sms.clone()));
        for outcome in ["sent", "failed", "uncertain", "suppressed", "dry_run"] {
            sms.with_label_values(&[outcome]);
        }
        let action_errors = IntCounterVec::new(
            Opts::new(
                "jobctl_action_errors_total",
                "Due actions that could not become an SMS (no socket for the device…), by job.",
            ),
            &["job"],
        )
        .expect("valid");
        register(Box::new(action_errors.clone()));
        let devices = GaugeVec::new(
            Opts::new("jobctl_job_devices", "Devices per job and state after the last cycle."),
            &["job", "state"],
        )
        .expect("valid");
        register(Box::new(devices.clone()));
        let cycle_duration = prometheus::Gauge::new(
            "jobctl_cycle_duration_seconds",
            "Duration of the last evaluation cycle.",
        )
        .expect("valid");
        register(Box::new(cycle_duration.clone()));
        let last_cycle = prometheus::Gauge::new(
            "jobctl_last_cycle_timestamp_seconds",
            "Unix time the last evaluation cycle ended.",
        )
        .expect("valid");
        register(Box::new(last_cycle.clone()));
        #[cfg(target_os = "linux")]
        register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        EngineMetrics {
            registry,
            cycles,
            queries,
            query_failures,
            unknown,
            sms,
            action_errors,
            devices,
            cycle_duration,
            last_cycle,
        }
    }

    fn record_cycle(
        &self,
        took: Duration,
        now: jiff::Timestamp,
        states: &HashMap<(String, String), JobState>,
    ) {
        self.cycles.inc();
        self.cycle_duration.set(took.as_secs_f64());
        self.last_cycle.set(now.as_millisecond() as f64 / 1000.0);
        self.devices.reset();
        let mut counts: BTreeMap<(&str, &'static str), u64> = BTreeMap::new();
        for ((job, _), state) in states {
            *counts.entry((job.as_str(), state.phase.name().as_str())).or_default() += 1;
        }
        for ((job, phase), count) in counts {
            self.devices.with_label_values(&[job, phase]).set(count as f64);
        }
    }

    /// Seconds since the last cycle ended, `None` before the first.
    pub fn seconds_since_last_cycle(&self) -> Option<f64> {
        let last = self.last_cycle.get();
        (last > 0.0).then(|| jiff::Timestamp::now().as_millisecond() as f64 / 1000.0 - last)
    }

    /// The metrics in the text format.
    pub fn encode(&self) -> Vec<u8> {
        use prometheus::Encoder;
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        out
    }
}
