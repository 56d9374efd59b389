//! The device cache: every successful poll of every platform, kept in SQLite.
//!
//! It exists so that neither an API outage nor a restart loses the fleet: on
//! start-up the exporter [`Cache::load`]s what the last polls saw and serves
//! it at once, then keeps storing each new poll with [`Cache::store_poll`].
//!
//! A poll of a large fleet is tens of thousands of rows and must land all or
//! nothing, so one poll is one SQLite transaction in write-ahead-log mode: a
//! `kill -9` (or a full disk) at any moment leaves the cache exactly at the
//! last complete poll. `synchronous=NORMAL` is enough for that; only a power
//! cut can lose the last few polls, and never leaves a half-written one.
//!
//! Per platform (one AddReality account) the cache keeps when its last poll
//! succeeded and a poll counter; per device, the fields the exporter uses,
//! the JSON object exactly as the API sent it (unknown fields included, for
//! later versions and for debugging), and when it was first seen. A device
//! the platform's latest poll listed has no `last_seen` or `last_poll` of its
//! own (it was seen at the platform's `last_success`); one it did not list
//! keeps when it was last seen and which poll last listed it. That counter,
//! not the clock (which may step backwards), tells which cached devices the
//! last poll did not list.
//!
//! A poll writes only what changed: a large fleet is mostly the same from
//! one poll to the next, and rewriting every row each time cost about 53 MB
//! of write-ahead log per poll at 100,000 devices. The cache remembers what
//! it last wrote for each platform (the devices as [`Cache::load`] would read
//! them, which it also hands to the exporter instead of reading them back,
//! and a hash of each device's JSON) and inserts, updates or deletes only
//! the devices that are new, differ, went missing or are forgotten. Whatever
//! it remembers is checked against the platform's poll counter in the file
//! at each poll and read again from the file when they differ (or after a
//! failed write), so an outside change to the file is never overwritten
//! with stale memory.
//!
//! A device that disappears from the API is not dropped at once, because a
//! paginated list can come back short: it is forgotten only after
//! `forget_after` without being seen, and only by a poll that read the whole
//! list.
//!
//! The schema is versioned with `PRAGMA user_version` and the ordered
//! `MIGRATIONS` below, each applied in its own transaction, and the file is
//! marked as a device cache with `PRAGMA application_id`. A cache written by
//! a newer version, another program's database, or a file that is not a
//! healthy SQLite database at all is refused before anything is written to it.
//!
//! [`Cache`] is blocking: the exporter runs it on a thread of its own, never
//! on the async runtime.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::ffi::ErrorCode;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::addreality::model::{Device, Listed};

/// Schema changes, oldest first. A cache at `user_version` N has had the
/// first N applied. Never edit one that has shipped: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: platforms and their devices. `device` keeps its rowid: with the raw
    // JSON a row is hundreds of bytes, beyond what SQLite advises for
    // WITHOUT ROWID (a twentieth of a page); the bench showed no difference.
    "CREATE TABLE platform (
         platform_id  TEXT PRIMARY KEY NOT NULL,
         last_success REAL,
         polls        INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE device (
         platform_id      TEXT NOT NULL,
         device_id        INTEGER NOT NULL,
         name             TEXT NOT NULL,
         connection_state TEXT,
         player_status    TEXT,
         last_online      REAL,
         activation_state INTEGER,
         player_version   TEXT,
         time_zone        TEXT,
         raw              TEXT NOT NULL,
         first_seen       REAL NOT NULL,
         last_seen        REAL NOT NULL,
         last_poll        INTEGER NOT NULL,
         PRIMARY KEY (platform_id, device_id)
     ) STRICT;",
    // 2: a device the latest poll listed has NULL `last_seen` and
    // `last_poll` (it was seen at the platform's `last_success`), so that a
    // poll leaves unchanged devices alone instead of rewriting every row to
    // bump both. SQLite cannot relax NOT NULL in place: the table is copied.
    "CREATE TABLE device_2 (
         platform_id      TEXT NOT NULL,
         device_id        INTEGER NOT NULL,
         name             TEXT NOT NULL,
         connection_state TEXT,
         player_status    TEXT,
         last_online      REAL,
         activation_state INTEGER,
         player_version   TEXT,
         time_zone        TEXT,
         raw              TEXT NOT NULL,
         first_seen       REAL NOT NULL,
         last_seen        REAL,
         last_poll        INTEGER,
         PRIMARY KEY (platform_id, device_id),
         CHECK ((last_seen IS NULL) = (last_poll IS NULL))
     ) STRICT;
     INSERT INTO device_2
         SELECT d.platform_id, d.device_id, d.name, d.connection_state, d.player_status,
                d.last_online, d.activation_state, d.player_version, d.time_zone, d.raw,
                d.first_seen,
                CASE WHEN d.last_poll < p.polls THEN d.last_seen END,
                CASE WHEN d.last_poll < p.polls THEN d.last_poll END
         FROM device d LEFT JOIN platform p USING (platform_id);
     DROP TABLE device;
     ALTER TABLE device_2 RENAME TO device;",
];

/// The schema version this build writes: the number of migrations.
const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// `PRAGMA application_id` of a device cache ("SWDC"), set by the first
/// migration: it tells our file from another program's SQLite database (or
/// another signage-watchdog file) given as the cache path by mistake.
const APPLICATION_ID: i32 = 0x5357_4443;

/// The page size of a new cache file, in bytes. A poll rewrites one page
/// per changed device (devices change at random places in the table), then
/// a checkpoint copies it into the file: with SQLite's default 4096 that is
/// about 8 KB per device, with 1024 (two or three devices to a page) about
/// 2 KB.
const PAGE_SIZE: i64 = 1024;

/// How long to wait for a lock held by another connection (a sysadmin's
/// `sqlite3` shell, say) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const INSERT_DEVICE: &str = "
    INSERT INTO device (platform_id, device_id, name, connection_state, player_status,
                        last_online, activation_state, player_version, time_zone, raw,
                        first_seen)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

const UPDATE_DEVICE: &str = "
    UPDATE device SET name = ?3, connection_state = ?4, player_status = ?5, last_online = ?6,
                      activation_state = ?7, player_version = ?8, time_zone = ?9, raw = ?10,
                      last_seen = NULL, last_poll = NULL
    WHERE platform_id = ?1 AND device_id = ?2";

const MARK_MISSING: &str = "
    UPDATE device SET last_seen = ?3, last_poll = ?4 WHERE platform_id = ?1 AND device_id = ?2";

const DELETE_DEVICE: &str = "DELETE FROM device WHERE platform_id = ?1 AND device_id = ?2";

/// A platform's devices; `?2` is its `last_success`, when the devices its
/// latest poll listed were seen. Column 11 is only read by
/// [`Cache::read_written`].
const SELECT_DEVICES: &str = "
    SELECT device_id, name, connection_state, player_status, last_online, activation_state,
           player_version, time_zone, first_seen, coalesce(last_seen, ?2), last_poll, raw
    FROM device WHERE platform_id = ?1 ORDER BY device_id";

/// The SQLite file that remembers every platform's devices between polls and
/// across restarts.
#[derive(Debug)]
pub struct Cache {
    conn: Connection,
    /// For error messages: `:memory:` for an in-memory cache.
    path: PathBuf,
    /// What the file holds for each platform this value has written or
    /// read since it opened the file, so that the next poll writes only
    /// the differences. A platform is absent until its first poll here,
    /// and again after a failed write.
    written: HashMap<String, Written>,
    /// Hashes the raw JSON of each device for [`RowMark::raw`]; keyed at
    /// random, so that no one can craft a device that looks unchanged.
    hasher: RandomState,
}

/// One platform as the cache file holds it, kept in memory.
#[derive(Debug)]
struct Written {
    /// The platform's poll counter in the file (0 before its first poll).
    polls: i64,
    /// Its devices as [`Cache::load`] reads them, sorted by id; shared
    /// with the exporter, which serves them.
    devices: Arc<Vec<CachedDevice>>,
    /// What `devices` does not hold, at the same index.
    rows: Vec<RowMark>,
}

/// What a cached device's row holds beyond [`CachedDevice`].
#[derive(Debug, Clone, Copy)]
struct RowMark {
    /// Hash of the row's raw JSON.
    raw: u64,
    /// The last poll that listed the device, when it was not the latest.
    last_poll: Option<i64>,
}

/// A device as the cache remembers it.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedDevice {
    /// What the last poll that listed it said.
    pub device: Device,
    /// When a poll first listed it, as Unix seconds.
    pub(crate) first_seen: f64,
    /// When a poll last listed it, as Unix seconds.
    pub(crate) last_seen: f64,
}

/// One platform (AddReality account) as the cache remembers it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CachedPlatform {
    /// The platform's id from the configuration.
    pub platform_id: String,
    /// When its last successful poll was stored, as Unix seconds.
    pub(crate) last_success: Option<f64>,
    /// Its devices, sorted by device id, including the `missing` ones.
    pub devices: Vec<CachedDevice>,
    /// How many of `devices` the last poll did not list (not yet forgotten).
    pub(crate) missing: usize,
}

/// What [`Cache::store_poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredPoll {
    /// Devices the poll listed (distinct ids), written or not.
    pub(crate) stored: usize,
    /// Devices deleted because they were absent for longer than `forget_after`.
    pub(crate) forgotten: usize,
    /// Cached devices of the platform that this poll did not list and that
    /// are kept for now.
    pub(crate) missing: usize,
}

/// Why the cache could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The file could not be opened or created.
    #[error(
        "cannot open the device cache {}; make sure its directory exists and is writable \
         by the user the exporter runs as",
        path.display()
    )]
    Open {
        /// The cache file.
        path: PathBuf,
        /// SQLite's reason.
        #[source]
        source: rusqlite::Error,
    },
    /// A SQLite database, but not a device cache.
    #[error(
        "{} is a SQLite database but not a device cache (another program's, or another \
         signage-watchdog file); it was left untouched: give the exporter a cache file of its own",
        path.display()
    )]
    Foreign {
        /// The file.
        path: PathBuf,
    },
    /// The file exists but is not a SQLite database, or a damaged one.
    #[error(
        "{} is not a usable device cache ({detail}); it was left untouched: move it away \
         and restart, the next polls fill a new cache",
        path.display()
    )]
    Damaged {
        /// The cache file.
        path: PathBuf,
        /// SQLite's diagnosis, e.g. `file is not a database`.
        detail: String,
    },
    /// The cache was written by a later version of signage-watchdog.
    #[error(
        "cache {} was written by a newer version (schema {found}); this version knows schema \
         {known} at most: run the newer version, or move the cache away and restart, the next \
         polls fill a new cache",
        path.display()
    )]
    NewerSchema {
        /// The cache file.
        path: PathBuf,
        /// The file's `user_version`.
        found: i32,
        /// The newest schema this build knows.
        known: i32,
    },
    /// A migration failed; the cache is left at the previous version.
    #[error("cannot upgrade the device cache {} to schema {version}; it was left as it was", path.display())]
    Migrate {
        /// The cache file.
        path: PathBuf,
        /// The schema version that could not be reached.
        version: i32,
        /// SQLite's reason.
        #[source]
        source: rusqlite::Error,
    },
    /// A poll could not be stored; the cache still holds the previous one.
    #[error(
        "cannot store a poll of platform {platform_id:?} in the device cache {}; it still holds \
         the previous poll (check free disk space and that the file is writable)",
        path.display()
    )]
    Store {
        /// The cache file.
        path: PathBuf,
        /// The platform whose poll was lost.
        platform_id: String,
        /// SQLite's reason.
        #[source]
        source: rusqlite::Error,
    },
    /// The cache could not be read.
    #[error("cannot read the device cache {}", path.display())]
    Load {
        /// The cache file.
        path: PathBuf,
        /// SQLite's reason.
        #[source]
        source: rusqlite::Error,
    },
}

impl Cache {
    /// Opens the cache at `path`, creating it if needed and bringing its
    /// schema up to date. Nothing is written to a file that turns out not to
    /// be a cache, or to be a cache from a newer version.
    pub fn open(path: &Path) -> Result<Cache, CacheError> {
        let conn = Connection::open(path)
            .map_err(|source| CacheError::Open { path: path.to_owned(), source })?;
        Cache::init(conn, path.to_owned())
    }

    /// A cache that lives as long as the value: for tests and `--demo`.
    pub fn open_in_memory() -> Result<Cache, CacheError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory()
            .map_err(|source| CacheError::Open { path: path.clone(), source })?;
        Cache::init(conn, path)
    }

    fn init(conn: Connection, path: PathBuf) -> Result<Cache, CacheError> {
        let cache = Cache { conn, path, written: HashMap::new(), hasher: RandomState::new() };
        cache.conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| cache.open_error(e))?;
        // Read before writing anything, so that a file that is not a cache
        // (or is a newer one) stays exactly as it is.
        let (application_id, found, objects) = cache
            .conn
            .query_row(
                "SELECT application_id, user_version, (SELECT count(*) FROM sqlite_schema)
                 FROM pragma_application_id(), pragma_user_version()",
                [],
                |row| Ok((row.get::<_, i32>(0)?, row.get::<_, i32>(1)?, row.get::<_, i64>(2)?)),
            )
            .map_err(|e| cache.open_error(e))?;
        let empty = (application_id, found, objects) == (0, 0, 0);
        if application_id != APPLICATION_ID && !empty {
            return Err(CacheError::Foreign { path: cache.path });
        }
        if found > SCHEMA_VERSION {
            return Err(CacheError::NewerSchema { path: cache.path, found, known: SCHEMA_VERSION });
        }
        if found < 0 {
            let detail = format!("schema version {found}");
            return Err(CacheError::Damaged { path: cache.path, detail });
        }
        let check: String = cache
            .conn
            .query_row("PRAGMA quick_check(1)", [], |row| row.get(0))
            .map_err(|e| cache.open_error(e))?;
        if check != "ok" {
            return Err(CacheError::Damaged { path: cache.path, detail: check });
        }
        if empty {
            // Set before anything is written; see PAGE_SIZE.
            cache
                .conn
                .pragma_update(None, "page_size", PAGE_SIZE)
                .map_err(|e| cache.open_error(e))?;
        }
        // An in-memory database answers "memory"; a file system without
        // shared memory keeps the rollback journal, which is atomic too.
        let _mode: String = cache
            .conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| cache.open_error(e))?;
        cache.conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| cache.open_error(e))?;
        cache.migrate(found)?;
        Ok(cache)
    }

    fn open_error(&self, source: rusqlite::Error) -> CacheError {
        match source.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                CacheError::Damaged { path: self.path.clone(), detail: source.to_string() }
            }
            _ => CacheError::Open { path: self.path.clone(), source },
        }
    }

    fn migrate(&self, from: i32) -> Result<(), CacheError> {
        for (applied, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let version = applied as i32 + 1;
            let step = || -> rusqlite::Result<()> {
                let tx = self.conn.unchecked_transaction()?;
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "application_id", APPLICATION_ID)?;
                tx.pragma_update(None, "user_version", version)?;
                tx.commit()
            };
            step().map_err(|source| CacheError::Migrate {
                path: self.path.clone(),
                version,
                source,
            })?;
        }
        Ok(())
    }

    /// Stores one successful poll of a platform in one transaction: new
    /// devices are inserted (first and last seen `now`), listed devices are
    /// seen at `now`, the platform's last success becomes `now`, and, only
    /// when the poll read the whole list (`complete`), devices of the
    /// platform not seen since `now - forget_after` are deleted.
    ///
    /// Only rows that change are written: a device listed again exactly as
    /// before costs nothing. `now` is Unix seconds. If the same device id
    /// appears twice, the later entry wins. On error nothing of this poll is
    /// kept.
    pub fn store_poll(
        &mut self,
        platform_id: &str,
        devices: &[Listed],
        now: f64,
        complete: bool,
        forget_after: Duration,
    ) -> Result<StoredPoll, CacheError> {
        let forget_before = complete.then_some(now - forget_after.as_secs_f64());
        // Taken out: if this write fails, the next poll reads the file again.
        let known = self.written.remove(platform_id);
        let stored = self.store_changes(platform_id, known, devices, now, forget_before);
        let (stored, written) = stored.map_err(|source| CacheError::Store {
            path: self.path.clone(),
            platform_id: platform_id.to_owned(),
            source,
        })?;
        self.written.insert(platform_id.to_owned(), written);
        Ok(stored)
    }

    /// The devices of a platform as the cache holds them after this value's
    /// last [`Cache::store_poll`] of it (what [`Cache::load`] would read),
    /// without reading the file; `None` before that, or after a failed one.
    pub fn devices(&self, platform_id: &str) -> Option<Arc<Vec<CachedDevice>>> {
        self.written.get(platform_id).map(|written| written.devices.clone())
    }

    fn store_changes(
        &mut self,
        platform_id: &str,
        known: Option<Written>,
        listed: &[Listed],
        now: f64,
        forget_before: Option<f64>,
    ) -> rusqlite::Result<(StoredPoll, Written)> {
        // IMMEDIATE takes the write lock now rather than halfway through.
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let in_file: i64 = tx
            .query_row("SELECT polls FROM platform WHERE platform_id = ?1", [platform_id], |row| {
                row.get(0)
            })
            .optional()?
            .unwrap_or(0);
        let known = match known {
            Some(known) if known.polls == in_file => known,
            // Never stored by this value, a failed write, or someone else
            // wrote the file: what it holds is the truth.
            _ => read_written(&tx, &self.hasher, platform_id)?,
        };
        let poll: i64 = tx.query_row(
            "INSERT INTO platform (platform_id, last_success, polls) VALUES (?1, ?2, 1)
             ON CONFLICT (platform_id) DO UPDATE SET
                 last_success = excluded.last_success, polls = polls + 1
             RETURNING polls",
            params![platform_id, now],
            |row| row.get(0),
        )?;
        let listed = latest_by_id(listed);
        let mut devices = Vec::with_capacity(known.devices.len().max(listed.len()));
        let mut rows = Vec::with_capacity(devices.capacity());
        let (mut forgotten, mut missing) = (0, 0);
        {
            let mut insert = tx.prepare_cached(INSERT_DEVICE)?;
            let mut update = tx.prepare_cached(UPDATE_DEVICE)?;
            let mut mark_missing = tx.prepare_cached(MARK_MISSING)?;
            let mut delete = tx.prepare_cached(DELETE_DEVICE)?;
            let one_row = |changed: usize| {
                if changed == 1 {
                    Ok(())
                } else {
                    // The file lost or gained the row behind this value's back.
                    Err(rusqlite::Error::StatementChangedRows(changed))
                }
            };
            let mut old = known.devices.iter().zip(&known.rows).peekable();
            let mut new = listed.into_iter().peekable();
            loop {
                let order = match (old.peek(), new.peek()) {
                    (None, None) => break,
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (Some((cached, _)), Some(entry)) => cached.device.id.cmp(&entry.device.id),
                };
                match order {
                    std::cmp::Ordering::Greater => {
                        let entry = new.next().expect("peeked");
                        let device = &entry.device;
                        insert.execute(params![
                            platform_id,
                            device.id,
                            device.name,
                            device.connection_state,
                            device.player_status,
                            device.last_online,
                            device.activation_state,
                            device.player_version,
                            device.time_zone,
                            entry.raw,
                            now,
                        ])?;
                        let raw = self.hasher.hash_one(entry.raw.as_str());
                        devices.push(CachedDevice {
                            device: device.clone(),
                            first_seen: now,
                            last_seen: now,
                        });
                        rows.push(RowMark { raw, last_poll: None });
                    }
                    std::cmp::Ordering::Equal => {
                        let (cached, mark) = old.next().expect("peeked");
                        let entry = new.next().expect("peeked");
                        let device = &entry.device;
                        let raw = self.hasher.hash_one(entry.raw.as_str());
                        if cached.device != *device || mark.raw != raw || mark.last_poll.is_some() {
                            one_row(update.execute(params![
                                platform_id,
                                device.id,
                                device.name,
                                device.connection_state,
                                device.player_status,
                                device.last_online,
                                device.activation_state,
                                device.player_version,
                                device.time_zone,
                                entry.raw,
                            ])?)?;
                        }
                        devices.push(CachedDevice {
                            device: device.clone(),
                            first_seen: cached.first_seen,
                            last_seen: now,
                        });
                        rows.push(RowMark { raw, last_poll: None });
                    }
                    std::cmp::Ordering::Less => {
                        let (cached, mark) = old.next().expect("peeked");
                        let id = cached.device.id;
                        // Listed by the previous poll: seen at its success.
                        let last_poll = mark.last_poll.unwrap_or(poll - 1);
                        if forget_before.is_some_and(|cutoff| cached.last_seen < cutoff) {
                            one_row(delete.execute(params![platform_id, id])?)?;
                            forgotten += 1;
                            continue;
                        }
                        if mark.last_poll.is_none() {
                            one_row(mark_missing.execute(params![
                                platform_id,
                                id,
                                cached.last_seen,
                                last_poll
                            ])?)?;
                        }
                        missing += 1;
                        devices.push(cached.clone());
                        rows.push(RowMark { raw: mark.raw, last_poll: Some(last_poll) });
                    }
                }
            }
        }
        tx.commit()?;
        let stored = StoredPoll { stored: devices.len() - missing, forgotten, missing };
        Ok((stored, Written { polls: poll, devices: Arc::new(devices), rows }))
    }

    /// Everything cached, for start-up: every platform sorted by id, each
    /// with its devices sorted by device id. Forgets nothing.
    pub fn load(&self) -> Result<Vec<CachedPlatform>, CacheError> {
        self.load_where(None)
    }

    /// One platform as cached, or `None` if no poll of it was ever stored:
    /// what the tests compare [`Cache::devices`] with.
    #[cfg(test)]
    pub(crate) fn load_platform(
        &self,
        platform_id: &str,
    ) -> Result<Option<CachedPlatform>, CacheError> {
        Ok(self.load_where(Some(platform_id))?.pop())
    }

    fn load_where(&self, only: Option<&str>) -> Result<Vec<CachedPlatform>, CacheError> {
        let read = || -> rusqlite::Result<Vec<CachedPlatform>> {
            // One read transaction: one consistent snapshot of every platform.
            let tx = self.conn.unchecked_transaction()?;
            let mut platforms = tx.prepare_cached(
                "SELECT platform_id, last_success, polls FROM platform
                 WHERE ?1 IS NULL OR platform_id = ?1 ORDER BY platform_id",
            )?;
            let mut select_devices = tx.prepare_cached(SELECT_DEVICES)?;
            let rows = platforms
                .query_map([only], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Option<f64>>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut loaded = Vec::with_capacity(rows.len());
            for (platform_id, last_success, _polls) in rows {
                let mut devices = Vec::new();
                let mut missing = 0;
                let mut cursor = select_devices.query(params![platform_id, last_success])?;
                while let Some(row) = cursor.next()? {
                    let (device, last_poll) = cached_device(row)?;
                    missing += usize::from(last_poll.is_some());
                    devices.push(device);
                }
                loaded.push(CachedPlatform { platform_id, last_success, devices, missing });
            }
            Ok(loaded)
        };
        read().map_err(|source| CacheError::Load { path: self.path.clone(), source })
    }
}

/// What the file holds for `platform_id`, read inside `tx`.
fn read_written(
    tx: &rusqlite::Transaction<'_>,
    hasher: &RandomState,
    platform_id: &str,
) -> rusqlite::Result<Written> {
    let platform: Option<(i64, Option<f64>)> = tx
        .query_row(
            "SELECT polls, last_success FROM platform WHERE platform_id = ?1",
            [platform_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let (polls, last_success) = platform.unwrap_or((0, None));
    let mut select_devices = tx.prepare_cached(SELECT_DEVICES)?;
    let mut cursor = select_devices.query(params![platform_id, last_success])?;
    let (mut devices, mut rows) = (Vec::new(), Vec::new());
    while let Some(row) = cursor.next()? {
        let (device, last_poll) = cached_device(row)?;
        let raw = row.get_ref(11)?.as_str()?;
        rows.push(RowMark { raw: hasher.hash_one(raw), last_poll });
        devices.push(device);
    }
    Ok(Written { polls, devices: Arc::new(devices), rows })
}

/// The devices of `listed` sorted by id, the later entry of the same id
/// winning.
fn latest_by_id(listed: &[Listed]) -> Vec<&Listed> {
    let mut sorted: Vec<&Listed> = listed.iter().collect();
    // Stable: entries of one id stay in the order the API sent them.
    sorted.sort_by_key(|entry| entry.device.id);
    let mut latest: Vec<&Listed> = Vec::with_capacity(sorted.len());
    for entry in sorted {
        match latest.last_mut() {
            Some(last) if last.device.id == entry.device.id => *last = entry,
            _ => latest.push(entry),
        }
    }
    latest
}

/// Reads a row of [`SELECT_DEVICES`], with the poll that last listed it
/// when that was not the platform's latest.
fn cached_device(row: &rusqlite::Row<'_>) -> rusqlite::Result<(CachedDevice, Option<i64>)> {
    let device = Device {
        id: row.get(0)?,
        name: row.get(1)?,
        connection_state: row.get(2)?,
        player_status: row.get(3)?,
        last_online: row.get(4)?,
        activation_state: row.get(5)?,
        player_version: row.get(6)?,
        time_zone: row.get(7)?,
    };
    let cached = CachedDevice { device, first_seen: row.get(8)?, last_seen: row.get(9)? };
    Ok((cached, row.get(10)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

    fn device(id: i64, name: &str) -> Device {
        Device::online_for_tests(id, name)
    }

    fn listed(device: Device) -> Listed {
        let raw = serde_json::json!({"id": device.id, "name": device.name, "extra": [1, 2]});
        Listed { device, raw: raw.to_string() }
    }

    fn fleet(ids: impl IntoIterator<Item = i64>) -> Vec<Listed> {
        ids.into_iter().map(|id| listed(device(id, &format!("player {id}")))).collect()
    }

    fn ids(platform: &CachedPlatform) -> Vec<i64> {
        platform.devices.iter().map(|d| d.device.id).collect()
    }

    fn user_version(path: &Path) -> i32 {
        let conn = Connection::open(path).unwrap();
        conn.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap()
    }

    #[test]
    fn a_new_cache_gets_every_migration_and_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        let cache = Cache::open(&path).unwrap();
        assert_eq!(cache.load().unwrap(), []);
        let mode: String =
            cache.conn.pragma_query_value(None, "journal_mode", |row| row.get(0)).unwrap();
        assert_eq!(mode, "wal");
        drop(cache);
        assert_eq!(user_version(&path), SCHEMA_VERSION);
        assert_eq!(SCHEMA_VERSION, 2);
        let conn = Connection::open(&path).unwrap();
        let id: i32 = conn.pragma_query_value(None, "application_id", |row| row.get(0)).unwrap();
        assert_eq!(id, APPLICATION_ID);
    }

    #[test]
    fn another_programs_database_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal.sqlite");
        let conn = Connection::open(&journal).unwrap();
        conn.execute_batch(
            "CREATE TABLE execution (id INTEGER PRIMARY KEY); PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        let other = dir.path().join("other.sqlite");
        Connection::open(&other).unwrap().pragma_update(None, "application_id", 7).unwrap();

        for path in [journal, other] {
            let before = std::fs::read(&path).unwrap();
            let err = Cache::open(&path).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "{} is a SQLite database but not a device cache (another program's, or \
                     another signage-watchdog file); it was left untouched: give the exporter a \
                     cache file of its own",
                    path.display()
                )
            );
            assert_eq!(std::fs::read(&path).unwrap(), before);
        }
    }

    #[test]
    fn reopening_keeps_every_platform() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        let mut cache = Cache::open(&path).unwrap();
        cache.store_poll("b", &fleet([3, 1, 2]), 100.0, true, KEEP).unwrap();
        cache.store_poll("a", &fleet([7]), 101.5, true, KEEP).unwrap();
        let before = cache.load().unwrap();
        drop(cache);

        let cache = Cache::open(&path).unwrap();
        let after = cache.load().unwrap();
        assert_eq!(after, before);
        let names: Vec<&str> = after.iter().map(|p| p.platform_id.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(ids(&after[1]), [1, 2, 3]);
        assert_eq!(after[0].last_success, Some(101.5));
        assert_eq!(cache.load_platform("b").unwrap().as_ref(), Some(&after[1]));
        assert_eq!(cache.load_platform("c").unwrap(), None);
    }

    #[test]
    fn load_returns_exactly_what_was_stored_even_odd_text() {
        let names = [
            "quote \" in it",
            "back\\slash \\n not a newline",
            "new\nline\r\n",
            "Арзамас_Лесная_1",
            "nul\0byte",
            "",
            "tab\there 🎬",
        ];
        let mut devices: Vec<Device> =
            names.iter().enumerate().map(|(i, name)| device(i as i64 * 10, name)).collect();
        devices.push(Device {
            id: -5,
            name: "all unknown".into(),
            connection_state: None,
            player_status: None,
            last_online: None,
            activation_state: None,
            player_version: None,
            time_zone: None,
        });
        devices.push(Device {
            activation_state: Some(false),
            last_online: Some(0.001),
            connection_state: Some("\"odd\"\0state".into()),
            ..device(i64::MAX, "max")
        });
        let polled: Vec<Listed> = devices.iter().cloned().map(listed).collect();

        let mut cache = Cache::open_in_memory().unwrap();
        let stored = cache.store_poll("платформа \"1\"\n", &polled, 1234.567, true, KEEP).unwrap();
        assert_eq!(stored, StoredPoll { stored: devices.len(), forgotten: 0, missing: 0 });

        let loaded = cache.load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].platform_id, "платформа \"1\"\n");
        assert_eq!(loaded[0].last_success, Some(1234.567));
        devices.sort_by_key(|d| d.id);
        let expected: Vec<CachedDevice> = devices
            .into_iter()
            .map(|device| CachedDevice { device, first_seen: 1234.567, last_seen: 1234.567 })
            .collect();
        assert_eq!(loaded[0].devices, expected);

        let raw: String = cache
            .conn
            .query_row("SELECT raw FROM device WHERE device_id = 40", [], |row| row.get(0))
            .unwrap();
        assert_eq!(raw, polled[4].raw);
        assert!(raw.contains("nul\\u0000byte"), "{raw}");
    }

    #[test]
    fn a_later_poll_updates_fields_but_keeps_first_seen() {
        let mut cache = Cache::open_in_memory().unwrap();
        cache.store_poll("p", &fleet([1]), 10.0, true, KEEP).unwrap();
        let offline = Device { connection_state: Some("offline".into()), ..device(1, "renamed") };
        cache.store_poll("p", &[listed(offline.clone())], 20.0, true, KEEP).unwrap();
        let loaded = cache.load().unwrap();
        assert_eq!(
            loaded[0].devices,
            [CachedDevice { device: offline, first_seen: 10.0, last_seen: 20.0 }]
        );
    }

    #[test]
    fn forget_after_removes_only_old_absent_devices_and_only_when_complete() {
        let mut cache = Cache::open_in_memory().unwrap();
        let forget_after = Duration::from_secs(1000);
        let poll = |cache: &mut Cache, ids: &[i64], now: f64, complete: bool| {
            cache.store_poll("p", &fleet(ids.iter().copied()), now, complete, forget_after).unwrap()
        };
        cache.store_poll("other", &fleet([3]), 0.0, true, forget_after).unwrap();
        assert_eq!(poll(&mut cache, &[1, 2, 3], 0.0, true).missing, 0);
        assert_eq!(
            poll(&mut cache, &[1, 2], 100.0, true),
            StoredPoll { stored: 2, forgotten: 0, missing: 1 }
        );
        // Device 3 has been gone for 2000 s, 2 for 1900 s, but this list may
        // be short: keep both.
        assert_eq!(
            poll(&mut cache, &[1], 2000.0, false),
            StoredPoll { stored: 1, forgotten: 0, missing: 2 }
        );
        let loaded = cache.load_platform("p").unwrap().unwrap();
        assert_eq!((ids(&loaded), loaded.missing), (vec![1, 2, 3], 2));

        // Complete at 1050: 3 (last seen at 0) is older than 50, 2 (100) is not.
        assert_eq!(
            poll(&mut cache, &[1], 1050.0, true),
            StoredPoll { stored: 1, forgotten: 1, missing: 1 }
        );
        let loaded = cache.load().unwrap();
        assert_eq!(ids(&loaded[1]), [1, 2]);
        assert_eq!(loaded[1].missing, 1);
        assert_eq!(loaded[1].devices[0].first_seen, 0.0);
        // Other platforms are never touched.
        assert_eq!((loaded[0].platform_id.as_str(), ids(&loaded[0])), ("other", vec![3]));

        // Device 2 comes back: no longer missing, first seen kept.
        assert_eq!(
            poll(&mut cache, &[1, 2], 5000.0, true),
            StoredPoll { stored: 2, forgotten: 0, missing: 0 }
        );
        assert_eq!(cache.load_platform("p").unwrap().unwrap().devices[1].first_seen, 0.0);
    }

    /// Rows SQLite inserted, updated or deleted while `poll` ran.
    fn rows_written(cache: &mut Cache, poll: impl FnOnce(&mut Cache)) -> u64 {
        let before = cache.conn.total_changes();
        poll(cache);
        cache.conn.total_changes() - before
    }

    #[test]
    fn a_poll_writes_only_the_devices_that_changed() {
        let mut cache = Cache::open_in_memory().unwrap();
        let mut polled = fleet(0..1000);
        fn store(polled: &[Listed], now: f64) -> impl FnOnce(&mut Cache) + '_ {
            move |cache: &mut Cache| {
                cache.store_poll("p", polled, now, true, Duration::from_secs(1000)).unwrap();
            }
        }
        // The first poll inserts every device, and the platform's row.
        assert_eq!(rows_written(&mut cache, store(&polled, 10.0)), 1001);
        // The same list again: only the platform's row (last success, poll count).
        assert_eq!(rows_written(&mut cache, store(&polled, 20.0)), 1);

        // Three devices change: a field, the raw JSON alone, and both.
        polled[3].device.connection_state = Some("offline".into());
        polled[500].raw = polled[500].raw.replace("[1,2]", "[1,2,3]");
        polled[999] = listed(device(999, "renamed"));
        assert_eq!(rows_written(&mut cache, store(&polled, 30.0)), 1 + 3);
        assert_eq!(rows_written(&mut cache, store(&polled, 40.0)), 1);

        // Two devices leave and one arrives: three rows.
        polled.retain(|entry| ![10, 20].contains(&entry.device.id));
        polled.push(listed(device(5000, "new")));
        assert_eq!(rows_written(&mut cache, store(&polled, 50.0)), 1 + 3);
        // Absent and kept: nothing more to write until they are forgotten.
        assert_eq!(rows_written(&mut cache, store(&polled, 60.0)), 1);
        assert_eq!(rows_written(&mut cache, store(&polled, 1100.0)), 1 + 2);
        assert_eq!(rows_written(&mut cache, store(&polled, 1200.0)), 1);

        let loaded = cache.load_platform("p").unwrap().unwrap();
        assert_eq!(loaded.devices.len(), 999);
        assert_eq!(loaded.missing, 0);
        let by_id = |id: i64| &loaded.devices.iter().find(|d| d.device.id == id).unwrap().device;
        assert_eq!(by_id(3).connection_state.as_deref(), Some("offline"));
        assert_eq!(by_id(999).name, "renamed");
        assert_eq!(by_id(5000).name, "new");
        let raw: String = cache
            .conn
            .query_row("SELECT raw FROM device WHERE device_id = 500", [], |row| row.get(0))
            .unwrap();
        assert_eq!(raw, polled.iter().find(|entry| entry.device.id == 500).unwrap().raw);
        assert!(raw.contains("[1,2,3]"), "{raw}");
    }

    /// Polls with devices that come, change, leave and come back, complete
    /// or not: after each one, what the cache hands the exporter is what the
    /// file holds, and a restart reads back exactly that.
    #[test]
    fn what_the_cache_remembers_is_what_the_file_holds_poll_after_poll() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        let mut cache = Cache::open(&path).unwrap();
        let mut rng = fastrand::Rng::with_seed(11);
        let forget_after = Duration::from_secs(300);
        for round in 0..60 {
            let now = 100.0 * round as f64;
            let ids: Vec<i64> = (0..200).filter(|_| rng.u8(..10) < 8).collect();
            let mut polled: Vec<Listed> = ids
                .into_iter()
                .map(|id| {
                    let state = if rng.u8(..10) == 0 { "offline" } else { "online" };
                    let device = Device { connection_state: Some(state.into()), ..device(id, "x") };
                    listed(device)
                })
                .collect();
            // Now and then the same id twice: the later one wins.
            if let Some(first) = polled.first().cloned() {
                let again = Device { name: format!("again {round}"), ..first.device };
                polled.push(listed(again));
            }
            let complete = rng.u8(..4) != 0;
            let stored = cache.store_poll("p", &polled, now, complete, forget_after).unwrap();
            let in_file = cache.load_platform("p").unwrap().unwrap();
            let remembered = cache.devices("p").unwrap();
            assert_eq!(*remembered, in_file.devices, "round {round}");
            assert_eq!(stored.missing, in_file.missing, "round {round}");
            assert_eq!(stored.stored + stored.missing, in_file.devices.len(), "round {round}");
        }
        let before = cache.load().unwrap();
        drop(cache);
        let mut cache = Cache::open(&path).unwrap();
        assert_eq!(cache.load().unwrap(), before);
        assert_eq!(cache.devices("p"), None, "nothing remembered before a poll");
        // The first poll after a restart starts from the file.
        let written = rows_written(&mut cache, |cache| {
            let same: Vec<Listed> = before[0]
                .devices
                .iter()
                .filter(|d| d.last_seen == before[0].last_success.unwrap())
                .map(|d| listed(d.device.clone()))
                .collect();
            cache.store_poll("p", &same, 10_000.0, false, forget_after).unwrap();
        });
        assert_eq!(written, 1);
    }

    #[test]
    fn another_writer_of_the_same_file_is_never_overwritten_with_stale_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        let mut first = Cache::open(&path).unwrap();
        first.store_poll("p", &fleet([1, 2, 3]), 10.0, true, KEEP).unwrap();
        let mut second = Cache::open(&path).unwrap();
        second
            .store_poll("p", &[listed(device(2, "renamed elsewhere"))], 20.0, true, KEEP)
            .unwrap();
        second.store_poll("p", &fleet([2, 4]), 30.0, true, KEEP).unwrap();

        // `first` remembers poll 1; the file is at poll 3: it reads the file.
        first.store_poll("p", &fleet([2, 4]), 40.0, true, KEEP).unwrap();
        let in_file = first.load_platform("p").unwrap().unwrap();
        assert_eq!(*first.devices("p").unwrap(), in_file.devices);
        assert_eq!(ids(&in_file), [1, 2, 3, 4]);
        assert_eq!(in_file.missing, 2);
        assert_eq!(in_file.devices[1].device.name, "player 2");
        assert_eq!(in_file.devices[1].first_seen, 10.0);
        assert_eq!(in_file.devices[3].first_seen, 30.0);
    }

    #[test]
    fn a_failed_write_is_followed_by_one_that_starts_from_the_file() {
        let mut cache = Cache::open_in_memory().unwrap();
        cache.store_poll("p", &fleet([1, 2]), 10.0, true, KEEP).unwrap();
        // A row vanishes behind the cache's back: the update of it fails,
        // nothing of the poll stays, and the cache no longer trusts its memory.
        cache.conn.execute("DELETE FROM device WHERE device_id = 2", []).unwrap();
        let renamed = [listed(device(1, "one")), listed(device(2, "two"))];
        let err = cache.store_poll("p", &renamed, 20.0, true, KEEP).unwrap_err();
        assert!(matches!(err, CacheError::Store { .. }), "{err:?}");
        assert_eq!(cache.devices("p"), None);
        assert_eq!(cache.load_platform("p").unwrap().unwrap().last_success, Some(10.0));

        cache.store_poll("p", &renamed, 30.0, true, KEEP).unwrap();
        let in_file = cache.load_platform("p").unwrap().unwrap();
        assert_eq!(*cache.devices("p").unwrap(), in_file.devices);
        let names: Vec<&str> = in_file.devices.iter().map(|d| d.device.name.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
        assert_eq!((in_file.devices[0].first_seen, in_file.devices[1].first_seen), (10.0, 30.0));
    }

    /// A cache of schema 1 (every row with its own last seen and poll)
    /// reads back the same after the upgrade, and goes on from there.
    #[test]
    fn a_schema_1_cache_is_upgraded_with_every_device_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "application_id", APPLICATION_ID).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO platform VALUES ('p', 300.0, 3);
             INSERT INTO device VALUES
                 ('p', 1, 'listed', 'online', 'playback', 1.5, 1, '4.1', '+03:00', '{}',
                  100.0, 300.0, 3),
                 ('p', 2, 'gone', NULL, NULL, NULL, NULL, NULL, NULL, '{\"id\":2}',
                  100.0, 200.0, 2);",
        )
        .unwrap();
        drop(conn);

        let mut cache = Cache::open(&path).unwrap();
        assert_eq!(user_version(&path), SCHEMA_VERSION);
        let loaded = cache.load_platform("p").unwrap().unwrap();
        assert_eq!(loaded.missing, 1);
        let seen: Vec<(i64, f64, f64)> =
            loaded.devices.iter().map(|d| (d.device.id, d.first_seen, d.last_seen)).collect();
        assert_eq!(seen, [(1, 100.0, 300.0), (2, 100.0, 200.0)]);
        let columns: Vec<(Option<f64>, Option<i64>)> = cache
            .conn
            .prepare("SELECT last_seen, last_poll FROM device ORDER BY device_id")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(columns, [(None, None), (Some(200.0), Some(2))]);

        // Device 2 was last seen at 200: forgotten by a complete poll at 1300.
        let stored = cache
            .store_poll(
                "p",
                &[listed(loaded.devices[0].device.clone())],
                1300.0,
                true,
                Duration::from_secs(1000),
            )
            .unwrap();
        assert_eq!(stored, StoredPoll { stored: 1, forgotten: 1, missing: 0 });
    }

    #[test]
    fn a_clock_stepping_back_forgets_nothing_listed() {
        let mut cache = Cache::open_in_memory().unwrap();
        cache.store_poll("p", &fleet([1, 2]), 5000.0, true, KEEP).unwrap();
        let stored = cache.store_poll("p", &fleet([1]), 10.0, true, Duration::ZERO).unwrap();
        // Device 2 was seen "later" than now: kept, counted missing.
        assert_eq!(stored, StoredPoll { stored: 1, forgotten: 0, missing: 1 });
        assert_eq!(cache.load().unwrap()[0].missing, 1);
    }

    #[test]
    fn ten_thousand_devices_are_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        let mut cache = Cache::open(&path).unwrap();
        let stored = cache.store_poll("p", &fleet(0..10_000), 1.0, true, KEEP).unwrap();
        assert_eq!(stored, StoredPoll { stored: 10_000, forgotten: 0, missing: 0 });

        // Make device 9000 fail halfway through the next poll: nothing of it
        // may stay, not even the 9000 devices written before.
        cache
            .conn
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE UPDATE ON device WHEN new.device_id = 9000
                 BEGIN SELECT raise(ABORT, 'refused by test'); END;",
            )
            .unwrap();
        let renamed: Vec<Listed> =
            (0..10_000).map(|id| listed(device(id, &format!("renamed {id}")))).collect();
        let err = cache.store_poll("p", &renamed, 2.0, true, KEEP).unwrap_err();
        assert!(matches!(err, CacheError::Store { .. }), "{err:?}");
        assert!(err.to_string().contains("it still holds the previous poll"), "{err}");
        drop(cache);

        let loaded = Cache::open(&path).unwrap().load().unwrap();
        assert_eq!(loaded[0].last_success, Some(1.0));
        assert_eq!(loaded[0].devices.len(), 10_000);
        assert!(loaded[0].devices.iter().all(|d| d.device.name.starts_with("player ")));
    }

    /// Set for the child process of the kill -9 test: where to write.
    const KILLED_WRITER_ENV: &str = "SIGNAGE_WATCHDOG_TEST_KILLED_WRITER";
    const KILLED_WRITER_FLEET: i64 = 20_000;

    /// The process that gets killed: stores poll after poll until killed (or
    /// a minute has passed). Poll `n` names every device `poll {n % 2}`; the
    /// fleets are built up front so that the loop is nothing but storing.
    #[test]
    #[ignore = "run by a_kill_9_at_any_moment_leaves_the_last_complete_poll"]
    fn killed_writer() {
        let Some(path) = std::env::var_os(KILLED_WRITER_ENV) else { return };
        let mut cache = Cache::open(Path::new(&path)).unwrap();
        let fleets: Vec<Vec<Listed>> = (0..2)
            .map(|parity| {
                let name = format!("poll {parity}");
                (0..KILLED_WRITER_FLEET).map(|id| listed(device(id, &name))).collect()
            })
            .collect();
        let started = std::time::Instant::now();
        for poll in 1.. {
            cache.store_poll("p", &fleets[poll % 2], poll as f64, true, KEEP).unwrap();
            if poll == 1 {
                println!("writer ready");
            }
            if started.elapsed() > Duration::from_secs(60) {
                return;
            }
        }
    }

    #[test]
    fn a_kill_9_at_any_moment_leaves_the_last_complete_poll() {
        use std::io::BufRead;
        use std::process::{Command, Stdio};

        for (round, delay_ms) in [0, 23, 47, 71, 97, 131, 163, 199].into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("cache.sqlite");
            let mut writer = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "exporter::cache::tests::killed_writer"])
                .args(["--ignored", "--nocapture", "--test-threads=1"])
                .env(KILLED_WRITER_ENV, &path)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = std::io::BufReader::new(writer.stdout.take().unwrap());
            // The harness prints its "test … ... " prefix on the same line.
            let ready =
                stdout.lines().map(Result::unwrap).any(|line| line.ends_with("writer ready"));
            assert!(ready, "the writer process ended before its first poll");
            // A different moment of the poll loop each round; no one waits for this.
            std::thread::sleep(Duration::from_millis(delay_ms));
            writer.kill().unwrap();
            writer.wait().unwrap();

            let loaded = Cache::open(&path).unwrap().load().unwrap();
            let platform = &loaded[0];
            let poll = platform.last_success.unwrap();
            let name = format!("poll {}", poll as i64 % 2);
            assert_eq!(platform.devices.len() as i64, KILLED_WRITER_FLEET, "round {round}");
            assert_eq!(platform.missing, 0, "round {round}");
            for cached in &platform.devices {
                assert_eq!((&cached.device.name, cached.last_seen), (&name, poll), "round {round}");
                assert_eq!(cached.first_seen, 1.0, "round {round}");
            }
        }
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        Cache::open(&path).unwrap().store_poll("p", &fleet([1]), 1.0, true, KEEP).unwrap();
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let before = std::fs::read(&path).unwrap();

        let err = Cache::open(&path).unwrap_err();
        let expected = format!(
            "cache {} was written by a newer version (schema 3); this version knows schema 2 at \
             most: run the newer version, or move the cache away and restart, the next polls \
             fill a new cache",
            path.display()
        );
        assert_eq!(err.to_string(), expected);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(user_version(&path), SCHEMA_VERSION + 1);
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        let garbage: Vec<u8> =
            b"devices = [\"not a database\"]\n".iter().copied().cycle().take(10_000).collect();
        std::fs::write(&path, &garbage).unwrap();

        let err = Cache::open(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not a usable device cache (file is not a database); it was left \
                 untouched: move it away and restart, the next polls fill a new cache",
                path.display()
            )
        );
        assert_eq!(std::fs::read(&path).unwrap(), garbage);
        let mut files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files, ["cache.sqlite"]);
    }

    #[test]
    fn a_damaged_cache_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        let mut cache = Cache::open(&path).unwrap();
        cache.store_poll("p", &fleet(0..2000), 1.0, true, KEEP).unwrap();
        // Fold the log into the main file and leave WAL mode, so that the
        // damage below is the whole story.
        cache.conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
        drop(cache);
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 4096;
        assert!(bytes.len() > 8 * page, "{} bytes", bytes.len());
        bytes[3 * page..6 * page].fill(0x5a);
        std::fs::write(&path, &bytes).unwrap();

        let err = Cache::open(&path).unwrap_err();
        assert!(matches!(err, CacheError::Damaged { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.starts_with(&format!("{} is not a usable device cache (", path.display())));
        assert!(
            message.ends_with(
                "it was left untouched: move it away and restart, the next polls fill a new cache"
            ),
            "{message}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_read_only_directory_gives_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        // root ignores permissions; /proc refuses new files even to root.
        let parent = if std::fs::write(locked.join("probe"), b"").is_ok() {
            eprintln!("running as root: using /proc as the read-only directory");
            PathBuf::from("/proc")
        } else {
            locked
        };
        let path = parent.join("cache.sqlite");

        let err = Cache::open(&path).unwrap_err();
        assert!(matches!(err, CacheError::Open { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot open the device cache {}; make sure its directory exists and is \
                 writable by the user the exporter runs as",
                path.display()
            )
        );
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.starts_with("unable to open database file"), "{cause}");
        assert!(!path.exists());
    }
}
