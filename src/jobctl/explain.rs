//! `jobctl explain JOB --device LABEL=VALUE ...`: why the daemon would, or
//! would not, act on one device now.
//!
//! A sysadmin asking "why was the player in the lobby not power-cycled?"
//! needs the engine's answer, not a second opinion. So this command asks the
//! live Prometheus once, reads the journal read-only (beside a running
//! daemon), and hands the same inputs to the same code the engine runs: the
//! job's condition evaluation ([`crate::rules::Job::evaluate`]), the state
//! machine ([`JobState::advance`]) from the state the daemon saved, with the
//! schedule window, the silence the engine would match, the `limit` counted
//! from the journal as the engine counts it and the budgets the outbox
//! checks. What it prints as the reason is what the next cycle would do.
//!
//! # The first reason nothing would happen
//!
//! Checked in this order, the first that applies is the reason
//! ([`Reason::code`] in `--format json`):
//!
//! 1. `prometheus_unreachable` — a query of the job got no answer;
//! 2. `series_missing` — Prometheus answered without a usable series for the
//!    device (absent or NaN);
//! 3. `guard_not_met` — a guard does not hold for the device;
//! 4. `condition_false` — the condition does not hold;
//! 5. `waiting_for_for` — pending: the condition has not held for `for` yet;
//! 6. `no_socket` — no socket powers the device (or its socket cannot send
//!    the command): the engine could not act even when everything else
//!    allows it, so this comes before the holds below;
//! 7. `cooling_down`, `outside_window`, `silenced` — the state machine's
//!    holds, in its own order ([`crate::rules::state`]);
//! 8. `limit_reached` — the job's `limit` refuses the action (or gave the
//!    episode up already); the engine checks it before the outbox;
//! 9. `budget` — a message budget would suppress the SMS (the outbox's
//!    check);
//! 10. `acted_this_episode` — firing, and the episode's actions are taken
//!     (or a repeat waits for `every` or for its verification);
//! 11. otherwise `would_act`: the SMS text and where it goes.
//!
//! Exit codes: 6 (upstream) when Prometheus did not answer, as `test-rule`
//! does — like `promtool query`, an explanation without its facts is a
//! failure of the service read; 0 for every other reason, which is the
//! answer asked for.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use super::error::Error;
use super::table::Format;
use super::{load_rules, Reader};
use crate::engine::{
    in_window, limit_refusal, limit_since, over_budget, silence_holding, timing, LimitCount,
};
use crate::exit::{outln, Exit};
use crate::journal::{Journal, JournalError, MassOutageRecord, Silence};
use crate::rules::condition::{
    evaluate, Condition, DeviceVerdict, Term, UnknownReason, FRESHNESS_QUERY,
};
use crate::rules::device::{is_label_name, DeviceKey};
use crate::rules::state::{self, ActionHeld, JobState, Phase, SilenceHold, Step};
use crate::rules::{ActionError, Job, Recipient, RuleSet, Sample, Verdict};

/// `jobctl explain` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ExplainArgs {
    /// The job's name (as `jobctl check` prints it).
    pub(crate) job: String,
    /// The device: one LABEL=VALUE per label of the device key
    /// (`--device platform_id=12 --device device_id=30785`).
    #[arg(long = "device", value_name = "LABEL=VALUE", required = true)]
    pub(crate) device: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub(crate) format: Format,
}

/// One term of the condition as the device sees it.
#[derive(Debug, Serialize)]
struct TermRow {
    /// The term as the rules write it.
    term: String,
    /// The PromQL sent.
    query: String,
    /// The device's value in the answer, if it has one.
    value: Option<f64>,
    /// `true`, `false` or `unknown (why)`.
    result: String,
}

/// One guard as the device sees it.
#[derive(Debug, Serialize)]
struct GuardRow {
    guard: String,
    query: String,
    /// `holds`, `does not hold`, `no answer`, or `not checked`.
    result: String,
}

/// The device's series from several targets, and which counted.
#[derive(Debug, Serialize)]
struct TargetsRow {
    /// The most series of the device in one term's answer.
    series: usize,
    /// The `instance` whose series counted, when only the freshest
    /// target's did; `None` when nothing told their ages apart, so that
    /// all of them counted.
    freshest: Option<String>,
}

/// The saved state, as the daemon left it.
#[derive(Debug, Serialize)]
struct StateRow {
    phase: &'static str,
    since: Option<String>,
    episode: Option<u64>,
    actions_in_episode: Option<u32>,
    last_action: Option<String>,
    /// Pending: the time the condition was observed true, and `for`.
    held_seconds: Option<u64>,
    for_seconds: u64,
    /// Whether the job gave up on the device in this episode.
    gave_up: bool,
}

#[derive(Debug, Serialize)]
struct CooldownRow {
    until: String,
    remaining_seconds: u64,
}

#[derive(Debug, Serialize)]
struct LimitRow {
    /// Actions counted on the device and to its socket in the window.
    on_device: u32,
    to_socket: Option<u32>,
    socket: Option<String>,
    actions: u32,
    per_seconds: u64,
}

#[derive(Debug, Serialize)]
struct VerifyingRow {
    episode: u64,
    action: u32,
    since: String,
    until: String,
}

#[derive(Debug, Serialize)]
struct SilenceRow {
    id: i64,
    until: String,
    comment: String,
    author: String,
}

/// The first reason nothing would happen, or the action that would.
#[derive(Debug, Serialize)]
struct Reason {
    /// One of the codes in the module's documentation.
    code: &'static str,
    /// The reason in words.
    text: String,
}

/// Everything `explain` says about one (job, device).
#[derive(Debug, Serialize)]
struct Explanation {
    job: String,
    device: String,
    name: Option<String>,
    at: String,
    /// How the terms combine: `single`, `all` or `any`.
    combine: &'static str,
    terms: Vec<TermRow>,
    guards: Vec<GuardRow>,
    /// When several targets serve the device (exporters in pairs).
    #[serde(skip_serializing_if = "Option::is_none")]
    targets: Option<TargetsRow>,
    verdict: String,
    state: StateRow,
    socket: Option<String>,
    cooldown: Option<CooldownRow>,
    in_window: bool,
    silence: Option<SilenceRow>,
    limit: Option<LimitRow>,
    verifying: Option<VerifyingRow>,
    reason: Reason,
}

/// What the journal knows of the (job, device), read once.
#[derive(Default)]
struct Recorded {
    state: Option<JobState>,
    silences: Vec<Silence>,
    /// The job's mass outage the daemon recorded as open, if it did.
    outage: Option<MassOutageRecord>,
}

pub(super) async fn run(config: &Path, args: ExplainArgs) -> Result<Exit, Error> {
    let rules = load_rules(config)?;
    let Some(job) = rules.job(&args.job) else {
        let known = rules.jobs.iter().map(|j| j.name.clone()).collect();
        return Err(Error::UnknownJob { job: args.job, known });
    };
    let key = device_key(&rules, &args.device)?;
    let reader = Reader::new(&rules).await?;
    let mut answers: HashMap<String, Vec<Sample>> = HashMap::new();
    let mut failures: Vec<(String, String)> = Vec::new();
    for query in job.queries() {
        match reader.query(&query).await {
            Ok(samples) => {
                answers.insert(query, samples);
            }
            Err(err) => failures.push((query, err)),
        }
    }
    // Which target's series count when several serve the device; without
    // it, they must all agree, as in a cycle whose freshness query failed.
    if let Ok(samples) = reader.query(FRESHNESS_QUERY).await {
        answers.insert(FRESHNESS_QUERY.to_string(), samples);
    }
    let now = Timestamp::now();
    let journal = match Journal::open_read_only_at(&rules.journal.location) {
        Ok(journal) => Some(journal),
        // No daemon has run yet: nothing recorded, nothing counted.
        Err(JournalError::Missing { .. } | JournalError::MissingInDatabase { .. }) => None,
        Err(err) => return Err(Error::Journal(err)),
    };
    let device = key.to_string();
    let recorded = match &journal {
        None => Recorded::default(),
        Some(journal) => Recorded {
            state: journal
                .load_states::<JobState>()?
                .into_iter()
                .find(|((j, d), _)| *j == job.name && *d == device)
                .map(|(_, state)| state),
            silences: journal.unended_silences(now)?,
            outage: journal.open_outages()?.into_iter().find(|o| o.job == job.name),
        },
    };
    let explanation =
        explain(&rules, job, &key, &answers, &failures, &recorded, journal.as_ref(), now)?;
    match args.format {
        Format::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&explanation).expect("an explanation serialises")
        ),
        Format::Table => crate::exit::out!("{}", render(&explanation)),
    }
    Ok(if explanation.reason.code == "prometheus_unreachable" { Exit::Upstream } else { Exit::Ok })
}

/// `--device` pairs as the device key: every label of the key once, no
/// other label.
fn device_key(rules: &RuleSet, pairs: &[String]) -> Result<DeviceKey, Error> {
    let key_labels = rules.device_key.labels();
    let fail = |matcher: &str, why: String| Error::Device { matcher: matcher.to_string(), why };
    let mut labels = BTreeMap::new();
    for pair in pairs {
        let Some((label, value)) = pair.split_once('=') else {
            return Err(fail(
                pair,
                format!(
                    "write LABEL=VALUE, one per label of the device key ({})",
                    rules.device_key
                ),
            ));
        };
        if !is_label_name(label) {
            return Err(fail(
                pair,
                "the label must be a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)".into(),
            ));
        }
        if !key_labels.iter().any(|l| l == label) {
            return Err(fail(
                pair,
                format!(
                    "{label} is not a label of the device key; name a device by {}",
                    rules.device_key
                ),
            ));
        }
        if labels.insert(label.to_string(), value.to_string()).is_some() {
            return Err(fail(pair, format!("label {label} is given twice")));
        }
    }
    rules.device_key.key_of(&labels).ok_or_else(|| {
        let missing: Vec<&str> =
            key_labels.iter().filter(|l| !labels.contains_key(*l)).map(String::as_str).collect();
        Error::Device {
            matcher: pairs.join(" "),
            why: format!(
                "missing {}: a device is named by {}",
                missing.join(", "),
                rules.device_key
            ),
        }
    })
}

fn time(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn seconds(from: Timestamp, to: Timestamp) -> u64 {
    u64::try_from(to.duration_since(from).as_secs()).unwrap_or(0)
}

/// `4m 20s`, to the second.
fn span(seconds: u64) -> String {
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

/// The explanation of `job` on `key` at `now`, from one round of answers
/// (`failures`: the queries that got none) and what the journal recorded.
#[allow(clippy::too_many_arguments, reason = "one call site, each argument a distinct input")]
fn explain(
    rules: &RuleSet,
    job: &Job,
    key: &DeviceKey,
    answers: &HashMap<String, Vec<Sample>>,
    failures: &[(String, String)],
    recorded: &Recorded,
    journal: Option<&Journal>,
    now: Timestamp,
) -> Result<Explanation, Error> {
    let device = key.to_string();
    let evaluation = job.evaluate(answers, &rules.device_key);
    let verdict: DeviceVerdict =
        evaluation.devices.get(key).cloned().unwrap_or_else(|| evaluation.absent.clone());
    let terms =
        job.condition.terms().iter().map(|term| term_row(rules, job, key, term, answers)).collect();
    let guards = job
        .guards
        .iter()
        .map(|guard| {
            let alone = evaluate(
                &job.condition,
                &job.devices,
                std::slice::from_ref(guard),
                answers,
                &rules.device_key,
            );
            let seen = alone.devices.get(key).unwrap_or(&alone.absent);
            let query = guard.expr.trim().to_string();
            let result = match (&seen.verdict, &seen.unknown_because) {
                (Verdict::True | Verdict::False, _) => "holds",
                (Verdict::Unknown, Some(UnknownReason::GuardNotMet { .. })) => "does not hold",
                (Verdict::Unknown, Some(UnknownReason::QueryFailed { query: failed }))
                    if *failed == query =>
                {
                    "no answer"
                }
                (Verdict::Unknown, _) => "not checked: the condition is unknown",
            };
            let result = result.to_string();
            GuardRow { guard: guard.to_string(), query, result }
        })
        .collect();

    // The state as the running daemon holds it: its pending run counts
    // up to now, as its next cycle will count it.
    let saved = recorded.state.clone().unwrap_or_default().as_the_daemon_holds_it();
    let timing = timing(job);
    let outgoing = rules.outgoing(job, key, &verdict.labels);
    let socket = rules.socket_for(key).map(|s| s.name.clone());
    let silence_hold =
        silence_holding(&recorded.silences, &job.name, &verdict.labels, socket.as_deref(), now);
    let window_open = in_window(job, now);

    // The engine's own sequence: the pure step; the silence matched only
    // for an action that would be due; then the limit counted from the
    // journal, which gives the episode up when reached.
    let mut inputs = state::Evaluation {
        now,
        verdict: verdict.verdict,
        value: verdict.values.first().map(|v| v.value),
        in_window: window_open,
        limit_reached: false,
        silence: None,
        // As the daemon last found it: the share is the whole job's, which
        // one device's answers cannot tell.
        mass_outage: recorded.outage.as_ref().map(|o| o.since),
    };
    let mut step = saved.advance(&timing, &inputs);
    if step.action.is_some() && silence_hold.is_some() {
        inputs.silence = silence_hold;
        step = saved.advance(&timing, &inputs);
    }
    let (limit, limit_refused) = match (job.limit, journal) {
        (Some(limit), Some(journal)) => {
            let recipient_socket = match &outgoing {
                Ok(out) => match &out.to {
                    Recipient::Sms { socket, .. } => socket.clone(),
                    Recipient::Webhook { .. } => None,
                },
                Err(_) => socket.clone(),
            };
            let (on_device, to_socket) = journal.count_actions_since(
                &job.name,
                &device,
                recipient_socket.as_deref(),
                limit_since(limit, now),
            )?;
            let counted = LimitCount { on_device, to_socket, rides_along: false };
            let refused = limit_refusal(limit, counted, recipient_socket.as_deref());
            let row = LimitRow {
                on_device,
                to_socket: recipient_socket.as_ref().map(|_| to_socket),
                socket: recipient_socket,
                actions: limit.actions,
                per_seconds: limit.per.as_secs(),
            };
            (Some(row), refused)
        }
        (Some(limit), None) => (
            Some(LimitRow {
                on_device: 0,
                to_socket: socket.as_ref().map(|_| 0),
                socket: socket.clone(),
                actions: limit.actions,
                per_seconds: limit.per.as_secs(),
            }),
            None,
        ),
        (None, _) => (None, None),
    };
    if step.action.is_some() && limit_refused.is_some() {
        inputs.limit_reached = true;
        step = saved.advance(&timing, &inputs);
    }

    let cooldown = saved
        .last_action_at
        .map(|last| crate::clock::after(last, timing.cooldown))
        .filter(|until| *until > now)
        .map(|until| CooldownRow { until: time(until), remaining_seconds: seconds(now, until) });
    let silence = silence_hold.map(|hold| silence_row(&recorded.silences, hold));
    let reason = reason(ReasonInputs {
        rules,
        verdict: &verdict,
        failures,
        step: &step,
        outgoing: &outgoing,
        limit_refused: limit_refused.as_deref(),
        silences: &recorded.silences,
        outage: recorded.outage.as_ref(),
        journal,
        job,
        now,
    })?;
    Ok(Explanation {
        job: job.name.clone(),
        device,
        name: verdict.labels.get("name").filter(|n| !n.is_empty()).cloned(),
        at: time(now),
        combine: match job.condition {
            Condition::Single(_) => "single",
            Condition::All(_) => "all",
            Condition::Any(_) => "any",
        },
        terms,
        guards,
        targets: verdict.several_targets.map(|several| TargetsRow {
            series: several.series,
            freshest: several
                .freshest_chosen
                .then(|| verdict.labels.get("instance").cloned().unwrap_or_default()),
        }),
        verdict: match &verdict.unknown_because {
            Some(why) => format!("{} ({why})", verdict.verdict),
            None => verdict.verdict.to_string(),
        },
        state: state_row(&saved, job.hold_for, now),
        socket,
        cooldown,
        in_window: window_open,
        silence,
        limit,
        verifying: saved.verifying.map(|v| VerifyingRow {
            episode: v.episode,
            action: v.attempt,
            since: time(v.action_at),
            until: time(v.until),
        }),
        reason,
    })
}

/// A term of the condition evaluated on its own, as the engine evaluates
/// a condition.
fn term_row(
    rules: &RuleSet,
    job: &Job,
    key: &DeviceKey,
    term: &Term,
    answers: &HashMap<String, Vec<Sample>>,
) -> TermRow {
    let alone =
        evaluate(&Condition::Single(term.clone()), &job.devices, &[], answers, &rules.device_key);
    let seen = alone.devices.get(key).unwrap_or(&alone.absent);
    TermRow {
        term: term.to_string(),
        query: term.query(&job.devices),
        value: seen.values.first().map(|v| v.value),
        result: match &seen.unknown_because {
            Some(why) => format!("unknown ({why})"),
            None => seen.verdict.to_string(),
        },
    }
}

fn state_row(state: &JobState, hold_for: Duration, now: Timestamp) -> StateRow {
    let held = state.phase.held_at(now).map(|held| held.as_secs());
    let (since, episode, actions) = match &state.phase {
        Phase::Inactive => (None, None, None),
        Phase::Pending { since, .. } => (Some(*since), None, None),
        Phase::Firing { since, episode, actions_taken } => {
            (Some(*since), Some(*episode), Some(*actions_taken))
        }
        Phase::Resolved { at, episode } => (Some(*at), Some(*episode), None),
    };
    StateRow {
        phase: state.phase.name().as_str(),
        since: since.map(time),
        episode,
        actions_in_episode: actions,
        last_action: state.last_action_at.map(time),
        held_seconds: held,
        for_seconds: hold_for.as_secs(),
        gave_up: episode.is_some_and(|e| state.gave_up_in == Some(e))
            && matches!(state.phase, Phase::Firing { .. }),
    }
}

fn silence_row(silences: &[Silence], hold: SilenceHold) -> SilenceRow {
    let found = silences.iter().find(|s| s.id == hold.id);
    SilenceRow {
        id: hold.id.0,
        until: time(hold.until),
        comment: found.map(|s| s.comment.clone()).unwrap_or_default(),
        author: found.map(|s| s.author.clone()).unwrap_or_default(),
    }
}

/// What [`reason`] decides from.
struct ReasonInputs<'a> {
    rules: &'a RuleSet,
    verdict: &'a DeviceVerdict,
    failures: &'a [(String, String)],
    step: &'a Step,
    outgoing: &'a Result<crate::rules::Outgoing, ActionError>,
    limit_refused: Option<&'a str>,
    silences: &'a [Silence],
    /// The job's open mass outage, as the daemon recorded it.
    outage: Option<&'a MassOutageRecord>,
    journal: Option<&'a Journal>,
    job: &'a Job,
    now: Timestamp,
}

/// The first reason nothing would happen, in the module's order.
fn reason(inputs: ReasonInputs<'_>) -> Result<Reason, Error> {
    let ReasonInputs { rules, verdict, failures, step, outgoing, limit_refused, silences, .. } =
        inputs;
    let because = |code: &'static str, text: String| Ok(Reason { code, text });
    if let Some((query, why)) = failures.first() {
        return because(
            "prometheus_unreachable",
            format!("Prometheus did not answer {query}: {why}; the device's verdict is unknown, so nothing advances"),
        );
    }
    if verdict.verdict == Verdict::Unknown {
        let code = match &verdict.unknown_because {
            Some(UnknownReason::GuardNotMet { .. }) => "guard_not_met",
            _ => "series_missing",
        };
        let why = verdict.unknown_because.as_ref().map(ToString::to_string).unwrap_or_default();
        return because(code, format!("{why}; an unknown verdict never moves towards an action"));
    }
    if verdict.verdict == Verdict::False {
        return because(
            "condition_false",
            format!("the condition {} does not hold", inputs.job.condition),
        );
    }
    if let Some(held) = step.state.phase.held_at(inputs.now) {
        return because(
            "waiting_for_for",
            format!(
                "waiting for `for`: the condition held {} of {}",
                span(held.as_secs()),
                span(inputs.job.hold_for.as_secs())
            ),
        );
    }
    let outgoing = match outgoing {
        Ok(outgoing) => outgoing,
        Err(err) => return because("no_socket", format!("cannot act: {err}")),
    };
    if let Some(held) = step.held {
        return match held {
            ActionHeld::Cooldown { until } => because(
                "cooling_down",
                format!(
                    "cooling down: {} left (until {})",
                    span(seconds(inputs.now, until)),
                    time(until)
                ),
            ),
            ActionHeld::OutsideWindow => {
                because("outside_window", "outside the job's schedule window".into())
            }
            ActionHeld::Silenced(hold) => {
                let row = silence_row(silences, hold);
                because(
                    "silenced",
                    format!(
                        "silenced by silence #{} until {} ({}: {:?})",
                        row.id, row.until, row.author, row.comment
                    ),
                )
            }
            ActionHeld::MassOutage { since } => {
                let counts = inputs
                    .outage
                    .map(|o| format!(": {} of {} devices bad", o.bad, o.known))
                    .unwrap_or_default();
                because(
                    "mass_outage",
                    format!(
                        "held by the job's mass outage since {}{counts} (as of the daemon's last cycle); it leaves when fewer devices are bad",
                        time(since)
                    ),
                )
            }
        };
    }
    if step.gave_up.is_some() {
        return because("limit_reached", limit_refused.unwrap_or("limit reached").to_string());
    }
    if step.action.is_none() {
        if let Phase::Firing { episode, actions_taken, .. } = step.state.phase {
            if step.state.gave_up_in == Some(episode) {
                return because(
                    "limit_reached",
                    format!("the job gave up on this device in episode {episode}: its limit was reached; it acts again in a later episode if the limit allows"),
                );
            }
            let waiting = match (&step.state.verifying, inputs.job.repeat) {
                (Some(v), Some(_)) => format!(
                    "; a repeat waits for the verification of action {} (until {})",
                    v.attempt,
                    time(v.until)
                ),
                (None, Some(repeat)) if actions_taken <= repeat.max => {
                    let next =
                        step.state.last_action_at.map(|at| crate::clock::after(at, repeat.every));
                    next.map(|at| format!("; the next repeat is due at {}", time(at)))
                        .unwrap_or_default()
                }
                _ => "; no further action until the episode ends".to_string(),
            };
            return because(
                "acted_this_episode",
                format!(
                    "already acted in episode {episode} ({} taken){waiting}",
                    super::count(actions_taken as usize, "action", "actions")
                ),
            );
        }
        return because("condition_false", "nothing is due".into());
    }
    if let (Some(journal), Recipient::Sms { socket: Some(socket), .. }) =
        (inputs.journal, &outgoing.to)
    {
        if let Some(over) = over_budget(journal, &rules.budgets, socket, inputs.now)? {
            return because("budget", format!("the SMS would be suppressed: {over}"));
        }
    }
    because("would_act", format!("would act now: {:?} to {}", outgoing.text, outgoing.to))
}

/// The explanation as a person reads it.
fn render(e: &Explanation) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let name = e.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
    let _ = writeln!(out, "job {:?} on {}{name} at {}", e.job, e.device, e.at);
    let _ = writeln!(out, "  condition ({}):", e.combine);
    for term in &e.terms {
        let value = term.value.map_or_else(|| "no value".to_string(), |v| format!("value {v}"));
        let _ = writeln!(out, "    {}: {value}: {}", term.term, term.result);
        let _ = writeln!(out, "      query: {}", term.query);
    }
    for guard in &e.guards {
        let _ = writeln!(out, "  guard {}: {}", guard.guard, guard.result);
    }
    if let Some(targets) = &e.targets {
        let counted = match &targets.freshest {
            Some(instance) => format!(
                "the freshest sample wins: only instance {instance:?}'s count, its last successful poll being the newest"
            ),
            None => "nothing tells their ages apart, so all of them count and must agree".into(),
        };
        let _ = writeln!(
            out,
            "  targets:   {} series from several targets (exporters in pairs); {counted}",
            targets.series
        );
    }
    let _ = writeln!(out, "  verdict:   {}", e.verdict);
    let s = &e.state;
    let mut state = s.phase.to_string();
    if let Some(since) = &s.since {
        let _ = write!(state, " since {since}");
    }
    if let Some(episode) = s.episode {
        let _ = write!(state, " (episode {episode})");
    }
    if let Some(held) = s.held_seconds {
        let _ = write!(state, ", held {} of {}", span(held), span(s.for_seconds));
    }
    if s.gave_up {
        state.push_str(", gave up: limit reached");
    }
    let _ = writeln!(out, "  state:     {state}");
    if let Some(last) = &s.last_action {
        let _ = writeln!(out, "  last action: {last}");
    }
    match &e.cooldown {
        Some(c) => {
            let _ = writeln!(
                out,
                "  cooldown:  {} left (until {})",
                span(c.remaining_seconds),
                c.until
            );
        }
        None => {
            let _ = writeln!(out, "  cooldown:  none");
        }
    }
    if let Some(limit) = &e.limit {
        let per = span(limit.per_seconds);
        let socket = match (&limit.socket, limit.to_socket) {
            (Some(socket), Some(n)) => format!(", {n} to socket {socket}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  limit:     {} of {} in {per} on this device{socket}",
            limit.on_device, limit.actions
        );
    }
    if let Some(v) = &e.verifying {
        let _ = writeln!(
            out,
            "  verifying: action {} of episode {}, since {} until {}",
            v.action, v.episode, v.since, v.until
        );
    }
    let _ = writeln!(out, "  window:    {}", if e.in_window { "open" } else { "closed" });
    if let Some(silence) = &e.silence {
        let _ = writeln!(
            out,
            "  silence:   #{} until {} ({:?})",
            silence.id, silence.until, silence.comment
        );
    }
    let _ = writeln!(out, "  socket:    {}", e.socket.as_deref().unwrap_or("none"));
    let _ = writeln!(out, "reason: {}", e.reason.text);
    out
}
