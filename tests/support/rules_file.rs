//! Rules files for the jobctl tests, put together from the pieces most of
//! them share: the head (Prometheus and the journal), an `[sms]` table that
//! sends through the fake gateway, sockets, and a job acting on offline
//! players.
//!
//! Each piece is TOML as a sysadmin writes it, and every piece but the job
//! ends with a blank line, so that pieces joined with `+` make a file with
//! one blank line between tables. Each piece's doc says how many lines it
//! takes, for tests that check the `line:column` of an error.

/// What a SimPal D210 receives for `power_cycle minutes = 1`.
pub(crate) const POWER_CYCLE_1: &str = "#12#0#1#1#";

/// A job's `action` that power-cycles the socket for one minute.
pub(crate) const POWER_CYCLE_ACTION: &str = r#"{ command = "power_cycle", minutes = 1 }"#;

/// `[prometheus]` at `url`, evaluated every `interval`, with queries
/// timing out after `timeout`, then `[journal]` at `journal`: 8 lines.
pub(crate) fn head(url: &str, interval: &str, timeout: &str, journal: &str) -> String {
    format!(
        "[prometheus]\nurl = \"{url}\"\ninterval = \"{interval}\"\ntimeout = \"{timeout}\"\n\n\
         [journal]\npath = \"{journal}\"\n\n"
    )
}

/// `[sms]` over HTTP with the fake gateway's preset at `url`, its key read
/// from `sms.key` next to the rules file, 2 s for an answer, and `more`
/// (whole lines) at the end of `[sms.http]`: 9 lines and those of `more`.
pub(crate) fn gateway_sms(url: &str, more: &str) -> String {
    format!(
        "[sms]\nbackend = \"http\"\n\n\
         [sms.http]\npreset = \"gateway\"\nurl = \"{url}\"\nkey_file = \"sms.key\"\ntimeout = \"2s\"\n\
         {more}\n"
    )
}

/// A `[[sockets]]` table: `name`, reached at `phone`, of `model`, powering
/// device `device` of platform `platform`: 6 lines.
pub(crate) fn socket(name: &str, phone: &str, model: &str, platform: &str, device: &str) -> String {
    format!(
        "[[sockets]]\nname = \"{name}\"\nphone = \"{phone}\"\nmodel = \"{model}\"\n\
         powers = {{ platform_id = \"{platform}\", device_id = \"{device}\" }}\n\n"
    )
}

/// A `[[jobs]]` table `name` doing `action` to each player of `platform`
/// that is offline (`addreality_device_online == 0`), once it has been for
/// `hold`, or at once without: 7 lines, or 8 with `for` on the 7th.
pub(crate) fn offline_job(name: &str, platform: &str, hold: Option<&str>, action: &str) -> String {
    let hold = hold.map(|hold| format!("for = \"{hold}\"\n")).unwrap_or_default();
    format!(
        "[[jobs]]\nname = \"{name}\"\ndevices = {{ platform_id = \"{platform}\" }}\n\
         metric = \"addreality_device_online\"\nop = \"==\"\nvalue = 0\n{hold}action = {action}\n"
    )
}
