//! `jobctl run`: the daemon loop around the [`Engine`].
//!
//! It cycles every `[prometheus] interval`, reloads the rules on SIGHUP (a
//! valid set replaces the old one at once and jobs that keep their name keep
//! their state; an invalid one is logged and ignored), and on SIGTERM stops
//! after the cycle in progress, waiting briefly for sends already under way.
//!
//! A reload reads, parses and checks the files and builds the new
//! connections on the blocking pool while cycles go on with the old rules
//! (thousands of jobs, a slow disk or secrets on a network mount must not
//! stall evaluation); the new set is swapped in between two cycles. A
//! SIGHUP that arrives while one is being read reads the files again once
//! it is done, so the last edit always counts.
//!
//! The listener (`--listen`) may be secured by a web configuration file
//! (`--web.config.file`: TLS, basic auth); SIGHUP reads it again too, on its
//! own: a bad one keeps the one in force, whatever became of the rules.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::error::Error;
use super::{build_sender, count, load_rules, open_journal, Sms};
use crate::clock::SystemClock;
use crate::engine::Source;
use crate::engine::{Engine, EngineMetrics, EngineOptions, Mode};
use crate::error::with_causes;
use crate::exit::Exit;
use crate::http::{Exposition, Health, Pages, WebConfig};
use crate::notify::Notifier;
use crate::rules::RuleSet;

/// `jobctl run` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// Run one cycle, wait for its sends, and exit (6 if a query failed).
    #[arg(long)]
    pub(crate) once: bool,
    /// Evaluate as usual but send nothing: due messages are journalled as
    /// dry_run for `history`, and no job state is saved, so a later live
    /// run acts as if the dry run had not happened.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Serve jobctl's own /metrics and /healthz on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// TLS and basic auth for --listen: a Prometheus exporter-toolkit web
    /// configuration file (YAML), reloaded on SIGHUP.
    #[arg(long = "web.config.file", value_name = "FILE", requires = "listen")]
    pub(crate) web_config_file: Option<std::path::PathBuf>,
}

/// How long SIGTERM waits for sends already under way.
const SEND_GRACE: Duration = Duration::from_secs(10);

/// How often the status systemd shows is renewed when no watchdog asks for
/// pings more often.
const STATUS_EVERY: Duration = Duration::from_secs(10);

pub(super) async fn run(
    config: &Path,
    args: RunArgs,
    shutdown: impl Future<Output = ()>,
    mut reloads: tokio::sync::mpsc::Receiver<()>,
) -> Result<Exit, Error> {
    let rules = load_rules(config)?;
    webhooks_usable(&rules)?;
    let web = match &args.web_config_file {
        Some(path) if !args.once => Some(Arc::new(WebConfig::load(path)?)),
        _ => None,
    };
    let (sms, source) = connections(&rules)?;
    let journal = open_journal(&rules)?;
    let interval = rules.source.interval();
    let options = EngineOptions {
        mode: if args.dry_run { Mode::DryRun } else { Mode::Live },
        budgets: rules.budgets,
        max_segments: sms.max_segments,
        ..EngineOptions::default()
    };
    let mut engine =
        Engine::start(rules, source, journal, sms.sender, Arc::new(SystemClock), options).await?;

    if args.once {
        let report = engine.cycle().await;
        engine.finish_sends().await;
        crate::exit::outln!(
            "{} ({} failed), {} ({} unknown), {}, {} due, {} sent, {} suppressed, {}",
            count(report.queries, "query", "queries"),
            report.failed_queries.len(),
            count(report.evaluations, "evaluation", "evaluations"),
            report.unknown,
            count(report.transitions, "transition", "transitions"),
            count(report.actions_due, "action", "actions"),
            report.sends_started,
            report.suppressed,
            count(report.action_errors, "error", "errors")
        );
        return Ok(if report.failed_queries.is_empty() { Exit::Ok } else { Exit::Upstream });
    }

    let (stop_http, http_task) = match args.listen {
        None => (None, None),
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Listen { addr, source })?;
            // The bound address, not the one asked for: with port 0 the
            // log is the only place that says where /metrics is.
            let addr = listener.local_addr().unwrap_or(addr);
            let pages = Arc::new(JobctlPages { metrics: engine.metrics(), interval });
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let scheme = if web.as_ref().is_some_and(|web| web.tls()) { "https" } else { "http" };
            let secured = web
                .as_ref()
                .map(|web| format!(" ({}, from {})", web.describe(), web.path().display()))
                .unwrap_or_default();
            let task = tokio::spawn(crate::http::serve_configured(
                listener,
                pages,
                web.clone(),
                crate::http::Limits::default(),
                async {
                    stopped.await.unwrap_or(());
                },
            ));
            tracing::info!("serving jobctl metrics on {scheme}://{addr}/metrics{secured}");
            (Some(stop), Some(task))
        }
    };

    tracing::info!(
        "jobctl running: {} jobs, {} sockets, evaluating every {}{}",
        engine.rules().jobs.iter().filter(|j| j.enabled).count(),
        engine.rules().sockets.len(),
        humantime::format_duration(interval),
        if args.dry_run { " (dry run: nothing is sent)" } else { "" }
    );
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // systemd hears from this loop, the one that runs the cycles: a cycle
    // that hangs stops the watchdog pings, and systemd restarts jobctl.
    let notifier = Notifier::from_env();
    notifier.ready(&engine.status_line());
    let mut alive = tokio::time::interval(notifier.watchdog_every().unwrap_or(STATUS_EVERY));
    alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    // The reload being read, and whether another SIGHUP came meanwhile.
    let mut reading: Option<tokio::task::JoinHandle<Loaded>> = None;
    let mut again = false;
    loop {
        // A pending device whose `for` elapses before the next tick is
        // evaluated then, not at the tick after.
        let wake = engine.until_wake().map(|wait| tokio::time::Instant::now() + wait);
        tokio::select! {
            // Shutdown is only looked at between cycles: a cycle in progress
            // finishes, so no state is left half-advanced.
            () = &mut shutdown => break,
            Some(()) = reloads.recv() => {
                if reading.is_some() {
                    again = true;
                } else {
                    notifier.reloading();
                    reading = Some(start_reading(config, web.clone()));
                }
            }
            loaded = async { reading.as_mut().expect("guarded by is_some").await }, if reading.is_some() => {
                reading = None;
                match loaded {
                    Ok(loaded) => swap(loaded, &mut engine, &mut ticker),
                    Err(err) => tracing::error!("reload rejected: reading the rules failed: {err}; the previous rules keep running"),
                }
                if std::mem::take(&mut again) {
                    reading = Some(start_reading(config, web.clone()));
                } else {
                    notifier.ready(&engine.status_line());
                }
            }
            _ = ticker.tick() => {
                engine.cycle().await;
            }
            _ = alive.tick() => notifier.alive(&engine.status_line()),
            () = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                engine.wake().await;
            }
        }
    }
    notifier.stopping();
    // The time pending states have held, which cycles do not journal.
    engine.stop().await;
    // A retry waiting for its backoff would only hold the shutdown up.
    engine.stop_retries();
    if tokio::time::timeout(SEND_GRACE, engine.finish_sends()).await.is_err() {
        tracing::warn!(
            "sends still under way after {}; those already handed to their backend will be marked uncertain at the next start, those still waiting for it sent then",
            humantime::format_duration(SEND_GRACE)
        );
    }
    if let (Some(stop), Some(task)) = (stop_http, http_task) {
        let _ = stop.send(());
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(Exit::Ok)
}

/// What a reload read: the new rules and their connections, or nothing (the
/// reasons are logged).
type Loaded = Option<(RuleSet, Sms, Source)>;

/// Starts reading the rules, and the web configuration if there is one, on
/// the blocking pool.
fn start_reading(config: &Path, web: Option<Arc<WebConfig>>) -> tokio::task::JoinHandle<Loaded> {
    let config = config.to_path_buf();
    tokio::task::spawn_blocking(move || {
        // Its own file, all or nothing on its own: a valid web configuration
        // is taken even when the rules are not, and the other way round. It
        // logs what became of it.
        if let Some(web) = web {
            let _ = web.reload();
        }
        read(&config)
    })
}

/// SIGHUP, off the cycle: all or nothing. The new rules, SMS sender and
/// Prometheus client are all built before anything is replaced.
fn read(config: &Path) -> Loaded {
    let rules = match crate::rules::load(config) {
        Ok(rules) => rules,
        Err(errors) => {
            for error in &errors.0 {
                tracing::error!("reload rejected: {error}");
            }
            tracing::error!("reload rejected: the previous rules keep running");
            return None;
        }
    };
    match webhooks_usable(&rules).and_then(|()| connections(&rules)) {
        Ok((sms, source)) => Some((rules, sms, source)),
        Err(err) => {
            tracing::error!(
                "reload rejected: {}; the previous rules keep running",
                with_causes(&err)
            );
            None
        }
    }
}

/// Puts a valid reload in place, between two cycles.
fn swap(loaded: Loaded, engine: &mut Engine, ticker: &mut tokio::time::Interval) {
    let Some((rules, sms, source)) = loaded else { return };
    let before: std::collections::BTreeSet<String> =
        engine.rules().jobs.iter().map(|j| j.name.clone()).collect();
    let after: std::collections::BTreeSet<String> =
        rules.jobs.iter().map(|j| j.name.clone()).collect();
    let kept = before.intersection(&after).count();
    let interval = rules.source.interval();
    if interval != engine.rules().source.interval() {
        *ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    engine.replace_connections(source, sms.sender, sms.max_segments);
    engine.replace_rules(rules);
    tracing::info!(
        "rules reloaded: {} jobs ({} kept with their state, {} new, {} removed)",
        after.len(),
        kept,
        after.len() - kept,
        before.len() - kept
    );
}

/// Whether every webhook's signing key can be read (warnings logged): a
/// webhook that cannot sign would fail each message it is given.
fn webhooks_usable(rules: &RuleSet) -> Result<(), Error> {
    let (errors, warnings) = super::check::webhook_problems(rules);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Rules(crate::config_file::ConfigErrors(errors)))
    }
}

/// The SMS sender and the source (Prometheus or the scrape targets) of
/// `rules`, both or neither. Both are built, so that each logs its warnings
/// (a secret file readable by others) even when the other fails.
fn connections(rules: &RuleSet) -> Result<(Sms, Source), Error> {
    let (sms, source) = (build_sender(rules), super::source(rules));
    Ok((sms?, source?))
}

struct JobctlPages {
    metrics: Arc<EngineMetrics>,
    interval: Duration,
}

impl Pages for JobctlPages {
    fn title(&self) -> &str {
        "jobctl"
    }

    fn exposition(&self) -> Arc<Exposition> {
        Arc::new(Exposition::new(self.metrics.encode()))
    }

    fn health(&self) -> Health {
        match self.metrics.seconds_since_last_cycle() {
            Some(age) if age > 3.0 * self.interval.as_secs_f64() + 30.0 => {
                Health::Unhealthy(format!("no evaluation cycle for {age:.0}s"))
            }
            Some(_) if !self.metrics.prometheus_up() => Health::Unhealthy(
                "Prometheus queries are failing: no job can act until they answer (see the log)"
                    .into(),
            ),
            Some(age) => Health::Healthy(format!("last cycle {age:.0}s ago")),
            None => Health::Healthy("starting".into()),
        }
    }
}
