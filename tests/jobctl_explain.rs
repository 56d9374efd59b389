//! `jobctl explain` end to end, through its binary, against a real
//! Prometheus: the first reason nothing would happen, in each case, and the
//! journal left exactly as it was.
//!
//! The daemon's memory is what `explain` reads, so each case puts in the
//! journal what the daemon would have saved (a pending state, the last
//! action of a job with a cooldown, a silence, an action counted against a
//! limit), timed relative to the moment the test starts: the times in the
//! output (`until …`) are then exact.

mod support;

use std::path::Path;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use signage_watchdog::journal::{
    Channel, EncodedState, Journal, NewSilence, Origin, OutageChange, PlannedSend, SendResult,
    SilenceWriter,
};
use signage_watchdog::rules::state::{JobState, Phase};
use support::fake_gateway::DEFAULT_KEY;
use support::process::{run_async as run, Ran};
use support::prometheus::{TestPrometheus, TestTarget};
use support::rules_file::{self, POWER_CYCLE_ACTION};
use support::wait::DEADLINE;
use support::{closed_url, write_secret};

const JOBCTL: &str = env!("CARGO_BIN_EXE_jobctl");

/// What the target serves: device 1 (socket lobby) and device 3 (no
/// socket) offline, device 2 (socket hall) online; device 9 has no series.
const PAGE: &str = "# TYPE addreality_device_online gauge\n\
    addreality_device_online{platform_id=\"12\",device_id=\"1\",name=\"Lobby\"} 0\n\
    addreality_device_online{platform_id=\"12\",device_id=\"2\",name=\"Hall\"} 1\n\
    addreality_device_online{platform_id=\"12\",device_id=\"3\",name=\"Stairs\"} 0\n";

fn device(id: &str) -> String {
    format!("{{platform_id=\"12\", device_id=\"{id}\"}}")
}

/// The jobs, all on platform 12's `addreality_device_online == 0`.
fn jobs(closed_hours: &str) -> String {
    let job = |name: &str, more: &str| {
        rules_file::offline_job(name, "12", None, POWER_CYCLE_ACTION) + more + "\n"
    };
    job("hold", "for = \"10m\"\n")
        + &job("now", "")
        + &job(
            "night",
            &format!("schedule = {{ hours = \"{closed_hours}\", time_zone = \"UTC\" }}\n"),
        )
        + &job("quiet", "")
        + &job("limited", "cooldown = \"1m\"\nlimit = { actions = 1, per = \"24h\" }\n")
        + &job("spent", "")
        + &job(
            "guarded",
            "guards = [{ expr = \"addreality_platform_up == 1\", on = [\"platform_id\"] }]\n",
        )
}

fn rules(prometheus: &str, closed_hours: &str) -> String {
    rules_file::head(prometheus, "1s", "1s", "journal.db")
        + "[budgets]\nsocket_per_hour = 1\n\n"
        + &rules_file::gateway_sms("http://127.0.0.1:9", "")
        + &rules_file::socket("lobby", "+7 999 123-45-67", "simpal-d210", "12", "1")
        + &rules_file::socket("hall", "+7 999 765-43-21", "simpal-d210", "12", "2")
        + &jobs(closed_hours)
}

/// A schedule window of one hour that is closed now: twelve hours away.
fn closed_hours(now: Timestamp) -> String {
    let hour = (now.to_zoned(jiff::tz::TimeZone::UTC).hour() + 12) % 24;
    format!("{hour:02}:00-{:02}:00", hour + 1)
}

fn whole_second(at: Timestamp) -> Timestamp {
    Timestamp::from_second(at.as_second()).unwrap()
}

fn time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn minutes(m: i64) -> SignedDuration {
    SignedDuration::from_secs(m * 60)
}

async fn jobctl(dir: &Path, args: &[&str]) -> Ran {
    let mut command = support::process::command(JOBCTL, dir);
    command.args(["--config", "rules.toml"]).args(args).env("JOURNAL_STREAM", "8:1");
    run(tokio::process::Command::from(command)).await
}

async fn explain(dir: &Path, job: &str, id: &str) -> Ran {
    let id = format!("device_id={id}");
    jobctl(dir, &["explain", job, "--device", "platform_id=12", "--device", &id]).await
}

/// The `reason:` line of an explanation.
fn reason(ran: &Ran) -> &str {
    ran.stdout
        .lines()
        .find_map(|line| line.strip_prefix("reason: "))
        .unwrap_or_else(|| panic!("no reason in {ran:?}"))
}

/// Each of the journal's files with its length and a digest of its bytes,
/// to show a command left them alone. A reader of a WAL-mode database
/// makes SQLite create the (empty) `-wal` and the `-shm` index beside it;
/// those are left out when the `-wal` is empty: nothing was written.
fn journal_bytes(dir: &Path) -> Vec<(String, usize, u64)> {
    use std::hash::{Hash, Hasher};
    let mut files: Vec<(String, usize, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with("journal.db"))
        .filter(|path| {
            let wal_empty =
                std::fs::metadata(dir.join("journal.db-wal")).map_or(true, |m| m.len() == 0);
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            !(wal_empty && (name.ends_with("-wal") || name.ends_with("-shm")))
        })
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut hasher);
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            (name, bytes.len(), hasher.finish())
        })
        .collect();
    files.sort();
    files
}

/// What the daemon would have left in the journal for each case.
fn record(dir: &Path, now: Timestamp) {
    let mut journal = Journal::open(&dir.join("journal.db")).unwrap();
    let pending = JobState {
        phase: Phase::Pending {
            since: now - minutes(4),
            held: Duration::from_secs(240),
            counting_from: None,
            last_true: None,
        },
        ..JobState::default()
    };
    // Acted 10 minutes ago; the episode ended; the device is offline again.
    let cooling = JobState {
        phase: Phase::Resolved { at: now - minutes(5), episode: 1 },
        episodes_started: 1,
        last_action_at: Some(now - minutes(10)),
        ..JobState::default()
    };
    let limited = JobState {
        phase: Phase::Resolved { at: now - minutes(60), episode: 1 },
        episodes_started: 1,
        last_action_at: Some(now - minutes(90)),
        ..JobState::default()
    };
    // Firing, its first action waiting for the cooldown.
    let waiting = JobState {
        phase: Phase::Firing { since: now - minutes(1), episode: 2, actions_taken: 0 },
        episodes_started: 2,
        last_action_at: Some(now - SignedDuration::from_secs(30)),
        ..JobState::default()
    };
    let (one, hall) = (device("1"), device("2"));
    journal
        .save_states([
            ("hold", one.as_str(), &pending),
            ("hold", hall.as_str(), &pending),
            ("now", one.as_str(), &cooling),
            ("limited", one.as_str(), &limited),
            ("limited", hall.as_str(), &waiting),
        ])
        .unwrap();
    let id = journal
        .begin_send(&PlannedSend {
            origin: Origin::Rule {
                job: "limited".into(),
                device_key: one.clone(),
                episode: 1,
                attempt: 1,
                trigger_value: Some(0.0),
                state_after: EncodedState::new(&limited),
                also_for: Vec::new(),
            },
            channel: Channel::Sms,
            socket: "lobby".into(),
            phone: "+79991234567".into(),
            text: "#12#0#1#1#".into(),
        })
        .unwrap();
    let sent = SendResult::Sent { backend: "http".into(), reference: None };
    journal.finish_send(id, &sent).unwrap();
    drop(journal);
    let mut silences = SilenceWriter::open(&dir.join("journal.db")).unwrap();
    silences
        .add(&NewSilence {
            job: Some("quiet".into()),
            socket: None,
            devices: Default::default(),
            author: "anna".into(),
            comment: "lobby renovation".into(),
            duration: Duration::from_secs(7200),
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_gives_the_first_reason_nothing_would_happen() {
    let target = TestTarget::start();
    target.set(PAGE);
    let prometheus = TestPrometheus::start(&[&target]).await;
    prometheus.wait_until_query("addreality_device_online", |s| s.len() == 3, DEADLINE).await;
    let now = whole_second(Timestamp::now());
    let site = tempfile::tempdir().unwrap();
    let dir = site.path();
    write_secret(&dir.join("sms.key"), &format!("{DEFAULT_KEY}\n"));
    std::fs::write(dir.join("rules.toml"), rules(prometheus.url(), &closed_hours(now))).unwrap();
    record(dir, now);
    let before = journal_bytes(dir);

    let ran = explain(dir, "hold", "2").await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    assert!(ran.stdout.contains("addreality_device_online == 0: value 1: false\n"), "{ran:?}");
    assert!(
        ran.stdout.contains(r#"      query: addreality_device_online{platform_id="12"}"#),
        "{ran:?}"
    );
    assert_eq!(reason(&ran), "the condition addreality_device_online == 0 does not hold");

    let ran = explain(dir, "hold", "1").await;
    assert!(ran.stdout.contains("  state:     pending since "), "{ran:?}");
    assert_eq!(reason(&ran), "waiting for `for`: the condition held 4m of 10m");

    let ran = explain(dir, "hold", "9").await;
    assert_eq!(
        reason(&ran),
        r#"no series for this device in addreality_device_online{platform_id="12"}; an unknown verdict never moves towards an action"#
    );

    let ran = explain(dir, "now", "3").await;
    assert_eq!(
        reason(&ran),
        r#"cannot act: no socket powers device {platform_id="12", device_id="3"}; add a [[sockets]] entry whose powers names it"#
    );

    let ran = explain(dir, "now", "1").await;
    let until = time(now + minutes(50));
    assert!(reason(&ran).starts_with("cooling down: "), "{ran:?}");
    assert!(reason(&ran).ends_with(&format!(" left (until {until})")), "{ran:?}");
    assert!(ran.stdout.contains(&format!(" left (until {until})\n")), "{ran:?}");

    let ran = explain(dir, "night", "1").await;
    assert_eq!(reason(&ran), "outside the job's schedule window");
    assert!(ran.stdout.contains("  window:    closed\n"), "{ran:?}");

    let ran = explain(dir, "quiet", "1").await;
    assert!(reason(&ran).starts_with("silenced by silence #1 until "), "{ran:?}");
    assert!(reason(&ran).ends_with(r#" (anna: "lobby renovation")"#), "{ran:?}");

    let ran = explain(dir, "limited", "1").await;
    assert_eq!(
        reason(&ran),
        "limit reached: 1 actions on this device in the last 1day (limit 1 per 1day)"
    );
    assert!(
        ran.stdout.contains("  limit:     1 of 1 in 1day on this device, 1 to socket lobby\n"),
        "{ran:?}"
    );

    // Nothing holds job "spent" on device 1, but its socket's budget is
    // spent by job "limited"'s message.
    let ran = explain(dir, "spent", "1").await;
    assert_eq!(
        reason(&ran),
        "the SMS would be suppressed: budget of 1 messages per socket per hour reached (socket lobby: 1)"
    );

    let ran = explain(dir, "guarded", "1").await;
    assert!(
        ran.stdout
            .contains("  guard addreality_platform_up == 1 on (platform_id): does not hold\n"),
        "{ran:?}"
    );
    assert_eq!(
        reason(&ran),
        "guard addreality_platform_up == 1 on (platform_id) does not hold; an unknown verdict never moves towards an action"
    );

    let ran = explain(dir, "limited", "2").await;
    assert_eq!(reason(&ran), "the condition addreality_device_online == 0 does not hold");

    // The labels may come in any order.
    let ran =
        jobctl(dir, &["explain", "hold", "--device", "device_id=1", "--device", "platform_id=12"])
            .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(reason(&ran).starts_with("waiting for `for`: the condition held 4m of 10m"), "{ran:?}");

    // JSON: the same facts, the reason's code.
    let ran = jobctl(
        dir,
        &[
            "explain",
            "hold",
            "--device",
            "platform_id=12",
            "--device",
            "device_id=1",
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(json["reason"]["code"], "waiting_for_for");
    assert_eq!(json["state"]["held_seconds"], 240);
    assert_eq!(json["state"]["for_seconds"], 600);
    assert_eq!(json["terms"][0]["value"], 0.0);
    assert_eq!(json["terms"][0]["result"], "true");

    // `status` shows the same: `for` held, the cooldown left, the limit used.
    let ran = jobctl(dir, &["status"]).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    let (_, waiting) = ran
        .stdout
        .split_once("\nJOB      DEVICE                             FOR HELD   COOLDOWN LEFT")
        .unwrap_or_else(|| panic!("{}", ran.stdout));
    let lines: Vec<&str> = waiting.lines().collect();
    assert_eq!(
        lines[1], r#"hold     {platform_id="12", device_id="1"}  4m of 10m"#,
        "{}",
        ran.stdout
    );
    assert_eq!(
        lines[2], r#"hold     {platform_id="12", device_id="2"}  4m of 10m"#,
        "{}",
        ran.stdout
    );
    let until = time(now + SignedDuration::from_secs(30));
    assert!(
        lines[3].starts_with(r#"limited  {platform_id="12", device_id="2"}             "#),
        "{}",
        ran.stdout
    );
    assert!(
        lines[3].ends_with(&format!("s (until {until})  0 of 1 in 1day (0 to socket hall)")),
        "{}",
        ran.stdout
    );
    let ran = jobctl(dir, &["status", "--format", "json"]).await;
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let devices = json["devices"].as_array().unwrap();
    let row = |job: &str, id: &str| {
        devices.iter().find(|d| d["job"] == job && d["device"] == device(id)).unwrap().clone()
    };
    assert_eq!(
        (&row("hold", "1")["held_seconds"], &row("hold", "1")["for_seconds"]),
        (&240.into(), &600.into())
    );
    assert_eq!(row("limited", "2")["cooldown_until"], until.as_str());
    assert_eq!(
        row("limited", "2")["limit"],
        serde_json::json!({ "on_device": 0, "to_socket": 0, "socket": "hall", "actions": 1, "per_seconds": 86400 })
    );
    assert_eq!(row("now", "1").get("cooldown_until"), None, "resolved: nothing waits");

    assert_eq!(journal_bytes(dir), before, "explain changed the journal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_it_would_act_and_what_it_would_send() {
    let target = TestTarget::start();
    target.set(PAGE);
    let prometheus = TestPrometheus::start(&[&target]).await;
    prometheus.wait_until_query("addreality_device_online", |s| s.len() == 3, DEADLINE).await;
    let site = tempfile::tempdir().unwrap();
    let dir = site.path();
    write_secret(&dir.join("sms.key"), &format!("{DEFAULT_KEY}\n"));
    let now = Timestamp::now();
    std::fs::write(dir.join("rules.toml"), rules(prometheus.url(), &closed_hours(now))).unwrap();

    // No journal yet (no daemon ever ran): nothing recorded, nothing held.
    let ran = explain(dir, "now", "1").await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    assert_eq!(reason(&ran), r##"would act now: "#12#0#1#1#" to socket lobby (+79991234567)"##);
    assert!(!dir.join("journal.db").exists(), "explain created the journal");

    // The daemon recorded the job in a mass outage: the action it would
    // take is held, and explain says so with the daemon's counts.
    let since = whole_second(now - minutes(3));
    let mut journal = Journal::open(&dir.join("journal.db")).unwrap();
    let began = OutageChange::Began { job: "now".into(), since, bad: 30, known: 40 };
    assert_eq!(journal.record_outages(&[began], &[]).unwrap(), [true]);
    drop(journal);
    let ran = explain(dir, "now", "1").await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    assert_eq!(
        reason(&ran),
        format!(
            "held by the job's mass outage since {}: 30 of 40 devices bad (as of the daemon's last cycle); it leaves when fewer devices are bad",
            time(since)
        )
    );
}

#[tokio::test]
async fn explain_says_prometheus_is_unreachable_and_exits_6() {
    let site = tempfile::tempdir().unwrap();
    let dir = site.path();
    write_secret(&dir.join("sms.key"), &format!("{DEFAULT_KEY}\n"));
    std::fs::write(dir.join("rules.toml"), rules(&closed_url(), "00:00-01:00")).unwrap();
    let ran = explain(dir, "now", "1").await;
    assert_eq!(ran.code, 6, "{ran:?}");
    assert!(
        reason(&ran).starts_with(
            r#"Prometheus did not answer addreality_device_online{platform_id="12"}: "#
        ),
        "{ran:?}"
    );
    assert!(
        reason(&ran).ends_with("; the device's verdict is unknown, so nothing advances"),
        "{ran:?}"
    );
}

#[tokio::test]
async fn explain_refuses_bad_jobs_devices_and_formats() {
    let site = tempfile::tempdir().unwrap();
    let dir = site.path();
    write_secret(&dir.join("sms.key"), &format!("{DEFAULT_KEY}\n"));
    std::fs::write(dir.join("rules.toml"), rules(&closed_url(), "00:00-01:00")).unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["explain", "nope", "--device", "platform_id=12", "--device", "device_id=1"],
            "jobctl: no job \"nope\" in the rules; jobs: \"hold\", \"now\", \"night\", \"quiet\", \"limited\", \"spent\", \"guarded\"\n",
        ),
        (
            &["explain", "now", "--device", "platform_id"],
            "jobctl: --device \"platform_id\": write LABEL=VALUE, one per label of the device key (platform_id, device_id)\n",
        ),
        (
            &["explain", "now", "--device", "site=arzamas"],
            "jobctl: --device \"site=arzamas\": site is not a label of the device key; name a device by platform_id, device_id\n",
        ),
        (
            &["explain", "now", "--device", "platform_id=12"],
            "jobctl: --device \"platform_id=12\": missing device_id: a device is named by platform_id, device_id\n",
        ),
        (
            &["explain", "now", "--device", "platform_id=12", "--device", "platform_id=13"],
            "jobctl: --device \"platform_id=13\": label platform_id is given twice\n",
        ),
    ];
    for (args, stderr) in cases {
        let ran = jobctl(dir, args).await;
        assert_eq!(
            (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
            (2, "", stderr),
            "{args:?}"
        );
    }
    let ran =
        jobctl(dir, &["explain", "now", "--device", "platform_id=12", "--format", "xml"]).await;
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("invalid value 'xml' for '--format <FORMAT>'"), "{ran:?}");
    let ran = jobctl(dir, &["explain", "now"]).await;
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("--device <LABEL=VALUE>"), "{ran:?}");
}
