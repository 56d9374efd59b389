//! `jobctl status`: where every job stands on every device, which firing
//! devices a silence holds back, which jobs a mass outage holds, for each
//! pending or firing device how long `for` has held, the cooldown left and
//! the `limit` used, and how much of each message budget is used, read from
//! the journal without disturbing a running daemon.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::error::Error;
use super::table::{render_table, Format};
use super::{load_rules, read_journal};
use crate::engine::limit_since;
use crate::exit::Exit;
use crate::journal::Journal;
use crate::rules::state::{JobState, Phase, Verifying};
use crate::rules::{Job, RuleSet};

/// `jobctl status` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub(crate) format: Format,
}

#[derive(Serialize)]
struct DeviceRow {
    job: String,
    device: String,
    state: &'static str,
    since: Option<String>,
    episode: Option<u64>,
    last_action: Option<String>,
    /// What holds the firing episode's action back, when something the
    /// daemon journalled does (a silence still in force).
    #[serde(skip_serializing_if = "Option::is_none")]
    held_by: Option<HeldRow>,
    /// The latest action's verification (`verify`), while it is open.
    verifying: Option<VerifyingRow>,
    /// Whether the job gave up on the device in this episode (`limit`).
    gave_up: bool,
    /// Pending: how long the condition has held, its current run counted
    /// up to now as the running daemon counts it, and the job's `for`.
    #[serde(skip_serializing_if = "Option::is_none")]
    held_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    for_seconds: Option<u64>,
    /// Pending, or firing before the episode's first action: when the
    /// cooldown since the last action ends, while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    cooldown_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cooldown_remaining_seconds: Option<u64>,
    /// Pending or firing under a job `limit`: the actions counted in its
    /// window.
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<LimitUse>,
}

#[derive(Serialize)]
struct LimitUse {
    /// Actions on the device, and to its socket, in the window.
    on_device: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    to_socket: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket: Option<String>,
    actions: u32,
    per_seconds: u64,
}

#[derive(Serialize)]
struct HeldRow {
    /// `silenced`.
    reason: &'static str,
    /// The silence's number.
    silence: i64,
    /// When the silence ends.
    until: String,
}

#[derive(Serialize)]
struct VerifyingRow {
    /// The action's episode and number.
    episode: u64,
    action: u32,
    /// When the action was taken and when the window ends.
    since: String,
    until: String,
    /// Seconds of the window gone and in all.
    elapsed_seconds: u64,
    window_seconds: u64,
}

#[derive(Serialize)]
struct JobRow {
    job: String,
    enabled: bool,
    counts: BTreeMap<&'static str, usize>,
    /// The job's mass outage, while one lasts: its socket commands are held.
    #[serde(skip_serializing_if = "Option::is_none")]
    mass_outage: Option<OutageRow>,
}

#[derive(Serialize)]
struct OutageRow {
    /// When it began.
    since: String,
    /// Bad and known devices at the daemon's latest count.
    bad: u64,
    known: u64,
}

#[derive(Serialize)]
struct BudgetRow {
    socket: String,
    last_hour: u32,
    hour_limit: Option<u32>,
    last_day: u32,
    day_limit: Option<u32>,
}

#[derive(Serialize)]
struct Status {
    jobs: Vec<JobRow>,
    devices: Vec<DeviceRow>,
    budgets: Vec<BudgetRow>,
}

fn time(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `verifying, 4m of 10m`: how far an open verification is at `now`.
fn verifying_text(row: &VerifyingRow) -> String {
    let minutes = |seconds: u64| std::time::Duration::from_secs(seconds / 60 * 60);
    let (elapsed, window) = if row.window_seconds < 120 {
        let s = std::time::Duration::from_secs;
        (s(row.elapsed_seconds), s(row.window_seconds))
    } else {
        (minutes(row.elapsed_seconds), minutes(row.window_seconds))
    };
    format!(
        "verifying, {} of {}",
        humantime::format_duration(elapsed),
        humantime::format_duration(window)
    )
}

fn verifying_row(v: &Verifying, now: jiff::Timestamp) -> VerifyingRow {
    let seconds = |from: jiff::Timestamp, to: jiff::Timestamp| {
        u64::try_from(to.duration_since(from).as_secs()).unwrap_or(0)
    };
    let window = seconds(v.action_at, v.until);
    VerifyingRow {
        episode: v.episode,
        action: v.attempt,
        since: time(v.action_at),
        until: time(v.until),
        elapsed_seconds: seconds(v.action_at, now).min(window),
        window_seconds: window,
    }
}

fn describe(device: String, job: &Job, state: &JobState, now: jiff::Timestamp) -> DeviceRow {
    let (since, episode) = match &state.phase {
        Phase::Inactive => (None, None),
        Phase::Pending { since, .. } => (Some(time(*since)), None),
        Phase::Firing { since, episode, .. } => (Some(time(*since)), Some(*episode)),
        Phase::Resolved { at, episode } => (Some(time(*at)), Some(*episode)),
    };
    let held_seconds = state.phase.held_at(now).map(|held| held.as_secs());
    // The cooldown gates an episode's first action only.
    let gated = match &state.phase {
        Phase::Pending { .. } => true,
        Phase::Firing { actions_taken, .. } => *actions_taken == 0,
        Phase::Inactive | Phase::Resolved { .. } => false,
    };
    let cooldown_until = state
        .last_action_at
        .map(|last| crate::clock::after(last, job.cooldown))
        .filter(|until| gated && *until > now);
    DeviceRow {
        job: job.name.clone(),
        device,
        state: state.phase.name().as_str(),
        since,
        episode,
        last_action: state.last_action_at.map(time),
        held_by: None,
        verifying: state.verifying.as_ref().map(|v| verifying_row(v, now)),
        gave_up: match (&state.phase, state.gave_up_in) {
            (Phase::Firing { episode, .. }, Some(gave_up)) => *episode == gave_up,
            _ => false,
        },
        held_seconds,
        for_seconds: held_seconds.map(|_| job.hold_for.as_secs()),
        cooldown_until: cooldown_until.map(time),
        cooldown_remaining_seconds: cooldown_until
            .map(|until| u64::try_from(until.duration_since(now).as_secs()).unwrap_or(0)),
        limit: None,
    }
}

/// The actions a pending or firing device's job `limit` counts now, from
/// the journal as the engine counts them.
fn limit_use(
    rules: &RuleSet,
    journal: &Journal,
    job: &Job,
    device: &str,
    now: jiff::Timestamp,
) -> Result<Option<LimitUse>, Error> {
    let Some(limit) = job.limit else { return Ok(None) };
    // The journal keeps a device by its text form, which the sockets'
    // `powers` keys display as.
    let socket = rules
        .sockets
        .iter()
        .find(|s| s.powers.iter().any(|key| key.to_string() == device))
        .map(|s| s.name.clone());
    let (on_device, to_socket) = journal.count_actions_since(
        &job.name,
        device,
        socket.as_deref(),
        limit_since(limit, now),
    )?;
    Ok(Some(LimitUse {
        on_device,
        to_socket: socket.as_ref().map(|_| to_socket),
        socket,
        actions: limit.actions,
        per_seconds: limit.per.as_secs(),
    }))
}

/// `4m 20s`, to the second.
fn span(seconds: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
}

pub(super) fn run(config: &Path, args: StatusArgs) -> Result<Exit, Error> {
    let rules = load_rules(config)?;
    let journal = read_journal(&rules)?;
    let states = journal.load_states()?;
    let now = jiff::Timestamp::now();
    let mut devices: Vec<DeviceRow> = Vec::new();
    for ((job, device), state) in &states {
        let Some(job) = rules.job(job) else { continue };
        let mut row = describe(device.clone(), job, state, now);
        if matches!(state.phase, Phase::Pending { .. } | Phase::Firing { .. }) {
            row.limit = limit_use(&rules, &journal, job, device, now)?;
        }
        devices.push(row);
    }
    devices.sort_by(|a, b| (&a.job, &a.device).cmp(&(&b.job, &b.device)));
    let now = jiff::Timestamp::now();
    for hold in journal.active_holds(now)? {
        let held = &hold.action;
        let row = devices.iter_mut().find(|d| {
            d.job == held.job
                && d.device == held.device_key
                && d.state == "firing"
                && d.episode == Some(held.episode)
        });
        if let Some(row) = row {
            row.held_by = Some(HeldRow {
                reason: "silenced",
                silence: held.silence.0,
                until: time(hold.until),
            });
        }
    }
    let mut outages: BTreeMap<String, OutageRow> = journal
        .open_outages()?
        .into_iter()
        .map(|o| (o.job, OutageRow { since: time(o.since), bad: o.bad, known: o.known }))
        .collect();
    let jobs: Vec<JobRow> = rules
        .jobs
        .iter()
        .map(|job| {
            let mut counts = BTreeMap::new();
            for row in devices.iter().filter(|d| d.job == job.name) {
                *counts.entry(row.state).or_default() += 1;
            }
            let mass_outage = outages.remove(&job.name);
            JobRow { job: job.name.clone(), enabled: job.enabled, counts, mass_outage }
        })
        .collect();
    let mut budgets = Vec::new();
    for socket in rules.sockets.iter().map(|s| Some(s.name.as_str())).chain([None]) {
        let count = |secs: i64| {
            journal.count_sent_since(socket, now - jiff::SignedDuration::from_secs(secs))
        };
        match (count(3600), count(86_400)) {
            (Ok(last_hour), Ok(last_day)) => {
                let (hour_limit, day_limit) = match socket {
                    Some(_) => (rules.budgets.socket_hour, rules.budgets.socket_day),
                    None => (rules.budgets.global_hour, rules.budgets.global_day),
                };
                budgets.push(BudgetRow {
                    socket: socket.unwrap_or("(all)").to_string(),
                    last_hour,
                    hour_limit,
                    last_day,
                    day_limit,
                });
            }
            (Err(err), _) | (_, Err(err)) => return Err(Error::Journal(err)),
        }
    }
    let status = Status { jobs, devices, budgets };
    match args.format {
        Format::Json => {
            crate::exit::outln!(
                "{}",
                serde_json::to_string_pretty(&status).expect("status serialises")
            );
        }
        Format::Table => crate::exit::out!("{}", render(&status)),
    }
    Ok(Exit::Ok)
}

fn render(status: &Status) -> String {
    let mut out = String::new();
    let jobs: Vec<[String; 3]> = status
        .jobs
        .iter()
        .map(|j| {
            let counts: Vec<String> =
                j.counts.iter().map(|(state, n)| format!("{n} {state}")).collect();
            let counts =
                if counts.is_empty() { "no devices seen yet".into() } else { counts.join(", ") };
            [j.job.clone(), if j.enabled { "yes".into() } else { "no".into() }, counts]
        })
        .collect();
    out.push_str(&render_table(&["JOB", "ENABLED", "DEVICES"], &jobs));
    let outages: Vec<[String; 3]> = status
        .jobs
        .iter()
        .filter_map(|j| {
            let o = j.mass_outage.as_ref()?;
            Some([j.job.clone(), o.since.clone(), format!("{} of {}", o.bad, o.known)])
        })
        .collect();
    if !outages.is_empty() {
        out.push_str("\nMass outages (socket commands held until fewer devices are bad):\n");
        out.push_str(&render_table(&["JOB", "SINCE (UTC)", "DEVICES BAD"], &outages));
    }
    let active: Vec<[String; 6]> = status
        .devices
        .iter()
        .filter(|d| d.state != "inactive")
        .map(|d| {
            [
                d.job.clone(),
                d.device.clone(),
                match (&d.verifying, d.gave_up) {
                    (Some(v), _) => format!("{} ({})", d.state, verifying_text(v)),
                    (None, true) => format!("{} (gave up: limit reached)", d.state),
                    (None, false) => d.state.to_string(),
                },
                d.since.clone().unwrap_or_default(),
                d.episode.map(|e| e.to_string()).unwrap_or_default(),
                d.last_action.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out.push('\n');
    if active.is_empty() {
        out.push_str("No device is pending, firing or resolved.\n");
    } else {
        out.push_str(&render_table(
            &["JOB", "DEVICE", "STATE", "SINCE (UTC)", "EPISODE", "LAST ACTION (UTC)"],
            &active,
        ));
    }
    let held: Vec<[String; 4]> = status
        .devices
        .iter()
        .filter_map(|d| {
            let held = d.held_by.as_ref()?;
            Some([
                d.job.clone(),
                d.device.clone(),
                format!("silence #{}", held.silence),
                held.until.clone(),
            ])
        })
        .collect();
    if !held.is_empty() {
        out.push('\n');
        out.push_str(&render_table(&["JOB", "DEVICE", "HELD BY", "UNTIL (UTC)"], &held));
    }
    let waiting: Vec<[String; 5]> = status
        .devices
        .iter()
        .filter(|d| d.held_seconds.is_some() || d.cooldown_until.is_some() || d.limit.is_some())
        .map(|d| {
            let held = match (d.held_seconds, d.for_seconds) {
                (Some(held), Some(for_)) => format!("{} of {}", span(held), span(for_)),
                _ => String::new(),
            };
            let cooldown = match (&d.cooldown_until, d.cooldown_remaining_seconds) {
                (Some(until), Some(left)) => format!("{} (until {until})", span(left)),
                _ => String::new(),
            };
            let limit = d.limit.as_ref().map_or_else(String::new, |l| {
                let per = span(l.per_seconds);
                match (&l.socket, l.to_socket) {
                    (Some(socket), Some(n)) => format!(
                        "{} of {} in {per} ({n} to socket {socket})",
                        l.on_device, l.actions
                    ),
                    _ => format!("{} of {} in {per}", l.on_device, l.actions),
                }
            });
            [d.job.clone(), d.device.clone(), held, cooldown, limit]
        })
        .collect();
    if !waiting.is_empty() {
        out.push('\n');
        out.push_str(&render_table(
            &["JOB", "DEVICE", "FOR HELD", "COOLDOWN LEFT", "LIMIT USED"],
            &waiting,
        ));
    }
    out.push('\n');
    let budgets: Vec<[String; 3]> = status
        .budgets
        .iter()
        .map(|b| [b.socket.clone(), used(b.last_hour, b.hour_limit), used(b.last_day, b.day_limit)])
        .collect();
    out.push_str(&render_table(&["SOCKET", "SMS LAST HOUR", "SMS LAST DAY"], &budgets));
    out
}

/// `2/3` against a budget, `2` without one.
fn used(count: u32, limit: Option<u32>) -> String {
    match limit {
        Some(limit) => format!("{count}/{limit}"),
        None => count.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_in_a_mass_outage_is_listed_with_since_and_counts() {
        let status = Status {
            jobs: vec![
                JobRow {
                    job: "offline".into(),
                    enabled: true,
                    counts: BTreeMap::from([("firing", 30)]),
                    mass_outage: Some(OutageRow {
                        since: "2026-11-28T09:01:00Z".into(),
                        bad: 30,
                        known: 40,
                    }),
                },
                JobRow {
                    job: "frozen".into(),
                    enabled: true,
                    counts: BTreeMap::new(),
                    mass_outage: None,
                },
            ],
            devices: Vec::new(),
            budgets: Vec::new(),
        };
        let text = render(&status);
        assert!(
            text.contains(
                "Mass outages (socket commands held until fewer devices are bad):\n\
                 JOB      SINCE (UTC)           DEVICES BAD\n\
                 offline  2026-11-28T09:01:00Z  30 of 40\n"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json["jobs"][0]["mass_outage"],
            serde_json::json!({"since": "2026-11-28T09:01:00Z", "bad": 30, "known": 40})
        );
        assert!(json["jobs"][1].get("mass_outage").is_none());
    }

    #[test]
    fn an_open_verification_reads_as_how_far_it_is() {
        let at = |s: i64| jiff::Timestamp::from_second(1_700_000_000 + s).unwrap();
        let open = Verifying {
            episode: 2,
            attempt: 1,
            action_at: at(0),
            until: at(600),
            last_seen: crate::rules::state::Seen::Bad,
        };
        let row = verifying_row(&open, at(4 * 60 + 20));
        assert_eq!((row.elapsed_seconds, row.window_seconds), (260, 600));
        assert_eq!(verifying_text(&row), "verifying, 4m of 10m");
        assert_eq!(verifying_text(&verifying_row(&open, at(900))), "verifying, 10m of 10m");
        let short = Verifying { until: at(90), ..open };
        assert_eq!(verifying_text(&verifying_row(&short, at(45))), "verifying, 45s of 1m 30s");
    }
}
