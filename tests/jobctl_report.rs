//! `jobctl report` end to end: a scenario played by the real engine (a real
//! Prometheus, the fake SMS gateway, a [`ManualClock`]) builds the journal;
//! the `jobctl` binary reports on it, in each format, with exact counts,
//! and leaves it as it was.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use signage_watchdog::clock::ManualClock;
use signage_watchdog::engine::{EngineOptions, SendRetry};
use signage_watchdog::journal::{NewSilence, SilenceWriter};
use support::fake_gateway::FakeGateway;
use support::process::{run_async as run, Ran};
use support::prometheus::{TestPrometheus, TestTarget};
use support::rules_file::{self, POWER_CYCLE_ACTION};
use support::wait::DEADLINE;

const JOBCTL: &str = env!("CARGO_BIN_EXE_jobctl");

fn page(one: u8, two: u8) -> String {
    format!(
        "# TYPE addreality_device_online gauge\n\
         addreality_device_online{{platform_id=\"201\",device_id=\"1\"}} {one}\n\
         addreality_device_online{{platform_id=\"201\",device_id=\"2\"}} {two}\n"
    )
}

/// Serves the page and waits until Prometheus answers it.
async fn publish(prometheus: &TestPrometheus, target: &TestTarget, one: u8, two: u8) {
    target.set(page(one, two));
    let expected = [f64::from(one), f64::from(two)];
    prometheus
        .wait_until_query(
            "addreality_device_online{platform_id=\"201\"}",
            |samples| {
                let mut seen: Vec<(String, f64)> =
                    samples.iter().map(|s| (s.labels["device_id"].clone(), s.value)).collect();
                seen.sort_by(|a, b| a.0.cmp(&b.0));
                seen.len() == 2 && seen[0].1 == expected[0] && seen[1].1 == expected[1]
            },
            DEADLINE,
        )
        .await;
}

/// Two players on their own sockets; the job power-cycles a player at once,
/// verifies within 10 minutes, repeats hourly, at most twice a day.
fn rules(prometheus: &str, gateway: &FakeGateway) -> String {
    rules_file::head(prometheus, "30s", "2s", "journal.db")
        + &rules_file::gateway_sms(&gateway.url(), "")
        + &rules_file::socket("lobby", "+79991234567", "simpal-d210", "201", "1")
        + &rules_file::socket("hall", "+79997654321", "simpal-d210", "201", "2")
        + &rules_file::offline_job("offline now", "201", None, POWER_CYCLE_ACTION)
        + "verify = { within = \"10m\" }\nrepeat = { every = \"1h\", max = 10 }\n\
           limit = { actions = 2, per = \"24h\" }\n"
}

async fn jobctl(dir: &Path, args: &[&str]) -> Ran {
    let mut command = support::process::command(JOBCTL, dir);
    command.args(["--config", "rules.toml"]).args(args).env("JOURNAL_STREAM", "8:1");
    run(tokio::process::Command::from(command)).await
}

fn journal_file(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("journal.db")).unwrap()
}

const DEVICE_1: &str = r#"{platform_id="201", device_id="1"}"#;
const DEVICE_2: &str = r#"{platform_id="201", device_id="2"}"#;

/// The scenario: both players go dark; device 1 is back 4 minutes after its
/// power-cycle, device 2 is not, is cycled again an hour later, still not
/// back, and the third action is refused by the limit. Then device 1 goes
/// dark again while a silence holds it.
async fn play(dir: &Path, prometheus: &TestPrometheus, target: &TestTarget) -> FakeGateway {
    let gateway = FakeGateway::start().await;
    support::write_secret(&dir.join("sms.key"), &format!("{}\n", gateway.key()));
    let text = rules(prometheus.url(), &gateway);
    std::fs::write(dir.join("rules.toml"), &text).unwrap();
    let rules = signage_watchdog::rules::parse(&text, dir.join("rules.toml")).unwrap();
    let start = Timestamp::from_second(Timestamp::now().as_second() / 60 * 60 - 4 * 3600).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let at = |m: i64| start + SignedDuration::from_secs(m * 60);
    let options = EngineOptions {
        retry: SendRetry { attempts: 3, first_delay: Duration::from_millis(10) },
        ..EngineOptions::default()
    };
    let mut engine = support::engine::start(rules, &text, dir, clock.clone(), options).await;
    let mut cycle_at = async |m: i64| {
        clock.set(at(m));
        engine.cycle().await;
        engine.finish_sends().await;
    };
    publish(prometheus, target, 0, 0).await;
    cycle_at(0).await;
    publish(prometheus, target, 1, 0).await;
    cycle_at(4).await;
    cycle_at(10).await;
    cycle_at(60).await;
    cycle_at(70).await;
    cycle_at(120).await;
    SilenceWriter::open(&dir.join("journal.db"))
        .unwrap()
        .with_clock(clock.clone())
        .add(&NewSilence {
            job: None,
            socket: Some("lobby".into()),
            devices: Default::default(),
            author: "anna".into(),
            comment: "lobby renovation".into(),
            duration: Duration::from_secs(3600),
        })
        .unwrap();
    publish(prometheus, target, 0, 0).await;
    cycle_at(130).await;
    drop(engine);
    gateway
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_counts_what_a_scenario_did_in_every_format() {
    let target = TestTarget::start();
    let prometheus = TestPrometheus::start(&[&target]).await;
    let site = tempfile::tempdir().unwrap();
    let dir = site.path();
    let gateway = play(dir, &prometheus, &target).await;
    assert_eq!(gateway.sent().len(), 3, "d1 once, d2 twice");
    let before = journal_file(dir);

    let ran = jobctl(dir, &["report", "--since", "30d"]).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    let (first, table) = ran.stdout.split_once('\n').unwrap();
    assert!(first.starts_with("from ") && first.ends_with(" (UTC)"), "{first}");
    assert_eq!(
        table,
        "
JOB          DEVICES  EPISODES  ACTIONS  RECOVERED  NOT RECOVERED  UNVERIFIED  GAVE UP  MEDIAN RECOVERY  SENT  SUPPRESSED  SILENCED/HELD
offline now  2        3         3        1          2              0           1        4m               3     0           1/0

JOB          DEVICE                              EPISODES  ACTIONS  RECOVERED  NOT RECOVERED  UNVERIFIED  GAVE UP  MEDIAN RECOVERY  SENT  SUPPRESSED  SILENCED/HELD
offline now  {platform_id=\"201\", device_id=\"1\"}  2         1        1          0              0           0        4m               1     0           1/0
offline now  {platform_id=\"201\", device_id=\"2\"}  1         2        0          2              0           1        -                2     0           0/0

MOST CYCLED DEVICE                  CYCLES  JOBS
{platform_id=\"201\", device_id=\"2\"}  2       offline now
{platform_id=\"201\", device_id=\"1\"}  1       offline now
"
    );

    let ran = jobctl(dir, &["report", "--format", "json"]).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let job = &json["jobs"][0];
    assert_eq!(job["job"], "offline now");
    let counts = |v: &serde_json::Value| -> Vec<i64> {
        [
            "episodes",
            "actions",
            "cycles",
            "recovered",
            "not_recovered",
            "unverified",
            "gave_up",
            "sent",
            "failed",
            "uncertain",
            "suppressed",
            "silenced",
            "held",
        ]
        .iter()
        .map(|k| v[*k].as_i64().unwrap_or_else(|| panic!("{k} in {v}")))
        .collect()
    };
    assert_eq!(counts(job), [3, 3, 3, 1, 2, 0, 1, 3, 0, 0, 0, 1, 0]);
    assert_eq!(job["median_recovery_seconds"], 240.0);
    assert_eq!(json["devices"][0]["device"], DEVICE_1);
    assert_eq!(counts(&json["devices"][0]), [2, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0]);
    assert_eq!(json["devices"][1]["device"], DEVICE_2);
    assert_eq!(counts(&json["devices"][1]), [1, 2, 2, 0, 2, 0, 1, 2, 0, 0, 0, 0, 0]);
    assert_eq!(json["devices"][1]["median_recovery_seconds"], serde_json::Value::Null);
    assert_eq!(
        json["most_cycled"],
        serde_json::json!([
            { "device": DEVICE_2, "cycles": 2, "jobs": ["offline now"] },
            { "device": DEVICE_1, "cycles": 1, "jobs": ["offline now"] },
        ])
    );

    let ran = jobctl(dir, &["report", "--since", "30d", "--format", "csv"]).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    assert_eq!(
        ran.stdout,
        "scope,job,device,devices,episodes,actions,cycles,recovered,not_recovered,unverified,gave_up,median_recovery_seconds,sent,failed,uncertain,suppressed,silenced,held\r\n\
         job,offline now,,2,3,3,3,1,2,0,1,240,3,0,0,0,1,0\r\n\
         device,offline now,\"{platform_id=\"\"201\"\", device_id=\"\"1\"\"}\",,2,1,1,1,0,0,0,240,1,0,0,0,1,0\r\n\
         device,offline now,\"{platform_id=\"\"201\"\", device_id=\"\"2\"\"}\",,1,2,2,0,2,0,1,,2,0,0,0,0,0\r\n"
    );

    // A period after everything: nothing to count.
    let ran = jobctl(dir, &["report", "--since", "1s"]).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    assert!(ran.stdout.ends_with("\n\nNo job acted or was held back in this period.\n"), "{ran:?}");
    assert_eq!(journal_file(dir), before, "report changed the journal");
}

#[tokio::test]
async fn report_refuses_bad_periods_and_formats_and_a_missing_journal() {
    let site = tempfile::tempdir().unwrap();
    let dir = site.path();
    let gateway = FakeGateway::start().await;
    support::write_secret(&dir.join("sms.key"), &format!("{}\n", gateway.key()));
    std::fs::write(dir.join("rules.toml"), rules(&support::closed_url(), &gateway)).unwrap();

    let ran = jobctl(dir, &["report", "--since", "yesterday"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
        (
            2,
            "",
            "jobctl: --since: invalid time \"yesterday\": write a duration back from now (\"2h\", \"7d\") or a time like 2026-11-28T12:00:00Z\n"
        )
    );
    let ran = jobctl(dir, &["report", "--format", "xml"]).await;
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("invalid value 'xml' for '--format <FORMAT>'"), "{ran:?}");
    assert!(ran.stderr.contains("[possible values: table, json, csv]"), "{ran:?}");
    let ran = jobctl(dir, &["report"]).await;
    assert_eq!(ran.code, 4, "{ran:?}");
    assert!(ran.stderr.starts_with("jobctl: "), "{ran:?}");
    assert!(!dir.join("journal.db").exists(), "report created the journal");
}
