//! Property tests: what a modem says is outside input (its firmware, a
//! noisy line, another program on the port), so no bytes at all make the
//! port's cutting into lines ([`Port::next_event`]) or the reading of final
//! result codes ([`Final`]) panic; every line arrives whole, as sent, through
//! a real pseudo-terminal; and the codes recognised are shown back with the
//! modem's own words.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rustix::pty::OpenptFlags;

use super::port::{Event, Port};
use super::result_code::Final;

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
