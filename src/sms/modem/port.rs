//! The serial device: opened raw, written and read with deadlines, its
//! bytes cut into lines and the `> ` prompt, one command and its final
//! result code at a time.
//!
//! Blocking I/O with `poll(2)` and a deadline, run on a blocking thread by
//! the exchange, so that each step reads as a plain sequence; nothing here
//! knows what a message is.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::termios::{self, ControlModes, InputModes, OptionalActions, QueueSelector};

use super::result_code::Final;

/// Most bytes kept of a line that never ends (a modem spewing noise).
const MAX_PENDING: usize = 4096;

/// Why an exchange step did not get the answer it wanted.
#[derive(Debug)]
pub(super) enum StepError {
    /// The modem said no.
    Refused(Final),
    /// Nothing (or nothing useful) within the time allowed.
    Timeout,
    /// The device failed or went away.
    Io(io::Error),
}

/// What the reader found next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// A complete, non-empty line, trimmed.
    Line(String),
    /// The `> ` prompt for a message's text.
    Prompt,
}

/// The open serial device, with bytes read but not yet used.
#[derive(Debug)]
pub(super) struct Port {
    file: File,
    pending: Vec<u8>,
}

impl Port {
    /// Opens the device without waiting for carrier and sets it raw, 8N1,
    /// no flow control, at `baud`.
    pub(super) fn open(path: &Path, baud: u32) -> io::Result<Port> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut settings = termios::tcgetattr(&fd).map_err(|e| {
            if e == rustix::io::Errno::NOTTY {
                io::Error::other("not a serial device")
            } else {
                e.into()
            }
        })?;
        settings.make_raw();
        settings.control_modes.insert(ControlModes::CLOCAL | ControlModes::CREAD);
        settings
            .control_modes
            .remove(ControlModes::CSTOPB | ControlModes::PARENB | ControlModes::CRTSCTS);
        settings.input_modes.remove(InputModes::IXON | InputModes::IXOFF);
        settings.set_speed(baud)?;
        termios::tcsetattr(&fd, OptionalActions::Now, &settings)?;
        // Input only: output may still hold the ESC with which the previous
        // session was closed, and it must reach the modem.
        termios::tcflush(&fd, QueueSelector::IFlush)?;
        Ok(Port { file: File::from(fd), pending: Vec::new() })
    }

    /// Waits until the device is ready for `flags`, or the deadline.
    fn wait(&self, flags: PollFlags, deadline: Instant) -> Result<(), StepError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StepError::Timeout);
            }
            let timeout = Timespec::try_from(left).unwrap_or(Timespec { tv_sec: 3600, tv_nsec: 0 });
            let mut fds = [PollFd::new(&self.file, flags)];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(0) => continue,
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(StepError::Io(e.into())),
            }
        }
    }

    /// Writes all of `bytes`, waiting for room until the deadline.
    pub(super) fn write_all(
        &mut self,
        mut bytes: &[u8],
        deadline: Instant,
    ) -> Result<(), StepError> {
        while !bytes.is_empty() {
            match self.file.write(bytes) {
                Ok(0) => return Err(StepError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(PollFlags::OUT, deadline)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StepError::Io(e)),
            }
        }
        Ok(())
    }

    /// Drops whatever arrived unasked (late answers, unsolicited codes).
    pub(super) fn discard_input(&mut self) -> io::Result<()> {
        self.pending.clear();
        termios::tcflush(&self.file, QueueSelector::IFlush)?;
        Ok(())
    }

    /// The next line, or the prompt when `want_prompt`, by the deadline.
    pub(super) fn next_event(
        &mut self,
        deadline: Instant,
        want_prompt: bool,
    ) -> Result<Event, StepError> {
        loop {
            if let Some(event) = self.take_event(want_prompt) {
                return Ok(event);
            }
            self.wait(PollFlags::IN, deadline)?;
            let mut buf = [0u8; 512];
            match self.file.read(&mut buf) {
                Ok(0) => return Err(StepError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => {
                    self.pending.extend_from_slice(&buf[..n]);
                    if self.pending.len() > MAX_PENDING {
                        let excess = self.pending.len() - MAX_PENDING;
                        self.pending.drain(..excess);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(StepError::Io(e)),
            }
        }
    }

    fn take_event(&mut self, want_prompt: bool) -> Option<Event> {
        while let Some(end) = self.pending.iter().position(|b| matches!(b, b'\r' | b'\n')) {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]).trim().to_string();
            if !text.is_empty() {
                return Some(Event::Line(text));
            }
        }
        if want_prompt && self.pending.trim_ascii() == b">" {
            self.pending.clear();
            return Some(Event::Prompt);
        }
        None
    }

    /// Sends one command line and waits for its final result code; returns
    /// the lines in between (information and stray codes alike).
    pub(super) fn command(
        &mut self,
        line: &str,
        timeout: Duration,
    ) -> Result<Vec<String>, StepError> {
        let deadline = Instant::now() + timeout;
        self.write_all(format!("{line}\r").as_bytes(), deadline)?;
        let mut info = Vec::new();
        loop {
            match self.next_event(deadline, false)? {
                Event::Line(text) if text == line => {} // the echo
                Event::Line(text) => match Final::parse(&text) {
                    Some(Final::Ok) => return Ok(info),
                    Some(refusal) => return Err(StepError::Refused(refusal)),
                    None => info.push(text),
                },
                Event::Prompt => {}
            }
        }
    }
}

/// A failed step as the sysadmin reads it; `shown` is the command as it
/// may be printed (never with the PIN).
pub(super) fn step_failure(shown: &str, error: &StepError, timeout: Duration) -> String {
    match error {
        StepError::Refused(answer) => format!("{shown} was answered {}", answer.describe()),
        StepError::Timeout => format!(
            "no answer to {shown} within {}; is the modem powered and on this port?",
            humantime::format_duration(timeout)
        ),
        StepError::Io(e) => format!("the device failed during {shown}: {e}"),
    }
}
