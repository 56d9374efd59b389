//! The `jobctl` command line: one module per subcommand, and the set-up
//! they share.
//!
//! The binary only installs logging and signal handlers and calls [`run`].
//! Every problem a sysadmin can cause is an `error::Error`, reported once,
//! on stderr, with a distinct exit code ([`Exit`]).

mod backup;
mod check;
mod demo;
mod error;
mod explain;
mod history;
mod replay;
mod report;
mod send;
mod serve;
mod silence;
mod status;
mod table;
mod test_rule;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};

use crate::clock::SystemClock;
use crate::config_file::ConfigError;
use crate::engine::{EngineOptions, Outbox, SendRetry, Source};
use crate::exit::Exit;
use crate::journal::Journal;
use crate::prometheus_api::scrape::{ScrapeClient, Scraped};
use crate::prometheus_api::{Auth, PromClient};
use crate::rules::condition::ScrapeQuery;
use crate::rules::{PrometheusAuth, RuleSet, Sample, SourceConfig};
use crate::sms::Sender;
use error::Error;

/// Default rules file.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/jobctl/rules.toml";

/// Watches Prometheus and power-cycles frozen signage players by SMS.
#[derive(Debug, Parser)]
// No bare `about`: it would show the package's description (both daemons)
// instead of the doc comment above, which is about this binary.
#[command(name = "jobctl", version, long_about = None)]
pub struct Args {
    /// The rules file; `rules.d/*.toml` next to it is read too.
    #[arg(long, short = 'c', global = true, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub(crate) config: PathBuf,
    /// Log level (error, warn, info, debug); RUST_LOG overrides it.
    /// Default: info, or error for `demo`, whose own output tells what
    /// happens.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log lines as text, or as one JSON object each (for log shippers).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: crate::telemetry::LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Args {
    /// The log level asked for, or the subcommand's default.
    pub fn log_level(&self) -> &str {
        match (&self.log_level, &self.command) {
            (Some(level), _) => level,
            (None, Command::Demo(_)) => "error",
            (None, _) => "info",
        }
    }
}

/// jobctl's subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon: evaluate the rules every interval and send what is due.
    Run(serve::RunArgs),
    /// Try the whole loop in one process: a simulated fleet and its GSM
    /// sockets, the exporter, and jobctl with demo rules it prints.
    Demo(demo::DemoArgs),
    /// Validate the rules (and their PromQL, when Prometheus answers) and
    /// print every job with what it watches.
    Check(check::CheckArgs),
    /// Evaluate one job now against the live Prometheus and show, per
    /// device, what it sees and what it would send.
    TestRule(test_rule::TestRuleArgs),
    /// Show the journal of executions.
    History(history::HistoryArgs),
    /// Show each job's devices by state, and the budgets, from the journal.
    Status(status::StatusArgs),
    /// Send a socket command by hand, through the journal and budgets.
    Send(send::SendArgs),
    /// Hold actions back for a while (maintenance), list and end silences;
    /// works beside the running daemon, which honours them at its next cycle.
    Silence(silence::SilenceArgs),
    /// Say why the daemon would or would not act on one device now: the
    /// condition, guards, state, cooldown, limit, silences and budgets.
    Explain(explain::ExplainArgs),
    /// What each job did over a period, per job and device: episodes,
    /// actions, recoveries, messages and holds, and the most-cycled devices.
    Report(report::ReportArgs),
    /// The journal itself: `backup FILE` copies it beside the daemon.
    Journal(backup::JournalArgs),
    /// Print the shell completion script (bash, zsh, fish, elvish,
    /// powershell).
    Completions {
        /// The shell.
        shell: crate::manual::Shell,
    },
    /// Write the manual pages (jobctl.1, jobctl-run.1, …) into a directory.
    Man {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
}

/// Runs the command line. `shutdown` completes on SIGTERM/SIGINT and
/// `reloads` yields on SIGHUP; both matter to `run` only.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()>,
    reloads: tokio::sync::mpsc::Receiver<()>,
) -> Exit {
    let ran = match args.command {
        Command::Run(run) => serve::run(&args.config, run, shutdown, reloads).await,
        // Boxed: the demo holds the exporter, the simulator and an engine.
        Command::Demo(demo) => Box::pin(demo::run(demo, shutdown)).await,
        Command::Check(check) => check::run(&args.config, check).await,
        Command::TestRule(test) => test_rule::run(&args.config, test).await,
        Command::History(history) => history::run(&args.config, history),
        Command::Status(status) => status::run(&args.config, status),
        Command::Explain(explain) => explain::run(&args.config, explain).await,
        Command::Report(report) => report::run(&args.config, report),
        Command::Send(send) => send::run(&args.config, send).await,
        Command::Silence(silence) => silence::run(&args.config, silence),
        Command::Journal(journal) => backup::run(&args.config, journal),
        Command::Completions { shell } => {
            crate::exit::out!("{}", crate::manual::completions(Args::command(), shell));
            Ok(Exit::Ok)
        }
        Command::Man { dir } => man_pages(&dir),
    };
    crate::exit::finish(ran)
}

/// `jobctl man DIR`: writes the pages and lists them.
fn man_pages(dir: &Path) -> Result<Exit, Error> {
    let pages = crate::manual::man_pages(Args::command(), dir)
        .map_err(|source| Error::Write { path: dir.to_path_buf(), source })?;
    for page in pages {
        crate::exit::outln!("{}", page.display());
    }
    Ok(Exit::Ok)
}

/// `1 job`, `3 jobs`: a count for a sentence a sysadmin reads.
pub(crate) fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Loads the rules, with every error they have.
pub(crate) fn load_rules(path: &Path) -> Result<RuleSet, Error> {
    crate::rules::load(path).map_err(Error::Rules)
}

/// The configured SMS sender and how long a notification may be.
pub(crate) struct Sms {
    /// The sender (one backend, or a failover chain).
    pub(crate) sender: Arc<dyn Sender>,
    /// `[sms] max_segments`.
    pub(crate) max_segments: usize,
}

/// Builds the configured SMS sender, reading the secrets it names; an
/// error is placed in the rules file.
pub(crate) fn build_sender(rules: &RuleSet) -> Result<Sms, ConfigError> {
    let Some(config) = &rules.sms else {
        return Err(rules.main_file.error(
            "no [sms] table: add one, e.g. [sms] backend = \"log\" to only record what would be sent",
        ));
    };
    let in_file = |err: crate::sms::SmsConfigError| err.in_file(&rules.main_file);
    let max_segments = config.max_segments().map_err(in_file)?;
    let sender = config.build(&rules.base_dir).map(Arc::from).map_err(in_file)?;
    Ok(Sms { sender, max_segments })
}

/// The credentials of `[prometheus]` or `[source]`, loaded.
fn source_auth(rules: &RuleSet) -> Result<Option<Auth>, Error> {
    let secret_error = |err| match &rules.source {
        SourceConfig::Prometheus(_) => Error::PrometheusSecret(err),
        SourceConfig::Scrape(_) => Error::SourceSecret(err),
    };
    Ok(match rules.source.auth() {
        None => None,
        Some(PrometheusAuth::Basic { username, password }) => {
            let loaded = password.load(&rules.base_dir).map_err(secret_error)?;
            warn_loose(&loaded);
            Some(Auth::Basic { username: username.clone(), password: loaded.secret })
        }
        Some(PrometheusAuth::Bearer { token }) => {
            let loaded = token.load(&rules.base_dir).map_err(secret_error)?;
            warn_loose(&loaded);
            Some(Auth::Bearer(loaded.secret))
        }
    })
}

/// Builds the Prometheus client, loading its credentials; `None` when the
/// rules scrape the exporters instead (`[source]`).
pub(crate) fn prometheus_client(rules: &RuleSet) -> Result<Option<PromClient>, Error> {
    let Some(prometheus) = rules.prometheus() else { return Ok(None) };
    let auth = source_auth(rules)?;
    PromClient::new(prometheus.url.as_str(), prometheus.timeout, auth)
        .map(Some)
        .map_err(Error::Prometheus)
}

/// Builds the engine's source: the Prometheus client, or the scrape client
/// of `[source]`, its credentials loaded.
pub(crate) fn source(rules: &RuleSet) -> Result<Source, Error> {
    match &rules.source {
        SourceConfig::Prometheus(_) => {
            let client = prometheus_client(rules)?.expect("the rules read Prometheus");
            Ok(Source::Prometheus(Arc::new(client)))
        }
        SourceConfig::Scrape(scrape) => {
            let auth = source_auth(rules)?;
            let client =
                ScrapeClient::new(&scrape.targets, scrape.timeout, auth).map_err(Error::Scrape)?;
            Ok(Source::Scrape(Arc::new(client)))
        }
    }
}

/// What the one-shot commands (`check`, `test-rule`, `explain`) read
/// answers from: Prometheus, asked query by query, or one scrape of every
/// target, taken when the command starts and answering every query.
pub(crate) enum Reader {
    /// `[prometheus]`.
    Prometheus(Arc<PromClient>),
    /// `[source] scrape`: what the targets served.
    Scrape(Scraped),
}

impl Reader {
    /// A reader for `rules`; a scrape source scrapes every target now.
    pub(crate) async fn new(rules: &RuleSet) -> Result<Reader, Error> {
        Ok(match source(rules)? {
            Source::Prometheus(client) => Reader::Prometheus(client),
            Source::Scrape(client) => Reader::Scrape(client.scrape().await),
        })
    }

    /// The answer to `query` now, or why there is none.
    pub(crate) async fn query(&self, query: &str) -> Result<Vec<Sample>, String> {
        match self {
            Reader::Prometheus(client) => {
                client.query(query).await.map_err(|err| crate::error::with_causes(&err))
            }
            Reader::Scrape(scraped) => {
                if !scraped.answered() {
                    let first = scraped.targets.iter().find_map(|t| t.result.as_ref().err());
                    let why = first.map_or_else(String::new, |err| format!(": {err}"));
                    return Err(format!("no scrape target answered{why}"));
                }
                let Some(selector) = ScrapeQuery::parse(query) else {
                    return Err("needs PromQL, which a [source] scrape cannot evaluate".to_string());
                };
                let mut samples = Vec::new();
                selector.select(scraped, &mut |labels, value| {
                    let labels =
                        labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
                    samples.push(Sample { labels, value });
                });
                Ok(samples)
            }
        }
    }
}

fn warn_loose(loaded: &crate::secret::LoadedSecret) {
    if let Some(warning) = &loaded.loose_permissions {
        tracing::warn!("{warning}");
    }
}

/// Opens the journal for writing (creating it).
pub(crate) fn open_journal(rules: &RuleSet) -> Result<Journal, Error> {
    Journal::open_at(&rules.journal.location).map_err(Error::Journal)
}

/// The outbox of a command a person runs (`send`, `test-rule --send`):
/// the daemon's journal, sender and budgets, retries seconds apart.
pub(crate) fn manual_outbox(rules: &RuleSet) -> Result<Outbox, Error> {
    let sms = build_sender(rules)?;
    let journal = open_journal(rules)?;
    let options = EngineOptions {
        budgets: rules.budgets,
        retry: SendRetry::INTERACTIVE,
        max_segments: sms.max_segments,
        ..EngineOptions::default()
    };
    Ok(Outbox::new(journal, sms.sender, Arc::new(SystemClock), options))
}

/// Opens the journal read-only, next to a running daemon.
pub(crate) fn read_journal(rules: &RuleSet) -> Result<Journal, Error> {
    Journal::open_read_only_at(&rules.journal.location).map_err(Error::Journal)
}

/// Reads `--since`: a duration back from now (`"2h"`) or an RFC 3339 time.
pub(crate) fn parse_since(text: &str) -> Result<jiff::Timestamp, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        let ago = jiff::SignedDuration::try_from(ago).map_err(|e| e.to_string())?;
        return Ok(jiff::Timestamp::now() - ago);
    }
    text.parse::<jiff::Timestamp>().map_err(|_| {
        format!("invalid time {text:?}: write a duration back from now (\"2h\", \"7d\") or a time like 2026-11-28T12:00:00Z")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn since_reads_durations_and_times() {
        let before = jiff::Timestamp::now();
        let since = parse_since("1h").unwrap();
        assert!(since < before && since > before - jiff::SignedDuration::from_secs(3700));
        assert_eq!(
            parse_since("2026-11-28T12:00:00Z").unwrap().to_string(),
            "2026-11-28T12:00:00Z"
        );
        assert!(parse_since("yesterday").unwrap_err().starts_with("invalid time \"yesterday\""));
    }
}
