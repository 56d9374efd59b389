//! `jobctl history`: the journal of executions, newest first.
//!
//! Reads the journal read-only, so it never disturbs a running daemon.

use std::path::Path;

use serde::Serialize;

use super::error::Error;
use super::table::{render_table, Format};
use super::{load_rules, parse_since, read_journal};
use crate::exit::Exit;
use crate::journal::{ActionResult, Attempt, Execution, ExecutionStatus, HistoryFilter};

/// `jobctl history` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct HistoryArgs {
    /// Only this job.
    #[arg(long)]
    pub(crate) job: Option<String>,
    /// Only this device, as jobctl prints it: `{platform_id="12", device_id="30785"}`.
    #[arg(long)]
    pub(crate) device: Option<String>,
    /// Only executions since this long ago (`2h`, `7d`) or this time (RFC 3339).
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Only this outcome: planned, sending, sent, failed, uncertain, suppressed, dry_run.
    #[arg(long)]
    pub(crate) outcome: Option<ExecutionStatus>,
    /// At most this many rows.
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: u32,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub(crate) format: Format,
}

#[derive(Serialize)]
struct Row<'a> {
    id: i64,
    time: String,
    job: Option<&'a str>,
    device: Option<&'a str>,
    /// Every device the message was for: one, or several on one socket
    /// that fell due together.
    devices: Vec<&'a str>,
    socket: &'a str,
    phone: &'a str,
    text: &'a str,
    episode: Option<u64>,
    action: Option<u32>,
    trigger_value: Option<f64>,
    outcome: &'a str,
    backend: Option<&'a str>,
    detail: Option<&'a str>,
    manual: bool,
    /// How many backend attempts there were (kept for scripts that count).
    attempts: usize,
    /// Each backend attempt, oldest first: which backend, how it ended, and
    /// its reference or reason.
    attempt_details: Vec<AttemptRow<'a>>,
    /// What became of the action: recovered, not_recovered, unverified
    /// (`verify`) or gave_up (`limit`); `null` while unknown or not asked.
    result: Option<&'static str>,
    /// When the result was recorded.
    result_time: Option<String>,
    /// For `recovered`: seconds from the action to the first evaluation
    /// that found the condition false.
    recovered_after_seconds: Option<u64>,
    /// For a message several devices shared: each device's result (the
    /// fields above are its first device's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    device_results: Vec<DeviceResultRow<'a>>,
    /// The channel: `sms`, or `webhook` (then `socket` is the webhook's
    /// name, `phone` its URL without credentials, `text` the payload).
    channel: &'static str,
    /// For a message about a rule's event: `not_recovered`, `gave_up`
    /// (escalations) or `action` (`webhooks_on_action`).
    event: Option<&'a str>,
    /// The execution that event is about.
    about: Option<i64>,
}

#[derive(Serialize)]
struct DeviceResultRow<'a> {
    device: &'a str,
    result: Option<&'static str>,
    recovered_after_seconds: Option<u64>,
}

#[derive(Serialize)]
struct AttemptRow<'a> {
    time: String,
    backend: &'a str,
    outcome: &'a str,
    detail: Option<&'a str>,
}

impl<'a> AttemptRow<'a> {
    fn of(a: &'a Attempt) -> AttemptRow<'a> {
        AttemptRow {
            time: a.at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            backend: &a.backend,
            outcome: a.outcome.as_str(),
            detail: a.detail.as_deref(),
        }
    }
}

impl<'a> Row<'a> {
    fn of(e: &'a Execution) -> Row<'a> {
        Row {
            id: e.id.0,
            time: e.created_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            job: e.job.as_deref(),
            device: e.device_key.as_deref(),
            devices: e.devices.iter().map(String::as_str).collect(),
            socket: &e.socket,
            phone: &e.phone,
            text: &e.text,
            episode: e.episode,
            action: e.attempt,
            trigger_value: e.trigger_value,
            outcome: e.status.as_str(),
            backend: e.backend.as_deref(),
            detail: e.detail.as_deref(),
            manual: e.manual,
            attempts: e.attempts.len(),
            attempt_details: e.attempts.iter().map(AttemptRow::of).collect(),
            result: e.result.map(ActionResult::as_str),
            result_time: e.result_at.map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
            recovered_after_seconds: e.recovered_after.map(|d| d.as_secs()),
            device_results: e
                .device_results
                .iter()
                .map(|d| DeviceResultRow {
                    device: &d.device_key,
                    result: d.result.map(ActionResult::as_str),
                    recovered_after_seconds: d.recovered_after.map(|d| d.as_secs()),
                })
                .collect(),
            channel: e.channel.as_str(),
            event: e.event.as_deref(),
            about: e.about.map(|id| id.0),
        }
    }
}

pub(super) fn run(config: &Path, args: HistoryArgs) -> Result<Exit, Error> {
    let rules = load_rules(config)?;
    let since = args.since.as_deref().map(parse_since).transpose().map_err(Error::Since)?;
    let journal = read_journal(&rules)?;
    let filter = HistoryFilter {
        job: args.job,
        device_key: args.device,
        since,
        status: args.outcome,
        limit: Some(args.limit),
    };
    let executions = journal.history(&filter)?;
    let rows: Vec<Row<'_>> = executions.iter().map(Row::of).collect();
    match args.format {
        Format::Json => {
            crate::exit::outln!("{}", serde_json::to_string_pretty(&rows).expect("rows serialise"));
        }
        // As `kubectl get` does: an empty table says so on stderr, so that
        // a script reading stdout sees no rows rather than a lone header.
        Format::Table if rows.is_empty() => eprintln!("no execution in the journal matches"),
        Format::Table => crate::exit::out!("{}", table(&rows)),
    }
    Ok(Exit::Ok)
}

fn table(rows: &[Row<'_>]) -> String {
    let header = [
        "ID",
        "TIME (UTC)",
        "JOB",
        "DEVICE",
        "SOCKET",
        "TEXT",
        "OUTCOME",
        "RESULT",
        "BACKEND",
        "DETAIL",
    ];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.time.clone(),
                r.job.unwrap_or("(manual)").to_string(),
                if r.devices.len() > 1 {
                    r.devices.join(" + ")
                } else {
                    r.device.unwrap_or("-").to_string()
                },
                match r.channel {
                    "webhook" => format!("webhook {}", r.socket),
                    _ => r.socket.to_string(),
                },
                match r.channel {
                    "webhook" => format!("(JSON payload, {} bytes)", r.text.len()),
                    _ => format!("{:?}", r.text),
                },
                r.outcome.to_string(),
                result_text(r),
                r.backend.unwrap_or("-").to_string(),
                r.detail.unwrap_or("").to_string(),
            ]
        })
        .collect();
    render_table(&header, &cells)
}

/// `recovered after 4m`, `not_recovered`, `gave_up`, or nothing; for a
/// message several devices shared, each device's in the order of `DEVICE`,
/// joined by ` + ` (`-` for one not known yet); for a message about an
/// event, the event and its execution (`not_recovered of #7`).
fn result_text(row: &Row<'_>) -> String {
    if let Some(event) = row.event {
        return match row.about {
            Some(id) => format!("{event} of #{id}"),
            None => event.to_string(),
        };
    }
    if row.device_results.is_empty() {
        return one_result(row.result, row.recovered_after_seconds);
    }
    let each: Vec<String> = row
        .device_results
        .iter()
        .map(|d| match one_result(d.result, d.recovered_after_seconds) {
            known if !known.is_empty() => known,
            _ => "-".to_string(),
        })
        .collect();
    if each.iter().all(|r| r == "-") {
        return String::new();
    }
    each.join(" + ")
}

fn one_result(result: Option<&str>, recovered_after_seconds: Option<u64>) -> String {
    match (result, recovered_after_seconds) {
        (Some(result), Some(seconds)) => {
            let after = std::time::Duration::from_secs(seconds);
            format!("{result} after {}", humantime::format_duration(after))
        }
        (Some(result), None) => result.to_string(),
        (None, _) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::journal::{Channel, DeviceResult, ExecutionId, ExecutionStatus};

    fn shared(results: [Option<(ActionResult, Option<u64>)>; 2]) -> Execution {
        let devices = ["{d=\"1\"}".to_string(), "{d=\"2\"}".to_string()];
        Execution {
            id: ExecutionId(7),
            job: Some("offline".into()),
            device_key: Some(devices[0].clone()),
            devices: devices.to_vec(),
            socket: "strip".into(),
            phone: "+79990000501".into(),
            text: "#12#0#1#1#".into(),
            episode: Some(1),
            attempt: Some(1),
            trigger_value: Some(0.0),
            status: ExecutionStatus::Sent,
            backend: Some("log".into()),
            detail: None,
            manual: false,
            created_at: jiff::Timestamp::UNIX_EPOCH,
            updated_at: jiff::Timestamp::UNIX_EPOCH,
            attempts: Vec::new(),
            result: results[0].map(|(r, _)| r),
            result_at: None,
            recovered_after: results[0].and_then(|(_, s)| s).map(Duration::from_secs),
            device_results: devices
                .iter()
                .zip(results)
                .map(|(device, known)| DeviceResult {
                    device_key: device.clone(),
                    result: known.map(|(r, _)| r),
                    recovered_after: known.and_then(|(_, s)| s).map(Duration::from_secs),
                })
                .collect(),
            channel: Channel::Sms,
            event: None,
            about: None,
        }
    }

    #[test]
    fn a_shared_message_shows_each_devices_result_in_device_order() {
        let both = shared([
            Some((ActionResult::Recovered, Some(240))),
            Some((ActionResult::NotRecovered, None)),
        ]);
        assert_eq!(result_text(&Row::of(&both)), "recovered after 4m + not_recovered");
        let one = shared([None, Some((ActionResult::Unverified, None))]);
        assert_eq!(result_text(&Row::of(&one)), "- + unverified");
        assert_eq!(result_text(&Row::of(&shared([None, None]))), "");

        let json = serde_json::to_value(Row::of(&both)).unwrap();
        assert_eq!(json["device_results"][1]["result"], "not_recovered");
        assert_eq!(json["device_results"][0]["recovered_after_seconds"], 240);
    }
}
