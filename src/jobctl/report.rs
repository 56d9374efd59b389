//! `jobctl report --since 30d`: what each job did over a period, per job and
//! per device, and the devices power-cycled most, read from the journal
//! without disturbing a running daemon.
//!
//! The question it answers is whether the watchdog helps: how many
//! episodes, how many actions, how many of them brought the device back
//! (and how fast), how many were held back and why. The counting is the
//! journal's ([`crate::journal::Journal::activity_since`]); this file sums
//! it per job, takes the medians and prints it as a table, JSON or CSV
//! (RFC 4180: a header row, CRLF line ends, fields with a comma, quote or
//! line break in double quotes, quotes doubled).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::error::Error;
use super::table::render_table;
use super::{load_rules, parse_since, read_journal};
use crate::exit::{out, Exit};
use crate::journal::DeviceActivity;

/// How many devices "the most cycled" lists.
const MOST_CYCLED: usize = 10;

/// `jobctl report` output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReportFormat {
    /// Aligned columns for a terminal.
    Table,
    /// One JSON document, for scripts.
    Json,
    /// Comma-separated values with a header row (RFC 4180), one row per job
    /// and per (job, device).
    Csv,
}

/// `jobctl report` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ReportArgs {
    /// The period: a duration back from now (`30d`, `12h`) or an RFC 3339
    /// time.
    #[arg(long, default_value = "30d")]
    pub(crate) since: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub(crate) format: ReportFormat,
}

/// The counts of a job, or of a job on one device.
#[derive(Debug, Default, Serialize)]
struct Counts {
    episodes: u64,
    actions: u64,
    /// Socket commands that may have left (power cycles).
    cycles: u64,
    recovered: u64,
    not_recovered: u64,
    unverified: u64,
    gave_up: u64,
    /// Median time from an action to its device's recovery.
    median_recovery_seconds: Option<f64>,
    sent: u64,
    failed: u64,
    uncertain: u64,
    suppressed: u64,
    silenced: u64,
    held: u64,
}

impl Counts {
    fn add(&mut self, a: &DeviceActivity) {
        self.episodes += a.episodes;
        self.actions += a.actions;
        self.cycles += a.cycles;
        self.recovered += a.recovered;
        self.not_recovered += a.not_recovered;
        self.unverified += a.unverified;
        self.gave_up += a.gave_up;
        self.sent += a.sent;
        self.failed += a.failed;
        self.uncertain += a.uncertain;
        self.suppressed += a.suppressed;
        self.silenced += a.silenced;
        self.held += a.held;
    }
}

#[derive(Debug, Serialize)]
struct JobReport {
    job: String,
    devices: usize,
    #[serde(flatten)]
    counts: Counts,
}

#[derive(Debug, Serialize)]
struct DeviceReport {
    job: String,
    device: String,
    #[serde(flatten)]
    counts: Counts,
}

#[derive(Debug, Serialize)]
struct CycledDevice {
    device: String,
    cycles: u64,
    jobs: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    since: String,
    until: String,
    jobs: Vec<JobReport>,
    devices: Vec<DeviceReport>,
    most_cycled: Vec<CycledDevice>,
}

/// The median of ascending milliseconds, in seconds.
fn median_seconds(sorted_ms: &[i64]) -> Option<f64> {
    let n = sorted_ms.len();
    if n == 0 {
        return None;
    }
    let ms = if n % 2 == 1 {
        sorted_ms[n / 2] as f64
    } else {
        (sorted_ms[n / 2 - 1] as f64 + sorted_ms[n / 2] as f64) / 2.0
    };
    Some(ms / 1000.0)
}

fn time(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(super) fn run(config: &Path, args: ReportArgs) -> Result<Exit, Error> {
    let since = parse_since(&args.since).map_err(Error::Since)?;
    let rules = load_rules(config)?;
    let journal = read_journal(&rules)?;
    let now = jiff::Timestamp::now();
    let report = build(journal.activity_since(since)?, since, now);
    match args.format {
        ReportFormat::Json => crate::exit::outln!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report serialises")
        ),
        ReportFormat::Table => out!("{}", render(&report)),
        ReportFormat::Csv => out!("{}", csv(&report)),
    }
    Ok(Exit::Ok)
}

/// Sums the journal's counts per job, takes the medians, ranks the devices.
fn build(activity: Vec<DeviceActivity>, since: jiff::Timestamp, now: jiff::Timestamp) -> Report {
    let mut jobs: BTreeMap<String, (usize, Counts, Vec<i64>)> = BTreeMap::new();
    let mut cycled: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
    let mut devices = Vec::with_capacity(activity.len());
    for a in activity {
        let job = jobs.entry(a.job.clone()).or_default();
        job.0 += 1;
        job.1.add(&a);
        job.2.extend_from_slice(&a.recovery_ms);
        if a.cycles > 0 {
            let device = cycled.entry(a.device_key.clone()).or_default();
            device.0 += a.cycles;
            device.1.push(a.job.clone());
        }
        let mut counts = Counts::default();
        counts.add(&a);
        counts.median_recovery_seconds = median_seconds(&a.recovery_ms);
        devices.push(DeviceReport { job: a.job, device: a.device_key, counts });
    }
    let jobs = jobs
        .into_iter()
        .map(|(job, (devices, mut counts, mut recovery))| {
            recovery.sort_unstable();
            counts.median_recovery_seconds = median_seconds(&recovery);
            JobReport { job, devices, counts }
        })
        .collect();
    let mut most_cycled: Vec<CycledDevice> = cycled
        .into_iter()
        .map(|(device, (cycles, jobs))| CycledDevice { device, cycles, jobs })
        .collect();
    most_cycled.sort_by(|a, b| b.cycles.cmp(&a.cycles).then_with(|| a.device.cmp(&b.device)));
    most_cycled.truncate(MOST_CYCLED);
    Report { since: time(since), until: time(now), jobs, devices, most_cycled }
}

/// `4m 30s`, to the second; `-` without a value.
fn duration(seconds: Option<f64>) -> String {
    seconds.map_or_else(
        || "-".to_string(),
        |s| humantime::format_duration(Duration::from_secs(s.round() as u64)).to_string(),
    )
}

/// The columns after the job (and device): the same for both tables.
fn cells(c: &Counts) -> [String; 10] {
    [
        c.episodes.to_string(),
        c.actions.to_string(),
        c.recovered.to_string(),
        c.not_recovered.to_string(),
        c.unverified.to_string(),
        c.gave_up.to_string(),
        duration(c.median_recovery_seconds),
        c.sent.to_string(),
        c.suppressed.to_string(),
        format!("{}/{}", c.silenced, c.held),
    ]
}

const COUNT_HEADER: [&str; 10] = [
    "EPISODES",
    "ACTIONS",
    "RECOVERED",
    "NOT RECOVERED",
    "UNVERIFIED",
    "GAVE UP",
    "MEDIAN RECOVERY",
    "SENT",
    "SUPPRESSED",
    "SILENCED/HELD",
];

fn render(report: &Report) -> String {
    let mut out = format!("from {} to {} (UTC)\n\n", report.since, report.until);
    if report.devices.is_empty() {
        out.push_str("No job acted or was held back in this period.\n");
        return out;
    }
    let mut header = vec!["JOB", "DEVICES"];
    header.extend(COUNT_HEADER);
    let header: [&str; 12] = header.try_into().expect("12 columns");
    let rows: Vec<[String; 12]> = report
        .jobs
        .iter()
        .map(|j| {
            let mut row = vec![j.job.clone(), j.devices.to_string()];
            row.extend(cells(&j.counts));
            row.try_into().expect("12 cells")
        })
        .collect();
    out.push_str(&render_table(&header, &rows));
    out.push('\n');
    let mut header = vec!["JOB", "DEVICE"];
    header.extend(COUNT_HEADER);
    let header: [&str; 12] = header.try_into().expect("12 columns");
    let rows: Vec<[String; 12]> = report
        .devices
        .iter()
        .map(|d| {
            let mut row = vec![d.job.clone(), d.device.clone()];
            row.extend(cells(&d.counts));
            row.try_into().expect("12 cells")
        })
        .collect();
    out.push_str(&render_table(&header, &rows));
    out.push('\n');
    if report.most_cycled.is_empty() {
        out.push_str("No device was power-cycled in this period.\n");
    } else {
        let rows: Vec<[String; 3]> = report
            .most_cycled
            .iter()
            .map(|d| [d.device.clone(), d.cycles.to_string(), d.jobs.join(", ")])
            .collect();
        out.push_str(&render_table(&["MOST CYCLED DEVICE", "CYCLES", "JOBS"], &rows));
    }
    out
}

/// One CSV field, quoted when RFC 4180 requires it.
fn field(text: &str) -> String {
    if text.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn csv(report: &Report) -> String {
    let header = [
        "scope",
        "job",
        "device",
        "devices",
        "episodes",
        "actions",
        "cycles",
        "recovered",
        "not_recovered",
        "unverified",
        "gave_up",
        "median_recovery_seconds",
        "sent",
        "failed",
        "uncertain",
        "suppressed",
        "silenced",
        "held",
    ];
    let mut out = header.join(",");
    out.push_str("\r\n");
    let mut line = |scope: &str, job: &str, device: &str, devices: String, c: &Counts| {
        let fields = [
            scope.to_string(),
            field(job),
            field(device),
            devices,
            c.episodes.to_string(),
            c.actions.to_string(),
            c.cycles.to_string(),
            c.recovered.to_string(),
            c.not_recovered.to_string(),
            c.unverified.to_string(),
            c.gave_up.to_string(),
            c.median_recovery_seconds.map(|s| s.to_string()).unwrap_or_default(),
            c.sent.to_string(),
            c.failed.to_string(),
            c.uncertain.to_string(),
            c.suppressed.to_string(),
            c.silenced.to_string(),
            c.held.to_string(),
        ];
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    };
    for j in &report.jobs {
        line("job", &j.job, "", j.devices.to_string(), &j.counts);
    }
    for d in &report.devices {
        line("device", &d.job, &d.device, String::new(), &d.counts);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_take_the_middle_or_the_mean_of_the_two_middles() {
        assert_eq!(median_seconds(&[]), None);
        assert_eq!(median_seconds(&[60_000]), Some(60.0));
        assert_eq!(median_seconds(&[60_000, 120_000, 600_000]), Some(120.0));
        assert_eq!(median_seconds(&[60_000, 120_000]), Some(90.0));
    }

    #[test]
    fn csv_fields_are_quoted_as_rfc_4180_says() {
        assert_eq!(field("offline"), "offline");
        assert_eq!(
            field(r#"{platform_id="12", device_id="1"}"#),
            r#""{platform_id=""12"", device_id=""1""}""#
        );
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
    }
}
