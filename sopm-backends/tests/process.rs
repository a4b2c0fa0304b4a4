//! The process executor, for real under bubblewrap: the executor conformance suite of
//! `sopm_core` (every runtime, payloads, errors, limits, logs, hostile code, concurrency, isolation
//! between functions, replacement, reaping, stem cells), plus what is particular to it:
//! retiring, mounted artifacts, the environment, the per-function cap, cancellation and
//! opt-in network.
#![cfg(feature = "process")]

#[path = "process_support.rs"]
mod support;

use std::time::Duration;

use serde_json::json;
use sopm_backends::process::ProcessExecutor;
use sopm_backends::sandbox::RunnerKind;
use sopm_core::conformance::executor::{Needs, SandboxCounters, Subject};
use sopm_core::{Executor, Limits, Runtime};
use support::*;

const PY_TOOLS: &[&str] = &["bwrap", "prlimit", "python3"];

/// The process executor as a subject of the conformance suite.
struct Process(ProcessExecutor);

impl Subject for Process {
    fn executor(&self) -> &dyn Executor {
        &self.0
    }
    fn start(&self) {
        self.0.start()
    }
    fn counters(&self) -> SandboxCounters {
        sandbox_counters(self.0.counters())
    }
    fn allowed_host_paths(&self) -> Vec<std::path::PathBuf> {
        interpreter_prefixes()
    }
    fn host_dirs(&self) -> Vec<std::path::PathBuf> {
        vec![test_scratch_dir()]
    }
}

/// A process executor shaped for one conformance behaviour, or `None` (skipped) when the
/// host lacks bubblewrap or a runtime the behaviour needs.
async fn process(needs: Needs) -> Option<Process> {
    let mut tools = PY_TOOLS.to_vec();
    if needs.runtimes.contains(&Runtime::Node) {
        tools.push("node");
    }
    if needs.runtimes.contains(&Runtime::Binary) {
        tools.push("cc");
    }
    if !integration_ready(needs.test, &tools) {
        return None;
    }
    let mut config = config(&runners(needs.runtimes));
    shape_pool(config.pool_mut(), &needs);
    Some(Process(
        config.build::<ProcessLauncher>().expect("valid config"),
    ))
}

sopm_core::executor_conformance!(process);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_stops_a_functions_instances() {
    if !integration_ready("retire", PY_TOOLS) {
        return;
    }
    let exec = executor(&[RunnerKind::Python]);
    let f = python(HELLO_PY);
    exec.prepare(&f.version).await.unwrap();
    let has = |exec: &sopm_backends::process::ProcessExecutor| {
        exec.pool_stats()
            .into_iter()
            .any(|s| s.pool.contains(&f.version.function_id))
    };
    assert!(has(&exec));
    exec.retire(&f.version.function_id).await.unwrap();
    assert!(!has(&exec));
    call(&exec, &f, json!({})).await.unwrap();
    exec.shutdown().await;
    let e = call(&exec, &f, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_artifacts_are_mounted_and_deps_are_importable() {
    if !integration_ready("big_artifacts_are_mounted", PY_TOOLS) {
        return;
    }
    let mut config = config(&[RunnerKind::Python]);
    config.pool_mut().max_inline_bytes = 4096;
    let exec = config.build::<ProcessLauncher>().unwrap();
    let blob = vec![b'z'; 64 * 1024];
    let f = function(
        Runtime::Python,
        "main.handle",
        &[
            (
                "main.py",
                b"import helperlib\ndef handle(event, context):\n    return {'dep': helperlib.VALUE, 'blob': len(open('data.bin','rb').read())}\n",
            ),
            ("deps/helperlib/__init__.py", b"VALUE = 'from deps'\n"),
            ("data.bin", &blob),
        ],
    );
    let out = call(&exec, &f, json!({})).await.unwrap();
    assert_eq!(out.value, json!({"dep": "from deps", "blob": 65536}));
    assert_eq!(exec.counters().mounted_starts, 1);
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_is_minimal_plus_the_functions_own() {
    if !integration_ready("environment", PY_TOOLS) {
        return;
    }
    let exec = executor(&[RunnerKind::Python]);
    let mut f = python("import os\ndef handle(event, context):\n    return dict(os.environ)\n");
    std::sync::Arc::get_mut(&mut f.version)
        .unwrap()
        .env
        .insert("GREETING".into(), "hola".into());
    let env = call(&exec, &f, json!({})).await.unwrap().value;
    assert_eq!(env["GREETING"], json!("hola"));
    assert_eq!(env["HOME"], json!("/tmp"));
    for leaked in [
        "CARGO_TARGET_DIR",
        "RUST_BACKTRACE",
        "SOPM_REQUIRE_INTEGRATION",
    ] {
        assert!(
            env.get(leaked).is_none(),
            "{leaked} leaked into the sandbox"
        );
    }
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_per_function_cap_a_call_waits_then_is_overloaded() {
    if !integration_ready("per_function_cap", PY_TOOLS) {
        return;
    }
    let mut config = config(&[RunnerKind::Python]);
    config.pool_mut().max_per_function = 1;
    let exec = config.build::<ProcessLauncher>().unwrap();
    let f = python(
        "import time\ndef handle(event, context):\n    time.sleep(event['s'])\n    return event['s']\n",
    );
    call(&exec, &f, json!({"s": 0})).await.unwrap();
    let slow = call_within(&exec, &f, json!({"s": 1.0}), Duration::from_secs(10));
    let quick = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        call_within(&exec, &f, json!({"s": 0}), Duration::from_millis(300)).await
    };
    let (slow, quick) = tokio::join!(slow, quick);
    assert_eq!(slow.unwrap().value, json!(1.0));
    assert_eq!(quick.unwrap_err().code(), "overloaded");
    // A waiting call gets the instance as soon as it is free.
    let slow = call_within(&exec, &f, json!({"s": 0.3}), Duration::from_secs(10));
    let waiting = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        call_within(&exec, &f, json!({"s": 0}), Duration::from_secs(5)).await
    };
    let (slow, waiting) = tokio::join!(slow, waiting);
    slow.unwrap();
    assert_eq!(waiting.unwrap().value, json!(0));
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_does_not_leak_its_instance() {
    if !integration_ready("cancelled_call", PY_TOOLS) {
        return;
    }
    let exec = executor(&[RunnerKind::Python]);
    let f = python(
        "import time\ndef handle(event, context):\n    time.sleep(event['s'])\n    return 'done'\n",
    );
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        call_within(&exec, &f, json!({"s": 5}), Duration::from_secs(10)),
    )
    .await;
    assert!(cancelled.is_err(), "the call should have been cut short");
    let s = exec
        .pool_stats()
        .into_iter()
        .find(|s| s.pool.contains(&f.version.function_id))
        .unwrap();
    assert_eq!((s.busy, s.idle), (0, 0), "{s:?}");
    assert_eq!(
        call(&exec, &f, json!({"s": 0})).await.unwrap().value,
        json!("done")
    );
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_only_when_asked_and_allowed() {
    if !integration_ready("network_when_allowed", PY_TOOLS) {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let source = "import socket\ndef handle(event, context):\n    try:\n        socket.create_connection(('127.0.0.1', event['port']), timeout=2).close()\n        return 'connected'\n    except OSError as e:\n        return 'refused'\n";
    let exec = config(&[RunnerKind::Python])
        .with_allow_network(true)
        .build::<ProcessLauncher>()
        .unwrap();
    let asks = python_limited(
        source,
        Limits {
            network: true,
            ..Limits::default()
        },
    );
    let does_not_ask = python(source);
    assert_eq!(
        call(&exec, &asks, json!({"port": port}))
            .await
            .unwrap()
            .value,
        json!("connected")
    );
    assert_eq!(
        call(&exec, &does_not_ask, json!({"port": port}))
            .await
            .unwrap()
            .value,
        json!("refused")
    );
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sandbox_gets_its_cpu_quota_where_the_cpu_controller_is_ours() {
    if !integration_ready("cpu_quota", PY_TOOLS) {
        return;
    }
    let cpu = std::path::Path::new("/sys/fs/cgroup/cpu");
    if !cpu.join("cpu.cfs_quota_us").exists() {
        sopm_core::conformance::executor::skip("cpu_quota", "no cgroup v1 cpu hierarchy here");
        return;
    }
    let parent = format!("sopm-cpu-test-{}", uuid::Uuid::new_v4().simple());
    let exec = config(&[RunnerKind::Python])
        .with_cgroup_parent(&parent)
        .with_cpu_millis(500)
        .build::<ProcessLauncher>()
        .unwrap();
    let f = python(HELLO_PY);
    call(&exec, &f, json!({})).await.unwrap();
    let quotas: Vec<String> = std::fs::read_dir(cpu.join(&parent))
        .expect("the sandboxes' cpu cgroups")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| std::fs::read_to_string(e.path().join("cpu.cfs_quota_us")).unwrap())
        .collect();
    exec.shutdown().await;
    let _ = std::fs::remove_dir(cpu.join(&parent));
    assert!(!quotas.is_empty(), "no sandbox has a cpu cgroup");
    for q in quotas {
        assert_eq!(q.trim(), "50000", "half a core is 50 ms per 100 ms period");
    }
}

/// Without cgroups, node's buffers (outside the heap that `--max-old-space-size` bounds)
/// are bounded by `RLIMIT_DATA`: allocating up to 1 GiB under a 64 MiB limit fails
/// instead of taking the host's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cgroups_node_memory_is_bounded_by_the_data_rlimit() {
    if !integration_ready("node_data_rlimit", &["bwrap", "prlimit", "python3", "node"]) {
        return;
    }
    let exec = config(&[RunnerKind::Node])
        .with_cgroups(false)
        .build::<ProcessLauncher>()
        .unwrap();
    let f = function_with(
        Runtime::Node,
        "index.handle",
        &[(
            "index.js",
            b"exports.handle = () => {\n  const hoard = [];\n  for (let i = 0; i < 1024; i++) hoard.push(Buffer.alloc(1 << 20, 1));\n  return 'allocated ' + hoard.length + ' MiB';\n};\n",
        )],
        Limits {
            memory_mb: 64,
            timeout_ms: 20_000,
            ..Limits::default()
        },
    );
    let r = call(&exec, &f, json!({})).await;
    eprintln!("node allocating 1 GiB under 64 MiB without cgroups: {r:?}");
    exec.shutdown().await;
    let e = r.expect_err("node allocated 1 GiB under a 64 MiB limit");
    assert!(
        ["out_of_memory", "function_error", "sandbox_crashed"].contains(&e.code()),
        "{e:?}"
    );
}
