//! The smstools3 spool backend against real directories: the message file,
//! the atomic hand-over to smsd, and smsd's verdict read from `sent/` and
//! `failed/` (with a stand-in smsd that moves files the way smsd does).
//! Waiting for smsd runs on tokio's paused clock, so no test waits for
//! wall-clock seconds.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signage_watchdog::sms::{Delivered, SendError, Sender, SmsConfigError};
use support::sms::message;

mod support;

/// A spool laid out as smstools3 does it.
struct Spool {
    root: tempfile::TempDir,
}

impl Spool {
    fn new() -> Spool {
        let root = tempfile::tempdir().unwrap();
        for dir in ["outgoing", "sent", "failed"] {
            std::fs::create_dir(root.path().join(dir)).unwrap();
        }
        Spool { root }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// File names in a directory, sorted.
    fn files(&self, name: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir(name))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A sender for `[sms.smstools]` with `outgoing` and these extra lines
    /// (directory names are relative to the spool, which is the rules
    /// file's directory).
    fn sender(&self, lines: &str) -> Box<dyn Sender> {
        self.build(lines).unwrap_or_else(|e| panic!("{e}"))
    }

    fn build(&self, lines: &str) -> Result<Box<dyn Sender>, SmsConfigError> {
        let text = format!(
            "[sms]\nbackend = \"smstools\"\n[sms.smstools]\noutgoing = \"outgoing\"\n{lines}\n"
        );
        support::sms::config(&text).build(self.root.path())
    }
}

const WATCH: &str =
    "sent = \"sent\"\nfailed = \"failed\"\noutcome_timeout = \"2m\"\npoll_interval = \"1s\"";

#[tokio::test]
async fn writes_the_message_file_into_outgoing() {
    let spool = Spool::new();
    let sender = spool.sender("");

    let outcome = sender.send(&message("#12#0#1#1#")).await;

    let files = spool.files("outgoing");
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with("jobctl-"), "{files:?}");
    assert_eq!(
        outcome,
        Ok(Delivered { backend: "smstools".into(), reference: Some(files[0].clone()) })
    );
    let written = std::fs::read(spool.dir("outgoing").join(&files[0])).unwrap();
    assert_eq!(written, b"To: 79991234567\n\n#12#0#1#1#");
}

#[tokio::test]
async fn texts_beyond_ascii_are_written_as_ucs2_big_endian() {
    let spool = Spool::new();
    let sender = spool.sender("");

    sender.send(&message("Перезагрузка «Лесная 1»")).await.unwrap();

    let files = spool.files("outgoing");
    let written = std::fs::read(spool.dir("outgoing").join(&files[0])).unwrap();
    let mut expected = b"To: 79991234567\nAlphabet: UCS2\n\n".to_vec();
    for unit in "Перезагрузка «Лесная 1»".encode_utf16() {
        expected.extend_from_slice(&unit.to_be_bytes());
    }
    assert_eq!(written, expected);
}

#[tokio::test]
async fn no_partial_file_is_ever_visible_under_its_final_name() {
    let spool = Spool::new();
    let sender = spool.sender("");
    let texts: Vec<String> =
        (0..30).map(|i| format!("{i} {}", "notification ".repeat(8000))).collect();
    let expected: HashSet<Vec<u8>> =
        texts.iter().map(|t| format!("To: 79991234567\n\n{t}").into_bytes()).collect();

    // An observer that reads every file smsd could pick up, as fast as it
    // can, while the messages are written.
    let stop = Arc::new(AtomicBool::new(false));
    let observer = std::thread::spawn({
        let (stop, outgoing) = (Arc::clone(&stop), spool.dir("outgoing"));
        move || {
            let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for entry in std::fs::read_dir(&outgoing).unwrap() {
                    let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                    if name.ends_with(".LOCK") {
                        continue;
                    }
                    if let Ok(bytes) = std::fs::read(outgoing.join(&name)) {
                        seen.push((name, bytes));
                    }
                }
            }
            seen
        }
    });
    for text in &texts {
        sender.send(&message(text)).await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let seen = observer.join().unwrap();

    assert!(!seen.is_empty());
    for (name, bytes) in &seen {
        assert!(expected.contains(bytes), "{name} was seen incomplete ({} bytes)", bytes.len());
    }
    let files = spool.files("outgoing");
    assert_eq!(files.len(), texts.len(), "no .LOCK file is left behind: {files:?}");
    assert!(files.iter().all(|f| !f.ends_with(".LOCK")));
}

/// A stand-in for smsd: takes the first file that appears in `outgoing`
/// and moves it to `to` under a lock, as smsd does, adding `headers`.
fn fake_smsd(
    spool: &Spool,
    to: &'static str,
    headers: &'static str,
) -> tokio::task::JoinHandle<String> {
    let (outgoing, target) = (spool.dir("outgoing"), spool.dir(to));
    tokio::spawn(async move {
        loop {
            let ready = std::fs::read_dir(&outgoing)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .find(|name| !name.ends_with(".LOCK"));
            if let Some(name) = ready {
                let original = std::fs::read(outgoing.join(&name)).unwrap();
                let (head, body) =
                    original.split_at(original.windows(2).position(|w| w == b"\n\n").unwrap() + 1);
                let lock = target.join(format!("{name}.LOCK"));
                std::fs::write(&lock, b"").unwrap();
                std::fs::write(target.join(&name), [head, headers.as_bytes(), body].concat())
                    .unwrap();
                std::fs::remove_file(&lock).unwrap();
                std::fs::remove_file(outgoing.join(&name)).unwrap();
                return name;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_file_in_sent_is_delivered_with_smsds_message_id() {
    let spool = Spool::new();
    let sender = spool.sender(WATCH);
    let smsd = fake_smsd(&spool, "sent", "Modem: GSM1\nSent: 25-05-26 13:29:08\nMessage_id: 42\n");

    let outcome = sender.send(&message("#12#0#1#1#")).await;

    smsd.await.unwrap();
    assert_eq!(outcome, Ok(Delivered { backend: "smstools".into(), reference: Some("42".into()) }));
}

#[tokio::test(start_paused = true)]
async fn a_file_in_failed_is_a_definite_failure_with_smsds_reason() {
    let spool = Spool::new();
    let sender = spool.sender(WATCH);
    let smsd = fake_smsd(
        &spool,
        "failed",
        "Failed: 25-05-26 13:29:08\nFail_reason: Modem initialization failed\n",
    );

    let outcome = sender.send(&message("#12#0#1#1#")).await;

    let name = smsd.await.unwrap();
    assert_eq!(
        outcome,
        Err(SendError::Definite {
            reason: format!(
                "smsd moved {name} to {}: Modem initialization failed",
                spool.dir("failed").display()
            )
        })
    );
}

#[tokio::test(start_paused = true)]
async fn no_verdict_in_time_is_uncertain_and_says_where_the_file_is() {
    let spool = Spool::new();
    let sender = spool.sender(WATCH);

    let outcome = sender.send(&message("#12#0#1#1#")).await;

    let name = spool.files("outgoing").pop().unwrap();
    assert_eq!(
        outcome,
        Err(SendError::Uncertain {
            reason: format!(
                "{name} reached neither {} nor {} within 2m; it is still in {}: is smsd running?",
                spool.dir("sent").display(),
                spool.dir("failed").display(),
                spool.dir("outgoing").display()
            )
        })
    );
}

#[test]
fn spool_settings_that_cannot_work_are_named() {
    let spool = Spool::new();
    let err = spool.build("sent = \"sent\"").unwrap_err();
    assert_eq!(err.key, "sms.smstools.failed");
    assert!(err.message.starts_with("set failed too"), "{}", err.message);

    std::fs::remove_dir(spool.dir("outgoing")).unwrap();
    let err = spool.build("").unwrap_err();
    assert_eq!(err.key, "sms.smstools.outgoing");
    let expected =
        format!("cannot use {}: No such file or directory", spool.dir("outgoing").display());
    assert!(err.message.starts_with(&expected), "{}", err.message);
    assert!(!Path::new(&spool.dir("outgoing")).exists());
}
