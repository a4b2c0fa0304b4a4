//! [`SandboxExecutor`]: the one `Executor` over a [`WarmPool`] that every sandbox
//! backend is (`ProcessExecutor`, `GvisorExecutor` and `DockerExecutor` are this type
//! with their own launcher).

use async_trait::async_trait;
use sopm_core::{Executor, FunctionVersion, Invocation, Output, PoolStats, Result};

use super::pool::{PoolCounters, WarmPool};
use super::SandboxLauncher;

/// Runs user functions in the sandboxes of the launcher `L`, behind a warm pool.
#[derive(Debug)]
pub struct SandboxExecutor<L: SandboxLauncher> {
    pub(crate) pool: WarmPool<L>,
}

impl<L: SandboxLauncher> Clone for SandboxExecutor<L> {
    fn clone(&self) -> Self {
        SandboxExecutor {
            pool: self.pool.clone(),
        }
    }
}

impl<L: SandboxLauncher> SandboxExecutor<L> {
    /// The executor over `pool` (a backend's `build()` makes one).
    pub fn new(pool: WarmPool<L>) -> Self {
        SandboxExecutor { pool }
    }

    /// Starts the background work (stem cells, reaping) now instead of on the first call.
    /// Needs a tokio runtime.
    pub fn start(&self) {
        self.pool.start();
    }

    /// Life counters of the pool (stem cells used, cold starts, ...).
    pub fn counters(&self) -> PoolCounters {
        self.pool.counters()
    }

    /// The launcher of this executor's sandboxes.
    pub fn launcher(&self) -> &L {
        self.pool.launcher()
    }
}

#[async_trait]
impl<L: SandboxLauncher> Executor for SandboxExecutor<L> {
    fn name(&self) -> &str {
        &self.pool.config().name
    }

    async fn invoke(&self, invocation: Invocation) -> Result<Output> {
        self.pool.run(invocation).await
    }

    async fn prepare(&self, version: &FunctionVersion) -> Result<()> {
        self.pool.prepare(version).await
    }

    async fn retire(&self, function_id: &str) -> Result<()> {
        self.pool.retire(function_id).await;
        Ok(())
    }

    async fn retire_version(&self, function_id: &str, version: u32) -> Result<()> {
        self.pool.retire_version(function_id, version).await;
        Ok(())
    }

    fn pool_stats(&self) -> Vec<PoolStats> {
        self.pool.stats()
    }

    async fn shutdown(&self) {
        self.pool.shutdown().await;
        self.pool.launcher().after_shutdown().await;
    }
}
