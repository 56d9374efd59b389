//! Test peers shared by the integration tests: real servers on loopback
//! standing in for the services signage-watchdog talks to.
// Each integration test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod fake_gateway;
pub mod fake_modem;
pub mod prometheus;
