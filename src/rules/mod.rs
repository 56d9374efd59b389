//! Job rules: what to watch, when it counts as bad, and what to do about it.

pub mod state;
