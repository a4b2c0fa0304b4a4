//! The gVisor backend: user functions run in `runsc` sandboxes on this machine.
//!
//! Each instance is one `runsc run` of an OCI bundle generated in the scratch dir:
//! - the root is an empty, read-only skeleton with read-only binds of `/usr` (plus the
//!   `/lib*` links), the dynamic linker cache, time zone and CA certificates, the
//!   interpreter's prefix if it lives outside `/usr`, and the runners; a size-capped
//!   tmpfs `/tmp`; the function's code at `/fn` (a private tmpfs filled by the init
//!   frame, or a read-only bind of a big artifact). Not `/etc/shadow`, not `/root`.
//! - `--network=none` (gVisor's own loopback only), no capabilities, `noNewPrivileges`,
//!   rlimits (open files, file size, no core dumps, and for python-family runners the
//!   address space), all enforced by the gVisor kernel, not by the host's.
//! - `linux.resources` carries the memory and pids limits (plus room for gVisor's own
//!   kernel); a host cgroup for the whole sandbox applies them only when cgroups are
//!   enabled ([`GvisorExecutorConfig::with_cgroups`], off by default). Without it memory
//!   is bounded by `RLIMIT_AS` and processes by the wall-clock timeout.
//!
//! The runner inside speaks the same protocol through the same pipes as in the process
//! backend (stdin/stdout/stderr of `runsc run`, passed through to the sandbox), and the
//! same [`WarmPool`] keeps stem cells. An instance is cleaned up (`runsc delete --force`,
//! bundle removed) when it exits, crashes, times out, is retired or reaped, and at
//! shutdown; sandboxes left by a dead server are swept at first use.
//!
//! Host needs: `runsc` (as root), `python3` (python, shell and binary functions) and
//! `node` (node functions). Tools are found on `PATH` unless configured, on first use.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use sopm_core::{
    Error, Executor, FunctionVersion, Invocation, Limits, Output, PoolStats, Result, Target,
};

use crate::sandbox::pool::{PoolConfig, PoolCounters, WarmPool};
use crate::sandbox::{artifact, RunnerKind};

pub mod bundle;
mod launcher;

pub use launcher::{GvisorLauncher, GvisorSandbox};

/// Which gVisor platform intercepts the sandbox's system calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GvisorPlatform {
    /// `ptrace`: works everywhere, slowest system calls. The default (the only one that
    /// works on every host; `systrap` is not in runsc builds before mid-2023).
    Ptrace,
    /// `systrap`: seccomp-based, fast, in newer runsc builds.
    Systrap,
    /// `kvm`: needs `/dev/kvm` and bare metal or nested virtualisation.
    Kvm,
}

impl GvisorPlatform {
    /// The value of `runsc --platform`.
    pub fn as_str(self) -> &'static str {
        match self {
            GvisorPlatform::Ptrace => "ptrace",
            GvisorPlatform::Systrap => "systrap",
            GvisorPlatform::Kvm => "kvm",
        }
    }
}

impl std::str::FromStr for GvisorPlatform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "ptrace" => Ok(GvisorPlatform::Ptrace),
            "systrap" => Ok(GvisorPlatform::Systrap),
            "kvm" => Ok(GvisorPlatform::Kvm),
            other => Err(Error::invalid(format!(
                "unknown gVisor platform '{other}' (ptrace, systrap, kvm)"
            ))),
        }
    }
}

/// How a [`GvisorExecutor`] is set up. `new()` gives working defaults; `build()` checks
/// the values and does no I/O (tools are found on first use).
#[derive(Debug, Clone, PartialEq)]
pub struct GvisorExecutorConfig {
    pub(crate) name: String,
    pub(crate) runsc: Option<PathBuf>,
    pub(crate) platform: GvisorPlatform,
    pub(crate) python: Option<PathBuf>,
    pub(crate) node: Option<PathBuf>,
    pub(crate) stem_cells: usize,
    pub(crate) stem_runners: Vec<RunnerKind>,
    pub(crate) max_per_function: usize,
    pub(crate) max_instances: usize,
    pub(crate) idle_ttl: Duration,
    pub(crate) scratch_dir: Option<PathBuf>,
    pub(crate) stem_limits: Limits,
    pub(crate) max_inline_bytes: u64,
    pub(crate) cgroups: bool,
    pub(crate) cgroup_parent: String,
    pub(crate) boot_timeout: Duration,
    pub(crate) extra_ro_binds: Vec<PathBuf>,
}

impl Default for GvisorExecutorConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl GvisorExecutorConfig {
    /// Defaults: tools from `PATH`, the `ptrace` platform, 2 stem cells per runner, 8
    /// instances per function, 64 in all, 5 minutes idle TTL, no host cgroups.
    pub fn new() -> Self {
        GvisorExecutorConfig {
            name: "gvisor".into(),
            runsc: None,
            platform: GvisorPlatform::Ptrace,
            python: None,
            node: None,
            stem_cells: 2,
            stem_runners: RunnerKind::SCRIPTS.to_vec(),
            max_per_function: 8,
            max_instances: 64,
            idle_ttl: Duration::from_secs(300),
            scratch_dir: None,
            stem_limits: Limits::default(),
            max_inline_bytes: artifact::DEFAULT_MAX_INLINE_BYTES,
            cgroups: false,
            cgroup_parent: "sopm-gvisor".into(),
            boot_timeout: Duration::from_secs(15),
            extra_ro_binds: Vec::new(),
        }
    }

    /// Defaults overridden by environment variables: `SOPM_RUNSC`, `SOPM_GVISOR_PLATFORM`
    /// (`ptrace`/`systrap`/`kvm`), `SOPM_PYTHON`, `SOPM_NODE`, `SOPM_GVISOR_SCRATCH_DIR`,
    /// `SOPM_STEM_CELLS`, `SOPM_MAX_INSTANCES`, `SOPM_MAX_INSTANCES_PER_FUNCTION`,
    /// `SOPM_IDLE_TTL_SECS`, `SOPM_GVISOR_CGROUPS` (`true`/`false`). An unparsable value is
    /// `invalid_input`.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        fn parse<T: std::str::FromStr>(key: &str, v: String) -> Result<T> {
            v.trim()
                .parse()
                .map_err(|_| Error::invalid(format!("{key}: cannot parse '{v}'")))
        }
        let mut c = Self::new();
        let path = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        c.runsc = path("SOPM_RUNSC").or(c.runsc);
        c.python = path("SOPM_PYTHON").or(c.python);
        c.node = path("SOPM_NODE").or(c.node);
        c.scratch_dir = path("SOPM_GVISOR_SCRATCH_DIR").or(c.scratch_dir);
        if let Some(v) = var("SOPM_GVISOR_PLATFORM") {
            c.platform = v.parse()?;
        }
        if let Some(v) = var("SOPM_STEM_CELLS") {
            c.stem_cells = parse("SOPM_STEM_CELLS", v)?;
        }
        if let Some(v) = var("SOPM_MAX_INSTANCES") {
            c.max_instances = parse("SOPM_MAX_INSTANCES", v)?;
        }
        if let Some(v) = var("SOPM_MAX_INSTANCES_PER_FUNCTION") {
            c.max_per_function = parse("SOPM_MAX_INSTANCES_PER_FUNCTION", v)?;
        }
        if let Some(v) = var("SOPM_IDLE_TTL_SECS") {
            c.idle_ttl = Duration::from_secs(parse("SOPM_IDLE_TTL_SECS", v)?);
        }
        if let Some(v) = var("SOPM_GVISOR_CGROUPS") {
            c.cgroups = parse("SOPM_GVISOR_CGROUPS", v)?;
        }
        Ok(c)
    }

    /// The executor's name in stats and job records (`gvisor`).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The `runsc` to use.
    pub fn with_runsc(mut self, path: impl Into<PathBuf>) -> Self {
        self.runsc = Some(path.into());
        self
    }

    /// The gVisor platform (default `ptrace`).
    pub fn with_platform(mut self, platform: GvisorPlatform) -> Self {
        self.platform = platform;
        self
    }

    /// The `python3` to use (a pyenv shim is resolved to the real interpreter).
    pub fn with_python(mut self, path: impl Into<PathBuf>) -> Self {
        self.python = Some(path.into());
        self
    }

    /// The `node` to use.
    pub fn with_node(mut self, path: impl Into<PathBuf>) -> Self {
        self.node = Some(path.into());
        self
    }

    /// Stem cells kept ready per runner (python, node); 0 turns them off.
    pub fn with_stem_cells(mut self, per_runner: usize) -> Self {
        self.stem_cells = per_runner;
        self
    }

    /// Which runners get stem cells (default: python and node).
    pub fn with_stem_runners(mut self, runners: impl IntoIterator<Item = RunnerKind>) -> Self {
        self.stem_runners = runners.into_iter().collect();
        self
    }

    /// Most instances of one function version.
    pub fn with_max_instances_per_function(mut self, n: usize) -> Self {
        self.max_per_function = n;
        self
    }

    /// Most function instances in all (stem cells not counted).
    pub fn with_max_instances(mut self, n: usize) -> Self {
        self.max_instances = n;
        self
    }

    /// How long an instance may stay idle before it is stopped.
    pub fn with_idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// Where bundles, runsc state, the root skeleton and the runners go. Default:
    /// `$TMPDIR/sopm-gvisor`. Must not be the server's data directory.
    pub fn with_scratch_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.scratch_dir = Some(dir.into());
        self
    }

    /// The limits stem cells boot with (a function whose rlimits differ gets a dedicated
    /// sandbox).
    pub fn with_stem_limits(mut self, limits: Limits) -> Self {
        self.stem_limits = limits;
        self
    }

    /// Largest artifact sent in an init frame; bigger ones get a dedicated sandbox with
    /// the artifact mounted read-only.
    pub fn with_max_inline_bytes(mut self, bytes: u64) -> Self {
        self.max_inline_bytes = bytes;
        self
    }

    /// Whether runsc puts each sandbox in a host cgroup with its memory and pids limits
    /// (plus room for gVisor's own kernel). Default false.
    pub fn with_cgroups(mut self, enabled: bool) -> Self {
        self.cgroups = enabled;
        self
    }

    /// The cgroup under which sandbox cgroups are made (default `sopm-gvisor`).
    pub fn with_cgroup_parent(mut self, name: impl Into<String>) -> Self {
        self.cgroup_parent = name.into();
        self
    }

    /// How long one sandbox may take to boot.
    pub fn with_boot_timeout(mut self, timeout: Duration) -> Self {
        self.boot_timeout = timeout;
        self
    }

    /// An extra host directory every sandbox sees read-only at the same path.
    pub fn with_extra_ro_bind(mut self, dir: impl Into<PathBuf>) -> Self {
        self.extra_ro_binds.push(dir.into());
        self
    }

    pub(crate) fn scratch_dir(&self) -> PathBuf {
        self.scratch_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("sopm-gvisor"))
    }

    /// Checks the configuration and makes the executor (no I/O).
    pub fn build(self) -> Result<GvisorExecutor> {
        let bad = |m: &str| Err(Error::invalid(format!("gvisor executor: {m}")));
        if self.name.is_empty() {
            return bad("name must not be empty");
        }
        if self.max_per_function == 0 || self.max_instances == 0 {
            return bad("instance caps must be at least 1");
        }
        if self.max_per_function > self.max_instances {
            return bad("max_instances_per_function cannot exceed max_instances");
        }
        if self.idle_ttl.is_zero() || self.boot_timeout.is_zero() {
            return bad("idle_ttl and boot_timeout must be positive");
        }
        if self.stem_limits.memory_mb < 16 || self.stem_limits.tmpfs_mb == 0 {
            return bad("stem limits need at least 16 MiB of memory and 1 MiB of tmpfs");
        }
        if self.cgroup_parent.is_empty()
            || self.cgroup_parent.contains('/')
            || self.cgroup_parent.starts_with('.')
        {
            return bad("cgroup_parent must be a plain directory name");
        }
        let paths = [&self.runsc, &self.python, &self.node, &self.scratch_dir];
        if paths.into_iter().flatten().any(|p| !p.is_absolute())
            || self.extra_ro_binds.iter().any(|p| !p.is_absolute())
        {
            return bad("paths must be absolute");
        }
        let pool_config = PoolConfig {
            name: self.name.clone(),
            stem_cells: self
                .stem_runners
                .iter()
                .map(|k| (*k, self.stem_cells))
                .collect(),
            max_per_function: self.max_per_function,
            max_instances: self.max_instances,
            idle_ttl: self.idle_ttl,
            max_inline_bytes: self.max_inline_bytes,
            stem_limits: self.stem_limits.clone(),
            allow_network: false,
            boot_timeout: self.boot_timeout,
        };
        let launcher = GvisorLauncher::new(self);
        Ok(GvisorExecutor {
            pool: WarmPool::new(launcher, pool_config),
        })
    }
}

/// Runs user functions in gVisor (`runsc`) sandboxes behind a warm pool.
#[derive(Debug, Clone)]
pub struct GvisorExecutor {
    pool: WarmPool<GvisorLauncher>,
}

impl GvisorExecutor {
    /// Starts the background work (stem cells, reaping) now instead of on the first call.
    /// Needs a tokio runtime.
    pub fn start(&self) {
        self.pool.start();
    }

    /// Life counters of the pool (stem cells used, cold starts, ...).
    pub fn counters(&self) -> PoolCounters {
        self.pool.counters()
    }

    /// The runsc state directory (`runsc --root`) of this executor's sandboxes.
    pub fn state_dir(&self) -> PathBuf {
        self.pool.launcher().state_dir()
    }

    /// The directory holding one bundle directory per live sandbox.
    pub fn bundles_dir(&self) -> PathBuf {
        self.pool.launcher().bundles_dir()
    }
}

#[async_trait]
impl Executor for GvisorExecutor {
    fn name(&self) -> &str {
        &self.pool.config().name
    }

    async fn invoke(&self, invocation: Invocation) -> Result<Output> {
        let version = match &invocation.target {
            Target::User(v) => v,
            Target::Builtin(name) => {
                return Err(Error::invalid(format!(
                    "the gvisor executor runs user functions, not the built-in '{name}'"
                )))
            }
        };
        let limit = tokio::time::Instant::now() + Duration::from_millis(version.limits.timeout_ms);
        let deadline = tokio::time::Instant::from_std(invocation.deadline).min(limit);
        self.pool
            .invoke(
                version,
                invocation.job_id.as_str(),
                &invocation.input,
                deadline,
            )
            .await
    }

    async fn prepare(&self, version: &FunctionVersion) -> Result<()> {
        self.pool.prepare(version).await
    }

    async fn retire(&self, function_id: &str) -> Result<()> {
        self.pool.retire(function_id).await;
        Ok(())
    }

    fn pool_stats(&self) -> Vec<PoolStats> {
        self.pool.stats()
    }

    async fn shutdown(&self) {
        self.pool.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_checks_the_values() {
        assert!(GvisorExecutorConfig::new().build().is_ok());
        let bad = [
            GvisorExecutorConfig::new().with_max_instances(0),
            GvisorExecutorConfig::new()
                .with_max_instances(2)
                .with_max_instances_per_function(3),
            GvisorExecutorConfig::new().with_idle_ttl(Duration::ZERO),
            GvisorExecutorConfig::new().with_runsc("runsc"),
            GvisorExecutorConfig::new().with_cgroup_parent("../escape"),
        ];
        for c in bad {
            assert_eq!(c.build().unwrap_err().code(), "invalid_input");
        }
    }

    #[test]
    fn from_env_reads_overrides() {
        let vars = |k: &str| match k {
            "SOPM_STEM_CELLS" => Some("5".to_string()),
            "SOPM_GVISOR_PLATFORM" => Some("systrap".to_string()),
            "SOPM_RUNSC" => Some("/opt/gvisor/runsc".to_string()),
            _ => None,
        };
        let c = GvisorExecutorConfig::from_vars(vars).unwrap();
        assert_eq!(c.stem_cells, 5);
        assert_eq!(c.platform, GvisorPlatform::Systrap);
        assert_eq!(
            c.runsc.as_deref(),
            Some(std::path::Path::new("/opt/gvisor/runsc"))
        );
        let e = GvisorExecutorConfig::from_vars(|k| {
            (k == "SOPM_GVISOR_PLATFORM").then(|| "vmware".to_string())
        })
        .unwrap_err();
        assert_eq!(e.code(), "invalid_input");
    }
}
