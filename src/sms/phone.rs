//! Phone numbers, validated and normalised once.
//!
//! Every number jobctl sends to (a socket's SIM, a person notified by SMS, a
//! number typed on the command line) goes through [`PhoneNumber::parse`], so
//! the rest of the program holds only E.164 numbers (`+` then 8 to 15
//! digits, no leading zero in the country code). People write numbers with
//! spaces, dashes and parentheses (`+7 (999) 123-45-67`); those are accepted
//! and dropped. A national form (`8 999 …`, `0049 …`) is refused rather than
//! guessed, because a wrong guess sends a power command to a stranger.

use std::fmt;
use std::str::FromStr;

/// The fewest digits accepted after the `+`; shorter numbers are short codes
/// or typos, never a SIM in a GSM socket.
const MIN_DIGITS: usize = 8;
/// The most digits E.164 allows.
const MAX_DIGITS: usize = 15;
/// The form every message shows as an example.
const EXAMPLE: &str = "+79991234567";

/// An E.164 phone number: `+` followed by 8 to 15 digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

/// Why text is not a phone number. Each message quotes the input and shows
/// the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// No leading `+`: a national or local form.
    #[error(
        "invalid phone number {input:?}: write it in international form with a leading + and the country code, like \"{EXAMPLE}\""
    )]
    NoPlus {
        /// The text as given.
        input: String,
    },
    /// A character other than digits and the accepted separators.
    #[error(
        "invalid phone number {input:?}: {found:?} is not allowed; use + and digits (spaces, dashes and parentheses are ignored), like \"{EXAMPLE}\""
    )]
    BadCharacter {
        /// The text as given.
        input: String,
        /// The first offending character.
        found: char,
    },
    /// Too few or too many digits.
    #[error(
        "invalid phone number {input:?}: it has {digits} digits after the +, E.164 numbers have {MIN_DIGITS} to {MAX_DIGITS}, like \"{EXAMPLE}\""
    )]
    WrongLength {
        /// The text as given.
        input: String,
        /// How many digits it has.
        digits: usize,
    },
    /// `+0…`: no country code starts with 0.
    #[error(
        "invalid phone number {input:?}: no country code starts with 0; write it like \"{EXAMPLE}\""
    )]
    LeadingZero {
        /// The text as given.
        input: String,
    },
}

impl PhoneNumber {
    /// Validates and normalises a number: separators (spaces, `-`, `(`, `)`,
    /// `.`) are dropped, the rest must be `+` and 8 to 15 digits.
    pub fn parse(input: &str) -> Result<PhoneNumber, PhoneError> {
        let trimmed = input.trim();
        let Some(rest) = trimmed.strip_prefix('+') else {
            if let Some(found) = trimmed.chars().find(|c| !is_digit_or_separator(*c)) {
                return Err(PhoneError::BadCharacter { input: input.to_string(), found });
            }
            return Err(PhoneError::NoPlus { input: input.to_string() });
        };
        let mut digits = String::with_capacity(rest.len());
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                c if is_separator(c) => {}
                found => return Err(PhoneError::BadCharacter { input: input.to_string(), found }),
            }
        }
        if !(MIN_DIGITS..=MAX_DIGITS).contains(&digits.len()) {
            return Err(PhoneError::WrongLength { input: input.to_string(), digits: digits.len() });
        }
        if digits.starts_with('0') {
            return Err(PhoneError::LeadingZero { input: input.to_string() });
        }
        Ok(PhoneNumber(format!("+{digits}")))
    }

    /// The number with its `+`, e.g. `+79991234567`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits alone, e.g. `79991234567` (smstools' `To:` header wants this).
    pub(crate) fn digits(&self) -> &str {
        &self.0[1..]
    }
}

fn is_separator(c: char) -> bool {
    matches!(c, ' ' | '-' | '(' | ')' | '.')
}

fn is_digit_or_separator(c: char) -> bool {
    c.is_ascii_digit() || is_separator(c)
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for PhoneNumber {
    type Err = PhoneError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PhoneNumber::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for PhoneNumber {
    /// Lets configuration structs hold a `PhoneNumber` directly; `toml` then
    /// places the error at the value.
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        PhoneNumber::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_are_dropped() {
        let phone = PhoneNumber::parse(" +7 (999) 123-45.67 ").unwrap();
        assert_eq!(phone.as_str(), "+79991234567");
        assert_eq!(phone.digits(), "79991234567");
        assert_eq!(phone.to_string(), "+79991234567");
    }

    #[test]
    fn bounds_are_those_of_e164() {
        assert!(PhoneNumber::parse("+12345678").is_ok());
        assert!(PhoneNumber::parse("+123456789012345").is_ok());
        assert_eq!(
            PhoneNumber::parse("+1234567").unwrap_err().to_string(),
            "invalid phone number \"+1234567\": it has 7 digits after the +, E.164 numbers have 8 to 15, like \"+79991234567\""
        );
        assert!(matches!(
            PhoneNumber::parse("+1234567890123456"),
            Err(PhoneError::WrongLength { digits: 16, .. })
        ));
    }

    #[test]
    fn national_forms_and_letters_are_refused() {
        assert_eq!(
            PhoneNumber::parse("8 999 123-45-67").unwrap_err().to_string(),
            "invalid phone number \"8 999 123-45-67\": write it in international form with a leading + and the country code, like \"+79991234567\""
        );
        assert_eq!(
            PhoneNumber::parse("+7999CALLME").unwrap_err(),
            PhoneError::BadCharacter { input: "+7999CALLME".into(), found: 'C' }
        );
        assert_eq!(
            PhoneNumber::parse("tel:+79991234567").unwrap_err(),
            PhoneError::BadCharacter { input: "tel:+79991234567".into(), found: 't' }
        );
        assert!(matches!(
            PhoneNumber::parse("+0079991234567"),
            Err(PhoneError::LeadingZero { .. })
        ));
        assert!(matches!(
            PhoneNumber::parse("++79991234567"),
            Err(PhoneError::BadCharacter { .. })
        ));
        assert!(matches!(PhoneNumber::parse(""), Err(PhoneError::NoPlus { .. })));
    }
}
