//! `jobctl test-rule JOB --replay`: what a job would have done over history,
//! against a real Prometheus loaded with a day chosen by the test.
//!
//! The history is written as OpenMetrics with timestamps and loaded into
//! Prometheus's data directory with `promtool tsdb create-blocks-from
//! openmetrics` before it starts ([`PrometheusOptions::history`]), so a
//! day of data is there at once. Samples are at ten seconds past each
//! minute and the replay steps on the minute and the half minute, so no
//! step falls on the edge of Prometheus's lookback window.

mod support;

use std::fmt::Write as _;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use signage_watchdog::engine::replay::{self, ReplayOptions, ReplayRange};
use support::process::{run_async as run, Ran};
use support::prometheus::{PrometheusOptions, TestPrometheus};
use support::rules_file::{self, POWER_CYCLE_ACTION};

const JOBCTL: &str = env!("CARGO_BIN_EXE_jobctl");

/// The day replayed.
const DAY: &str = "2026-11-01T00:00:00Z";

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

/// `HH:MM` of [`DAY`] as a minute number.
fn minute(hh_mm: &str) -> i64 {
    let (h, m) = hh_mm.split_once(':').unwrap();
    h.parse::<i64>().unwrap() * 60 + m.parse::<i64>().unwrap()
}

/// A day of `addreality_device_online` for two players of platform 12,
/// one sample a minute (at ten seconds past it):
///
/// - 30785 (Lobby) is offline 02:00–02:20 (fires), 08:00–08:03 (back
///   before `for`) and 12:00–12:30 (fires within the cooldown);
/// - 30786 (Hall) is always online, but Prometheus has nothing from it
///   20:00–20:30 (its scrapes failed);
///
/// and `addreality_platform_up` of platform 12, 0 from 02:10 to 02:15.
fn history() -> String {
    let day = at(DAY).as_second();
    let offline = [("02:00", "02:20"), ("08:00", "08:03"), ("12:00", "12:30")];
    let mut text = String::from("# TYPE addreality_device_online gauge\n");
    for m in 0..24 * 60 {
        let down = offline.iter().any(|(from, to)| (minute(from)..minute(to)).contains(&m));
        let value = if down { 0 } else { 1 };
        let time = day + m * 60 + 10;
        writeln!(
            text,
            "addreality_device_online{{platform_id=\"12\",device_id=\"30785\",name=\"Lobby\"}} {value} {time}"
        )
        .unwrap();
    }
    for m in 0..24 * 60 {
        if (minute("20:00")..minute("20:30")).contains(&m) {
            continue;
        }
        let time = day + m * 60 + 10;
        writeln!(
            text,
            "addreality_device_online{{platform_id=\"12\",device_id=\"30786\",name=\"Hall\"}} 1 {time}"
        )
        .unwrap();
    }
    // The platform's API answers all day but 02:10–02:15.
    text.push_str("# TYPE addreality_platform_up gauge\n");
    for m in 0..24 * 60 {
        let value = if (minute("02:10")..minute("02:15")).contains(&m) { 0 } else { 1 };
        let time = day + m * 60 + 10;
        writeln!(text, "addreality_platform_up{{platform_id=\"12\"}} {value} {time}").unwrap();
    }
    text.push_str("# EOF\n");
    text
}

/// A Prometheus holding [`history`], with Prometheus's own lookback (5m).
async fn prometheus_with_history() -> TestPrometheus {
    let options = PrometheusOptions {
        lookback_delta: Duration::from_secs(300),
        history: Some(history()),
        ..PrometheusOptions::default()
    };
    options.start(&[]).await
}

/// A rules file: socket `lobby` powers 30785 (30786 has none), the job
/// "reboot frozen" power-cycles a player offline for 5m, with a cooldown
/// of `cooldown`, and `more` lines at the top (`[budgets]`…).
fn rules(prometheus: &str, cooldown: &str, more: &str) -> String {
    rules_file::head(prometheus, "30s", "5s", "journal.db")
        + more
        + "[sms]\nbackend = \"log\"\nprice = { per_message = 3.5, currency = \"RUB\" }\n\n"
        + &rules_file::socket("lobby", "+7 999 123-45-67", "simpal-d210", "12", "30785")
        + &rules_file::offline_job("reboot frozen", "12", Some("5m"), POWER_CYCLE_ACTION)
        + &format!("cooldown = \"{cooldown}\"\n")
}

/// A directory with `rules.toml`, where jobctl runs.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new(rules: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
        Site { dir }
    }

    async fn jobctl(&self, args: &[&str]) -> Ran {
        let mut command = support::process::command(JOBCTL, self.dir.path());
        command.args(["--config", "rules.toml"]).args(args);
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        run(command).await
    }

    /// What jobctl left in the directory besides the rules.
    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "rules.toml")
            .collect();
        names.sort();
        names
    }
}

const DAY_ARGS: [&str; 7] = [
    "test-rule",
    "reboot frozen",
    "--from",
    "2026-11-01T00:00:00Z",
    "--to",
    "2026-11-02T00:00:00Z",
    "--step=30s",
];

#[tokio::test]
async fn a_day_replayed_gives_each_episode_and_the_totals() {
    if !TestPrometheus::available() {
        return;
    }
    let prometheus = prometheus_with_history().await;
    let site = Site::new(&rules(prometheus.url(), "12h", ""));
    let ran = site.jobctl(&DAY_ARGS).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    assert_eq!(
        ran.stdout,
        r##"job "reboot frozen": replay from 2026-11-01T00:00:00Z to 2026-11-02T00:00:00Z every 30s (2881 evaluations)
  when addreality_device_online == 0 for 5m, cooldown 12h
  simulated: nothing was sent, nothing written

{platform_id="12", device_id="30785"} (Lobby)
  2026-11-01T02:00:30Z  condition true
  2026-11-01T02:05:30Z  fired (episode 1)
  2026-11-01T02:05:30Z  would send "#12#0#1#1#" to socket lobby (+79991234567)
  2026-11-01T02:20:30Z  condition false after 20m: resolved
  2026-11-01T08:00:30Z  condition true
  2026-11-01T08:03:30Z  condition false after 3m: recovered on its own before `for` (5m)
  2026-11-01T12:00:30Z  condition true
  2026-11-01T12:05:30Z  fired (episode 2)
  2026-11-01T12:05:30Z  action waits for the cooldown until 2026-11-01T14:05:30Z
  2026-11-01T12:30:30Z  condition false after 30m: resolved, nothing sent

totals
  episodes:   3 (2 fired, 1 recovered on their own before `for`, 0 still open at the end)
  messages:   1 would have left (socket lobby: 1); 0 suppressed by budgets
  devices:    1 with an episode, of 2 seen
  unknown:    1 evaluation
  cost:       3.50 RUB (1 segment at 3.50 RUB)
"##
    );
    assert_eq!(site.files(), Vec::<String>::new(), "a replay writes nothing");
}

#[tokio::test]
async fn guards_hold_the_replay_as_they_hold_the_daemon() {
    if !TestPrometheus::available() {
        return;
    }
    let prometheus = prometheus_with_history().await;
    // With the platform guard, Lobby's first outage fires as before, then
    // is unknown (held, neither resolved nor acted on) while the platform
    // is down: 02:10:30 to 02:15:00, ten steps.
    let guard = "guards = [{ expr = \"addreality_platform_up == 1\", on = [\"platform_id\"] }]\n";
    let site = Site::new(&(rules(prometheus.url(), "12h", "") + guard));
    let ran = site.jobctl(&DAY_ARGS).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    assert!(
        ran.stdout.contains(
            "  2026-11-01T02:00:30Z  condition true\n\
             \x20 2026-11-01T02:05:30Z  fired (episode 1)\n\
             \x20 2026-11-01T02:05:30Z  would send \"#12#0#1#1#\" to socket lobby (+79991234567)\n\
             \x20 2026-11-01T02:20:30Z  condition false after 20m: resolved (10 evaluations unknown)\n"
        ),
        "{}",
        ran.stdout
    );
    // Hall's ten steps too, and Hall's gap: 20 unknown plus 1.
    assert!(ran.stdout.contains("  unknown:    21 evaluations\n"), "{}", ran.stdout);
}

#[tokio::test]
async fn budgets_apply_in_the_replay_and_json_says_the_same() {
    if !TestPrometheus::available() {
        return;
    }
    let prometheus = prometheus_with_history().await;
    // With a 1h cooldown the third outage would be acted on, but the
    // socket's daily budget is spent by the first.
    let site = Site::new(&rules(prometheus.url(), "1h", "[budgets]\nsocket_per_day = 1\n\n"));
    let ran = site.jobctl(&DAY_ARGS).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    assert!(
        ran.stdout.contains(
            "  2026-11-01T12:05:30Z  would send \"#12#0#1#1#\" to socket lobby (+79991234567), but suppressed: \
             budget of 1 messages per socket per day reached (socket lobby: 1)\n\
             \x20 2026-11-01T12:30:30Z  condition false after 30m: resolved\n"
        ),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains(
            "  messages:   1 would have left (socket lobby: 1); 1 suppressed by budgets\n"
        ),
        "{}",
        ran.stdout
    );

    let mut args = DAY_ARGS.to_vec();
    args.extend(["--format", "json"]);
    let ran = site.jobctl(&args).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(
        json["totals"],
        serde_json::json!({
            "episodes": 3, "fired": 2, "recovered_before_for": 1, "open": 0,
            "messages": 1, "messages_per_socket": { "lobby": 1 }, "suppressed_by_budgets": 1,
            "action_errors": 0, "recovered": 0, "not_recovered": 0, "unverified": 0,
            "gave_up": 0, "segments": 1, "devices": 1, "devices_seen": 2,
            "unknown_evaluations": 1,
            "cost": { "amount": 3.5, "currency": "RUB", "per_segment": 3.5 },
        })
    );
    let episodes = &json["devices"][0]["episodes"];
    assert_eq!(json["devices"][0]["device"], r#"{platform_id="12", device_id="30785"}"#);
    assert_eq!(
        episodes[1],
        serde_json::json!({
            "started": "2026-11-01T08:00:30Z", "fired": null, "episode": null, "held": [],
            "gave_up": null,
            "messages": [], "action_errors": [], "unknown_evaluations": 0,
            "end": "recovered_before_for", "ended": "2026-11-01T08:03:30Z",
        })
    );
    assert_eq!(
        episodes[2]["messages"],
        serde_json::json!([{
            "at": "2026-11-01T12:05:30Z", "attempt": 1, "socket": "lobby", "phone": "+79991234567",
            "text": "#12#0#1#1#", "segments": 1,
            "suppressed": "budget of 1 messages per socket per day reached (socket lobby: 1)",
            "with": null, "also_for": [], "result": null,
        }])
    );
    assert_eq!(site.files(), Vec::<String>::new(), "a replay writes nothing");
}

#[tokio::test]
async fn a_range_longer_than_a_query_may_ask_is_fetched_in_chunks_with_the_same_outcome() {
    if !TestPrometheus::available() {
        return;
    }
    let prometheus = prometheus_with_history().await;
    let rules =
        signage_watchdog::rules::parse(&rules(prometheus.url(), "12h", ""), "rules.toml").unwrap();
    let job = rules.jobs.iter().find(|job| job.name == "reboot frozen").unwrap();
    let day = at(DAY);
    let range =
        ReplayRange::new(day, day + SignedDuration::from_hours(24), Duration::from_secs(30))
            .unwrap();
    let whole = replay::replay(
        &rules,
        job,
        prometheus.client(),
        range,
        ReplayOptions::default(),
        Vec::new(),
    )
    .await
    .unwrap();
    let small = ReplayOptions { max_steps_per_query: 100, ..ReplayOptions::default() };
    let chunked =
        replay::replay(&rules, job, prometheus.client(), range, small, Vec::new()).await.unwrap();
    // 2881 steps: 60, then as many as the options allow (11,000 or 100).
    // Each request asks the job's query and the exporters' freshness.
    assert_eq!((whole.requests, chunked.requests), (4, 60));
    assert_eq!(whole.devices, chunked.devices);
    assert_eq!(chunked.devices[0].episodes.len(), 3);
    assert_eq!((whole.devices_seen, whole.unknown_evaluations), (2, 1));
    // Chunks bounded by memory rather than by Prometheus: 50 points in
    // all, so 25 steps per request while both devices answer, and 50 for
    // the one after a chunk in which only Lobby did (Hall's gap at 20:00):
    // 60 + 25 × 112 + 50 > 2881 in 1 + 112 chunks, of 2 requests each.
    let tight = ReplayOptions { points_per_chunk: 50, ..ReplayOptions::default() };
    let bounded =
        replay::replay(&rules, job, prometheus.client(), range, tight, Vec::new()).await.unwrap();
    assert_eq!(bounded.requests, 2 * 113);
    assert_eq!(bounded.devices, whole.devices);
}

#[tokio::test]
async fn bad_ranges_are_refused_with_why() {
    let site = Site::new(&rules("http://127.0.0.1:9", "12h", ""));
    let cases: [(&[&str], &str); 6] = [
        (
            &["--replay", "0"],
            "jobctl: --replay 0: the history to replay must be longer than zero, e.g. 7d\n",
        ),
        (
            &["--replay", "7x"],
            "jobctl: --replay 7x: not a duration; write one such as 30s, 5m, 12h or 7d\n",
        ),
        (
            &["--from", "2026-11-01T00:00:00Z", "--to", "2026-11-01T01:00:00Z", "--step", "2h"],
            "jobctl: --step 2h is longer than the range (1h): shorten the step or widen the range\n",
        ),
        (
            &["--from", "2026-11-02T00:00:00Z", "--to", "2026-11-01T00:00:00Z"],
            "jobctl: the range is empty: it starts at 2026-11-02T00:00:00Z and ends at \
             2026-11-01T00:00:00Z; the start must come before the end\n",
        ),
        (
            &["--replay", "1h", "--step", "500ms"],
            "jobctl: --step 500ms: the step must be a whole number of seconds, at least 1s\n",
        ),
        (
            &["--from", "yesterday"],
            "jobctl: --from: invalid time \"yesterday\": write a duration back from now (\"2h\", \"7d\") \
             or a time like 2026-11-28T12:00:00Z\n",
        ),
    ];
    for (extra, stderr) in cases {
        let mut args = vec!["test-rule", "reboot frozen"];
        args.extend_from_slice(extra);
        let ran = site.jobctl(&args).await;
        assert_eq!(
            (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
            (2, "", stderr),
            "{args:?}"
        );
    }
    let ran = site.jobctl(&["test-rule", "reboot frozen", "--replay", "1d", "--send"]).await;
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("'--replay <DURATION>' cannot be used with '--send'"), "{ran:?}");
    let ran = site.jobctl(&["test-rule", "reboot frozen", "--step", "1m"]).await;
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("--replay <DURATION>|--from <TIME>"), "{ran:?}");
    assert_eq!(site.files(), Vec::<String>::new());
}

#[tokio::test]
async fn no_data_and_prometheus_errors_exit_6_with_a_clear_message() {
    if !TestPrometheus::available() {
        return;
    }
    let prometheus = prometheus_with_history().await;
    let site = Site::new(&rules(prometheus.url(), "12h", ""));
    let ran = site
        .jobctl(&[
            "test-rule",
            "reboot frozen",
            "--from",
            "2020-01-01T00:00:00Z",
            "--to",
            "2020-01-08T00:00:00Z",
        ])
        .await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
        (
            6,
            "",
            "jobctl: Prometheus has no data for \"addreality_device_online{platform_id=\\\"12\\\"}\" \
             between 2020-01-01T00:00:00Z and 2020-01-08T00:00:00Z: the range may be older than Prometheus \
             keeps data (its --storage.tsdb.retention.time, 15d by default) or the metric is not there; \
             nothing to replay\n"
        )
    );

    // A guard Prometheus refuses to evaluate (an invalid regular expression).
    let guard =
        "guards = [{ expr = 'label_replace(vector(1), \"a\", \"$1\", \"b\", \"(\")', on = [] }]\n";
    let site = Site::new(&(rules(prometheus.url(), "12h", "") + guard));
    let ran = site.jobctl(&DAY_ARGS).await;
    assert_eq!((ran.code, ran.stdout.as_str()), (6, ""), "{ran:?}");
    let url = prometheus.url();
    assert!(
        ran.stderr.eq(&format!(
            "jobctl: replaying \"label_replace(vector(1), \\\"a\\\", \\\"$1\\\", \\\"b\\\", \\\"(\\\")\": \
             Prometheus at {url}/api/v1/query_range refused the query (execution): invalid regular \
             expression in label_replace(): (\n"
        )),
        "{}",
        ran.stderr
    );

    let site = Site::new(&rules(&support::closed_url(), "12h", ""));
    let ran = site.jobctl(&DAY_ARGS).await;
    assert_eq!((ran.code, ran.stdout.as_str()), (6, ""), "{ran:?}");
    assert!(
        ran.stderr.starts_with(
            "jobctl: replaying \"addreality_device_online{platform_id=\\\"12\\\"}\": cannot reach Prometheus at "
        ),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("/api/v1/query_range"), "{}", ran.stderr);
    assert_eq!(site.files(), Vec::<String>::new());
}

/// Adds a silence to the site's journal through the path `jobctl silence
/// add` uses, as if added at `added` (a time of [`DAY`]) for `length`.
fn add_silence(site: &Site, device_id: &str, added: &str, length: Duration) -> i64 {
    use signage_watchdog::journal::{NewSilence, SilenceWriter};
    let clock = std::sync::Arc::new(signage_watchdog::clock::ManualClock::new(at(added)));
    let silence = SilenceWriter::open(&site.dir.path().join("journal.db"))
        .unwrap()
        .with_clock(clock)
        .add(&NewSilence {
            job: Some("reboot frozen".into()),
            socket: None,
            devices: [("device_id".to_string(), device_id.to_string())].into(),
            author: "anna".into(),
            comment: "lobby rewiring".into(),
            duration: length,
        })
        .unwrap();
    silence.id.0
}

/// The lines of Lobby's timeline (the first device's), without the header.
fn lobby(stdout: &str) -> String {
    let start = stdout.find("{platform_id=\"12\", device_id=\"30785\"} (Lobby)\n").unwrap();
    let end = stdout.find("\ntotals\n").unwrap();
    stdout[start..end].to_string()
}

#[tokio::test]
async fn silences_in_force_then_hold_the_replay_and_their_end_releases_it() {
    if !TestPrometheus::available() {
        return;
    }
    let prometheus = prometheus_with_history().await;
    let site = Site::new(&rules(prometheus.url(), "1h", ""));
    // #1 from 01:00 to 02:10: the first outage's action waits for its end.
    // #2 from 11:00 to 13:00: the third outage ends before it does.
    // #3 from 05:00 to 06:00 covers no outage, and #4, on the other
    // player, none of Lobby's.
    assert_eq!(
        add_silence(&site, "30785", "2026-11-01T01:00:00Z", Duration::from_secs(70 * 60)),
        1
    );
    assert_eq!(add_silence(&site, "30785", "2026-11-01T11:00:00Z", Duration::from_secs(7200)), 2);
    assert_eq!(add_silence(&site, "30785", "2026-11-01T05:00:00Z", Duration::from_secs(3600)), 3);
    assert_eq!(add_silence(&site, "30786", "2026-11-01T00:00:00Z", Duration::from_secs(86400)), 4);
    let journal = std::fs::read(site.dir.path().join("journal.db")).unwrap();
    let ran = site.jobctl(&DAY_ARGS).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    assert_eq!(
        lobby(&ran.stdout),
        r##"{platform_id="12", device_id="30785"} (Lobby)
  2026-11-01T02:00:30Z  condition true
  2026-11-01T02:05:30Z  fired (episode 1)
  2026-11-01T02:05:30Z  action held by silence #1 until 2026-11-01T02:10:00Z
  2026-11-01T02:10:00Z  would send "#12#0#1#1#" to socket lobby (+79991234567)
  2026-11-01T02:20:30Z  condition false after 20m: resolved
  2026-11-01T08:00:30Z  condition true
  2026-11-01T08:03:30Z  condition false after 3m: recovered on its own before `for` (5m)
  2026-11-01T12:00:30Z  condition true
  2026-11-01T12:05:30Z  fired (episode 2)
  2026-11-01T12:05:30Z  action held by silence #2 until 2026-11-01T13:00:00Z
  2026-11-01T12:30:30Z  condition false after 30m: resolved, nothing sent
"##
    );
    assert!(
        ran.stdout.contains("  messages:   1 would have left (socket lobby: 1);"),
        "{}",
        ran.stdout
    );
    assert_eq!(
        std::fs::read(site.dir.path().join("journal.db")).unwrap(),
        journal,
        "the journal is only read"
    );
}

/// [`rules`] with `verify` and `limit` on the job.
fn closed_loop_rules(prometheus: &str, verify: &str) -> String {
    rules(prometheus, "1h", "")
        + &format!(
            "verify = {{ within = \"{verify}\" }}\nlimit = {{ actions = 1, per = \"24h\" }}\n"
        )
}

#[tokio::test]
async fn verify_results_and_limits_are_replayed_as_the_daemon_decides_them() {
    if !TestPrometheus::available() {
        return;
    }
    let prometheus = prometheus_with_history().await;
    // Within 20m Lobby comes back (02:20:30, 15m after the action); the
    // third outage's action would be the second in 24h: given up.
    let site = Site::new(&closed_loop_rules(prometheus.url(), "20m"));
    let ran = site.jobctl(&DAY_ARGS).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    assert_eq!(
        lobby(&ran.stdout),
        r##"{platform_id="12", device_id="30785"} (Lobby)
  2026-11-01T02:00:30Z  condition true
  2026-11-01T02:05:30Z  fired (episode 1)
  2026-11-01T02:05:30Z  would send "#12#0#1#1#" to socket lobby (+79991234567)
  2026-11-01T02:20:30Z  recovered 15m after the action
  2026-11-01T02:20:30Z  condition false after 20m: resolved
  2026-11-01T08:00:30Z  condition true
  2026-11-01T08:03:30Z  condition false after 3m: recovered on its own before `for` (5m)
  2026-11-01T12:00:30Z  condition true
  2026-11-01T12:05:30Z  fired (episode 2)
  2026-11-01T12:05:30Z  gave up: limit reached: 1 actions on this device in the last 1day (limit 1 per 1day)
  2026-11-01T12:30:30Z  condition false after 30m: resolved, nothing sent
"##
    );
    assert!(
        ran.stdout.contains(
            "  messages:   1 would have left (socket lobby: 1); 0 suppressed by budgets\n\
             \x20 results:    1 recovered, 0 not recovered, 0 unverified, 1 gave up\n"
        ),
        "{}",
        ran.stdout
    );

    // Within 10m it does not: still offline at 02:15:30, the deadline.
    let site = Site::new(&closed_loop_rules(prometheus.url(), "10m"));
    let mut args = DAY_ARGS.to_vec();
    args.extend(["--format", "json"]);
    let ran = site.jobctl(&args).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let episodes = &json["devices"][0]["episodes"];
    assert_eq!(
        episodes[0]["messages"][0]["result"],
        serde_json::json!({ "at": "2026-11-01T02:15:30Z", "result": "not_recovered" })
    );
    assert_eq!(
        episodes[2]["gave_up"],
        serde_json::json!({
            "at": "2026-11-01T12:05:30Z",
            "reason": "limit reached: 1 actions on this device in the last 1day (limit 1 per 1day)",
        })
    );
    let totals = &json["totals"];
    assert_eq!(
        [&totals["recovered"], &totals["not_recovered"], &totals["unverified"], &totals["gave_up"]],
        [0, 1, 0, 1]
    );
}

#[tokio::test]
async fn two_players_of_one_socket_due_together_get_one_message() {
    if !TestPrometheus::available() {
        return;
    }
    let prometheus = prometheus_with_history().await;
    // Socket `lobby` powers both players, and the job fires on players
    // *online* for 5m: both are, from the first sample of the day.
    let socket =
        "[[sockets]]\nname = \"lobby\"\nphone = \"+7 999 123-45-67\"\nmodel = \"simpal-d210\"\n\
                  powers = [{ platform_id = \"12\", device_id = \"30785\" }, \
                  { platform_id = \"12\", device_id = \"30786\" }]\n\n";
    let body = rules_file::head(prometheus.url(), "30s", "5s", "journal.db")
        + "[sms]\nbackend = \"log\"\nprice = { per_message = 3.5, currency = \"RUB\" }\n\n"
        + socket
        + &rules_file::offline_job("reboot frozen", "12", Some("5m"), POWER_CYCLE_ACTION)
            .replace("value = 0", "value = 1")
        + "cooldown = \"12h\"\n";
    let site = Site::new(&body);
    let mut args = DAY_ARGS.to_vec();
    args[5] = "2026-11-01T00:30:00Z";
    let ran = site.jobctl(&args).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    let start = ran.stdout.find("\n{platform_id").unwrap();
    assert_eq!(
        &ran.stdout[start..],
        r##"
{platform_id="12", device_id="30785"} (Lobby)
  2026-11-01T00:00:30Z  condition true
  2026-11-01T00:05:30Z  fired (episode 1)
  2026-11-01T00:05:30Z  would send "#12#0#1#1#" to socket lobby (+79991234567), also for {platform_id="12", device_id="30786"}
  still true at the end of the range

{platform_id="12", device_id="30786"} (Hall)
  2026-11-01T00:00:30Z  condition true
  2026-11-01T00:05:30Z  fired (episode 1)
  2026-11-01T00:05:30Z  action rides along on the message for {platform_id="12", device_id="30785"} (one message per socket)
  still true at the end of the range

totals
  episodes:   2 (2 fired, 0 recovered on their own before `for`, 2 still open at the end)
  messages:   1 would have left (socket lobby: 1); 0 suppressed by budgets
  devices:    2 with an episode, of 2 seen
  unknown:    0 evaluations
  cost:       3.50 RUB (1 segment at 3.50 RUB)
"##
    );
}

#[tokio::test]
async fn an_action_a_budget_holds_stays_due_and_leaves_when_the_budget_allows() {
    if !TestPrometheus::available() {
        return;
    }
    let prometheus = prometheus_with_history().await;
    // The job acts on Hall, online all day, every 10m; its socket may get
    // 2 messages an hour. Lobby has no socket and the job is only_powered:
    // left out, as the daemon leaves it out.
    let body = rules_file::head(prometheus.url(), "30s", "5s", "journal.db")
        + "[budgets]\nsocket_per_hour = 2\n\n"
        + "[sms]\nbackend = \"log\"\n\n"
        + &rules_file::socket("hall", "+7 999 123-45-67", "simpal-d210", "12", "30786")
        + &rules_file::offline_job("reboot frozen", "12", Some("5m"), POWER_CYCLE_ACTION)
            .replace("value = 0", "value = 1")
        + "only_powered = true\nrepeat = { every = \"10m\", max = 5 }\n";
    let site = Site::new(&body);
    let mut args = DAY_ARGS.to_vec();
    args[5] = "2026-11-01T01:30:00Z";
    let ran = site.jobctl(&args).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    let start = ran.stdout.find("\n{platform_id").unwrap();
    // Repeat 2 waits for the 00:05:30 message to leave the hour; repeat 4
    // waits beyond the range. Each suppression is shown once.
    assert_eq!(
        &ran.stdout[start..],
        r##"
{platform_id="12", device_id="30786"} (Hall)
  2026-11-01T00:00:30Z  condition true
  2026-11-01T00:05:30Z  fired (episode 1)
  2026-11-01T00:05:30Z  would send "#12#0#1#1#" to socket hall (+79991234567)
  2026-11-01T00:15:30Z  would send "#12#0#1#1#" to socket hall (+79991234567) (repeat 1)
  2026-11-01T00:25:30Z  would send "#12#0#1#1#" to socket hall (+79991234567) (repeat 2), but suppressed: budget of 2 messages per socket per hour reached (socket hall: 2)
  2026-11-01T01:06:00Z  would send "#12#0#1#1#" to socket hall (+79991234567) (repeat 2)
  2026-11-01T01:16:00Z  would send "#12#0#1#1#" to socket hall (+79991234567) (repeat 3)
  2026-11-01T01:26:00Z  would send "#12#0#1#1#" to socket hall (+79991234567) (repeat 4), but suppressed: budget of 2 messages per socket per hour reached (socket hall: 2)
  still true at the end of the range

totals
  episodes:   1 (1 fired, 0 recovered on their own before `for`, 1 still open at the end)
  messages:   4 would have left (socket hall: 4); 2 suppressed by budgets
  devices:    1 with an episode, of 1 seen
  unknown:    0 evaluations
  cost:       unknown; set [sms] price = { per_message = …, currency = "…" }
"##
    );
}

#[tokio::test]
async fn a_socket_gets_no_other_first_action_within_the_cooldown_in_the_replay() {
    if !TestPrometheus::available() {
        return;
    }
    let prometheus = prometheus_with_history().await;
    // Both players of socket `lobby` fire at 00:05:30 (online for 5m), but
    // a silence holds Hall until 00:10: by then the socket got Lobby's
    // command, so Hall's waits for the job's 1h cooldown from it.
    let socket =
        "[[sockets]]\nname = \"lobby\"\nphone = \"+7 999 123-45-67\"\nmodel = \"simpal-d210\"\n\
                  powers = [{ platform_id = \"12\", device_id = \"30785\" }, \
                  { platform_id = \"12\", device_id = \"30786\" }]\n\n";
    let body = rules_file::head(prometheus.url(), "30s", "5s", "journal.db")
        + "[sms]\nbackend = \"log\"\n\n"
        + socket
        + &rules_file::offline_job("reboot frozen", "12", Some("5m"), POWER_CYCLE_ACTION)
            .replace("value = 0", "value = 1")
        + "cooldown = \"1h\"\n";
    let site = Site::new(&body);
    add_silence(&site, "30786", "2026-11-01T00:00:00Z", Duration::from_secs(600));
    let mut args = DAY_ARGS.to_vec();
    args[5] = "2026-11-01T01:30:00Z";
    let ran = site.jobctl(&args).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    let start = ran.stdout.find("\n{platform_id=\"12\", device_id=\"30786\"}").unwrap();
    let end = ran.stdout.find("\ntotals\n").unwrap();
    assert_eq!(
        &ran.stdout[start..end],
        r##"
{platform_id="12", device_id="30786"} (Hall)
  2026-11-01T00:00:30Z  condition true
  2026-11-01T00:05:30Z  fired (episode 1)
  2026-11-01T00:05:30Z  action held by silence #1 until 2026-11-01T00:10:00Z
  2026-11-01T00:10:00Z  action waits: socket lobby got a command from this job at 2026-11-01T00:05:30Z, within its cooldown (until 2026-11-01T01:05:30Z)
  2026-11-01T01:05:30Z  would send "#12#0#1#1#" to socket lobby (+79991234567)
  still true at the end of the range
"##
    );
    assert!(
        ran.stdout.contains("  messages:   2 would have left (socket lobby: 2);"),
        "{}",
        ran.stdout
    );
}

#[tokio::test]
async fn a_journal_that_cannot_be_read_for_its_silences_stops_the_replay_with_why() {
    let site = Site::new(&rules("http://127.0.0.1:9", "12h", ""));
    std::fs::write(site.dir.path().join("journal.db"), "not a journal\n").unwrap();
    let ran = site.jobctl(&DAY_ARGS).await;
    assert_eq!((ran.code, ran.stdout.as_str()), (4, ""), "{ran:?}");
    // Read before Prometheus is asked anything (it is not there).
    assert_eq!(
        ran.stderr,
        "jobctl: ./journal.db: not an SQLite database, so not a jobctl journal; it was left untouched \
         (move it away or set [journal] path to another file)\n"
    );
    assert_eq!(std::fs::read(site.dir.path().join("journal.db")).unwrap(), b"not a journal\n");
}
