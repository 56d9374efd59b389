//! The checks of `[[sockets]]`: every entry of every file becomes a
//! [`Socket`] or errors at `file:line:column`, and across files a socket
//! name is used once and a device has one socket.
//!
//! A socket is checked on its own: its model is known, its commands parse
//! and fit one SMS, its phone is a number and `powers` names devices by
//! their whole device key. Jobs are checked against the sockets afterwards
//! (in [`crate::rules::validate`]), which is why a file's sockets are read
//! before any job.

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;

use super::{single_sms_overflow, CommandSpec, Socket, SocketModel};
use crate::config_file::ConfigError;
use crate::rules::checker::{labels, Checker};
use crate::rules::config::{RawEntries, RawLabels, RawPowers, RawSocket};
use crate::rules::device::{is_label_name, DeviceKey, DeviceKeyLabels};
use crate::sms::phone::PhoneNumber;

/// Every valid socket of the rules, and which powers each device.
pub(crate) struct Sockets {
    /// Every socket without errors, main file first, in file order.
    pub(crate) sockets: Vec<Socket>,
    /// The index in `sockets` of the socket that powers a device.
    pub(crate) by_device: HashMap<DeviceKey, usize>,
    /// Some `[[sockets]]` entry had errors of its own: a job that finds no
    /// socket may be missing that one.
    pub(crate) rejected: bool,
}

/// Checks the `[[sockets]]` of every file, recording each problem in
/// `errors`.
pub(crate) fn sockets(
    files: &[RawEntries<'_>],
    device_key: &DeviceKeyLabels,
    errors: &mut Vec<ConfigError>,
) -> Sockets {
    let mut sockets: Vec<Socket> = Vec::new();
    let mut socket_names: HashMap<String, String> = HashMap::new();
    let mut socket_by_device: HashMap<DeviceKey, usize> = HashMap::new();
    let mut device_positions: HashMap<DeviceKey, String> = HashMap::new();
    for entries in files {
        let mut ck = Checker { file: entries.file, errors: &mut *errors };
        for (index, raw_socket) in entries.sockets.iter().enumerate() {
            let Some(checked) = socket(&mut ck, raw_socket, index + 1, device_key) else {
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
    let written: usize = files.iter().map(|entries| entries.sockets.len()).sum();
    let rejected = sockets.len() < written;
    Sockets { sockets, by_device: socket_by_device, rejected }
}

/// A valid socket, with the spans the checks across sockets point at.
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
