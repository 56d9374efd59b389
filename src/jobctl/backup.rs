//! `jobctl journal backup FILE`: a consistent copy of the journal, taken
//! beside the running daemon (see `journal::backup` for how). Restoring is
//! stopping the daemon, putting the copy in the journal's place and
//! starting it again.
//!
//! `jobctl journal migrate --from sqlite:FILE --to postgresql://…`: an
//! SQLite journal copied into an empty PostgreSQL database and checked row
//! by row (see `journal::migrate`), with the daemon stopped.

use std::path::{Path, PathBuf};

use super::error::Error;
use super::{load_rules, read_journal};
use crate::exit::Exit;
use crate::journal::{migrate, sqlite_source, JournalError, PostgresTarget, TlsMode};
use crate::secret::SecretSource;

/// The environment variable `journal migrate` reads the PostgreSQL
/// password from when `--password-file` is not given.
pub(crate) const MIGRATE_PASSWORD_ENV: &str = "JOBCTL_JOURNAL_PASSWORD";

/// `jobctl journal` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct JournalArgs {
    #[command(subcommand)]
    command: JournalCommand,
}

/// What to do with the journal.
#[derive(Debug, clap::Subcommand)]
enum JournalCommand {
    /// Write a consistent copy of the journal to FILE (which must not
    /// exist), beside the running daemon; restore it with the daemon
    /// stopped.
    Backup {
        /// Where to write the copy (readable by its owner only).
        file: PathBuf,
    },
    /// Copy an SQLite journal into an empty PostgreSQL database, in one
    /// transaction, and check the copy row by row. Stop the daemon first.
    /// The password is read from --password-file, or else from the
    /// environment variable JOBCTL_JOURNAL_PASSWORD.
    Migrate {
        /// The SQLite journal: `sqlite:/var/lib/jobctl/journal.db`.
        #[arg(long)]
        from: String,
        /// The PostgreSQL database: `postgresql://jobctl@db.example/jobctl`
        /// (no password in it).
        #[arg(long)]
        to: String,
        /// A file holding the PostgreSQL password.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// disable, require or verify-full (default: verify-full, or
        /// disable for a loopback address).
        #[arg(long)]
        tls: Option<String>,
        /// CA certificates (PEM) for verify-full.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
}

pub(super) fn run(config: &Path, args: JournalArgs) -> Result<Exit, Error> {
    let file = match args.command {
        JournalCommand::Backup { file } => file,
        JournalCommand::Migrate { from, to, password_file, tls, ca_file } => {
            return run_migrate(&from, &to, password_file, tls.as_deref(), ca_file);
        }
    };
    let rules = load_rules(config)?;
    let journal = read_journal(&rules)?;
    let backup = journal.backup_to(&file)?;
    crate::exit::outln!(
        "{}: backup of {} ({}, {} bytes)",
        file.display(),
        rules.journal.location.display(),
        super::count(
            usize::try_from(backup.executions).unwrap_or(usize::MAX),
            "execution",
            "executions"
        ),
        backup.bytes
    );
    Ok(Exit::Ok)
}

fn run_migrate(
    from: &str,
    to: &str,
    password_file: Option<PathBuf>,
    tls: Option<&str>,
    ca_file: Option<PathBuf>,
) -> Result<Exit, Error> {
    let bad = |reason: String| {
        Error::Journal(JournalError::BadUrl {
            path: crate::journal::redacted_url(to).into(),
            reason,
        })
    };
    let mut target = PostgresTarget::new(to).map_err(bad)?;
    target.password = Some(match password_file {
        Some(file) => SecretSource::File(file),
        None => SecretSource::Env(MIGRATE_PASSWORD_ENV.to_string()),
    });
    if let Some(word) = tls {
        target.tls = TlsMode::parse(word).ok_or_else(|| {
            bad(format!("--tls {word:?}: expected disable, require or verify-full"))
        })?;
    }
    target.ca_file = ca_file;
    let source = sqlite_source(from);
    let migrated = migrate(&source, &target)?;
    let tables: Vec<String> =
        migrated.tables.iter().map(|(table, rows)| format!("{rows} {table}")).collect();
    crate::exit::outln!(
        "{} -> {}: copied {} rows ({}); checked row by row",
        source.display(),
        crate::journal::redacted_url(to),
        migrated.total(),
        tables.join(", ")
    );
    Ok(Exit::Ok)
}
