//! A real Prometheus for integration tests, and targets whose metrics the
//! test controls.
//!
//! jobctl acts on what Prometheus answers, with its staleness, lookback and
//! error behaviour, so its tests run Debian's `prometheus` rather than a mock:
//! [`TestPrometheus`] starts one on a loopback port with a short scrape
//! interval, scraping [`TestTarget`]s that serve whatever text the test sets.
//! Tests never sleep for Prometheus: [`TestTarget::wait_scrapes`] waits on a
//! notification, and [`TestPrometheus::wait_until_query`] polls the query API
//! until Prometheus has ingested what the test expects. It can also evaluate
//! alerting rules and send the alerts to an Alertmanager
//! ([`PrometheusOptions::rules`], [`PrometheusOptions::alertmanager`]), as
//! the reaction bench's stack does.
//!
//! Targets serve from a thread of their own, so a test that blocks its
//! runtime (waiting on a child process, say) does not make scrapes fail.
//! Prometheus is killed when its [`TestPrometheus`] is dropped, including
//! when the test panics.
//!
//! Without the binary (`/usr/bin/prometheus`, or `SIGNAGE_TEST_PROMETHEUS`)
//! tests skip with a message; when the `CI` environment variable is set they
//! fail instead, so a broken CI install cannot pass unnoticed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use signage_watchdog::prometheus_api::{PromClient, Sample};
use tokio::sync::{oneshot, watch};

use super::wait::{poll_for_async, wait_ready, DEADLINE};

/// The Prometheus binary used unless `SIGNAGE_TEST_PROMETHEUS` names another.
pub(crate) const DEFAULT_PROMETHEUS: &str = "/usr/bin/prometheus";

/// Where [`PrometheusOptions::rules`] are written, next to the configuration.
const RULES_FILE: &str = "rules.yml";

/// An HTTP server on `127.0.0.1` serving `/metrics` with text the test sets.
pub(crate) struct TestTarget {
    addr: SocketAddr,
    job: String,
    shared: Arc<TargetShared>,
    scrapes: watch::Receiver<u64>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

struct TargetShared {
    body: Mutex<Bytes>,
    failing: AtomicBool,
    scrapes: watch::Sender<u64>,
}

impl TestTarget {
    /// Starts a target in scrape job `test`, serving an empty page.
    pub(crate) fn start() -> TestTarget {
        TestTarget::with_job("test")
    }

    /// Starts a target that Prometheus scrapes under job name `job`, so that
    /// `up{job="…"}` distinguishes several targets.
    pub(crate) fn with_job(job: &str) -> TestTarget {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.set_nonblocking(true).expect("make the listener non-blocking");
        let addr = listener.local_addr().expect("local address of the listener");
        let (scrapes_tx, scrapes) = watch::channel(0);
        let shared = Arc::new(TargetShared {
            body: Mutex::new(Bytes::new()),
            failing: AtomicBool::new(false),
            scrapes: scrapes_tx,
        });
        let (shutdown, stopped) = oneshot::channel();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-target-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build the target's runtime");
                runtime.block_on(serve_target(listener, serving, stopped));
            })
            .expect("spawn the target's thread");
        TestTarget {
            addr,
            job: job.to_string(),
            shared,
            scrapes,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Replaces the exposition text served from the next scrape on.
    pub(crate) fn set(&self, text: impl Into<String>) {
        *self.shared.body.lock().unwrap() = Bytes::from(text.into());
    }

    /// Makes scrapes fail with HTTP 503 (Prometheus then reports `up == 0`
    /// and marks the target's series stale), or succeed again.
    pub(crate) fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// How many times `/metrics` has been requested so far.
    pub(crate) fn scrapes(&self) -> u64 {
        *self.scrapes.borrow()
    }

    /// Waits until `n` more scrapes have read the page after this call, so
    /// that they served whatever was [`set`](TestTarget::set) before it.
    /// Prometheus ingests a scrape a moment after reading it: to wait for
    /// data to be queryable, use [`TestPrometheus::wait_until_query`].
    pub(crate) async fn wait_scrapes(&self, n: u64) {
        let mut scrapes = self.scrapes.clone();
        let start = *scrapes.borrow_and_update();
        let wanted = start + n;
        let waited = tokio::time::timeout(DEADLINE, scrapes.wait_for(|count| *count >= wanted));
        if waited.await.is_err() {
            panic!(
                "target {} was scraped {} times in {DEADLINE:?}, expected {n}; is a Prometheus scraping it?",
                self.instance(),
                self.scrapes() - start
            );
        }
    }

    /// The `instance` label Prometheus gives this target's series.
    pub(crate) fn instance(&self) -> String {
        self.addr.to_string()
    }

    /// The `job` label Prometheus gives this target's series.
    pub(crate) fn job(&self) -> &str {
        &self.job
    }
}

impl Drop for TestTarget {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve_target(
    listener: StdTcpListener,
    shared: Arc<TargetShared>,
    stopped: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("register the listener");
    let handler = move |request| {
        let shared = shared.clone();
        async move { target_response(&shared, &request) }
    };
    let _ = signage_watchdog::http::serve_with(listener, handler, async move {
        let _ = stopped.await;
    })
    .await;
}

fn target_response<B>(shared: &TargetShared, request: &hyper::Request<B>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, Bytes::from_static(b"only /metrics here\n"));
    }
    // Read the page before counting, so that a waiter woken by the count
    // knows this scrape saw everything set before it started waiting.
    let failing = shared.failing.load(Ordering::SeqCst);
    let body = shared.body.lock().unwrap().clone();
    shared.scrapes.send_modify(|count| *count += 1);
    if failing {
        plain(StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"failing on purpose\n"))
    } else {
        plain(StatusCode::OK, body)
    }
}

fn plain(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Settings of a [`TestPrometheus`]; [`TestPrometheus::start`] uses the defaults.
#[derive(Debug, Clone)]
pub(crate) struct PrometheusOptions {
    /// Scrape and rule-evaluation interval. Default 100 ms: a change on a
    /// target is queryable a fraction of a second later.
    pub scrape_interval: Duration,
    /// `--query.lookback-delta`: how long a series stays visible after its
    /// last sample when no staleness marker ends it (Prometheus was stopped,
    /// say). Default 5 s, against Prometheus's 5 minutes.
    pub lookback_delta: Duration,
    /// History to load before Prometheus starts: an OpenMetrics text with
    /// timestamps (Unix seconds), written into blocks of its data directory
    /// by `promtool tsdb create-blocks-from openmetrics`. Default none.
    ///
    /// Blocks from any past date load: Prometheus's time retention counts
    /// back from the newest block, not from the wall clock (and the
    /// retention is set to 100 years anyway). The text must end with
    /// `# EOF`; a series' samples must be in time order.
    pub history: Option<String>,
    /// A rules file (YAML, alerting or recording rules) for Prometheus to
    /// evaluate every `scrape_interval`. Default none.
    pub rules: Option<String>,
    /// The `host:port` of an Alertmanager that Prometheus sends its alerts
    /// to. Default none.
    pub alertmanager: Option<String>,
    /// More scrape jobs, as YAML list items indented to sit under
    /// `scrape_configs:` (`  - job_name: …`), for targets that are not a
    /// [`TestTarget`] (a daemon over TLS, say). Default none.
    pub scrape_configs: Option<String>,
}

impl Default for PrometheusOptions {
    fn default() -> Self {
        PrometheusOptions {
            scrape_interval: Duration::from_millis(100),
            lookback_delta: Duration::from_secs(5),
            history: None,
            rules: None,
            alertmanager: None,
            scrape_configs: None,
        }
    }
}

impl PrometheusOptions {
    /// Starts Prometheus with these settings, scraping `targets`.
    pub(crate) async fn start(self, targets: &[&TestTarget]) -> TestPrometheus {
        let dir = tempfile::Builder::new()
            .prefix("test-prometheus-")
            .tempdir()
            .expect("create a temporary directory for Prometheus");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, self.config(targets)).expect("write prometheus.yml");
        let instances: Vec<String> = targets.iter().map(|t| t.instance()).collect();
        if let Some(history) = &self.history {
            backfill(dir.path(), history);
        }
        if let Some(rules) = &self.rules {
            std::fs::write(dir.path().join(RULES_FILE), rules).expect("write the rules file");
        }
        let mut prometheus = TestPrometheus {
            options: self,
            binary: prometheus_binary(),
            data: dir.path().join("data"),
            log: dir.path().join("prometheus.log"),
            config: config_path,
            dir,
            port: 0,
            url: String::new(),
            child: None,
            client: None,
            startup: Duration::ZERO,
            first_scrapes: Duration::ZERO,
        };
        prometheus.launch(true).await;
        let began = Instant::now();
        for instance in instances {
            let expr = format!("up{{instance='{instance}'}}");
            prometheus.wait_until_query(&expr, |samples| !samples.is_empty(), DEADLINE).await;
        }
        prometheus.first_scrapes = began.elapsed();
        prometheus
    }

    fn config(&self, targets: &[&TestTarget]) -> String {
        let interval = format!("{}ms", self.scrape_interval.as_millis());
        let mut jobs: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for target in targets {
            jobs.entry(target.job()).or_default().push(target.instance());
        }
        let mut config = format!(
            "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\n\
             scrape_configs:\n"
        );
        if jobs.is_empty() && self.scrape_configs.is_none() {
            config.push_str("  []\n");
        }
        for (job, instances) in jobs {
            let instances: Vec<String> = instances.iter().map(|i| format!("'{i}'")).collect();
            // honor_labels: a test's own `job` or `instance` labels are kept
            // as written, as they are for a federating exporter.
            writeln!(
                config,
                "  - job_name: '{job}'\n    honor_labels: true\n    static_configs:\n      - targets: [{}]",
                instances.join(", ")
            )
            .unwrap();
        }
        if let Some(extra) = &self.scrape_configs {
            config.push_str(extra);
        }
        if self.rules.is_some() {
            writeln!(config, "rule_files: ['{RULES_FILE}']").unwrap();
        }
        if let Some(alertmanager) = &self.alertmanager {
            writeln!(
                config,
                "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{alertmanager}']"
            )
            .unwrap();
        }
        config
    }
}

/// A Prometheus server on a loopback port, killed when dropped.
pub(crate) struct TestPrometheus {
    options: PrometheusOptions,
    binary: PathBuf,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    /// Holds the configuration, data and log; removed on drop, after the
    /// process is killed.
    dir: tempfile::TempDir,
    port: u16,
    url: String,
    child: Option<Child>,
    client: Option<PromClient>,
    startup: Duration,
    first_scrapes: Duration,
}

impl TestPrometheus {
    /// Whether the Prometheus binary is installed. When it is not, prints why
    /// the calling test is skipped and returns false; under CI (the `CI`
    /// environment variable is set) panics instead.
    pub(crate) fn available() -> bool {
        let binary = prometheus_binary();
        super::installed(
            binary.is_file(),
            &format!(
                "{} not found; install Debian's prometheus package or set SIGNAGE_TEST_PROMETHEUS to its path",
                binary.display()
            ),
        )
    }

    /// Starts Prometheus with default [`PrometheusOptions`], scraping
    /// `targets`, and returns once it answers queries and has scraped every
    /// target once (each has an `up` series, 1 or 0).
    ///
    /// Prometheus 2.42 hands new targets to its scrapers on a fixed 5 s tick,
    /// so a start with targets takes about 5 s; without targets it takes a
    /// tenth of that. Several scenarios can share one Prometheus by giving
    /// each its own target (or job).
    pub(crate) async fn start(targets: &[&TestTarget]) -> TestPrometheus {
        PrometheusOptions::default().start(targets).await
    }

    /// Base URL, e.g. `http://127.0.0.1:40123`. It stays the same across
    /// [`restart`](TestPrometheus::restart).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// A client of this Prometheus (5 s timeout, no authentication).
    pub(crate) fn client(&self) -> &PromClient {
        self.client.as_ref().expect("the client exists once Prometheus started")
    }

    /// How long the last start or restart took until `/-/ready` answered 200.
    pub(crate) fn startup_time(&self) -> Duration {
        self.startup
    }

    /// How long [`start`](TestPrometheus::start) then waited for the first
    /// scrape of every target.
    pub(crate) fn first_scrapes_time(&self) -> Duration {
        self.first_scrapes
    }

    /// Kills Prometheus (SIGKILL, as a crash or an OOM kill would). Its
    /// data stays for [`restart`](TestPrometheus::restart).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Prometheus again on the same port with the same data, and
    /// returns once it answers queries (what it stored before is there).
    /// Scraping resumes about 5 s later, as after any start; use
    /// [`wait_up`](TestPrometheus::wait_up) to wait for it. Stops it first
    /// if it is running.
    pub(crate) async fn restart(&mut self) {
        self.stop();
        self.launch(false).await;
    }

    /// Serves `page` (exposition lines of `addreality_*` series) on
    /// `target` and waits until Prometheus answers exactly it: the same
    /// series, each with the page's value, and no other.
    pub(crate) async fn publish(&self, target: &TestTarget, page: &str) {
        target.set(page.to_string());
        let mut expected: Vec<&str> =
            (page.lines()).filter(|line| !line.is_empty() && !line.starts_with('#')).collect();
        expected.sort_unstable();
        let query = format!("{{instance=\"{}\",__name__=~\"addreality_.+\"}}", target.instance());
        let answered = |samples: &[Sample]| {
            let mut lines: Vec<String> = samples.iter().map(page_line).collect();
            lines.sort_unstable();
            lines == expected
        };
        self.wait_until_query(&query, answered, DEADLINE).await;
    }

    /// Polls `expr` until `predicate` holds for its answer and returns that
    /// answer; panics after `deadline` with the last answer or error and
    /// what Prometheus says about its targets.
    pub(crate) async fn wait_until_query(
        &self,
        expr: &str,
        predicate: impl Fn(&[Sample]) -> bool,
        deadline: Duration,
    ) -> Vec<Sample> {
        match query_until(self.client(), expr, predicate, deadline).await {
            Ok(samples) => samples,
            Err(last) => panic!(
                "`{expr}` did not reach the expected answer within {deadline:?}; last answer: {}\n\
                 targets: {}\nPrometheus log (last lines):\n{}",
                last,
                self.target_health().await,
                self.log_tail(20)
            ),
        }
    }

    /// Waits until Prometheus's last scrape of `target` succeeded
    /// (`up == 1`): after [`TestTarget::set_failing`]`(false)` or a restart.
    pub(crate) async fn wait_up(&self, target: &TestTarget) {
        let expr = format!("up{{instance='{}'}} == 1", target.instance());
        self.wait_until_query(&expr, |samples| !samples.is_empty(), DEADLINE).await;
    }

    /// The last `lines` lines of Prometheus's log, for failure messages.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        super::process::log_tail(&self.log, lines)
    }

    /// Each target's health and last scrape error, from `/api/v1/targets`.
    async fn target_health(&self) -> String {
        let answer = async {
            let body: serde_json::Value = reqwest::Client::new()
                .get(format!("{}/api/v1/targets", self.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await?
                .json()
                .await?;
            Ok::<_, reqwest::Error>(body)
        };
        match answer.await {
            Ok(body) => body["data"]["activeTargets"].as_array().map_or_else(
                || body.to_string(),
                |targets| {
                    targets
                        .iter()
                        .map(|t| format!("{} {} {}", t["scrapeUrl"], t["health"], t["lastError"]))
                        .collect::<Vec<_>>()
                        .join("; ")
                },
            ),
            Err(err) => format!("unknown ({err})"),
        }
    }

    /// Starts the process and waits for `/-/ready`. On the first start a
    /// fresh port is picked, and picked again if another process took it
    /// between the probe and Prometheus's bind; a restart keeps its port.
    async fn launch(&mut self, first: bool) {
        let attempts = if first { 3 } else { 1 };
        for attempt in 1..=attempts {
            if first {
                self.port = super::unused_addr().port();
                self.url = format!("http://127.0.0.1:{}", self.port);
                self.client = Some(
                    PromClient::new(&self.url, Duration::from_secs(5), None)
                        .expect("a loopback URL is valid"),
                );
            }
            let began = Instant::now();
            let child = self.spawn();
            self.child = Some(child);
            match self.wait_ready().await {
                Ok(()) => {
                    self.startup = began.elapsed();
                    return;
                }
                Err(exited) => {
                    self.stop();
                    let log = self.log_tail(20);
                    let port_taken = log.contains("address already in use");
                    if !(port_taken && attempt < attempts) {
                        panic!(
                            "Prometheus ({}) {exited} on 127.0.0.1:{}; its log ends:\n{log}",
                            self.binary.display(),
                            self.port
                        );
                    }
                }
            }
        }
    }

    fn spawn(&self) -> Child {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the Prometheus log file");
        let arg = |name: &str, value: &dyn std::fmt::Display| format!("--{name}={value}");
        Command::new(&self.binary)
            .arg(arg("config.file", &self.config.display()))
            .arg(arg("storage.tsdb.path", &self.data.display()))
            .arg(arg("web.listen-address", &format!("127.0.0.1:{}", self.port)))
            .arg(arg("storage.tsdb.retention.time", &"100y"))
            .arg(arg(
                "query.lookback-delta",
                &format!("{}ms", self.options.lookback_delta.as_millis()),
            ))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicate the log file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", self.binary.display()))
    }

    /// Polls `/-/ready` until it answers 200; fails early if the process exits.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let child = self.child.as_mut().expect("Prometheus was just spawned");
        wait_ready(child, &format!("{}/-/ready", self.url)).await
    }
}

impl Drop for TestPrometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `history` (OpenMetrics with timestamps) into blocks of the data
/// directory under `dir`, with the `promtool` next to the Prometheus binary.
fn backfill(dir: &std::path::Path, history: &str) {
    let input = dir.join("history.om");
    std::fs::write(&input, history).expect("write the history file");
    let promtool = prometheus_binary().with_file_name("promtool");
    let output = Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(dir.join("data"))
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", promtool.display()));
    assert!(
        output.status.success(),
        "promtool could not load the history: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn prometheus_binary() -> PathBuf {
    std::env::var_os("SIGNAGE_TEST_PROMETHEUS")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_PROMETHEUS), PathBuf::from)
}

/// A sample written back as its page line, without the labels Prometheus
/// adds (`instance`, `job`).
fn page_line(sample: &Sample) -> String {
    let mut labels = sample.labels.clone();
    let metric = labels.remove("__name__").unwrap_or_default();
    labels.remove("instance");
    labels.remove("job");
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{metric}{{{}}} {}", labels.join(","), sample.value)
}

/// Queries `expr` through `client` (Prometheus or any engine of its API)
/// until `predicate` holds for the answer, for at most `deadline`: that
/// answer, or the last answer (or error) as text.
pub(crate) async fn query_until(
    client: &PromClient,
    expr: &str,
    predicate: impl Fn(&[Sample]) -> bool,
    deadline: Duration,
) -> Result<Vec<Sample>, String> {
    let last = RefCell::new(String::new());
    let answered = poll_for_async(deadline, || async {
        match client.query(expr).await {
            Ok(samples) if predicate(&samples) => Some(samples),
            Ok(samples) => {
                *last.borrow_mut() = format!("{samples:?}");
                None
            }
            Err(err) => {
                *last.borrow_mut() = err.to_string();
                None
            }
        }
    });
    answered.await.ok_or_else(|| last.into_inner())
}
