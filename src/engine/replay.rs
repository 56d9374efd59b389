//! What a job would have done over Prometheus's history: the simulation
//! behind `jobctl test-rule JOB --replay 7d`.
//!
//! A sysadmin wants to know what a rule costs before switching it on: how
//! many players it would have power-cycled last week, how many SMS that is,
//! and whether the devices came back on their own before `for` ran out.
//! The answer is only worth having if it is what the daemon would really
//! have done, so nothing here decides anything itself. Each step of the
//! range is one engine cycle on a simulated clock (the step's time is
//! "now"): the answers Prometheus gives for that instant go through the
//! same [`Answers`]/[`JobEvaluation`] as a live cycle's (guards, `all`/`any`,
//! `only_powered`, missing series as unknown), and the same [`advance_job`]
//! moves the same state machine (`for`, cooldown, repeat, schedule window,
//! verify), asking the engine's own silence matching about the silences
//! in force at that step. The actions found due then go through the live
//! cycle's decisions in its order, each asked of the function the engine
//! asks: the job's limit ([`closed_loop::limit_refusal`], counted over the
//! simulated sends, per device and per socket), one message per socket
//! and no other first action to a socket within the cooldown
//! ([`super::socket_waits`]), the budgets ([`Budgets::exceeded`]). What
//! this file adds is only the bookkeeping: fetching the history, counting
//! what it sent, and turning the engine's events into a timeline per
//! device.
//!
//! History comes from `/api/v1/query_range`, one request per query and
//! chunk of steps. A chunk never asks for more than Prometheus's 11,000
//! points per series, and, once the first chunk has shown how many series
//! a query returns, no more than [`ReplayOptions::points_per_chunk`] points
//! in all, so a week over a large fleet is replayed in bounded memory.
//! A step where Prometheus has no sample for a device is unknown, as it
//! would have been live.
//!
//! The replay starts as a daemon with an empty journal does (every device
//! inactive, no cooldown running, nothing counted against a limit), sends
//! nothing and writes nothing. The silences are the caller's to give
//! (`jobctl` reads them from the journal, read-only): each holds over its
//! own [created_at, ends_at).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

use super::closed_loop;
use super::mass_outage;
use super::onset::History;
use super::outbox::MAX_TEXT_CHARS;
use super::silences::Silences;
use super::states::{advance_job, JobStates};
use crate::journal::Silence;
use crate::prometheus_api::{PromClient, PromError};
use crate::rules::condition::{with_freshness, Answers, Index, JobEvaluation, Plan};
use crate::rules::device::{DeviceId, DeviceTable};
use crate::rules::state::{self, ActionDue, Concluded, JobState, PhaseName};
use crate::rules::{Budgets, Job, Outgoing, Recipient, RuleSet};
use crate::sms::text;

/// Prometheus refuses a range query of more than this many points per
/// series (`exceeded maximum resolution of 11,000 points per timeseries`).
pub const PROMETHEUS_MAX_POINTS: usize = 11_000;

/// Steps of the first chunk, before the number of series is known.
const FIRST_CHUNK_STEPS: usize = 60;

/// The time range of a replay: every `step` from `start` to `end`, both
/// included. Built by [`ReplayRange::new`], which refuses what cannot be
/// replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayRange {
    start: Timestamp,
    end: Timestamp,
    step: Duration,
    steps: usize,
}

impl ReplayRange {
    /// The steps from `from` to `to` (both rounded down to the second)
    /// every `step`, which must be whole seconds, at least one, and fit in
    /// the range. The last step is the last one at or before `to`.
    pub fn new(from: Timestamp, to: Timestamp, step: Duration) -> Result<ReplayRange, String> {
        let whole = |t: Timestamp| Timestamp::from_second(t.as_second()).unwrap_or(t);
        let (start, to) = (whole(from), whole(to));
        if step.is_zero() || step.subsec_nanos() != 0 {
            return Err(format!(
                "--step {}: the step must be a whole number of seconds, at least 1s",
                humantime::format_duration(step)
            ));
        }
        if start >= to {
            return Err(format!(
                "the range is empty: it starts at {start} and ends at {to}; the start must come before the end"
            ));
        }
        let span = (to.as_second() - start.as_second()) as u64;
        if step.as_secs() > span {
            return Err(format!(
                "--step {} is longer than the range ({}): shorten the step or widen the range",
                humantime::format_duration(step),
                humantime::format_duration(Duration::from_secs(span))
            ));
        }
        let steps = (span / step.as_secs()) as usize + 1;
        let end = start + SignedDuration::from_secs(((steps - 1) as u64 * step.as_secs()) as i64);
        Ok(ReplayRange { start, end, step, steps })
    }

    /// The first step's time.
    pub fn start(&self) -> Timestamp {
        self.start
    }

    /// The last step's time.
    pub fn end(&self) -> Timestamp {
        self.end
    }

    /// The time between two steps.
    pub fn step(&self) -> Duration {
        self.step
    }

    /// How many steps (evaluations) the range has.
    pub fn steps(&self) -> usize {
        self.steps
    }

    fn at(&self, step: usize) -> Timestamp {
        self.start + SignedDuration::from_secs((step as u64 * self.step.as_secs()) as i64)
    }
}

/// How a replay fetches history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayOptions {
    /// The most steps one range query asks for (at most
    /// [`PROMETHEUS_MAX_POINTS`]; tests make it small to see chunking).
    pub max_steps_per_query: usize,
    /// The most points (series × steps, all queries together) one chunk
    /// holds in memory once the number of series is known.
    pub points_per_chunk: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions { max_steps_per_query: PROMETHEUS_MAX_POINTS, points_per_chunk: 1_000_000 }
    }
}

/// Why a replay could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A range query failed: a replay with a hole in it would mislead.
    #[error("replaying {query:?}")]
    Prometheus {
        /// The query.
        query: String,
        /// What Prometheus (or the way to it) said.
        #[source]
        source: PromError,
    },
    /// Prometheus has no sample at all in the range for the job's queries.
    #[error(
        "Prometheus has no data for {queries} between {start} and {end}: the range may be older than \
         Prometheus keeps data (its --storage.tsdb.retention.time, 15d by default) or the metric is \
         not there; nothing to replay"
    )]
    NoData {
        /// The queries, quoted and joined.
        queries: String,
        /// The first step.
        start: Timestamp,
        /// The last step.
        end: Timestamp,
    },
}

/// What a job would have done over a range.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// The range replayed.
    pub range: ReplayRange,
    /// Range queries sent to Prometheus.
    pub requests: usize,
    /// How long the queries took (the rest of the wall time is evaluation).
    pub query_time: Duration,
    /// Every device something happened to, in device order.
    pub devices: Vec<DeviceTimeline>,
    /// Devices seen in the answers at least once.
    pub devices_seen: usize,
    /// (step, device) evaluations whose verdict was unknown.
    pub unknown_evaluations: u64,
}

/// What happened to one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceTimeline {
    /// The device key, as logs print it.
    pub device: String,
    /// Its `name` label, when its series have one.
    pub name: Option<String>,
    /// Its episodes, oldest first.
    pub episodes: Vec<Episode>,
}

/// One period in which the condition held for a device: from the first
/// step that found it true to the step that found it false.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    /// When the condition was first found true (pending).
    pub started: Timestamp,
    /// When it had held for `for` and the job fired, and the episode's
    /// number on this device.
    pub fired: Option<(Timestamp, u64)>,
    /// The messages the episode's actions would have sent.
    pub messages: Vec<SimulatedMessage>,
    /// Each time an action started waiting (the cooldown, the schedule
    /// window, a silence, its socket's cooldown) or waited for another
    /// reason: since when, and why.
    pub held: Vec<(Timestamp, String)>,
    /// When and why the job's `limit` gave the episode up.
    pub gave_up: Option<(Timestamp, String)>,
    /// Actions that could not become a message (no socket…).
    pub action_errors: Vec<(Timestamp, String)>,
    /// Steps of the episode whose verdict was unknown.
    pub unknown_steps: u64,
    /// How it ended.
    pub end: EpisodeEnd,
}

/// How an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpisodeEnd {
    /// The condition went false before `for` elapsed: the device recovered
    /// on its own and nothing fired.
    RecoveredBeforeFor {
        /// The step that found it false.
        at: Timestamp,
    },
    /// The condition went false after the job fired.
    Resolved {
        /// The step that found it false.
        at: Timestamp,
    },
    /// Still under way at the end of the range.
    Open,
}

/// A message the simulation would have sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedMessage {
    /// When the action became due.
    pub at: Timestamp,
    /// 1 for the episode's first action, 2 for its first repeat…
    pub attempt: u32,
    /// Where it would have gone.
    pub to: Recipient,
    /// The text, shaped as the outbox shapes it.
    pub text: String,
    /// SMS segments the text takes.
    pub segments: usize,
    /// Why a budget would have held it back, when one would have (it
    /// stayed due, and a later message shows when it left).
    pub suppressed: Option<String>,
    /// The device whose message this device's action rode along on (one
    /// message per socket for the devices due together): not a message
    /// of its own.
    pub with: Option<String>,
    /// The devices that rode along on this message.
    pub also_for: Vec<String>,
    /// What `verify` concluded about the action, once it did.
    pub result: Option<(Timestamp, ActionResult)>,
}

/// What `verify` concluded about an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionResult {
    /// The condition went false this long after the action.
    Recovered {
        /// From the action to the evaluation that found it false.
        after: Duration,
    },
    /// Still bad when the verification window ended.
    NotRecovered,
    /// Unknown throughout the window.
    Unverified,
}

impl Episode {
    /// Notes that an action waits for `why`, unless it already waited for
    /// just that at the last note.
    fn note_held(&mut self, now: Timestamp, why: String) {
        if self.held.last().is_none_or(|(_, said)| *said != why) {
            self.held.push((now, why));
        }
    }
}

/// Writes a verification's result on the message of the action it verified.
fn conclude(timeline: &mut DeviceTimeline, now: Timestamp, done: Concluded) {
    let result = match done.recovery {
        state::Recovery::Recovered { after } => ActionResult::Recovered { after },
        state::Recovery::NotRecovered => ActionResult::NotRecovered,
        state::Recovery::Unverified => ActionResult::Unverified,
    };
    let episode = timeline
        .episodes
        .iter_mut()
        .rev()
        .find(|e| e.fired.is_some_and(|(_, number)| number == done.episode));
    let message = episode.and_then(|e| {
        e.messages.iter_mut().rev().find(|m| m.attempt == done.attempt && m.suppressed.is_none())
    });
    if let Some(message) = message {
        message.result = Some((now, result));
    }
}

/// The socket a message goes to, if it goes to one.
fn socket_of(to: &Recipient) -> Option<&str> {
    match to {
        Recipient::Sms { socket, .. } => socket.as_deref(),
        Recipient::Webhook { .. } => None,
    }
}

/// An action the state machine found due in a step.
struct SimulatedDue {
    device: DeviceId,
    labels: std::collections::BTreeMap<String, String>,
    due: ActionDue,
    state_after: JobState,
    previous: JobState,
}

/// A message the simulation sent.
struct Sent {
    at: Timestamp,
    /// `None` for a message to a person.
    socket: Option<String>,
    /// The devices it was for.
    devices: Vec<DeviceId>,
}

impl SimulatedMessage {
    /// The socket's name, or `-` for a message to a person, as the journal
    /// and the budgets name it.
    pub fn socket(&self) -> &str {
        match &self.to {
            Recipient::Sms { socket, .. } => socket.as_deref().unwrap_or("-"),
            // A rule's action is an SMS; a webhook is named as its row is.
            Recipient::Webhook { name, .. } => name,
        }
    }
}

/// Replays `job` of `rules` over `range`, reading history from `prometheus`,
/// with `silences` (every silence the journal holds; each holds the actions
/// it matches over its own span).
pub async fn replay(
    rules: &RuleSet,
    job: &Job,
    prometheus: &PromClient,
    range: ReplayRange,
    options: ReplayOptions,
    silences: Vec<Silence>,
) -> Result<Replay, ReplayError> {
    let queries = with_freshness(job.queries());
    let max_steps = options.max_steps_per_query.clamp(1, PROMETHEUS_MAX_POINTS);
    let mut simulation = Simulation::new(rules, job, silences);
    let mut chunk_steps = FIRST_CHUNK_STEPS.min(max_steps);
    let (mut requests, mut query_time, mut any_sample) = (0, Duration::ZERO, false);
    let mut first = 0;
    while first < range.steps {
        let last = (first + chunk_steps).min(range.steps) - 1;
        let querying = Instant::now();
        requests += queries.len();
        let mut chunk =
            History::fetch(prometheus, &queries, range.at(first), range.at(last), range.step)
                .await
                .map_err(|(query, source)| ReplayError::Prometheus { query, source })?;
        query_time += querying.elapsed();
        let series = chunk.series();
        any_sample |= chunk.has_points();
        for step in first..=last {
            simulation.step(range.at(step), &mut chunk);
        }
        first = last + 1;
        chunk_steps = (options.points_per_chunk / series.max(1)).clamp(1, max_steps);
    }
    if !any_sample {
        let quoted: Vec<String> = job.queries().iter().map(|q| format!("{q:?}")).collect();
        return Err(ReplayError::NoData {
            queries: quoted.join(", "),
            start: range.start,
            end: range.end,
        });
    }
    Ok(simulation.finish(range, requests, query_time))
}

/// The engine's cycle on a simulated clock, for one job.
struct Simulation<'r> {
    rules: &'r RuleSet,
    job: &'r Job,
    answers: Answers,
    /// What the job reads from each step's answers.
    plan: Plan,
    devices: DeviceTable,
    states: JobStates,
    default_state: JobState,
    /// By device index: its timeline, once something happened to it.
    timelines: Vec<Option<DeviceTimeline>>,
    /// By device index: whether it was ever in the answers.
    seen: Vec<bool>,
    /// Every simulated message that would have left.
    sent: Vec<Sent>,
    /// The silences of the journal, each in force over its own span.
    silences: Silences,
    /// Since when the job is in a mass outage, if it is: decided each step
    /// as the daemon decides it ([`mass_outage::outage_after`]).
    outage: Option<Timestamp>,
    /// By socket: when the job last sent it a command.
    socket_commands: HashMap<String, Timestamp>,
    /// (device, episode, attempt) of the actions a budget suppressed.
    suppressed: HashSet<(DeviceId, u64, u32)>,
    budgets: Budgets,
    max_segments: usize,
    unknown: u64,
}

impl<'r> Simulation<'r> {
    fn new(rules: &'r RuleSet, job: &'r Job, silences: Vec<Silence>) -> Simulation<'r> {
        let max_segments = rules
            .sms
            .as_ref()
            .and_then(|sms| sms.max_segments().ok())
            .unwrap_or(crate::sms::DEFAULT_MAX_SEGMENTS);
        Simulation {
            rules,
            job,
            answers: Answers::new(&rules.device_key),
            plan: Plan::new([(&job.condition, &job.devices, job.guards.as_slice())]),
            devices: DeviceTable::default(),
            states: JobStates::default(),
            default_state: JobState::default(),
            timelines: Vec::new(),
            seen: Vec::new(),
            sent: Vec::new(),
            silences: Silences::fixed(silences),
            outage: None,
            socket_commands: HashMap::new(),
            suppressed: HashSet::new(),
            budgets: rules.budgets,
            max_segments,
            unknown: 0,
        }
    }

    /// One cycle at `now`, on the chunk's answers for that instant.
    fn step(&mut self, now: Timestamp, chunk: &mut History) {
        let mut answers = std::mem::take(&mut self.answers);
        chunk.answers_at(now, &mut answers, self.rules, &mut self.devices);
        let (job, rules) = (self.job, self.rules);
        let plan = std::mem::take(&mut self.plan);
        let mut index = Index::new(&answers, &plan);
        let mut evaluation = JobEvaluation::new(&mut index, 0, &job.condition, &job.guards);
        if job.only_powered {
            let (devices, states) = (&self.devices, Some(&self.states));
            super::leave_unpowered_out(
                rules,
                devices,
                states,
                &self.default_state,
                &mut evaluation,
            );
        }
        if self.seen.len() < self.devices.len() {
            self.seen.resize(self.devices.len(), false);
        }
        for (device, _) in &evaluation.devices {
            self.seen[device.index()] = true;
        }
        self.outage = mass_outage::outage_after(
            job.mass_outage,
            mass_outage::Share::of(&evaluation),
            self.outage,
            now,
        );
        let mut events = Vec::new();
        let job_silences = self.silences.for_job(&job.name, now);
        let devices = &self.devices;
        let silence =
            |device: DeviceId| job_silences.holding_device(rules, devices, &evaluation, device);
        let (_, unknown) = advance_job(
            job,
            &evaluation,
            now,
            &mut self.states,
            &self.default_state,
            &mut events,
            |_| {},
            silence,
            self.outage,
        );
        drop(job_silences);
        self.unknown += unknown;
        events.sort_by(|a, b| self.devices.text(a.device).cmp(self.devices.text(b.device)));
        let mut dues = Vec::new();
        for event in events {
            let verdict = evaluation.device_verdict(event.present.then_some(event.device));
            let timeline = self.timeline(event.device, verdict.labels.get("name"));
            for transition in &event.transitions {
                match (transition.from, transition.to) {
                    (_, PhaseName::Pending) => timeline.episodes.push(Episode {
                        started: transition.at,
                        fired: None,
                        messages: Vec::new(),
                        held: Vec::new(),
                        gave_up: None,
                        action_errors: Vec::new(),
                        unknown_steps: 0,
                        end: EpisodeEnd::Open,
                    }),
                    (PhaseName::Pending, PhaseName::Inactive) => {
                        if let Some(episode) = timeline.episodes.last_mut() {
                            episode.end = EpisodeEnd::RecoveredBeforeFor { at: transition.at };
                        }
                    }
                    (PhaseName::Pending, PhaseName::Firing) => {
                        if let Some(episode) = timeline.episodes.last_mut() {
                            episode.fired = Some((transition.at, transition.episode.unwrap_or(0)));
                        }
                    }
                    (PhaseName::Firing, PhaseName::Resolved) => {
                        if let Some(episode) = timeline.episodes.last_mut() {
                            episode.end = EpisodeEnd::Resolved { at: transition.at };
                        }
                    }
                    _ => {}
                }
            }
            if let Some(done) = event.concluded {
                conclude(timeline, now, done);
            }
            let Some(episode) = timeline.episodes.last_mut() else { continue };
            episode.unknown_steps += u64::from(event.unknown_in.is_some());
            if let Some(held) = event.held {
                episode.note_held(now, held.to_string());
            }
            if let Some((due, state_after, previous)) = event.action {
                dues.push(SimulatedDue {
                    device: event.device,
                    labels: verdict.labels,
                    due,
                    state_after,
                    previous,
                });
            }
        }
        drop(index);
        self.answers = answers;
        self.plan = plan;
        self.act(now, dues);
    }

    /// What the live cycle does with the actions due, in its order: the
    /// job's `limit` ([`closed_loop::limit_refusal`], counted over the
    /// simulated sends), then one message per socket for the devices due
    /// together and no other first action to a socket within the cooldown
    /// ([`super::socket_waits`]), then the budgets. An action held by a
    /// socket's cooldown, a budget or an error stays due, as live.
    fn act(&mut self, now: Timestamp, dues: Vec<SimulatedDue>) {
        let job = self.job;
        let mut planned: Vec<(SimulatedDue, Outgoing)> = Vec::with_capacity(dues.len());
        for due in dues {
            let outgoing = match self.rules.device_key.key_of(&due.labels) {
                None => Err("its labels lack the device key".to_string()),
                Some(key) => self.rules.outgoing(job, &key, &due.labels).map_err(|e| e.to_string()),
            };
            match outgoing {
                Ok(outgoing) => planned.push((due, outgoing)),
                Err(why) => {
                    let episode = self.episode(due.device);
                    if episode.action_errors.last().is_none_or(|(_, said)| *said != why) {
                        episode.action_errors.push((now, why));
                    }
                    self.states.restore(due.device, due.state_after.without_action(&due.previous));
                }
            }
        }
        if let Some(limit) = job.limit {
            let since = closed_loop::limit_since(limit, now);
            let mut allowed: HashSet<String> = HashSet::new();
            let mut kept = Vec::with_capacity(planned.len());
            for (due, outgoing) in planned {
                let socket = socket_of(&outgoing.to).map(str::to_string);
                let recent = self.sent.iter().filter(|sent| sent.at >= since);
                let (mut on_device, mut to_socket) = (0u32, 0u32);
                for sent in recent {
                    on_device += u32::from(sent.devices.contains(&due.device));
                    to_socket += u32::from(socket.is_some() && sent.socket == socket);
                }
                let rides_along = socket.as_ref().is_some_and(|s| allowed.contains(s));
                let counted = closed_loop::LimitCount { on_device, to_socket, rides_along };
                match closed_loop::limit_refusal(limit, counted, socket.as_deref()) {
                    None => {
                        allowed.extend(socket);
                        kept.push((due, outgoing));
                    }
                    Some(reason) => {
                        let step = closed_loop::give_up(job, &due.previous, &due.due, now);
                        self.states.restore(due.device, step.state);
                        self.episode(due.device).gave_up = Some((now, reason));
                    }
                }
            }
            planned = kept;
        }
        // One message per socket: the first device due makes it, the others
        // ride along on it.
        let mut messages: Vec<(Outgoing, Vec<SimulatedDue>)> = Vec::new();
        let mut by_socket: HashMap<String, usize> = HashMap::new();
        for (due, outgoing) in planned {
            if let Some(socket) = socket_of(&outgoing.to) {
                if let Some(&at) = by_socket.get(socket) {
                    messages[at].1.push(due);
                    continue;
                }
                let last = self.socket_commands.get(socket).copied();
                if let Some(last) = super::socket_waits(job, last, &due.due, now) {
                    let until = crate::clock::after(last, job.cooldown);
                    let why = format!(
                        "action waits: socket {socket} got a command from this job at {last}, within its cooldown (until {until})"
                    );
                    self.episode(due.device).note_held(now, why);
                    self.states.restore(due.device, due.state_after.without_action(&due.previous));
                    continue;
                }
                by_socket.insert(socket.to_string(), messages.len());
            }
            messages.push((outgoing, vec![due]));
        }
        for (outgoing, targets) in messages {
            let text = shape(&outgoing.to, &outgoing.text, self.max_segments);
            let socket = socket_of(&outgoing.to).unwrap_or("-").to_string();
            let sent = &self.sent;
            let over = self.budgets.exceeded(&socket, now, |scope, since| {
                let used = sent.iter().filter(|sent| {
                    sent.at >= since
                        && scope.is_none_or(|scope| sent.socket.as_deref().unwrap_or("-") == scope)
                });
                Ok::<u32, Infallible>(used.count() as u32)
            });
            let suppressed = over.unwrap_or_else(|never| match never {});
            let first = self.devices.text(targets[0].device).to_string();
            let riders: Vec<String> =
                targets[1..].iter().map(|t| self.devices.text(t.device).to_string()).collect();
            if suppressed.is_some() {
                // Not sent, so not the episode's action: it stays due. Shown
                // once, as the journal records a suppressed message once.
                let new = self.suppressed.insert((
                    targets[0].device,
                    targets[0].due.episode,
                    targets[0].due.attempt_in_episode,
                ));
                for target in &targets {
                    self.states.restore(
                        target.device,
                        target.state_after.without_action(&target.previous),
                    );
                }
                if !new {
                    continue;
                }
            } else {
                self.sent.push(Sent {
                    at: now,
                    socket: socket_of(&outgoing.to).map(str::to_string),
                    devices: targets.iter().map(|t| t.device).collect(),
                });
                if socket != "-" {
                    self.socket_commands.insert(socket.clone(), now);
                }
            }
            for (at, target) in targets.iter().enumerate() {
                let message = SimulatedMessage {
                    at: now,
                    attempt: target.due.attempt_in_episode,
                    segments: text::segments(&text).segments,
                    to: outgoing.to.clone(),
                    text: text.clone(),
                    suppressed: suppressed.clone(),
                    with: (at > 0).then(|| first.clone()),
                    also_for: if at == 0 { riders.clone() } else { Vec::new() },
                    result: None,
                };
                self.episode(target.device).messages.push(message);
            }
        }
    }

    /// The episode under way on a device something is due for.
    fn episode(&mut self, device: DeviceId) -> &mut Episode {
        let timeline = self.timelines[device.index()].as_mut().expect("made by its event");
        timeline.episodes.last_mut().expect("an action is due within an episode")
    }

    /// A device's timeline, made when something first happens to it.
    fn timeline(&mut self, device: DeviceId, name: Option<&String>) -> &mut DeviceTimeline {
        if self.timelines.len() <= device.index() {
            self.timelines.resize(device.index() + 1, None);
        }
        let timeline = self.timelines[device.index()].get_or_insert_with(|| DeviceTimeline {
            device: self.devices.text(device).to_string(),
            name: None,
            episodes: Vec::new(),
        });
        if timeline.name.is_none() {
            timeline.name = name.filter(|n| !n.is_empty()).map(|n| text::sanitize(n, false, 80));
        }
        timeline
    }

    fn finish(self, range: ReplayRange, requests: usize, query_time: Duration) -> Replay {
        let mut devices: Vec<DeviceTimeline> = self
            .timelines
            .into_iter()
            .flatten()
            .filter(|timeline| !timeline.episodes.is_empty())
            .collect();
        devices.sort_by(|a, b| a.device.cmp(&b.device));
        Replay {
            range,
            requests,
            query_time,
            devices,
            devices_seen: self.seen.iter().filter(|seen| **seen).count(),
            unknown_evaluations: self.unknown,
        }
    }
}

/// The text as the outbox would send it: sanitised, and a notification to
/// a person cut to `max_segments` (a socket command is one segment, which
/// `check` enforces).
fn shape(to: &Recipient, text: &str, max_segments: usize) -> String {
    let text = text::sanitize(text, false, MAX_TEXT_CHARS);
    match to {
        Recipient::Sms { socket: Some(_), .. } => text,
        Recipient::Sms { socket: None, .. } => text::fit_segments(&text, max_segments),
        Recipient::Webhook { .. } => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_range_has_whole_steps_from_its_start() {
        let range = ReplayRange::new(
            at("2026-11-01T00:00:00.7Z"),
            at("2026-11-01T00:02:10Z"),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(range.start(), at("2026-11-01T00:00:00Z"));
        assert_eq!(range.end(), at("2026-11-01T00:02:00Z"));
        assert_eq!(range.steps(), 5);
        assert_eq!(range.at(4), range.end());
    }

    #[test]
    fn ranges_that_cannot_be_replayed_are_refused_with_why() {
        let (from, to) = (at("2026-11-01T00:00:00Z"), at("2026-11-01T01:00:00Z"));
        let refused = |from, to, step| ReplayRange::new(from, to, step).unwrap_err();
        assert_eq!(
            refused(from, to, Duration::from_secs(7200)),
            "--step 2h is longer than the range (1h): shorten the step or widen the range"
        );
        assert_eq!(
            refused(to, from, Duration::from_secs(30)),
            "the range is empty: it starts at 2026-11-01T01:00:00Z and ends at 2026-11-01T00:00:00Z; \
             the start must come before the end"
        );
        assert_eq!(
            refused(from, from, Duration::from_secs(30)),
            "the range is empty: it starts at 2026-11-01T00:00:00Z and ends at 2026-11-01T00:00:00Z; \
             the start must come before the end"
        );
        assert_eq!(
            refused(from, to, Duration::from_millis(1500)),
            "--step 1s 500ms: the step must be a whole number of seconds, at least 1s"
        );
        assert!(refused(from, to, Duration::ZERO).starts_with("--step 0s: "));
    }

    #[test]
    fn budgets_count_what_the_simulation_sent() {
        let budgets = Budgets { socket_hour: Some(1), global_day: Some(2), ..Budgets::default() };
        let now = at("2026-11-01T12:00:00Z");
        let sent = [(at("2026-11-01T11:30:00Z"), "hall"), (at("2026-11-01T02:00:00Z"), "lobby")];
        let check = |socket: &str| {
            budgets
                .exceeded(socket, now, |scope, since| {
                    let used =
                        sent.iter().filter(|(t, s)| *t >= since && scope.is_none_or(|x| x == *s));
                    Ok::<u32, Infallible>(used.count() as u32)
                })
                .unwrap()
        };
        assert_eq!(
            check("hall").as_deref(),
            Some("budget of 1 messages per socket per hour reached (socket hall: 1)")
        );
        assert_eq!(
            check("lobby").as_deref(),
            Some("budget of 2 messages in all per day reached (all sockets: 2)")
        );
    }
}
