//! Telling systemd how the daemon is doing: the `sd_notify` protocol.
//!
//! Under a `Type=notify` unit, systemd waits for `READY=1` before it calls
//! the service started (so `systemctl start` returns when the daemon
//! really works, and units ordered after it start then), shows the last
//! `STATUS=` line in `systemctl status`, and, with `WatchdogSec=`, restarts
//! the daemon when `WATCHDOG=1` pings stop: a hung cycle or poll loop is
//! restarted instead of looking alive while doing nothing. `RELOADING=1` and
//! `STOPPING=1` frame a reload and the shutdown.
//!
//! The protocol is one datagram per message to the Unix socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace); the
//! watchdog period is `WATCHDOG_USEC`, meant for the process `WATCHDOG_PID`
//! when that is set. Outside systemd (`NOTIFY_SOCKET` unset) every call is
//! a no-op. Written here rather than taken from a crate: it is one
//! `sendto` per message. A message that cannot be sent is logged once and
//! never stops the daemon.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The link to systemd's notification socket, if the daemon runs under it.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    /// `WATCHDOG_USEC`, when it is meant for this process.
    watchdog: Option<Duration>,
    /// Whether a failed send was logged already.
    failed: AtomicBool,
}

impl Notifier {
    /// The notifier the environment describes (`NOTIFY_SOCKET`,
    /// `WATCHDOG_USEC`, `WATCHDOG_PID`); a no-op one outside systemd.
    pub fn from_env() -> Notifier {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let socket = var("NOTIFY_SOCKET").and_then(|path| match connect(&path) {
            Ok(socket) => Some(socket),
            Err(err) => {
                tracing::warn!("NOTIFY_SOCKET={path:?} cannot be used ({err}); systemd will not hear from this daemon");
                None
            }
        });
        let ours = var("WATCHDOG_PID").is_none_or(|pid| pid == std::process::id().to_string());
        let watchdog = var("WATCHDOG_USEC")
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|&usec| usec > 0 && ours)
            .map(Duration::from_micros);
        Notifier { socket, watchdog, failed: AtomicBool::new(false) }
    }

    /// A notifier that says nothing (tests, commands that are not daemons).
    pub fn none() -> Notifier {
        Notifier { socket: None, watchdog: None, failed: AtomicBool::new(false) }
    }

    /// How often to ping the watchdog (half its period, as systemd
    /// advises), if it is on.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.socket.is_some()).map(|period| period / 2)
    }

    /// Start-up is done: the daemon does its work from now on.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A reload (SIGHUP) begins; [`Notifier::ready`] ends it.
    ///
    /// With the time on the monotonic clock (`MONOTONIC_USEC`), which
    /// systemd 253 and later want beside `RELOADING=1`: it tells this
    /// reload from one that began before `systemctl reload` asked, so the
    /// command waits for the `READY=1` that ends its own.
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// The daemon is shutting down.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// The line `systemctl status` shows.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// The loop doing the work is alive; with a new status line.
    pub fn alive(&self, status: &str) {
        if self.watchdog.is_some() {
            self.send(&format!("WATCHDOG=1\nSTATUS={}", one_line(status)));
        } else {
            self.status(status);
        }
    }

    fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.socket else { return };
        if let Err(err) = socket.send_to_addr(message.as_bytes(), addr) {
            if !self.failed.swap(true, Ordering::Relaxed) {
                tracing::warn!("cannot notify systemd ({err}); later failures are not logged");
            }
        }
    }
}

/// Now on `CLOCK_MONOTONIC`, in microseconds, as systemd reads
/// `MONOTONIC_USEC` (std's `Instant` uses that clock but does not show it).
fn monotonic_usec() -> u128 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let (seconds, nanoseconds) = (now.tv_sec.unsigned_abs(), now.tv_nsec.unsigned_abs());
    u128::from(seconds) * 1_000_000 + u128::from(nanoseconds) / 1_000
}

/// A status on one line: the protocol separates fields by newlines.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

/// An unbound datagram socket and the address of `path` (`@name` is in the
/// abstract namespace).
fn connect(path: &str) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let addr = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    Ok((UnixDatagram::unbound()?, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notifier(socket: &std::path::Path, watchdog: Option<Duration>) -> Notifier {
        let socket = connect(socket.to_str().unwrap()).unwrap();
        Notifier { socket: Some(socket), watchdog, failed: AtomicBool::new(false) }
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buffer = [0; 512];
        let n = socket.recv(&mut buffer).unwrap();
        String::from_utf8(buffer[..n].to_vec()).unwrap()
    }

    #[test]
    fn each_message_is_one_datagram_in_the_protocols_words() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let notifier = notifier(&path, Some(Duration::from_secs(10)));
        assert_eq!(notifier.watchdog_every(), Some(Duration::from_secs(5)));
        notifier.ready("3 jobs\nlast cycle 1 s ago");
        assert_eq!(receive(&systemd), "READY=1\nSTATUS=3 jobs last cycle 1 s ago");
        notifier.alive("ok");
        assert_eq!(receive(&systemd), "WATCHDOG=1\nSTATUS=ok");
        let before = monotonic_usec();
        notifier.reloading();
        let reloading = receive(&systemd);
        let usec = reloading.strip_prefix("RELOADING=1\nMONOTONIC_USEC=").expect(&reloading);
        let usec: u128 = usec.parse().expect(&reloading);
        assert!((before..=monotonic_usec()).contains(&usec), "{reloading}");
        notifier.stopping();
        assert_eq!(receive(&systemd), "STOPPING=1");

        let without_watchdog = self::notifier(&path, None);
        assert_eq!(without_watchdog.watchdog_every(), None);
        without_watchdog.alive("ok");
        assert_eq!(receive(&systemd), "STATUS=ok", "no ping when no watchdog is asked for");
    }

    #[test]
    fn outside_systemd_nothing_is_sent_and_a_gone_socket_is_not_fatal() {
        let none = Notifier::none();
        none.ready("x");
        assert_eq!(none.watchdog_every(), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let gone = {
            let _systemd = UnixDatagram::bind(&path).unwrap();
            notifier(&path, Some(Duration::from_secs(1)))
        };
        gone.ready("x");
        gone.alive("y");
        assert!(gone.failed.load(Ordering::Relaxed));
    }
}
