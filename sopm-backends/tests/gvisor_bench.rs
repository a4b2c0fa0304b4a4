//! Latency figures of the gVisor executor (no assertions on time): first call of a
//! freshly specialised python function on a warm stem cell, warm calls, and a plain
//! `runsc do` cold start for comparison.
//! Run with: cargo test -p sopm-backends --features gvisor --release --test gvisor_bench -- --ignored --nocapture
#![cfg(feature = "gvisor")]

#[path = "process_support.rs"]
mod support;

use std::time::Instant;

use serde_json::json;
use sopm_backends::gvisor::GvisorLauncher;
use sopm_backends::host::PoolSettings;
use sopm_backends::sandbox::RunnerKind;
use sopm_backends::{SandboxKind, SandboxSettings};
use sopm_core::Executor;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
async fn gvisor_executor_latency() {
    if which("runsc").is_none() {
        eprintln!("skipping: runsc not on PATH");
        return;
    }
    let scratch = tempfile::Builder::new()
        .prefix("sopm-gvb-")
        .tempdir_in("/tmp")
        .unwrap();
    let exec = SandboxSettings::new(SandboxKind::Gvisor)
        .with_pool(PoolSettings::new([RunnerKind::Python]).with_stem_cells(1))
        .with_scratch_dir(scratch.path())
        .build::<GvisorLauncher>()
        .unwrap();
    exec.start();
    let mut first = Vec::new();
    for _ in 0..10 {
        wait_for_stem_cells(&exec, "python", 1).await;
        let f = python(HELLO_PY);
        let t = Instant::now();
        call(&exec, &f, json!({"name": "x"})).await.unwrap();
        first.push(t.elapsed());
    }
    summary("gvisor first call on a stem cell", first);
    let f = python(HELLO_PY);
    call(&exec, &f, json!({})).await.unwrap();
    let mut warm = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        call(&exec, &f, json!({"name": i})).await.unwrap();
        warm.push(t.elapsed());
    }
    summary("gvisor warm call", warm);
    exec.shutdown().await;
    let mut cold = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let out = std::process::Command::new("runsc")
            .args(["--network=none", "do", "python3", "-c", "print('hi')"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        cold.push(t.elapsed());
    }
    summary("runsc do python3 cold start", cold);
}
