//! [`SandboxSettings`]: the one settings type of every sandbox backend (what they share,
//! plus each backend's own knobs), read from the environment and checked without I/O
//! when a backend is built from it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sopm_core::{Error, Result};

use super::image_registry::ImageRegistry;
use super::pool_settings::PoolSettings;
use super::vars::{parse_var, path_var};
use crate::sandbox::pool::WarmPool;
use crate::sandbox::{RunnerKind, SandboxExecutor, SandboxLauncher};

/// Which sandbox backend a [`SandboxSettings`] is for: it picks the defaults, the
/// environment variables read and the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxKind {
    /// bubblewrap sandboxes on this host (`process`).
    Process,
    /// gVisor (`runsc`) sandboxes on this host (`gvisor`).
    Gvisor,
    /// Docker containers (`docker`).
    Docker,
}

impl SandboxKind {
    /// The backend's default name (`process`, `gvisor`, `docker`).
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Process => "process",
            SandboxKind::Gvisor => "gvisor",
            SandboxKind::Docker => "docker",
        }
    }
}

impl std::fmt::Display for SandboxKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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

impl FromStr for GvisorPlatform {
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

/// The default Docker base image of each runner (built by `scripts/docker-images.sh`).
pub fn default_base_image(runner: RunnerKind) -> &'static str {
    match runner {
        RunnerKind::Python => "sopm/base-python:local",
        RunnerKind::Node => "sopm/base-node:local",
        RunnerKind::Static => "sopm/base-static:local",
    }
}

/// A sandbox backend that is built from [`SandboxSettings`]: its launcher.
pub trait SandboxBackend: SandboxLauncher + Sized {
    /// The settings this backend takes.
    const KIND: SandboxKind;

    /// The launcher of checked settings (no I/O: tools and daemons are found on first use).
    fn from_settings(settings: SandboxSettings) -> Self;
}

/// How a sandbox backend is set up: what every sandbox backend shares (name, warm pool,
/// interpreters, scratch dir, extra binds, network, cgroups) and each backend's own knobs
/// (process: `bwrap`, `prlimit`, the host `sh`; gVisor: `runsc` and its platform; Docker:
/// daemon, runtime, base images, static runner, CPUs, user). Knobs of another backend are
/// kept but unused.
///
/// `new(kind)` gives working defaults for `kind`, `from_env(kind)` reads its variables,
/// and [`build`](SandboxSettings::build) checks the values and makes the executor without
/// any I/O.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSettings {
    pub(crate) kind: SandboxKind,
    pub(crate) name: String,
    pub(crate) pool: PoolSettings,
    pub(crate) python: Option<PathBuf>,
    pub(crate) node: Option<PathBuf>,
    pub(crate) scratch_dir: Option<PathBuf>,
    pub(crate) extra_ro_binds: Vec<PathBuf>,
    pub(crate) allow_network: bool,
    pub(crate) cgroups: bool,
    pub(crate) cgroup_parent: String,
    pub(crate) bwrap: Option<PathBuf>,
    pub(crate) prlimit: Option<PathBuf>,
    pub(crate) host_shell: Option<PathBuf>,
    pub(crate) runsc: Option<PathBuf>,
    pub(crate) gvisor_platform: GvisorPlatform,
    pub(crate) docker_host: Option<String>,
    pub(crate) docker_runtime: Option<String>,
    pub(crate) base_images: BTreeMap<RunnerKind, String>,
    pub(crate) static_runner: Option<PathBuf>,
    pub(crate) image_registry: Option<ImageRegistry>,
    pub(crate) cpu_millis: u64,
    pub(crate) user: String,
    pub(crate) runtime_memory_overhead_mb: u64,
    pub(crate) runtime_pids_overhead: u64,
}

impl SandboxSettings {
    /// Defaults for `kind`: tools from `PATH`, no network, and the default pool settings.
    /// - process: stem cells for python and node, 10 s per boot, cgroups where writable
    ///   (under `sopm`), state in `$TMPDIR/sopm-sandbox`.
    /// - gVisor: stem cells for python and node, 15 s per boot, the `ptrace` platform, no
    ///   host cgroups (under `sopm-gvisor` when turned on), state in `$TMPDIR/sopm-gvisor`.
    /// - Docker: the local daemon (`DOCKER_HOST` or the default socket), its default
    ///   runtime, the `sopm/base-*:local` images, the static runner found next to the
    ///   running program or on `PATH`, one CPU per container, user `65534:65534`, stem
    ///   cells for all three runners, 15 s per boot.
    pub fn new(kind: SandboxKind) -> Self {
        let pool =
            match kind {
                SandboxKind::Process => PoolSettings::new(RunnerKind::SCRIPTS)
                    .with_boot_timeout(Duration::from_secs(10)),
                SandboxKind::Gvisor => PoolSettings::new(RunnerKind::SCRIPTS)
                    .with_boot_timeout(Duration::from_secs(15)),
                SandboxKind::Docker => PoolSettings::new(RunnerKind::ALL),
            };
        SandboxSettings {
            kind,
            name: kind.as_str().into(),
            pool,
            python: None,
            node: None,
            scratch_dir: None,
            extra_ro_binds: Vec::new(),
            allow_network: false,
            cgroups: kind == SandboxKind::Process,
            cgroup_parent: match kind {
                SandboxKind::Process => "sopm",
                SandboxKind::Gvisor => "sopm-gvisor",
                SandboxKind::Docker => "sopm-docker",
            }
            .into(),
            bwrap: None,
            prlimit: None,
            host_shell: None,
            runsc: None,
            gvisor_platform: GvisorPlatform::Ptrace,
            docker_host: None,
            docker_runtime: None,
            base_images: RunnerKind::ALL
                .iter()
                .map(|k| (*k, default_base_image(*k).to_string()))
                .collect(),
            static_runner: None,
            image_registry: None,
            cpu_millis: 1000,
            user: "65534:65534".into(),
            runtime_memory_overhead_mb: 0,
            runtime_pids_overhead: 0,
        }
    }

    /// Defaults for `kind` overridden by environment variables. Every kind: `SOPM_PYTHON`,
    /// `SOPM_NODE` and the pool variables of [`PoolSettings::with_vars`].
    /// - process: `SOPM_BWRAP`, `SOPM_PRLIMIT`, `SOPM_SANDBOX_SCRATCH_DIR`,
    ///   `SOPM_ALLOW_NETWORK` (`true`/`false`), `SOPM_CGROUPS` (`true`/`false`),
    ///   `SOPM_SANDBOX_CPU_MILLIS`.
    /// - gVisor: `SOPM_RUNSC`, `SOPM_GVISOR_PLATFORM` (`ptrace`/`systrap`/`kvm`),
    ///   `SOPM_GVISOR_SCRATCH_DIR`, `SOPM_GVISOR_CGROUPS` (`true`/`false`),
    ///   `SOPM_GVISOR_CPU_MILLIS`.
    /// - Docker: `SOPM_DOCKER_HOST`, `SOPM_DOCKER_RUNTIME`, `SOPM_DOCKER_IMAGE_PYTHON`,
    ///   `SOPM_DOCKER_IMAGE_NODE`, `SOPM_DOCKER_IMAGE_STATIC`, `SOPM_STATIC_RUNNER`,
    ///   `SOPM_DOCKER_CPUS` (CPUs per container, such as `1.5`), and the registry
    ///   function images are pushed to: `SOPM_DOCKER_REGISTRY`, `SOPM_DOCKER_REPOSITORY`,
    ///   `SOPM_DOCKER_REGISTRY_USER`, `SOPM_DOCKER_REGISTRY_PASSWORD`
    ///   ([`ImageRegistry::from_vars`]).
    ///
    /// An unparsable number, flag or platform is `invalid_input`.
    pub fn from_env(kind: SandboxKind) -> Result<Self> {
        Self::from_vars(kind, |k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) with the variables of `var`.
    pub(crate) fn from_vars(
        kind: SandboxKind,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let mut c = Self::new(kind);
        c.python = path_var(&var, "SOPM_PYTHON").or(c.python);
        c.node = path_var(&var, "SOPM_NODE").or(c.node);
        match kind {
            SandboxKind::Process => {
                c.bwrap = path_var(&var, "SOPM_BWRAP").or(c.bwrap);
                c.prlimit = path_var(&var, "SOPM_PRLIMIT").or(c.prlimit);
                c.scratch_dir = path_var(&var, "SOPM_SANDBOX_SCRATCH_DIR").or(c.scratch_dir);
                if let Some(allow) = parse_var(&var, "SOPM_ALLOW_NETWORK")? {
                    c.allow_network = allow;
                }
                if let Some(enabled) = parse_var(&var, "SOPM_CGROUPS")? {
                    c.cgroups = enabled;
                }
                if let Some(millis) = parse_var(&var, "SOPM_SANDBOX_CPU_MILLIS")? {
                    c.cpu_millis = millis;
                }
            }
            SandboxKind::Gvisor => {
                c.runsc = path_var(&var, "SOPM_RUNSC").or(c.runsc);
                c.scratch_dir = path_var(&var, "SOPM_GVISOR_SCRATCH_DIR").or(c.scratch_dir);
                if let Some(v) = var("SOPM_GVISOR_PLATFORM") {
                    c.gvisor_platform = v.parse()?;
                }
                if let Some(enabled) = parse_var(&var, "SOPM_GVISOR_CGROUPS")? {
                    c.cgroups = enabled;
                }
                if let Some(millis) = parse_var(&var, "SOPM_GVISOR_CPU_MILLIS")? {
                    c.cpu_millis = millis;
                }
            }
            SandboxKind::Docker => {
                let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
                if let Some(h) = set("SOPM_DOCKER_HOST") {
                    c.docker_host = Some(h);
                }
                if let Some(r) = set("SOPM_DOCKER_RUNTIME") {
                    c = c.with_docker_runtime(r);
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
                c.image_registry = ImageRegistry::from_vars(&var)?;
                if let Some(cpus) = parse_var::<f64>(&var, "SOPM_DOCKER_CPUS")? {
                    c.cpu_millis = if cpus.is_finite() && cpus > 0.0 {
                        (cpus * 1000.0).round() as u64
                    } else {
                        0
                    };
                }
            }
        }
        c.pool = c.pool.with_vars(var)?;
        Ok(c)
    }

    /// The backend these settings are for.
    pub fn kind(&self) -> SandboxKind {
        self.kind
    }

    /// The executor's name in stats, job records and container labels (default: the
    /// kind's, such as `process`).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The warm-pool settings (stem cells, caps, idle TTL, stem limits, inline code size,
    /// boot timeout). On gVisor, a function whose rlimits differ from the stem limits gets
    /// a dedicated sandbox.
    pub fn with_pool(mut self, pool: PoolSettings) -> Self {
        self.pool = pool;
        self
    }

    /// The warm-pool settings, to adjust.
    pub fn pool_mut(&mut self) -> &mut PoolSettings {
        &mut self.pool
    }

    /// The `python3` to use on the host (process, gVisor; a pyenv shim is resolved to the
    /// real interpreter).
    pub fn with_python(mut self, path: impl Into<PathBuf>) -> Self {
        self.python = Some(path.into());
        self
    }

    /// The `node` to use on the host (process, gVisor).
    pub fn with_node(mut self, path: impl Into<PathBuf>) -> Self {
        self.node = Some(path.into());
        self
    }

    /// Where instance state goes (process: the runner files; gVisor: bundles, runsc state,
    /// the root skeleton and the runners). Must not be the server's data directory itself.
    pub fn with_scratch_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.scratch_dir = Some(dir.into());
        self
    }

    /// An extra host directory every sandbox sees read-only at the same path (an
    /// interpreter installed outside `/usr`, say; process, gVisor).
    pub fn with_extra_ro_bind(mut self, dir: impl Into<PathBuf>) -> Self {
        self.extra_ro_binds.push(dir.into());
        self
    }

    /// Whether functions that ask for network get the host's network (process only; the
    /// other backends give sandboxes no network, and refuse `true`).
    pub fn with_allow_network(mut self, allow: bool) -> Self {
        self.allow_network = allow;
        self
    }

    /// Whether sandboxes get host cgroups for memory and process limits (process: default
    /// true, used where writable; gVisor: default false, runsc puts each sandbox in one
    /// with room for gVisor's own kernel).
    pub fn with_cgroups(mut self, enabled: bool) -> Self {
        self.cgroups = enabled;
        self
    }

    /// The cgroup under which sandbox cgroups are made (default `sopm`, or `sopm-gvisor`).
    pub fn with_cgroup_parent(mut self, name: impl Into<String>) -> Self {
        self.cgroup_parent = name.into();
        self
    }

    /// The `bwrap` to use (process).
    pub fn with_bwrap(mut self, path: impl Into<PathBuf>) -> Self {
        self.bwrap = Some(path.into());
        self
    }

    /// The `prlimit` to use (process).
    pub fn with_prlimit(mut self, path: impl Into<PathBuf>) -> Self {
        self.prlimit = Some(path.into());
        self
    }

    /// The host `sh` that joins sandbox cgroups (process).
    pub fn with_host_shell(mut self, path: impl Into<PathBuf>) -> Self {
        self.host_shell = Some(path.into());
        self
    }

    /// The `runsc` to use (gVisor).
    pub fn with_runsc(mut self, path: impl Into<PathBuf>) -> Self {
        self.runsc = Some(path.into());
        self
    }

    /// The gVisor platform (default `ptrace`).
    pub fn with_gvisor_platform(mut self, platform: GvisorPlatform) -> Self {
        self.gvisor_platform = platform;
        self
    }

    /// The Docker daemon address (`unix:///var/run/docker.sock`, `tcp://host:2375`);
    /// default: `DOCKER_HOST` or the local socket.
    pub fn with_docker_host(mut self, host: impl Into<String>) -> Self {
        self.docker_host = Some(host.into());
        self
    }

    /// The OCI runtime of Docker containers (`runc`, or `runsc` for gVisor, registered in
    /// the daemon's `runtimes`); default: the daemon's default. Under `runsc` each
    /// container gets 128 MiB of memory and 256 processes more than the function's limits,
    /// for gVisor's own kernel, which the host cgroup counts too.
    pub fn with_docker_runtime(mut self, runtime: impl Into<String>) -> Self {
        let runtime = runtime.into();
        let gvisor = runtime == "runsc";
        self.runtime_memory_overhead_mb = if gvisor { 128 } else { 0 };
        self.runtime_pids_overhead = if gvisor { 256 } else { 0 };
        self.docker_runtime = Some(runtime);
        self
    }

    /// The Docker base image of a runner's containers (any image with `/bin/sh`, plus
    /// `python3` or `node` on `PATH` for those runners).
    pub fn with_base_image(mut self, runner: RunnerKind, image: impl Into<String>) -> Self {
        self.base_images.insert(runner, image.into());
        self
    }

    /// The static runner executable copied into Docker static runner images.
    pub fn with_static_runner(mut self, path: impl Into<PathBuf>) -> Self {
        self.static_runner = Some(path.into());
        self
    }

    /// The registry the docker builder pushes function images to (the version then
    /// records `host/repository@sha256:<digest>`) and every node's docker executor pulls
    /// them from; default: none (images stay in the local daemon, one node).
    pub fn with_image_registry(mut self, registry: ImageRegistry) -> Self {
        self.image_registry = Some(registry);
        self
    }

    /// The CPU share of each sandbox in thousandths of one core (default 1000: one core),
    /// the sandbox's own kernel included: a cgroup CPU quota for process sandboxes where
    /// the `cpu` controller is writable, for gVisor sandboxes with host cgroups on, and
    /// `--cpus` for Docker containers.
    pub fn with_cpu_millis(mut self, millis: u64) -> Self {
        self.cpu_millis = millis;
        self
    }

    /// The user Docker containers run as (`uid:gid`; default `65534:65534`).
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// Where this backend keeps its state: the configured scratch dir, else
    /// `$TMPDIR/sopm-sandbox` (process) or `$TMPDIR/sopm-gvisor` (gVisor).
    pub fn scratch_dir(&self) -> PathBuf {
        let default = match self.kind {
            SandboxKind::Gvisor => "sopm-gvisor",
            SandboxKind::Process | SandboxKind::Docker => "sopm-sandbox",
        };
        self.scratch_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(default))
    }

    /// Why these settings cannot work, if they cannot.
    pub fn problem(&self) -> Option<&'static str> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Some("name must be letters, digits, '-', '_' or '.'");
        }
        if let Some(problem) = self.pool.problem() {
            return Some(problem);
        }
        if self.allow_network && self.kind != SandboxKind::Process {
            return Some("this backend gives sandboxes no network: allow_network must be false");
        }
        if self.cgroup_parent.is_empty()
            || self.cgroup_parent.contains('/')
            || self.cgroup_parent.starts_with('.')
        {
            return Some("cgroup_parent must be a plain directory name");
        }
        let paths = [
            &self.python,
            &self.node,
            &self.scratch_dir,
            &self.bwrap,
            &self.prlimit,
            &self.host_shell,
            &self.runsc,
            &self.static_runner,
        ];
        if paths.into_iter().flatten().any(|p| !p.is_absolute())
            || self.extra_ro_binds.iter().any(|p| !p.is_absolute())
        {
            return Some("paths must be absolute");
        }
        if !(10..=1_024_000).contains(&self.cpu_millis) {
            return Some("cpu_millis must be between 10 and 1024000");
        }
        if self.user.is_empty() {
            return Some("user must not be empty");
        }
        if self.base_images.values().any(|i| i.trim().is_empty()) {
            return Some("base images must not be empty");
        }
        None
    }

    /// Checks the settings and makes the executor of backend `L` (no I/O: tools and
    /// daemons are found on first use). Settings of another kind than `L`'s, or values
    /// that cannot work, are `invalid_input` naming the backend.
    pub fn build<L: SandboxBackend>(self) -> Result<SandboxExecutor<L>> {
        let bad = |m: &str| Err(Error::invalid(format!("{} executor: {m}", L::KIND)));
        if self.kind != L::KIND {
            return bad(&format!("these are settings for the {} backend", self.kind));
        }
        if let Some(problem) = self.problem() {
            return bad(problem);
        }
        let pool_config = self.pool.pool_config(&self.name, self.allow_network);
        Ok(SandboxExecutor::new(WarmPool::new(
            L::from_settings(self),
            pool_config,
        )))
    }
}
