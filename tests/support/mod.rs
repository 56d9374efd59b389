//! Test peers shared by the integration tests: real servers on loopback
//! standing in for the services signage-watchdog talks to.
// Each integration test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod fake_gateway;
pub mod fake_modem;
pub mod prometheus;

/// Whether a program a test needs is there (`found`). When it is not,
/// prints why the calling test is skipped and returns false; under CI (the
/// `CI` environment variable is set, as `.ci/run` does) panics instead, so
/// that a missing package fails the run rather than hiding tests.
pub fn installed(found: bool, missing: &str) -> bool {
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{missing} (CI is set, so the tests that need it must not be skipped)");
    }
    eprintln!("skipping: {missing}");
    false
}

/// The `[sms]` table of a rules file's `text`, read as jobctl reads it;
/// panics with the text when it does not parse.
pub fn sms_config(text: &str) -> signage_watchdog::sms::SmsConfig {
    #[derive(serde::Deserialize)]
    struct File {
        sms: signage_watchdog::sms::SmsConfig,
    }
    let file: File = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    file.sms
}

/// A player as the AddReality API lists it, activated and playing.
pub fn addreality_device(id: i64, name: &str, online: bool) -> serde_json::Value {
    serde_json::json!({
        "id": id, "name": name,
        "connection_state": if online { "online" } else { "offline" },
        "player_status": "playback", "last_online": "2025-05-26T13:29:08.166738Z",
        "activation_state": true, "player_version": "4.1.76", "time_zone": "+03:00"
    })
}

/// Whether `program --version` runs, for [`installed`].
pub fn runs(program: &str) -> bool {
    std::process::Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}
