//! Shell completions and manual pages, generated from a program's clap
//! definition, so that they never disagree with `--help`.
//!
//! Both programs offer `completions SHELL` (printed, for
//! `/usr/share/bash-completion/completions/` and the like) and `man DIR`
//! (one page per command and subcommand, `jobctl.1`, `jobctl-run.1`, …),
//! which the package build runs to ship them.

use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// `program`'s completion script for `shell`. Made in memory: the
/// generator panics on a write error, and stdout may be a closed pipe.
pub fn completions(mut program: clap::Command, shell: Shell) -> String {
    let name = program.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut program, name, &mut script);
    String::from_utf8_lossy(&script).into_owned()
}

/// Writes a manual page for `program` and each of its subcommands into
/// `dir` (created if missing), and returns their paths, program first.
pub fn man_pages(program: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut program = program.disable_help_subcommand(true);
    program.build();
    let mut pages = Vec::new();
    let mut todo = vec![program];
    while let Some(command) = todo.pop() {
        pages.push(clap_mangen::Man::new(command.clone()).generate_to(dir)?);
        let subcommands: Vec<clap::Command> =
            command.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
        todo.extend(subcommands.into_iter().rev());
    }
    Ok(pages)
}
