//! A real VictoriaMetrics single-node for integration tests.
//!
//! jobctl speaks the Prometheus HTTP API to any engine that serves it; this
//! is the second engine its tests run for real (Debian's
//! `victoria-metrics`, 1.79), scraping the same [`TestTarget`]s as
//! [`super::prometheus::TestPrometheus`] with VictoriaMetrics's
//! Prometheus-compatible scrape configuration.
//!
//! Out of the box VictoriaMetrics hides the last 30 s from queries
//! (`-search.latencyOffset`, for samples still arriving) and caches range
//! answers (aligning a range's start and end on its step); both are turned
//! off here so that a fresh sample is queryable as soon as it is stored and
//! a range is answered for exactly the times asked, as Prometheus does.
//! Samples become queryable a moment after they are stored (at most about
//! a second, when its in-memory buffer is flushed): tests never sleep for
//! that, [`TestVictoria::wait_until_query`] polls. History loaded with
//! [`TestVictoria::import`] is flushed at once (`/internal/force_flush`).
//! Staleness is Prometheus's: the scraper writes staleness markers when a
//! series disappears or a scrape fails, and without a marker a series stays
//! visible for a lookback, which VictoriaMetrics derives from the series'
//! own sample interval unless `-search.maxLookback` sets it: set here as
//! Prometheus's `--query.lookback-delta` is in these tests (5 s, or what
//! the test asks), so that both engines answer alike.
//!
//! Without the binary (`/usr/bin/victoria-metrics`, or
//! `SIGNAGE_TEST_VICTORIA`) tests skip with a message; when the `CI`
//! environment variable is set they fail instead. The process is killed
//! when its [`TestVictoria`] is dropped, including when the test panics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use signage_watchdog::prometheus_api::{PromClient, Sample};

use super::prometheus::{query_until, TestTarget};
use super::wait::{wait_ready, DEADLINE};

/// The binary used unless `SIGNAGE_TEST_VICTORIA` names another.
pub(crate) const DEFAULT_VICTORIA: &str = "/usr/bin/victoria-metrics";

/// Scrape interval: a change on a target is queryable a fraction of a
/// second later.
const SCRAPE_INTERVAL: Duration = Duration::from_millis(100);

/// VictoriaMetrics single-node on a loopback port, killed when dropped.
pub(crate) struct TestVictoria {
    child: Option<Child>,
    url: String,
    client: PromClient,
    log: PathBuf,
    /// Holds the scrape configuration, data and log; removed on drop,
    /// after the process is killed.
    _dir: tempfile::TempDir,
}

impl TestVictoria {
    /// Whether the binary is installed. When it is not, prints why the
    /// calling test is skipped and returns false; under CI panics instead.
    pub(crate) fn available() -> bool {
        let binary = victoria_binary();
        super::installed(
            binary.is_file(),
            &format!(
                "{} not found; install Debian's victoria-metrics package or set SIGNAGE_TEST_VICTORIA to its path",
                binary.display()
            ),
        )
    }

    /// Starts VictoriaMetrics scraping `targets` every 100 ms, with a 5 s
    /// lookback (as [`TestPrometheus`] has), and returns once it answers
    /// queries and has scraped every target once (each has an `up` series).
    ///
    /// [`TestPrometheus`]: super::prometheus::TestPrometheus
    pub(crate) async fn start(targets: &[&TestTarget]) -> TestVictoria {
        TestVictoria::start_with(targets, Duration::from_secs(5)).await
    }

    /// [`TestVictoria::start`] with another lookback (`-search.maxLookback`,
    /// Prometheus's `--query.lookback-delta`): how long a series stays
    /// visible after its last sample when no staleness marker ends it.
    pub(crate) async fn start_with(targets: &[&TestTarget], lookback: Duration) -> TestVictoria {
        let dir = tempfile::Builder::new()
            .prefix("test-victoria-")
            .tempdir()
            .expect("create a temporary directory for VictoriaMetrics");
        let config = dir.path().join("scrape.yml");
        std::fs::write(&config, scrape_config(targets)).expect("write scrape.yml");
        let log = dir.path().join("victoria-metrics.log");
        let binary = victoria_binary();
        // A port taken between the probe and the bind is picked again.
        for attempt in 1..=3 {
            let port = super::unused_addr().port();
            let url = format!("http://127.0.0.1:{port}");
            let mut child = spawn(&binary, dir.path(), &config, &log, port, lookback);
            match wait_ready(&mut child, &format!("{url}/health")).await {
                Ok(()) => {
                    let client = PromClient::new(&url, Duration::from_secs(5), None)
                        .expect("a loopback URL is valid");
                    let victoria = TestVictoria { child: Some(child), url, client, log, _dir: dir };
                    for target in targets {
                        let expr = format!("up{{instance='{}'}}", target.instance());
                        victoria.wait_until_query(&expr, |s| !s.is_empty(), DEADLINE).await;
                    }
                    return victoria;
                }
                Err(exited) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let tail = super::process::log_tail(&log, 20);
                    if !(tail.contains("address already in use") && attempt < 3) {
                        panic!(
                            "VictoriaMetrics ({}) {exited} on 127.0.0.1:{port}; its log ends:\n{tail}",
                            binary.display()
                        );
                    }
                }
            }
        }
        unreachable!("the loop returns or panics on its last attempt")
    }

    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// A client of this VictoriaMetrics (5 s timeout, no authentication).
    pub(crate) fn client(&self) -> &PromClient {
        &self.client
    }

    /// Loads `history`, OpenMetrics with timestamps in Unix seconds as
    /// [`super::prometheus::PrometheusOptions::history`] takes it, through
    /// `/api/v1/import/prometheus`, and makes it queryable at once.
    pub(crate) async fn import(&self, history: &str) {
        let mut text = String::new();
        for line in history.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (sample, seconds) = line.rsplit_once(' ').expect("a sample line with a time");
            let seconds: i64 = seconds.parse().expect("a time in Unix seconds");
            writeln!(text, "{sample} {}", seconds * 1000).unwrap();
        }
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        for (path, body) in
            [("api/v1/import/prometheus", text), ("internal/force_flush", String::new())]
        {
            let response = http
                .post(format!("{}/{path}", self.url))
                .body(body)
                .send()
                .await
                .unwrap_or_else(|err| panic!("POST /{path} to VictoriaMetrics: {err}"));
            let status = response.status();
            let answer = response.text().await.unwrap_or_default();
            assert!(status.is_success(), "POST /{path}: {status} {answer}\n{}", self.log_tail(20));
        }
    }

    /// Polls `expr` until `predicate` holds for its answer and returns that
    /// answer; panics after `deadline` with the last answer or error.
    pub(crate) async fn wait_until_query(
        &self,
        expr: &str,
        predicate: impl Fn(&[Sample]) -> bool,
        deadline: Duration,
    ) -> Vec<Sample> {
        match query_until(&self.client, expr, predicate, deadline).await {
            Ok(samples) => samples,
            Err(last) => panic!(
                "`{expr}` did not reach the expected answer within {deadline:?} on VictoriaMetrics; last answer: {}\nits log (last lines):\n{}",
                last,
                self.log_tail(20)
            ),
        }
    }

    /// The last `lines` lines of its log, for failure messages.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        super::process::log_tail(&self.log, lines)
    }

    /// Kills it (SIGKILL).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestVictoria {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `-promscrape.config` file: one scrape job per target job, every
/// 100 ms, labels honoured as written (as [`TestPrometheus`] does).
///
/// [`TestPrometheus`]: super::prometheus::TestPrometheus
fn scrape_config(targets: &[&TestTarget]) -> String {
    let interval = format!("{}ms", SCRAPE_INTERVAL.as_millis());
    let mut jobs: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for target in targets {
        jobs.entry(target.job()).or_default().push(format!("'{}'", target.instance()));
    }
    let mut config = format!(
        "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\nscrape_configs:\n"
    );
    if jobs.is_empty() {
        config.push_str("  []\n");
    }
    for (job, instances) in jobs {
        writeln!(
            config,
            "  - job_name: '{job}'\n    honor_labels: true\n    static_configs:\n      - targets: [{}]",
            instances.join(", ")
        )
        .unwrap();
    }
    config
}

fn spawn(
    binary: &std::path::Path,
    dir: &std::path::Path,
    config: &std::path::Path,
    log: &std::path::Path,
    port: u16,
    lookback: Duration,
) -> Child {
    let log = File::options().create(true).append(true).open(log).expect("open the log file");
    Command::new(binary)
        .arg(format!("-storageDataPath={}", dir.join("data").display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg(format!("-promscrape.config={}", config.display()))
        // Fresh samples queryable at once, ranges answered as asked.
        .arg("-search.latencyOffset=0s")
        .arg("-search.disableCache")
        .arg(format!("-search.maxLookback={}ms", lookback.as_millis()))
        // History from any past date stays.
        .arg("-retentionPeriod=100y")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("duplicate the log file handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()))
}

fn victoria_binary() -> PathBuf {
    std::env::var_os("SIGNAGE_TEST_VICTORIA")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_VICTORIA), PathBuf::from)
}
