//! Plumbing shared by every sandbox backend: the runner protocol, the runners shipped
//! inside the binary, artifact loading, and the warm pool of instances. A backend
//! (process now; gVisor and Docker later) only implements [`SandboxLauncher`] and
//! [`Sandbox`]: how to boot an isolated runner and how to kill it.

use std::fmt::Debug;
use std::path::PathBuf;

use async_trait::async_trait;
use sopm_core::{Limits, Result};

pub mod artifact;
pub mod pool;
pub mod protocol;
pub mod runners;

pub use artifact::FunctionCode;
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
}
