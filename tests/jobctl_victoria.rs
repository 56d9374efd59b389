//! jobctl against VictoriaMetrics single-node, beside Prometheus on the
//! same data: the same daemon scenario sends the same SMS, `test-rule` and
//! the replay (`query_range`) print the same, and `check`, which has no
//! `/api/v1/format_query` to ask there, judges PromQL with jobctl's own
//! parser. Last, what no engine here can be made to send: an answer from
//! part of the data (VictoriaMetrics cluster's `isPartial`), from a fake
//! engine, leaves the device unknown and sends nothing.
//!
//! Both engines scrape one [`TestTarget`] (live tests) or hold one
//! history (the replay), so any difference is the engine's. Nothing
//! sleeps: the tests read the daemons' logs until a line appears and poll
//! the engines until they answer what the target serves.

mod support;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::fake_gateway::{FakeGateway, DEFAULT_KEY};
use support::process::{run_async as run, Ran};
use support::prometheus::{PrometheusOptions, TestPrometheus, TestTarget};
use support::rules_file::{self, POWER_CYCLE_1, POWER_CYCLE_ACTION};
use support::victoria::TestVictoria;
use support::wait::DEADLINE;
use support::write_secret;
use tokio::io::{AsyncBufReadExt, BufReader};

const JOBCTL: &str = env!("CARGO_BIN_EXE_jobctl");

/// The device every live scenario watches, as jobctl prints its key.
const DEVICE: &str = r#"{platform_id="12", device_id="30785"}"#;

/// Whether both engines are installed (skips, or fails under CI, if not).
fn engines_available() -> bool {
    TestPrometheus::available() && TestVictoria::available()
}

/// What the target serves: [`DEVICE`]'s `addreality_device_online`.
fn device_page(online: u8) -> String {
    format!(
        "# TYPE addreality_device_online gauge\naddreality_device_online{{platform_id=\"12\",device_id=\"30785\",name=\"Lobby\"}} {online}\n"
    )
}

/// One socket powering [`DEVICE`] and one job power-cycling it once it
/// has been offline for 1 s, evaluated every second, sent through the
/// gateway at `gateway`; `more` lines at the end of the job. The job's
/// `[[jobs]]` is on line 25.
fn rules(engine: &str, gateway: &str, more: &str) -> String {
    rules_file::head(engine, "1s", "1s", "journal.db")
        + &rules_file::gateway_sms(gateway, "")
        + &rules_file::socket("lobby", "+7 999 123-45-67", "simpal-d210", "12", "30785")
        + &rules_file::offline_job("reboot frozen", "12", Some("1s"), POWER_CYCLE_ACTION)
        + more
}

/// A directory where jobctl runs: `rules.toml`, `sms.key`, `journal.db`.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new(rules: &str) -> Site {
        let site = Site { dir: tempfile::tempdir().unwrap() };
        write_secret(&site.dir.path().join("sms.key"), &format!("{DEFAULT_KEY}\n"));
        site.write(rules);
        site
    }

    fn write(&self, rules: &str) {
        std::fs::write(self.dir.path().join("rules.toml"), rules).unwrap();
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        command_in(self.dir.path(), args)
    }

    async fn jobctl(&self, args: &[&str]) -> Ran {
        run(self.command(args)).await
    }
}

/// `jobctl --config rules.toml ARGS…` in `dir`, logging without timestamps
/// (as under systemd), killed if the test drops it.
fn command_in(dir: &Path, args: &[&str]) -> tokio::process::Command {
    let mut command = support::process::command(JOBCTL, dir);
    command.args(["--config", "rules.toml"]).args(args).env("JOURNAL_STREAM", "8:1");
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    command
}

/// `jobctl run` in the background, its log read line by line.
struct Daemon {
    child: tokio::process::Child,
    stderr: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    seen: Vec<String>,
}

impl Daemon {
    async fn start(site: &Site) -> Daemon {
        let mut command = site.command(&["run"]);
        command.stdout(Stdio::null());
        let mut child = command.spawn().expect("start jobctl run");
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut daemon = Daemon { child, stderr, seen: Vec::new() };
        daemon.wait_for("jobctl running: ").await;
        daemon
    }

    /// Reads log lines until one contains `needle`, and returns it.
    async fn wait_for(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(DEADLINE, async {
            while let Ok(Some(line)) = self.stderr.next_line().await {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("jobctl did not log {needle:?}; its log:\n{}", self.seen.join("\n")),
        }
    }

    /// SIGTERM; the exit code.
    async fn stop(mut self) -> i32 {
        support::process::signal(self.child.id().expect("jobctl is running"), "TERM");
        let status = tokio::time::timeout(DEADLINE, self.child.wait()).await.unwrap().unwrap();
        status.code().expect("exited, not killed")
    }
}

/// What `test-rule "reboot frozen"` prints while [`DEVICE`] is offline and
/// nothing was saved.
fn test_rule_report() -> String {
    format!(
        "job \"reboot frozen\"\n  \
         when addreality_device_online == 0 for 1s\n\
         \n\
         {DEVICE} (Lobby)\n  \
         value:      addreality_device_online{{platform_id=\"12\"}} = 0\n  \
         condition:  true\n  \
         state:      inactive (no saved state)\n  \
         would send: \"#12#0#1#1#\" to socket lobby (+79991234567)\n\
         \n\
         1 device, 1 with the condition true now\n"
    )
}

/// The Prometheus end-to-end scenario, on both engines at once: a daemon
/// per engine watches the player; it goes offline, each daemon sends one
/// power-cycle (the same SMS), and when it is back each resolves.
/// `test-rule` prints the same on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_gone_offline_gets_the_same_sms_through_either_engine() {
    if !engines_available() {
        return;
    }
    let target = TestTarget::start();
    target.set(device_page(1));
    let targets = [&target];
    let (prometheus, victoria) =
        tokio::join!(TestPrometheus::start(&targets), TestVictoria::start(&targets));
    let engines = [prometheus.url(), victoria.url()];
    let mut sites = Vec::new();
    let mut daemons = Vec::new();
    let mut gateways = Vec::new();
    for engine in engines {
        let gateway = FakeGateway::start().await;
        let site = Site::new(&rules(engine, &gateway.url(), ""));
        daemons.push(Daemon::start(&site).await);
        sites.push(site);
        gateways.push(gateway);
    }

    target.set(device_page(0));
    let offline = "addreality_device_online{device_id=\"30785\"} == 0";
    prometheus.wait_until_query(offline, |s| s.len() == 1, DEADLINE).await;
    victoria.wait_until_query(offline, |s| s.len() == 1, DEADLINE).await;
    // In a site of its own, with no state saved by a daemon.
    for engine in engines {
        let site = Site::new(&rules(engine, &support::closed_url(), ""));
        let ran = site.jobctl(&["test-rule", "reboot frozen"]).await;
        assert_eq!((ran.code, ran.stdout, ran.stderr.as_str()), (0, test_rule_report(), ""));
    }
    for daemon in &mut daemons {
        daemon.wait_for("sent via http (execution #1)").await;
    }
    target.set(device_page(1));
    for daemon in &mut daemons {
        daemon.wait_for(": firing → resolved after ").await;
    }
    for (gateway, engine) in gateways.iter().zip(engines) {
        let sent: Vec<(String, String)> =
            gateway.sent().into_iter().map(|sms| (sms.number, sms.text)).collect();
        assert_eq!(sent, [("+79991234567".to_string(), POWER_CYCLE_1.to_string())], "{engine}");
    }
    for (daemon, engine) in daemons.into_iter().zip(engines) {
        // Nothing failed on the way: no query (the onset's query_range
        // included), no send.
        let troubles: Vec<&String> =
            daemon.seen.iter().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
        assert!(troubles.is_empty(), "{engine}: {troubles:?}");
        assert_eq!(daemon.stop().await, 0);
    }
}

/// No `/api/v1/format_query` on VictoriaMetrics (it answers 400 "unsupported
/// path requested"): `check` judges each query with jobctl's PromQL parser
/// and still has the engine evaluate it, so both a syntax error and a
/// function VictoriaMetrics lacks are errors at the job's line; MetricsQL
/// that VictoriaMetrics would evaluate is not PromQL, and says so.
#[tokio::test]
async fn check_judges_promql_locally_against_victoriametrics() {
    if !TestVictoria::available() {
        return;
    }
    let victoria = TestVictoria::start(&[]).await;
    let url = format!("{}/", victoria.url());
    let job = |name: &str, expr: &str| {
        format!("\n[[jobs]]\nname = \"{name}\"\nexpr = {expr:?}\naction = {{ command = \"power_on\" }}\n")
    };
    let broken = rules(&url, "http://127.0.0.1:9", "")
        + &job("broken", "rate(up[5m]")
        + &job("metricsql", "rate(up) default 0")
        + &job("newer", "info(up)");
    let site = Site::new(&broken);
    let ran = site.jobctl(&["check"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr),
        (
            3,
            "",
            format!(
                "jobctl: rules.toml:33:1: job \"broken\": \"rate(up[5m]\" is not valid PromQL: unclosed left parenthesis\n\
                 jobctl: rules.toml:38:1: job \"metricsql\": \"rate(up) default 0\" is not valid PromQL: it does not parse; \
                 {url} evaluates it, but rules must be PromQL (not an engine's dialect), as `check --offline` before the daemon starts requires\n\
                 jobctl: rules.toml:43:1: job \"newer\": {url} rejects \"info(up)\": error when executing query=\"info(up)\" for (time=0, step=5000): unknown func \"info\"\n"
            )
        )
    );

    site.write(&rules(&url, "http://127.0.0.1:9", ""));
    let ran = site.jobctl(&["check"]).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{}", ran.stdout);
    assert_eq!(
        ran.stdout.lines().next().unwrap(),
        format!("rules.toml: OK: 1 job (1 enabled), 1 socket, 1 file; SMS via http; PromQL checked locally ({url} has no format_query)")
    );
}

/// Two hours of `addreality_device_online` for [`DEVICE`], one sample a
/// minute at ten past: offline 00:20–00:40 (fires after `for`) and
/// 01:00–01:03 (back before it), as OpenMetrics with timestamps.
fn history(start: i64) -> String {
    let mut text = String::from("# TYPE addreality_device_online gauge\n");
    for m in 0..120 {
        let down = (20..40).contains(&m) || (60..63).contains(&m);
        writeln!(
            text,
            "addreality_device_online{{platform_id=\"12\",device_id=\"30785\",name=\"Lobby\"}} {} {}",
            u8::from(!down),
            start + m * 60 + 10
        )
        .unwrap();
    }
    text.push_str("# EOF\n");
    text
}

/// The replay reads history with `query_range`: the same history loaded
/// into both engines replays to the same report, step for step.
#[tokio::test]
async fn a_replay_reads_the_same_history_alike_on_both_engines() {
    if !engines_available() {
        return;
    }
    let from: jiff::Timestamp = "2026-11-01T00:00:00Z".parse().unwrap();
    let history = history(from.as_second());
    let lookback = Duration::from_secs(300);
    let options = PrometheusOptions {
        lookback_delta: lookback,
        history: Some(history.clone()),
        ..PrometheusOptions::default()
    };
    let (prometheus, victoria) =
        tokio::join!(options.start(&[]), TestVictoria::start_with(&[], lookback));
    victoria.import(&history).await;
    let job = rules_file::offline_job("reboot frozen", "12", Some("5m"), POWER_CYCLE_ACTION);
    let mut reports = Vec::new();
    for engine in [prometheus.url(), victoria.url()] {
        let text = rules_file::head(engine, "30s", "5s", "journal.db")
            + "[sms]\nbackend = \"log\"\n\n"
            + &rules_file::socket("lobby", "+7 999 123-45-67", "simpal-d210", "12", "30785")
            + &job;
        let site = Site::new(&text);
        let ran = site
            .jobctl(&[
                "test-rule",
                "reboot frozen",
                "--from",
                "2026-11-01T00:00:00Z",
                "--to",
                "2026-11-01T02:00:00Z",
                "--step=30s",
            ])
            .await;
        assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{engine}: {}", ran.stdout);
        reports.push(ran.stdout);
    }
    assert_eq!(reports[0], reports[1], "Prometheus, then VictoriaMetrics");
    let episodes: Vec<&str> =
        reports[1].lines().filter(|line| line.starts_with("  2026-")).collect();
    assert_eq!(
        episodes,
        [
            "  2026-11-01T00:20:30Z  condition true",
            "  2026-11-01T00:25:30Z  fired (episode 1)",
            "  2026-11-01T00:25:30Z  would send \"#12#0#1#1#\" to socket lobby (+79991234567)",
            "  2026-11-01T00:40:30Z  condition false after 20m: resolved",
            "  2026-11-01T01:00:30Z  condition true",
            "  2026-11-01T01:03:30Z  condition false after 3m: recovered on its own before `for` (5m)",
        ],
        "{}",
        reports[1]
    );
}

/// An engine on loopback that answers every request with `body` (JSON,
/// HTTP 200), as VictoriaMetrics cluster does when a storage node is down.
async fn engine_answering(body: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The request fits in one read; its content is not needed.
                let _ = stream.read(&mut [0; 8192]).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    url
}

/// A partial answer shows the player offline, but what the missing part
/// holds is unknown: the query counts as failed (exit 6), the device is
/// unknown, nothing is sent, and the log says why. (The fake answers the
/// exporters' freshness query partially too: two queries fail.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_answer_is_a_failed_query_and_sends_nothing() {
    let engine = engine_answering(
        r#"{"status":"success","isPartial":true,"data":{"resultType":"vector","result":[{"metric":{"__name__":"addreality_device_online","platform_id":"12","device_id":"30785","name":"Lobby"},"value":[1796207549,"0"]}]}}"#,
    )
    .await;
    let gateway = FakeGateway::start().await;
    let site = Site::new(&rules(&engine, &gateway.url(), ""));
    let ran = site.jobctl(&["run", "--once"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr),
        (
            6,
            "2 queries (2 failed), 0 evaluations (0 unknown), 0 transitions, 0 actions due, 0 sent, 0 suppressed, 0 errors\n",
            format!(
                " WARN 2 of 2 Prometheus queries failed (first: \"addreality_device_online{{platform_id=\\\"12\\\"}}\": \
                 the engine at {engine}/api/v1/query answered from part of its data only (a store or storage node did not answer); \
                 the devices this query watches are unknown until it answers whole: check the engine's stores); \
                 devices that depend on them are unknown: nothing advances and nothing is sent until they answer\n"
            )
        )
    );
    assert!(gateway.received().is_empty());
}
