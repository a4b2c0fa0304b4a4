//! Latency figures of the docker executor (no assertions on time), under runc and under
//! runsc: first call of a freshly specialised python function on a warm container, warm
//! calls, and a plain `docker run` cold start of the same runner image for comparison.
//! Run with: cargo test -p sopm-backends --features docker --release --test docker_bench -- --ignored --nocapture
#![cfg(feature = "docker")]

#[path = "process_support.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use sopm_backends::docker::DockerLauncher;
use sopm_backends::host::PoolSettings;
use sopm_backends::sandbox::RunnerKind;
use sopm_backends::{SandboxKind, SandboxSettings};
use sopm_core::Executor;
use support::*;

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name}: n={} p50={:.2?} p99={:.2?} max={:.2?}",
        samples.len(),
        at(0.5),
        at(0.99),
        samples[samples.len() - 1]
    );
}

async fn measure(runtime: &str) {
    let exec = SandboxSettings::new(SandboxKind::Docker)
        .with_name(format!("bench-{runtime}"))
        .with_docker_runtime(runtime)
        .with_pool(PoolSettings::new([RunnerKind::Python]).with_stem_cells(1))
        .build::<DockerLauncher>()
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
    summary(
        &format!("docker/{runtime} first call on a warm container"),
        first,
    );
    let f = python(HELLO_PY);
    call(&exec, &f, json!({})).await.unwrap();
    let mut warm = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        call(&exec, &f, json!({"name": i})).await.unwrap();
        warm.push(t.elapsed());
    }
    summary(&format!("docker/{runtime} warm call"), warm);
    let image = exec.runner_image(RunnerKind::Python).await.unwrap();
    exec.shutdown().await;
    let mut cold = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let out = std::process::Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network=none",
                "--runtime",
                runtime,
                &image,
            ])
            .args(["python3", "-c", "print('hi')"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        cold.push(t.elapsed());
    }
    summary(
        &format!("docker run --runtime {runtime} python3 cold start"),
        cold,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
async fn docker_executor_latency() {
    let up = std::process::Command::new("docker")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !up {
        eprintln!("skipping: no Docker daemon answers");
        return;
    }
    measure("runc").await;
    measure("runsc").await;
}
