//! Property tests: what a modem says is outside input (its firmware, a
//! noisy line, another program on the port), so no bytes at all make the
//! port's cutting into lines ([`Port::next_event`]) or the reading of final
//! result codes ([`Final`]) panic; every line arrives whole, as sent, through
//! a real pseudo-terminal; the codes recognised are shown back with the
//! modem's own words; and whatever the modem says after a message's Ctrl-Z
//! (`+CMGS`, error codes, unsolicited lines, noise), the exchange judges it
//! as the backend's documentation says.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rustix::pty::OpenptFlags;

use super::config::Settings;
use super::exchange::{self, ModemState};
use super::port::{Event, Port};
use super::prepare::prepare;
use super::result_code::Final;
use crate::sms::{Delivered, Message, SendError};

/// The line that ends each case's bytes, so the reader knows all arrived.
const END: &str = "END-OF-CASE";

/// A pseudo-terminal: the master side to speak as the modem, the path of
/// the slave side to open as the device.
fn pseudo_terminal() -> (OwnedFd, PathBuf) {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .unwrap();
    rustix::pty::grantpt(&master).unwrap();
    rustix::pty::unlockpt(&master).unwrap();
    let name = rustix::pty::ptsname(&master, Vec::new()).unwrap();
    (master, PathBuf::from(OsString::from_vec(name.into_bytes())))
}

/// The lines `bytes` hold as the modem backend must see them: cut at every
/// CR or LF, invalid UTF-8 replaced, trimmed, empty ones dropped.
fn expected_lines(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|&b| b == b'\r' || b == b'\n')
        .map(|line| String::from_utf8_lossy(line).trim().to_string())
        .filter(|line| !line.is_empty())
        .collect()
}

/// Bytes a modem may send: any bytes, or lines of known answers and noise.
fn modem_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..1024),
        prop::collection::vec(
            (modem_line(), prop::sample::select(vec!["\r\n", "\r", "\n", ""])),
            0..16
        )
        .prop_map(|lines| lines.into_iter().flat_map(|(l, end)| (l + end).into_bytes()).collect()),
    ]
    .prop_filter("fits in the pseudo-terminal's buffer", |bytes| bytes.len() <= 1024)
    .prop_filter("holds no end-of-case line", |bytes| {
        !expected_lines(bytes).iter().any(|l| l == END)
    })
}

/// Opens the slave of a new pseudo-terminal as the device, then writes
/// `bytes` and the end-of-case line on the master side from a thread of
/// its own, so that more than the terminal buffers may be sent.
fn port_fed_with(bytes: &[u8]) -> (Port, std::thread::JoinHandle<()>) {
    let (master, path) = pseudo_terminal();
    let port = Port::open(&path, 115_200).unwrap();
    let mut sent = bytes.to_vec();
    sent.extend_from_slice(format!("\r\n{END}\r\n").as_bytes());
    let writer = std::thread::spawn(move || {
        let mut rest = &sent[..];
        while !rest.is_empty() {
            rest = &rest[rustix::io::write(&master, rest).unwrap()..];
        }
        // Held until the reader has seen everything: a closed master would
        // hang the line up.
        std::thread::park();
        drop(master);
    });
    (port, writer)
}

/// Every line up to the end-of-case line.
fn read_lines(port: &mut Port) -> Result<Vec<String>, TestCaseError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    loop {
        match port.next_event(deadline, false) {
            Ok(Event::Line(line)) if line == END => return Ok(lines),
            Ok(Event::Line(line)) => lines.push(line),
            Ok(Event::Prompt) => prop_assert!(false, "a prompt when none was wanted"),
            Err(err) => prop_assert!(false, "{:?} after {:?}", err, lines),
        }
    }
}

/// A line a modem may send: anything, or a known start and anything after.
fn modem_line() -> impl Strategy<Value = String> {
    let start = prop::sample::select(vec![
        "",
        "OK",
        "ERROR",
        "+CMS ERROR:",
        "+CME ERROR:",
        "+CMGS:",
        "RING",
        "+CMTI:",
        "^BOOT:",
        ">",
    ]);
    prop_oneof![
        any::<String>(),
        (start.clone(), any::<String>()).prop_map(|(start, rest)| format!("{start}{rest}")),
        (start, prop_oneof!["[0-9 ]{0,12}", "\\PC{0,8}"])
            .prop_map(|(start, rest)| format!("{start}{rest}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_bytes_arrive_as_whole_lines(bytes in modem_bytes()) {
        let (mut port, writer) = port_fed_with(&bytes);
        let lines = read_lines(&mut port);
        writer.thread().unpark();
        writer.join().unwrap();
        prop_assert_eq!(lines?, expected_lines(&bytes));
    }

    #[test]
    fn any_line_is_a_final_code_or_none(line in modem_line()) {
        let Some(code) = Final::parse(&line) else {
            prop_assert!(!matches!(line.as_str(), "OK" | "ERROR"));
            prop_assert!(!line.starts_with("+CMS ERROR:") && !line.starts_with("+CME ERROR:"));
            return Ok(());
        };
        let shown = code.describe();
        match &code {
            Final::Ok => prop_assert_eq!(shown, "OK"),
            Final::Error => prop_assert_eq!(shown, "ERROR"),
            Final::Cms(number) => {
                prop_assert!(shown.starts_with(&format!("+CMS ERROR: {number}")), "{}", shown);
                prop_assert_eq!(number.as_str(), line["+CMS ERROR:".len()..].trim());
            }
            Final::Cme(number) => {
                prop_assert!(shown.starts_with(&format!("+CME ERROR: {number}")), "{}", shown);
                prop_assert_eq!(number.as_str(), line["+CME ERROR:".len()..].trim());
            }
        }
        let timeout = matches!(&code, Final::Cms(n) if n == "332")
            || matches!(&code, Final::Cme(n) if n == "31");
        prop_assert_eq!(code.may_have_left(), timeout);
    }
}

proptest! {
    // Each case sends up to 12 KB through the terminal: fewer of them.
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_line_longer_than_the_buffer_keeps_its_end_and_the_rest_arrive(
        before in prop::collection::vec("[A-Z0-9+:][A-Z0-9+: ]{0,20}[A-Z]", 0..3),
        long in "[a-z0-9]{4097,12000}",
        after in prop::collection::vec("[A-Z0-9+:][A-Z0-9+: ]{0,20}[A-Z]", 0..3),
    ) {
        let text = [before.clone(), vec![long.clone()], after.clone()].concat().join("\r\n");
        let (mut port, writer) = port_fed_with(text.as_bytes());
        let lines = read_lines(&mut port);
        writer.thread().unpark();
        writer.join().unwrap();
        let lines = lines?;
        prop_assert_eq!(lines.len(), before.len() + 1 + after.len());
        prop_assert_eq!(&lines[..before.len()], &before[..]);
        let kept = &lines[before.len()];
        prop_assert!(long.ends_with(kept.as_str()) && kept.len() >= 4096 - 512, "kept {}", kept.len());
        prop_assert_eq!(&lines[before.len() + 1..], &after[..]);
    }
}

/// How a send through a modem that answered `lines` after the Ctrl-Z must
/// end, read from the backend's documentation: the last valid `+CMGS`
/// reference, sealed by an `OK` after it; an error code before that is a
/// refusal, or uncertain for a network timeout; anything else is skipped.
fn judged(lines: &[String]) -> Option<Result<Option<String>, bool>> {
    let mut reference = None;
    for line in lines {
        if let Some(number) = line.strip_prefix("+CMGS:").map(str::trim) {
            if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
                reference = Some(number.to_string());
            }
            continue;
        }
        match Final::parse(line) {
            Some(Final::Ok) if reference.is_some() => return Some(Ok(reference)),
            None | Some(Final::Ok) => {}
            Some(error) => return Some(Err(error.may_have_left())),
        }
    }
    None
}

/// A modem on the master side of a pseudo-terminal that answers `OK` to
/// every command, `> ` to `AT+CMGS` (after `before_prompt`), and `after_text`
/// once the text's Ctrl-Z came; it stops when the device is closed.
fn scripted_modem(
    master: OwnedFd,
    before_prompt: Vec<u8>,
    after_text: Vec<u8>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let write = |bytes: &[u8]| {
            let mut rest = bytes;
            while !rest.is_empty() {
                rest = &rest[rustix::io::write(&master, rest).unwrap()..];
            }
        };
        let (mut line, mut in_text) = (Vec::new(), false);
        let mut buf = [0u8; 512];
        // A read fails once the backend closed the device.
        while let Ok(n @ 1..) = rustix::io::read(&master, &mut buf) {
            for &b in &buf[..n] {
                match b {
                    0x1a if in_text => {
                        in_text = false;
                        write(&after_text);
                    }
                    _ if in_text => {}
                    0x1b => line.clear(),
                    b'\r' if line.starts_with(b"AT+CMGS=") => {
                        line.clear();
                        in_text = true;
                        write(&[&before_prompt[..], b"\r\n> "].concat());
                    }
                    b'\r' => {
                        line.clear();
                        write(b"\r\nOK\r\n");
                    }
                    _ => line.push(b),
                }
            }
        }
    })
}

/// The answers that decide a send, well and badly formed.
fn answer_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("OK".to_string()),
        Just("ERROR".to_string()),
        " ?\\+CMGS: ?[0-9a-z ]{0,4}",
        "\\+CMS ERROR: ?(33[0-2]|500|[a-z ]{0,8})",
        "\\+CME ERROR: ?(3[01]|10|[a-z ]{0,8})",
    ]
}

/// Lines that are no answer to anything: unsolicited codes and noise.
fn unsolicited_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("RING".to_string()),
        "\\+CMTI: \"SM\",[0-9]{1,3}",
        "\\+CREG: [0-5]",
        "\\^BOOT:[0-9,]{0,20}",
        "[a-z ]{1,20}",
    ]
}

proptest! {
    // Each case opens a pseudo-terminal and initialises the modem.
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_answer_after_the_text_is_judged_as_documented(
        before_prompt in prop::collection::vec(unsolicited_line(), 0..3),
        answer in prop::collection::vec(
            (prop_oneof![answer_line(), modem_line(), unsolicited_line()], prop::sample::select(vec!["\r\n", "\r", "\n"])),
            0..8,
        ),
    ) {
        let before_prompt: Vec<u8> =
            before_prompt.iter().flat_map(|l| format!("\r\n{l}").into_bytes()).collect();
        let mut after_text: Vec<u8> = answer.iter().flat_map(|(l, end)| format!("{l}{end}").into_bytes()).collect();
        // Ends every case: a reference and its OK.
        after_text.extend_from_slice(b"\r\n+CMGS: 99\r\nOK\r\n");
        let (master, path) = pseudo_terminal();
        let modem = scripted_modem(master, before_prompt, after_text.clone());
        let settings = Settings {
            device: path.clone(),
            baud: 115_200,
            pin: None,
            ucs2: true,
            command_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
        };
        let message = Message { phone: "+79991234567".into(), text: "#01#0#".into() };
        let mut state = ModemState::default();
        let outcome = exchange::run(&settings, &mut state, &prepare(&message, true).unwrap());
        drop(state);
        modem.join().unwrap();

        let expected = judged(&expected_lines(&after_text)).unwrap();
        match (outcome, expected) {
            (Ok(Delivered { backend, reference }), Ok(expected)) => {
                prop_assert_eq!(backend, "modem");
                prop_assert_eq!(reference, expected);
            }
            (Err(SendError::Uncertain { reason }), Err(true))
            | (Err(SendError::Definite { reason }), Err(false)) => {
                prop_assert!(reason.starts_with(&format!("modem {}: ", path.display())), "{}", reason);
            }
            (outcome, expected) => prop_assert!(false, "{:?}, expected {:?}", outcome, expected),
        }
    }
}
