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
//! later versions and for debugging), when it was first and last seen, and
//! which poll last listed it. That counter, not the clock (which may step
//! backwards), tells which cached devices the last poll did not list.
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

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::ffi::ErrorCode;
use rusqlite::{params, Connection, TransactionBehavior};

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
];

/// The schema version this build writes: the number of migrations.
const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// `PRAGMA application_id` of a device cache ("SWDC"), set by the first
/// migration: it tells our file from another program's SQLite database (or
/// another signage-watchdog file) given as the cache path by mistake.
const APPLICATION_ID: i32 = 0x5357_4443;

/// How long to wait for a lock held by another connection (a sysadmin's
/// `sqlite3` shell, say) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const UPSERT_DEVICE: &str = "
    INSERT INTO device (platform_id, device_id, name, connection_state, player_status,
                        last_online, activation_state, player_version, time_zone, raw,
                        first_seen, last_seen, last_poll)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12)
    ON CONFLICT (platform_id, device_id) DO UPDATE SET
        name = excluded.name,
        connection_state = excluded.connection_state,
        player_status = excluded.player_status,
        last_online = excluded.last_online,
        activation_state = excluded.activation_state,
        player_version = excluded.player_version,
        time_zone = excluded.time_zone,
        raw = excluded.raw,
        last_seen = excluded.last_seen,
        last_poll = excluded.last_poll";

const SELECT_DEVICES: &str = "
    SELECT device_id, name, connection_state, player_status, last_online, activation_state,
           player_version, time_zone, first_seen, last_seen, last_poll
    FROM device WHERE platform_id = ?1 ORDER BY device_id";

/// The SQLite file that remembers every platform's devices between polls and
/// across restarts.
#[derive(Debug)]
pub struct Cache {
    conn: Connection,
    /// For error messages: `:memory:` for an in-memory cache.
    path: PathBuf,
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
    /// Devices written (distinct ids in the poll).
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
        let cache = Cache { conn, path };
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

    /// Stores one successful poll of a platform in one transaction: every
    /// device is upserted (first seen kept, last seen `now`), the platform's
    /// last success becomes `now`, and, only when the poll read the whole
    /// list (`complete`), devices of the platform not seen since
    /// `now - forget_after` are deleted.
    ///
    /// `now` is Unix seconds. If the same device id appears twice, the later
    /// entry wins. On error nothing of this poll is kept.
    pub fn store_poll(
        &mut self,
        platform_id: &str,
        devices: &[Listed],
        now: f64,
        complete: bool,
        forget_after: Duration,
    ) -> Result<StoredPoll, CacheError> {
        let forget_before = complete.then_some(now - forget_after.as_secs_f64());
        store_poll_in(&mut self.conn, platform_id, devices, now, forget_before).map_err(|source| {
            CacheError::Store {
                path: self.path.clone(),
                platform_id: platform_id.to_owned(),
                source,
            }
        })
    }

    /// Everything cached, for start-up: every platform sorted by id, each
    /// with its devices sorted by device id. Forgets nothing.
    pub fn load(&self) -> Result<Vec<CachedPlatform>, CacheError> {
        self.load_where(None)
    }

    /// One platform as cached, or `None` if no poll of it was ever stored:
    /// what the exporter re-renders after storing a poll.
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
                    Ok((row.get::<_, String>(0)?, row.get(1)?, row.get::<_, i64>(2)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut loaded = Vec::with_capacity(rows.len());
            for (platform_id, last_success, polls) in rows {
                let mut devices = Vec::new();
                let mut missing = 0;
                let mut cursor = select_devices.query([&platform_id])?;
                while let Some(row) = cursor.next()? {
                    let (device, last_poll) = cached_device(row)?;
                    missing += usize::from(last_poll < polls);
                    devices.push(device);
                }
                loaded.push(CachedPlatform { platform_id, last_success, devices, missing });
            }
            Ok(loaded)
        };
        read().map_err(|source| CacheError::Load { path: self.path.clone(), source })
    }
}

fn store_poll_in(
    conn: &mut Connection,
    platform_id: &str,
    devices: &[Listed],
    now: f64,
    forget_before: Option<f64>,
) -> rusqlite::Result<StoredPoll> {
    // IMMEDIATE takes the write lock now rather than halfway through.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let poll: i64 = tx.query_row(
        "INSERT INTO platform (platform_id, last_success, polls) VALUES (?1, ?2, 1)
         ON CONFLICT (platform_id) DO UPDATE SET
             last_success = excluded.last_success, polls = polls + 1
         RETURNING polls",
        params![platform_id, now],
        |row| row.get(0),
    )?;
    {
        let mut upsert = tx.prepare_cached(UPSERT_DEVICE)?;
        for Listed { device, raw } in devices {
            upsert.execute(params![
                platform_id,
                device.id,
                device.name,
                device.connection_state,
                device.player_status,
                device.last_online,
                device.activation_state,
                device.player_version,
                device.time_zone,
                raw,
                now,
                poll,
            ])?;
        }
    }
    let forgotten = match forget_before {
        Some(cutoff) => tx.execute(
            "DELETE FROM device WHERE platform_id = ?1 AND last_poll < ?2 AND last_seen < ?3",
            params![platform_id, poll, cutoff],
        )?,
        None => 0,
    };
    let (stored, missing): (i64, i64) = tx.query_row(
        "SELECT coalesce(sum(last_poll = ?2), 0), coalesce(sum(last_poll < ?2), 0)
         FROM device WHERE platform_id = ?1",
        params![platform_id, poll],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    tx.commit()?;
    Ok(StoredPoll { stored: stored as usize, forgotten, missing: missing as usize })
}

/// Reads a row of [`SELECT_DEVICES`], with the poll that last listed it.
fn cached_device(row: &rusqlite::Row<'_>) -> rusqlite::Result<(CachedDevice, i64)> {
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
        assert_eq!(SCHEMA_VERSION, 1);
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
            "cache {} was written by a newer version (schema 2); this version knows schema 1 at \
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
