//! The Redis job store and queue against a real `redis-server` (its own port and data
//! directory per test, AOF `appendfsync always`): the job store conformance checks,
//! the queue's leases, fencing and dead letters, and the cluster scheduler.
//! Run with: SOPM_REQUIRE_INTEGRATION=1 cargo test -p sopm-backends --features redis --test redis_queue
#![cfg(feature = "redis")]

#[path = "support/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;
use sopm_backends::redis::{RedisConfig, RedisConnection, RedisJobStore};
use sopm_core::conformance;

fn job_store(server: &RedisServer) -> RedisJobStore {
    RedisJobStore::new(RedisConnection::new(RedisConfig::new(server.url())).expect("connection"))
}

// --- job store conformance -----------------------------------------------------------

macro_rules! job_store_check {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(server) = RedisServer::start(stringify!($name)) else {
                return;
            };
            conformance::$name(&job_store(&server)).await;
        }
    };
}

job_store_check!(job_store_round_trip);
job_store_check!(job_store_never_moves_back);
job_store_check!(job_store_unfinished);
job_store_check!(job_store_buffered_then_flush);
job_store_check!(job_store_reads_own_buffered_puts);
job_store_check!(job_store_recent_logs);
job_store_check!(job_store_expire_finished);

/// Every job store check on one server, so they also hold next to each other's jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_store_checks_share_one_server() {
    let Some(server) = RedisServer::start("job_store_checks_share_one_server") else {
        return;
    };
    let store = job_store(&server);
    conformance::job_store_round_trip(&store).await;
    conformance::job_store_never_moves_back(&store).await;
    conformance::job_store_unfinished(&store).await;
    conformance::job_store_buffered_then_flush(&store).await;
    conformance::job_store_reads_own_buffered_puts(&store).await;
    conformance::job_store_recent_logs(&store).await;
    conformance::job_store_expire_finished(&store).await;
}

fn queued_job(tenant: &str) -> sopm_core::Job {
    sopm_core::Job::new(
        sopm_core::TenantId::new(tenant).unwrap(),
        sopm_core::FunctionRef::builtin("echo"),
        std::sync::Arc::new(serde_json::json!({"n": 1})),
        5_000,
    )
}

/// A put Redis answered survives `kill -9` of Redis (AOF, `appendfsync always`), and
/// while Redis is down every call is `unavailable`, never a hang or a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_store_survives_a_redis_crash_and_says_unavailable_meanwhile() {
    use sopm_core::{Durability, JobStore};
    let Some(mut server) = RedisServer::start("job_store_survives_a_redis_crash") else {
        return;
    };
    let store = job_store(&server);
    let jobs: Vec<_> = (0..50).map(|_| queued_job("crash")).collect();
    for j in &jobs {
        store.put(j, Durability::Durable).await.expect("put");
    }
    server.kill();
    let err = store
        .get(&jobs[0].id)
        .await
        .expect_err("get with redis down");
    assert_eq!(err.code(), "unavailable", "redis down: {err:?}");
    let err = store
        .put(&queued_job("crash"), Durability::Durable)
        .await
        .expect_err("put with redis down");
    assert_eq!(err.code(), "unavailable", "redis down: {err:?}");
    server.restart();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let back = loop {
        match store.get(&jobs[0].id).await {
            Ok(found) => break found,
            Err(e) if std::time::Instant::now() < until => {
                assert_eq!(e.code(), "unavailable");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("redis is back but the store is not: {e:?}"),
        }
    };
    assert_eq!(back.as_ref(), Some(&jobs[0]));
    for j in &jobs {
        assert_eq!(
            store.get(&j.id).await.expect("get").as_ref(),
            Some(j),
            "an acknowledged put survives kill -9 of redis"
        );
    }
    let unfinished = store.unfinished().await.expect("unfinished");
    assert_eq!(unfinished.len(), jobs.len());
}
