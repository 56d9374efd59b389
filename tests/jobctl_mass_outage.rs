//! The mass-outage hold end to end (issue 10): a real Prometheus scraping
//! a target whose values the test sets, the HTTP sender talking to a fake
//! SMS gateway on loopback, the journal in a real SQLite file, and time in
//! the rules on a [`ManualClock`].
//!
//! One Prometheus plays every scenario (it takes seconds to scrape a new
//! target): platform 91 has 40 players on 40 sockets, platform 92 four.

mod support;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use signage_watchdog::clock::ManualClock;
use signage_watchdog::engine::{CycleReport, Engine, EngineOptions, Mode, SendRetry};
use signage_watchdog::journal::{HistoryFilter, Journal, OutageHeldAction};
use signage_watchdog::rules::state::PhaseName;
use support::fake_gateway::{FakeGateway, SentSms};
use support::prometheus::{TestPrometheus, TestTarget};
use support::rules_file::{self, POWER_CYCLE_1, POWER_CYCLE_ACTION};
use support::wait::wait_until_async;

/// The number of the person a notification job writes to.
const PERSON: &str = "+79990001122";

fn t0() -> Timestamp {
    "2026-11-28T09:00:00Z".parse().unwrap()
}

fn minutes(m: u64) -> Timestamp {
    t0() + jiff::SignedDuration::from_secs(i64::try_from(m * 60).unwrap())
}

fn device(platform: &str, id: u32) -> String {
    format!("{{platform_id=\"{platform}\", device_id=\"{id}\"}}")
}

/// The phone of the socket powering device `id` of platform `platform`.
fn phone(platform: &str, id: u32) -> String {
    format!("+7999{platform}0{id:04}")
}

/// A page: `addreality_device_online` of every device of each platform,
/// 0 for those in `offline`; labels in the order [`line_of`] writes them.
fn page(platforms: &[(&str, u32, &[u32])]) -> String {
    let mut page = String::new();
    for (platform, count, offline) in platforms {
        for id in 1..=*count {
            let value = if offline.contains(&id) { 0 } else { 1 };
            page.push_str(&format!(
                "addreality_device_online{{device_id=\"{id}\",name=\"Lesnaia_{id}\",platform_id=\"{platform}\"}} {value}\n"
            ));
        }
    }
    page
}

/// Every socket of both platforms, then the jobs: platform 91 power-cycled
/// after 2 minutes offline (default hold) and a person told at once;
/// platform 92's four players power-cycled at once.
fn body() -> String {
    let mut body = String::new();
    for (platform, count) in [("91", 40), ("92", 4)] {
        for id in 1..=count {
            body += &rules_file::socket(
                &format!("s{platform}_{id}"),
                &phone(platform, id),
                "simpal-d210",
                platform,
                &id.to_string(),
            );
        }
    }
    body + &rules_file::offline_job("offline", "91", Some("2m"), POWER_CYCLE_ACTION)
        + "\n"
        + &rules_file::offline_job(
            "tell anna",
            "91",
            None,
            &format!("{{ sms = \"{{name}} offline\", to = \"{PERSON}\" }}"),
        )
        + "\n"
        + &rules_file::offline_job("small site", "92", None, POWER_CYCLE_ACTION)
}

struct Scenario {
    dir: tempfile::TempDir,
    prometheus_url: String,
    gateway: FakeGateway,
    clock: Arc<ManualClock>,
    engine: Engine,
}

impl Scenario {
    async fn start(prometheus: &TestPrometheus) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let gateway = FakeGateway::start().await;
        support::write_secret(&dir.path().join("sms.key"), &format!("{}\n", gateway.key()));
        let clock = Arc::new(ManualClock::new(t0()));
        let prometheus_url = prometheus.url().to_string();
        let engine = start_engine(&dir, &prometheus_url, &gateway, clock.clone()).await;
        Scenario { dir, prometheus_url, gateway, clock, engine }
    }

    async fn cycle_at(&mut self, m: u64) -> CycleReport {
        self.clock.set(minutes(m));
        let report = self.engine.cycle().await;
        self.engine.finish_sends().await;
        report
    }

    /// The engine vanishes as a killed daemon would, and a new one starts
    /// on the same journal.
    async fn restart(self) -> Scenario {
        let Scenario { dir, prometheus_url, gateway, clock, engine } = self;
        drop(engine);
        let journal = dir.path().join("journal.db");
        wait_until_async("the dropped engine releasing the journal", || async {
            Journal::open(&journal).ok().map(drop)
        })
        .await;
        let engine = start_engine(&dir, &prometheus_url, &gateway, clock.clone()).await;
        Scenario { dir, prometheus_url, gateway, clock, engine }
    }

    /// `jobctl status ARGS…` beside the engine, as a sysadmin runs it.
    fn status(&self, args: &[&str]) -> support::process::Ran {
        let mut command = support::process::command(env!("CARGO_BIN_EXE_jobctl"), self.dir.path());
        command.args(["--config", "rules.toml", "status"]).args(args);
        support::process::run(&mut command)
    }

    fn journal(&self) -> Journal {
        Journal::open_read_only(&self.dir.path().join("journal.db")).unwrap()
    }

    /// The numbers the gateway sent to, sorted, with how many messages
    /// each got (all socket messages are the power-cycle).
    fn sent_to(&self) -> Vec<String> {
        let mut numbers: Vec<String> = self
            .gateway
            .sent()
            .into_iter()
            .filter(|SentSms { number, text }| number == PERSON || text == POWER_CYCLE_1)
            .map(|SentSms { number, .. }| number)
            .collect();
        numbers.sort();
        numbers
    }

    fn sockets_sent_to(&self) -> Vec<String> {
        self.sent_to().into_iter().filter(|n| n != PERSON).collect()
    }

    /// A line of the engine's own metrics, by its name and labels.
    fn metric(&self, series: &str) -> Option<String> {
        let text = self.engine.metrics_text();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ').map(str::to_string))
    }
}

async fn start_engine(
    dir: &tempfile::TempDir,
    prometheus_url: &str,
    gateway: &FakeGateway,
    clock: Arc<ManualClock>,
) -> Engine {
    let journal = dir.path().join("journal.db");
    let text = rules_file::head(prometheus_url, "30s", "2s", &journal.display().to_string())
        + &rules_file::gateway_sms(&gateway.url(), "")
        + &body();
    // Written too, for `jobctl status` beside the engine.
    std::fs::write(dir.path().join("rules.toml"), &text).unwrap();
    let rules = signage_watchdog::rules::parse(&text, dir.path().join("rules.toml"))
        .unwrap_or_else(|errors| panic!("{errors}\n{text}"));
    let options = EngineOptions {
        mode: Mode::Live,
        retry: SendRetry { attempts: 3, first_delay: Duration::from_millis(10) },
        ..EngineOptions::default()
    };
    support::engine::start(rules, &text, dir.path(), clock, options).await
}

/// Devices 1..=30 of platform 91.
fn thirty() -> Vec<u32> {
    (1..=30).collect()
}

#[tokio::test]
async fn thirty_of_forty_offline_hold_every_socket_command_and_escalate_once() {
    if !TestPrometheus::available() {
        return;
    }
    let target = TestTarget::start();
    let prometheus = TestPrometheus::start(&[&target]).await;
    let offline = thirty();
    prometheus.publish(&target, &page(&[("91", 40, &[]), ("92", 4, &[])])).await;
    let mut s = Scenario::start(&prometheus).await;
    assert_eq!(s.cycle_at(0).await.actions_due, 0);
    assert_eq!(s.metric("jobctl_mass_outage{job=\"offline\"}").as_deref(), Some("0"));

    // 30 of 40 players go dark at once; all four of the small site too,
    // which is fewer than min_devices (5): no outage there.
    prometheus.publish(&target, &page(&[("91", 40, &offline), ("92", 4, &[1, 2, 3, 4])])).await;
    let report = s.cycle_at(1).await;
    assert_eq!(
        s.engine.state("offline", &device("91", 1)).unwrap().phase.name(),
        PhaseName::Pending
    );
    let small: Vec<String> = (1..=4).map(|id| phone("92", id)).collect();
    let mut expected: Vec<String> = vec![PERSON.to_string(); 30];
    expected.extend(small.iter().cloned());
    expected.sort();
    assert_eq!(s.sent_to(), expected, "the person is told of each, the small site is cycled");
    assert_eq!(report.sends_started, 34, "{report:?}");
    assert_eq!(s.metric("jobctl_mass_outage{job=\"offline\"}").as_deref(), Some("1"));
    assert_eq!(s.metric("jobctl_mass_outage{job=\"small site\"}").as_deref(), Some("0"));
    assert_eq!(
        s.metric("jobctl_mass_outage{job=\"tell anna\"}"),
        None,
        "a person's job is never held"
    );
    assert_eq!(s.metric("jobctl_mass_outages_total{job=\"offline\"}").as_deref(), Some("1"));

    // `for` (2m) passes: the 30 fire, and every action is held.
    for minute in [2, 3, 4] {
        let report = s.cycle_at(minute).await;
        assert_eq!((report.actions_due, report.sends_started), (0, 0), "{report:?}");
    }
    assert_eq!(
        s.engine.state("offline", &device("91", 1)).unwrap().phase.name(),
        PhaseName::Firing
    );
    assert_eq!(s.sockets_sent_to(), small, "no socket of platform 91 got anything");
    let holds = s.journal().outage_holds().unwrap();
    assert_eq!(holds.len(), 30, "one row per held device and episode");
    assert_eq!(
        holds[0],
        OutageHeldAction {
            job: "offline".into(),
            device_key: device("91", 1),
            episode: 1,
            attempt: 1
        }
    );
    assert_eq!(
        s.metric("jobctl_held_actions_total{job=\"offline\",reason=\"mass_outage\"}").as_deref(),
        Some("30")
    );
    let open = s.journal().open_outages().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(
        (open[0].job.as_str(), open[0].since, open[0].bad, open[0].known),
        ("offline", minutes(1), 30, 40)
    );

    // A restart during the outage carries it on: no second escalation,
    // no new rows, still nothing to the sockets.
    let mut s = s.restart().await;
    let report = s.cycle_at(6).await;
    assert_eq!(report.sends_started, 0, "{report:?}");
    assert_eq!(s.metric("jobctl_mass_outages_total{job=\"offline\"}"), None, "not escalated again");
    assert_eq!(s.metric("jobctl_mass_outage{job=\"offline\"}").as_deref(), Some("1"));
    assert_eq!(s.journal().outages_of("offline").unwrap().len(), 1);
    assert_eq!(s.journal().outage_holds().unwrap().len(), 30);
    assert_eq!(s.sockets_sent_to(), small);
    let ran = s.status(&[]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stdout.contains(
            "Mass outages (socket commands held until fewer devices are bad):\n\
             JOB      SINCE (UTC)           DEVICES BAD\n\
             offline  2026-11-28T09:01:00Z  30 of 40\n"
        ),
        "{}",
        ran.stdout
    );
    let ran = s.status(&["--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let jobs = json["jobs"].as_array().unwrap();
    let outages: Vec<(&str, &serde_json::Value)> =
        jobs.iter().filter_map(|j| Some((j["job"].as_str()?, j.get("mass_outage")?))).collect();
    assert_eq!(
        outages,
        [(
            "offline",
            &serde_json::json!({"since": "2026-11-28T09:01:00Z", "bad": 30, "known": 40})
        )]
    );

    // The uplink comes back but for devices 7 and 8: 2 of 40 is no outage,
    // and those two, still bad well past their `for`, get their command.
    prometheus.publish(&target, &page(&[("91", 40, &[7, 8]), ("92", 4, &[1, 2, 3, 4])])).await;
    let report = s.cycle_at(8).await;
    assert_eq!((report.actions_due, report.sends_started), (2, 2), "{report:?}");
    let mut expected = small.clone();
    expected.extend([phone("91", 7), phone("91", 8)]);
    expected.sort();
    assert_eq!(s.sockets_sent_to(), expected);
    assert_eq!(s.metric("jobctl_mass_outage{job=\"offline\"}").as_deref(), Some("0"));
    let outages = s.journal().outages_of("offline").unwrap();
    assert_eq!((outages.len(), outages[0].ended_at, outages[0].bad), (1, Some(minutes(8)), 2));
    assert!(s.journal().open_outages().unwrap().is_empty());
    assert!(!s.status(&[]).stdout.contains("Mass outages"), "over");
    let history = s.journal().history(&HistoryFilter::default()).unwrap();
    let offline_rows = history.iter().filter(|e| e.job.as_deref() == Some("offline")).count();
    assert_eq!(offline_rows, 2, "only the two commands that left");

    // Nothing more: the two have had their action, the others recovered.
    let report = s.cycle_at(9).await;
    assert_eq!(report.actions_due, 0, "{report:?}");
    assert_eq!(s.metric("jobctl_mass_outages_total{job=\"offline\"}"), None);
}
