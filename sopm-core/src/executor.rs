//! The `Executor` trait and what it is given: an `Invocation` of a resolved `Target`;
//! it runs one and reports its pool.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Result;
use crate::registry::FunctionVersion;
use crate::types::{JobId, Output, TenantId};

/// One call of one function, as an executor receives it.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The job this call belongs to.
    pub job_id: JobId,
    /// The caller's tenant.
    pub tenant: TenantId,
    /// What to run, resolved.
    pub target: Target,
    /// The input.
    pub input: Arc<Value>,
    /// When the call must be finished. Executors should stop work past it; the
    /// scheduler abandons the call at this instant regardless.
    pub deadline: Instant,
}

impl Invocation {
    /// Time left before the deadline (zero if passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// A resolved function, ready for an executor.
#[derive(Debug, Clone)]
pub enum Target {
    /// A built-in by name.
    Builtin(Arc<str>),
    /// One version of a user function, with its artifact.
    User(Arc<FunctionVersion>),
}

/// How a built-in function describes itself in the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionInfo {
    /// The public name (`math.add`).
    pub name: String,
    /// `math`, `text`, `data` or `util`.
    pub category: String,
    /// One line saying what it does.
    pub description: String,
    /// JSON Schema (draft 2020-12) of its input.
    pub input_schema: Value,
    /// One example call.
    pub example: Example,
    /// Whether the same input always gives the same output.
    pub deterministic: bool,
}

/// An example input and the output it gives (checked by a test).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The input.
    pub input: Value,
    /// The output (for a non-deterministic function, one possible output).
    pub output: Value,
}

/// Warm-pool figures of one executor (or one function within it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolStats {
    /// Which pool (executor name, or executor/function).
    pub pool: String,
    /// Instances booted with no code yet (stem cells).
    pub stem_cells: u64,
    /// Instances specialised for a function, idle.
    pub idle: u64,
    /// Instances running an invocation now.
    pub busy: u64,
    /// Instances started since the executor was created.
    pub started_total: u64,
    /// Instances that crashed or broke a limit and were replaced.
    pub replaced_total: u64,
    /// Instances stopped for being idle past the TTL.
    pub reaped_total: u64,
}

/// Runs invocations. Implementations: built-ins in-process (`sopm-functions`), and
/// sandboxes (`sopm-backends`: process, gvisor, docker, kubernetes).
///
/// Contract:
/// - [`invoke`](Executor::invoke) returns the function's output, or an [`Error`](crate::Error)
///   whose code says what went wrong (`invalid_input`, `function_error`, `timeout`,
///   `out_of_memory`, `output_too_large`, `sandbox_crashed`, ...).
/// - It should stop at [`Invocation::deadline`]; the scheduler stops waiting at that
///   instant anyway and drops the future.
/// - Cancellation: the future may be dropped at any await point (deadline, cancel,
///   shutdown). The executor must then not leak the instance: it kills or recycles it.
/// - One instance never runs two functions, nor two invocations at once.
#[async_trait]
pub trait Executor: Debug + Send + Sync + 'static {
    /// A short name (`builtin`, `process`, `gvisor`, `docker`, ...), shown in job
    /// records and stats.
    fn name(&self) -> &str;

    /// Runs one invocation.
    async fn invoke(&self, invocation: Invocation) -> Result<Output>;

    /// The functions this executor provides by itself (the built-ins); empty for
    /// executors of user functions.
    fn catalog(&self) -> &[FunctionInfo] {
        &[]
    }

    /// Warms an instance for a newly ready version so its first call is fast.
    async fn prepare(&self, _version: &FunctionVersion) -> Result<()> {
        Ok(())
    }

    /// Stops and forgets every instance of a function (it was deleted).
    async fn retire(&self, _function_id: &str) -> Result<()> {
        Ok(())
    }

    /// Stops and forgets the instances of one version of a function (retention pruned
    /// it); the function's other versions keep theirs.
    async fn retire_version(&self, _function_id: &str, _version: u32) -> Result<()> {
        Ok(())
    }

    /// Current pool figures.
    fn pool_stats(&self) -> Vec<PoolStats> {
        Vec::new()
    }

    /// Stops every instance; called once at shutdown.
    async fn shutdown(&self) {}
}
