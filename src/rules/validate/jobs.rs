//! The checks of `[[jobs]]`: every entry of every file becomes a [`Job`]
//! or errors at `file:line:column`, and job names are unique across files.
//!
//! What can only be known at run time stays there: a job's `devices`
//! matchers select devices from Prometheus answers, so which socket powers
//! each of them is decided per device when an action runs (a device with no
//! socket is then logged and counted, and nothing is sent). What *can* be
//! checked here is that some socket could power a device the job selects,
//! and that every such socket has the job's command with valid arguments.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::conditions::{guards_of, job_condition, scrapable};
use super::settings::{mass_outage, Settings};
use crate::config_file::ConfigError;
use crate::rules::checker::{labels, Checker};
use crate::rules::condition::Guard;
use crate::rules::config::{
    RawEntries, RawJob, RawLabels, RawLimit, RawRepeat, RawSchedule, RawVerify,
};
use crate::rules::device::{DeviceKeyLabels, LabelMatchers};
use crate::rules::escalate::{Escalate, EscalationTarget, Webhook};
use crate::rules::job::{
    Action, Job, Limit, MassOutage, Repeat, SourcePosition, DEFAULT_COOLDOWN, MAX_LIMIT_ACTIONS,
    MAX_LIMIT_PER, MAX_VERIFY_WITHIN,
};
use crate::rules::naming;
use crate::rules::schedule::{self, HourWindow, Schedule};
use crate::rules::settings::SourceConfig;
use crate::rules::socket::check::Sockets;
use crate::rules::socket::{ArgValue, CommandError, Socket};
use crate::rules::template::Template;
use crate::sms::phone::PhoneNumber;

/// Checks the `[[jobs]]` of every file against the settings and the valid
/// sockets, recording each problem in `errors`.
pub(crate) fn jobs(
    files: &[RawEntries<'_>],
    settings: &Settings,
    sockets: &Sockets,
    errors: &mut Vec<ConfigError>,
) -> Vec<Job> {
    let env = JobEnv {
        device_key: &settings.device_key,
        sockets: &sockets.sockets,
        default_guards: &settings.default_guards,
        mass_outage: settings.mass_outage,
        sockets_rejected: sockets.rejected,
        webhooks: &settings.webhooks,
        default_escalate: &settings.default_escalate,
        scraping: matches!(settings.source, Some(SourceConfig::Scrape(_))),
    };
    let mut jobs: Vec<Job> = Vec::new();
    let mut job_names: HashMap<String, String> = HashMap::new();
    let file_names = describe_files(files);
    for entries in files {
        let mut ck = Checker { file: entries.file, errors: &mut *errors };
        for (index, raw_job) in entries.jobs.iter().enumerate() {
            let Some(job) = job(&mut ck, raw_job, index + 1, &env) else { continue };
            let name_span =
                raw_job.get_ref().name.as_ref().map_or(raw_job.span(), toml::Spanned::span);
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
    jobs
}

/// The files whose job names must be unique, for messages: the main file's
/// name, and `rules.d` when there are split files.
fn describe_files(files: &[RawEntries<'_>]) -> String {
    let main = files[0].file;
    let name = main
        .path
        .file_name()
        .map_or_else(|| main.path.display().to_string(), |n| n.to_string_lossy().into_owned());
    if files.len() == 1 {
        name
    } else {
        format!("{name} and rules.d")
    }
}

struct JobEnv<'a> {
    device_key: &'a DeviceKeyLabels,
    sockets: &'a [Socket],
    default_guards: &'a [Guard],
    /// The top-level `mass_outage`, for jobs without their own.
    mass_outage: Option<MassOutage>,
    /// Some `[[sockets]]` entry had errors of its own: a job that finds no
    /// socket may be missing that one, so it does not add a second,
    /// misleading error.
    sockets_rejected: bool,
    /// `[[webhooks]]`, which `escalate` and `webhooks_on_action` name.
    webhooks: &'a [Webhook],
    /// The top-level `escalate`.
    default_escalate: &'a [EscalationTarget],
    /// The rules scrape the exporters (`[source]`): no PromQL.
    scraping: bool,
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
    if env.scraping {
        ok &= scrapable(ck, &label, r);
    }
    let hold_for = r.hold_for.as_ref().map_or(Duration::ZERO, |d| d.get_ref().0);
    let cooldown = r.cooldown.as_ref().map_or(DEFAULT_COOLDOWN, |d| d.get_ref().0);
    let repeat = match &r.repeat {
        None => Some(None),
        Some(repeat) => job_repeat(ck, &label, repeat).map(Some),
    };
    let verify = match &r.verify {
        None => Some(None),
        Some(verify) => job_verify(ck, &label, verify).map(Some),
    };
    let limit = match &r.limit {
        None => Some(None),
        Some(limit) => job_limit(ck, &label, limit).map(Some),
    };
    let schedule = match &r.schedule {
        None => Some(None),
        Some(s) => job_schedule(ck, &label, s).map(Some),
    };
    let guards = match &r.guards {
        None => env.default_guards.to_vec(),
        Some(guards) => {
            let before = ck.errors.len();
            let guards = guards_of(ck, guards, env.device_key, &format!("{label}: "), env.scraping);
            ok &= ck.errors.len() == before;
            guards
        }
    };
    let outage = mass_outage(ck, r.mass_outage.as_ref(), env.mass_outage, &format!("{label}: "));
    let escalate = match &r.escalate {
        None => Some(Escalate { targets: env.default_escalate.to_vec(), inherited: true }),
        Some(list) => {
            super::escalate::escalate_list(ck, &format!("{label}: escalate"), list, env.webhooks)
                .map(|targets| Escalate { targets, inherited: false })
        }
    };
    let webhooks_on_action = match &r.webhooks_on_action {
        None => Some(Vec::new()),
        Some(names) => super::escalate::webhooks_on_action(
            ck,
            &format!("{label}: webhooks_on_action"),
            names,
            env.webhooks,
        ),
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
    let only_powered = r.only_powered.as_ref().is_some_and(|o| *o.get_ref());
    if let (Some(o), Some(devices), Some(Action::Sms { .. })) = (&r.only_powered, &devices, &action)
    {
        let powered = env.sockets.iter().any(|s| s.powers.iter().any(|k| devices.may_select(k)));
        if *o.get_ref() && !powered && !env.sockets_rejected {
            ck.at(
                o.span(),
                format!(
                    "{label}: only_powered = true watches only devices a socket powers, but no socket powers a device matching {devices}; add a [[sockets]] entry whose powers names such a device, or remove only_powered"
                ),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    let (devices, condition, action) = (devices?, condition?, action?);
    let outage = match (&action, &r.mass_outage) {
        (Action::Command { .. }, _) => outage,
        // A message to a person is never held: nothing to hold.
        (Action::Sms { .. }, None) => None,
        (Action::Sms { .. }, Some(raw)) => {
            if outage.is_some() {
                ck.at(
                    raw.span(),
                    format!("{label}: mass_outage holds socket commands only, and this job's action is an SMS to a person, which is never held; remove mass_outage"),
                );
                return None;
            }
            None
        }
    };
    let (name, auto_named) = match name {
        Some(name) => (name, false),
        None => (naming::job_name(&devices, &condition), true),
    };
    Some(Job {
        name,
        auto_named,
        origin: source_position(ck, job_span),
        devices,
        condition,
        hold_for,
        action,
        cooldown,
        repeat: repeat?,
        verify: verify?,
        limit: limit?,
        schedule: schedule?,
        mass_outage: outage,
        guards,
        escalate: escalate?,
        webhooks_on_action: webhooks_on_action?,
        enabled: r.enabled.unwrap_or(true),
        only_powered,
    })
}

/// Where a job is defined, for messages at run time.
fn source_position(ck: &Checker<'_>, span: Range<usize>) -> SourcePosition {
    let (line, column) = ck.file.position(span.start);
    SourcePosition { path: ck.file.path.clone(), line, column }
}

fn job_repeat(ck: &mut Checker<'_>, label: &str, raw: &Spanned<RawRepeat>) -> Option<Repeat> {
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

fn job_verify(ck: &mut Checker<'_>, label: &str, raw: &Spanned<RawVerify>) -> Option<Duration> {
    let Some(within) = &raw.get_ref().within else {
        ck.at(
            raw.span(),
            format!("{label}: verify needs within, like verify = {{ within = \"10m\" }}"),
        );
        return None;
    };
    let value = within.get_ref().0;
    if value.is_zero() {
        ck.at(within.span(), format!("{label}: verify.within must be longer than 0s"));
        return None;
    }
    if value > MAX_VERIFY_WITHIN {
        ck.at(
            within.span(),
            format!(
                "{label}: verify.within must be at most {}: a device that comes back later than that did not come back because of the action",
                humantime::format_duration(MAX_VERIFY_WITHIN)
            ),
        );
        return None;
    }
    Some(value)
}

fn job_limit(ck: &mut Checker<'_>, label: &str, raw: &Spanned<RawLimit>) -> Option<Limit> {
    let r = raw.get_ref();
    let (Some(actions), Some(per)) = (&r.actions, &r.per) else {
        ck.at(
            raw.span(),
            format!("{label}: limit needs actions and per, like limit = {{ actions = 3, per = \"24h\" }}"),
        );
        return None;
    };
    let mut ok = true;
    let count = *actions.get_ref();
    if count < 1 {
        ck.at(
            actions.span(),
            format!("{label}: limit.actions must be at least 1; disable the job (enabled = false) to stop it acting, or leave limit out"),
        );
        ok = false;
    } else if count > i64::from(MAX_LIMIT_ACTIONS) {
        ck.at(
            actions.span(),
            format!("{label}: limit.actions must be at most {MAX_LIMIT_ACTIONS}"),
        );
        ok = false;
    }
    let period = per.get_ref().0;
    if period.is_zero() {
        ck.at(per.span(), format!("{label}: limit.per must be longer than 0s"));
        ok = false;
    } else if period > MAX_LIMIT_PER {
        ck.at(
            per.span(),
            format!(
                "{label}: limit.per must be at most {}",
                humantime::format_duration(MAX_LIMIT_PER)
            ),
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(Limit { actions: u32::try_from(count).ok()?, per: period })
}

fn job_schedule(ck: &mut Checker<'_>, label: &str, raw: &Spanned<RawSchedule>) -> Option<Schedule> {
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
        (None, Some((_, text))) => sms_action(ck, label, raw, text, example),
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
    example: &str,
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
    if !raw.get_ref().iter().any(|(key, _)| key.get_ref() == "to") {
        ck.at(
            text.span(),
            format!(
                "{label}: action.sms has no `to`: free text never goes to a socket, since a device's labels could turn it into a socket command; to power a socket write a command of its model or [sockets.commands], like {example}, or to notify a person add to = \"+79991234567\""
            ),
        );
        return None;
    }
    let to = to?;
    ok.then_some(Action::Sms { text: template, to })
}
