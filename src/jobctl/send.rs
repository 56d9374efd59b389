//! `jobctl send SOCKET COMMAND [NAME=VALUE…]`: a socket command typed by a
//! person, through the same journal, budgets and retries as the daemon's.
//!
//! It never touches job states and never settles the daemon's sends in
//! flight, so it is safe to use while `jobctl run` is running.

use std::collections::BTreeMap;
use std::path::Path;

use super::{fail, load_rules, manual_outbox, Exit};
use crate::journal::{Execution, ExecutionStatus};
use crate::rules::socket::ArgValue;
use crate::rules::Outgoing;

/// `jobctl send` arguments.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The socket's name, as in the rules.
    pub socket: String,
    /// The command, e.g. power_cycle.
    pub command: String,
    /// The command's parameters as NAME=VALUE, e.g. minutes=1.
    pub args: Vec<String>,
}

pub(super) async fn run(config: &Path, args: SendArgs) -> Exit {
    let rules = match load_rules(config) {
        Ok(rules) => rules,
        Err(exit) => return exit,
    };
    let Some(socket) = rules.socket(&args.socket) else {
        let known: Vec<&str> = rules.sockets.iter().map(|s| s.name.as_str()).collect();
        return fail(
            Exit::Usage,
            format!("no socket {:?} in the rules; sockets: {}", args.socket, known.join(", ")),
        );
    };
    let mut values = BTreeMap::new();
    for arg in &args.args {
        let Some((name, value)) = arg.split_once('=') else {
            return fail(
                Exit::Usage,
                format!("parameter {arg:?} must be NAME=VALUE, e.g. minutes=1"),
            );
        };
        let value = value
            .parse::<i64>()
            .map_or_else(|_| ArgValue::Text(value.to_string()), ArgValue::Integer);
        values.insert(name.to_string(), value);
    }
    let text = match socket.render(&args.command, &values) {
        Ok(text) => text,
        Err(errors) => {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return fail(Exit::Usage, format!("socket {}: {}", socket.name, errors.join("; ")));
        }
    };
    let mut outbox = match manual_outbox(&rules) {
        Ok(outbox) => outbox,
        Err(exit) => return exit,
    };
    match outbox.send_manual(&Outgoing::to_socket(socket, text)).await {
        Ok(execution) => report(&execution),
        Err(err) => fail(Exit::Journal, err),
    }
}

/// Prints a manual send's outcome and maps it to the exit code.
pub(super) fn report(execution: &Execution) -> Exit {
    let detail = execution.detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default();
    let line = format!(
        "execution {}: {:?} to {} ({}): {}{detail}",
        execution.id, execution.text, execution.socket, execution.phone, execution.status
    );
    if execution.status == ExecutionStatus::Sent {
        println!("{line}");
        Exit::Ok
    } else {
        fail(Exit::NotSent, line)
    }
}
