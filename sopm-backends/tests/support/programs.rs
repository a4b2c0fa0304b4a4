//! What the tests' own outside programs (`redis-server`, `docker-registry`) have in
//! common: finding the binary, skipping the test (or failing it under
//! `SOPM_REQUIRE_INTEGRATION=1`) when it is missing, a free port, waiting until it
//! answers, and killing it when dropped (a test that includes `redis_server.rs` or
//! `oci_registry.rs` includes this file beside them as `programs`).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// How long a started program has to answer.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A child process, killed with SIGKILL when dropped.
#[derive(Default)]
pub struct Program(Option<Child>);

impl Program {
    /// Holds `child`.
    pub fn new(child: Child) -> Self {
        Program(Some(child))
    }

    /// Kills it with SIGKILL and reaps it (nothing when it is not running).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The binary `name` on `PATH` (or in /usr/bin, /usr/sbin); when there is none, says
/// so for `test` (skip, or panic under `SOPM_REQUIRE_INTEGRATION=1`) with the Debian
/// `package` that installs it, and returns `None`.
pub fn find_or_skip(test: &str, name: &str, package: &str) -> Option<PathBuf> {
    let found = find(name);
    if found.is_none() {
        skip(
            test,
            &format!("{name} is not installed (apt-get install {package})"),
        );
    }
    found
}

/// The binary `name` on `PATH` or in /usr/bin, /usr/sbin.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Skips `test` for `why`, printing the reason; panics instead under
/// `SOPM_REQUIRE_INTEGRATION=1`.
pub fn skip(test: &str, why: &str) {
    if std::env::var("SOPM_REQUIRE_INTEGRATION").as_deref() == Ok("1") {
        panic!("{test}: {why} (SOPM_REQUIRE_INTEGRATION=1)");
    }
    eprintln!("skipping {test}: {why}");
}

/// A port free on `bind` a moment ago.
pub fn free_port(bind: &str) -> u16 {
    TcpListener::bind((bind, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Asks `answers` every 20 ms until it says yes; panics naming `program` and `addr`
/// when it has not within 20 s.
pub fn wait_until_answering(program: &str, addr: SocketAddr, mut answers: impl FnMut() -> bool) {
    let until = Instant::now() + READY_WITHIN;
    while Instant::now() < until {
        if answers() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{program} on {addr} did not answer within {} s",
        READY_WITHIN.as_secs()
    );
}
