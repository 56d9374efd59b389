//! GSM sockets: the models jobctl knows, their SMS commands, and a socket as
//! configured.
//!
//! A socket obeys short SMS codes (`#02#0#` = power off). Writing them by
//! hand in every rule invites a typo that the socket silently ignores, so a
//! model carries *named* commands with *typed* parameters
//! (`power_cycle` with `minutes` from 1 to 999). Everything that can go wrong
//! with a command (unknown name, missing, extra or out-of-range parameter,
//! text longer than one SMS) is found by [`CommandSet::render`], which
//! `jobctl check` runs for every rule and `jobctl send` for every manual
//! command, so a mistake is reported before anything is sent.
//!
//! # The SimPal command set
//!
//! From the public SimPal manuals (T4, T40, S460 share the `#code#0#…#`
//! family): `#01#0#` on, `#02#0#` off, `#12#0#M#1#` "delay switching on"
//! (if on, off now and on again after M minutes: a hard reboot),
//! `#12#0#M#0#` "delay switching off" (on now if off, off after M minutes).
//! `#00#` (register the sender as master) and `#06#{phone}#` (add a user)
//! come from the design notes of the system this replaces. The manuals give
//! no upper bound for M; 999 is our bound (three digits, as in every example).
//! No manual for a D410 could be found, so it has the D210 set. No status
//! query could be confirmed for these models, so none is built in: add one
//! with `[sockets.commands]` (which adds to or overrides a model's set).

pub(crate) mod check;

use std::collections::BTreeMap;
use std::fmt;

use super::device::DeviceKey;
use super::template::{Template, TemplateError};
use crate::sms::phone::{PhoneError, PhoneNumber};

/// The socket models jobctl knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketModel {
    /// SimPal D210: one outlet, the SimPal command set.
    SimpalD210,
    /// SimPal D410: the D210 command set (see the module notes).
    SimpalD410,
    /// Anything else: every command comes from `[sockets.commands]`.
    Custom,
}

impl SocketModel {
    /// Every model, in the order messages list them.
    pub(crate) const ALL: [SocketModel; 3] =
        [SocketModel::SimpalD210, SocketModel::SimpalD410, SocketModel::Custom];

    /// Reads the name used in the rules file.
    pub(crate) fn parse(name: &str) -> Option<SocketModel> {
        SocketModel::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The name used in the rules file.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SocketModel::SimpalD210 => "simpal-d210",
            SocketModel::SimpalD410 => "simpal-d410",
            SocketModel::Custom => "custom",
        }
    }

    /// The built-in commands of the model (none for `custom`).
    pub(crate) fn builtin_commands(self) -> CommandSet {
        match self {
            SocketModel::SimpalD210 | SocketModel::SimpalD410 => CommandSet::simpal(),
            SocketModel::Custom => CommandSet::default(),
        }
    }
}

impl fmt::Display for SocketModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a command parameter accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A whole number within bounds (inclusive).
    Count {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// A phone number, rendered in E.164 form.
    Phone,
    /// A number or text without control characters (custom commands, whose
    /// parameters jobctl cannot know more about).
    Text,
}

impl fmt::Display for ParamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamKind::Count { min, max } => write!(f, "a whole number from {min} to {max}"),
            ParamKind::Phone => f.write_str("a phone number like \"+79991234567\""),
            ParamKind::Text => f.write_str("a number or text"),
        }
    }
}

/// A value given for a command parameter: from TOML (`minutes = 1`) or from
/// the command line (`minutes=1`, always text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgValue {
    /// A TOML integer.
    Integer(i64),
    /// A TOML string or a command-line word.
    Text(String),
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgValue::Integer(n) => write!(f, "{n}"),
            ArgValue::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// One named command of a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandSpec {
    /// The name rules use (`power_cycle`).
    pub(crate) name: String,
    /// The SMS text with a placeholder per parameter.
    pub(crate) template: Template,
    /// The parameters, in order of appearance in the template.
    pub(crate) params: Vec<(String, ParamKind)>,
}

impl CommandSpec {
    /// A user-defined command: every placeholder is a [`ParamKind::Text`]
    /// parameter.
    pub(crate) fn custom(name: &str, template: &str) -> Result<CommandSpec, TemplateError> {
        let template = Template::parse(template)?;
        let params =
            template.fields().into_iter().map(|f| (f.to_string(), ParamKind::Text)).collect();
        Ok(CommandSpec { name: name.to_string(), template, params })
    }

    fn builtin(name: &str, template: &str, params: &[(&str, ParamKind)]) -> CommandSpec {
        CommandSpec {
            name: name.to_string(),
            template: Template::parse(template).expect("built-in templates are valid"),
            params: params.iter().map(|(n, k)| (n.to_string(), *k)).collect(),
        }
    }

    /// Checks the arguments and renders the exact SMS text. All problems are
    /// returned, not only the first.
    pub(crate) fn render(
        &self,
        args: &BTreeMap<String, ArgValue>,
    ) -> Result<String, Vec<CommandError>> {
        let mut errors = Vec::new();
        let mut values: BTreeMap<&str, String> = BTreeMap::new();
        for (param, kind) in &self.params {
            match args.get(param) {
                None => errors.push(CommandError::MissingArgument {
                    command: self.name.clone(),
                    param: param.clone(),
                    kind: *kind,
                }),
                Some(value) => match check_arg(&self.name, param, *kind, value) {
                    Ok(text) => {
                        values.insert(param, text);
                    }
                    Err(err) => errors.push(err),
                },
            }
        }
        for name in args.keys() {
            if !self.params.iter().any(|(p, _)| p == name) {
                errors.push(CommandError::UnexpectedArgument {
                    command: self.name.clone(),
                    param: name.clone(),
                    params: self.params.iter().map(|(p, _)| p.clone()).collect(),
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let text = self.template.render(|field| values.get(field).cloned());
        if let Some(length) = single_sms_overflow(&text) {
            return Err(vec![CommandError::TooLong { command: self.name.clone(), text, length }]);
        }
        Ok(text)
    }

    /// `power_cycle minutes=<1..999>`, for lists of commands.
    #[cfg(test)]
    pub(crate) fn usage(&self) -> String {
        let mut out = self.name.clone();
        for (param, kind) in &self.params {
            match kind {
                ParamKind::Count { min, max } => out.push_str(&format!(" {param}=<{min}..{max}>")),
                ParamKind::Phone => out.push_str(&format!(" {param}=<+phone>")),
                ParamKind::Text => out.push_str(&format!(" {param}=<text>")),
            }
        }
        out
    }
}

fn check_arg(
    command: &str,
    param: &str,
    kind: ParamKind,
    value: &ArgValue,
) -> Result<String, CommandError> {
    let bad = |reason: String| CommandError::BadArgument {
        command: command.to_string(),
        param: param.to_string(),
        value: value.clone(),
        reason,
    };
    match (kind, value) {
        (ParamKind::Count { min, max }, _) => {
            let n = match value {
                ArgValue::Integer(n) => *n,
                ArgValue::Text(t) => {
                    t.trim().parse().map_err(|_| bad(format!("it must be {kind}")))?
                }
            };
            if (min..=max).contains(&n) {
                Ok(n.to_string())
            } else {
                Err(bad(format!("it is out of range; use {kind}")))
            }
        }
        (ParamKind::Phone, ArgValue::Text(t)) => {
            PhoneNumber::parse(t).map(|p| p.to_string()).map_err(|err| CommandError::BadPhone {
                command: command.to_string(),
                param: param.to_string(),
                error: err,
            })
        }
        (ParamKind::Phone, ArgValue::Integer(_)) => Err(bad(format!("it must be {kind}"))),
        (ParamKind::Text, ArgValue::Integer(n)) => Ok(n.to_string()),
        (ParamKind::Text, ArgValue::Text(t)) => {
            if t.chars().any(char::is_control) {
                Err(bad("it contains a control character".into()))
            } else {
                Ok(t.clone())
            }
        }
    }
}

/// The named commands of one socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CommandSet(Vec<CommandSpec>);

impl CommandSet {
    /// The SimPal set (see the module notes for sources).
    pub(crate) fn simpal() -> CommandSet {
        let minutes = ParamKind::Count { min: 1, max: 999 };
        CommandSet(vec![
            CommandSpec::builtin("power_on", "#01#0#", &[]),
            CommandSpec::builtin("power_off", "#02#0#", &[]),
            CommandSpec::builtin("power_cycle", "#12#0#{minutes}#1#", &[("minutes", minutes)]),
            CommandSpec::builtin("power_off_after", "#12#0#{minutes}#0#", &[("minutes", minutes)]),
            CommandSpec::builtin("register_master", "#00#", &[]),
            CommandSpec::builtin("add_user", "#06#{phone}#", &[("phone", ParamKind::Phone)]),
        ])
    }

    /// Adds a command, replacing one of the same name.
    pub(crate) fn insert(&mut self, spec: CommandSpec) {
        match self.0.iter_mut().find(|c| c.name == spec.name) {
            Some(existing) => *existing = spec,
            None => self.0.push(spec),
        }
    }

    /// A command by name.
    pub(crate) fn get(&self, name: &str) -> Option<&CommandSpec> {
        self.0.iter().find(|c| c.name == name)
    }

    /// Whether there are no commands.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Renders a command by name; an unknown name lists the known ones.
    pub(crate) fn render(
        &self,
        command: &str,
        args: &BTreeMap<String, ArgValue>,
    ) -> Result<String, Vec<CommandError>> {
        match self.get(command) {
            Some(spec) => spec.render(args),
            None => Err(vec![CommandError::UnknownCommand {
                command: command.to_string(),
                known: self.0.iter().map(|c| c.name.clone()).collect(),
            }]),
        }
    }
}

/// A socket as configured: the device that cuts a player's power.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    /// Unique name, used in messages, the journal and `jobctl send`.
    pub name: String,
    /// The socket's SIM number.
    pub phone: PhoneNumber,
    /// The model, for messages and `jobctl check`.
    pub(crate) model: SocketModel,
    /// The model's commands plus those from `[sockets.commands]`.
    pub(crate) commands: CommandSet,
    /// The devices whose power it controls, each named by its device key.
    pub(crate) powers: Vec<DeviceKey>,
}

impl Socket {
    /// The exact text of a command for this socket.
    pub(crate) fn render(
        &self,
        command: &str,
        args: &BTreeMap<String, ArgValue>,
    ) -> Result<String, Vec<CommandError>> {
        self.commands.render(command, args)
    }
}

/// Why a command cannot be sent. Messages name the command and say what to
/// write instead; the caller adds which job and socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No command of that name.
    #[error("there is no command {command:?}; known commands: {}", known.join(", "))]
    UnknownCommand {
        /// The name asked for.
        command: String,
        /// The socket's commands.
        known: Vec<String>,
    },
    /// A parameter was not given.
    #[error("command {command} needs {param} ({kind}), like {param} = {}", example(kind))]
    MissingArgument {
        /// The command.
        command: String,
        /// The missing parameter.
        param: String,
        /// What it accepts.
        kind: ParamKind,
    },
    /// A parameter the command does not have.
    #[error("command {command} has no parameter {param:?}; {}", if params.is_empty() { "it takes none".to_string() } else { format!("it takes {}", params.join(", ")) })]
    UnexpectedArgument {
        /// The command.
        command: String,
        /// The unknown parameter.
        param: String,
        /// The parameters it has.
        params: Vec<String>,
    },
    /// A value of the wrong type or out of range.
    #[error("{param} = {value} for command {command}: {reason}")]
    BadArgument {
        /// The command.
        command: String,
        /// The parameter.
        param: String,
        /// The value given.
        value: ArgValue,
        /// What is wrong and what to use.
        reason: String,
    },
    /// A phone parameter that is not a phone number.
    #[error("{param} for command {command}: {error}")]
    BadPhone {
        /// The command.
        command: String,
        /// The parameter.
        param: String,
        /// Why.
        error: PhoneError,
    },
    /// The rendered text needs more than one SMS; a socket would see two
    /// unrelated fragments.
    #[error("command {command} renders to {text:?}, which does not fit in one SMS ({length}); a socket command must be a single message")]
    TooLong {
        /// The command.
        command: String,
        /// The rendered text.
        text: String,
        /// The length and its limit, e.g. `161 GSM-7 characters, at most 160`.
        length: String,
    },
}

fn example(kind: &ParamKind) -> String {
    match kind {
        ParamKind::Count { min, .. } => min.to_string(),
        ParamKind::Phone => "\"+79991234567\"".to_string(),
        ParamKind::Text => "\"…\"".to_string(),
    }
}

/// `None` when `text` fits in one SMS; otherwise its length and the limit.
/// A GSM socket does not reassemble concatenated messages, so a command
/// must be one segment.
pub(crate) fn single_sms_overflow(text: &str) -> Option<String> {
    let count = crate::sms::text::segments(text);
    (!count.is_single()).then(|| match count.encoding {
        crate::sms::text::Encoding::Gsm7 => {
            format!("{} GSM-7 characters, at most 160", count.units)
        }
        crate::sms::text::Encoding::Ucs2 => format!("{} UCS-2 characters, at most 70", count.units),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, ArgValue)]) -> BTreeMap<String, ArgValue> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn simpal_commands_render_exactly() {
        let set = CommandSet::simpal();
        assert_eq!(set.render("power_on", &args(&[])).unwrap(), "#01#0#");
        assert_eq!(set.render("power_off", &args(&[])).unwrap(), "#02#0#");
        assert_eq!(
            set.render("power_cycle", &args(&[("minutes", ArgValue::Integer(1))])).unwrap(),
            "#12#0#1#1#"
        );
        assert_eq!(
            set.render("power_off_after", &args(&[("minutes", ArgValue::Text("30".into()))]))
                .unwrap(),
            "#12#0#30#0#"
        );
        assert_eq!(
            set.render("add_user", &args(&[("phone", ArgValue::Text("+7 999 123-45-67".into()))]))
                .unwrap(),
            "#06#+79991234567#"
        );
    }

    #[test]
    fn bad_arguments_are_all_reported() {
        let set = CommandSet::simpal();
        let errors =
            set.render("power_cycle", &args(&[("minute", ArgValue::Integer(1))])).unwrap_err();
        let messages: Vec<String> = errors.iter().map(std::string::ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "command power_cycle needs minutes (a whole number from 1 to 999), like minutes = 1",
                "command power_cycle has no parameter \"minute\"; it takes minutes",
            ]
        );
        let err =
            set.render("power_cycle", &args(&[("minutes", ArgValue::Integer(1000))])).unwrap_err();
        assert_eq!(
            err[0].to_string(),
            "minutes = 1000 for command power_cycle: it is out of range; use a whole number from 1 to 999"
        );
        let err = set.render("power_on", &args(&[("minutes", ArgValue::Integer(1))])).unwrap_err();
        assert_eq!(
            err[0].to_string(),
            "command power_on has no parameter \"minutes\"; it takes none"
        );
        let err = set.render("reboot", &args(&[])).unwrap_err();
        assert_eq!(
            err[0].to_string(),
            "there is no command \"reboot\"; known commands: power_on, power_off, power_cycle, power_off_after, register_master, add_user"
        );
    }

    #[test]
    fn custom_commands_take_text_and_refuse_control_characters() {
        let spec = CommandSpec::custom("reboot", "RESET {outlet} {delay}").unwrap();
        assert_eq!(spec.usage(), "reboot outlet=<text> delay=<text>");
        let text = spec
            .render(&args(&[
                ("outlet", ArgValue::Integer(2)),
                ("delay", ArgValue::Text("5s".into())),
            ]))
            .unwrap();
        assert_eq!(text, "RESET 2 5s");
        let err = spec
            .render(&args(&[
                ("outlet", ArgValue::Text("1\u{1a}".into())),
                ("delay", ArgValue::Integer(1)),
            ]))
            .unwrap_err();
        assert!(err[0].to_string().ends_with("it contains a control character"), "{}", err[0]);
    }

    #[test]
    fn one_segment_limits() {
        assert_eq!(single_sms_overflow(&"a".repeat(160)), None);
        assert_eq!(
            single_sms_overflow(&"a".repeat(161)).unwrap(),
            "161 GSM-7 characters, at most 160"
        );
        assert_eq!(
            single_sms_overflow(&"{".repeat(81)).unwrap(),
            "162 GSM-7 characters, at most 160"
        );
        assert_eq!(single_sms_overflow(&"я".repeat(70)), None);
        assert_eq!(
            single_sms_overflow(&"я".repeat(71)).unwrap(),
            "71 UCS-2 characters, at most 70"
        );
        let spec = CommandSpec::custom("long", &format!("{}{{x}}", "a".repeat(160))).unwrap();
        let err = spec.render(&args(&[("x", ArgValue::Integer(1))])).unwrap_err();
        assert!(matches!(err[0], CommandError::TooLong { .. }));
    }
}
