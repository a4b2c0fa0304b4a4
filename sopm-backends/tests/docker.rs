//! The docker executor against a real Docker daemon: the executor conformance suite of
//! `sopm_core` under runc and under runsc (gVisor as a Docker runtime), each behaviour
//! ending with a check that none of the executor's containers is left, plus the docker
//! builder. Skipped with a printed reason without a daemon, its base images
//! (`scripts/docker-images.sh`) or the static runner (`scripts/build-runner.sh`, found
//! through `SOPM_STATIC_RUNNER`); failed instead under `SOPM_REQUIRE_INTEGRATION=1`.
#![cfg(feature = "docker")]

#[path = "process_support.rs"]
mod support;

use std::time::Duration;

use async_trait::async_trait;
use sopm_backends::docker::{docker_runner, DockerExecutor, DockerLauncher};
use sopm_backends::host::PoolSettings;
use sopm_backends::sandbox::RunnerKind;
use sopm_backends::{SandboxKind, SandboxSettings};
use sopm_core::conformance::executor::{skip, Needs, Privileged, SandboxCounters, Subject};
use sopm_core::Executor;
use support::*;

/// A docker executor of its own name (so its containers can be counted), and its OCI
/// runtime (`runc`, `runsc`).
struct Docker {
    exec: DockerExecutor,
    runtime: &'static str,
}

#[async_trait]
impl Subject for Docker {
    fn executor(&self) -> &dyn Executor {
        &self.exec
    }
    fn start(&self) {
        self.exec.start()
    }
    fn counters(&self) -> SandboxCounters {
        sandbox_counters(self.exec.counters())
    }
    /// A container's root is its image: the image's own `/etc`, `/var` and interpreter
    /// (which may match a host of the same distribution file for file), nothing of the
    /// host's.
    fn allowed_host_paths(&self) -> Vec<std::path::PathBuf> {
        ["/etc", "/var", "/usr/local", "/opt"]
            .map(std::path::PathBuf::from)
            .to_vec()
    }
    /// Under gVisor as a Docker runtime, the daemon's `runsc` does not load the
    /// container's seccomp profile (that takes `--oci-seccomp` in the daemon's runtime
    /// flags): a user namespace can be made, inside gVisor's own kernel.
    fn privileged_allowed(&self) -> &[Privileged] {
        match self.runtime {
            "runsc" => &[Privileged::NestedUserNamespace],
            _ => &[],
        }
    }
    /// Shuts the executor down and checks that none of its containers is left.
    async fn finish(&self) {
        self.exec.shutdown().await;
        assert_no_container_left(&self.exec).await;
    }
}

async fn assert_no_container_left(exec: &DockerExecutor) {
    let mut left = Vec::new();
    // A container dropped by a cancelled call is removed by a background task.
    for _ in 0..50 {
        left = exec.containers().await.expect("list containers");
        if left.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("containers left after shutdown: {left:?}");
}

/// A docker executor with `runtime` (`runc`, `runsc`) and stem cells for `runners`, or
/// `None` (skipped) when the daemon, a base image or the static runner is missing.
async fn ready(
    test: &str,
    runtime: &'static str,
    runners: &[RunnerKind],
    tune: impl FnOnce(PoolSettings) -> PoolSettings,
) -> Option<Docker> {
    let mut config = SandboxSettings::new(SandboxKind::Docker)
        .with_name(format!("test-{runtime}-{}", uuid::Uuid::new_v4().simple()))
        .with_docker_runtime(runtime)
        .with_pool(tune(
            PoolSettings::new(runners.iter().copied()).with_stem_cells(1),
        ));
    if let Ok(path) = std::env::var("SOPM_STATIC_RUNNER") {
        config = config.with_static_runner(path);
    }
    let exec = config.build::<DockerLauncher>().expect("valid config");
    for runner in runners {
        if let Err(e) = exec.runner_image(*runner).await {
            skip(test, &e.to_string());
            return None;
        }
    }
    Some(Docker { exec, runtime })
}

fn runners_of(needs: &Needs) -> Vec<RunnerKind> {
    let mut out: Vec<RunnerKind> = needs
        .runtimes
        .iter()
        .filter_map(|r| docker_runner(*r))
        .collect();
    out.sort();
    out.dedup();
    out
}

async fn shaped(runtime: &'static str, needs: Needs) -> Option<Docker> {
    ready(needs.test, runtime, &runners_of(&needs), |mut p| {
        shape_pool(&mut p, &needs);
        p
    })
    .await
}

/// The suite with containers under runc (the daemon's default OCI runtime).
mod runc {
    use super::*;

    async fn docker(needs: Needs) -> Option<Docker> {
        shaped("runc", needs).await
    }

    sopm_core::executor_conformance!(docker);
}

/// The suite with containers under gVisor (`runsc` registered as a Docker runtime).
mod runsc {
    use super::*;

    async fn docker(needs: Needs) -> Option<Docker> {
        shaped("runsc", needs).await
    }

    sopm_core::executor_conformance!(docker);
}

/// Under runc the kernel's OOM killer may pick a child of the runner (a shell memory hog)
/// while the runner lives on: the container's memory cgroup counts the kill, and the call
/// is `out_of_memory`, not a plain failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_child_under_runc_is_out_of_memory() {
    use sopm_core::conformance::executor::{call, function_with, still_serves, tight};
    let test = "a_memory_hog_child_under_runc_is_out_of_memory";
    let Some(d) = ready(
        test,
        "runc",
        &[RunnerKind::Static, RunnerKind::Python],
        |p| p,
    )
    .await
    else {
        return;
    };
    let limits = sopm_core::Limits {
        memory_mb: 64,
        timeout_ms: 10_000,
        ..tight()
    };
    let hog = function_with(
        sopm_core::Runtime::Shell,
        "run.sh",
        &[("run.sh", b"x=a; while :; do x=$x$x; done\n")],
        limits,
    );
    let e = call(&d.exec, &hog, serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "out_of_memory", "{e:?}");
    still_serves(&d.exec).await;
    d.finish().await;
}

/// Runner images are named by what went in: a changed runner makes a new image, the
/// old one is removed, and the new one runs functions; an executor whose runner image
/// was removed builds it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_runner_makes_a_new_runner_image_and_the_old_one_goes() {
    use sopm_core::conformance::executor::{call, function};
    let test = "a_changed_runner_makes_a_new_runner_image_and_the_old_one_goes";
    let Some(d) = ready(test, "runc", &[RunnerKind::Static], |p| {
        p.with_stem_cells(0)
    })
    .await
    else {
        return;
    };
    let original = std::env::var("SOPM_STATIC_RUNNER")
        .map(std::path::PathBuf::from)
        .expect("the static runner (checked by ready)");
    // Two runners of this test's own (bytes after the end of an ELF file change its
    // digest, not what it does), so no other test's containers hold their images.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("sopm-runner");
    let padded = |pad: &str| {
        let mut bytes = std::fs::read(&original).unwrap();
        bytes.extend_from_slice(
            format!("\nsopm test padding {pad} {}\n", uuid::Uuid::new_v4()).as_bytes(),
        );
        std::fs::write(&copy, bytes).unwrap();
    };
    padded("one");
    let image = |path: &std::path::Path| {
        SandboxSettings::new(SandboxKind::Docker)
            .with_name(format!("test-prune-{}", uuid::Uuid::new_v4().simple()))
            .with_static_runner(path)
            .with_pool(PoolSettings::new([RunnerKind::Static]).with_stem_cells(0))
            .build::<DockerLauncher>()
            .unwrap()
    };
    let first = image(&copy);
    let old = first.runner_image(RunnerKind::Static).await.unwrap();
    padded("two");
    let second = image(&copy);
    let new = second.runner_image(RunnerKind::Static).await.unwrap();
    assert_ne!(old, new);
    let inspect = |tag: &str| {
        std::process::Command::new("docker")
            .args(["image", "inspect", tag])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(!inspect(&old), "{old} should be removed");
    assert!(inspect(&new), "{new} should exist");
    let f = function(
        sopm_core::Runtime::Shell,
        "run.sh",
        &[("run.sh", b"echo '{\"ok\": true}'\n")],
    );
    let out = call(&second, &f, serde_json::json!({})).await.unwrap();
    assert_eq!(out.value, serde_json::json!({"ok": true}));
    // The first executor's image is gone: its next container builds the runner image
    // again, from the runner file as it is now (the second one's).
    let g = function(
        sopm_core::Runtime::Shell,
        "run.sh",
        &[("run.sh", b"echo '{\"again\": true}'\n")],
    );
    let out = call(&first, &g, serde_json::json!({})).await.unwrap();
    assert_eq!(out.value, serde_json::json!({"again": true}));
    assert!(!inspect(&old) && inspect(&new), "{old} gone, {new} kept");
    second.shutdown().await;
    first.shutdown().await;
    d.finish().await;
}
