//! What an SMS costs: `[sms] price = { per_message = 3.5, currency = "RUB" }`.
//!
//! A rule that power-cycles a whole platform every night can cost real
//! money, and a sysadmin wants to know before switching it on. The price
//! is only read by `jobctl test-rule --replay`, which estimates what a job
//! would have cost over Prometheus's history: the number of SMS segments
//! it would have sent times this price. Nothing is ever charged or sent
//! because of it, so it is optional and has no default.

use serde::Deserialize;
use toml::Spanned;

use super::SmsConfigError;

/// The highest price accepted for one segment: anything above is a typo
/// (a price in kopecks written as roubles, say).
const MAX_PER_MESSAGE: f64 = 1_000_000.0;

/// `[sms] price`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrice {
    /// The price of one SMS segment (a text of two segments costs twice),
    /// a decimal number such as `3.5`.
    per_message: Spanned<f64>,
    /// The currency, as an ISO 4217 code (`"RUB"`, `"EUR"`).
    currency: Spanned<String>,
}

/// The checked price of one SMS segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    /// The price of one segment, zero or more.
    pub per_segment: f64,
    /// The ISO 4217 currency code, three capital letters.
    pub currency: String,
}

impl Price {
    /// `7.00 RUB`: an amount in this price's currency, to the hundredth.
    pub fn amount(&self, value: f64) -> String {
        format!("{value:.2} {}", self.currency)
    }
}

impl RawPrice {
    /// The price, or what is wrong with it, placed at the faulty value.
    pub(crate) fn check(&self) -> Result<Price, SmsConfigError> {
        let per_segment = *self.per_message.get_ref();
        if !per_segment.is_finite() || !(0.0..=MAX_PER_MESSAGE).contains(&per_segment) {
            return Err(SmsConfigError::new(
                "sms.price.per_message",
                format!(
                    "must be a number from 0 to {MAX_PER_MESSAGE}: the price of one SMS segment, e.g. 3.5"
                ),
                Some(self.per_message.span()),
            ));
        }
        let currency = self.currency.get_ref();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(SmsConfigError::new(
                "sms.price.currency",
                format!(
                    "{currency:?} is not a currency code: write its ISO 4217 code, three capital letters such as \"RUB\" or \"EUR\""
                ),
                Some(self.currency.span()),
            ));
        }
        Ok(Price { per_segment, currency: currency.clone() })
    }
}

#[cfg(test)]
mod tests {
    use crate::config_file::SourceFile;
    use crate::sms::SmsConfig;

    #[derive(serde::Deserialize)]
    struct File {
        sms: SmsConfig,
    }

    fn checked(price: &str) -> Result<Option<super::Price>, String> {
        let text = format!("[sms]\nbackend = \"log\"\nprice = {price}\n");
        let file: File = toml::from_str(&text).map_err(|err| err.message().to_string())?;
        let source = SourceFile::from_text("rules.toml", text.clone());
        file.sms.price().map_err(|err| err.in_file(&source).to_string())
    }

    #[test]
    fn a_price_is_a_number_and_a_currency_code() {
        let price = checked(r#"{ per_message = 3.5, currency = "RUB" }"#).unwrap().unwrap();
        assert_eq!((price.per_segment, price.currency.as_str()), (3.5, "RUB"));
        assert_eq!(price.amount(7.0), "7.00 RUB");
        let whole = checked(r#"{ per_message = 2, currency = "EUR" }"#).unwrap().unwrap();
        assert_eq!(whole.per_segment, 2.0);
        let free = checked(r#"{ per_message = 0.0, currency = "EUR" }"#).unwrap().unwrap();
        assert_eq!(free.per_segment, 0.0);
    }

    #[test]
    fn bad_prices_are_placed_and_explained() {
        assert_eq!(
            checked(r#"{ per_message = -1.0, currency = "RUB" }"#).unwrap_err(),
            "rules.toml:3:25: sms.price.per_message: must be a number from 0 to 1000000: \
             the price of one SMS segment, e.g. 3.5"
        );
        assert_eq!(
            checked(r#"{ per_message = nan, currency = "RUB" }"#).unwrap_err(),
            "rules.toml:3:25: sms.price.per_message: must be a number from 0 to 1000000: \
             the price of one SMS segment, e.g. 3.5"
        );
        assert_eq!(
            checked(r#"{ per_message = 3.5, currency = "rub" }"#).unwrap_err(),
            "rules.toml:3:41: sms.price.currency: \"rub\" is not a currency code: write its \
             ISO 4217 code, three capital letters such as \"RUB\" or \"EUR\""
        );
        assert!(checked(r#"{ per_message = 3.5 }"#)
            .unwrap_err()
            .contains("missing field `currency`"));
        assert!(checked(r#"{ per_message = 3.5, currency = "RUB", per_segment = 1.0 }"#)
            .unwrap_err()
            .contains("unknown field `per_segment`"));
    }
}
