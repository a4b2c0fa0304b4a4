//! The table of named sandbox backends: for each name uploads and settings use, how this
//! host makes its executor, the builder of the artifacts it runs, and how it starts.
//! Adding a backend is its module plus one entry here.

/// Every sandbox backend SOPM knows, by name, whether or not this build includes it
/// (settings naming another are refused; one this build lacks is refused when used).
pub const BACKEND_NAMES: &[&str] = &[
    "process",
    "gvisor",
    "docker",
    "docker-runsc",
    "kubernetes",
    "kubernetes-job",
];

/// The backend of runtimes and functions the settings leave unassigned.
pub const DEFAULT_BACKEND: &str = "process";

#[cfg(feature = "local-build")]
pub use table::*;

#[cfg(feature = "local-build")]
mod table {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use sopm_core::{Builder, Error, Executor, Result};

    #[cfg(any(feature = "process", feature = "gvisor", feature = "docker"))]
    use crate::host::{SandboxKind, SandboxSettings};
    use crate::LocalBuilder;

    /// One sandbox backend, made: its executor, the builder of the artifacts it runs, and
    /// how to boot it early.
    pub struct Backend {
        /// Its name (an upload's `executor`, the values of `[executors]`).
        pub name: &'static str,
        /// Runs its functions.
        pub executor: Arc<dyn Executor>,
        /// Builds the artifacts its executor runs.
        pub builder: Arc<dyn Builder>,
        start: Box<dyn Fn() + Send + Sync>,
    }

    impl Backend {
        /// Boots its stem cells now instead of on first use (needs a tokio runtime).
        pub fn start(&self) {
            (self.start)()
        }
    }

    impl std::fmt::Debug for Backend {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Backend")
                .field("name", &self.name)
                .field("executor", &self.executor.name())
                .finish_non_exhaustive()
        }
    }

    /// What every backend is made from: the server's data directory (state goes under
    /// it unless a `*_SCRATCH_DIR` variable says otherwise) and the shared local builder
    /// (directory artifacts).
    #[derive(Debug, Clone)]
    pub struct BackendContext {
        /// The server's data directory.
        pub data_dir: PathBuf,
        /// Builds directory artifacts (and installs dependencies for image builders).
        pub local_builder: Arc<LocalBuilder>,
    }

    /// Makes a backend from the context; `wanted`: whether the settings use it. `Ok(None)`:
    /// this host cannot offer it and nothing asks for it.
    pub type MakeBackend = fn(&BackendContext, bool) -> Result<Option<Backend>>;

    /// One entry of the table: a name and how to make that backend.
    #[derive(Debug, Clone, Copy)]
    pub struct BackendEntry {
        /// The backend's name (one of [`BACKEND_NAMES`](super::BACKEND_NAMES)).
        pub name: &'static str,
        /// How to make it.
        pub make: MakeBackend,
    }

    /// The sandbox backends this build includes, in the order they are made.
    pub fn backends() -> &'static [BackendEntry] {
        BACKENDS
    }

    const BACKENDS: &[BackendEntry] = &[
        #[cfg(feature = "process")]
        BackendEntry {
            name: "process",
            make: process,
        },
        #[cfg(feature = "gvisor")]
        BackendEntry {
            name: "gvisor",
            make: gvisor,
        },
        #[cfg(feature = "docker")]
        BackendEntry {
            name: "docker",
            make: docker,
        },
        #[cfg(feature = "docker")]
        BackendEntry {
            name: "docker-runsc",
            make: docker_runsc,
        },
        #[cfg(feature = "kubernetes")]
        BackendEntry {
            name: "kubernetes",
            make: kubernetes,
        },
        #[cfg(feature = "kubernetes")]
        BackendEntry {
            name: "kubernetes-job",
            make: kubernetes_job,
        },
    ];

    /// A backend's state directory: `None` when its `*_SCRATCH_DIR` variable is set (the
    /// settings read it), else `<data_dir>/<name>`, absolute.
    #[cfg_attr(not(any(feature = "process", feature = "gvisor")), allow(dead_code))]
    fn scratch_dir(data_dir: &Path, var: &str, name: &str) -> Result<Option<PathBuf>> {
        if std::env::var_os(var).is_some() {
            return Ok(None);
        }
        std::path::absolute(data_dir.join(name))
            .map(Some)
            .map_err(|e| Error::invalid(format!("data directory {}: {e}", data_dir.display())))
    }

    /// The process backend: bubblewrap sandboxes, settings from `SOPM_*` variables
    /// ([`SandboxSettings::from_env`]), state under `<data_dir>/sandboxes`. Always offered.
    #[cfg(feature = "process")]
    fn process(ctx: &BackendContext, _wanted: bool) -> Result<Option<Backend>> {
        let mut settings = SandboxSettings::from_env(SandboxKind::Process)?;
        if let Some(dir) = scratch_dir(&ctx.data_dir, "SOPM_SANDBOX_SCRATCH_DIR", "sandboxes")? {
            settings = settings.with_scratch_dir(dir);
        }
        let process = settings.build::<crate::process::ProcessLauncher>()?;
        let started = process.clone();
        Ok(Some(Backend {
            name: "process",
            executor: Arc::new(process),
            builder: ctx.local_builder.clone(),
            start: Box::new(move || started.start()),
        }))
    }

    /// The gVisor backend: `runsc` sandboxes, settings from `SOPM_*` variables, state
    /// under `<data_dir>/gvisor`. Offered when wanted or `runsc` is found (`SOPM_RUNSC`,
    /// or on `PATH`).
    #[cfg(feature = "gvisor")]
    fn gvisor(ctx: &BackendContext, wanted: bool) -> Result<Option<Backend>> {
        let found = std::env::var_os("SOPM_RUNSC").is_some()
            || std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("runsc").is_file()));
        if !wanted && !found {
            return Ok(None);
        }
        let mut settings = SandboxSettings::from_env(SandboxKind::Gvisor)?;
        if let Some(dir) = scratch_dir(&ctx.data_dir, "SOPM_GVISOR_SCRATCH_DIR", "gvisor")? {
            settings = settings.with_scratch_dir(dir);
        }
        let gvisor = settings.build::<crate::gvisor::GvisorLauncher>()?;
        let started = gvisor.clone();
        Ok(Some(Backend {
            name: "gvisor",
            executor: Arc::new(gvisor),
            builder: ctx.local_builder.clone(),
            start: Box::new(move || started.start()),
        }))
    }

    /// Whether a Docker daemon may be reachable: `SOPM_DOCKER_HOST` or `DOCKER_HOST` set,
    /// or the default socket present.
    #[cfg(feature = "docker")]
    fn docker_configured() -> bool {
        std::env::var_os("SOPM_DOCKER_HOST").is_some()
            || std::env::var_os("DOCKER_HOST").is_some()
            || Path::new("/var/run/docker.sock").exists()
    }

    /// A docker backend named `name`, its containers under `runtime` (`None`: the
    /// daemon's default, or `SOPM_DOCKER_RUNTIME`); settings from `SOPM_*` variables; its
    /// builder makes images over the local builder's artifacts. Offered when wanted or a
    /// daemon may be reachable.
    #[cfg(feature = "docker")]
    fn docker_backend(
        ctx: &BackendContext,
        wanted: bool,
        name: &'static str,
        runtime: Option<&str>,
    ) -> Result<Option<Backend>> {
        if !wanted && !docker_configured() {
            return Ok(None);
        }
        let mut settings = SandboxSettings::from_env(SandboxKind::Docker)?.with_name(name);
        if let Some(runtime) = runtime {
            settings = settings.with_docker_runtime(runtime);
        }
        let docker = settings.build::<crate::docker::DockerLauncher>()?;
        let started = docker.clone();
        Ok(Some(Backend {
            name,
            builder: Arc::new(docker.builder(ctx.local_builder.clone())),
            executor: Arc::new(docker),
            start: Box::new(move || started.start()),
        }))
    }

    /// The docker backend under the daemon's default runtime (runc, or
    /// `SOPM_DOCKER_RUNTIME`).
    #[cfg(feature = "docker")]
    fn docker(ctx: &BackendContext, wanted: bool) -> Result<Option<Backend>> {
        docker_backend(ctx, wanted, "docker", None)
    }

    /// The docker backend with gVisor: containers under the `runsc` runtime, which the
    /// daemon must have registered.
    #[cfg(feature = "docker")]
    fn docker_runsc(ctx: &BackendContext, wanted: bool) -> Result<Option<Backend>> {
        docker_backend(ctx, wanted, "docker-runsc", Some("runsc"))
    }

    /// Whether a Kubernetes API may be reachable: in a pod (`KUBERNETES_SERVICE_HOST`), or
    /// a kubeconfig (`KUBECONFIG`, `~/.kube/config`).
    #[cfg(feature = "kubernetes")]
    fn kubernetes_configured() -> bool {
        std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
            || std::env::var_os("KUBECONFIG").is_some()
            || std::env::var_os("HOME")
                .is_some_and(|h| Path::new(&h).join(".kube/config").is_file())
    }

    /// The warm-pod Kubernetes backend: settings from `SOPM_KUBERNETES_*` and the pool
    /// variables ([`KubernetesSettings::from_env`](crate::kubernetes::KubernetesSettings::from_env)),
    /// the cluster from `kube::Config::infer`. Offered when wanted or a cluster may be
    /// reachable; its artifacts are the local builder's directories, sent in init frames,
    /// and code too big for a frame becomes a function image ([`pod_builder`]).
    #[cfg(feature = "kubernetes")]
    fn kubernetes(ctx: &BackendContext, wanted: bool) -> Result<Option<Backend>> {
        if !wanted && !kubernetes_configured() {
            return Ok(None);
        }
        let settings = crate::kubernetes::KubernetesSettings::from_env()?;
        let builder = pod_builder(ctx, &settings)?;
        let exec = settings.build()?;
        let started = exec.clone();
        Ok(Some(Backend {
            name: "kubernetes",
            executor: Arc::new(exec),
            builder,
            start: Box::new(move || started.start()),
        }))
    }

    /// The builder of the warm-pod backend: with the `docker` feature and
    /// `SOPM_DOCKER_REGISTRY` set, a [`DockerBuilder`](crate::docker::DockerBuilder) that
    /// turns code too big for an init frame into an image over the pods' runner images,
    /// pushed and recorded by digest (pods boot from it); otherwise the local builder
    /// (such code then cannot run in a pod).
    #[cfg(feature = "kubernetes")]
    fn pod_builder(
        ctx: &BackendContext,
        settings: &crate::kubernetes::KubernetesSettings,
    ) -> Result<Arc<dyn Builder>> {
        #[cfg(feature = "docker")]
        {
            let docker = SandboxSettings::from_env(SandboxKind::Docker)?;
            if docker.image_registry.is_some() {
                let builder =
                    crate::docker::DockerBuilder::from_settings(&docker, ctx.local_builder.clone())
                        .for_pods(settings.images.clone(), settings.pool.max_inline_bytes);
                return Ok(Arc::new(builder));
            }
        }
        #[cfg(not(feature = "docker"))]
        let _ = settings;
        Ok(ctx.local_builder.clone())
    }

    /// The Kubernetes Job backend: one Job per call, same settings as `kubernetes`.
    #[cfg(feature = "kubernetes")]
    fn kubernetes_job(ctx: &BackendContext, wanted: bool) -> Result<Option<Backend>> {
        if !wanted && !kubernetes_configured() {
            return Ok(None);
        }
        let exec = crate::kubernetes::KubernetesSettings::from_env()?.build_jobs()?;
        Ok(Some(Backend {
            name: "kubernetes-job",
            executor: Arc::new(exec),
            builder: ctx.local_builder.clone(),
            start: Box::new(|| {}),
        }))
    }

    #[cfg(test)]
    mod tests {
        use super::super::BACKEND_NAMES;
        use super::*;

        #[test]
        fn every_entry_has_a_known_name_once() {
            let names: Vec<&str> = backends().iter().map(|b| b.name).collect();
            for name in &names {
                assert!(BACKEND_NAMES.contains(name), "{name}");
                assert_eq!(names.iter().filter(|n| *n == name).count(), 1, "{name}");
            }
            #[cfg(feature = "process")]
            assert!(names.contains(&super::super::DEFAULT_BACKEND));
        }
    }
}
