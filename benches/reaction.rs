//! How fast jobctl reacts to a player going offline, side by side with the
//! stack it replaces: a Prometheus alerting rule, Alertmanager, a webhook.
//!
//! `cargo bench --bench reaction [-- --rounds N]` runs one Prometheus
//! (Debian's, scrape and rule evaluation every second) scraping one target
//! whose `addreality_device_online` the bench sets, and both stacks at
//! once against them, so that each round's flip is one event for both:
//!
//! - **Alertmanager**: an alerting rule `addreality_device_online == 0`
//!   with `for: 3s`, sent to Debian's `prometheus-alertmanager`
//!   (`group_wait: 1s`), which posts to a webhook receiver;
//! - **jobctl**: the release `jobctl run` (`interval = "1s"`), one job with
//!   `for = "3s"` on the same condition, power-cycling the player's socket
//!   through the HTTP SMS gateway.
//!
//! A stack's reaction is the time from the flip (the target serving 0) to
//! its receiver (the fake webhook, the fake gateway of the tests) reading
//! the request. It depends on three phases: of the flip against the
//! scrapes, and of each stack's evaluations against the scrapes. Each is
//! drawn anew every round, or the figures would measure one lucky or
//! unlucky alignment (Prometheus and jobctl keep their phase for as long
//! as they run):
//!
//! - the flip comes a random 0–1 s after both stacks are idle;
//! - each round has its own rule group (Prometheus offsets a group's
//!   evaluations by a hash of its name), whose rule selects the round's
//!   series: every round's series carries a `round` label, so that
//!   Alertmanager also sees a new alert group each time;
//! - each round starts a fresh jobctl (its own journal), a random 0–1 s
//!   into the round, and kills it at the end. Its device key
//!   (`platform_id`, `device_id`) leaves `round` out.
//!
//! It prints each round, both medians and the ratio, and checks the issue's
//! target (jobctl's median at most 0.8 × Alertmanager's): a missed target
//! exits 1, and so does a round in which either request does not come
//! within 30 s, printing what each stack logged. Without Prometheus or
//! Alertmanager installed it says so and skips (CI runs no benches, and
//! does not install Alertmanager). Every server listens on a free loopback
//! port; every child process is killed when the bench ends, by panic too.

use std::fs::File;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

#[allow(
    dead_code,
    reason = "the helpers are shared by every bench; this one prints no child figures"
)]
mod support;
#[path = "../tests/support/mod.rs"]
mod test_support;

use support::{percentile, report};
use test_support::alertmanager::TestAlertmanager;
use test_support::fake_gateway::{FakeGateway, DEFAULT_KEY};
use test_support::fake_webhook::FakeWebhook;
use test_support::process::log_tail;
use test_support::prometheus::{PrometheusOptions, TestPrometheus, TestTarget};
use test_support::rules_file::{self, POWER_CYCLE_ACTION};
use test_support::wait::{poll_for_async, wait_until_async, DEADLINE};
use test_support::{exposition, write_secret};

const JOBCTL: &str = env!("CARGO_BIN_EXE_jobctl");

/// Rounds unless `--rounds` says otherwise: odd, so the median is a round's.
const DEFAULT_ROUNDS: usize = 31;

/// How long a round may wait for both requests before the bench fails.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// Both stacks' scrape, evaluation and jobctl interval.
const INTERVAL: Duration = Duration::from_secs(1);

/// The target: jobctl's median reaction at most this share of
/// Alertmanager's.
const TARGET_RATIO: f64 = 0.8;

/// The name of jobctl's job, as its metrics label it.
const JOB: &str = "offline";

/// The Prometheus alerting rules of stack A: for each of `rounds`, a group
/// of its own holding the job's condition on that round's series, with the
/// job's `for`.
fn alert_rules(rounds: usize) -> String {
    let group = |round| {
        format!(
            "  - name: round-{round}\n    rules:\n      - alert: DeviceOffline\n        \
             expr: addreality_device_online{{round=\"{round}\"}} == 0\n        for: 3s\n"
        )
    };
    "groups:\n".to_string() + &(1..=rounds).map(group).collect::<String>()
}

/// Alertmanager posting each new (alert, round) group to `webhook` after
/// `group_wait: 1s`; resolutions are not sent.
fn alertmanager_config(webhook: &str) -> String {
    format!(
        "route:\n  receiver: hook\n  group_by: ['alertname', 'round']\n  group_wait: 1s\n\
         receivers:\n  - name: hook\n    webhook_configs:\n      - url: '{webhook}'\n        \
         send_resolved: false\n"
    )
}

/// The one player, online or not, labelled with the round.
fn page(round: usize, online: u8) -> String {
    format!(
        "# TYPE addreality_device_online gauge\naddreality_device_online\
         {{platform_id=\"12\",device_id=\"30785\",name=\"Lobby\",round=\"{round}\"}} {online}\n"
    )
}

/// jobctl's rules: Prometheus every second, the fake gateway, one socket
/// powering the player, and the job.
fn jobctl_rules(prometheus: &str, gateway: &str) -> String {
    rules_file::head(prometheus, "1s", "1s", "journal.db")
        + &rules_file::gateway_sms(gateway, "")
        + &rules_file::socket("lobby", "+7 999 123-45-67", "simpal-d210", "12", "30785")
        + &rules_file::offline_job(JOB, "12", Some("3s"), POWER_CYCLE_ACTION)
}

fn main() -> ExitCode {
    let rounds = match rounds_from(std::env::args().skip(1)) {
        Ok(rounds) => rounds,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    if !TestAlertmanager::available() || !TestPrometheus::available() {
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the bench's runtime");
    match runtime.block_on(measure(rounds)) {
        Ok(measured) => summarize(&measured),
        Err(failure) => {
            eprintln!("reaction bench FAILED: {failure}");
            ExitCode::FAILURE
        }
    }
}

/// `--rounds N` (at least 1); `--bench`, which `cargo bench` passes, is
/// ignored.
fn rounds_from(mut args: impl Iterator<Item = String>) -> Result<usize, String> {
    let mut rounds = DEFAULT_ROUNDS;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--rounds takes a whole number of rounds, at least 1")?;
            }
            other => {
                return Err(format!(
                "unknown argument {other:?}; usage: cargo bench --bench reaction [-- --rounds N]"
            ))
            }
        }
    }
    Ok(rounds)
}

/// One round's figures.
struct Round {
    /// The random wait before the flip.
    delay: Duration,
    /// From the flip to the webhook reading Alertmanager's notification.
    alertmanager: Duration,
    /// From the flip to the gateway reading jobctl's SMS.
    jobctl: Duration,
}

/// Both stacks' servers, on one Prometheus and one target; each round
/// starts its own jobctl.
struct Stacks {
    target: TestTarget,
    webhook: FakeWebhook,
    alertmanager: TestAlertmanager,
    prometheus: TestPrometheus,
    gateway: FakeGateway,
}

async fn measure(rounds: usize) -> Result<Vec<Round>, String> {
    let stacks = Stacks::start(rounds).await;
    println!(
        "reaction from the flip of addreality_device_online to 0 to the receiver reading the request\n\
         (Prometheus scrape and evaluation every 1 s; rule `for: 3s` → Alertmanager, group_wait 1s → webhook;\n\
         jobctl interval 1s, for 3s → HTTP SMS gateway; both at once on the same flip)\n"
    );
    println!("{:>5}  {:>7}  {:>12}  {:>7}", "round", "delay", "Alertmanager", "jobctl");
    let mut measured = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let figures = stacks.round(round).await?;
        println!(
            "{round:>5}  {:>5.2} s  {:>10.3} s  {:>5.3} s",
            figures.delay.as_secs_f64(),
            figures.alertmanager.as_secs_f64(),
            figures.jobctl.as_secs_f64()
        );
        measured.push(figures);
    }
    Ok(measured)
}

fn summarize(measured: &[Round]) -> ExitCode {
    let median = |of: fn(&Round) -> Duration| {
        let mut seconds: Vec<f64> = measured.iter().map(|r| of(r).as_secs_f64()).collect();
        percentile(&mut seconds, 0.5)
    };
    let alertmanager = median(|r| r.alertmanager);
    let jobctl = median(|r| r.jobctl);
    let ratio = jobctl / alertmanager;
    println!("{:>5}  {:>7}  {alertmanager:>10.3} s  {jobctl:>5.3} s", "median", "");
    println!("jobctl / Alertmanager: {ratio:.2}");
    report(&[(
        &format!("jobctl median ≤ {TARGET_RATIO} × Alertmanager's ({ratio:.2})"),
        ratio <= TARGET_RATIO,
    )])
}

/// A random wait of 0 to 1 s, taken to draw a phase against the scrapes.
async fn random_wait() -> Duration {
    let wait = Duration::from_millis(fastrand::u64(0..1000));
    tokio::time::sleep(wait).await;
    wait
}

impl Stacks {
    /// Starts everything but jobctl (Prometheus takes about 5 s to scrape
    /// a new target) and returns once Prometheus knows its Alertmanager.
    async fn start(rounds: usize) -> Stacks {
        let target = TestTarget::with_job("reaction");
        target.set(page(1, 1));
        let webhook = FakeWebhook::start().await;
        let alertmanager = TestAlertmanager::start(&alertmanager_config(&webhook.url())).await;
        let options = PrometheusOptions {
            scrape_interval: INTERVAL,
            rules: Some(alert_rules(rounds)),
            alertmanager: Some(alertmanager.addr().to_string()),
            ..PrometheusOptions::default()
        };
        let prometheus = options.start(&[&target]).await;
        wait_for_alertmanager(&prometheus).await;
        let gateway = FakeGateway::start().await;
        Stacks { target, webhook, alertmanager, prometheus, gateway }
    }

    /// Round `round`: the player online under the round's label, a fresh
    /// jobctl started at a random moment and idle, a random wait, the flip,
    /// and both requests timed.
    async fn round(&self, round: usize) -> Result<Round, String> {
        self.target.set(page(round, 1));
        let online = format!("addreality_device_online{{round='{round}'}} == 1");
        self.prometheus.wait_until_query(&online, |samples| !samples.is_empty(), DEADLINE).await;
        random_wait().await;
        let jobctl = Jobctl::start(self.prometheus.url(), &self.gateway.url()).await?;
        let delay = random_wait().await;

        let (sms_before, hooks_before) =
            (self.gateway.received().len(), self.webhook.received().len());
        let flipped = Instant::now();
        self.target.set(page(round, 0));
        let notified = || {
            self.webhook.received().into_iter().skip(hooks_before).find_map(|hook| {
                let json = hook.json();
                let ours = json["status"] == "firing"
                    && json["commonLabels"]["round"] == round.to_string().as_str();
                ours.then_some(hook.at)
            })
        };
        let sent = || {
            let received = self.gateway.received().into_iter().skip(sms_before);
            received
                .filter(|sms| sms.method == "POST" && sms.path == "/send")
                .map(|sms| sms.at)
                .next()
        };
        let both = poll_for_async(ROUND_TIMEOUT, || async { notified().zip(sent()) }).await;
        let figures = match both {
            Some((hook, sms)) => {
                Ok(Round { delay, alertmanager: hook - flipped, jobctl: sms - flipped })
            }
            None => Err(self.timed_out(round, &jobctl, notified().is_some(), sent().is_some())),
        };
        jobctl.stop().await;
        figures
    }

    /// What failed in a round that timed out, with each server's log.
    fn timed_out(&self, round: usize, jobctl: &Jobctl, notified: bool, sent: bool) -> String {
        let state = |came: bool| if came { "came" } else { "did NOT come" };
        format!(
            "round {round}: within {ROUND_TIMEOUT:?} of the flip, Alertmanager's webhook {} and \
             jobctl's SMS {}\nAlertmanager's log ends:\n{}\njobctl's log ends:\n{}\n\
             Prometheus's log ends:\n{}",
            state(notified),
            state(sent),
            self.alertmanager.log_tail(10),
            jobctl.log_tail(10),
            self.prometheus.log_tail(10)
        )
    }
}

/// Waits until Prometheus lists its Alertmanager as active, so that the
/// first round's alert has somewhere to go.
async fn wait_for_alertmanager(prometheus: &TestPrometheus) {
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/alertmanagers", prometheus.url());
    wait_until_async("Prometheus discovering its Alertmanager", || async {
        let answer: serde_json::Value = http.get(&url).send().await.ok()?.json().await.ok()?;
        let active = answer["data"]["activeAlertmanagers"].as_array()?;
        (!active.is_empty()).then_some(())
    })
    .await;
}

/// `jobctl run` in a directory of its own, killed when dropped.
struct Jobctl {
    dir: tempfile::TempDir,
    /// Killed on drop (`kill_on_drop`), or by [`Jobctl::stop`].
    child: tokio::process::Child,
    metrics: String,
    http: reqwest::Client,
}

impl Jobctl {
    /// Starts the release binary with [`jobctl_rules`], serving its metrics
    /// on a port the kernel picks (read back from its log), and returns once
    /// it has evaluated the player as online.
    async fn start(prometheus: &str, gateway: &str) -> Result<Jobctl, String> {
        let dir = tempfile::Builder::new()
            .prefix("bench-jobctl-")
            .tempdir()
            .expect("create a temporary directory for jobctl");
        std::fs::write(dir.path().join("rules.toml"), jobctl_rules(prometheus, gateway))
            .expect("write rules.toml");
        write_secret(&dir.path().join("sms.key"), &format!("{DEFAULT_KEY}\n"));
        let log = File::create(dir.path().join("jobctl.log")).expect("create jobctl's log");
        let mut command = test_support::process::command(JOBCTL, dir.path());
        command
            .args(["--config", "rules.toml", "run", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(log);
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        let mut child = command.spawn().map_err(|err| format!("cannot start {JOBCTL}: {err}"))?;
        let log_path = dir.path().join("jobctl.log");
        let listening = poll_for_async(DEADLINE, || {
            let exited = child.try_wait().ok().flatten();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            async move {
                if let Some(status) = exited {
                    return Some(Err(format!("jobctl exited ({status}) at start:\n{log}")));
                }
                let url =
                    log.split("serving jobctl metrics on ").nth(1)?.split_whitespace().next()?;
                Some(Ok(url.to_string()))
            }
        });
        let metrics = listening.await.unwrap_or_else(|| {
            Err(format!("jobctl did not serve its metrics within {DEADLINE:?}"))
        })?;
        let jobctl = Jobctl { dir, child, metrics, http: reqwest::Client::new() };
        jobctl.wait_idle().await?;
        Ok(jobctl)
    }

    /// Waits until jobctl's last cycle knew the player and had it neither
    /// pending nor firing.
    async fn wait_idle(&self) -> Result<(), String> {
        let idle = poll_for_async(DEADLINE, || async {
            let text = self.http.get(&self.metrics).send().await.ok()?.text().await.ok()?;
            let devices = |state: &str| {
                let series = format!("jobctl_job_devices{{job=\"{JOB}\",state=\"{state}\"}}");
                exposition::value::<f64>(&text, &series).unwrap_or(0.0)
            };
            let known = devices("inactive") + devices("resolved");
            let busy = devices("pending") + devices("firing");
            (known == 1.0 && busy == 0.0).then_some(())
        });
        idle.await.ok_or_else(|| {
            format!(
                "jobctl did not have the player online and idle within {DEADLINE:?}; its log ends:\n{}",
                self.log_tail(10)
            )
        })
    }

    /// Kills jobctl and waits for it to be gone.
    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.dir.path().join("jobctl.log"), lines)
    }
}
