//! The storage interface under the journal: one connection to SQLite or to
//! PostgreSQL, spoken to in one dialect.
//!
//! The journal's SQL is written once per statement, in what SQLite (>= 3.35)
//! and PostgreSQL 15 both understand: `?1`-style placeholders (rewritten to
//! `$1` once, when PostgreSQL prepares the statement), `ON CONFLICT … DO
//! NOTHING/UPDATE`, `RETURNING id`, `CAST(… AS BIGINT)` around sums. Values
//! cross this layer as a few plain kinds ([`Value`]): integers, reals, text
//! and NULL; booleans are stored as 0/1 on both sides. Rows are read through
//! [`Row`], by column index. Prepared statements are cached by their text on
//! both sides.
//!
//! What differs stays in the backends: the schema and its migrations
//! (`schema` for SQLite, `postgres` for PostgreSQL), transaction start
//! (`BEGIN IMMEDIATE` on SQLite), and the few SQLite-only features
//! (`VACUUM INTO`, `PRAGMA data_version`).
//!
//! The PostgreSQL client (`postgres`, synchronous) runs a small async
//! runtime of its own and must never be driven from inside another one, as
//! jobctl's runtime thread would do when it opens the journal. So its
//! connection lives on a thread of its own (`PgWorker`): each call ships
//! its statement and owned parameters there and waits for the answer. The
//! connection is closed on that thread too when the journal is dropped.
//!
//! **A lost connection is reconnected, one attempt per call.** When the
//! server restarts or the network drops, the call that finds out fails as
//! any failed write does (its callers keep their state for the next
//! cycle, and nothing whose row was not committed leaves). The next call
//! connects again before it runs (no loop, no sleep: a call while the server
//! is still away fails at once with the connection's error), with an empty
//! statement cache and a new session generation
//! ([`PgWorker::generation`]): the journal takes its writer lock again on
//! the new session before it writes (`Journal::begin_write`). Never
//! inside a transaction: its statements would run on a session that never
//! saw its `BEGIN`, so they fail until it is ended. The loss and the return
//! are logged once each.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use postgres::types::{IsNull, ToSql as PgToSql, Type};

/// One parameter of a statement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value<'a> {
    /// SQL NULL.
    Null,
    /// An integer (booleans too, as 0 and 1).
    Int(i64),
    /// A real number.
    Real(f64),
    /// Text.
    Text(&'a str),
}

/// What can be a statement's parameter.
pub(crate) trait ToValue {
    /// The value to bind.
    fn to_value(&self) -> Value<'_>;
}

impl ToValue for i64 {
    fn to_value(&self) -> Value<'_> {
        Value::Int(*self)
    }
}

impl ToValue for u32 {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for u64 {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Value<'_> {
        Value::Real(*self)
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value<'_> {
        match self {
            Some(value) => value.to_value(),
            None => Value::Null,
        }
    }
}

/// A statement's parameters, like rusqlite's `params!`.
macro_rules! args {
    () => { &[] as &[&dyn $crate::journal::db::ToValue] };
    ($($value:expr),+ $(,)?) => {
        &[$(&$value as &dyn $crate::journal::db::ToValue),+] as &[&dyn $crate::journal::db::ToValue]
    };
}
pub(crate) use args;

/// Why a statement failed.
#[derive(Debug)]
pub enum DbError {
    /// SQLite said so.
    Sqlite(rusqlite::Error),
    /// PostgreSQL (or the connection to it) said so.
    Postgres(postgres::Error),
    /// A column held something else than the journal wrote there.
    Column {
        /// Its index.
        index: usize,
        /// What was expected, e.g. "an integer".
        wanted: &'static str,
    },
    /// A statement that returns one row returned none.
    NoRow,
    /// The connection's thread is gone (it panicked).
    Gone,
    /// The PostgreSQL connection was lost during a transaction; the next
    /// call after it ends connects again.
    Lost,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Sqlite(err) => err.fmt(f),
            DbError::Postgres(err) => match err.as_db_error() {
                Some(db) => write!(f, "PostgreSQL: {}", db.message()),
                None => err.fmt(f),
            },
            DbError::Column { index, wanted } => write!(f, "column {index} is not {wanted}"),
            DbError::NoRow => f.write_str("no row where one was expected"),
            DbError::Gone => f.write_str("the PostgreSQL connection's thread stopped"),
            DbError::Lost => f.write_str(
                "the connection to PostgreSQL was lost; jobctl connects again at the next journal call",
            ),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Its message is SQLite's own, or the code's text when there is none.
            DbError::Sqlite(rusqlite::Error::SqliteFailure(..)) => None,
            DbError::Sqlite(other) => other.source(),
            // A server's error is shown whole above; a connection error
            // (refused, timed out, TLS) has its cause below.
            DbError::Postgres(err) if err.as_db_error().is_some() => None,
            DbError::Postgres(err) => std::error::Error::source(err),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(err: rusqlite::Error) -> DbError {
        DbError::Sqlite(err)
    }
}

impl From<postgres::Error> for DbError {
    fn from(err: postgres::Error) -> DbError {
        DbError::Postgres(err)
    }
}

/// A row of a result, read by column index.
pub(crate) enum Row<'r> {
    /// From SQLite.
    Sqlite(&'r rusqlite::Row<'r>),
    /// From PostgreSQL.
    Postgres(&'r postgres::Row),
}

impl Row<'_> {
    /// An integer, or NULL.
    pub(crate) fn opt_i64(&self, index: usize) -> Result<Option<i64>, DbError> {
        match self {
            Row::Sqlite(row) => Ok(row.get(index)?),
            Row::Postgres(row) => {
                let wrong = DbError::Column { index, wanted: "an integer" };
                let ty = row.columns().get(index).ok_or(DbError::NoRow)?.type_().clone();
                let value = if ty == Type::INT8 {
                    row.try_get::<_, Option<i64>>(index)?
                } else if ty == Type::INT4 {
                    row.try_get::<_, Option<i32>>(index)?.map(i64::from)
                } else if ty == Type::INT2 {
                    row.try_get::<_, Option<i16>>(index)?.map(i64::from)
                } else if ty == Type::BOOL {
                    row.try_get::<_, Option<bool>>(index)?.map(i64::from)
                } else {
                    return Err(wrong);
                };
                Ok(value)
            }
        }
    }

    /// An integer.
    pub(crate) fn i64(&self, index: usize) -> Result<i64, DbError> {
        self.opt_i64(index)?.ok_or(DbError::Column { index, wanted: "an integer" })
    }

    /// An unsigned integer (a count, an episode), or NULL; 0 if negative.
    pub(crate) fn opt_u64(&self, index: usize) -> Result<Option<u64>, DbError> {
        Ok(self.opt_i64(index)?.map(|n| u64::try_from(n).unwrap_or(0)))
    }

    /// An unsigned integer; 0 if negative.
    pub(crate) fn u64(&self, index: usize) -> Result<u64, DbError> {
        Ok(u64::try_from(self.i64(index)?).unwrap_or(0))
    }

    /// A small unsigned integer (an action number), or NULL.
    pub(crate) fn opt_u32(&self, index: usize) -> Result<Option<u32>, DbError> {
        match self.opt_i64(index)? {
            None => Ok(None),
            Some(n) => {
                u32::try_from(n).map(Some).map_err(|_| DbError::Column { index, wanted: "a u32" })
            }
        }
    }

    /// A small unsigned integer.
    pub(crate) fn u32(&self, index: usize) -> Result<u32, DbError> {
        self.opt_u32(index)?.ok_or(DbError::Column { index, wanted: "an integer" })
    }

    /// 0 or 1.
    pub(crate) fn bool(&self, index: usize) -> Result<bool, DbError> {
        Ok(self.i64(index)? != 0)
    }

    /// A real number, or NULL.
    pub(crate) fn opt_f64(&self, index: usize) -> Result<Option<f64>, DbError> {
        match self {
            Row::Sqlite(row) => Ok(row.get(index)?),
            Row::Postgres(row) => {
                let ty = row.columns().get(index).ok_or(DbError::NoRow)?.type_().clone();
                if ty == Type::FLOAT8 {
                    Ok(row.try_get::<_, Option<f64>>(index)?)
                } else if ty == Type::FLOAT4 {
                    Ok(row.try_get::<_, Option<f32>>(index)?.map(f64::from))
                } else {
                    #[expect(clippy::cast_precision_loss, reason = "as SQLite reads an integer")]
                    Ok(self.opt_i64(index)?.map(|n| n as f64))
                }
            }
        }
    }

    /// Text, or NULL, borrowed from the row.
    pub(crate) fn opt_str(&self, index: usize) -> Result<Option<&str>, DbError> {
        match self {
            Row::Sqlite(row) => Ok(row
                .get_ref(index)?
                .as_str_or_null()
                .map_err(|_| DbError::Column { index, wanted: "text" })?),
            Row::Postgres(row) => Ok(row.try_get::<_, Option<&str>>(index)?),
        }
    }

    /// Text, borrowed from the row.
    pub(crate) fn str(&self, index: usize) -> Result<&str, DbError> {
        self.opt_str(index)?.ok_or(DbError::Column { index, wanted: "text" })
    }

    /// Text, or NULL.
    pub(crate) fn opt_string(&self, index: usize) -> Result<Option<String>, DbError> {
        Ok(self.opt_str(index)?.map(str::to_string))
    }

    /// Text.
    pub(crate) fn string(&self, index: usize) -> Result<String, DbError> {
        Ok(self.str(index)?.to_string())
    }

    /// The column as whichever kind it holds (`journal migrate` copies
    /// rows without knowing their columns' meaning).
    pub(crate) fn owned(&self, index: usize) -> Result<OwnedValue, DbError> {
        match self {
            Row::Sqlite(row) => {
                use rusqlite::types::ValueRef;
                Ok(match row.get_ref(index)? {
                    ValueRef::Null => OwnedValue::Null,
                    ValueRef::Integer(n) => OwnedValue::Int(n),
                    ValueRef::Real(x) => OwnedValue::Real(x),
                    ValueRef::Text(text) => OwnedValue::Text(
                        std::str::from_utf8(text)
                            .map_err(|_| DbError::Column { index, wanted: "UTF-8 text" })?
                            .to_string(),
                    ),
                    ValueRef::Blob(_) => return Err(DbError::Column { index, wanted: "no blob" }),
                })
            }
            Row::Postgres(row) => {
                let ty = row.columns().get(index).ok_or(DbError::NoRow)?.type_().clone();
                if ty == Type::FLOAT8 || ty == Type::FLOAT4 {
                    Ok(self.opt_f64(index)?.map_or(OwnedValue::Null, OwnedValue::Real))
                } else if ty == Type::TEXT || ty == Type::VARCHAR || ty == Type::NAME {
                    Ok(self.opt_string(index)?.map_or(OwnedValue::Null, OwnedValue::Text))
                } else {
                    Ok(self.opt_i64(index)?.map_or(OwnedValue::Null, OwnedValue::Int))
                }
            }
        }
    }
}

impl ToValue for OwnedValue {
    fn to_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Null => Value::Null,
            OwnedValue::Int(n) => Value::Int(*n),
            OwnedValue::Real(x) => Value::Real(*x),
            OwnedValue::Text(text) => Value::Text(text),
        }
    }
}

/// The connection: SQLite, or PostgreSQL on its own thread.
pub(crate) enum Db {
    /// An SQLite file (or memory).
    Sqlite(rusqlite::Connection),
    /// A PostgreSQL database.
    Postgres(PgWorker),
}

/// The name of the savepoint every write in a batch runs in (writes do not
/// nest, so one name serves all).
const SAVEPOINT: &str = "journal_write";

impl Db {
    /// Whether this is PostgreSQL.
    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// Which session the connection is: PostgreSQL counts its connections
    /// from 1, one more after each reconnection; SQLite is always 0.
    pub(crate) fn generation(&self) -> u64 {
        match self {
            Db::Sqlite(_) => 0,
            Db::Postgres(worker) => worker.generation(),
        }
    }

    /// Runs a statement; returns how many rows it changed.
    pub(crate) fn execute(&self, sql: &str, params: &[&dyn ToValue]) -> Result<u64, DbError> {
        match self {
            Db::Sqlite(connection) => {
                let mut statement = connection.prepare_cached(sql)?;
                let changed =
                    statement.execute(rusqlite::params_from_iter(sqlite_params(params)))?;
                Ok(changed as u64)
            }
            Db::Postgres(worker) => {
                let (sql, params) = (sql.to_string(), owned(params));
                worker.call(move |session| session.execute(&sql, &params))?
            }
        }
    }

    /// Runs a query and hands each row to `each`, in order.
    pub(crate) fn query_each(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        mut each: impl FnMut(&Row<'_>) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        match self {
            Db::Sqlite(connection) => {
                let mut statement = connection.prepare_cached(sql)?;
                let mut rows =
                    statement.query(rusqlite::params_from_iter(sqlite_params(params)))?;
                while let Some(row) = rows.next()? {
                    each(&Row::Sqlite(row))?;
                }
                Ok(())
            }
            Db::Postgres(worker) => {
                let (sql, params) = (sql.to_string(), owned(params));
                let rows = worker.call(move |session| session.query(&sql, &params))??;
                for row in &rows {
                    each(&Row::Postgres(row))?;
                }
                Ok(())
            }
        }
    }

    /// Runs a query and reads each row with `read`.
    pub(crate) fn query_map<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        mut read: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        let mut all = Vec::new();
        self.query_each(sql, params, |row| {
            all.push(read(row)?);
            Ok(())
        })?;
        Ok(all)
    }

    /// The first row of a query, if any, read with `read`.
    pub(crate) fn query_opt<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        read: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        let mut read = Some(read);
        let mut found = None;
        self.query_each(sql, params, |row| {
            if let Some(read) = read.take() {
                found = Some(read(row)?);
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// The first row of a query, which must return one.
    pub(crate) fn query_one<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        read: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.query_opt(sql, params, read)?.ok_or(DbError::NoRow)
    }

    /// Runs statements without parameters (schema scripts, transaction
    /// control).
    pub(crate) fn batch_execute(&self, sql: &str) -> Result<(), DbError> {
        match self {
            Db::Sqlite(connection) => Ok(connection.execute_batch(sql)?),
            Db::Postgres(worker) => {
                let sql = sql.to_string();
                worker.call(move |session| session.batch(&sql))?
            }
        }
    }

    /// Starts a transaction. SQLite takes its write lock up front
    /// (IMMEDIATE), so two writers queue on the busy timeout instead of
    /// failing halfway through.
    pub(crate) fn begin(&self) -> Result<(), DbError> {
        match self {
            Db::Sqlite(_) => self.batch_execute("BEGIN IMMEDIATE"),
            Db::Postgres(worker) => {
                self.batch_execute("BEGIN")?;
                worker.in_transaction.replace(true);
                Ok(())
            }
        }
    }

    /// Commits the open transaction.
    pub(crate) fn commit(&self) -> Result<(), DbError> {
        let done = self.batch_execute("COMMIT");
        if let Db::Postgres(worker) = self {
            // A failed COMMIT ends the transaction on PostgreSQL too.
            worker.in_transaction.replace(false);
        }
        done
    }

    /// Undoes the open transaction.
    pub(crate) fn rollback(&self) -> Result<(), DbError> {
        let done = self.batch_execute("ROLLBACK");
        if let Db::Postgres(worker) = self {
            worker.in_transaction.replace(false);
        }
        done
    }

    /// Whether a transaction is open. SQLite may have undone one by itself
    /// (a full disk): then it is not.
    pub(crate) fn in_transaction(&self) -> bool {
        match self {
            Db::Sqlite(connection) => !connection.is_autocommit(),
            Db::Postgres(worker) => *worker.in_transaction.borrow(),
        }
    }

    /// Starts a write inside the open transaction.
    pub(crate) fn savepoint(&self) -> Result<(), DbError> {
        self.batch_execute(&format!("SAVEPOINT {SAVEPOINT}"))
    }

    /// Keeps a write's changes in the open transaction.
    pub(crate) fn release(&self) -> Result<(), DbError> {
        self.batch_execute(&format!("RELEASE SAVEPOINT {SAVEPOINT}"))
    }

    /// Undoes a write's changes, keeping the open transaction.
    pub(crate) fn rollback_to_savepoint(&self) -> Result<(), DbError> {
        self.batch_execute(&format!(
            "ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}"
        ))
    }
}

fn sqlite_params<'a>(params: &'a [&'a dyn ToValue]) -> impl Iterator<Item = Value<'a>> + 'a {
    params.iter().map(|param| param.to_value())
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Int(n) => ValueRef::Integer(n),
            Value::Real(x) => ValueRef::Real(x),
            Value::Text(text) => ValueRef::Text(text.as_bytes()),
        }))
    }
}

/// A parameter shipped to the PostgreSQL thread.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OwnedValue {
    /// NULL.
    Null,
    /// An integer.
    Int(i64),
    /// A real.
    Real(f64),
    /// Text.
    Text(String),
}

fn owned(params: &[&dyn ToValue]) -> Vec<OwnedValue> {
    params
        .iter()
        .map(|param| match param.to_value() {
            Value::Null => OwnedValue::Null,
            Value::Int(n) => OwnedValue::Int(n),
            Value::Real(x) => OwnedValue::Real(x),
            Value::Text(text) => OwnedValue::Text(text.to_string()),
        })
        .collect()
}

/// A conversion PostgreSQL refused: the parameter's inferred type does not
/// take this kind of value.
#[derive(Debug)]
struct Unbindable(&'static str, Type);

impl fmt::Display for Unbindable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot bind {} to a parameter of type {}", self.0, self.1)
    }
}

impl std::error::Error for Unbindable {}

impl PgToSql for OwnedValue {
    /// Binds the value as the type PostgreSQL inferred for the parameter:
    /// the journal's integers go into `bigint` columns, but `?2 = 1`
    /// makes an `integer` parameter.
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            OwnedValue::Null => Ok(IsNull::Yes),
            OwnedValue::Int(n) => match *ty {
                Type::INT8 => n.to_sql(ty, out),
                Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
                Type::BOOL => (*n != 0).to_sql(ty, out),
                #[expect(clippy::cast_precision_loss, reason = "as SQLite would store it")]
                Type::FLOAT8 => (*n as f64).to_sql(ty, out),
                _ => Err(Box::new(Unbindable("an integer", ty.clone()))),
            },
            OwnedValue::Real(x) => match *ty {
                Type::FLOAT8 => x.to_sql(ty, out),
                #[expect(clippy::cast_possible_truncation, reason = "the column is real")]
                Type::FLOAT4 => (*x as f32).to_sql(ty, out),
                _ => Err(Box::new(Unbindable("a real number", ty.clone()))),
            },
            OwnedValue::Text(text) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    text.as_str().to_sql(ty, out)
                }
                _ => Err(Box::new(Unbindable("text", ty.clone()))),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// Rewrites `?1` placeholders to PostgreSQL's `$1`, outside string
/// literals.
pub(crate) fn to_dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut in_literal = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_literal = !in_literal;
                out.push(c);
            }
            '?' if !in_literal && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

/// How the connection's thread connects (again).
pub(crate) type Connect = Box<dyn FnMut() -> Result<postgres::Client, postgres::Error> + Send>;

/// The PostgreSQL connection and its prepared statements, owned by the
/// connection's thread.
pub(crate) struct PgSession {
    /// `None` once the connection is found closed, until it is back.
    client: Option<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
    connect: Connect,
    /// The journal's URL (without a password), for the log.
    name: String,
    /// Bumped at each connection ([`PgWorker::generation`]).
    generation: Arc<AtomicU64>,
}

impl PgSession {
    fn client(&mut self) -> Result<&mut postgres::Client, DbError> {
        self.client.as_mut().ok_or(DbError::Lost)
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, DbError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client()?.prepare(&to_dollar_placeholders(sql))?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    fn execute(&mut self, sql: &str, params: &[OwnedValue]) -> Result<u64, DbError> {
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn PgToSql + Sync)> =
            params.iter().map(|p| p as &(dyn PgToSql + Sync)).collect();
        Ok(self.client()?.execute(&statement, &params)?)
    }

    fn query(&mut self, sql: &str, params: &[OwnedValue]) -> Result<Vec<postgres::Row>, DbError> {
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn PgToSql + Sync)> =
            params.iter().map(|p| p as &(dyn PgToSql + Sync)).collect();
        Ok(self.client()?.query(&statement, &params)?)
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        Ok(self.client()?.batch_execute(sql)?)
    }

    /// Forgets a connection found closed (the server went away, or the
    /// network), logging the loss once.
    fn notice_closed(&mut self) {
        if self.client.as_ref().is_some_and(postgres::Client::is_closed) {
            self.client = None;
            self.statements.clear();
            tracing::warn!(
                "journal {}: the connection to PostgreSQL is lost; nothing is journalled, so \
                 nothing is sent, until it is back (jobctl tries again at each journal call)",
                self.name
            );
        }
    }

    /// Connects again if the connection was lost: one attempt, and only
    /// outside a transaction (`may`).
    fn reconnect(&mut self, may: bool) -> Result<(), DbError> {
        self.notice_closed();
        if self.client.is_some() {
            return Ok(());
        }
        if !may {
            return Err(DbError::Lost);
        }
        match (self.connect)() {
            Ok(client) => {
                self.client = Some(client);
                self.generation.fetch_add(1, Ordering::SeqCst);
                tracing::info!("journal {}: the connection to PostgreSQL is back", self.name);
                Ok(())
            }
            Err(err) => {
                tracing::debug!("journal {}: still no connection to PostgreSQL: {err}", self.name);
                Err(DbError::Postgres(err))
            }
        }
    }
}

type Job = Box<dyn FnOnce(&mut PgSession) + Send>;

/// The thread that owns a PostgreSQL connection, and the way to it.
pub(crate) struct PgWorker {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// Whether a transaction is open (PostgreSQL never ends one by itself
    /// while the connection lives).
    in_transaction: RefCell<bool>,
    /// The session's number: 1 for the first connection, one more at each
    /// reconnection.
    generation: Arc<AtomicU64>,
}

impl PgWorker {
    /// Connects on a new thread with `connect`, and keeps the connection
    /// there; `connect` is called again to reconnect after the connection
    /// is lost. `name` (the URL, without a password) is what the log names.
    pub(crate) fn start(name: String, mut connect: Connect) -> Result<PgWorker, DbError> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready, connected) = mpsc::sync_channel(1);
        let generation = Arc::new(AtomicU64::new(1));
        let session_generation = generation.clone();
        let thread = std::thread::Builder::new()
            .name("journal-postgres".to_string())
            .spawn(move || {
                let client = match connect() {
                    Ok(client) => client,
                    Err(err) => {
                        let _ = ready.send(Err(err));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                let mut session = PgSession {
                    client: Some(client),
                    statements: HashMap::new(),
                    connect,
                    name,
                    generation: session_generation,
                };
                for job in inbox {
                    job(&mut session);
                }
                // The connection closes here, on this thread.
            })
            .map_err(|_| DbError::Gone)?;
        match connected.recv() {
            Ok(Ok(())) => Ok(PgWorker {
                jobs: Some(jobs),
                thread: Some(thread),
                in_transaction: RefCell::new(false),
                generation,
            }),
            Ok(Err(err)) => {
                let _ = thread.join();
                Err(DbError::Postgres(err))
            }
            Err(_) => Err(DbError::Gone),
        }
    }

    /// The current session's number (see [`Db::generation`]).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Runs `work` on the connection's thread and waits for its answer;
    /// connects again first if the connection was lost, unless a
    /// transaction is open.
    pub(crate) fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut PgSession) -> T + Send + 'static,
    ) -> Result<T, DbError> {
        let may_reconnect = !*self.in_transaction.borrow();
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |session| {
            let answer = session.reconnect(may_reconnect).map(|()| work(session));
            session.notice_closed();
            let _ = reply.send(answer);
        });
        self.jobs.as_ref().ok_or(DbError::Gone)?.send(job).map_err(|_| DbError::Gone)?;
        answer.recv().map_err(|_| DbError::Gone)?
    }
}

impl Drop for PgWorker {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop, which closes the
        // connection (and with it the session's advisory lock).
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_literals_only() {
        assert_eq!(
            to_dollar_placeholders("SELECT '?1', x FROM t WHERE a = ?1 AND b IN (?2, ?10)"),
            "SELECT '?1', x FROM t WHERE a = $1 AND b IN ($2, $10)"
        );
    }
}
