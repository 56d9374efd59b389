//! What a journal file holds and how it gets there: the tables, the
//! `user_version` migrations, and the checks made before anything is
//! written.
//!
//! Those checks exist because `[journal] path` is typed by a person: a
//! typo can point it at the rules file, at the exporter's cache, or at a
//! journal that a newer jobctl already upgraded. Each of these is refused
//! with a message that says what the file is, and none of them is written
//! to, not even a `-wal` file beside it.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use rusqlite::{ErrorCode, OptionalExtension};

use super::db::Db;
use super::{db_error, sqlite_error, Journal, JournalError};

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = 2;

/// One script per version: `MIGRATIONS[n]` upgrades version `n` to `n + 1`.
/// A released script is never edited, down to its comments (SQLite keeps the
/// text in `sqlite_master`): a change is a new script and a new version.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    r"
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
",
    r"
-- Version 2: silences and the actions they held; mass outages; what became
-- of a rule's action (verify, limit); the devices an execution was for.
CREATE TABLE silences (
    id         INTEGER PRIMARY KEY,
    job        TEXT,               -- NULL: every job
    socket     TEXT,               -- NULL: every socket
    devices    TEXT NOT NULL,      -- label matchers as a JSON object; {} for every device
    author     TEXT NOT NULL,
    comment    TEXT NOT NULL,
    created_at INTEGER NOT NULL,   -- Unix milliseconds
    ends_at    INTEGER NOT NULL,   -- moved to the moment of `silence expire` when ended early
    expired_by TEXT                -- who ended it early, if someone did
);
CREATE INDEX silences_by_end ON silences (ends_at);

CREATE TABLE held_actions (
    id         INTEGER PRIMARY KEY,
    job        TEXT NOT NULL,
    device_key TEXT NOT NULL,
    episode    INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,   -- the action number within the episode that waits
    reason     TEXT NOT NULL,      -- 'silenced' or 'mass_outage'
    silence_id INTEGER REFERENCES silences (id),
    at         INTEGER NOT NULL
);
CREATE UNIQUE INDEX held_actions_once
    ON held_actions (job, device_key, episode, reason, IFNULL(silence_id, 0));
CREATE INDEX held_actions_by_silence ON held_actions (silence_id);

-- Mass outages: a row per outage of a job, inserted when it begins (its
-- one escalation), ended (Unix milliseconds, as since) by the first cycle
-- that finds it over; bad and known are the latest counts. Comments kept
-- outside the statement: SQLite stores its text in the schema page.
CREATE TABLE mass_outages (
    id INTEGER PRIMARY KEY, job TEXT NOT NULL, since INTEGER NOT NULL,
    bad INTEGER NOT NULL, known INTEGER NOT NULL, ended_at INTEGER
);
CREATE UNIQUE INDEX mass_outages_open ON mass_outages (job) WHERE ended_at IS NULL;

-- What became of a rule's action (verify, limit).
ALTER TABLE executions ADD COLUMN result TEXT
    CHECK (result IN ('recovered', 'not_recovered', 'unverified', 'gave_up'));
ALTER TABLE executions ADD COLUMN result_at INTEGER;          -- Unix milliseconds
ALTER TABLE executions ADD COLUMN recovered_after_ms INTEGER; -- action to recovery
CREATE INDEX executions_by_job_socket ON executions (job, socket, created_at);
-- Escalations and webhooks: the channel a message went over (a webhook's
-- row holds its name in socket and its URL, without credentials, in phone)
-- and, for a message about a rule's event (an escalation, an action told to
-- a webhook), the event and the execution it is about.
ALTER TABLE executions ADD COLUMN channel TEXT NOT NULL DEFAULT 'sms'
    CHECK (channel IN ('sms', 'webhook'));
ALTER TABLE executions ADD COLUMN event TEXT;                 -- NULL for an action or a manual send
ALTER TABLE executions ADD COLUMN about INTEGER REFERENCES executions (id);

-- A rule's execution may be for several devices (the devices of
-- one socket that fired together get one command). Each device it was for
-- is a row here; executions.device_key, episode, attempt and trigger_value
-- keep the first one's.
CREATE TABLE execution_devices (
    execution_id  INTEGER NOT NULL REFERENCES executions (id),
    device_key    TEXT NOT NULL,
    episode       INTEGER NOT NULL,
    attempt       INTEGER NOT NULL,
    trigger_value REAL,
    -- What became of the action on this device (verify, limit); the
    -- execution's own result columns hold its first device's.
    result        TEXT
        CHECK (result IN ('recovered', 'not_recovered', 'unverified', 'gave_up')),
    result_at     INTEGER,           -- Unix milliseconds
    recovered_after_ms INTEGER,      -- action to recovery
    PRIMARY KEY (execution_id, device_key)
) WITHOUT ROWID;
CREATE INDEX execution_devices_by_device ON execution_devices (device_key, execution_id);
INSERT INTO execution_devices (execution_id, device_key, episode, attempt, trigger_value)
    SELECT id, device_key, coalesce(episode, 0), coalesce(attempt, 0), trigger_value
    FROM executions WHERE device_key IS NOT NULL;
",
];

/// How long a writer waits for another connection's write lock before
/// giving up (readers never wait in WAL mode).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Journal {
    /// Checks the schema, then (read-write only) switches to WAL and
    /// upgrades. Nothing is written before the checks pass.
    pub(super) fn prepare(&mut self, writable: bool) -> Result<(), JournalError> {
        let path = &self.path;
        let Db::Sqlite(connection) = &self.db else {
            unreachable!("prepare is SQLite's; PostgreSQL has prepare_postgres")
        };
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(sqlite_error(path, "setting the busy timeout"))?;
        let found: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|source| classify_open_error(path, source))?;
        let foreign_table: Option<String> = connection
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
        let _mode: String = connection
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(sqlite_error(path, "switching to WAL mode"))?;
        // FULL: a committed `sending` row survives a power cut, not only a crash.
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(sqlite_error(path, "setting synchronous mode"))?;
        connection
            .pragma_update(None, "foreign_keys", true)
            .map_err(sqlite_error(path, "enabling foreign keys"))?;
        for version in found..SCHEMA_VERSION {
            let tx = self.begin_write("starting a schema upgrade")?;
            // `found` is known to be in 0..SCHEMA_VERSION here.
            let script = MIGRATIONS[usize::try_from(version).unwrap_or(usize::MAX)];
            tx.batch_execute(script).map_err(db_error(path, "upgrading the schema"))?;
            tx.batch_execute(&format!("PRAGMA user_version = {}", version + 1))
                .map_err(db_error(path, "recording the schema version"))?;
            tx.commit().map_err(db_error(path, "committing the schema upgrade"))?;
        }
        Ok(())
    }
}

/// The 16 bytes every SQLite 3 database file starts with.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Refuses an existing, non-empty file that does not start with the SQLite
/// header, before SQLite gets a chance to touch it.
pub(super) fn refuse_non_sqlite(path: &Path) -> Result<(), JournalError> {
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
        _ => sqlite_error(path, "reading the schema")(source),
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;
    use crate::journal::db::args;
    use crate::journal::{ExecutionId, ExecutionStatus, HistoryFilter};

    #[test]
    fn a_version_1_journal_upgrades_and_keeps_its_rows_without_results() {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(MIGRATIONS[0]).unwrap();
        connection.pragma_update(None, "user_version", 1).unwrap();
        connection
            .execute(
                "INSERT INTO executions (job, device_key, socket, phone, text, episode, attempt, \
                 status, manual, created_at, updated_at) \
                 VALUES ('offline', 'd=1', 'lobby', '+79991234567', '#01#0#', 1, 1, 'sent', 0, 5, 5)",
                [],
            )
            .unwrap();
        let mut journal = Journal::over_sqlite(connection, Path::new(":memory:"), None);
        journal.prepare(true).unwrap();

        let version = journal.db.query_one("PRAGMA user_version", args![], |r| r.i64(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let execution = journal.execution(ExecutionId(1)).unwrap();
        assert_eq!(execution.status, ExecutionStatus::Sent);
        assert_eq!(
            (execution.result, execution.result_at, execution.recovered_after),
            (None, None, None)
        );
        let refused = journal.db.execute("UPDATE executions SET result = 'fixed'", args![]);
        assert!(refused.is_err(), "only known results are stored");
    }

    #[test]
    fn a_version_1_journal_upgrades_and_keeps_each_executions_device() {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(MIGRATIONS[0]).unwrap();
        connection.pragma_update(None, "user_version", 1).unwrap();
        connection
            .execute_batch(
                "INSERT INTO executions (job, device_key, socket, phone, text, episode, attempt, \
                 trigger_value, status, manual, created_at, updated_at) VALUES \
                 ('offline', 'd=1', 'hall', '+79997654321', '#01#0#', 3, 1, 0.0, 'sent', 0, 1, 1), \
                 (NULL, NULL, 'hall', '+79997654321', '#02#0#', NULL, NULL, NULL, 'sent', 1, 2, 2);",
            )
            .unwrap();
        let mut journal = Journal::over_sqlite(connection, Path::new(":memory:"), None);
        journal.prepare(true).unwrap();

        let version = journal.db.query_one("PRAGMA user_version", args![], |r| r.i64(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let all = journal.history(&HistoryFilter::default()).unwrap();
        let devices: Vec<Vec<String>> = all.iter().map(|e| e.devices.clone()).collect();
        assert_eq!(devices, [vec![], vec!["d=1".to_string()]]);
        let filter = HistoryFilter { device_key: Some("d=1".into()), ..HistoryFilter::default() };
        let found = journal.history(&filter).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].episode, found[0].text.as_str()), (Some(3), "#01#0#"));
    }
}
