//! `jobctl test-rule JOB --replay 7d`: what the job would have done over
//! Prometheus's history, device by device, and what it would have cost.
//!
//! The simulation is the engine's ([`crate::engine::replay`]); this file
//! reads the range from the command line and prints the outcome, as a
//! timeline or as JSON. Like the rest of `test-rule` without `--send`, it
//! sends nothing and writes nothing: the journal, when there is one, is
//! opened read-only for its silences (each held over its own span), no
//! lock is taken, no SMS backend built.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::json;

use super::error::Error;
use super::table::Format;
use super::{count, parse_since, prometheus_client};
use crate::engine::replay::{
    self, ActionResult, DeviceTimeline, Episode, EpisodeEnd, Replay, ReplayOptions, ReplayRange,
    SimulatedMessage,
};
use crate::exit::{outln, Exit};
use crate::journal::{Journal, JournalError};
use crate::rules::{Job, RuleSet};
use crate::sms::Price;

/// The `test-rule` options that make it a replay.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ReplayArgs {
    /// Replay the job over this much history, up to --to (e.g. 7d, 12h),
    /// instead of evaluating it now. Sends nothing, writes nothing.
    #[arg(long, value_name = "DURATION", group = "replay_range", conflicts_with = "send")]
    pub(crate) replay: Option<String>,
    /// Replay from this time: RFC 3339 (2026-11-28T12:00:00Z) or a duration
    /// back from now (3d).
    #[arg(long, value_name = "TIME", group = "replay_range", conflicts_with = "send")]
    pub(crate) from: Option<String>,
    /// End of the replay, like --from; default now.
    #[arg(long, value_name = "TIME", requires = "replay_range")]
    pub(crate) to: Option<String>,
    /// Time between two replayed evaluations, whole seconds (30s, 1m);
    /// default the rules' [prometheus] interval.
    #[arg(long, value_name = "DURATION", requires = "replay_range")]
    pub(crate) step: Option<String>,
    /// Output of the replay.
    #[arg(long, value_enum, default_value_t = Format::Table, requires = "replay_range")]
    pub(crate) format: Format,
}

impl ReplayArgs {
    /// Whether a replay was asked for.
    pub(super) fn wanted(&self) -> bool {
        self.replay.is_some() || self.from.is_some()
    }

    /// The range the options describe, or why they do not describe one.
    fn range(&self, rules: &RuleSet, now: Timestamp) -> Result<ReplayRange, Error> {
        let bad = |text: String| Error::Replay(text);
        let to = match &self.to {
            Some(text) => parse_since(text).map_err(|e| bad(format!("--to: {e}")))?,
            None => now,
        };
        let from = match (&self.replay, &self.from) {
            (Some(text), _) => {
                let length = parse_duration("--replay", text)?;
                if length.is_zero() {
                    return Err(bad(format!(
                        "--replay {text}: the history to replay must be longer than zero, e.g. 7d"
                    )));
                }
                let length = jiff::SignedDuration::try_from(length)
                    .map_err(|_| bad(format!("--replay {text}: too long")))?;
                to.checked_sub(length).map_err(|_| bad(format!("--replay {text}: too long")))?
            }
            (None, Some(text)) => parse_since(text).map_err(|e| bad(format!("--from: {e}")))?,
            (None, None) => unreachable!("a replay has --replay or --from"),
        };
        let step = match &self.step {
            Some(text) => parse_duration("--step", text)?,
            None => {
                Duration::from_secs(rules.source.interval().as_secs_f64().ceil().max(1.0) as u64)
            }
        };
        ReplayRange::new(from, to, step).map_err(bad)
    }
}

fn parse_duration(option: &str, text: &str) -> Result<Duration, Error> {
    // humantime's own message lists every unit spelling it knows; a
    // sysadmin needs the few that matter.
    humantime::parse_duration(text).map_err(|_| {
        Error::Replay(format!(
            "{option} {text}: not a duration; write one such as 30s, 5m, 12h or 7d"
        ))
    })
}

/// Replays `job` as `args` say and prints what it would have done.
pub(super) async fn run(rules: &RuleSet, job: &Job, args: &ReplayArgs) -> Result<Exit, Error> {
    let range = args.range(rules, Timestamp::now())?;
    let price = match &rules.sms {
        Some(sms) => sms.price().map_err(|err| Error::Sms(err.in_file(&rules.main_file)))?,
        None => None,
    };
    let silences = match Journal::open_read_only_at(&rules.journal.location) {
        Ok(journal) => journal.silences(Timestamp::now(), true)?,
        // No daemon or `jobctl silence` has run yet: no silence ever held.
        Err(JournalError::Missing { .. } | JournalError::MissingInDatabase { .. }) => Vec::new(),
        Err(err) => return Err(Error::Journal(err)),
    };
    let Some(prometheus) = prometheus_client(rules)? else {
        return Err(Error::Replay(
            "--replay reads Prometheus's history, and these rules scrape the exporters directly ([source]), which keeps none; replay with rules that have [prometheus]".to_string(),
        ));
    };
    let started = std::time::Instant::now();
    let options = ReplayOptions::default();
    let replayed = replay::replay(rules, job, &prometheus, range, options, silences)
        .await
        .map_err(Error::ReplayFailed)?;
    tracing::debug!(
        "replayed {} steps in {:.1?} ({} range queries, {:.1?} waiting for Prometheus)",
        range.steps(),
        started.elapsed(),
        replayed.requests,
        replayed.query_time
    );
    let totals = Totals::of(&replayed, price.as_ref());
    match args.format {
        Format::Table => print_timeline(job, &replayed, &totals),
        Format::Json => {
            let document = to_json(job, &replayed, &totals);
            outln!("{}", serde_json::to_string_pretty(&document).expect("JSON values print"));
        }
    }
    Ok(Exit::Ok)
}

/// `2026-11-28T12:00:00Z`.
fn time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `5m`, `1h 30m`: a length of time in whole seconds.
fn length(from: Timestamp, to: Timestamp) -> String {
    let seconds = (to.as_second() - from.as_second()).max(0) as u64;
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

/// What the replay adds up to.
struct Totals {
    episodes: usize,
    fired: usize,
    recovered_before_for: usize,
    open: usize,
    /// Messages that would have left, by socket (`-` for people).
    per_socket: BTreeMap<String, usize>,
    messages: usize,
    suppressed: usize,
    segments: usize,
    action_errors: usize,
    recovered: usize,
    not_recovered: usize,
    unverified: usize,
    gave_up: usize,
    /// The price and what the messages that would have left cost.
    cost: Option<(Price, f64)>,
}

impl Totals {
    fn of(replayed: &Replay, price: Option<&Price>) -> Totals {
        let mut totals = Totals {
            episodes: 0,
            fired: 0,
            recovered_before_for: 0,
            open: 0,
            per_socket: BTreeMap::new(),
            messages: 0,
            suppressed: 0,
            segments: 0,
            action_errors: 0,
            recovered: 0,
            not_recovered: 0,
            unverified: 0,
            gave_up: 0,
            cost: None,
        };
        for episode in replayed.devices.iter().flat_map(|d| &d.episodes) {
            totals.episodes += 1;
            totals.fired += usize::from(episode.fired.is_some());
            match episode.end {
                EpisodeEnd::RecoveredBeforeFor { .. } => totals.recovered_before_for += 1,
                EpisodeEnd::Open => totals.open += 1,
                EpisodeEnd::Resolved { .. } => {}
            }
            totals.action_errors += episode.action_errors.len();
            totals.gave_up += usize::from(episode.gave_up.is_some());
            for message in &episode.messages {
                match message.result {
                    Some((_, ActionResult::Recovered { .. })) => totals.recovered += 1,
                    Some((_, ActionResult::NotRecovered)) => totals.not_recovered += 1,
                    Some((_, ActionResult::Unverified)) => totals.unverified += 1,
                    None => {}
                }
                if message.with.is_some() {
                    // Rode along on another device's message.
                    continue;
                }
                if message.suppressed.is_some() {
                    totals.suppressed += 1;
                    continue;
                }
                totals.messages += 1;
                totals.segments += message.segments;
                *totals.per_socket.entry(message.socket().to_string()).or_default() += 1;
            }
        }
        totals.cost =
            price.map(|price| (price.clone(), price.per_segment * totals.segments as f64));
        totals
    }
}

fn print_timeline(job: &Job, replayed: &Replay, totals: &Totals) {
    let range = &replayed.range;
    outln!(
        "job {:?}: replay from {} to {} every {} ({})",
        job.name,
        time(range.start()),
        time(range.end()),
        humantime::format_duration(range.step()),
        count(range.steps(), "evaluation", "evaluations")
    );
    outln!(
        "  when {} for {}, cooldown {}",
        job.condition,
        humantime::format_duration(job.hold_for),
        humantime::format_duration(job.cooldown)
    );
    outln!("  simulated: nothing was sent, nothing written");
    for device in &replayed.devices {
        print_device(job, device);
    }
    outln!("\ntotals");
    outln!(
        "  episodes:   {} ({} fired, {} recovered on their own before `for`, {} still open at the end)",
        totals.episodes,
        totals.fired,
        totals.recovered_before_for,
        totals.open
    );
    let sockets: Vec<String> = totals
        .per_socket
        .iter()
        .map(|(socket, n)| match socket.as_str() {
            "-" => format!("people: {n}"),
            socket => format!("socket {socket}: {n}"),
        })
        .collect();
    let sockets =
        if sockets.is_empty() { String::new() } else { format!(" ({})", sockets.join(", ")) };
    outln!(
        "  messages:   {} would have left{sockets}; {} suppressed by budgets",
        totals.messages,
        totals.suppressed
    );
    if job.verify.is_some() || job.limit.is_some() {
        outln!(
            "  results:    {} recovered, {} not recovered, {} unverified, {} gave up",
            totals.recovered,
            totals.not_recovered,
            totals.unverified,
            totals.gave_up
        );
    }
    if totals.action_errors > 0 {
        outln!("  errors:     {} actions could not become a message", totals.action_errors);
    }
    outln!(
        "  devices:    {} with an episode, of {} seen",
        replayed.devices.len(),
        replayed.devices_seen
    );
    outln!(
        "  unknown:    {}",
        count(replayed.unknown_evaluations as usize, "evaluation", "evaluations")
    );
    match &totals.cost {
        Some((price, cost)) => outln!(
            "  cost:       {} ({} at {})",
            price.amount(*cost),
            count(totals.segments, "segment", "segments"),
            price.amount(price.per_segment)
        ),
        None => outln!(
            "  cost:       unknown; set [sms] price = {{ per_message = …, currency = \"…\" }}"
        ),
    }
}

fn print_device(job: &Job, device: &DeviceTimeline) {
    match &device.name {
        Some(name) => outln!("\n{} ({name})", device.device),
        None => outln!("\n{}", device.device),
    }
    for episode in &device.episodes {
        outln!("  {}  condition true", time(episode.started));
        if let Some((at, number)) = episode.fired {
            outln!("  {}  fired (episode {number})", time(at));
        }
        // Holds, messages and results in time order (a hold before the
        // message it delayed, a result after its message).
        let mut lines: Vec<(Timestamp, u8, String)> = Vec::new();
        lines.extend(episode.held.iter().map(|(at, why)| (*at, 0, why.clone())));
        for message in &episode.messages {
            lines.push((message.at, 1, describe_message(message)));
            if let Some((at, result)) = message.result {
                lines.push((at, 2, describe_result(message, result)));
            }
        }
        if let Some((at, why)) = &episode.gave_up {
            lines.push((*at, 1, format!("gave up: {why}")));
        }
        lines.sort_by_key(|(at, order, _)| (*at, *order));
        for (at, _, line) in lines {
            outln!("  {}  {line}", time(at));
        }
        for (at, why) in &episode.action_errors {
            outln!("  {}  cannot act: {why}", time(*at));
        }
        let unknown = match episode.unknown_steps {
            0 => String::new(),
            n => format!(" ({} unknown)", count(n as usize, "evaluation", "evaluations")),
        };
        match episode.end {
            EpisodeEnd::RecoveredBeforeFor { at } => outln!(
                "  {}  condition false after {}: recovered on its own before `for` ({}){unknown}",
                time(at),
                length(episode.started, at),
                humantime::format_duration(job.hold_for)
            ),
            EpisodeEnd::Resolved { at } => {
                let nothing = if episode.messages.is_empty() { ", nothing sent" } else { "" };
                outln!(
                    "  {}  condition false after {}: resolved{nothing}{unknown}",
                    time(at),
                    length(episode.started, at)
                );
            }
            EpisodeEnd::Open => outln!("  still true at the end of the range{unknown}"),
        }
    }
}

fn describe_message(message: &SimulatedMessage) -> String {
    let repeat = if message.attempt > 1 {
        format!(" (repeat {})", message.attempt - 1)
    } else {
        String::new()
    };
    let base = match &message.with {
        Some(first) => format!(
            "action{repeat} rides along on the message for {first} (one message per socket)"
        ),
        None if message.also_for.is_empty() => {
            format!("would send {:?} to {}{repeat}", message.text, message.to)
        }
        None => format!(
            "would send {:?} to {}{repeat}, also for {}",
            message.text,
            message.to,
            message.also_for.join(", ")
        ),
    };
    match &message.suppressed {
        Some(why) => format!("{base}, but suppressed: {why}"),
        None => base,
    }
}

fn describe_result(message: &SimulatedMessage, result: ActionResult) -> String {
    let action = match message.attempt {
        1 => "the action".to_string(),
        n => format!("repeat {}", n - 1),
    };
    match result {
        ActionResult::Recovered { after } => format!(
            "recovered {} after {action}",
            humantime::format_duration(Duration::from_secs(after.as_secs()))
        ),
        ActionResult::NotRecovered => format!("not recovered after {action}"),
        ActionResult::Unverified => {
            format!("unverified: the condition was unknown throughout the window after {action}")
        }
    }
}

fn result_json(result: Option<(Timestamp, ActionResult)>) -> serde_json::Value {
    match result {
        None => serde_json::Value::Null,
        Some((at, ActionResult::Recovered { after })) => {
            json!({ "at": time(at), "result": "recovered", "after_seconds": after.as_secs() })
        }
        Some((at, ActionResult::NotRecovered)) => {
            json!({ "at": time(at), "result": "not_recovered" })
        }
        Some((at, ActionResult::Unverified)) => json!({ "at": time(at), "result": "unverified" }),
    }
}

fn to_json(job: &Job, replayed: &Replay, totals: &Totals) -> serde_json::Value {
    let range = &replayed.range;
    let devices: Vec<serde_json::Value> = replayed
        .devices
        .iter()
        .map(|device| {
            json!({
                "device": device.device,
                "name": device.name,
                "episodes": device.episodes.iter().map(episode_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "job": job.name,
        "from": time(range.start()),
        "to": time(range.end()),
        "step_seconds": range.step().as_secs(),
        "evaluations": range.steps(),
        "range_queries": replayed.requests,
        "devices": devices,
        "totals": {
            "episodes": totals.episodes,
            "fired": totals.fired,
            "recovered_before_for": totals.recovered_before_for,
            "open": totals.open,
            "messages": totals.messages,
            "messages_per_socket": totals.per_socket,
            "suppressed_by_budgets": totals.suppressed,
            "action_errors": totals.action_errors,
            "recovered": totals.recovered,
            "not_recovered": totals.not_recovered,
            "unverified": totals.unverified,
            "gave_up": totals.gave_up,
            "segments": totals.segments,
            "devices": replayed.devices.len(),
            "devices_seen": replayed.devices_seen,
            "unknown_evaluations": replayed.unknown_evaluations,
            "cost": totals.cost.as_ref().map(|(price, cost)| json!({
                "amount": (cost * 100.0).round() / 100.0,
                "currency": price.currency,
                "per_segment": price.per_segment,
            })),
        },
    })
}

fn episode_json(episode: &Episode) -> serde_json::Value {
    let (end, ended_at) = match episode.end {
        EpisodeEnd::RecoveredBeforeFor { at } => ("recovered_before_for", Some(time(at))),
        EpisodeEnd::Resolved { at } => ("resolved", Some(time(at))),
        EpisodeEnd::Open => ("open", None),
    };
    let messages: Vec<serde_json::Value> = episode
        .messages
        .iter()
        .map(|message| {
            json!({
                "at": time(message.at),
                "attempt": message.attempt,
                "socket": message.socket(),
                "phone": message.to.address(),
                "text": message.text,
                "segments": message.segments,
                "suppressed": message.suppressed,
                "with": message.with,
                "also_for": message.also_for,
                "result": result_json(message.result),
            })
        })
        .collect();
    json!({
        "started": time(episode.started),
        "fired": episode.fired.map(|(at, _)| time(at)),
        "episode": episode.fired.map(|(_, number)| number),
        "held": episode.held.iter()
            .map(|(at, why)| json!({ "at": time(*at), "reason": why }))
            .collect::<Vec<_>>(),
        "gave_up": episode.gave_up.as_ref().map(|(at, why)| json!({ "at": time(*at), "reason": why })),
        "messages": messages,
        "action_errors": episode.action_errors.iter()
            .map(|(at, why)| json!({ "at": time(*at), "error": why }))
            .collect::<Vec<_>>(),
        "unknown_evaluations": episode.unknown_steps,
        "end": end,
        "ended": ended_at,
    })
}
