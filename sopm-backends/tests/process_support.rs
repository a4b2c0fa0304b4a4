//! Shared helpers of the process-sandbox tests (included with `#[path]`; as a test target
//! of its own it holds no tests).
#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sopm_backends::process::{ProcessExecutor, ProcessExecutorConfig};
use sopm_backends::sandbox::RunnerKind;
use sopm_core::{
    Artifact, BuildStatus, Executor, FunctionVersion, Invocation, JobId, Limits, Output, Runtime,
    Target, TenantId,
};

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
    let why = missing.join(", ");
    if std::env::var("SOPM_REQUIRE_INTEGRATION").as_deref() == Ok("1") {
        panic!("{test}: {why} (SOPM_REQUIRE_INTEGRATION=1)");
    }
    eprintln!("skipping {test}: {why}");
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
    config(runners).build().expect("valid config")
}

pub fn config(runners: &[RunnerKind]) -> ProcessExecutorConfig {
    ProcessExecutorConfig::new()
        .with_stem_cells(1)
        .with_stem_runners(runners.iter().copied())
        .with_scratch_dir(std::env::temp_dir().join("sopm-sandbox-tests"))
}

/// A function made of `files`, in a fresh artifact directory (kept alive by the value).
pub struct TestFunction {
    pub version: Arc<FunctionVersion>,
    pub dir: tempfile::TempDir,
}

pub fn function(runtime: Runtime, handler: &str, files: &[(&str, &[u8])]) -> TestFunction {
    function_with(runtime, handler, files, Limits::default())
}

pub fn function_with(
    runtime: Runtime,
    handler: &str,
    files: &[(&str, &[u8])],
    limits: Limits,
) -> TestFunction {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, body) in files {
        write_file(dir.path(), name, body);
    }
    let id = format!("fn_{}", uuid::Uuid::new_v4().simple());
    let version = FunctionVersion {
        function_id: id,
        tenant: TenantId::default(),
        name: format!("test-{}", handler.replace(['.', '/'], "-")),
        version: 1,
        runtime,
        handler: handler.into(),
        limits,
        env: BTreeMap::new(),
        source_digest: String::new(),
        executor: None,
        status: BuildStatus::Ready,
        build_log: String::new(),
        artifact: Some(Artifact::Directory {
            path: dir.path().to_string_lossy().into_owned(),
        }),
        created_ms: 0,
    };
    TestFunction {
        version: Arc::new(version),
        dir,
    }
}

pub fn write_file(root: &Path, name: &str, body: &[u8]) {
    let p = root.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, body).unwrap();
}

pub fn python(source: &str) -> TestFunction {
    function(
        Runtime::Python,
        "main.handle",
        &[("main.py", source.as_bytes())],
    )
}

pub fn python_limited(source: &str, limits: Limits) -> TestFunction {
    function_with(
        Runtime::Python,
        "main.handle",
        &[("main.py", source.as_bytes())],
        limits,
    )
}

/// Short limits for hostile code.
pub fn tight() -> Limits {
    Limits {
        timeout_ms: 2_000,
        memory_mb: 128,
        max_processes: 32,
        ..Limits::default()
    }
}

pub async fn call(
    exec: &dyn Executor,
    f: &TestFunction,
    input: Value,
) -> sopm_core::Result<Output> {
    call_within(
        exec,
        f,
        input,
        Duration::from_millis(f.version.limits.timeout_ms),
    )
    .await
}

pub async fn call_within(
    exec: &dyn Executor,
    f: &TestFunction,
    input: Value,
    within: Duration,
) -> sopm_core::Result<Output> {
    exec.invoke(Invocation {
        job_id: JobId::random(),
        tenant: TenantId::default(),
        target: Target::User(f.version.clone()),
        input: Arc::new(input),
        deadline: Instant::now() + within,
    })
    .await
}

/// Waits until the pool has `n` stem cells of `runner` ready.
pub async fn wait_for_stem_cells(exec: &dyn Executor, runner: &str, n: u64) {
    let pool = format!("{}/stem/{runner}", exec.name());
    for _ in 0..400 {
        let ready = exec
            .pool_stats()
            .iter()
            .find(|s| s.pool == pool)
            .map(|s| s.stem_cells)
            .unwrap_or(0);
        if ready >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no {runner} stem cell became ready");
}

pub const HELLO_PY: &str =
    "def handle(event, context):\n    return {'hello': event.get('name', 'world')}\n";

/// Checks that the executor still runs a normal function.
pub async fn still_serves(exec: &dyn Executor) {
    let f = python(HELLO_PY);
    let out = call(exec, &f, serde_json::json!({"name": "after"}))
        .await
        .expect("a normal function still runs");
    assert_eq!(out.value, serde_json::json!({"hello": "after"}));
}
