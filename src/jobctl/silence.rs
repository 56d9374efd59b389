//! `jobctl silence add | list | expire`: hold a job's, some devices' or a
//! socket's actions back for a while (a site in maintenance), without
//! stopping or reloading the daemon.
//!
//! A silence is written to the journal through the one write path that
//! works beside a running daemon ([`SilenceWriter`]); the daemon reads it at
//! its next cycle. Everything a person types is checked first, against the
//! rules (a job or socket they do not have is an error, not a silence that
//! never matches), and nothing is written unless all of it is valid.
//!
//! A silence must say what it holds: `--job`, `--device LABEL=VALUE` or
//! `--socket`, which all have to match when several are given. Holding
//! every action of every job is possible but never the default: it is
//! `--everything`, on its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use clap::Subcommand;
use jiff::Timestamp;
use serde::Serialize;

use super::error::Error;
use super::table::{render_table, Format};
use super::{load_rules, read_journal};
use crate::exit::{outln, Exit};
use crate::journal::{Expired, NewSilence, Silence, SilenceId, SilenceWriter};
use crate::rules::device::is_label_name;
use crate::rules::RuleSet;

/// The longest silence: a silence is for an incident or a maintenance,
/// and one that outlives everybody's memory of it is a job switched off.
const LONGEST: Duration = Duration::from_secs(366 * 24 * 3600);

/// The longest comment, and the longest author name.
const MAX_COMMENT_CHARS: usize = 500;
const MAX_AUTHOR_CHARS: usize = 100;

/// `jobctl silence` and its subcommands.
#[derive(Debug, clap::Args)]
pub(crate) struct SilenceArgs {
    /// What to do with silences.
    #[command(subcommand)]
    command: SilenceCommand,
}

#[derive(Debug, Subcommand)]
enum SilenceCommand {
    /// Hold back, for a while, every action on what the matchers name (all
    /// of them must match); the running daemon honours it at its next cycle.
    Add(AddArgs),
    /// List the silences in force (with --all, ended ones too).
    List(ListArgs),
    /// End a silence now; held actions still due leave at the next cycle.
    Expire(ExpireArgs),
}

/// `jobctl silence add` flags.
#[derive(Debug, clap::Args)]
struct AddArgs {
    /// Only this job's actions.
    #[arg(long, value_name = "NAME")]
    job: Option<String>,
    /// Only devices whose series have this label value; repeat for more
    /// labels (all must match).
    #[arg(long = "device", value_name = "LABEL=VALUE")]
    devices: Vec<String>,
    /// Only devices this socket powers.
    #[arg(long, value_name = "NAME")]
    socket: Option<String>,
    /// Every action of every job (instead of --job, --device or --socket).
    #[arg(long, conflicts_with_all = ["job", "devices", "socket"])]
    everything: bool,
    /// How long, from now: `30m`, `2h`, `3d` (at most 366 days).
    #[arg(long = "for", value_name = "DURATION")]
    duration: String,
    /// Why, for whoever finds it later.
    #[arg(long)]
    comment: String,
    /// Who adds it; $USER by default.
    #[arg(long)]
    author: Option<String>,
}

/// `jobctl silence list` flags.
#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Ended and expired silences too.
    #[arg(long)]
    all: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// `jobctl silence expire` flags.
#[derive(Debug, clap::Args)]
struct ExpireArgs {
    /// The silence's number, as `silence list` shows it (`3` or `#3`).
    id: String,
    /// Who ends it; $USER by default.
    #[arg(long)]
    author: Option<String>,
}

pub(super) fn run(config: &Path, args: SilenceArgs) -> Result<Exit, Error> {
    let rules = load_rules(config)?;
    let user = std::env::var("USER").ok();
    match args.command {
        SilenceCommand::Add(add) => {
            let new = new_silence(&rules, &add, user.as_deref())?;
            let mut writer = SilenceWriter::open_at(&rules.journal.location)?;
            let silence = writer.add(&new)?;
            outln!(
                "silence {} added: holds {} until {} ({})",
                silence.id,
                matches(&silence),
                time(silence.ends_at),
                humantime::format_duration(new.duration)
            );
        }
        SilenceCommand::List(list) => {
            let journal = read_journal(&rules)?;
            let now = Timestamp::now();
            let silences = journal.silences(now, list.all)?;
            let rows: Vec<Row> = silences.iter().map(|s| Row::of(s, now)).collect();
            match list.format {
                Format::Json => {
                    outln!("{}", serde_json::to_string_pretty(&rows).expect("rows serialise"));
                }
                Format::Table if rows.is_empty() && list.all => {
                    eprintln!("no silence in the journal");
                }
                Format::Table if rows.is_empty() => {
                    eprintln!("no silence in force (--all lists ended ones)");
                }
                Format::Table => crate::exit::out!("{}", table(&rows)),
            }
        }
        SilenceCommand::Expire(expire) => {
            let id = parse_id(&expire.id)?;
            let by = author(expire.author.as_deref(), user.as_deref())?;
            let mut writer = SilenceWriter::open_at(&rules.journal.location)?;
            match writer.expire(id, &by)? {
                None => return Err(Error::UnknownSilence(id)),
                Some(Expired::Now(silence)) => outln!(
                    "silence {} expired; it held back {}",
                    silence.id,
                    super::count(held(&silence), "action", "actions")
                ),
                Some(Expired::Already(silence)) => outln!(
                    "silence {} had already ended at {}; left as it was",
                    silence.id,
                    time(silence.ends_at)
                ),
            }
        }
    }
    Ok(Exit::Ok)
}

/// The silence `add` asks for, every input checked against the rules.
fn new_silence(rules: &RuleSet, add: &AddArgs, user: Option<&str>) -> Result<NewSilence, Error> {
    if !add.everything && add.job.is_none() && add.devices.is_empty() && add.socket.is_none() {
        return Err(Error::SilenceMatchesNothing);
    }
    if let Some(job) = &add.job {
        if rules.job(job).is_none() {
            let known = rules.jobs.iter().map(|j| j.name.clone()).collect();
            return Err(Error::UnknownJob { job: job.clone(), known });
        }
    }
    if let Some(socket) = &add.socket {
        if rules.socket(socket).is_none() {
            let known = rules.sockets.iter().map(|s| s.name.clone()).collect();
            return Err(Error::UnknownSocket { socket: socket.clone(), known });
        }
    }
    let mut devices = BTreeMap::new();
    for matcher in &add.devices {
        let (label, value) = device_matcher(matcher)?;
        if devices.insert(label.to_string(), value.to_string()).is_some() {
            return Err(Error::SilenceDevice {
                matcher: matcher.clone(),
                why: format!("label {label} is given twice; a device has one value per label"),
            });
        }
    }
    let duration = duration(&add.duration)?;
    let comment = add.comment.trim();
    if comment.is_empty() {
        return Err(Error::SilenceText {
            flag: "--comment",
            why: "say why, for whoever finds the silence later".into(),
        });
    }
    plain_text("--comment", comment, MAX_COMMENT_CHARS)?;
    Ok(NewSilence {
        job: add.job.clone(),
        socket: add.socket.clone(),
        devices,
        author: author(add.author.as_deref(), user)?,
        comment: comment.to_string(),
        duration,
    })
}

/// `site=arzamas` → (`site`, `arzamas`).
fn device_matcher(matcher: &str) -> Result<(&str, &str), Error> {
    let fail = |why: &str| Error::SilenceDevice { matcher: matcher.to_string(), why: why.into() };
    let Some((label, value)) = matcher.split_once('=') else {
        return Err(fail("write LABEL=VALUE, e.g. site=arzamas or device_id=30785"));
    };
    if !is_label_name(label) {
        return Err(fail("the label must be a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)"));
    }
    if value.is_empty() {
        return Err(fail("the value is empty; a silence matches label values exactly"));
    }
    Ok((label, value))
}

/// `--for`: a duration above zero, at most [`LONGEST`].
fn duration(text: &str) -> Result<Duration, Error> {
    let fail = |why: String| Error::SilenceDuration { text: text.to_string(), why };
    let duration = humantime::parse_duration(text)
        .map_err(|err| fail(format!("{err}; write e.g. 30m, 2h or 3d")))?;
    if duration.is_zero() {
        return Err(fail("a silence must last longer than zero".into()));
    }
    if duration > LONGEST {
        return Err(fail(
            "longer than 366 days; a silence is for an incident or a maintenance \
             (disable the job with enabled = false instead)"
                .into(),
        ));
    }
    Ok(duration)
}

/// `--author`, or `$USER`.
fn author(flag: Option<&str>, user: Option<&str>) -> Result<String, Error> {
    let Some(name) = flag.or(user).map(str::trim).filter(|n| !n.is_empty()) else {
        return Err(Error::SilenceText {
            flag: "--author",
            why: "$USER is not set; say who you are with --author NAME".into(),
        });
    };
    plain_text("--author", name, MAX_AUTHOR_CHARS)?;
    Ok(name.to_string())
}

/// Refuses control characters (a line break would break `silence list`'s
/// table) and text over `max` characters.
fn plain_text(flag: &'static str, text: &str, max: usize) -> Result<(), Error> {
    if text.chars().any(char::is_control) {
        let why = "holds a control character (a line break, a tab); write it on one line".into();
        return Err(Error::SilenceText { flag, why });
    }
    let chars = text.chars().count();
    if chars > max {
        return Err(Error::SilenceText { flag, why: format!("{chars} characters, at most {max}") });
    }
    Ok(())
}

/// `3` or `#3`.
fn parse_id(text: &str) -> Result<SilenceId, Error> {
    text.strip_prefix('#')
        .unwrap_or(text)
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(SilenceId)
        .ok_or_else(|| Error::SilenceId(text.to_string()))
}

/// `job "offline", socket "hall", site="arzamas"`; `everything`.
fn matches(silence: &Silence) -> String {
    let mut parts = Vec::new();
    if let Some(job) = &silence.job {
        parts.push(format!("job {job:?}"));
    }
    if let Some(socket) = &silence.socket {
        parts.push(format!("socket {socket:?}"));
    }
    for (label, value) in &silence.devices {
        parts.push(format!("{label}={value:?}"));
    }
    if parts.is_empty() {
        "everything".to_string()
    } else {
        parts.join(", ")
    }
}

fn time(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn held(silence: &Silence) -> usize {
    usize::try_from(silence.held).unwrap_or(usize::MAX)
}

/// One silence as `list` prints it.
#[derive(Serialize)]
struct Row {
    id: i64,
    /// `active`, `ended` (its time ran out) or `expired` (someone ended it).
    state: &'static str,
    job: Option<String>,
    socket: Option<String>,
    devices: BTreeMap<String, String>,
    /// The matchers in one phrase, as the table shows them.
    matches: String,
    author: String,
    comment: String,
    created_at: String,
    ends_at: String,
    expired_by: Option<String>,
    /// Actions it held back (one per job, device and episode).
    held_actions: u64,
}

impl Row {
    fn of(silence: &Silence, now: Timestamp) -> Row {
        let state = match (&silence.expired_by, silence.is_active(now)) {
            (_, true) => "active",
            (Some(_), false) => "expired",
            (None, false) => "ended",
        };
        Row {
            id: silence.id.0,
            state,
            job: silence.job.clone(),
            socket: silence.socket.clone(),
            devices: silence.devices.clone(),
            matches: matches(silence),
            author: silence.author.clone(),
            comment: silence.comment.clone(),
            created_at: time(silence.created_at),
            ends_at: time(silence.ends_at),
            expired_by: silence.expired_by.clone(),
            held_actions: silence.held,
        }
    }
}

fn table(rows: &[Row]) -> String {
    let header = ["ID", "STATE", "MATCHES", "FROM (UTC)", "UNTIL (UTC)", "BY", "HELD", "COMMENT"];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let by = match &r.expired_by {
                Some(ender) => format!("{} (expired by {ender})", r.author),
                None => r.author.clone(),
            };
            [
                format!("#{}", r.id),
                r.state.to_string(),
                r.matches.clone(),
                r.created_at.clone(),
                r.ends_at.clone(),
                by,
                r.held_actions.to_string(),
                r.comment.clone(),
            ]
        })
        .collect();
    render_table(&header, &cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_ids_and_matchers_are_read_or_refused_with_the_reason() {
        assert_eq!(duration("2h").unwrap(), Duration::from_secs(7200));
        let why = |r: Result<Duration, Error>| r.unwrap_err().to_string();
        assert_eq!(why(duration("0s")), "--for \"0s\": a silence must last longer than zero");
        assert!(why(duration("2 hours-ish")).starts_with("--for \"2 hours-ish\": "));
        assert!(why(duration("400d")).contains("longer than 366 days"));
        assert_eq!(parse_id("#3").unwrap(), SilenceId(3));
        assert_eq!(parse_id("3").unwrap(), SilenceId(3));
        assert!(parse_id("-1").is_err() && parse_id("three").is_err());
        assert_eq!(device_matcher("site=a=b").unwrap(), ("site", "a=b"));
        assert!(device_matcher("1site=x").is_err());
        assert_eq!(author(None, Some("anna")).unwrap(), "anna");
        assert_eq!(author(Some("boris"), Some("anna")).unwrap(), "boris");
        assert!(author(None, None).is_err());
        assert!(plain_text("--comment", "two\nlines", 100).is_err());
    }
}
