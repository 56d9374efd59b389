//! Sending SMS: one `Sender` trait, one file per backend.
//!
//! [`text`] makes message texts safe for every backend and counts what they
//! cost in SMS segments.

pub mod text;
