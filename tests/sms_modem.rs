//! The GSM modem backend against a fake modem on a pseudo-terminal: the
//! exact bytes it writes, and how each answer (or silence) is judged.

mod support;

use signage_watchdog::sms::{Delivered, SendError, Sender};
use support::fake_modem::{FakeModem, Received, Reply};
use support::sms::{definite, message, PHONE};
/// What the backend writes when it opens the modem.
const INIT: &[u8] = b"\x1bAT\rATE0\rAT+CMGF=1\rAT+CSCS=\"IRA\"\r";

/// A sender built from `[sms.modem]` lines the way jobctl builds it.
fn sender(modem: &FakeModem, lines: &str) -> (Box<dyn Sender>, tempfile::TempDir) {
    build(&modem.path().display().to_string(), lines, None)
}

/// The same with the SIM's PIN in a mode-600 `pin_file` next to the rules.
fn sender_with_pin(modem: &FakeModem, pin: &str) -> (Box<dyn Sender>, tempfile::TempDir) {
    build(&modem.path().display().to_string(), "pin_file = \"sim.pin\"", Some(pin))
}

fn build(device: &str, lines: &str, pin: Option<&str>) -> (Box<dyn Sender>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    if let Some(pin) = pin {
        support::write_secret(&dir.path().join("sim.pin"), &format!("{pin}\n"));
    }
    let text = format!("[sms]\nbackend = \"modem\"\n[sms.modem]\ndevice = \"{device}\"\n{lines}\n");
    (support::sms::sender(&text, dir.path()), dir)
}

/// Short timeouts, for tests where the modem stays silent.
const QUICK: &str = "command_timeout = \"300ms\"\nsend_timeout = \"300ms\"";

fn cmgs(text: &str) -> Vec<u8> {
    format!("AT+CMGS=\"{PHONE}\"\r{text}\x1a").into_bytes()
}

fn delivered(reference: &str) -> Result<Delivered, SendError> {
    Ok(Delivered { backend: "modem".into(), reference: Some(reference.into()) })
}

/// A failure known not to have sent, in `modem`'s name, as the backend
/// reports it.
fn refused(modem: &FakeModem, reason: &str) -> Result<Delivered, SendError> {
    Err(SendError::Definite { reason: format!("modem {}: {reason}", modem.path().display()) })
}

/// A failure that may have sent, in `modem`'s name.
fn unsure(modem: &FakeModem, reason: &str) -> Result<Delivered, SendError> {
    Err(SendError::Uncertain { reason: format!("modem {}: {reason}", modem.path().display()) })
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn received(text: &str) -> Received {
    Received { number: PHONE.into(), text: text.into(), ucs2: false }
}

#[tokio::test]
async fn writes_exactly_the_initialisation_and_the_message() {
    let modem = FakeModem::start();
    let (sender, _dir) = sender(&modem, "");

    let outcome = sender.send(&message("#12#0#1#1#")).await;

    assert_eq!(outcome, delivered("1"));
    let expected = concat(&[INIT, &cmgs("#12#0#1#1#")]);
    assert_eq!(shown(&modem.transcript_at_least(expected.len())), shown(&expected));
    assert_eq!(modem.received(), vec![received("#12#0#1#1#")]);
}

#[tokio::test]
async fn a_device_name_with_ctrl_z_cannot_end_the_message_early() {
    let modem = FakeModem::start();
    let (sender, _dir) = sender(&modem, "");
    let name = "Lobby\x1aAT+CMGS=\"+10000000000\"\r\x1bpwn\r\n#02#0#";

    let outcome = sender.send(&message(&format!("Reboot {name}"))).await;

    assert_eq!(outcome, delivered("1"));
    let clean = "Reboot LobbyAT+CMGS=\"+10000000000\" pwn #02#0#";
    let expected = concat(&[INIT, &cmgs(clean)]);
    let transcript = modem.transcript_at_least(expected.len());
    assert_eq!(shown(&transcript), shown(&expected));
    assert_eq!(transcript.iter().filter(|&&b| b == 0x1a).count(), 1);
    assert_eq!(
        transcript.iter().filter(|&&b| b == 0x1b).count(),
        1,
        "only the ESC of the initialisation"
    );
    assert_eq!(modem.received(), vec![received(clean)]);
}

#[tokio::test]
async fn unsolicited_codes_and_an_echo_that_stays_on_change_nothing() {
    let modem = FakeModem::start();
    modem.chatter();
    modem.ignore_ate0();
    let (sender, _dir) = sender(&modem, "");

    assert_eq!(sender.send(&message("#12#0#1#1#")).await, delivered("1"));
    // A text that reads like a result code, echoed back, is not taken for one.
    assert_eq!(sender.send(&message("OK")).await, delivered("2"));

    let expected = concat(&[INIT, &cmgs("#12#0#1#1#"), &cmgs("OK")]);
    assert_eq!(shown(&modem.transcript_at_least(expected.len())), shown(&expected));
    assert_eq!(modem.received(), vec![received("#12#0#1#1#"), received("OK")]);
}

#[tokio::test]
async fn an_error_after_the_text_is_definite_and_explained() {
    let modem = FakeModem::start();
    modem.push_reply(Reply::FailAfterText(331));
    let (sender, _dir) = sender(&modem, "");

    let outcome = sender.send(&message("#01#0#")).await;

    assert_eq!(
        outcome,
        refused(
            &modem,
            "the message was refused: +CMS ERROR: 331 (no network service: check the antenna, the signal and the SIM's registration)"
        )
    );
    // The modem answered, so it is kept open: no second initialisation.
    assert_eq!(sender.send(&message("#01#0#")).await, delivered("1"));
    let expected = concat(&[INIT, &cmgs("#01#0#"), &cmgs("#01#0#")]);
    assert_eq!(shown(&modem.transcript_at_least(expected.len())), shown(&expected));
}

#[tokio::test]
async fn an_error_instead_of_the_prompt_is_definite() {
    let modem = FakeModem::start();
    modem.push_reply(Reply::RefuseBeforeText(330));
    let (sender, _dir) = sender(&modem, "");

    let reason = definite(sender.send(&message("#01#0#")).await);

    assert!(
        reason.ends_with("AT+CMGS=\"+79991234567\" was answered +CMS ERROR: 330 (SMS centre address unknown: set it with AT+CSCA or check the SIM)"),
        "{reason}"
    );
    assert!(modem.received().is_empty());
}

#[tokio::test]
async fn silence_after_ctrl_z_is_uncertain_and_the_modem_is_reopened() {
    let modem = FakeModem::start();
    modem.push_reply(Reply::SilentAfterText);
    let (sender, _dir) = sender(&modem, QUICK);

    let outcome = sender.send(&message("#12#0#1#1#")).await;

    assert_eq!(
        outcome,
        unsure(
            &modem,
            "no answer within 300ms after the text was handed over; the message may have been sent"
        )
    );
    assert_eq!(sender.send(&message("#01#0#")).await, delivered("1"));
    // Closed with ESC after the silence, then opened and initialised anew.
    let expected = concat(&[INIT, &cmgs("#12#0#1#1#"), b"\x1b", INIT, &cmgs("#01#0#")]);
    assert_eq!(shown(&modem.transcript_at_least(expected.len())), shown(&expected));
}

#[tokio::test]
async fn no_prompt_is_definite_and_cancelled_with_esc() {
    let modem = FakeModem::start();
    modem.push_reply(Reply::NoPrompt);
    let (sender, _dir) = sender(&modem, QUICK);

    let outcome = sender.send(&message("#12#0#1#1#")).await;

    assert_eq!(
        outcome,
        refused(
            &modem,
            "no > prompt after AT+CMGS=\"+79991234567\" within 300ms; the text was not written"
        )
    );
    let expected = concat(&[INIT, format!("AT+CMGS=\"{PHONE}\"\r").as_bytes(), b"\x1b"]);
    assert_eq!(shown(&modem.transcript_at_least(expected.len())), shown(&expected));
    assert!(modem.received().is_empty());
}

#[tokio::test]
async fn a_modem_that_does_not_answer_at_all_is_named() {
    let modem = FakeModem::start();
    modem.go_silent();
    let (sender, _dir) = sender(&modem, QUICK);

    let outcome = sender.send(&message("#12#0#1#1#")).await;

    assert_eq!(
        outcome,
        refused(&modem, "no answer to AT within 300ms; is the modem powered and on this port?")
    );
}

#[tokio::test]
async fn two_sends_at_once_are_serialised() {
    let modem = FakeModem::start();
    let (sender, _dir) = sender(&modem, "");
    let (first, second) = (message("#01#0#"), message("#02#0#"));

    let (a, b) = tokio::join!(sender.send(&first), sender.send(&second));

    let mut references = [a.unwrap().reference.unwrap(), b.unwrap().reference.unwrap()];
    references.sort();
    assert_eq!(references, ["1", "2"]);
    let one_then_two = concat(&[INIT, &cmgs("#01#0#"), &cmgs("#02#0#")]);
    let two_then_one = concat(&[INIT, &cmgs("#02#0#"), &cmgs("#01#0#")]);
    let transcript = modem.transcript_at_least(one_then_two.len());
    assert!(
        transcript == one_then_two || transcript == two_then_one,
        "interleaved: {:?}",
        shown(&transcript)
    );
}

#[tokio::test]
async fn cyrillic_goes_as_ucs2_hex_and_ascii_switches_back() {
    let modem = FakeModem::start();
    let (sender, _dir) = sender(&modem, "");

    assert_eq!(sender.send(&message("Перезагрузка")).await, delivered("1"));
    assert_eq!(sender.send(&message("#01#0#")).await, delivered("2"));

    let number: String = PHONE.chars().map(|c| format!("{:04X}", c as u32)).collect();
    let text: String = "Перезагрузка".encode_utf16().map(|u| format!("{u:04X}")).collect();
    let expected = concat(&[
        INIT,
        b"AT+CSCS=\"UCS2\"\rAT+CSMP=17,167,0,8\r",
        format!("AT+CMGS=\"{number}\"\r{text}\x1a").as_bytes(),
        b"AT+CSCS=\"IRA\"\rAT+CSMP=17,167,0,0\r",
        &cmgs("#01#0#"),
    ]);
    assert_eq!(shown(&modem.transcript_at_least(expected.len())), shown(&expected));
    assert_eq!(
        modem.received(),
        vec![
            Received { number: PHONE.into(), text: "Перезагрузка".into(), ucs2: true },
            received("#01#0#")
        ]
    );
}

#[tokio::test]
async fn the_pin_is_entered_when_asked_for() {
    let modem = FakeModem::start();
    modem.require_pin("4321");
    let (sender, _dir) = sender_with_pin(&modem, "4321");

    assert_eq!(sender.send(&message("#01#0#")).await, delivered("1"));

    let expected = concat(&[
        b"\x1bAT\rATE0\rAT+CMGF=1\rAT+CPIN?\rAT+CPIN=\"4321\"\rAT+CSCS=\"IRA\"\r",
        &cmgs("#01#0#"),
    ]);
    assert_eq!(shown(&modem.transcript_at_least(expected.len())), shown(&expected));
}

#[tokio::test]
async fn a_refused_pin_is_never_offered_again() {
    let modem = FakeModem::start();
    modem.require_pin("4321");
    let (sender, _dir) = sender_with_pin(&modem, "0000");

    let first = sender.send(&message("#01#0#")).await;
    let second = sender.send(&message("#01#0#")).await;
    // A SIGHUP builds the sender again from the same settings: it must
    // remember the refusal too.
    let (reloaded, _dir2) = sender_with_pin(&modem, "0000");
    let third = reloaded.send(&message("#01#0#")).await;

    for outcome in [first, second, third] {
        let reason = definite(outcome);
        assert!(reason.contains("the SIM refused the configured PIN (+CME ERROR: 16 (incorrect password (wrong PIN)))"), "{reason}");
        assert!(!reason.contains("0000"), "{reason}");
    }
    assert_eq!(modem.pin_attempts(), 1);
    let expected = b"\x1bAT\rATE0\rAT+CMGF=1\rAT+CPIN?\rAT+CPIN=\"0000\"\r\x1b";
    assert_eq!(shown(&modem.transcript_at_least(expected.len())), shown(expected));
}

#[tokio::test]
async fn a_missing_device_and_a_long_text_are_definite_before_any_byte() {
    let (missing, _dir) = build("/nonexistent/ttyUSB9", "", None);
    let outcome = missing.send(&message("#01#0#")).await;
    assert_eq!(
        outcome,
        Err(SendError::Definite {
            reason: "modem /nonexistent/ttyUSB9: cannot open the device: No such file or directory (os error 2)".into()
        })
    );

    let modem = FakeModem::start();
    let (modem_sender, _dir) = sender(&modem, "");
    let outcome = modem_sender.send(&message(&"x".repeat(161))).await;
    assert!(
        matches!(outcome, Err(SendError::Definite { ref reason }) if reason.contains("161 GSM-7 characters")),
        "{outcome:?}"
    );
    assert!(modem.transcript().is_empty());
}
