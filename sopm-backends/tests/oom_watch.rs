//! The host layer's `OomWatch` against the kernel: a process killed for memory in a
//! cgroup is still counted after the cgroup is removed (which is when a container runtime
//! removes a container's cgroup, before the server reads it), and removing a cgroup with
//! no kill counts none. Needs root and a writable cgroup hierarchy; skipped with the
//! reason without them, failed instead under `SOPM_REQUIRE_INTEGRATION=1`.
#![cfg(feature = "sandbox-host")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sopm_backends::host::cgroup::{oom_kills_in, CgroupRoot, SandboxCgroup};
use sopm_backends::host::oom_watch::OomWatch;

const PARENT: &str = "sopm-test-oom-watch";

/// One test at a time: the third counts this process's watch threads.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// This process's threads named like a watch's.
fn watch_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "sopm-oom-watch")
        .count()
}

/// A fresh memory cgroup of `memory_mb` and its directory, or `None` (with the reason
/// printed) where this host lets us make none.
fn cgroup(test: &str, memory_mb: u64) -> Option<(SandboxCgroup, PathBuf, bool)> {
    let root = match CgroupRoot::detect(Path::new("/sys/fs/cgroup"), PARENT) {
        Ok(root) => root,
        Err(reason) => {
            if std::env::var("SOPM_REQUIRE_INTEGRATION").as_deref() == Ok("1") {
                panic!("SOPM_REQUIRE_INTEGRATION=1 but {reason}");
            }
            eprintln!("skipping {test}: {reason}");
            return None;
        }
    };
    let (dir, v2) = match &root {
        CgroupRoot::V1 { memory, .. } => (memory.join(test), false),
        CgroupRoot::V2 { base, .. } => (base.join(test), true),
    };
    let cg = root.create(test).expect("a sandbox cgroup");
    cg.set_limits(memory_mb << 20, 64).expect("its limits");
    Some((cg, dir, v2))
}

/// Runs `python3 -c code` inside the memory cgroup `dir`; how it ended.
fn run_in(dir: &Path, code: &str) -> std::process::ExitStatus {
    std::process::Command::new("sh")
        .args([
            "-c",
            "echo $$ > \"$1/cgroup.procs\" && exec python3 -c \"$2\"",
            "sh",
        ])
        .arg(dir)
        .arg(code)
        .status()
        .expect("sh runs")
}

/// Removes the cgroup once the kernel has let its last process go.
fn remove(cg: &SandboxCgroup, dir: &Path) {
    let until = Instant::now() + Duration::from_secs(10);
    while !cg.remove_now() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!dir.exists(), "{} is still there", dir.display());
}

/// Waits (at most 10 s) until `done` holds.
fn wait_for(done: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !done() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_kill_is_counted_after_its_cgroup_is_removed() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = format!("kill-{}", std::process::id());
    let Some((cg, dir, v2)) = cgroup(&test, 32) else {
        return;
    };
    let watch = OomWatch::start(&dir, v2).expect("a watch");
    assert_eq!(watch.kills(), 0);
    let status = run_in(&dir, "b = b'x' * (256 << 20)");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status:?}");
    remove(&cg, &dir);
    // What the server read before the watch: nothing, once the cgroup is gone.
    assert_eq!(oom_kills_in(&dir, v2), 0);
    wait_for(|| watch.ended());
    assert!(watch.ended(), "the watch did not see its cgroup go");
    assert!(watch.kills() >= 1, "kills seen: {}", watch.kills());
}

#[test]
fn a_removed_cgroup_without_a_kill_counts_none() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = format!("calm-{}", std::process::id());
    let Some((cg, dir, v2)) = cgroup(&test, 32) else {
        return;
    };
    let watch = OomWatch::start(&dir, v2).expect("a watch");
    // Close to the limit, not past it: the kernel reclaims and kills nothing.
    let status = run_in(&dir, "b = b'x' * (8 << 20)");
    assert!(status.success(), "{status:?}");
    remove(&cg, &dir);
    wait_for(|| watch.ended());
    assert!(watch.ended(), "the watch did not see its cgroup go");
    assert_eq!(watch.kills(), 0);
}

#[test]
fn a_dropped_watch_ends_while_its_cgroup_stays() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = format!("drop-{}", std::process::id());
    let Some((cg, dir, v2)) = cgroup(&test, 32) else {
        return;
    };
    let before = watch_threads();
    let watch = OomWatch::start(&dir, v2).expect("a watch");
    wait_for(|| watch_threads() == before + 1);
    assert_eq!(watch_threads(), before + 1);
    drop(watch);
    wait_for(|| watch_threads() == before);
    assert_eq!(watch_threads(), before, "the watch's thread outlived it");
    remove(&cg, &dir);
}
