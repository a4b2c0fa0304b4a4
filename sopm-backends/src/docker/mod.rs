//! The Docker backend: user functions run in warm Docker containers, under `runc` or,
//! with the `runsc` runtime registered in the daemon, under gVisor.
//!
//! - [`DockerExecutor`]: each instance is one container of a *runner image* (the
//!   runtime's base image plus SOPM's runner, derived once per base image and runner and
//!   cached by content), started with stdin, stdout and stderr attached: the same frame
//!   protocol and [`WarmPool`](crate::sandbox::WarmPool) as the process and gVisor backends. Containers run as
//!   `nobody` with a read-only root, a size-capped tmpfs `/tmp` (and `/fn` for code sent in
//!   the init frame), network `none`, no capabilities, `no-new-privileges`, an init process
//!   reaping orphans, and memory (no swap), pids and CPU limits plus `nofile`/`fsize`/`core`
//!   ulimits. A stem cell takes a function whose memory and pids limits differ through a
//!   container update; a function too big for an init frame boots from its own image.
//! - [`DockerBuilder`]: installs dependencies as the local builder does (sandboxed, with
//!   the package index as the only way out), then layers the artifact over the runner
//!   image through the Docker API (`FROM <runner image>` + `COPY code/ /fn/`), streaming
//!   the build output into the build log. The artifact is the image, which carries the
//!   code: with a registry (`SOPM_DOCKER_REGISTRY`) it is pushed and recorded by the
//!   pushed manifest's digest, and an executor on any node pulls it by digest on first
//!   use (`images`), reading the code out of the image for stem cells.
//!
//! Base images are configurable per runner; `scripts/docker-images.sh` builds local ones
//! from the host's own files (busybox-static for shell and binary, host python3 and node
//! on busybox), since no registry is needed then. Shell and binary functions run under
//! the static runner (`sopm-runner`, `scripts/build-runner.sh`), python and node under
//! their script runners. The client negotiates the API version (1.41 and newer).
//!
//! Every container carries the labels `sopm.executor` (the executor's name),
//! `sopm.owner` (host, pid and start time of the server) and `sopm.instance` (the
//! executor value); containers of a server that is gone are removed at first use, and
//! all of an executor's own containers at shutdown.

use std::sync::Arc;

use sopm_core::{Result, Runtime};

use crate::host::settings::{SandboxBackend, SandboxKind, SandboxSettings};
use crate::sandbox::{RunnerKind, SandboxExecutor};

mod builder;
mod containers;
mod daemon;
mod images;
mod launcher;

pub use crate::host::settings::default_base_image;
pub use builder::DockerBuilder;
pub use launcher::{DockerLauncher, DockerSandbox};

impl SandboxBackend for DockerLauncher {
    const KIND: SandboxKind = SandboxKind::Docker;

    fn from_settings(settings: SandboxSettings) -> Self {
        let daemon = Arc::new(daemon::Daemon::new(&settings));
        DockerLauncher::new(settings, daemon)
    }
}

/// The runner of each runtime in Docker containers: python and node under their script
/// runners, shell and binary under the static runner (base images without python).
pub fn docker_runner(runtime: Runtime) -> Option<RunnerKind> {
    match runtime {
        Runtime::Python => Some(RunnerKind::Python),
        Runtime::Node => Some(RunnerKind::Node),
        Runtime::Shell | Runtime::Binary => Some(RunnerKind::Static),
        Runtime::Builtin => None,
    }
}

/// Runs user functions in warm Docker containers.
pub type DockerExecutor = SandboxExecutor<DockerLauncher>;

impl SandboxExecutor<DockerLauncher> {
    /// A builder making images these containers run: dependencies installed by `local`
    /// (which keeps the artifact directories), the image built through this executor's
    /// daemon over its runner images.
    pub fn builder(&self, local: Arc<crate::LocalBuilder>) -> DockerBuilder {
        DockerBuilder::new(local, self.pool.launcher().daemon())
    }

    /// The ids of the containers this executor's server runs now (running or not).
    pub async fn containers(&self) -> Result<Vec<String>> {
        self.pool.launcher().daemon().own_containers().await
    }

    /// The runner image of `runner`, built if missing (checks that the daemon answers and
    /// the base image exists).
    pub async fn runner_image(&self, runner: RunnerKind) -> Result<String> {
        self.pool.launcher().daemon().runner_image(runner).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::PoolSettings;

    fn settings() -> SandboxSettings {
        SandboxSettings::new(SandboxKind::Docker)
    }

    #[test]
    fn build_checks_the_values() {
        assert!(settings().build::<DockerLauncher>().is_ok());
        let bad = [
            settings().with_name("a b"),
            settings().with_cpu_millis(0),
            settings().with_static_runner("sopm-runner"),
            settings().with_base_image(RunnerKind::Python, " "),
            settings().with_pool(PoolSettings::new([]).with_max_instances(0)),
            settings().with_allow_network(true),
            SandboxSettings::new(SandboxKind::Process),
        ];
        for c in bad {
            let e = c.build::<DockerLauncher>().unwrap_err();
            assert_eq!(e.code(), "invalid_input");
            assert!(e.to_string().contains("docker executor"), "{e}");
        }
    }

    #[test]
    fn from_env_reads_overrides() {
        let vars = |k: &str| match k {
            "SOPM_DOCKER_RUNTIME" => Some("runsc".to_string()),
            "SOPM_DOCKER_IMAGE_NODE" => Some("example/node:20".to_string()),
            "SOPM_STEM_CELLS" => Some("3".to_string()),
            _ => None,
        };
        let c = SandboxSettings::from_vars(SandboxKind::Docker, vars).unwrap();
        assert_eq!(c.docker_runtime.as_deref(), Some("runsc"));
        assert_eq!(c.runtime_memory_overhead_mb, 128);
        assert_eq!(c.base_images[&RunnerKind::Node], "example/node:20");
        assert_eq!(c.base_images[&RunnerKind::Python], "sopm/base-python:local");
        assert_eq!(c.pool.stem_cells, 3);
        assert_eq!(c.pool.stem_runners, RunnerKind::ALL);
        let e = SandboxSettings::from_vars(SandboxKind::Docker, |k| {
            (k == "SOPM_DOCKER_CPUS").then(|| "many".to_string())
        })
        .unwrap_err();
        assert_eq!(e.code(), "invalid_input");
    }

    #[test]
    fn shell_and_binary_use_the_static_runner() {
        assert_eq!(docker_runner(Runtime::Shell), Some(RunnerKind::Static));
        assert_eq!(docker_runner(Runtime::Binary), Some(RunnerKind::Static));
        assert_eq!(docker_runner(Runtime::Python), Some(RunnerKind::Python));
        assert_eq!(docker_runner(Runtime::Builtin), None);
    }
}
