//! The `modem` backend: a GSM modem on a serial line, driven with AT commands.
//!
//! The cheapest way to text a GSM socket is a USB GSM modem plugged into the
//! server that runs jobctl. This backend speaks the text-mode commands of
//! 3GPP TS 27.005 that every such modem understands:
//!
//! ```text
//! ESC                      cancel a message a previous run may have left half-typed
//! AT                       is anybody there?                       → OK
//! ATE0                     no echo                                  → OK
//! AT+CMGF=1                text mode                                → OK
//! AT+CPIN?                 only with pin_file/pin_env               → +CPIN: READY | +CPIN: SIM PIN
//! AT+CPIN="1234"           only when the SIM asks for its PIN       → OK
//! AT+CSCS="IRA"            texts are written in ASCII               → OK
//! AT+CMGS="+79991234567"   one message                              → "> "
//! #12#0#1#1#<Ctrl-Z>       the text, ended by 0x1A                  → +CMGS: 17, OK
//! ```
//!
//! Any step may be answered `ERROR`, `+CMS ERROR: <n>` or `+CME ERROR: <n>`;
//! the codes are turned into words ([`result_code::cms_reason`], [`result_code::cme_reason`]) so that
//! the journal says "no network service", not "331". Unsolicited result
//! codes (`RING`, `+CMTI: …`, `+CREG: …`, `^BOOT…`), empty lines and the
//! modem's echo of what was written may arrive at any point and are skipped:
//! only the answers an exchange waits for are acted on. Echo on or off both
//! work, so a modem that ignores `ATE0` is fine too.
//!
//! # What "sent" means here
//!
//! - `+CMGS: <ref>`: delivered, `<ref>` is the journal's reference.
//! - An error answer or silence **before** the text and its Ctrl-Z were
//!   written: definitely not sent (nothing was handed over; an unanswered
//!   `> ` prompt is cancelled with ESC).
//! - Silence, a broken line or a vanished device **after** Ctrl-Z:
//!   uncertain; the network may have the message.
//! - An error answer after Ctrl-Z: the modem says it failed, so definite —
//!   except `+CMS ERROR: 332` / `+CME ERROR: 31` (network timeout), after
//!   which the SMS centre may have the message: uncertain.
//!
//! # Texts that cannot break the exchange
//!
//! Inside the text, Ctrl-Z (0x1A) ends the message and ESC (0x1B) cancels
//! it, and a carriage return starts a new `> ` line. The text is passed
//! through [`text::sanitize`] once more here, whatever the caller did, so no
//! control character (and no line break) ever reaches the modem inside a
//! text; the number is checked as E.164 so it cannot close the quotes of
//! `AT+CMGS`.
//!
//! [`text::sanitize`]: super::text::sanitize
//!
//! A text that fits in one GSM-7 SMS and is plain ASCII is written as it is
//! in the IRA character set, and the modem turns it into GSM-7. Any other
//! text (Cyrillic, `é`, `€`) is sent as UCS-2: `AT+CSCS="UCS2"` and
//! `AT+CSMP=17,167,0,8`, with the number and the text written as hex
//! UTF-16; the next ASCII text switches back with `AT+CSCS="IRA"` and
//! `AT+CSMP=17,167,0,0`. Set `ucs2 = false` to refuse such texts instead.
//! Text mode cannot send concatenated messages, so a text longer than one
//! SMS (160 GSM-7 or 70 UCS-2 characters) is refused, never cut.
//!
//! # One exchange at a time, and a modem that stops answering
//!
//! A modem holds one conversation: two `AT+CMGS` interleaved would send one
//! message's text to the other's number. Each send therefore takes an async
//! mutex and moves the *owned* guard into a blocking task
//! ([`tokio::task::spawn_blocking`]) that runs the whole exchange with plain
//! blocking reads (`poll(2)` with a deadline) on the serial device. Blocking
//! I/O on a dedicated thread keeps the exchange a straight sequence of
//! steps, easy to read against the AT transcript, and never stalls the
//! runtime; holding the guard in the blocking task means that even when the
//! caller gives up on a send, its exchange runs to its end before the next
//! one starts, so the modem is never left at a `> ` prompt with another
//! command arriving.
//!
//! The device is opened on first use, not when jobctl starts, and kept
//! open. A modem that stops answering (a timeout, an I/O error, a USB modem
//! unplugged) is closed, and the next send opens and initialises it again.
//! A SIM that refuses the configured PIN is never given it again until
//! jobctl restarts: three wrong PINs would lock it behind its PUK.
//!
//! One process should own the modem: jobctl does not lock the device
//! against another program (ModemManager, smsd) using it at the same time.
//!
//! ```toml
//! [sms]
//! backend = "modem"
//!
//! [sms.modem]
//! device = "/dev/serial/by-id/usb-SimTech_SIM800-if00-port0"
//! baud = 115200
//! pin_file = "/etc/jobctl/sim.pin"     # only if the SIM asks for a PIN
//! ```
//!
//! # The parts
//!
//! `config` is the `[sms.modem]` table and its checks; `prepare` checks and
//! encodes a message before the modem is touched; `exchange` runs one
//! message's conversation over `port`, the serial device cut into lines,
//! and reads the modem's answers with `result_code`. This file owns the
//! sender: one lock and one open session per device, shared across
//! reloads.

mod config;
mod exchange;
mod port;
mod prepare;
mod result_code;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};

pub(crate) use self::config::ModemConfig;
use self::config::{load_pin, Settings};
use self::exchange::ModemState;
use self::prepare::prepare;
use super::{Departure, Message, SendError, SendFuture, Sender, SmsConfigError, Unrecorded};

/// Sends through a GSM modem; see the module documentation.
#[derive(Debug)]
pub(crate) struct ModemSender {
    settings: Arc<Settings>,
    /// The open device and what it was told; the lock serialises exchanges.
    state: Arc<tokio::sync::Mutex<ModemState>>,
}

impl ModemSender {
    /// The backend name in the journal.
    pub(crate) const NAME: &'static str = "modem";

    /// Validates `[sms.modem]` and loads the PIN (a relative `pin_file` is
    /// taken from `base_dir`). The device is not opened until the first send.
    pub(crate) fn from_config(
        config: &ModemConfig,
        base_dir: &Path,
    ) -> Result<ModemSender, SmsConfigError> {
        let (mut settings, pin) = config::settings(config, base_dir)?;
        settings.pin = pin.as_ref().map(load_pin).transpose()?;
        let state = state_of(&device_key(&settings.device));
        Ok(ModemSender { settings: Arc::new(settings), state })
    }

    /// The checks of [`ModemSender::from_config`] that read no PIN and
    /// leave the device alone.
    pub(crate) fn check(config: &ModemConfig) -> Result<(), SmsConfigError> {
        config::settings(config, Path::new("")).map(drop)
    }
}

/// The state of each modem device in this process, by path. A sender built
/// again for the same device (a SIGHUP reload) shares the lock, the open
/// session and the memory of a refused PIN with the one before it: two
/// exchanges never talk to one serial port at once, and a reload never
/// offers the SIM a PIN it refused (a third wrong PIN locks it).
type ModemStates = std::sync::Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<ModemState>>>>;

fn state_of(device: &Path) -> Arc<tokio::sync::Mutex<ModemState>> {
    static STATES: OnceLock<ModemStates> = OnceLock::new();
    let mut states = STATES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    states.retain(|_, state| state.strong_count() > 0);
    if let Some(state) = states.get(device).and_then(Weak::upgrade) {
        return state;
    }
    let state = Arc::new(tokio::sync::Mutex::new(ModemState::default()));
    states.insert(device.to_path_buf(), Arc::downgrade(&state));
    state
}

/// The path that names a device however it is written (a `/dev/serial/by-id`
/// link and the `/dev/ttyUSB0` it points to are one modem).
fn device_key(device: &Path) -> PathBuf {
    std::fs::canonicalize(device).unwrap_or_else(|_| device.to_path_buf())
}

impl Sender for ModemSender {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        self.send_departing(message, &Unrecorded)
    }

    fn send_departing<'a>(
        &'a self,
        message: &'a Message,
        departure: &'a dyn Departure,
    ) -> SendFuture<'a> {
        Box::pin(async move {
            let device = self.settings.device.display().to_string();
            let prepared = prepare(message, self.settings.ucs2)
                .map_err(|why| SendError::Definite { reason: format!("modem {device}: {why}") })?;
            let guard = Arc::clone(&self.state).lock_owned().await;
            // The lock may have taken minutes: the message leaves only now.
            super::announce(departure, &format!("modem {device}")).await?;
            let settings = Arc::clone(&self.settings);
            let exchange = tokio::task::spawn_blocking(move || {
                let mut state = guard;
                exchange::run(&settings, &mut state, &prepared)
            });
            match exchange.await {
                Ok(outcome) => outcome,
                Err(join) => Err(SendError::Uncertain {
                    reason: format!(
                        "modem {device}: the exchange with the modem ended abnormally ({join})"
                    ),
                }),
            }
        })
    }
}

#[cfg(test)]
mod proptests;
