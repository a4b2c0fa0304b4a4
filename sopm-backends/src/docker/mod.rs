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
//!   the build output into the build log. The artifact is the image.
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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use sopm_core::{Error, Result, Runtime};

use crate::host::settings::{parse_var, path_var, PoolSettings};
use crate::sandbox::pool::WarmPool;
use crate::sandbox::{RunnerKind, SandboxExecutor};

mod builder;
mod daemon;
mod launcher;

pub use builder::DockerBuilder;
pub use launcher::{DockerLauncher, DockerSandbox};

/// The default base image of each runner (built by `scripts/docker-images.sh`).
pub fn default_base_image(runner: RunnerKind) -> &'static str {
    match runner {
        RunnerKind::Python => "sopm/base-python:local",
        RunnerKind::Node => "sopm/base-node:local",
        RunnerKind::Static => "sopm/base-static:local",
    }
}

/// How a [`DockerExecutor`] is set up. `new()` gives working defaults; `build()` checks
/// the values and does no I/O (the daemon is reached on first use).
#[derive(Debug, Clone, PartialEq)]
pub struct DockerExecutorConfig {
    pub(crate) name: String,
    pub(crate) host: Option<String>,
    pub(crate) runtime: Option<String>,
    pub(crate) base_images: BTreeMap<RunnerKind, String>,
    pub(crate) static_runner: Option<PathBuf>,
    pub(crate) pool: PoolSettings,
    pub(crate) cpus: f64,
    pub(crate) user: String,
    pub(crate) runtime_memory_overhead_mb: u64,
    pub(crate) runtime_pids_overhead: u64,
}

impl Default for DockerExecutorConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl DockerExecutorConfig {
    /// Defaults: the local daemon (`DOCKER_HOST` or the default socket), the daemon's
    /// default runtime, the `sopm/base-*:local` images, the static runner found next to
    /// the running program or on `PATH`, one CPU per container, user `65534:65534`, and the
    /// default pool settings with stem cells for all three runners.
    pub fn new() -> Self {
        DockerExecutorConfig {
            name: "docker".into(),
            host: None,
            runtime: None,
            base_images: RunnerKind::ALL
                .iter()
                .map(|k| (*k, default_base_image(*k).to_string()))
                .collect(),
            static_runner: None,
            pool: PoolSettings::new(RunnerKind::ALL),
            cpus: 1.0,
            user: "65534:65534".into(),
            runtime_memory_overhead_mb: 0,
            runtime_pids_overhead: 0,
        }
    }

    /// Defaults overridden by environment variables: `SOPM_DOCKER_HOST`,
    /// `SOPM_DOCKER_RUNTIME`, `SOPM_DOCKER_IMAGE_PYTHON`, `SOPM_DOCKER_IMAGE_NODE`,
    /// `SOPM_DOCKER_IMAGE_STATIC`, `SOPM_STATIC_RUNNER`, `SOPM_DOCKER_CPUS`, and the pool
    /// variables of [`PoolSettings::with_vars`]. An unparsable value is `invalid_input`.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut c = Self::new();
        let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        if let Some(h) = set("SOPM_DOCKER_HOST") {
            c.host = Some(h);
        }
        if let Some(r) = set("SOPM_DOCKER_RUNTIME") {
            c = c.with_runtime(r);
        }
        for (key, kind) in [
            ("SOPM_DOCKER_IMAGE_PYTHON", RunnerKind::Python),
            ("SOPM_DOCKER_IMAGE_NODE", RunnerKind::Node),
            ("SOPM_DOCKER_IMAGE_STATIC", RunnerKind::Static),
        ] {
            if let Some(image) = set(key) {
                c.base_images.insert(kind, image);
            }
        }
        if let Some(p) = path_var(&var, "SOPM_STATIC_RUNNER") {
            c.static_runner = Some(p);
        }
        if let Some(cpus) = parse_var(&var, "SOPM_DOCKER_CPUS")? {
            c.cpus = cpus;
        }
        c.pool = c.pool.with_vars(var)?;
        Ok(c)
    }

    /// The executor's name in stats, job records and container labels (`docker`).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The daemon address (`unix:///var/run/docker.sock`, `tcp://host:2375`); default:
    /// `DOCKER_HOST` or the local socket.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// The OCI runtime of the containers (`runc`, or `runsc` for gVisor, registered in the
    /// daemon's `runtimes`); default: the daemon's default. Under `runsc` each container
    /// gets 128 MiB of memory and 256 processes more than the function's limits, for
    /// gVisor's own kernel, which the host cgroup counts too.
    pub fn with_runtime(mut self, runtime: impl Into<String>) -> Self {
        let runtime = runtime.into();
        let gvisor = runtime == "runsc";
        self.runtime_memory_overhead_mb = if gvisor { 128 } else { 0 };
        self.runtime_pids_overhead = if gvisor { 256 } else { 0 };
        self.runtime = Some(runtime);
        self
    }

    /// The base image of a runner's containers (any image with `/bin/sh`, plus `python3`
    /// or `node` on `PATH` for those runners).
    pub fn with_base_image(mut self, runner: RunnerKind, image: impl Into<String>) -> Self {
        self.base_images.insert(runner, image.into());
        self
    }

    /// The static runner executable copied into static runner images.
    pub fn with_static_runner(mut self, path: impl Into<PathBuf>) -> Self {
        self.static_runner = Some(path.into());
        self
    }

    /// The warm-pool settings.
    pub fn with_pool(mut self, pool: PoolSettings) -> Self {
        self.pool = pool;
        self
    }

    /// The warm-pool settings, to adjust.
    pub fn pool_mut(&mut self) -> &mut PoolSettings {
        &mut self.pool
    }

    /// CPUs per container (`--cpus`; default 1).
    pub fn with_cpus(mut self, cpus: f64) -> Self {
        self.cpus = cpus;
        self
    }

    /// The user containers run as (`uid:gid`; default `65534:65534`).
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// Checks the configuration and makes the executor (no I/O).
    pub fn build(self) -> Result<DockerExecutor> {
        let bad = |m: &str| Err(Error::invalid(format!("docker executor: {m}")));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return bad("name must be letters, digits, '-', '_' or '.'");
        }
        if let Some(problem) = self.pool.problem() {
            return bad(problem);
        }
        if !(self.cpus > 0.0 && self.cpus <= 1024.0) {
            return bad("cpus must be above 0");
        }
        if self.user.is_empty() {
            return bad("user must not be empty");
        }
        if self.base_images.values().any(|i| i.trim().is_empty()) {
            return bad("base images must not be empty");
        }
        if self
            .static_runner
            .as_ref()
            .is_some_and(|p| !p.is_absolute())
        {
            return bad("the static runner path must be absolute");
        }
        let pool_config = self.pool.pool_config(&self.name, false);
        let daemon = Arc::new(daemon::Daemon::new(&self));
        let launcher = DockerLauncher::new(self, daemon);
        Ok(SandboxExecutor::new(WarmPool::new(launcher, pool_config)))
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

    #[test]
    fn build_checks_the_values() {
        assert!(DockerExecutorConfig::new().build().is_ok());
        let bad = [
            DockerExecutorConfig::new().with_name("a b"),
            DockerExecutorConfig::new().with_cpus(0.0),
            DockerExecutorConfig::new().with_static_runner("sopm-runner"),
            DockerExecutorConfig::new().with_base_image(RunnerKind::Python, " "),
            DockerExecutorConfig::new().with_pool(PoolSettings::new([]).with_max_instances(0)),
        ];
        for c in bad {
            assert_eq!(c.build().unwrap_err().code(), "invalid_input");
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
        let c = DockerExecutorConfig::from_vars(vars).unwrap();
        assert_eq!(c.runtime.as_deref(), Some("runsc"));
        assert_eq!(c.runtime_memory_overhead_mb, 128);
        assert_eq!(c.base_images[&RunnerKind::Node], "example/node:20");
        assert_eq!(c.base_images[&RunnerKind::Python], "sopm/base-python:local");
        assert_eq!(c.pool.stem_cells, 3);
        let e = DockerExecutorConfig::from_vars(|k| {
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
