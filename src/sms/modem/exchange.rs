//! One message's exchange with the modem, from opening and initialising
//! the device (PIN included) to `AT+CMGS`, the text, Ctrl-Z and the
//! verdict, and what is kept of the modem between messages.
//!
//! This is where "sent", "not sent" and "may have been sent" are decided
//! (see [the backend's documentation](super)): it runs on a blocking
//! thread while holding the modem's lock.

use std::time::{Duration, Instant};

use super::config::Settings;
use super::port::{step_failure, Event, Port, StepError};
use super::prepare::{Charset, Prepared};
use super::result_code::Final;
use super::ModemSender;
use crate::secret::Secret;
use crate::sms::{Delivered, SendError, SendOutcome};

/// Cancels the text of a message.
const ESC: u8 = 0x1B;

/// What is kept of one modem between messages.
#[derive(Debug, Default)]
pub(super) struct ModemState {
    /// The open, initialised device; `None` until first use and after the
    /// modem stopped answering.
    session: Option<Session>,
    /// Set once the SIM refused the PIN: it is never offered again.
    pin_refused: Option<String>,
}

/// An open, initialised modem.
#[derive(Debug)]
struct Session {
    port: Port,
    /// The speed it was opened at: a reload may change it.
    baud: u32,
    /// What the modem was last told; `None` after a switch that failed
    /// half-way, so that the next message sets both again.
    charset: Option<Charset>,
}

/// How an exchange failed, and whether the modem is still worth talking to.
#[derive(Debug)]
enum Failure {
    /// The message did not leave.
    Definite { reason: String, keep_session: bool },
    /// The message may have left.
    Uncertain { reason: String, keep_session: bool },
}

/// Runs one message's whole exchange, opening and initialising the modem
/// first when needed. Runs on a blocking thread, holding the modem's lock.
pub(super) fn run(settings: &Settings, state: &mut ModemState, prepared: &Prepared) -> SendOutcome {
    let device = settings.device.display().to_string();
    if let Some(why) = &state.pin_refused {
        return Err(SendError::Definite { reason: format!("modem {device}: {why}") });
    }
    let session = match state.session.take() {
        Some(session) if session.baud != settings.baud => {
            tracing::info!("modem {device}: reopening it at {} baud", settings.baud);
            close(session.port);
            open_and_initialise(settings, state)
        }
        Some(mut session) => match session.port.discard_input() {
            Ok(()) => Ok(session),
            Err(e) => {
                tracing::warn!("modem {device}: the open device failed ({e}); reopening it");
                close(session.port);
                open_and_initialise(settings, state)
            }
        },
        None => open_and_initialise(settings, state),
    };
    let mut session =
        session.map_err(|why| SendError::Definite { reason: format!("modem {device}: {why}") })?;
    match deliver(settings, &mut session, prepared) {
        Ok(reference) => {
            state.session = Some(session);
            Ok(Delivered { backend: ModemSender::NAME.to_string(), reference })
        }
        Err(failure) => {
            let (error, keep) = match failure {
                Failure::Definite { reason, keep_session } => (
                    SendError::Definite { reason: format!("modem {device}: {reason}") },
                    keep_session,
                ),
                Failure::Uncertain { reason, keep_session } => (
                    SendError::Uncertain { reason: format!("modem {device}: {reason}") },
                    keep_session,
                ),
            };
            if keep {
                state.session = Some(session);
            } else {
                close(session.port);
            }
            Err(error)
        }
    }
}

/// Closes the device, first cancelling with ESC any message the modem may
/// still be waiting for (harmless when it is not).
fn close(mut port: Port) {
    let _ = port.write_all(&[ESC], Instant::now() + Duration::from_millis(100));
}

/// Opens the device and brings the modem to text mode, with the SIM
/// unlocked and ASCII texts.
fn open_and_initialise(settings: &Settings, state: &mut ModemState) -> Result<Session, String> {
    let timeout = settings.command_timeout;
    let mut port = Port::open(&settings.device, settings.baud)
        .map_err(|e| format!("cannot open the device: {e}"))?;
    let result = (|| {
        port.write_all(&[ESC], Instant::now() + timeout)
            .map_err(|e| step_failure("ESC", &e, timeout))?;
        for command in ["AT", "ATE0", "AT+CMGF=1"] {
            port.command(command, timeout).map_err(|e| step_failure(command, &e, timeout))?;
        }
        if let Some(pin) = &settings.pin {
            unlock(&mut port, pin, timeout, state)?;
        }
        let command = Charset::Ira.select();
        port.command(command, timeout).map_err(|e| step_failure(command, &e, timeout))
    })();
    match result {
        Ok(_) => {
            tracing::info!(device = %settings.device.display(), "GSM modem initialised");
            Ok(Session { port, baud: settings.baud, charset: Some(Charset::Ira) })
        }
        Err(why) => {
            close(port);
            Err(why)
        }
    }
}

/// Enters the PIN when the SIM asks for it; a refused PIN is remembered and
/// never offered again.
fn unlock(
    port: &mut Port,
    pin: &Secret,
    timeout: Duration,
    state: &mut ModemState,
) -> Result<(), String> {
    let lines =
        port.command("AT+CPIN?", timeout).map_err(|e| step_failure("AT+CPIN?", &e, timeout))?;
    let status = lines.iter().find_map(|line| line.strip_prefix("+CPIN:")).map(str::trim);
    match status {
        Some("READY") => Ok(()),
        Some("SIM PIN") => {
            let shown = "AT+CPIN=\"****\"";
            match port.command(&format!("AT+CPIN=\"{}\"", pin.expose()), timeout) {
                Ok(_) => {
                    tracing::info!("SIM unlocked with its PIN");
                    Ok(())
                }
                Err(StepError::Refused(answer)) => {
                    let why = format!(
                        "the SIM refused the configured PIN ({}); fix pin_file or pin_env and restart jobctl (the PIN is not offered again: a third wrong PIN locks the SIM)",
                        answer.describe()
                    );
                    state.pin_refused = Some(why.clone());
                    Err(why)
                }
                Err(e) => Err(step_failure(shown, &e, timeout)),
            }
        }
        Some(other) => Err(format!("the SIM asks for {other}, not its PIN; unlock it in a phone")),
        None => Err("AT+CPIN? was answered without a +CPIN: line".to_string()),
    }
}

/// Sends one message on an initialised modem: `AT+CMGS`, the prompt, the
/// text and Ctrl-Z, and the modem's verdict. Returns the `+CMGS` reference.
fn deliver(
    settings: &Settings,
    session: &mut Session,
    prepared: &Prepared,
) -> Result<Option<String>, Failure> {
    let timeout = settings.command_timeout;
    let refused = |shown: &str, e: StepError| Failure::Definite {
        keep_session: matches!(e, StepError::Refused(_)),
        reason: step_failure(shown, &e, timeout),
    };
    if session.charset != Some(prepared.charset) {
        session.charset = None;
        for command in [prepared.charset.select(), prepared.charset.coding()] {
            session.port.command(command, timeout).map_err(|e| refused(command, e))?;
        }
        session.charset = Some(prepared.charset);
    }

    let shown = prepared.command.trim_end();
    let deadline = Instant::now() + timeout;
    let port = &mut session.port;
    port.write_all(prepared.command.as_bytes(), deadline).map_err(|e| refused(shown, e))?;
    loop {
        let event = port.next_event(deadline, true).map_err(|e| match e {
            StepError::Timeout => Failure::Definite {
                keep_session: false,
                reason: format!(
                    "no > prompt after {shown} within {}; the text was not written",
                    humantime::format_duration(timeout)
                ),
            },
            other => refused(shown, other),
        })?;
        match event {
            Event::Prompt => break,
            Event::Line(line) => match Final::parse(&line) {
                None | Some(Final::Ok) => {}
                Some(answer) => return Err(refused(shown, StepError::Refused(answer))),
            },
        }
    }

    // The text and its Ctrl-Z: if writing fails, the Ctrl-Z (the last byte)
    // was not written, so the message did not leave.
    let deadline = Instant::now() + timeout;
    port.write_all(&prepared.body, deadline).map_err(|e| Failure::Definite {
        keep_session: false,
        reason: match e {
            StepError::Io(e) => format!("the device failed while the text was written: {e}"),
            _ => format!(
                "the modem took no text for {}; the message was not ended",
                humantime::format_duration(timeout)
            ),
        },
    })?;

    let waited = humantime::format_duration(settings.send_timeout);
    let deadline = Instant::now() + settings.send_timeout;
    let mut reference = None;
    loop {
        let line = match port.next_event(deadline, false) {
            Ok(Event::Line(line)) => line,
            Ok(Event::Prompt) => continue,
            // +CMGS is the modem's word that the network took it; a missing
            // OK after it does not undo that.
            Err(_) if reference.is_some() => return Ok(reference),
            Err(StepError::Io(e)) => {
                return Err(Failure::Uncertain {
                    keep_session: false,
                    reason: format!(
                        "the device failed after the text was handed over ({e}); the message may have been sent"
                    ),
                })
            }
            Err(_) => {
                return Err(Failure::Uncertain {
                    keep_session: false,
                    reason: format!(
                        "no answer within {waited} after the text was handed over; the message may have been sent"
                    ),
                })
            }
        };
        if let Some(number) = line.strip_prefix("+CMGS:").map(str::trim) {
            if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
                reference = Some(number.to_string());
            }
            continue;
        }
        match Final::parse(&line) {
            // OK is only the end of a success after +CMGS; alone it may be
            // the echo of a text that reads "OK", so it is not trusted.
            Some(Final::Ok) if reference.is_some() => return Ok(reference),
            None | Some(Final::Ok) => {}
            Some(answer) if answer.may_have_left() => {
                return Err(Failure::Uncertain {
                    keep_session: true,
                    reason: format!(
                        "the text was handed over and the modem answered {}; the SMS centre may have the message",
                        answer.describe()
                    ),
                })
            }
            Some(answer) => {
                return Err(Failure::Definite {
                    keep_session: true,
                    reason: format!("the message was refused: {}", answer.describe()),
                })
            }
        }
    }
}
