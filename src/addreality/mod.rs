//! The AddReality cloud API: what a device looks like ([`model`]), how to
//! fetch every device of an account ([`client`]), and a faithful stand-in
//! for the real service ([`simulator`]) used by the tests and by `--demo`.

pub mod client;
pub mod model;
pub mod simulator;

#[cfg(test)]
mod proptests;
