//! A message checked and encoded for the modem before the device is
//! touched: the number as E.164, the text sanitised, the character set
//! chosen (IRA for plain ASCII GSM-7, UCS-2 as hex for the rest) and the
//! length held to one SMS.
//!
//! Every refusal here is definite and cheap: nothing has been written yet,
//! and the modem's lock has not even been taken.

use crate::sms::phone::PhoneNumber;
use crate::sms::text::{self, Encoding};
use crate::sms::Message;

/// Ends the text of a message.
const CTRL_Z: u8 = 0x1A;
/// Units (UTF-16) of one UCS-2 SMS.
const UCS2_SINGLE: usize = 70;

/// The character set the modem was last told to expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Charset {
    /// `AT+CSCS="IRA"` and the default `AT+CSMP` (GSM-7 on the air).
    Ira,
    /// `AT+CSCS="UCS2"` and `AT+CSMP=17,167,0,8` (UCS-2 on the air).
    Ucs2,
}

impl Charset {
    /// The `AT+CSCS` command that selects it.
    pub(super) fn select(self) -> &'static str {
        match self {
            Charset::Ira => "AT+CSCS=\"IRA\"",
            Charset::Ucs2 => "AT+CSCS=\"UCS2\"",
        }
    }

    /// The `AT+CSMP` command that sets the matching data coding scheme
    /// (first octet 17: SMS-SUBMIT with a relative validity period of 167,
    /// one day).
    pub(super) fn coding(self) -> &'static str {
        match self {
            Charset::Ira => "AT+CSMP=17,167,0,0",
            Charset::Ucs2 => "AT+CSMP=17,167,0,8",
        }
    }
}

/// A message checked and encoded for the wire, before the modem is touched.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) charset: Charset,
    /// The `AT+CMGS` line, with its carriage return.
    pub(super) command: String,
    /// The text as written after the prompt, with its Ctrl-Z.
    pub(super) body: Vec<u8>,
}

/// Checks and encodes a message; every refusal is definite, nothing was
/// written.
pub(super) fn prepare(message: &Message, ucs2_allowed: bool) -> Result<Prepared, String> {
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
pub(crate) fn ucs2_hex(text: &str) -> String {
    text.encode_utf16().map(|unit| format!("{unit:04X}")).collect()
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
}
