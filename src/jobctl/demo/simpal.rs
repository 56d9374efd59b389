//! The SimPal firmware's reading of a command text, for the demo's
//! simulated sockets.
//!
//! Written from the SimPal manuals' codes, not from the rules' own command
//! templates, so the demo checks what jobctl renders the way a socket
//! would: a text the socket cannot read is refused with why, and the fleet
//! logs and ignores it, as a real socket ignores it.

/// A SimPal command as the socket's firmware reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SimpalCommand {
    /// `#01#0#`: power on.
    PowerOn,
    /// `#02#0#`: power off.
    PowerOff,
    /// `#12#0#M#1#`: off now, on again after M minutes (a hard reboot).
    PowerCycle {
        /// M.
        minutes: u32,
    },
    /// `#12#0#M#0#`: on now, off after M minutes.
    PowerOffAfter {
        /// M.
        minutes: u32,
    },
    /// `#00#`: the sender becomes the master number.
    RegisterMaster,
    /// `#06#PHONE#`: PHONE may command the socket too.
    AddUser {
        /// The number, as written.
        phone: String,
    },
}

impl SimpalCommand {
    /// Whether the command switches the power (what a duplicate is about).
    pub(crate) fn switches_power(&self) -> bool {
        matches!(
            self,
            SimpalCommand::PowerOn
                | SimpalCommand::PowerOff
                | SimpalCommand::PowerCycle { .. }
                | SimpalCommand::PowerOffAfter { .. }
        )
    }
}

impl std::fmt::Display for SimpalCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimpalCommand::PowerOn => f.write_str("power on"),
            SimpalCommand::PowerOff => f.write_str("power off"),
            SimpalCommand::PowerCycle { minutes } => {
                write!(f, "power off, on again in {minutes} min")
            }
            SimpalCommand::PowerOffAfter { minutes } => write!(f, "power on, off in {minutes} min"),
            SimpalCommand::RegisterMaster => f.write_str("register master number"),
            SimpalCommand::AddUser { phone } => write!(f, "add user {phone}"),
        }
    }
}

/// The longest delay a SimPal command may carry (three digits, as in every
/// example of the manuals).
const MAX_MINUTES: u32 = 999;

/// Reads a SimPal command text; `Err` says why the socket ignores it.
pub(crate) fn parse_simpal(text: &str) -> Result<SimpalCommand, String> {
    let fields = text
        .strip_prefix('#')
        .and_then(|rest| rest.strip_suffix('#'))
        .map(|inner| inner.split('#').collect::<Vec<_>>())
        .ok_or_else(|| "not a SimPal command: it must start and end with #".to_string())?;
    let minutes = |field: &str| -> Result<u32, String> {
        match field.parse::<u32>() {
            Ok(m)
                if (1..=MAX_MINUTES).contains(&m) && field.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Ok(m)
            }
            _ => Err(format!("{field:?} is not a number of minutes from 1 to {MAX_MINUTES}")),
        }
    };
    match fields[..] {
        ["01", "0"] => Ok(SimpalCommand::PowerOn),
        ["02", "0"] => Ok(SimpalCommand::PowerOff),
        ["12", "0", m, "1"] => Ok(SimpalCommand::PowerCycle { minutes: minutes(m)? }),
        ["12", "0", m, "0"] => Ok(SimpalCommand::PowerOffAfter { minutes: minutes(m)? }),
        ["00"] => Ok(SimpalCommand::RegisterMaster),
        ["06", phone]
            if phone.len() > 3
                && phone.strip_prefix('+').unwrap_or(phone).bytes().all(|b| b.is_ascii_digit()) =>
        {
            Ok(SimpalCommand::AddUser { phone: phone.to_string() })
        }
        _ => Err(format!("unknown SimPal command {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simpal_codes_read_as_the_manuals_give_them() {
        assert_eq!(parse_simpal("#01#0#"), Ok(SimpalCommand::PowerOn));
        assert_eq!(parse_simpal("#02#0#"), Ok(SimpalCommand::PowerOff));
        assert_eq!(parse_simpal("#12#0#1#1#"), Ok(SimpalCommand::PowerCycle { minutes: 1 }));
        assert_eq!(parse_simpal("#12#0#999#1#"), Ok(SimpalCommand::PowerCycle { minutes: 999 }));
        assert_eq!(parse_simpal("#12#0#5#0#"), Ok(SimpalCommand::PowerOffAfter { minutes: 5 }));
        assert_eq!(parse_simpal("#00#"), Ok(SimpalCommand::RegisterMaster));
        assert_eq!(
            parse_simpal("#06#+79991234567#"),
            Ok(SimpalCommand::AddUser { phone: "+79991234567".into() })
        );
        assert!(SimpalCommand::PowerCycle { minutes: 1 }.switches_power());
        assert!(!SimpalCommand::RegisterMaster.switches_power());
    }

    #[test]
    fn a_text_the_socket_cannot_read_is_refused_with_why() {
        assert_eq!(
            parse_simpal("power cycle please"),
            Err("not a SimPal command: it must start and end with #".into())
        );
        assert_eq!(
            parse_simpal("#12#0#1#1"),
            Err("not a SimPal command: it must start and end with #".into())
        );
        assert_eq!(
            parse_simpal("#12#0#0#1#"),
            Err("\"0\" is not a number of minutes from 1 to 999".into())
        );
        assert_eq!(
            parse_simpal("#12#0#1000#1#"),
            Err("\"1000\" is not a number of minutes from 1 to 999".into())
        );
        assert_eq!(
            parse_simpal("#12#0#+5#1#"),
            Err("\"+5\" is not a number of minutes from 1 to 999".into())
        );
        assert_eq!(parse_simpal("#12#0#5#2#"), Err("unknown SimPal command \"#12#0#5#2#\"".into()));
        assert_eq!(parse_simpal("#03#0#"), Err("unknown SimPal command \"#03#0#\"".into()));
        assert_eq!(
            parse_simpal("#06#call me#"),
            Err("unknown SimPal command \"#06#call me#\"".into())
        );
        assert_eq!(
            parse_simpal("#"),
            Err("not a SimPal command: it must start and end with #".into())
        );
        assert_eq!(
            parse_simpal(""),
            Err("not a SimPal command: it must start and end with #".into())
        );
    }
}
