//! The host layer's `OomWatch` against the kernel: a process killed for memory in a
//! cgroup is still counted after the cgroup is removed (which is when a container runtime
//! removes a container's cgroup, before the server reads it), removing a cgroup with no
//! kill counts none, and a dropped watch's thread ends. Needs root and a writable cgroup hierarchy; skipped with the
//! reason without them, failed instead under `SOPM_REQUIRE_INTEGRATION=1`.
#![cfg(feature = "sandbox-host")]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sopm_backends::host::cgroup::{oom_kills_in, CgroupRoot, SandboxCgroup};
use sopm_backends::host::oom_watch::OomWatch;

const PARENT: &str = "sopm-test-oom-watch";

/// One test at a time: the third counts this process's watch threads.
static SERIAL: Mutex<()> = Mutex::new(());

/// This process's threads named like a watch's.
fn watch_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "sopm-oom-watch")
        .count()
}

/// One test's 32 MiB memory cgroup, the tests' lock held while it lives.
struct Case {
    cg: SandboxCgroup,
    _one: MutexGuard<'static, ()>,
}

impl Case {
    /// A fresh cgroup named after `kind`, or `None` (with the reason printed) where
    /// this host lets us make none.
    fn new(kind: &str) -> Option<Case> {
        let one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let root = match CgroupRoot::detect(Path::new("/sys/fs/cgroup"), PARENT) {
            Ok(root) => root,
            Err(reason) => {
                if std::env::var("SOPM_REQUIRE_INTEGRATION").as_deref() == Ok("1") {
                    panic!("SOPM_REQUIRE_INTEGRATION=1 but {reason}");
                }
                eprintln!("skipping the {kind} case: {reason}");
                return None;
            }
        };
        let cg = root
            .create(&format!("{kind}-{}", std::process::id()))
            .expect("a sandbox cgroup");
        cg.set_limits(32 << 20, 64).expect("its limits");
        Some(Case { cg, _one: one })
    }

    fn dir(&self) -> &Path {
        self.cg.memory_dir().0
    }

    fn watch(&self) -> OomWatch {
        let (dir, v2) = self.cg.memory_dir();
        OomWatch::start(dir, v2).expect("a watch")
    }

    /// Runs `python3 -c code` inside the cgroup; how it ended.
    fn run(&self, code: &str) -> std::process::ExitStatus {
        std::process::Command::new("sh")
            .args([
                "-c",
                "echo $$ > \"$1/cgroup.procs\" && exec python3 -c \"$2\"",
                "sh",
            ])
            .arg(self.dir())
            .arg(code)
            .status()
            .expect("sh runs")
    }

    /// Removes the cgroup once the kernel has let its last process go.
    fn remove(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        while !self.cg.remove_now() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !self.dir().exists(),
            "{} is still there",
            self.dir().display()
        );
    }
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
    let Some(case) = Case::new("kill") else {
        return;
    };
    let watch = case.watch();
    assert_eq!(watch.kills(), 0);
    let status = case.run("b = b'x' * (256 << 20)");
    assert_eq!(status.signal(), Some(9), "{status:?}");
    case.remove();
    // What the server read before the watch: nothing, once the cgroup is gone.
    let (dir, v2) = case.cg.memory_dir();
    assert_eq!(oom_kills_in(dir, v2), 0);
    wait_for(|| watch.ended());
    assert!(watch.ended(), "the watch did not see its cgroup go");
    assert!(watch.kills() >= 1, "kills seen: {}", watch.kills());
}

#[test]
fn a_removed_cgroup_without_a_kill_counts_none() {
    let Some(case) = Case::new("calm") else {
        return;
    };
    let watch = case.watch();
    // Well under the limit: the kernel kills nothing.
    let status = case.run("b = b'x' * (8 << 20)");
    assert!(status.success(), "{status:?}");
    case.remove();
    wait_for(|| watch.ended());
    assert!(watch.ended(), "the watch did not see its cgroup go");
    assert_eq!(watch.kills(), 0);
}

#[test]
fn a_dropped_watch_ends_while_its_cgroup_stays() {
    let Some(case) = Case::new("drop") else {
        return;
    };
    let before = watch_threads();
    let watch = case.watch();
    wait_for(|| watch_threads() == before + 1);
    assert_eq!(watch_threads(), before + 1);
    drop(watch);
    wait_for(|| watch_threads() == before);
    assert_eq!(watch_threads(), before, "the watch's thread outlived it");
    case.remove();
}
