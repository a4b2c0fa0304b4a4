//! The harness of the tests that start the real `sopm` binary: `sopm serve` on a free
//! loopback port ([`server`]), the HTTP/1.1 client they talk to it with ([`http`]),
//! the skip-or-fail rule for outside programs a test needs ([`skip`]), and for the
//! cluster tests, network namespaces ([`netns`]) and nodes in them ([`cluster`]).
//!
//! Each test file includes it with `mod support;` and uses the part it needs.
#![allow(dead_code)]

pub mod cluster;
pub mod http;
pub mod netns;
pub mod server;
pub mod skip;

use std::time::{Duration, Instant};

/// The `sopm` binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_sopm");

/// Calls `step` every `every` until it answers `Ok`, and returns that; panics with its
/// last `Err` once `limit` has passed (a guard against hanging, not a timing check).
pub fn poll<T>(limit: Duration, every: Duration, mut step: impl FnMut() -> Result<T, String>) -> T {
    let until = Instant::now() + limit;
    loop {
        match step() {
            Ok(done) => return done,
            Err(why) => assert!(Instant::now() < until, "{why}"),
        }
        std::thread::sleep(every);
    }
}
