//! Sending SMS: phone numbers here; the `Sender` trait and its backends are written on another branch.

pub mod phone;
