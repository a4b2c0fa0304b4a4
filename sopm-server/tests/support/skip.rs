//! Outside programs a test needs: a test without them skips with a printed reason, or
//! fails when `SOPM_REQUIRE_INTEGRATION=1`.

use std::process::{Command, Stdio};

/// Whether missing programs fail the test instead of skipping it.
pub fn require_integration() -> bool {
    std::env::var("SOPM_REQUIRE_INTEGRATION").as_deref() == Ok("1")
}

/// `true` when `missing` names something missing: the test should return. Prints the
/// reason, or panics with it under `SOPM_REQUIRE_INTEGRATION=1`.
pub fn skipped(missing: Option<&str>) -> bool {
    let Some(reason) = missing else {
        return false;
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    if require_integration() {
        panic!("{test}: SOPM_REQUIRE_INTEGRATION=1 but {reason}");
    }
    eprintln!("skipping {test}: {reason}");
    true
}

/// Whether `program args` runs and exits 0.
pub fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why bubblewrap cannot sandbox here (missing, or no user namespaces), if it cannot.
pub fn bwrap_missing() -> Option<&'static str> {
    let ok = works(
        "bwrap",
        &["--unshare-user", "--ro-bind", "/", "/", "--", "true"],
    );
    (!ok).then_some("bwrap is missing or does not work here")
}

/// Why `python3 -m pip` cannot run here, if it cannot.
pub fn pip_missing() -> Option<&'static str> {
    (!works("python3", &["-m", "pip", "--version"])).then_some("python3 with pip is missing")
}
