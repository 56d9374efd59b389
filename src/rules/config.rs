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
    pub device_key: Option<Spanned<Vec<Spanned<String>>>>,
    /// Guards for every job that has no `guards` of its own. Default none.
    pub guards: Option<Vec<Spanned<RawGuard>>>,
    /// `[prometheus]`, required.
    pub prometheus: Option<Spanned<RawPrometheus>>,
    /// `[journal]`, optional.
    pub journal: Option<RawJournal>,
    /// `[sms]`, as the SMS module reads it.
    pub sms: Option<SmsConfig>,
    /// `[budgets]`, optional: no limits by default.
    pub budgets: Option<RawBudgets>,
    /// `[[sockets]]`.
    #[serde(default)]
    pub sockets: Vec<Spanned<RawSocket>>,
    /// `[[jobs]]`.
    #[serde(default)]
    pub jobs: Vec<Spanned<RawJob>>,
}

/// `[budgets]`: most messages that may leave per rolling window.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBudgets {
    /// Per socket, per rolling hour. Default: no limit.
    pub socket_per_hour: Option<Spanned<i64>>,
    /// Per socket, per rolling day. Default: no limit.
    pub socket_per_day: Option<Spanned<i64>>,
    /// All sockets together, per rolling hour. Default: no limit.
    pub total_per_hour: Option<Spanned<i64>>,
    /// All sockets together, per rolling day. Default: no limit.
    pub total_per_day: Option<Spanned<i64>>,
}

/// A file of `rules.d/`: sockets and jobs only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFragment {
    /// `[[sockets]]`.
    #[serde(default)]
    pub sockets: Vec<Spanned<RawSocket>>,
    /// `[[jobs]]`.
    #[serde(default)]
    pub jobs: Vec<Spanned<RawJob>>,
}

/// A file's `[[sockets]]` and `[[jobs]]`, the main file's and a split
/// file's alike, with the file their spans point into.
pub(crate) struct RawEntries<'a> {
    /// The file.
    pub file: &'a SourceFile,
    /// Its `[[sockets]]`.
    pub sockets: &'a [Spanned<RawSocket>],
    /// Its `[[jobs]]`.
    pub jobs: &'a [Spanned<RawJob>],
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
    pub url: Option<Spanned<String>>,
    /// Evaluation interval. Default 30s.
    pub interval: Option<Spanned<HumanDuration>>,
    /// Query timeout. Default 10s.
    pub timeout: Option<Spanned<HumanDuration>>,
    /// Basic auth user name. Default none.
    pub username: Option<Spanned<String>>,
    /// File holding the basic auth password.
    pub password_file: Option<Spanned<String>>,
    /// Environment variable holding the basic auth password.
    pub password_env: Option<Spanned<String>>,
    /// File holding a bearer token.
    pub token_file: Option<Spanned<String>>,
    /// Environment variable holding a bearer token.
    pub token_env: Option<Spanned<String>>,
}

/// `[journal]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJournal {
    /// SQLite file. Default `/var/lib/jobctl/journal.db`.
    pub path: Option<Spanned<String>>,
}

/// `[[sockets]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSocket {
    /// Unique name. Required.
    pub name: Option<Spanned<String>>,
    /// SIM number. Required.
    pub phone: Option<Spanned<String>>,
    /// Model name. Required.
    pub model: Option<Spanned<String>>,
    /// Device(s) powered: one table or an array of tables. Required.
    pub powers: Option<Spanned<RawPowers>>,
    /// Extra or overriding commands: name → SMS template.
    pub commands: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
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
    pub name: Option<Spanned<String>>,
    /// Label matchers. Default every device.
    pub devices: Option<Spanned<RawLabels>>,
    /// Metric of a comparison.
    pub metric: Option<Spanned<String>>,
    /// Operator of a comparison.
    pub op: Option<Spanned<String>>,
    /// Threshold of a comparison.
    pub value: Option<Spanned<f64>>,
    /// Raw PromQL condition.
    pub expr: Option<Spanned<String>>,
    /// Every term holds.
    pub all: Option<Spanned<Vec<Spanned<RawTerm>>>>,
    /// Some term holds.
    pub any: Option<Spanned<Vec<Spanned<RawTerm>>>>,
    /// How long the condition must hold. Default 0s.
    #[serde(rename = "for")]
    pub hold_for: Option<Spanned<HumanDuration>>,
    /// What to do. Required.
    pub action: Option<Spanned<RawLabels>>,
    /// Wait before a new episode may act. Default 1h.
    pub cooldown: Option<Spanned<HumanDuration>>,
    /// Repeats within an episode. Default none.
    pub repeat: Option<Spanned<RawRepeat>>,
    /// When actions may run. Default any time.
    pub schedule: Option<Spanned<RawSchedule>>,
    /// Guards. Default the file's top-level `guards`.
    pub guards: Option<Vec<Spanned<RawGuard>>>,
    /// Default true.
    pub enabled: Option<bool>,
}

/// One element of `all`/`any`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTerm {
    /// Metric of a comparison.
    pub metric: Option<Spanned<String>>,
    /// Operator of a comparison.
    pub op: Option<Spanned<String>>,
    /// Threshold of a comparison.
    pub value: Option<Spanned<f64>>,
    /// Raw PromQL.
    pub expr: Option<Spanned<String>>,
}

/// `repeat = { every, max }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRepeat {
    /// Time between actions. Required.
    pub every: Option<Spanned<HumanDuration>>,
    /// Most repeats per episode. Required, at least 1.
    pub max: Option<Spanned<i64>>,
}

/// `schedule = { days, hours, time_zone }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSchedule {
    /// Days and ranges. Default every day.
    pub days: Option<Spanned<Vec<Spanned<String>>>>,
    /// `"HH:MM-HH:MM"`. Default the whole day.
    pub hours: Option<Spanned<String>>,
    /// IANA zone. Default the system's.
    pub time_zone: Option<Spanned<String>>,
}

/// `{ expr, on }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGuard {
    /// PromQL. Required.
    pub expr: Option<Spanned<String>>,
    /// Join labels. Default the device key.
    pub on: Option<Spanned<Vec<Spanned<String>>>>,
}
