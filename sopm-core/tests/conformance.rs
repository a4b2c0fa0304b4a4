//! Runs the conformance checks against the in-memory registry, the in-memory job
//! store and the local scheduler.
//! Run with: cargo test -p sopm-core --features conformance
#![cfg(feature = "conformance")]

use std::sync::Arc;

use sopm_core::conformance::{self, SchedulerHarness};
use sopm_core::{JobStore, MemoryJobStore, MemoryRegistry};

#[tokio::test]
async fn memory_registry_versions_and_tenants() {
    conformance::registry_versions_and_tenants(&MemoryRegistry::new()).await;
}

#[tokio::test]
async fn memory_registry_builds() {
    conformance::registry_builds(&MemoryRegistry::new()).await;
}

#[tokio::test]
async fn memory_registry_delete() {
    conformance::registry_delete(&MemoryRegistry::new()).await;
}

#[tokio::test]
async fn memory_registry_usage_and_version_delete() {
    conformance::registry_usage_and_version_delete(&MemoryRegistry::new()).await;
}

#[tokio::test]
async fn memory_registry_checks_share_one_registry() {
    let registry = MemoryRegistry::new();
    conformance::registry_versions_and_tenants(&registry).await;
    conformance::registry_builds(&registry).await;
    conformance::registry_delete(&registry).await;
}

#[tokio::test]
async fn memory_registry_resolve_version() {
    conformance::registry_resolve_version(&MemoryRegistry::new()).await;
}

#[tokio::test]
async fn memory_job_store_recent_logs() {
    conformance::job_store_recent_logs(&MemoryJobStore::new()).await;
}

#[tokio::test]
async fn memory_job_store_expire_finished() {
    conformance::job_store_expire_finished(&MemoryJobStore::new()).await;
}

#[tokio::test]
async fn memory_job_store_round_trip() {
    conformance::job_store_round_trip(&MemoryJobStore::new()).await;
}

#[tokio::test]
async fn memory_job_store_never_moves_back() {
    conformance::job_store_never_moves_back(&MemoryJobStore::new()).await;
}

#[tokio::test]
async fn memory_job_store_unfinished() {
    conformance::job_store_unfinished(&MemoryJobStore::new()).await;
}

#[tokio::test]
async fn memory_job_store_buffered_then_flush() {
    conformance::job_store_buffered_then_flush(&MemoryJobStore::new()).await;
}

#[tokio::test]
async fn memory_job_store_reads_own_buffered_puts() {
    conformance::job_store_reads_own_buffered_puts(&MemoryJobStore::new()).await;
}

fn harness() -> SchedulerHarness {
    SchedulerHarness::local(|| Arc::new(MemoryJobStore::new()) as Arc<dyn JobStore>)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_scheduler_wait_returns_output() {
    conformance::scheduler_wait_returns_output(&harness()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_scheduler_wait_expires_then_finishes() {
    conformance::scheduler_wait_expires_then_finishes(&harness()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_scheduler_detach() {
    conformance::scheduler_detach(&harness()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_scheduler_call() {
    conformance::scheduler_call(&harness()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_scheduler_records_errors() {
    conformance::scheduler_records_errors(&harness()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_scheduler_timeouts() {
    conformance::scheduler_timeouts(&harness()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_scheduler_cancel() {
    conformance::scheduler_cancel(&harness()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_scheduler_tenant_isolation() {
    conformance::scheduler_tenant_isolation(&harness()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_scheduler_overload() {
    conformance::scheduler_overload(&harness()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_scheduler_stats() {
    conformance::scheduler_stats(&harness()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_scheduler_shutdown() {
    conformance::scheduler_shutdown(&harness()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_scheduler_recover() {
    conformance::scheduler_recover(&harness()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_scheduler_whole_suite() {
    conformance::scheduler_suite(&harness()).await;
}

#[tokio::test(flavor = "current_thread")]
async fn local_scheduler_whole_suite_on_one_thread() {
    conformance::scheduler_suite(&harness()).await;
}

#[tokio::test]
async fn memory_job_store_recent() {
    conformance::job_store_recent_logs(&MemoryJobStore::new()).await;
}

#[tokio::test]
async fn memory_registry_unfinished_builds() {
    conformance::registry_unfinished_builds(&MemoryRegistry::new()).await;
}

#[tokio::test]
async fn memory_key_store() {
    conformance::key_store_suite(&sopm_core::MemoryKeyStore::new()).await;
}

#[tokio::test]
async fn cached_key_store() {
    let inner = Arc::new(sopm_core::MemoryKeyStore::new());
    let cached = sopm_core::CachedKeyStore::new(inner, std::time::Duration::from_secs(60));
    conformance::key_store_suite(&cached).await;
}
