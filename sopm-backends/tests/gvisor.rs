//! The gVisor executor against real `runsc` sandboxes: the behaviours of the process
//! backend's tests (the shared ones live in `sandbox_behaviour.rs`), plus gVisor's own
//! cleanup. Skipped with a printed reason without `runsc` (as root), failed instead under
//! `SOPM_REQUIRE_INTEGRATION=1`.
#![cfg(feature = "gvisor")]

#[path = "common/sandbox_behaviour.rs"]
mod behaviour;
#[path = "process_support.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use sopm_backends::gvisor::{GvisorExecutor, GvisorExecutorConfig};
use sopm_backends::sandbox::{PoolCounters, RunnerKind};
use sopm_core::Executor;
use support::*;

/// An executor with small stem pools and its own scratch dir (kept alive by the value).
struct Gvisor {
    exec: GvisorExecutor,
    _scratch: tempfile::TempDir,
}

impl std::ops::Deref for Gvisor {
    type Target = GvisorExecutor;
    fn deref(&self) -> &GvisorExecutor {
        &self.exec
    }
}

impl behaviour::Subject for Gvisor {
    fn executor(&self) -> &dyn Executor {
        &self.exec
    }
    fn counters(&self) -> PoolCounters {
        self.exec.counters()
    }
    fn start(&self) {
        self.exec.start()
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
    tune: impl FnOnce(GvisorExecutorConfig) -> GvisorExecutorConfig,
) -> Option<Gvisor> {
    let mut why = runsc_works().err();
    if why.is_none() && runners.contains(&RunnerKind::Node) && which("node").is_none() {
        why = Some("node not on PATH".into());
    }
    if let Some(why) = why {
        if std::env::var("SOPM_REQUIRE_INTEGRATION").as_deref() == Ok("1") {
            panic!("{test}: {why} (SOPM_REQUIRE_INTEGRATION=1)");
        }
        eprintln!("skipping {test}: {why}");
        return None;
    }
    // Short paths: runsc keeps sockets under its state dir.
    let scratch = tempfile::Builder::new()
        .prefix("sopm-gv-")
        .tempdir_in("/tmp")
        .expect("scratch dir");
    let config = GvisorExecutorConfig::new()
        .with_stem_cells(1)
        .with_stem_runners(runners.iter().copied())
        .with_scratch_dir(scratch.path());
    let exec = tune(config).build().expect("valid config");
    Some(Gvisor {
        exec,
        _scratch: scratch,
    })
}

const PY: &[RunnerKind] = &[RunnerKind::Python];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_hello_world_uses_a_stem_cell() {
    let Some(g) = ready("python_hello_world_uses_a_stem_cell", PY) else {
        return;
    };
    behaviour::python_hello_world_uses_a_stem_cell(&g).await;
    finish(g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_hello_world_with_async_handler_and_logs() {
    let Some(g) = ready(
        "node_hello_world_with_async_handler_and_logs",
        &[RunnerKind::Node],
    ) else {
        return;
    };
    behaviour::node_hello_world_with_async_handler_and_logs(&g).await;
    finish(g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_hello_world_and_failure() {
    let Some(g) = ready("shell_hello_world_and_failure", PY) else {
        return;
    };
    behaviour::shell_hello_world_and_failure(&g).await;
    finish(g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_unicode_payloads_round_trip() {
    let Some(g) = ready("large_and_unicode_payloads_round_trip", PY) else {
        return;
    };
    behaviour::large_and_unicode_payloads_round_trip(&g).await;
    finish(g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_errors_carry_tracebacks_and_keep_the_instance() {
    let Some(g) = ready("function_errors_carry_tracebacks_and_keep_the_instance", PY) else {
        return;
    };
    behaviour::function_errors_carry_tracebacks_and_keep_the_instance(&g).await;
    finish(g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_captured_and_kept_out_of_the_output() {
    let Some(g) = ready("logs_are_captured_and_kept_out_of_the_output", PY) else {
        return;
    };
    behaviour::logs_are_captured_and_kept_out_of_the_output(&g).await;
    finish(g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_and_sleeping_past_the_deadline_time_out() {
    // Limits are fixed at boot in gVisor: stem cells with the test's limits, so the 1 s
    // deadline is spent in the function, not in booting a dedicated sandbox.
    let Some(g) = ready_with(
        "spinning_and_sleeping_past_the_deadline_time_out",
        PY,
        |c| c.with_stem_cells(2).with_stem_limits(tight()),
    ) else {
        return;
    };
    behaviour::spinning_and_sleeping_past_the_deadline_time_out(&g).await;
    finish(g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_is_out_of_memory() {
    let Some(g) = ready("unbounded_allocation_is_out_of_memory", PY) else {
        return;
    };
    behaviour::unbounded_allocation_is_out_of_memory(&g).await;
    finish(g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_too_large_is_reported_and_the_instance_kept() {
    let Some(g) = ready("output_too_large_is_reported_and_the_instance_kept", PY) else {
        return;
    };
    behaviour::output_too_large_is_reported_and_the_instance_kept(&g).await;
    finish(g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_network_to_the_host() {
    let Some(g) = ready("no_network_to_the_host", PY) else {
        return;
    };
    behaviour::no_network_to_the_host(&g).await;
    finish(g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_of_the_host_are_not_visible() {
    let Some(g) = ready("secrets_of_the_host_are_not_visible", PY) else {
        return;
    };
    behaviour::secrets_of_the_host_are_not_visible(&g).await;
    finish(g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_grow_the_pool_up_to_the_cap() {
    let Some(g) = ready_with("concurrent_calls_grow_the_pool_up_to_the_cap", PY, |c| {
        c.with_max_instances_per_function(3)
    }) else {
        return;
    };
    behaviour::concurrent_calls_grow_the_pool_up_to_the_cap(&g).await;
    finish(g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_functions_never_share_an_instance() {
    let Some(g) = ready("two_functions_never_share_an_instance", PY) else {
        return;
    };
    behaviour::two_functions_never_share_an_instance(&g).await;
    finish(g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_is_replaced() {
    let Some(g) = ready("a_crashed_instance_is_replaced", PY) else {
        return;
    };
    behaviour::a_crashed_instance_is_replaced(&g).await;
    finish(g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_are_reaped() {
    let Some(g) = ready_with("idle_instances_are_reaped", PY, |c| {
        c.with_idle_ttl(Duration::from_millis(200))
    }) else {
        return;
    };
    behaviour::idle_instances_are_reaped(&g).await;
    finish(g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_hello_world() {
    let Some(g) = ready("binary_hello_world", PY) else {
        return;
    };
    let Some(body) = behaviour::static_hello() else {
        eprintln!("skipping binary_hello_world: cc -static cannot build here");
        return;
    };
    behaviour::binary_hello_world(&g, &body).await;
    finish(g).await;
}

/// Shuts the executor down and checks that nothing of it is left: no sandbox in its
/// runsc state dir, no bundle dir, no `runsc` process working on its state dir.
async fn finish(g: Gvisor) {
    g.exec.shutdown().await;
    assert_nothing_left(&g).await;
}

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
    finish(g).await;
}
