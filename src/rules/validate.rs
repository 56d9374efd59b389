//! From the raw structs to a [`RuleSet`]: every check that `toml` cannot
//! make by itself.
//!
//! Checks never stop at the first problem: each one records its error (with
//! the file, `line:column`, the job or socket, and what to write instead)
//! and validation goes on, so `jobctl check` lists everything at once. A
//! rule set is returned only when no error was recorded: never half-loaded.
//!
//! What can only be known at run time stays there: a job's `devices`
//! matchers select devices from Prometheus answers, so which socket powers
//! each of them is decided per device when an action runs (a device with no
//! socket is then logged and counted, and nothing is sent). What *can* be
//! checked here is that some socket could power a device the job selects,
//! and that every such socket has the job's command with valid arguments.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::condition::{Condition, Guard, Op, Term};
use super::config::{
    RawFragment, RawGuard, RawJob, RawLabels, RawPowers, RawPrometheus, RawRulesFile, RawSocket,
    RawTerm,
};
use super::device::{is_label_name, is_metric_name, DeviceKey, DeviceKeyLabels, LabelMatchers};
use super::job::{Action, Job, Origin, Repeat};
use super::naming;
use super::schedule::{self, HourWindow, Schedule};
use super::settings::{
    Budgets, JournalConfig, PrometheusAuth, PrometheusConfig, SmsSection, DEFAULT_INTERVAL,
    DEFAULT_JOURNAL_PATH, DEFAULT_TIMEOUT,
};
use super::socket::{
    single_sms_overflow, ArgValue, CommandError, CommandSpec, Socket, SocketModel,
};
use super::template::Template;
use super::RuleSet;
use crate::config_file::{ConfigError, HumanDuration, SourceFile};
use crate::secret::SecretSource;
use crate::sms::phone::PhoneNumber;

/// Default cooldown: a player that comes back and freezes again within the
/// hour is not power-cycled again in a loop; an hour later it is.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(3600);

/// The example written in messages about `[prometheus]`.
const URL_EXAMPLE: &str = "url = \"http://127.0.0.1:9090\"";

/// Records errors against one file.
struct Checker<'a> {
    file: &'a SourceFile,
    errors: &'a mut Vec<ConfigError>,
}

impl Checker<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(self.file.error_at(span, message));
    }

    fn whole(&mut self, message: impl Into<String>) {
        self.errors.push(self.file.error(message));
    }

    fn position(&self, span: Range<usize>) -> String {
        let (line, column) = self.file.position(span.start);
        format!("{}:{line}:{column}", self.file.path.display())
    }

    fn origin(&self, span: Range<usize>) -> Origin {
        let (line, column) = self.file.position(span.start);
        Origin { path: self.file.path.clone(), line, column }
    }

    /// A non-empty string, or an error `"{what} is empty"`.
    fn non_empty(&mut self, value: &Spanned<String>, what: &str) -> Option<String> {
        if value.get_ref().trim().is_empty() {
            self.at(value.span(), format!("{what} is empty"));
            None
        } else {
            Some(value.get_ref().clone())
        }
    }
}

/// Builds the rule set from parsed files, or returns every error found.
pub(crate) fn build(
    main: &SourceFile,
    raw: RawRulesFile,
    fragments: &[(SourceFile, RawFragment)],
) -> Result<RuleSet, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let base_dir = base_dir(&main.path);
    let mut ck = Checker { file: main, errors: &mut errors };

    let device_key = device_key(&mut ck, raw.device_key);
    let prometheus = prometheus(&mut ck, raw.prometheus);
    let journal = journal(&mut ck, raw.journal, &base_dir);
    let budgets = budgets(&mut ck, raw.budgets);
    let sms = raw.sms.map(|table| SmsSection {
        span: table.span(),
        table: table.into_inner(),
        file: main.clone(),
    });
    let default_guards = match &raw.guards {
        Some(guards) => guards_of(&mut ck, guards, &device_key, ""),
        None => Vec::new(),
    };

    // Sockets first (jobs are checked against them), from every file.
    let mut sockets: Vec<Socket> = Vec::new();
    let mut socket_names: HashMap<String, String> = HashMap::new();
    let mut socket_by_device: HashMap<DeviceKey, usize> = HashMap::new();
    let mut device_positions: HashMap<DeviceKey, String> = HashMap::new();
    let files = std::iter::once((main, &raw.sockets, &raw.jobs))
        .chain(fragments.iter().map(|(file, frag)| (file, &frag.sockets, &frag.jobs)));
    let files: Vec<_> = files.collect();
    for (file, raw_sockets, _) in &files {
        let mut ck = Checker { file, errors: &mut errors };
        for (index, raw_socket) in raw_sockets.iter().enumerate() {
            let Some(checked) = socket(&mut ck, raw_socket, index + 1, &device_key) else {
                continue;
            };
            let name = checked.socket.name.clone();
            if let Some(first) = socket_names.get(&name) {
                ck.at(
                    checked.name_span.clone(),
                    format!(
                        "socket name {name:?} is already used at {first}; socket names must be unique"
                    ),
                );
                continue;
            }
            socket_names.insert(name.clone(), ck.position(checked.name_span.clone()));
            let slot = sockets.len();
            for (device, span) in checked.socket.powers.iter().zip(&checked.device_spans) {
                if let Some(&other) = socket_by_device.get(device) {
                    let first = &device_positions[device];
                    let message = if other == slot {
                        format!("socket {name:?}: device {device} is listed twice in powers")
                    } else {
                        format!(
                            "socket {name:?}: device {device} is already powered by socket {:?} ({first}); a device can have only one socket",
                            sockets[other].name
                        )
                    };
                    ck.at(span.clone(), message);
                    continue;
                }
                socket_by_device.insert(device.clone(), slot);
                device_positions.insert(device.clone(), ck.position(span.clone()));
            }
            sockets.push(checked.socket);
        }
    }

    let written: usize = files.iter().map(|(_, raw_sockets, _)| raw_sockets.len()).sum();
    let env = JobEnv {
        device_key: &device_key,
        sockets: &sockets,
        default_guards: &default_guards,
        sockets_rejected: sockets.len() < written,
    };
    let mut jobs: Vec<Job> = Vec::new();
    let mut job_names: HashMap<String, String> = HashMap::new();
    let file_names = describe_files(main, fragments);
    for (file, _, raw_jobs) in &files {
        let mut ck = Checker { file, errors: &mut errors };
        for (index, raw_job) in raw_jobs.iter().enumerate() {
            let Some(job) = job(&mut ck, raw_job, index + 1, &env) else { continue };
            let name_span = raw_job.get_ref().name.as_ref().map_or(raw_job.span(), |n| n.span());
            if let Some(first) = job_names.get(&job.name) {
                let message = if job.auto_named {
                    format!(
                        "job #{}: its generated name {:?} is already used at {first}; give one of them a name",
                        index + 1,
                        job.name
                    )
                } else {
                    format!(
                        "job name {:?} is already used at {first}; job names must be unique across {file_names}",
                        job.name
                    )
                };
                ck.at(name_span, message);
                continue;
            }
            job_names.insert(job.name.clone(), ck.position(name_span));
            jobs.push(job);
        }
    }

    let Some(prometheus) = prometheus else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut paths = vec![main.path.clone()];
    paths.extend(fragments.iter().map(|(file, _)| file.path.clone()));
    Ok(RuleSet {
        files: paths,
        base_dir,
        device_key,
        prometheus,
        journal,
        sms,
        budgets,
        sockets,
        jobs,
        socket_by_device,
    })
}

/// The directory relative paths are taken from.
pub(crate) fn base_dir(main: &Path) -> PathBuf {
    match main.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn describe_files(main: &SourceFile, fragments: &[(SourceFile, RawFragment)]) -> String {
    let name = main
        .path
        .file_name()
        .map_or_else(|| main.path.display().to_string(), |n| n.to_string_lossy().into_owned());
    if fragments.is_empty() {
        name
    } else {
        format!("{name} and rules.d")
    }
}

fn device_key(ck: &mut Checker<'_>, raw: Option<Spanned<Vec<Spanned<String>>>>) -> DeviceKeyLabels {
    let Some(raw) = raw else { return DeviceKeyLabels::default() };
    if raw.get_ref().is_empty() {
        ck.at(
            raw.span(),
            "device_key is empty; name the labels that identify a device, like [\"platform_id\", \"device_id\"] or [\"mac\"]",
        );
        return DeviceKeyLabels::default();
    }
    let mut labels: Vec<String> = Vec::new();
    for label in raw.get_ref() {
        let name = label.get_ref();
        if !is_label_name(name) {
            ck.at(label.span(), format!("device_key: {}", not_a_label(name)));
        } else if labels.contains(name) {
            ck.at(label.span(), format!("device_key: {name:?} is listed twice"));
        } else {
            labels.push(name.clone());
        }
    }
    if labels.is_empty() {
        return DeviceKeyLabels::default();
    }
    DeviceKeyLabels::new(labels)
}

fn not_a_label(name: &str) -> String {
    format!("{name:?} is not a label name (letters, digits and _, not starting with a digit)")
}

fn prometheus(
    ck: &mut Checker<'_>,
    raw: Option<Spanned<RawPrometheus>>,
) -> Option<PrometheusConfig> {
    let Some(raw) = raw else {
        ck.whole(format!("no [prometheus] section; add one with {URL_EXAMPLE}"));
        return None;
    };
    let table_span = raw.span();
    let raw = raw.into_inner();
    let url = match &raw.url {
        None => {
            ck.at(table_span.clone(), format!("[prometheus] has no url; add {URL_EXAMPLE}"));
            None
        }
        Some(url) => prometheus_url(ck, url),
    };
    let interval = positive(ck, raw.interval.as_ref(), "prometheus.interval", DEFAULT_INTERVAL);
    let timeout = positive(ck, raw.timeout.as_ref(), "prometheus.timeout", DEFAULT_TIMEOUT);
    if timeout > interval {
        let span = raw.timeout.as_ref().map_or(table_span.clone(), |t| t.span());
        ck.at(
            span,
            format!(
                "prometheus.timeout ({}) is longer than interval ({}); a query must end before the next cycle starts",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        );
    }
    let auth = prometheus_auth(ck, &raw);
    Some(PrometheusConfig { url: url?, interval, timeout, auth })
}

fn prometheus_url(ck: &mut Checker<'_>, url: &Spanned<String>) -> Option<reqwest::Url> {
    match reqwest::Url::parse(url.get_ref().trim()) {
        Err(err) => {
            ck.at(
                url.span(),
                format!(
                    "prometheus.url {:?} is not a URL ({err}); write it like \"http://127.0.0.1:9090\"",
                    url.get_ref()
                ),
            );
            None
        }
        Ok(parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            // The URL is not repeated: it holds a secret.
            ck.at(
                url.span(),
                "prometheus.url must not carry a user name or password; use username with password_file or password_env",
            );
            None
        }
        Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => {
            ck.at(
                url.span(),
                format!("prometheus.url {:?} must start with http:// or https://", url.get_ref()),
            );
            None
        }
        Ok(parsed) => Some(parsed),
    }
}

fn positive(
    ck: &mut Checker<'_>,
    raw: Option<&Spanned<HumanDuration>>,
    what: &str,
    default: Duration,
) -> Duration {
    match raw {
        None => default,
        Some(d) if d.get_ref().0.is_zero() => {
            ck.at(d.span(), format!("{what} must be longer than 0s"));
            default
        }
        Some(d) => d.get_ref().0,
    }
}

fn secret_source(
    ck: &mut Checker<'_>,
    file: &Option<Spanned<String>>,
    env: &Option<Spanned<String>>,
    file_key: &str,
    env_key: &str,
) -> Option<SecretSource> {
    match (file, env) {
        (Some(_), Some(env)) => {
            ck.at(
                env.span(),
                format!("prometheus: {file_key} and {env_key} are both set; keep one"),
            );
            None
        }
        (Some(file), None) => ck
            .non_empty(file, &format!("prometheus.{file_key}"))
            .map(|f| SecretSource::File(f.into())),
        (None, Some(env)) => {
            ck.non_empty(env, &format!("prometheus.{env_key}")).map(SecretSource::Env)
        }
        (None, None) => None,
    }
}

fn prometheus_auth(ck: &mut Checker<'_>, raw: &RawPrometheus) -> Option<PrometheusAuth> {
    let password =
        secret_source(ck, &raw.password_file, &raw.password_env, "password_file", "password_env");
    let token = secret_source(ck, &raw.token_file, &raw.token_env, "token_file", "token_env");
    let password_span = raw.password_file.as_ref().or(raw.password_env.as_ref()).map(Spanned::span);
    let token_span = raw.token_file.as_ref().or(raw.token_env.as_ref()).map(Spanned::span);
    let basic = match (&raw.username, password_span) {
        (Some(user), Some(_)) => {
            let username = ck.non_empty(user, "prometheus.username");
            username
                .zip(password)
                .map(|(username, password)| PrometheusAuth::Basic { username, password })
        }
        (Some(user), None) => {
            ck.at(user.span(), "prometheus.username needs password_file or password_env");
            None
        }
        (None, Some(span)) => {
            ck.at(span, "prometheus: a password is set without username; add username = \"…\"");
            None
        }
        (None, None) => None,
    };
    let bearer = token.map(|token| PrometheusAuth::Bearer { token });
    if let (Some(_), Some(span)) = (&raw.username, token_span) {
        ck.at(span, "prometheus: basic auth (username) and a bearer token are both set; keep one");
        return None;
    }
    basic.or(bearer)
}

fn journal(
    ck: &mut Checker<'_>,
    raw: Option<super::config::RawJournal>,
    base_dir: &Path,
) -> JournalConfig {
    let path = match raw.and_then(|j| j.path) {
        None => PathBuf::from(DEFAULT_JOURNAL_PATH),
        Some(path) => match ck.non_empty(&path, "journal.path") {
            Some(p) => base_dir.join(p),
            None => PathBuf::from(DEFAULT_JOURNAL_PATH),
        },
    };
    JournalConfig { path }
}

fn budgets(ck: &mut Checker<'_>, raw: Option<super::config::RawBudgets>) -> Budgets {
    let Some(raw) = raw else { return Budgets::default() };
    let mut limit = |value: Option<Spanned<i64>>, key: &str| {
        let value = value?;
        match u32::try_from(*value.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                ck.at(
                    value.span(),
                    format!("budgets.{key} must be a whole number of messages, at least 1 (leave it out for no limit)"),
                );
                None
            }
        }
    };
    Budgets {
        socket_hour: limit(raw.socket_per_hour, "socket_per_hour"),
        socket_day: limit(raw.socket_per_day, "socket_per_day"),
        global_hour: limit(raw.total_per_hour, "total_per_hour"),
        global_day: limit(raw.total_per_day, "total_per_day"),
    }
}

fn guards_of(
    ck: &mut Checker<'_>,
    raw: &[Spanned<RawGuard>],
    device_key: &DeviceKeyLabels,
    prefix: &str,
) -> Vec<Guard> {
    let mut guards = Vec::new();
    for guard in raw {
        let RawGuard { expr, on } = guard.get_ref();
        let expr = match expr {
            None => {
                ck.at(
                    guard.span(),
                    format!(
                        "{prefix}guard has no expr; write it like {{ expr = \"addreality_platform_up == 1\", on = [\"platform_id\"] }}"
                    ),
                );
                continue;
            }
            Some(expr) => match ck.non_empty(expr, &format!("{prefix}guard expr")) {
                Some(e) => e.trim().to_string(),
                None => continue,
            },
        };
        let on = match on {
            None => device_key.labels().to_vec(),
            Some(on) => {
                let mut labels: Vec<String> = Vec::new();
                for label in on.get_ref() {
                    if !is_label_name(label.get_ref()) {
                        ck.at(
                            label.span(),
                            format!("{prefix}guard on: {}", not_a_label(label.get_ref())),
                        );
                    } else if !labels.contains(label.get_ref()) {
                        labels.push(label.get_ref().clone());
                    }
                }
                labels
            }
        };
        guards.push(Guard { expr, on });
    }
    guards
}

/// Label matchers: names checked, values strings or integers.
fn labels(
    ck: &mut Checker<'_>,
    raw: &RawLabels,
    prefix: &str,
    what: &str,
) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (name, value) in raw {
        if !is_label_name(name.get_ref()) {
            ck.at(name.span(), format!("{prefix}: {what}: {}", not_a_label(name.get_ref())));
            ok = false;
            continue;
        }
        let text = match value.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            _ => {
                ck.at(
                    value.span(),
                    format!("{prefix}: {what}.{} must be a string or an integer", name.get_ref()),
                );
                ok = false;
                continue;
            }
        };
        out.insert(name.get_ref().clone(), text);
    }
    ok.then_some(out)
}

struct CheckedSocket {
    socket: Socket,
    name_span: Range<usize>,
    device_spans: Vec<Range<usize>>,
}

fn socket(
    ck: &mut Checker<'_>,
    raw: &Spanned<RawSocket>,
    number: usize,
    device_key: &DeviceKeyLabels,
) -> Option<CheckedSocket> {
    let RawSocket { name, phone, model, powers, commands } = raw.get_ref();
    let label = match name {
        Some(n) if !n.get_ref().trim().is_empty() => format!("socket {:?}", n.get_ref()),
        _ => format!("socket #{number}"),
    };
    let name = match name {
        None => {
            ck.at(raw.span(), format!("{label} has no name; add name = \"…\""));
            None
        }
        Some(n) => ck.non_empty(n, &format!("{label}: name")).map(|s| (s, n.span())),
    };
    let phone = match phone {
        None => {
            ck.at(raw.span(), format!("{label} has no phone; add phone = \"+79991234567\""));
            None
        }
        Some(p) => match PhoneNumber::parse(p.get_ref()) {
            Ok(phone) => Some(phone),
            Err(err) => {
                ck.at(p.span(), format!("{label}: {err}"));
                None
            }
        },
    };
    let models = "use \"simpal-d210\", \"simpal-d410\" or \"custom\" (with [sockets.commands])";
    let model = match model {
        None => {
            ck.at(
                raw.span(),
                format!("{label} has no model; add model = \"simpal-d210\" ({models})"),
            );
            None
        }
        Some(m) => match SocketModel::parse(m.get_ref()) {
            Some(model) => Some((model, m.span())),
            None => {
                ck.at(m.span(), format!("{label}: unknown model {:?}; {models}", m.get_ref()));
                None
            }
        },
    };
    let mut command_set = model.as_ref().map(|(m, _)| m.builtin_commands()).unwrap_or_default();
    let mut commands_ok = true;
    if let Some(commands) = commands {
        for (command, template) in commands.get_ref() {
            if !is_label_name(command.get_ref()) {
                ck.at(
                    command.span(),
                    format!(
                        "{label}: command name {:?} is not a name (letters, digits and _, not starting with a digit)",
                        command.get_ref()
                    ),
                );
                commands_ok = false;
                continue;
            }
            if template.get_ref().trim().is_empty() {
                ck.at(template.span(), format!("{label}: command {} is empty", command.get_ref()));
                commands_ok = false;
                continue;
            }
            match CommandSpec::custom(command.get_ref(), template.get_ref()) {
                Err(err) => {
                    ck.at(
                        template.span(),
                        format!("{label}: command {}: {err}", command.get_ref()),
                    );
                    commands_ok = false;
                }
                Ok(spec) => {
                    if let Some(length) = single_sms_overflow(&spec.template.literal_text()) {
                        ck.at(
                            template.span(),
                            format!(
                                "{label}: command {} does not fit in one SMS ({length}); a socket command must be a single message",
                                command.get_ref()
                            ),
                        );
                        commands_ok = false;
                    }
                    command_set.insert(spec);
                }
            }
        }
    }
    if let Some((SocketModel::Custom, span)) = &model {
        if command_set.is_empty() && commands_ok {
            ck.at(
                span.clone(),
                format!(
                    "{label}: model \"custom\" has no commands; add a [sockets.commands] table, like reboot = \"#12#0#{{minutes}}#1#\""
                ),
            );
            commands_ok = false;
        }
    }
    let powers = socket_powers(ck, &label, raw.span(), powers.as_ref(), device_key);
    let (name, name_span) = name?;
    let (powers, device_spans) = powers?;
    if !commands_ok {
        return None;
    }
    Some(CheckedSocket {
        socket: Socket { name, phone: phone?, model: model?.0, commands: command_set, powers },
        name_span,
        device_spans,
    })
}

fn socket_powers(
    ck: &mut Checker<'_>,
    label: &str,
    socket_span: Range<usize>,
    raw: Option<&Spanned<RawPowers>>,
    device_key: &DeviceKeyLabels,
) -> Option<(Vec<DeviceKey>, Vec<Range<usize>>)> {
    let example = {
        let pairs: Vec<String> =
            device_key.labels().iter().map(|l| format!("{l} = \"…\"")).collect();
        format!("powers = {{ {} }}", pairs.join(", "))
    };
    let Some(raw) = raw else {
        ck.at(
            socket_span,
            format!("{label} has no powers; name the device(s) it powers by their device key, like {example}"),
        );
        return None;
    };
    let entries: Vec<(&RawLabels, Range<usize>)> = match raw.get_ref() {
        RawPowers::One(map) => vec![(map, raw.span())],
        RawPowers::Many(list) => list.iter().map(|m| (m.get_ref(), m.span())).collect(),
    };
    if entries.is_empty() {
        ck.at(
            raw.span(),
            format!("{label}: powers is empty; name at least one device, like {example}"),
        );
        return None;
    }
    let mut keys = Vec::new();
    let mut spans = Vec::new();
    let mut ok = true;
    for (map, span) in entries {
        let Some(values) = labels(ck, map, label, "powers") else {
            ok = false;
            continue;
        };
        for (name, _) in map.iter().filter(|(n, _)| !device_key.labels().contains(n.get_ref())) {
            ck.at(
                name.span(),
                format!(
                    "{label}: powers names label {:?}, which is not in device_key ({device_key}); a socket names its devices by device key only",
                    name.get_ref()
                ),
            );
            ok = false;
        }
        let missing: Vec<&str> = device_key
            .labels()
            .iter()
            .filter(|l| !values.contains_key(*l))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            ck.at(
                span.clone(),
                format!(
                    "{label}: powers lacks {}; each entry names one device by all of {device_key}",
                    missing.join(", ")
                ),
            );
            ok = false;
            continue;
        }
        match device_key.key_of(&values) {
            Some(key) => {
                keys.push(key);
                spans.push(span);
            }
            None => ok = false,
        }
    }
    ok.then_some((keys, spans))
}

struct JobEnv<'a> {
    device_key: &'a DeviceKeyLabels,
    sockets: &'a [Socket],
    default_guards: &'a [Guard],
    /// Some `[[sockets]]` entry had errors of its own: a job that finds no
    /// socket may be missing that one, so it does not add a second,
    /// misleading error.
    sockets_rejected: bool,
}

fn job(
    ck: &mut Checker<'_>,
    raw: &Spanned<RawJob>,
    number: usize,
    env: &JobEnv<'_>,
) -> Option<Job> {
    let job_span = raw.span();
    let r = raw.get_ref();
    let label = match &r.name {
        Some(n) if !n.get_ref().trim().is_empty() => format!("job {:?}", n.get_ref()),
        _ => format!("job #{number}"),
    };
    let mut ok = true;
    let name = match &r.name {
        None => None,
        Some(n) => {
            let name = ck.non_empty(n, &format!("{label}: name"));
            if let Some(c) = n.get_ref().chars().find(|c| c.is_control()) {
                ck.at(n.span(), format!("{label}: name contains the control character {c:?}"));
                ok = false;
            }
            ok &= name.is_some();
            name
        }
    };
    let devices = match &r.devices {
        None => Some(LabelMatchers::default()),
        Some(d) => labels(ck, d.get_ref(), &label, "devices").map(LabelMatchers::new),
    };
    let condition = job_condition(ck, &label, job_span.clone(), r);
    let hold_for = r.hold_for.as_ref().map_or(Duration::ZERO, |d| d.get_ref().0);
    let cooldown = r.cooldown.as_ref().map_or(DEFAULT_COOLDOWN, |d| d.get_ref().0);
    let repeat = match &r.repeat {
        None => Some(None),
        Some(repeat) => job_repeat(ck, &label, repeat).map(Some),
    };
    let schedule = match &r.schedule {
        None => Some(None),
        Some(s) => job_schedule(ck, &label, s).map(Some),
    };
    let guards = match &r.guards {
        None => env.default_guards.to_vec(),
        Some(guards) => {
            let before = ck.errors.len();
            let guards = guards_of(ck, guards, env.device_key, &format!("{label}: "));
            ok &= ck.errors.len() == before;
            guards
        }
    };
    let action = match (&r.action, &devices) {
        (None, _) => {
            ck.at(
                job_span.clone(),
                format!(
                    "{label} has no action; add action = {{ command = \"power_cycle\", minutes = 1 }} or action = {{ sms = \"…\", to = \"+79991234567\" }}"
                ),
            );
            None
        }
        (Some(action), Some(devices)) => job_action(ck, &label, action, devices, env),
        (Some(_), None) => None,
    };
    if !ok {
        return None;
    }
    let (devices, condition, action) = (devices?, condition?, action?);
    let (name, auto_named) = match name {
        Some(name) => (name, false),
        None => (naming::job_name(&devices, &condition), true),
    };
    Some(Job {
        name,
        auto_named,
        origin: ck.origin(job_span),
        devices,
        condition,
        hold_for,
        action,
        cooldown,
        repeat: repeat?,
        schedule: schedule?,
        guards,
        enabled: r.enabled.unwrap_or(true),
    })
}

fn job_condition(
    ck: &mut Checker<'_>,
    label: &str,
    job_span: Range<usize>,
    r: &RawJob,
) -> Option<Condition> {
    let compare_span = r
        .metric
        .as_ref()
        .map(Spanned::span)
        .or_else(|| r.op.as_ref().map(Spanned::span))
        .or_else(|| r.value.as_ref().map(Spanned::span));
    let mut given: Vec<(&str, Range<usize>)> = Vec::new();
    if let Some(span) = compare_span {
        given.push((if r.metric.is_some() { "metric" } else { "op/value" }, span));
    }
    if let Some(e) = &r.expr {
        given.push(("expr", e.span()));
    }
    if let Some(a) = &r.all {
        given.push(("all", a.span()));
    }
    if let Some(a) = &r.any {
        given.push(("any", a.span()));
    }
    given.sort_by_key(|(_, span)| span.start);
    match given.as_slice() {
        [] => {
            ck.at(
                job_span,
                format!("{label} has no condition; add metric + op + value, expr, all = [...] or any = [...]"),
            );
            None
        }
        [_] => {
            if let Some(all) = &r.all {
                terms(ck, label, "all", all).map(Condition::All)
            } else if let Some(any) = &r.any {
                terms(ck, label, "any", any).map(Condition::Any)
            } else {
                term(ck, label, job_span, &r.metric, &r.op, &r.value, &r.expr)
                    .map(Condition::Single)
            }
        }
        [(first, _), (second, span), ..] => {
            let (first, second) = (first.to_string(), second.to_string());
            if first == "op/value" || second == "op/value" {
                // metric-less op/value next to expr: say what op/value need.
                term(ck, label, job_span, &r.metric, &r.op, &r.value, &r.expr);
                return None;
            }
            ck.at(
                span.clone(),
                format!(
                    "{label}: {first} and {second} are both given; a job has one condition (metric + op + value, expr, all or any)"
                ),
            );
            None
        }
    }
}

fn terms(
    ck: &mut Checker<'_>,
    label: &str,
    which: &str,
    raw: &Spanned<Vec<Spanned<RawTerm>>>,
) -> Option<Vec<Term>> {
    if raw.get_ref().is_empty() {
        ck.at(raw.span(), format!("{label}: {which} is empty; list at least one condition"));
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, t) in raw.get_ref().iter().enumerate() {
        let prefix = format!("{label}: {which}[{}]", i + 1);
        let RawTerm { metric, op, value, expr } = t.get_ref();
        match term(ck, &prefix, t.span(), metric, op, value, expr) {
            Some(term) => out.push(term),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn term(
    ck: &mut Checker<'_>,
    label: &str,
    span: Range<usize>,
    metric: &Option<Spanned<String>>,
    op: &Option<Spanned<String>>,
    value: &Option<Spanned<f64>>,
    expr: &Option<Spanned<String>>,
) -> Option<Term> {
    let ops = "==, !=, >, >=, <, <=";
    match (metric, expr) {
        (Some(_), Some(expr)) => {
            ck.at(
                expr.span(),
                format!("{label}: metric and expr are both given; keep one (combine several with all = [...] or any = [...])"),
            );
            None
        }
        (None, None) => {
            match op.as_ref().map(Spanned::span).or(value.as_ref().map(Spanned::span)) {
                Some(extra) => ck.at(
                    extra,
                    format!("{label}: op and value need a metric, like metric = \"addreality_device_online\""),
                ),
                None => ck.at(
                    span,
                    format!("{label} has no condition; give metric + op + value, or expr"),
                ),
            }
            None
        }
        (None, Some(expr)) => {
            if let Some(extra) =
                op.as_ref().map(Spanned::span).or(value.as_ref().map(Spanned::span))
            {
                ck.at(
                    extra,
                    format!("{label}: op and value only go with metric; an expr carries its own comparison"),
                );
                return None;
            }
            ck.non_empty(expr, &format!("{label}: expr")).map(|e| Term::Expr(e.trim().to_string()))
        }
        (Some(metric), None) => {
            let mut ok = true;
            if !is_metric_name(metric.get_ref()) {
                ck.at(
                    metric.span(),
                    format!(
                        "{label}: {:?} is not a metric name; for PromQL use expr = \"…\"",
                        metric.get_ref()
                    ),
                );
                ok = false;
            }
            let (Some(op), Some(value)) = (op, value) else {
                ck.at(
                    metric.span(),
                    format!("{label}: metric needs op and value, like op = \"==\" and value = 0"),
                );
                return None;
            };
            let parsed = Op::parse(op.get_ref().trim());
            if parsed.is_none() {
                ck.at(
                    op.span(),
                    format!("{label}: unknown operator {:?}; use one of {ops}", op.get_ref()),
                );
                ok = false;
            }
            if value.get_ref().is_nan() {
                ck.at(value.span(), format!("{label}: value must be a number, not nan"));
                ok = false;
            }
            if !ok {
                return None;
            }
            Some(Term::Compare {
                metric: metric.get_ref().clone(),
                op: parsed?,
                value: *value.get_ref(),
            })
        }
    }
}

fn job_repeat(
    ck: &mut Checker<'_>,
    label: &str,
    raw: &Spanned<super::config::RawRepeat>,
) -> Option<Repeat> {
    let r = raw.get_ref();
    let (Some(every), Some(max)) = (&r.every, &r.max) else {
        ck.at(
            raw.span(),
            format!(
                "{label}: repeat needs every and max, like repeat = {{ every = \"30m\", max = 3 }}"
            ),
        );
        return None;
    };
    let mut ok = true;
    if every.get_ref().0.is_zero() {
        ck.at(every.span(), format!("{label}: repeat.every must be longer than 0s"));
        ok = false;
    }
    let max_value = *max.get_ref();
    if max_value < 1 {
        ck.at(
            max.span(),
            format!(
                "{label}: repeat.max must be at least 1; leave repeat out to act once per episode"
            ),
        );
        ok = false;
    }
    let max_value = u32::try_from(max_value).ok();
    if max_value.is_none() && ok {
        ck.at(max.span(), format!("{label}: repeat.max is too large"));
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(Repeat { every: every.get_ref().0, max: max_value? })
}

fn job_schedule(
    ck: &mut Checker<'_>,
    label: &str,
    raw: &Spanned<super::config::RawSchedule>,
) -> Option<Schedule> {
    let r = raw.get_ref();
    let mut ok = true;
    let mut days = [true; 7];
    if let Some(list) = &r.days {
        if list.get_ref().is_empty() {
            ck.at(list.span(), format!("{label}: schedule: {}", schedule::ScheduleError::NoDays));
            ok = false;
        } else {
            days = [false; 7];
            for day in list.get_ref() {
                match schedule::parse_days([day.get_ref().as_str()]) {
                    Ok(one) => {
                        for (all, this) in days.iter_mut().zip(one) {
                            *all |= this;
                        }
                    }
                    Err(err) => {
                        ck.at(day.span(), format!("{label}: schedule: {err}"));
                        ok = false;
                    }
                }
            }
        }
    }
    let hours = match &r.hours {
        None => None,
        Some(h) => match HourWindow::parse(h.get_ref()) {
            Ok(window) => Some(window),
            Err(err) => {
                ck.at(h.span(), format!("{label}: schedule: {err}"));
                ok = false;
                None
            }
        },
    };
    let time_zone = match &r.time_zone {
        None => Some(jiff::tz::TimeZone::system()),
        Some(tz) => match schedule::time_zone(tz.get_ref().trim()) {
            Ok(zone) => Some(zone),
            Err(err) => {
                ck.at(tz.span(), format!("{label}: schedule: {err}"));
                None
            }
        },
    };
    if !ok {
        return None;
    }
    Some(Schedule { days, hours, time_zone: time_zone? })
}

fn job_action(
    ck: &mut Checker<'_>,
    label: &str,
    raw: &Spanned<RawLabels>,
    devices: &LabelMatchers,
    env: &JobEnv<'_>,
) -> Option<Action> {
    let map = raw.get_ref();
    let find = |key: &str| map.iter().find(|(k, _)| k.get_ref() == key);
    let example = "action = { command = \"power_cycle\", minutes = 1 }";
    match (find("command"), find("sms")) {
        (Some(_), Some((sms_key, _))) => {
            ck.at(sms_key.span(), format!("{label}: action has both command and sms; keep one"));
            None
        }
        (None, None) => {
            ck.at(raw.span(), format!("{label}: action needs command or sms, like {example}"));
            None
        }
        (Some((_, command)), None) => command_action(ck, label, raw, command, devices, env),
        (None, Some((_, text))) => sms_action(ck, label, raw, text, devices, env),
    }
}

/// The sockets that may power a device the job selects.
fn candidate_sockets<'a>(
    ck: &mut Checker<'_>,
    label: &str,
    action_span: Range<usize>,
    devices: &LabelMatchers,
    env: &JobEnv<'a>,
) -> Option<Vec<&'a Socket>> {
    let candidates: Vec<&Socket> =
        env.sockets.iter().filter(|s| s.powers.iter().any(|key| devices.may_select(key))).collect();
    if !candidates.is_empty() {
        return Some(candidates);
    }
    if env.sockets_rejected {
        return None;
    }
    let elsewhere = "or send an SMS elsewhere with action = { sms = \"…\", to = \"+79991234567\" }";
    let message = if env.sockets.is_empty() {
        format!(
            "{label}: the action goes to the socket that powers each device, but no [[sockets]] is configured; add one, {elsewhere}"
        )
    } else {
        format!(
            "{label}: no socket powers a device matching {devices}; add a [[sockets]] entry whose powers names such a device, {elsewhere}"
        )
    };
    ck.at(action_span, message);
    None
}

fn command_action(
    ck: &mut Checker<'_>,
    label: &str,
    raw: &Spanned<RawLabels>,
    command: &Spanned<toml::Value>,
    devices: &LabelMatchers,
    env: &JobEnv<'_>,
) -> Option<Action> {
    let mut ok = true;
    let name = match command.get_ref() {
        toml::Value::String(s) => Some(s.clone()),
        _ => {
            ck.at(
                command.span(),
                format!("{label}: action.command must be a string, like command = \"power_cycle\""),
            );
            None
        }
    };
    let mut args = BTreeMap::new();
    let mut arg_spans: HashMap<String, (Range<usize>, Range<usize>)> = HashMap::new();
    for (key, value) in raw.get_ref() {
        match key.get_ref().as_str() {
            "command" => {}
            "to" => {
                ck.at(
                    key.span(),
                    format!("{label}: action.to only goes with sms; a command goes to the socket that powers the device"),
                );
                ok = false;
            }
            param => {
                let arg = match value.get_ref() {
                    toml::Value::Integer(n) => ArgValue::Integer(*n),
                    toml::Value::String(s) => ArgValue::Text(s.clone()),
                    _ => {
                        ck.at(
                            value.span(),
                            format!("{label}: action.{param} must be a whole number or a string"),
                        );
                        ok = false;
                        continue;
                    }
                };
                args.insert(param.to_string(), arg);
                arg_spans.insert(param.to_string(), (key.span(), value.span()));
            }
        }
    }
    let name = name?;
    let sockets = candidate_sockets(ck, label, raw.span(), devices, env)?;
    let mut reported: Vec<String> = Vec::new();
    for socket in sockets {
        let Err(errors) = socket.render(&name, &args) else { continue };
        for err in errors {
            let text = err.to_string();
            if reported.contains(&text) {
                continue;
            }
            let span = match &err {
                CommandError::UnknownCommand { .. } | CommandError::TooLong { .. } => {
                    command.span()
                }
                CommandError::UnexpectedArgument { param, .. } => arg_spans[param].0.clone(),
                CommandError::BadArgument { param, .. } | CommandError::BadPhone { param, .. } => {
                    arg_spans[param].1.clone()
                }
                CommandError::MissingArgument { .. } => raw.span(),
            };
            ck.at(span, format!("{label}: socket {:?}: {text}", socket.name));
            reported.push(text);
            ok = false;
        }
    }
    ok.then_some(Action::Command { command: name, args })
}

fn sms_action(
    ck: &mut Checker<'_>,
    label: &str,
    raw: &Spanned<RawLabels>,
    text: &Spanned<toml::Value>,
    devices: &LabelMatchers,
    env: &JobEnv<'_>,
) -> Option<Action> {
    let mut ok = true;
    let mut to = None;
    for (key, value) in raw.get_ref() {
        match key.get_ref().as_str() {
            "sms" => {}
            "to" => match value.get_ref() {
                toml::Value::String(s) => match PhoneNumber::parse(s) {
                    Ok(phone) => to = Some(phone),
                    Err(err) => {
                        ck.at(value.span(), format!("{label}: action.to: {err}"));
                        ok = false;
                    }
                },
                _ => {
                    ck.at(
                        value.span(),
                        format!("{label}: action.to must be a phone number in a string"),
                    );
                    ok = false;
                }
            },
            other => {
                ck.at(
                    key.span(),
                    format!("{label}: action has no key {other:?} for an sms; it takes sms and to"),
                );
                ok = false;
            }
        }
    }
    let template = match text.get_ref() {
        toml::Value::String(s) if s.trim().is_empty() => {
            ck.at(text.span(), format!("{label}: action.sms is empty"));
            None
        }
        toml::Value::String(s) => match Template::parse(s) {
            Ok(t) => Some(t),
            Err(err) => {
                ck.at(text.span(), format!("{label}: action.sms: {err}"));
                None
            }
        },
        _ => {
            ck.at(text.span(), format!("{label}: action.sms must be a string"));
            None
        }
    };
    let template = template?;
    if to.is_none() && ok {
        candidate_sockets(ck, label, raw.span(), devices, env)?;
        if let Some(length) = single_sms_overflow(&template.literal_text()) {
            ck.at(
                text.span(),
                format!("{label}: action.sms goes to a socket and does not fit in one SMS ({length}); shorten it"),
            );
            return None;
        }
    }
    ok.then_some(Action::Sms { text: template, to })
}
