//! The durable record of every SMS jobctl decides to send, and of each job's
//! state, in one SQLite file.
//!
//! The journal is what makes a restart safe. Its promises:
//!
//! - An execution row is **committed before the SMS leaves** (status
//!   `sending`, [`Journal::begin_send`]) and updated with the outcome after
//!   ([`Journal::finish_send`]). A process killed in between leaves the row in
//!   `sending`; at start-up [`Journal::recover_in_flight`] turns it into
//!   `uncertain`, which is never re-sent automatically and still counts
//!   against budgets.
//! - A rule's execution row and the [`JobState`] that decided it are written
//!   in **one transaction**, so a crash after the row is committed cannot
//!   leave a state from which the same action would be due again.
//! - Every backend attempt is kept (table `attempts`), so failover shows
//!   which backend failed and which delivered.
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
//! The API is synchronous and owns its [`rusqlite::Connection`]; the engine
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
//! The schema version lives in `PRAGMA user_version`. Opening an older
//! journal read-write upgrades it; a newer one is refused, and so is any file
//! that is not a jobctl journal — such a file is never written to.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{
    params, Connection, ErrorCode, OpenFlags, OptionalExtension, Savepoint, Statement, Transaction,
};

use crate::clock::{Clock, SystemClock};
use crate::rules::state::JobState;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = 1;

/// One script per version: `MIGRATIONS[n]` upgrades version `n` to `n + 1`.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [r"
CREATE TABLE executions (
    id            INTEGER PRIMARY KEY,
    job           TEXT,              -- NULL for a manual send
    device_key    TEXT,              -- e.g. 'platform_id=12,device_id=30785'
    socket        TEXT NOT NULL,
    phone         TEXT NOT NULL,
    text          TEXT NOT NULL,
    episode       INTEGER,
    attempt       INTEGER,           -- action number within the episode
    trigger_value REAL,
    status        TEXT NOT NULL CHECK (status IN
                    ('planned', 'sending', 'sent', 'failed', 'uncertain', 'suppressed', 'dry_run')),
    backend       TEXT,              -- the backend of the latest attempt
    detail        TEXT,              -- delivery reference, error or suppression reason
    manual        INTEGER NOT NULL CHECK (manual IN (0, 1)),
    created_at    INTEGER NOT NULL,  -- Unix milliseconds
    updated_at    INTEGER NOT NULL
);
CREATE INDEX executions_by_created_at ON executions (created_at);
CREATE INDEX executions_by_socket ON executions (socket, created_at);
CREATE INDEX executions_by_job_device ON executions (job, device_key, created_at);
CREATE INDEX executions_in_flight ON executions (status) WHERE status IN ('planned', 'sending');

CREATE TABLE attempts (
    id           INTEGER PRIMARY KEY,
    execution_id INTEGER NOT NULL REFERENCES executions (id),
    backend      TEXT NOT NULL,
    outcome      TEXT NOT NULL CHECK (outcome IN ('sent', 'failed', 'uncertain')),
    detail       TEXT,
    at           INTEGER NOT NULL
);
CREATE INDEX attempts_by_execution ON attempts (execution_id);

CREATE TABLE job_state (
    job        TEXT NOT NULL,
    device_key TEXT NOT NULL,
    phase      TEXT NOT NULL,      -- inactive, pending, firing or resolved
    state      TEXT NOT NULL,      -- the JobState as JSON
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (job, device_key)
) WITHOUT ROWID;
"];

/// How long a writer waits for another connection's write lock before
/// giving up (readers never wait in WAL mode).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What recovery writes on a message that may have left when jobctl died.
const UNCERTAIN_AFTER_CRASH: &str =
    "jobctl stopped while this message was being sent; it may have left, so it is not sent again";
/// What recovery writes on a message that was decided but had not left.
const NOT_SENT_AFTER_CRASH: &str = "jobctl stopped before this message was sent; it did not leave";

/// The journal: executions, their attempts, and job states.
pub struct Journal {
    connection: Connection,
    /// The file, named in every error; `:memory:` for an in-memory journal.
    path: PathBuf,
    clock: Arc<dyn Clock>,
    /// Whether a [`Journal::batch`] is open: writes are then savepoints in
    /// its transaction, and never transactions of their own.
    in_batch: bool,
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
    /// The file could not be read before SQLite was asked to open it.
    #[error("{path}: cannot read the journal")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("{path}: error while {doing}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// What the journal was doing, e.g. "recording an attempt".
        doing: &'static str,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
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
}

/// The row id of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecutionId(pub i64);

impl fmt::Display for ExecutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Where an execution stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecutionStatus {
    /// Decided and journalled, not yet handed to a backend.
    Planned,
    /// Being handed to a backend; if jobctl dies now, it becomes uncertain.
    Sending,
    /// A backend accepted it.
    Sent,
    /// Every attempt so far failed definitely: it did not leave.
    Failed,
    /// It may or may not have left (a timeout after handing it over, or a
    /// crash while sending). Never re-sent automatically.
    Uncertain,
    /// Held back by a budget; it did not leave.
    Suppressed,
    /// Evaluated under `--dry-run`; it did not leave.
    DryRun,
}

impl ExecutionStatus {
    /// Every status, in the order of an execution's life.
    pub const ALL: [ExecutionStatus; 7] = [
        ExecutionStatus::Planned,
        ExecutionStatus::Sending,
        ExecutionStatus::Sent,
        ExecutionStatus::Failed,
        ExecutionStatus::Uncertain,
        ExecutionStatus::Suppressed,
        ExecutionStatus::DryRun,
    ];

    /// The word stored in the journal and accepted by `--outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Planned => "planned",
            ExecutionStatus::Sending => "sending",
            ExecutionStatus::Sent => "sent",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Uncertain => "uncertain",
            ExecutionStatus::Suppressed => "suppressed",
            ExecutionStatus::DryRun => "dry_run",
        }
    }

    /// Whether a message in this status may have left or is about to, which
    /// is what budgets count.
    pub fn may_have_left(self) -> bool {
        matches!(
            self,
            ExecutionStatus::Planned
                | ExecutionStatus::Sending
                | ExecutionStatus::Sent
                | ExecutionStatus::Uncertain
        )
    }
}

impl fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not an [`ExecutionStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown outcome {0:?}; expected one of planned, sending, sent, failed, uncertain, suppressed, dry_run")]
pub struct UnknownStatus(pub String);

impl FromStr for ExecutionStatus {
    type Err = UnknownStatus;

    fn from_str(word: &str) -> Result<ExecutionStatus, UnknownStatus> {
        ExecutionStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == word)
            .ok_or_else(|| UnknownStatus(word.to_string()))
    }
}

impl ToSql for ExecutionStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for ExecutionStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<ExecutionStatus> {
        value.as_str()?.parse().map_err(|err| FromSqlError::Other(Box::new(err)))
    }
}

/// Why a message was decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// A job fired on a device.
    Rule {
        /// The job's name.
        job: String,
        /// The device, as its key labels (`platform_id=12,device_id=30785`).
        device_key: String,
        /// The episode, from [`crate::rules::state::ActionDue`].
        episode: u64,
        /// The action's number within the episode.
        attempt: u32,
        /// The value that made the condition true.
        trigger_value: Option<f64>,
        /// The job's state after the step that decided this message, saved in
        /// the same transaction as the execution row.
        state_after: JobState,
    },
    /// `jobctl send` or `jobctl test-rule --send`.
    Manual,
}

/// A message about to be journalled.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedSend {
    /// Why it is sent.
    pub origin: Origin,
    /// The socket's name.
    pub socket: String,
    /// The socket's phone number (E.164).
    pub phone: String,
    /// The exact text that will leave.
    pub text: String,
}

/// What one backend made of one attempt to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    /// The backend accepted the message.
    Sent {
        /// The backend's name.
        backend: String,
        /// Its reference for the message (`+CMGS` number, gateway id), if any.
        reference: Option<String>,
    },
    /// The message definitely did not leave.
    Failed {
        /// The backend's name.
        backend: String,
        /// Why, in words.
        reason: String,
    },
    /// The message may or may not have left.
    Uncertain {
        /// The backend's name.
        backend: String,
        /// Why, in words.
        reason: String,
    },
}

impl SendResult {
    fn parts(&self) -> (ExecutionStatus, &str, Option<&str>) {
        match self {
            SendResult::Sent { backend, reference } => {
                (ExecutionStatus::Sent, backend, reference.as_deref())
            }
            SendResult::Failed { backend, reason } => {
                (ExecutionStatus::Failed, backend, Some(reason))
            }
            SendResult::Uncertain { backend, reason } => {
                (ExecutionStatus::Uncertain, backend, Some(reason))
            }
        }
    }
}

/// Why a message was journalled without being sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suppression {
    /// A budget is spent, e.g. "socket lobby: 10 messages in the last hour".
    OverBudget {
        /// Which budget, in words.
        reason: String,
    },
    /// jobctl runs with `--dry-run`.
    DryRun,
}

/// One backend's attempt at one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The backend's name.
    pub backend: String,
    /// [`ExecutionStatus::Sent`], [`ExecutionStatus::Failed`] or
    /// [`ExecutionStatus::Uncertain`].
    pub outcome: ExecutionStatus,
    /// The delivery reference or the reason for failure.
    pub detail: Option<String>,
    /// When the outcome was recorded.
    pub at: Timestamp,
}

/// An execution as the journal holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// Its id.
    pub id: ExecutionId,
    /// The job, or `None` for a manual send.
    pub job: Option<String>,
    /// The device, or `None` for a manual send.
    pub device_key: Option<String>,
    /// The socket's name.
    pub socket: String,
    /// The number it went to.
    pub phone: String,
    /// The text.
    pub text: String,
    /// The episode, for a rule's send.
    pub episode: Option<u64>,
    /// The action's number within the episode, for a rule's send.
    pub attempt: Option<u32>,
    /// The value that made the condition true.
    pub trigger_value: Option<f64>,
    /// Where it stands.
    pub status: ExecutionStatus,
    /// The backend of the latest attempt.
    pub backend: Option<String>,
    /// Delivery reference, error, or why it was suppressed or recovered.
    pub detail: Option<String>,
    /// Whether a person asked for it.
    pub manual: bool,
    /// When it was journalled.
    pub created_at: Timestamp,
    /// When its status last changed.
    pub updated_at: Timestamp,
    /// Every backend attempt, oldest first.
    pub attempts: Vec<Attempt>,
}

/// Which executions [`Journal::history`] returns, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// Only this job.
    pub job: Option<String>,
    /// Only this device key.
    pub device_key: Option<String>,
    /// Only executions journalled at or after this instant.
    pub since: Option<Timestamp>,
    /// Only this status.
    pub status: Option<ExecutionStatus>,
    /// At most this many.
    pub limit: Option<u32>,
}

impl Journal {
    /// Opens (creating it if needed) the journal at `path` for the daemon,
    /// upgrading an older schema.
    ///
    /// A file that is not an SQLite database, an SQLite database of another
    /// program, or a journal from a newer jobctl is refused and not written.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        refuse_non_sqlite(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(path, flags)
            .map_err(sqlite_error(path, "opening the journal"))?;
        let mut journal = Journal::new(connection, path);
        journal.prepare(true)?;
        Ok(journal)
    }

    /// Opens an existing journal for reading only, as `jobctl status` and
    /// `jobctl history` do next to a running daemon. It never upgrades the
    /// schema and never writes.
    pub fn open_read_only(path: &Path) -> Result<Journal, JournalError> {
        if let Err(source) = std::fs::metadata(path) {
            return Err(JournalError::Unreadable { path: path.to_path_buf(), source });
        }
        refuse_non_sqlite(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(path, flags)
            .map_err(sqlite_error(path, "opening the journal"))?;
        let mut journal = Journal::new(connection, path);
        journal.prepare(false)?;
        Ok(journal)
    }

    /// A journal that lives in memory, for tests and `--once` experiments.
    pub fn open_in_memory() -> Result<Journal, JournalError> {
        let path = Path::new(":memory:");
        let connection =
            Connection::open_in_memory().map_err(sqlite_error(path, "opening the journal"))?;
        let mut journal = Journal::new(connection, path);
        journal.prepare(true)?;
        Ok(journal)
    }

    /// A journal over `connection`, not yet checked or prepared.
    fn new(connection: Connection, path: &Path) -> Journal {
        Journal {
            connection,
            path: path.to_path_buf(),
            clock: Arc::new(SystemClock),
            in_batch: false,
        }
    }

    /// Uses `clock` for the instants the journal records (the engine passes
    /// its own, tests a [`crate::clock::ManualClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Journal {
        self.clock = clock;
        self
    }

    /// The file this journal lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the schema, then (read-write only) switches to WAL and
    /// upgrades. Nothing is written before the checks pass.
    fn prepare(&mut self, writable: bool) -> Result<(), JournalError> {
        let path = &self.path;
        self.connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(sqlite_error(path, "setting the busy timeout"))?;
        let found: i64 = self
            .connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|source| classify_open_error(path, source))?;
        let foreign_table: Option<String> = self
            .connection
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' ORDER BY name LIMIT 1",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(|source| classify_open_error(path, source))?;
        if found > SCHEMA_VERSION {
            return Err(JournalError::NewerSchema {
                path: path.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < 0 {
            let evidence = format!("its user_version is {found}");
            return Err(JournalError::ForeignDatabase { path: path.clone(), evidence });
        }
        if let (0, Some(table)) = (found, foreign_table) {
            let evidence = format!("it has a table {table:?}");
            return Err(JournalError::ForeignDatabase { path: path.clone(), evidence });
        }
        if !writable {
            if found < SCHEMA_VERSION {
                return Err(JournalError::OlderSchema {
                    path: path.clone(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            return Ok(());
        }
        // In-memory databases answer "memory"; files switch to WAL.
        let _mode: String = self
            .connection
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(sqlite_error(path, "switching to WAL mode"))?;
        // FULL: a committed `sending` row survives a power cut, not only a crash.
        self.connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(sqlite_error(path, "setting synchronous mode"))?;
        self.connection
            .pragma_update(None, "foreign_keys", true)
            .map_err(sqlite_error(path, "enabling foreign keys"))?;
        for version in found..SCHEMA_VERSION {
            let tx = begin(&mut self.connection, self.in_batch, path, "starting a schema upgrade")?;
            // `found` is known to be in 0..SCHEMA_VERSION here.
            let script = MIGRATIONS[usize::try_from(version).unwrap_or(usize::MAX)];
            tx.execute_batch(script).map_err(sqlite_error(path, "upgrading the schema"))?;
            tx.pragma_update(None, "user_version", version + 1)
                .map_err(sqlite_error(path, "recording the schema version"))?;
            tx.commit().map_err(sqlite_error(path, "committing the schema upgrade"))?;
        }
        Ok(())
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
        let path = &self.path;
        self.connection.execute_batch("BEGIN IMMEDIATE").map_err(sqlite_error(path, doing))?;
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
        if self.connection.is_autocommit() {
            return Err(JournalError::BatchUndone { path: self.path.clone() });
        }
        if let Err(source) = self.connection.execute_batch("COMMIT") {
            self.rollback();
            return Err(JournalError::Sqlite { path: self.path.clone(), doing, source });
        }
        Ok(result)
    }

    /// Undoes an open batch (a failed commit may leave it open).
    fn rollback(&self) {
        if !self.connection.is_autocommit() {
            // Nothing more to do if this fails too: the connection is
            // closed with the journal, which undoes what is not committed.
            let _ = self.connection.execute_batch("ROLLBACK");
        }
    }

    /// Journals a message that is about to be handed to a backend (status
    /// `sending`), committed before this returns. Call [`Journal::finish_send`]
    /// with the outcome.
    pub fn begin_send(&mut self, planned: &PlannedSend) -> Result<ExecutionId, JournalError> {
        self.insert_execution(planned, ExecutionStatus::Sending, None)
    }

    /// Journals a message decided now but sent later (status `planned`), for
    /// a send queue; call [`Journal::mark_sending`] just before it leaves.
    pub fn plan_send(&mut self, planned: &PlannedSend) -> Result<ExecutionId, JournalError> {
        self.insert_execution(planned, ExecutionStatus::Planned, None)
    }

    /// Marks an execution as leaving now: a planned one, or a failed or
    /// uncertain one that the caller decided to try again (a retry, or the
    /// next backend of a failover). Refuses one that was sent or never meant
    /// to leave.
    pub fn mark_sending(&mut self, id: ExecutionId) -> Result<(), JournalError> {
        let now = self.clock.now();
        let path = &self.path;
        let tx =
            begin(&mut self.connection, self.in_batch, path, "marking an execution as sending")?;
        let status = current_status(&tx, path, id)?;
        if !matches!(
            status,
            ExecutionStatus::Planned | ExecutionStatus::Failed | ExecutionStatus::Uncertain
        ) {
            return Err(JournalError::WrongStatus {
                path: path.clone(),
                id,
                status,
                wanted: "sent again",
            });
        }
        tx.execute(
            "UPDATE executions SET status = ?1, updated_at = ?2 WHERE id = ?3",
            params![ExecutionStatus::Sending, now.as_millisecond(), id.0],
        )
        .map_err(sqlite_error(path, "marking an execution as sending"))?;
        tx.commit().map_err(sqlite_error(path, "committing the sending mark"))
    }

    /// Records the outcome of one backend's attempt at an execution that is
    /// `sending`, and sets the execution's status to that outcome.
    pub fn finish_send(
        &mut self,
        id: ExecutionId,
        outcome: &SendResult,
    ) -> Result<(), JournalError> {
        let now = self.clock.now().as_millisecond();
        let path = &self.path;
        let (status, backend, detail) = outcome.parts();
        let tx = begin(&mut self.connection, self.in_batch, path, "recording a send outcome")?;
        let current = current_status(&tx, path, id)?;
        if current != ExecutionStatus::Sending {
            return Err(JournalError::WrongStatus {
                path: path.clone(),
                id,
                status: current,
                wanted: "given an outcome (it is not being sent)",
            });
        }
        tx.execute(
            "INSERT INTO attempts (execution_id, backend, outcome, detail, at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id.0, backend, status, detail, now],
        )
        .map_err(sqlite_error(path, "recording an attempt"))?;
        tx.execute(
            "UPDATE executions SET status = ?1, backend = ?2, detail = ?3, updated_at = ?4 \
             WHERE id = ?5",
            params![status, backend, detail, now, id.0],
        )
        .map_err(sqlite_error(path, "recording a send outcome"))?;
        tx.commit().map_err(sqlite_error(path, "committing a send outcome"))
    }

    /// Journals a message that will not be sent, with the reason: over
    /// budget (`suppressed`) or `--dry-run` (`dry_run`).
    pub fn record_suppressed(
        &mut self,
        planned: &PlannedSend,
        why: &Suppression,
    ) -> Result<ExecutionId, JournalError> {
        match why {
            Suppression::OverBudget { reason } => {
                self.insert_execution(planned, ExecutionStatus::Suppressed, Some(reason))
            }
            Suppression::DryRun => {
                self.insert_execution(planned, ExecutionStatus::DryRun, Some("dry run: not sent"))
            }
        }
    }

    fn insert_execution(
        &mut self,
        planned: &PlannedSend,
        status: ExecutionStatus,
        detail: Option<&str>,
    ) -> Result<ExecutionId, JournalError> {
        let now = self.clock.now().as_millisecond();
        let path = &self.path;
        let tx = begin(&mut self.connection, self.in_batch, path, "journalling a message")?;
        let (job, device_key, episode, attempt, trigger_value) = match &planned.origin {
            Origin::Rule { job, device_key, episode, attempt, trigger_value, state_after } => {
                let mut upsert = prepare_upsert(&tx, path)?;
                save_state(&mut upsert, path, job, device_key, state_after, now)?;
                (Some(job), Some(device_key), Some(*episode), Some(*attempt), *trigger_value)
            }
            Origin::Manual => (None, None, None, None, None),
        };
        tx.execute(
            "INSERT INTO executions (job, device_key, socket, phone, text, episode, attempt, \
             trigger_value, status, detail, manual, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)",
            params![
                job,
                device_key,
                planned.socket,
                planned.phone,
                planned.text,
                episode,
                attempt,
                trigger_value,
                status,
                detail,
                matches!(planned.origin, Origin::Manual),
                now,
            ],
        )
        .map_err(sqlite_error(path, "journalling a message"))?;
        let id = ExecutionId(tx.last_insert_rowid());
        tx.commit().map_err(sqlite_error(path, "committing a journalled message"))?;
        Ok(id)
    }

    /// At start-up, settles what a previous run left unfinished: `sending`
    /// becomes `uncertain` (it may have left; never re-sent automatically)
    /// and `planned` becomes `failed` (it did not leave). Returns those
    /// executions, updated, so the daemon can log each one.
    pub fn recover_in_flight(&mut self) -> Result<Vec<Execution>, JournalError> {
        let now = self.clock.now().as_millisecond();
        let path = &self.path;
        let tx = begin(&mut self.connection, self.in_batch, path, "recovering unfinished sends")?;
        let ids: Vec<i64> = {
            let mut statement = tx
                .prepare(
                    "SELECT id FROM executions WHERE status IN ('planned', 'sending') ORDER BY id",
                )
                .map_err(sqlite_error(path, "finding unfinished sends"))?;
            let rows = statement
                .query_map([], |row| row.get(0))
                .map_err(sqlite_error(path, "finding unfinished sends"))?;
            rows.collect::<Result<_, _>>()
                .map_err(sqlite_error(path, "finding unfinished sends"))?
        };
        for (from, to, detail) in [
            (ExecutionStatus::Sending, ExecutionStatus::Uncertain, UNCERTAIN_AFTER_CRASH),
            (ExecutionStatus::Planned, ExecutionStatus::Failed, NOT_SENT_AFTER_CRASH),
        ] {
            tx.execute(
                "UPDATE executions SET status = ?1, detail = ?2, updated_at = ?3 WHERE status = ?4",
                params![to, detail, now, from],
            )
            .map_err(sqlite_error(path, "recovering unfinished sends"))?;
        }
        tx.commit().map_err(sqlite_error(path, "committing the recovery"))?;
        ids.into_iter().map(|id| self.execution(ExecutionId(id))).collect()
    }

    /// Saves job states, all in one transaction (one per evaluation cycle).
    /// Rows of other (job, device) pairs are left as they are.
    pub fn save_states<'a>(
        &mut self,
        states: impl IntoIterator<Item = (&'a str, &'a str, &'a JobState)>,
    ) -> Result<(), JournalError> {
        let now = self.clock.now().as_millisecond();
        let path = &self.path;
        let tx = begin(&mut self.connection, self.in_batch, path, "saving job states")?;
        {
            // Thousands of states change in a busy cycle (every pending
            // state's time held grows): look the statement up once for all.
            let mut upsert = prepare_upsert(&tx, path)?;
            for (job, device_key, state) in states {
                save_state(&mut upsert, path, job, device_key, state, now)?;
            }
        }
        tx.commit().map_err(sqlite_error(path, "committing job states"))
    }

    /// Deletes the saved states of jobs not in `jobs` (removed from the
    /// rules), so that a job added back later under the same name starts
    /// afresh instead of inheriting a half-run `for` timer. Returns how many
    /// rows went. Executions are history and are kept.
    pub fn forget_states_except(&mut self, jobs: &[&str]) -> Result<usize, JournalError> {
        let path = &self.path;
        let tx =
            begin(&mut self.connection, self.in_batch, path, "forgetting states of removed jobs")?;
        let saved: Vec<String> = {
            let mut statement = tx
                .prepare("SELECT DISTINCT job FROM job_state")
                .map_err(sqlite_error(path, "listing saved job states"))?;
            let rows = statement
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(sqlite_error(path, "listing saved job states"))?;
            rows.collect::<Result<_, _>>()
                .map_err(sqlite_error(path, "listing saved job states"))?
        };
        let mut removed = 0;
        for job in saved.iter().filter(|job| !jobs.contains(&job.as_str())) {
            removed += tx
                .execute("DELETE FROM job_state WHERE job = ?1", params![job])
                .map_err(sqlite_error(path, "forgetting states of removed jobs"))?;
        }
        tx.commit().map_err(sqlite_error(path, "committing forgotten states"))?;
        Ok(removed)
    }

    /// Every saved job state, by (job, device key).
    pub fn load_states(&self) -> Result<HashMap<(String, String), JobState>, JournalError> {
        let doing = "reading job states";
        let mut statement = self
            .connection
            .prepare("SELECT job, device_key, state FROM job_state")
            .map_err(sqlite_error(&self.path, doing))?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get::<_, String>(2)?)))
            .map_err(sqlite_error(&self.path, doing))?;
        let mut states = HashMap::new();
        for row in rows {
            let (job, device_key, json): (String, String, String) =
                row.map_err(sqlite_error(&self.path, doing))?;
            match serde_json::from_str(&json) {
                Ok(state) => {
                    states.insert((job, device_key), state);
                }
                Err(source) => {
                    let path = self.path.clone();
                    return Err(JournalError::UnreadableState { path, job, device_key, source });
                }
            }
        }
        Ok(states)
    }

    /// How many messages journalled at or after `since` may have left or are
    /// about to (planned, sending, sent, uncertain), for budgets: to one
    /// socket, or to all sockets when `socket` is `None`. Failed, suppressed
    /// and dry-run messages do not count.
    pub fn count_sent_since(
        &self,
        socket: Option<&str>,
        since: Timestamp,
    ) -> Result<u32, JournalError> {
        let counted: Vec<String> = ExecutionStatus::ALL
            .iter()
            .filter(|status| status.may_have_left())
            .map(|status| format!("'{}'", status.as_str()))
            .collect();
        let count: i64 = self
            .connection
            .query_row(
                &format!(
                    "SELECT count(*) FROM executions WHERE created_at >= ?1 \
                     AND status IN ({}) AND (?2 IS NULL OR socket = ?2)",
                    counted.join(", ")
                ),
                params![since.as_millisecond(), socket],
                |row| row.get(0),
            )
            .map_err(sqlite_error(&self.path, "counting sent messages"))?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// Executions matching `filter`, newest first, each with its attempts.
    pub fn history(&self, filter: &HistoryFilter) -> Result<Vec<Execution>, JournalError> {
        let doing = "reading the history";
        let mut statement = self
            .connection
            .prepare(&format!(
                "SELECT {EXECUTION_COLUMNS} FROM executions \
                 WHERE (?1 IS NULL OR job = ?1) AND (?2 IS NULL OR device_key = ?2) \
                 AND (?3 IS NULL OR created_at >= ?3) AND (?4 IS NULL OR status = ?4) \
                 ORDER BY created_at DESC, id DESC LIMIT ?5"
            ))
            .map_err(sqlite_error(&self.path, doing))?;
        let limit = filter.limit.map_or(-1, i64::from);
        let rows = statement
            .query_map(
                params![
                    filter.job,
                    filter.device_key,
                    filter.since.map(Timestamp::as_millisecond),
                    filter.status,
                    limit
                ],
                execution_from_row,
            )
            .map_err(sqlite_error(&self.path, doing))?;
        let mut executions: Vec<Execution> =
            rows.collect::<Result<_, _>>().map_err(sqlite_error(&self.path, doing))?;
        for execution in &mut executions {
            execution.attempts = self.attempts(execution.id)?;
        }
        Ok(executions)
    }

    /// One execution, with its attempts.
    pub fn execution(&self, id: ExecutionId) -> Result<Execution, JournalError> {
        let mut execution = self
            .connection
            .query_row(
                &format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?1"),
                [id.0],
                execution_from_row,
            )
            .optional()
            .map_err(sqlite_error(&self.path, "reading an execution"))?
            .ok_or_else(|| JournalError::UnknownExecution { path: self.path.clone(), id })?;
        execution.attempts = self.attempts(id)?;
        Ok(execution)
    }

    fn attempts(&self, id: ExecutionId) -> Result<Vec<Attempt>, JournalError> {
        let doing = "reading attempts";
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT backend, outcome, detail, at FROM attempts \
                 WHERE execution_id = ?1 ORDER BY id",
            )
            .map_err(sqlite_error(&self.path, doing))?;
        let rows = statement
            .query_map([id.0], |row| {
                Ok(Attempt {
                    backend: row.get(0)?,
                    outcome: row.get(1)?,
                    detail: row.get(2)?,
                    at: timestamp_column(row, 3)?,
                })
            })
            .map_err(sqlite_error(&self.path, doing))?;
        rows.collect::<Result<_, _>>().map_err(sqlite_error(&self.path, doing))
    }
}

const EXECUTION_COLUMNS: &str = "id, job, device_key, socket, phone, text, episode, attempt, \
     trigger_value, status, backend, detail, manual, created_at, updated_at";

fn execution_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Execution> {
    Ok(Execution {
        id: ExecutionId(row.get(0)?),
        job: row.get(1)?,
        device_key: row.get(2)?,
        socket: row.get(3)?,
        phone: row.get(4)?,
        text: row.get(5)?,
        episode: row.get(6)?,
        attempt: row.get(7)?,
        trigger_value: row.get(8)?,
        status: row.get(9)?,
        backend: row.get(10)?,
        detail: row.get(11)?,
        manual: row.get(12)?,
        created_at: timestamp_column(row, 13)?,
        updated_at: timestamp_column(row, 14)?,
        attempts: Vec::new(),
    })
}

fn timestamp_column(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Timestamp> {
    let millis: i64 = row.get(index)?;
    Timestamp::from_millisecond(millis).map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Integer,
            Box::new(err),
        )
    })
}

/// One write: a transaction of its own, or a savepoint inside a
/// [`Journal::batch`]. Dropped without [`Write::commit`], it is undone.
enum Write<'c> {
    Transaction(Transaction<'c>),
    Savepoint(Savepoint<'c>),
}

impl Write<'_> {
    /// Commits the transaction, or releases the savepoint into the batch's
    /// transaction (committed when the batch ends).
    fn commit(self) -> rusqlite::Result<()> {
        match self {
            Write::Transaction(tx) => tx.commit(),
            Write::Savepoint(savepoint) => savepoint.commit(),
        }
    }
}

impl Deref for Write<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            Write::Transaction(tx) => tx,
            Write::Savepoint(savepoint) => savepoint,
        }
    }
}

/// Starts a write: a transaction, or a savepoint when a batch is open.
/// IMMEDIATE takes the write lock up front, so two writers queue on the busy
/// timeout instead of failing halfway through.
fn begin<'c>(
    connection: &'c mut Connection,
    in_batch: bool,
    path: &Path,
    doing: &'static str,
) -> Result<Write<'c>, JournalError> {
    if !in_batch {
        return connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map(Write::Transaction)
            .map_err(sqlite_error(path, doing));
    }
    if connection.is_autocommit() {
        // SQLite rolled the batch back (e.g. the disk is full). A write
        // now would commit on its own, outside the batch that its caller
        // will report as failed, so refuse it.
        return Err(JournalError::BatchUndone { path: path.to_path_buf() });
    }
    connection.savepoint().map(Write::Savepoint).map_err(sqlite_error(path, doing))
}

fn current_status(
    tx: &Connection,
    path: &Path,
    id: ExecutionId,
) -> Result<ExecutionStatus, JournalError> {
    tx.query_row("SELECT status FROM executions WHERE id = ?1", [id.0], |row| row.get(0))
        .optional()
        .map_err(sqlite_error(path, "reading an execution's status"))?
        .ok_or_else(|| JournalError::UnknownExecution { path: path.to_path_buf(), id })
}

/// Inserts or overwrites one (job, device)'s state; its parameters are those
/// of [`save_state`].
const UPSERT_STATE: &str = "INSERT INTO job_state (job, device_key, phase, state, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT (job, device_key) DO UPDATE SET \
     phase = excluded.phase, state = excluded.state, updated_at = excluded.updated_at";

/// Prepares [`UPSERT_STATE`] in `tx`, for [`save_state`].
fn prepare_upsert<'c>(
    tx: &'c Connection,
    path: &Path,
) -> Result<rusqlite::CachedStatement<'c>, JournalError> {
    tx.prepare_cached(UPSERT_STATE).map_err(sqlite_error(path, "saving a job state"))
}

fn save_state(
    upsert: &mut Statement<'_>,
    path: &Path,
    job: &str,
    device_key: &str,
    state: &JobState,
    now_millis: i64,
) -> Result<(), JournalError> {
    // A JobState holds only numbers, timestamps and enum tags: encoding it
    // cannot fail, and a failure here would be a bug worth a loud panic.
    let json = serde_json::to_string(state).expect("a JobState always encodes as JSON");
    upsert
        .execute(params![job, device_key, state.phase.name().as_str(), json, now_millis])
        .map_err(sqlite_error(path, "saving a job state"))?;
    Ok(())
}

/// The 16 bytes every SQLite 3 database file starts with.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Refuses an existing, non-empty file that does not start with the SQLite
/// header, before SQLite gets a chance to touch it.
fn refuse_non_sqlite(path: &Path) -> Result<(), JournalError> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(JournalError::Unreadable { path: path.to_path_buf(), source }),
    };
    let mut header = Vec::with_capacity(SQLITE_HEADER.len());
    file.by_ref()
        .take(SQLITE_HEADER.len() as u64)
        .read_to_end(&mut header)
        .map_err(|source| JournalError::Unreadable { path: path.to_path_buf(), source })?;
    if header.is_empty() || header == SQLITE_HEADER {
        Ok(())
    } else {
        Err(JournalError::NotADatabase { path: path.to_path_buf() })
    }
}

/// A corrupt or foreign file shows up on the first read: say so plainly.
fn classify_open_error(path: &Path, source: rusqlite::Error) -> JournalError {
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            JournalError::NotADatabase { path: path.to_path_buf() }
        }
        _ => JournalError::Sqlite { path: path.to_path_buf(), doing: "reading the schema", source },
    }
}

fn sqlite_error<'p>(
    path: &'p Path,
    doing: &'static str,
) -> impl FnOnce(rusqlite::Error) -> JournalError + 'p {
    move |source| JournalError::Sqlite { path: path.to_path_buf(), doing, source }
}
