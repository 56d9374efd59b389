//! `jobctl send SOCKET COMMAND [NAME=VALUE…]`: a socket command typed by a
//! person, through the same journal, budgets and retries as the daemon's.
//!
//! It never touches job states. It writes the journal, so it takes the
//! journal's writer lock: while `jobctl run` runs it is refused (exit 4,
//! naming the daemon's PID) rather than racing the daemon's budgets and
//! sends in flight.

use std::collections::BTreeMap;
use std::path::Path;

use super::error::{Error, Outcome};
use super::{load_rules, manual_outbox};
use crate::exit::Exit;
use crate::journal::{Execution, ExecutionStatus};
use crate::rules::socket::ArgValue;
use crate::rules::Outgoing;

/// `jobctl send` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct SendArgs {
    /// The socket's name, as in the rules.
    pub(crate) socket: String,
    /// The command, e.g. power_cycle.
    pub(crate) command: String,
    /// The command's parameters as NAME=VALUE, e.g. minutes=1.
    pub(crate) args: Vec<String>,
}

pub(super) async fn run(config: &Path, args: SendArgs) -> Result<Exit, Error> {
    let rules = load_rules(config)?;
    let Some(socket) = rules.socket(&args.socket) else {
        let known = rules.sockets.iter().map(|s| s.name.clone()).collect();
        return Err(Error::UnknownSocket { socket: args.socket, known });
    };
    let mut values = BTreeMap::new();
    for arg in &args.args {
        let Some((name, value)) = arg.split_once('=') else {
            return Err(Error::Parameter(arg.clone()));
        };
        let value = value
            .parse::<i64>()
            .map_or_else(|_| ArgValue::Text(value.to_string()), ArgValue::Integer);
        values.insert(name.to_string(), value);
    }
    let text = socket
        .render(&args.command, &values)
        .map_err(|errors| Error::Command { socket: socket.name.clone(), errors })?;
    let mut outbox = manual_outbox(&rules)?;
    let execution = outbox.send_manual(&Outgoing::to_socket(socket, text)).await?;
    outcome(execution)?;
    Ok(Exit::Ok)
}

/// A manual send's outcome: printed on stdout when the message was sent,
/// an error otherwise.
pub(super) fn outcome(execution: Execution) -> Result<(), Error> {
    if execution.status == ExecutionStatus::Sent {
        crate::exit::outln!("{}", Outcome(&execution));
        Ok(())
    } else {
        Err(Error::NotSent(Box::new(execution)))
    }
}
