//! `jobctl demo`: the whole watchdog in one command, so that a newcomer
//! sees the loop this project exists for (a player freezes, jobctl notices,
//! an SMS power-cycles it, it comes back) without an AddReality account, a
//! Prometheus or a GSM socket.
//!
//! Everything but the players and their sockets is the real thing, in one
//! process and on loopback: the AddReality API simulator serves the
//! simulated account over HTTP, the production exporter polls it into its
//! SQLite cache and serves `/metrics`, and jobctl's engine scrapes that page
//! (`[source] scrape`), runs the demo's rules, journals every message and
//! sends it through the `demo` SMS backend. Its sockets (`sockets`) obey
//! the SimPal commands they receive (as `simpal` reads them), switching the simulated players of
//! `fleet` off and on; `watch` reads back what the engine and the journal
//! say, and `view` shows it.
//!
//! Time runs on a [`ScaledClock`]: at the default speed it is wall time,
//! and a loop takes well under a minute; a hidden `--speed` runs the same
//! demo faster (demo time is what the rules, the journal and `--duration`
//! count), which keeps its end-to-end test short.
//!
//! The directory (rules, the exporter's cache, the journal) is made fresh,
//! private (0700) and unpredictably named, as the exporter's demo makes
//! its own, and is kept when the demo ends so that `jobctl history` and
//! `jobctl report` can read the journal afterwards.

mod fleet;
mod rules_file;
mod simpal;
mod sockets;
mod view;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use tokio::net::TcpListener;

use super::error::Error;
use super::load_rules;
use crate::addreality::simulator::Simulator;
use crate::clock::{Clock, ScaledClock};
use crate::engine::{Engine, EngineOptions};
use crate::exit::Exit;
use crate::exporter::cache::Cache;
use crate::exporter::config::{ExporterConfig, PlatformConfig, DEFAULT_MAX_PAGE_BYTES};
use crate::exporter::Exporter;
use crate::journal::{Journal, JournalError};
use crate::rules::{RuleSet, SourceConfig};
use crate::secret::{Secret, SecretSource};
use fleet::{Fleet, Pace, SocketSpec};
use sockets::DemoSockets;
use view::{Event, Status, View};
use watch::{Watch, Watched};

/// Players in the simulated account (the size of the fleet the earlier
/// exporter served), and the seed that makes them and their episodes.
const PLAYERS: usize = 273;
const SEED: u64 = 1;
const DEMO_TOKEN: &str = "demo-token";

/// How often the exporter polls the simulated account, in demo time.
const POLL_EVERY: Duration = Duration::from_secs(2);
/// How often the fleet moves on, in demo time.
const FLEET_STEP: Duration = Duration::from_millis(500);
/// How often the live view is redrawn, in wall time.
const REDRAW_EVERY: Duration = Duration::from_millis(250);
/// How long the end waits for sends under way, in wall time.
const SEND_GRACE: Duration = Duration::from_secs(5);

/// The start of the demo directory's name; a random suffix follows.
const DIR_PREFIX: &str = "jobctl-demo-";

/// `jobctl demo` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Stop by itself after this long (e.g. 90s, 5m); without it the demo
    /// runs until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// Run these rules (a rules file an earlier demo wrote, edited) instead
    /// of writing new ones; its [source] scrape must name a loopback address,
    /// where the demo's exporter then listens, and its [sms] backend must
    /// be "demo".
    #[arg(long, value_name = "FILE")]
    pub(crate) rules: Option<PathBuf>,
    /// Demo seconds per wall second, from 1 to 100 (for tests).
    #[arg(long, hide = true, default_value_t = 1.0, value_parser = parse_speed)]
    pub(crate) speed: f64,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be longer than zero".into()),
        Ok(duration) => Ok(duration),
        Err(err) => Err(format!("{err}; write a duration like 90s or 5m")),
    }
}

fn parse_speed(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(speed) if (1.0..=100.0).contains(&speed) => Ok(speed),
        _ => Err("must be a number from 1 to 100".into()),
    }
}

/// Runs the demo until `--duration` has passed or `shutdown` completes.
pub(super) async fn run(args: DemoArgs, shutdown: impl Future<Output = ()>) -> Result<Exit, Error> {
    let root = std::env::temp_dir();
    let (dir, rules_path, rules, listener) = match &args.rules {
        None => {
            let listener = bind("127.0.0.1:0".parse().expect("a valid address")).await?;
            let addr = listener.local_addr().map_err(Error::DemoIo)?;
            let dir = fresh_dir(&root)?;
            let written = write_rules(&dir, addr).and_then(|path| Ok((load_rules(&path)?, path)));
            let (rules, path) = match written {
                Ok(written) => written,
                Err(err) => {
                    // Nothing in it is worth keeping.
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(err);
                }
            };
            (dir, path, rules, listener)
        }
        Some(path) => {
            let rules = load_rules(path)?;
            // Before binding: the address it names may be another
            // program's, and the backend is the first thing to say.
            demo_sms(&rules, path)?;
            let listener = bind(exporter_address(&rules)?).await?;
            (fresh_dir(&root)?, path.clone(), rules, listener)
        }
    };
    let metrics_url = format!("http://{}/metrics", listener.local_addr().map_err(Error::DemoIo)?);
    let Some(journal_path) = rules.journal.sqlite_path() else {
        return Err(Error::Journal(JournalError::SqliteOnly {
            path: rules.journal.location.display().into(),
            what: "`jobctl demo`",
            instead: "give the demo a rules file whose [journal] has a path, or none",
        }));
    };
    print_start(&rules_path, &dir, journal_path, &metrics_url);

    let clock = demo_clock(args.duration, args.speed);
    let sockets = socket_specs(&rules);
    let simulator = Simulator::new(DEMO_TOKEN);
    let fleet =
        Fleet::new(Simulator::demo_fleet(PLAYERS, SEED), &sockets, Pace::DEMO, SEED, clock.now());
    let watched = watched_devices(&rules, &fleet.devices());
    simulator.set_devices(fleet.devices());
    let fleet = Arc::new(Mutex::new(fleet));

    let api = TcpListener::bind("127.0.0.1:0").await.map_err(Error::DemoIo)?;
    let api_url = Simulator::device_list_url(api.local_addr().map_err(Error::DemoIo)?);
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api_task = tokio::spawn(simulator.clone().serve(api, async {
        api_stopped.await.unwrap_or(());
    }));
    let exporter = start_exporter(&dir, api_url, clock.wall(POLL_EVERY)).await?;
    let (stop_exporter, exporter_stopped) = tokio::sync::oneshot::channel::<()>();
    let exporter_task = tokio::spawn(exporter.run(listener, async {
        exporter_stopped.await.unwrap_or(());
    }));

    let ran = run_engine(rules, &clock, &fleet, &simulator, watched, args.duration, shutdown).await;

    let _ = stop_exporter.send(());
    let _ = exporter_task.await;
    let _ = stop_api.send(());
    let _ = api_task.await;
    let (counts, journal) = ran?;
    let fleet_counts = fleet.lock().unwrap_or_else(PoisonError::into_inner).counts();
    crate::exit::outln!(
        "demo: {} players, {} went offline, {} power-cycled, {} recovered, {} escalated, {} duplicate commands",
        fleet_counts.players,
        fleet_counts.went_bad,
        fleet_counts.power_cycles,
        counts.recovered,
        counts.escalated,
        fleet_counts.duplicates
    );
    crate::exit::outln!(
        "journal: {} (kept; read it with `jobctl history --config {rules}` or `jobctl report --config {rules}`)",
        journal.display(),
        rules = rules_path.display()
    );
    crate::exit::outln!(
        "the demo's directory {} stays after it ends; remove it with rm -r when done",
        dir.display()
    );
    Ok(Exit::Ok)
}

/// The engine's part: runs it on the demo's clock and sockets until the
/// duration has passed or `shutdown` completes, showing what happens.
/// Returns the journal's counts and its path.
async fn run_engine(
    rules: RuleSet,
    clock: &ScaledClock,
    fleet: &Arc<Mutex<Fleet>>,
    simulator: &Simulator,
    watched: Vec<Watched>,
    duration: Option<Duration>,
    shutdown: impl Future<Output = ()>,
) -> Result<(watch::JournalCounts, PathBuf), Error> {
    let shared_clock: Arc<dyn Clock> = Arc::new(*clock);
    let start = clock.now();
    let journal_path = rules.journal.sqlite_path().map(Path::to_path_buf).unwrap_or_default();
    let journal =
        Journal::open(&journal_path).map_err(Error::Journal)?.with_clock(shared_clock.clone());
    let sender = Arc::new(DemoSockets::new(fleet.clone(), shared_clock.clone()));
    let max_segments = match &rules.sms {
        Some(sms) => sms.max_segments().map_err(|err| Error::Sms(err.in_file(&rules.main_file)))?,
        None => crate::sms::DEFAULT_MAX_SEGMENTS,
    };
    let options =
        EngineOptions { budgets: rules.budgets, max_segments, ..EngineOptions::default() };
    let interval = cycle_interval(&rules);
    let hour_budget = rules.budgets.global_hour;
    let source = super::source(&rules)?;
    let mut engine =
        Engine::start(rules, source, journal, sender, shared_clock.clone(), options).await?;
    let mut watch = Watch::open(&journal_path, watched).map_err(Error::Journal)?;
    let mut view = View::for_stdout();

    let mut cycles = tokio::time::interval(clock.wall(interval));
    cycles.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut steps = tokio::time::interval(clock.wall(FLEET_STEP));
    steps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut redraws = tokio::time::interval(REDRAW_EVERY);
    redraws.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ends = async {
        match duration {
            Some(duration) => tokio::time::sleep(clock.wall(duration)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(shutdown, ends);
    let mut status = {
        let fleet = fleet.lock().unwrap_or_else(PoisonError::into_inner);
        // So that the first frame, whichever tick comes first, shows them.
        Status {
            stops_at: duration,
            players: fleet.counts().players,
            fleet: fleet.states(),
            ..Status::default()
        }
    };
    // The jobs' line from the first frame on, before the first cycle.
    status.jobs = watch.engine(&engine).1;
    loop {
        let wake = engine.until_wake().map(|wait| tokio::time::Instant::now() + clock.wall(wait));
        let mut events = Vec::new();
        tokio::select! {
            () = &mut shutdown => break,
            () = &mut ends => break,
            _ = steps.tick() => {
                let mut fleet = fleet.lock().unwrap_or_else(PoisonError::into_inner);
                fleet.tick(clock.now());
                simulator.set_devices(fleet.devices());
                events.extend(fleet_events(&mut fleet));
                status.players = fleet.counts().players;
                status.fleet = fleet.states();
                continue_with(&mut view, clock, events);
                continue;
            }
            _ = redraws.tick() => {
                status.elapsed = clock.since_start();
                view.draw(&status);
                continue;
            }
            _ = cycles.tick() => {
                engine.cycle().await;
            }
            () = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                engine.wake().await;
            }
        }
        // After a cycle or a wake-up: what the engine and the journal say.
        let (lines, jobs) = watch.engine(&engine);
        events.extend(lines);
        status.jobs = jobs;
        let recent = clock.now().checked_sub(Duration::from_secs(600)).unwrap_or(start).max(start);
        match watch.journal(recent).await {
            Ok(lines) => events.extend(lines),
            Err(err) => {
                let why = crate::error::with_causes(&err);
                tracing::warn!("demo: cannot read the journal: {why}");
            }
        }
        // The socket's own line follows the journal's "SMS sent".
        events.extend(fleet_events(&mut fleet.lock().unwrap_or_else(PoisonError::into_inner)));
        let counts = watch.counts();
        status.sent = counts.sent;
        status.recovered = counts.recovered;
        status.not_recovered = counts.not_recovered;
        status.escalated = counts.escalated;
        status.hour_budget =
            (watch.sent_within(clock.now(), Duration::from_secs(3600)), hour_budget);
        continue_with(&mut view, clock, events);
    }
    engine.stop().await;
    engine.stop_retries();
    let _ = tokio::time::timeout(SEND_GRACE, engine.finish_sends()).await;
    // The last results (every row since the start, so none is missed),
    // and the final frame.
    let mut events = watch.journal(start).await.map_err(Error::Journal)?;
    events.extend(fleet_events(&mut fleet.lock().unwrap_or_else(PoisonError::into_inner)));
    continue_with(&mut view, clock, events);
    let counts = watch.counts();
    status.elapsed = clock.since_start();
    status.sent = counts.sent;
    status.recovered = counts.recovered;
    status.not_recovered = counts.not_recovered;
    status.escalated = counts.escalated;
    view.draw(&status);
    view.finish();
    Ok((counts, journal_path))
}

/// Hands `lines` to the view, stamped with the demo time.
fn continue_with(view: &mut View, clock: &ScaledClock, lines: Vec<String>) {
    if lines.is_empty() {
        return;
    }
    let at = clock.since_start();
    view.events(lines.into_iter().map(|text| Event { at, text }).collect());
}

/// The fleet's events since last asked, as lines.
fn fleet_events(fleet: &mut Fleet) -> Vec<String> {
    use fleet::{FleetEvent, Obeyed};
    fleet
        .take_events()
        .into_iter()
        .map(|event| match event {
            FleetEvent::WentOffline(player) => format!("player {player} went offline"),
            FleetEvent::Froze(player) => format!("player {player} froze: online, not playing"),
            FleetEvent::BackByItself(player) => format!("player {player} came back by itself"),
            FleetEvent::Socket(entry) => match entry.obeyed {
                Obeyed::Command { command, duplicate: false } => {
                    format!("{} received {:?}: {command}", entry.socket, entry.text)
                }
                Obeyed::Command { command, duplicate: true } => format!(
                    "{} received {:?}: {command} (DUPLICATE: a second command in one episode)",
                    entry.socket, entry.text
                ),
                Obeyed::Ignored { reason } => {
                    format!("{} received {:?}: ignored, {reason}", entry.socket, entry.text)
                }
            },
            FleetEvent::ToPerson { phone, text } => format!("on-call {phone} reads: {text:?}"),
            FleetEvent::PowerBack(player) => format!("player {player}: power back on, booting"),
            FleetEvent::Recovered(player) => format!("player {player} is playing again"),
            FleetEvent::StillBroken(player) => {
                format!("player {player} booted but is still stuck: broken for good")
            }
        })
        .collect()
}

/// Refuses rules that do not send through the demo's sockets.
fn demo_sms(rules: &RuleSet, path: &Path) -> Result<(), Error> {
    if rules.sms.as_ref().is_some_and(crate::sms::SmsConfig::is_demo) {
        return Ok(());
    }
    Err(Error::Demo(format!(
        "{}: the demo sends through its simulated sockets only: write [sms] backend = \"demo\"",
        path.display()
    )))
}

/// Time between two evaluation cycles.
fn cycle_interval(rules: &RuleSet) -> Duration {
    rules.source.interval()
}

/// The address of the demo's exporter that `rules` scrape: the first
/// scrape target, which must be on loopback.
fn exporter_address(rules: &RuleSet) -> Result<SocketAddr, Error> {
    let path = rules.main_file.path.display();
    let url = match &rules.source {
        SourceConfig::Scrape(scrape) if scrape.targets.len() == 1 => &scrape.targets[0],
        SourceConfig::Scrape(_) => {
            return Err(Error::Demo(format!(
                "{path}: the demo serves one exporter: [source] scrape must name exactly one target"
            )))
        }
        SourceConfig::Prometheus(_) => {
            return Err(Error::Demo(format!(
                "{path}: the demo has no Prometheus: read its exporter with [source] scrape = [\"http://127.0.0.1:9747/metrics\"] instead of [prometheus]"
            )))
        }
    };
    let host = url.host_str().unwrap_or("");
    let port = url.port_or_known_default().unwrap_or(80);
    match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(SocketAddr::new(ip, port)),
        _ => Err(Error::Demo(format!(
            "{path}: the demo's exporter listens on loopback only, so the scrape target must be like http://127.0.0.1:9747/metrics, not {url}"
        ))),
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Listen { addr, source })
}

/// The demo's clock. At speed 1 it is the wall clock; faster, it starts in
/// the past so that a demo of `duration` ends at about the wall time, and
/// what the journal records is not in the future for `history` and
/// `report`.
fn demo_clock(duration: Option<Duration>, speed: f64) -> ScaledClock {
    let now = Timestamp::now();
    let ahead = duration.map_or(Duration::ZERO, |d| d.saturating_sub(d.div_f64(speed)));
    ScaledClock::new(now.checked_sub(ahead).unwrap_or(now), speed)
}

/// A new private directory under `root` (mode 0700, random name), kept
/// after the demo. Never an existing one.
fn fresh_dir(root: &Path) -> Result<PathBuf, Error> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(DIR_PREFIX)
        // Set by mkdir itself: there is no moment with wider access.
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(root)
        .map(tempfile::TempDir::keep)
        .map_err(|source| Error::DemoDir { dir: root.join(format!("{DIR_PREFIX}…")), source })
}

/// Writes the demo's rules (and its sockets in `rules.d/`) into `dir`,
/// scraping the exporter at `exporter`; returns the rules file's path.
fn write_rules(dir: &Path, exporter: SocketAddr) -> Result<PathBuf, Error> {
    let ids = activated_ids(&Simulator::demo_fleet(PLAYERS, SEED));
    let write = |path: PathBuf, text: String| {
        std::fs::write(&path, text).map_err(|source| Error::Write { path, source })
    };
    let rules_d = dir.join("rules.d");
    std::fs::create_dir(&rules_d)
        .map_err(|source| Error::Write { path: rules_d.clone(), source })?;
    write(rules_d.join("sockets.toml"), rules_file::sockets_text(&ids))?;
    let rules = dir.join("rules.toml");
    write(rules.clone(), rules_file::rules_text(&format!("http://{exporter}/metrics")))?;
    Ok(rules)
}

/// The ids of the activated players of a simulated account.
fn activated_ids(devices: &[serde_json::Value]) -> Vec<i64> {
    devices
        .iter()
        .filter(|d| d["activation_state"] == serde_json::Value::Bool(true))
        .filter_map(|d| d["id"].as_i64())
        .collect()
}

/// What the demo says before it starts: the rules it runs, where they are,
/// and where everything else is.
fn print_start(rules: &Path, dir: &Path, journal: &Path, metrics_url: &str) {
    let text = std::fs::read_to_string(rules).unwrap_or_default();
    crate::exit::outln!(
        "jobctl demo: a simulated AddReality account of {PLAYERS} players, the exporter on {metrics_url}, and jobctl running {}:",
        rules.display()
    );
    crate::exit::outln!();
    for line in text.lines() {
        crate::exit::outln!("    {line}");
    }
    crate::exit::outln!();
    crate::exit::outln!(
        "Edit that file and run it again with `jobctl demo --rules {}`. The journal is {}; it and the demo's directory {} stay after the demo.",
        rules.display(),
        journal.display(),
        dir.display()
    );
    crate::exit::outln!();
}

/// The sockets of `rules`, as the simulated fleet knows them: each
/// socket's players by AddReality id.
fn socket_specs(rules: &RuleSet) -> Vec<SocketSpec> {
    rules
        .sockets
        .iter()
        .map(|socket| SocketSpec {
            name: socket.name.clone(),
            phone: socket.phone.to_string(),
            powers: socket
                .powers
                .iter()
                .filter(|key| key.get("platform_id").is_none_or(|p| p == rules_file::PLATFORM_ID))
                .filter_map(|key| key.get("device_id")?.parse().ok())
                .collect(),
        })
        .collect()
}

/// The account's devices as the rules' device key names them, with the
/// label the demo's lines give them.
fn watched_devices(rules: &RuleSet, devices: &[serde_json::Value]) -> Vec<Watched> {
    devices
        .iter()
        .filter_map(|device| {
            let id = device["id"].as_i64()?;
            let name = device["name"].as_str().unwrap_or("");
            let pairs = rules
                .device_key
                .labels()
                .iter()
                .map(|label| {
                    let value = match label.as_str() {
                        "platform_id" => rules_file::PLATFORM_ID.to_string(),
                        "device_id" => id.to_string(),
                        "name" => name.to_string(),
                        _ => return None,
                    };
                    Some((label.clone(), value))
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Watched {
                key: crate::rules::DeviceKey::new(pairs).to_string(),
                label: format!("{id} {name:?}"),
            })
        })
        .collect()
}

/// Starts the production exporter on the simulated account at `api_url`,
/// its cache in `dir`, polling every `poll_every` (wall time).
async fn start_exporter(
    dir: &Path,
    api_url: String,
    poll_every: Duration,
) -> Result<Exporter, Error> {
    let config = ExporterConfig {
        listen: "127.0.0.1:0".parse().expect("a valid address"),
        api_url,
        poll_interval: poll_every,
        request_timeout: Duration::from_secs(5),
        cache: dir.join("cache.db"),
        page_size: 100,
        max_page_bytes: DEFAULT_MAX_PAGE_BYTES,
        forget_after: Duration::from_secs(7 * 24 * 3600),
        platforms: vec![],
        base_dir: PathBuf::from("."),
        web_config_file: None,
    };
    let platform = PlatformConfig {
        id: rules_file::PLATFORM_ID.into(),
        name: Some("Demo fleet (simulated)".into()),
        token: SecretSource::Env("unused in the demo".into()),
        token_at: "demo".into(),
    };
    let cache = Cache::open(&config.cache).map_err(|err| Error::DemoExporter(err.into()))?;
    Exporter::start(&config, vec![(platform, Secret::new(DEMO_TOKEN))], cache)
        .await
        .map_err(Error::DemoExporter)
}
