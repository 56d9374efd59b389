//! The rules file: the shipped example, and every check `jobctl check` makes,
//! each with its exact message (`file:line:column: job …: what to do`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use signage_watchdog::config_file::SourceFile;
use signage_watchdog::rules::{self, DeviceKey, Recipient, Sample, Verdict};
use support::rules_file;

mod support;

const EXAMPLE: &str = include_str!("../rules.example.toml");

/// A valid file up to its jobs: `[prometheus]`, then socket "lobby" on
/// lines 4 to 8 (`name` on 5, `powers` on 8); `[[jobs]]` appended by
/// [`with_job`] is on line 10, its first key on line 11.
fn head() -> String {
    let lobby = rules_file::socket("lobby", "+79991234567", "simpal-d210", "12", "30785");
    format!("[prometheus]\nurl = \"http://127.0.0.1:9090\"\n\n{lobby}")
}

/// A valid condition and action, for tests about other keys.
const BODY: &str = r#"metric = "addreality_device_online"
op = "=="
value = 0
action = { command = "power_cycle", minutes = 1 }
"#;

fn with_job(job: &str) -> String {
    format!("{}[[jobs]]\n{job}", head())
}

fn errors(text: &str) -> String {
    match rules::parse(text, "rules.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(errors) => errors.to_string(),
    }
}

// ---------------------------------------------------------------------------
// The shipped example.

#[test]
fn the_example_parses_with_the_addreality_guard_on() {
    let rules = rules::parse(EXAMPLE, "rules.example.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rules.jobs.len(), 3);
    for job in &rules.jobs {
        assert!(
            job.guards
                .iter()
                .any(|g| g.expr == "addreality_platform_up == 1" && g.on == ["platform_id"]),
            "{job}"
        );
    }
    assert!(rules.sms.is_some());
    assert_eq!(rules.sockets.len(), 2);
}

/// Every key the raw structs accept must be documented in the example, set
/// or commented out (a table as `# [sms.modem] …`). The accepted keys are not
/// listed by hand: for each table of the example, an unknown key is slipped
/// in and `toml`'s "unknown field, expected one of …" names what the struct
/// behind that table accepts.
#[test]
fn the_example_documents_every_key() {
    let document: toml::Table = toml::from_str(EXAMPLE).unwrap();
    let commented: BTreeSet<String> = EXAMPLE
        .lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix('#')?.trim_start();
            let key = match rest.strip_prefix('[') {
                Some(table) => table.split_once(']')?.0.rsplit('.').next()?,
                None => rest.split_once('=')?.0,
            };
            let key = key.trim();
            key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_').then(|| key.to_string())
        })
        .collect();

    let mut paths = Vec::new();
    collect_tables(&toml::Value::Table(document.clone()), &mut Vec::new(), &mut paths);
    let mut checked = 0;
    let mut missing = Vec::new();
    for path in &paths {
        let mut probe = toml::Value::Table(document.clone());
        table_at(&mut probe, path).insert("zz_probe".into(), toml::Value::Integer(1));
        let text = toml::to_string(&probe).unwrap();
        let Err(err) = rules::parse(&text, "probe.toml") else { continue };
        let message = err.to_string();
        let Some((_, expected)) = message.split_once("unknown field `zz_probe`, expected ") else {
            continue; // a free-form table (devices, powers, action, commands)
        };
        checked += 1;
        let present = keys_at(&toml::Value::Table(document.clone()), path);
        for key in expected.split('`').skip(1).step_by(2) {
            if !present.contains(key) && !commented.contains(key) {
                missing.push(format!("{} {key}", describe(path)));
            }
        }
    }
    assert!(checked >= 8, "only {checked} tables were probed");
    assert!(missing.is_empty(), "keys missing from rules.example.toml: {missing:?}");
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn describe(path: &[Step]) -> String {
    let parts: Vec<String> = path
        .iter()
        .map(|s| match s {
            Step::Key(k) => k.clone(),
            Step::Index(i) => format!("[{i}]"),
        })
        .collect();
    if parts.is_empty() {
        "(top level)".into()
    } else {
        parts.join(".")
    }
}

fn collect_tables(value: &toml::Value, path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match value {
        toml::Value::Table(table) => {
            out.push(path.clone());
            for (key, child) in table {
                path.push(Step::Key(key.clone()));
                collect_tables(child, path, out);
                path.pop();
            }
        }
        toml::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(Step::Index(i));
                collect_tables(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn table_at<'a>(value: &'a mut toml::Value, path: &[Step]) -> &'a mut toml::Table {
    let mut value = value;
    for step in path {
        value = match step {
            Step::Key(k) => value.as_table_mut().unwrap().get_mut(k).unwrap(),
            Step::Index(i) => value.as_array_mut().unwrap().get_mut(*i).unwrap(),
        };
    }
    value.as_table_mut().unwrap()
}

/// Keys present at `path`, where array indices match any element (a key set
/// in one job documents it for all jobs).
fn keys_at(value: &toml::Value, path: &[Step]) -> BTreeSet<String> {
    match path.split_first() {
        None => value.as_table().map(|t| t.keys().cloned().collect()).unwrap_or_default(),
        Some((Step::Key(k), rest)) => value.get(k).map(|v| keys_at(v, rest)).unwrap_or_default(),
        Some((Step::Index(_), rest)) => value
            .as_array()
            .map(|items| items.iter().flat_map(|v| keys_at(v, rest)).collect())
            .unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------
// What a valid rule set gives the engine and `jobctl check`.

#[test]
fn jobs_get_stable_generated_names_and_shared_queries() {
    let text = with_job(&format!(
        "{BODY}\n[[jobs]]\nname = \"second\"\ndevices = {{ platform_id = \"12\" }}\nmetric = \"addreality_device_online\"\nop = \"<\"\nvalue = 1\naction = {{ command = \"power_off\" }}\n"
    ));
    let rules = rules::parse(&text, "rules.toml").unwrap();
    assert_eq!(rules.jobs[0].name, "Monitoring all devices - addreality_device_online == 0");
    assert!(rules.jobs[0].auto_named);
    // Moving the job (another job before it) does not change its name.
    let moved = with_job(&format!(
        "name = \"first\"\nexpr = \"up == 0\"\naction = {{ command = \"power_on\" }}\n\n[[jobs]]\n{BODY}"
    ));
    let moved = rules::parse(&moved, "rules.toml").unwrap();
    assert_eq!(moved.jobs[1].name, rules.jobs[0].name);
    // One query per distinct expression across jobs.
    assert_eq!(
        rules.queries(),
        ["addreality_device_online", "addreality_device_online{platform_id=\"12\"}"]
    );
    assert_eq!(
        rules.jobs[1].to_string(),
        "second\n  defined:  rules.toml:16:1\n  devices:  platform_id=12\n  when:     addreality_device_online < 1\n  queries:  addreality_device_online{platform_id=\"12\"}\n  action:   power_off to the socket powering the device\n  limits:   cooldown 1h, once per episode\n  outage:   hold socket commands while at least 50% of the known devices (and at least 5) are bad at once"
    );
    // A repeat is counted in words: "up to 1 time", "up to 2 times".
    for (max, said) in [(1, "up to 1 time\n"), (2, "up to 2 times\n")] {
        let text = with_job(&format!("{BODY}repeat = {{ every = \"30m\", max = {max} }}\n"));
        let job = rules::parse(&text, "rules.toml").unwrap().jobs.remove(0).to_string();
        assert!(job.contains(&format!("repeat every 30m {said}")), "{job}");
    }
}

#[test]
fn an_action_becomes_the_exact_sms_for_the_device_socket() {
    let text = with_job(&format!(
        "{BODY}\n[[jobs]]\nname = \"notify\"\nexpr = \"up == 0\"\naction = {{ sms = \"{{name}} down\\u001a\", to = \"+79990001122\" }}\n"
    ));
    let rules = rules::parse(&text, "rules.toml").unwrap();
    let device = DeviceKey::new(vec![
        ("platform_id".into(), "12".into()),
        ("device_id".into(), "30785".into()),
    ]);
    let labels: BTreeMap<String, String> =
        [("name".to_string(), "Arzamas\n\u{1a}1".to_string())].into_iter().collect();
    let sms = rules.outgoing(&rules.jobs[0], &device, &labels).unwrap();
    let Recipient::Sms { socket, phone } = &sms.to else { panic!("an action is an SMS") };
    assert_eq!(
        (socket.as_deref(), phone.as_str(), sms.text.as_str()),
        (Some("lobby"), "+79991234567", "#12#0#1#1#")
    );
    // Label values cannot smuggle control characters into the text, and a
    // text with labels goes to the person, never to the device's socket,
    // whatever the device is called.
    let sms = rules.outgoing(&rules.jobs[1], &device, &labels).unwrap();
    assert_eq!(sms.text, "Arzamas  1 down\u{1a}");
    let Recipient::Sms { socket, phone } = &sms.to else { panic!("an action is an SMS") };
    assert_eq!((socket.as_deref(), phone.as_str()), (None, "+79990001122"));
    let renamed: BTreeMap<String, String> =
        [("name".to_string(), "#02#0#".to_string())].into_iter().collect();
    let sms = rules.outgoing(&rules.jobs[1], &device, &renamed).unwrap();
    let Recipient::Sms { socket, .. } = &sms.to else { panic!("an action is an SMS") };
    assert_eq!((socket.as_deref(), sms.text.as_str()), (None, "#02#0# down\u{1a}"));
    let stranger =
        DeviceKey::new(vec![("platform_id".into(), "13".into()), ("device_id".into(), "1".into())]);
    assert_eq!(
        rules.outgoing(&rules.jobs[0], &stranger, &labels).unwrap_err().to_string(),
        "no socket powers device {platform_id=\"13\", device_id=\"1\"}; add a [[sockets]] entry whose powers names it"
    );
}

#[test]
fn evaluation_through_the_job_follows_guards() {
    let rules = rules::parse(EXAMPLE, "rules.example.toml").unwrap();
    let job = &rules.jobs[0];
    let device = |id: &str, value: f64| Sample {
        labels: [("platform_id", "12"), ("device_id", id)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        value,
    };
    let mut results = HashMap::new();
    results.insert(job.queries()[0].clone(), vec![device("30785", 0.0), device("30786", 1.0)]);
    let eval = job.evaluate(&results, &rules.device_key);
    // The platform guard's query has no answer: nothing is trusted.
    assert!(eval.devices.values().all(|d| d.verdict == Verdict::Unknown));
    results.insert(
        "addreality_platform_up == 1".into(),
        vec![Sample { labels: [("platform_id".to_string(), "12".to_string())].into(), value: 1.0 }],
    );
    let eval = job.evaluate(&results, &rules.device_key);
    let verdicts: Vec<Verdict> = eval.devices.values().map(|d| d.verdict).collect();
    assert_eq!(verdicts, [Verdict::True, Verdict::False]);
}

#[test]
fn split_files_are_loaded_in_order_and_other_files_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.toml"), with_job(BODY)).unwrap();
    std::fs::create_dir(dir.path().join("rules.d")).unwrap();
    std::fs::write(
        dir.path().join("rules.d/20-b.toml"),
        "[[jobs]]\nname = \"b\"\nexpr = \"up == 0\"\naction = { command = \"power_on\" }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rules.d/10-a.toml"),
        "[[sockets]]\nname = \"hall\"\nphone = \"+79990000001\"\nmodel = \"simpal-d410\"\npowers = { platform_id = \"13\", device_id = \"1\" }\n\n[[jobs]]\nname = \"a\"\ndevices = { platform_id = \"13\" }\nexpr = \"up == 0\"\naction = { command = \"power_off\" }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("rules.d/notes.txt"), "not rules").unwrap();
    let rules = rules::load(&dir.path().join("rules.toml")).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = rules.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["Monitoring all devices - addreality_device_online == 0", "a", "b"]);
    assert_eq!(rules.files.len(), 3);
    assert_eq!(
        rules
            .socket_for(&DeviceKey::new(vec![
                ("platform_id".into(), "13".into()),
                ("device_id".into(), "1".into())
            ]))
            .unwrap()
            .name,
        "hall"
    );
}

// ---------------------------------------------------------------------------
// Every check, with its exact message.

#[test]
fn syntax_errors_keep_toml_position() {
    assert_eq!(
        errors("[prometheus\nurl = \"http://127.0.0.1:9090\"\n"),
        "rules.toml:1:12: unclosed table, expected `]`"
    );
}

#[test]
fn unknown_keys_name_the_accepted_ones() {
    assert_eq!(
        errors(&with_job(&format!("metrc = \"x\"\n{BODY}"))),
        "rules.toml:11:1: unknown field `metrc`, expected one of `name`, `devices`, `metric`, `op`, `value`, `expr`, `all`, `any`, `for`, `action`, `cooldown`, `repeat`, `verify`, `limit`, `schedule`, `guards`, `mass_outage`, `escalate`, `webhooks_on_action`, `enabled`, `only_powered`"
    );
}

#[test]
fn bad_durations() {
    assert_eq!(
        errors(&with_job(&format!("for = \"10 parsecs\"\n{BODY}"))),
        "rules.toml:11:7: invalid duration \"10 parsecs\": unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) (write it like \"30s\", \"10m\", \"1h30m\", \"7d\")"
    );
}

#[test]
fn missing_prometheus_section() {
    assert_eq!(
        errors("device_key = [\"mac\"]\n"),
        "rules.toml: no [prometheus] section; add one with url = \"http://127.0.0.1:9090\", or read the exporters directly with [source] scrape = [\"http://127.0.0.1:9747/metrics\"]"
    );
}

#[test]
fn prometheus_url_must_be_http_without_credentials() {
    assert_eq!(
        errors("[prometheus]\nurl = \"127.0.0.1:9090\"\n"),
        "rules.toml:2:7: prometheus.url \"127.0.0.1:9090\" is not a URL (relative URL without a base); write it like \"http://127.0.0.1:9090\""
    );
    assert_eq!(
        errors("[prometheus]\nurl = \"ftp://prom\"\n"),
        "rules.toml:2:7: prometheus.url \"ftp://prom\" must start with http:// or https://"
    );
    assert_eq!(
        errors("[prometheus]\nurl = \"http://admin:hunter2@prom:9090\"\n"),
        "rules.toml:2:7: prometheus.url must not carry a user name or password; use username with password_file or password_env"
    );
}

#[test]
fn zero_interval_and_long_timeout() {
    assert_eq!(
        errors("[prometheus]\nurl = \"http://prom\"\ninterval = \"0s\"\ntimeout = \"1m\"\n"),
        "rules.toml:3:12: prometheus.interval must be longer than 0s\nrules.toml:4:11: prometheus.timeout (1m) is longer than interval (30s); a query must end before the next cycle starts"
    );
}

#[test]
fn a_short_interval_shortens_the_default_timeout() {
    let rules =
        rules::parse("[prometheus]\nurl = \"http://prom\"\ninterval = \"1s\"\n", "rules.toml")
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rules.prometheus().unwrap().timeout, std::time::Duration::from_secs(1));
    let rules = rules::parse("[prometheus]\nurl = \"http://prom\"\n", "rules.toml").unwrap();
    assert_eq!(rules.prometheus().unwrap().timeout, std::time::Duration::from_secs(10));
    // A timeout written out is still checked against the interval.
    assert_eq!(
        errors("[prometheus]\nurl = \"http://prom\"\ninterval = \"1s\"\ntimeout = \"10s\"\n"),
        "rules.toml:4:11: prometheus.timeout (10s) is longer than interval (1s); a query must end before the next cycle starts"
    );
}

#[test]
fn prometheus_credentials_come_in_pairs() {
    assert_eq!(
        errors("[prometheus]\nurl = \"http://prom\"\nusername = \"jobctl\"\n"),
        "rules.toml:3:12: prometheus.username needs password_file or password_env"
    );
    assert_eq!(
        errors("[prometheus]\nurl = \"http://prom\"\nusername = \"u\"\npassword_file = \"p\"\npassword_env = \"P\"\n"),
        "rules.toml:5:16: prometheus: password_file and password_env are both set; keep one"
    );
    assert_eq!(
        errors("[prometheus]\nurl = \"http://prom\"\nusername = \"u\"\npassword_env = \"P\"\ntoken_file = \"t\"\n"),
        "rules.toml:5:14: prometheus: basic auth (username) and a bearer token are both set; keep one"
    );
    let rules =
        rules::parse("[prometheus]\nurl = \"http://prom\"\ntoken_env = \"T\"\n", "rules.toml")
            .unwrap();
    assert_eq!(
        format!("{:?}", rules.prometheus().unwrap().auth),
        "Some(Bearer { token: Env(\"T\") })"
    );
}

/// `[source]` with the socket of [`head`] and one job after it (`[[jobs]]`
/// on line 10, its first key on line 11).
fn scraping(job: &str) -> String {
    let lobby = rules_file::socket("lobby", "+79991234567", "simpal-d210", "12", "30785");
    format!("[source]\nscrape = [\"http://127.0.0.1:9747/metrics\"]\n\n{lobby}[[jobs]]\n{job}")
}

#[test]
fn a_scrape_source_reads_its_targets_and_credentials() {
    let text = "[source]\nscrape = [\"http://a:9747/metrics\", \"https://b/metrics\"]\ninterval = \"5s\"\ntoken_env = \"T\"\n";
    let rules = rules::parse(text, "rules.toml").unwrap_or_else(|e| panic!("{e}"));
    let rules::SourceConfig::Scrape(scrape) = &rules.source else { panic!("{:?}", rules.source) };
    let targets: Vec<&str> = scrape.targets.iter().map(reqwest::Url::as_str).collect();
    assert_eq!(targets, ["http://a:9747/metrics", "https://b/metrics"]);
    assert_eq!(scrape.interval, std::time::Duration::from_secs(5));
    assert_eq!(scrape.timeout, std::time::Duration::from_secs(5), "the interval, being shorter");
    assert_eq!(format!("{:?}", scrape.auth), "Some(Bearer { token: Env(\"T\") })");
    assert!(rules.prometheus().is_none());
}

#[test]
fn a_scrape_source_is_checked_as_prometheus_is() {
    assert_eq!(
        errors("[prometheus]\nurl = \"http://prom\"\n\n[source]\nscrape = [\"http://a/metrics\"]\n"),
        "rules.toml:4:1: [source] and [prometheus] are both set; keep one: [prometheus] to evaluate the rules with Prometheus (PromQL, history), [source] to scrape the exporters directly"
    );
    assert_eq!(
        errors("[source]\ninterval = \"5s\"\n"),
        "rules.toml:1:1: [source] has no scrape; add scrape = [\"http://127.0.0.1:9747/metrics\"]"
    );
    assert_eq!(
        errors("[source]\nscrape = []\n"),
        "rules.toml:2:10: source.scrape is empty; list at least one target, e.g. scrape = [\"http://127.0.0.1:9747/metrics\"]"
    );
    assert_eq!(
        errors("[source]\nscrape = [\"ftp://a/metrics\", \"http://u:p@b/metrics\", \"http://c/\", \"http://c/\"]\n"),
        "rules.toml:2:11: source.scrape \"ftp://a/metrics\" must start with http:// or https://\n\
         rules.toml:2:30: source.scrape must not carry a user name or password; use username with password_file or password_env\n\
         rules.toml:2:67: source.scrape lists \"http://c/\" twice; keep one"
    );
    assert_eq!(
        errors("[source]\nscrape = [\"http://a/\"]\ninterval = \"1s\"\ntimeout = \"2s\"\nusername = \"u\"\n"),
        "rules.toml:4:11: source.timeout (2s) is longer than interval (1s); a scrape must end before the next cycle starts\n\
         rules.toml:5:12: source.username needs password_file or password_env"
    );
}

#[test]
fn a_scrape_source_refuses_promql_where_it_is_written() {
    assert_eq!(
        errors(&scraping("name = \"frozen\"\nexpr = \"rate(x[5m]) == 0\"\naction = { command = \"power_cycle\", minutes = 1 }\n")),
        "rules.toml:12:8: job \"frozen\": expr \"rate(x[5m]) == 0\" is PromQL, which needs [prometheus]; [source] scrape answers only metric + op + value comparisons; read Prometheus with [prometheus] instead for PromQL"
    );
    assert_eq!(
        errors(&scraping("all = [{ metric = \"a\", op = \"==\", value = 0 }, { expr = \"b > 1\" }]\naction = { command = \"power_cycle\", minutes = 1 }\n")),
        "rules.toml:11:57: job #1: all[2]: expr \"b > 1\" is PromQL, which needs [prometheus]; [source] scrape answers only metric + op + value comparisons; read Prometheus with [prometheus] instead for PromQL"
    );
    assert_eq!(
        errors(&scraping(&format!("{BODY}guards = [{{ expr = \"sum(up) > 0\", on = [] }}]\n"))),
        "rules.toml:15:20: job #1: guard \"sum(up) > 0\" needs PromQL; write it as a comparison like \"addreality_platform_up == 1\": [source] scrape answers only metric + op + value comparisons; read Prometheus with [prometheus] instead for PromQL"
    );
    // Comparisons, all/any of them and comparison guards are what a scrape answers.
    let text = scraping(&format!(
        "{BODY}for = \"2m\"\nguards = [{{ expr = \"addreality_platform_up{{platform_id=\\\"12\\\"}} == 1\", on = [\"platform_id\"] }}]\n"
    ));
    let rules = rules::parse(&text, "rules.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rules.jobs[0].queries().len(), 2);
}

#[test]
fn bad_device_key() {
    assert_eq!(
        errors("device_key = [\"platform id\", \"mac\", \"mac\"]\n[prometheus]\nurl = \"http://prom\"\n"),
        "rules.toml:1:15: device_key: \"platform id\" is not a label name (letters, digits and _, not starting with a digit)\nrules.toml:1:37: device_key: \"mac\" is listed twice"
    );
}

#[test]
fn bad_phone_numbers_show_the_expected_form() {
    let text = head().replace("+79991234567", "8 (999) 123-45-67");
    assert_eq!(
        errors(&text),
        "rules.toml:6:9: socket \"lobby\": invalid phone number \"8 (999) 123-45-67\": write it in international form with a leading + and the country code, like \"+79991234567\""
    );
    let text = head().replace("+79991234567", "+7999");
    assert_eq!(
        errors(&text),
        "rules.toml:6:9: socket \"lobby\": invalid phone number \"+7999\": it has 4 digits after the +, E.164 numbers have 8 to 15, like \"+79991234567\""
    );
    // Separators are accepted and dropped.
    let text = head().replace("+79991234567", "+7 (999) 123-45-67");
    assert_eq!(
        rules::parse(&text, "rules.toml").unwrap().sockets[0].phone.as_str(),
        "+79991234567"
    );
}

#[test]
fn a_rejected_socket_does_not_make_its_jobs_complain_too() {
    let text = with_job("metric = \"addreality_device_online\"\nop = \"==\"\nvalue = 0\naction = { command = \"power_on\" }\n")
        .replace("+79991234567", "12345");
    let errors = errors(&text);
    assert!(
        errors.starts_with("rules.toml:6:9: socket \"lobby\": invalid phone number \"12345\""),
        "{errors}"
    );
    assert_eq!(errors.lines().count(), 1, "only the socket's own error: {errors}");
}

#[test]
fn unknown_socket_model() {
    assert_eq!(
        errors(&head().replace("simpal-d210", "simpal-d999")),
        "rules.toml:7:9: socket \"lobby\": unknown model \"simpal-d999\"; use \"simpal-d210\", \"simpal-d410\" or \"custom\" (with [sockets.commands])"
    );
}

#[test]
fn custom_sockets_need_commands_that_fit_one_sms() {
    assert_eq!(
        errors(&head().replace("simpal-d210", "custom")),
        "rules.toml:7:9: socket \"lobby\": model \"custom\" has no commands; add a [sockets.commands] table, like reboot = \"#12#0#{minutes}#1#\""
    );
    let long = "x".repeat(161);
    let text = format!(
        "{}[sockets.commands]\nreboot = \"{long}\"\nbad = \"RESET {{outlet\"\n",
        head().replace("simpal-d210", "custom")
    );
    assert_eq!(
        errors(&text),
        format!("rules.toml:11:10: socket \"lobby\": command reboot does not fit in one SMS (161 GSM-7 characters, at most 160); a socket command must be a single message\nrules.toml:12:7: socket \"lobby\": command bad: `{{` at character 7 is not closed; write {{{{ for a literal brace")
    );
}

#[test]
fn powers_must_name_devices_by_their_whole_key() {
    let text = head().replace("powers = { platform_id = \"12\", device_id = \"30785\" }", "powers = [{ platform_id = \"12\" }, { platform_id = \"12\", device_id = 1, zone = \"x\" }]");
    assert_eq!(
        errors(&text),
        "rules.toml:8:11: socket \"lobby\": powers lacks device_id; each entry names one device by all of platform_id, device_id\nrules.toml:8:72: socket \"lobby\": powers names label \"zone\", which is not in device_key (platform_id, device_id); a socket names its devices by device key only"
    );
}

#[test]
fn a_device_has_one_socket_and_socket_names_are_unique() {
    let text = head()
        + &rules_file::socket("hall", "+79990000001", "simpal-d410", "12", "30785")
        + &rules_file::socket("lobby", "+79990000002", "simpal-d410", "12", "2");
    assert_eq!(
        errors(&text),
        "rules.toml:14:10: socket \"hall\": device {platform_id=\"12\", device_id=\"30785\"} is already powered by socket \"lobby\" (rules.toml:8:10); a device can have only one socket\nrules.toml:17:8: socket name \"lobby\" is already used at rules.toml:5:8; socket names must be unique"
    );
}

#[test]
fn unknown_socket_command() {
    assert_eq!(
        errors(&with_job("expr = \"up == 0\"\naction = { command = \"reboot\" }\n")),
        "rules.toml:12:22: job #1: socket \"lobby\": there is no command \"reboot\"; known commands: power_on, power_off, power_cycle, power_off_after, register_master, add_user"
    );
}

#[test]
fn missing_extra_and_out_of_range_command_parameters() {
    assert_eq!(
        errors(&with_job("name = \"reboot\"\nexpr = \"up == 0\"\naction = { command = \"power_cycle\" }\n")),
        "rules.toml:13:10: job \"reboot\": socket \"lobby\": command power_cycle needs minutes (a whole number from 1 to 999), like minutes = 1"
    );
    assert_eq!(
        errors(&with_job("expr = \"up == 0\"\naction = { command = \"power_cycle\", minutes = 1000, seconds = 5 }\n")),
        "rules.toml:12:47: job #1: socket \"lobby\": minutes = 1000 for command power_cycle: it is out of range; use a whole number from 1 to 999\nrules.toml:12:53: job #1: socket \"lobby\": command power_cycle has no parameter \"seconds\"; it takes minutes"
    );
    assert_eq!(
        errors(&with_job("expr = \"up == 0\"\naction = { command = \"power_cycle\", minutes = \"a few\" }\n")),
        "rules.toml:12:47: job #1: socket \"lobby\": minutes = \"a few\" for command power_cycle: it must be a whole number from 1 to 999"
    );
}

#[test]
fn bad_operator() {
    assert_eq!(
        errors(&with_job(&BODY.replace("\"==\"", "\"=\""))),
        "rules.toml:12:6: job #1: unknown operator \"=\"; use one of ==, !=, >, >=, <, <="
    );
}

#[test]
fn metric_and_expr_both_given() {
    assert_eq!(
        errors(&with_job(&format!("{BODY}expr = \"up == 0\"\n"))),
        "rules.toml:15:8: job #1: metric and expr are both given; a job has one condition (metric + op + value, expr, all or any)"
    );
}

#[test]
fn no_condition() {
    assert_eq!(
        errors(&with_job("name = \"idle\"\naction = { command = \"power_on\" }\n")),
        "rules.toml:10:1: job \"idle\" has no condition; add metric + op + value, expr, all = [...] or any = [...]"
    );
}

#[test]
fn incomplete_comparisons() {
    assert_eq!(
        errors(&with_job(
            "metric = \"addreality_device_online\"\naction = { command = \"power_on\" }\n"
        )),
        "rules.toml:11:10: job #1: metric needs op and value, like op = \"==\" and value = 0"
    );
    assert_eq!(
        errors(&with_job("expr = \"up\"\nop = \">\"\nvalue = 1\naction = { command = \"power_on\" }\n")),
        "rules.toml:12:6: job #1: op and value only go with metric; an expr carries its own comparison"
    );
    assert_eq!(
        errors(&with_job("metric = \"device online\"\nop = \"==\"\nvalue = nan\naction = { command = \"power_on\" }\n")),
        "rules.toml:11:10: job #1: \"device online\" is not a metric name; for PromQL use expr = \"…\"\nrules.toml:13:9: job #1: value must be a number, not nan"
    );
}

#[test]
fn all_and_any_terms_are_checked_one_by_one() {
    assert_eq!(
        errors(&with_job("all = [\n  { metric = \"a\", op = \"~\", value = 1 },\n  { op = \"==\" },\n  { metric = \"b\", op = \"==\", value = 1, expr = \"c\" },\n  {},\n]\naction = { command = \"power_on\" }\n")),
        "rules.toml:12:24: job #1: all[1]: unknown operator \"~\"; use one of ==, !=, >, >=, <, <=\nrules.toml:13:10: job #1: all[2]: op and value need a metric, like metric = \"addreality_device_online\"\nrules.toml:14:48: job #1: all[3]: metric and expr are both given; keep one (combine several with all = [...] or any = [...])\nrules.toml:15:3: job #1: all[4] has no condition; give metric + op + value, or expr"
    );
    assert_eq!(
        errors(&with_job("any = []\naction = { command = \"power_on\" }\n")),
        "rules.toml:11:7: job #1: any is empty; list at least one condition"
    );
}

#[test]
fn duplicate_job_names_across_files() {
    let main = SourceFile::from_text("rules.toml", with_job(&format!("name = \"reboot\"\n{BODY}")));
    let split = SourceFile::from_text(
        "rules.d/10-team.toml",
        format!("[[jobs]]\nname = \"reboot\"\n{BODY}"),
    );
    assert_eq!(
        rules::parse_files(main, vec![split]).unwrap_err().to_string(),
        "rules.d/10-team.toml:2:8: job name \"reboot\" is already used at rules.toml:11:8; job names must be unique across rules.toml and rules.d"
    );
}

#[test]
fn duplicate_generated_names() {
    let text =
        with_job(&format!("{BODY}\n[[jobs]]\n{}", BODY.replace("minutes = 1", "minutes = 5")));
    assert_eq!(
        errors(&text),
        "rules.toml:16:1: job #2: its generated name \"Monitoring all devices - addreality_device_online == 0\" is already used at rules.toml:10:1; give one of them a name"
    );
}

#[test]
fn split_files_hold_only_sockets_and_jobs() {
    let main = SourceFile::from_text("rules.toml", head());
    let split = SourceFile::from_text("rules.d/x.toml", "[prometheus]\nurl = \"http://other\"\n");
    assert_eq!(
        rules::parse_files(main, vec![split]).unwrap_err().to_string(),
        "rules.d/x.toml:1:2: unknown field `prometheus`, expected `sockets` or `jobs`"
    );
}

#[test]
fn jobs_whose_devices_no_socket_powers() {
    assert_eq!(
        errors(&with_job(&format!("devices = {{ platform_id = \"13\" }}\n{BODY}"))),
        "rules.toml:15:10: job #1: no socket powers a device matching platform_id=13; add a [[sockets]] entry whose powers names such a device, or send an SMS elsewhere with action = { sms = \"…\", to = \"+79991234567\" }"
    );
    // Labels outside the device key cannot be judged at check time.
    let text = with_job(&format!("devices = {{ platform_id = \"12\", zone = \"north\" }}\n{BODY}"));
    assert!(rules::parse(&text, "rules.toml").is_ok());
    // An SMS to a person needs no socket.
    let text = with_job("devices = { platform_id = \"13\" }\nexpr = \"up == 0\"\naction = { sms = \"down\", to = \"+79990000000\" }\n");
    assert!(rules::parse(&text, "rules.toml").is_ok());
}

#[test]
fn only_powered_is_a_boolean_and_needs_a_socket_for_the_devices() {
    let rules = rules::parse(&with_job(&format!("only_powered = true\n{BODY}")), "rules.toml")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(rules.jobs[0].only_powered);
    assert!(rules.jobs[0]
        .to_string()
        .contains("\n  devices:  all devices, only those a socket powers (only_powered)\n"));
    let rules = rules::parse(&with_job(BODY), "rules.toml").unwrap();
    assert!(!rules.jobs[0].only_powered, "off by default");
    assert_eq!(
        errors(&with_job(&format!("only_powered = \"yes\"\n{BODY}"))),
        "rules.toml:11:16: invalid type: string \"yes\", expected a boolean"
    );
    // A job that notifies a person needs no socket, unless it watches only
    // devices that have one: then a socket must power one it selects.
    let notify = "expr = \"up == 0\"\naction = { sms = \"down\", to = \"+79990000000\" }\n";
    assert_eq!(
        errors(&with_job(&format!("devices = {{ platform_id = \"13\" }}\nonly_powered = true\n{notify}"))),
        "rules.toml:12:16: job #1: only_powered = true watches only devices a socket powers, but no socket powers a device matching platform_id=13; add a [[sockets]] entry whose powers names such a device, or remove only_powered"
    );
    let text =
        with_job(&format!("devices = {{ platform_id = \"12\" }}\nonly_powered = true\n{notify}"));
    assert!(rules::parse(&text, "rules.toml").is_ok());
}

#[test]
fn free_text_to_a_socket_is_refused() {
    // A player renamed "#02#0#" would otherwise switch its own socket off.
    assert_eq!(
        errors(&with_job("expr = \"up == 0\"\naction = { sms = \"{name}\" }\n")),
        "rules.toml:12:18: job #1: action.sms has no `to`: free text never goes to a socket, since a device's labels could turn it into a socket command; to power a socket write a command of its model or [sockets.commands], like action = { command = \"power_cycle\", minutes = 1 }, or to notify a person add to = \"+79991234567\""
    );
    // Not even a literal command: it is written as the command it is.
    assert_eq!(
        errors(&with_job("expr = \"up == 0\"\naction = { sms = \"#12#0#1#1#\" }\n")),
        "rules.toml:12:18: job #1: action.sms has no `to`: free text never goes to a socket, since a device's labels could turn it into a socket command; to power a socket write a command of its model or [sockets.commands], like action = { command = \"power_cycle\", minutes = 1 }, or to notify a person add to = \"+79991234567\""
    );
}

#[test]
fn missing_and_malformed_actions() {
    assert_eq!(
        errors(&with_job("expr = \"up == 0\"\n")),
        "rules.toml:10:1: job #1 has no action; add action = { command = \"power_cycle\", minutes = 1 } or action = { sms = \"…\", to = \"+79991234567\" }"
    );
    assert_eq!(
        errors(&with_job("expr = \"up == 0\"\naction = { command = \"power_on\", sms = \"x\" }\n")),
        "rules.toml:12:34: job #1: action has both command and sms; keep one"
    );
    assert_eq!(
        errors(&with_job("expr = \"up == 0\"\naction = { command = \"power_on\", to = \"+79990000000\" }\n")),
        "rules.toml:12:34: job #1: action.to only goes with sms; a command goes to the socket that powers the device"
    );
    assert_eq!(
        errors(&with_job("expr = \"up == 0\"\naction = { sms = \"{device name} down\", to = \"8 999\" }\n")),
        "rules.toml:12:18: job #1: action.sms: placeholder {device name} is not a name (letters, digits and _, not starting with a digit)\nrules.toml:12:45: job #1: action.to: invalid phone number \"8 999\": write it in international form with a leading + and the country code, like \"+79991234567\""
    );
}

#[test]
fn invalid_time_zone() {
    let message =
        errors(&with_job(&format!("{BODY}schedule = {{ time_zone = \"Europe/Moskow\" }}\n")));
    assert!(
        message.starts_with(
            "rules.toml:15:26: job #1: schedule: unknown time zone \"Europe/Moskow\" ("
        ),
        "{message}"
    );
    assert!(
        message.ends_with("); use an IANA name like \"Europe/Moscow\" (see /usr/share/zoneinfo)"),
        "{message}"
    );
}

#[test]
fn bad_schedule_days_and_hours() {
    assert_eq!(
        errors(&with_job(&format!("{BODY}schedule = {{ days = [\"monday\", \"sat-sun\"], hours = \"8-20\" }}\n"))),
        "rules.toml:15:22: job #1: schedule: unknown day \"monday\"; use mon, tue, wed, thu, fri, sat, sun or a range like \"mon-fri\"\nrules.toml:15:52: job #1: schedule: hours \"8-20\" is not a window like \"08:00-20:00\""
    );
    assert_eq!(
        errors(&with_job(&format!("{BODY}schedule = {{ days = [], hours = \"09:00-09:00\" }}\n"))),
        "rules.toml:15:21: job #1: schedule: days is empty; list at least one day, or leave days out to mean every day\nrules.toml:15:33: job #1: schedule: hours \"09:00-09:00\" is an empty window; use \"00:00-24:00\" for the whole day, or leave hours out"
    );
}

#[test]
fn repeat_needs_a_positive_max_and_every() {
    assert_eq!(
        errors(&with_job(&format!("{BODY}repeat = {{ every = \"0s\", max = 0 }}\n"))),
        "rules.toml:15:20: job #1: repeat.every must be longer than 0s\nrules.toml:15:32: job #1: repeat.max must be at least 1; leave repeat out to act once per episode"
    );
    assert_eq!(
        errors(&with_job(&format!("{BODY}repeat = {{ max = 3 }}\n"))),
        "rules.toml:15:10: job #1: repeat needs every and max, like repeat = { every = \"30m\", max = 3 }"
    );
}

#[test]
fn verify_needs_a_sensible_window() {
    assert_eq!(
        errors(&with_job(&format!("{BODY}verify = {{ within = \"0s\" }}\n"))),
        "rules.toml:15:21: job #1: verify.within must be longer than 0s"
    );
    assert_eq!(
        errors(&with_job(&format!("{BODY}verify = {{ within = \"2d\" }}\n"))),
        "rules.toml:15:21: job #1: verify.within must be at most 1day: a device that comes back later than that did not come back because of the action"
    );
    assert_eq!(
        errors(&with_job(&format!("{BODY}verify = {{}}\n"))),
        "rules.toml:15:10: job #1: verify needs within, like verify = { within = \"10m\" }"
    );
    assert_eq!(
        errors(&with_job(&format!("{BODY}verify = {{ within = \"10m\", for = \"1m\" }}\n"))),
        "rules.toml:15:28: unknown field `for`, expected `within`"
    );
}

#[test]
fn limit_needs_at_least_one_action_in_a_sensible_period() {
    assert_eq!(
        errors(&with_job(&format!("{BODY}limit = {{ actions = 0, per = \"0s\" }}\n"))),
        "rules.toml:15:21: job #1: limit.actions must be at least 1; disable the job (enabled = false) to stop it acting, or leave limit out\nrules.toml:15:30: job #1: limit.per must be longer than 0s"
    );
    assert_eq!(
        errors(&with_job(&format!("{BODY}limit = {{ actions = 5000, per = \"60d\" }}\n"))),
        "rules.toml:15:21: job #1: limit.actions must be at most 1000\nrules.toml:15:33: job #1: limit.per must be at most 30days"
    );
    assert_eq!(
        errors(&with_job(&format!("{BODY}limit = {{ actions = 3 }}\n"))),
        "rules.toml:15:9: job #1: limit needs actions and per, like limit = { actions = 3, per = \"24h\" }"
    );
}

#[test]
fn check_shows_verify_and_limit_in_the_job_summary() {
    let text = with_job(&format!(
        "name = \"offline\"\n{BODY}verify = {{ within = \"10m\" }}\nlimit = {{ actions = 3, per = \"24h\" }}\n"
    ));
    let rules = rules::parse(&text, "rules.toml").unwrap();
    let summary = rules.jobs[0].to_string();
    assert!(
        summary.ends_with(
            "  limits:   cooldown 1h, once per episode\n  verify:   recovered if the condition is false within 10m\n  limit:    at most 3 actions per device and per socket in 1day, then give up until the episode ends\n  outage:   hold socket commands while at least 50% of the known devices (and at least 5) are bad at once\n  escalate: nobody (logged only)"
        ),
        "{summary}"
    );
}

#[test]
fn mass_outage_needs_a_share_up_to_one_and_at_least_one_device() {
    assert_eq!(
        errors(&with_job(&format!("{BODY}mass_outage = {{ share = 0, min_devices = 0 }}\n"))),
        "rules.toml:15:25: job #1: mass_outage.share must be more than 0 and at most 1 (0.5 = half of the job's devices); write mass_outage = false to switch the hold off\nrules.toml:15:42: job #1: mass_outage.min_devices must be a whole number from 1 to 4294967295"
    );
    assert_eq!(
        errors(&with_job(&format!("{BODY}mass_outage = {{ share = 1.5 }}\n"))),
        "rules.toml:15:25: job #1: mass_outage.share must be more than 0 and at most 1 (0.5 = half of the job's devices); write mass_outage = false to switch the hold off"
    );
    assert_eq!(
        errors(&with_job(&format!("{BODY}mass_outage = {{ share = 0.5, devices = 3 }}\n"))),
        "rules.toml:15:30: unknown field `devices`, expected `share` or `min_devices`"
    );
    assert_eq!(errors(&with_job(&format!("{BODY}mass_outage = \"off\"\n"))), "rules.toml:15:15: invalid type: string \"off\", expected a table like { share = 0.5, min_devices = 5 }, or false to switch the hold off");
    assert_eq!(
        errors(&format!("mass_outage = {{ min_devices = -1 }}\n{}", with_job(BODY))),
        "rules.toml:1:31: mass_outage.min_devices must be a whole number from 1 to 4294967295"
    );
    let person = BODY.replace(
        "{ command = \"power_cycle\", minutes = 1 }",
        "{ sms = \"{name} is offline\", to = \"+79990001122\" }",
    );
    assert_eq!(errors(&with_job(&format!("{person}mass_outage = {{ share = 0.3 }}\n"))), "rules.toml:15:15: job #1: mass_outage holds socket commands only, and this job's action is an SMS to a person, which is never held; remove mass_outage");
}

#[test]
fn mass_outage_defaults_at_the_top_and_per_job() {
    let whole = |text: &str| {
        let rules = rules::parse(text, "rules.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        rules.jobs[0].to_string()
    };
    let summary = |text: &str| whole(text).lines().last().unwrap().to_string();
    assert_eq!(
        summary(&with_job(BODY)),
        "  outage:   hold socket commands while at least 50% of the known devices (and at least 5) are bad at once"
    );
    assert_eq!(
        summary(&with_job(&format!("{BODY}mass_outage = false\n"))),
        "  outage:   no mass-outage hold"
    );
    let top = format!(
        "mass_outage = {{ share = 0.3 }}\n{}",
        with_job(&format!("{BODY}mass_outage = {{ min_devices = 10 }}\n"))
    );
    assert_eq!(
        summary(&top),
        "  outage:   hold socket commands while at least 30% of the known devices (and at least 10) are bad at once",
        "a job's table takes the keys it lacks from the top-level one"
    );
    let off = format!("mass_outage = false\n{}", with_job(BODY));
    assert_eq!(summary(&off), "  outage:   no mass-outage hold");
    let back_on =
        format!("mass_outage = false\n{}", with_job(&format!("{BODY}mass_outage = true\n")));
    assert_eq!(
        summary(&back_on),
        "  outage:   hold socket commands while at least 50% of the known devices (and at least 5) are bad at once"
    );
    let person = BODY.replace(
        "{ command = \"power_cycle\", minutes = 1 }",
        "{ sms = \"{name} is offline\", to = \"+79990001122\" }",
    );
    assert!(!whole(&with_job(&person)).contains("outage:"), "a person's job has no hold");
}

#[test]
fn guards_need_an_expression_and_label_names() {
    assert_eq!(
        errors(&with_job(&format!("{BODY}guards = [{{ on = [\"platform id\"] }}, {{ expr = \"up\", on = [\"a-b\"] }}]\n"))),
        "rules.toml:15:11: job #1: guard has no expr; write it like { expr = \"addreality_platform_up == 1\", on = [\"platform_id\"] }\nrules.toml:15:58: job #1: guard on: \"a-b\" is not a label name (letters, digits and _, not starting with a digit)"
    );
}

#[test]
fn errors_are_collected_across_files_in_file_order() {
    let main = SourceFile::from_text(
        "rules.toml",
        head().replace("simpal-d210", "simpal-x").replace("+79991234567", "123"),
    );
    let split = SourceFile::from_text(
        "rules.d/a.toml",
        "[[jobs]]\nexpr = \"up == 0\"\naction = { sms = \"x\", to = \"+1\" }\ncooldown = \"1h\"\nrepeat = { every = \"1h\", max = 0 }\n",
    );
    assert_eq!(
        rules::parse_files(main, vec![split]).unwrap_err().to_string(),
        "rules.toml:6:9: socket \"lobby\": invalid phone number \"123\": write it in international form with a leading + and the country code, like \"+79991234567\"\n\
         rules.toml:7:9: socket \"lobby\": unknown model \"simpal-x\"; use \"simpal-d210\", \"simpal-d410\" or \"custom\" (with [sockets.commands])\n\
         rules.d/a.toml:3:28: job #1: action.to: invalid phone number \"+1\": it has 1 digits after the +, E.164 numbers have 8 to 15, like \"+79991234567\"\n\
         rules.d/a.toml:5:32: job #1: repeat.max must be at least 1; leave repeat out to act once per episode"
    );
}

#[test]
fn unreadable_main_file_is_named() {
    let err = rules::load(Path::new("/nonexistent/rules.toml")).unwrap_err().to_string();
    assert!(err.starts_with("/nonexistent/rules.toml: cannot read file: "), "{err}");
}

#[test]
fn budgets_are_whole_positive_numbers() {
    assert_eq!(
        errors("[prometheus]\nurl = \"http://prom\"\n[budgets]\nsocket_per_hour = 0\ntotal_per_day = -5\n"),
        "rules.toml:4:19: budgets.socket_per_hour must be a whole number of messages, at least 1 (leave it out for no limit)\nrules.toml:5:17: budgets.total_per_day must be a whole number of messages, at least 1 (leave it out for no limit)"
    );
    let rules = rules::parse(
        "[prometheus]\nurl = \"http://prom\"\n[budgets]\nsocket_per_hour = 3\ntotal_per_day = 300\n",
        "rules.toml",
    )
    .unwrap();
    assert_eq!(
        rules.budgets,
        rules::Budgets {
            socket_hour: Some(3),
            socket_day: None,
            global_hour: None,
            global_day: Some(300)
        }
    );
    let example = rules::parse(EXAMPLE, "rules.example.toml").unwrap();
    assert_eq!(example.budgets.socket_hour, Some(3), "the example ships with budgets on");
}

#[test]
fn a_broken_sms_table_is_reported_with_the_other_errors() {
    // Settings only: no secret, spool or device is looked at while loading.
    assert_eq!(
        errors(&format!(
            "{}[sms]\nbackend = \"http\"\nmax_segments = 0\n[sms.http]\nurl = \"http://gw\"\nkey_file = \"/nonexistent/sms.key\"\ntimeout = \"0s\"\n[[jobs]]\nname = \"\"\n{BODY}", head()
        )),
        "rules.toml:12:16: sms.max_segments: must be between 1 and 10 segments\n\
         rules.toml:14:7: sms.http.url: no header, query, form or json value uses {text}: the SMS text would never be sent\n\
         rules.toml:18:8: job #1: name is empty"
    );
    assert_eq!(
        errors(&format!("{}[sms]\nbackends = [\"log\", \"modem\"]\n", head())),
        "rules.toml:11:20: sms.backends: backend \"modem\" needs an [sms.modem] table (at least `device`)"
    );
    assert_eq!(
        errors(&format!("{}[sms]\nbackend = \"gammu\"\n[sms.gammu]\ntimeout = \"0s\"\n", head())),
        "rules.toml:13:11: sms.gammu.timeout: must be longer than zero"
    );
    assert_eq!(
        errors(&format!(
            "{}[sms]\nbackend = \"log\"\nprice = {{ per_message = -3.5, currency = \"RUB\" }}\n",
            head()
        )),
        "rules.toml:12:25: sms.price.per_message: must be a number from 0 to 1000000: \
         the price of one SMS segment, e.g. 3.5"
    );
    // toml places an unknown key itself, and then only syntax is reported.
    assert_eq!(
        errors(&format!("{}[sms]\nbackend = \"log\"\nspeed = 1\n", head())),
        "rules.toml:12:1: unknown field `speed`, expected one of `backend`, `backends`, `retry_uncertain`, `http`, `modem`, `smstools`, `gammu`, `command`, `max_segments`, `price`"
    );
    // What needs the machine is left to the sender: a missing key file or
    // spool directory loads, and `jobctl check` reports it when it builds
    // the sender.
    let rules = rules::parse(
        &format!("{}[sms]\nbackend = \"smstools\"\n[sms.smstools]\noutgoing = \"/nonexistent/outgoing\"\n", head()),
        "rules.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(rules.sms.is_some());
}

// ---------------------------------------------------------------------------
// Escalations and webhooks.

/// A `[[webhooks]]` table named `ops`, then `body`'s job.
fn with_webhook(webhook: &str, job: &str) -> String {
    format!("escalate = []\n{}[[webhooks]]\n{webhook}\n[[jobs]]\n{job}", head())
}

const OPS: &str =
    "name = \"ops\"\nurl = \"https://ops.example/hooks\"\nsecret_file = \"ops.key\"\n";

#[test]
fn escalate_targets_and_webhooks_are_checked_and_shown() {
    let job = format!(
        "name = \"offline\"\n{BODY}verify = {{ within = \"10m\" }}\nescalate = [{{ sms = \"{{name}} {{event}}\", to = [\"+79990001122\", \"+79990003344\"] }}, {{ webhook = \"ops\" }}]\nwebhooks_on_action = [\"ops\"]\n"
    );
    let rules =
        rules::parse(&with_webhook(OPS, &job), "rules.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rules.webhooks[0].shown_url(), "https://ops.example/hooks");
    let summary = rules.jobs[0].to_string();
    assert!(
        summary.ends_with(
            "  escalate: SMS \"{name} {event}\" to +79990001122, +79990003344; webhook \"ops\"\n  on each action: webhook \"ops\""
        ),
        "{summary}"
    );
    // A job without escalate takes the top-level one.
    let top = format!(
        "escalate = [{{ webhook = \"ops\" }}]\n{}[[webhooks]]\n{OPS}\n[[jobs]]\n{BODY}limit = {{ actions = 3, per = \"1d\" }}\n",
        head()
    );
    let rules = rules::parse(&top, "rules.toml").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        rules.jobs[0]
            .to_string()
            .ends_with("  escalate: webhook \"ops\" (the file's top-level escalate)"),
        "{}",
        rules.jobs[0]
    );
}

#[test]
fn an_unknown_webhook_is_an_error_at_its_name() {
    let job = format!(
        "{BODY}escalate = [{{ webhook = \"opz\" }}]\nwebhooks_on_action = [\"ops\", \"pager\"]\n"
    );
    assert_eq!(
        errors(&with_webhook(OPS, &job)),
        "rules.toml:21:25: job #1: escalate[0]: unknown webhook \"opz\"; the webhooks are \"ops\"\n\
         rules.toml:22:30: job #1: webhooks_on_action: unknown webhook \"pager\"; the webhooks are \"ops\""
    );
    let top = format!("escalate = [{{ webhook = \"ops\" }}]\n{}[[jobs]]\n{BODY}", head());
    assert_eq!(
        errors(&top),
        "rules.toml:1:25: escalate[0]: unknown webhook \"ops\"; no [[webhooks]] entry is configured in the main file"
    );
}

#[test]
fn bad_webhooks_and_targets_say_what_to_write() {
    let bad = "name = \"ops\"\nurl = \"ftp://ops.example/hooks\"\nsecret_file = \"a\"\nsecret_env = \"B\"\ntimeout = \"0s\"\n";
    assert_eq!(
        errors(&with_webhook(bad, BODY)),
        "rules.toml:13:7: webhook \"ops\": url: only http:// and https:// URLs with a host are posted to\n\
         rules.toml:15:14: webhook \"ops\": secret_file and secret_env are both set; keep one\n\
         rules.toml:16:11: webhook \"ops\": timeout must be longer than 0s"
    );
    let unsigned = "name = \"ops\"\nurl = \"not a url\"\n";
    assert_eq!(
        errors(&with_webhook(unsigned, BODY)),
        "rules.toml:11:1: webhook \"ops\": no signing key; add secret_file = \"/etc/signage-watchdog/ops.key\" (or secret_env) holding a random key that the receiver shares\n\
         rules.toml:13:7: webhook \"ops\": url is not a URL (relative URL without a base); write it like \"https://ops.example/hooks/watchdog\""
    );
    let job = format!(
        "{BODY}escalate = [{{ sms = \"x\" }}, {{ sms = \"y\", to = [] }}, {{ webhook = \"ops\", to = \"+79990001122\" }}, {{ page = \"me\" }}]\n"
    );
    assert_eq!(
        errors(&with_webhook(OPS, &job)),
        "rules.toml:21:13: job #1: escalate[0]: sms needs to = [\"+79991234567\"], the people to tell\n\
         rules.toml:21:41: job #1: escalate[1].to is empty; name at least one phone number\n\
         rules.toml:21:71: job #1: escalate[2]: to only goes with sms\n\
         rules.toml:21:96: job #1: escalate[3]: no key \"page\"; a target is { sms, to } or { webhook }, like escalate = [{ sms = \"{job}: {name} still offline\", to = [\"+79991234567\"] }, { webhook = \"ops\" }]"
    );
}
