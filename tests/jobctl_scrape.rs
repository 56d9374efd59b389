//! jobctl with `[source] scrape` end to end, without Prometheus: the real
//! exporter polling the AddReality simulator and serving `/metrics` on
//! loopback, a second target whose page the test sets, the engine scraping
//! both every cycle, the HTTP sender talking to the fake SMS gateway, and
//! the journal in a real SQLite file.
//!
//! Time in the rules is a [`ManualClock`] the test moves; the exporter is
//! polled by the test (`poll_all_once`), and each cycle scrapes every
//! target once (the second target counts its scrapes), so nothing waits on
//! the wall clock.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use jiff::Timestamp;
use signage_watchdog::clock::ManualClock;
use signage_watchdog::engine::{CycleReport, Engine, EngineOptions, SendRetry};
use signage_watchdog::exporter::cache::Cache;
use signage_watchdog::exporter::config::{ExporterConfig, PlatformConfig};
use signage_watchdog::exporter::Exporter;
use signage_watchdog::journal::Journal;
use signage_watchdog::prometheus_api::scrape::ScrapeClient;
use signage_watchdog::rules::state::PhaseName;
use signage_watchdog::secret::{Secret, SecretSource};
use support::addreality::{device, SimulatedApi};
use support::fake_gateway::FakeGateway;
use support::logs::Logs;
use support::rules_file::{self, POWER_CYCLE_1, POWER_CYCLE_ACTION};
use tokio::net::TcpListener;

const TOKEN: &str = "t0ken-for-tests";
/// The socket that powers device 1 of platform 12.
const LOBBY: &str = "+79991234567";
/// The job of every scenario: device offline for 5 minutes, guarded by
/// the exporter reaching the platform.
const JOB: &str = "offline";

fn t0() -> Timestamp {
    "2026-11-28T09:00:00Z".parse().unwrap()
}

fn minutes(m: u64) -> Timestamp {
    t0() + jiff::SignedDuration::from_secs(i64::try_from(m * 60).unwrap())
}

/// The real exporter of platform 12, polled by the test and served on
/// loopback until dropped.
struct ServedExporter {
    api: SimulatedApi,
    exporter: Exporter,
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _cache: tempfile::TempDir,
}

impl ServedExporter {
    async fn start(devices: Vec<serde_json::Value>) -> ServedExporter {
        let api = SimulatedApi::start(TOKEN, devices).await;
        let cache = tempfile::tempdir().unwrap();
        let config = ExporterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            api_url: api.url.clone(),
            poll_interval: Duration::from_secs(60),
            request_timeout: Duration::from_secs(2),
            cache: cache.path().join("cache.db"),
            page_size: 300,
            max_page_bytes: 64 * 1024 * 1024,
            forget_after: Duration::from_secs(3600),
            platforms: vec![PlatformConfig {
                id: "12".into(),
                name: None,
                token: SecretSource::Env("unused".into()),
                token_at: "test".into(),
            }],
            base_dir: ".".into(),
            web_config_file: None,
        };
        let platforms = config.platforms.iter().cloned().map(|p| (p, Secret::new(TOKEN))).collect();
        let exporter =
            Exporter::start(&config, platforms, Cache::open(&config.cache).unwrap()).await.unwrap();
        assert!(exporter.poll_all_once().await.is_empty());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let pages: Arc<dyn signage_watchdog::http::Pages> = exporter.state();
        let served = tokio::spawn(signage_watchdog::http::serve(listener, pages, async {
            let _ = stopped.await;
        }));
        ServedExporter { api, exporter, url, stop: Some(stop), served: Some(served), _cache: cache }
    }

    /// Sets device `id`'s connection state and polls once, as the exporter's
    /// timer would.
    async fn set_online(&self, id: i64, online: bool) {
        let devices = [(1, "Лесная \"1\""), (2, "Lesnaia\\2")]
            .map(|(d, name)| device(d, name, if d == id { online } else { true }));
        self.api.simulator.set_devices(devices.to_vec());
        assert!(self.exporter.poll_all_once().await.is_empty());
    }

    /// Stops serving: the next scrape finds the port closed.
    async fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(served) = self.served.take() {
            served.await.unwrap().unwrap();
        }
    }
}

/// Two players of platform 12 as the API lists them (names the text
/// format must escape), both online unless said otherwise.
fn fleet(device_1_online: bool) -> Vec<serde_json::Value> {
    vec![device(1, "Лесная \"1\"", device_1_online), device(2, "Lesnaia\\2", true)]
}

/// A second scrape target: platform 13's player, a page the test sets (or
/// an HTTP status), and a count of the scrapes it answered.
struct PageTarget {
    url: String,
    page: Arc<Mutex<(u16, String)>>,
    scrapes: Arc<AtomicUsize>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl PageTarget {
    async fn start(page: &str) -> PageTarget {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        let page = Arc::new(Mutex::new((200, page.to_string())));
        let scrapes = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (shared, counted) = (page.clone(), scrapes.clone());
        let handler = move |_req| {
            let (status, body) = shared.lock().unwrap().clone();
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                hyper::Response::builder()
                    .status(status)
                    .header("content-type", "text/plain; version=0.0.4")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap()
            }
        };
        tokio::spawn(signage_watchdog::http::serve_with(listener, handler, async {
            let _ = stopped.await;
        }));
        PageTarget { url, page, scrapes, _stop: stop }
    }

    fn set(&self, status: u16, page: &str) {
        *self.page.lock().unwrap() = (status, page.to_string());
    }

    fn scrapes(&self) -> usize {
        self.scrapes.load(Ordering::SeqCst)
    }
}

const PLATFORM_13: &str = "addreality_platform_up{platform_id=\"13\"} 1\n\
                           addreality_device_online{platform_id=\"13\",device_id=\"5\"} 1\n";

/// The rules: `[source]` scraping `targets`, the journal in `dir`, the
/// gateway, the lobby socket, and the offline job with a 5-minute `for`
/// and a guard in the comparison form.
fn rules_text(dir: &tempfile::TempDir, targets: &[&str], gateway: &FakeGateway) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    let journal = dir.path().join("journal.db");
    format!(
        "[source]\nscrape = [{}]\ninterval = \"30s\"\ntimeout = \"2s\"\n\n[journal]\npath = {:?}\n\n",
        targets.join(", "),
        journal.display().to_string()
    ) + &rules_file::gateway_sms(&gateway.url(), "")
        + &rules_file::socket("lobby", LOBBY, "simpal-d210", "12", "1")
        + &rules_file::offline_job(JOB, "12", Some("5m"), POWER_CYCLE_ACTION)
        + "guards = [{ expr = \"addreality_platform_up == 1\", on = [\"platform_id\"] }]\n"
}

struct Scenario {
    dir: tempfile::TempDir,
    gateway: FakeGateway,
    clock: Arc<ManualClock>,
    engine: Engine,
}

impl Scenario {
    async fn start(targets: &[&str]) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let gateway = FakeGateway::start().await;
        support::write_secret(&dir.path().join("sms.key"), &format!("{}\n", gateway.key()));
        let text = rules_text(&dir, targets, &gateway);
        let rules = signage_watchdog::rules::parse(&text, dir.path().join("rules.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(
            matches!(rules.source, signage_watchdog::rules::SourceConfig::Scrape(_)),
            "the rules scrape"
        );
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

    fn phase(&self, device: &str) -> PhaseName {
        let key = format!("{{platform_id=\"12\", device_id=\"{device}\"}}");
        self.engine.state(JOB, &key).cloned().unwrap_or_default().phase.name()
    }

    fn sent(&self) -> Vec<(String, String)> {
        self.gateway.sent().into_iter().map(|sms| (sms.number, sms.text)).collect()
    }
}

#[tokio::test]
async fn a_device_offline_past_for_gets_exactly_one_sms() {
    let exporter = ServedExporter::start(fleet(true)).await;
    let other = PageTarget::start(PLATFORM_13).await;
    let mut scenario = Scenario::start(&[&exporter.url, &other.url]).await;

    let report = scenario.cycle_at(0).await;
    // The job's selector, its guard, and the exporters' freshness.
    assert_eq!((report.queries, report.failed_queries.len(), report.unknown), (3, 0, 0));
    assert_eq!(report.evaluations, 2, "platform 12's two players; 13's is not the job's");
    assert_eq!(scenario.phase("1"), PhaseName::Inactive);
    assert_eq!(other.scrapes(), 1, "one scrape of each target per cycle");

    exporter.set_online(1, false).await;
    scenario.cycle_at(1).await;
    assert_eq!(scenario.phase("1"), PhaseName::Pending);
    scenario.cycle_at(5).await;
    assert_eq!(scenario.phase("1"), PhaseName::Pending, "4 of the 5 minutes held");
    assert!(scenario.sent().is_empty());

    let report = scenario.cycle_at(6).await;
    assert_eq!((report.actions_due, report.sends_started), (1, 1));
    assert_eq!(scenario.phase("1"), PhaseName::Firing);
    for m in [7, 8, 30] {
        scenario.cycle_at(m).await;
    }
    assert_eq!(scenario.sent(), [(LOBBY.to_string(), POWER_CYCLE_1.to_string())]);
    assert_eq!(scenario.phase("2"), PhaseName::Inactive);
    assert_eq!(other.scrapes(), 7);

    // It comes back: the episode resolves, and the journal has the one SMS.
    exporter.set_online(1, true).await;
    scenario.cycle_at(31).await;
    assert_eq!(scenario.phase("1"), PhaseName::Resolved);
    let journal = Journal::open_read_only(&scenario.dir.path().join("journal.db")).unwrap();
    let history = journal.history(&Default::default()).unwrap();
    assert_eq!(history.len(), 1);
    let metrics = scenario.engine.metrics_text();
    for target in [&exporter.url, &other.url] {
        let line = format!("jobctl_source_up{{target=\"{target}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_target_that_stops_answering_gives_unknown_and_no_sms() {
    let (logs, _guard) = Logs::capture();
    let mut exporter = ServedExporter::start(fleet(false)).await;
    let other = PageTarget::start(PLATFORM_13).await;
    let mut scenario = Scenario::start(&[&exporter.url, &other.url]).await;

    scenario.cycle_at(0).await;
    assert_eq!(scenario.phase("1"), PhaseName::Pending);

    // The exporter goes away before `for` has elapsed: platform 12's
    // players are unknown, never true, and the other target still counts.
    exporter.stop().await;
    for m in [6, 7, 20] {
        let report = scenario.cycle_at(m).await;
        assert!(report.unknown >= 1, "device 1 unknown at {m}: {report:?}");
        assert!(report.failed_queries.is_empty(), "the other target answered: {report:?}");
        assert_eq!(scenario.phase("1"), PhaseName::Pending, "held, not fired, at {m}");
    }
    assert!(scenario.sent().is_empty());
    let log = logs.take();
    let said = format!("cannot reach {}", exporter.url);
    assert_eq!(log.matches(&said).count(), 1, "logged once, not every cycle:\n{log}");
    assert!(log.contains("the devices it serves are unknown"), "{log}");
    let metrics = scenario.engine.metrics_text();
    assert!(metrics.contains(&format!("jobctl_source_up{{target=\"{}\"}} 0", exporter.url)));
    assert!(metrics.contains(&format!("jobctl_source_up{{target=\"{}\"}} 1", other.url)));

    // A page that is not the text format counts as not answering, and the
    // message names the target and the line; when no target answers, every
    // query fails, as when Prometheus is down.
    other.set(200, "addreality_platform_up{platform_id=\"13\"} 1\nbroken{ 1\n");
    let report = scenario.cycle_at(21).await;
    assert_eq!(report.failed_queries.len(), 3, "{report:?}");
    assert!(scenario.sent().is_empty());
    let log = logs.take();
    let expected = format!(
        "{}: not the Prometheus text format: line 2: expected a label name or }}, found \"1\"",
        other.url
    );
    assert!(log.contains(&expected), "{expected}\nin:\n{log}");
    other.set(503, "");
    scenario.cycle_at(22).await;
    assert!(logs.take().contains(&format!("{} answered HTTP 503", other.url)));
    other.set(200, PLATFORM_13);
    scenario.cycle_at(23).await;
    assert!(logs
        .take()
        .contains(&format!("scrape target {} answers again (2 samples)", other.url)));
    assert_eq!(scenario.phase("1"), PhaseName::Pending);
    assert!(scenario.sent().is_empty());
}

#[tokio::test]
async fn check_refuses_promql_in_scrape_mode_and_scrapes_the_targets() {
    let exporter = ServedExporter::start(fleet(true)).await;
    let dir = tempfile::tempdir().unwrap();
    let head = format!(
        "[source]\nscrape = [\"{}\"]\n\n[sms]\nbackend = \"log\"\n\n[journal]\npath = \"journal.db\"\n\n",
        exporter.url
    );
    let socket = rules_file::socket("lobby", LOBBY, "simpal-d210", "12", "1");
    let rules = dir.path().join("rules.toml");
    let jobctl = |args: &'static [&'static str]| {
        let rules = rules.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobctl"))
                .args(args)
                .arg("--config")
                .arg(&rules)
                .output()
                .await
                .unwrap();
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (out.status.code(), text(&out.stdout), text(&out.stderr))
        }
    };
    let check = |text: String| {
        std::fs::write(&rules, text).unwrap();
        let rules = rules.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobctl"))
                .args(["check", "--config"])
                .arg(&rules)
                .output()
                .await
                .unwrap();
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (out.status.code(), text(&out.stdout), text(&out.stderr))
        }
    };

    let job = "[[jobs]]\nname = \"frozen\"\nexpr = \"changes(addreality_device_playing[10m]) == 0\"\naction = { command = \"power_cycle\", minutes = 1 }\n";
    let (code, _, stderr) = check(format!("{head}{socket}{job}")).await;
    assert_eq!(code, Some(3));
    assert_eq!(
        stderr,
        format!(
            "jobctl: {}:18:8: job \"frozen\": expr \"changes(addreality_device_playing[10m]) == 0\" is PromQL, which needs [prometheus]; [source] scrape answers only metric + op + value comparisons; read Prometheus with [prometheus] instead for PromQL\n",
            rules.display()
        )
    );

    let job = rules_file::offline_job("offline", "12", Some("5m"), POWER_CYCLE_ACTION);
    let (code, stdout, stderr) = check(format!("{head}{socket}{job}")).await;
    assert_eq!(code, Some(0), "{stderr}");
    // Player 2, found in the scrape, has no socket: said as with Prometheus.
    assert!(stderr.starts_with("jobctl: warning: job \"offline\": "), "{stderr}");
    assert!(stdout.contains("OK: 1 job (1 enabled)"), "{stdout}");
    assert!(stdout.contains("; 1 of 1 scrape target scraped (no PromQL: [source])\n"), "{stdout}");

    // The credentials are [prometheus]'s, and so are their errors.
    let secret = head.replace("]\n\n[sms]", "]\ntoken_file = \"scrape.token\"\n\n[sms]");
    let (code, _, stderr) = check(format!("{secret}{socket}{job}")).await;
    assert_eq!(code, Some(3));
    assert!(stderr.starts_with("jobctl: [source] "), "{stderr}");
    assert!(stderr.contains("scrape.token"), "{stderr}");
    std::fs::write(&rules, format!("{head}{socket}{job}")).unwrap();

    // test-rule and explain evaluate from one scrape; --replay needs
    // Prometheus's history.
    exporter.set_online(1, false).await;
    let (code, stdout, stderr) = jobctl(&["test-rule", "offline"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("device_id=\"1\""), "{stdout}");
    assert!(stdout.contains("true"), "{stdout}");
    const ARGS: &[&str] =
        &["explain", "offline", "--device", "platform_id=12", "--device", "device_id=1"];
    let (code, stdout, stderr) = jobctl(ARGS).await;
    assert_eq!(code, Some(0), "{stderr}");
    // The player's name came through the exporter's escaping and back.
    assert!(stdout.contains("device_id=\"1\"} (Лесная \"1\")"), "{stdout}");
    assert!(stdout.contains("addreality_device_online == 0: value 0: true"), "{stdout}");
    assert!(stdout.contains("reason: waiting for `for`"), "{stdout}");
    let (code, _, stderr) = jobctl(&["test-rule", "offline", "--replay", "1h"]).await;
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        "jobctl: --replay reads Prometheus's history, and these rules scrape the exporters directly ([source]), which keeps none; replay with rules that have [prometheus]\n"
    );
}

#[tokio::test]
async fn gzip_pages_are_read_and_a_bad_gzip_names_its_target() {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(PLATFORM_13.as_bytes()).unwrap();
    let gzipped = encoder.finish().unwrap();
    let bodies = Arc::new(Mutex::new(gzipped.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shared = bodies.clone();
    let handler = move |req: hyper::Request<hyper::body::Incoming>| {
        let asked = req.headers().get("accept-encoding").cloned();
        let body = shared.lock().unwrap().clone();
        async move {
            assert_eq!(asked.as_ref().map(|v| v.to_str().unwrap()), Some("gzip"));
            hyper::Response::builder()
                .header("content-encoding", "gzip")
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        }
    };
    tokio::spawn(signage_watchdog::http::serve_with(listener, handler, async {
        let _ = stopped.await;
    }));
    let target: reqwest::Url = url.parse().unwrap();
    let client = ScrapeClient::new(&[target], Duration::from_secs(2), None).unwrap();

    let scraped = client.scrape().await;
    assert_eq!(scraped.targets[0].result, Ok(2));
    assert_eq!(scraped.series("addreality_device_online")[0].value, 1.0);

    *bodies.lock().unwrap() = gzipped[..gzipped.len() / 2].to_vec();
    let scraped = client.scrape().await;
    let err = scraped.targets[0].result.clone().unwrap_err().to_string();
    assert!(err.starts_with(&format!("{url}: the gzip body does not decode: ")), "{err}");
    assert!(!scraped.answered());
    drop(stop);
}
