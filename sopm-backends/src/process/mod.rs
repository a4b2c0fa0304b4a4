//! The process backend: user functions run in bubblewrap sandboxes on this machine.
//!
//! Each instance is `sh -> prlimit -> bwrap -> runner`:
//! - `sh` opens the seccomp program on fd 9 and joins the sandbox's cgroups.
//! - `bwrap` gives it new user, pid, network, ipc, uts (and cgroup) namespaces, forbids
//!   nested user namespaces (`--disable-userns`), drops every capability, runs the
//!   function as uid/gid 65534, applies the host layer's default-deny seccomp profile,
//!   dies with the server (`--die-with-parent`), runs in its own session, and sees a
//!   read-only root with only the allow-list of [`crate::host::mounts`]: `/usr` (plus the
//!   `/lib*` links), the dynamic linker cache, time zone and `/etc/ssl/certs`, the
//!   interpreter's own prefix if it lives outside `/usr`, the runners, a size-capped
//!   private `/tmp` and `/dev/shm`, and the function's code at `/fn`. Not `/etc/shadow`,
//!   not `/etc/ssl/private`, not `/root` or `/home`, not the server's data. The
//!   environment is cleared to a minimal one plus the function's own variables. The host
//!   network is shared only if the function asks for it *and* the executor allows it.
//! - `prlimit` sets rlimits: open files, file size (the tmpfs size), no core dumps, and
//!   for python-family runners the address space (memory + headroom), for node the data
//!   size. The python and node runners also set a CPU-seconds limit per invocation.
//! - Where the host lets us, a cgroup per instance (v1 `memory` + `pids`, and `cpu` where
//!   writable, or a delegated v2 subtree) enforces memory, process count and a CPU quota
//!   ([`SandboxSettings::with_cpu_millis`](crate::SandboxSettings::with_cpu_millis)); a memory kill is read back from the
//!   cgroup's OOM counter and reported as `out_of_memory`. The first `sh` joins that
//!   cgroup before it execs, so nothing in the sandbox ever runs outside it.
//!
//! Fork bombs: `RLIMIT_NPROC` does not bind for uid 0, and sandboxes map to the server's
//! uid (65534 exists only inside their user namespace), so the pids cgroup is what stops them (`pids.max` = `max_processes` + the sandbox's
//! own 3 processes). Without a writable cgroup, `RLIMIT_NPROC` is set (binding for a
//! non-root server) and the wall-clock timeout kills the pid namespace, taking every
//! process with it. An instance left with more processes than it had when it loaded is
//! not reused.
//!
//! Host needs: `bwrap`, `prlimit`, `sh`, `python3` (python, shell and binary functions:
//! the python runner supervises shell scripts and binaries) and `node` (node functions).
//! Tools are found on `PATH` unless configured, on first use.

use crate::host::settings::{SandboxBackend, SandboxKind, SandboxSettings};
use crate::sandbox::SandboxExecutor;

pub mod bwrap;
pub(crate) mod launcher;

pub use launcher::{ProcessLauncher, ProcessSandbox};

impl SandboxBackend for ProcessLauncher {
    const KIND: SandboxKind = SandboxKind::Process;

    fn from_settings(settings: SandboxSettings) -> Self {
        ProcessLauncher::new(settings)
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
    use std::time::Duration;

    use super::*;
    use crate::host::PoolSettings;
    use crate::sandbox::RunnerKind;
    use sopm_core::Limits;

    fn settings() -> SandboxSettings {
        SandboxSettings::new(SandboxKind::Process)
    }

    #[test]
    fn defaults_boot_script_stem_cells_within_ten_seconds() {
        let c = settings();
        assert_eq!(c.pool.stem_runners, RunnerKind::SCRIPTS);
        assert_eq!(c.pool.boot_timeout, Duration::from_secs(10));
        let pool = c.pool.pool_config(&c.name, c.allow_network);
        assert_eq!(pool.name, "process");
        assert_eq!(pool.stem_cells.get(&RunnerKind::Python), Some(&2));
        assert_eq!(pool.stem_cells.get(&RunnerKind::Static), None);
    }

    #[test]
    fn build_checks_the_values() {
        assert!(settings().build::<ProcessLauncher>().is_ok());
        let tiny = Limits {
            memory_mb: 8,
            ..Limits::default()
        };
        let mut capless = settings();
        capless.pool_mut().max_instances = 0;
        let bad = [
            capless,
            settings().with_pool(
                PoolSettings::new(RunnerKind::SCRIPTS)
                    .with_max_instances(2)
                    .with_max_instances_per_function(3),
            ),
            settings().with_pool(PoolSettings::new([]).with_boot_timeout(Duration::ZERO)),
            settings().with_pool(PoolSettings::new([]).with_stem_limits(tiny)),
            settings().with_bwrap("bwrap"),
            settings().with_cgroup_parent("../escape"),
            SandboxSettings::new(SandboxKind::Gvisor),
        ];
        for c in bad {
            let e = c.build::<ProcessLauncher>().unwrap_err();
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
        let c = SandboxSettings::from_vars(SandboxKind::Process, vars).unwrap();
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
            let e = SandboxSettings::from_vars(SandboxKind::Process, |k| {
                (k == key).then(|| value.to_string())
            })
            .unwrap_err();
            assert_eq!(e.code(), "invalid_input");
        }
    }
}
