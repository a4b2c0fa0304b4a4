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

use sopm_core::{Error, Result};

use crate::host::settings::{host_config_problem, parse_var, path_var, PoolSettings};
use crate::sandbox::pool::WarmPool;
use crate::sandbox::{RunnerKind, SandboxExecutor};

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
    pub(crate) pool: PoolSettings,
    pub(crate) scratch_dir: Option<PathBuf>,
    pub(crate) cgroups: bool,
    pub(crate) cgroup_parent: String,
    pub(crate) extra_ro_binds: Vec<PathBuf>,
}

impl Default for GvisorExecutorConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl GvisorExecutorConfig {
    /// Defaults: tools from `PATH`, the `ptrace` platform, no host cgroups, and the
    /// default pool settings with stem cells for python and node and 15 s per boot.
    pub fn new() -> Self {
        GvisorExecutorConfig {
            name: "gvisor".into(),
            runsc: None,
            platform: GvisorPlatform::Ptrace,
            python: None,
            node: None,
            pool: PoolSettings::new(RunnerKind::SCRIPTS).with_boot_timeout(Duration::from_secs(15)),
            scratch_dir: None,
            cgroups: false,
            cgroup_parent: "sopm-gvisor".into(),
            extra_ro_binds: Vec::new(),
        }
    }

    /// Defaults overridden by environment variables: `SOPM_RUNSC`, `SOPM_GVISOR_PLATFORM`
    /// (`ptrace`/`systrap`/`kvm`), `SOPM_PYTHON`, `SOPM_NODE`, `SOPM_GVISOR_SCRATCH_DIR`,
    /// `SOPM_GVISOR_CGROUPS` (`true`/`false`), and the pool variables of
    /// [`PoolSettings::with_vars`]. An unparsable value is `invalid_input`.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut c = Self::new();
        c.runsc = path_var(&var, "SOPM_RUNSC").or(c.runsc);
        c.python = path_var(&var, "SOPM_PYTHON").or(c.python);
        c.node = path_var(&var, "SOPM_NODE").or(c.node);
        c.scratch_dir = path_var(&var, "SOPM_GVISOR_SCRATCH_DIR").or(c.scratch_dir);
        if let Some(v) = var("SOPM_GVISOR_PLATFORM") {
            c.platform = v.parse()?;
        }
        if let Some(enabled) = parse_var(&var, "SOPM_GVISOR_CGROUPS")? {
            c.cgroups = enabled;
        }
        c.pool = c.pool.with_vars(var)?;
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

    /// The warm-pool settings (stem cells, caps, idle TTL, stem limits, inline code size,
    /// boot timeout). A function whose rlimits differ from the stem limits gets a dedicated
    /// sandbox.
    pub fn with_pool(mut self, pool: PoolSettings) -> Self {
        self.pool = pool;
        self
    }

    /// The warm-pool settings, to adjust.
    pub fn pool_mut(&mut self) -> &mut PoolSettings {
        &mut self.pool
    }

    /// Where bundles, runsc state, the root skeleton and the runners go. Default:
    /// `$TMPDIR/sopm-gvisor`. Must not be the server's data directory.
    pub fn with_scratch_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.scratch_dir = Some(dir.into());
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
        let paths = [&self.runsc, &self.python, &self.node, &self.scratch_dir];
        if let Some(problem) = host_config_problem(
            &self.name,
            &self.pool,
            &self.cgroup_parent,
            paths,
            &self.extra_ro_binds,
        ) {
            return Err(Error::invalid(format!("gvisor executor: {problem}")));
        }
        let pool_config = self.pool.pool_config(&self.name, false);
        let launcher = GvisorLauncher::new(self);
        Ok(SandboxExecutor::new(WarmPool::new(launcher, pool_config)))
    }
}

/// Runs user functions in gVisor (`runsc`) sandboxes behind a warm pool.
pub type GvisorExecutor = SandboxExecutor<GvisorLauncher>;

impl SandboxExecutor<GvisorLauncher> {
    /// The runsc state directory (`runsc --root`) of this executor's sandboxes.
    pub fn state_dir(&self) -> PathBuf {
        self.pool.launcher().state_dir()
    }

    /// The directory holding one bundle directory per live sandbox.
    pub fn bundles_dir(&self) -> PathBuf {
        self.pool.launcher().bundles_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sopm_core::Limits;

    #[test]
    fn defaults_boot_script_stem_cells_within_fifteen_seconds() {
        let c = GvisorExecutorConfig::new();
        assert_eq!(c.pool.stem_runners, RunnerKind::SCRIPTS);
        assert_eq!(c.pool.boot_timeout, Duration::from_secs(15));
        let pool = c.pool.pool_config(&c.name, false);
        assert_eq!(pool.name, "gvisor");
        assert_eq!(pool.stem_cells.get(&RunnerKind::Node), Some(&2));
        assert_eq!(pool.stem_cells.get(&RunnerKind::Static), None);
    }

    #[test]
    fn build_checks_the_values() {
        assert!(GvisorExecutorConfig::new().build().is_ok());
        let tiny = Limits {
            memory_mb: 8,
            ..Limits::default()
        };
        let mut capless = GvisorExecutorConfig::new();
        capless.pool_mut().max_instances = 0;
        let bad = [
            capless,
            GvisorExecutorConfig::new().with_pool(
                PoolSettings::new(RunnerKind::SCRIPTS)
                    .with_max_instances(2)
                    .with_max_instances_per_function(3),
            ),
            GvisorExecutorConfig::new()
                .with_pool(PoolSettings::new([]).with_idle_ttl(Duration::ZERO)),
            GvisorExecutorConfig::new().with_pool(PoolSettings::new([]).with_stem_limits(tiny)),
            GvisorExecutorConfig::new().with_runsc("runsc"),
            GvisorExecutorConfig::new().with_cgroup_parent("../escape"),
        ];
        for c in bad {
            let e = c.build().unwrap_err();
            assert_eq!(e.code(), "invalid_input");
            assert!(e.to_string().contains("gvisor executor"), "{e}");
        }
    }

    #[test]
    fn from_env_reads_overrides() {
        let vars = |k: &str| match k {
            "SOPM_STEM_CELLS" => Some("5".to_string()),
            "SOPM_MAX_INSTANCES" => Some("9".to_string()),
            "SOPM_GVISOR_PLATFORM" => Some("systrap".to_string()),
            "SOPM_RUNSC" => Some("/opt/gvisor/runsc".to_string()),
            _ => None,
        };
        let c = GvisorExecutorConfig::from_vars(vars).unwrap();
        assert_eq!(c.pool.stem_cells, 5);
        assert_eq!(c.pool.max_instances, 9);
        assert_eq!(c.pool.boot_timeout, Duration::from_secs(15));
        assert_eq!(c.platform, GvisorPlatform::Systrap);
        assert_eq!(
            c.runsc.as_deref(),
            Some(std::path::Path::new("/opt/gvisor/runsc"))
        );
        for (key, value) in [
            ("SOPM_GVISOR_PLATFORM", "vmware"),
            ("SOPM_MAX_INSTANCES_PER_FUNCTION", "lots"),
        ] {
            let e = GvisorExecutorConfig::from_vars(|k| (k == key).then(|| value.to_string()))
                .unwrap_err();
            assert_eq!(e.code(), "invalid_input");
        }
    }
}
