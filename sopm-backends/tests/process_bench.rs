//! Start-up and call latency of the process executor. Prints figures; asserts nothing
//! about time. Run with:
//! `cargo test --release -p sopm-backends --features process --test process_bench -- --ignored --nocapture`
#![cfg(feature = "process")]

#[path = "process_support.rs"]
mod support;

use std::time::Instant;

use serde_json::json;
use sopm_backends::sandbox::RunnerKind;
use sopm_core::Executor;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
async fn process_executor_latency() {
    if !integration_ready("process_executor_latency", &["bwrap", "prlimit", "python3"]) {
        return;
    }
    // First call of a new function with a warm stem cell.
    let mut warm_config = config(&[RunnerKind::Python]);
    warm_config.pool_mut().stem_cells = 2;
    let exec = warm_config.build::<ProcessLauncher>().unwrap();
    exec.start();
    let mut first = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..50 {
        wait_for_stem_cells(&exec, "python", 1).await;
        let f = python(HELLO_PY);
        let t = Instant::now();
        call(&exec, &f, json!({"name": "x"})).await.unwrap();
        first.push(t.elapsed());
        keep.push(f);
    }
    let c = exec.counters();
    summary(
        &format!(
            "first call, stem cell warm (stem cells used {}, cold {})",
            c.stem_cells_used, c.cold_starts
        ),
        first,
    );

    // Warm calls of one function.
    let f = python(HELLO_PY);
    call(&exec, &f, json!({})).await.unwrap();
    let mut warm = Vec::new();
    for i in 0..2000 {
        let t = Instant::now();
        call(&exec, &f, json!({"name": i})).await.unwrap();
        warm.push(t.elapsed());
    }
    summary("warm call, same function", warm);
    exec.shutdown().await;

    // Cold start: a new bwrap + python3 for every call.
    let mut cold_config = config(&[RunnerKind::Python]);
    cold_config.pool_mut().stem_cells = 0;
    let cold_exec = cold_config.build::<ProcessLauncher>().unwrap();
    let mut cold = Vec::new();
    for _ in 0..30 {
        let f = python(HELLO_PY);
        let t = Instant::now();
        call(&cold_exec, &f, json!({"name": "x"})).await.unwrap();
        cold.push(t.elapsed());
        cold_exec.retire(&f.version.function_id).await.unwrap();
    }
    summary("cold start, new bwrap + python3 per call", cold);
    cold_exec.shutdown().await;
}
