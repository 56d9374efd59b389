//! From the raw structs to the domain types: every check that `toml` cannot
//! make by itself, for the main file's settings and for the jobs of every
//! file (the sockets' are in [`super::socket`]).
//!
//! Checks never stop at the first problem: each one records its error (with
//! the file, `line:column`, the job or socket, and what to write instead)
//! and validation goes on, so `jobctl check` lists everything at once. A
//! rule set is built only when no error was recorded: never half-loaded
//! (see [`super::parse_files`], which runs the checks in order: settings,
//! sockets, jobs).

mod conditions;
mod escalate;
mod jobs;
mod settings;

pub(crate) use jobs::jobs;
pub(crate) use settings::settings;
