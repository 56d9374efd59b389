//! One writer per journal: an exclusive `flock` on a lock file beside it.
//!
//! SQLite lets two processes write the same file, one transaction at a time,
//! and that is not enough for jobctl: two daemons on one journal would both
//! find the same actions due and both send them, and a `jobctl run --once`
//! started next to a daemon would settle the daemon's sends in flight as
//! `uncertain` while they are still under way. So every writer — `run`,
//! `run --once`, `send`, `test-rule --send` — holds this lock for as long as
//! its [`super::Journal`] lives, and a second writer is refused at once,
//! told the holder's PID. Readers (`history`, `status`, `check`,
//! `test-rule` without `--send`) never take it.
//!
//! The lock is `flock(LOCK_EX | LOCK_NB)` on `<journal>.lock`: the kernel
//! releases it when the holder's process ends, however it ends (SIGKILL, a
//! power cut), so a lock file left behind never blocks the next start. The
//! holder writes its PID into the file after it has the lock, for the
//! message a refused writer prints. The file is never deleted: removing a
//! lock file while another process may be opening it lets two processes
//! each hold a lock on a different file. It is opened close-on-exec, so a
//! program the command backend starts does not inherit the lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use super::JournalError;

/// The exclusive right to write one journal, held until dropped.
#[derive(Debug)]
pub(super) struct JournalLock {
    /// The open lock file: closing it releases the lock.
    _file: File,
}

impl JournalLock {
    /// Takes the lock of the journal at `journal`, or says who holds it.
    pub(super) fn acquire(journal: &Path) -> Result<JournalLock, JournalError> {
        let path = lock_path(journal);
        let failed = |source| JournalError::Lock { path: path.clone(), source };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                return Err(JournalError::Locked {
                    path: journal.to_path_buf(),
                    lock_file: path.clone(),
                    holder: holder(&mut file),
                });
            }
            Err(errno) => return Err(failed(errno.into())),
        }
        // Ours now: replace the previous holder's PID with this process's.
        file.set_len(0).map_err(failed)?;
        file.rewind().map_err(failed)?;
        writeln!(file, "{}", std::process::id()).map_err(failed)?;
        Ok(JournalLock { _file: file })
    }
}

/// `journal.db` → `journal.db.lock`, in the same directory.
pub(super) fn lock_path(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// The PID the holder wrote into the lock file, if it has yet.
fn holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}
