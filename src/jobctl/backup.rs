//! `jobctl journal backup FILE`: a consistent copy of the journal, taken
//! beside the running daemon (see `journal::backup` for how). Restoring is
//! stopping the daemon, putting the copy in the journal's place and
//! starting it again.

use std::path::{Path, PathBuf};

use super::error::Error;
use super::{load_rules, read_journal};
use crate::exit::Exit;

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
}

pub(super) fn run(config: &Path, args: JournalArgs) -> Result<Exit, Error> {
    let rules = load_rules(config)?;
    let JournalCommand::Backup { file } = args.command;
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
