//! jobctl's rules: the TOML file(s) that say what to watch in Prometheus and
//! which SMS to send when it goes wrong.
//!
//! The file is read in two layers, as everywhere in this crate: `config`
//! mirrors the TOML (`#[serde(deny_unknown_fields)]`, spans kept), and the
//! checks turn it into the domain types ([`RuleSet`], [`Job`], [`Socket`])
//! or into the complete list of problems, each at `file:line:column`:
//! `validate` checks the settings (`[sms]` through the SMS module's own
//! [`SmsConfig::check`]), `socket::check` the sockets, `validate` again the
//! jobs against both. A rule set is either entirely valid or not loaded.
//!
//! Rules may be split: every `*.toml` in a `rules.d/` directory next to the
//! main file is read too, in file-name order. Those files hold `[[sockets]]`
//! and `[[jobs]]` only (the daemon settings live in the main file); socket
//! and job names are unique across all of them.
//!
//! What a condition queries and how answers become per-device verdicts is in
//! [`condition`]; generated job names in [`naming`]; schedule windows in
//! [`schedule`].

mod checker;
pub(crate) mod condition;
pub(crate) mod config;
pub(crate) mod device;
pub mod escalate;
pub(crate) mod job;
pub(crate) mod naming;
pub(crate) mod schedule;
pub mod settings;
pub mod socket;
pub mod state;
pub(crate) mod template;
pub(crate) mod validate;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

pub use condition::{Condition, DeviceVerdict, Evaluation, Guard, Op, Sample, Term, Verdict};
pub use device::{DeviceKey, DeviceKeyLabels, LabelMatchers};
pub use job::{Action, Job, Repeat, SourcePosition, DEFAULT_COOLDOWN};
pub use settings::{
    Budgets, JournalConfig, PrometheusAuth, PrometheusConfig, ScrapeConfig, SourceConfig,
};

use crate::config_file::{ConfigError, ConfigErrors, SourceFile};
use crate::sms::phone::PhoneNumber;
use crate::sms::SmsConfig;
use config::RawEntries;
use socket::{CommandError, Socket};

/// A complete, valid set of rules.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// The files read: the main file, then `rules.d/*.toml` in order.
    pub files: Vec<PathBuf>,
    /// The main file's directory; relative secret files are taken from it.
    pub(crate) base_dir: PathBuf,
    /// The main file as read, so that what is found wrong after loading
    /// (an SMS secret that cannot be read) is placed at its line:column.
    pub(crate) main_file: SourceFile,
    /// The labels that identify a device. Default `platform_id`, `device_id`.
    pub device_key: DeviceKeyLabels,
    /// `[prometheus]` or `[source]`: where the data comes from.
    pub source: SourceConfig,
    /// `[journal]`.
    pub journal: JournalConfig,
    /// `[sms]`, checked but for what needs its secrets, files or devices
    /// ([`SmsConfig::check`]); `None` when the file has none, which is an
    /// error only for a command that sends.
    pub sms: Option<SmsConfig>,
    /// `[budgets]`.
    pub budgets: Budgets,
    /// Every socket, main file first.
    pub sockets: Vec<Socket>,
    /// Every job, main file first, in file order.
    pub jobs: Vec<Job>,
    /// `[[webhooks]]`.
    pub webhooks: Vec<escalate::Webhook>,
    socket_by_device: HashMap<DeviceKey, usize>,
}

/// A message a job's action sends: where it goes, and the exact text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The channel it goes over and its address there.
    pub to: Recipient,
    /// The text, exactly as the action made it (the engine's outbox then
    /// shapes it for its channel).
    pub text: String,
}

impl Outgoing {
    /// An SMS to a socket.
    pub(crate) fn to_socket(socket: &Socket, text: String) -> Outgoing {
        let to = Recipient::Sms { socket: Some(socket.name.clone()), phone: socket.phone.clone() };
        Outgoing { to, text }
    }
}

/// Where an [`Outgoing`] message goes: the channel, and the address on it.
///
/// A rule's action is an SMS ([`RuleSet::outgoing`]); escalations and
/// action notices may also go to a webhook, which the engine's outbox
/// delivers over a backend of its own: the SMS backends never see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// An SMS, sent by the configured `[sms]` backend(s).
    Sms {
        /// The socket it goes to, when it goes to one (a socket command);
        /// `None` for a notification to a person (`action = { sms = …,
        /// to = … }`).
        socket: Option<String>,
        /// The phone number.
        phone: PhoneNumber,
    },
    /// A JSON payload posted to a `[[webhooks]]` entry, signed.
    Webhook {
        /// The entry's name.
        name: String,
        /// Its URL without credentials ([`escalate::Webhook::shown_url`]).
        url: String,
    },
}

impl Recipient {
    /// The address on the channel: an SMS's phone number.
    pub(crate) fn address(&self) -> &str {
        match self {
            Recipient::Sms { phone, .. } => phone.as_str(),
            Recipient::Webhook { url, .. } => url,
        }
    }
}

/// As logs and `jobctl test-rule` name it: `socket lobby (+79991234567)`,
/// `socket - (+79991234567)` for a person, `webhook ops (https://…)`.
impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recipient::Sms { socket, phone } => {
                write!(f, "socket {} ({phone})", socket.as_deref().unwrap_or("-"))
            }
            Recipient::Webhook { name, url } => write!(f, "webhook {name} ({url})"),
        }
    }
}

/// Why a job's action cannot be turned into a message for a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// No socket powers the device (known only at run time).
    #[error("no socket powers device {device}; add a [[sockets]] entry whose powers names it")]
    NoSocket {
        /// The device.
        device: DeviceKey,
    },
    /// The device's socket cannot render the command (a socket that was not
    /// among the candidates at check time, e.g. matched through labels
    /// outside the device key).
    #[error("socket {socket:?}: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Command {
        /// The socket.
        socket: String,
        /// What is wrong.
        errors: Vec<CommandError>,
    },
}

impl RuleSet {
    /// `[prometheus]`, when the rules read Prometheus rather than scrape.
    pub fn prometheus(&self) -> Option<&PrometheusConfig> {
        match &self.source {
            SourceConfig::Prometheus(prometheus) => Some(prometheus),
            SourceConfig::Scrape(_) => None,
        }
    }

    /// A job by name.
    pub(crate) fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// A `[[webhooks]]` entry by name.
    pub(crate) fn webhook(&self, name: &str) -> Option<&escalate::Webhook> {
        self.webhooks.iter().find(|w| w.name == name)
    }

    /// A socket by name.
    pub(crate) fn socket(&self, name: &str) -> Option<&Socket> {
        self.sockets.iter().find(|s| s.name == name)
    }

    /// The socket that powers a device.
    pub fn socket_for(&self, device: &DeviceKey) -> Option<&Socket> {
        self.socket_by_device.get(device).map(|&i| &self.sockets[i])
    }

    /// Every distinct query of the enabled jobs, in first-use order: what one
    /// cycle sends to Prometheus.
    pub fn queries(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for job in self.jobs.iter().filter(|j| j.enabled) {
            for query in job.queries() {
                if seen.insert(query.clone()) {
                    out.push(query);
                }
            }
        }
        out
    }

    /// The message a job's action sends for a device. `labels` are the
    /// device's labels from the evaluation ([`DeviceVerdict::labels`]), used
    /// by SMS templates; control characters in them are replaced by spaces,
    /// and a label the device lacks renders as `?`.
    pub fn outgoing(
        &self,
        job: &Job,
        device: &DeviceKey,
        labels: &BTreeMap<String, String>,
    ) -> Result<Outgoing, ActionError> {
        let socket = || {
            self.socket_for(device).ok_or_else(|| ActionError::NoSocket { device: device.clone() })
        };
        match &job.action {
            Action::Command { command, args } => {
                let socket = socket()?;
                let text = socket.render(command, args).map_err(|errors| ActionError::Command {
                    socket: socket.name.clone(),
                    errors,
                })?;
                Ok(Outgoing::to_socket(socket, text))
            }
            Action::Sms { text, to } => {
                let text = text.render(|label| {
                    labels
                        .get(label)
                        .map(|v| v.chars().map(|c| if c.is_control() { ' ' } else { c }).collect())
                });
                Ok(Outgoing { to: Recipient::Sms { socket: None, phone: to.clone() }, text })
            }
        }
    }
}

/// The directory of split rule files for a main file: `rules.d` next to it.
pub(crate) fn fragment_dir(main: &Path) -> PathBuf {
    base_dir(main).join("rules.d")
}

/// The directory relative paths are taken from.
fn base_dir(main: &Path) -> PathBuf {
    match main.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reads and validates the main file and `rules.d/*.toml` next to it.
pub fn load(path: &Path) -> Result<RuleSet, ConfigErrors> {
    let main = SourceFile::read(path)?;
    let dir = fragment_dir(path);
    let mut errors = Vec::new();
    let mut fragments = Vec::new();
    match std::fs::read_dir(&dir) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => errors.push(ConfigError::unreadable(&dir, &err)),
        Ok(entries) => {
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|ext| ext == "toml") && !p.is_dir())
                .collect();
            paths.sort();
            for path in paths {
                match SourceFile::read(&path) {
                    Ok(file) => fragments.push(file),
                    Err(err) => errors.push(err),
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    parse_files(main, fragments)
}

/// Validates rules given as text (no `rules.d`); `path` is used in messages
/// and as the base for relative paths.
pub fn parse(text: &str, path: impl Into<PathBuf>) -> Result<RuleSet, ConfigErrors> {
    parse_files(SourceFile::from_text(path, text), Vec::new())
}

/// Validates a main file and split files already read. When a file does not
/// parse as TOML, only those syntax errors are reported (the rest could not
/// be checked without guessing).
pub fn parse_files(main: SourceFile, fragments: Vec<SourceFile>) -> Result<RuleSet, ConfigErrors> {
    let mut errors = Vec::new();
    let raw_main = main.parse::<config::RawRulesFile>().map_err(|e| errors.push(e)).ok();
    let mut parsed = Vec::new();
    for file in fragments {
        match file.parse::<config::RawFragment>() {
            Ok(raw) => parsed.push((file, raw)),
            Err(err) => errors.push(err),
        }
    }
    let Some(mut raw_main) = raw_main.filter(|_| errors.is_empty()) else {
        return Err(ConfigErrors(errors));
    };

    // The settings first, then the sockets of every file, then the jobs,
    // which are checked against both.
    let base_dir = base_dir(&main.path);
    let settings = validate::settings(&main, &mut raw_main, &base_dir, &mut errors);
    let files: Vec<RawEntries<'_>> = std::iter::once(raw_main.entries(&main))
        .chain(parsed.iter().map(|(file, raw)| raw.entries(file)))
        .collect();
    let sockets = socket::check::sockets(&files, &settings.device_key, &mut errors);
    let jobs = validate::jobs(&files, &settings, &sockets, &mut errors);
    let Some(source) = settings.source.filter(|_| errors.is_empty()) else {
        // Each file's errors together, in the order the files were read.
        errors.sort_by_key(|e| {
            (files.iter().position(|f| f.file.path == e.path).unwrap_or(usize::MAX), e.location)
        });
        return Err(ConfigErrors(errors));
    };
    let files = std::iter::once(main.path.clone())
        .chain(parsed.into_iter().map(|(file, _)| file.path))
        .collect();
    Ok(RuleSet {
        files,
        base_dir,
        main_file: main,
        device_key: settings.device_key,
        source,
        journal: settings.journal,
        sms: settings.sms,
        budgets: settings.budgets,
        sockets: sockets.sockets,
        jobs,
        webhooks: settings.webhooks,
        socket_by_device: sockets.by_device,
    })
}

#[cfg(test)]
mod proptests;
