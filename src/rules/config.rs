//! The rules file as written: raw structs that mirror the TOML.
//!
//! These structs only catch what `toml` can place by itself (syntax, unknown
//! keys, wrong types, unreadable durations); every value a later check needs
//! to point at is kept [`Spanned`]. Required keys are `Option` here so that a
//! missing one gets our message ("add phone = …") at the table that lacks it
//! instead of serde's bare "missing field". [`super::validate`] and the
//! socket checks turn them into the domain types. `[sms]` is the SMS
//! module's own [`SmsConfig`], read here with the rest. The key-by-key
//! reference is `rules.example.toml` and the README; the defaults are named
//! in [`super::settings`] and [`super::job`].

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::config_file::{HumanDuration, SourceFile};
use crate::sms::SmsConfig;

/// `{ label = "value", … }`: strings or integers, checked later.
pub(crate) type RawLabels = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// The main rules file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRulesFile {
    /// Labels identifying a device. Default `["platform_id", "device_id"]`.
    pub(crate) device_key: Option<Spanned<Vec<Spanned<String>>>>,
    /// Guards for every job that has no `guards` of its own. Default none.
    pub(crate) guards: Option<Vec<Spanned<RawGuard>>>,
    /// `[prometheus]`; this or `[source]` is required.
    pub(crate) prometheus: Option<Spanned<RawPrometheus>>,
    /// `[source]`: exporters scraped directly instead of `[prometheus]`.
    pub(crate) source: Option<Spanned<RawSource>>,
    /// `[journal]`, optional.
    pub(crate) journal: Option<RawJournal>,
    /// `[sms]`, as the SMS module reads it.
    pub(crate) sms: Option<SmsConfig>,
    /// `[budgets]`, optional: no limits by default.
    pub(crate) budgets: Option<RawBudgets>,
    /// `[[sockets]]`.
    #[serde(default)]
    pub(crate) sockets: Vec<Spanned<RawSocket>>,
    /// `[[jobs]]`.
    #[serde(default)]
    pub(crate) jobs: Vec<Spanned<RawJob>>,
    /// The mass-outage hold of every job without its own. Default
    /// `{ share = 0.5, min_devices = 5 }`.
    pub(crate) mass_outage: Option<Spanned<RawMassOutage>>,
    /// `[[webhooks]]`: where escalations and action notices may be posted.
    #[serde(default)]
    pub(crate) webhooks: Vec<Spanned<RawWebhook>>,
    /// Who hears of an escalation, for every job without its own `escalate`.
    pub(crate) escalate: Option<Spanned<Vec<Spanned<RawLabels>>>>,
}

/// `mass_outage = { share, min_devices }`, or `false` (off) / `true` (on
/// with the defaults).
#[derive(Debug)]
pub(crate) enum RawMassOutage {
    /// `mass_outage = true` or `false`.
    Switch(bool),
    /// `mass_outage = { … }`.
    Table(RawMassOutageTable),
}

/// The table form of `mass_outage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMassOutageTable {
    /// Share of the job's known devices that must be bad at once, in (0, 1].
    /// Default the top-level one's, else 0.5.
    pub(crate) share: Option<Spanned<f64>>,
    /// Fewest bad devices that make an outage, at least 1. Default the
    /// top-level one's, else 5.
    pub(crate) min_devices: Option<Spanned<i64>>,
}

impl<'de> Deserialize<'de> for RawMassOutage {
    // Hand-written rather than `#[serde(untagged)]`, which buffers the value
    // and would lose the spans inside it (as for `powers`).
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct MassOutageVisitor;
        impl<'de> Visitor<'de> for MassOutageVisitor {
            type Value = RawMassOutage;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table like { share = 0.5, min_devices = 5 }, or false to switch the hold off")
            }

            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<RawMassOutage, E> {
                Ok(RawMassOutage::Switch(on))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawMassOutage, A::Error> {
                Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawMassOutage::Table)
            }
        }
        de.deserialize_any(MassOutageVisitor)
    }
}

/// `[budgets]`: most messages that may leave per rolling window.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBudgets {
    /// Per socket, per rolling hour. Default: no limit.
    pub(crate) socket_per_hour: Option<Spanned<i64>>,
    /// Per socket, per rolling day. Default: no limit.
    pub(crate) socket_per_day: Option<Spanned<i64>>,
    /// All sockets together, per rolling hour. Default: no limit.
    pub(crate) total_per_hour: Option<Spanned<i64>>,
    /// All sockets together, per rolling day. Default: no limit.
    pub(crate) total_per_day: Option<Spanned<i64>>,
}

/// A file of `rules.d/`: sockets and jobs only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFragment {
    /// `[[sockets]]`.
    #[serde(default)]
    pub(crate) sockets: Vec<Spanned<RawSocket>>,
    /// `[[jobs]]`.
    #[serde(default)]
    pub(crate) jobs: Vec<Spanned<RawJob>>,
}

/// A file's `[[sockets]]` and `[[jobs]]`, the main file's and a split
/// file's alike, with the file their spans point into.
pub(crate) struct RawEntries<'a> {
    /// The file.
    pub(crate) file: &'a SourceFile,
    /// Its `[[sockets]]`.
    pub(crate) sockets: &'a [Spanned<RawSocket>],
    /// Its `[[jobs]]`.
    pub(crate) jobs: &'a [Spanned<RawJob>],
}

impl RawRulesFile {
    /// The main file's sockets and jobs; `file` is the main file.
    pub(crate) fn entries<'a>(&'a self, file: &'a SourceFile) -> RawEntries<'a> {
        RawEntries { file, sockets: &self.sockets, jobs: &self.jobs }
    }
}

impl RawFragment {
    /// The split file's sockets and jobs; `file` is that file.
    pub(crate) fn entries<'a>(&'a self, file: &'a SourceFile) -> RawEntries<'a> {
        RawEntries { file, sockets: &self.sockets, jobs: &self.jobs }
    }
}

/// `[prometheus]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrometheus {
    /// Base URL of the Prometheus HTTP API. Required.
    pub(crate) url: Option<Spanned<String>>,
    /// Evaluation interval. Default 30s.
    pub(crate) interval: Option<Spanned<HumanDuration>>,
    /// Query timeout. Default 10s.
    pub(crate) timeout: Option<Spanned<HumanDuration>>,
    /// Basic auth user name. Default none.
    pub(crate) username: Option<Spanned<String>>,
    /// File holding the basic auth password.
    pub(crate) password_file: Option<Spanned<String>>,
    /// Environment variable holding the basic auth password.
    pub(crate) password_env: Option<Spanned<String>>,
    /// File holding a bearer token.
    pub(crate) token_file: Option<Spanned<String>>,
    /// Environment variable holding a bearer token.
    pub(crate) token_env: Option<Spanned<String>>,
}

/// `[source]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    /// `/metrics` URLs to scrape. Required, at least one.
    pub(crate) scrape: Option<Spanned<Vec<Spanned<String>>>>,
    /// Evaluation (and scrape) interval. Default 30s.
    pub(crate) interval: Option<Spanned<HumanDuration>>,
    /// Scrape timeout. Default 10s.
    pub(crate) timeout: Option<Spanned<HumanDuration>>,
    /// Basic auth user name. Default none.
    pub(crate) username: Option<Spanned<String>>,
    /// File holding the basic auth password.
    pub(crate) password_file: Option<Spanned<String>>,
    /// Environment variable holding the basic auth password.
    pub(crate) password_env: Option<Spanned<String>>,
    /// File holding a bearer token.
    pub(crate) token_file: Option<Spanned<String>>,
    /// Environment variable holding a bearer token.
    pub(crate) token_env: Option<Spanned<String>>,
}

/// The credential keys `[prometheus]` and `[source]` share.
pub(crate) struct RawCredentials<'a> {
    /// The table's name, for messages.
    pub(crate) table: &'static str,
    /// Basic auth user name.
    pub(crate) username: &'a Option<Spanned<String>>,
    /// File holding the basic auth password.
    pub(crate) password_file: &'a Option<Spanned<String>>,
    /// Environment variable holding the basic auth password.
    pub(crate) password_env: &'a Option<Spanned<String>>,
    /// File holding a bearer token.
    pub(crate) token_file: &'a Option<Spanned<String>>,
    /// Environment variable holding a bearer token.
    pub(crate) token_env: &'a Option<Spanned<String>>,
}

impl RawPrometheus {
    /// Its credential keys.
    pub(crate) fn credentials(&self) -> RawCredentials<'_> {
        RawCredentials {
            table: "prometheus",
            username: &self.username,
            password_file: &self.password_file,
            password_env: &self.password_env,
            token_file: &self.token_file,
            token_env: &self.token_env,
        }
    }
}

impl RawSource {
    /// Its credential keys.
    pub(crate) fn credentials(&self) -> RawCredentials<'_> {
        RawCredentials {
            table: "source",
            username: &self.username,
            password_file: &self.password_file,
            password_env: &self.password_env,
            token_file: &self.token_file,
            token_env: &self.token_env,
        }
    }
}

/// `[journal]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJournal {
    /// SQLite file. Default `/var/lib/jobctl/journal.db`.
    pub(crate) path: Option<Spanned<String>>,
    /// PostgreSQL URL, instead of `path`; no password in it.
    pub(crate) url: Option<Spanned<String>>,
    /// File holding the PostgreSQL password.
    pub(crate) password_file: Option<Spanned<String>>,
    /// Environment variable holding the PostgreSQL password.
    pub(crate) password_env: Option<Spanned<String>>,
    /// `disable`, `require` or `verify-full`.
    pub(crate) tls: Option<Spanned<String>>,
    /// CA certificates (PEM) for `verify-full`.
    pub(crate) ca_file: Option<Spanned<String>>,
}

/// `[[sockets]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSocket {
    /// Unique name. Required.
    pub(crate) name: Option<Spanned<String>>,
    /// SIM number. Required.
    pub(crate) phone: Option<Spanned<String>>,
    /// Model name. Required.
    pub(crate) model: Option<Spanned<String>>,
    /// Device(s) powered: one table or an array of tables. Required.
    pub(crate) powers: Option<Spanned<RawPowers>>,
    /// Extra or overriding commands: name → SMS template.
    pub(crate) commands: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
}

/// `powers = { … }` or `powers = [{ … }, { … }]`.
#[derive(Debug)]
pub(crate) enum RawPowers {
    /// One device.
    One(RawLabels),
    /// Several devices.
    Many(Vec<Spanned<RawLabels>>),
}

impl<'de> Deserialize<'de> for RawPowers {
    // Hand-written rather than `#[serde(untagged)]`, which buffers the value
    // and would lose the spans inside it.
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct PowersVisitor;
        impl<'de> Visitor<'de> for PowersVisitor {
            type Value = RawPowers;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of device labels, or an array of such tables")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawPowers, A::Error> {
                Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawPowers::One)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawPowers, A::Error> {
                Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(RawPowers::Many)
            }
        }
        de.deserialize_any(PowersVisitor)
    }
}

/// `[[jobs]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJob {
    /// Unique name. Default generated.
    pub(crate) name: Option<Spanned<String>>,
    /// Label matchers. Default every device.
    pub(crate) devices: Option<Spanned<RawLabels>>,
    /// Metric of a comparison.
    pub(crate) metric: Option<Spanned<String>>,
    /// Operator of a comparison.
    pub(crate) op: Option<Spanned<String>>,
    /// Threshold of a comparison.
    pub(crate) value: Option<Spanned<f64>>,
    /// Raw PromQL condition.
    pub(crate) expr: Option<Spanned<String>>,
    /// Every term holds.
    pub(crate) all: Option<Spanned<Vec<Spanned<RawTerm>>>>,
    /// Some term holds.
    pub(crate) any: Option<Spanned<Vec<Spanned<RawTerm>>>>,
    /// How long the condition must hold. Default 0s.
    #[serde(rename = "for")]
    pub(crate) hold_for: Option<Spanned<HumanDuration>>,
    /// What to do. Required.
    pub(crate) action: Option<Spanned<RawLabels>>,
    /// Wait before a new episode may act. Default 1h.
    pub(crate) cooldown: Option<Spanned<HumanDuration>>,
    /// Repeats within an episode. Default none.
    pub(crate) repeat: Option<Spanned<RawRepeat>>,
    /// Whether an action helped. Default not verified.
    pub(crate) verify: Option<Spanned<RawVerify>>,
    /// Most actions per device and per socket in a period. Default none.
    pub(crate) limit: Option<Spanned<RawLimit>>,
    /// When actions may run. Default any time.
    pub(crate) schedule: Option<Spanned<RawSchedule>>,
    /// Guards. Default the file's top-level `guards`.
    pub(crate) guards: Option<Vec<Spanned<RawGuard>>>,
    /// Mass-outage hold. Default the file's top-level `mass_outage`.
    pub(crate) mass_outage: Option<Spanned<RawMassOutage>>,
    /// Who hears of an escalation. Default the file's top-level `escalate`.
    pub(crate) escalate: Option<Spanned<Vec<Spanned<RawLabels>>>>,
    /// Webhooks told of every action the job takes. Default none.
    pub(crate) webhooks_on_action: Option<Spanned<Vec<Spanned<String>>>>,
    /// Default true.
    pub(crate) enabled: Option<bool>,
    /// Watch only the devices a socket powers. Default false.
    pub(crate) only_powered: Option<Spanned<bool>>,
}

/// One element of `all`/`any`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTerm {
    /// Metric of a comparison.
    pub(crate) metric: Option<Spanned<String>>,
    /// Operator of a comparison.
    pub(crate) op: Option<Spanned<String>>,
    /// Threshold of a comparison.
    pub(crate) value: Option<Spanned<f64>>,
    /// Raw PromQL.
    pub(crate) expr: Option<Spanned<String>>,
}

/// `repeat = { every, max }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRepeat {
    /// Time between actions. Required.
    pub(crate) every: Option<Spanned<HumanDuration>>,
    /// Most repeats per episode. Required, at least 1.
    pub(crate) max: Option<Spanned<i64>>,
}

/// `verify = { within }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVerify {
    /// How long after an action the condition must be found false. Required.
    pub(crate) within: Option<Spanned<HumanDuration>>,
}

/// `limit = { actions, per }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimit {
    /// Most actions in `per`. Required, at least 1.
    pub(crate) actions: Option<Spanned<i64>>,
    /// The rolling period. Required.
    pub(crate) per: Option<Spanned<HumanDuration>>,
}

/// `schedule = { days, hours, time_zone }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSchedule {
    /// Days and ranges. Default every day.
    pub(crate) days: Option<Spanned<Vec<Spanned<String>>>>,
    /// `"HH:MM-HH:MM"`. Default the whole day.
    pub(crate) hours: Option<Spanned<String>>,
    /// IANA zone. Default the system's.
    pub(crate) time_zone: Option<Spanned<String>>,
}

/// `{ expr, on }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGuard {
    /// PromQL. Required.
    pub(crate) expr: Option<Spanned<String>>,
    /// Join labels. Default the device key.
    pub(crate) on: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[[webhooks]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhook {
    /// Unique name, used by `escalate` and `webhooks_on_action`. Required.
    pub(crate) name: Option<Spanned<String>>,
    /// `http://` or `https://` URL the JSON payload is posted to. Required.
    pub(crate) url: Option<Spanned<String>>,
    /// File holding the HMAC-SHA256 key. This or `secret_env` is required.
    pub(crate) secret_file: Option<Spanned<String>>,
    /// Environment variable holding the HMAC-SHA256 key.
    pub(crate) secret_env: Option<Spanned<String>>,
    /// How long one request may take. Default 10s.
    pub(crate) timeout: Option<Spanned<HumanDuration>>,
}
