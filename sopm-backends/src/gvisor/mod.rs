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
//!   enabled ([`SandboxSettings::with_cgroups`], off by default). Without it memory
//!   is bounded by `RLIMIT_AS` and processes by the wall-clock timeout.
//!
//! The runner inside speaks the same protocol through the same pipes as in the process
//! backend (stdin/stdout/stderr of `runsc run`, passed through to the sandbox), and the
//! same [`WarmPool`](crate::sandbox::WarmPool) keeps stem cells. An instance is cleaned
//! up (`runsc delete --force`, bundle removed) when it exits, crashes, times out, is
//! retired or reaped, and at shutdown; sandboxes left by a dead server are swept at first
//! use.
//!
//! Host needs: `runsc` (as root), `python3` (python, shell and binary functions) and
//! `node` (node functions). Tools are found on `PATH` unless configured, on first use.

use std::path::PathBuf;

use crate::host::settings::{SandboxBackend, SandboxKind, SandboxSettings};
use crate::sandbox::SandboxExecutor;

pub mod bundle;
mod launcher;

pub use crate::host::settings::GvisorPlatform;
pub use launcher::{GvisorLauncher, GvisorSandbox};

impl SandboxBackend for GvisorLauncher {
    const KIND: SandboxKind = SandboxKind::Gvisor;

    fn from_settings(settings: SandboxSettings) -> Self {
        GvisorLauncher::new(settings)
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
    use std::time::Duration;

    use super::*;
    use crate::host::PoolSettings;
    use crate::sandbox::RunnerKind;
    use sopm_core::Limits;

    fn settings() -> SandboxSettings {
        SandboxSettings::new(SandboxKind::Gvisor)
    }

    #[test]
    fn defaults_boot_script_stem_cells_within_fifteen_seconds() {
        let c = settings();
        assert_eq!(c.pool.stem_runners, RunnerKind::SCRIPTS);
        assert_eq!(c.pool.boot_timeout, Duration::from_secs(15));
        let pool = c.pool.pool_config(&c.name, false);
        assert_eq!(pool.name, "gvisor");
        assert_eq!(pool.stem_cells.get(&RunnerKind::Node), Some(&2));
        assert_eq!(pool.stem_cells.get(&RunnerKind::Static), None);
        assert!(!c.cgroups);
    }

    #[test]
    fn build_checks_the_values() {
        assert!(settings().build::<GvisorLauncher>().is_ok());
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
            settings().with_pool(PoolSettings::new([]).with_idle_ttl(Duration::ZERO)),
            settings().with_pool(PoolSettings::new([]).with_stem_limits(tiny)),
            settings().with_runsc("runsc"),
            settings().with_cgroup_parent("../escape"),
            settings().with_allow_network(true),
            SandboxSettings::new(SandboxKind::Process),
        ];
        for c in bad {
            let e = c.build::<GvisorLauncher>().unwrap_err();
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
            "SOPM_ALLOW_NETWORK" => Some("true".to_string()),
            _ => None,
        };
        let c = SandboxSettings::from_vars(SandboxKind::Gvisor, vars).unwrap();
        assert_eq!(c.pool.stem_cells, 5);
        assert_eq!(c.pool.max_instances, 9);
        assert_eq!(c.pool.boot_timeout, Duration::from_secs(15));
        assert_eq!(c.gvisor_platform, GvisorPlatform::Systrap);
        assert!(!c.allow_network, "the process backend's network switch");
        assert_eq!(
            c.runsc.as_deref(),
            Some(std::path::Path::new("/opt/gvisor/runsc"))
        );
        for (key, value) in [
            ("SOPM_GVISOR_PLATFORM", "vmware"),
            ("SOPM_MAX_INSTANCES_PER_FUNCTION", "lots"),
        ] {
            let e = SandboxSettings::from_vars(SandboxKind::Gvisor, |k| {
                (k == key).then(|| value.to_string())
            })
            .unwrap_err();
            assert_eq!(e.code(), "invalid_input");
        }
    }
}
