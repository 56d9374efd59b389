//! Silences, and the actions they held back.
//!
//! A silence is a person's "do not act on these for a while" (a site in
//! maintenance, a socket being rewired): it names a job, device labels
//! and/or a socket, an end, who asked and why. It is a row in the journal
//! so that the running daemon sees it at its next cycle without a reload,
//! and so that it outlives restarts. Nothing is ever deleted: a silence
//! ends when its `ends_at` passes, and `jobctl silence expire` only moves
//! `ends_at` to now (and says who did), so the record of who silenced what
//! stays.
//!
//! Silences are written while `jobctl run` holds the journal's writer lock
//! (`lock`) — adding one during an incident is the point. So they have a
//! write path of their own, [`SilenceWriter`], which takes no writer lock
//! and can only touch the `silences` table: SQLite itself serialises its
//! short transaction with the daemon's (WAL mode and the busy timeout), and
//! the daemon never writes that table, so nothing the lock protects (sends
//! in flight, job states) can be disturbed by it.
//!
//! The daemon reads the active silences when [`Journal::data_version`]
//! says another connection committed something (only silence commands do
//! while it runs), and records each action a silence held back in
//! `held_actions`, once per (job, device, episode, silence): a unique
//! index makes a second record of the same hold, after a restart, a no-op.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags};

use super::db::{args, Db, DbError, Row};
use super::execution::timestamp_column;
use super::postgres::{self, Location};
use super::schema::refuse_non_sqlite;
use super::{db_error, sqlite_error, Journal, JournalError, SCHEMA_VERSION};
use crate::clock::Clock;

/// A silence's number in the journal, shown as `#3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SilenceId(pub i64);

impl fmt::Display for SilenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A silence as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silence {
    /// Its number.
    pub id: SilenceId,
    /// Only this job; `None`: every job.
    pub job: Option<String>,
    /// Only devices this socket powers; `None`: any socket, or none.
    pub socket: Option<String>,
    /// Only devices whose labels have all these values; empty: any device.
    pub devices: BTreeMap<String, String>,
    /// Who added it.
    pub author: String,
    /// Why.
    pub comment: String,
    /// When it was added (it holds from then).
    pub created_at: Timestamp,
    /// When it ends (or ended).
    pub ends_at: Timestamp,
    /// Who ended it early, if someone did.
    pub expired_by: Option<String>,
    /// How many actions it held back (one per job, device and episode).
    pub held: u64,
}

impl Silence {
    /// Whether it holds at `now`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.created_at <= now && now < self.ends_at
    }
}

/// A silence to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSilence {
    /// See [`Silence::job`].
    pub job: Option<String>,
    /// See [`Silence::socket`].
    pub socket: Option<String>,
    /// See [`Silence::devices`].
    pub devices: BTreeMap<String, String>,
    /// See [`Silence::author`].
    pub author: String,
    /// See [`Silence::comment`].
    pub comment: String,
    /// How long it holds from now.
    pub duration: Duration,
}

/// What [`SilenceWriter::expire`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expired {
    /// The silence was active and ends now.
    Now(Silence),
    /// The silence had already ended; it is left as it was.
    Already(Silence),
}

/// An action a silence held back, as the daemon records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldAction {
    /// The job.
    pub job: String,
    /// The device's text form.
    pub device_key: String,
    /// The firing episode the action belongs to.
    pub episode: u64,
    /// The action's number in the episode (1 for the first).
    pub attempt: u32,
    /// The silence that holds it.
    pub silence: SilenceId,
}

/// A hold recorded in the journal whose silence is still active, for
/// `jobctl status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveHold {
    /// What was held.
    pub action: HeldAction,
    /// When the silence ends.
    pub until: Timestamp,
}

/// The columns [`silence_from_row`] reads, in its order.
const SILENCE_COLUMNS: &str = "s.id, s.job, s.socket, s.devices, s.author, s.comment, \
     s.created_at, s.ends_at, s.expired_by";

/// Reads a row of [`SILENCE_COLUMNS`] (and the held count after them, when
/// `with_held`).
fn silence_from_row(row: &Row<'_>, with_held: bool) -> Result<Silence, DbError> {
    let devices = serde_json::from_str(row.str(3)?)
        .map_err(|_| DbError::Column { index: 3, wanted: "label matchers as JSON" })?;
    Ok(Silence {
        id: SilenceId(row.i64(0)?),
        job: row.opt_string(1)?,
        socket: row.opt_string(2)?,
        devices,
        author: row.string(4)?,
        comment: row.string(5)?,
        created_at: timestamp_column(row, 6)?,
        ends_at: timestamp_column(row, 7)?,
        expired_by: row.opt_string(8)?,
        held: if with_held { row.u64(9)? } else { 0 },
    })
}

impl Journal {
    /// Every silence, newest first, with how many actions each held back;
    /// only those active at `now` unless `include_ended`.
    pub fn silences(
        &self,
        now: Timestamp,
        include_ended: bool,
    ) -> Result<Vec<Silence>, JournalError> {
        let doing = "reading the silences";
        self.db
            .query_map(
                &format!(
                    "SELECT {SILENCE_COLUMNS}, \
                     (SELECT count(*) FROM held_actions h WHERE h.silence_id = s.id) \
                     FROM silences s WHERE ?2 = 1 OR (s.created_at <= ?1 AND s.ends_at > ?1) \
                     ORDER BY s.id DESC"
                ),
                args![now.as_millisecond(), include_ended],
                |row| silence_from_row(row, true),
            )
            .map_err(db_error(&self.path, doing))
    }

    /// The silences that have not ended at `now`, oldest first, without
    /// their held counts: what the daemon matches actions against. One
    /// indexed range read.
    pub fn unended_silences(&self, now: Timestamp) -> Result<Vec<Silence>, JournalError> {
        let doing = "reading the active silences";
        self.db
            .query_map(
                &format!(
                    "SELECT {SILENCE_COLUMNS} FROM silences s WHERE s.ends_at > ?1 ORDER BY s.id"
                ),
                args![now.as_millisecond()],
                |row| silence_from_row(row, false),
            )
            .map_err(db_error(&self.path, doing))
    }

    /// A number that changes when a silence is added or ended by another
    /// connection (a `jobctl silence` command), so the daemon rereads the
    /// silences only when it changed: SQLite's `data_version` (which this
    /// connection's own writes leave alone), or on PostgreSQL a counter
    /// that silence commands bump.
    pub fn data_version(&self) -> Result<i64, JournalError> {
        match &self.db {
            Db::Sqlite(connection) => connection
                .pragma_query_value(None, "data_version", |row| row.get(0))
                .map_err(sqlite_error(&self.path, "reading the data version")),
            Db::Postgres(_) => postgres::silences_changed(&self.db, &self.path),
        }
    }

    /// Records actions silences held back, each once: a hold already
    /// recorded (same job, device, episode and silence) is skipped. Returns
    /// how many were new.
    pub fn record_held(&mut self, held: &[HeldAction]) -> Result<usize, JournalError> {
        let now = self.clock.now().as_millisecond();
        let path = &self.path;
        let tx = self.begin_write("recording held actions")?;
        let mut added = 0;
        for action in held {
            added += tx
                .execute(
                    "INSERT INTO held_actions \
                     (job, device_key, episode, attempt, reason, silence_id, at) \
                     VALUES (?1, ?2, ?3, ?4, 'silenced', ?5, ?6) ON CONFLICT DO NOTHING",
                    args![
                        action.job,
                        action.device_key,
                        action.episode,
                        action.attempt,
                        action.silence.0,
                        now
                    ],
                )
                .map_err(db_error(path, "recording a held action"))?;
        }
        tx.commit().map_err(db_error(path, "committing held actions"))?;
        Ok(usize::try_from(added).unwrap_or(usize::MAX))
    }

    /// The recorded holds whose silence is active at `now`, by job and
    /// device.
    pub fn active_holds(&self, now: Timestamp) -> Result<Vec<ActiveHold>, JournalError> {
        let doing = "reading held actions";
        self.db
            .query_map(
                "SELECT h.job, h.device_key, h.episode, h.attempt, h.silence_id, s.ends_at \
                 FROM held_actions h JOIN silences s ON s.id = h.silence_id \
                 WHERE s.ends_at > ?1 AND s.created_at <= ?1 \
                 ORDER BY h.job, h.device_key, h.episode, h.attempt",
                args![now.as_millisecond()],
                |row| {
                    Ok(ActiveHold {
                        action: HeldAction {
                            job: row.string(0)?,
                            device_key: row.string(1)?,
                            episode: row.u64(2)?,
                            attempt: row.u32(3)?,
                            silence: SilenceId(row.i64(4)?),
                        },
                        until: timestamp_column(row, 5)?,
                    })
                },
            )
            .map_err(db_error(&self.path, doing))
    }
}

/// The write path of `jobctl silence add` and `expire`: a connection to
/// the journal that takes no writer lock, so it works beside a running
/// daemon, and that can only add and end silences.
///
/// It opens only a journal at this build's schema. A journal that does
/// not exist yet, or an older one, is first created or upgraded by a
/// [`Journal::open`] (which takes the writer lock for that moment; while a
/// daemon runs, it has already done both).
pub struct SilenceWriter {
    /// The journal, opened read-write without the lock; only this file's
    /// methods use it.
    journal: Journal,
}

impl fmt::Debug for SilenceWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SilenceWriter").field("path", &self.journal.path).finish_non_exhaustive()
    }
}

impl SilenceWriter {
    /// Opens the journal at `path` for adding and ending silences.
    pub fn open(path: &Path) -> Result<SilenceWriter, JournalError> {
        refuse_non_sqlite(path)?;
        if needs_setup(path)? {
            drop(Journal::open(path)?);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(path, flags)
            .map_err(sqlite_error(path, "opening the journal"))?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(sqlite_error(path, "setting synchronous mode"))?;
        let mut journal = Journal::over_sqlite(connection, path, None);
        // The checks of a reader: this schema exactly, nothing foreign.
        journal.prepare(false)?;
        Ok(SilenceWriter { journal })
    }

    /// Opens the journal at `location` for adding and ending silences
    /// ([`SilenceWriter::open`]; on PostgreSQL, a session without the
    /// writer lock, after a writer has created or upgraded the journal if
    /// it had to).
    pub fn open_at(location: &Location) -> Result<SilenceWriter, JournalError> {
        let target = match location {
            Location::Sqlite(path) => return SilenceWriter::open(path),
            Location::Postgres(target) => target,
        };
        let mut journal = postgres::connect(target, false)?;
        match journal.prepare_postgres(false) {
            Ok(()) => {}
            Err(JournalError::MissingInDatabase { .. } | JournalError::OlderSchema { .. }) => {
                drop(journal);
                drop(Journal::open_at(location)?);
                journal = postgres::connect(target, false)?;
                journal.prepare_postgres(false)?;
            }
            Err(err) => return Err(err),
        }
        Ok(SilenceWriter { journal })
    }

    /// Uses `clock` for "now" (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> SilenceWriter {
        self.journal.clock = clock;
        self
    }

    /// Adds a silence holding from now for `new.duration`.
    pub fn add(&mut self, new: &NewSilence) -> Result<Silence, JournalError> {
        let journal = &mut self.journal;
        let now = whole_second(journal.clock.now());
        let ends_at = whole_second(now.checked_add(new.duration).unwrap_or(Timestamp::MAX));
        let devices = serde_json::to_string(&new.devices).expect("label maps encode as JSON");
        let path = &journal.path;
        let tx = journal.begin_write("adding a silence")?;
        let id = tx
            .query_one(
                "INSERT INTO silences (job, socket, devices, author, comment, created_at, ends_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
                args![
                new.job,
                new.socket,
                devices,
                new.author,
                new.comment,
                now.as_millisecond(),
                    ends_at.as_millisecond()
                ],
                |row| row.i64(0),
            )
            .map_err(db_error(path, "adding a silence"))?;
        let id = SilenceId(id);
        if tx.is_postgres() {
            postgres::note_silences_changed(&tx, path)?;
        }
        tx.commit().map_err(db_error(path, "committing a silence"))?;
        Ok(Silence {
            id,
            job: new.job.clone(),
            socket: new.socket.clone(),
            devices: new.devices.clone(),
            author: new.author.clone(),
            comment: new.comment.clone(),
            created_at: now,
            ends_at,
            expired_by: None,
            held: 0,
        })
    }

    /// Ends silence `id` now, recording `by` as who ended it; `None` when
    /// the journal has no such silence.
    pub fn expire(&mut self, id: SilenceId, by: &str) -> Result<Option<Expired>, JournalError> {
        let journal = &mut self.journal;
        let now = whole_second(journal.clock.now());
        let path = &journal.path;
        let tx = journal.begin_write("expiring a silence")?;
        let found = tx
            .query_opt(
                &format!(
                    "SELECT {SILENCE_COLUMNS}, \
                     (SELECT count(*) FROM held_actions h WHERE h.silence_id = s.id) \
                     FROM silences s WHERE s.id = ?1"
                ),
                args![id.0],
                |row| silence_from_row(row, true),
            )
            .map_err(db_error(path, "reading a silence"))?;
        let Some(mut silence) = found else { return Ok(None) };
        if silence.ends_at <= now {
            return Ok(Some(Expired::Already(silence)));
        }
        tx.execute(
            "UPDATE silences SET ends_at = ?2, expired_by = ?3 WHERE id = ?1",
            args![id.0, now.as_millisecond(), by],
        )
        .map_err(db_error(path, "expiring a silence"))?;
        if tx.is_postgres() {
            postgres::note_silences_changed(&tx, path)?;
        }
        tx.commit().map_err(db_error(path, "committing an expired silence"))?;
        silence.ends_at = now;
        silence.expired_by = Some(by.to_string());
        Ok(Some(Expired::Now(silence)))
    }
}

/// `instant` without its fraction of a second: silences start and end on
/// whole seconds, as every listing and log line shows them.
fn whole_second(instant: Timestamp) -> Timestamp {
    Timestamp::from_second(instant.as_second()).unwrap_or(instant)
}

/// Whether the journal at `path` must be created or upgraded (under the
/// writer lock) before silences can be written into it.
fn needs_setup(path: &Path) -> Result<bool, JournalError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > 0 => {}
        Ok(_) => return Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(source) => return Err(JournalError::Unreadable { path: path.to_path_buf(), source }),
    }
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_error(path, "opening the journal"))?;
    let found: i64 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite_error(path, "reading the schema version"))?;
    // A newer or foreign file is refused by the reader's checks after this.
    Ok((0..SCHEMA_VERSION).contains(&found))
}

#[cfg(test)]
mod tests {
    use crate::journal::test_backend::{on_both_backends, TestBackend};

    on_both_backends!(
        a_silence_is_added_beside_the_writer_and_ends_by_itself_or_when_expired,
        the_writer_creates_a_missing_journal_and_refuses_a_foreign_file
    );

    use super::*;
    use crate::clock::ManualClock;

    fn t(minute: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + minute * 60).unwrap()
    }

    fn new(job: &str, minutes: u64) -> NewSilence {
        NewSilence {
            job: Some(job.to_string()),
            socket: None,
            devices: BTreeMap::from([("site".to_string(), "arzamas".to_string())]),
            author: "anna".to_string(),
            comment: "maintenance".to_string(),
            duration: Duration::from_secs(minutes * 60),
        }
    }

    fn a_silence_is_added_beside_the_writer_and_ends_by_itself_or_when_expired(b: &TestBackend) {
        let clock = Arc::new(ManualClock::new(t(0)));
        // The daemon holds the writer lock the whole time.
        let mut daemon = b.open().with_clock(clock.clone());
        let version = daemon.data_version().unwrap();
        let mut writer = SilenceWriter::open_at(&b.location()).unwrap().with_clock(clock.clone());
        let first = writer.add(&new("offline", 60)).unwrap();
        let second = writer.add(&new("frozen", 10)).unwrap();
        assert_eq!((first.id, second.id), (SilenceId(1), SilenceId(2)));
        assert_ne!(daemon.data_version().unwrap(), version, "the daemon sees a change");
        assert_eq!(daemon.unended_silences(t(0)).unwrap(), [first.clone(), second.clone()]);
        assert_eq!(
            daemon.unended_silences(t(30)).unwrap(),
            std::slice::from_ref(&first),
            "#2 ended"
        );

        let held = HeldAction {
            job: "offline".into(),
            device_key: "d=1".into(),
            episode: 1,
            attempt: 1,
            silence: first.id,
        };
        assert_eq!(daemon.record_held(&[held.clone(), held.clone()]).unwrap(), 1);
        assert_eq!(daemon.record_held(std::slice::from_ref(&held)).unwrap(), 0, "once");
        let holds = daemon.active_holds(t(1)).unwrap();
        assert_eq!(holds, [ActiveHold { action: held, until: t(60) }]);

        clock.set(t(5));
        let Some(Expired::Now(ended)) = writer.expire(first.id, "boris").unwrap() else {
            panic!("#1 was active")
        };
        assert_eq!(
            (ended.ends_at, ended.expired_by.as_deref(), ended.held),
            (t(5), Some("boris"), 1)
        );
        assert!(matches!(writer.expire(first.id, "boris").unwrap(), Some(Expired::Already(_))));
        assert_eq!(writer.expire(SilenceId(9), "boris").unwrap(), None);
        assert!(daemon.active_holds(t(6)).unwrap().is_empty());

        let listed: Vec<SilenceId> =
            daemon.silences(t(6), false).unwrap().iter().map(|s| s.id).collect();
        assert_eq!(listed, [SilenceId(2)]);
        let all: Vec<(SilenceId, u64)> =
            daemon.silences(t(6), true).unwrap().iter().map(|s| (s.id, s.held)).collect();
        assert_eq!(all, [(SilenceId(2), 0), (SilenceId(1), 1)], "newest first, nothing deleted");
    }

    fn the_writer_creates_a_missing_journal_and_refuses_a_foreign_file(b: &TestBackend) {
        let mut writer = SilenceWriter::open_at(&b.location()).unwrap();
        writer.add(&new("offline", 60)).unwrap();
        // The lock was only taken to create it: a daemon starts now, beside
        // the writer.
        let journal = b.open();
        assert_eq!(journal.silences(Timestamp::now(), false).unwrap().len(), 1);
        drop(writer);

        let TestBackend::Sqlite(dir) = b else { return };
        let foreign = dir.path().join("rules.toml");
        std::fs::write(&foreign, "[prometheus]\n").unwrap();
        let err = SilenceWriter::open(&foreign).unwrap_err();
        assert!(matches!(err, JournalError::NotADatabase { .. }), "{err:?}");
    }
}
