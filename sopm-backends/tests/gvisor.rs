//! The gVisor executor against real `runsc` sandboxes: the executor conformance suite of
//! `sopm_core`, each behaviour ending with a check that nothing of the executor is left
//! after shutdown, plus gVisor's own cleanup. Skipped with a printed reason without `runsc`
//! (as root), failed instead under `SOPM_REQUIRE_INTEGRATION=1`.
#![cfg(feature = "gvisor")]

#[path = "process_support.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sopm_backends::gvisor::{GvisorExecutor, GvisorLauncher};
use sopm_backends::host::PoolSettings;
use sopm_backends::sandbox::RunnerKind;
use sopm_backends::{SandboxKind, SandboxSettings};
use sopm_core::conformance::executor::{skip, Needs, SandboxCounters, Subject};
use sopm_core::Executor;
use support::*;

/// An executor with small stem pools and its own scratch dir (kept alive by the value).
struct Gvisor {
    exec: GvisorExecutor,
    scratch: tempfile::TempDir,
}

impl std::ops::Deref for Gvisor {
    type Target = GvisorExecutor;
    fn deref(&self) -> &GvisorExecutor {
        &self.exec
    }
}

#[async_trait]
impl Subject for Gvisor {
    fn executor(&self) -> &dyn Executor {
        &self.exec
    }
    fn start(&self) {
        self.exec.start()
    }
    fn counters(&self) -> SandboxCounters {
        sandbox_counters(self.exec.counters())
    }
    fn allowed_host_paths(&self) -> Vec<std::path::PathBuf> {
        interpreter_prefixes()
    }
    fn host_dirs(&self) -> Vec<std::path::PathBuf> {
        vec![self.scratch.path().to_path_buf()]
    }
    /// Shuts the executor down and checks that nothing of it is left: no sandbox in its
    /// runsc state dir, no bundle dir, no `runsc` process working on its state dir.
    async fn finish(&self) {
        self.exec.shutdown().await;
        assert_nothing_left(self).await;
    }
}

fn runsc_works() -> Result<(), String> {
    if which("runsc").is_none() {
        return Err("runsc not on PATH".into());
    }
    if which("python3").is_none() {
        return Err("python3 not on PATH".into());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"));
    if !root {
        return Err("runsc sandboxes need root here".into());
    }
    Ok(())
}

fn ready(test: &str, runners: &[RunnerKind]) -> Option<Gvisor> {
    ready_with(test, runners, |c| c)
}

fn ready_with(
    test: &str,
    runners: &[RunnerKind],
    tune: impl FnOnce(SandboxSettings) -> SandboxSettings,
) -> Option<Gvisor> {
    let mut why = runsc_works().err();
    if why.is_none() && runners.contains(&RunnerKind::Node) && which("node").is_none() {
        why = Some("node not on PATH".into());
    }
    if let Some(why) = why {
        skip(test, &why);
        return None;
    }
    // Short paths: runsc keeps sockets under its state dir.
    let scratch = tempfile::Builder::new()
        .prefix("sopm-gv-")
        .tempdir_in("/tmp")
        .expect("scratch dir");
    let config = SandboxSettings::new(SandboxKind::Gvisor)
        .with_pool(PoolSettings::new(runners.iter().copied()).with_stem_cells(1))
        .with_scratch_dir(scratch.path());
    let exec = tune(config)
        .build::<GvisorLauncher>()
        .expect("valid config");
    Some(Gvisor { exec, scratch })
}

/// A gVisor executor shaped for one conformance behaviour, or `None` (skipped) when the
/// host cannot run `runsc` sandboxes or lacks a runtime the behaviour needs.
async fn gvisor(needs: Needs) -> Option<Gvisor> {
    ready_with(needs.test, &runners(needs.runtimes), |mut c| {
        shape_pool(c.pool_mut(), &needs);
        c
    })
}

sopm_core::executor_conformance!(gvisor);

const PY: &[RunnerKind] = &[RunnerKind::Python];

async fn assert_nothing_left(g: &Gvisor) {
    let state = g.exec.state_dir();
    let mut left = (Vec::new(), Vec::new(), Vec::new());
    // A sandbox dropped by a cancelled call is deleted by a background task: give it time.
    for _ in 0..50 {
        left = (
            runsc_list(&state),
            entries(&g.exec.bundles_dir()),
            runsc_processes(&state),
        );
        if left.0.is_empty() && left.1.is_empty() && left.2.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "left after shutdown: sandboxes {:?}, bundles {:?}, runsc processes {:?}",
        left.0, left.1, left.2
    );
}

fn runsc_list(state: &Path) -> Vec<String> {
    if !state.exists() {
        return Vec::new();
    }
    let out = std::process::Command::new("runsc")
        .arg("--root")
        .arg(state)
        .args(["list", "--quiet"])
        .output()
        .expect("runsc list");
    assert!(out.status.success(), "runsc list failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes whose command line names `state` (runsc run, its sandbox and gofer).
fn runsc_processes(state: &Path) -> Vec<String> {
    let needle = state.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("runsc") && cmd.contains(&needle) {
            out.push(cmd);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_no_sandbox_is_left() {
    let Some(g) = ready("after_shutdown_no_sandbox_is_left", PY) else {
        return;
    };
    g.exec.start();
    wait_for_stem_cells(&g.exec, "python", 1).await;
    let a = python(HELLO_PY);
    let b = python(HELLO_PY);
    call(&g.exec, &a, serde_json::json!({})).await.unwrap();
    call(&g.exec, &b, serde_json::json!({})).await.unwrap();
    assert!(
        !runsc_list(&g.exec.state_dir()).is_empty(),
        "sandboxes should be running before shutdown"
    );
    // A call still running at shutdown is cancelled with it.
    let slow = python("import time\ndef handle(event, context):\n    time.sleep(30)\n");
    let pending = call_within(
        &g.exec,
        &slow,
        serde_json::json!({}),
        Duration::from_millis(300),
    );
    assert!(pending.await.is_err());
    g.exec.retire(&a.version.function_id).await.unwrap();
    g.finish().await;
}

/// The memory and pids directories of a cgroup `name` under `parent`, cgroup v1 or v2.
fn cgroup_dirs(parent: &str) -> Vec<std::path::PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    [
        root.join("memory").join(parent),
        root.join("pids").join(parent),
        root.join(parent),
    ]
    .into_iter()
    .filter(|d| d.is_dir())
    .collect()
}

fn children(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// With host cgroups on, each sandbox sits in a cgroup of its own under the configured
/// parent holding a memory and a pids limit; a memory hog and a fork bomb are contained
/// with them, and the cgroups go with the sandboxes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_cgroups_hold_the_limits_and_go_with_the_sandboxes() {
    use sopm_core::conformance::executor as suite;
    let test = "host_cgroups_hold_the_limits_and_go_with_the_sandboxes";
    let parent = format!("sopm-gvtest-{}", uuid::Uuid::new_v4().simple());
    let writable = Path::new("/sys/fs/cgroup/memory").is_dir()
        || std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.contains("memory"));
    if !writable {
        skip(test, "no memory cgroup controller here");
        return;
    }
    let Some(g) = ready_with(test, PY, |c| {
        c.with_cgroups(true).with_cgroup_parent(&parent)
    }) else {
        return;
    };
    g.exec.start();
    wait_for_stem_cells(&g.exec, "python", 1).await;
    let f = python(HELLO_PY);
    call(&g.exec, &f, serde_json::json!({})).await.unwrap();
    let dirs = cgroup_dirs(&parent);
    assert!(!dirs.is_empty(), "no cgroup under {parent}");
    let mut limits = Vec::new();
    for dir in &dirs {
        for sandbox in children(dir) {
            for file in ["memory.limit_in_bytes", "memory.max", "pids.max"] {
                if let Ok(v) = std::fs::read_to_string(sandbox.join(file)) {
                    limits.push((file, v.trim().to_string()));
                }
            }
        }
    }
    let limited = |name: &str| {
        limits
            .iter()
            .any(|(f, v)| *f == name && v.parse::<u64>().is_ok_and(|n| n < 1 << 40))
    };
    assert!(
        limited("memory.limit_in_bytes") || limited("memory.max"),
        "no memory limit: {limits:?}"
    );
    assert!(limited("pids.max"), "no pids limit: {limits:?}");
    suite::unbounded_allocation_is_out_of_memory(&g).await;
    suite::a_fork_bomb_is_contained(&g).await;
    g.exec.shutdown().await;
    assert_nothing_left(&g).await;
    let mut left = Vec::new();
    for _ in 0..50 {
        left = cgroup_dirs(&parent)
            .iter()
            .flat_map(|d| children(d))
            .collect();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for dir in cgroup_dirs(&parent) {
        let _ = std::fs::remove_dir(&dir);
    }
    assert!(left.is_empty(), "cgroups left after shutdown: {left:?}");
}
