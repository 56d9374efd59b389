//! A fake GSM modem on a pseudo-terminal, so the modem backend is tested
//! through a real tty: termios settings, partial reads, bytes as written.
//!
//! A peer thread holds the pty's master side and speaks the AT commands the
//! backend uses (`AT`, `ATE0`/`ATE1`, `AT+CMGF=1`, `AT+CPIN?`,
//! `AT+CPIN="…"`, `AT+CSCS="…"`, `AT+CSMP=…`, `AT+CMGS="…"` with its `> `
//! prompt and Ctrl-Z or ESC). Everything the backend writes is kept in
//! [`FakeModem::transcript`], byte for byte, and each message the modem
//! "sends" in [`FakeModem::received`]. Like a modem after power-on it
//! echoes until told `ATE0`. Faults to switch on: echo that ignores `ATE0`,
//! unsolicited result codes in the middle of exchanges, a SIM PIN, total
//! silence, and per message a [`Reply`] (error codes, no prompt, silence
//! after Ctrl-Z).
//!
//! The peer also keeps the pty's slave side open, so the master never sees
//! the line hang up while the backend closes and reopens the device.
//!
//! ```ignore
//! let modem = FakeModem::start();
//! modem.push_reply(Reply::FailAfterText(331));
//! // … send through a sender whose [sms.modem] device = modem.path() …
//! let bytes = modem.transcript_at_least(expected.len());
//! ```

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};
use rustix::fs::OFlags;
use rustix::pty::OpenptFlags;
use rustix::termios::{self, OptionalActions};

use super::wait::DEADLINE;

/// How the modem answers one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Prompt, take the text, answer `+CMGS: <n>` and `OK`.
    Accept,
    /// Answer `+CMS ERROR: <n>` to `AT+CMGS` instead of the prompt.
    RefuseBeforeText(u32),
    /// Prompt, take the text, answer `+CMS ERROR: <n>`.
    FailAfterText(u32),
    /// Say nothing to `AT+CMGS`: no prompt.
    NoPrompt,
    /// Prompt, take the text, then say nothing.
    SilentAfterText,
}

/// A message the modem took (its text ended with Ctrl-Z).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Received {
    /// The number from `AT+CMGS`, decoded from hex in UCS-2 mode.
    pub number: String,
    /// The text, decoded from hex in UCS-2 mode.
    pub text: String,
    /// Whether it came in UCS-2 mode (`AT+CSCS="UCS2"`, data coding 8).
    pub ucs2: bool,
}

#[derive(Debug)]
enum Mode {
    /// Collecting a command line up to its carriage return.
    Command(Vec<u8>),
    /// After the prompt: collecting a message text up to Ctrl-Z.
    Text { number: String, text: Vec<u8>, reply: Reply },
}

#[derive(Debug)]
struct State {
    transcript: Vec<u8>,
    received: Vec<Received>,
    echo: bool,
    stubborn_echo: bool,
    chatter: bool,
    silent: bool,
    pin: Option<String>,
    unlocked: bool,
    pin_attempts: usize,
    charset: String,
    dcs: String,
    replies: VecDeque<Reply>,
    next_reference: u32,
    mode: Mode,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// The fake modem; dropping it stops the peer thread.
pub(crate) struct FakeModem {
    path: PathBuf,
    shared: Arc<Shared>,
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    _slave: OwnedFd,
}

impl FakeModem {
    /// A modem that answers everything well, echo on until `ATE0`.
    pub(crate) fn start() -> FakeModem {
        let master =
            rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
                .expect("open a pseudo-terminal");
        rustix::pty::grantpt(&master).unwrap();
        rustix::pty::unlockpt(&master).unwrap();
        let name = rustix::pty::ptsname(&master, Vec::new()).unwrap();
        let path = PathBuf::from(OsString::from_vec(name.into_bytes()));
        let slave = rustix::fs::open(
            &path,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        // Raw from the start, so nothing the fake says is echoed back to it
        // by the line discipline before the backend sets the line up.
        let mut settings = termios::tcgetattr(&slave).unwrap();
        settings.make_raw();
        termios::tcsetattr(&slave, OptionalActions::Now, &settings).unwrap();

        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                transcript: Vec::new(),
                received: Vec::new(),
                echo: true,
                stubborn_echo: false,
                chatter: false,
                silent: false,
                pin: None,
                unlocked: false,
                pin_attempts: 0,
                charset: "IRA".into(),
                dcs: "0".into(),
                replies: VecDeque::new(),
                next_reference: 1,
                mode: Mode::Command(Vec::new()),
            }),
            changed: Condvar::new(),
        });
        let (stop_read, stop_write) = rustix::pipe::pipe().unwrap();
        let thread = std::thread::spawn({
            let shared = Arc::clone(&shared);
            move || serve(master, stop_read, shared)
        });
        FakeModem { path, shared, stop: Some(stop_write), thread: Some(thread), _slave: slave }
    }

    /// The device path to configure (`/dev/pts/N`).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }

    /// Keeps echoing after `ATE0`, like modems that ignore it.
    pub(crate) fn ignore_ate0(&self) {
        self.state().stubborn_echo = true;
    }

    /// Sends unsolicited result codes (`RING`, `+CMTI`, `+CREG`, `^BOOT`,
    /// empty lines) before answers and in the middle of each message.
    pub(crate) fn chatter(&self) {
        self.state().chatter = true;
    }

    /// Answers nothing at all from now on.
    pub(crate) fn go_silent(&self) {
        self.state().silent = true;
    }

    /// Makes the SIM ask for this PIN (`+CPIN: SIM PIN`) until it is given.
    pub(crate) fn require_pin(&self, pin: &str) {
        let mut state = self.state();
        state.pin = Some(pin.to_string());
        state.unlocked = false;
    }

    /// How many times a PIN was offered with `AT+CPIN="…"`.
    pub(crate) fn pin_attempts(&self) -> usize {
        self.state().pin_attempts
    }

    /// How the next message without a queued reply is answered: queued
    /// replies are used in order, then [`Reply::Accept`].
    pub(crate) fn push_reply(&self, reply: Reply) {
        self.state().replies.push_back(reply);
    }

    /// Every byte written to the modem so far.
    pub(crate) fn transcript(&self) -> Vec<u8> {
        self.state().transcript.clone()
    }

    /// Every byte written to the modem, once there are at least `len`;
    /// panics after [`DEADLINE`] otherwise, showing what came.
    pub(crate) fn transcript_at_least(&self, len: usize) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        let mut state = self.state();
        while state.transcript.len() < len {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the modem saw {} of {len} bytes: {:?}",
                state.transcript.len(),
                String::from_utf8_lossy(&state.transcript)
            );
            state = self.shared.changed.wait_timeout(state, left).unwrap().0;
        }
        state.transcript.clone()
    }

    /// The messages the modem took, in order.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.state().received.clone()
    }
}

impl Drop for FakeModem {
    fn drop(&mut self) {
        // Closing the write end wakes the peer with a hang-up.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(master: OwnedFd, stop: OwnedFd, shared: Arc<Shared>) {
    let mut buf = [0u8; 1024];
    loop {
        let (data, quit) = {
            let mut fds = [PollFd::new(&master, PollFlags::IN), PollFd::new(&stop, PollFlags::IN)];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => panic!("fake modem: poll failed: {e}"),
            }
            (!fds[0].revents().is_empty(), !fds[1].revents().is_empty())
        };
        if quit {
            return;
        }
        if !data {
            continue;
        }
        let n = match rustix::io::read(&master, &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(e) => panic!("fake modem: read failed: {e}"),
        };
        let out = {
            let mut state = shared.state.lock().unwrap();
            state.transcript.extend_from_slice(&buf[..n]);
            let out = state.feed(&buf[..n]);
            shared.changed.notify_all();
            out
        };
        let mut rest = out.as_slice();
        while !rest.is_empty() {
            match rustix::io::write(&master, rest) {
                Ok(n) => rest = &rest[n..],
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => panic!("fake modem: write failed: {e}"),
            }
        }
    }
}

impl State {
    /// Takes bytes from the backend; returns what the modem says back.
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &byte in bytes {
            if self.echo && !self.silent {
                out.push(byte);
            }
            match &mut self.mode {
                Mode::Command(line) => match byte {
                    b'\r' => {
                        let command = String::from_utf8_lossy(line).into_owned();
                        line.clear();
                        self.command(&command, &mut out);
                    }
                    b'\n' | 0x1B => {}
                    _ => line.push(byte),
                },
                Mode::Text { text, .. } => match byte {
                    0x1A => {
                        let Mode::Text { number, text, reply } =
                            std::mem::replace(&mut self.mode, Mode::Command(Vec::new()))
                        else {
                            unreachable!()
                        };
                        self.take_message(number, text, reply, &mut out);
                    }
                    0x1B => {
                        self.mode = Mode::Command(Vec::new());
                        self.answer(&mut out, "OK");
                    }
                    b'\r' => {
                        text.push(b'\n');
                        out.extend_from_slice(b"\r\n> ");
                    }
                    _ => text.push(byte),
                },
            }
        }
        out
    }

    fn answer(&mut self, out: &mut Vec<u8>, line: &str) {
        if self.silent {
            return;
        }
        if self.chatter {
            out.extend_from_slice(b"\r\n^BOOT:10936380,0,0,0,75\r\n\r\n");
        }
        out.extend_from_slice(format!("\r\n{line}\r\n").as_bytes());
    }

    fn command(&mut self, command: &str, out: &mut Vec<u8>) {
        let upper = command.to_ascii_uppercase();
        let quoted = |prefix: &str| {
            upper
                .strip_prefix(prefix)
                .map(|_| command[prefix.len()..].trim_matches('"').to_string())
        };
        if upper == "AT" || upper == "AT+CMGF=1" {
            self.answer(out, "OK");
        } else if upper == "ATE0" {
            self.echo = self.stubborn_echo;
            self.answer(out, "OK");
        } else if upper == "ATE1" {
            self.echo = true;
            self.answer(out, "OK");
        } else if upper == "AT+CPIN?" {
            let status = if self.pin.is_some() && !self.unlocked { "SIM PIN" } else { "READY" };
            self.answer(out, &format!("+CPIN: {status}"));
            self.answer(out, "OK");
        } else if let Some(pin) = quoted("AT+CPIN=") {
            self.pin_attempts += 1;
            if self.pin.as_deref() == Some(pin.as_str()) {
                self.unlocked = true;
                self.answer(out, "OK");
            } else {
                self.answer(out, "+CME ERROR: 16");
            }
        } else if let Some(charset) = quoted("AT+CSCS=") {
            self.charset = charset;
            self.answer(out, "OK");
        } else if let Some(parameters) = upper.strip_prefix("AT+CSMP=") {
            self.dcs = parameters.rsplit(',').next().unwrap_or("0").to_string();
            self.answer(out, "OK");
        } else if let Some(number) = quoted("AT+CMGS=") {
            if self.pin.is_some() && !self.unlocked {
                self.answer(out, "+CMS ERROR: 311");
                return;
            }
            let reply = self.replies.pop_front().unwrap_or(Reply::Accept);
            match reply {
                Reply::NoPrompt => {}
                Reply::RefuseBeforeText(code) => self.answer(out, &format!("+CMS ERROR: {code}")),
                _ if self.silent => {}
                _ => {
                    if self.chatter {
                        out.extend_from_slice(b"\r\nRING\r\n\r\n+CREG: 1\r\n");
                    }
                    out.extend_from_slice(b"\r\n> ");
                    self.mode = Mode::Text { number, text: Vec::new(), reply };
                }
            }
        } else {
            self.answer(out, "ERROR");
        }
    }

    fn take_message(&mut self, number: String, text: Vec<u8>, reply: Reply, out: &mut Vec<u8>) {
        let ucs2 = self.charset == "UCS2";
        let text = String::from_utf8_lossy(&text).into_owned();
        let (number, text) =
            if ucs2 { (from_hex(&number), from_hex(&text)) } else { (number, text) };
        self.received.push(Received { number, text, ucs2: ucs2 && self.dcs == "8" });
        if self.chatter {
            out.extend_from_slice(b"\r\n+CMTI: \"SM\",3\r\n\r\n+CREG: 1,\"00C3\",\"0A2B\"\r\n\r\n");
        }
        match reply {
            Reply::Accept => {
                let reference = self.next_reference;
                self.next_reference += 1;
                self.answer(out, &format!("+CMGS: {reference}"));
                self.answer(out, "OK");
            }
            Reply::FailAfterText(code) => self.answer(out, &format!("+CMS ERROR: {code}")),
            Reply::SilentAfterText | Reply::NoPrompt | Reply::RefuseBeforeText(_) => {}
        }
    }
}

/// Hex UTF-16 (as after `AT+CSCS="UCS2"`) back to text; invalid input is
/// kept as it came, so a test shows it.
fn from_hex(hex: &str) -> String {
    let units: Option<Vec<u16>> = (0..hex.len())
        .step_by(4)
        .map(|i| hex.get(i..i + 4).and_then(|unit| u16::from_str_radix(unit, 16).ok()))
        .collect();
    match units {
        Some(units) if hex.len() % 4 == 0 => String::from_utf16_lossy(&units),
        _ => format!("<not hex: {hex}>"),
    }
}
