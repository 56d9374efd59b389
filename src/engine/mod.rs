//! jobctl's evaluation cycle: ask Prometheus, advance every (job, device),
//! journal and send what is due.
//!
//! One cycle:
//!
//! 1. sends each distinct query of the enabled jobs once (not once per job
//!    or device), a few at a time, and compacts each answer as it arrives
//!    (`rules::condition::Answers`); a query that fails is simply absent
//!    from the answers, which makes every verdict depending on it unknown;
//! 2. evaluates each job per device (as [`crate::rules::Job::evaluate`]
//!    does, on answers indexed once for every job) and advances its state
//!    machine ([`crate::rules::state`]): unknown never moves anything
//!    towards an action;
//! 3. journals the message of every action due *before* any of them leaves,
//!    all in one transaction (one commit to disk, not one per message: a
//!    busy cycle has dozens), then hands each to the SMS sender in a task of
//!    its own (a slow gateway or a retry never holds up other jobs or the
//!    next cycle), and records each attempt's outcome (outcomes that arrive
//!    together share a commit, see `SendWrites`);
//! 4. saves every changed state in one transaction.
//!
//! A thousand jobs over ten thousand devices are a third of a million
//! (job, device) pairs per cycle, nearly all inactive: the engine keeps a
//! state only for pairs something happened to (`JobStates`) and skips the
//! state machine for the others while their verdict is not true.
//! `cargo bench --bench jobctl` measures a cycle at that size.
//!
//! The journal (SQLite) is only touched on the blocking pool. Because the
//! state after an action is written in the same transaction as the message,
//! a crash (even `kill -9`) at any point never makes the same action due
//! twice, and a message caught in flight is marked uncertain at the next
//! start rather than re-sent.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use prometheus::{GaugeVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::clock::Clock;
use crate::journal::{
    Execution, ExecutionId, Journal, JournalError, Origin, PlannedSend, SendResult, Suppression,
};
use crate::prometheus_api::{InstantAnswer, PromClient, PromError};
use crate::rules::condition::{Answers, Index, JobEvaluation};
use crate::rules::device::{DeviceId, DeviceTable};
use crate::rules::state::{self, JobState, PhaseName, Timing, Transition};
use crate::rules::{DeviceVerdict, Job, RuleSet, Verdict};
use crate::sms::{text, AttemptChain, Message, SendError, Sender};

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

impl SendRetry {
    /// For commands a person waits on (`jobctl send`, `test-rule --send`):
    /// the same three attempts, seconds rather than minutes apart.
    pub const INTERACTIVE: SendRetry =
        SendRetry { attempts: 3, first_delay: Duration::from_secs(2) };
}

pub use crate::rules::Budgets;

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
    /// The most segments a notification may take (`[sms] max_segments`).
    pub max_segments: usize,
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            mode: Mode::Live,
            retry: SendRetry::default(),
            budgets: Budgets::default(),
            max_segments: crate::sms::DEFAULT_MAX_SEGMENTS,
        }
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
    /// answer decoded.
    pub query_time: Duration,
    /// How long the cycle then waited on the journal: due actions journalled
    /// before they leave, and changed states saved. The rest of the cycle is
    /// evaluation.
    pub journal_time: Duration,
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

/// What became of one message given to the journal: its dispatch when it may
/// leave, its execution id when it was journalled but may not (budget, dry
/// run), or why the journal did not take it (then it did not leave).
type Journalled = Result<Result<Dispatch, ExecutionId>, JournalError>;

/// An action that became due in a cycle, sent once every job is evaluated.
struct Due {
    /// Index of the job in the rules.
    job: usize,
    /// The device's text form.
    device: String,
    verdict: DeviceVerdict,
    due: state::ActionDue,
    state_after: JobState,
    /// The state before this cycle, put back if the journal cannot take the
    /// message (nothing was sent, so the action must stay due).
    previous: JobState,
}

/// Queries sent at once. Prometheus evaluates 20 queries at a time by
/// default (`--query.max-concurrency`) and queues the others; each query in
/// flight holds its whole answer (megabytes for a fleet-wide one) until it
/// is read. In `cargo bench --bench jobctl`, peak RSS was 49.9 MB with 8,
/// 48 MB with 4 and 42.7 MB with 2; with 2 the cycle's queries took 7%
/// longer against an instant fake, and would take twice as long against a
/// Prometheus slow to evaluate them.
const QUERIES_IN_FLIGHT: usize = 4;

/// The evaluation engine of `jobctl run`.
pub struct Engine {
    rules: Arc<RuleSet>,
    prometheus: Arc<PromClient>,
    clock: Arc<dyn Clock>,
    /// The last cycle's answers, kept for their buffers.
    answers: Answers,
    /// Every device the states refer to.
    devices: DeviceTable,
    /// How many of them states referred to when last counted.
    devices_in_use: usize,
    /// Job name → its devices' states.
    states: HashMap<String, JobStates>,
    /// The state of a (job, device) nothing has happened to.
    default_state: JobState,
    outbox: Outbox,
    /// Queries that failed last cycle, so that an outage is logged when it
    /// starts and ends rather than every cycle.
    failing_queries: usize,
    /// (job, device) whose state the last save could not write: saved with
    /// the next cycle's changes, whether or not they change again.
    unsaved: Vec<(String, String)>,
}

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
struct JobStates {
    /// Devices in the job's answers in the last cycle, in id order.
    present: Vec<DeviceId>,
    /// In id order, the states that `present` does not imply: every state
    /// other than the default, and the states loaded from the journal.
    stored: Vec<(DeviceId, JobState)>,
    /// How many known devices are in each phase (by [`phase_slot`]), for
    /// the `jobctl_job_devices` gauge.
    phases: [u64; 4],
}

/// The phases in the order of [`JobStates::phases`].
const PHASES: [PhaseName; 4] =
    [PhaseName::Inactive, PhaseName::Pending, PhaseName::Firing, PhaseName::Resolved];

fn phase_slot(phase: PhaseName) -> usize {
    PHASES.iter().position(|&p| p == phase).expect("every phase has a slot")
}

impl JobStates {
    /// A device's state, if the engine knows the (job, device).
    fn get<'s>(&'s self, device: DeviceId, default: &'s JobState) -> Option<&'s JobState> {
        match self.stored.binary_search_by_key(&device, |(d, _)| *d) {
            Ok(at) => Some(&self.stored[at].1),
            Err(_) => self.present.binary_search(&device).is_ok().then_some(default),
        }
    }

    /// Puts back a device's state (stepping back a cycle's decision).
    fn restore(&mut self, device: DeviceId, state: JobState) {
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
struct DeviceEvent {
    device: DeviceId,
    /// Whether the device is in this cycle's answers.
    present: bool,
    /// The phase held because the verdict is unknown, unless inactive.
    unknown_in: Option<PhaseName>,
    transitions: Vec<Transition>,
    /// The action due, the state after it and the state before.
    action: Option<(state::ActionDue, JobState, JobState)>,
}

/// Where messages go: journalled (or suppressed by budget or dry run), then
/// handed to the sender in tasks of their own, retried within limits, each
/// attempt's outcome journalled. Shared by the engine and the manual
/// commands (`jobctl send`, `test-rule --send`), so every message obeys the
/// same journal and budgets.
pub struct Outbox {
    journal: Arc<Mutex<Journal>>,
    /// The send tasks' writes, committed in groups.
    send_writes: Arc<SendWrites>,
    sender: Arc<dyn Sender>,
    clock: Arc<dyn Clock>,
    options: EngineOptions,
    sends: tokio::task::JoinSet<()>,
    /// Set when jobctl stops: send tasks waiting to retry give up at once
    /// rather than hold the shutdown for their backoff.
    stopping: tokio::sync::watch::Sender<bool>,
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
        let mut devices = DeviceTable::default();
        let mut by_job: HashMap<String, JobStates> = HashMap::new();
        for ((job, device), state) in states {
            let device = devices.intern_text(&device);
            by_job.entry(job).or_default().stored.push((device, state));
        }
        for states in by_job.values_mut() {
            states.stored.sort_by_key(|(device, _)| *device);
            states.count_phases();
        }
        let mut engine = Engine {
            rules: Arc::new(rules),
            prometheus,
            clock,
            answers: Answers::default(),
            devices,
            devices_in_use: 0,
            states: by_job,
            default_state: JobState::default(),
            outbox,
            failing_queries: 0,
            unsaved: Vec::new(),
        };
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
        let device = self.devices.find(device)?;
        self.states.get(job)?.get(device, &self.default_state)
    }

    /// Replaces the rules (SIGHUP). Jobs that keep their name keep their
    /// states, even when their condition changed; states of jobs that are
    /// gone are dropped.
    pub fn replace_rules(&mut self, rules: RuleSet) {
        self.outbox.options.budgets = rules.budgets;
        self.rules = Arc::new(rules);
        self.forget_removed_jobs();
    }

    /// Replaces the Prometheus client and the SMS sender after a reload
    /// changed `[prometheus]` or `[sms]`. Sends under way finish with the
    /// sender they started with.
    pub fn replace_connections(
        &mut self,
        prometheus: Arc<PromClient>,
        sender: Arc<dyn Sender>,
        max_segments: usize,
    ) {
        self.prometheus = prometheus;
        self.outbox.sender = sender;
        self.outbox.options.max_segments = max_segments;
    }

    /// Drops the states of jobs no longer in the rules, in memory and in the
    /// journal (in the background), so a job added back later under the
    /// same name starts afresh.
    fn forget_removed_jobs(&mut self) {
        let names: BTreeSet<String> = self.rules.jobs.iter().map(|j| j.name.clone()).collect();
        self.states.retain(|job, _| names.contains(job));
        let journal = self.outbox.journal.clone();
        tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let mut journal = journal.lock().expect("journal lock poisoned");
            match journal.forget_states_except(&names) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    "forgot the saved states of {n} (job, device) pairs whose job was removed"
                ),
                Err(err) => tracing::warn!("cannot forget the states of removed jobs: {err}"),
            }
        });
    }

    /// Waits for every send in progress to finish (retries included).
    pub async fn finish_sends(&mut self) {
        self.outbox.finish_sends().await;
    }

    /// See [`Outbox::stop_retries`]; for shutdown.
    pub fn stop_retries(&self) {
        self.outbox.stop_retries();
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
        let mut answers = std::mem::take(&mut self.answers);
        answers.reset(&self.rules.device_key);
        self.query_all(&queries, &mut answers, &mut report).await;
        report.query_time = querying.elapsed();
        self.log_query_failures(&report);

        let rules = self.rules.clone();
        let mut dispatch: Vec<Due> = Vec::new();
        let mut changed: Vec<(usize, DeviceId)> = Vec::new();
        let mut index = Index::new(&answers);
        for (job_index, job) in rules.jobs.iter().enumerate().filter(|(_, j)| j.enabled) {
            let evaluation =
                JobEvaluation::new(&mut index, &job.condition, &job.devices, &job.guards);
            let states = match self.states.get_mut(&job.name) {
                Some(states) => states,
                None => self.states.entry(job.name.clone()).or_default(),
            };
            let mut events = Vec::new();
            let (evaluated, unknown) = advance_job(
                job,
                &evaluation,
                now,
                states,
                &self.default_state,
                &mut events,
                |device| changed.push((job_index, device)),
            );
            report.evaluations += evaluated;
            report.unknown += unknown as usize;
            if unknown > 0 {
                self.outbox.metrics.unknown.with_label_values(&[job.name.as_str()]).inc_by(unknown);
            }
            // Logs and actions in device order, as a reader expects them.
            events.sort_by(|a, b| self.devices.text(a.device).cmp(self.devices.text(b.device)));
            for event in events {
                let verdict = evaluation.device_verdict(event.present.then_some(event.device));
                let device = self.devices.text(event.device);
                if let Some(phase) = event.unknown_in {
                    let why = verdict
                        .unknown_because
                        .as_ref()
                        .map_or_else(|| "no data".to_string(), ToString::to_string);
                    tracing::debug!(
                        "job {:?}: device {}: unknown ({why}); state held as {phase}",
                        job.name,
                        describe(device, &verdict),
                    );
                }
                for transition in &event.transitions {
                    report.transitions += 1;
                    let value = verdict.values.first().map(|v| format!(" (value {})", v.value));
                    tracing::info!(
                        "job {:?}: device {}: {transition}{}",
                        job.name,
                        describe(device, &verdict),
                        value.unwrap_or_default()
                    );
                }
                if let Some((due, state_after, previous)) = event.action {
                    report.actions_due += 1;
                    let device = device.to_string();
                    dispatch.push(Due {
                        job: job_index,
                        device,
                        verdict,
                        due,
                        state_after,
                        previous,
                    });
                }
            }
        }
        drop(index);
        self.answers = answers;

        let journalling = Instant::now();
        if !dispatch.is_empty() {
            self.act(&rules, dispatch, &mut report).await;
        }

        // `changed` is in job order: look each job's states up once. Thousands
        // of pending states change every cycle (their time held grows).
        let mut to_save: Vec<(usize, String, JobState)> = Vec::with_capacity(changed.len());
        for devices in changed.chunk_by(|(a, _), (b, _)| a == b) {
            let job = devices[0].0;
            let Some(states) = self.states.get(&rules.jobs[job].name) else { continue };
            for &(_, device) in devices {
                if let Some(state) = states.get(device, &self.default_state) {
                    to_save.push((job, self.devices.text(device).to_string(), state.clone()));
                }
            }
        }
        self.add_unsaved(&rules, &mut to_save);
        if !to_save.is_empty() {
            let names = Arc::clone(&rules);
            let (result, to_save) = blocking(&self.outbox.journal, move |journal| {
                let named = to_save.iter().map(|(job, device, state)| {
                    (names.jobs[*job].name.as_str(), device.as_str(), state)
                });
                (journal.save_states(named), to_save)
            })
            .await;
            if let Err(err) = result {
                tracing::error!(
                    "cannot save {} job states: {err}; they are kept in memory and saved with the next cycle's",
                    to_save.len()
                );
                self.unsaved = to_save
                    .into_iter()
                    .map(|(job, device, _)| (rules.jobs[job].name.clone(), device))
                    .collect();
            }
        }
        report.journal_time = journalling.elapsed();
        self.forget_unused_devices();

        let counts = self.states.iter().map(|(job, states)| (job.as_str(), states.phases));
        self.outbox.metrics.record_cycle(started.elapsed(), now, counts);
        report
    }

    /// Forgets the devices no state refers to any more, once they are many
    /// (players replaced or moved over months), so the table stays the size
    /// of the fleet.
    fn forget_unused_devices(&mut self) {
        if self.devices.len() <= 2 * self.devices_in_use + 1024 {
            return;
        }
        let mut used = vec![false; self.devices.len()];
        let mut count = 0;
        for states in self.states.values() {
            let stored = states.stored.iter().map(|(device, _)| device);
            for device in states.present.iter().chain(stored) {
                if !std::mem::replace(&mut used[device.index()], true) {
                    count += 1;
                }
            }
        }
        self.devices_in_use = count;
        if self.devices.len() <= 2 * count + 1024 {
            return;
        }
        let renumbered = self.devices.retain(&used);
        let new = |device: &mut DeviceId| {
            *device = renumbered[device.index()].expect("a device in use is kept");
        };
        for states in self.states.values_mut() {
            states.present.iter_mut().for_each(new);
            states.stored.iter_mut().for_each(|(device, _)| new(device));
        }
    }

    /// Sends every query, [`QUERIES_IN_FLIGHT`] at a time, and reads each
    /// answer's series straight from its bytes into [`Answers`] as it
    /// arrives: no label map is built per series, and only a few answers'
    /// bytes ever exist at once.
    async fn query_all(
        &mut self,
        queries: &[String],
        answers: &mut Answers,
        report: &mut CycleReport,
    ) {
        // Polled here rather than spawned: each answer is received and
        // decoded by the thread that compacts it, so its bytes are freed
        // where they were allocated (spread over worker threads' allocator
        // arenas, answers left tens of megabytes of fragments behind).
        type Pending<'q> = Pin<
            Box<dyn Future<Output = (&'q String, Result<InstantAnswer, PromError>)> + Send + 'q>,
        >;
        let client: &PromClient = &self.prometheus;
        let mut waiting = queries.iter();
        let mut in_flight: Vec<Pending<'_>> = Vec::with_capacity(QUERIES_IN_FLIGHT);
        loop {
            while in_flight.len() < QUERIES_IN_FLIGHT {
                let Some(query) = waiting.next() else { break };
                in_flight.push(Box::pin(async move { (query, client.query_answer(query).await) }));
            }
            if in_flight.is_empty() {
                break;
            }
            let finished = std::future::poll_fn(|cx| {
                for at in 0..in_flight.len() {
                    // A query that panics is left out, as a panicking task
                    // would be: its answer is missing, nothing else is lost.
                    let polled = catch_unwind(AssertUnwindSafe(|| in_flight[at].as_mut().poll(cx)));
                    match polled {
                        Ok(Poll::Pending) => continue,
                        Ok(Poll::Ready(done)) => {
                            drop(in_flight.swap_remove(at));
                            return Poll::Ready(Some(done));
                        }
                        Err(_) => {
                            drop(in_flight.swap_remove(at));
                            return Poll::Ready(None);
                        }
                    }
                }
                Poll::Pending
            })
            .await;
            let Some((query, result)) = finished else { continue };
            let query = query.clone();
            self.outbox.metrics.queries.inc();
            let inserted = result.and_then(|answer| {
                answers.insert(query.clone(), &mut self.devices, |add| {
                    answer.for_each_sample(add).map(drop)
                })
            });
            if let Err(err) = inserted {
                self.outbox.metrics.query_failures.with_label_values(&[err.label()]).inc();
                report.failed_queries.push((query, err.to_string()));
            }
        }
        report.failed_queries.sort();
    }

    /// Logs a query outage when it starts or changes, and when it ends;
    /// cycles in between say it at debug level only.
    fn log_query_failures(&mut self, report: &CycleReport) {
        let failed = report.failed_queries.len();
        self.outbox.metrics.prometheus_up.set(i64::from(failed == 0));
        if failed == self.failing_queries {
            if let Some((query, why)) = report.failed_queries.first() {
                tracing::debug!("still failing: {failed} queries (first: {query:?}: {why})");
            }
            return;
        }
        match report.failed_queries.first() {
            Some((query, why)) => tracing::warn!(
                "{failed} of {} Prometheus queries failed (first: {query:?}: {why}); devices that depend on them are unknown: nothing advances and nothing is sent until they answer",
                report.queries
            ),
            None => tracing::info!("every Prometheus query answers again"),
        }
        self.failing_queries = failed;
    }

    /// Adds the states a failed save left unwritten to `to_save`, as they
    /// are now (a job or device gone since has nothing left to save).
    fn add_unsaved(&mut self, rules: &RuleSet, to_save: &mut Vec<(usize, String, JobState)>) {
        if self.unsaved.is_empty() {
            return;
        }
        let job_index: HashMap<&str, usize> =
            rules.jobs.iter().enumerate().map(|(index, job)| (job.name.as_str(), index)).collect();
        for (job, device) in std::mem::take(&mut self.unsaved) {
            let (Some(&index), Some(id)) =
                (job_index.get(job.as_str()), self.devices.find(&device))
            else {
                continue;
            };
            let state = self.states.get(&job).and_then(|s| s.get(id, &self.default_state));
            if let Some(state) = state {
                to_save.push((index, device, state.clone()));
            }
        }
    }

    /// Journals the messages of every action due this cycle in one batch
    /// (one commit, however many), then hands those that may leave to the
    /// sender: none leaves before all are committed.
    async fn act(&mut self, rules: &RuleSet, dispatch: Vec<Due>, report: &mut CycleReport) {
        let mut messages = Vec::with_capacity(dispatch.len());
        let mut actions = Vec::with_capacity(dispatch.len());
        for Due { job, device, verdict, due, state_after, previous } in dispatch {
            if let Some(message) =
                self.message(&rules.jobs[job], &device, &verdict, &due, state_after, report)
            {
                messages.push(message);
                actions.push((job, device, due, previous));
            }
        }
        if messages.is_empty() {
            return;
        }
        let outcomes: Vec<Option<Journalled>> = match self.outbox.journal_messages(messages).await {
            Ok(outcomes) => outcomes.into_iter().map(Some).collect(),
            Err(err) => {
                tracing::error!(
                    "cannot journal {} messages: {err}; nothing was sent; the actions stay due for the next cycle",
                    actions.len()
                );
                actions.iter().map(|_| None).collect()
            }
        };
        for ((job, device, due, previous), outcome) in actions.into_iter().zip(outcomes) {
            match outcome {
                Some(Ok(Ok(dispatch))) => {
                    report.sends_started += 1;
                    tracing::info!(
                        "{}: sending (episode {}, action {})",
                        dispatch.what,
                        due.episode,
                        due.attempt_in_episode
                    );
                    self.outbox.spawn_send(dispatch);
                    continue;
                }
                Some(Ok(Err(_suppressed))) => {
                    report.suppressed += 1;
                    continue;
                }
                Some(Err(err)) => {
                    tracing::error!(
                        "{err}; nothing was sent; the action stays due for the next cycle"
                    );
                }
                None => {}
            }
            // The journal could not record the message, so it was not sent:
            // step back so that the action is due again next cycle rather
            // than lost for the whole episode.
            let name = &rules.jobs[job].name;
            self.action_error(name, report);
            if let (Some(states), Some(id)) =
                (self.states.get_mut(name), self.devices.find(&device))
            {
                states.restore(id, previous);
            }
        }
    }

    /// Counts an action that could not be carried out, in the cycle's report
    /// and in `jobctl_action_errors_total`.
    fn action_error(&self, job: &str, report: &mut CycleReport) {
        report.action_errors += 1;
        self.outbox.metrics.action_errors.with_label_values(&[job]).inc();
    }

    /// The message an action due on `device` sends, with words for logs; or
    /// `None`, an action error logged, when it cannot become one.
    fn message(
        &mut self,
        job: &Job,
        device: &str,
        verdict: &DeviceVerdict,
        due: &state::ActionDue,
        state_after: JobState,
        report: &mut CycleReport,
    ) -> Option<(PlannedSend, String)> {
        let who = describe(device, verdict);
        let Some(key) = self.rules.device_key.key_of(&verdict.labels) else {
            self.action_error(&job.name, report);
            tracing::error!(
                "job {:?}: device {who}: cannot act: its labels lack the device key",
                job.name
            );
            return None;
        };
        let outgoing = match self.rules.outgoing(job, &key, &verdict.labels) {
            Ok(outgoing) => outgoing,
            Err(err) => {
                self.action_error(&job.name, report);
                tracing::error!("job {:?}: device {who}: cannot act: {err}", job.name);
                return None;
            }
        };
        let text = self.outbox.text_of(&outgoing.text, outgoing.socket.is_some());
        let socket = outgoing.socket.clone().unwrap_or_else(|| "-".to_string());
        let what = format!(
            "job {:?}: device {who}: {:?} to socket {socket} ({})",
            job.name,
            text,
            outgoing.phone.as_str()
        );
        let planned = PlannedSend {
            origin: Origin::Rule {
                job: job.name.clone(),
                device_key: device.to_string(),
                episode: due.episode,
                attempt: due.attempt_in_episode,
                trigger_value: due.trigger_value,
                state_after: crate::journal::EncodedState::new(&state_after),
            },
            socket,
            phone: outgoing.phone.as_str().to_string(),
            text,
        };
        Some((planned, what))
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
        let journal = Arc::new(Mutex::new(journal.with_clock(clock.clone())));
        Outbox {
            send_writes: Arc::new(SendWrites { journal: journal.clone(), queue: Mutex::default() }),
            journal,
            sender,
            clock,
            options,
            sends: tokio::task::JoinSet::new(),
            stopping: tokio::sync::watch::Sender::new(false),
            metrics: Arc::new(EngineMetrics::new()),
        }
    }

    /// Journals planned messages — each suppressed (budget, dry run) or about
    /// to leave — in one batch, so that they cost one commit, and returns
    /// for each its dispatch when it may leave, or the id it was journalled
    /// under when it may not, or why the journal did not take it. Budgets
    /// count the batch's earlier messages. The error is the batch's own: its
    /// commit failed and none of the messages was kept.
    async fn journal_messages(
        &self,
        messages: Vec<(PlannedSend, String)>,
    ) -> Result<Vec<Journalled>, JournalError> {
        let budgets = self.options.budgets;
        let mode = self.options.mode;
        let now = self.clock.now();
        let (planned, whats): (Vec<PlannedSend>, Vec<String>) = messages.into_iter().unzip();
        let outgoing: Vec<Message> = planned
            .iter()
            .map(|planned| Message { phone: planned.phone.clone(), text: planned.text.clone() })
            .collect();
        let recorded = blocking(&self.journal, move |journal| {
            journal.batch("journalling messages", |journal| {
                let record = |planned: &PlannedSend| {
                    let over = over_budget(journal, &budgets, &planned.socket, now)?;
                    match (over, mode) {
                        (Some(reason), _) => {
                            let why = Suppression::OverBudget { reason: reason.clone() };
                            let id = journal.record_suppressed(planned, &why)?;
                            Ok::<_, JournalError>((id, Some(format!("suppressed: {reason}"))))
                        }
                        (None, Mode::DryRun) => {
                            let id = journal.record_suppressed(planned, &Suppression::DryRun)?;
                            Ok((id, Some("dry run: not sent".to_string())))
                        }
                        (None, Mode::Live) => Ok((journal.begin_send(planned)?, None)),
                    }
                };
                planned.iter().map(record).collect::<Vec<_>>()
            })
        })
        .await?;
        let outcomes = recorded.into_iter().zip(whats).zip(outgoing);
        Ok(outcomes
            .map(|((recorded, what), message)| {
                let (id, suppressed) = recorded?;
                if let Some(why) = suppressed {
                    let label = if why.starts_with("dry") { "dry_run" } else { "suppressed" };
                    self.metrics.sms.with_label_values(&[label]).inc();
                    tracing::warn!("{what}: {why} (execution {id})");
                    return Ok(Err(id));
                }
                Ok(Ok(Dispatch { id, message, what }))
            })
            .collect())
    }

    fn spawn_send(&mut self, dispatch: Dispatch) {
        let sender = self.sender.clone();
        let writes = self.send_writes.clone();
        let retry = self.options.retry;
        let metrics = self.metrics.clone();
        let stopping = self.stopping.subscribe();
        self.sends.spawn(send_with_retries(sender, writes, retry, metrics, stopping, dispatch));
    }

    /// The text a message carries: sanitised, and for a notification to a
    /// person (not a socket command, which `check` holds to one segment)
    /// cut to `max_segments`. Rule actions and manual sends alike.
    fn text_of(&self, text: &str, to_socket: bool) -> String {
        let text = text::sanitize(text, false, MAX_TEXT_CHARS);
        if to_socket {
            text
        } else {
            text::fit_segments(&text, self.options.max_segments)
        }
    }

    /// Sends a message typed by a person (`jobctl send`, `test-rule --send`)
    /// through the same journal, budgets and retries, and waits for the
    /// outcome.
    /// `socket` is `None` for a notification to a person.
    pub async fn send_manual(
        &mut self,
        socket: Option<&str>,
        phone: &str,
        text: &str,
    ) -> Result<Execution, JournalError> {
        let text = self.text_of(text, socket.is_some());
        let socket = socket.unwrap_or("-");
        let planned = PlannedSend {
            origin: Origin::Manual,
            socket: socket.to_string(),
            phone: phone.to_string(),
            text: text.clone(),
        };
        let what = format!("manual: {text:?} to socket {socket} ({phone})");
        let journalled = self.journal_messages(vec![(planned, what)]).await?;
        let journalled = journalled.into_iter().next().expect("one outcome per message");
        let id = match journalled? {
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

    /// Retries not yet made are not made: a send task waiting for one ends
    /// now, its message journalled with its last attempt's outcome. Attempts
    /// under way go on (see [`Outbox::finish_sends`]).
    pub fn stop_retries(&self) {
        self.stopping.send_replace(true);
    }
}

/// Longest text a message may have: ten segments of GSM-7. Socket commands
/// are held to one segment at check time; this bounds notifications whose
/// labels came from metrics.
pub const MAX_TEXT_CHARS: usize = 1530;

/// Advances each (job, device) the engine knows by one evaluation: every
/// device in this cycle's answers with its verdict, and every other device
/// `states` holds with the verdict for absent devices. A device that left
/// the answers and never did anything is forgotten. Returns how many devices
/// were evaluated and how many of their verdicts were unknown; `changed` is
/// told each device whose state changed, `events` gets what must be logged
/// or done.
fn advance_job(
    job: &Job,
    evaluation: &JobEvaluation<'_>,
    now: jiff::Timestamp,
    states: &mut JobStates,
    default: &JobState,
    events: &mut Vec<DeviceEvent>,
    mut changed: impl FnMut(DeviceId),
) -> (usize, u64) {
    let timing = Timing { for_: job.hold_for, cooldown: job.cooldown, repeat: job.repeat };
    let in_window = job.schedule.as_ref().is_none_or(|s| s.allows(now));
    let answered = &evaluation.devices;
    let was_present = std::mem::replace(&mut states.present, Vec::with_capacity(answered.len()));
    let mut was_stored = std::mem::take(&mut states.stored);
    let (mut a, mut p, mut s) = (0, 0, 0);
    let (mut evaluated, mut unknown) = (0, 0);
    states.phases = [0; 4];
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
        let step = previous.advance(
            &timing,
            &state::Evaluation {
                now,
                verdict: verdict.verdict,
                value: verdict.first_value,
                in_window,
            },
        );
        let mut unknown_in = None;
        if verdict.verdict == Verdict::Unknown {
            unknown += 1;
            unknown_in = Some(previous.phase.name()).filter(|&p| p != PhaseName::Inactive);
        }
        if step.state != *previous {
            changed(device);
        }
        if unknown_in.is_some() || !step.transitions.is_empty() || step.action.is_some() {
            events.push(DeviceEvent {
                device,
                present: current.is_some(),
                unknown_in,
                transitions: step.transitions,
                action: step.action.map(|due| (due, step.state.clone(), previous.clone())),
            });
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

/// What a send task journals as it goes.
enum SendWrite {
    /// The message leaves again (a retry, or the next backend):
    /// [`Journal::mark_sending`].
    Sending(ExecutionId),
    /// One backend's attempt ended: [`Journal::finish_send`].
    Outcome(ExecutionId, SendResult),
}

/// A queued [`SendWrite`] and where to say how it went.
type QueuedWrite = (SendWrite, tokio::sync::oneshot::Sender<Result<(), Arc<JournalError>>>);

/// The send tasks' journal writes, committed in groups.
///
/// Each commit waits for the disk, and the messages of a busy cycle are
/// sent at about the same time, so their outcomes arrive together: written
/// one by one, dozens of commits would queue on the journal's lock, and the
/// next cycle's state save behind them. A task therefore queues its write
/// and waits until it is committed; whichever task gets the journal first
/// commits every write queued by then in one batch. A task still goes on
/// only once its write is durable.
struct SendWrites {
    journal: Arc<Mutex<Journal>>,
    queue: Mutex<Vec<QueuedWrite>>,
}

impl SendWrites {
    /// Journals `write`, returning once it is committed.
    async fn write(self: &Arc<Self>, write: SendWrite) -> Result<(), Arc<JournalError>> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.queue.lock().expect("send write queue poisoned").push((write, answer));
        let writes = self.clone();
        blocking(&self.journal, move |journal| writes.commit_queued(journal)).await;
        // Our write was queued before this task took the journal, so it was
        // committed either just now or by a task that held the journal
        // before, and answered before letting it go.
        answered.await.expect("a queued write is always answered")
    }

    /// Commits every queued write in one batch, each answered with how it
    /// went. Called holding the journal.
    fn commit_queued(&self, journal: &mut Journal) {
        let queued = std::mem::take(&mut *self.queue.lock().expect("send write queue poisoned"));
        if queued.is_empty() {
            return;
        }
        let (writes, answers): (Vec<SendWrite>, Vec<_>) = queued.into_iter().unzip();
        let results = journal.batch("recording send outcomes", |journal| {
            let write = |write: &SendWrite| match write {
                SendWrite::Sending(id) => journal.mark_sending(*id),
                SendWrite::Outcome(id, result) => journal.finish_send(*id, result),
            };
            writes.iter().map(write).collect::<Vec<_>>()
        });
        // A task that is gone no longer needs its answer.
        match results {
            Ok(results) => {
                for (answer, result) in answers.into_iter().zip(results) {
                    let _ = answer.send(result.map_err(Arc::new));
                }
            }
            Err(err) => {
                let err = Arc::new(err);
                for answer in answers {
                    let _ = answer.send(Err(err.clone()));
                }
            }
        }
    }
}

async fn send_with_retries(
    sender: Arc<dyn Sender>,
    writes: Arc<SendWrites>,
    retry: SendRetry,
    metrics: Arc<EngineMetrics>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    dispatch: Dispatch,
) {
    let Dispatch { id, message, what } = dispatch;
    let attempts = retry.attempts.max(1);
    for attempt in 1..=attempts {
        if attempt > 1 {
            let delay = retry.first_delay.saturating_mul(1 << (attempt - 2).min(16));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stopping.wait_for(|&stop| stop) => {
                    tracing::warn!(
                        "{what}: retry {attempt} not made: jobctl is stopping; the journal keeps the last attempt's outcome"
                    );
                    return;
                }
            }
            if let Err(err) = writes.write(SendWrite::Sending(id)).await {
                tracing::error!("{what}: cannot journal retry {attempt}: {err}; not retried");
                return;
            }
        }
        // Each backend tried (one, or several with failover) is one attempt
        // row in the journal, under the backend's own name.
        let mut chain = AttemptChain::new(sender.as_ref(), &message);
        while let Some(tried) = chain.next_attempt().await {
            let label = match &tried.outcome {
                Ok(_) => "sent",
                Err(err) => err.label(),
            };
            metrics.sms.with_label_values(&[label]).inc();
            let result = tried.to_send_result();
            if let Err(err) = writes.write(SendWrite::Outcome(id, result)).await {
                tracing::error!("{what}: cannot journal the outcome of execution {id}: {err}");
            }
            if let (Err(err), Some(next)) = (&tried.outcome, chain.next_backend()) {
                tracing::warn!("{what}: {}: {err}; handing it to {next}", tried.backend);
                if let Err(err) = writes.write(SendWrite::Sending(id)).await {
                    tracing::error!(
                        "{what}: cannot journal the hand-over: {err}; not sent further"
                    );
                    return;
                }
            }
        }
        let outcome = chain.outcome().expect("a chain makes at least one attempt");
        let done = !matches!(outcome, Err(SendError::Definite { .. })) || attempt == attempts;
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
    /// Per job, which phases `devices` has a series for.
    devices_shown: Mutex<HashMap<String, [bool; 4]>>,
    cycle_duration: prometheus::Gauge,
    last_cycle: prometheus::Gauge,
    prometheus_up: prometheus::IntGauge,
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
        let prometheus_up = prometheus::IntGauge::new(
            "jobctl_prometheus_up",
            "Whether every Prometheus query of the last cycle answered (1) or not (0).",
        )
        .expect("valid");
        register(Box::new(prometheus_up.clone()));
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
            devices_shown: Mutex::new(HashMap::new()),
            cycle_duration,
            last_cycle,
            prometheus_up,
        }
    }

    /// Records a cycle; `counts` are each job's (job, device) pairs per
    /// phase (in the order of [`PHASES`]). A (job, phase) with none has no
    /// series.
    fn record_cycle<'j>(
        &self,
        took: Duration,
        now: jiff::Timestamp,
        counts: impl Iterator<Item = (&'j str, [u64; 4])>,
    ) {
        self.cycles.inc();
        self.cycle_duration.set(took.as_secs_f64());
        self.last_cycle.set(now.as_millisecond() as f64 / 1000.0);
        // Set and removed child by child rather than reset and made anew:
        // a thousand jobs would re-create thousands of series every cycle.
        let mut shown = self.devices_shown.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut seen = HashSet::with_capacity(shown.len());
        for (job, counts) in counts {
            seen.insert(job);
            let before = match shown.get_mut(job) {
                Some(before) => before,
                None => shown.entry(job.to_string()).or_default(),
            };
            for ((phase, count), shown) in PHASES.iter().zip(counts).zip(before) {
                if count > 0 {
                    self.devices.with_label_values(&[job, phase.as_str()]).set(count as f64);
                } else if *shown {
                    let _ = self.devices.remove_label_values(&[job, phase.as_str()]);
                }
                *shown = count > 0;
            }
        }
        shown.retain(|job, before| {
            if seen.contains(job.as_str()) {
                return true;
            }
            for (phase, shown) in PHASES.iter().zip(before) {
                if *shown {
                    let _ = self.devices.remove_label_values(&[job, phase.as_str()]);
                }
            }
            false
        });
    }

    /// Whether every query of the last cycle answered.
    pub fn prometheus_up(&self) -> bool {
        self.prometheus_up.get() == 1
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::journal::{ExecutionStatus, HistoryFilter};
    use crate::rules::Budgets;
    use crate::sms::log::LogSender;

    fn outbox(budgets: Budgets) -> Outbox {
        Outbox::new(
            Journal::open_in_memory().unwrap(),
            Arc::new(LogSender::new()),
            Arc::new(ManualClock::at_unix_seconds(1_750_057_200)),
            EngineOptions { budgets, ..EngineOptions::default() },
        )
    }

    fn message(socket: &str) -> (PlannedSend, String) {
        let planned = PlannedSend {
            origin: Origin::Manual,
            socket: socket.to_string(),
            phone: "+79991234567".to_string(),
            text: "#01#0#".to_string(),
        };
        (planned, format!("to {socket}"))
    }

    fn statuses(journal: &Mutex<Journal>) -> Vec<ExecutionStatus> {
        let journal = journal.lock().unwrap();
        let mut history = journal.history(&HistoryFilter::default()).unwrap();
        history.reverse();
        history.iter().map(|execution| execution.status).collect()
    }

    /// A gateway that is always down.
    #[derive(Debug)]
    struct Down;

    impl Sender for Down {
        fn name(&self) -> &str {
            "down"
        }

        fn send<'a>(&'a self, _message: &'a Message) -> crate::sms::SendFuture<'a> {
            Box::pin(async { Err(SendError::Definite { reason: "connection refused".into() }) })
        }
    }

    #[tokio::test]
    async fn a_manual_notification_is_cut_to_max_segments_as_a_rule_action_would_be() {
        let mut outbox = outbox(Budgets::default());
        let long = "Lobby player offline. ".repeat(20);

        let to_person = outbox.send_manual(None, "+79991234567", &long).await.unwrap();
        let to_socket = outbox.send_manual(Some("lobby"), "+79991234567", "#01#0#").await.unwrap();

        use crate::sms::text::{segments, TRUNCATION_MARK};
        assert_eq!(segments(&to_person.text).segments, 1, "{}", to_person.text);
        let kept = to_person.text.strip_suffix(TRUNCATION_MARK).expect("cut, and marked so");
        assert!(long.starts_with(kept), "{}", to_person.text);
        assert_eq!(to_socket.text, "#01#0#");
    }

    #[tokio::test]
    async fn stopping_drops_the_retries_not_yet_made() {
        let retry = SendRetry { attempts: 3, first_delay: Duration::from_secs(3600) };
        let mut outbox = Outbox::new(
            Journal::open_in_memory().unwrap(),
            Arc::new(Down),
            Arc::new(ManualClock::at_unix_seconds(1_750_057_200)),
            EngineOptions { retry, ..EngineOptions::default() },
        );
        let outcomes = outbox.journal_messages(vec![message("lobby")]).await.unwrap();
        let Some(Ok(Ok(dispatch))) = outcomes.into_iter().next() else { panic!("not dispatched") };
        outbox.spawn_send(dispatch);
        // The first attempt fails; the task then waits an hour to retry.
        let deadline = Instant::now() + Duration::from_secs(10);
        while statuses(&outbox.journal) != [ExecutionStatus::Failed] {
            assert!(Instant::now() < deadline, "the first attempt was never journalled");
            tokio::task::yield_now().await;
        }

        outbox.stop_retries();
        let finished = tokio::time::timeout(Duration::from_secs(10), outbox.finish_sends()).await;

        assert!(finished.is_ok(), "a send task still waits for its retry");
        assert_eq!(statuses(&outbox.journal), [ExecutionStatus::Failed]);
    }

    #[tokio::test]
    async fn a_batch_of_messages_counts_its_own_against_the_budgets() {
        let outbox = outbox(Budgets { global_day: Some(2), ..Budgets::default() });
        let messages = ["lobby", "hall", "stage"].map(message).to_vec();
        let outcomes = outbox.journal_messages(messages).await.unwrap();
        let leaving: Vec<bool> = outcomes.iter().map(|o| matches!(o, Ok(Ok(_)))).collect();
        assert_eq!(leaving, [true, true, false]);
        use ExecutionStatus::{Sending, Suppressed};
        assert_eq!(statuses(&outbox.journal), [Sending, Sending, Suppressed]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn send_writes_arriving_together_are_each_committed_and_answered() {
        let outbox = outbox(Budgets::default());
        let messages = (0..40).map(|i| message(&format!("socket {i}"))).collect();
        let outcomes = outbox.journal_messages(messages).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for outcome in outcomes {
            let Ok(Ok(dispatch)) = outcome else { panic!("not journalled to leave") };
            let writes = outbox.send_writes.clone();
            let result = SendResult::Sent { backend: "log".to_string(), reference: None };
            tasks.spawn(async move { writes.write(SendWrite::Outcome(dispatch.id, result)).await });
        }
        let results = tasks.join_all().await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(statuses(&outbox.journal), vec![ExecutionStatus::Sent; 40]);

        // A write the journal refuses is answered with the reason.
        let again = SendResult::Sent { backend: "log".to_string(), reference: None };
        let refused = outbox.send_writes.write(SendWrite::Outcome(ExecutionId(1), again));
        let refused = refused.await.unwrap_err();
        assert!(matches!(*refused, JournalError::WrongStatus { .. }), "{refused:?}");
    }
}
