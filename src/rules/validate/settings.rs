//! The checks of the main file's daemon-wide settings: `device_key`,
//! `[prometheus]`, `[journal]`, `[budgets]`, `[sms]`, `[[webhooks]]` and
//! the top-level `guards` and `escalate`.
//!
//! `[sms]` is checked here too, by the SMS module's own
//! [`SmsConfig::check`], so that a broken `[sms]` is reported with the rest
//! of the file; the secrets it names are read only when the sender is built.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::conditions::guards_of;
use crate::config_file::{ConfigError, HumanDuration, SourceFile};
use crate::journal::{Location, PostgresTarget, TlsMode};
use crate::rules::checker::{not_a_label, Checker};
use crate::rules::condition::Guard;
use crate::rules::config::{
    RawBudgets, RawCredentials, RawJournal, RawMassOutage, RawPrometheus, RawRulesFile, RawSource,
};
use crate::rules::device::{is_label_name, DeviceKeyLabels};
use crate::rules::escalate::{EscalationTarget, Webhook};
use crate::rules::job::{MassOutage, DEFAULT_MASS_OUTAGE};
use crate::rules::settings::{
    Budgets, JournalConfig, PrometheusAuth, PrometheusConfig, ScrapeConfig, SourceConfig,
    DEFAULT_INTERVAL, DEFAULT_JOURNAL_PATH, DEFAULT_TIMEOUT,
};
use crate::secret::SecretSource;
use crate::sms::SmsConfig;

/// The example written in messages about `[prometheus]`.
const URL_EXAMPLE: &str = "url = \"http://127.0.0.1:9090\"";
/// The example written in messages about `[source]`.
const SCRAPE_EXAMPLE: &str = "scrape = [\"http://127.0.0.1:9747/metrics\"]";

/// The main file's settings, checked: what every socket and job is read
/// against, and what the daemon needs besides them.
pub(crate) struct Settings {
    /// `device_key`, or the default when it is missing or wrong.
    pub(crate) device_key: DeviceKeyLabels,
    /// `[prometheus]` or `[source]`; `None` when neither or both are
    /// there, or a URL is wrong.
    pub(crate) source: Option<SourceConfig>,
    /// `[journal]`.
    pub(crate) journal: JournalConfig,
    /// `[budgets]`.
    pub(crate) budgets: Budgets,
    /// `[sms]`, when the file has one.
    pub(crate) sms: Option<SmsConfig>,
    /// The top-level `guards`: those of every job without its own.
    pub(crate) default_guards: Vec<Guard>,
    /// The top-level `mass_outage`: that of every job without its own;
    /// [`DEFAULT_MASS_OUTAGE`] when the file has none, `None` when it says
    /// `false`.
    pub(crate) mass_outage: Option<MassOutage>,
    /// `[[webhooks]]`.
    pub(crate) webhooks: Vec<Webhook>,
    /// The top-level `escalate`: that of every job without its own.
    pub(crate) default_escalate: Vec<EscalationTarget>,
}

/// Checks the settings of the main file `main` (relative paths are taken
/// from `base_dir`), recording each problem in `errors`. The settings are
/// taken out of `raw`; its sockets and jobs are left for their own checks.
pub(crate) fn settings(
    main: &SourceFile,
    raw: &mut RawRulesFile,
    base_dir: &Path,
    errors: &mut Vec<ConfigError>,
) -> Settings {
    let mut ck = Checker { file: main, errors };
    let device_key = device_key(&mut ck, raw.device_key.take());
    let source = source(&mut ck, raw.prometheus.take(), raw.source.take());
    let journal = journal(&mut ck, raw.journal.take(), base_dir);
    let budgets = budgets(&mut ck, raw.budgets.take());
    let sms = sms(&mut ck, raw.sms.take());
    let default_guards = match &raw.guards {
        Some(guards) => {
            let scraping = matches!(source, Some(SourceConfig::Scrape(_)));
            guards_of(&mut ck, guards, &device_key, "", scraping)
        }
        None => Vec::new(),
    };
    let mass_outage = mass_outage(&mut ck, raw.mass_outage.as_ref(), Some(DEFAULT_MASS_OUTAGE), "");
    let webhooks = super::escalate::webhooks(&mut ck, &raw.webhooks);
    let default_escalate = raw
        .escalate
        .as_ref()
        .and_then(|list| super::escalate::escalate_list(&mut ck, "escalate", list, &webhooks))
        .unwrap_or_default();
    Settings {
        device_key,
        source,
        journal,
        budgets,
        sms,
        default_guards,
        webhooks,
        default_escalate,
        mass_outage,
    }
}

/// A `mass_outage` value (the top-level one, or a job's with `prefix`
/// naming it): `false` switches the hold off, `true` switches it on with
/// `base`'s values (or the defaults), and a table's missing keys take
/// `base`'s. `None` (absent) is `base`. A wrong value is recorded and
/// `base` is returned.
pub(super) fn mass_outage(
    ck: &mut Checker<'_>,
    raw: Option<&Spanned<RawMassOutage>>,
    base: Option<MassOutage>,
    prefix: &str,
) -> Option<MassOutage> {
    let Some(raw) = raw else { return base };
    let from = base.unwrap_or(DEFAULT_MASS_OUTAGE);
    let table = match raw.get_ref() {
        RawMassOutage::Switch(false) => return None,
        RawMassOutage::Switch(true) => return Some(from),
        RawMassOutage::Table(table) => table,
    };
    let mut ok = true;
    let share = match &table.share {
        None => from.share,
        Some(share) => {
            let value = *share.get_ref();
            // Written so that NaN fails too.
            if !(value > 0.0 && value <= 1.0) {
                ck.at(
                    share.span(),
                    format!("{prefix}mass_outage.share must be more than 0 and at most 1 (0.5 = half of the job's devices); write mass_outage = false to switch the hold off"),
                );
                ok = false;
            }
            value
        }
    };
    let min_devices = match &table.min_devices {
        None => Some(from.min_devices),
        Some(min) => {
            let value = u32::try_from(*min.get_ref()).ok().filter(|&m| m >= 1);
            if value.is_none() {
                ck.at(
                    min.span(),
                    format!(
                        "{prefix}mass_outage.min_devices must be a whole number from 1 to {}",
                        u32::MAX
                    ),
                );
            }
            value
        }
    };
    match (ok, min_devices) {
        (true, Some(min_devices)) => Some(MassOutage { share, min_devices }),
        _ => base,
    }
}

/// `[sms]`, checked by the SMS module without reading any secret.
fn sms(ck: &mut Checker<'_>, raw: Option<SmsConfig>) -> Option<SmsConfig> {
    let config = raw?;
    for err in config.check() {
        ck.errors.push(err.in_file(ck.file));
    }
    Some(config)
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

/// `[prometheus]` or `[source]`: one of them, not both.
fn source(
    ck: &mut Checker<'_>,
    raw_prometheus: Option<Spanned<RawPrometheus>>,
    scrape: Option<Spanned<RawSource>>,
) -> Option<SourceConfig> {
    match (raw_prometheus, scrape) {
        (None, None) => {
            ck.whole(format!(
                "no [prometheus] section; add one with {URL_EXAMPLE}, or read the exporters directly with [source] {SCRAPE_EXAMPLE}"
            ));
            None
        }
        (Some(_), Some(source)) => {
            ck.at(
                source.span(),
                "[source] and [prometheus] are both set; keep one: [prometheus] to evaluate the rules with Prometheus (PromQL, history), [source] to scrape the exporters directly",
            );
            None
        }
        (Some(raw), None) => prometheus(ck, raw).map(SourceConfig::Prometheus),
        (None, Some(raw)) => scrape_source(ck, raw).map(SourceConfig::Scrape),
    }
}

/// `[source]`: the targets, the interval and timeout, the credentials.
fn scrape_source(ck: &mut Checker<'_>, raw: Spanned<RawSource>) -> Option<ScrapeConfig> {
    let table_span = raw.span();
    let raw = raw.into_inner();
    let mut targets = Vec::new();
    let mut valid = true;
    match &raw.scrape {
        None => {
            ck.at(table_span.clone(), format!("[source] has no scrape; add {SCRAPE_EXAMPLE}"));
            valid = false;
        }
        Some(list) if list.get_ref().is_empty() => {
            ck.at(
                list.span(),
                format!("source.scrape is empty; list at least one target, e.g. {SCRAPE_EXAMPLE}"),
            );
            valid = false;
        }
        Some(list) => {
            for url in list.get_ref() {
                match checked_url(ck, url, "source.scrape", "http://127.0.0.1:9747/metrics") {
                    Some(parsed) if targets.contains(&parsed) => {
                        ck.at(
                            url.span(),
                            format!("source.scrape lists {:?} twice; keep one", url.get_ref()),
                        );
                        valid = false;
                    }
                    Some(url) => targets.push(url),
                    None => valid = false,
                }
            }
        }
    }
    let interval = positive(ck, raw.interval.as_ref(), "source.interval", DEFAULT_INTERVAL);
    let timeout =
        positive(ck, raw.timeout.as_ref(), "source.timeout", DEFAULT_TIMEOUT.min(interval));
    if timeout > interval {
        let span = raw.timeout.as_ref().map_or(table_span.clone(), toml::Spanned::span);
        ck.at(
            span,
            format!(
                "source.timeout ({}) is longer than interval ({}); a scrape must end before the next cycle starts",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        );
    }
    let auth = auth(ck, &raw.credentials());
    valid.then_some(ScrapeConfig { targets, interval, timeout, auth })
}

fn prometheus(ck: &mut Checker<'_>, raw: Spanned<RawPrometheus>) -> Option<PrometheusConfig> {
    let table_span = raw.span();
    let raw = raw.into_inner();
    let url = match &raw.url {
        None => {
            ck.at(table_span.clone(), format!("[prometheus] has no url; add {URL_EXAMPLE}"));
            None
        }
        Some(url) => checked_url(ck, url, "prometheus.url", "http://127.0.0.1:9090"),
    };
    let interval = positive(ck, raw.interval.as_ref(), "prometheus.interval", DEFAULT_INTERVAL);
    // Unset, the timeout is the default or the interval, whichever is
    // shorter: `interval = "1s"` alone is a valid file.
    let timeout =
        positive(ck, raw.timeout.as_ref(), "prometheus.timeout", DEFAULT_TIMEOUT.min(interval));
    if timeout > interval {
        let span = raw.timeout.as_ref().map_or(table_span.clone(), toml::Spanned::span);
        ck.at(
            span,
            format!(
                "prometheus.timeout ({}) is longer than interval ({}); a query must end before the next cycle starts",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        );
    }
    let auth = auth(ck, &raw.credentials());
    Some(PrometheusConfig { url: url?, interval, timeout, auth })
}

/// A URL of `key` (`prometheus.url`, `source.scrape`): http or https,
/// without credentials.
fn checked_url(
    ck: &mut Checker<'_>,
    url: &Spanned<String>,
    key: &str,
    example: &str,
) -> Option<reqwest::Url> {
    match reqwest::Url::parse(url.get_ref().trim()) {
        Err(err) => {
            ck.at(
                url.span(),
                format!(
                    "{key} {:?} is not a URL ({err}); write it like \"{example}\"",
                    url.get_ref()
                ),
            );
            None
        }
        Ok(parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            // The URL is not repeated: it holds a secret.
            ck.at(
                url.span(),
                format!("{key} must not carry a user name or password; use username with password_file or password_env"),
            );
            None
        }
        Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => {
            ck.at(
                url.span(),
                format!("{key} {:?} must start with http:// or https://", url.get_ref()),
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
    table: &str,
    file: &Option<Spanned<String>>,
    env: &Option<Spanned<String>>,
    file_key: &str,
    env_key: &str,
) -> Option<SecretSource> {
    match (file, env) {
        (Some(_), Some(env)) => {
            ck.at(env.span(), format!("{table}: {file_key} and {env_key} are both set; keep one"));
            None
        }
        (Some(file), None) => {
            ck.non_empty(file, &format!("{table}.{file_key}")).map(|f| SecretSource::File(f.into()))
        }
        (None, Some(env)) => {
            ck.non_empty(env, &format!("{table}.{env_key}")).map(SecretSource::Env)
        }
        (None, None) => None,
    }
}

/// The credentials of `[prometheus]` or `[source]`: the same keys, the
/// same checks.
fn auth(ck: &mut Checker<'_>, raw: &RawCredentials<'_>) -> Option<PrometheusAuth> {
    let table = raw.table;
    let (password_file, password_env) = (raw.password_file, raw.password_env);
    let password =
        secret_source(ck, table, password_file, password_env, "password_file", "password_env");
    let token = secret_source(ck, table, raw.token_file, raw.token_env, "token_file", "token_env");
    let password_span = raw.password_file.as_ref().or(raw.password_env.as_ref()).map(Spanned::span);
    let token_span = raw.token_file.as_ref().or(raw.token_env.as_ref()).map(Spanned::span);
    let basic = match (&raw.username, password_span) {
        (Some(user), Some(_)) => {
            let username = ck.non_empty(user, &format!("{table}.username"));
            username
                .zip(password)
                .map(|(username, password)| PrometheusAuth::Basic { username, password })
        }
        (Some(user), None) => {
            ck.at(user.span(), format!("{table}.username needs password_file or password_env"));
            None
        }
        (None, Some(span)) => {
            ck.at(
                span,
                format!("{table}: a password is set without username; add username = \"…\""),
            );
            None
        }
        (None, None) => None,
    };
    let bearer = token.map(|token| PrometheusAuth::Bearer { token });
    if let (Some(_), Some(span)) = (&raw.username, token_span) {
        ck.at(
            span,
            format!("{table}: basic auth (username) and a bearer token are both set; keep one"),
        );
        return None;
    }
    basic.or(bearer)
}

fn journal(ck: &mut Checker<'_>, raw: Option<RawJournal>, base_dir: &Path) -> JournalConfig {
    let default =
        || JournalConfig { location: Location::Sqlite(PathBuf::from(DEFAULT_JOURNAL_PATH)) };
    let Some(raw) = raw else { return default() };
    let Some(url) = &raw.url else {
        // SQLite: the PostgreSQL keys mean a mistake.
        let postgres_only = [
            (&raw.password_file, "password_file"),
            (&raw.password_env, "password_env"),
            (&raw.tls, "tls"),
            (&raw.ca_file, "ca_file"),
        ];
        for (value, key) in postgres_only {
            if let Some(value) = value {
                ck.at(
                    value.span(),
                    format!("journal.{key} is for a PostgreSQL journal (url); an SQLite journal (path) has none"),
                );
            }
        }
        let path = match &raw.path {
            None => PathBuf::from(DEFAULT_JOURNAL_PATH),
            Some(path) => match ck.non_empty(path, "journal.path") {
                Some(p) => base_dir.join(p),
                None => PathBuf::from(DEFAULT_JOURNAL_PATH),
            },
        };
        return JournalConfig { location: Location::Sqlite(path) };
    };
    if raw.path.is_some() {
        ck.at(
            url.span(),
            "journal: path and url are both set; keep one (path for SQLite, url for PostgreSQL)"
                .to_string(),
        );
        return default();
    }
    let password = secret_source(
        ck,
        "journal",
        &raw.password_file,
        &raw.password_env,
        "password_file",
        "password_env",
    );
    // Every key is checked, so that one run of `check` names every mistake.
    let tls = raw.tls.as_ref().and_then(|tls| {
        let mode = TlsMode::parse(tls.get_ref());
        if mode.is_none() {
            ck.at(
                tls.span(),
                format!(
                    "journal.tls is {:?}; expected \"disable\", \"require\" or \"verify-full\"",
                    tls.get_ref()
                ),
            );
        }
        mode
    });
    let target = ck.non_empty(url, "journal.url").and_then(|text| {
        PostgresTarget::new(&text)
            .map_err(|reason| ck.at(url.span(), format!("journal.url: {reason}")))
            .ok()
    });
    let Some(mut target) = target else { return default() };
    target.password = password;
    target.base_dir = base_dir.to_path_buf();
    if let Some(mode) = tls {
        target.tls = mode;
    }
    if let Some(ca_file) = &raw.ca_file {
        if target.tls == TlsMode::VerifyFull {
            target.ca_file = ck.non_empty(ca_file, "journal.ca_file").map(PathBuf::from);
        } else {
            ck.at(
                ca_file.span(),
                format!(
                    "journal.ca_file is only read with tls = \"verify-full\" (tls is {:?} here)",
                    target.tls.as_str()
                ),
            );
        }
    }
    JournalConfig { location: Location::Postgres(target) }
}

fn budgets(ck: &mut Checker<'_>, raw: Option<RawBudgets>) -> Budgets {
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
