//! Hostile code in process sandboxes, for what is particular to bubblewrap: the few
//! files of `/etc` it binds, the pids cgroup stopping a fork bomb (and the exact error a
//! fork then gets), memory kills of a runner's child told apart through the memory
//! cgroup, `kill -9 -1` reaching the runner (bwrap's own process is the sandbox's init),
//! and memory bounded by rlimits alone without cgroups. What every backend must
//! show against hostile code (host secrets, writes outside `/tmp`, the host's network,
//! fork bombs, unbounded allocation, deadlines, 100 MB of prints, closed frame pipes,
//! `kill -9 -1`) is in the executor conformance suite, which `tests/process.rs` runs.
#![cfg(feature = "process")]

#[path = "process_support.rs"]
mod support;

use std::time::Duration;

use serde_json::json;
use sopm_backends::sandbox::RunnerKind;
use sopm_core::{Executor, Limits, Runtime};
use support::*;

const PY_TOOLS: &[&str] = &["bwrap", "prlimit", "python3"];

fn ready(test: &str) -> Option<sopm_backends::process::ProcessExecutor> {
    integration_ready(test, PY_TOOLS).then(|| executor(&[RunnerKind::Python]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etc_holds_no_account_files() {
    let Some(exec) = ready("etc_holds_no_account_files") else {
        return;
    };
    let f = python_limited(
        "import os\ndef handle(event, context):\n    return sorted(os.listdir('/etc'))\n",
        tight(),
    );
    let etc = call(&exec, &f, json!({})).await.unwrap().value;
    let etc = etc.as_array().unwrap();
    for account in ["shadow", "passwd", "group", "gshadow"] {
        assert!(!etc.contains(&json!(account)), "/etc/{account}: {etc:?}");
    }
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_stops_at_the_pids_limit_and_leaves_no_process() {
    let Some(exec) = ready("a_fork_bomb_stops_at_the_pids_limit") else {
        return;
    };
    // Counting forks until the kernel refuses shows where the limit sits.
    let counter = python_limited(
        concat!(
            "import os, time\n",
            "def handle(event, context):\n",
            "    n = 0\n",
            "    try:\n",
            "        while n < 5000:\n",
            "            if os.fork() == 0:\n",
            "                time.sleep(30)\n",
            "                os._exit(0)\n",
            "            n += 1\n",
            "    except OSError as e:\n",
            "        return {'forked': n, 'stopped_by': type(e).__name__}\n",
            "    return {'forked': n}\n",
        ),
        tight(),
    );
    let out = call(&exec, &counter, json!({})).await.unwrap().value;
    eprintln!("fork counter: {out}");
    if exec.cgroups_enabled() == Some(true) {
        assert!(
            out["forked"].as_u64().unwrap() <= tight().max_processes,
            "{out}"
        );
        assert_eq!(out["stopped_by"], json!("BlockingIOError"), "{out}");
        // The sleeping children make the instance unfit for reuse.
        assert!(exec.counters().replaced >= 1);
    }
    let bomb = python_limited(
        "import os\ndef handle(event, context):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
        tight(),
    );
    let e = call(&exec, &bomb, json!({})).await.unwrap_err();
    assert!(
        ["timeout", "sandbox_crashed", "function_error"].contains(&e.code()),
        "{e:?}"
    );
    // The sandbox is gone with every process it forked.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let left = std::process::Command::new("pgrep")
        .args(["-f", "/run/sopm/runner.py"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0);
    assert!(
        left < 20,
        "{left} runner processes left after the fork bomb"
    );
    still_serves(&exec).await;
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_child_over_memory_is_out_of_memory_under_cgroups() {
    let Some(exec) = ready("a_killed_child_over_memory_is_out_of_memory") else {
        return;
    };
    // The kernel kills the shell, a child of the runner: no MemoryError to catch.
    let g = function_with(
        Runtime::Shell,
        "run.sh",
        &[("run.sh", b"x=a; while :; do x=$x$x; done\n")],
        Limits {
            memory_mb: 64,
            ..tight()
        },
    );
    let e = call(&exec, &g, json!({})).await.unwrap_err();
    eprintln!("shell memory hog: {e:?}");
    if exec.cgroups_enabled() == Some(true) {
        assert_eq!(e.code(), "out_of_memory", "{e:?}");
    } else {
        assert!(
            ["out_of_memory", "function_error"].contains(&e.code()),
            "{e:?}"
        );
    }
    still_serves(&exec).await;
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_one_kills_the_runner_under_bwraps_init() {
    let Some(exec) = ready("kill_minus_one_kills_the_runner") else {
        return;
    };
    // bwrap's own process is the sandbox's init, so `kill -9 -1` reaches the runner.
    let g = function_with(
        Runtime::Shell,
        "run.sh",
        &[("run.sh", b"kill -9 -1\necho '\"unreachable?\"'\n")],
        tight(),
    );
    let r = call(&exec, &g, json!({})).await;
    assert!(
        r.as_ref().is_err_and(|e| e.code() == "sandbox_crashed"),
        "{r:?}"
    );
    still_serves(&exec).await;
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cgroups_memory_is_still_bounded() {
    if !integration_ready("without_cgroups_memory_is_still_bounded", PY_TOOLS) {
        return;
    }
    let exec = config(&[RunnerKind::Python])
        .with_cgroups(false)
        .build::<ProcessLauncher>()
        .unwrap();
    let f = python_limited(
        "def handle(event, context):\n    hoard = []\n    while True:\n        hoard.append(b'x' * (8 << 20))\n",
        Limits {
            memory_mb: 64,
            ..tight()
        },
    );
    let e = call(&exec, &f, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "out_of_memory", "{e:?}");
    assert_eq!(exec.cgroups_enabled(), Some(false));
    still_serves(&exec).await;
    exec.shutdown().await;
}
