//! Test peers shared by the integration tests: real servers on loopback
//! standing in for the services signage-watchdog talks to.
//!
//! Each test crate uses only part of them, hence `dead_code` is allowed.

#[allow(dead_code)]
pub mod fake_gateway;
