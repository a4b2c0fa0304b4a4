//! Helpers of the process and gVisor sandbox tests (included with `#[path]`; as a test
//! target of its own it holds no tests): host probing, process executors for tests, and
//! the generic helpers of `sopm_core::conformance::executor` (test functions, calls).
#![allow(dead_code, missing_docs, unused_imports)]

use sopm_backends::host::PoolSettings;
pub use sopm_backends::process::{ProcessExecutor, ProcessLauncher};
use sopm_backends::sandbox::{PoolCounters, RunnerKind};
use sopm_backends::{SandboxKind, SandboxSettings};
pub use sopm_core::conformance::executor::{
    call, call_within, function, function_with, python, python_limited, still_serves, tight,
    wait_for_stem_cells, write_file, TestFunction, HELLO_PY,
};
use sopm_core::conformance::executor::{Needs, SandboxCounters};
use sopm_core::Runtime;

/// Whether the host has what these tests need. Missing tools skip the test with a
/// printed reason, unless `SOPM_REQUIRE_INTEGRATION=1`, where they fail it.
pub fn integration_ready(test: &str, tools: &[&str]) -> bool {
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|t| which(t).is_none())
        .map(|t| format!("{t} not on PATH"))
        .collect();
    if missing.is_empty() && tools.contains(&"bwrap") {
        let ok = std::process::Command::new("bwrap")
            .args([
                "--unshare-user",
                "--unshare-pid",
                "--ro-bind",
                "/",
                "/",
                "true",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            missing.push("bwrap cannot create namespaces here".into());
        }
    }
    if missing.is_empty() {
        return true;
    }
    sopm_core::conformance::executor::skip(test, &missing.join(", "));
    false
}

pub fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// An executor with small stem pools for tests.
pub fn executor(runners: &[RunnerKind]) -> ProcessExecutor {
    config(runners)
        .build::<ProcessLauncher>()
        .expect("valid config")
}

/// Process sandbox settings with one stem cell for each of `runners`.
pub fn config(runners: &[RunnerKind]) -> SandboxSettings {
    SandboxSettings::new(SandboxKind::Process)
        .with_pool(PoolSettings::new(runners.iter().copied()).with_stem_cells(1))
        .with_scratch_dir(test_scratch_dir())
}

/// Shapes a sandbox executor's pool for one conformance behaviour: its stem cells, stem
/// limits, per-function cap and idle TTL.
pub fn shape_pool(pool: &mut PoolSettings, needs: &Needs) {
    pool.stem_cells = needs.stem_cells;
    if let Some(limits) = needs.stem_limits.clone() {
        pool.stem_limits = limits;
    }
    if let Some(n) = needs.max_instances_per_function {
        pool.max_per_function = n;
    }
    if let Some(n) = needs.max_instances_per_tenant {
        pool.max_per_tenant = n;
    }
    if let Some(ttl) = needs.idle_ttl {
        pool.idle_ttl = ttl;
    }
}

/// The runners that serve functions of `runtimes`, each once.
pub fn runners(runtimes: &[Runtime]) -> Vec<RunnerKind> {
    let mut out: Vec<RunnerKind> = runtimes
        .iter()
        .filter_map(|r| RunnerKind::for_runtime(*r))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The figures of the conformance suite out of a sandbox pool's counters.
pub fn sandbox_counters(c: PoolCounters) -> SandboxCounters {
    SandboxCounters {
        stem_cells_used: c.stem_cells_used,
        cold_starts: c.cold_starts,
        replaced: c.replaced,
    }
}

/// Prints the percentiles of a benchmark's latency samples and the sequential call rate
/// they give.
pub fn summary(name: &str, mut samples: Vec<std::time::Duration>) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    let total: std::time::Duration = samples.iter().sum();
    println!(
        "{name}: n={} p50={:.2?} p99={:.2?} max={:.2?} ({:.0} calls/s sequential)",
        samples.len(),
        pct(0.50),
        pct(0.99),
        samples[samples.len() - 1],
        samples.len() as f64 / total.as_secs_f64()
    );
}

/// The host prefixes of the `python3` and `node` on `PATH` that lie outside `/usr` (a
/// pyenv install, say): a sandbox binds them, so their files are on its allow-list.
pub fn interpreter_prefixes() -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let probe = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys; print(sys.base_prefix); print(sys.base_exec_prefix)",
        ])
        .output();
    if let Ok(o) = probe {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let p = std::path::PathBuf::from(line.trim());
            if !line.trim().is_empty() && !p.starts_with("/usr") && !out.contains(&p) {
                out.push(p);
            }
        }
    }
    if let Some(node) = which("node").and_then(|n| std::fs::canonicalize(n).ok()) {
        if let Some(prefix) = node.parent().and_then(|bin| bin.parent()) {
            if !prefix.starts_with("/usr") && !out.iter().any(|p| prefix.starts_with(p)) {
                out.push(prefix.to_path_buf());
            }
        }
    }
    out
}

/// The scratch directory of the test executors of [`config`].
pub fn test_scratch_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("sopm-sandbox-tests")
}
