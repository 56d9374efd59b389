//! `jobctl journal migrate`: an SQLite journal copied into PostgreSQL, as
//! an HA pair starts from a single machine's history.
//!
//! The copy is all or nothing: the SQLite journal is opened as a writer
//! (its lock held, so no daemon changes it meanwhile, and an older schema
//! upgraded first), the PostgreSQL one too (its advisory lock held, its
//! schema created), and a target that holds any row is refused. Every
//! table is then copied in **one PostgreSQL transaction**, rows in their
//! key order, ids kept (so executions keep their numbers), and the
//! identity sequences moved past the copied ids. After the commit, each
//! table is read back from both sides in the same order and compared row
//! by row, column by column; a difference is an error naming the table
//! and the row.

use std::path::{Path, PathBuf};

use super::db::{args, DbError, OwnedValue, ToValue};
use super::postgres::PostgresTarget;
use super::{db_error, Journal, JournalError, Location};

/// A journal table: its name, its columns, and the key its rows are
/// copied and compared in. Ordered so that a row's foreign keys are copied
/// before it.
struct Table {
    name: &'static str,
    columns: &'static str,
    order_by: &'static str,
    /// Whether `id` is an identity column, whose sequence must move past
    /// the copied ids.
    identity: bool,
}

const TABLES: [Table; 7] = [
    Table {
        name: "executions",
        columns: "id, job, device_key, socket, phone, text, episode, attempt, trigger_value, \
                  status, backend, detail, manual, created_at, updated_at, result, result_at, \
                  recovered_after_ms, channel, event, about",
        order_by: "id",
        identity: true,
    },
    Table {
        name: "attempts",
        columns: "id, execution_id, backend, outcome, detail, at",
        order_by: "id",
        identity: true,
    },
    Table {
        name: "execution_devices",
        columns: "execution_id, device_key, episode, attempt, trigger_value, result, result_at, \
                  recovered_after_ms",
        order_by: "execution_id, device_key",
        identity: false,
    },
    Table {
        name: "job_state",
        columns: "job, device_key, phase, state, updated_at",
        order_by: "job, device_key",
        identity: false,
    },
    Table {
        name: "silences",
        columns: "id, job, socket, devices, author, comment, created_at, ends_at, expired_by",
        order_by: "id",
        identity: true,
    },
    Table {
        name: "held_actions",
        columns: "id, job, device_key, episode, attempt, reason, silence_id, at",
        order_by: "id",
        identity: true,
    },
    Table {
        name: "mass_outages",
        columns: "id, job, since, bad, known, ended_at",
        order_by: "id",
        identity: true,
    },
];

/// Rows per INSERT while copying.
const ROWS_PER_INSERT: usize = 500;

/// What a migration copied: rows per table, in copy order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// (table, rows), every table of the journal.
    pub tables: Vec<(&'static str, u64)>,
}

impl Migrated {
    /// Rows copied in all.
    pub fn total(&self) -> u64 {
        self.tables.iter().map(|(_, rows)| rows).sum()
    }
}

/// Copies the SQLite journal at `from` into the empty PostgreSQL database
/// of `to`, then checks the copy row by row.
pub fn migrate(from: &Path, to: &PostgresTarget) -> Result<Migrated, JournalError> {
    if !from.exists() {
        return Err(JournalError::Missing { path: from.to_path_buf() });
    }
    let source = Journal::open(from)?;
    let target = Journal::open_at(&Location::Postgres(to.clone()))?;
    let target_path = target.path.clone();
    for table in &TABLES {
        let rows = count(&target, table.name)?;
        if rows > 0 {
            return Err(JournalError::MigrationTargetNotEmpty {
                path: target_path,
                table: table.name,
                rows,
            });
        }
    }
    let mut copied = Vec::with_capacity(TABLES.len());
    let tx = target.begin_write("copying the journal")?;
    for table in &TABLES {
        let rows = read_all(&source, table)?;
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let width = chunk[0].len();
            let values: Vec<String> = (0..chunk.len())
                .map(|row| {
                    let placeholders: Vec<String> =
                        (1..=width).map(|column| format!("?{}", row * width + column)).collect();
                    format!("({})", placeholders.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO {} ({}) VALUES {}",
                table.name,
                table.columns,
                values.join(", ")
            );
            let params: Vec<&dyn ToValue> =
                chunk.iter().flatten().map(|value| value as &dyn ToValue).collect();
            tx.execute(&sql, &params).map_err(db_error(&target_path, "copying the journal"))?;
        }
        if table.identity {
            tx.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{0}', 'id'), max(id)) FROM {0} \
                     HAVING max(id) IS NOT NULL",
                    table.name
                ),
                args![],
            )
            .map_err(db_error(&target_path, "moving the id sequences past the copied rows"))?;
        }
        copied.push((table.name, rows.len() as u64));
    }
    tx.commit().map_err(db_error(&target_path, "committing the copy"))?;
    for table in &TABLES {
        let (left, right) = (read_all(&source, table)?, read_all(&target, table)?);
        if left.len() != right.len() {
            return Err(JournalError::MigrationDiffers {
                path: target_path,
                table: table.name,
                detail: format!("{} rows in SQLite, {} in PostgreSQL", left.len(), right.len()),
            });
        }
        if let Some(index) = left.iter().zip(&right).position(|(a, b)| a != b) {
            return Err(JournalError::MigrationDiffers {
                path: target_path,
                table: table.name,
                detail: format!("row {} ({} order) differs", index + 1, table.order_by),
            });
        }
    }
    Ok(Migrated { tables: copied })
}

fn count(journal: &Journal, table: &str) -> Result<u64, JournalError> {
    journal
        .db
        .query_one(&format!("SELECT count(*) FROM {table}"), args![], |row| row.u64(0))
        .map_err(db_error(&journal.path, "counting rows"))
}

fn read_all(journal: &Journal, table: &Table) -> Result<Vec<Vec<OwnedValue>>, JournalError> {
    let width = table.columns.split(',').count();
    journal
        .db
        .query_map(
            &format!("SELECT {} FROM {} ORDER BY {}", table.columns, table.name, table.order_by),
            args![],
            |row| (0..width).map(|index| row.owned(index)).collect::<Result<Vec<_>, DbError>>(),
        )
        .map_err(db_error(&journal.path, "reading every row"))
}

/// `sqlite:/path/journal.db` (or a bare path) → the path.
pub fn sqlite_source(text: &str) -> PathBuf {
    PathBuf::from(text.strip_prefix("sqlite:").unwrap_or(text))
}
