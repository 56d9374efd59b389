//! A validated job: what it watches, when it acts, and what it sends.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::condition::{self, Condition, Evaluation, Guard, Sample};
use super::device::{DeviceKeyLabels, LabelMatchers};
use super::escalate::Escalate;
use super::schedule::Schedule;
use super::socket::ArgValue;
use super::template::Template;
use crate::sms::phone::PhoneNumber;

/// Default cooldown: a player that comes back and freezes again within the
/// hour is not power-cycled again in a loop; an hour later it is.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(3600);

/// Where a job is written in the rules: its file, line and column, for
/// messages at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    /// The file.
    pub(crate) path: PathBuf,
    /// One-based line.
    pub(crate) line: usize,
    /// One-based column.
    pub(crate) column: usize,
}

impl fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

/// What a job does when it fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A named command of the socket that powers the device.
    Command {
        /// The command name (`power_cycle`).
        command: String,
        /// Its arguments (`minutes = 1`).
        args: BTreeMap<String, ArgValue>,
    },
    /// A notification to a person: literal SMS text whose `{label}`
    /// placeholders take the device's label values. Never to a socket: a
    /// socket obeys what it receives, so only [`Action::Command`] (typed
    /// parameters, no label values) reaches one.
    Sms {
        /// The text.
        text: Template,
        /// The person's phone number.
        to: PhoneNumber,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Command { command, args } => {
                f.write_str(command)?;
                for (name, value) in args {
                    write!(f, " {name}={value}")?;
                }
                f.write_str(" to the socket powering the device")
            }
            Action::Sms { text, to } => write!(f, "SMS {:?} to {to}", text.as_str()),
        }
    }
}

pub use super::state::Repeat;

/// The longest `verify.within`: an action whose effect shows a day later is
/// not what made the device recover.
pub(crate) const MAX_VERIFY_WITHIN: Duration = Duration::from_secs(24 * 3600);

/// The longest `limit.per`: the journal is read back that far each time an
/// action falls due.
pub(crate) const MAX_LIMIT_PER: Duration = Duration::from_secs(30 * 24 * 3600);

/// The most actions a `limit` may allow (beyond it, it limits nothing).
pub(crate) const MAX_LIMIT_ACTIONS: u32 = 1000;

/// At most `actions` actions of a job on one device, and on one socket, in
/// any rolling `per` (`limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    /// How many actions.
    pub(crate) actions: u32,
    /// In how long.
    pub(crate) per: Duration,
}

/// The default mass-outage hold: half of a job's known devices, and at
/// least five of them, bad at once. Five, because two or three players of
/// one site freezing together happens; half, because a site's uplink or the
/// AddReality platform takes every player it serves down together.
pub(crate) const DEFAULT_MASS_OUTAGE: MassOutage = MassOutage { share: 0.5, min_devices: 5 };

/// When many of a job's devices go bad together, the cause is upstream of
/// them (the site's uplink, the AddReality platform), and power-cycling
/// each is wrong: the job holds its socket commands back and escalates
/// once (`mass_outage`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MassOutage {
    /// The share of the job's known devices that must be bad at once, in
    /// (0, 1].
    pub(crate) share: f64,
    /// The fewest bad devices that make an outage, at least 1.
    pub(crate) min_devices: u32,
}

impl MassOutage {
    /// Whether `bad` of `known` devices make an outage: at least
    /// `min_devices` of them, and at least `share` of the known ones (so
    /// `share = 1` means every one). Known devices are those whose verdict
    /// is true or false this cycle; an unknown one is neither bad nor good.
    pub(crate) fn holds(&self, bad: usize, known: usize) -> bool {
        // `bad / known >= share` without dividing by zero; exact for any
        // fleet size an f64 counts exactly.
        known > 0 && bad >= self.min_devices as usize && bad as f64 >= self.share * known as f64
    }
}

impl fmt::Display for MassOutage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One decimal at most: 0.3 reads 30%, not 30.000000000000004%.
        let percent = (self.share * 1000.0).round() / 10.0;
        write!(
            f,
            "hold socket commands while at least {percent}% of the known devices (and at least {}) are bad at once",
            self.min_devices
        )
    }
}

/// A validated job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Unique name, given or generated (see [`super::naming`]).
    pub name: String,
    /// Whether the name was generated.
    pub auto_named: bool,
    /// Where the job is defined.
    pub(crate) origin: SourcePosition,
    /// Which devices it watches; empty = every device the condition returns.
    pub(crate) devices: LabelMatchers,
    /// The condition.
    pub(crate) condition: Condition,
    /// How long the condition must hold before the job fires (`for`).
    pub(crate) hold_for: Duration,
    /// What to do when it fires.
    pub(crate) action: Action,
    /// After an action, how long before the job may act on the same device
    /// in a new episode. Default [`DEFAULT_COOLDOWN`].
    pub(crate) cooldown: Duration,
    /// Repeats within one episode; `None` = act once per episode.
    pub(crate) repeat: Option<Repeat>,
    /// How long after an action the condition must be found false for it to
    /// count as `recovered` (`verify.within`); `None` = not verified.
    pub(crate) verify: Option<Duration>,
    /// At most this many actions per device and per socket; `None` = no
    /// limit but cooldown, repeat and budgets.
    pub(crate) limit: Option<Limit>,
    /// When the job may act; `None` = any time.
    pub(crate) schedule: Option<Schedule>,
    /// When many of its devices going bad together holds its socket
    /// commands back; `None` = never (`mass_outage = false`, or an action
    /// that goes to a person, which is never held).
    pub(crate) mass_outage: Option<MassOutage>,
    /// Expressions that must hold for a device before its data is believed.
    pub guards: Vec<Guard>,
    /// Who hears when an action did not help or the job gave up
    /// (`escalate`, or the file's top-level one).
    pub escalate: Escalate,
    /// Webhooks told of every action the job takes (`webhooks_on_action`).
    pub webhooks_on_action: Vec<String>,
    /// Disabled jobs are checked but not run.
    pub enabled: bool,
    /// Watch only the devices a socket powers (`only_powered`): a job over
    /// a whole platform where only some players are on GSM sockets leaves
    /// the others alone instead of finding, each episode, that it cannot
    /// act on them.
    pub only_powered: bool,
}

impl Job {
    /// The distinct queries the job needs each cycle: its condition's, then
    /// its guards'. The engine merges these across jobs so that one cycle
    /// sends each distinct query once.
    pub fn queries(&self) -> Vec<String> {
        let mut queries: Vec<String> = Vec::new();
        let terms = self.condition.terms().iter().map(|t| t.query(&self.devices));
        let guards = self.guards.iter().map(|g| g.expr.trim().to_string());
        for query in terms.chain(guards) {
            if !queries.contains(&query) {
                queries.push(query);
            }
        }
        queries
    }

    /// The verdict per device from one cycle's answers (`results` maps a
    /// query to its series; a query missing from it failed). See
    /// [`super::condition`] for the semantics.
    pub fn evaluate(
        &self,
        results: &HashMap<String, Vec<Sample>>,
        device_key: &DeviceKeyLabels,
    ) -> Evaluation {
        condition::evaluate(&self.condition, &self.devices, &self.guards, results, device_key)
    }
}

impl fmt::Display for Job {
    /// The summary `jobctl check` prints: name, then one line per aspect.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if self.auto_named {
            f.write_str(" (generated name)")?;
        }
        if !self.enabled {
            f.write_str(" [disabled]")?;
        }
        writeln!(f)?;
        writeln!(f, "  defined:  {}", self.origin)?;
        write!(f, "  devices:  {}", self.devices)?;
        if self.only_powered {
            f.write_str(", only those a socket powers (only_powered)")?;
        }
        writeln!(f)?;
        write!(f, "  when:     {}", self.condition)?;
        if !self.hold_for.is_zero() {
            write!(f, " for {}", humantime::format_duration(self.hold_for))?;
        }
        writeln!(f)?;
        writeln!(f, "  queries:  {}", self.queries().join("  |  "))?;
        if !self.guards.is_empty() {
            let guards: Vec<String> = self.guards.iter().map(Guard::to_string).collect();
            writeln!(f, "  guards:   {}", guards.join(", "))?;
        }
        writeln!(f, "  action:   {}", self.action)?;
        write!(f, "  limits:   cooldown {}", humantime::format_duration(self.cooldown))?;
        match self.repeat {
            Some(r) => write!(
                f,
                ", repeat every {} up to {} {}",
                humantime::format_duration(r.every),
                r.max,
                if r.max == 1 { "time" } else { "times" }
            )?,
            None => f.write_str(", once per episode")?,
        }
        if let Some(schedule) = &self.schedule {
            write!(f, ", only {schedule}")?;
        }
        if let Some(within) = self.verify {
            write!(
                f,
                "\n  verify:   recovered if the condition is false within {}",
                humantime::format_duration(within)
            )?;
        }
        if let Some(limit) = self.limit {
            write!(
                f,
                "\n  limit:    at most {} action{} per device and per socket in {}, then give up until the episode ends",
                limit.actions,
                if limit.actions == 1 { "" } else { "s" },
                humantime::format_duration(limit.per)
            )?;
        }
        match (&self.mass_outage, &self.action) {
            (Some(outage), _) => write!(f, "\n  outage:   {outage}")?,
            (None, Action::Command { .. }) => f.write_str("\n  outage:   no mass-outage hold")?,
            (None, Action::Sms { .. }) => {}
        }
        if self.verify.is_some() || self.limit.is_some() || !self.escalate.targets.is_empty() {
            write!(f, "\n  escalate: {}", self.escalate)?;
        }
        if !self.webhooks_on_action.is_empty() {
            let names: Vec<String> =
                self.webhooks_on_action.iter().map(|n| format!("{n:?}")).collect();
            write!(f, "\n  on each action: webhook {}", names.join(", "))?;
        }
        Ok(())
    }
}
