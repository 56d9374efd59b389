//! `jobctl status`: where every job stands on every device, which firing
//! devices a silence holds back, and how much of each message budget is
//! used, read from the journal without disturbing a running daemon.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::error::Error;
use super::table::{render_table, Format};
use super::{load_rules, read_journal};
use crate::exit::Exit;
use crate::rules::state::{JobState, Phase};

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
struct JobRow {
    job: String,
    enabled: bool,
    counts: BTreeMap<&'static str, usize>,
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

fn describe(device: String, job: String, state: &JobState) -> DeviceRow {
    let (since, episode) = match &state.phase {
        Phase::Inactive => (None, None),
        Phase::Pending { since, .. } => (Some(time(*since)), None),
        Phase::Firing { since, episode, .. } => (Some(time(*since)), Some(*episode)),
        Phase::Resolved { at, episode } => (Some(time(*at)), Some(*episode)),
    };
    DeviceRow {
        job,
        device,
        state: state.phase.name().as_str(),
        since,
        episode,
        last_action: state.last_action_at.map(time),
        held_by: None,
    }
}

pub(super) fn run(config: &Path, args: StatusArgs) -> Result<Exit, Error> {
    let rules = load_rules(config)?;
    let journal = read_journal(&rules)?;
    let states = journal.load_states()?;
    let mut devices: Vec<DeviceRow> = states
        .iter()
        .filter(|((job, _), _)| rules.job(job).is_some())
        .map(|((job, device), state)| describe(device.clone(), job.clone(), state))
        .collect();
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
    let jobs: Vec<JobRow> = rules
        .jobs
        .iter()
        .map(|job| {
            let mut counts = BTreeMap::new();
            for row in devices.iter().filter(|d| d.job == job.name) {
                *counts.entry(row.state).or_default() += 1;
            }
            JobRow { job: job.name.clone(), enabled: job.enabled, counts }
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
    let active: Vec<[String; 6]> = status
        .devices
        .iter()
        .filter(|d| d.state != "inactive")
        .map(|d| {
            [
                d.job.clone(),
                d.device.clone(),
                d.state.to_string(),
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
