//! The process backend: user functions run in bubblewrap sandboxes on this machine.
//!
//! Each instance is `[sh ->] prlimit -> bwrap -> runner`:
//! - `bwrap` gives it new user, pid, network, ipc, uts (and cgroup) namespaces, drops
//!   every capability, dies with the server (`--die-with-parent`), runs in its own session,
//!   and sees a read-only root with only `/usr` (plus the `/lib*` links), the dynamic
//!   linker cache, time zone and CA certificates, the interpreter's own prefix if it lives
//!   outside `/usr`, the runners, a size-capped private `/tmp` and `/dev/shm`, and the
//!   function's code at `/fn`. Not `/etc/shadow`, not `/root`, not the server's data. The
//!   environment is cleared to a minimal one plus the function's own variables. The host
//!   network is shared only if the function asks for it *and* the executor allows it.
//! - `prlimit` sets rlimits: open files, file size (the tmpfs size), no core dumps, and
//!   for python-family runners the address space (memory + headroom). The python runner
//!   also sets a CPU-seconds limit per invocation.
//! - Where the host lets us, a cgroup per instance (v1 `memory` + `pids`, or a delegated v2
//!   subtree) enforces memory and process count; a memory kill is read back from the
//!   cgroup's OOM counter and reported as `out_of_memory`. The first `sh` joins that cgroup
//!   before it execs, so nothing in the sandbox ever runs outside it.
//!
//! Fork bombs: `RLIMIT_NPROC` does not bind for uid 0, and sandboxes map to the server's
//! uid, so the pids cgroup is what stops them (`pids.max` = `max_processes` + the sandbox's
//! own 3 processes). Without a writable cgroup, `RLIMIT_NPROC` is set (binding for a
//! non-root server) and the wall-clock timeout kills the pid namespace, taking every
//! process with it. An instance left with more processes than it had when it loaded is
//! not reused.
//!
//! Host needs: `bwrap`, `prlimit`, `sh`, `python3` (python, shell and binary functions:
//! the python runner supervises shell scripts and binaries) and `node` (node functions).
//! Tools are found on `PATH` unless configured, on first use.

use std::path::PathBuf;
use std::time::Duration;

use sopm_core::{Error, Result};

use crate::host::settings::{host_config_problem, parse_var, path_var, PoolSettings};
use crate::sandbox::pool::WarmPool;
use crate::sandbox::{RunnerKind, SandboxExecutor};

pub mod bwrap;
pub(crate) mod launcher;

pub use launcher::{ProcessLauncher, ProcessSandbox};

/// How a [`ProcessExecutor`] is set up. `new()` gives working defaults; `build()` checks
/// the values and does no I/O (tools are found on first use).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessExecutorConfig {
    pub(crate) name: String,
    pub(crate) bwrap: Option<PathBuf>,
    pub(crate) prlimit: Option<PathBuf>,
    pub(crate) python: Option<PathBuf>,
    pub(crate) node: Option<PathBuf>,
    pub(crate) host_shell: Option<PathBuf>,
    pub(crate) pool: PoolSettings,
    pub(crate) allow_network: bool,
    pub(crate) scratch_dir: Option<PathBuf>,
    pub(crate) cgroups: bool,
    pub(crate) cgroup_parent: String,
    pub(crate) extra_ro_binds: Vec<PathBuf>,
}

impl Default for ProcessExecutorConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessExecutorConfig {
    /// Defaults: tools from `PATH`, no network, cgroups where writable, and the default
    /// pool settings with stem cells for python and node and 10 s per boot.
    pub fn new() -> Self {
        ProcessExecutorConfig {
            name: "process".into(),
            bwrap: None,
            prlimit: None,
            python: None,
            node: None,
            host_shell: None,
            pool: PoolSettings::new(RunnerKind::SCRIPTS).with_boot_timeout(Duration::from_secs(10)),
            allow_network: false,
            scratch_dir: None,
            cgroups: true,
            cgroup_parent: "sopm".into(),
            extra_ro_binds: Vec::new(),
        }
    }

    /// Defaults overridden by environment variables: `SOPM_BWRAP`, `SOPM_PRLIMIT`,
    /// `SOPM_PYTHON`, `SOPM_NODE` (tool paths), `SOPM_SANDBOX_SCRATCH_DIR`,
    /// `SOPM_ALLOW_NETWORK` (`true`/`false`), `SOPM_CGROUPS` (`true`/`false`), and the
    /// pool variables of [`PoolSettings::with_vars`]. An unparsable number or flag is
    /// `invalid_input`.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut c = Self::new();
        c.bwrap = path_var(&var, "SOPM_BWRAP").or(c.bwrap);
        c.prlimit = path_var(&var, "SOPM_PRLIMIT").or(c.prlimit);
        c.python = path_var(&var, "SOPM_PYTHON").or(c.python);
        c.node = path_var(&var, "SOPM_NODE").or(c.node);
        c.scratch_dir = path_var(&var, "SOPM_SANDBOX_SCRATCH_DIR").or(c.scratch_dir);
        if let Some(allow) = parse_var(&var, "SOPM_ALLOW_NETWORK")? {
            c.allow_network = allow;
        }
        if let Some(enabled) = parse_var(&var, "SOPM_CGROUPS")? {
            c.cgroups = enabled;
        }
        c.pool = c.pool.with_vars(var)?;
        Ok(c)
    }

    /// The executor's name in stats and job records (`process`).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The `bwrap` to use.
    pub fn with_bwrap(mut self, path: impl Into<PathBuf>) -> Self {
        self.bwrap = Some(path.into());
        self
    }

    /// The `prlimit` to use.
    pub fn with_prlimit(mut self, path: impl Into<PathBuf>) -> Self {
        self.prlimit = Some(path.into());
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

    /// The host `sh` that joins sandbox cgroups.
    pub fn with_host_shell(mut self, path: impl Into<PathBuf>) -> Self {
        self.host_shell = Some(path.into());
        self
    }

    /// The warm-pool settings (stem cells, caps, idle TTL, stem limits, inline code size,
    /// boot timeout).
    pub fn with_pool(mut self, pool: PoolSettings) -> Self {
        self.pool = pool;
        self
    }

    /// The warm-pool settings, to adjust.
    pub fn pool_mut(&mut self) -> &mut PoolSettings {
        &mut self.pool
    }

    /// Whether functions that ask for network get the host's network.
    pub fn with_allow_network(mut self, allow: bool) -> Self {
        self.allow_network = allow;
        self
    }

    /// Where instance state (the runner files, mounted read-only into sandboxes) goes.
    /// Default: `$TMPDIR/sopm-sandbox`. Must not be the server's data directory.
    pub fn with_scratch_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.scratch_dir = Some(dir.into());
        self
    }

    /// Whether to try cgroups for memory and process limits (default true).
    pub fn with_cgroups(mut self, enabled: bool) -> Self {
        self.cgroups = enabled;
        self
    }

    /// The cgroup under which sandbox cgroups are made (default `sopm`).
    pub fn with_cgroup_parent(mut self, name: impl Into<String>) -> Self {
        self.cgroup_parent = name.into();
        self
    }

    /// An extra host directory every sandbox sees read-only at the same path (an
    /// interpreter installed outside `/usr`, say).
    pub fn with_extra_ro_bind(mut self, dir: impl Into<PathBuf>) -> Self {
        self.extra_ro_binds.push(dir.into());
        self
    }

    pub(crate) fn scratch_dir(&self) -> PathBuf {
        self.scratch_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("sopm-sandbox"))
    }

    /// Checks the configuration and makes the executor (no I/O).
    pub fn build(self) -> Result<ProcessExecutor> {
        let paths = [
            &self.bwrap,
            &self.prlimit,
            &self.python,
            &self.node,
            &self.host_shell,
            &self.scratch_dir,
        ];
        if let Some(problem) = host_config_problem(
            &self.name,
            &self.pool,
            &self.cgroup_parent,
            paths,
            &self.extra_ro_binds,
        ) {
            return Err(Error::invalid(format!("process executor: {problem}")));
        }
        let pool_config = self.pool.pool_config(&self.name, self.allow_network);
        let launcher = ProcessLauncher::new(self);
        Ok(SandboxExecutor::new(WarmPool::new(launcher, pool_config)))
    }
}

/// Runs user functions in bubblewrap sandboxes behind a warm pool.
pub type ProcessExecutor = SandboxExecutor<ProcessLauncher>;

impl SandboxExecutor<ProcessLauncher> {
    /// Whether sandboxes get cgroup limits here (known after the first boot).
    pub fn cgroups_enabled(&self) -> Option<bool> {
        self.pool.launcher().cgroups_enabled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sopm_core::Limits;

    #[test]
    fn defaults_boot_script_stem_cells_within_ten_seconds() {
        let c = ProcessExecutorConfig::new();
        assert_eq!(c.pool.stem_runners, RunnerKind::SCRIPTS);
        assert_eq!(c.pool.boot_timeout, Duration::from_secs(10));
        let pool = c.pool.pool_config(&c.name, c.allow_network);
        assert_eq!(pool.name, "process");
        assert_eq!(pool.stem_cells.get(&RunnerKind::Python), Some(&2));
        assert_eq!(pool.stem_cells.get(&RunnerKind::Static), None);
    }

    #[test]
    fn build_checks_the_values() {
        assert!(ProcessExecutorConfig::new().build().is_ok());
        let tiny = Limits {
            memory_mb: 8,
            ..Limits::default()
        };
        let mut capless = ProcessExecutorConfig::new();
        capless.pool_mut().max_instances = 0;
        let bad = [
            capless,
            ProcessExecutorConfig::new().with_pool(
                PoolSettings::new(RunnerKind::SCRIPTS)
                    .with_max_instances(2)
                    .with_max_instances_per_function(3),
            ),
            ProcessExecutorConfig::new()
                .with_pool(PoolSettings::new([]).with_boot_timeout(Duration::ZERO)),
            ProcessExecutorConfig::new().with_pool(PoolSettings::new([]).with_stem_limits(tiny)),
            ProcessExecutorConfig::new().with_bwrap("bwrap"),
            ProcessExecutorConfig::new().with_cgroup_parent("../escape"),
        ];
        for c in bad {
            let e = c.build().unwrap_err();
            assert_eq!(e.code(), "invalid_input");
            assert!(e.to_string().contains("process executor"), "{e}");
        }
    }

    #[test]
    fn from_env_reads_overrides() {
        let vars = |k: &str| match k {
            "SOPM_STEM_CELLS" => Some("5".to_string()),
            "SOPM_IDLE_TTL_SECS" => Some("7".to_string()),
            "SOPM_ALLOW_NETWORK" => Some("true".to_string()),
            "SOPM_PYTHON" => Some("/opt/py/bin/python3".to_string()),
            _ => None,
        };
        let c = ProcessExecutorConfig::from_vars(vars).unwrap();
        assert_eq!(c.pool.stem_cells, 5);
        assert_eq!(c.pool.idle_ttl, Duration::from_secs(7));
        assert_eq!(c.pool.boot_timeout, Duration::from_secs(10));
        assert!(c.allow_network);
        assert!(c.pool.pool_config(&c.name, c.allow_network).allow_network);
        assert_eq!(
            c.python.as_deref(),
            Some(std::path::Path::new("/opt/py/bin/python3"))
        );
        for (key, value) in [("SOPM_STEM_CELLS", "many"), ("SOPM_CGROUPS", "maybe")] {
            let e = ProcessExecutorConfig::from_vars(|k| (k == key).then(|| value.to_string()))
                .unwrap_err();
            assert_eq!(e.code(), "invalid_input");
        }
    }
}
