//! The exporter's side of the fleet: what it remembers and what it shows.
//!
//! The AddReality API is slow, rate-limited and sometimes down, and a restart
//! must not turn a whole fleet into "no data". So every successful poll goes
//! into a SQLite [`cache`] first, and the exposition is [`render`]ed from what
//! the cache holds, once per poll; scrapes only ever serve those bytes.

pub mod cache;
pub mod render;
