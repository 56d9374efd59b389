//! `jobctl check`: everything that can be known before running, in one pass.
//!
//! Syntax, schema, durations, phone numbers, sockets and commands come from
//! [`crate::rules::load`]; the `[sms]` settings and every secret are loaded
//! as `run` would; and each distinct query is judged as PromQL. Who judges:
//! Prometheus's own parser through `/api/v1/format_query` when the engine
//! has it; otherwise jobctl's local parser
//! ([`crate::prometheus_api::check_syntax`]): offline, when the engine does
//! not answer (not an error: the rules may be written before it exists,
//! but said plainly), and when the engine has no `format_query`
//! (VictoriaMetrics, Thanos, Prometheus before 2.38). There the engine
//! also evaluates each query at the Unix epoch, which can only add a
//! refusal (a function the engine lacks): what the local parser refuses is
//! an error even if the engine evaluates it (a MetricsQL extension),
//! because rules are PromQL and `check --offline`, which systemd runs
//! before the daemon starts, must agree with `check`. A query refused
//! either way is an error at its job's `file:line:column`, exit 3.
//!
//! With `[source] scrape` instead of `[prometheus]`, the rules themselves
//! refuse what needs PromQL (at its `file:line:column`); `check` scrapes
//! each target once and says which do not answer.
//!
//! It also looks at what only shows when a message is sent: a gateway key
//! that cannot go into a request (a line break), the modem's device (missing:
//! a warning, the modem may be unplugged; not a character device: an
//! error), and a token or key that would cross the network in clear text
//! (`http://` to a host other than this one: a warning).
//!
//! Which devices a job watches is only known from Prometheus's answers, and
//! the rules know only the devices a socket powers. So when Prometheus
//! answers, `check` runs each query once and says, for each job whose
//! action is a socket command, how many of the devices it watches now have
//! no socket (a warning: the daemon cannot act on them), or, with
//! `only_powered`, how many it leaves out. `--offline` says nothing of it.

use std::collections::HashMap;
use std::path::Path;

use super::error::Error;
use super::{build_sender, count, load_rules, Reader};
use crate::config_file::{ConfigError, ConfigErrors};
use crate::engine::Source;
use crate::exit::Exit;
use crate::prometheus_api::{check_syntax, Parsed, PromClient, PromError};
use crate::rules::condition::{with_freshness, FRESHNESS_QUERY};
use crate::rules::{Action, DeviceKey, Job, RuleSet, Sample};
use crate::secret::SecretSource;

/// `jobctl check` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// Do not ask Prometheus to check the queries: jobctl's own PromQL
    /// parser does.
    #[arg(long)]
    pub(crate) offline: bool,
}

pub(super) async fn run(config: &Path, args: CheckArgs) -> Result<Exit, Error> {
    let rules = load_rules(config)?;
    let sender = build_sender(&rules)?;
    let source = super::source(&rules)?;
    let (errors, warnings) = at_send_time(&rules);
    for warning in &warnings {
        eprintln!("jobctl: warning: {warning}");
    }
    if !errors.is_empty() {
        return Err(Error::Rules(ConfigErrors(errors)));
    }

    let mut promql_note = match &source {
        Source::Prometheus(_) => "PromQL checked locally (--offline)".to_string(),
        Source::Scrape(_) => "scrape targets not scraped (--offline)".to_string(),
    };
    let mut powered = HashMap::new();
    if let (false, Source::Scrape(client)) = (args.offline, &source) {
        let scraped = client.scrape().await;
        let failed: Vec<_> =
            scraped.targets.iter().filter_map(|t| t.result.as_ref().err()).collect();
        for err in &failed {
            eprintln!("jobctl: warning: {err}");
        }
        let total = scraped.targets.len();
        promql_note = format!(
            "{} of {} scraped (no PromQL: [source])",
            total - failed.len(),
            count(total, "scrape target", "scrape targets")
        );
        if scraped.answered() {
            powered = powered_devices(&rules, &Reader::Scrape(scraped)).await;
        }
    }
    if let Source::Prometheus(prometheus) = &source {
        let url = rules.prometheus().map(|p| p.url.to_string()).unwrap_or_default();
        // The local parser judges alone offline and when the engine does
        // not answer.
        let mut judge_locally = args.offline;
        if !args.offline {
            let (errors, unreachable) = engine_check(&rules, prometheus, &url).await;
            if !errors.is_empty() {
                return Err(Error::Rules(ConfigErrors(errors)));
            }
            if let Some(err) = unreachable {
                eprintln!("jobctl: warning: PromQL not checked by Prometheus: {err}");
                promql_note = "PromQL checked locally (Prometheus did not answer)".to_string();
                judge_locally = true;
            } else {
                powered = powered_devices(&rules, &Reader::Prometheus(prometheus.clone())).await;
                promql_note = if prometheus.has_format_query() {
                    format!("PromQL checked by {url}")
                } else {
                    format!("PromQL checked locally ({url} has no format_query)")
                };
            }
        }
        if judge_locally {
            let errors: Vec<ConfigError> = rules
                .jobs
                .iter()
                .flat_map(|job| job.queries().into_iter().map(move |query| (job, query)))
                .filter_map(|(job, query)| {
                    let why = check_syntax(&query).err()?;
                    Some(not_promql(job, &query, &why, ""))
                })
                .collect();
            if !errors.is_empty() {
                return Err(Error::Rules(ConfigErrors(errors)));
            }
        }
    }

    for job in &rules.jobs {
        let Some(found) = powered.get(&job.name).filter(|f| !f.unpowered.is_empty()) else {
            continue;
        };
        if !job.only_powered {
            eprintln!(
                "jobctl: warning: job {:?}: {}; the daemon cannot act on them (it logs each once per episode): add them to a socket's powers, or set only_powered = true to watch only the {} that have one",
                job.name,
                found.no_socket(),
                found.total - found.unpowered.len()
            );
        }
    }

    for warning in rules.sms.iter().flat_map(crate::sms::SmsConfig::warnings) {
        eprintln!("jobctl: warning: {}", warning.in_file(&rules.main_file));
    }

    let enabled = rules.jobs.iter().filter(|j| j.enabled).count();
    crate::exit::outln!(
        "{}: OK: {} ({enabled} enabled), {}, {}; SMS via {}; {promql_note}",
        config.display(),
        count(rules.jobs.len(), "job", "jobs"),
        count(rules.sockets.len(), "socket", "sockets"),
        count(rules.files.len(), "file", "files"),
        sender.sender.name()
    );
    for job in &rules.jobs {
        crate::exit::outln!("\n{job}");
        if let Some(targets) = powered.get(&job.name).and_then(Powered::several_targets) {
            crate::exit::outln!("  targets:  {targets}");
        }
        if let Some(found) = powered.get(&job.name).filter(|found| found.commands) {
            let without = found.unpowered.len();
            if job.only_powered {
                crate::exit::outln!(
                    "  sockets:  {} of {} in Prometheus now have a socket; only those are watched",
                    found.total - without,
                    count(found.total, "device", "devices")
                );
            } else if without == 0 {
                crate::exit::outln!(
                    "  sockets:  every device this job watches has one ({} in Prometheus now)",
                    found.total
                );
            } else {
                crate::exit::outln!("  sockets:  {} (Prometheus now)", found.no_socket());
            }
        }
    }
    Ok(Exit::Ok)
}

/// Has the engine judge every job's queries, each distinct query once:
/// the errors found, or why the engine did not answer (then nothing was
/// judged). Prometheus's `format_query` is the judge where the engine has
/// it; where it has not, the local PromQL parser is, and the engine's
/// evaluation at the epoch can only add a refusal (a function it lacks).
async fn engine_check(
    rules: &RuleSet,
    prometheus: &PromClient,
    url: &str,
) -> (Vec<ConfigError>, Option<PromError>) {
    let mut errors = Vec::new();
    let mut verdicts: HashMap<String, Result<Parsed, String>> = HashMap::new();
    for job in &rules.jobs {
        for query in job.queries() {
            let verdict = match verdicts.get(&query) {
                Some(verdict) => verdict.clone(),
                None => {
                    let verdict = match prometheus.check_expr(&query).await {
                        Ok(parsed) => Ok(parsed),
                        Err(PromError::Api { error, .. }) => Err(error
                            .trim_start_matches("invalid parameter \"query\": ")
                            .to_string()),
                        Err(err) => return (Vec::new(), Some(err)),
                    };
                    verdicts.insert(query.clone(), verdict.clone());
                    verdict
                }
            };
            let local = check_syntax(&query);
            let error = match (verdict, local) {
                (Ok(Parsed::ByFormatQuery), _) | (Ok(Parsed::ByEvaluation), Ok(())) => continue,
                (Err(error), _) if prometheus.has_format_query() => {
                    format!("job {:?}: Prometheus rejects {query:?}: {error}", job.name)
                }
                (Err(error), Ok(())) => {
                    format!("job {:?}: {url} rejects {query:?}: {error}", job.name)
                }
                (Err(_), Err(why)) => not_promql(job, &query, &why, "").message,
                (Ok(Parsed::ByEvaluation), Err(why)) => {
                    let accepted = format!(
                        "; {url} evaluates it, but rules must be PromQL (not an engine's dialect), as `check --offline` before the daemon starts requires"
                    );
                    not_promql(job, &query, &why, &accepted).message
                }
            };
            errors.push(ConfigError {
                path: job.origin.path.clone(),
                location: Some((job.origin.line, job.origin.column)),
                message: error,
            });
        }
    }
    (errors, None)
}

/// A query the local PromQL parser refuses, at its job's place.
fn not_promql(job: &Job, query: &str, why: &str, more: &str) -> ConfigError {
    ConfigError {
        path: job.origin.path.clone(),
        location: Some((job.origin.line, job.origin.column)),
        message: format!("job {:?}: {query:?} is not valid PromQL: {why}{more}", job.name),
    }
}

/// What Prometheus says now of one job's devices and their sockets.
struct Powered {
    /// Whether the job's action is a socket command (else `unpowered` is
    /// empty and says nothing).
    commands: bool,
    /// Devices in the job's answers, before `only_powered`.
    total: usize,
    /// Those no socket powers, in key order.
    unpowered: Vec<DeviceKey>,
    /// Devices several targets serve (an HA pair of exporters).
    several_targets: usize,
    /// Of those, the devices whose targets' data differ in age now.
    freshest_chosen: usize,
}

impl Powered {
    /// When some devices come from several targets: how many, and which
    /// of their series count.
    fn several_targets(&self) -> Option<String> {
        if self.several_targets == 0 {
            return None;
        }
        let now = match self.freshest_chosen {
            0 => "now none: their targets polled at the same time, or did not say when, so their series must all agree".to_string(),
            told => format!("now {told} told apart that way"),
        };
        Some(format!(
            "{} of {} come from more than one target (exporters in pairs); the freshest sample wins: of a device's series, only those of the target whose last successful poll ({FRESHNESS_QUERY}) is newest count ({now})",
            self.several_targets,
            count(self.total, "device", "devices"),
        ))
    }

    /// `12 of 40 devices this job watches have no socket (first: …)`.
    fn no_socket(&self) -> String {
        const SHOWN: usize = 3;
        let mut first: Vec<String> =
            self.unpowered.iter().take(SHOWN).map(ToString::to_string).collect();
        if self.unpowered.len() > SHOWN {
            first.push("…".to_string());
        }
        let verb = if self.unpowered.len() == 1 { "has" } else { "have" };
        format!(
            "{} of {} this job watches {verb} no socket ({})",
            self.unpowered.len(),
            count(self.total, "device", "devices"),
            first.join(", ")
        )
    }
}

/// For each enabled job whose queries all answer now: its devices, those
/// several targets serve, and (for a socket command) those no socket
/// powers. Each distinct query is sent once.
async fn powered_devices(rules: &RuleSet, reader: &Reader) -> HashMap<String, Powered> {
    let mut answers: HashMap<String, Vec<Sample>> = HashMap::new();
    for query in with_freshness(rules.queries()) {
        if let Ok(samples) = reader.query(&query).await {
            answers.insert(query, samples);
        }
    }
    let mut found = HashMap::new();
    for job in rules.jobs.iter().filter(|j| j.enabled) {
        let commands = matches!(job.action, Action::Command { .. });
        if job.queries().iter().any(|q| !answers.contains_key(q)) {
            continue;
        }
        let evaluation = job.evaluate(&answers, &rules.device_key);
        let unpowered: Vec<DeviceKey> = evaluation
            .devices
            .keys()
            .filter(|key| commands && rules.socket_for(key).is_none())
            .cloned()
            .collect();
        let powered = Powered {
            commands,
            total: evaluation.devices.len(),
            unpowered,
            several_targets: evaluation.several_targets,
            freshest_chosen: evaluation.freshest_chosen,
        };
        found.insert(job.name.clone(), powered);
    }
    found
}

/// What would otherwise only show when a message is sent: errors, then
/// warnings.
fn at_send_time(rules: &RuleSet) -> (Vec<ConfigError>, Vec<ConfigError>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let file = &rules.main_file;
    if rules.source.auth().is_some() {
        for url in rules.source.urls().into_iter().filter(|url| in_clear(url)) {
            let (key, what) = match rules.prometheus() {
                Some(_) => ("prometheus.url", "Prometheus"),
                None => ("source.scrape", "the exporter"),
            };
            warnings.push(file.error(format!(
                "{key}: the credentials would travel unencrypted to {}; use https:// (or reach {what} on this host)",
                host(url)
            )));
        }
    }
    let (webhook_errors, webhook_warnings) = webhook_problems(rules);
    errors.extend(webhook_errors);
    warnings.extend(webhook_warnings);
    let Some(sms) = &rules.sms else { return (errors, warnings) };
    if let Some(http) = &sms.http {
        let key = match (&http.key_file, &http.key_env) {
            (Some(path), _) => {
                Some((SecretSource::File(path.get_ref().clone()), "key_file", path.span()))
            }
            (None, Some(env)) => {
                Some((SecretSource::Env(env.get_ref().clone()), "key_env", env.span()))
            }
            (None, None) => None,
        };
        if let Some((source, name, span)) = key {
            let control = source
                .load(&rules.base_dir)
                .ok()
                .is_some_and(|loaded| loaded.secret.expose().chars().any(char::is_control));
            if control {
                errors.push(file.error_at(span.clone(), format!(
                    "sms.http.{name}: the key contains a line break or another control character, which no request can carry; write the key on one line"
                )));
            }
            // A provider preset without url uses the provider's https:// address.
            let written = http.url.as_ref();
            if let Some((written, Ok(url))) =
                written.map(|w| (w, reqwest::Url::parse(w.get_ref().trim())))
            {
                if in_clear(&url) {
                    warnings.push(file.error_at(written.span(), format!(
                        "sms.http.url: the gateway key would travel unencrypted to {}; use https:// (or a gateway on this host)",
                        host(&url)
                    )));
                }
            }
        }
    }
    if let Some(modem) = &sms.modem {
        let device = modem.device.get_ref();
        let span = modem.device.span();
        match std::fs::metadata(device) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => warnings.push(file.error_at(
                span,
                format!(
                    "sms.modem.device: {} does not exist; sends through the modem fail until it does (plug the modem in, or check the path)",
                    device.display()
                ),
            )),
            Err(err) => warnings.push(file.error_at(
                span,
                format!("sms.modem.device: cannot look at {}: {err}", device.display()),
            )),
            Ok(meta) => {
                use std::os::unix::fs::FileTypeExt as _;
                if !meta.file_type().is_char_device() {
                    errors.push(file.error_at(
                        span,
                        format!(
                            "sms.modem.device: {} is not a character device; write the modem's serial device, like \"/dev/ttyUSB0\" or \"/dev/serial/by-id/…\"",
                            device.display()
                        ),
                    ));
                }
            }
        }
    }
    (errors, warnings)
}

/// What is wrong with the `[[webhooks]]` that only shows when one is posted
/// to: a signing key that cannot be read (an error), a key file others may
/// read, credentials in an `http://` URL to another host (warnings). `run`
/// checks the same at start and on reload.
pub(super) fn webhook_problems(rules: &RuleSet) -> (Vec<ConfigError>, Vec<ConfigError>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let file = &rules.main_file;
    for hook in &rules.webhooks {
        let key = match hook.secret {
            SecretSource::File(_) => "secret_file",
            SecretSource::Env(_) => "secret_env",
        };
        let what = format!("webhook {:?}: {key}", hook.name);
        match hook.secret.load(&rules.base_dir) {
            Err(err) => errors.push(file.error_at(
                hook.secret_span.clone(),
                format!("{what}: {err}; the payload cannot be signed"),
            )),
            Ok(loaded) => {
                if let Some(loose) = loaded.loose_permissions {
                    warnings
                        .push(file.error_at(hook.secret_span.clone(), format!("{what}: {loose}")));
                }
            }
        }
        if !hook.url.username().is_empty() && in_clear(&hook.url) {
            warnings.push(file.error_at(
                hook.url_span.clone(),
                format!(
                    "webhook {:?}: url: the credentials would travel unencrypted to {}; use https:// (or a receiver on this host)",
                    hook.name,
                    host(&hook.url)
                ),
            ));
        }
    }
    (errors, warnings)
}

/// Whether a URL sends what it carries unencrypted over the network:
/// `http://` to a host other than this one.
fn in_clear(url: &reqwest::Url) -> bool {
    let name = url.host_str().unwrap_or("localhost").trim_matches(['[', ']']);
    let loopback = name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    url.scheme() == "http" && !loopback
}

/// The host and port of a URL, for messages (never its path or query).
fn host(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}
