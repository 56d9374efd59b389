//! `jobctl` end to end, through its binary: exact stdout, stderr and exit
//! code for every subcommand, against a real Prometheus and a fake SMS
//! gateway on loopback, and the daemon driven by signals (SIGHUP, SIGTERM,
//! SIGKILL) as systemd and a crash would drive it.
//!
//! Each test runs jobctl in a directory of its own holding `rules.toml`, the
//! gateway key and the journal, so messages name `rules.toml` as a sysadmin
//! would type it. Log lines are read without timestamps (`JOURNAL_STREAM`
//! set, as under systemd). Nothing sleeps to wait: the tests read the
//! daemon's stderr until a line appears, or poll a condition until a
//! deadline.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::fake_gateway::{FakeGateway, Fault, DEFAULT_KEY};
use support::process::{run_async as run, Ran};
use support::prometheus::{PrometheusOptions, TestPrometheus, TestTarget};
use support::rules_file::{self, POWER_CYCLE_1, POWER_CYCLE_ACTION};
use support::tls::{client, served_certificate, TestCa};
use support::wait::{wait_until_async, DEADLINE};
use support::{closed_url, write_secret};
use tokio::io::{AsyncBufReadExt, BufReader};

const JOBCTL: &str = env!("CARGO_BIN_EXE_jobctl");

/// The device every scenario watches, as jobctl prints its key.
const DEVICE: &str = r#"{platform_id="12", device_id="30785"}"#;

/// A rules file: one socket powering [`DEVICE`], one job power-cycling it as
/// soon as it is offline, evaluated every second, sent through the gateway
/// preset at `gateway`. Its lines: `[sms]` on 9, `[sms.http]` on 12 (its
/// `timeout` on 16, `connect_timeout` on 17), `[[sockets]]` on 19 (`model`
/// on 22), and `[[jobs]]` "reboot frozen" on 25 (`for` on 31, `action` on
/// 32, the last line).
fn rules(prometheus: &str, gateway: &str) -> String {
    rules_file::head(prometheus, "1s", "1s", "journal.db")
        + &rules_file::gateway_sms(gateway, "connect_timeout = \"1s\"\n")
        + &rules_file::socket("lobby", "+7 999 123-45-67", "simpal-d210", "12", "30785")
        + &rules_file::offline_job("reboot frozen", "12", Some("0s"), POWER_CYCLE_ACTION)
}

/// What the test target serves: [`DEVICE`]'s `addreality_device_online`.
fn device_page(online: u8) -> String {
    format!(
        "# TYPE addreality_device_online gauge\naddreality_device_online{{platform_id=\"12\",device_id=\"30785\",name=\"Lobby\"}} {online}\n"
    )
}

/// A directory where jobctl runs: `rules.toml`, `sms.key`, `journal.db`.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    /// A site with the gateway key in place (mode 600, so no warning).
    fn new() -> Site {
        let site = Site { dir: tempfile::tempdir().unwrap() };
        write_secret(&site.path("sms.key"), &format!("{DEFAULT_KEY}\n"));
        site
    }

    /// A site whose `rules.toml` is `text`.
    fn with_rules(text: &str) -> Site {
        let site = Site::new();
        site.write("rules.toml", text);
        site
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file, creating its directory.
    fn write(&self, name: &str, text: &str) {
        let path = self.path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// `jobctl --config rules.toml ARGS…` in this site, logging without
    /// timestamps, stdin closed.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        command_in(self.dir.path(), &["--config", "rules.toml"], args)
    }

    /// Runs jobctl to the end.
    async fn jobctl(&self, args: &[&str]) -> Ran {
        run(self.command(args)).await
    }

    /// The journal as `jobctl history --format json FILTERS…` shows it.
    async fn history(&self, filters: &[&str]) -> Vec<serde_json::Value> {
        let mut args = vec!["history", "--format", "json"];
        args.extend_from_slice(filters);
        let ran = self.jobctl(&args).await;
        assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
        serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|err| panic!("history is not JSON ({err}): {}", ran.stdout))
    }
}

/// `jobctl GLOBAL… ARGS…` in `dir`, logging without timestamps (as under
/// systemd), killed if the test drops it.
fn command_in(dir: &Path, global: &[&str], args: &[&str]) -> tokio::process::Command {
    let mut command = support::process::command(JOBCTL, dir);
    command.args(global).args(args).env("JOURNAL_STREAM", "8:1");
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    command
}

/// A Prometheus scraping one target that serves [`device_page`]`(online)`,
/// returned once Prometheus answers with that value.
async fn prometheus_seeing(online: u8) -> (TestPrometheus, TestTarget) {
    let target = TestTarget::start();
    target.set(device_page(online));
    let prometheus = TestPrometheus::start(&[&target]).await;
    wait_for_value(&prometheus, online).await;
    (prometheus, target)
}

/// Waits until Prometheus answers `online` for [`DEVICE`].
async fn wait_for_value(prometheus: &TestPrometheus, online: u8) {
    let expr = format!("addreality_device_online{{device_id=\"30785\"}} == {online}");
    prometheus.wait_until_query(&expr, |samples| samples.len() == 1, DEADLINE).await;
}

/// `jobctl run --listen 127.0.0.1:0` in the background, its stderr read
/// line by line. Killed if the test ends without stopping it.
struct Daemon {
    child: tokio::process::Child,
    stderr: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
    /// `http://127.0.0.1:<port>`, from the daemon's own log.
    base: String,
}

impl Daemon {
    /// Starts the daemon in `site` and returns once it evaluates.
    async fn start(site: &Site) -> Daemon {
        Daemon::start_with(site, &[]).await
    }

    /// [`Daemon::start`] with more `run` flags.
    async fn start_with(site: &Site, flags: &[&str]) -> Daemon {
        let mut args = vec!["run", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        let mut command = site.command(&args);
        command.stdout(Stdio::null());
        let mut child = command.spawn().expect("start jobctl run");
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut daemon = Daemon { child, stderr, seen: Vec::new(), base: String::new() };
        let serving = daemon.wait_for("serving jobctl metrics on ").await;
        daemon.base = serving
            .split("serving jobctl metrics on ")
            .nth(1)
            .and_then(|url| url.split_once("/metrics"))
            .map_or_else(|| panic!("no URL in {serving:?}"), |(base, _)| base.to_string());
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
            Ok(None) => panic!("jobctl ended without logging {needle:?}; its log:\n{}", self.log()),
            Err(_) => panic!(
                "jobctl did not log {needle:?} within {DEADLINE:?}; its log:\n{}",
                self.log()
            ),
        }
    }

    /// The lines read so far, one per line.
    fn log(&self) -> String {
        self.seen.join("\n")
    }

    /// Sends a signal by name (`HUP`, `TERM`), as systemd would.
    fn signal(&self, name: &str) {
        support::process::signal(self.child.id().expect("jobctl is running"), name);
    }

    /// One page of the daemon's HTTP server: status and body.
    async fn get(&self, path: &str) -> (u16, String) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let response = client.get(format!("{}{path}", self.base)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// `jobctl_cycles_total`, from /metrics.
    async fn cycles(&self) -> u64 {
        let (_, metrics) = self.get("/metrics").await;
        support::exposition::value(&metrics, "jobctl_cycles_total")
            .unwrap_or_else(|| panic!("no jobctl_cycles_total in:\n{metrics}"))
    }

    /// Waits until `n` more evaluation cycles have ended.
    async fn wait_cycles(&self, n: u64) {
        let wanted = self.cycles().await + n;
        let what = format!("{n} more cycles");
        wait_until_async(&what, || async { (self.cycles().await >= wanted).then_some(()) }).await;
    }

    /// SIGTERM; returns the exit code and the log lines not read before.
    async fn stop(mut self) -> (i32, Vec<String>) {
        let from = self.seen.len();
        self.signal("TERM");
        self.wait_for(" INFO stopped").await;
        let status = tokio::time::timeout(DEADLINE, self.child.wait()).await.unwrap().unwrap();
        (status.code().expect("exited, not killed"), self.seen.split_off(from))
    }

    /// SIGKILL, as the OOM killer or a power cut would end it.
    async fn kill(mut self) {
        self.child.start_kill().unwrap();
        let status = self.child.wait().await.unwrap();
        assert_eq!(status.code(), None, "jobctl exited by itself: {status}");
    }
}

// ---------------------------------------------------------------------------
// jobctl --help

#[tokio::test]
async fn help_lists_every_subcommand() {
    let ran = run(command_in(Path::new("."), &[], &["--help"])).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""));
    let first = ran.stdout.lines().next().unwrap_or_default();
    assert_eq!(first, "Watches Prometheus and power-cycles frozen signage players by SMS");
    let commands: Vec<&str> = ran
        .stdout
        .split("Commands:\n")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_else(|| panic!("no Commands section in:\n{}", ran.stdout))
        .lines()
        .map(|line| line.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(commands, [&SUBCOMMANDS[..], &["help"]].concat());
}

/// jobctl's subcommands, in `--help`'s order.
const SUBCOMMANDS: [&str; 13] = [
    "run",
    "demo",
    "check",
    "test-rule",
    "history",
    "status",
    "send",
    "silence",
    "explain",
    "report",
    "journal",
    "completions",
    "man",
];

#[tokio::test]
async fn completions_and_manual_pages_cover_every_subcommand() {
    let subcommands = SUBCOMMANDS;
    for shell in ["bash", "zsh", "fish"] {
        let ran = run(command_in(Path::new("."), &[], &["completions", shell])).await;
        assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{shell}");
        for subcommand in subcommands {
            assert!(ran.stdout.contains(subcommand), "{shell} does not complete {subcommand}");
        }
    }
    let ran = run(command_in(Path::new("."), &[], &["completions", "tcsh"])).await;
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.starts_with("error: invalid value 'tcsh' for '<SHELL>'"), "{}", ran.stderr);

    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man1");
    let ran = run(command_in(Path::new("."), &[], &["man", man.to_str().unwrap()])).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""));
    let mut expected: Vec<String> = vec!["jobctl".into()];
    for subcommand in subcommands {
        expected.push(format!("jobctl-{subcommand}"));
        if subcommand == "silence" {
            expected.extend(["add", "list", "expire"].map(|s| format!("jobctl-silence-{s}")));
        }
        if subcommand == "journal" {
            expected.extend(["backup", "migrate"].map(|s| format!("jobctl-journal-{s}")));
        }
    }
    let listed: Vec<String> = ran.stdout.lines().map(String::from).collect();
    let wanted: Vec<String> =
        expected.iter().map(|name| format!("{}/{name}.1", man.display())).collect();
    assert_eq!(listed, wanted);
    for (name, page) in expected.iter().zip(&listed) {
        let text = std::fs::read_to_string(page).unwrap();
        assert!(text.contains(&format!(".TH {name} 1")), "{page}:\n{text}");
        if let Some(warnings) = support::groff_warnings(Path::new(page)) {
            assert_eq!(warnings, "", "{page}");
        }
    }
    let ran = run(command_in(Path::new("."), &[], &["man", "/proc/self/no/such"])).await;
    assert_eq!(ran.code, 1);
    assert_eq!(
        ran.stderr,
        "jobctl: cannot write the manual pages into /proc/self/no/such: No such file or directory (os error 2)\n"
    );
}

// ---------------------------------------------------------------------------
// jobctl check

/// Runs `check --offline` on `site` and asserts that it fails with exit 3,
/// nothing on stdout (no job was loaded) and exactly `stderr`.
async fn assert_rejected(site: &Site, stderr: &str) {
    let ran = site.jobctl(&["check", "--offline"]).await;
    assert_eq!((ran.code, ran.stdout.as_str(), ran.stderr.as_str()), (3, "", stderr));
}

#[tokio::test]
async fn check_accepts_the_shipped_example() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ran =
        run(command_in(dir, &["--config", "rules.example.toml"], &["check", "--offline"])).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{}", ran.stdout);
    let mut lines = ran.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("rules.example.toml: OK: 3 jobs (2 enabled), 2 sockets, 1 file; SMS via log; PromQL checked locally (--offline)")
    );
    let headings: Vec<&str> = lines.filter(|l| !l.is_empty() && !l.starts_with(' ')).collect();
    assert_eq!(
        headings,
        [
            "Reboot frozen players on platform 12",
            "Monitoring platform_id=12 - addreality_device_online == 1 and addreality_device_playing == 0 (generated name)",
            "Players offline for a day [disabled]",
        ]
    );
}

#[tokio::test]
async fn check_prints_every_job_and_what_it_watches() {
    let site = Site::with_rules(&rules(&closed_url(), &closed_url()));
    let ran = site.jobctl(&["check", "--offline"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
        (
            0,
            "rules.toml: OK: 1 job (1 enabled), 1 socket, 1 file; SMS via http; PromQL checked locally (--offline)\n\
             \n\
             reboot frozen\n  \
             defined:  rules.toml:25:1\n  \
             devices:  platform_id=12\n  \
             when:     addreality_device_online == 0\n  \
             queries:  addreality_device_online{platform_id=\"12\"}\n  \
             action:   power_cycle minutes=1 to the socket powering the device\n  \
             limits:   cooldown 1h, once per episode\n  \
             outage:   hold socket commands while at least 50% of the known devices (and at least 5) are bad at once\n",
            ""
        )
    );
}

#[tokio::test]
async fn check_rejects_a_syntax_error() {
    let site =
        Site::with_rules(&rules(&closed_url(), &closed_url()).replace("[journal]", "[journal"));
    assert_rejected(&site, "jobctl: rules.toml:6:9: unclosed table, expected `]`\n").await;
}

#[tokio::test]
async fn check_rejects_an_unknown_key_and_names_the_accepted_ones() {
    let site = Site::with_rules(&rules(&closed_url(), &closed_url()).replace("for = ", "fro = "));
    assert_rejected(
        &site,
        "jobctl: rules.toml:31:1: unknown field `fro`, expected one of `name`, `devices`, `metric`, `op`, `value`, `expr`, `all`, `any`, `for`, `action`, `cooldown`, `repeat`, `verify`, `limit`, `schedule`, `guards`, `mass_outage`, `escalate`, `webhooks_on_action`, `enabled`, `only_powered`\n",
    )
    .await;
}

#[tokio::test]
async fn check_rejects_a_bad_duration() {
    let site = Site::with_rules(
        &rules(&closed_url(), &closed_url()).replace("for = \"0s\"", "for = \"10 parsecs\""),
    );
    assert_rejected(
        &site,
        "jobctl: rules.toml:31:7: invalid duration \"10 parsecs\": unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) (write it like \"30s\", \"10m\", \"1h30m\", \"7d\")\n",
    )
    .await;
}

#[tokio::test]
async fn check_rejects_a_bad_phone_number() {
    let text = format!(
        "{}\n[[sockets]]\nname = \"hall\"\nphone = \"8 (999) 765-43-21\"\nmodel = \"simpal-d410\"\npowers = {{ platform_id = \"12\", device_id = \"30786\" }}\n",
        rules(&closed_url(), &closed_url())
    );
    let site = Site::with_rules(&text);
    assert_rejected(
        &site,
        "jobctl: rules.toml:36:9: socket \"hall\": invalid phone number \"8 (999) 765-43-21\": write it in international form with a leading + and the country code, like \"+79991234567\"\n",
    )
    .await;
}

#[tokio::test]
async fn check_rejects_an_unknown_socket_command() {
    let site = Site::with_rules(
        &rules(&closed_url(), &closed_url())
            .replace("command = \"power_cycle\"", "command = \"reboot\""),
    );
    assert_rejected(
        &site,
        "jobctl: rules.toml:32:22: job \"reboot frozen\": socket \"lobby\": there is no command \"reboot\"; known commands: power_on, power_off, power_cycle, power_off_after, register_master, add_user\n",
    )
    .await;
}

#[tokio::test]
async fn check_rejects_a_job_name_used_in_the_main_file_and_rules_d() {
    let site = Site::with_rules(&rules(&closed_url(), &closed_url()));
    site.write(
        "rules.d/10-team.toml",
        "[[jobs]]\nname = \"reboot frozen\"\nexpr = \"up == 0\"\naction = { command = \"power_on\" }\n",
    );
    assert_rejected(
        &site,
        "jobctl: ./rules.d/10-team.toml:2:8: job name \"reboot frozen\" is already used at rules.toml:26:8; job names must be unique across rules.toml and rules.d\n",
    )
    .await;
}

#[tokio::test]
async fn check_reports_every_error_of_every_file_and_loads_none() {
    let site = Site::with_rules(
        &rules(&closed_url(), &closed_url()).replace("value = 0", "value = \"zero\""),
    );
    site.write(
        "rules.d/20-hall.toml",
        "[[jobs]]\nname = \"hall\"\nexpr = \"up == 0\"\naction = { sms = \"down\", to = \"+1\" }\ncooldown = \"soon\"\n",
    );
    let errors = "jobctl: rules.toml:30:9: invalid type: string \"zero\", expected f64\n\
         jobctl: ./rules.d/20-hall.toml:5:12: invalid duration \"soon\": expected number at 0 (write it like \"30s\", \"10m\", \"1h30m\", \"7d\")\n";
    assert_rejected(&site, errors).await;
    // `run` refuses the same files before opening the journal or sending.
    let ran = site.jobctl(&["run", "--once"]).await;
    assert_eq!((ran.code, ran.stdout.as_str(), ran.stderr.as_str()), (3, "", errors));
    assert!(!site.path("journal.db").exists());
}

#[tokio::test]
async fn check_rejects_a_password_in_the_journal_url_and_never_shows_it() {
    let text = rules(&closed_url(), &closed_url()).replace(
        "path = \"journal.db\"",
        "url = \"postgresql://jobctl:hunter2@db.example/jobctl\"\ntls = \"sometimes\"",
    );
    let site = Site::with_rules(&text);
    assert_rejected(
        &site,
        "jobctl: rules.toml:7:7: journal.url: the URL holds a password, which would show wherever the URL does; remove it and set password_file (or password_env) instead\n\
         jobctl: rules.toml:8:7: journal.tls is \"sometimes\"; expected \"disable\", \"require\" or \"verify-full\"\n",
    )
    .await;
}

#[tokio::test]
async fn check_rejects_a_journal_with_both_path_and_url() {
    let text = rules(&closed_url(), &closed_url()).replace(
        "path = \"journal.db\"",
        "path = \"journal.db\"\nurl = \"postgresql://jobctl@db.example/jobctl\"",
    );
    let site = Site::with_rules(&text);
    assert_rejected(
        &site,
        "jobctl: rules.toml:8:7: journal: path and url are both set; keep one (path for SQLite, url for PostgreSQL)\n",
    )
    .await;
}

#[tokio::test]
async fn check_requires_an_sms_table() {
    let text = rules(&closed_url(), &closed_url());
    let start = text.find("[sms]").unwrap();
    let end = text.find("[[sockets]]").unwrap();
    let site = Site::with_rules(&format!("{}{}", &text[..start], &text[end..]));
    assert_rejected(
        &site,
        "jobctl: rules.toml: no [sms] table: add one, e.g. [sms] backend = \"log\" to only record what would be sent\n",
    )
    .await;
}

#[tokio::test]
async fn check_rejects_bad_http_gateway_settings() {
    let text = rules(&closed_url(), &closed_url());
    let site = Site::with_rules(
        &text.replace("key_file = \"sms.key\"", "key_file = \"/nonexistent/sms.key\""),
    );
    assert_rejected(
        &site,
        "jobctl: rules.toml:15:12: sms.http.key_file: cannot read secret file /nonexistent/sms.key: No such file or directory (os error 2)\n",
    )
    .await;
    let site = Site::with_rules(&text.replace("timeout = \"2s\"", "timeout = \"1s\""));
    assert_rejected(
        &site,
        "jobctl: rules.toml:17:19: sms.http.connect_timeout: connect_timeout (1s) must be shorter than timeout (1s), or an unreachable gateway would be reported as an uncertain send\n",
    )
    .await;
    let site = Site::with_rules(&text.replace("preset = \"gateway\"\n", ""));
    assert_rejected(
        &site,
        "jobctl: rules.toml:13:7: sms.http.url: no header, query, form or json value uses {text}: the SMS text would never be sent\n",
    )
    .await;
}

/// A rules file like [`rules`] whose `[sms.http]` table (on line 12) holds
/// `http`, from line 13 on.
fn provider_rules(http: &str) -> String {
    rules_file::head(&closed_url(), "1s", "1s", "journal.db")
        + &format!("[sms]\nbackend = \"http\"\n\n[sms.http]\n{http}\n")
        + &rules_file::socket("lobby", "+7 999 123-45-67", "simpal-d210", "12", "30785")
        + &rules_file::offline_job("reboot frozen", "12", Some("0s"), POWER_CYCLE_ACTION)
}

#[tokio::test]
async fn check_requires_what_each_provider_preset_needs() {
    const SID: &str = "AC0123456789abcdef0123456789abcdef";
    let cases = [
        (
            "preset = \"twilio\"\nkey_file = \"sms.key\"".to_string(),
            "13:10: sms.http.account: preset \"twilio\" needs account: the Account SID (AC followed by 32 hex digits, on the Twilio Console), like account = \"ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"",
        ),
        (
            "preset = \"twilio\"\naccount = \"AC123\"\nfrom = \"+15005550006\"".to_string(),
            "14:11: sms.http.account: \"AC123\" is not a Twilio Account SID: AC followed by 32 hex digits, as the Twilio Console shows it",
        ),
        (
            format!("preset = \"twilio\"\naccount = \"{SID}\"\nkey_file = \"sms.key\""),
            "13:10: sms.http.from: preset \"twilio\" needs from: the sender, a Twilio number like from = \"+15005550006\", an alphanumeric sender ID, or a Messaging Service SID (MG…)",
        ),
        (
            format!("preset = \"twilio\"\naccount = \"{SID}\"\nfrom = \"+15005550006\""),
            "13:10: sms.http.key_file: preset \"twilio\" needs the Auth Token: set key_file (a file of mode 600) or key_env",
        ),
        (
            "preset = \"smsru\"\naccount = \"me\"\nkey_env = \"SMSRU_API_ID\"".to_string(),
            "14:11: sms.http.account: preset \"smsru\" has no account: the key (key_file or key_env) identifies it",
        ),
        (
            "preset = \"smsc\"\nfrom = \"\"\naccount = \"login\"\nkey_file = \"sms.key\"".to_string(),
            "14:8: sms.http.from: is empty",
        ),
        (
            "preset = \"vonage\"\naccount = \"a1b2c3d4\"\nfrom = \"WATCHDOG\"\nkey_file = \"sms.key\"\nsuccess_json = { pointer = \"/ok\" }".to_string(),
            "17:16: sms.http.success_json: preset \"vonage\" judges Vonage's answers as Vonage documents them; remove success_json, or drop the preset to describe the answers yourself",
        ),
        (
            "preset = \"gateway\"\nurl = \"https://gw.example\"\nfrom = \"WATCHDOG\"\nkey_file = \"sms.key\"".to_string(),
            "15:8: sms.http.from: only the provider presets (twilio, smsru, smsc, vonage) use from; without one, write it in query, form or json",
        ),
        (
            "preset = \"gateway\"\nkey_file = \"sms.key\"".to_string(),
            "13:10: sms.http.url: missing: write where requests go, like url = \"https://sms-gateway.example:8443\"",
        ),
    ];
    for (http, error) in cases {
        let site = Site::with_rules(&provider_rules(&http));
        assert_rejected(&site, &format!("jobctl: rules.toml:{error}\n")).await;
    }
    // Complete, each is accepted without a word (their URLs are https://).
    for http in [
        format!("preset = \"twilio\"\naccount = \"{SID}\"\nfrom = \"+15005550006\"\nkey_file = \"sms.key\""),
        "preset = \"smsru\"\nkey_file = \"sms.key\"".to_string(),
        "preset = \"smsc\"\naccount = \"login\"\nfrom = \"Watchdog\"\nkey_file = \"sms.key\"".to_string(),
        "preset = \"vonage\"\naccount = \"a1b2c3d4\"\nfrom = \"WATCHDOG\"\nkey_file = \"sms.key\"".to_string(),
    ] {
        let site = Site::with_rules(&provider_rules(&http));
        let ran = site.jobctl(&["check", "--offline"]).await;
        assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{http}");
    }
}

#[tokio::test]
async fn check_rejects_a_gateway_key_that_no_request_can_carry() {
    let site = Site::with_rules(&rules(&closed_url(), &closed_url()));
    write_secret(&site.path("sms.key"), "first-half\nsecond-half\n");
    assert_rejected(
        &site,
        "jobctl: rules.toml:15:12: sms.http.key_file: the key contains a line break or another control character, which no request can carry; write the key on one line\n",
    )
    .await;
}

#[tokio::test]
async fn check_warns_when_a_key_or_token_would_travel_in_clear() {
    let text = rules("http://prom.example.net:9090", "http://sms.example.net").replacen(
        "interval = ",
        "token_file = \"prom.token\"\ninterval = ",
        1,
    );
    let site = Site::with_rules(&text);
    write_secret(&site.path("prom.token"), "t0ken");
    let ran = site.jobctl(&["check", "--offline"]).await;
    assert_eq!(
        (ran.code, ran.stderr.as_str()),
        (
            0,
            "jobctl: warning: rules.toml: prometheus.url: the credentials would travel unencrypted to prom.example.net:9090; use https:// (or reach Prometheus on this host)\n\
             jobctl: warning: rules.toml:15:7: sms.http.url: the gateway key would travel unencrypted to sms.example.net; use https:// (or a gateway on this host)\n"
        ),
        "{text}"
    );
    // On this host, or over https, nothing is said.
    let site = Site::with_rules(&rules("http://localhost:9090", "https://sms.example.net"));
    let ran = site.jobctl(&["check", "--offline"]).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""));
}

#[tokio::test]
async fn check_looks_at_the_modem_device() {
    let modem = |device: &str| {
        rules_file::head(&closed_url(), "1s", "1s", "journal.db")
            + &format!("[sms]\nbackend = \"modem\"\n\n[sms.modem]\ndevice = \"{device}\"\n\n")
            + &rules_file::socket("lobby", "+7 999 123-45-67", "simpal-d210", "12", "30785")
            + &rules_file::offline_job("reboot frozen", "12", Some("0s"), POWER_CYCLE_ACTION)
    };
    let site = Site::with_rules(&modem("/dev/ttyUSB-none"));
    let ran = site.jobctl(&["check", "--offline"]).await;
    assert_eq!(
        (ran.code, ran.stderr.as_str()),
        (0, "jobctl: warning: rules.toml:13:10: sms.modem.device: /dev/ttyUSB-none does not exist; sends through the modem fail until it does (plug the modem in, or check the path)\n")
    );
    let site = Site::with_rules("");
    let file = site.path("not-a-modem");
    site.write("not-a-modem", "");
    site.write("rules.toml", &modem(&file.display().to_string()));
    assert_rejected(
        &site,
        &format!("jobctl: rules.toml:13:10: sms.modem.device: {} is not a character device; write the modem's serial device, like \"/dev/ttyUSB0\" or \"/dev/serial/by-id/…\"\n", file.display()),
    )
    .await;
    let site = Site::with_rules(&modem("/dev/null"));
    let ran = site.jobctl(&["check", "--offline"]).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""));
}

#[tokio::test]
async fn check_places_a_zero_backend_timeout() {
    let text = rules(&closed_url(), &closed_url());
    let with_backend = |backend: &str, table: &str| {
        text.replace("backend = \"http\"", &format!("backend = \"{backend}\""))
            .replace("[[sockets]]", &format!("[sms.{backend}]\n{table}\n\n[[sockets]]"))
    };
    let site = Site::with_rules(&with_backend("gammu", "timeout = \"0s\""));
    assert_rejected(
        &site,
        "jobctl: rules.toml:20:11: sms.gammu.timeout: must be longer than zero\n",
    )
    .await;
    let site = Site::with_rules(&with_backend(
        "modem",
        "device = \"/dev/ttyUSB0\"\ncommand_timeout = \"5s\"\nsend_timeout = \"0s\"",
    ));
    assert_rejected(
        &site,
        "jobctl: rules.toml:22:16: sms.modem.send_timeout: must be longer than zero\n",
    )
    .await;
}

/// A broken `[sms]` is an error of the rules like any other: placed, listed
/// with the other errors, and refused by every command that loads the rules,
/// even one that sends nothing.
#[tokio::test]
async fn check_lists_a_broken_sms_table_with_the_other_errors() {
    let text = rules(&closed_url(), &closed_url())
        .replace("backend = \"http\"", "backend = \"http\"\nmax_segments = 0")
        .replace("model = \"simpal-d210\"", "model = \"simpal-x\"");
    let site = Site::with_rules(&text);
    let errors = "jobctl: rules.toml:11:16: sms.max_segments: must be between 1 and 10 segments\n\
                  jobctl: rules.toml:23:9: socket \"lobby\": unknown model \"simpal-x\"; use \"simpal-d210\", \"simpal-d410\" or \"custom\" (with [sockets.commands])\n";
    assert_rejected(&site, errors).await;
    let ran = site.jobctl(&["status"]).await;
    assert_eq!((ran.code, ran.stdout.as_str(), ran.stderr.as_str()), (3, "", errors));

    let site = Site::with_rules(
        &text
            .replace("model = \"simpal-x\"", "model = \"simpal-d210\"")
            .replace("max_segments = 0", "max_segments = 1\n[sms.log]"),
    );
    assert_rejected(
        &site,
        "jobctl: rules.toml:12:6: unknown field `log`, expected one of `backend`, `backends`, `retry_uncertain`, `http`, `modem`, `smstools`, `gammu`, `command`, `max_segments`, `price`\n",
    )
    .await;
}

#[tokio::test]
async fn check_names_an_unreadable_rules_file() {
    let site = Site::new();
    assert_rejected(
        &site,
        "jobctl: rules.toml: cannot read file: No such file or directory (os error 2)\n",
    )
    .await;
}

/// `key_file` is relative to the rules file's directory, wherever jobctl is
/// started from.
#[tokio::test]
async fn check_finds_the_key_next_to_a_rules_file_in_another_directory() {
    let site = Site::new();
    site.write("conf/rules.toml", &rules(&closed_url(), &closed_url()));
    write_secret(&site.path("conf/sms.key"), DEFAULT_KEY);
    let ran =
        run(command_in(site.dir.path(), &["--config", "conf/rules.toml"], &["check", "--offline"]))
            .await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{}", ran.stdout);
}

#[tokio::test]
async fn check_has_prometheus_parse_every_query_and_names_the_job() {
    if !TestPrometheus::available() {
        return;
    }
    let prometheus = TestPrometheus::start(&[]).await;
    let site = Site::with_rules(&format!(
        "{}\n[[jobs]]\nname = \"broken promql\"\nexpr = \"rate(up[5m]\"\naction = {{ command = \"power_on\" }}\n",
        rules(prometheus.url(), &closed_url())
    ));
    let ran = site.jobctl(&["check"]).await;
    assert_eq!((ran.code, ran.stdout.as_str(), ran.stderr.as_str()), (
            3,
            "",
            "jobctl: rules.toml:34:1: job \"broken promql\": Prometheus rejects \"rate(up[5m]\": 1:12: parse error: unclosed left parenthesis\n"
        )
    );

    site.write("rules.toml", &rules(prometheus.url(), &closed_url()));
    let ran = site.jobctl(&["check"]).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{}", ran.stdout);
    assert_eq!(
        ran.stdout.lines().next().unwrap(),
        format!("rules.toml: OK: 1 job (1 enabled), 1 socket, 1 file; SMS via http; PromQL checked by {}/", prometheus.url())
    );
}

/// Issue 10: which devices a job watches is known from Prometheus only, so
/// `check` asks it: of platform 12's three players only [`DEVICE`] is on a
/// socket. Without `only_powered` that is a warning naming the others; with
/// it, the job's summary says how many it watches.
#[tokio::test]
async fn check_counts_the_devices_a_job_watches_that_have_no_socket() {
    if !TestPrometheus::available() {
        return;
    }
    let target = TestTarget::start();
    let page: String = ["30785", "2", "3"]
        .iter()
        .map(|id| format!("addreality_device_online{{platform_id=\"12\",device_id=\"{id}\"}} 1\n"))
        .collect();
    target.set(page);
    let prometheus = TestPrometheus::start(&[&target]).await;
    let expr = "addreality_device_online{platform_id=\"12\"}";
    prometheus.wait_until_query(expr, |samples| samples.len() == 3, DEADLINE).await;
    let site = Site::with_rules(&rules(prometheus.url(), &closed_url()));
    let ran = site.jobctl(&["check"]).await;
    assert_eq!(
        (ran.code, ran.stderr.as_str()),
        (0, "jobctl: warning: job \"reboot frozen\": 2 of 3 devices this job watches have no socket ({platform_id=\"12\", device_id=\"2\"}, {platform_id=\"12\", device_id=\"3\"}); the daemon cannot act on them (it logs each once per episode): add them to a socket's powers, or set only_powered = true to watch only the 1 that have one\n"),
        "{}",
        ran.stdout
    );
    let summary = |ran: &support::process::Ran| {
        ran.stdout
            .lines()
            .filter(|l| l.starts_with("  devices:") || l.starts_with("  sockets:"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        summary(&ran),
        [
            "  devices:  platform_id=12",
            "  sockets:  2 of 3 devices this job watches have no socket ({platform_id=\"12\", device_id=\"2\"}, {platform_id=\"12\", device_id=\"3\"}) (Prometheus now)",
        ]
    );

    site.write("rules.toml", &(rules(prometheus.url(), &closed_url()) + "only_powered = true\n"));
    let ran = site.jobctl(&["check"]).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{}", ran.stdout);
    assert_eq!(
        summary(&ran),
        [
            "  devices:  platform_id=12, only those a socket powers (only_powered)",
            "  sockets:  1 of 3 devices in Prometheus now have a socket; only those are watched",
        ]
    );
    // test-rule shows the job's devices as the daemon sees them.
    let ran = site.jobctl(&["test-rule", "reboot frozen"]).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("\n  only_powered: 2 devices without a socket left out\n"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.ends_with("\n1 device, 0 with the condition true now\n"), "{}", ran.stdout);
    // Offline, nothing is known of them.
    let ran = site.jobctl(&["check", "--offline"]).await;
    assert_eq!(
        summary(&ran),
        ["  devices:  platform_id=12, only those a socket powers (only_powered)"]
    );
}

#[tokio::test]
async fn check_passes_with_a_warning_when_prometheus_does_not_answer() {
    let prometheus = closed_url();
    let site = Site::with_rules(&rules(&prometheus, &closed_url()));
    let ran = site.jobctl(&["check"]).await;
    assert_eq!(
        (ran.code, ran.stderr.as_str()),
        (0, format!("jobctl: warning: PromQL not checked by Prometheus: cannot reach Prometheus at {prometheus}/api/v1/format_query: Connection refused (os error 111); check that Prometheus is running and that the URL is right\n").as_str()),
    );
    assert_eq!(
        ran.stdout.lines().next().unwrap(),
        "rules.toml: OK: 1 job (1 enabled), 1 socket, 1 file; SMS via http; PromQL checked locally (Prometheus did not answer)"
    );
}

/// Offline, or with no engine to ask, jobctl's own PromQL parser judges
/// every query: a syntax error is an error at the job's place, exit 3, as
/// when Prometheus rejects it.
#[tokio::test]
async fn check_offline_or_unanswered_refuses_what_is_not_promql() {
    let text = format!(
        "{}\n[[jobs]]\nname = \"broken promql\"\nexpr = \"rate(up[5m]\"\naction = {{ command = \"power_on\" }}\n\n\
         [[jobs]]\nname = \"metricsql\"\nexpr = \"rate(up) default 0\"\naction = {{ command = \"power_on\" }}\n",
        rules(&closed_url(), &closed_url())
    );
    let site = Site::with_rules(&text);
    let refused = "jobctl: rules.toml:34:1: job \"broken promql\": \"rate(up[5m]\" is not valid PromQL: unclosed left parenthesis\n\
                   jobctl: rules.toml:39:1: job \"metricsql\": \"rate(up) default 0\" is not valid PromQL: it does not parse\n";
    let ran = site.jobctl(&["check", "--offline"]).await;
    assert_eq!((ran.code, ran.stdout.as_str(), ran.stderr.as_str()), (3, "", refused));
    let ran = site.jobctl(&["check"]).await;
    assert_eq!(ran.code, 3, "{ran:?}");
    assert!(ran.stderr.ends_with(refused), "{}", ran.stderr);

    site.write("rules.toml", &rules(&closed_url(), &closed_url()));
    let ran = site.jobctl(&["check", "--offline"]).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{}", ran.stdout);
    assert!(
        ran.stdout
            .lines()
            .next()
            .unwrap()
            .ends_with("; SMS via http; PromQL checked locally (--offline)"),
        "{}",
        ran.stdout
    );
}

// ---------------------------------------------------------------------------
// jobctl run --once

/// The log lines of one cycle that takes [`DEVICE`] from inactive to firing.
fn firing_lines(level_and_outcome: &str) -> String {
    let who = format!("job \"reboot frozen\": device {DEVICE} (Lobby)");
    format!(
        " INFO {who}: inactive → pending (value 0)\n INFO {who}: pending → firing after 0s (episode 1) (value 0)\n{}\n",
        level_and_outcome.replace("{who}", &who)
    )
}

/// The same `run --once` as below on a PostgreSQL journal: the same SMS,
/// the same log, the same history, and the password nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_on_a_postgres_journal_sends_the_same_sms_as_on_sqlite() {
    if !TestPrometheus::available() {
        return;
    }
    let Some(db) = support::postgres::fresh_database() else { return };
    let (prometheus, _target) = prometheus_seeing(0).await;
    let gateway = FakeGateway::start().await;
    let text = rules(prometheus.url(), &gateway.url()).replace(
        "path = \"journal.db\"",
        &format!("url = \"{}\"\npassword_file = \"pg.password\"", db.url),
    );
    let site = Site::with_rules(&text);
    write_secret(&site.path("pg.password"), support::postgres::JOBCTL_PASSWORD);

    let ran = site.jobctl(&["run", "--once"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr),
        (
            0,
            "2 queries (0 failed), 1 evaluation (0 unknown), 2 transitions, 1 action due, 1 sent, 0 suppressed, 0 errors\n",
            firing_lines(
                " INFO {who}: \"#12#0#1#1#\" to socket lobby (+79991234567): sending (episode 1, action 1)\n \
                 INFO {who}: \"#12#0#1#1#\" to socket lobby (+79991234567): sent via http (execution #1)"
            )
        )
    );
    let sent = gateway.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].query_pairs()[1], ("text".into(), POWER_CYCLE_1.into()));
    let history = site.history(&[]).await;
    assert_eq!((history.len(), history[0]["outcome"].as_str()), (1, Some("sent")));
    assert!(!site.path("journal.db").exists(), "nothing went to SQLite");

    // The state was kept: a second cycle finds the device firing, not due.
    let again = site.jobctl(&["run", "--once"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("0 transitions, 0 actions due, 0 sent"), "{again:?}");
    assert_eq!(gateway.received().len(), 1);

    // The other commands read and write the same journal.
    let status = site.jobctl(&["status"]).await;
    assert_eq!((status.code, status.stderr.as_str()), (0, ""), "{status:?}");
    assert!(status.stdout.contains("firing"), "{status:?}");
    let silenced = site
        .jobctl(&[
            "silence",
            "add",
            "--job",
            "reboot frozen",
            "--for",
            "1h",
            "--comment",
            "test",
            "--author",
            "anna",
        ])
        .await;
    assert_eq!(silenced.code, 0, "{silenced:?}");
    assert!(silenced.stdout.starts_with("silence #1 added"), "{silenced:?}");
    let listed = site.jobctl(&["silence", "list"]).await;
    assert!(listed.stdout.contains("test"), "{listed:?}");
    let report = site.jobctl(&["report"]).await;
    assert_eq!((report.code, report.stderr.as_str()), (0, ""), "{report:?}");
    let backup = site.jobctl(&["journal", "backup", "copy.db"]).await;
    assert_eq!(
        (backup.code, backup.stderr),
        (
            4,
            format!(
                "jobctl: {}: `jobctl journal backup` works on an SQLite journal only; back a \
                 PostgreSQL journal up with pg_dump (README, \"Operations\")\n",
                db.url
            )
        )
    );

    // Wrong password: the server's refusal, with the URL and no password.
    write_secret(&site.path("pg.password"), "wrong-password-xyzzy");
    let refused = site.jobctl(&["run", "--once"]).await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.starts_with(&format!(
            "jobctl: {}: cannot connect to the journal's PostgreSQL database: ",
            db.url
        )),
        "{refused:?}"
    );
    assert!(refused.stderr.contains("password authentication failed"), "{refused:?}");
    assert!(!refused.stderr.contains("xyzzy"), "{refused:?}");
}

/// PostgreSQL stopped under a running daemon while a device goes offline:
/// nothing is sent while the journal cannot commit the message, the daemon
/// goes on evaluating (and says once that the journal is unreachable), and
/// once PostgreSQL is back the due action leaves exactly once, journalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_on_postgres_sends_nothing_while_it_is_down_and_once_after() {
    if !TestPrometheus::available() {
        return;
    }
    let Some(server) = support::postgres::own_server() else { return };
    let db = server.fresh_database();
    let (prometheus, target) = prometheus_seeing(1).await;
    let gateway = FakeGateway::start().await;
    let text = rules(prometheus.url(), &gateway.url()).replace(
        "path = \"journal.db\"",
        &format!("url = \"{}\"\npassword_file = \"pg.password\"", db.url),
    );
    let site = Site::with_rules(&text);
    write_secret(&site.path("pg.password"), support::postgres::JOBCTL_PASSWORD);
    let mut daemon = Daemon::start(&site).await;
    daemon.wait_cycles(1).await;

    tokio::task::block_in_place(|| server.stop());
    target.set(device_page(0));
    wait_for_value(&prometheus, 0).await;
    let lost = daemon.wait_for("the connection to PostgreSQL is lost").await;
    assert!(lost.contains(&format!(" WARN journal {}: ", db.url)), "{lost}");
    daemon.wait_for("nothing was sent; the action").await;
    // Still evaluating, still nothing sent, the loss told once.
    daemon.wait_cycles(1).await;
    assert!(gateway.received().is_empty(), "{:?}", gateway.received());
    assert_eq!(daemon.child.try_wait().unwrap(), None, "jobctl exited:\n{}", daemon.log());
    let (_, metrics) = daemon.get("/metrics").await;
    let series = "jobctl_action_errors_total{job=\"reboot frozen\"}";
    let errors: Option<u64> = support::exposition::value(&metrics, series);
    assert!(errors.is_some_and(|n| n >= 1), "{metrics}");

    tokio::task::block_in_place(|| server.start_again());
    daemon.wait_for("the connection to PostgreSQL is back").await;
    daemon.wait_for("sent via http").await;
    daemon.wait_cycles(2).await;
    assert_eq!(gateway.received().len(), 1, "{:?}", gateway.received());
    let mut log = daemon.seen.clone();
    let (code, rest) = daemon.stop().await;
    log.extend(rest);
    let log = log.join("\n");
    assert_eq!(code, 0, "{log}");
    assert_eq!(log.matches("the connection to PostgreSQL is lost").count(), 1, "{log}");
    assert_eq!(log.matches("the connection to PostgreSQL is back").count(), 1, "{log}");
    assert!(!log.contains(support::postgres::JOBCTL_PASSWORD), "{log}");
    let history = site.history(&[]).await;
    assert_eq!((history.len(), history[0]["outcome"].as_str()), (1, Some("sent")), "{history:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_sends_one_sms_dry_run_none_and_a_dead_prometheus_exits_6() {
    if !TestPrometheus::available() {
        return;
    }
    let (mut prometheus, _target) = prometheus_seeing(0).await;
    let gateway = FakeGateway::start().await;

    let live = Site::with_rules(&rules(prometheus.url(), &gateway.url()));
    let ran = live.jobctl(&["run", "--once"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr),
        (
            0,
            "2 queries (0 failed), 1 evaluation (0 unknown), 2 transitions, 1 action due, 1 sent, 0 suppressed, 0 errors\n",
            firing_lines(
                " INFO {who}: \"#12#0#1#1#\" to socket lobby (+79991234567): sending (episode 1, action 1)\n \
                 INFO {who}: \"#12#0#1#1#\" to socket lobby (+79991234567): sent via http (execution #1)"
            )
        )
    );
    let sent = gateway.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].path.as_str(), sent[0].query_pairs(), sent[0].header("authorization")),
        (
            "/send",
            vec![("number".into(), "+79991234567".into()), ("text".into(), POWER_CYCLE_1.into())],
            Some(DEFAULT_KEY)
        )
    );
    let history = live.history(&[]).await;
    assert_eq!((history.len(), history[0]["outcome"].as_str()), (1, Some("sent")));

    let dry = Site::with_rules(&rules(prometheus.url(), &gateway.url()));
    let ran = dry.jobctl(&["run", "--once", "--dry-run"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr),
        (
            0,
            "2 queries (0 failed), 1 evaluation (0 unknown), 2 transitions, 1 action due, 0 sent, 1 suppressed, 0 errors\n",
            firing_lines(
                " WARN {who}: \"#12#0#1#1#\" to socket lobby (+79991234567): dry run: not sent (execution #1)"
            )
        )
    );
    assert_eq!(gateway.received().len(), 1, "a dry run sent something");
    let history = dry.history(&[]).await;
    assert_eq!(history.len(), 1);
    assert_eq!(
        (
            &history[0]["outcome"],
            &history[0]["text"],
            &history[0]["detail"],
            &history[0]["attempts"]
        ),
        (&"dry_run".into(), &POWER_CYCLE_1.into(), &"dry run: not sent".into(), &0.into())
    );

    // The device is still offline, but Prometheus is gone: unknown, not true.
    prometheus.stop();
    let dead = Site::with_rules(&rules(prometheus.url(), &gateway.url()));
    let ran = dead.jobctl(&["run", "--once"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr),
        (
            6,
            "2 queries (2 failed), 0 evaluations (0 unknown), 0 transitions, 0 actions due, 0 sent, 0 suppressed, 0 errors\n",
            format!(" WARN 2 of 2 Prometheus queries failed (first: \"addreality_device_online{{platform_id=\\\"12\\\"}}\": cannot reach Prometheus at {}/api/v1/query: Connection refused (os error 111); check that Prometheus is running and that the URL is right); devices that depend on them are unknown: nothing advances and nothing is sent until they answer\n", prometheus.url())
        )
    );
    assert_eq!(gateway.received().len(), 1, "sent without Prometheus");
    assert_eq!(dead.history(&[]).await, Vec::<serde_json::Value>::new());
}

/// Issue 9, item 3: a dry run, then a live run, on one journal. The live
/// run acts as if the dry run had not happened: the action is due and sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_leaves_the_next_live_run_as_if_it_had_not_happened() {
    if !TestPrometheus::available() {
        return;
    }
    let (prometheus, _target) = prometheus_seeing(0).await;
    let gateway = FakeGateway::start().await;
    let site = Site::with_rules(&rules(prometheus.url(), &gateway.url()));

    let ran = site.jobctl(&["run", "--once", "--dry-run"]).await;
    assert_eq!((ran.code, ran.stdout.as_str()), (0, "2 queries (0 failed), 1 evaluation (0 unknown), 2 transitions, 1 action due, 0 sent, 1 suppressed, 0 errors\n"), "{ran:?}");
    let status = site.jobctl(&["status", "--format", "json"]).await;
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["devices"], serde_json::json!([]), "the dry run saved a state");

    let ran = site.jobctl(&["run", "--once"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, "2 queries (0 failed), 1 evaluation (0 unknown), 2 transitions, 1 action due, 1 sent, 0 suppressed, 0 errors\n"),
        "{ran:?}"
    );
    assert_eq!(gateway.sent().len(), 1);
    let history = site.history(&[]).await;
    let outcomes: Vec<&str> = history.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["sent", "dry_run"]);
}

// ---------------------------------------------------------------------------
// jobctl send

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_delivers_a_socket_command_through_the_journal() {
    let gateway = FakeGateway::start().await;
    let site = Site::with_rules(&rules(&closed_url(), &gateway.url()));
    let ran = site.jobctl(&["send", "lobby", "power_cycle", "minutes=1"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
        (
            0,
            "execution #1: \"#12#0#1#1#\" to lobby (+79991234567): sent\n",
            " INFO manual: \"#12#0#1#1#\" to socket lobby (+79991234567): sending\n \
             INFO manual: \"#12#0#1#1#\" to socket lobby (+79991234567): sent via http (execution #1)\n"
        )
    );
    assert_eq!(gateway.received().len(), 1);
    assert_eq!(gateway.received()[0].query_param("text").as_deref(), Some(POWER_CYCLE_1));
    let history = site.history(&[]).await;
    assert_eq!(
        (&history[0]["manual"], &history[0]["job"], &history[0]["outcome"]),
        (&true.into(), &serde_json::Value::Null, &"sent".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_refuses_unknown_sockets_commands_and_parameters_with_exit_2() {
    let gateway = FakeGateway::start().await;
    let site = Site::with_rules(&rules(&closed_url(), &gateway.url()));
    let cases: [(&[&str], &str); 7] = [
        (&["hall", "power_on"], "no socket \"hall\" in the rules; sockets: lobby"),
        (
            &["lobby", "reboot"],
            "socket lobby: there is no command \"reboot\"; known commands: power_on, power_off, power_cycle, power_off_after, register_master, add_user",
        ),
        (
            &["lobby", "power_cycle"],
            "socket lobby: command power_cycle needs minutes (a whole number from 1 to 999), like minutes = 1",
        ),
        (
            &["lobby", "power_cycle", "minutes=0"],
            "socket lobby: minutes = 0 for command power_cycle: it is out of range; use a whole number from 1 to 999",
        ),
        (
            &["lobby", "power_cycle", "minutes=a"],
            "socket lobby: minutes = \"a\" for command power_cycle: it must be a whole number from 1 to 999",
        ),
        (&["lobby", "power_cycle", "minutes"], "parameter \"minutes\" must be NAME=VALUE, e.g. minutes=1"),
        (
            &["lobby", "power_cycle", "minutes=1", "seconds=2"],
            "socket lobby: command power_cycle has no parameter \"seconds\"; it takes minutes",
        ),
    ];
    for (args, message) in cases {
        let mut command = vec!["send"];
        command.extend_from_slice(args);
        let ran = site.jobctl(&command).await;
        assert_eq!(
            (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
            (2, "", format!("jobctl: {message}\n").as_str()),
            "jobctl {command:?}"
        );
    }
    assert_eq!(gateway.received().len(), 0);
    assert!(!site.path("journal.db").exists(), "a refused command opened the journal");
}

/// A gateway that takes the message but never answers in time: the send
/// may have left, so it is journalled uncertain, not retried, and exit 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_exits_7_when_the_gateway_does_not_confirm() {
    let gateway = FakeGateway::start().await;
    gateway.set_fault(Some(Fault::Hang));
    let site = Site::with_rules(&rules(&closed_url(), &gateway.url()));
    let ran = site.jobctl(&["send", "lobby", "power_on"]).await;
    let why = format!(
        "no answer from {}/send within 2s; the gateway may have sent the message",
        gateway.url()
    );
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr),
        (
            7,
            "",
            format!(
                " INFO manual: \"#01#0#\" to socket lobby (+79991234567): sending\n\
                 ERROR manual: \"#01#0#\" to socket lobby (+79991234567): may have been sent: {why}; journalled as uncertain and not retried (execution #1)\n\
                 jobctl: execution #1: \"#01#0#\" to lobby (+79991234567): uncertain: {why}\n"
            )
        )
    );
    assert_eq!(gateway.received().len(), 1, "an uncertain send was retried");
    let history = site.history(&["--outcome", "uncertain"]).await;
    assert_eq!((history.len(), &history[0]["detail"]), (1, &why.into()));
}

// ---------------------------------------------------------------------------
// jobctl test-rule

/// What `test-rule "reboot frozen"` prints while [`DEVICE`] is offline and
/// in `state`.
fn test_rule_report(state: &str) -> String {
    format!(
        "job \"reboot frozen\"\n  \
         when addreality_device_online == 0 for 0s\n\
         \n\
         {DEVICE} (Lobby)\n  \
         value:      addreality_device_online{{platform_id=\"12\"}} = 0\n  \
         condition:  true\n  \
         state:      {state}\n  \
         would send: \"#12#0#1#1#\" to socket lobby (+79991234567)\n\
         \n\
         1 device, 1 with the condition true now\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_rule_shows_what_it_would_send_and_sends_only_when_told() {
    if !TestPrometheus::available() {
        return;
    }
    let (mut prometheus, _target) = prometheus_seeing(0).await;
    let gateway = FakeGateway::start().await;
    let site = Site::with_rules(&rules(prometheus.url(), &gateway.url()));

    let ran = site.jobctl(&["test-rule", "reboot frozen"]).await;
    let report = test_rule_report("inactive (no saved state)");
    assert_eq!((ran.code, ran.stdout.as_str(), ran.stderr.as_str()), (0, report.as_str(), ""));

    let ran = site.jobctl(&["test-rule", "reboot"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
        (2, "", "jobctl: no job \"reboot\" in the rules; jobs: \"reboot frozen\"\n")
    );

    // stdin is not a terminal: nobody can confirm.
    let ran = site.jobctl(&["test-rule", "reboot frozen", "--send"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
        (
            2,
            report.as_str(),
            "jobctl: refusing to send without confirmation: stdin is not a terminal; add --yes\n"
        )
    );
    assert_eq!(gateway.received().len(), 0);

    let ran = site.jobctl(&["test-rule", "reboot frozen", "--send", "--yes"]).await;
    assert_eq!(
        (ran.code, ran.stdout, ran.stderr.as_str()),
        (
            0,
            format!("{report}execution #1: \"#12#0#1#1#\" to lobby (+79991234567): sent\n"),
            " INFO manual: \"#12#0#1#1#\" to socket lobby (+79991234567): sending\n \
             INFO manual: \"#12#0#1#1#\" to socket lobby (+79991234567): sent via http (execution #1)\n"
        )
    );
    assert_eq!(gateway.sent().len(), 1);
    assert_eq!(gateway.sent()[0].text, POWER_CYCLE_1);

    // A manual send leaves the job's state alone; a daemon cycle moves it,
    // and test-rule reads it from the journal.
    assert_eq!(site.jobctl(&["run", "--once"]).await.code, 0);
    let status = site.jobctl(&["status", "--format", "json"]).await;
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let since = status["devices"][0]["since"].as_str().unwrap();
    let ran = site.jobctl(&["test-rule", "reboot frozen"]).await;
    assert_eq!(
        (ran.code, ran.stdout, ran.stderr.as_str()),
        (
            0,
            test_rule_report(&format!(
                "firing since {since} (episode 1, 1 action); last action {since}"
            )),
            ""
        )
    );

    prometheus.stop();
    let ran = site.jobctl(&["test-rule", "reboot frozen"]).await;
    assert_eq!(
        (ran.code, ran.stdout, ran.stderr.as_str()),
        (
            6,
            format!(
                "query \"addreality_device_online{{platform_id=\\\"12\\\"}}\" failed: cannot reach Prometheus at {}/api/v1/query: Connection refused (os error 111); check that Prometheus is running and that the URL is right\n\
                 job \"reboot frozen\"\n  \
                 when addreality_device_online == 0 for 0s\n\
                 \n\
                 no device in Prometheus's answers\n\
                 \n\
                 0 devices, 0 with the condition true now\n",
                prometheus.url()
            ),
            ""
        )
    );
}

// ---------------------------------------------------------------------------
// jobctl run: the daemon

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_listen_serves_metrics_and_health_and_stops_on_sigterm() {
    // Without Prometheus: cycles still run (and count their failures).
    let site = Site::with_rules(&rules(&closed_url(), &closed_url()));
    let daemon = Daemon::start(&site).await;
    daemon.wait_cycles(1).await;
    let (status, metrics) = daemon.get("/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "jobctl_query_failures_total{reason=\"unreachable\"} ",
        "jobctl_sms_total{outcome=\"sent\"} 0",
        "jobctl_sms_total{outcome=\"uncertain\"} 0",
        "jobctl_last_cycle_timestamp_seconds ",
        "jobctl_cycle_duration_seconds ",
    ] {
        assert!(metrics.lines().any(|l| l.starts_with(series)), "no {series} in:\n{metrics}");
    }
    // Cycles run, but no job can act while its queries fail: unhealthy.
    let (status, health) = daemon.get("/healthz").await;
    assert_eq!((status, health.as_str()), (503, "unhealthy: Prometheus queries are failing: no job can act until they answer (see the log)\n"));
    assert!(metrics.lines().any(|l| l == "jobctl_prometheus_up 0"), "{metrics}");
    let (code, log) = daemon.stop().await;
    assert_eq!(code, 0);
    assert_eq!(log[log.len() - 2..], [" INFO SIGTERM received, shutting down", " INFO stopped"]);

    // The address is taken: exit 5, nothing run.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let ran = site.jobctl(&["run", "--listen", &addr]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr),
        (5, "", format!("jobctl: cannot listen on {addr}: Address already in use (os error 98)\n"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_file_keeps_the_old_rules_running() {
    if !TestPrometheus::available() {
        return;
    }
    let (prometheus, target) = prometheus_seeing(1).await;
    let gateway = FakeGateway::start().await;
    let good = rules(prometheus.url(), &gateway.url());
    let site = Site::with_rules(&good);
    let mut daemon = Daemon::start(&site).await;
    daemon.wait_cycles(1).await;
    let (status, health) = daemon.get("/healthz").await;
    assert_eq!(status, 200, "{health}");
    assert!(health.starts_with("ok: last cycle ") && health.ends_with("s ago\n"), "{health}");

    site.write("rules.toml", &good.replace("for = \"0s\"", "for = \"soon\""));
    daemon.signal("HUP");
    daemon.wait_for("SIGHUP received, reloading").await;
    assert_eq!(
        daemon.wait_for("reload rejected").await,
        "ERROR reload rejected: rules.toml:31:7: invalid duration \"soon\": expected number at 0 (write it like \"30s\", \"10m\", \"1h30m\", \"7d\")"
    );
    assert_eq!(
        daemon.wait_for("reload rejected").await,
        "ERROR reload rejected: the previous rules keep running"
    );

    // The old rules still evaluate: the device going offline is acted on.
    target.set(device_page(0));
    daemon.wait_for("sent via http (execution #1)").await;
    assert_eq!(gateway.sent().len(), 1);

    // A valid change: the job keeps its state (no second SMS), a new one starts.
    site.write(
        "rules.toml",
        &format!(
            "{good}\n[[jobs]]\nname = \"playing\"\nexpr = \"addreality_device_online == 1\"\naction = {{ command = \"power_off\" }}\n"
        ),
    );
    daemon.signal("HUP");
    assert_eq!(
        daemon.wait_for("rules reloaded").await,
        " INFO rules reloaded: 2 jobs (1 kept with their state, 1 new, 0 removed)"
    );
    daemon.wait_cycles(2).await;
    assert_eq!(gateway.received().len(), 1, "the kept job acted again:\n{}", daemon.log());

    let (code, log) = daemon.stop().await;
    assert_eq!(
        (code, &log[log.len() - 2..]),
        (
            0,
            &[" INFO SIGTERM received, shutting down".to_string(), " INFO stopped".to_string()][..]
        )
    );
}

/// `run --listen` secured by `--web.config.file`: TLS and basic auth on
/// jobctl's own /metrics, a bad file refused at start (exit 3) and at SIGHUP
/// (logged, the one in force kept), a renewed certificate served after
/// SIGHUP, which reloads the rules too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_takes_a_web_config_and_reloads_it_with_the_rules() {
    if !TestPrometheus::available() {
        return;
    }
    let (prometheus, _target) = prometheus_seeing(1).await;
    let gateway = FakeGateway::start().await;
    let site = Site::with_rules(&rules(prometheus.url(), &gateway.url()));
    let ca = TestCa::new("jobctl test CA");
    ca.server("jobctl one", 1).write(site.dir.path(), "server");
    let password = "jobctl-metrics-pw";
    let hash = bcrypt::hash(password, 4).unwrap();
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    site.write("web.yml", &format!("{tls}basic_auth_users:\n  prometheus: {hash}\n"));

    site.write("bad.yml", &format!("{tls}  client_auth_type: Always\n"));
    let ran =
        site.jobctl(&["run", "--listen", "127.0.0.1:0", "--web.config.file", "bad.yml"]).await;
    assert_eq!(
        (ran.code, ran.stderr.as_str()),
        (3, "jobctl: web config bad.yml: tls_server_config.client_auth_type: unknown policy \"Always\": expected one of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert\n")
    );
    let ran = site.jobctl(&["run", "--web.config.file", "web.yml"]).await;
    assert_eq!(ran.code, 2, "--web.config.file needs --listen: {}", ran.stderr);

    let mut daemon = Daemon::start_with(&site, &["--web.config.file", "web.yml"]).await;
    assert!(daemon.base.starts_with("https://127.0.0.1:"), "{}", daemon.base);
    let url = format!("{}/metrics", daemon.base);
    let https = client(Some(&ca), None);
    let scrape = || https.get(&url).basic_auth("prometheus", Some(password)).send();
    let answer = scrape().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.text().await.unwrap().contains("jobctl_cycles_total "));
    let refused = https.get(&url).basic_auth("prometheus", Some("guess")).send().await.unwrap();
    assert_eq!(refused.status(), 401);

    let renewed = ca.server("jobctl two", 2);
    renewed.write(site.dir.path(), "server");
    daemon.signal("HUP");
    assert_eq!(
        daemon.wait_for("web config").await,
        " INFO web config web.yml reloaded: TLS, basic auth for 1 user"
    );
    daemon.wait_for("rules reloaded").await;
    assert_eq!(served_certificate(&scrape().await.unwrap()), renewed.der);

    site.write("web.yml", &format!("{tls}basic_auth_users:\n  prometheus: plaintext-password\n"));
    daemon.signal("HUP");
    assert_eq!(
        daemon.wait_for("reload rejected").await,
        "ERROR reload rejected: web config web.yml: basic_auth_users.prometheus: not a bcrypt hash (expected $2y$…, 60 characters; make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`); the previous web config stays in force"
    );
    // The rules were fine: they are reloaded all the same.
    daemon.wait_for("rules reloaded").await;
    let answer = scrape().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(served_certificate(&answer), renewed.der);

    let mut log = daemon.log();
    let (code, rest) = daemon.stop().await;
    assert_eq!(code, 0);
    log.push_str(&rest.join("\n"));
    for secret in [password, hash.as_str(), "plaintext-password"] {
        assert!(!log.contains(secret), "{secret} was logged:\n{log}");
    }
}

/// A reload whose files are slow to read (here the rules file is a FIFO
/// nobody writes to yet, so reading it blocks until the test writes) does
/// not stall evaluation: cycles go on with the old rules, and the new ones
/// are swapped in once read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reload_does_not_stall_cycles() {
    if !TestPrometheus::available() {
        return;
    }
    let (prometheus, _target) = prometheus_seeing(1).await;
    let gateway = FakeGateway::start().await;
    let good = rules(prometheus.url(), &gateway.url());
    let site = Site::with_rules(&good);
    let mut daemon = Daemon::start(&site).await;
    daemon.wait_cycles(1).await;

    let fifo = site.path("rules.toml");
    std::fs::remove_file(&fifo).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo: {made}");
    daemon.signal("HUP");
    daemon.wait_for("SIGHUP received, reloading").await;
    // The reload is blocked on the FIFO; cycles still run.
    daemon.wait_cycles(2).await;

    let more = format!(
        "{good}\n[[jobs]]\nname = \"playing\"\nexpr = \"addreality_device_online == 1\"\naction = {{ command = \"power_off\" }}\n"
    );
    let writer = tokio::task::spawn_blocking(move || std::fs::write(fifo, more));
    assert_eq!(
        daemon.wait_for("rules reloaded").await,
        " INFO rules reloaded: 2 jobs (1 kept with their state, 1 new, 0 removed)"
    );
    writer.await.unwrap().unwrap();
    let (code, _) = daemon.stop().await;
    assert_eq!(code, 0);
}

/// The daemon is killed while the gateway holds its request: the message
/// may have left. On restart it is marked uncertain and never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_sending_never_sends_twice() {
    if !TestPrometheus::available() {
        return;
    }
    let (prometheus, _target) = prometheus_seeing(0).await;
    let gateway = FakeGateway::start().await;
    gateway.set_fault(Some(Fault::Hang));
    // The daemon waits for the gateway far longer than the test lets it.
    let site = Site::with_rules(
        &rules(prometheus.url(), &gateway.url()).replace("timeout = \"2s\"", "timeout = \"50s\""),
    );
    let mut daemon = Daemon::start(&site).await;
    daemon.wait_for("sending (episode 1, action 1)").await;
    wait_until_async("the gateway receiving the message", || async {
        (gateway.received().len() == 1).then_some(())
    })
    .await;
    daemon.kill().await;
    let history = site.history(&[]).await;
    assert_eq!((history.len(), &history[0]["outcome"]), (1, &"sending".into()));

    gateway.set_fault(None);
    let daemon = Daemon::start(&site).await;
    assert!(
        daemon.seen.contains(&format!(
            " WARN execution #1 (\"{POWER_CYCLE_1}\" to lobby +79991234567) was in flight when jobctl stopped; marked uncertain: it is not sent again"
        )),
        "{}",
        daemon.log()
    );
    daemon.wait_cycles(2).await;
    assert_eq!(gateway.received().len(), 1, "sent twice:\n{}", daemon.log());

    // The journal says so, read while the daemon holds it open.
    let history = site.history(&[]).await;
    assert_eq!(
        (history.len(), &history[0]["outcome"], &history[0]["detail"]),
        (
            1,
            &"uncertain".into(),
            &"jobctl stopped while this message was being sent; it may have left, so it is not sent again".into()
        )
    );
    let time = history[0]["time"].as_str().unwrap();
    let ran = site.jobctl(&["history", "--outcome", "uncertain"]).await;
    assert_eq!(
        (ran.code, ran.stdout, ran.stderr.as_str()),
        (
            0,
            format!(
                "ID  TIME (UTC)            JOB            DEVICE                                 SOCKET  TEXT          OUTCOME    RESULT  BACKEND  DETAIL\n\
                 1   {time}  reboot frozen  {DEVICE}  lobby   \"#12#0#1#1#\"  uncertain          -        jobctl stopped while this message was being sent; it may have left, so it is not sent again\n"
            ),
            ""
        )
    );
    let (code, _) = daemon.stop().await;
    assert_eq!(code, 0);
}

/// Issue 10: the daemon verifies its power-cycle. While the window is
/// open `status` says how far it is; when the player is back the log line
/// says how long it took, `history` shows the result on the action's row
/// and `/metrics` counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_verifies_its_action_and_status_history_and_metrics_show_it() {
    if !TestPrometheus::available() {
        return;
    }
    let (prometheus, target) = prometheus_seeing(0).await;
    let gateway = FakeGateway::start().await;
    let text = rules(prometheus.url(), &gateway.url()) + "verify = { within = \"10m\" }\n";
    let site = Site::with_rules(&text);
    let mut daemon = Daemon::start(&site).await;
    daemon.wait_for("sent via http (execution #1)").await;

    let status = site.jobctl(&["status"]).await;
    assert!(
        status
            .stdout
            .contains(&format!("reboot frozen  {DEVICE}  firing (verifying, 0s of 10m)  ")),
        "{}",
        status.stdout
    );
    let json = site.jobctl(&["status", "--format", "json"]).await;
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let verifying = &json["devices"][0]["verifying"];
    assert_eq!((&verifying["episode"], &verifying["action"]), (&1.into(), &1.into()));
    assert_eq!(verifying["window_seconds"], 600);

    target.set(device_page(1));
    let line = daemon.wait_for(": recovered ").await;
    let prefix = format!("job \"reboot frozen\": device {DEVICE} (Lobby): recovered ");
    let (_, said) = line.split_once(&prefix).unwrap_or_else(|| panic!("{line}"));
    assert!(said.ends_with(" after action 1 of episode 1 (execution #1)"), "{line}");

    let history = site.history(&[]).await;
    assert_eq!(history[0]["result"], "recovered");
    let seconds = history[0]["recovered_after_seconds"].as_u64().expect("a recovery time");
    assert!(seconds < 60, "{seconds}");
    let table = site.jobctl(&["history"]).await;
    assert!(table.stdout.contains("  sent     recovered after "), "{}", table.stdout);
    let (_, metrics) = daemon.get("/metrics").await;
    let series = "jobctl_executions_total{job=\"reboot frozen\",outcome=\"recovered\"}";
    assert_eq!(support::exposition::value::<u64>(&metrics, series), Some(1), "{metrics}");
    let (code, _) = daemon.stop().await;
    assert_eq!(code, 0);
}

/// Makes [`DEVICE`] offline on `target` for exactly `samples` scrapes:
/// set offline just after a scrape and back online just after the
/// `samples`-th scrape that served it offline, so Prometheus holds that many
/// offline samples, a scrape interval apart, and nothing waits on a clock.
async fn offline_for_samples(target: &TestTarget, samples: u64) {
    target.wait_scrapes(1).await;
    target.set(device_page(0));
    target.wait_scrapes(samples).await;
    target.set(device_page(1));
}

/// `for = "3s"` against a Prometheus scraping every second, evaluated
/// every 2 s. A condition seen in three samples (the most a condition true
/// for 2.5 s can show: the first good sample comes 3 s after the first bad
/// one) never fires. One seen in four samples (what a condition true for 4
/// s, one scrape interval longer than `for`, always shows) always fires:
/// the daemon dates its onset from Prometheus's history and wakes when
/// `for` has held, before the next scrape ends it. Counted from the cycles,
/// it would fire at the cycle 4 s after the one that first saw it, after
/// the end. (A condition true for 3.5 s shows in three or four samples, and
/// three are what 2.5 s can show too: no rule can tell them apart.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shorter_than_for_never_fires_and_longer_by_a_scrape_always_does() {
    if !TestPrometheus::available() {
        return;
    }
    let target = TestTarget::start();
    target.set(device_page(1));
    let options = PrometheusOptions {
        scrape_interval: Duration::from_secs(1),
        ..PrometheusOptions::default()
    };
    let prometheus = options.start(&[&target]).await;
    wait_for_value(&prometheus, 1).await;
    let gateway = FakeGateway::start().await;
    let text = rules_file::head(prometheus.url(), "2s", "1s", "journal.db")
        + &rules_file::gateway_sms(&gateway.url(), "")
        + &rules_file::socket("lobby", "+7 999 123-45-67", "simpal-d210", "12", "30785")
        + &rules_file::offline_job("reboot frozen", "12", Some("3s"), POWER_CYCLE_ACTION)
        + "cooldown = \"1s\"\n";
    let site = Site::with_rules(&text);
    let mut daemon = Daemon::start(&site).await;

    for _ in 0..2 {
        offline_for_samples(&target, 3).await;
        daemon.wait_for(": pending → inactive after ").await;
        assert!(gateway.received().is_empty(), "fired on 3 samples; log:\n{}", daemon.log());
    }
    for round in 1..=2 {
        offline_for_samples(&target, 4).await;
        daemon.wait_for(": firing → resolved after ").await;
        assert_eq!(gateway.received().len(), round, "log:\n{}", daemon.log());
    }
    let (code, _) = daemon.stop().await;
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_backup_is_taken_beside_the_daemon_and_never_overwrites() {
    let site = Site::with_rules(&rules(&support::closed_url(), &support::closed_url()));
    let ran = site.jobctl(&["journal", "backup", "backup.db"]).await;
    assert_eq!(ran.code, 4);
    assert_eq!(
        ran.stderr,
        "jobctl: ./journal.db: no journal there yet; `jobctl run` creates it when it first starts (the rules' [journal] path says where it is)\n"
    );
    assert!(!site.path("backup.db").exists());
    if !TestPrometheus::available() {
        return;
    }
    let (prometheus, _target) = prometheus_seeing(0).await;
    let gateway = FakeGateway::start().await;
    site.write("rules.toml", &rules(prometheus.url(), &gateway.url()));
    let mut daemon = Daemon::start(&site).await;
    daemon.wait_for("sent via http (execution #1)").await;

    let ran = site.jobctl(&["journal", "backup", "backup.db"]).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    assert!(
        ran.stdout.starts_with("backup.db: backup of ./journal.db (1 execution, "),
        "{}",
        ran.stdout
    );
    let copy = site.path("backup.db");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&copy).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "phone numbers and texts are for the owner only");
    let journal = signage_watchdog::journal::Journal::open_read_only(&copy).unwrap();
    let history = journal.history(&signage_watchdog::journal::HistoryFilter::default()).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].text, support::rules_file::POWER_CYCLE_1);

    let again = site.jobctl(&["journal", "backup", "backup.db"]).await;
    assert_eq!(again.code, 4);
    assert_eq!(
        again.stderr,
        "jobctl: backup.db: already exists; a backup never overwrites a file (choose a new name)\n"
    );
    let nowhere = site.jobctl(&["journal", "backup", "no/such/dir/backup.db"]).await;
    assert_eq!(nowhere.code, 4);
    assert_eq!(
        nowhere.stderr,
        "jobctl: no/such/dir/backup.db: cannot write the backup there: No such file or directory (os error 2)\n"
    );
    assert!(!site.path("no").exists());
    let (code, _) = daemon.stop().await;
    assert_eq!(code, 0);
}

/// What a writer beside the daemon of process `pid` is told.
fn refused_beside(pid: u32) -> String {
    format!(
        "jobctl: ./journal.db: another jobctl is writing this journal (PID {pid}, holding ./journal.db.lock); \
         only one of `jobctl run`, `run --once`, `send` and `test-rule --send` may write a journal at a time: \
         wait for it or stop it first (history, status and check work beside it)\n"
    )
}

/// Two writers on one journal would both send every action due, and a
/// `run --once` would settle the daemon's sends in flight as uncertain. So
/// every writer is refused at once beside a running daemon (exit 4, the
/// daemon's PID named), and writes nothing: the daemon's message in flight
/// stays `sending` and the daemon records its real outcome. Readers work
/// beside it. The lock file a killed daemon leaves does not block the next
/// start: the kernel releases the lock with the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_is_refused_beside_the_daemon_and_a_killed_daemon_blocks_nothing() {
    if !TestPrometheus::available() {
        return;
    }
    let (prometheus, _target) = prometheus_seeing(0).await;
    let gateway = FakeGateway::start().await;
    gateway.set_fault(Some(Fault::Hang));
    let site = Site::with_rules(
        &rules(prometheus.url(), &gateway.url()).replace("timeout = \"2s\"", "timeout = \"50s\""),
    );
    let mut daemon = Daemon::start(&site).await;
    daemon.wait_for("sending (episode 1, action 1)").await;
    wait_until_async("the gateway receiving the message", || async {
        (gateway.received().len() == 1).then_some(())
    })
    .await;
    let pid = daemon.child.id().unwrap();
    let writers: [&[&str]; 4] = [
        &["run", "--once"],
        &["send", "lobby", "power_on"],
        &["test-rule", "reboot frozen", "--send", "--yes"],
        &["run"],
    ];
    for args in writers {
        let ran = site.jobctl(args).await;
        assert_eq!(
            (ran.code, ran.stderr.as_str()),
            (4, refused_beside(pid).as_str()),
            "jobctl {args:?}"
        );
    }
    // The readers work beside the daemon; the message in flight is as the
    // daemon left it, and nobody else sent anything.
    let history = site.history(&[]).await;
    assert_eq!((history.len(), &history[0]["outcome"]), (1, &"sending".into()));
    let ran = site.jobctl(&["status", "--format", "json"]).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""));
    assert_eq!(gateway.received().len(), 1);
    gateway.set_fault(None);
    daemon.wait_for("sent via http (execution #1)").await;

    // kill -9 leaves the lock file, with the dead daemon's PID in it.
    daemon.kill().await;
    let lock_file = site.path("journal.db.lock");
    assert_eq!(std::fs::read_to_string(&lock_file).unwrap(), format!("{pid}\n"));
    let daemon = Daemon::start(&site).await;
    let next = daemon.child.id().unwrap();
    assert_eq!(std::fs::read_to_string(&lock_file).unwrap(), format!("{next}\n"));
    let ran = site.jobctl(&["send", "lobby", "power_on"]).await;
    assert_eq!((ran.code, ran.stderr), (4, refused_beside(next)));
    assert_eq!(daemon.stop().await.0, 0);
    assert_eq!(gateway.received().len(), 1, "sent twice");

    // Once the daemon has stopped, a writer goes ahead.
    let ran = site.jobctl(&["send", "lobby", "power_on"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, "execution #2: \"#01#0#\" to lobby (+79991234567): sent\n"),
        "{}",
        ran.stderr
    );
}

// ---------------------------------------------------------------------------
// jobctl history and status

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_status_read_the_journal_while_the_daemon_runs() {
    if !TestPrometheus::available() {
        return;
    }
    let (prometheus, _target) = prometheus_seeing(0).await;
    let gateway = FakeGateway::start().await;
    let site = Site::with_rules(&rules(prometheus.url(), &gateway.url()));
    // A person sends by hand before the daemon starts (beside a running
    // daemon a send is refused: `a_second_writer_is_refused_…`).
    let ran = site.jobctl(&["send", "lobby", "power_on"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, "execution #1: \"#01#0#\" to lobby (+79991234567): sent\n")
    );
    let mut daemon = Daemon::start(&site).await;
    daemon.wait_for("sent via http (execution #2)").await;

    let history = site.history(&[]).await;
    let ids: Vec<&serde_json::Value> = history.iter().map(|row| &row["id"]).collect();
    assert_eq!(ids, [2, 1], "newest first");
    let (rule, manual) = (&history[0], &history[1]);
    assert_eq!(
        (&rule["job"], &rule["device"], &rule["episode"], &rule["action"], &rule["trigger_value"]),
        (&"reboot frozen".into(), &DEVICE.into(), &1.into(), &1.into(), &0.0.into())
    );
    assert_eq!((&manual["manual"], &manual["text"]), (&true.into(), &"#01#0#".into()));
    let (t1, t2) = (manual["time"].as_str().unwrap(), rule["time"].as_str().unwrap());
    let header = "ID  TIME (UTC)            JOB            DEVICE                                 SOCKET  TEXT          OUTCOME  RESULT  BACKEND  DETAIL\n";
    let row1 = format!("1   {t1}  (manual)       -                                      lobby   \"#01#0#\"      sent             http\n");
    let row2 = format!(
        "2   {t2}  reboot frozen  {DEVICE}  lobby   \"#12#0#1#1#\"  sent             http\n"
    );
    let both = format!("{header}{row2}{row1}");
    let only_rule = format!("{header}{row2}");
    let empty = ("", "no execution in the journal matches\n");
    let cases: [(&[&str], (&str, &str)); 7] = [
        (&[], (&both, "")),
        (&["--job", "reboot frozen"], (&only_rule, "")),
        (&["--device", DEVICE], (&only_rule, "")),
        (&["--outcome", "sent"], (&both, "")),
        (&["--outcome", "failed"], empty),
        (&["--since", "1h"], (&both, "")),
        (&["--since", "2099-01-01T00:00:00Z"], empty),
    ];
    for (filters, (table, said)) in cases {
        let mut args = vec!["history"];
        args.extend_from_slice(filters);
        let ran = site.jobctl(&args).await;
        assert_eq!(
            (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
            (0, table, said),
            "{args:?}"
        );
    }
    let ran = site.jobctl(&["history", "--since", "yesterday"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
        (2, "", "jobctl: --since: invalid time \"yesterday\": write a duration back from now (\"2h\", \"7d\") or a time like 2026-11-28T12:00:00Z\n")
    );
    let ran = site.jobctl(&["history", "--outcome", "lost"]).await;
    assert_eq!(
        (ran.code, ran.stderr.as_str()),
        (2, "error: invalid value 'lost' for '--outcome <OUTCOME>': unknown outcome \"lost\"; expected one of planned, sending, sent, failed, uncertain, suppressed, dry_run\n\nFor more information, try '--help'.\n")
    );

    let ran = site.jobctl(&["status", "--format", "json"]).await;
    let status: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    // The state's times come from the cycle's clock, the journal row's from
    // the moment it was written: read them, do not assume they are equal.
    let since = status["devices"][0]["since"].as_str().unwrap().to_string();
    assert_eq!(
        status,
        serde_json::json!({
            "jobs": [{ "job": "reboot frozen", "enabled": true, "counts": { "firing": 1 } }],
            "devices": [{
                "job": "reboot frozen", "device": DEVICE, "state": "firing",
                "since": since, "episode": 1, "last_action": since,
                "verifying": null, "gave_up": false,
            }],
            "budgets": [
                { "socket": "lobby", "last_hour": 2, "hour_limit": null, "last_day": 2, "day_limit": null },
                { "socket": "(all)", "last_hour": 2, "hour_limit": null, "last_day": 2, "day_limit": null },
            ],
        })
    );
    let ran = site.jobctl(&["status"]).await;
    assert_eq!(
        (ran.code, ran.stdout, ran.stderr.as_str()),
        (
            0,
            format!(
                "JOB            ENABLED  DEVICES\n\
                 reboot frozen  yes      1 firing\n\
                 \n\
                 JOB            DEVICE                                 STATE   SINCE (UTC)           EPISODE  LAST ACTION (UTC)\n\
                 reboot frozen  {DEVICE}  firing  {since}  1        {since}\n\
                 \n\
                 SOCKET  SMS LAST HOUR  SMS LAST DAY\n\
                 lobby   2              2\n\
                 (all)   2              2\n"
            ),
            ""
        )
    );
    assert_eq!(gateway.received().len(), 2);
    assert_eq!(daemon.stop().await.0, 0);
}

/// The read-only commands never create the journal: before any daemon ran
/// they exit 4 and say that it does not exist yet, where, and what creates it.
#[tokio::test]
async fn history_and_status_without_a_journal_exit_4_and_say_it_does_not_exist_yet() {
    let site = Site::with_rules(&rules(&closed_url(), &closed_url()));
    for command in ["history", "status"] {
        let ran = site.jobctl(&[command]).await;
        assert_eq!(
            (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
            (
                4,
                "",
                "jobctl: ./journal.db: no journal there yet; `jobctl run` creates it when it first starts \
                 (the rules' [journal] path says where it is)\n"
            ),
            "jobctl {command}"
        );
    }
    assert!(!site.path("journal.db").exists());
}

/// A damaged journal: every command that opens it exits 4 and ends its
/// message with SQLite's own reason, once.
#[tokio::test]
async fn a_corrupt_journal_exits_4_with_sqlites_reason_everywhere() {
    let site = Site::with_rules(&rules(&closed_url(), &closed_url()));
    // `run --once` creates the journal, then finds Prometheus down.
    let ran = site.jobctl(&["run", "--once"]).await;
    assert_eq!(ran.code, 6, "{ran:?}");
    assert!(!site.path("journal.db-wal").exists(), "checkpointed at exit");
    // Every table's and index's page overwritten (each is one page, as the
    // journal is empty), as a failing disk would; the schema, which spans
    // several pages, left readable.
    let path = site.path("journal.db");
    let (page_size, roots) = {
        let db = rusqlite::Connection::open(&path).unwrap();
        let page_size: usize = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        let mut statement =
            db.prepare("SELECT rootpage FROM sqlite_master WHERE rootpage > 0").unwrap();
        let roots: Vec<usize> =
            statement.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        (page_size, roots)
    };
    assert!(roots.len() > 4, "{roots:?}");
    let mut bytes = std::fs::read(&path).unwrap();
    for root in roots {
        let page = (root - 1) * page_size..root * page_size;
        for (i, byte) in bytes[page].iter_mut().enumerate() {
            *byte = u8::try_from(i * 37 % 251).unwrap();
        }
    }
    std::fs::write(&path, bytes).unwrap();

    let cases: [(&[&str], &str); 5] = [
        (&["history"], "reading the history"),
        (&["status"], "reading job states"),
        (&["run", "--once"], "finding unfinished sends"),
        (&["run"], "finding unfinished sends"),
        (&["test-rule", "reboot frozen"], "reading job states"),
    ];
    for (args, doing) in cases {
        let ran = site.jobctl(args).await;
        assert_eq!(
            (ran.code, ran.stderr),
            (
                4,
                format!(
                    "jobctl: ./journal.db: error while {doing}: database disk image is malformed\n"
                )
            ),
            "jobctl {args:?}"
        );
    }
}

// Output to a reader that went away

#[test]
fn check_into_a_closed_pipe_exits_quietly() {
    // `jobctl check | head -1` with head gone before the first line: the
    // reading end of stdout is closed before jobctl writes anything.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = support::process::command(JOBCTL, dir);
    command.args(["--config", "rules.example.toml", "check", "--offline"]);
    let mut child = command.spawn().unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let ran = Ran::new(output.status, String::new(), stderr);
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "no panic, no backtrace, no message");

    // Any other failure to write is one, said once, without a panic.
    if Path::new("/dev/full").exists() {
        let mut command = support::process::command(JOBCTL, dir);
        command.args(["--config", "rules.example.toml", "check", "--offline"]);
        command.stdout(std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap());
        let output = command.output().unwrap();
        let ran = Ran::new(output.status, String::new(), String::from_utf8(output.stderr).unwrap());
        assert_eq!(
            (ran.code, ran.stderr.as_str()),
            (1, "jobctl: cannot write to stdout: No space left on device (os error 28)\n")
        );
    }
}

// ---------------------------------------------------------------------------
// jobctl silence

/// `jobctl silence list --format json ARGS…`, parsed.
async fn silences(site: &Site, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["silence", "list", "--format", "json"];
    all.extend_from_slice(args);
    let ran = site.jobctl(&all).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", ran.stdout))
}

/// The daemon holds the journal's writer lock; a silence added beside it
/// is honoured at its next cycle, without a reload, and its expiry
/// releases the action that waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_added_beside_the_running_daemon_holds_its_actions_until_expired() {
    if !TestPrometheus::available() {
        return;
    }
    let (prometheus, target) = prometheus_seeing(1).await;
    let gateway = FakeGateway::start().await;
    let site = Site::with_rules(&rules(prometheus.url(), &gateway.url()));
    let mut daemon = Daemon::start(&site).await;

    let ran = site
        .jobctl(&[
            "silence",
            "add",
            "--job",
            "reboot frozen",
            "--device",
            "device_id=30785",
            "--for",
            "2h",
            "--comment",
            "lobby rewiring",
            "--author",
            "anna",
        ])
        .await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
    let listed = silences(&site, &[]).await;
    let until = listed[0]["ends_at"].as_str().unwrap().to_string();
    let from = listed[0]["created_at"].as_str().unwrap().to_string();
    assert_eq!(
        ran.stdout,
        format!(
            "silence #1 added: holds job \"reboot frozen\", device_id=\"30785\" until {until} (2h)\n"
        )
    );

    // The player freezes after the silence was committed: the daemon must
    // hold the power-cycle at the first cycle that sees it.
    target.set(device_page(0));
    wait_for_value(&prometheus, 0).await;
    let line = daemon.wait_for("held by silence #1").await;
    assert!(
        line.ends_with(&format!(
            "INFO job \"reboot frozen\": device {DEVICE}: action 1 of episode 1 held by silence #1 until {until}"
        )),
        "{line}"
    );
    daemon.wait_cycles(3).await;
    assert!(gateway.received().is_empty(), "a silenced action left");
    assert!(!daemon.log().contains("sending"), "{}", daemon.log());

    let status = site.jobctl(&["status", "--format", "json"]).await;
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(
        status["devices"][0]["held_by"],
        serde_json::json!({ "reason": "silenced", "silence": 1, "until": until })
    );
    let ran = site.jobctl(&["status"]).await;
    let held = format!(
        "JOB            DEVICE                                 HELD BY     UNTIL (UTC)\n\
         reboot frozen  {DEVICE}  silence #1  {until}\n"
    );
    assert!(ran.stdout.contains(&held), "{}", ran.stdout);
    let ran = site.jobctl(&["silence", "list"]).await;
    assert_eq!(
        (ran.code, ran.stdout, ran.stderr.as_str()),
        (
            0,
            format!(
                "ID  STATE   MATCHES                                 FROM (UTC)            UNTIL (UTC)           BY    HELD  COMMENT\n\
                 #1  active  job \"reboot frozen\", device_id=\"30785\"  {from}  {until}  anna  1     lobby rewiring\n"
            ),
            ""
        )
    );
    assert_eq!(
        daemon
            .get("/metrics")
            .await
            .1
            .lines()
            .filter(|l| {
                *l == "jobctl_silences_active 1"
                    || *l
                        == "jobctl_held_actions_total{job=\"reboot frozen\",reason=\"silenced\"} 1"
            })
            .count(),
        2
    );

    let ran = site.jobctl(&["silence", "expire", "1", "--author", "boris"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
        (0, "silence #1 expired; it held back 1 action\n", "")
    );
    daemon.wait_for("sent via http (execution #1)").await;
    assert_eq!(gateway.received().len(), 1);

    let ran = site.jobctl(&["silence", "list"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
        (0, "", "no silence in force (--all lists ended ones)\n")
    );
    let all = silences(&site, &["--all"]).await;
    assert_eq!(
        (&all[0]["state"], &all[0]["expired_by"], &all[0]["held_actions"]),
        (&"expired".into(), &"boris".into(), &1.into())
    );
    let ran = site.jobctl(&["silence", "expire", "#1", "--author", "boris"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.starts_with("silence #1 had already ended at "), "{}", ran.stdout);
    assert_eq!(daemon.stop().await.0, 0);
}

/// Every bad input is refused with exit 2 and a message naming it, and
/// leaves the journal as it was.
#[tokio::test]
async fn silence_refuses_bad_input_with_exit_2_and_writes_nothing() {
    let site = Site::with_rules(&rules(&closed_url(), &closed_url()));
    let good = ["--job", "reboot frozen", "--for", "2h", "--comment", "works"];
    let ran = site.jobctl(&[&["silence", "add", "--author", "anna"][..], &good].concat()).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let before = silences(&site, &["--all"]).await;

    let cases: [(&[&str], &str); 11] = [
        (
            &["add", "--for", "2h", "--comment", "works"],
            "jobctl: a silence must say what it holds: --job NAME, --device LABEL=VALUE or --socket NAME (all must match when several are given); --everything holds every action of every job\n",
        ),
        (
            &["add", "--job", "reboot frozen", "--for", "soon", "--comment", "works"],
            "jobctl: --for \"soon\": expected number at 0; write e.g. 30m, 2h or 3d\n",
        ),
        (
            &["add", "--job", "reboot frozen", "--for", "0s", "--comment", "works"],
            "jobctl: --for \"0s\": a silence must last longer than zero\n",
        ),
        (
            &["add", "--job", "reboot", "--for", "2h", "--comment", "works"],
            "jobctl: no job \"reboot\" in the rules; jobs: \"reboot frozen\"\n",
        ),
        (
            &["add", "--socket", "hall", "--for", "2h", "--comment", "works"],
            "jobctl: no socket \"hall\" in the rules; sockets: lobby\n",
        ),
        (
            &["add", "--device", "site", "--for", "2h", "--comment", "works"],
            "jobctl: --device \"site\": write LABEL=VALUE, e.g. site=arzamas or device_id=30785\n",
        ),
        (
            &["add", "--device", "site-name=arzamas", "--for", "2h", "--comment", "works"],
            "jobctl: --device \"site-name=arzamas\": the label must be a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)\n",
        ),
        (
            &["add", "--device", "site=a", "--device", "site=b", "--for", "2h", "--comment", "x"],
            "jobctl: --device \"site=b\": label site is given twice; a device has one value per label\n",
        ),
        (
            &["add", "--job", "reboot frozen", "--for", "2h", "--comment", " "],
            "jobctl: --comment: say why, for whoever finds the silence later\n",
        ),
        (
            &["expire", "7"],
            "jobctl: no silence #7 in the journal; `jobctl silence list --all` shows them\n",
        ),
        (
            &["expire", "seven"],
            "jobctl: \"seven\" is not a silence number; `jobctl silence list --all` shows them (#3 or 3)\n",
        ),
    ];
    for (args, stderr) in cases {
        let ran = site.jobctl(&[&["silence"][..], args, &["--author", "anna"]].concat()).await;
        assert_eq!(
            (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
            (2, "", stderr),
            "{args:?}"
        );
    }
    // $USER is the author unless --author says otherwise; without either,
    // nobody would know who silenced what.
    let mut command = site.command(&[&["silence", "add"][..], &good].concat());
    command.env_remove("USER");
    let ran = run(command).await;
    assert_eq!(
        (ran.code, ran.stderr.as_str()),
        (2, "jobctl: --author: $USER is not set; say who you are with --author NAME\n")
    );
    let ran = site
        .jobctl(&[
            "silence",
            "add",
            "--everything",
            "--job",
            "reboot frozen",
            "--for",
            "2h",
            "--comment",
            "x",
        ])
        .await;
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr.starts_with("error: the argument '--everything' cannot be used with"),
        "{}",
        ran.stderr
    );
    assert_eq!(silences(&site, &["--all"]).await, before, "the journal is as it was");

    let mut command = site.command(&[&["silence", "add", "--everything"][..], &good[2..]].concat());
    command.env("USER", "carol");
    let ran = run(command).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.starts_with("silence #2 added: holds everything until "), "{}", ran.stdout);
    let listed = silences(&site, &[]).await;
    assert_eq!(
        (&listed[0]["id"], &listed[0]["author"], &listed[0]["job"]),
        (&2.into(), &"carol".into(), &serde_json::Value::Null)
    );
}

#[tokio::test]
async fn check_reads_each_webhook_key_and_shows_who_hears_of_escalations() {
    let webhook = |url: &str| {
        rules(&closed_url(), &closed_url())
            + "verify = { within = \"10m\" }\nescalate = [{ webhook = \"ops\" }]\n\n"
            + &format!(
                "[[webhooks]]\nname = \"ops\"\nurl = \"{url}\"\nsecret_file = \"hook.key\"\n"
            )
    };
    let site = Site::with_rules(&webhook("https://ops.example/hooks"));
    let ran = site.jobctl(&["check", "--offline"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
        (3, "", "jobctl: rules.toml:39:15: webhook \"ops\": secret_file: cannot read secret file ./hook.key: No such file or directory (os error 2); the payload cannot be signed\n")
    );
    // `run` refuses to start with a webhook that could not sign.
    let ran = site.jobctl(&["run", "--once"]).await;
    assert_eq!(ran.code, 3, "{ran:?}");
    assert!(
        ran.stderr.contains("webhook \"ops\": secret_file: cannot read secret file ./hook.key"),
        "{ran:?}"
    );

    site.write("hook.key", "k3y\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(site.path("hook.key"), std::fs::Permissions::from_mode(0o644))
        .unwrap();
    let ran = site.jobctl(&["check", "--offline"]).await;
    assert_eq!(
        (ran.code, ran.stderr.as_str()),
        (0, "jobctl: warning: rules.toml:39:15: webhook \"ops\": secret_file: secret file ./hook.key is open to other users (mode 644); run chmod o-rwx on it (600, or 640 for a group that must read it)\n")
    );
    assert!(ran.stdout.contains("\n  escalate: webhook \"ops\"\n"), "{}", ran.stdout);

    write_secret(&site.path("hook.key"), "k3y\n");
    site.write("rules.toml", &webhook("http://jobctl:s3cret@ops.example/hooks"));
    let ran = site.jobctl(&["check", "--offline"]).await;
    assert_eq!(
        (ran.code, ran.stderr.as_str()),
        (0, "jobctl: warning: rules.toml:38:7: webhook \"ops\": url: the credentials would travel unencrypted to ops.example; use https:// (or a receiver on this host)\n")
    );
    assert!(!ran.stdout.contains("s3cret"), "{}", ran.stdout);
}

#[tokio::test]
async fn history_shows_an_escalation_webhook_by_name_url_and_event() {
    use signage_watchdog::journal::{
        Channel, ExecutionId, Journal, Origin, PlannedSend, SendResult,
    };
    let site = Site::with_rules(&rules(&closed_url(), &closed_url()));
    {
        let mut journal = Journal::open(&site.path("journal.db")).unwrap();
        let action = journal
            .plan_send(&PlannedSend {
                origin: Origin::Manual,
                channel: Channel::Sms,
                socket: "lobby".into(),
                phone: "+79991234567".into(),
                text: "#01#0#".into(),
            })
            .unwrap();
        assert_eq!(action, ExecutionId(1));
        let id = journal
            .begin_send(&PlannedSend {
                origin: Origin::Notice {
                    job: "reboot frozen".into(),
                    device_key: Some(DEVICE.into()),
                    event: "not_recovered".into(),
                    about: Some(action),
                    episode: Some(1),
                    attempt: Some(1),
                },
                channel: Channel::Webhook,
                socket: "ops".into(),
                phone: "https://ops.example/hooks".into(),
                text: r#"{"version":1}"#.into(),
            })
            .unwrap();
        let sent =
            SendResult::Sent { backend: "webhook".into(), reference: Some("HTTP 200".into()) };
        journal.finish_send(id, &sent).unwrap();
    }
    let history = site.history(&[]).await;
    let row = &history[0];
    assert_eq!(
        (&row["channel"], &row["event"], &row["about"], &row["socket"], &row["phone"]),
        (
            &"webhook".into(),
            &"not_recovered".into(),
            &1.into(),
            &"ops".into(),
            &"https://ops.example/hooks".into()
        )
    );
    let ran = site.jobctl(&["history"]).await;
    let line = ran.stdout.lines().nth(1).unwrap_or_default().to_string();
    for cell in
        ["webhook ops", "(JSON payload, 13 bytes)", "sent", "not_recovered of #1", "HTTP 200"]
    {
        assert!(line.contains(cell), "no {cell:?} in {line:?}");
    }
}

// ---------------------------------------------------------------------------
// jobctl journal migrate

#[tokio::test]
async fn journal_migrate_copies_sqlite_into_postgres_and_refuses_a_second_time() {
    let Some(db) = support::postgres::fresh_database() else { return };
    let site = Site::new();
    {
        use signage_watchdog::journal::{Channel, Journal, Origin, PlannedSend, SendResult};
        let mut journal = Journal::open(&site.path("journal.db")).unwrap();
        let planned = PlannedSend {
            channel: Channel::Sms,
            origin: Origin::Manual,
            socket: "lobby".into(),
            phone: "+79991234567".into(),
            text: "#01#0#".into(),
        };
        let id = journal.begin_send(&planned).unwrap();
        journal
            .finish_send(id, &SendResult::Sent { backend: "http".into(), reference: None })
            .unwrap();
    }
    let migrate = |site: &Site| {
        let mut command =
            site.command(&["journal", "migrate", "--from", "sqlite:journal.db", "--to", &db.url]);
        command.env("JOBCTL_JOURNAL_PASSWORD", support::postgres::JOBCTL_PASSWORD);
        run(command)
    };
    let ran = migrate(&site).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
        (
            0,
            format!(
                "journal.db -> {}: copied 2 rows (1 executions, 1 attempts, 0 execution_devices, \
                 0 job_state, 0 silences, 0 held_actions, 0 mass_outages); checked row by row\n",
                db.url
            )
            .as_str(),
            ""
        )
    );
    let again = migrate(&site).await;
    assert_eq!(
        (again.code, again.stdout.as_str(), again.stderr.as_str()),
        (
            4,
            "",
            format!(
                "jobctl: {}: the target journal is not empty (table executions has 1 rows); \
                 journal migrate only copies into an empty database, so nothing was copied\n",
                db.url
            )
            .as_str()
        )
    );
}
