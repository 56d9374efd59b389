//! jobctl's engine end to end: a real Prometheus scraping targets whose
//! values the test sets, rules written as TOML, the HTTP sender talking to a
//! fake SMS gateway on loopback, and the journal in a real SQLite file.
//!
//! Time in the rules (`for`, cooldown, repeat) is a [`ManualClock`] the test
//! moves; time in Prometheus is real, so after changing a target the test
//! waits until Prometheus answers the new values before it runs a cycle.
//!
//! Prometheus takes about 5 s to scrape a new target, so each test starts
//! one Prometheus and plays several scenarios on it, each with a target,
//! platform, gateway and journal of its own. The outage scenario stops its
//! Prometheus and so has one to itself.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use signage_watchdog::clock::ManualClock;
use signage_watchdog::engine::{CycleReport, Engine, EngineOptions, Mode, SendRetry};
use signage_watchdog::journal::{
    ActionResult, Channel, Execution, ExecutionStatus, Expired, HistoryFilter, Journal, NewSilence,
    Origin, PlannedSend, SilenceId, SilenceWriter,
};
use signage_watchdog::rules::state::{JobState, Phase, PhaseName};
use signage_watchdog::rules::RuleSet;
use support::fake_gateway::{FakeGateway, Fault, SentSms};
use support::fake_webhook::FakeWebhook;
use support::logs::Logs;
use support::prometheus::{TestPrometheus, TestTarget};
use support::rules_file::{self, POWER_CYCLE_1, POWER_CYCLE_ACTION};
use support::wait::wait_until_async;

/// The phone number of the socket that powers device 1 in every scenario.
const LOBBY: &str = "+79991234567";
/// The phone number of a second socket.
const HALL: &str = "+79997654321";
/// The phone number of a third socket.
const KIOSK: &str = "+79990001122";

/// The instant scenarios start at; `cycle_at(m)` runs a cycle `m` minutes later.
fn t0() -> Timestamp {
    "2026-11-28T09:00:00Z".parse().unwrap()
}

fn minutes(m: u64) -> Timestamp {
    t0() + jiff::SignedDuration::from_secs(i64::try_from(m * 60).unwrap())
}

/// The journal's and the engine's text form of a device.
fn device(platform: &str, id: &str) -> String {
    format!("{{platform_id=\"{platform}\", device_id=\"{id}\"}}")
}

/// One line of a target's page.
struct Series {
    metric: &'static str,
    labels: BTreeMap<&'static str, String>,
    value: f64,
}

impl Series {
    fn line(&self) -> String {
        let labels: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{}{{{}}} {}\n", self.metric, labels.join(","), self.value)
    }
}

fn device_series(metric: &'static str, platform: &str, id: &str, value: f64) -> Series {
    let labels = BTreeMap::from([
        ("platform_id", platform.to_string()),
        ("device_id", id.to_string()),
        ("name", format!("Lesnaia_{id}")),
    ]);
    Series { metric, labels, value }
}

/// `addreality_device_online`: 1 online, 0 offline.
fn online(platform: &str, id: &str, value: f64) -> Series {
    device_series("addreality_device_online", platform, id, value)
}

/// `addreality_device_playing`: 1 playing, 0 not.
fn playing(platform: &str, id: &str, value: f64) -> Series {
    device_series("addreality_device_playing", platform, id, value)
}

/// `addreality_platform_up`: whether the exporter reaches the platform's API.
fn platform_up(platform: &str, value: f64) -> Series {
    let labels = BTreeMap::from([("platform_id", platform.to_string())]);
    Series { metric: "addreality_platform_up", labels, value }
}

/// Serves `page` on `target` and waits until Prometheus answers exactly it.
async fn publish(prometheus: &TestPrometheus, target: &TestTarget, page: &[Series]) {
    prometheus.publish(target, &page.iter().map(Series::line).collect::<String>()).await;
}

/// One scenario: its rules, gateway, clock, journal and engine.
struct Scenario {
    dir: tempfile::TempDir,
    prometheus_url: String,
    gateway: FakeGateway,
    clock: Arc<ManualClock>,
    mode: Mode,
    engine: Engine,
}

impl Scenario {
    /// An engine running the sockets and jobs in `body` against
    /// `prometheus`, sending through a new fake gateway.
    async fn start(prometheus: &TestPrometheus, body: &str) -> Scenario {
        Scenario::start_in(prometheus, body, Mode::Live).await
    }

    async fn start_in(prometheus: &TestPrometheus, body: &str, mode: Mode) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let gateway = FakeGateway::start().await;
        support::write_secret(&dir.path().join("sms.key"), &format!("{}\n", gateway.key()));
        let clock = Arc::new(ManualClock::new(t0()));
        let prometheus_url = prometheus.url().to_string();
        let text = rules_text(&dir, &prometheus_url, &gateway, body);
        let engine = start_engine(&dir, &text, clock.clone(), mode).await;
        Scenario { dir, prometheus_url, gateway, clock, mode, engine }
    }

    /// The rules `body` would make, for [`Engine::replace_rules`].
    fn rules(&self, body: &str) -> RuleSet {
        parse_rules(&self.dir, &rules_text(&self.dir, &self.prometheus_url, &self.gateway, body))
    }

    /// Moves the clock to `m` minutes after the start, runs one cycle and
    /// waits for the sends it started (retries included).
    async fn cycle_at(&mut self, m: u64) -> CycleReport {
        self.clock.set(minutes(m));
        let report = self.engine.cycle().await;
        self.engine.finish_sends().await;
        report
    }

    /// The engine is dropped as a killed daemon would vanish (sends under
    /// way are abandoned), and a new one starts on the same journal.
    async fn restart(self, body: &str) -> Scenario {
        let Scenario { dir, prometheus_url, gateway, clock, mode, engine } = self;
        drop(engine);
        released(&dir.path().join("journal.db")).await;
        let text = rules_text(&dir, &prometheus_url, &gateway, body);
        let engine = start_engine(&dir, &text, clock.clone(), mode).await;
        Scenario { dir, prometheus_url, gateway, clock, mode, engine }
    }

    fn state(&self, job: &str, device: &str) -> JobState {
        self.engine.state(job, device).cloned().unwrap_or_default()
    }

    /// `(since, time held)` of a pending state as the engine counts it
    /// (the time held before its run, and the run up to the latest true
    /// evaluation this engine saw), for comparing with [`pending`].
    fn pending_of(&self, job: &str, device: &str) -> (Timestamp, Duration) {
        match self.state(job, device).phase {
            Phase::Pending { since, held, counting_from, last_true } => {
                let run = counting_from.zip(last_true).map(|(from, last)| {
                    let run = last.duration_since(from).unsigned_abs();
                    // What `jobctl status` shows agrees at that evaluation.
                    let phase = self.state(job, device).phase;
                    assert_eq!(phase.held_at(last), Some(held + run));
                    run
                });
                (since, held + run.unwrap_or_default())
            }
            other => panic!("expected pending, found {other:?}"),
        }
    }

    fn phase(&self, job: &str, device: &str) -> PhaseName {
        self.state(job, device).phase.name()
    }

    /// The journal's executions, oldest first, read as `jobctl history`
    /// reads them: through a connection of its own.
    fn history(&self) -> Vec<Execution> {
        let journal = Journal::open_read_only(&self.journal_path()).unwrap();
        let mut executions = journal.history(&HistoryFilter::default()).unwrap();
        executions.reverse();
        executions
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.path().join("journal.db")
    }

    /// The messages the gateway accepted, as (number, text).
    fn sent(&self) -> Vec<(String, String)> {
        self.gateway.sent().into_iter().map(|SentSms { number, text }| (number, text)).collect()
    }

    /// Waits until the gateway has received `n` requests in all.
    async fn wait_received(&self, n: usize) {
        let what = format!("the gateway getting request {n}");
        wait_until_async(&what, || async { (self.gateway.received().len() >= n).then_some(()) })
            .await;
    }
}

/// A complete rules file: Prometheus, the journal in `dir`, the gateway
/// preset pointing at `gateway`, then `body` (sockets and jobs).
fn rules_text(
    dir: &tempfile::TempDir,
    prometheus_url: &str,
    gateway: &FakeGateway,
    body: &str,
) -> String {
    let journal = dir.path().join("journal.db");
    rules_file::head(prometheus_url, "30s", "2s", &journal.display().to_string())
        + &rules_file::gateway_sms(&gateway.url(), "")
        + body
}

fn parse_rules(dir: &tempfile::TempDir, text: &str) -> RuleSet {
    signage_watchdog::rules::parse(text, dir.path().join("rules.toml"))
        .unwrap_or_else(|errors| panic!("{errors}\n{text}"))
}

/// Waits for a dropped engine to let go of its journal. A killed daemon's
/// writer lock goes with its process; in a test it goes when the runtime
/// has dropped the aborted send tasks that still hold the journal (one in
/// a backend's I/O ends with that I/O).
async fn released(journal: &std::path::Path) {
    wait_until_async("the dropped engine releasing the journal", || async {
        Journal::open(journal).ok().map(drop)
    })
    .await;
}

/// What `jobctl run` builds from a rules file, with a short send retry.
async fn start_engine(
    dir: &tempfile::TempDir,
    text: &str,
    clock: Arc<ManualClock>,
    mode: Mode,
) -> Engine {
    let rules = parse_rules(dir, text);
    let options = EngineOptions {
        mode,
        retry: SendRetry { attempts: 3, first_delay: Duration::from_millis(10) },
        budgets: rules.budgets,
        ..EngineOptions::default()
    };
    support::engine::start(rules, text, dir.path(), clock, options).await
}

fn sms(number: &str, text: &str) -> (String, String) {
    (number.to_string(), text.to_string())
}

fn pending(since: u64, held_minutes: u64) -> (Timestamp, Duration) {
    (minutes(since), Duration::from_secs(held_minutes * 60))
}

/// `(episode, actions_taken)` of a firing state.
fn firing_of(state: &JobState) -> (u64, u32) {
    match state.phase {
        Phase::Firing { episode, actions_taken, .. } => (episode, actions_taken),
        ref other => panic!("expected firing, found {other:?}"),
    }
}

/// (job, device, episode, action number, status) of each execution.
fn rows(history: &[Execution]) -> Vec<(String, String, u64, u32, ExecutionStatus)> {
    history
        .iter()
        .map(|e| {
            (
                e.job.clone().unwrap_or_default(),
                e.device_key.clone().unwrap_or_default(),
                e.episode.unwrap_or_default(),
                e.attempt.unwrap_or_default(),
                e.status,
            )
        })
        .collect()
}

fn row(
    job: &str,
    device: &str,
    episode: u64,
    action: u32,
    status: ExecutionStatus,
) -> (String, String, u64, u32, ExecutionStatus) {
    (job.to_string(), device.to_string(), episode, action, status)
}

/// The outcome of each backend attempt of an execution.
fn attempts(execution: &Execution) -> Vec<ExecutionStatus> {
    execution.attempts.iter().map(|a| a.outcome).collect()
}

/// Socket "lobby" powers device 1 of `platform`, socket "hall" device 2.
fn sockets(platform: &str) -> String {
    rules_file::socket("lobby", LOBBY, "simpal-d210", platform, "1")
        + &rules_file::socket("hall", HALL, "simpal-d410", platform, "2")
}

/// The job of issue 3's example: offline for 10 minutes → power-cycle.
fn offline_job(platform: &str) -> String {
    rules_file::offline_job("offline", platform, Some("10m"), POWER_CYCLE_ACTION)
        + "cooldown = \"1h\"\n\n"
}

/// A job that power-cycles each offline player of `platform` at once.
fn offline_now_job(platform: &str) -> String {
    rules_file::offline_job("offline now", platform, None, POWER_CYCLE_ACTION)
}

#[tokio::test]
async fn rules_fire_once_after_for_and_hold_to_cooldown_repeat_guards_and_reloads() {
    if !TestPrometheus::available() {
        return;
    }
    let targets: Vec<TestTarget> = (0..8).map(|_| TestTarget::start()).collect();
    let prometheus = TestPrometheus::start(&targets.iter().collect::<Vec<_>>()).await;

    one_sms_after_for_and_none_after_early_recovery(&prometheus, &targets[0]).await;
    cooldown_holds_a_new_episode_and_repeat_stops_at_max(&prometheus, &targets[1]).await;
    two_jobs_on_one_device_are_independent(&prometheus, &targets[2]).await;
    guard_makes_a_device_of_a_down_platform_unknown(&prometheus, &targets[3]).await;
    dry_run_journals_and_sends_nothing(&prometheus, &targets[4]).await;
    reload_keeps_unchanged_jobs_and_drops_removed_ones(&prometheus, &targets[5]).await;
    a_state_save_that_failed_is_made_with_the_next_cycle(&prometheus, &targets[6]).await;
    for_counts_from_the_first_bad_sample_and_the_engine_wakes_when_due(&prometheus, &targets[7])
        .await;
}

/// Scenario 1: bad from t; cycles at t, t+5m send nothing, t+10m sends one
/// power-cycle to the socket; a device that recovers before `for` never
/// fires.
async fn one_sms_after_for_and_none_after_early_recovery(
    prometheus: &TestPrometheus,
    target: &TestTarget,
) {
    let (d1, d2) = (device("12", "1"), device("12", "2"));
    publish(
        prometheus,
        target,
        &[online("12", "1", 0.0), online("12", "2", 0.0), platform_up("12", 1.0)],
    )
    .await;
    let mut s = Scenario::start(prometheus, &(sockets("12") + &offline_job("12"))).await;

    let report = s.cycle_at(0).await;
    // The job's query and the exporters' freshness (which of a device's
    // series count when a pair of exporters serves it).
    assert_eq!((report.queries, report.evaluations, report.actions_due), (2, 2, 0), "{report:?}");
    assert_eq!(s.pending_of("offline", &d1), pending(0, 0));
    assert_eq!(s.pending_of("offline", &d2), pending(0, 0));

    // Device 2 comes back before its 10 minutes are up.
    publish(
        prometheus,
        target,
        &[online("12", "1", 0.0), online("12", "2", 1.0), platform_up("12", 1.0)],
    )
    .await;
    let report = s.cycle_at(5).await;
    assert_eq!(report.actions_due, 0, "{report:?}");
    assert_eq!(s.pending_of("offline", &d1), pending(0, 5));
    assert_eq!(s.phase("offline", &d2), PhaseName::Inactive);
    assert!(s.gateway.received().is_empty());

    let report = s.cycle_at(10).await;
    assert_eq!((report.actions_due, report.sends_started), (1, 1), "{report:?}");
    assert_eq!(s.sent(), [sms(LOBBY, POWER_CYCLE_1)]);
    assert_eq!(firing_of(&s.state("offline", &d1)), (1, 1));
    assert_eq!(s.phase("offline", &d2), PhaseName::Inactive);

    // Still offline: no repeat is configured, so nothing more.
    s.cycle_at(15).await;
    s.cycle_at(45).await;
    assert_eq!(s.gateway.received().len(), 1);
    let history = s.history();
    assert_eq!(rows(&history), [row("offline", &d1, 1, 1, ExecutionStatus::Sent)]);
    let execution = &history[0];
    assert_eq!((execution.socket.as_str(), execution.phone.as_str()), ("lobby", LOBBY));
    assert_eq!((execution.text.as_str(), execution.trigger_value), (POWER_CYCLE_1, Some(0.0)));
    assert_eq!(attempts(execution), [ExecutionStatus::Sent]);
}

/// Scenario 8, in real time (Prometheus dates its samples by the wall
/// clock, so the engine's clock is set to it): a device's `for` counts from
/// the first sample that showed it offline, as Prometheus's history shows
/// it, not from the cycle that saw it; and the engine wakes for it when
/// `for` has held, rather than at the next cycle.
async fn for_counts_from_the_first_bad_sample_and_the_engine_wakes_when_due(
    prometheus: &TestPrometheus,
    target: &TestTarget,
) {
    let d1 = device("13", "1");
    publish(prometheus, target, &[online("13", "1", 1.0), platform_up("13", 1.0)]).await;
    let job = rules_file::offline_job("offline", "13", Some("2s"), POWER_CYCLE_ACTION);
    let mut s = Scenario::start(prometheus, &(sockets("13") + &job)).await;
    s.clock.set(Timestamp::now());
    let report = s.engine.cycle().await;
    assert_eq!((report.evaluations, report.onset_queries), (1, 0), "{report:?}");
    assert_eq!(s.engine.until_wake(), None, "nothing pending");

    // A scrape is stamped when it starts, and may read the page just
    // after it changes: the first offline sample can be up to one scrape
    // interval (100 ms) older than the change.
    let changed = Timestamp::now() - jiff::SignedDuration::from_millis(100);
    publish(prometheus, target, &[online("13", "1", 0.0), platform_up("13", 1.0)]).await;
    // A few more scrapes, so that the cycle comes well after the change.
    target.wait_scrapes(3).await;
    let seen = Timestamp::now();
    s.clock.set(seen);
    let report = s.engine.cycle().await;
    assert_eq!((report.onset_queries, report.actions_due), (2, 0), "{report:?}");
    let (since, _) = s.pending_of("offline", &d1);
    assert!(changed <= since && since < seen, "{changed} <= {since} < {seen}");
    // Due 2 s after the onset, plus the 100 ms a scrape may take to be
    // stored: the engine asks to be woken then.
    let due = since + jiff::SignedDuration::from_millis(2_100);
    assert_eq!(s.engine.until_wake(), Some(due.duration_since(seen).unsigned_abs()));
    let report = s.engine.wake().await;
    assert_eq!(report, CycleReport::default(), "nothing is due yet");

    s.clock.set(due);
    let report = s.engine.wake().await;
    s.engine.finish_sends().await;
    let counts = (report.queries, report.evaluations, report.actions_due, report.sends_started);
    assert_eq!(counts, (2, 1, 1, 1), "{report:?}");
    assert_eq!(s.sent(), [sms(LOBBY, POWER_CYCLE_1)]);
    assert_eq!(firing_of(&s.state("offline", &d1)), (1, 1));
    assert_eq!(s.engine.until_wake(), None, "firing counts nothing");
    let metrics = s.engine.metrics_text();
    assert!(metrics.contains("jobctl_wakeups_total 1\n"), "{metrics}");
    assert!(metrics.contains("jobctl_cycles_total 2\n"), "{metrics}");
}

/// Scenario 2: one job with a 1 h cooldown, another repeating every 30
/// minutes at most twice; every message is counted.
async fn cooldown_holds_a_new_episode_and_repeat_stops_at_max(
    prometheus: &TestPrometheus,
    target: &TestTarget,
) {
    let (d1, d2) = (device("22", "1"), device("22", "2"));
    let jobs = r#"
[[jobs]]
name = "cooldown"
devices = { platform_id = "22", device_id = "1" }
metric = "addreality_device_online"
op = "=="
value = 0
action = { command = "power_cycle", minutes = 1 }
cooldown = "1h"

[[jobs]]
name = "repeat"
devices = { platform_id = "22", device_id = "2" }
metric = "addreality_device_online"
op = "=="
value = 0
action = { command = "power_cycle", minutes = 5 }
cooldown = "1h"
repeat = { every = "30m", max = 2 }
"#;
    let page = |first: f64| [online("22", "1", first), online("22", "2", 0.0)];
    publish(prometheus, target, &page(0.0)).await;
    let mut s = Scenario::start(prometheus, &(sockets("22") + jobs)).await;

    s.cycle_at(0).await;
    // Sent at the same time, each in its own task: in either order.
    let mut sent = s.sent();
    sent.sort();
    assert_eq!(sent, [sms(LOBBY, POWER_CYCLE_1), sms(HALL, "#12#0#5#1#")]);

    // Device 1 recovers, then fails again 5 minutes later: a new episode,
    // whose action waits for the hour since the last one.
    publish(prometheus, target, &page(1.0)).await;
    s.cycle_at(5).await;
    assert_eq!(s.phase("cooldown", &d1), PhaseName::Resolved);
    publish(prometheus, target, &page(0.0)).await;
    for m in [10, 30, 59] {
        s.cycle_at(m).await;
        assert_eq!(firing_of(&s.state("cooldown", &d1)), (2, 0), "at {m} min");
    }
    s.cycle_at(60).await;
    assert_eq!(firing_of(&s.state("cooldown", &d1)), (2, 1));
    for m in [90, 120, 150] {
        s.cycle_at(m).await;
    }

    let to = |number: &str| s.sent().iter().filter(|(n, _)| n == number).count();
    assert_eq!((to(LOBBY), to(HALL)), (2, 3), "{:?}", s.sent());
    assert_eq!(firing_of(&s.state("repeat", &d2)), (1, 3));
    let sent = ExecutionStatus::Sent;
    assert_eq!(
        rows(&s.history()),
        [
            row("cooldown", &d1, 1, 1, sent),
            row("repeat", &d2, 1, 1, sent),
            row("repeat", &d2, 1, 2, sent),
            row("cooldown", &d1, 2, 1, sent),
            row("repeat", &d2, 1, 3, sent),
        ]
    );
    let times: Vec<Timestamp> = s.history().iter().map(|e| e.created_at).collect();
    assert_eq!(times, [0, 0, 30, 60, 60].map(minutes));
}

/// Scenario 3: "offline" (10 min, power-cycle) and "not playing" (at once,
/// a text to a person) on one device advance and act apart; one job's
/// action does not start the other's cooldown.
async fn two_jobs_on_one_device_are_independent(prometheus: &TestPrometheus, target: &TestTarget) {
    let d1 = device("32", "1");
    let jobs = r#"
[[jobs]]
name = "not playing"
devices = { platform_id = "32" }
metric = "addreality_device_playing"
op = "=="
value = 0
action = { sms = "{name} is not playing", to = "+79990001122" }
cooldown = "1h"
"#;
    let page = |on: f64, play: f64| [online("32", "1", on), playing("32", "1", play)];
    publish(prometheus, target, &page(1.0, 0.0)).await;
    let mut s = Scenario::start(prometheus, &(sockets("32") + &offline_job("32") + jobs)).await;

    let report = s.cycle_at(0).await;
    assert_eq!(report.queries, 3, "one query per distinct expression, and freshness: {report:?}");
    assert_eq!(s.sent(), [sms("+79990001122", "Lesnaia_1 is not playing")]);
    assert_eq!(s.phase("offline", &d1), PhaseName::Inactive);

    publish(prometheus, target, &page(0.0, 0.0)).await;
    s.cycle_at(1).await;
    assert_eq!(s.pending_of("offline", &d1), pending(1, 0));
    assert_eq!(firing_of(&s.state("not playing", &d1)), (1, 1));
    s.cycle_at(11).await;
    assert_eq!(firing_of(&s.state("offline", &d1)), (1, 1));
    assert_eq!(firing_of(&s.state("not playing", &d1)), (1, 1));
    assert_eq!(s.sent()[1..], [sms(LOBBY, POWER_CYCLE_1)]);

    // Playing again, still offline: only "not playing" resolves.
    publish(prometheus, target, &page(0.0, 1.0)).await;
    s.cycle_at(12).await;
    assert_eq!(s.phase("not playing", &d1), PhaseName::Resolved);
    assert_eq!(firing_of(&s.state("offline", &d1)), (1, 1));
    assert_eq!(s.gateway.received().len(), 2);
    let jobs: Vec<String> = s.history().iter().filter_map(|e| e.job.clone()).collect();
    assert_eq!(jobs, ["not playing", "offline"]);
}

/// Scenario 5: while the exporter cannot reach the platform's API its
/// device values are stale: the guard makes them unknown, so an offline
/// device is left alone until the platform is up again.
async fn guard_makes_a_device_of_a_down_platform_unknown(
    prometheus: &TestPrometheus,
    target: &TestTarget,
) {
    let d1 = device("52", "1");
    let jobs = offline_now_job("52")
        + "guards = [{ expr = \"addreality_platform_up == 1\", on = [\"platform_id\"] }]\n";
    publish(prometheus, target, &[online("52", "1", 0.0), platform_up("52", 0.0)]).await;
    let mut s = Scenario::start(prometheus, &(sockets("52") + &jobs)).await;

    for m in [0, 10, 30] {
        let report = s.cycle_at(m).await;
        assert_eq!((report.unknown, report.actions_due), (1, 0), "at {m} min: {report:?}");
        assert!(report.failed_queries.is_empty(), "{report:?}");
        assert_eq!(s.phase("offline now", &d1), PhaseName::Inactive);
    }
    assert!(s.gateway.received().is_empty());
    assert!(s.history().is_empty());

    publish(prometheus, target, &[online("52", "1", 0.0), platform_up("52", 1.0)]).await;
    s.cycle_at(31).await;
    assert_eq!(s.sent(), [sms(LOBBY, POWER_CYCLE_1)]);
}

/// Scenario 8: `--dry-run` evaluates and journals as usual, sends nothing.
async fn dry_run_journals_and_sends_nothing(prometheus: &TestPrometheus, target: &TestTarget) {
    let d1 = device("82", "1");
    publish(prometheus, target, &[online("82", "1", 0.0)]).await;
    let body = sockets("82") + &offline_job("82");
    let mut s = Scenario::start_in(prometheus, &body, Mode::DryRun).await;

    s.cycle_at(0).await;
    let report = s.cycle_at(10).await;
    assert_eq!((report.actions_due, report.sends_started, report.suppressed), (1, 0, 1));
    s.cycle_at(20).await;

    assert!(s.gateway.received().is_empty());
    let history = s.history();
    assert_eq!(rows(&history), [row("offline", &d1, 1, 1, ExecutionStatus::DryRun)]);
    assert_eq!(history[0].text, POWER_CYCLE_1);
    assert!(history[0].attempts.is_empty());
    assert_eq!(firing_of(&s.state("offline", &d1)), (1, 1));
}

/// Scenario 9: SIGHUP's new rules keep the state of a job that kept its
/// name (its `for` timer runs on), start new jobs afresh and forget removed
/// ones.
async fn reload_keeps_unchanged_jobs_and_drops_removed_ones(
    prometheus: &TestPrometheus,
    target: &TestTarget,
) {
    let d1 = device("92", "1");
    let job = |name: &str, command: &str| {
        let action = format!("{{ command = \"{command}\" }}");
        rules_file::offline_job(name, "92", Some("10m"), &action) + "\n"
    };
    publish(prometheus, target, &[online("92", "1", 0.0)]).await;
    let before = sockets("92") + &offline_job("92") + &job("old", "power_off");
    let mut s = Scenario::start(prometheus, &before).await;
    s.cycle_at(0).await;
    s.cycle_at(5).await;
    assert_eq!(s.pending_of("old", &d1), pending(0, 5));

    let after = sockets("92") + &offline_job("92") + &job("new", "power_on");
    s.engine.replace_rules(s.rules(&after));
    assert_eq!(s.pending_of("offline", &d1), pending(0, 5));
    assert!(s.engine.state("old", &d1).is_none());

    s.cycle_at(10).await;
    assert_eq!(s.sent(), [sms(LOBBY, POWER_CYCLE_1)]);
    assert_eq!(s.pending_of("new", &d1), pending(10, 0));
    assert!(s.engine.state("old", &d1).is_none());
    s.cycle_at(20).await;
    assert_eq!(s.sent(), [sms(LOBBY, POWER_CYCLE_1), sms(LOBBY, "#01#0#")]);
    let jobs: Vec<String> = s.history().iter().filter_map(|e| e.job.clone()).collect();
    assert_eq!(jobs, ["offline", "new"]);
}

#[tokio::test]
async fn gateway_faults_and_restarts_never_send_a_message_twice() {
    if !TestPrometheus::available() {
        return;
    }
    let targets = [TestTarget::start(), TestTarget::start()];
    let prometheus = TestPrometheus::start(&[&targets[0], &targets[1]]).await;

    gateway_failures_are_retried_then_journalled_once(&prometheus, &targets[0]).await;
    restart_keeps_states_and_never_resends(&prometheus, &targets[1]).await;
}

/// Scenario 6: each device of platform 62 fires at once into a different
/// fault of the gateway.
async fn gateway_failures_are_retried_then_journalled_once(
    prometheus: &TestPrometheus,
    target: &TestTarget,
) {
    let d = |id: &str| device("62", id);
    let jobs = offline_now_job("62");
    // Devices 1 to `bad` are offline, the others online.
    let page = |bad: u32| -> Vec<Series> {
        (1..=4).map(|i| online("62", &i.to_string(), if i <= bad { 0.0 } else { 1.0 })).collect()
    };
    let socket = |id: &str| {
        rules_file::socket(
            &format!("socket {id}"),
            &format!("+7999000000{id}"),
            "simpal-d210",
            "62",
            id,
        )
    };
    let body: String = ["1", "2", "3", "4"].map(socket).concat() + &jobs;
    publish(prometheus, target, &page(0)).await;
    let mut s = Scenario::start(prometheus, &body).await;
    s.cycle_at(0).await;

    // One HTTP 500, then accepted: retried and delivered once.
    s.gateway.fail_next(1, Fault::ServerError);
    publish(prometheus, target, &page(1)).await;
    s.cycle_at(1).await;
    assert_eq!(s.gateway.received().len(), 2);
    assert_eq!(s.sent(), [sms("+79990000001", POWER_CYCLE_1)]);

    // HTTP 500 every time: three attempts, then failed.
    s.gateway.set_fault(Some(Fault::ServerError));
    publish(prometheus, target, &page(2)).await;
    s.cycle_at(2).await;
    assert_eq!(s.gateway.received().len(), 5);

    // HTTP 200 saying it failed: a failure too, retried like one.
    s.gateway.set_fault(Some(Fault::ErrorBody("no credit left".into())));
    publish(prometheus, target, &page(3)).await;
    s.cycle_at(3).await;
    assert_eq!(s.gateway.received().len(), 8);

    // No answer within the sender's timeout: it may have left, so it is
    // never tried again.
    s.gateway.set_fault(Some(Fault::Hang));
    publish(prometheus, target, &page(4)).await;
    s.cycle_at(4).await;
    assert_eq!(s.gateway.received().len(), 9);

    // The gateway works again and the devices stay offline: nothing is sent
    // again, whatever the outcome was.
    s.gateway.set_fault(None);
    s.cycle_at(5).await;
    s.cycle_at(90).await;
    assert_eq!(s.gateway.received().len(), 9);
    assert_eq!(s.sent(), [sms("+79990000001", POWER_CYCLE_1), sms("+79990000004", POWER_CYCLE_1)]);

    use ExecutionStatus::{Failed, Sent, Uncertain};
    let history = s.history();
    assert_eq!(
        rows(&history),
        [
            row("offline now", &d("1"), 1, 1, Sent),
            row("offline now", &d("2"), 1, 1, Failed),
            row("offline now", &d("3"), 1, 1, Failed),
            row("offline now", &d("4"), 1, 1, Uncertain),
        ]
    );
    let outcomes: Vec<Vec<ExecutionStatus>> = history.iter().map(attempts).collect();
    assert_eq!(outcomes, [vec![Failed, Sent], vec![Failed; 3], vec![Failed; 3], vec![Uncertain]]);
    let detail = |i: usize| history[i].detail.clone().unwrap_or_default();
    assert!(detail(1).contains("HTTP 500"), "{}", detail(1));
    assert!(detail(2).contains("no credit left"), "{}", detail(2));
    assert!(detail(3).contains("may have sent"), "{}", detail(3));
}

/// Scenario 3e: the journal refuses state writes (a full disk, say) while
/// the device goes bad and then out of Prometheus's answers, so that its
/// pending state stops changing. Once the disk has room, that state is
/// written with the next cycle's all the same, and a restart finds it.
async fn a_state_save_that_failed_is_made_with_the_next_cycle(
    prometheus: &TestPrometheus,
    target: &TestTarget,
) {
    let d1 = device("16", "1");
    let body = sockets("16") + &offline_job("16");
    publish(prometheus, target, &[online("16", "1", 0.0)]).await;
    let mut s = Scenario::start(prometheus, &body).await;
    let db = rusqlite::Connection::open(s.journal_path()).unwrap();
    let saved = |db: &rusqlite::Connection| -> i64 {
        db.query_row("SELECT count(*) FROM job_state", [], |row| row.get(0)).unwrap()
    };
    db.execute_batch(
        "CREATE TRIGGER full_disk BEFORE INSERT ON job_state \
         BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
    )
    .unwrap();
    s.cycle_at(0).await;
    publish(prometheus, target, &[]).await;
    s.cycle_at(5).await;
    assert_eq!(saved(&db), 0);
    db.execute_batch("DROP TRIGGER full_disk").unwrap();

    s.cycle_at(10).await;
    let held = (minutes(0), Duration::ZERO);
    assert_eq!(s.pending_of("offline", &d1), held, "unknown holds the timer");
    assert_eq!(saved(&db), 1);

    let s = s.restart(&body).await;
    assert_eq!(s.pending_of("offline", &d1), held);
    assert!(s.sent().is_empty());
}

/// Scenario 7: the daemon dies with device 1 firing (its SMS sent), device
/// 2 pending and device 3's SMS in flight (device 3 is on platform 73, out
/// of "offline"'s reach); the next one resends nothing and carries on from
/// the journal.
async fn restart_keeps_states_and_never_resends(prometheus: &TestPrometheus, target: &TestTarget) {
    let (d1, d2, d3) = (device("72", "1"), device("72", "2"), device("73", "3"));
    let stage = rules_file::socket("stage", "+79990000003", "simpal-d210", "73", "3");
    let jobs =
        stage + &rules_file::offline_job("offline now", "73", None, "{ command = \"power_on\" }");
    let body = sockets("72") + &offline_job("72") + &jobs;
    let page =
        |a: f64, b: f64, c: f64| [online("72", "1", a), online("72", "2", b), online("73", "3", c)];
    publish(prometheus, target, &page(0.0, 1.0, 1.0)).await;
    let mut s = Scenario::start(prometheus, &body).await;
    s.cycle_at(0).await;
    s.cycle_at(10).await;
    assert_eq!(s.sent(), [sms(LOBBY, POWER_CYCLE_1)]);
    publish(prometheus, target, &page(0.0, 0.0, 1.0)).await;
    s.cycle_at(15).await;

    // Device 3's message reaches the gateway, which does not answer; the
    // daemon is killed before the answer.
    s.gateway.set_fault(Some(Fault::Hang));
    publish(prometheus, target, &page(0.0, 0.0, 0.0)).await;
    s.clock.set(minutes(20));
    let report = s.engine.cycle().await;
    assert_eq!(report.sends_started, 1, "{report:?}");
    s.wait_received(2).await;
    assert_eq!(s.history()[1].status, ExecutionStatus::Sending);

    let mut s = s.restart(&body).await;
    s.gateway.set_fault(None);
    let in_flight = &s.history()[1];
    assert_eq!((in_flight.status, in_flight.text.as_str()), (ExecutionStatus::Uncertain, "#01#0#"));
    assert!(in_flight.attempts.is_empty());
    assert!(in_flight.detail.as_deref().unwrap_or_default().contains("stopped while"));
    assert_eq!(firing_of(&s.state("offline", &d1)), (1, 1));
    // The journal kept device 2's run of true evaluations from 15, not
    // when it was last seen true (that would be a write every cycle): the
    // run is lost with the kill.
    assert_eq!(s.pending_of("offline", &d2), pending(15, 0));
    assert_eq!(firing_of(&s.state("offline now", &d3)), (1, 1));

    // The time the daemon was down does not count towards `for` either:
    // device 2 starts a run at 25 and needs the job's 10 minutes from there.
    s.cycle_at(25).await;
    assert_eq!(s.pending_of("offline", &d2), pending(15, 0));
    s.cycle_at(30).await;
    assert_eq!(s.pending_of("offline", &d2), pending(15, 5));
    assert_eq!(s.gateway.received().len(), 2);
    s.cycle_at(35).await;
    assert_eq!(s.gateway.received().len(), 3);
    assert_eq!(s.sent()[2], sms(HALL, POWER_CYCLE_1));

    // Device 1 recovers and fails again: the cooldown of its action at 10
    // min, before the restart, still holds the new episode until 70 min.
    publish(prometheus, target, &page(1.0, 0.0, 0.0)).await;
    s.cycle_at(31).await;
    publish(prometheus, target, &page(0.0, 0.0, 0.0)).await;
    s.cycle_at(32).await;
    s.cycle_at(42).await;
    assert_eq!(firing_of(&s.state("offline", &d1)), (2, 0));
    let mut s = s.restart(&body).await;
    s.cycle_at(50).await;
    s.cycle_at(69).await;
    assert_eq!(s.gateway.received().len(), 3);
    s.cycle_at(70).await;

    assert_eq!(s.gateway.received().len(), 4);
    let texts: Vec<String> = s.gateway.sent().into_iter().map(|m| m.text).collect();
    assert_eq!(texts, [POWER_CYCLE_1, "#01#0#", POWER_CYCLE_1, POWER_CYCLE_1]);
    use ExecutionStatus::{Sent, Uncertain};
    assert_eq!(
        rows(&s.history()),
        [
            row("offline", &d1, 1, 1, Sent),
            row("offline now", &d3, 1, 1, Uncertain),
            row("offline", &d2, 1, 1, Sent),
            row("offline", &d1, 2, 1, Sent),
        ]
    );
}

/// Scenario 4: Prometheus dies mid-run. Every query fails, so nothing
/// advances and nothing is sent; after its restart the engine carries on
/// where it was.
#[tokio::test]
async fn prometheus_outage_holds_every_state_and_sends_nothing() {
    if !TestPrometheus::available() {
        return;
    }
    let target = TestTarget::start();
    let mut prometheus = TestPrometheus::start(&[&target]).await;
    let (d1, d2) = (device("42", "1"), device("42", "2"));
    let page = |a: f64, b: f64| [online("42", "1", a), online("42", "2", b)];
    publish(&prometheus, &target, &page(1.0, 0.0)).await;
    let mut s = Scenario::start(&prometheus, &(sockets("42") + &offline_job("42"))).await;
    s.cycle_at(0).await;
    s.cycle_at(10).await;
    assert_eq!(s.sent(), [sms(HALL, POWER_CYCLE_1)]);
    publish(&prometheus, &target, &page(0.0, 0.0)).await;
    s.cycle_at(15).await;
    s.cycle_at(20).await;
    assert_eq!(s.pending_of("offline", &d1), pending(15, 5));

    prometheus.stop();
    for m in [25, 30, 40, 60] {
        let report = s.cycle_at(m).await;
        let failed: Vec<&str> = report.failed_queries.iter().map(|(q, _)| q.as_str()).collect();
        let freshness = "addreality_platform_last_success_timestamp_seconds";
        assert_eq!(
            failed,
            ["addreality_device_online{platform_id=\"42\"}", freshness],
            "{report:?}"
        );
        assert_eq!((report.unknown, report.transitions, report.actions_due), (2, 0, 0));
        assert_eq!(s.pending_of("offline", &d1), pending(15, 5), "at {m} min");
        assert_eq!(firing_of(&s.state("offline", &d2)), (1, 1), "at {m} min");
    }
    assert_eq!(s.gateway.received().len(), 1);

    prometheus.restart().await;
    // Wait for scrapes by the new process, not for samples the old one left.
    target.wait_scrapes(2).await;
    publish(&prometheus, &target, &page(0.0, 0.0)).await;
    let report = s.cycle_at(65).await;
    assert!(report.failed_queries.is_empty(), "{report:?}");
    assert_eq!(s.pending_of("offline", &d1), pending(15, 5));
    s.cycle_at(70).await;
    assert_eq!(s.sent(), [sms(HALL, POWER_CYCLE_1), sms(LOBBY, POWER_CYCLE_1)]);
    assert_eq!(firing_of(&s.state("offline", &d2)), (1, 1));
}

/// Issue 9, item 2: six messages due at once to sockets behind one modem,
/// which takes the first and then says nothing (so it holds its lock until
/// `send_timeout`), and jobctl stops while the other five wait for the
/// modem. Only the first had begun to leave: after the restart it is the
/// one uncertain message, and the five that never reached the modem are
/// sent, none twice.
#[tokio::test]
async fn messages_that_waited_for_the_modem_are_sent_after_a_restart_and_none_twice() {
    use support::fake_modem::{FakeModem, Reply};
    if !TestPrometheus::available() {
        return;
    }
    let target = TestTarget::start();
    let prometheus = TestPrometheus::start(&[&target]).await;
    let modem = FakeModem::start();
    modem.push_reply(Reply::SilentAfterText);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.db");
    let phone = |id: u32| format!("+7999000008{id}");
    let sockets: String = (1..=6)
        .map(|id| {
            let name = format!("socket {id}");
            rules_file::socket(&name, &phone(id), "simpal-d210", "81", &id.to_string())
        })
        .collect();
    let text = rules_file::head(prometheus.url(), "30s", "2s", &journal.display().to_string())
        + &format!(
            "[sms]\nbackend = \"modem\"\n\n[sms.modem]\ndevice = \"{}\"\n\
             command_timeout = \"1s\"\nsend_timeout = \"1s\"\n\n",
            modem.path().display()
        )
        + &sockets
        + &offline_now_job("81")
        // Six of six offline would be a mass outage: this is about the modem.
        + "mass_outage = false\n";
    let offline: Vec<Series> = (1..=6).map(|id| online("81", &id.to_string(), 0.0)).collect();
    publish(&prometheus, &target, &offline).await;

    let clock = Arc::new(ManualClock::new(t0()));
    let mut engine = start_engine(&dir, &text, clock.clone(), Mode::Live).await;
    let report = engine.cycle().await;
    assert_eq!(report.sends_started, 6, "{report:?}");
    let taken = || async { modem.received().first().map(|r| r.number.clone()) };
    let first = wait_until_async("the modem taking the first message", taken).await;
    // jobctl stops (as after SIGTERM and its grace period) with the first
    // message in the modem and the others waiting for it.
    drop(engine);
    released(&journal).await;

    let mut engine = start_engine(&dir, &text, clock, Mode::Live).await;
    engine.finish_sends().await;
    let mut received: Vec<String> = modem.received().into_iter().map(|r| r.number).collect();
    received.sort();
    assert_eq!(received, (1..=6).map(phone).collect::<Vec<_>>(), "each sent once");
    let history = Journal::open_read_only(&journal).unwrap();
    let history = history.history(&HistoryFilter::default()).unwrap();
    let mut outcomes: Vec<(String, ExecutionStatus)> =
        history.iter().map(|e| (e.phone.clone(), e.status)).collect();
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    let expected: Vec<(String, ExecutionStatus)> = (1..=6)
        .map(phone)
        .map(|p| {
            let status =
                if p == first { ExecutionStatus::Uncertain } else { ExecutionStatus::Sent };
            (p, status)
        })
        .collect();
    assert_eq!(outcomes, expected);
}

/// Issue 9, item 4: while the journal cannot be written (a full disk), six
/// pending pairs whose state changes every cycle wait to be saved: one
/// pending save each, however many cycles fail, and all are saved once the
/// disk has room.
#[tokio::test]
async fn unsaved_states_stay_one_per_pair_while_the_journal_cannot_be_written() {
    if !TestPrometheus::available() {
        return;
    }
    let target = TestTarget::start();
    let prometheus = TestPrometheus::start(&[&target]).await;
    let offline: Vec<Series> = (1..=6).map(|id| online("91", &id.to_string(), 0.0)).collect();
    publish(&prometheus, &target, &offline).await;
    let sockets: String = (1..=6)
        .map(|id| {
            let (name, phone) = (format!("socket {id}"), format!("+7999000009{id}"));
            rules_file::socket(&name, &phone, "simpal-d210", "91", &id.to_string())
        })
        .collect();
    let mut s = Scenario::start(&prometheus, &(sockets + &offline_job("91"))).await;
    let db = rusqlite::Connection::open(s.journal_path()).unwrap();
    db.execute_batch(
        "CREATE TRIGGER full_disk BEFORE INSERT ON job_state \
         BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
    )
    .unwrap();
    let mut unsaved = Vec::new();
    for cycle in 0..8 {
        // Pending for 10 minutes, so no action falls due: the states new
        // at the first cycle do not change again, and each cycle tries to
        // save them anew.
        let report = s.cycle_at(cycle).await;
        assert_eq!(report.evaluations, 6, "{report:?}");
        unsaved.push(report.unsaved_states);
    }
    assert_eq!(unsaved, [6; 8]);

    db.execute_batch("DROP TRIGGER full_disk").unwrap();
    let report = s.cycle_at(8).await;
    assert_eq!(report.unsaved_states, 0);
    let saved: i64 = db.query_row("SELECT count(*) FROM job_state", [], |row| row.get(0)).unwrap();
    assert_eq!(saved, 6);
}

/// Issue 11: a state is journalled when something happens to it, not
/// because time passed. Cycles in which a pending device stays pending write
/// nothing at all (no transaction: another connection sees no new data);
/// an unknown gap starting and ending each writes the state once; a restart
/// after a kill resumes the pending state with the time it held before its
/// run, one after a clean stop with all it held.
#[tokio::test]
async fn cycles_without_change_write_nothing_and_a_restart_keeps_the_time_held() {
    if !TestPrometheus::available() {
        return;
    }
    let target = TestTarget::start();
    let prometheus = TestPrometheus::start(&[&target]).await;
    let d1 = device("57", "1");
    let body = sockets("57") + &offline_job("57");
    let both_offline = [online("57", "1", 0.0), online("57", "2", 0.0)];
    publish(&prometheus, &target, &both_offline).await;
    let mut s = Scenario::start(&prometheus, &body).await;
    let db = rusqlite::Connection::open(s.journal_path()).unwrap();
    let version = |db: &rusqlite::Connection| -> i64 {
        db.query_row("PRAGMA data_version", [], |row| row.get(0)).unwrap()
    };
    let rows = |db: &rusqlite::Connection| -> Vec<(String, String)> {
        let mut statement =
            db.prepare("SELECT device_key, state FROM job_state ORDER BY device_key").unwrap();
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };

    let report = s.cycle_at(0).await;
    assert_eq!(report.transitions, 2, "{report:?}");
    let (written, pending_rows) = (version(&db), rows(&db));
    assert_eq!(pending_rows.len(), 2);
    for m in 1..=4 {
        let report = s.cycle_at(m).await;
        assert_eq!((report.evaluations, report.transitions), (2, 0), "{report:?}");
        assert_eq!(version(&db), written, "minute {m}: nothing happened, nothing written");
    }
    assert_eq!(rows(&db), pending_rows);
    assert_eq!(s.pending_of("offline", &d1), pending(0, 4));

    // Device 1's series goes missing: its run ends (4 minutes, kept) and
    // that is written; the gap itself writes nothing more.
    publish(&prometheus, &target, &both_offline[1..]).await;
    s.cycle_at(5).await;
    let gap_began = version(&db);
    assert_ne!(gap_began, written, "the end of a run is journalled");
    s.cycle_at(6).await;
    assert_eq!(version(&db), gap_began, "nothing happens while unknown lasts");
    publish(&prometheus, &target, &both_offline).await;
    s.cycle_at(7).await;
    let run_began = version(&db);
    assert_ne!(run_began, gap_began, "the start of a run is journalled");
    s.cycle_at(8).await;
    assert_eq!(version(&db), run_began);
    assert_eq!(s.pending_of("offline", &d1), pending(0, 5));
    drop(db);

    // Killed at 8: device 1's run from 7 is lost, its 4 minutes before the
    // gap are not. Counting resumes at 9, so `for` (10m) is held at 15.
    let mut s = s.restart(&body).await;
    assert_eq!(s.pending_of("offline", &d1), pending(0, 4));
    for m in 9..=14 {
        s.cycle_at(m).await;
    }
    assert_eq!(s.pending_of("offline", &d1), pending(0, 9));
    assert!(s.gateway.received().is_empty());
    s.cycle_at(15).await;
    assert_eq!(firing_of(&s.state("offline", &d1)), (1, 1));
    assert_eq!(s.sent(), [sms(LOBBY, POWER_CYCLE_1)]);

    // Stopped cleanly at 15 (SIGTERM), device 2's run from 9 is journalled
    // first: after the restart it needs only the rest of its 10 minutes.
    let d2 = device("57", "2");
    assert_eq!(s.pending_of("offline", &d2), pending(0, 6));
    s.engine.stop().await;
    let mut s = s.restart(&body).await;
    assert_eq!(s.pending_of("offline", &d2), pending(0, 6));
    s.cycle_at(20).await;
    s.cycle_at(23).await;
    assert_eq!(s.pending_of("offline", &d2), pending(0, 9));
    assert_eq!(s.gateway.received().len(), 1);
    s.cycle_at(24).await;
    assert_eq!(firing_of(&s.state("offline", &d2)), (1, 1));
    assert_eq!(s.sent(), [sms(LOBBY, POWER_CYCLE_1), sms(HALL, POWER_CYCLE_1)]);
}

/// A silence written beside the engine, through the write path `jobctl
/// silence` uses, on the scenario's clock.
fn silence_writer(s: &Scenario) -> SilenceWriter {
    SilenceWriter::open(&s.journal_path()).unwrap().with_clock(s.clock.clone())
}

/// The holds the journal recorded, as (job, device, episode, action, silence).
fn holds(s: &Scenario, minute: u64) -> Vec<(String, String, u64, u32, i64)> {
    let journal = Journal::open_read_only(&s.journal_path()).unwrap();
    let mut holds: Vec<_> = journal
        .active_holds(minutes(minute))
        .unwrap()
        .into_iter()
        .map(|h| {
            let a = h.action;
            (a.job, a.device_key, a.episode, a.attempt, a.silence.0)
        })
        .collect();
    holds.sort();
    holds
}

#[tokio::test]
async fn a_silence_holds_an_action_once_journalled_and_its_end_releases_it() {
    if !TestPrometheus::available() {
        return;
    }
    let target = TestTarget::start();
    let prometheus = TestPrometheus::start(&[&target]).await;
    let (d1, d2) = (device("82", "1"), device("82", "2"));
    publish(&prometheus, &target, &[online("82", "1", 0.0), online("82", "2", 0.0)]).await;
    let body = sockets("82") + &offline_now_job("82");
    let mut s = Scenario::start(&prometheus, &body).await;
    // Added while the engine holds the journal's writer lock: device 1's
    // actions, for 30 minutes from t0.
    let silence = silence_writer(&s)
        .add(&NewSilence {
            job: Some("offline now".into()),
            socket: None,
            devices: BTreeMap::from([("device_id".into(), "1".into())]),
            author: "anna".into(),
            comment: "lobby rewiring".into(),
            duration: Duration::from_secs(30 * 60),
        })
        .unwrap();
    assert_eq!(silence.id, SilenceId(1));

    let report = s.cycle_at(0).await;
    assert_eq!((report.actions_due, report.sends_started), (1, 1), "{report:?}");
    assert_eq!(s.sent(), [sms(HALL, POWER_CYCLE_1)], "device 2 is not silenced");
    assert_eq!(firing_of(&s.state("offline now", &d1)), (1, 0), "firing, its action waiting");
    let held = vec![("offline now".to_string(), d1.clone(), 1, 1, 1)];
    assert_eq!(holds(&s, 0), held);

    // Still held, and journalled once however many cycles hold it, a
    // restart included.
    for minute in [5, 10] {
        assert_eq!(s.cycle_at(minute).await.actions_due, 0);
    }
    let mut s = s.restart(&body).await;
    assert_eq!(s.cycle_at(15).await.actions_due, 0);
    assert_eq!(holds(&s, 15), held);
    let journal = Journal::open_read_only(&s.journal_path()).unwrap();
    let listed = journal.silences(minutes(15), false).unwrap();
    assert_eq!((listed.len(), listed[0].held), (1, 1));
    drop(journal);
    assert_eq!(s.gateway.received().len(), 1);

    // The silence ends at minute 30: the action still due leaves then.
    assert_eq!(s.cycle_at(29).await.actions_due, 0);
    let report = s.cycle_at(30).await;
    assert_eq!((report.actions_due, report.sends_started), (1, 1), "{report:?}");
    assert_eq!(s.sent(), [sms(HALL, POWER_CYCLE_1), sms(LOBBY, POWER_CYCLE_1)]);
    assert_eq!(firing_of(&s.state("offline now", &d1)), (1, 1));
    assert!(holds(&s, 30).is_empty(), "an ended silence holds nothing");
    assert_eq!(
        rows(&s.history()),
        [
            row("offline now", &d2, 1, 1, ExecutionStatus::Sent),
            row("offline now", &d1, 1, 1, ExecutionStatus::Sent),
        ]
    );

    // A socket silence, ended early by `expire`: device 2 recovers, goes
    // bad again, and its new episode's action waits for the end.
    publish(&prometheus, &target, &[online("82", "1", 0.0), online("82", "2", 1.0)]).await;
    s.cycle_at(40).await;
    let mut writer = silence_writer(&s);
    let hall = writer
        .add(&NewSilence {
            job: None,
            socket: Some("hall".into()),
            devices: BTreeMap::new(),
            author: "anna".into(),
            comment: "hall power strip".into(),
            duration: Duration::from_secs(24 * 3600),
        })
        .unwrap();
    publish(&prometheus, &target, &[online("82", "1", 0.0), online("82", "2", 0.0)]).await;
    assert_eq!(s.cycle_at(120).await.actions_due, 0, "cooldown over, but silenced");
    assert_eq!(holds(&s, 120), [("offline now".to_string(), d2.clone(), 2, 1, hall.id.0)]);
    s.clock.set(minutes(125));
    assert!(matches!(writer.expire(hall.id, "boris").unwrap(), Some(Expired::Now(_))));
    let report = s.cycle_at(126).await;
    assert_eq!((report.actions_due, report.sends_started), (1, 1), "{report:?}");
    assert_eq!(s.gateway.received().len(), 3);
    assert_eq!(s.sent()[2], sms(HALL, POWER_CYCLE_1));
}

/// Issue 10, the closed loop: `verify` tells whether a power-cycle brought
/// the player back, `limit` stops a job from cycling a device (or a socket)
/// for ever, and neither loses or repeats anything across a restart.
#[tokio::test]
async fn verify_and_limit_close_the_loop() {
    if !TestPrometheus::available() {
        return;
    }
    let targets: Vec<TestTarget> = (0..5).map(|_| TestTarget::start()).collect();
    let prometheus = TestPrometheus::start(&targets.iter().collect::<Vec<_>>()).await;

    a_device_that_comes_back_recovered_and_one_that_does_not_did_not(&prometheus, &targets[0])
        .await;
    the_fourth_action_in_a_day_is_refused_across_restarts_and_reloads(&prometheus, &targets[1])
        .await;
    a_socket_powering_two_devices_is_limited_as_one(&prometheus, &targets[2]).await;
    a_restart_during_the_window_keeps_the_result_right(&prometheus, &targets[3]).await;
    one_message_for_two_devices_has_a_result_and_a_count_for_each(&prometheus, &targets[4]).await;
}

/// (job, device, episode, action, status, result, seconds to recover) of
/// each execution.
type ResultRow = (String, String, u64, u32, ExecutionStatus, Option<ActionResult>, Option<u64>);

fn results(history: &[Execution]) -> Vec<ResultRow> {
    history
        .iter()
        .map(|e| {
            (
                e.job.clone().unwrap_or_default(),
                e.device_key.clone().unwrap_or_default(),
                e.episode.unwrap_or_default(),
                e.attempt.unwrap_or_default(),
                e.status,
                e.result,
                e.recovered_after.map(|d| d.as_secs()),
            )
        })
        .collect()
}

fn result_row(
    job: &str,
    device: &str,
    (episode, action): (u64, u32),
    status: ExecutionStatus,
    result: Option<ActionResult>,
    recovered_after_minutes: Option<u64>,
) -> ResultRow {
    let seconds = recovered_after_minutes.map(|m| m * 60);
    (job.to_string(), device.to_string(), episode, action, status, result, seconds)
}

/// The value of `jobctl_executions_total` for `job` and `outcome`, 0 when
/// the engine has no such series.
fn executions_metric(s: &Scenario, job: &str, outcome: &str) -> u64 {
    let series = format!("jobctl_executions_total{{job=\"{job}\",outcome=\"{outcome}\"}} ");
    s.engine
        .metrics_text()
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .map_or(0, |value| value.parse().unwrap())
}

/// Scenario V1: two players go offline and are power-cycled at once;
/// device 1 is back 4 minutes later, device 2 is still offline when the 10
/// minutes are up.
async fn a_device_that_comes_back_recovered_and_one_that_does_not_did_not(
    prometheus: &TestPrometheus,
    target: &TestTarget,
) {
    let (d1, d2) = (device("101", "1"), device("101", "2"));
    let job = offline_now_job("101") + "verify = { within = \"10m\" }\n";
    let page = |a: f64, b: f64| [online("101", "1", a), online("101", "2", b)];
    publish(prometheus, target, &page(0.0, 0.0)).await;
    let mut s = Scenario::start(prometheus, &(sockets("101") + &job)).await;

    s.cycle_at(0).await;
    assert_eq!(s.gateway.received().len(), 2);
    s.cycle_at(2).await;
    publish(prometheus, target, &page(1.0, 0.0)).await;
    s.cycle_at(4).await;
    assert_eq!(s.phase("offline now", &d1), PhaseName::Resolved);
    assert_eq!(s.state("offline now", &d1).verifying, None);
    let open = s.state("offline now", &d2).verifying.expect("device 2 is being verified");
    assert_eq!((open.action_at, open.until), (minutes(0), minutes(10)));

    s.cycle_at(9).await;
    assert_eq!(results(&s.history())[1].5, None, "the window is open until 10 min");
    s.cycle_at(10).await;
    // Device 2 comes back later: the result stands.
    publish(prometheus, target, &page(1.0, 1.0)).await;
    s.cycle_at(12).await;

    use ActionResult::{NotRecovered, Recovered};
    use ExecutionStatus::Sent;
    assert_eq!(
        results(&s.history()),
        [
            result_row("offline now", &d1, (1, 1), Sent, Some(Recovered), Some(4)),
            result_row("offline now", &d2, (1, 1), Sent, Some(NotRecovered), None),
        ]
    );
    assert_eq!(s.history()[1].result_at, Some(minutes(10)));
    assert_eq!(executions_metric(&s, "offline now", "recovered"), 1);
    assert_eq!(executions_metric(&s, "offline now", "not_recovered"), 1);
    assert_eq!(s.gateway.received().len(), 2, "verifying sends nothing");
}

/// Scenario V2: a player that stays offline is power-cycled every hour,
/// but at most 3 times a day: the 4th action is refused and the episode
/// gives up, once; neither a reload nor a restart resets the count, and a
/// day after the first action a new episode acts again.
async fn the_fourth_action_in_a_day_is_refused_across_restarts_and_reloads(
    prometheus: &TestPrometheus,
    target: &TestTarget,
) {
    let d1 = device("102", "1");
    let job = offline_now_job("102")
        + "repeat = { every = \"1h\", max = 10 }\nlimit = { actions = 3, per = \"24h\" }\n";
    let body = rules_file::socket("lobby", LOBBY, "simpal-d210", "102", "1") + &job;
    publish(prometheus, target, &[online("102", "1", 0.0)]).await;
    let mut s = Scenario::start(prometheus, &body).await;

    for m in [0, 60, 120] {
        let report = s.cycle_at(m).await;
        assert_eq!((report.sends_started, report.gave_up), (1, 0), "at {m} min: {report:?}");
    }
    let report = s.cycle_at(180).await;
    assert_eq!((report.actions_due, report.sends_started, report.gave_up), (1, 0, 1));
    assert_eq!(s.state("offline now", &d1).gave_up_in, Some(1));
    for m in [181, 240, 300] {
        let report = s.cycle_at(m).await;
        assert_eq!((report.actions_due, report.gave_up), (0, 0), "gives up once: {report:?}");
    }
    assert_eq!(s.gateway.received().len(), 3);
    assert_eq!(executions_metric(&s, "offline now", "gave_up"), 1);
    let refused = s.history().pop().unwrap();
    assert_eq!(
        refused.detail.as_deref(),
        Some("limit reached: 3 actions on this device in the last 1day (limit 3 per 1day)")
    );
    assert_eq!((refused.text.as_str(), refused.socket.as_str()), (POWER_CYCLE_1, "lobby"));

    // The player comes back and fails again: a new episode, after a reload
    // with the same rules and a restart. Still 3 actions in the last day.
    publish(prometheus, target, &[online("102", "1", 1.0)]).await;
    s.cycle_at(310).await;
    s.engine.replace_rules(s.rules(&body));
    let mut s = s.restart(&body).await;
    publish(prometheus, target, &[online("102", "1", 0.0)]).await;
    let report = s.cycle_at(320).await;
    assert_eq!((report.sends_started, report.gave_up), (0, 1), "{report:?}");

    // A day after the first action, two of the three are left in the
    // window: a new episode acts again.
    publish(prometheus, target, &[online("102", "1", 1.0)]).await;
    s.cycle_at(1445).await;
    publish(prometheus, target, &[online("102", "1", 0.0)]).await;
    let report = s.cycle_at(1450).await;
    assert_eq!((report.sends_started, report.gave_up), (1, 0), "{report:?}");

    use ActionResult::GaveUp;
    use ExecutionStatus::{Sent, Suppressed};
    assert_eq!(
        results(&s.history()),
        [
            result_row("offline now", &d1, (1, 1), Sent, None, None),
            result_row("offline now", &d1, (1, 2), Sent, None, None),
            result_row("offline now", &d1, (1, 3), Sent, None, None),
            result_row("offline now", &d1, (1, 4), Suppressed, Some(GaveUp), None),
            result_row("offline now", &d1, (2, 1), Suppressed, Some(GaveUp), None),
            result_row("offline now", &d1, (3, 1), Sent, None, None),
        ]
    );
}

/// Scenario V3: one power strip (socket "strip") feeds two players, and
/// the job may cycle it twice a day: device 1's action and device 2's use
/// the strip's two, so both devices' repeats are refused although each was
/// acted upon once.
async fn a_socket_powering_two_devices_is_limited_as_one(
    prometheus: &TestPrometheus,
    target: &TestTarget,
) {
    let (d1, d2) = (device("103", "1"), device("103", "2"));
    let strip = "[[sockets]]\nname = \"strip\"\nphone = \"+79990000301\"\nmodel = \"simpal-d210\"\n\
                 powers = [{ platform_id = \"103\", device_id = \"1\" }, { platform_id = \"103\", device_id = \"2\" }]\n\n";
    // A cooldown shorter than the half hour between the two devices' first
    // actions: the strip may take device 2's (one socket, one command per
    // cooldown).
    let job = offline_now_job("103")
        + "cooldown = \"10m\"\nrepeat = { every = \"1h\", max = 10 }\n\
           limit = { actions = 2, per = \"24h\" }\n";
    let page = |a: f64, b: f64| [online("103", "1", a), online("103", "2", b)];
    publish(prometheus, target, &page(0.0, 1.0)).await;
    let mut s = Scenario::start(prometheus, &(strip.to_string() + &job)).await;
    s.cycle_at(0).await;
    publish(prometheus, target, &page(0.0, 0.0)).await;
    s.cycle_at(30).await;
    assert_eq!(s.gateway.received().len(), 2);
    let report = s.cycle_at(60).await;
    assert_eq!((report.sends_started, report.gave_up), (0, 1), "{report:?}");
    let report = s.cycle_at(90).await;
    assert_eq!((report.sends_started, report.gave_up), (0, 1), "{report:?}");
    assert_eq!(s.gateway.received().len(), 2);
    let history = s.history();
    let refused: Vec<(&str, Option<&str>)> = history[2..]
        .iter()
        .map(|e| (e.device_key.as_deref().unwrap(), e.detail.as_deref()))
        .collect();
    let why = Some("limit reached: 2 actions to socket strip in the last 1day (limit 2 per 1day)");
    assert_eq!(refused, [(d1.as_str(), why), (d2.as_str(), why)]);
    assert_eq!(history[2].result, Some(ActionResult::GaveUp));
}

/// Scenario V4: jobctl restarts while an action is being verified: the
/// window carries on from the journal, the result is recorded once, and a
/// window jobctl did not see the end of is judged on what it saw.
async fn a_restart_during_the_window_keeps_the_result_right(
    prometheus: &TestPrometheus,
    target: &TestTarget,
) {
    let (d1, d2) = (device("104", "1"), device("104", "2"));
    let job = offline_now_job("104") + "verify = { within = \"10m\" }\n";
    let body = sockets("104") + &job;
    let page = |a: f64, b: f64| [online("104", "1", a), online("104", "2", b)];
    publish(prometheus, target, &page(0.0, 0.0)).await;
    let mut s = Scenario::start(prometheus, &body).await;
    s.cycle_at(0).await;
    s.cycle_at(3).await;

    let mut s = s.restart(&body).await;
    let open = s.state("offline now", &d1).verifying.expect("the window survives a restart");
    assert_eq!((open.episode, open.attempt, open.until), (1, 1, minutes(10)));
    publish(prometheus, target, &page(1.0, 0.0)).await;
    s.cycle_at(6).await;
    assert_eq!(executions_metric(&s, "offline now", "recovered"), 1);

    // Down again across the end of device 2's window: it was last seen bad
    // at 6 min, and is back when jobctl returns at 15.
    let mut s = s.restart(&body).await;
    publish(prometheus, target, &page(1.0, 1.0)).await;
    s.cycle_at(15).await;
    s.cycle_at(16).await;
    let s = s.restart(&body).await;
    assert_eq!(executions_metric(&s, "offline now", "recovered"), 0, "a new process");

    use ActionResult::{NotRecovered, Recovered};
    use ExecutionStatus::Sent;
    assert_eq!(
        results(&s.history()),
        [
            result_row("offline now", &d1, (1, 1), Sent, Some(Recovered), Some(6)),
            result_row("offline now", &d2, (1, 1), Sent, Some(NotRecovered), None),
        ]
    );
    assert_eq!(s.gateway.received().len(), 2);
}

/// Issue 10: players 1 and 2 on one power strip (socket "hall") go offline
/// together: the strip gets one power-cycle, journalled once for both.
/// Player 3 on the same strip goes offline ten minutes later: the strip got
/// a command within the job's cooldown, so player 3's action waits (across
/// a restart, too) and leaves once the hour is over, as it is still offline.
#[tokio::test]
async fn devices_on_one_socket_get_one_command_per_cooldown() {
    if !TestPrometheus::available() {
        return;
    }
    let target = TestTarget::start();
    let prometheus = TestPrometheus::start(&[&target]).await;
    let d = |id: &str| device("17", id);
    let body = format!(
        "[[sockets]]\nname = \"hall\"\nphone = \"{HALL}\"\nmodel = \"simpal-d410\"\n\
         powers = [\n  {{ platform_id = \"17\", device_id = \"1\" }},\n  \
         {{ platform_id = \"17\", device_id = \"2\" }},\n  \
         {{ platform_id = \"17\", device_id = \"3\" }},\n]\n\n"
    ) + &offline_now_job("17")
        + "cooldown = \"1h\"\n";
    let page =
        |third: f64| [online("17", "1", 0.0), online("17", "2", 0.0), online("17", "3", third)];
    publish(&prometheus, &target, &page(1.0)).await;
    let mut s = Scenario::start(&prometheus, &body).await;

    let report = s.cycle_at(0).await;
    assert_eq!((report.actions_due, report.sends_started), (2, 1), "{report:?}");
    assert_eq!(s.sent(), [sms(HALL, POWER_CYCLE_1)]);
    assert_eq!(firing_of(&s.state("offline now", &d("1"))), (1, 1));
    assert_eq!(firing_of(&s.state("offline now", &d("2"))), (1, 1));
    let history = s.history();
    assert_eq!(rows(&history), [row("offline now", &d("1"), 1, 1, ExecutionStatus::Sent)]);
    assert_eq!(history[0].devices, [d("1"), d("2")]);
    // `jobctl history --device` finds the execution under each device.
    let journal = Journal::open_read_only(&s.journal_path()).unwrap();
    let for_device = |id: &str| {
        let filter = HistoryFilter { device_key: Some(d(id)), ..HistoryFilter::default() };
        journal.history(&filter).unwrap().iter().map(|e| e.id).collect::<Vec<_>>()
    };
    assert_eq!((for_device("1"), for_device("2")), (vec![history[0].id], vec![history[0].id]));
    assert!(for_device("3").is_empty());
    drop(journal);
    // `jobctl history` shows both in its DEVICE column and in JSON.
    let rules = rules_text(&s.dir, &s.prometheus_url, &s.gateway, &body);
    std::fs::write(s.dir.path().join("rules.toml"), rules).unwrap();
    let history = |format: &'static str| {
        let mut command = support::process::command(env!("CARGO_BIN_EXE_jobctl"), s.dir.path());
        command.args(["--config", "rules.toml", "history", "--format", format]);
        support::process::run_async(tokio::process::Command::from(command))
    };
    let ran = history("table").await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""));
    assert!(ran.stdout.contains(&format!(" {} + {} ", d("1"), d("2"))), "{}", ran.stdout);
    let ran = history("json").await;
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(json[0]["devices"], serde_json::json!([d("1"), d("2")]), "{json}");

    publish(&prometheus, &target, &page(0.0)).await;
    for m in [10, 30] {
        let report = s.cycle_at(m).await;
        assert_eq!(report.sends_started, 0, "at {m} min: {report:?}");
        assert_eq!(firing_of(&s.state("offline now", &d("3"))), (1, 0), "at {m} min");
    }
    let mut s = s.restart(&body).await;
    s.cycle_at(59).await;
    assert_eq!(firing_of(&s.state("offline now", &d("3"))), (1, 0));
    assert_eq!(s.gateway.received().len(), 1);

    let report = s.cycle_at(60).await;
    assert_eq!(report.sends_started, 1, "{report:?}");
    s.cycle_at(90).await;
    assert_eq!(s.sent(), [sms(HALL, POWER_CYCLE_1), sms(HALL, POWER_CYCLE_1)]);
    assert_eq!(firing_of(&s.state("offline now", &d("3"))), (1, 1));
    let history = s.history();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].devices, [d("3")]);
    assert_eq!(history[1].created_at, minutes(60));
}

/// Issue 10: a budget of one message an hour in all. Player 1 takes it at
/// 9:00; players 2 and 3 go offline at 9:10, and their actions are held:
/// journalled once as suppressed (not once a cycle, nor again after a
/// restart), not counted as the episode's action. Player 3 comes back
/// meanwhile and is never acted on; player 2 is still offline when the hour
/// frees the budget, and its power-cycle leaves then.
#[tokio::test]
async fn a_budget_suppressed_action_stays_due_and_leaves_when_the_budget_allows() {
    if !TestPrometheus::available() {
        return;
    }
    let target = TestTarget::start();
    let prometheus = TestPrometheus::start(&[&target]).await;
    let d = |id: &str| device("18", id);
    let body = "[budgets]\ntotal_per_hour = 1\n\n".to_string()
        + &sockets("18")
        + &rules_file::socket("kiosk", KIOSK, "simpal-d210", "18", "3")
        + &offline_now_job("18");
    let page = |second: f64, third: f64| {
        [online("18", "1", 0.0), online("18", "2", second), online("18", "3", third)]
    };
    publish(&prometheus, &target, &page(1.0, 1.0)).await;
    let mut s = Scenario::start(&prometheus, &body).await;
    assert_eq!(s.cycle_at(0).await.sends_started, 1);

    publish(&prometheus, &target, &page(0.0, 0.0)).await;
    let report = s.cycle_at(10).await;
    assert_eq!((report.actions_due, report.sends_started, report.suppressed), (2, 0, 2));
    let held = || {
        vec![
            row("offline now", &d("1"), 1, 1, ExecutionStatus::Sent),
            row("offline now", &d("2"), 1, 1, ExecutionStatus::Suppressed),
            row("offline now", &d("3"), 1, 1, ExecutionStatus::Suppressed),
        ]
    };
    assert_eq!(rows(&s.history()), held());
    assert_eq!(
        s.history()[1].detail.as_deref(),
        Some("budget of 1 messages in all per hour reached (all sockets: 1)")
    );
    assert_eq!(firing_of(&s.state("offline now", &d("2"))), (1, 0), "the action stays due");
    // Due again each cycle, journalled once.
    let report = s.cycle_at(20).await;
    assert_eq!((report.actions_due, report.sends_started, report.suppressed), (2, 0, 0));
    let mut s = s.restart(&body).await;
    assert_eq!(firing_of(&s.state("offline now", &d("2"))), (1, 0), "saved as due");
    let report = s.cycle_at(30).await;
    assert_eq!((report.actions_due, report.sends_started, report.suppressed), (2, 0, 0));
    assert_eq!(rows(&s.history()), held());

    publish(&prometheus, &target, &page(0.0, 1.0)).await;
    s.cycle_at(40).await;
    assert_eq!(s.phase("offline now", &d("3")), PhaseName::Resolved);
    // 10:00 still counts 9:00's message; a minute later the hour is free.
    assert_eq!(s.cycle_at(60).await.sends_started, 0);
    let report = s.cycle_at(61).await;
    assert_eq!((report.actions_due, report.sends_started), (1, 1), "{report:?}");
    s.cycle_at(70).await;
    assert_eq!(s.sent(), [sms(LOBBY, POWER_CYCLE_1), sms(HALL, POWER_CYCLE_1)]);
    assert_eq!(firing_of(&s.state("offline now", &d("2"))), (1, 1));
    let mut expected = held();
    expected.push(row("offline now", &d("2"), 1, 1, ExecutionStatus::Sent));
    let history = s.history();
    assert_eq!(rows(&history), expected);
    assert_eq!(history[3].created_at, minutes(61));
}

/// Issue 10: a job over a whole platform where player 3 has no socket. Its
/// action cannot become a message: one ERROR when its episode starts, not
/// one a cycle (seven cycles here), and one more for its next episode. With
/// `only_powered = true` the job leaves player 3 alone and still acts on
/// the players that have a socket.
#[tokio::test]
async fn a_device_without_a_socket_is_reported_once_per_episode_or_left_out() {
    if !TestPrometheus::available() {
        return;
    }
    let target = TestTarget::start();
    let prometheus = TestPrometheus::start(&[&target]).await;
    let d3 = device("19", "3");
    let body = sockets("19") + &offline_now_job("19");
    let page = |first: f64, third: f64| {
        [online("19", "1", first), online("19", "2", 1.0), online("19", "3", third)]
    };
    publish(&prometheus, &target, &page(1.0, 0.0)).await;
    let (logs, _guard) = Logs::capture();
    let mut s = Scenario::start(&prometheus, &body).await;
    let errors = |logs: &str| -> Vec<String> {
        logs.lines().filter(|l| l.contains("ERROR")).map(str::to_string).collect()
    };
    let said = format!(
        "ERROR job \"offline now\": device {d3} (Lesnaia_3): cannot act: no socket powers device {d3}; add a [[sockets]] entry whose powers names it; the action stays due (said once per episode)"
    );
    let db = rusqlite::Connection::open(s.journal_path()).unwrap();
    let version = |db: &rusqlite::Connection| -> i64 {
        db.query_row("PRAGMA data_version", [], |row| row.get(0)).unwrap()
    };
    let mut action_errors = Vec::new();
    let mut versions = Vec::new();
    for m in 0..7 {
        action_errors.push(s.cycle_at(m).await.action_errors);
        versions.push(version(&db));
    }
    assert_eq!(action_errors, [1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(errors(&logs.take()), std::slice::from_ref(&said));
    assert_eq!(firing_of(&s.state("offline now", &d3)), (1, 0), "the action stays due");
    // Its state, firing with the action due, is written once: the action
    // due again each cycle and held again changes nothing.
    assert!(versions[1..].iter().all(|&v| v == versions[0]), "{versions:?}");
    drop(db);

    publish(&prometheus, &target, &page(1.0, 1.0)).await;
    s.cycle_at(7).await;
    publish(&prometheus, &target, &page(1.0, 0.0)).await;
    for m in 8..11 {
        s.cycle_at(m).await;
    }
    assert_eq!(firing_of(&s.state("offline now", &d3)), (2, 0));
    assert_eq!(errors(&logs.take()), [said], "once for the second episode");
    assert!(s.gateway.received().is_empty());
    assert!(s.history().is_empty());

    // Reloaded to watch only the powered players: player 3's episode ends
    // (it is no longer watched, rather than unknown for ever); player 1, on
    // a socket, is acted on.
    let only_powered = sockets("19") + &offline_now_job("19") + "only_powered = true\n";
    s.engine.replace_rules(s.rules(&only_powered));
    publish(&prometheus, &target, &page(0.0, 0.0)).await;
    let report = s.cycle_at(11).await;
    assert_eq!((report.actions_due, report.sends_started, report.action_errors), (1, 1, 0));
    assert_eq!(s.phase("offline now", &d3), PhaseName::Resolved);
    // It stays remembered as resolved, neither unknown nor acted on.
    let report = s.cycle_at(12).await;
    assert_eq!((report.evaluations, report.unknown, report.actions_due), (3, 0, 0));
    assert_eq!(s.sent(), [sms(LOBBY, POWER_CYCLE_1)]);
    assert_eq!(s.phase("offline now", &d3), PhaseName::Resolved);
    assert!(errors(&logs.take()).is_empty());

    // From the start, player 3 is never evaluated.
    let mut s = Scenario::start(&prometheus, &only_powered).await;
    let report = s.cycle_at(0).await;
    assert_eq!((report.evaluations, report.actions_due, report.action_errors), (2, 1, 0));
    assert_eq!(s.phase("offline now", &d3), PhaseName::Inactive);
    assert!(errors(&logs.take()).is_empty());
}

/// Scenario V5: two players on one strip go offline together and share one
/// power-cycle; player 1 is back 4 minutes later, player 2 is not. Each
/// device gets its own result on the shared message, and each counts the
/// message against its own limit.
async fn one_message_for_two_devices_has_a_result_and_a_count_for_each(
    prometheus: &TestPrometheus,
    target: &TestTarget,
) {
    let (d1, d2) = (device("105", "1"), device("105", "2"));
    let strip = "[[sockets]]\nname = \"strip\"\nphone = \"+79990000501\"\nmodel = \"simpal-d210\"\n\
                 powers = [{ platform_id = \"105\", device_id = \"1\" }, { platform_id = \"105\", device_id = \"2\" }]\n\n";
    let job = offline_now_job("105")
        + "verify = { within = \"10m\" }\nrepeat = { every = \"1h\", max = 10 }\n\
           limit = { actions = 1, per = \"24h\" }\n";
    let page = |a: f64, b: f64| [online("105", "1", a), online("105", "2", b)];
    publish(prometheus, target, &page(0.0, 0.0)).await;
    let mut s = Scenario::start(prometheus, &(strip.to_string() + &job)).await;
    s.cycle_at(0).await;
    assert_eq!(s.gateway.received().len(), 1, "one command for the strip");
    publish(prometheus, target, &page(1.0, 0.0)).await;
    s.cycle_at(4).await;
    s.cycle_at(10).await;

    let history = s.history();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].devices, [d1.clone(), d2.clone()]);
    let each: Vec<(String, Option<ActionResult>, Option<u64>)> = history[0]
        .device_results
        .iter()
        .map(|d| (d.device_key.clone(), d.result, d.recovered_after.map(|a| a.as_secs())))
        .collect();
    assert_eq!(
        each,
        [
            (d1.clone(), Some(ActionResult::Recovered), Some(240)),
            (d2.clone(), Some(ActionResult::NotRecovered), None),
        ]
    );
    assert_eq!(executions_metric(&s, "offline now", "recovered"), 1);
    assert_eq!(executions_metric(&s, "offline now", "not_recovered"), 1);

    // Device 2's repeat is due an hour later: the shared message was its
    // one action of the day.
    let report = s.cycle_at(60).await;
    assert_eq!((report.sends_started, report.gave_up), (0, 1), "{report:?}");
    let refused = s.history().pop().unwrap();
    assert_eq!(refused.device_key.as_deref(), Some(d2.as_str()));
    assert_eq!(refused.devices, [d2]);
    assert_eq!(
        refused.detail.as_deref(),
        Some("limit reached: 1 actions on this device in the last 1day (limit 1 per 1day)")
    );
}

/// The key the test webhook receiver shares with jobctl.
const HOOK_KEY: &str = "hook-key-3f9a27c1";

/// The person escalations go to by SMS.
const ON_CALL: &str = "+79990009999";

/// A `[[webhooks]]` table `ops` posting to `hook`, its key in `key_file`,
/// answering within 1 s.
fn webhook_table(hook: &FakeWebhook, key_file: &std::path::Path) -> String {
    format!(
        "[[webhooks]]\nname = \"ops\"\nurl = \"{}\"\nsecret_file = \"{}\"\ntimeout = \"1s\"\n\n",
        hook.url(),
        key_file.display()
    )
}

/// A key file for [`HOOK_KEY`], and the directory that holds it.
fn hook_key() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hook.key");
    support::write_secret(&path, HOOK_KEY);
    (dir, path)
}

/// (channel, event, about, socket, status) of an execution.
type ChannelRow = (&'static str, Option<String>, Option<i64>, String, ExecutionStatus);

/// [`ChannelRow`] of each execution.
fn channel_rows(history: &[Execution]) -> Vec<ChannelRow> {
    history
        .iter()
        .map(|e| {
            (
                e.channel.as_str(),
                e.event.clone(),
                e.about.map(|id| id.0),
                e.socket.clone(),
                e.status,
            )
        })
        .collect()
}

#[tokio::test]
async fn escalations_and_webhooks_leave_once_through_the_outbox() {
    if !TestPrometheus::available() {
        return;
    }
    let targets: Vec<TestTarget> = (0..4).map(|_| TestTarget::start()).collect();
    let prometheus = TestPrometheus::start(&targets.iter().collect::<Vec<_>>()).await;

    a_device_that_never_recovers_escalates_once_by_webhook_and_sms(&prometheus, &targets[0]).await;
    the_refused_fourth_action_is_escalated(&prometheus, &targets[1]).await;
    a_receiver_down_or_hanging_is_retried_or_left_uncertain(&prometheus, &targets[2]).await;
    a_webhook_journalled_before_a_restart_leaves_once_after_it(&prometheus, &targets[3]).await;
}

/// Scenario E1: a player power-cycled at once is still offline when
/// `verify.within` ends: `not_recovered`, then exactly one SMS to the
/// person on call and one signed webhook, never again.
async fn a_device_that_never_recovers_escalates_once_by_webhook_and_sms(
    prometheus: &TestPrometheus,
    target: &TestTarget,
) {
    let hook = FakeWebhook::start().await;
    let (_keys, key_file) = hook_key();
    let d1 = device("201", "1");
    let job = offline_now_job("201")
        + "verify = { within = \"10m\" }\n"
        + &format!("escalate = [{{ sms = \"{{job}}: {{name}} {{event}}\", to = [\"{ON_CALL}\"] }}, {{ webhook = \"ops\" }}]\n");
    let body = webhook_table(&hook, &key_file)
        + &rules_file::socket("lobby", LOBBY, "simpal-d210", "201", "1")
        + &job;
    publish(prometheus, target, &[online("201", "1", 0.0)]).await;
    let mut s = Scenario::start(prometheus, &body).await;

    s.cycle_at(0).await;
    s.cycle_at(5).await;
    assert!(hook.received().is_empty(), "nothing to escalate while the window is open");
    s.cycle_at(10).await;
    for m in [11, 20, 70] {
        s.cycle_at(m).await;
    }

    assert_eq!(
        s.sent(),
        [sms(LOBBY, POWER_CYCLE_1), sms(ON_CALL, "offline now: Lesnaia_1 not_recovered")]
    );
    let received = hook.received();
    assert_eq!(received.len(), 1, "exactly one escalation webhook");
    let request = &received[0];
    assert!(request.signed_with(HOOK_KEY), "signature does not verify: {request:?}");
    assert!(!request.signed_with("another key"));
    assert_eq!(request.request_line, "POST /hooks/watchdog HTTP/1.1");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.header("x-signage-watchdog-timestamp"),
        Some(minutes(10).as_second().to_string().as_str())
    );
    let history = s.history();
    let action = history[0].id.0;
    assert_eq!(
        request.header("x-signage-watchdog-delivery"),
        Some(history[2].id.0.to_string().as_str())
    );
    let payload = request.json();
    assert_eq!(payload["version"], 1);
    assert_eq!(payload["event"], "not_recovered");
    assert_eq!(payload["outcome"], "not_recovered");
    assert_eq!(payload["job"], "offline now");
    assert_eq!(payload["devices"][0]["key"], d1.as_str());
    assert_eq!(payload["devices"][0]["labels"]["name"], "Lesnaia_1");
    assert_eq!((payload["episode"].as_u64(), payload["attempt"].as_u64()), (Some(1), Some(1)));
    assert_eq!(payload["execution_id"].as_i64(), Some(action));
    assert_eq!(payload["details"]["verify_within_seconds"], 600);
    assert_eq!(payload["at"], minutes(10).to_string());

    use ExecutionStatus::Sent;
    let event = Some("not_recovered".to_string());
    assert_eq!(
        channel_rows(&history),
        [
            ("sms", None, None, "lobby".to_string(), Sent),
            ("sms", event.clone(), Some(action), "-".to_string(), Sent),
            ("webhook", event, Some(action), "ops".to_string(), Sent),
        ]
    );
    assert_eq!(history[2].phone, hook.url(), "the webhook's row names its URL");
    assert_eq!(history[0].result, Some(ActionResult::NotRecovered));
    assert!(!history[2].text.contains(HOOK_KEY));
}

/// Scenario E2: the 4th action in a day is refused by `limit` and the
/// episode given up: one escalation, about the `gave_up` row. The webhook
/// counts against no budget: with one SMS per socket per day allowed, the
/// limit (not the budget) is what stops the fourth action.
async fn the_refused_fourth_action_is_escalated(prometheus: &TestPrometheus, target: &TestTarget) {
    let hook = FakeWebhook::start().await;
    let (_keys, key_file) = hook_key();
    let job = offline_now_job("202")
        + "repeat = { every = \"1h\", max = 10 }\nlimit = { actions = 3, per = \"24h\" }\n"
        + "escalate = [{ webhook = \"ops\" }]\n";
    let body = webhook_table(&hook, &key_file)
        + &rules_file::socket("lobby", LOBBY, "simpal-d210", "202", "1")
        + &job;
    publish(prometheus, target, &[online("202", "1", 0.0)]).await;
    let mut s = Scenario::start(prometheus, &body).await;

    for m in [0, 60, 120] {
        s.cycle_at(m).await;
    }
    assert!(hook.received().is_empty());
    let report = s.cycle_at(180).await;
    assert_eq!(report.gave_up, 1);
    for m in [181, 240] {
        s.cycle_at(m).await;
    }

    assert_eq!(s.gateway.received().len(), 3);
    let received = hook.received();
    assert_eq!(received.len(), 1, "given up once, escalated once");
    assert!(received[0].signed_with(HOOK_KEY));
    let payload = received[0].json();
    let history = s.history();
    let gave_up = &history[3];
    assert_eq!(gave_up.result, Some(ActionResult::GaveUp));
    assert_eq!(payload["event"], "gave_up");
    assert_eq!(payload["execution_id"].as_i64(), Some(gave_up.id.0));
    assert_eq!(
        payload["details"]["reason"],
        "limit reached: 3 actions on this device in the last 1day (limit 3 per 1day)"
    );
    assert_eq!(payload["value"].as_f64(), Some(0.0));
    let last = history.last().unwrap();
    assert_eq!(
        (last.channel.as_str(), last.event.as_deref(), last.about, last.status),
        ("webhook", Some("gave_up"), Some(gave_up.id), ExecutionStatus::Sent)
    );
}

/// Scenario E3: a job tells the webhook of each action. A receiver
/// answering 500 is tried 3 times and the message journalled failed; one
/// that reads the request and hangs or closes without answering leaves it
/// uncertain, never sent again, not even after a restart.
async fn a_receiver_down_or_hanging_is_retried_or_left_uncertain(
    prometheus: &TestPrometheus,
    target: &TestTarget,
) {
    use support::fake_webhook::WebhookFault;
    use ExecutionStatus::{Failed, Sent, Uncertain};
    let hook = FakeWebhook::start().await;
    let (_keys, key_file) = hook_key();
    let job = offline_now_job("203")
        + "repeat = { every = \"1h\", max = 10 }\n"
        + "webhooks_on_action = [\"ops\"]\n";
    let body = webhook_table(&hook, &key_file)
        + &rules_file::socket("lobby", LOBBY, "simpal-d210", "203", "1")
        + &job;
    publish(prometheus, target, &[online("203", "1", 0.0)]).await;
    let mut s = Scenario::start(prometheus, &body).await;

    hook.set_fault(Some(WebhookFault::ServerError));
    s.cycle_at(0).await;
    let history = s.history();
    assert_eq!(attempts(&history[1]), [Failed, Failed, Failed], "{:?}", history[1]);
    assert_eq!(history[1].status, Failed);
    assert_eq!(
        history[1].detail.as_deref(),
        Some(format!("{} answered HTTP 500 Internal Server Error", hook.url()).as_str())
    );
    let received = hook.received();
    assert_eq!(received.len(), 3);
    let delivery = received[0].header("x-signage-watchdog-delivery").map(str::to_string);
    assert!(received
        .iter()
        .all(|r| r.header("x-signage-watchdog-delivery").map(str::to_string) == delivery));
    let payload = received[0].json();
    assert_eq!(payload["event"], "action");
    assert_eq!(payload["execution_id"].as_i64(), Some(history[0].id.0));
    assert_eq!(payload["details"]["text"], POWER_CYCLE_1);
    assert_eq!(payload["details"]["socket"], "lobby");

    hook.set_fault(Some(WebhookFault::Hang));
    s.cycle_at(60).await;
    hook.set_fault(Some(WebhookFault::Close));
    s.cycle_at(120).await;
    hook.set_fault(None);
    s.cycle_at(121).await;
    let metrics = s.engine.metrics_text();
    for series in [
        "jobctl_webhooks_total{outcome=\"failed\"} 3",
        "jobctl_webhooks_total{outcome=\"uncertain\"} 2",
        "jobctl_webhooks_total{outcome=\"sent\"} 0",
        "jobctl_sms_total{outcome=\"sent\"} 3",
    ] {
        assert!(metrics.lines().any(|l| l == series), "no {series} in:\n{metrics}");
    }
    let mut s = s.restart(&body).await;
    s.cycle_at(122).await;

    assert_eq!(hook.received().len(), 5, "a hang and a close are never retried");
    let rows: Vec<(Option<String>, ExecutionStatus, usize)> =
        s.history().iter().map(|e| (e.event.clone(), e.status, e.attempts.len())).collect();
    let action = || Some("action".to_string());
    assert_eq!(
        rows,
        [
            (None, Sent, 1),
            (action(), Failed, 3),
            (None, Sent, 1),
            (action(), Uncertain, 1),
            (None, Sent, 1),
            (action(), Uncertain, 1),
        ]
    );
    let hung = &s.history()[3];
    assert_eq!(
        hung.detail.as_deref(),
        Some(
            format!("{} did not answer within 1s; it may have received the request", hook.url())
                .as_str()
        )
    );
    assert_eq!(s.gateway.received().len(), 3, "webhooks never go to the SMS gateway");
}

/// Scenario E4: jobctl stopped after an escalation was journalled and
/// before it left (`planned`): the next start sends it, once.
async fn a_webhook_journalled_before_a_restart_leaves_once_after_it(
    prometheus: &TestPrometheus,
    target: &TestTarget,
) {
    let hook = FakeWebhook::start().await;
    let (_keys, key_file) = hook_key();
    let body = webhook_table(&hook, &key_file)
        + &rules_file::socket("lobby", LOBBY, "simpal-d210", "204", "1")
        + &offline_now_job("204");
    publish(prometheus, target, &[online("204", "1", 1.0)]).await;
    let s = Scenario::start(prometheus, &body).await;
    let Scenario { dir, prometheus_url, gateway, clock, mode, engine } = s;
    drop(engine);
    released(&dir.path().join("journal.db")).await;
    let payload = r#"{"version":1,"event":"not_recovered","job":"offline now"}"#;
    {
        let mut journal = Journal::open(&dir.path().join("journal.db")).unwrap();
        journal
            .plan_send(&PlannedSend {
                origin: Origin::Notice {
                    job: "offline now".into(),
                    device_key: Some(device("204", "1")),
                    event: "not_recovered".into(),
                    about: None,
                    episode: Some(1),
                    attempt: Some(1),
                },
                channel: Channel::Webhook,
                socket: "ops".into(),
                phone: hook.url(),
                text: payload.into(),
            })
            .unwrap();
    }
    let text = rules_text(&dir, &prometheus_url, &gateway, &body);
    let engine = start_engine(&dir, &text, clock.clone(), mode).await;
    let mut s = Scenario { dir, prometheus_url, gateway, clock, mode, engine };
    s.engine.finish_sends().await;
    let received = hook.received();
    assert_eq!(received.len(), 1, "the planned webhook is sent at start");
    assert_eq!(received[0].body, payload);
    assert!(received[0].signed_with(HOOK_KEY));
    let mut s = s.restart(&body).await;
    s.cycle_at(1).await;
    assert_eq!(hook.received().len(), 1, "and never again");
    let history = s.history();
    assert_eq!((history.len(), history[0].status), (1, ExecutionStatus::Sent));
}
