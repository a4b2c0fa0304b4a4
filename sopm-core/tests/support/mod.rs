//! Shared by the sopm-core integration tests: a registry that counts what the platform
//! asks of it.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use sopm_core::{
    Artifact, BuildStatus, FunctionRecord, FunctionVersion, MemoryRegistry, NewVersion, Registry,
    Result, TenantId, TenantUsage,
};

/// A [`MemoryRegistry`] that counts reads (every lookup of records, versions or usage)
/// and build-log writes.
#[derive(Debug, Default)]
pub struct CountingRegistry {
    inner: MemoryRegistry,
    reads: AtomicUsize,
    log_writes: AtomicUsize,
}

impl CountingRegistry {
    /// Reads so far.
    #[allow(dead_code)]
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    /// Build-log writes so far.
    #[allow(dead_code)]
    pub fn log_writes(&self) -> usize {
        self.log_writes.load(Ordering::SeqCst)
    }

    fn read(&self) {
        self.reads.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Registry for CountingRegistry {
    async fn create_version(&self, new: NewVersion) -> Result<FunctionVersion> {
        self.inner.create_version(new).await
    }
    async fn get(&self, tenant: &TenantId, id: &str) -> Result<FunctionRecord> {
        self.read();
        self.inner.get(tenant, id).await
    }
    async fn get_by_name(&self, tenant: &TenantId, name: &str) -> Result<FunctionRecord> {
        self.read();
        self.inner.get_by_name(tenant, name).await
    }
    async fn resolve_version(
        &self,
        tenant: &TenantId,
        id_or_name: &str,
        version: Option<u32>,
    ) -> Result<FunctionVersion> {
        self.read();
        self.inner
            .resolve_version(tenant, id_or_name, version)
            .await
    }
    async fn list(&self, tenant: &TenantId) -> Result<Vec<FunctionRecord>> {
        self.read();
        self.inner.list(tenant).await
    }
    async fn append_build_log(&self, id: &str, version: u32, chunk: &str) -> Result<()> {
        self.log_writes.fetch_add(1, Ordering::SeqCst);
        self.inner.append_build_log(id, version, chunk).await
    }
    async fn finish_build(
        &self,
        id: &str,
        version: u32,
        status: BuildStatus,
        artifact: Option<Artifact>,
    ) -> Result<()> {
        self.inner.finish_build(id, version, status, artifact).await
    }
    async fn delete(&self, tenant: &TenantId, id: &str) -> Result<FunctionRecord> {
        self.inner.delete(tenant, id).await
    }
    async fn unfinished_builds(&self) -> Result<Vec<FunctionVersion>> {
        self.read();
        self.inner.unfinished_builds().await
    }
    async fn tenant_usage(&self, tenant: &TenantId) -> Result<TenantUsage> {
        self.read();
        self.inner.tenant_usage(tenant).await
    }
    async fn record_artifact_bytes(&self, id: &str, version: u32, bytes: u64) -> Result<()> {
        self.inner.record_artifact_bytes(id, version, bytes).await
    }
    async fn delete_version(
        &self,
        tenant: &TenantId,
        id: &str,
        version: u32,
    ) -> Result<FunctionVersion> {
        self.inner.delete_version(tenant, id, version).await
    }
}
