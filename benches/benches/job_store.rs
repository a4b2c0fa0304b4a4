//! Job store throughput: records as the scheduler writes them (queued, then
//! finished), durable and buffered, from 64 concurrent tasks, for SQLite (group
//! commit, synchronous=FULL and NORMAL) and memory.
//!
//! Run with: cargo bench -p benches --bench job_store

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use sopm_backends::sqlite::{SqliteConfig, Synchronous};
use sopm_core::{Durability, FunctionRef, Job, JobStatus, JobStore, MemoryJobStore, TenantId};

const TASKS: usize = 64;

fn job() -> Job {
    Job::new(
        TenantId::default(),
        FunctionRef::builtin("math.add"),
        Arc::new(json!({"a": 2, "b": 3})),
        30_000,
    )
}

/// Runs `n` jobs through the store from `TASKS` tasks: an insert with `insert`
/// durability, then a buffered completion.
async fn run(store: Arc<dyn JobStore>, n: u64, insert: Durability) -> Duration {
    let start = Instant::now();
    let per_task = (n as usize).div_ceil(TASKS);
    let mut handles = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..per_task {
                let mut j = job();
                store.put(&j, insert).await.expect("insert");
                j.status = JobStatus::Succeeded;
                j.output = Some(json!(5));
                store.put(&j, Durability::Buffered).await.expect("complete");
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    store.flush().await.expect("flush");
    start.elapsed()
}

fn job_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let full: Arc<dyn JobStore> = Arc::new(
        SqliteConfig::new(dir.path().join("full.db"))
            .with_synchronous(Synchronous::Full)
            .open()
            .expect("open"),
    );
    let normal: Arc<dyn JobStore> = Arc::new(
        SqliteConfig::new(dir.path().join("normal.db"))
            .with_synchronous(Synchronous::Normal)
            .open()
            .expect("open"),
    );
    let memory: Arc<dyn JobStore> = Arc::new(MemoryJobStore::new());

    let mut g = c.benchmark_group("job_store");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    for (name, store, insert) in [
        (
            "sqlite_full/durable_insert+complete",
            &full,
            Durability::Durable,
        ),
        (
            "sqlite_full/buffered_insert+complete",
            &full,
            Durability::Buffered,
        ),
        (
            "sqlite_normal/durable_insert+complete",
            &normal,
            Durability::Durable,
        ),
        ("memory/insert+complete", &memory, Durability::Durable),
    ] {
        g.bench_function(name, |b| {
            b.to_async(&rt)
                .iter_custom(|iters| run(store.clone(), iters.max(TASKS as u64), insert))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = job_store
}
criterion_main!(benches);
