//! A copy of the journal taken while the daemon runs (`jobctl journal
//! backup FILE`).
//!
//! Copying the file with `cp` while jobctl writes it can catch a
//! transaction half in the main file and half in its write-ahead log, and
//! a restored copy would then be damaged. SQLite's `VACUUM INTO` writes a
//! consistent copy from one read transaction instead: it needs no writer
//! lock, so it runs beside the daemon, which it holds up no longer than any
//! reader does, and the copy is compact (no free pages, no WAL).

use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::db::{args, Db};
use super::{db_error, Journal, JournalError};

/// What a backup wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backup {
    /// The copy's size in bytes.
    pub bytes: u64,
    /// Executions in the copy, read back from it.
    pub executions: u64,
}

impl Journal {
    /// Writes a consistent copy of the journal to `target`, which must not
    /// exist yet; it is created readable by its owner only (it holds phone
    /// numbers and message texts). The copy is opened again and checked to
    /// be a journal this jobctl reads before the backup counts as done; a
    /// failed backup leaves no file behind.
    pub fn backup_to(&self, target: &Path) -> Result<Backup, JournalError> {
        if let Db::Postgres(_) = self.db {
            return Err(JournalError::SqliteOnly {
                path: self.path.clone(),
                what: "`jobctl journal backup`",
                instead: "back a PostgreSQL journal up with pg_dump (README, \"Operations\")",
            });
        }
        let created =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(target);
        match created {
            Ok(_) => {}
            Err(err) if err.kind() == ErrorKind::AlreadyExists => {
                return Err(JournalError::BackupExists { path: target.to_path_buf() });
            }
            Err(source) => {
                return Err(JournalError::BackupTarget { path: target.to_path_buf(), source });
            }
        }
        let written = self.copy_to(target);
        if written.is_err() {
            let _ = std::fs::remove_file(target);
        }
        written
    }

    fn copy_to(&self, target: &Path) -> Result<Backup, JournalError> {
        let name = target.to_str().ok_or_else(|| JournalError::BackupTarget {
            path: target.to_path_buf(),
            source: std::io::Error::new(ErrorKind::InvalidInput, "the path is not UTF-8"),
        })?;
        self.db
            .execute("VACUUM INTO ?1", args![name])
            .map_err(db_error(&self.path, "copying the journal"))?;
        let copy = Journal::open_read_only(target)?;
        let executions = copy
            .db
            .query_one("SELECT count(*) FROM executions", args![], |row| row.i64(0))
            .map_err(db_error(target, "reading the copy back"))?;
        let bytes = std::fs::metadata(target)
            .map_err(|source| JournalError::BackupTarget { path: target.to_path_buf(), source })?
            .len();
        Ok(Backup { bytes, executions: u64::try_from(executions).unwrap_or(0) })
    }
}
