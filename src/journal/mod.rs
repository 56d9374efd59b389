//! The durable record of every SMS jobctl decides to send, and of each job's
//! state, in one SQLite file or in a PostgreSQL database (`[journal] url`,
//! for an HA pair). Every promise below holds on both.
//!
//! The journal is what makes a restart safe. Its promises:
//!
//! - An execution row is **committed before the SMS leaves** (status
//!   `sending`, [`Journal::begin_send`]) and updated with the outcome after
//!   ([`Journal::finish_send`]). A process killed in between leaves the row in
//!   `sending`; at start-up [`Journal::recover_in_flight`] turns it into
//!   `uncertain`, which is never re-sent automatically and still counts
//!   against budgets.
//! - A rule's execution row and the job state that decided it are written
//!   in **one transaction**, so a crash after the row is committed cannot
//!   leave a state from which the same action would be due again.
//! - Every backend attempt is kept (table `attempts`), so failover shows
//!   which backend failed and which delivered.
//! - **One writer at a time.** [`Journal::open`] takes an exclusive lock
//!   on `<journal>.lock` (on PostgreSQL, [`Journal::open_at`] a session
//!   advisory lock) and holds it as long as the journal lives; a second
//!   writer is refused ([`JournalError::Locked`], [`JournalError::LockedInDatabase`]), so no action is sent
//!   twice by two processes and nobody settles another's sends in flight.
//!   The one exception is [`SilenceWriter`]: it only adds and ends silences,
//!   a table the daemon reads and never writes, so it needs no lock.
//! - Nothing is silently dropped: a message held back by a budget or by
//!   `--dry-run` is journalled too ([`Journal::record_suppressed`]).
//!
//! Each write is its own transaction, and with `synchronous = FULL` each
//! commit waits for the disk (an fsync of the WAL). A cycle in which dozens
//! of actions fall due therefore journals them in one [`Journal::batch`]:
//! one commit for all of them instead of one each, every message still
//! committed before any of them leaves. Inside a batch each write is a
//! savepoint, so one that fails is undone alone, as it would be outside.
//!
//! **Every write transaction begins in `Journal::begin_write`** (each
//! write, each batch, each schema upgrade, each silence): a condition every
//! write must meet has one place to be checked.
//!
//! The API is synchronous and owns its connection (`db`); the engine
//! calls it from a dedicated thread or `spawn_blocking`, never on the async
//! runtime. The file is in WAL mode so that `jobctl status` and
//! `jobctl history` ([`Journal::open_read_only`]) read while the daemon
//! writes, without blocking it or being blocked.
//!
//! Instants are stored as **integer Unix milliseconds** (`created_at`,
//! `updated_at`, `at`): exact to compare and order, precise enough for
//! evaluation cycles, and readable in `sqlite3` with
//! `datetime(created_at / 1000, 'unixepoch')`. Job states are stored as JSON
//! next to their phase name.
//!
//! The journal does not know what a job state holds: it stores any state
//! that implements [`JournalState`] (serde, and a phase name), and reads
//! states back as the type its caller asks for. The rules own the state;
//! the journal sits below them and never imports them.
//!
//! The schema version lives in `PRAGMA user_version` (PostgreSQL: the table
//! `jobctl_schema`). Opening an older
//! journal read-write upgrades it; a newer one is refused, and so is any file
//! that is not a jobctl journal — such a file is never written to.
//!
//! # Where things are
//!
//! This file holds the [`Journal`] handle: opening it, its errors, and the
//! transactions every write runs in ([`Journal::batch`] and the write lock).
//! The parts:
//!
//! - `db` — the storage interface: one connection to SQLite or PostgreSQL,
//!   the journal's SQL written once for both, rows read by index.
//! - `postgres` — what is PostgreSQL's own: connecting (password source,
//!   TLS), the `jobctl_schema` version table, the advisory writer lock.
//! - `migrate` — an SQLite journal copied into PostgreSQL, checked row by
//!   row (`jobctl journal migrate`).
//! - `lock` — one writer per SQLite journal: the lock file every writer holds,
//!   so two daemons (or a `send` next to a daemon) never write one journal.
//! - `schema` — the tables, the `user_version` migrations, and the checks
//!   that refuse another program's database or a newer journal.
//! - `execution` — what an execution is: its id, its statuses, its attempts,
//!   and how a row reads back.
//! - `sends` — writing sends: planned, sending, finished, suppressed;
//!   recovery of what a killed process left in flight; budget counts.
//! - `results` — what became of a rule's action: recovered, not recovered
//!   or unverified (on its row, once), gave up (a row of its own), and the
//!   counts a job's `limit` is checked against.
//! - `states` — job states, saved and loaded as the caller's type.
//! - `history` — the queries behind `jobctl history` and `jobctl status`.
//! - `silences` — silences and the actions they held back, with the one
//!   write path that works beside the daemon's lock (`SilenceWriter`).
//! - `outages` — jobs' mass outages (one open row per job, so one
//!   escalation per outage across restarts) and the actions they held.

mod backup;
mod db;
mod execution;
mod history;
mod lock;
mod migrate;
mod outages;
mod postgres;
mod report;
mod results;
mod schema;
mod sends;
mod silences;
mod states;

use std::cell::Cell;
use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags};

use crate::clock::{Clock, SystemClock};
use db::Db;
use lock::JournalLock;
use schema::refuse_non_sqlite;

pub use db::DbError;
pub use postgres::{redacted as redacted_url, Location, PostgresTarget, TlsMode};

pub use backup::Backup;
pub use execution::{
    ActionResult, Attempt, Channel, DeviceResult, Execution, ExecutionId, ExecutionStatus,
    UnknownStatus,
};
pub use history::HistoryFilter;
pub use migrate::{migrate, sqlite_source, Migrated};
pub use outages::{MassOutageRecord, OutageChange, OutageHeldAction};
pub use report::DeviceActivity;
pub use results::ActionRef;
pub use schema::SCHEMA_VERSION;
pub use sends::{DeviceAction, Origin, PlannedSend, SendResult, Suppression};
pub use silences::{
    ActiveHold, Expired, HeldAction, NewSilence, Silence, SilenceId, SilenceWriter,
};
pub use states::{EncodedState, JournalState};

/// The journal: executions, their attempts, and job states.
pub struct Journal {
    /// The connection, to SQLite or PostgreSQL.
    db: Db,
    /// The file, named in every error; `:memory:` for an in-memory journal;
    /// for PostgreSQL, its URL (which never holds a password).
    path: PathBuf,
    clock: Arc<dyn Clock>,
    /// Whether a [`Journal::batch`] is open: writes are then savepoints in
    /// its transaction, and never transactions of their own.
    in_batch: bool,
    /// A journal opened for writing holds the file's writer lock for its
    /// whole life (`lock`); a reader or an in-memory journal holds none.
    _lock: Option<JournalLock>,
    /// A PostgreSQL writer: the session ([`Db::generation`]) that took the
    /// database's writer lock. A reconnection makes a new session that
    /// holds no lock until a write takes it again.
    writer_session: Cell<Option<u64>>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish_non_exhaustive()
    }
}

/// Why the journal could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file exists but is not an SQLite database.
    #[error(
        "{path}: not an SQLite database, so not a jobctl journal; it was left untouched \
         (move it away or set [journal] path to another file)"
    )]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// The file is an SQLite database that belongs to something else.
    #[error(
        "{path}: an SQLite database but not a jobctl journal ({evidence}); \
         it was left untouched (set [journal] path to another file)"
    )]
    ForeignDatabase {
        /// The file.
        path: PathBuf,
        /// What gave it away, e.g. `it has a table "devices"`.
        evidence: String,
    },
    /// The journal was written by a newer jobctl.
    #[error(
        "{path}: journal schema version {found} is newer than this jobctl understands \
         (up to {supported}); upgrade jobctl or restore a journal from before the downgrade"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A read-only open found a journal that needs upgrading first.
    #[error(
        "{path}: journal schema version {found} is older than this jobctl's {supported}; \
         start the jobctl daemon once to upgrade it"
    )]
    OlderSchema {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The version this build reads.
        supported: i64,
    },
    /// A reader found no journal: no daemon has run with this path yet.
    #[error(
        "{path}: no journal there yet; `jobctl run` creates it when it first starts \
         (the rules' [journal] path says where it is)"
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// Another process writes this journal (it holds the lock file).
    #[error(
        "{path}: another jobctl is writing this journal ({holder}, holding {lock_file}); \
         only one of `jobctl run`, `run --once`, `send` and `test-rule --send` may write \
         a journal at a time: wait for it or stop it first (history, status and check work beside it)",
        holder = Holder(*holder)
    )]
    Locked {
        /// The journal.
        path: PathBuf,
        /// The lock file beside it.
        lock_file: PathBuf,
        /// The PID the holder wrote into the lock file, unless it has not
        /// written it yet.
        holder: Option<u32>,
    },
    /// The lock file beside the journal cannot be opened or locked (e.g.
    /// its directory is not writable).
    #[error("{path}: cannot take the journal's writer lock")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// `jobctl journal backup`: the file to write exists already.
    #[error("{path}: already exists; a backup never overwrites a file (choose a new name)")]
    BackupExists {
        /// The file.
        path: PathBuf,
    },
    /// `jobctl journal backup`: the file to write cannot be created.
    #[error("{path}: cannot write the backup there")]
    BackupTarget {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The file could not be read before SQLite was asked to open it.
    #[error("{path}: cannot read the journal")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The database (SQLite or PostgreSQL) failed.
    #[error("{path}: error while {doing}")]
    Database {
        /// The file or URL.
        path: PathBuf,
        /// What the journal was doing, e.g. "recording an attempt".
        doing: &'static str,
        /// What the database said.
        #[source]
        source: DbError,
    },
    /// An execution id that the journal does not hold.
    #[error("{path}: no execution {id} in the journal")]
    UnknownExecution {
        /// The file.
        path: PathBuf,
        /// The id asked for.
        id: ExecutionId,
    },
    /// An execution was asked to move to a status its current one forbids,
    /// e.g. a message already `sent` to be sent again.
    #[error("{path}: execution {id} is {status}, so it cannot be {wanted}")]
    WrongStatus {
        /// The file.
        path: PathBuf,
        /// The execution.
        id: ExecutionId,
        /// Its current status.
        status: ExecutionStatus,
        /// What was asked, e.g. "marked as sending".
        wanted: &'static str,
    },
    /// SQLite undid a batch's transaction after an error inside it (a full
    /// disk, an I/O error), so the batch's later writes were refused rather
    /// than committed on their own; nothing of the batch is kept.
    #[error("{path}: a batch of writes was undone after an earlier error; none of it was kept")]
    BatchUndone {
        /// The file.
        path: PathBuf,
    },
    /// A stored job state that this build cannot decode.
    #[error("{path}: the stored state of job {job:?} on device {device_key:?} is unreadable")]
    UnreadableState {
        /// The file.
        path: PathBuf,
        /// The job.
        job: String,
        /// The device.
        device_key: String,
        /// What the decoder said.
        #[source]
        source: serde_json::Error,
    },
    /// Another process writes this PostgreSQL journal (it holds the
    /// journal's advisory lock).
    #[error(
        "{path}: another jobctl is writing this journal ({holder}, holding its advisory lock); \
         only one of `jobctl run`, `run --once`, `send` and `test-rule --send` may write \
         a journal at a time: wait for it or stop it first (history, status and check work beside it)"
    )]
    LockedInDatabase {
        /// The URL.
        path: PathBuf,
        /// Who holds the lock, as PostgreSQL shows the session: its
        /// application name (host and PID) and backend PID.
        holder: String,
    },
    /// The PostgreSQL server could not be reached or refused the login.
    #[error("{path}: cannot connect to the journal's PostgreSQL database")]
    Connect {
        /// The URL.
        path: PathBuf,
        /// What the client or the server said (never the password).
        #[source]
        source: DbError,
    },
    /// `[journal] url` cannot be used as it is.
    #[error("{path}: {reason}")]
    BadUrl {
        /// The URL, as written (without a password: one is refused).
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// The PostgreSQL password (or TLS CA file) could not be read.
    #[error("{path}: {reason}")]
    Credentials {
        /// The URL.
        path: PathBuf,
        /// What went wrong, never the secret.
        reason: String,
    },
    /// The PostgreSQL database belongs to something else.
    #[error(
        "{path}: a PostgreSQL database but not a jobctl journal ({evidence}); \
         it was left untouched (point [journal] url at an empty database of its own)"
    )]
    ForeignPostgres {
        /// The URL.
        path: PathBuf,
        /// What gave it away, e.g. `it has a table "devices"`.
        evidence: String,
    },
    /// A reader found no journal in the PostgreSQL database.
    #[error(
        "{path}: no journal there yet; `jobctl run` creates it when it first starts \
         (the rules' [journal] url says where it is)"
    )]
    MissingInDatabase {
        /// The URL.
        path: PathBuf,
    },
    /// `journal migrate`: the PostgreSQL database already holds rows.
    #[error(
        "{path}: the target journal is not empty (table {table} has {rows} rows); \
         journal migrate only copies into an empty database, so nothing was copied"
    )]
    MigrationTargetNotEmpty {
        /// The URL.
        path: PathBuf,
        /// The first table found with rows.
        table: &'static str,
        /// How many.
        rows: u64,
    },
    /// `journal migrate`: the copy read back differs from the source.
    #[error("{path}: the copy of table {table} differs from the SQLite journal: {detail}")]
    MigrationDiffers {
        /// The URL.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// Where.
        detail: String,
    },
    /// What the journal was asked is for SQLite journals only.
    #[error("{path}: {what} works on an SQLite journal only; {instead}")]
    SqliteOnly {
        /// The URL.
        path: PathBuf,
        /// What was asked, e.g. "`jobctl journal backup`".
        what: &'static str,
        /// What to do instead, e.g. "use pg_dump".
        instead: &'static str,
    },
}

impl Journal {
    /// Opens (creating it if needed) the journal at `path` for the daemon,
    /// upgrading an older schema.
    ///
    /// A file that is not an SQLite database, an SQLite database of another
    /// program, or a journal from a newer jobctl is refused and not written.
    ///
    /// The journal's writer lock (`<path>.lock`) is taken first and held
    /// until the journal is dropped: while another process holds it, this
    /// fails at once with [`JournalError::Locked`], naming its PID.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        refuse_non_sqlite(path)?;
        let lock = JournalLock::acquire(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(path, flags)
            .map_err(sqlite_error(path, "opening the journal"))?;
        let mut journal = Journal::over_sqlite(connection, path, Some(lock));
        journal.prepare(true)?;
        Ok(journal)
    }

    /// Opens an existing journal for reading only, as `jobctl status` and
    /// `jobctl history` do next to a running daemon. It never upgrades the
    /// schema and never writes.
    pub fn open_read_only(path: &Path) -> Result<Journal, JournalError> {
        match std::fs::metadata(path) {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(JournalError::Missing { path: path.to_path_buf() });
            }
            Err(source) => {
                return Err(JournalError::Unreadable { path: path.to_path_buf(), source })
            }
        }
        refuse_non_sqlite(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(path, flags)
            .map_err(sqlite_error(path, "opening the journal"))?;
        let mut journal = Journal::over_sqlite(connection, path, None);
        journal.prepare(false)?;
        Ok(journal)
    }

    /// Opens the journal at `location` for writing: [`Journal::open`] for
    /// an SQLite file; for PostgreSQL, connects, takes the database's
    /// writer lock (an advisory lock held by the session) and applies the
    /// migrations.
    pub fn open_at(location: &Location) -> Result<Journal, JournalError> {
        match location {
            Location::Sqlite(path) => Journal::open(path),
            Location::Postgres(target) => {
                let mut journal = postgres::connect(target, false)?;
                journal.lock_postgres()?;
                journal.prepare_postgres(true)?;
                Ok(journal)
            }
        }
    }

    /// Opens the journal at `location` for reading only
    /// ([`Journal::open_read_only`]; on PostgreSQL, a read-only session).
    pub fn open_read_only_at(location: &Location) -> Result<Journal, JournalError> {
        match location {
            Location::Sqlite(path) => Journal::open_read_only(path),
            Location::Postgres(target) => {
                let mut journal = postgres::connect(target, true)?;
                journal.prepare_postgres(false)?;
                Ok(journal)
            }
        }
    }

    /// A journal that lives in memory, for tests and `--once` experiments.
    pub fn open_in_memory() -> Result<Journal, JournalError> {
        let path = Path::new(":memory:");
        let connection =
            Connection::open_in_memory().map_err(sqlite_error(path, "opening the journal"))?;
        let mut journal = Journal::over_sqlite(connection, path, None);
        journal.prepare(true)?;
        Ok(journal)
    }

    /// A journal over an SQLite `connection`, not yet checked or prepared,
    /// holding `lock` when it is opened for writing.
    fn over_sqlite(connection: Connection, path: &Path, lock: Option<JournalLock>) -> Journal {
        // The journal has a few dozen distinct statements; keep them all.
        connection.set_prepared_statement_cache_capacity(64);
        Journal::new(Db::Sqlite(connection), path, lock)
    }

    /// A journal over `db`, not yet checked or prepared.
    fn new(db: Db, path: &Path, lock: Option<JournalLock>) -> Journal {
        Journal {
            db,
            path: path.to_path_buf(),
            clock: Arc::new(SystemClock),
            in_batch: false,
            _lock: lock,
            writer_session: Cell::new(None),
        }
    }

    /// Uses `clock` for the instants the journal records (the engine passes
    /// its own, tests a [`crate::clock::ManualClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Journal {
        self.clock = clock;
        self
    }

    /// Runs `work` in one transaction, so that everything it writes costs one
    /// commit (one fsync) rather than one each. Each write inside is a
    /// savepoint: one that fails is undone alone and returns its error to
    /// `work` as it would outside a batch, and reads inside see the batch's
    /// own writes (budgets count the messages journalled before them).
    ///
    /// Nothing written inside is durable before this returns `Ok`: a message
    /// journalled in a batch must not leave before then. If the commit
    /// fails, every write of the batch is undone and the error returned.
    /// Batches do not nest.
    pub fn batch<T>(
        &mut self,
        doing: &'static str,
        work: impl FnOnce(&mut Journal) -> T,
    ) -> Result<T, JournalError> {
        // The batch's transaction begins where every write does; it stays
        // open, and is committed or undone here.
        self.begin_write(doing)?.keep_open();
        self.in_batch = true;
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(self)));
        self.in_batch = false;
        let result = match done {
            Ok(result) => result,
            Err(panic) => {
                self.rollback();
                std::panic::resume_unwind(panic);
            }
        };
        if !self.db.in_transaction() {
            return Err(JournalError::BatchUndone { path: self.path.clone() });
        }
        if let Err(source) = self.db.commit() {
            self.rollback();
            return Err(JournalError::Database { path: self.path.clone(), doing, source });
        }
        Ok(result)
    }

    /// Undoes an open batch (a failed commit may leave it open).
    fn rollback(&self) {
        if self.db.in_transaction() {
            // Nothing more to do if this fails too: the connection is
            // closed with the journal, which undoes what is not committed.
            let _ = self.db.rollback();
        }
    }

    /// Starts a write: a transaction, or a savepoint when a batch is open.
    ///
    /// **Every write transaction of the journal begins here** (each write,
    /// each batch, each schema upgrade, each silence), so that a condition
    /// every write must meet is checked in one place.
    fn begin_write(&self, doing: &'static str) -> Result<Write<'_>, JournalError> {
        let path = &self.path;
        if !self.in_batch {
            self.hold_writer_lock()?;
            self.db.begin().map_err(db_error(path, doing))?;
            if self.writer_session.get().is_some_and(|held| held != self.db.generation()) {
                // The BEGIN found the connection lost and made a new one,
                // which holds no lock yet: undo it, take the lock there
                // (or be refused), and begin again.
                let _ = self.db.rollback();
                self.hold_writer_lock()?;
                self.db.begin().map_err(db_error(path, doing))?;
                if self.writer_session.get().is_some_and(|held| held != self.db.generation()) {
                    // Lost again in between: this session holds no lock.
                    let _ = self.db.rollback();
                    let source = DbError::Lost;
                    return Err(JournalError::Database { path: path.clone(), doing, source });
                }
            }
            return Ok(Write { db: &self.db, savepoint: false, done: false });
        }
        if !self.db.in_transaction() {
            // SQLite rolled the batch back (e.g. the disk is full). A write
            // now would commit on its own, outside the batch that its caller
            // will report as failed, so refuse it.
            return Err(JournalError::BatchUndone { path: path.clone() });
        }
        self.db.savepoint().map_err(db_error(path, doing))?;
        Ok(Write { db: &self.db, savepoint: true, done: false })
    }
}

impl Journal {
    /// On PostgreSQL, makes sure the current session holds the writer lock
    /// the journal took when it opened: after a reconnection it is taken
    /// again, or the write is refused with
    /// [`JournalError::LockedInDatabase`] when another jobctl took it
    /// meanwhile (and tried again at the next write). SQLite's lock file
    /// does not depend on a connection.
    fn hold_writer_lock(&self) -> Result<(), JournalError> {
        let Some(held) = self.writer_session.get() else { return Ok(()) };
        if held == self.db.generation() {
            return Ok(());
        }
        self.lock_postgres()?;
        tracing::info!("journal {}: the writer lock is held again", self.path.display());
        Ok(())
    }
}

/// `PID 1234`, as a refused writer names the lock's holder.
struct Holder(Option<u32>);

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(pid) => write!(f, "PID {pid}"),
            None => f.write_str("PID not yet written"),
        }
    }
}

/// One write: a transaction of its own, or a savepoint inside a
/// [`Journal::batch`]. Dropped without [`Write::commit`], it is undone.
struct Write<'c> {
    db: &'c Db,
    /// A savepoint in a batch's transaction, not a transaction of its own.
    savepoint: bool,
    /// Committed, released or handed over: nothing to undo on drop.
    done: bool,
}

impl Write<'_> {
    /// Commits the transaction, or releases the savepoint into the batch's
    /// transaction (committed when the batch ends).
    fn commit(mut self) -> Result<(), DbError> {
        self.done = true;
        if self.savepoint {
            self.db.release()
        } else {
            self.db.commit()
        }
    }

    /// Leaves the transaction open for [`Journal::batch`] to end.
    fn keep_open(mut self) {
        self.done = true;
    }
}

impl Drop for Write<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Undone: the error that dropped it is what its caller reports.
        if self.savepoint {
            let _ = self.db.rollback_to_savepoint();
        } else if self.db.in_transaction() {
            let _ = self.db.rollback();
        }
    }
}

impl Deref for Write<'_> {
    type Target = Db;

    fn deref(&self) -> &Db {
        self.db
    }
}

/// Names the file and what the journal was doing on a database error, for
/// `map_err`.
fn db_error<'p>(path: &'p Path, doing: &'static str) -> impl FnOnce(DbError) -> JournalError + 'p {
    move |source| JournalError::Database { path: path.to_path_buf(), doing, source }
}

/// [`db_error`] for an error straight from rusqlite.
fn sqlite_error<'p>(
    path: &'p Path,
    doing: &'static str,
) -> impl FnOnce(rusqlite::Error) -> JournalError + 'p {
    move |source| JournalError::Database {
        path: path.to_path_buf(),
        doing,
        source: DbError::Sqlite(source),
    }
}

#[cfg(test)]
#[allow(dead_code, reason = "the unit tests use part of the PostgreSQL harness")]
#[path = "../../tests/support/postgres.rs"]
mod test_postgres;

/// The tests' one way of waiting for a condition, which the PostgreSQL
/// harness uses (as `super::wait`, as in `tests/support`).
#[cfg(test)]
#[allow(dead_code, reason = "the PostgreSQL harness uses part of it")]
#[path = "../../tests/support/wait.rs"]
mod wait;

/// The journal's unit tests run on both backends, as `tests/journal.rs`
/// does: [`on_both_backends!`] makes `name::sqlite` and `name::postgres`
/// of each `fn name(b: &TestBackend)`.
#[cfg(test)]
pub(crate) mod test_backend {
    use std::path::PathBuf;

    use super::{test_postgres, Journal, Location, PostgresTarget, TlsMode};
    use crate::secret::SecretSource;

    /// Where a unit test's journal lives.
    pub(crate) enum TestBackend {
        /// A file in a temporary directory.
        Sqlite(tempfile::TempDir),
        /// A fresh database of the test binary's PostgreSQL server.
        Postgres(test_postgres::TestDatabase),
    }

    impl TestBackend {
        pub(crate) fn sqlite() -> TestBackend {
            TestBackend::Sqlite(tempfile::tempdir().unwrap())
        }

        /// `None` when PostgreSQL is not installed (skipped).
        pub(crate) fn postgres() -> Option<TestBackend> {
            test_postgres::fresh_database().map(TestBackend::Postgres)
        }

        pub(crate) fn location(&self) -> Location {
            match self {
                TestBackend::Sqlite(dir) => Location::Sqlite(dir.path().join("journal.db")),
                TestBackend::Postgres(db) => Location::Postgres(PostgresTarget {
                    url: db.url.clone(),
                    password: Some(SecretSource::File(db.password_file.clone())),
                    base_dir: PathBuf::from("/"),
                    tls: TlsMode::Disable,
                    ca_file: None,
                }),
            }
        }

        /// The journal, opened for writing.
        pub(crate) fn open(&self) -> Journal {
            Journal::open_at(&self.location()).unwrap()
        }
    }

    macro_rules! on_both_backends {
        ($($name:ident),* $(,)?) => {$(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name(&$crate::journal::test_backend::TestBackend::sqlite());
                }

                #[test]
                fn postgres() {
                    if let Some(b) = $crate::journal::test_backend::TestBackend::postgres() {
                        super::$name(&b);
                    }
                }
            }
        )*};
    }
    pub(crate) use on_both_backends;
}
