//! Plumbing shared by every sandbox backend: the runner protocol, the runners shipped
//! inside the binary, artifact loading, the warm pool of instances and the executor over
//! it. A backend (process, gVisor, Docker) only implements [`SandboxLauncher`] and
//! [`Sandbox`]: how to boot an isolated runner and how to kill it; what it needs from the
//! host machine (mounts, rlimits, cgroups, runner files, tools, settings) is in
//! [`crate::host`].

use std::fmt::Debug;
use std::path::PathBuf;

use async_trait::async_trait;
use sopm_core::{Artifact, Error, Limits, Result, Runtime};

pub mod artifact;
pub mod executor;
pub mod pool;
pub mod protocol;
pub mod runners;

pub use artifact::FunctionCode;
pub use executor::SandboxExecutor;
pub use pool::{PoolConfig, PoolCounters, WarmPool};
pub use protocol::RunnerChannel;
pub use runners::RunnerKind;

/// Where a function's code lives inside every sandbox.
pub const CODE_DIR: &str = "/fn";

/// What to boot.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    /// Which runner to start.
    pub runner: RunnerKind,
    /// The limits to boot with: the pool's stem limits for a stem cell, the function's
    /// own for a dedicated instance.
    pub limits: Limits,
    /// Whether the sandbox gets the host's network (already checked against policy).
    pub network: bool,
    /// A directory to mount read-only at [`CODE_DIR`] (a dedicated instance of a function
    /// too big for an init frame); `None` gives a small private writable code dir that
    /// the runner fills from the init frame.
    pub mount: Option<PathBuf>,
    /// A container image holding the function's code at [`CODE_DIR`] (container
    /// backends: a function too big for an init frame, built into an image).
    pub image: Option<String>,
}

impl LaunchSpec {
    /// Refuses what only container backends can boot (the static runner, an image), for
    /// the host backend `backend`.
    pub fn check_host_backend(&self, backend: &str) -> Result<()> {
        if self.runner == RunnerKind::Static {
            return Err(Error::invalid(format!(
                "the {backend} backend runs shell and binary functions under the python runner, not the static runner"
            )));
        }
        if let Some(image) = &self.image {
            return Err(Error::invalid(format!(
                "the {backend} backend cannot run the container image '{image}'"
            )));
        }
        Ok(())
    }
}

/// How a sandbox ended, as far as its backend can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Death {
    /// The host killed it (it was still running).
    Killed,
    /// The kernel killed it for going past its memory limit.
    OutOfMemory,
    /// It went past its CPU-time limit.
    CpuLimit,
    /// It exited by itself; how.
    Exited(String),
}

/// One running sandbox with a runner inside. Dropping it must kill it (the pool drops
/// instances of cancelled invocations).
#[async_trait]
pub trait Sandbox: Debug + Send + 'static {
    /// The runner's frame and log channel.
    fn channel(&mut self) -> &mut RunnerChannel;

    /// Changes the limits of a booted sandbox from `from` (what it was launched with) to
    /// `to` (a function's), before the function's code loads. An error means it cannot:
    /// the pool then launches a dedicated sandbox instead.
    async fn set_limits(&mut self, from: &Limits, to: &Limits) -> Result<()>;

    /// Whether the sandbox is still running (checked before an idle instance is reused).
    fn is_alive(&mut self) -> bool;

    /// Records the current state as clean (called once the function is loaded).
    fn mark_clean(&mut self);

    /// Whether the kernel killed a process of the sandbox for memory since it was marked
    /// clean (a child of the runner, say, while the runner lived on).
    fn memory_exceeded(&mut self) -> bool;

    /// Whether the sandbox is still as clean as when marked: no process left behind by
    /// the last invocation. A sandbox that is not clean is not reused.
    fn is_clean(&mut self) -> bool;

    /// After the runner's channel failed: waits a moment for the sandbox to end by itself,
    /// kills it if it has not, and says how it ended (to tell a memory kill from a crash).
    async fn post_mortem(&mut self) -> Death;

    /// Kills the sandbox now and releases what it holds. Idempotent.
    async fn terminate(&mut self);
}

/// Boots sandboxes of one backend.
#[async_trait]
pub trait SandboxLauncher: Debug + Send + Sync + 'static {
    /// The sandboxes it makes.
    type Sandbox: Sandbox;

    /// Boots a sandbox and waits until its runner says hello.
    async fn launch(&self, spec: &LaunchSpec) -> Result<Self::Sandbox>;

    /// Called after the pool shut down (every instance terminated): releases what the
    /// backend holds beyond its sandboxes. Default: nothing.
    async fn after_shutdown(&self) {}

    /// The runner that runs functions of `runtime` in this backend's sandboxes; `None`
    /// for built-ins. Default: [`RunnerKind::for_runtime`].
    fn runner_for(&self, runtime: Runtime) -> Option<RunnerKind> {
        RunnerKind::for_runtime(runtime)
    }

    /// Loads a function's code from its artifact. Default: directory artifacts only,
    /// inline up to `max_inline_bytes`, else mounted.
    async fn load_code(&self, artifact: &Artifact, max_inline_bytes: u64) -> Result<FunctionCode> {
        match artifact {
            Artifact::Directory { path, .. } => {
                load_directory(PathBuf::from(path), max_inline_bytes).await
            }
            other => Err(Error::invalid(format!(
                "this executor runs directory artifacts, not {other:?}"
            ))),
        }
    }
}

/// Loads an artifact directory on the blocking pool (see [`artifact::load_code`]).
pub async fn load_directory(dir: PathBuf, max_inline_bytes: u64) -> Result<FunctionCode> {
    tokio::task::spawn_blocking(move || artifact::load_code(&dir, max_inline_bytes))
        .await
        .map_err(|e| Error::Internal(format!("artifact loader panicked: {e}")))?
        .map_err(|e| Error::Internal(format!("cannot read the artifact: {e}")))
}
