//! The Grafana dashboards under `dashboards/` against the metrics the two
//! daemons really serve: a dashboard whose query names a metric that was
//! renamed, or never existed, shows "No data" without any error, so this
//! test is what notices.
//!
//! Each dashboard must be a valid dashboard JSON (a `uid`, a `title`, a
//! `schemaVersion`, unique panel ids, a PromQL `expr` in every target).
//! Every `expr` must parse: `promtool` 2.42 has no offline command that
//! parses one expression, so each becomes a recording rule in a generated
//! rules file, one group per panel (the group's name says which), checked
//! with `promtool check rules`. Grafana's variables are replaced first
//! with values of their kind ([`GRAFANA_VARIABLES`]): `$platform` by `.*`
//! (it is only used in `=~` matchers), `$__rate_interval` by `5m`.
//!
//! Every metric an `expr` names must be one that the project's own
//! `/metrics` serves: the exporter's from a real `addreality-exporter
//! --demo`, jobctl's from an engine driven through a scenario in which
//! every family jobctl has appears (a mass outage holding actions, an
//! action sent and recovered, an action with no socket, a guard not met):
//! families with labels appear only once something happened.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use signage_watchdog::clock::ManualClock;
use signage_watchdog::engine::{Engine, EngineOptions, Mode, SendRetry};
use signage_watchdog::journal::Journal;
use signage_watchdog::prometheus_api::PromClient;
use support::fake_gateway::FakeGateway;
use support::prometheus::{TestPrometheus, TestTarget};
use support::rules_file::{self, POWER_CYCLE_ACTION};
use support::wait::{wait_until_async, DEADLINE};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The dashboards, by file name, and which daemon serves their metrics.
const DASHBOARDS: [(&str, Daemon); 2] =
    [("addreality-exporter.json", Daemon::Exporter), ("jobctl.json", Daemon::Jobctl)];

/// Grafana's variables the dashboards use, and what replaces each before
/// promtool parses the query: a value valid where the variable appears.
const GRAFANA_VARIABLES: [(&str, &str); 2] = [("$__rate_interval", "5m"), ("$platform", ".*")];

/// Whose `/metrics` a dashboard's queries read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Daemon {
    Exporter,
    Jobctl,
}

impl Daemon {
    /// Its name as a sysadmin knows it.
    fn name(self) -> &'static str {
        match self {
            Daemon::Exporter => "addreality-exporter --demo",
            Daemon::Jobctl => "jobctl",
        }
    }
}

/// One target of one panel.
#[derive(Debug)]
struct Query {
    /// `jobctl.json: panel 7 "Cycle duration", target A`.
    place: String,
    /// The query as the dashboard has it.
    expr: String,
    daemon: Daemon,
}

impl Query {
    /// The query with Grafana's variables replaced, as Prometheus gets it.
    fn promql(&self) -> String {
        let mut expr = self.expr.clone();
        for (variable, value) in GRAFANA_VARIABLES {
            expr = expr.replace(variable, value);
        }
        assert!(
            !expr.contains('$'),
            "{}: `{}` uses a Grafana variable this test does not know; add it to GRAFANA_VARIABLES",
            self.place,
            self.expr
        );
        expr
    }
}

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

fn load(file: &str) -> serde_json::Value {
    let path = dashboards_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file} is not valid JSON: {e}"))
}

/// Every panel of a dashboard, those inside rows included.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// Every target's query of every dashboard; panics naming the panel whose
/// target has no `expr`.
fn queries() -> Vec<Query> {
    let mut queries = Vec::new();
    for (file, daemon) in DASHBOARDS {
        let dashboard = load(file);
        for panel in panels(&dashboard) {
            let place = format!("{file}: panel {} {}", panel["id"], panel["title"]);
            for target in panel["targets"].as_array().into_iter().flatten() {
                let place = format!("{place}, target {}", target["refId"]);
                let expr = target["expr"].as_str().filter(|e| !e.trim().is_empty());
                let expr = expr.unwrap_or_else(|| panic!("{place} has no PromQL `expr`"));
                queries.push(Query { place, expr: expr.to_string(), daemon });
            }
        }
    }
    queries
}

#[test]
fn each_dashboard_has_a_uid_a_title_a_schema_version_and_unique_panel_ids() {
    let mut uids = HashSet::new();
    for (file, _) in DASHBOARDS {
        let dashboard = load(file);
        for key in ["uid", "title"] {
            let value = dashboard[key].as_str().unwrap_or_default();
            assert!(!value.is_empty(), "{file}: no `{key}`");
        }
        assert!(uids.insert(dashboard["uid"].to_string()), "{file}: `uid` used twice");
        assert!(dashboard["schemaVersion"].as_u64().is_some(), "{file}: no `schemaVersion`");
        let mut ids = HashSet::new();
        let all = panels(&dashboard);
        assert!(!all.is_empty(), "{file}: no panels");
        for panel in all {
            let id = panel["id"].as_u64().unwrap_or_else(|| panic!("{file}: {panel} has no id"));
            assert!(ids.insert(id), "{file}: panel id {id} used twice");
            let title = panel["title"].as_str().unwrap_or_default();
            assert!(!title.is_empty(), "{file}: panel {id} has no title");
            if panel["type"] != "row" {
                // The user picks the Prometheus: every query goes to the
                // data source variable, never to a data source of ours.
                assert_eq!(
                    panel["datasource"]["uid"], "${DS_PROMETHEUS}",
                    "{file}: panel {id} {title:?} does not use the DS_PROMETHEUS variable"
                );
                let targets = panel["targets"].as_array().map_or(0, Vec::len);
                assert!(targets > 0, "{file}: panel {id} {title:?} has no query");
            }
        }
        let variables = dashboard["templating"]["list"].as_array().cloned().unwrap_or_default();
        assert!(
            variables.iter().any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
            "{file}: no `DS_PROMETHEUS` data source variable"
        );
    }
    // Every query is read from the files without a panic.
    assert!(queries().len() > 20, "the dashboards have fewer queries than expected");
}

#[test]
fn every_query_parses_with_promtool() {
    if !support::installed(
        support::runs("promtool"),
        "promtool not found; install Debian's prometheus package",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut groups = Vec::new();
    for query in queries() {
        groups.push(serde_json::json!({
            "name": query.place,
            "rules": [{ "record": "dashboard:query", "expr": query.promql() }],
        }));
    }
    // JSON is YAML: no quoting of PromQL to get wrong.
    let file = dir.path().join("dashboard-queries.rules.yml");
    std::fs::write(&file, serde_json::json!({ "groups": groups }).to_string()).unwrap();
    let mut command = support::process::command("promtool", dir.path());
    command.arg("check").arg("rules").arg(&file);
    let ran = support::process::run(&mut command);
    assert_eq!(
        ran.code, 0,
        "promtool check rules refused a dashboard query (the group is the panel):\n{}{}",
        ran.stdout, ran.stderr
    );
}

/// PromQL's words that are not metric names when they stand alone, and
/// its aggregation operators (`sum by (…) (…)` is not followed by `(`).
const KEYWORDS: [&str; 26] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "atan2",
];

/// The words that take a list of label names in parentheses after them.
const LABEL_LISTS: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric names a PromQL expression selects: identifiers outside
/// strings, `{…}` matchers and `[…]` ranges that are not a function or an
/// aggregation (followed by `(`), not a keyword and not in the label list
/// of `by (…)`, `on (…)` and the like; and `__name__="…"` matchers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let (mut braces, mut brackets) = (0usize, 0usize);
    let mut after_label_word = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            let end = (i + 1..chars.len())
                .find(|&j| chars[j] == c && (c == '`' || chars[j - 1] != '\\'))
                .unwrap_or(chars.len());
            i = end + 1;
            continue;
        }
        match c {
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            '[' => brackets += 1,
            ']' => brackets = brackets.saturating_sub(1),
            _ => {}
        }
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number or a duration (`5m`, `1.5e3`): never a name.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            if c == '(' && after_label_word {
                // Skip the label list.
                let end = (i..chars.len()).find(|&j| chars[j] == ')').unwrap_or(chars.len());
                i = end + 1;
                after_label_word = false;
                continue;
            }
            if !c.is_whitespace() {
                after_label_word = false;
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len()
            && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        if braces > 0 || brackets > 0 {
            continue;
        }
        let next = chars[i..].iter().find(|c| !c.is_whitespace());
        let lower = word.to_ascii_lowercase();
        after_label_word = LABEL_LISTS.contains(&lower.as_str());
        if next == Some(&'(') || KEYWORDS.contains(&lower.as_str()) {
            continue;
        }
        names.insert(word);
    }
    // `{__name__="…"}` names a metric inside the braces.
    for (at, _) in expr.match_indices("__name__") {
        let rest = expr[at + "__name__".len()..].trim_start();
        if let Some(value) = rest.strip_prefix('=').filter(|r| !r.starts_with('~')) {
            let value = value.trim_start();
            if let Some(value) = value.strip_prefix('"') {
                names.insert(value[..value.find('"').unwrap_or(value.len())].to_string());
            }
        }
    }
    names
}

#[test]
fn metric_names_are_read_from_promql_and_functions_labels_and_keywords_are_not() {
    let cases: [(&str, &[&str]); 7] = [
        ("up", &["up"]),
        (
            r#"sum by (platform_id) (rate(addreality_polls_total{result="failure", x=~"a(b)"}[$__rate_interval])) * 60"#,
            &["addreality_polls_total"],
        ),
        (
            "time() - addreality_platform_last_success_timestamp_seconds{platform_id=~\".*\"} \
             * on (platform_id) group_left (name) addreality_platform_info",
            &["addreality_platform_info", "addreality_platform_last_success_timestamp_seconds"],
        ),
        (
            "histogram_quantile(0.9, sum without (le) (rate(x_bucket[5m] offset 1h))) > bool 1e3",
            &["x_bucket"],
        ),
        ("a and ignoring (job) b or on() c unless d", &["a", "b", "c", "d"]),
        ("{__name__=\"jobctl_sms_total\", outcome='sent \"x\"'}", &["jobctl_sms_total"]),
        ("max(jobctl_mass_outage) by (job) == Inf", &["jobctl_mass_outage"]),
    ];
    for (expr, expected) in cases {
        let expected: BTreeSet<String> = expected.iter().map(ToString::to_string).collect();
        assert_eq!(metric_names(expr), expected, "{expr}");
    }
}

/// The metric names in an exposition text: each sample line's name.
fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| line[..line.find(['{', ' ']).unwrap_or(line.len())].to_string())
        .collect()
}

#[tokio::test]
async fn every_metric_a_dashboard_names_is_served_by_the_project() {
    if !TestPrometheus::available() {
        return;
    }
    let served = BTreeMap::from([
        (Daemon::Exporter, exposed_names(&exporter_demo_metrics().await)),
        (Daemon::Jobctl, exposed_names(&jobctl_metrics().await)),
    ]);
    let mut missing = Vec::new();
    for query in queries() {
        let names = metric_names(&query.promql());
        assert!(!names.is_empty(), "{}: `{}` names no metric", query.place, query.expr);
        for name in names {
            if !served[&query.daemon].contains(&name) {
                missing.push(format!(
                    "{}: `{}` names {name}, which {}'s /metrics does not serve",
                    query.place,
                    query.expr,
                    query.daemon.name()
                ));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// `/metrics` of `addreality-exporter --demo` after its first poll.
async fn exporter_demo_metrics() -> String {
    let dir = tempfile::tempdir().unwrap();
    let command = support::process::command(env!("CARGO_BIN_EXE_addreality-exporter"), dir.path());
    let mut command = tokio::process::Command::from(command);
    command.args(["--demo", "--listen", "127.0.0.1:0"]).stdout(Stdio::null()).kill_on_drop(true);
    let mut child = command.spawn().expect("start addreality-exporter --demo");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let prefix = "listening on http://";
    let line = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(prefix) {
                return line;
            }
        }
        panic!("the demo ended without saying where it listens");
    })
    .await
    .unwrap_or_else(|_| panic!("the demo said nothing about listening within {DEADLINE:?}"));
    let rest = &line[line.find(prefix).unwrap() + prefix.len()..];
    let url = format!("http://{}/metrics", &rest[..rest.find('/').unwrap()]);
    let http = reqwest::Client::new();
    wait_until_async("the demo's first poll", || async {
        let response = http.get(&url).timeout(Duration::from_secs(2)).send().await.ok()?;
        let text = response.text().await.ok()?;
        // Before its first poll the demo serves only its own series.
        let polled = ["addreality_device_online{", "addreality_poll_duration_seconds{"];
        polled.iter().all(|name| text.contains(name)).then_some(text)
    })
    .await
}

fn t0() -> Timestamp {
    "2026-11-28T09:00:00Z".parse().unwrap()
}

/// What the scenario's target serves: platform 91's six players, all
/// offline (a mass outage); platform 92's players 1 and 3 offline unless
/// `recovered` (player 3 has no socket); platform 93's one player offline
/// on a platform that is down (its guard is not met).
fn page(recovered: bool) -> String {
    let mut page = String::new();
    let mut line = |platform: &str, id: u32, online: u8| {
        page += &format!(
            "addreality_device_online{{device_id=\"{id}\",name=\"p{id}\",platform_id=\"{platform}\"}} {online}\n"
        );
    };
    for id in 1..=6 {
        line("91", id, 0);
    }
    line("92", 1, u8::from(recovered));
    line("92", 2, 1);
    line("92", 3, 0);
    line("93", 1, 0);
    page + "addreality_platform_up{platform_id=\"93\"} 0\n"
}

/// jobctl's `/metrics` (the engine's text, which `jobctl run --listen`
/// serves as it is) after cycles in which each family got a series.
async fn jobctl_metrics() -> String {
    let target = TestTarget::start();
    let prometheus = TestPrometheus::start(&[&target]).await;
    prometheus.publish(&target, &page(false)).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    support::write_secret(&dir.path().join("sms.key"), &format!("{}\n", gateway.key()));
    let journal = dir.path().join("journal.db");
    let mut text = rules_file::head(prometheus.url(), "30s", "2s", &journal.display().to_string())
        + &rules_file::gateway_sms(&gateway.url(), "");
    for id in 1..=6 {
        let id = id.to_string();
        text += &rules_file::socket(
            &format!("s91_{id}"),
            &format!("+79990091{id}"),
            "simpal-d210",
            "91",
            &id,
        );
    }
    for id in ["1", "2"] {
        text += &rules_file::socket(
            &format!("s92_{id}"),
            &format!("+79990092{id}"),
            "simpal-d210",
            "92",
            id,
        );
    }
    text += &rules_file::socket("s93_1", "+799900931", "simpal-d210", "93", "1");
    text += &(rules_file::offline_job("outage", "91", None, POWER_CYCLE_ACTION) + "\n");
    text += &(rules_file::offline_job("reboot", "92", None, POWER_CYCLE_ACTION)
        + "mass_outage = false\nverify = { within = \"10m\" }\n\n");
    text += &(rules_file::offline_job("guarded", "93", None, POWER_CYCLE_ACTION)
        + "guards = [{ expr = \"addreality_platform_up == 1\", on = [\"platform_id\"] }]\n");
    let rules = signage_watchdog::rules::parse(&text, dir.path().join("rules.toml"))
        .unwrap_or_else(|errors| panic!("{errors}\n{text}"));
    let sender = support::sms::sender(&text, dir.path());
    let client = PromClient::new(
        rules.prometheus().unwrap().url.as_str(),
        rules.prometheus().unwrap().timeout,
        None,
    )
    .unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let options = EngineOptions {
        mode: Mode::Live,
        retry: SendRetry { attempts: 1, first_delay: Duration::from_millis(10) },
        ..EngineOptions::default()
    };
    let mut engine = Engine::start(
        rules,
        Arc::new(client),
        Journal::open(&journal).unwrap(),
        Arc::from(sender),
        clock.clone(),
        options,
    )
    .await
    .unwrap();
    engine.cycle().await;
    engine.finish_sends().await;
    // Player 1 of platform 92 is back a minute after its power-cycle.
    prometheus.publish(&target, &page(true)).await;
    clock.set(t0() + jiff::SignedDuration::from_secs(60));
    engine.cycle().await;
    engine.finish_sends().await;
    let metrics = engine.metrics_text();
    for family in [
        "jobctl_held_actions_total{",
        "jobctl_mass_outages_total{",
        "jobctl_executions_total{",
        "jobctl_action_errors_total{",
        "jobctl_unknown_evaluations_total{",
        "jobctl_job_devices{",
    ] {
        assert!(
            metrics.contains(family),
            "the scenario meant to show every jobctl family did not make {family}…}} appear:\n{metrics}"
        );
    }
    metrics
}
