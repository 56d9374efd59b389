//! The modem's final result codes (`OK`, `ERROR`, `+CMS ERROR: <n>`,
//! `+CME ERROR: <n>`) and the words for their numbers.
//!
//! A code alone ("331") tells a sysadmin nothing; the journal says "no
//! network service" instead. The tables follow the 3GPP specifications and
//! are pure data, kept out of the way of the exchange that reads them.

/// A final result code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Final {
    Ok,
    Error,
    /// `+CMS ERROR: <n>` (SMS service), the code or the modem's own words.
    Cms(String),
    /// `+CME ERROR: <n>` (equipment), the code or the modem's own words.
    Cme(String),
}

impl Final {
    /// The final result code a line is, if it is one.
    pub(super) fn parse(line: &str) -> Option<Final> {
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
    pub(super) fn describe(&self) -> String {
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
    pub(super) fn may_have_left(&self) -> bool {
        matches!(self, Final::Cms(code) if code == "332")
            || matches!(self, Final::Cme(code) if code == "31")
    }
}

/// Words for a `+CMS ERROR` code (3GPP TS 27.005 §3.2.5, and the network's
/// RP/TP causes of TS 24.011 and TS 23.040 that modems pass on).
pub(crate) fn cms_reason(code: u32) -> Option<&'static str> {
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
pub(crate) fn cme_reason(code: u32) -> Option<&'static str> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
