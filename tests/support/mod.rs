//! Helpers shared by the integration tests: real servers on loopback that
//! stand in for the services the daemons talk to.
// Each integration test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod prometheus;
