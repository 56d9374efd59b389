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
//! the codes are turned into words ([`cms_reason`], [`cme_reason`]) so that
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

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::termios::{self, ControlModes, InputModes, OptionalActions, QueueSelector};
use serde::Deserialize;
use toml::Spanned;

use super::phone::PhoneNumber;
use super::text::{self, Encoding};
use super::{
    positive_duration, Delivered, Message, SendError, SendFuture, SendOutcome, Sender,
    SmsConfigError,
};
use crate::config_file::HumanDuration;
use crate::secret::{Secret, SecretSource};

/// The line speed when `baud` is not set: what most USB GSM modems use.
pub const DEFAULT_BAUD: u32 = 115_200;
/// How long the modem has to answer a command (or show the `> ` prompt),
/// by default. Modems answer in milliseconds; seconds mean it is gone.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the network has to take a message after Ctrl-Z, by default.
/// 27.005 leaves it open; real modems answer within a minute or give up.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Whether non-ASCII texts are sent as UCS-2 when `ucs2` is not set.
pub const DEFAULT_UCS2: bool = true;
/// Line speeds a serial driver accepts everywhere.
const BAUD_RATES: [u32; 13] =
    [300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115_200, 230_400, 460_800, 921_600];
/// Ends the text of a message.
const CTRL_Z: u8 = 0x1A;
/// Cancels the text of a message.
const ESC: u8 = 0x1B;
/// Most bytes kept of a line that never ends (a modem spewing noise).
const MAX_PENDING: usize = 4096;
/// Units (UTF-16) of one UCS-2 SMS.
const UCS2_SINGLE: usize = 70;

/// The `[sms.modem]` table, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModemConfig {
    /// The modem's serial device, as a full path. Prefer a stable
    /// `/dev/serial/by-id/…` link over `/dev/ttyUSB0`, whose number can
    /// change when USB devices come and go.
    pub device: Spanned<PathBuf>,
    /// Line speed in baud. Default [`DEFAULT_BAUD`]; USB modems mostly
    /// ignore it, modems on a real serial port need the right one.
    pub baud: Option<Spanned<u32>>,
    /// File holding the SIM's PIN (4 to 8 digits), relative to the rules
    /// file; only for a SIM that asks for one. Keep it mode 600.
    pub pin_file: Option<Spanned<PathBuf>>,
    /// Environment variable holding the SIM's PIN, instead of `pin_file`.
    pub pin_env: Option<Spanned<String>>,
    /// Send texts that are not plain ASCII GSM-7 as UCS-2 (hex-encoded after
    /// `AT+CSCS="UCS2"`). Default [`DEFAULT_UCS2`]; `false` refuses them, for
    /// modems that mishandle UCS-2.
    pub ucs2: Option<bool>,
    /// Time the modem has to answer each command and to show the `> `
    /// prompt; longer than zero. Default [`DEFAULT_COMMAND_TIMEOUT`].
    pub command_timeout: Option<Spanned<HumanDuration>>,
    /// Time the network has to take a message after its text was handed
    /// over; silence past it is an uncertain send. Longer than zero.
    /// Default [`DEFAULT_SEND_TIMEOUT`].
    pub send_timeout: Option<Spanned<HumanDuration>>,
}

fn err(
    key: &str,
    message: impl Into<String>,
    span: Option<std::ops::Range<usize>>,
) -> SmsConfigError {
    SmsConfigError::new(&format!("sms.modem.{key}"), message, span)
}

/// Everything an exchange needs, fixed when the configuration is loaded.
#[derive(Debug)]
struct Settings {
    device: PathBuf,
    baud: u32,
    pin: Option<Secret>,
    ucs2: bool,
    command_timeout: Duration,
    send_timeout: Duration,
}

/// Sends through a GSM modem; see the module documentation.
#[derive(Debug)]
pub struct ModemSender {
    settings: Arc<Settings>,
    /// The open device and what it was told; the lock serialises exchanges.
    state: Arc<tokio::sync::Mutex<ModemState>>,
}

/// The character set the modem was last told to expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    /// `AT+CSCS="IRA"` and the default `AT+CSMP` (GSM-7 on the air).
    Ira,
    /// `AT+CSCS="UCS2"` and `AT+CSMP=17,167,0,8` (UCS-2 on the air).
    Ucs2,
}

#[derive(Debug, Default)]
struct ModemState {
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

impl ModemSender {
    /// The backend name in the journal.
    pub const NAME: &'static str = "modem";

    /// Validates `[sms.modem]` and loads the PIN (a relative `pin_file` is
    /// taken from `base_dir`). The device is not opened until the first send.
    pub fn from_config(
        config: &ModemConfig,
        base_dir: &Path,
    ) -> Result<ModemSender, SmsConfigError> {
        let (mut settings, pin) = Self::settings(config, base_dir)?;
        settings.pin = pin.as_ref().map(load_pin).transpose()?;
        let state = state_of(&device_key(&settings.device));
        Ok(ModemSender { settings: Arc::new(settings), state })
    }

    /// The checks of [`ModemSender::from_config`] that read no PIN and
    /// leave the device alone.
    pub(crate) fn check(config: &ModemConfig) -> Result<(), SmsConfigError> {
        Self::settings(config, Path::new("")).map(drop)
    }

    /// `[sms.modem]` checked, without its PIN, and where the PIN is.
    fn settings(
        config: &ModemConfig,
        base_dir: &Path,
    ) -> Result<(Settings, Option<PinSource>), SmsConfigError> {
        let device = config.device.get_ref().clone();
        if !device.is_absolute() {
            return Err(err(
                "device",
                format!(
                    "{:?} is not a full path; write the device like \"/dev/ttyUSB0\" or \"/dev/serial/by-id/…\"",
                    device.display().to_string()
                ),
                Some(config.device.span()),
            ));
        }
        let baud = match &config.baud {
            None => DEFAULT_BAUD,
            Some(baud) if BAUD_RATES.contains(baud.get_ref()) => *baud.get_ref(),
            Some(baud) => {
                let rates = BAUD_RATES.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
                return Err(err(
                    "baud",
                    format!("{} is not a serial line speed; use one of {rates}", baud.get_ref()),
                    Some(baud.span()),
                ));
            }
        };
        let command_timeout = positive_duration(
            "sms.modem.command_timeout",
            config.command_timeout.as_ref(),
            DEFAULT_COMMAND_TIMEOUT,
        )?;
        let send_timeout = positive_duration(
            "sms.modem.send_timeout",
            config.send_timeout.as_ref(),
            DEFAULT_SEND_TIMEOUT,
        )?;
        let settings = Settings {
            device,
            baud,
            pin: None,
            ucs2: config.ucs2.unwrap_or(DEFAULT_UCS2),
            command_timeout,
            send_timeout,
        };
        Ok((settings, pin_source(config, base_dir)?))
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
    let mut states = STATES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
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

/// Where the PIN is read from.
struct PinSource {
    source: SecretSource,
    /// `pin_file` or `pin_env`, for messages.
    key: &'static str,
    span: std::ops::Range<usize>,
}

/// Where the PIN is, when one is set. Nothing is read yet.
fn pin_source(config: &ModemConfig, base_dir: &Path) -> Result<Option<PinSource>, SmsConfigError> {
    let (source, key, span) = match (&config.pin_file, &config.pin_env) {
        (Some(_), Some(env)) => {
            return Err(err("pin_env", "set pin_file or pin_env, not both", Some(env.span())))
        }
        (Some(file), None) => {
            (SecretSource::File(base_dir.join(file.get_ref())), "pin_file", file.span())
        }
        (None, Some(env)) => (SecretSource::Env(env.get_ref().clone()), "pin_env", env.span()),
        (None, None) => return Ok(None),
    };
    Ok(Some(PinSource { source, key, span }))
}

/// Loads the PIN and checks that it is one.
fn load_pin(pin: &PinSource) -> Result<Secret, SmsConfigError> {
    let PinSource { source, key, span } = pin;
    // The path is already joined with base_dir, so messages name the real file.
    let loaded =
        source.load(Path::new("")).map_err(|e| err(key, e.to_string(), Some(span.clone())))?;
    if let Some(warning) = loaded.loose_permissions {
        tracing::warn!("{warning}");
    }
    let digits = loaded.secret.expose();
    if !(4..=8).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(
            key,
            format!("the PIN in {source} is not 4 to 8 digits (it is not shown here)"),
            Some(span.clone()),
        ));
    }
    Ok(loaded.secret)
}

/// A message checked and encoded for the wire, before the modem is touched.
#[derive(Debug)]
struct Prepared {
    charset: Charset,
    /// The `AT+CMGS` line, with its carriage return.
    command: String,
    /// The text as written after the prompt, with its Ctrl-Z.
    body: Vec<u8>,
}

/// Checks and encodes a message; every refusal is definite, nothing was
/// written.
fn prepare(message: &Message, ucs2_allowed: bool) -> Result<Prepared, String> {
    let phone = PhoneNumber::parse(&message.phone)
        .map_err(|e| format!("{e}; nothing was written to the modem"))?;
    let clean = text::sanitize(&message.text, false, usize::MAX);
    if clean != message.text {
        tracing::warn!(
            phone = %phone,
            "control characters or line breaks removed from an SMS text before it reached the modem"
        );
    }
    let count = text::segments(&clean);
    let charset = if clean.is_ascii() && count.encoding == Encoding::Gsm7 {
        Charset::Ira
    } else {
        Charset::Ucs2
    };
    match charset {
        Charset::Ira if !count.is_single() => {
            return Err(format!(
                "the text takes {} GSM-7 characters, more than the 160 of one SMS; the modem backend sends single messages only, shorten the text",
                count.units
            ))
        }
        Charset::Ucs2 if !ucs2_allowed => {
            return Err(
                "the text has characters outside ASCII and needs UCS-2, which is switched off (ucs2 = false in [sms.modem]); write the text in ASCII or set ucs2 = true"
                    .to_string(),
            )
        }
        Charset::Ucs2 if clean.encode_utf16().count() > UCS2_SINGLE => {
            return Err(format!(
                "the text takes {} UCS-2 characters, more than the {UCS2_SINGLE} of one SMS; the modem backend sends single messages only, shorten the text",
                clean.encode_utf16().count()
            ))
        }
        _ => {}
    }
    let (number, mut body) = match charset {
        Charset::Ira => (phone.as_str().to_string(), clean.into_bytes()),
        Charset::Ucs2 => (ucs2_hex(phone.as_str()), ucs2_hex(&clean).into_bytes()),
    };
    body.push(CTRL_Z);
    Ok(Prepared { charset, command: format!("AT+CMGS=\"{number}\"\r"), body })
}

/// Text as the hex of its UTF-16 big-endian code units, as modems expect
/// after `AT+CSCS="UCS2"` (`"Ж"` → `"0416"`).
pub fn ucs2_hex(text: &str) -> String {
    text.encode_utf16().map(|unit| format!("{unit:04X}")).collect()
}

impl Sender for ModemSender {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            let device = self.settings.device.display().to_string();
            let prepared = prepare(message, self.settings.ucs2)
                .map_err(|why| SendError::Definite { reason: format!("modem {device}: {why}") })?;
            let guard = Arc::clone(&self.state).lock_owned().await;
            let settings = Arc::clone(&self.settings);
            let exchange = tokio::task::spawn_blocking(move || {
                let mut state = guard;
                exchange(&settings, &mut state, &prepared)
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

/// Why an exchange step did not get the answer it wanted.
#[derive(Debug)]
enum StepError {
    /// The modem said no.
    Refused(Final),
    /// Nothing (or nothing useful) within the time allowed.
    Timeout,
    /// The device failed or went away.
    Io(io::Error),
}

/// A final result code.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Final {
    Ok,
    Error,
    /// `+CMS ERROR: <n>` (SMS service), the code or the modem's own words.
    Cms(String),
    /// `+CME ERROR: <n>` (equipment), the code or the modem's own words.
    Cme(String),
}

impl Final {
    fn parse(line: &str) -> Option<Final> {
        if let Some(code) = line.strip_prefix("+CMS ERROR:") {
            return Some(Final::Cms(code.trim().to_string()));
        }
        if let Some(code) = line.strip_prefix("+CME ERROR:") {
            return Some(Final::Cme(code.trim().to_string()));
        }
        match line {
            "OK" => Some(Final::Ok),
            "ERROR" | "COMMAND NOT SUPPORT" => Some(Final::Error),
            _ => None,
        }
    }

    /// The answer and what it means: `+CMS ERROR: 331 (no network service)`.
    fn describe(&self) -> String {
        match self {
            Final::Ok => "OK".to_string(),
            Final::Error => "ERROR".to_string(),
            Final::Cms(code) => match code.parse().ok().and_then(cms_reason) {
                Some(words) => format!("+CMS ERROR: {code} ({words})"),
                None => format!("+CMS ERROR: {code}"),
            },
            Final::Cme(code) => match code.parse().ok().and_then(cme_reason) {
                Some(words) => format!("+CME ERROR: {code} ({words})"),
                None => format!("+CME ERROR: {code}"),
            },
        }
    }

    /// After the text was handed over, whether this error still leaves the
    /// message possibly sent: a network timeout means the SMS centre may
    /// have taken it without the acknowledgement coming back.
    fn may_have_left(&self) -> bool {
        matches!(self, Final::Cms(code) if code == "332")
            || matches!(self, Final::Cme(code) if code == "31")
    }
}

/// Words for a `+CMS ERROR` code (3GPP TS 27.005 §3.2.5, and the network's
/// RP/TP causes of TS 24.011 and TS 23.040 that modems pass on).
pub fn cms_reason(code: u32) -> Option<&'static str> {
    Some(match code {
        1 => "unassigned number: the recipient's number does not exist",
        8 => "operator determined barring",
        10 => "call barred",
        21 => "short message transfer rejected by the network",
        27 => "destination out of service",
        28 => "unidentified subscriber",
        29 => "facility rejected",
        30 => "unknown subscriber",
        38 => "network out of order",
        41 => "temporary network failure",
        42 => "network congestion",
        47 => "network resources unavailable",
        50 => "requested facility not subscribed: check the SIM's plan allows SMS",
        69 => "requested facility not implemented",
        96 => "invalid mandatory information",
        111 => "protocol error",
        127 => "interworking error",
        300 => "modem failure",
        301 => "SMS service of the modem reserved",
        302 => "operation not allowed",
        303 => "operation not supported",
        304 => "invalid PDU mode parameter",
        305 => "invalid text mode parameter",
        310 => "SIM not inserted",
        311 => "SIM PIN required: set pin_file or pin_env in [sms.modem]",
        312 => "PH-SIM PIN required",
        313 => "SIM failure",
        314 => "SIM busy",
        315 => "SIM wrong",
        316 => "SIM PUK required: unlock the SIM in a phone",
        317 => "SIM PIN2 required",
        318 => "SIM PUK2 required",
        320 => "memory failure",
        321 => "invalid memory index",
        322 => "memory full",
        330 => "SMS centre address unknown: set it with AT+CSCA or check the SIM",
        331 => "no network service: check the antenna, the signal and the SIM's registration",
        332 => "network timeout",
        340 => "no +CNMA acknowledgement expected",
        500 => "unknown error",
        _ => return None,
    })
}

/// Words for a `+CME ERROR` code (3GPP TS 27.007 §9.2).
pub fn cme_reason(code: u32) -> Option<&'static str> {
    Some(match code {
        0 => "phone failure",
        1 => "no connection to phone",
        3 => "operation not allowed",
        4 => "operation not supported",
        5 => "PH-SIM PIN required",
        10 => "SIM not inserted",
        11 => "SIM PIN required: set pin_file or pin_env in [sms.modem]",
        12 => "SIM PUK required: unlock the SIM in a phone",
        13 => "SIM failure",
        14 => "SIM busy",
        15 => "SIM wrong",
        16 => "incorrect password (wrong PIN)",
        17 => "SIM PIN2 required",
        18 => "SIM PUK2 required",
        20 => "memory full",
        21 => "invalid index",
        22 => "not found",
        23 => "memory failure",
        24 => "text string too long",
        25 => "invalid characters in text string",
        26 => "dial string too long",
        27 => "invalid characters in dial string",
        30 => "no network service: check the antenna, the signal and the SIM's registration",
        31 => "network timeout",
        32 => "network not allowed, emergency calls only",
        100 => "unknown error",
        _ => return None,
    })
}

/// What the reader found next.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A complete, non-empty line, trimmed.
    Line(String),
    /// The `> ` prompt for a message's text.
    Prompt,
}

/// The open serial device, with bytes read but not yet used.
#[derive(Debug)]
struct Port {
    file: File,
    pending: Vec<u8>,
}

impl Port {
    /// Opens the device without waiting for carrier and sets it raw, 8N1,
    /// no flow control, at `baud`.
    fn open(path: &Path, baud: u32) -> io::Result<Port> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut settings = termios::tcgetattr(&fd).map_err(|e| {
            if e == rustix::io::Errno::NOTTY {
                io::Error::other("not a serial device")
            } else {
                e.into()
            }
        })?;
        settings.make_raw();
        settings.control_modes.insert(ControlModes::CLOCAL | ControlModes::CREAD);
        settings
            .control_modes
            .remove(ControlModes::CSTOPB | ControlModes::PARENB | ControlModes::CRTSCTS);
        settings.input_modes.remove(InputModes::IXON | InputModes::IXOFF);
        settings.set_speed(baud)?;
        termios::tcsetattr(&fd, OptionalActions::Now, &settings)?;
        // Input only: output may still hold the ESC with which the previous
        // session was closed, and it must reach the modem.
        termios::tcflush(&fd, QueueSelector::IFlush)?;
        Ok(Port { file: File::from(fd), pending: Vec::new() })
    }

    /// Waits until the device is ready for `flags`, or the deadline.
    fn wait(&self, flags: PollFlags, deadline: Instant) -> Result<(), StepError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StepError::Timeout);
            }
            let timeout = Timespec::try_from(left).unwrap_or(Timespec { tv_sec: 3600, tv_nsec: 0 });
            let mut fds = [PollFd::new(&self.file, flags)];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(0) => continue,
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(StepError::Io(e.into())),
            }
        }
    }

    fn write_all(&mut self, mut bytes: &[u8], deadline: Instant) -> Result<(), StepError> {
        while !bytes.is_empty() {
            match self.file.write(bytes) {
                Ok(0) => return Err(StepError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(PollFlags::OUT, deadline)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StepError::Io(e)),
            }
        }
        Ok(())
    }

    /// Drops whatever arrived unasked (late answers, unsolicited codes).
    fn discard_input(&mut self) -> io::Result<()> {
        self.pending.clear();
        termios::tcflush(&self.file, QueueSelector::IFlush)?;
        Ok(())
    }

    /// The next line, or the prompt when `want_prompt`, by the deadline.
    fn next_event(&mut self, deadline: Instant, want_prompt: bool) -> Result<Event, StepError> {
        loop {
            if let Some(event) = self.take_event(want_prompt) {
                return Ok(event);
            }
            self.wait(PollFlags::IN, deadline)?;
            let mut buf = [0u8; 512];
            match self.file.read(&mut buf) {
                Ok(0) => return Err(StepError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => {
                    self.pending.extend_from_slice(&buf[..n]);
                    if self.pending.len() > MAX_PENDING {
                        let excess = self.pending.len() - MAX_PENDING;
                        self.pending.drain(..excess);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(StepError::Io(e)),
            }
        }
    }

    fn take_event(&mut self, want_prompt: bool) -> Option<Event> {
        while let Some(end) = self.pending.iter().position(|b| matches!(b, b'\r' | b'\n')) {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]).trim().to_string();
            if !text.is_empty() {
                return Some(Event::Line(text));
            }
        }
        if want_prompt && self.pending.trim_ascii() == b">" {
            self.pending.clear();
            return Some(Event::Prompt);
        }
        None
    }

    /// Sends one command line and waits for its final result code; returns
    /// the lines in between (information and stray codes alike).
    fn command(&mut self, line: &str, timeout: Duration) -> Result<Vec<String>, StepError> {
        let deadline = Instant::now() + timeout;
        self.write_all(format!("{line}\r").as_bytes(), deadline)?;
        let mut info = Vec::new();
        loop {
            match self.next_event(deadline, false)? {
                Event::Line(text) if text == line => {} // the echo
                Event::Line(text) => match Final::parse(&text) {
                    Some(Final::Ok) => return Ok(info),
                    Some(refusal) => return Err(StepError::Refused(refusal)),
                    None => info.push(text),
                },
                Event::Prompt => {}
            }
        }
    }
}

/// A failed step as the sysadmin reads it; `shown` is the command as it
/// may be printed (never with the PIN).
fn step_failure(shown: &str, error: &StepError, timeout: Duration) -> String {
    match error {
        StepError::Refused(answer) => format!("{shown} was answered {}", answer.describe()),
        StepError::Timeout => format!(
            "no answer to {shown} within {}; is the modem powered and on this port?",
            humantime::format_duration(timeout)
        ),
        StepError::Io(e) => format!("the device failed during {shown}: {e}"),
    }
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
fn exchange(settings: &Settings, state: &mut ModemState, prepared: &Prepared) -> SendOutcome {
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

impl Charset {
    /// The `AT+CSCS` command that selects it.
    fn select(self) -> &'static str {
        match self {
            Charset::Ira => "AT+CSCS=\"IRA\"",
            Charset::Ucs2 => "AT+CSCS=\"UCS2\"",
        }
    }

    /// The `AT+CSMP` command that sets the matching data coding scheme
    /// (first octet 17: SMS-SUBMIT with a relative validity period of 167,
    /// one day).
    fn coding(self) -> &'static str {
        match self {
            Charset::Ira => "AT+CSMP=17,167,0,0",
            Charset::Ucs2 => "AT+CSMP=17,167,0,8",
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(phone: &str, text: &str) -> Message {
        Message { phone: phone.to_string(), text: text.to_string() }
    }

    #[test]
    fn ascii_texts_are_written_as_they_are_with_one_ctrl_z() {
        let prepared =
            prepare(&message("+79991234567", "Lobby\u{1a}AT\u{1b}\r\n#12#0#1#1#"), true).unwrap();
        assert_eq!(prepared.charset, Charset::Ira);
        assert_eq!(prepared.command, "AT+CMGS=\"+79991234567\"\r");
        assert_eq!(prepared.body, b"LobbyAT #12#0#1#1#\x1a");
    }

    #[test]
    fn other_texts_are_hex_ucs2_number_included() {
        let prepared = prepare(&message("+79991234567", "Ж€"), true).unwrap();
        assert_eq!(prepared.charset, Charset::Ucs2);
        assert_eq!(
            prepared.command,
            "AT+CMGS=\"002B00370039003900390031003200330034003500360037\"\r"
        );
        assert_eq!(prepared.body, b"041620AC\x1a");
        assert_eq!(ucs2_hex("😀"), "D83DDE00");
        let err = prepare(&message("+79991234567", "Ж"), false).unwrap_err();
        assert!(err.contains("ucs2 = false"), "{err}");
    }

    #[test]
    fn texts_longer_than_one_sms_and_bad_numbers_are_refused() {
        assert!(prepare(&message("+79991234567", &"a".repeat(160)), true).is_ok());
        let err = prepare(&message("+79991234567", &"a".repeat(161)), true).unwrap_err();
        assert!(err.contains("161 GSM-7 characters"), "{err}");
        assert!(prepare(&message("+79991234567", &"Ж".repeat(70)), true).is_ok());
        let err = prepare(&message("+79991234567", &"Ж".repeat(71)), true).unwrap_err();
        assert!(err.contains("71 UCS-2 characters"), "{err}");
        let err = prepare(&message("+7999\"\r\x1a", "x"), true).unwrap_err();
        assert!(err.starts_with("invalid phone number"), "{err}");
    }

    #[test]
    fn final_results_are_parsed_and_explained() {
        assert_eq!(Final::parse("OK"), Some(Final::Ok));
        assert_eq!(Final::parse("+CMS ERROR: 331"), Some(Final::Cms("331".into())));
        assert_eq!(
            Final::parse("+CMS ERROR: 331").unwrap().describe(),
            "+CMS ERROR: 331 (no network service: check the antenna, the signal and the SIM's registration)"
        );
        assert_eq!(
            Final::parse("+CME ERROR: SIM PIN required").unwrap().describe(),
            "+CME ERROR: SIM PIN required"
        );
        assert_eq!(
            Final::parse("+CME ERROR: 10").unwrap().describe(),
            "+CME ERROR: 10 (SIM not inserted)"
        );
        assert_eq!(Final::parse("RING"), None);
        assert!(Final::Cms("332".into()).may_have_left());
        assert!(!Final::Cms("330".into()).may_have_left());
        for code in [310, 311, 313, 322, 330, 331, 332, 500] {
            assert!(cms_reason(code).is_some(), "{code}");
        }
        for code in [10, 11, 13, 16, 30] {
            assert!(cme_reason(code).is_some(), "{code}");
        }
    }

    #[test]
    fn configuration_errors_name_the_key() {
        #[derive(Debug, Deserialize)]
        struct File {
            modem: ModemConfig,
        }
        let build = |text: &str| {
            let file: File = toml::from_str(text).unwrap();
            ModemSender::from_config(&file.modem, Path::new("/etc/jobctl")).unwrap_err().to_string()
        };
        assert_eq!(
            build("[modem]\ndevice = \"ttyUSB0\"\n"),
            "sms.modem.device: \"ttyUSB0\" is not a full path; write the device like \"/dev/ttyUSB0\" or \"/dev/serial/by-id/…\""
        );
        assert!(build("[modem]\ndevice = \"/dev/ttyUSB0\"\nbaud = 1000\n")
            .starts_with("sms.modem.baud: 1000 is not a serial line speed"));
        assert!(build("[modem]\ndevice = \"/dev/ttyUSB0\"\npin_env = \"SW_TEST_SURELY_UNSET\"\n")
            .starts_with(
                "sms.modem.pin_env: environment variable SW_TEST_SURELY_UNSET is not set"
            ));
        let err = toml::from_str::<File>("[modem]\ndevice = \"/dev/ttyUSB0\"\nspeed = 9600\n")
            .unwrap_err();
        assert!(err.message().contains("unknown field `speed`"), "{err}");
    }

    #[test]
    fn a_pin_that_is_not_digits_is_refused_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sim.pin"), "12ab\n").unwrap();
        let config: ModemConfig =
            toml::from_str("device = \"/dev/ttyUSB0\"\npin_file = \"sim.pin\"\n").unwrap();
        let err = ModemSender::from_config(&config, dir.path()).unwrap_err();
        assert_eq!(err.key, "sms.modem.pin_file");
        assert!(err.message.contains("is not 4 to 8 digits"), "{}", err.message);
        assert!(!err.message.contains("12ab"));
    }
}
