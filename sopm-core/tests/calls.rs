//! `LocalScheduler::call`, the path of `Platform::execute`: a built-in's call writes no
//! job record (nobody could look it up), and a call whose caller goes away is counted
//! `cancelled` and gives its slot back.
//! Run with: cargo test -p sopm-core --features conformance --test calls
#![cfg(feature = "conformance")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;
use sopm_core::conformance::{conformance_dispatcher, ConformanceExecutor, ConformanceRouter};
use sopm_core::jobstore::JobLogEntry;
use sopm_core::{
    Durability, FunctionRef, Job, JobId, JobRequest, JobStore, LocalScheduler,
    LocalSchedulerConfig, MemoryJobStore, Result, Scheduler, SchedulerStats, SubmitMode, TenantId,
};

/// A [`MemoryJobStore`] that counts writes.
#[derive(Debug, Default)]
struct CountingStore {
    inner: MemoryJobStore,
    puts: AtomicUsize,
}

#[async_trait]
impl JobStore for CountingStore {
    async fn put(&self, job: &Job, durability: Durability) -> Result<()> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put(job, durability).await
    }
    async fn get(&self, id: &JobId) -> Result<Option<Job>> {
        self.inner.get(id).await
    }
    async fn unfinished(&self) -> Result<Vec<Job>> {
        self.inner.unfinished().await
    }
    async fn recent_logs(
        &self,
        tenant: &TenantId,
        function_id: &str,
        limit: usize,
    ) -> Result<Vec<JobLogEntry>> {
        self.inner.recent_logs(tenant, function_id, limit).await
    }
    async fn expire_finished(&self, cutoff_ms: u64, max: usize) -> Result<u64> {
        self.inner.expire_finished(cutoff_ms, max).await
    }
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
}

fn scheduler(store: Arc<CountingStore>, max_concurrency: usize) -> LocalScheduler {
    LocalScheduler::new(
        LocalSchedulerConfig {
            max_concurrency,
            queue_capacity: 4,
            max_running_per_tenant: Some(max_concurrency),
            ..LocalSchedulerConfig::default()
        },
        Arc::new(ConformanceRouter::new()),
        conformance_dispatcher(Arc::new(ConformanceExecutor::new())),
        store,
    )
}

fn request(function: &str, input: serde_json::Value) -> JobRequest {
    JobRequest::new(TenantId::default(), FunctionRef::builtin(function), input)
}

async fn settle(s: &LocalScheduler, done: impl Fn(&SchedulerStats) -> bool) -> SchedulerStats {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let st = s.stats();
        if done(&st) || Instant::now() > until {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builtin_call_writes_no_job_record() {
    let store = Arc::new(CountingStore::default());
    let s = scheduler(store.clone(), 4);
    for i in 0..10 {
        let out = s.call(request("echo", json!(i))).await.expect("call");
        assert_eq!(out.value, json!(i));
    }
    let err = s
        .call(request("fail", json!({})))
        .await
        .expect_err("a failing call");
    assert_eq!(err.code(), "function_error");
    assert_eq!(
        store.puts.load(Ordering::SeqCst),
        0,
        "calls nobody can look up are not recorded"
    );
    assert_eq!(s.stats().succeeded, 10, "but they are counted");

    // A waiting submission answers a job id, so its job is recorded.
    s.submit(request("echo", json!("kept")), SubmitMode::Wait(None))
        .await
        .expect("submit");
    assert!(store.puts.load(Ordering::SeqCst) >= 1, "a job is recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_is_counted_cancelled_and_frees_its_slot() {
    let s = scheduler(Arc::new(CountingStore::default()), 1);
    let call = tokio::spawn({
        let s = s.clone();
        async move { s.call(request("slow", json!({}))).await }
    });
    let st = settle(&s, |st| st.running == 1).await;
    assert_eq!(st.running, 1, "the slow call runs");
    call.abort();
    let st = settle(&s, |st| st.running == 0 && st.cancelled == 1).await;
    assert_eq!(
        (st.running, st.cancelled, st.latency.count),
        (0, 1, 1),
        "a dropped call ends counted as cancelled"
    );
    let out = tokio::time::timeout(Duration::from_secs(10), s.call(request("echo", json!(2))))
        .await
        .expect("the only slot is free again")
        .expect("call");
    assert_eq!(out.value, json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_while_queued_leaves_the_queue() {
    let s = scheduler(Arc::new(CountingStore::default()), 1);
    let running = tokio::spawn({
        let s = s.clone();
        async move { s.call(request("slow", json!({}))).await }
    });
    settle(&s, |st| st.running == 1).await;
    let queued = tokio::spawn({
        let s = s.clone();
        async move { s.call(request("echo", json!(1))).await }
    });
    let st = settle(&s, |st| st.queue_depth == 1).await;
    assert_eq!(st.queue_depth, 1, "the second call waits for the only slot");
    queued.abort();
    let st = settle(&s, |st| st.queue_depth == 0).await;
    assert_eq!(
        st.queue_depth, 0,
        "a caller gone while queued holds no place in the queue"
    );
    // A tenant may queue two here (half the queue of four): both places are free again.
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.call(request("echo", json!(i))).await })
        })
        .collect();
    let st = settle(&s, |st| st.queue_depth == 2).await;
    assert_eq!(st.queue_depth, 2);
    running.abort();
    for (i, w) in waiting.into_iter().enumerate() {
        let out = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("each queued call runs once the slot is free")
            .expect("joined")
            .expect("call");
        assert_eq!(out.value, json!(i));
    }
}
