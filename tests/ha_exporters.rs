//! A pair of exporters on the same accounts, end to end: two real
//! `addreality-exporter` processes polling the same simulated AddReality
//! account, one real Prometheus scraping both, and jobctl's engine acting
//! through the fake SMS gateway, as with one exporter: one SMS per offline
//! episode. When one exporter's cache goes stale (its API is cut while it
//! goes on serving what it last saw), the freshest exporter wins, with
//! Prometheus as the source and with `[source] scrape` alike, and `jobctl
//! check` says so.
//!
//! Time in the rules is a [`ManualClock`] the test moves; the exporters
//! poll every 100 ms and Prometheus scrapes every 100 ms of real time, so
//! after changing the simulated fleet the test waits until Prometheus
//! answers the new values before it runs a cycle; it never sleeps.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use signage_watchdog::clock::ManualClock;
use signage_watchdog::engine::{CycleReport, Engine, EngineOptions, SendRetry};
use signage_watchdog::prometheus_api::Sample;
use signage_watchdog::rules::state::PhaseName;
use support::addreality::{device, SimulatedApi};
use support::fake_gateway::FakeGateway;
use support::prometheus::{PrometheusOptions, TestPrometheus};
use support::rules_file::{self, POWER_CYCLE_1, POWER_CYCLE_ACTION};
use support::wait::{wait_until_async, DEADLINE};

const EXPORTER: &str = env!("CARGO_BIN_EXE_addreality-exporter");
const JOBCTL: &str = env!("CARGO_BIN_EXE_jobctl");
const TOKEN: &str = "ha-t0ken-7c21";
/// The socket that powers device 1 of platform 12.
const LOBBY: &str = "+79991234567";
/// The job: device offline for 5 minutes, guarded by the exporter reaching
/// the platform.
const JOB: &str = "offline";

fn t0() -> Timestamp {
    "2026-11-28T09:00:00Z".parse().unwrap()
}

fn minutes(m: u64) -> Timestamp {
    t0() + jiff::SignedDuration::from_secs(i64::try_from(m * 60).unwrap())
}

/// Platform 12's two players as the API lists them.
fn fleet(device_1_online: bool) -> Vec<serde_json::Value> {
    vec![device(1, "Lesnaia_1", device_1_online), device(2, "Lesnaia_2", true)]
}

/// A real `addreality-exporter` polling platform 12 at `api_url` every
/// 100 ms, killed when dropped.
struct ExporterProcess {
    child: Child,
    /// `host:port` of its `/metrics`: Prometheus's `instance` label.
    instance: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ExporterProcess {
    async fn start(api_url: &str) -> ExporterProcess {
        let dir = tempfile::tempdir().unwrap();
        support::write_secret(&dir.path().join("12.token"), &format!("{TOKEN}\n"));
        let config = format!(
            "listen = \"127.0.0.1:0\"\napi_url = \"{api_url}\"\npoll_interval = \"100ms\"\n\
             request_timeout = \"1s\"\ncache = \"cache.db\"\n\n\
             [[platforms]]\nid = 12\ntoken_file = \"12.token\"\n"
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let log = dir.path().join("exporter.log");
        let mut command = support::process::command(EXPORTER, dir.path());
        command
            .args(["--config", "config.toml"])
            .env("JOURNAL_STREAM", "8:1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = command.spawn().expect("the exporter binary starts");
        let prefix = "listening on http://";
        let instance = wait_until_async("the exporter listening", || async {
            let text = std::fs::read_to_string(&log).ok()?;
            let rest = &text[text.find(prefix)? + prefix.len()..];
            Some(rest[..rest.find('/')?].to_string())
        })
        .await;
        ExporterProcess { child, instance, log, _dir: dir }
    }

    fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.instance)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ExporterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Prometheus scraping `exporters` every 100 ms as one job, returned
/// once it has a series of platform 12's device 1 from each.
async fn prometheus_scraping(exporters: &[&ExporterProcess]) -> TestPrometheus {
    let targets: Vec<String> = exporters.iter().map(|e| format!("'{}'", e.instance)).collect();
    let options = PrometheusOptions {
        scrape_configs: Some(format!(
            "  - job_name: 'addreality'\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        )),
        ..PrometheusOptions::default()
    };
    let prometheus = options.start(&[]).await;
    let all = exporters.len();
    prometheus.wait_until_query(DEVICE_1, |samples| samples.len() == all, DEADLINE).await;
    prometheus
}

/// Device 1's `online` series, one per exporter.
const DEVICE_1: &str = "addreality_device_online{platform_id=\"12\",device_id=\"1\"}";

/// Waits until Prometheus answers device 1's `online` with exactly
/// `values`, by exporter.
async fn wait_online(prometheus: &TestPrometheus, values: &[(&ExporterProcess, f64)]) {
    let wanted = |samples: &[Sample]| {
        samples.len() == values.len()
            && values.iter().all(|(exporter, value)| {
                samples
                    .iter()
                    .any(|s| s.labels["instance"] == exporter.instance && s.value == *value)
            })
    };
    prometheus.wait_until_query(DEVICE_1, wanted, DEADLINE).await;
}

/// The rules: `source` (a `[prometheus]` or `[source]` table), the journal
/// in `dir`, the gateway, the sockets of both players, the offline job with `for = 5m`
/// and the platform guard.
fn rules_text(dir: &Path, source: &str, gateway: &FakeGateway) -> String {
    format!("{source}\n[journal]\npath = {:?}\n\n", dir.join("journal.db").display().to_string())
        + &rules_file::gateway_sms(&gateway.url(), "")
        + &rules_file::socket("lobby", LOBBY, "simpal-d210", "12", "1")
        + &rules_file::socket("hall", "+79997654321", "simpal-d210", "12", "2")
        + &rules_file::offline_job(JOB, "12", Some("5m"), POWER_CYCLE_ACTION)
        + "guards = [{ expr = \"addreality_platform_up == 1\", on = [\"platform_id\"] }]\n"
}

/// An engine on its own rules, gateway, clock and journal.
struct Scenario {
    dir: tempfile::TempDir,
    gateway: FakeGateway,
    clock: Arc<ManualClock>,
    engine: Engine,
}

impl Scenario {
    /// Reading Prometheus at `url`.
    async fn prometheus(url: &str) -> Scenario {
        Scenario::start(&format!(
            "[prometheus]\nurl = \"{url}\"\ninterval = \"30s\"\ntimeout = \"2s\"\n"
        ))
        .await
    }

    /// Scraping the `exporters` itself.
    async fn scraping(exporters: &[&ExporterProcess]) -> Scenario {
        let targets: Vec<String> =
            exporters.iter().map(|e| format!("{:?}", e.metrics_url())).collect();
        Scenario::start(&format!(
            "[source]\nscrape = [{}]\ninterval = \"30s\"\ntimeout = \"2s\"\n",
            targets.join(", ")
        ))
        .await
    }

    async fn start(source: &str) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let gateway = FakeGateway::start().await;
        support::write_secret(&dir.path().join("sms.key"), &format!("{}\n", gateway.key()));
        let text = rules_text(dir.path(), source, &gateway);
        std::fs::write(dir.path().join("rules.toml"), &text).unwrap();
        let rules = signage_watchdog::rules::parse(&text, dir.path().join("rules.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let clock = Arc::new(ManualClock::new(t0()));
        let options = EngineOptions {
            retry: SendRetry { attempts: 2, first_delay: Duration::from_millis(10) },
            budgets: rules.budgets,
            ..EngineOptions::default()
        };
        let engine = support::engine::start(rules, &text, dir.path(), clock.clone(), options).await;
        Scenario { dir, gateway, clock, engine }
    }

    async fn cycle_at(&mut self, m: u64) -> CycleReport {
        self.clock.set(minutes(m));
        let report = self.engine.cycle().await;
        self.engine.finish_sends().await;
        report
    }

    fn phase(&self) -> PhaseName {
        let key = "{platform_id=\"12\", device_id=\"1\"}";
        self.engine.state(JOB, key).cloned().unwrap_or_default().phase.name()
    }

    fn sent(&self) -> Vec<(String, String)> {
        self.gateway.sent().into_iter().map(|sms| (sms.number, sms.text)).collect()
    }

    /// `jobctl check` on this scenario's rules file: its stdout.
    fn check(&self) -> String {
        self.jobctl(&["check"])
    }

    /// `jobctl explain` of the job on device 1: its stdout.
    fn explain(&self) -> String {
        self.jobctl(&["explain", JOB, "--device", "platform_id=12", "--device", "device_id=1"])
    }

    /// `jobctl ARGS…` on this scenario's rules file, which must succeed
    /// without a word on stderr: its stdout.
    fn jobctl(&self, args: &[&str]) -> String {
        let mut command = support::process::command(JOBCTL, self.dir.path());
        command.args(["--config", "rules.toml"]).args(args);
        let ran = support::process::run(&mut command);
        assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{}", ran.stdout);
        ran.stdout
    }
}

/// The SMS of `n` power cycles of the lobby socket.
fn power_cycles(n: usize) -> Vec<(String, String)> {
    vec![(LOBBY.to_string(), POWER_CYCLE_1.to_string()); n]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_of_exporters_sends_one_sms_per_episode_as_one_does() {
    if !TestPrometheus::available() {
        return;
    }
    let api = SimulatedApi::start(TOKEN, fleet(true)).await;
    let first = ExporterProcess::start(&api.url).await;
    let mut second = Some(ExporterProcess::start(&api.url).await);
    let prometheus = prometheus_scraping(&[&first, second.as_ref().unwrap()]).await;
    let mut scenario = Scenario::prometheus(prometheus.url()).await;

    let report = scenario.cycle_at(0).await;
    assert_eq!((report.failed_queries.len(), report.unknown), (0, 0), "{report:?}");
    assert_eq!(report.evaluations, 2, "two players, not four series: {report:?}");
    let check = scenario.check();
    assert!(
        check.contains(
            "  targets:  2 of 2 devices come from more than one target (exporters in pairs); the freshest sample wins"
        ),
        "{check}"
    );

    // Three episodes with both exporters, a fourth with one: one SMS each.
    for episode in 0..4u64 {
        if episode == 3 {
            drop(second.take()); // Prometheus marks its series stale.
        }
        let pair: Vec<&ExporterProcess> =
            [Some(&first), second.as_ref()].into_iter().flatten().collect();
        let at = 10 + episode * 70; // past the socket's 1 h cooldown
        api.simulator.set_devices(fleet(false));
        let offline: Vec<(&ExporterProcess, f64)> = pair.iter().map(|e| (*e, 0.0)).collect();
        wait_online(&prometheus, &offline).await;
        scenario.cycle_at(at).await;
        assert_eq!(scenario.phase(), PhaseName::Pending, "episode {episode}");
        for m in [at + 6, at + 7] {
            scenario.cycle_at(m).await;
            assert_eq!(scenario.phase(), PhaseName::Firing, "episode {episode} at {m}");
        }
        assert_eq!(scenario.sent(), power_cycles(episode as usize + 1), "episode {episode}");

        api.simulator.set_devices(fleet(true));
        let online: Vec<(&ExporterProcess, f64)> = pair.iter().map(|e| (*e, 1.0)).collect();
        wait_online(&prometheus, &online).await;
        scenario.cycle_at(at + 8).await;
        assert_eq!(scenario.phase(), PhaseName::Resolved, "episode {episode}");
    }
    assert_eq!(scenario.sent(), power_cycles(4));
    let check = scenario.check();
    assert!(!check.contains("targets:"), "one exporter left:\n{check}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_one_exporter_is_stale_the_freshest_wins() {
    if !TestPrometheus::available() {
        return;
    }
    let api = SimulatedApi::start(TOKEN, fleet(true)).await;
    let (cut_url, cut) = api.serve_again().await;
    let fresh = ExporterProcess::start(&api.url).await;
    let stale = ExporterProcess::start(&cut_url).await;
    let prometheus = prometheus_scraping(&[&fresh, &stale]).await;
    let mut through_prometheus = Scenario::prometheus(prometheus.url()).await;
    let mut scraping = Scenario::scraping(&[&fresh, &stale]).await;
    for scenario in [&mut through_prometheus, &mut scraping] {
        scenario.cycle_at(0).await;
        assert_eq!(scenario.phase(), PhaseName::Inactive);
    }

    // The second exporter loses its API: it goes on serving device 1 as
    // online, and says its last successful poll was a while ago.
    drop(cut);
    let instance = &stale.instance;
    let down = format!("addreality_platform_up{{instance=\"{instance}\"}} == 0");
    prometheus.wait_until_query(&down, |s| s.len() == 1, DEADLINE).await;
    api.simulator.set_devices(fleet(false));
    wait_online(&prometheus, &[(&fresh, 0.0), (&stale, 1.0)]).await;

    // Before: not every series said offline, so the device was "online"
    // and nothing was ever sent. Now the fresh exporter's 0 counts.
    for scenario in [&mut through_prometheus, &mut scraping] {
        let report = scenario.cycle_at(1).await;
        assert_eq!(scenario.phase(), PhaseName::Pending, "{report:?}\n{}", stale.log_text());
        scenario.cycle_at(7).await;
        assert_eq!(scenario.phase(), PhaseName::Firing);
        scenario.cycle_at(8).await;
        assert_eq!(scenario.sent(), power_cycles(1));
    }
    let check = through_prometheus.check();
    assert!(
        check.contains(
            "the target whose last successful poll (addreality_platform_last_success_timestamp_seconds) is newest count (now 2 told apart that way)"
        ),
        "{check}"
    );
    let explained = through_prometheus.explain();
    let line = format!(
        "  targets:   2 series from several targets (exporters in pairs); the freshest sample wins: only instance \"{}\"'s count",
        fresh.instance
    );
    assert!(explained.contains(&line), "{line}\nin\n{explained}");

    // It comes back for the fresh exporter: the episode resolves though
    // the stale one still says what it said.
    api.simulator.set_devices(fleet(true));
    wait_online(&prometheus, &[(&fresh, 1.0), (&stale, 1.0)]).await;
    for scenario in [&mut through_prometheus, &mut scraping] {
        scenario.cycle_at(9).await;
        assert_eq!(scenario.phase(), PhaseName::Resolved);
        assert_eq!(scenario.sent(), power_cycles(1));
    }
}
