//! The daemon-wide parts of the rules file: where the data comes from
//! (Prometheus, or the exporters scraped directly), where the journal
//! lives, and the budgets. (`[sms]` is the SMS module's own
//! [`crate::sms::SmsConfig`].)

use std::time::Duration;

use crate::secret::SecretSource;

/// Default evaluation interval: often enough to notice a frozen player
/// within a minute, rarely enough to be invisible to Prometheus.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Default query timeout: a third of the default interval, so a slow
/// Prometheus cannot make cycles overlap; a shorter interval is the default
/// instead.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default journal path: inside systemd's `StateDirectory=jobctl`.
pub(crate) const DEFAULT_JOURNAL_PATH: &str = "/var/lib/jobctl/journal.db";

/// Where the rules read their data: `[prometheus]` or `[source]`, exactly
/// one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    /// `[prometheus]`: every query is sent to the Prometheus HTTP API.
    Prometheus(PrometheusConfig),
    /// `[source] scrape = [...]`: jobctl scrapes the exporters itself and
    /// answers the queries that need no PromQL.
    Scrape(ScrapeConfig),
}

impl SourceConfig {
    /// Time between evaluation cycles (and, scraping, between scrapes).
    pub fn interval(&self) -> Duration {
        match self {
            SourceConfig::Prometheus(p) => p.interval,
            SourceConfig::Scrape(s) => s.interval,
        }
    }

    /// Timeout of one query or one scrape.
    pub fn timeout(&self) -> Duration {
        match self {
            SourceConfig::Prometheus(p) => p.timeout,
            SourceConfig::Scrape(s) => s.timeout,
        }
    }

    /// The credentials, when the source sits behind authentication.
    pub fn auth(&self) -> Option<&PrometheusAuth> {
        match self {
            SourceConfig::Prometheus(p) => p.auth.as_ref(),
            SourceConfig::Scrape(s) => s.auth.as_ref(),
        }
    }

    /// The URLs the credentials go to.
    pub fn urls(&self) -> Vec<&reqwest::Url> {
        match self {
            SourceConfig::Prometheus(p) => vec![&p.url],
            SourceConfig::Scrape(s) => s.targets.iter().collect(),
        }
    }
}

/// `[source]`: exporters read directly, for sites without a Prometheus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeConfig {
    /// The `/metrics` URLs scraped every cycle, their series merged.
    pub targets: Vec<reqwest::Url>,
    /// Time between cycles, each of which scrapes every target once.
    /// Default [`DEFAULT_INTERVAL`].
    pub interval: Duration,
    /// Timeout of one scrape, at most `interval`. Default as for
    /// `[prometheus]`.
    pub timeout: Duration,
    /// Credentials sent to every target, as `[prometheus]` sends them.
    pub auth: Option<PrometheusAuth>,
}

/// `[prometheus]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusConfig {
    /// Base URL of the HTTP API (`http://127.0.0.1:9090`), without credentials.
    pub url: reqwest::Url,
    /// Time between evaluation cycles. Default [`DEFAULT_INTERVAL`].
    pub(crate) interval: Duration,
    /// Timeout of one query, at most `interval`. Default [`DEFAULT_TIMEOUT`]
    /// or `interval`, whichever is shorter.
    pub timeout: Duration,
    /// Credentials, when Prometheus sits behind authentication. Default none.
    pub auth: Option<PrometheusAuth>,
}

/// How jobctl authenticates to Prometheus (or, with `[source]`, to the
/// exporters it scrapes). Secrets are read from files or the
/// environment (relative files from the main rules file's directory), never
/// from the rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrometheusAuth {
    /// HTTP basic auth (`username` + `password_file` or `password_env`).
    Basic {
        /// User name.
        username: String,
        /// Where the password is.
        password: SecretSource,
    },
    /// `Authorization: Bearer` (`token_file` or `token_env`).
    Bearer {
        /// Where the token is.
        token: SecretSource,
    },
}

/// `[journal]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// Where the journal is: `path`, the SQLite file (a relative path is
    /// taken from the main rules file's directory; default
    /// [`DEFAULT_JOURNAL_PATH`]), or `url`, a PostgreSQL database with its
    /// password source and TLS options.
    pub location: crate::journal::Location,
}

impl JournalConfig {
    /// The SQLite file, unless the journal is in PostgreSQL.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match &self.location {
            crate::journal::Location::Sqlite(path) => Some(path),
            crate::journal::Location::Postgres(_) => None,
        }
    }
}

/// `[budgets]`: at most so many messages (that may have left) per rolling
/// window, per socket and in all. Over budget, a message is journalled as
/// suppressed and counted, never silently dropped. `None` = no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budgets {
    /// Per socket, per rolling hour.
    pub socket_hour: Option<u32>,
    /// Per socket, per rolling day.
    pub socket_day: Option<u32>,
    /// All sockets together, per rolling hour.
    pub global_hour: Option<u32>,
    /// All sockets together, per rolling day.
    pub global_day: Option<u32>,
}

impl Budgets {
    /// The budget a message to `socket` at `now` would go over, in words,
    /// if any. `used(socket, since)` counts the messages that may have left
    /// since then, to that socket or (`None`) to all: the journal's count
    /// for a live run, the simulated sends for `jobctl test-rule --replay`.
    pub(crate) fn exceeded<E>(
        &self,
        socket: &str,
        now: jiff::Timestamp,
        mut used: impl FnMut(Option<&str>, jiff::Timestamp) -> Result<u32, E>,
    ) -> Result<Option<String>, E> {
        let hour = now - jiff::SignedDuration::from_secs(3600);
        let day = now - jiff::SignedDuration::from_secs(86_400);
        let checks = [
            (self.socket_hour, Some(socket), hour, "per socket per hour"),
            (self.socket_day, Some(socket), day, "per socket per day"),
            (self.global_hour, None, hour, "in all per hour"),
            (self.global_day, None, day, "in all per day"),
        ];
        for (limit, scope, since, label) in checks {
            let Some(limit) = limit else { continue };
            let used = used(scope, since)?;
            if used >= limit {
                let whose =
                    scope.map_or_else(|| "all sockets".to_string(), |s| format!("socket {s}"));
                return Ok(Some(format!(
                    "budget of {limit} messages {label} reached ({whose}: {used})"
                )));
            }
        }
        Ok(None)
    }
}
