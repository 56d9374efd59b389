//! The journal in PostgreSQL: where it is, how jobctl connects, its schema,
//! and its one-writer rule.
//!
//! The tables and statements are the SQLite journal's (`db` speaks the
//! dialect both understand); what is PostgreSQL's own lives here:
//!
//! - **Connecting.** `[journal] url` names the server and database; the
//!   password comes from `password_file`/`password_env`, never from the URL
//!   (one there is refused). TLS is rustls: `disable`, `require` (encrypted,
//!   the server's certificate not checked) or `verify-full` (checked against
//!   `ca_file`, or the system's roots, and the host name). The default is
//!   `verify-full`, except for a loopback address or a Unix socket, where it
//!   is `disable`.
//! - **One writer at a time.** A writing open takes a session advisory lock
//!   (`pg_try_advisory_lock`), which PostgreSQL releases when the session
//!   ends however it ends; a second writer is refused and told who holds
//!   it: jobctl names its sessions `jobctl on HOST, PID N`
//!   (`application_name`), as `pg_stat_activity` shows them.
//! - **Schema.** The version lives in the table `jobctl_schema` (with the
//!   program's name, so another program's database is told apart); a newer
//!   version is refused, an older one upgraded by a writer in one
//!   transaction, and a database with tables but no `jobctl_schema` is
//!   another program's and left untouched.
//! - **Silences changed.** SQLite's `data_version` has no PostgreSQL
//!   equivalent; `jobctl silence` bumps a counter in `jobctl_schema` in the
//!   same transaction as its change, and the daemon reads that counter.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::db::{args, Db, PgWorker};
use super::{db_error, Journal, JournalError, SCHEMA_VERSION};
use crate::secret::SecretSource;

/// Where a journal is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(PostgresTarget),
}

impl Location {
    /// The file or URL, as messages name it.
    pub fn display(&self) -> String {
        match self {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(target) => redacted(&target.url),
        }
    }
}

/// How the connection to PostgreSQL is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP (or a Unix socket).
    Disable,
    /// TLS, without checking the server's certificate.
    Require,
    /// TLS, the certificate checked against the CA and the host name.
    VerifyFull,
}

impl TlsMode {
    /// The word the rules file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Require => "require",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    /// The mode a word names.
    pub fn parse(word: &str) -> Option<TlsMode> {
        [TlsMode::Disable, TlsMode::Require, TlsMode::VerifyFull]
            .into_iter()
            .find(|mode| mode.as_str() == word)
    }
}

/// A PostgreSQL journal: its URL and how to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresTarget {
    /// `postgresql://user@host:port/database`, without a password.
    pub url: String,
    /// Where the password is, if the server asks for one.
    pub password: Option<SecretSource>,
    /// The directory a relative `password_file` or `ca_file` is taken from
    /// (the rules file's).
    pub base_dir: PathBuf,
    /// TLS.
    pub tls: TlsMode,
    /// The CA certificates (PEM) `verify-full` checks against; the
    /// system's roots when `None`.
    pub ca_file: Option<PathBuf>,
}

impl PostgresTarget {
    /// A target for `url`, with the default TLS mode for its host. Refuses
    /// a URL that does not parse or that holds a password.
    pub fn new(url: &str) -> Result<PostgresTarget, String> {
        let config = parse_url(url)?;
        Ok(PostgresTarget {
            url: url.to_string(),
            password: None,
            base_dir: PathBuf::from("."),
            tls: default_tls(&config),
            ca_file: None,
        })
    }
}

/// Checks a `[journal] url`: a PostgreSQL URL without a password.
fn parse_url(url: &str) -> Result<postgres::Config, String> {
    if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
        return Err("not a PostgreSQL URL; expected postgresql://user@host/database".to_string());
    }
    let config: postgres::Config = url.parse().map_err(|err: postgres::Error| {
        format!("not a valid PostgreSQL URL ({err}); expected postgresql://user@host/database")
    })?;
    if config.get_password().is_some() {
        return Err("the URL holds a password, which would show wherever the URL does; \
             remove it and set password_file (or password_env) instead"
            .to_string());
    }
    if config.get_user().is_none() {
        return Err("the URL names no user; expected postgresql://user@host/database".to_string());
    }
    Ok(config)
}

/// `url` with any password in it replaced by `***`, for messages.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) if query.contains("password") => format!("{path}?***"),
        _ => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// `disable` for loopback addresses and Unix sockets, `verify-full` else.
fn default_tls(config: &postgres::Config) -> TlsMode {
    let local = config.get_hosts().iter().all(|host| match host {
        postgres::config::Host::Tcp(name) => {
            name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        postgres::config::Host::Unix(_) => true,
    });
    if local {
        TlsMode::Disable
    } else {
        TlsMode::VerifyFull
    }
}

/// The advisory lock key of the journal's writer: "jobc" in ASCII.
const WRITER_LOCK: i64 = 0x6a6f_6263;

/// `jobctl_schema.program` of a jobctl journal.
const PROGRAM: &str = "jobctl journal";

/// The first schema version a PostgreSQL journal is created at.
const FIRST_VERSION: i64 = 2;

/// `MIGRATIONS[0]` creates a journal at [`FIRST_VERSION`];
/// `MIGRATIONS[n]` upgrades version `FIRST_VERSION + n - 1` by one. A new
/// SQLite version needs its script here too (the length says so).
const MIGRATIONS: [&str; (SCHEMA_VERSION - FIRST_VERSION + 1) as usize] = [r"
CREATE TABLE jobctl_schema (
    program          TEXT NOT NULL,
    version          BIGINT NOT NULL,
    silences_changed BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE executions (
    id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    job           TEXT,
    device_key    TEXT,
    socket        TEXT NOT NULL,
    phone         TEXT NOT NULL,
    text          TEXT NOT NULL,
    episode       BIGINT,
    attempt       BIGINT,
    trigger_value DOUBLE PRECISION,
    status        TEXT NOT NULL CHECK (status IN
                    ('planned', 'sending', 'sent', 'failed', 'uncertain', 'suppressed', 'dry_run')),
    backend       TEXT,
    detail        TEXT,
    manual        BIGINT NOT NULL CHECK (manual IN (0, 1)),
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    result        TEXT
        CHECK (result IN ('recovered', 'not_recovered', 'unverified', 'gave_up')),
    result_at     BIGINT,
    recovered_after_ms BIGINT,
    channel       TEXT NOT NULL DEFAULT 'sms' CHECK (channel IN ('sms', 'webhook')),
    event         TEXT,
    about         BIGINT REFERENCES executions (id)
);
CREATE INDEX executions_by_created_at ON executions (created_at);
CREATE INDEX executions_by_socket ON executions (socket, created_at);
CREATE INDEX executions_by_job_device ON executions (job, device_key, created_at);
CREATE INDEX executions_in_flight ON executions (status) WHERE status IN ('planned', 'sending');
CREATE INDEX executions_by_job_socket ON executions (job, socket, created_at);

CREATE TABLE attempts (
    id           BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    execution_id BIGINT NOT NULL REFERENCES executions (id),
    backend      TEXT NOT NULL,
    outcome      TEXT NOT NULL CHECK (outcome IN ('sent', 'failed', 'uncertain')),
    detail       TEXT,
    at           BIGINT NOT NULL
);
CREATE INDEX attempts_by_execution ON attempts (execution_id);

CREATE TABLE job_state (
    job        TEXT NOT NULL,
    device_key TEXT NOT NULL,
    phase      TEXT NOT NULL,
    state      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (job, device_key)
);

CREATE TABLE silences (
    id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    job        TEXT,
    socket     TEXT,
    devices    TEXT NOT NULL,
    author     TEXT NOT NULL,
    comment    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    ends_at    BIGINT NOT NULL,
    expired_by TEXT
);
CREATE INDEX silences_by_end ON silences (ends_at);

CREATE TABLE held_actions (
    id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    job        TEXT NOT NULL,
    device_key TEXT NOT NULL,
    episode    BIGINT NOT NULL,
    attempt    BIGINT NOT NULL,
    reason     TEXT NOT NULL,
    silence_id BIGINT REFERENCES silences (id),
    at         BIGINT NOT NULL
);
CREATE UNIQUE INDEX held_actions_once
    ON held_actions (job, device_key, episode, reason, COALESCE(silence_id, 0));
CREATE INDEX held_actions_by_silence ON held_actions (silence_id);

CREATE TABLE mass_outages (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, job TEXT NOT NULL,
    since BIGINT NOT NULL, bad BIGINT NOT NULL, known BIGINT NOT NULL, ended_at BIGINT
);
CREATE UNIQUE INDEX mass_outages_open ON mass_outages (job) WHERE ended_at IS NULL;

CREATE TABLE execution_devices (
    execution_id  BIGINT NOT NULL REFERENCES executions (id),
    device_key    TEXT NOT NULL,
    episode       BIGINT NOT NULL,
    attempt       BIGINT NOT NULL,
    trigger_value DOUBLE PRECISION,
    result        TEXT
        CHECK (result IN ('recovered', 'not_recovered', 'unverified', 'gave_up')),
    result_at     BIGINT,
    recovered_after_ms BIGINT,
    PRIMARY KEY (execution_id, device_key)
);
CREATE INDEX execution_devices_by_device ON execution_devices (device_key, execution_id);
"];

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the journal's database: a journal not yet checked or
/// prepared. A `read_only` session refuses every write.
pub(super) fn connect(target: &PostgresTarget, read_only: bool) -> Result<Journal, JournalError> {
    let path = PathBuf::from(redacted(&target.url));
    let mut config = parse_url(&target.url)
        .map_err(|reason| JournalError::BadUrl { path: path.clone(), reason })?;
    if let Some(source) = &target.password {
        let loaded = source.load(&target.base_dir).map_err(|err| JournalError::Credentials {
            path: path.clone(),
            reason: err.to_string(),
        })?;
        if let Some(warning) = &loaded.loose_permissions {
            tracing::warn!("{warning}");
        }
        config.password(loaded.secret.expose());
    }
    config.application_name(&application_name());
    config.connect_timeout(CONNECT_TIMEOUT);
    config.keepalives(true);
    let tls = match target.tls {
        TlsMode::Disable => None,
        mode => Some(
            tls_config(mode, target.ca_file.as_deref().map(|f| target.base_dir.join(f)))
                .map_err(|reason| JournalError::Credentials { path: path.clone(), reason })?,
        ),
    };
    config.ssl_mode(if tls.is_some() {
        postgres::config::SslMode::Require
    } else {
        postgres::config::SslMode::Disable
    });
    // The same connection each time, the first and after a loss: a reader's
    // session is read-only from its first statement.
    let connect = move || {
        let mut client = match &tls {
            None => config.connect(postgres::NoTls)?,
            Some(tls) => {
                config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone()))?
            }
        };
        if read_only {
            client.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")?;
        }
        Ok(client)
    };
    let worker = PgWorker::start(path.display().to_string(), Box::new(connect))
        .map_err(|source| JournalError::Connect { path: path.clone(), source })?;
    let journal = Journal::new(Db::Postgres(worker), &path, None);
    Ok(journal)
}

/// `jobctl on HOST, PID N`: how a session shows in `pg_stat_activity`,
/// and so how a refused writer names the holder.
fn application_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = if host.trim().is_empty() { "an unknown host" } else { host.trim() };
    let mut name = format!("jobctl on {host}, PID {}", std::process::id());
    // PostgreSQL keeps 63 bytes.
    while name.len() > 63 {
        name.remove(10);
    }
    name
}

/// The rustls configuration for `mode`, with the CA of `ca_file` or the
/// system's roots.
fn tls_config(mode: TlsMode, ca_file: Option<PathBuf>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("cannot set up TLS: {err}"))?;
    if mode == TlsMode::Require {
        let verifier = Arc::new(NoVerification(provider));
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(file) => {
            let certs = CertificateDer::pem_file_iter(&file)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|err| format!("ca_file {}: cannot read it: {err}", file.display()))?;
            if certs.is_empty() {
                return Err(format!("ca_file {}: no PEM certificate in it", file.display()));
            }
            for cert in certs {
                roots.add(cert).map_err(|err| format!("ca_file {}: {err}", file.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("tls = \"verify-full\" without ca_file, and the system has no CA \
                            certificates; set ca_file"
                    .to_string());
            }
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `tls = "require"`: encrypted, whoever the server is (as libpq's
/// `sslmode=require`). Signatures are still checked, so the session is
/// the one the handshake set up.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl Journal {
    /// Takes the database's writer lock for this session, or says who
    /// holds it. Once taken, the journal holds it for this session
    /// (`writer_session`): after a reconnection, the next write takes it
    /// again first ([`Journal::hold_writer_lock`]).
    pub(super) fn lock_postgres(&self) -> Result<(), JournalError> {
        let path = &self.path;
        let got = self
            .db
            .query_one(&format!("SELECT pg_try_advisory_lock({WRITER_LOCK})"), args![], |row| {
                row.bool(0)
            })
            .map_err(db_error(path, "taking the journal's writer lock"))?;
        if got {
            self.writer_session.set(Some(self.db.generation()));
            return Ok(());
        }
        let holder = self
            .db
            .query_opt(
                &format!(
                    "SELECT a.application_name, a.pid FROM pg_locks l \
                     JOIN pg_stat_activity a ON a.pid = l.pid \
                     WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 \
                     AND l.objid = {WRITER_LOCK} AND l.objsubid = 1 \
                     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                args![],
                |row| Ok((row.opt_string(0)?.unwrap_or_default(), row.opt_i64(1)?)),
            )
            .map_err(db_error(path, "finding who holds the journal's writer lock"))?;
        let holder = match holder {
            Some((name, Some(pid))) if !name.is_empty() => format!("{name}; server PID {pid}"),
            Some((_, Some(pid))) => format!("server PID {pid}"),
            _ => "a session that has just ended".to_string(),
        };
        Err(JournalError::LockedInDatabase { path: path.clone(), holder })
    }

    /// Checks the schema, then (writable only) creates or upgrades it.
    /// Nothing is written before the checks pass.
    pub(super) fn prepare_postgres(&mut self, writable: bool) -> Result<(), JournalError> {
        let path = self.path.clone();
        let doing = "reading the schema";
        let has_schema = self
            .db
            .query_one("SELECT to_regclass('jobctl_schema') IS NOT NULL", args![], |row| {
                row.bool(0)
            })
            .map_err(db_error(&path, doing))?;
        let found = if has_schema {
            let (program, version) = self
                .db
                .query_opt("SELECT program, version FROM jobctl_schema", args![], |row| {
                    Ok((row.string(0)?, row.i64(1)?))
                })
                .map_err(db_error(&path, doing))?
                .unwrap_or_default();
            if program != PROGRAM {
                let evidence = format!("its jobctl_schema names {program:?}");
                return Err(JournalError::ForeignPostgres { path, evidence });
            }
            version
        } else {
            let table = self
                .db
                .query_opt(
                    "SELECT CAST(tablename AS TEXT) FROM pg_tables \
                     WHERE schemaname = current_schema() ORDER BY tablename LIMIT 1",
                    args![],
                    |row| row.string(0),
                )
                .map_err(db_error(&path, doing))?;
            if let Some(table) = table {
                let evidence = format!("it has a table {table:?}");
                return Err(JournalError::ForeignPostgres { path, evidence });
            }
            0
        };
        if found > SCHEMA_VERSION {
            return Err(JournalError::NewerSchema { path, found, supported: SCHEMA_VERSION });
        }
        if !writable {
            if found == 0 {
                return Err(JournalError::MissingInDatabase { path });
            }
            if found < SCHEMA_VERSION {
                return Err(JournalError::OlderSchema { path, found, supported: SCHEMA_VERSION });
            }
            return Ok(());
        }
        let mut version = found;
        while version < SCHEMA_VERSION {
            let tx = self.begin_write("upgrading the schema")?;
            let (script, next) = if version == 0 {
                (MIGRATIONS[0], FIRST_VERSION)
            } else {
                let index = usize::try_from(version - FIRST_VERSION + 1).unwrap_or(usize::MAX);
                (MIGRATIONS[index], version + 1)
            };
            tx.batch_execute(script).map_err(db_error(&path, "upgrading the schema"))?;
            let recorded = if version == 0 {
                tx.execute(
                    "INSERT INTO jobctl_schema (program, version) VALUES (?1, ?2)",
                    args![PROGRAM, next],
                )
            } else {
                tx.execute("UPDATE jobctl_schema SET version = ?1", args![next])
            };
            recorded.map_err(db_error(&path, "recording the schema version"))?;
            tx.commit().map_err(db_error(&path, "committing the schema upgrade"))?;
            version = next;
        }
        Ok(())
    }
}

/// The PostgreSQL counterpart of SQLite's `data_version`: a counter that
/// silence commands bump.
pub(super) fn silences_changed(db: &Db, path: &Path) -> Result<i64, JournalError> {
    db.query_one("SELECT silences_changed FROM jobctl_schema", args![], |row| row.i64(0))
        .map_err(db_error(path, "reading the data version"))
}

/// Bumps [`silences_changed`], in the transaction of a silence's change.
pub(super) fn note_silences_changed(db: &Db, path: &Path) -> Result<(), JournalError> {
    db.execute("UPDATE jobctl_schema SET silences_changed = silences_changed + 1", args![])
        .map(drop)
        .map_err(db_error(path, "noting a change of silences"))
}
