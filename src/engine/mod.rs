//! jobctl's evaluation cycle: ask the source (Prometheus, or the exporters
//! scraped directly), advance every (job, device), journal and send what is
//! due.
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
//!    towards an action, and an action a silence matches stays due
//!    (`silences`: read from the journal when a `jobctl silence` command
//!    changed it, each hold journalled once), as does every action of a job
//!    in a mass outage (`mass_outage`: decided per job from the cycle's
//!    verdicts before its states advance, escalated once);
//! 3. hands the message of every action due to the [`Outbox`], which
//!    journals them all *before* any of them leaves, in one transaction (one
//!    commit to disk, not one per message: a busy cycle has dozens), then
//!    delivers each in a task of its own (a slow gateway or a retry never
//!    holds up other jobs or the next cycle), and records each attempt's
//!    outcome;
//! 4. dates the onset of each device that turned pending from Prometheus's
//!    history (`onset`: `for` counts from when the data shows the device
//!    went bad, not from when this cycle looked);
//! 5. saves every state that changed in one transaction, and only those: a
//!    state changes when something happens to it, not as time passes (a
//!    pending state's growing time held is not journalled, see
//!    [`crate::rules::state`]), so a cycle in which nothing happened writes
//!    nothing and starts no transaction.
//!
//! Between cycles, [`Engine::wake`] evaluates a job alone (only its
//! queries) at the moment one of its pending devices will have held `for`
//! ([`Engine::until_wake`] says when), so an action does not wait for the
//! next cycle.
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
//! twice; a message whose backend had started its I/O is marked uncertain
//! at the next start rather than re-sent, and one still waiting for its
//! backend (`planned`) is sent then.
//!
//! The rooms: this file holds the [`Engine`], its cycle and its queries;
//! `states` the sparse per-job states and how one evaluation advances them;
//! `act` how the actions due become messages (one per socket, held ones
//! kept due); `outbox` everything between "an action is due" and "its outcome is
//! journalled" (budgets, retries, one journal row per attempt, the channels
//! a message goes over); `silences` the silences in force and the actions
//! they hold; `onset` when a new pending device turned bad, from
//! Prometheus's history; `closed_loop` what happens between evaluating and acting to
//! close the loop (limits checked against the journal, the results of
//! verifications recorded); `mass_outage` the jobs whose devices went bad
//! together, whose socket commands are held and escalated once;
//! `escalation` what a person should hear about and the messages that tell
//! them (escalations, action notices); `webhook` the webhook channel's
//! backend; `metrics` jobctl's own metrics; `source` where the answers come
//! from (Prometheus, or a scrape of the exporters: the only thing that
//! differs between the two modes).

mod act;
mod closed_loop;
mod escalation;
mod mass_outage;
mod metrics;
mod onset;
mod outbox;
pub mod replay;
mod silences;
mod source;
mod states;
mod webhook;

pub use crate::rules::Budgets;
pub use metrics::EngineMetrics;
pub use outbox::{EngineOptions, Mode, Outbox, SendRetry, MAX_TEXT_CHARS};
pub use source::Source;
// What `jobctl explain` asks the engine's own rules about one (job, device).
pub(crate) use closed_loop::{limit_refusal, limit_since, LimitCount};
pub(crate) use outbox::over_budget;
pub(crate) use silences::silence_holding;
pub(crate) use states::{in_window, timing};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::error::with_causes;
use crate::journal::{Journal, JournalError};
use crate::prometheus_api::{InstantAnswer, PromClient, PromError};
use crate::rules::condition::{with_freshness, Answers, Index, JobEvaluation, Plan, Quick};
use crate::rules::device::{DeviceId, DeviceTable};
use crate::rules::state::{self, JobState};
use crate::rules::{DeviceVerdict, Job, RuleSet};
use crate::sms::{text, Sender};
use mass_outage::{MassOutages, Share};
use outbox::blocking;
use silences::Silences;
use states::{advance_job, JobStates};

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
    /// Range queries sent to date when newly pending devices became bad
    /// (counted in `query_time` too).
    pub onset_queries: usize,
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
    /// Executions journalled without sending: dry run, or over a budget
    /// (an action a budget holds stays due, and is journalled the first
    /// cycle it is held only).
    pub suppressed: usize,
    /// Actions that could not become an SMS (no socket for the device…),
    /// each counted in the first cycle of its episode only, and messages the
    /// journal could not take.
    pub action_errors: usize,
    /// Actions refused by their job's `limit`: the episode gave up.
    pub gave_up: usize,
    /// (job, device) pairs whose state the journal could not save this
    /// cycle, kept in memory to be saved with the next cycle's (one each).
    pub unsaved_states: usize,
}

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

/// Queries sent at once, at most. Prometheus evaluates 20 queries at a
/// time by default (`--query.max-concurrency`) and queues the others.
const QUERIES_IN_FLIGHT: usize = 4;

/// How many bytes of answers may be in flight at once, as the last cycle's
/// answers to the same queries tell. Each query in flight holds its whole
/// answer until it is read, and a fleet-wide answer is megabytes: four of
/// them at once made most of jobctl's peak memory. So small answers (a
/// platform's devices) go [`QUERIES_IN_FLIGHT`] at a time, and a large one
/// (estimated at this or more) goes alone; a query never answered before is
/// taken as large. In `cargo bench --bench jobctl` (10,000 devices, answers
/// up to 2 MB), peak RSS was 51.4 MB with four queries in flight whatever
/// their size, 47.6 MB with two and 45.4 MB with one; see the README for
/// the figures with this budget.
const ANSWER_BYTES_IN_FLIGHT: usize = 1 << 20;

/// Whether one more query, whose answer is estimated at `bytes`, may be
/// sent while `count` queries with `in_flight` bytes of answers are: always
/// when none is, else within both [`QUERIES_IN_FLIGHT`] and
/// [`ANSWER_BYTES_IN_FLIGHT`].
fn admits(count: usize, in_flight: usize, bytes: usize) -> bool {
    count == 0 || (count < QUERIES_IN_FLIGHT && in_flight + bytes <= ANSWER_BYTES_IN_FLIGHT)
}

/// The evaluation engine of `jobctl run`.
pub struct Engine {
    rules: Arc<RuleSet>,
    /// The distinct queries of the rules' enabled jobs
    /// ([`RuleSet::queries`]), built when the rules are set rather than
    /// every cycle.
    queries: Vec<String>,
    /// Where the answers come from.
    source: Source,
    /// Each query's answer size (bytes) at its last answer, which bounds
    /// the answers in flight ([`ANSWER_BYTES_IN_FLIGHT`]).
    answer_bytes: HashMap<String, usize>,
    /// With a scrape source, the targets failing at the last scrape.
    targets: source::TargetHealth,
    /// What each job (by index in the rules) reads from a cycle's answers,
    /// also worked out when the rules are set.
    plan: Arc<Plan>,
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
    /// The outbox's journal, where the states are saved too.
    journal: Arc<Mutex<Journal>>,
    /// The outbox's metrics, which the cycle records into too.
    metrics: Arc<EngineMetrics>,
    /// Queries that failed last cycle, so that an outage is logged when it
    /// starts and ends rather than every cycle.
    failing_queries: usize,
    /// A dry run (`jobctl run --dry-run`): states are kept in memory only,
    /// and nothing a live run reads is written to the journal.
    dry_run: bool,
    /// (job, device) whose state the last save could not write: saved with
    /// the next cycle's changes, whether or not they change again. A set:
    /// one pending save per pair, however many saves fail in a row, so it
    /// is never larger than the pairs with a state.
    unsaved: BTreeSet<(String, String)>,
    /// The silences in force, reread when another process changed them.
    silences: Silences,
    /// Results of verifications the journal could not take, recorded with
    /// the next cycle's.
    unrecorded_results: Vec<closed_loop::Conclusion>,
    /// (job, socket) → when the job last gave the socket a command. A
    /// socket gets one command per cooldown of a job, however many of its
    /// devices fire: the devices due together share one message, and an
    /// episode's first action on another of its devices waits for the
    /// cooldown. Read from the journal at start.
    socket_commands: HashMap<(String, String), jiff::Timestamp>,
    /// (job, device) → the episode whose action was last found unable to
    /// become a message (no socket for the device…), so that this is said
    /// once per episode, not once a cycle. A pair is dropped once it is no
    /// longer firing, so this stays as small as the pairs it is about.
    cannot_act_said: HashMap<(String, String), u64>,
    /// The jobs in a mass outage, and what of them is still to journal.
    outages: MassOutages,
    /// Escalations found this cycle, sent once its actions are journalled.
    escalations: Vec<escalation::Escalation>,
}

impl Engine {
    /// Loads the saved states, settles sends a previous run left in flight
    /// (those whose I/O had started become uncertain and are never re-sent;
    /// those still planned are sent now), and is ready to cycle.
    pub async fn start(
        rules: RuleSet,
        source: impl Into<Source>,
        journal: Journal,
        sender: Arc<dyn Sender>,
        clock: Arc<dyn Clock>,
        options: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let dry_run = options.mode == Mode::DryRun;
        let mut outbox = Outbox::new(journal, sender, clock.clone(), options);
        outbox.set_webhooks(&rules);
        // A dry run leaves a live run's unfinished sends to the live run.
        if !dry_run {
            outbox.recover_in_flight().await?;
        }
        let journal = outbox.journal();
        let (states, commands) = blocking(&journal, |journal| {
            Ok::<_, JournalError>((journal.load_states()?, journal.last_socket_commands()?))
        })
        .await?;
        let socket_commands =
            commands.into_iter().map(|(job, socket, at)| ((job, socket), at)).collect();
        let outages = MassOutages::load(&journal).await;
        let mut devices = DeviceTable::default();
        let mut by_job: HashMap<String, Vec<(DeviceId, JobState)>> = HashMap::new();
        for ((job, device), state) in states {
            let device = devices.intern_text(&device);
            by_job.entry(job).or_default().push((device, state));
        }
        let by_job = by_job.into_iter().map(|(job, saved)| (job, JobStates::loaded(saved)));
        let mut engine = Engine {
            queries: with_freshness(rules.queries()),
            answer_bytes: HashMap::new(),
            plan: Arc::new(plan_of(&rules)),
            rules: Arc::new(rules),
            source: source.into(),
            targets: source::TargetHealth::default(),
            clock,
            answers: Answers::default(),
            devices,
            devices_in_use: 0,
            states: by_job.collect(),
            default_state: JobState::default(),
            metrics: outbox.metrics(),
            outbox,
            journal,
            failing_queries: 0,
            dry_run,
            unsaved: BTreeSet::new(),
            silences: Silences::default(),
            unrecorded_results: Vec::new(),
            socket_commands,
            cannot_act_said: HashMap::new(),
            outages,
            escalations: Vec::new(),
        };
        engine.forget_removed_jobs();
        Ok(engine)
    }

    /// What `systemctl status` shows of the daemon: `41 jobs, last cycle 3
    /// s ago, 2 firing`.
    pub fn status_line(&self) -> String {
        let jobs = self.rules.jobs.iter().filter(|job| job.enabled).count();
        let firing = states::PHASES.iter().position(|&p| p == state::PhaseName::Firing);
        let firing: u64 = firing.map_or(0, |at| self.states.values().map(|s| s.phases()[at]).sum());
        let last = match self.metrics.seconds_since_last_cycle() {
            Some(age) => format!("last cycle {age:.0} s ago"),
            None => "no cycle yet".to_string(),
        };
        let jobs = if jobs == 1 { "1 job".to_string() } else { format!("{jobs} jobs") };
        format!("{jobs}, {last}, {firing} firing")
    }

    /// The rules in force.
    pub(crate) fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// The engine's metrics registry (served on `/metrics` by `jobctl run --listen`).
    pub(crate) fn metrics(&self) -> Arc<EngineMetrics> {
        self.metrics.clone()
    }

    /// jobctl's own metrics in the text format, as `/metrics` serves them.
    pub fn metrics_text(&self) -> String {
        String::from_utf8(self.metrics.encode()).expect("the text format is UTF-8")
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
        self.outbox.set_budgets(rules.budgets);
        self.outbox.set_webhooks(&rules);
        self.queries = with_freshness(rules.queries());
        let queries: HashSet<&String> = self.queries.iter().collect();
        self.answer_bytes.retain(|query, _| queries.contains(query));
        self.plan = Arc::new(plan_of(&rules));
        self.rules = Arc::new(rules);
        self.forget_removed_jobs();
    }

    /// Replaces the source and the SMS sender after a reload changed
    /// `[prometheus]`, `[source]` or `[sms]`. Sends under way finish with
    /// the sender they started with.
    pub(crate) fn replace_connections(
        &mut self,
        source: Source,
        sender: Arc<dyn Sender>,
        max_segments: usize,
    ) {
        if matches!(source, Source::Prometheus(_)) {
            self.targets.forget_all(&self.metrics);
        }
        self.source = source;
        self.outbox.replace_sms(sender, max_segments);
    }

    /// Drops the states of jobs no longer in the rules, in memory and in the
    /// journal (in the background), so a job added back later under the
    /// same name starts afresh.
    fn forget_removed_jobs(&mut self) {
        let names: BTreeSet<String> = self.rules.jobs.iter().map(|j| j.name.clone()).collect();
        self.states.retain(|job, _| names.contains(job));
        let running = self.rules.jobs.iter().filter(|j| j.enabled).map(|j| j.name.as_str());
        self.outages.keep_jobs(&running.collect(), self.clock.now(), &self.metrics);
        if self.dry_run {
            return;
        }
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let mut journal = journal.lock().expect("journal lock poisoned");
            match journal.forget_states_except(&names) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    "forgot the saved states of {n} (job, device) pairs whose job was removed"
                ),
                Err(err) => {
                    tracing::warn!(
                        "cannot forget the states of removed jobs: {}",
                        with_causes(&err)
                    );
                }
            }
        });
    }

    /// Waits for every send in progress to finish (retries included).
    pub async fn finish_sends(&mut self) {
        self.outbox.finish_sends().await;
    }

    /// Journals, as the daemon stops, the time each pending run of true
    /// evaluations has held up to its latest evaluation, so that the next
    /// start carries it on: cycles do not journal a run's growing time, and
    /// only a crash loses it (see [`crate::rules::state`]). Call it after
    /// the last cycle; a dry run writes nothing.
    pub async fn stop(&mut self) {
        if self.dry_run {
            return;
        }
        let mut folded: Vec<(String, String, JobState)> = Vec::new();
        for (job, states) in &mut self.states {
            for (device, state) in states.fold_runs() {
                folded.push((job.clone(), self.devices.text(device).to_string(), state));
            }
        }
        if folded.is_empty() {
            return;
        }
        let count = folded.len();
        let result = blocking(&self.journal, move |journal| {
            let named =
                folded.iter().map(|(job, device, state)| (job.as_str(), device.as_str(), state));
            journal.save_states(named)
        })
        .await;
        match result {
            Ok(()) => tracing::info!("journalled the time held by {count} pending (job, device) pairs"),
            Err(err) => tracing::warn!(
                "cannot journal the time held by {count} pending (job, device) pairs: {}; their current runs will start afresh at the next start",
                with_causes(&err)
            ),
        }
    }

    /// See [`Outbox::stop_retries`]; for shutdown.
    pub(crate) fn stop_retries(&self) {
        self.outbox.stop_retries();
    }

    /// Runs one evaluation cycle.
    pub async fn cycle(&mut self) -> CycleReport {
        self.metrics.cycle_started();
        self.evaluate(None).await
    }

    /// How long until a pending (job, device) will have held its job's
    /// `for` (zero when that moment has passed), if one is counting: when
    /// to [`Engine::wake`] rather than wait for the next cycle.
    pub fn until_wake(&self) -> Option<Duration> {
        let enabled = self.rules.jobs.iter().filter(|job| job.enabled);
        let states = enabled.filter_map(|job| self.states.get(&job.name));
        let due = states.filter_map(JobStates::for_elapses_at).min()?;
        Some(crate::clock::elapsed(self.clock.now(), due))
    }

    /// Evaluates, between two cycles, the jobs one of whose pending devices
    /// has by now held `for`, with only those jobs' queries: a job fires
    /// when `for` has elapsed, not at the first cycle after. Otherwise as a
    /// cycle: every device of those jobs advances, and what falls due is
    /// sent.
    pub async fn wake(&mut self) -> CycleReport {
        let now = self.clock.now();
        let due: BTreeSet<usize> = (self.rules.jobs.iter().enumerate())
            .filter(|(_, job)| job.enabled)
            .filter(|(_, job)| {
                let states = self.states.get(&job.name);
                states.and_then(JobStates::for_elapses_at).is_some_and(|at| at <= now)
            })
            .map(|(index, _)| index)
            .collect();
        if due.is_empty() {
            return CycleReport::default();
        }
        self.metrics.woke();
        self.evaluate(Some(&due)).await
    }

    /// Evaluates the enabled jobs (those of `only`, when given) once, sends
    /// what falls due and saves what changed.
    async fn evaluate(&mut self, only: Option<&BTreeSet<usize>>) -> CycleReport {
        let started = Instant::now();
        let now = self.clock.now();
        let mut report = CycleReport::default();
        // Reap sends that finished since the last cycle.
        self.outbox.reap_finished();

        // A cycle sends the queries built when the rules were set; a
        // wake-up only those of the jobs it evaluates.
        let queries = match only {
            None => std::mem::take(&mut self.queries),
            Some(jobs) => {
                let mut queries: Vec<String> =
                    jobs.iter().flat_map(|&job| self.rules.jobs[job].queries()).collect();
                queries.sort();
                queries.dedup();
                with_freshness(queries)
            }
        };
        report.queries = queries.len();
        let querying = Instant::now();
        let mut answers = std::mem::take(&mut self.answers);
        answers.reset(&self.rules.device_key);
        self.query_all(&queries, &mut answers, &mut report).await;
        if only.is_none() {
            self.queries = queries;
        }
        report.query_time = querying.elapsed();
        self.log_query_failures(&report);

        self.silences.refresh(&self.journal, now).await;
        self.metrics.set_silences_active(self.silences.active_count(now));

        let rules = self.rules.clone();
        let mut dispatch: Vec<Due> = Vec::new();
        let mut concluded: Vec<closed_loop::Conclusion> = Vec::new();
        let mut changed: Vec<(usize, DeviceId)> = Vec::new();
        let mut silenced = Vec::new();
        let plan = Arc::clone(&self.plan);
        let mut index = Index::new(&answers, &plan);
        let mut newly_pending: Vec<onset::NewlyPending> = Vec::new();
        let chosen = |index: &usize| only.is_none_or(|jobs| jobs.contains(index));
        for (job_index, job) in
            rules.jobs.iter().enumerate().filter(|(i, j)| j.enabled && chosen(i))
        {
            let mut evaluation =
                JobEvaluation::new(&mut index, job_index, &job.condition, &job.guards);
            if job.only_powered {
                let states = self.states.get(&job.name);
                let devices = &self.devices;
                leave_unpowered_out(&rules, devices, states, &self.default_state, &mut evaluation);
            }
            let job_silences = self.silences.for_job(&job.name, now);
            let devices = &self.devices;
            let silence = |device: DeviceId| {
                job_silences.holding_device(&rules, devices, &evaluation, device)
            };
            let outage = self.outages.assess(job, Share::of(&evaluation), now, &self.metrics);
            let states = match self.states.get_mut(&job.name) {
                Some(states) => states,
                None => self.states.entry(job.name.clone()).or_default(),
            };
            let previous_at = states.evaluated_at();
            let mut events = Vec::new();
            let (evaluated, unknown) = advance_job(
                job,
                &evaluation,
                now,
                states,
                &self.default_state,
                &mut events,
                |device| changed.push((job_index, device)),
                silence,
                outage,
            );
            report.evaluations += evaluated;
            report.unknown += unknown as usize;
            if unknown > 0 {
                self.metrics.unknown_verdicts(&job.name, unknown);
            }
            if let Some(newly) = onset::NewlyPending::of(job_index, job, previous_at, &events) {
                newly_pending.push(newly);
            }
            // Logs and actions in device order, as a reader expects them.
            events.sort_by(|a, b| self.devices.text(a.device).cmp(self.devices.text(b.device)));
            for event in events {
                // A held action only (cooldown, window) is for the replay's
                // timeline; a live cycle has nothing to log or do about it.
                if event.only_held() {
                    continue;
                }
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
                if let Some(held) = event.silenced {
                    silenced.push((job.name.clone(), device.to_string(), held));
                }
                if let Some(action) = event.outage_held {
                    let who = describe(device, &verdict);
                    self.outages.held(&job.name, device, &who, action, &self.metrics);
                }
                if let Some(done) = event.concluded {
                    concluded.push(closed_loop::Conclusion {
                        job: job.name.clone(),
                        device: device.to_string(),
                        who: describe(device, &verdict),
                        labels: verdict.labels.clone(),
                        concluded: done,
                    });
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
        if !silenced.is_empty() {
            let dry_run = self.dry_run;
            self.silences.record(silenced, &self.journal, &self.metrics, dry_run).await;
        }
        let outages = self.outages.record(&self.journal, &self.metrics, self.dry_run).await;
        self.escalations.extend(outages);

        let journalling = Instant::now();
        // An action due and then held back (no socket for the device, its
        // socket commanded within the cooldown, a budget spent…) leaves its
        // state as it was, cycle after cycle: nothing to save then.
        let before_due: HashMap<(usize, DeviceId), JobState> = dispatch
            .iter()
            .filter_map(|due| {
                let id = self.devices.find(&due.device)?;
                Some(((due.job, id), due.previous.clone()))
            })
            .collect();
        self.close_loop(&rules, &mut dispatch, concluded, now, &mut report).await;
        let mut notices = Vec::new();
        if !dispatch.is_empty() {
            notices = self.act(&rules, dispatch, &mut report).await;
        }
        let escalations = std::mem::take(&mut self.escalations);
        if !escalations.is_empty() || !notices.is_empty() {
            self.notify(&rules, escalations, notices, now).await;
        }

        if !newly_pending.is_empty() {
            self.date_onsets(&rules, newly_pending, now, &mut report).await;
        }

        // `changed` is in job order: look each job's states up once. Most
        // cycles, few states change (pending ones only when a run starts or
        // ends), but the first after a start may change thousands.
        let mut to_save: Vec<(usize, String, JobState)> = Vec::with_capacity(changed.len());
        for devices in changed.chunk_by(|(a, _), (b, _)| a == b) {
            let job = devices[0].0;
            let Some(states) = self.states.get(&rules.jobs[job].name) else { continue };
            for &(_, device) in devices {
                let Some(state) = states.get(device, &self.default_state) else { continue };
                if before_due.get(&(job, device)).is_some_and(|before| state.saves_as(before)) {
                    continue;
                }
                to_save.push((job, self.devices.text(device).to_string(), state.clone()));
            }
        }
        self.add_unsaved(&rules, &mut to_save);
        // A dry run's states are its own: a live run must find the journal
        // as if the dry run had not happened.
        if !to_save.is_empty() && !self.dry_run {
            let names = Arc::clone(&rules);
            let (result, to_save) = blocking(&self.journal, move |journal| {
                let named = to_save.iter().map(|(job, device, state)| {
                    (names.jobs[*job].name.as_str(), device.as_str(), state)
                });
                (journal.save_states(named), to_save)
            })
            .await;
            if let Err(err) = result {
                tracing::error!(
                    "cannot save {} job states: {}; they are kept in memory and saved with the next cycle's",
                    to_save.len(),
                    with_causes(&err)
                );
                self.unsaved = to_save
                    .into_iter()
                    .map(|(job, device, _)| (rules.jobs[job].name.clone(), device))
                    .collect();
            }
        }
        self.forget_settled_cannot_act();
        report.unsaved_states = self.unsaved.len();
        report.journal_time = journalling.elapsed();
        self.forget_unused_devices();

        let counts = self.states.iter().map(|(job, states)| (job.as_str(), states.phases()));
        self.metrics.record_cycle(started.elapsed(), now, counts);
        report
    }

    /// Forgets the (job, device) pairs that could not act once they are no
    /// longer firing (resolved, or their job or device gone): a new episode
    /// is said again.
    fn forget_settled_cannot_act(&mut self) {
        if self.cannot_act_said.is_empty() {
            return;
        }
        let (states, devices, default) = (&self.states, &self.devices, &self.default_state);
        self.cannot_act_said.retain(|(job, device), _| {
            let state =
                states.get(job).zip(devices.find(device)).and_then(|(s, id)| s.get(id, default));
            state.is_some_and(|state| matches!(state.phase, state::Phase::Firing { .. }))
        });
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
            for device in states.devices() {
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
        let new = |device: DeviceId| renumbered[device.index()].expect("a device in use is kept");
        for states in self.states.values_mut() {
            states.renumber(new);
        }
    }

    /// Sends every query, up to [`QUERIES_IN_FLIGHT`] at a time and within
    /// [`ANSWER_BYTES_IN_FLIGHT`], and reads each answer's series straight
    /// from its bytes into [`Answers`] as it arrives: no label map is built
    /// per series, and only a few answers' bytes ever exist at once.
    async fn query_all(
        &mut self,
        queries: &[String],
        answers: &mut Answers,
        report: &mut CycleReport,
    ) {
        let prometheus = match &self.source {
            Source::Prometheus(client) => client.clone(),
            Source::Scrape(client) => {
                let client = client.clone();
                return self.scrape_all(&client, queries, answers, report).await;
            }
        };
        // Polled here rather than spawned: each answer is received and
        // decoded by the thread that compacts it, so its bytes are freed
        // where they were allocated (spread over worker threads' allocator
        // arenas, answers left tens of megabytes of fragments behind).
        type Pending<'q> = Pin<
            Box<dyn Future<Output = (&'q String, Result<InstantAnswer, PromError>)> + Send + 'q>,
        >;
        let client: &PromClient = &prometheus;
        let mut waiting = queries.iter().peekable();
        let mut in_flight: Vec<Pending<'_>> = Vec::with_capacity(QUERIES_IN_FLIGHT);
        // The estimated bytes of the answers in flight, and of each.
        let mut bytes_in_flight = 0;
        let mut estimates: Vec<usize> = Vec::with_capacity(QUERIES_IN_FLIGHT);
        loop {
            while let Some(&query) = waiting.peek() {
                let bytes = self.answer_bytes.get(query).copied().unwrap_or(ANSWER_BYTES_IN_FLIGHT);
                if !admits(in_flight.len(), bytes_in_flight, bytes) {
                    break;
                }
                waiting.next();
                bytes_in_flight += bytes;
                estimates.push(bytes);
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
                    let done = match polled {
                        Ok(Poll::Pending) => continue,
                        Ok(Poll::Ready(done)) => Some(done),
                        Err(_) => None,
                    };
                    drop(in_flight.swap_remove(at));
                    bytes_in_flight -= estimates.swap_remove(at);
                    return Poll::Ready(done);
                }
                Poll::Pending
            })
            .await;
            let Some((query, result)) = finished else { continue };
            self.metrics.query_sent();
            if let Ok(answer) = &result {
                match self.answer_bytes.get_mut(query) {
                    Some(bytes) => *bytes = answer.size(),
                    None => drop(self.answer_bytes.insert(query.clone(), answer.size())),
                }
            }
            let query = query.clone();
            let inserted = result.and_then(|answer| {
                answers.insert(query.clone(), &mut self.devices, |add| {
                    answer.for_each_sample(add).map(drop)
                })
            });
            if let Err(err) = inserted {
                self.metrics.query_failed(err.label());
                report.failed_queries.push((query, err.to_string()));
            }
        }
        report.failed_queries.sort();
    }

    /// Logs a query outage when it starts or changes, and when it ends;
    /// cycles in between say it at debug level only.
    fn log_query_failures(&mut self, report: &CycleReport) {
        let failed = report.failed_queries.len();
        self.metrics.set_prometheus_up(failed == 0);
        if failed == self.failing_queries {
            if let Some((query, why)) = report.failed_queries.first() {
                tracing::debug!("still failing: {failed} queries (first: {query:?}: {why})");
            }
            return;
        }
        match report.failed_queries.first() {
            Some((query, why)) => tracing::warn!(
                "{failed} of {} {} failed (first: {query:?}: {why}); devices that depend on them are unknown: nothing advances and nothing is sent until they answer",
                report.queries,
                self.source.queries_name()
            ),
            None => tracing::info!("{}", self.source.recovered()),
        }
        self.failing_queries = failed;
    }

    /// Adds the states a failed save left unwritten to `to_save`, as they
    /// are now, unless they are there already because they changed again
    /// (a job or device gone since has nothing left to save).
    fn add_unsaved(&mut self, rules: &RuleSet, to_save: &mut Vec<(usize, String, JobState)>) {
        if self.unsaved.is_empty() {
            return;
        }
        let job_index: HashMap<&str, usize> =
            rules.jobs.iter().enumerate().map(|(index, job)| (job.name.as_str(), index)).collect();
        // Only while saves fail: the pairs that changed this cycle, to add
        // each pair once.
        let changed: HashSet<(usize, String)> =
            to_save.iter().map(|(job, device, _)| (*job, device.clone())).collect();
        for (job, device) in std::mem::take(&mut self.unsaved) {
            let (Some(&index), Some(id)) =
                (job_index.get(job.as_str()), self.devices.find(&device))
            else {
                continue;
            };
            let key = (index, device);
            if changed.contains(&key) {
                continue;
            }
            let (index, device) = key;
            let state = self.states.get(&job).and_then(|s| s.get(id, &self.default_state));
            if let Some(state) = state {
                to_save.push((index, device, state.clone()));
            }
        }
    }
}

/// Takes the devices no socket powers out of an `only_powered` job's
/// evaluation: the job does not watch them. One the job remembers (it was
/// not `only_powered` before a reload, or the device lost its socket) is
/// kept with the condition false rather than left to read as a missing
/// series: an episode under way ends, and it is not counted unknown cycle
/// after cycle. The live cycle and the replay both call it.
fn leave_unpowered_out(
    rules: &RuleSet,
    devices: &DeviceTable,
    states: Option<&JobStates>,
    default: &JobState,
    evaluation: &mut JobEvaluation,
) {
    evaluation.devices.retain_mut(|(device, quick)| {
        if devices.key(*device).is_some_and(|key| rules.socket_for(key).is_some()) {
            return true;
        }
        let state = states.and_then(|states| states.get(*device, default));
        let remembered = state.is_some_and(|state| state != default);
        if remembered {
            *quick = Quick::FALSE;
        }
        remembered
    });
}

/// The [`Plan`] of every job of `rules`, enabled or not, by its index.
fn plan_of(rules: &RuleSet) -> Plan {
    Plan::new(rules.jobs.iter().map(|job| (&job.condition, &job.devices, &job.guards[..])))
}

/// Whether an action `due` on a device waits because the device's socket
/// got a command from the job at `last`, within the job's cooldown: a
/// socket gets no other first action from a job within its cooldown
/// (repeats are spaced by `every` instead). Returns that command's time
/// when the action waits. The live engine and the replay both ask here.
fn socket_waits(
    job: &Job,
    last: Option<jiff::Timestamp>,
    due: &state::ActionDue,
    now: jiff::Timestamp,
) -> Option<jiff::Timestamp> {
    last.filter(|&last| {
        due.attempt_in_episode == 1 && crate::clock::elapsed(last, now) < job.cooldown
    })
}

/// `{platform_id="12", device_id="30785"} (Arzamas_Lesnaia_1)`: the key and,
/// when the series has one, the device's name.
fn describe(device: &str, verdict: &DeviceVerdict) -> String {
    match verdict.labels.get("name").filter(|n| !n.is_empty()) {
        Some(name) => format!("{device} ({})", text::sanitize(name, false, 80)),
        None => device.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{admits, ANSWER_BYTES_IN_FLIGHT, QUERIES_IN_FLIGHT};

    #[test]
    fn small_answers_go_several_at_a_time_and_a_large_one_alone() {
        let small = 50_000;
        // Small answers: up to QUERIES_IN_FLIGHT at once, not one more.
        for count in 0..QUERIES_IN_FLIGHT {
            assert!(admits(count, count * small, small), "small answer number {count}");
        }
        assert!(!admits(QUERIES_IN_FLIGHT, QUERIES_IN_FLIGHT * small, small));
        // A large answer (or one never seen, estimated at the budget) waits
        // for the others and then goes alone, however large.
        assert!(!admits(1, small, ANSWER_BYTES_IN_FLIGHT));
        assert!(admits(0, 0, ANSWER_BYTES_IN_FLIGHT));
        assert!(admits(0, 0, 10 * ANSWER_BYTES_IN_FLIGHT));
        assert!(!admits(1, 10 * ANSWER_BYTES_IN_FLIGHT, small));
        // Answers that fill the budget together may go together.
        let half = ANSWER_BYTES_IN_FLIGHT / 2;
        assert!(admits(1, half, half));
        assert!(!admits(2, 2 * half, 1));
    }
}
