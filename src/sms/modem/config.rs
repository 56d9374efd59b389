//! The `[sms.modem]` table as the rules file writes it, and its checks:
//! the device path, the line speed, the timeouts and where the SIM's PIN is.
//!
//! Kept apart from the exchange with the modem so that loading the rules
//! ([`crate::sms::SmsConfig::check`]) runs the very checks a sender is
//! built with, without reading the PIN or touching the device.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config_file::HumanDuration;
use crate::secret::{Secret, SecretSource};
use crate::sms::{positive_duration, SmsConfigError};

/// The line speed when `baud` is not set: what most USB GSM modems use.
pub(crate) const DEFAULT_BAUD: u32 = 115_200;
/// How long the modem has to answer a command (or show the `> ` prompt),
/// by default. Modems answer in milliseconds; seconds mean it is gone.
pub(crate) const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the network has to take a message after Ctrl-Z, by default.
/// 27.005 leaves it open; real modems answer within a minute or give up.
pub(crate) const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Whether non-ASCII texts are sent as UCS-2 when `ucs2` is not set.
pub(crate) const DEFAULT_UCS2: bool = true;
/// Line speeds a serial driver accepts everywhere.
const BAUD_RATES: [u32; 13] =
    [300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115_200, 230_400, 460_800, 921_600];

/// The `[sms.modem]` table, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModemConfig {
    /// The modem's serial device, as a full path. Prefer a stable
    /// `/dev/serial/by-id/…` link over `/dev/ttyUSB0`, whose number can
    /// change when USB devices come and go.
    pub(crate) device: Spanned<PathBuf>,
    /// Line speed in baud. Default [`DEFAULT_BAUD`]; USB modems mostly
    /// ignore it, modems on a real serial port need the right one.
    pub(crate) baud: Option<Spanned<u32>>,
    /// File holding the SIM's PIN (4 to 8 digits), relative to the rules
    /// file; only for a SIM that asks for one. Keep it mode 600.
    pub(crate) pin_file: Option<Spanned<PathBuf>>,
    /// Environment variable holding the SIM's PIN, instead of `pin_file`.
    pub(crate) pin_env: Option<Spanned<String>>,
    /// Send texts that are not plain ASCII GSM-7 as UCS-2 (hex-encoded after
    /// `AT+CSCS="UCS2"`). Default [`DEFAULT_UCS2`]; `false` refuses them, for
    /// modems that mishandle UCS-2.
    pub(crate) ucs2: Option<bool>,
    /// Time the modem has to answer each command and to show the `> `
    /// prompt; longer than zero. Default [`DEFAULT_COMMAND_TIMEOUT`].
    pub(crate) command_timeout: Option<Spanned<HumanDuration>>,
    /// Time the network has to take a message after its text was handed
    /// over; silence past it is an uncertain send. Longer than zero.
    /// Default [`DEFAULT_SEND_TIMEOUT`].
    pub(crate) send_timeout: Option<Spanned<HumanDuration>>,
}

/// A refusal of `sms.modem.<key>`.
pub(super) fn err(
    key: &str,
    message: impl Into<String>,
    span: Option<std::ops::Range<usize>>,
) -> SmsConfigError {
    SmsConfigError::new(&format!("sms.modem.{key}"), message, span)
}

/// Everything an exchange needs, fixed when the configuration is loaded.
#[derive(Debug)]
pub(super) struct Settings {
    pub(super) device: PathBuf,
    pub(super) baud: u32,
    pub(super) pin: Option<Secret>,
    pub(super) ucs2: bool,
    pub(super) command_timeout: Duration,
    pub(super) send_timeout: Duration,
}

/// `[sms.modem]` checked, without its PIN, and where the PIN is.
pub(super) fn settings(
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

/// Where the PIN is read from.
pub(super) struct PinSource {
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
pub(super) fn load_pin(pin: &PinSource) -> Result<Secret, SmsConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sms::modem::ModemSender;

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
