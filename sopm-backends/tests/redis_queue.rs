//! The Redis job store and queue against a real `redis-server` (its own port and data
//! directory per test, AOF `appendfsync always`): the job store conformance checks,
//! the queue's leases, fencing and dead letters, and the cluster scheduler.
//! Run with: SOPM_REQUIRE_INTEGRATION=1 cargo test -p sopm-backends --features redis --test redis_queue
#![cfg(feature = "redis")]

#[path = "support/programs.rs"]
mod programs;
#[path = "support/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;
use sopm_backends::redis::{RedisConfig, RedisJobStore};
use sopm_core::conformance;

async fn job_store(server: &RedisServer) -> RedisJobStore {
    RedisJobStore::new(
        RedisConfig::new(server.url())
            .connect()
            .await
            .expect("connection"),
    )
}

// --- job store conformance -----------------------------------------------------------

macro_rules! job_store_check {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(server) = RedisServer::start(stringify!($name)) else {
                return;
            };
            conformance::$name(&job_store(&server).await).await;
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
    let store = job_store(&server).await;
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
    let store = job_store(&server).await;
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

// --- the queue layer -----------------------------------------------------------------

mod queue {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use futures::StreamExt;
    use serde_json::json;
    use sopm_backends::redis::queue::{Admission, Claimed, JobQueue, Lease, QueueConfig};
    use sopm_backends::redis::{RedisConfig, RedisConnection, RedisJobStore};
    use sopm_core::{Job, JobStatus, JobStore};

    use super::redis_server::RedisServer;

    async fn conn(server: &RedisServer) -> RedisConnection {
        RedisConfig::new(server.url())
            .connect()
            .await
            .expect("connection")
    }

    async fn node(
        server: &RedisServer,
        name: &str,
        lease_ms: u64,
        max_deliveries: u32,
    ) -> JobQueue {
        JobQueue::new(
            conn(server).await,
            name,
            QueueConfig {
                lease: Duration::from_millis(lease_ms),
                max_deliveries,
                block: Duration::from_millis(200),
            },
        )
    }

    fn backends() -> Vec<Arc<str>> {
        vec![Arc::from("builtin")]
    }

    /// Claims one job from the stream (new entries), waiting up to 10 s.
    async fn claim_one(q: &JobQueue) -> Claimed {
        let mut c = q.claim_connection().unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let mut got = q.claim(&mut c, &backends(), 1).await.expect("claim");
            if let Some(x) = got.pop() {
                return x;
            }
            assert!(Instant::now() < until, "nothing to claim after 10 s");
        }
    }

    /// Reclaims one job whose lease expired, trying for up to 10 s.
    async fn reclaim_one(q: &JobQueue) -> Claimed {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let mut got = q.reclaim(&backends(), 1).await.expect("reclaim");
            if let Some(x) = got.pop() {
                return x;
            }
            assert!(Instant::now() < until, "nothing to reclaim after 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn run(c: Claimed) -> Lease {
        match c {
            Claimed::Run(l) => l,
            Claimed::Dead(l) => panic!("expected a job to run, got a dead letter: {l:?}"),
        }
    }

    fn new_job(tenant: &str, input: serde_json::Value) -> Job {
        Job::new(
            sopm_core::TenantId::new(tenant).unwrap(),
            sopm_core::FunctionRef::builtin("echo"),
            Arc::new(input),
            5_000,
        )
    }

    fn succeeded(running: &Job) -> Job {
        let mut done = running.clone();
        done.status = JobStatus::Succeeded;
        done.output = Some(json!({"ok": true}));
        done.finished_ms = Some(sopm_core::types::now_ms());
        done.duration_us = Some(1);
        done
    }

    async fn pending_entries(server: &RedisServer) -> (u64, u64) {
        let mut c = conn(server).await.manager();
        let xlen: u64 = redis::cmd("XLEN")
            .arg("sopm:q:builtin")
            .query_async(&mut c)
            .await
            .unwrap();
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg("sopm:q:builtin")
            .arg("workers")
            .query_async(&mut c)
            .await
            .unwrap();
        let count = match pending {
            redis::Value::Array(v) => match v.first() {
                Some(redis::Value::Int(n)) => *n as u64,
                _ => 0,
            },
            _ => 0,
        };
        (xlen, count)
    }

    /// Enqueue stores the record and the entry; a worker claims, starts and completes
    /// it; the result is pushed to the waiting node's channel and the entry is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn enqueue_claim_complete_pushes_the_result() {
        let Some(server) = RedisServer::start("enqueue_claim_complete") else {
            return;
        };
        let gateway = node(&server, "gw", 5_000, 3).await;
        let worker = node(&server, "w1", 5_000, 3).await;
        let store = RedisJobStore::new(conn(&server).await);
        let mut pubsub = redis::Client::open(server.url())
            .unwrap()
            .get_async_pubsub()
            .await
            .unwrap();
        pubsub.subscribe(gateway.done_channel("gw")).await.unwrap();

        let job = new_job("t", json!({"x": 1}));
        let admitted = gateway
            .enqueue("builtin", &job, Some("gw"), None)
            .await
            .unwrap();
        assert_eq!(admitted, Admission::Queued(1));
        assert_eq!(store.get(&job.id).await.unwrap().as_ref(), Some(&job));

        let lease = run(claim_one(&worker).await);
        assert_eq!(lease.job, job);
        assert_eq!(lease.attempts, 1);
        assert_eq!(lease.waiter.as_deref(), Some("gw"));
        assert_eq!(gateway.depth_seen(), 1, "enqueue answered depth 1");
        assert_eq!(worker.depth_seen(), 0, "the lease answered depth 0");
        let running = worker
            .start(&lease)
            .await
            .unwrap()
            .expect("lease is current");
        assert_eq!(
            store.get(&job.id).await.unwrap().unwrap().status,
            JobStatus::Running
        );
        let done = succeeded(&running);
        assert!(worker.complete(&lease, &done).await.unwrap());

        let msg = tokio::time::timeout(Duration::from_secs(10), pubsub.on_message().next())
            .await
            .expect("a pushed result within 10 s")
            .expect("a message");
        let pushed: Job = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        assert_eq!(pushed, done, "the pushed record is the final one");
        assert_eq!(store.get(&job.id).await.unwrap(), Some(done));
        assert_eq!(
            pending_entries(&server).await,
            (0, 0),
            "the entry is acknowledged and deleted"
        );
        assert_eq!(
            worker.lease_of(&job.id).await.unwrap(),
            None,
            "lease dropped"
        );
        assert!(store.unfinished().await.unwrap().is_empty());
    }

    /// A worker that stops renewing loses the job to another after the lease expires:
    /// the other runs it (attempt 2) and its completion is the one final record; the
    /// first worker's late renewal and completion are refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_lease_is_taken_over_and_the_stale_completion_refused() {
        let Some(server) = RedisServer::start("expired_lease_taken_over") else {
            return;
        };
        let gateway = node(&server, "gw", 300, 3).await;
        let w1 = node(&server, "w1", 300, 3).await;
        let w2 = node(&server, "w2", 300, 3).await;
        let store = RedisJobStore::new(conn(&server).await);
        let job = new_job("t", json!("takeover"));
        gateway.enqueue("builtin", &job, None, None).await.unwrap();

        let first = run(claim_one(&w1).await);
        let running1 = w1.start(&first).await.unwrap().expect("current");
        // w1 stops renewing (it hangs, or its link is cut); w2's reclaimer takes over.
        let second = run(reclaim_one(&w2).await);
        assert_eq!(second.attempts, 2, "the takeover is the second attempt");
        assert!(second.token > first.token, "a new fencing token");
        let running2 = w2.start(&second).await.unwrap().expect("current");
        assert_eq!(running2.attempts, 2);
        assert!(
            w1.start(&first).await.unwrap().is_none(),
            "a stale worker cannot rewrite the running record"
        );
        assert!(
            !w1.renew(&first).await.unwrap(),
            "the stale lease cannot be renewed"
        );

        let mut late = succeeded(&running1);
        late.output = Some(json!("from the stale worker"));
        assert!(
            !w1.complete(&first, &late).await.unwrap(),
            "the stale completion is refused"
        );
        assert_eq!(w1.refused(), 1, "and counted");
        let done = succeeded(&running2);
        assert!(w2.complete(&second, &done).await.unwrap());
        assert!(
            !w1.complete(&first, &late).await.unwrap(),
            "still refused after the job finished"
        );
        let stored = store.get(&job.id).await.unwrap().unwrap();
        assert_eq!(stored, done, "one final record: the current lease holder's");
        assert_eq!(stored.attempts, 2);
        assert_eq!(pending_entries(&server).await, (0, 0));
    }

    /// A renewed lease is not taken over, however long the job runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_renewed_lease_is_kept() {
        let Some(server) = RedisServer::start("renewed_lease_kept") else {
            return;
        };
        let w1 = node(&server, "w1", 1_500, 3).await;
        let w2 = node(&server, "w2", 1_500, 3).await;
        let job = new_job("t", json!("long"));
        w1.enqueue("builtin", &job, None, None).await.unwrap();
        let lease = run(claim_one(&w1).await);
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            assert!(w1.renew(&lease).await.unwrap(), "the holder renews");
            let taken = w2.reclaim(&backends(), 10).await.unwrap();
            assert!(
                taken.is_empty(),
                "a live, renewed lease is never taken over: {taken:?}"
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let done = succeeded(&w1.start(&lease).await.unwrap().unwrap());
        assert!(w1.complete(&lease, &done).await.unwrap());
        assert_eq!(w2.taken_over(), 0);
    }

    /// A job whose workers all stop renewing is dead-lettered after `max_deliveries`
    /// runs: failed with `dead_letter`, its entry copied to the dead stream, and never
    /// run again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dead_letter_after_max_deliveries() {
        let Some(server) = RedisServer::start("dead_letter") else {
            return;
        };
        let w = node(&server, "w", 200, 2).await;
        let store = RedisJobStore::new(conn(&server).await);
        let job = new_job("t", json!("poison"));
        w.enqueue("builtin", &job, None, None).await.unwrap();
        let a1 = run(claim_one(&w).await);
        w.start(&a1).await.unwrap().unwrap();
        let a2 = run(reclaim_one(&w).await);
        assert_eq!(a2.attempts, 2);
        w.start(&a2).await.unwrap().unwrap();
        let dead = match reclaim_one(&w).await {
            Claimed::Dead(l) => l,
            Claimed::Run(l) => panic!("a third delivery with max 2 must be dead: {l:?}"),
        };
        assert!(w.dead_letter(&dead).await.unwrap());
        let stored = store.get(&job.id).await.unwrap().unwrap();
        assert_eq!(stored.status, JobStatus::Failed);
        assert_eq!(stored.attempts, 2, "it ran twice");
        let err = stored.error.expect("an error");
        assert_eq!(err.code, "dead_letter");
        assert!(err.message.contains("delivered 2 times"), "{}", err.message);
        assert_eq!(w.dead_count().await.unwrap(), 1);
        assert_eq!(pending_entries(&server).await, (0, 0));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(w.reclaim(&backends(), 10).await.unwrap().is_empty());
        assert!(!w
            .complete(&a2, &succeeded(&stored_job(&store, &job).await))
            .await
            .unwrap());
    }

    async fn stored_job(store: &RedisJobStore, job: &Job) -> Job {
        store.get(&job.id).await.unwrap().unwrap()
    }

    fn cancelled(job: &Job) -> Job {
        let mut c = job.clone();
        c.status = JobStatus::Cancelled;
        c.finished_ms = Some(sopm_core::types::now_ms());
        c.error = Some(sopm_core::ErrorInfo {
            code: "cancelled".into(),
            message: "cancelled by its owner".into(),
            traceback: None,
        });
        c
    }

    /// Cancel: a queued job is never delivered; a running one's worker loses its lease
    /// and its completion is refused; a finished one is `conflict`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancel_queued_and_running() {
        let Some(server) = RedisServer::start("cancel_queued_and_running") else {
            return;
        };
        let w = node(&server, "w", 5_000, 3).await;
        let store = RedisJobStore::new(conn(&server).await);
        let queued = new_job("t", json!("queued"));
        w.enqueue("builtin", &queued, None, None).await.unwrap();
        let got = w.cancel(&cancelled(&queued)).await.unwrap().expect("known");
        assert_eq!(got.status, JobStatus::Cancelled);
        let mut c = w.claim_connection().unwrap();
        assert!(
            w.claim(&mut c, &backends(), 10).await.unwrap().is_empty(),
            "a cancelled queued job is never delivered"
        );

        let running = new_job("t", json!("running"));
        w.enqueue("builtin", &running, None, None).await.unwrap();
        let lease = run(claim_one(&w).await);
        let r = w.start(&lease).await.unwrap().unwrap();
        let got = w.cancel(&cancelled(&r)).await.unwrap().expect("known");
        assert_eq!(got.status, JobStatus::Cancelled);
        assert!(
            !w.renew(&lease).await.unwrap(),
            "the worker learns on renewal"
        );
        assert!(!w.complete(&lease, &succeeded(&r)).await.unwrap());
        assert_eq!(
            stored_job(&store, &running).await.status,
            JobStatus::Cancelled
        );
        let err = w.cancel(&cancelled(&r)).await.expect_err("second cancel");
        assert_eq!(err.code(), "conflict");
        assert!(w
            .cancel(&cancelled(&new_job("t", json!(0))))
            .await
            .unwrap()
            .is_none());
        assert_eq!(pending_entries(&server).await, (0, 0));
    }

    /// With a capacity, a backend's queue refuses past that many waiting jobs, and a
    /// delivered job makes room.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn capacity_refuses_and_delivery_makes_room() {
        let Some(server) = RedisServer::start("capacity") else {
            return;
        };
        let w = node(&server, "w", 5_000, 3).await;
        let store = RedisJobStore::new(conn(&server).await);
        for i in 1..=2 {
            let j = new_job("t", json!(i));
            assert_eq!(
                w.enqueue("builtin", &j, None, Some(2)).await.unwrap(),
                Admission::Queued(i)
            );
        }
        let refused = new_job("t", json!(3));
        assert_eq!(
            w.enqueue("builtin", &refused, None, Some(2)).await.unwrap(),
            Admission::Full(2)
        );
        assert_eq!(
            store.get(&refused.id).await.unwrap(),
            None,
            "nothing stored"
        );
        let _lease = run(claim_one(&w).await);
        assert_eq!(
            w.enqueue("builtin", &refused, None, Some(2)).await.unwrap(),
            Admission::Queued(2)
        );
    }

    /// A released job (a node shutting down) is taken by another node at once, without
    /// waiting for the lease to expire.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_released_job_is_taken_at_once() {
        let Some(server) = RedisServer::start("released") else {
            return;
        };
        let w1 = node(&server, "w1", 60_000, 3).await;
        let w2 = node(&server, "w2", 60_000, 3).await;
        let job = new_job("t", json!("released"));
        w1.enqueue("builtin", &job, None, None).await.unwrap();
        let lease = run(claim_one(&w1).await);
        w1.start(&lease).await.unwrap().unwrap();
        assert!(w1.release(&lease).await.unwrap());
        let again = run(reclaim_one(&w2).await);
        assert_eq!(again.attempts, 2);
        assert!(!w1.complete(&lease, &succeeded(&lease.job)).await.unwrap());
        let running = w2.start(&again).await.unwrap().unwrap();
        assert!(w2.complete(&again, &succeeded(&running)).await.unwrap());
    }
}

// --- the cluster scheduler -----------------------------------------------------------

mod scheduler {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use parking_lot::Mutex;
    use sopm_backends::redis::queue::{
        AtShutdown, NodeRole, QueueConfig, RedisScheduler, RedisSchedulerConfig,
    };
    use sopm_backends::redis::{RedisConfig, RedisConnection, RedisJobStore};
    use sopm_core::conformance::{self, SchedulerHarness};
    use sopm_core::{JobStore, Scheduler};

    use super::redis_server::RedisServer;

    /// Connects from the harness's synchronous factories (on a multi-thread runtime).
    fn connect_now(config: RedisConfig) -> RedisConnection {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(config.connect())
                .expect("connection")
        })
    }

    /// Each check gets a store under a prefix of its own (recovery reads every
    /// unfinished job of a store), and the scheduler made next uses that prefix.
    fn harness(server: &RedisServer, in_process: bool) -> SchedulerHarness {
        let url = server.url();
        let url2 = url.clone();
        let last = Arc::new(Mutex::new(String::new()));
        let last2 = last.clone();
        let n = Arc::new(AtomicUsize::new(0));
        SchedulerHarness::new(
            move || {
                let prefix = format!("check{}:", n.fetch_add(1, Ordering::Relaxed));
                *last.lock() = prefix.clone();
                let conn = connect_now(RedisConfig::new(url.clone()).with_prefix(prefix));
                Arc::new(RedisJobStore::new(conn)) as Arc<dyn JobStore>
            },
            move |setup| {
                let prefix = last2.lock().clone();
                let conn = connect_now(RedisConfig::new(url2.clone()).with_prefix(prefix));
                let mut config = RedisSchedulerConfig::new("node-a");
                config.max_concurrency = setup.max_concurrency;
                config.queue_capacity = setup.queue_capacity;
                config.builtin_waits_in_process = in_process;
                // One process: what runs past the grace period is interrupted.
                config.at_shutdown = AtShutdown::Interrupt;
                config.queue = QueueConfig {
                    lease: Duration::from_secs(5),
                    max_deliveries: 3,
                    block: Duration::from_millis(500),
                };
                Arc::new(RedisScheduler::start(
                    conn,
                    config,
                    setup.router,
                    setup.dispatcher,
                    setup.store,
                    None,
                )) as Arc<dyn Scheduler>
            },
        )
    }

    /// One scheduler check against a fresh server, every job through the queue
    /// (`_queue`) and with waited built-ins run in this process (`_in_process`).
    macro_rules! scheduler_check {
        ($name:ident, $queue:ident, $in_process:ident) => {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $queue() {
                let Some(server) = RedisServer::start(stringify!($queue)) else {
                    return;
                };
                tokio::time::timeout(
                    Duration::from_secs(120),
                    conformance::$name(&harness(&server, false)),
                )
                .await
                .expect("the check ends within 120 s");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $in_process() {
                let Some(server) = RedisServer::start(stringify!($in_process)) else {
                    return;
                };
                tokio::time::timeout(
                    Duration::from_secs(120),
                    conformance::$name(&harness(&server, true)),
                )
                .await
                .expect("the check ends within 120 s");
            }
        };
    }

    scheduler_check!(
        scheduler_wait_returns_output,
        wait_returns_output_queue,
        wait_returns_output_in_process
    );
    scheduler_check!(
        scheduler_wait_expires_then_finishes,
        wait_expires_then_finishes_queue,
        wait_expires_then_finishes_in_process
    );
    scheduler_check!(scheduler_detach, detach_queue, detach_in_process);
    scheduler_check!(scheduler_call, call_queue, call_in_process);
    scheduler_check!(
        scheduler_records_errors,
        records_errors_queue,
        records_errors_in_process
    );
    scheduler_check!(scheduler_timeouts, timeouts_queue, timeouts_in_process);
    scheduler_check!(scheduler_cancel, cancel_queue, cancel_in_process);
    scheduler_check!(
        scheduler_tenant_isolation,
        tenant_isolation_queue,
        tenant_isolation_in_process
    );
    scheduler_check!(scheduler_overload, overload_queue, overload_in_process);
    scheduler_check!(scheduler_stats, stats_queue, stats_in_process);
    scheduler_check!(scheduler_shutdown, shutdown_queue, shutdown_in_process);
    scheduler_check!(scheduler_recover, recover_queue, recover_in_process);

    #[allow(dead_code)]
    fn roles() -> [NodeRole; 3] {
        [NodeRole::All, NodeRole::Gateway, NodeRole::Worker]
    }
}

// --- several nodes on one Redis ------------------------------------------------------

mod cluster {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use async_trait::async_trait;
    use parking_lot::Mutex;
    use serde_json::json;
    use sopm_backends::redis::queue::{
        AtShutdown, NodeRole, QueueConfig, RedisScheduler, RedisSchedulerConfig,
    };
    use sopm_backends::redis::{RedisConfig, RedisConnection, RedisJobStore};
    use sopm_core::conformance::{ConformanceExecutor, ConformanceRouter};
    use sopm_core::{
        Dispatcher, Executor, FunctionRef, InPlaceArtifactStore, Invocation, Job, JobId,
        JobRequest, JobStatus, JobStore, Output, Scheduler, SubmitMode, Submitted, TenantId,
        BUILTIN_BACKEND,
    };

    use super::redis_server::RedisServer;

    /// The conformance functions, counting calls, and recording retirements.
    #[derive(Debug, Default)]
    struct Worker {
        inner: ConformanceExecutor,
        retired: Mutex<Vec<(String, Option<u32>)>>,
    }

    #[async_trait]
    impl Executor for Worker {
        fn name(&self) -> &str {
            "builtin"
        }
        async fn invoke(&self, invocation: Invocation) -> sopm_core::Result<Output> {
            self.inner.invoke(invocation).await
        }
        async fn retire(&self, function_id: &str) -> sopm_core::Result<()> {
            self.retired.lock().push((function_id.to_string(), None));
            Ok(())
        }
        async fn retire_version(&self, function_id: &str, v: u32) -> sopm_core::Result<()> {
            self.retired.lock().push((function_id.to_string(), Some(v)));
            Ok(())
        }
    }

    struct Node {
        scheduler: RedisScheduler,
        executor: Arc<Worker>,
    }

    async fn conn(server: &RedisServer) -> RedisConnection {
        RedisConfig::new(server.url())
            .connect()
            .await
            .expect("connection")
    }

    /// A node: a gateway has no executors (everything goes through the queue).
    async fn node(
        server: &RedisServer,
        id: &str,
        role: NodeRole,
        lease_ms: u64,
        max_deliveries: u32,
    ) -> Node {
        let executor = Arc::new(Worker::default());
        let executors: Vec<(String, Arc<dyn Executor>)> = match role {
            NodeRole::Gateway => Vec::new(),
            _ => vec![(
                BUILTIN_BACKEND.to_string(),
                executor.clone() as Arc<dyn Executor>,
            )],
        };
        let dispatcher = Arc::new(Dispatcher::new(executors, Arc::new(InPlaceArtifactStore)));
        let conn = conn(server).await;
        let mut config = RedisSchedulerConfig::new(id);
        config.role = role;
        config.max_concurrency = 16;
        config.at_shutdown = AtShutdown::Release;
        config.queue = QueueConfig {
            lease: Duration::from_millis(lease_ms),
            max_deliveries,
            block: Duration::from_millis(300),
        };
        let scheduler = RedisScheduler::start(
            conn.clone(),
            config,
            Arc::new(ConformanceRouter::new()),
            dispatcher,
            Arc::new(RedisJobStore::new(conn)),
            None,
        );
        Node {
            scheduler,
            executor,
        }
    }

    fn tenant() -> TenantId {
        TenantId::new("cluster").unwrap()
    }

    fn request(function: &str, input: serde_json::Value) -> JobRequest {
        JobRequest::new(tenant(), FunctionRef::builtin(function), input)
    }

    async fn wait_terminal(s: &RedisScheduler, id: &JobId, patience: Duration) -> Job {
        let until = Instant::now() + patience;
        loop {
            match s.status(&tenant(), id).await {
                Ok(job) if job.status.is_terminal() => return job,
                Ok(_) | Err(_) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                other => panic!("job {id} did not finish within {patience:?}: {other:?}"),
            }
        }
    }

    async fn wait_status(s: &RedisScheduler, id: &JobId, want: JobStatus) -> Job {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let job = s.status(&tenant(), id).await.expect("status");
            if job.status == want {
                return job;
            }
            assert!(
                Instant::now() < until,
                "job {id} is {:?}, not {want:?}",
                job.status
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A gateway without executors queues a detached job and a worker runs it; a
    /// waiting caller on the gateway gets its result pushed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gateway_queues_and_a_worker_runs() {
        let Some(server) = RedisServer::start("a_gateway_queues_and_a_worker_runs") else {
            return;
        };
        let gateway = node(&server, "gw", NodeRole::Gateway, 5_000, 3).await;
        let worker = node(&server, "w1", NodeRole::Worker, 5_000, 3).await;
        let id = match gateway
            .scheduler
            .submit(request("echo", json!({"n": 1})), SubmitMode::Detach)
            .await
            .expect("submit")
        {
            Submitted::Pending { id, status } => {
                assert_eq!(status, JobStatus::Queued);
                id
            }
            other => panic!("detached: expected Pending, got {other:?}"),
        };
        let job = wait_terminal(&gateway.scheduler, &id, Duration::from_secs(10)).await;
        assert_eq!(job.status, JobStatus::Succeeded);
        assert_eq!(job.output, Some(json!({"n": 1})));
        assert_eq!(worker.executor.inner.invocations(&id), 1);
        assert_eq!(gateway.executor.inner.invocations(&id), 0);

        let answer = gateway
            .scheduler
            .submit(
                request("sleep_ms", json!({"ms": 50})),
                SubmitMode::Wait(Some(Duration::from_secs(10))),
            )
            .await
            .expect("submit");
        let job = match answer {
            Submitted::Finished(job) => job,
            other => panic!("a waited job: expected Finished, got {other:?}"),
        };
        assert_eq!(job.output, Some(json!({"slept_ms": 50})));
        assert_eq!(worker.executor.inner.invocations(&job.id), 1);

        let stats = gateway.scheduler.cluster_stats().await.unwrap().unwrap();
        let ids: Vec<&str> = stats.nodes.iter().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids, ["gw", "w1"], "both nodes report");
        let w1 = &stats.nodes[1];
        assert_eq!(
            (w1.role.as_str(), w1.backends.clone()),
            ("worker", vec!["builtin".to_string()])
        );
        assert_eq!(stats.totals.submitted, 2, "the gateway's submissions");
        gateway
            .scheduler
            .shutdown(Duration::from_secs(1))
            .await
            .unwrap();
        worker
            .scheduler
            .shutdown(Duration::from_secs(1))
            .await
            .unwrap();
    }

    /// A worker that dies (its tasks stop, its leases are not renewed) loses its
    /// running job to another worker once the lease expires; the job ends once, on
    /// the second attempt.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_workers_job_moves_to_another() {
        let Some(server) = RedisServer::start("a_dead_workers_job_moves") else {
            return;
        };
        let gateway = node(&server, "gw", NodeRole::Gateway, 600, 3).await;
        let w1 = node(&server, "w1", NodeRole::Worker, 600, 3).await;
        let id = match gateway
            .scheduler
            .submit(request("sleep_ms", json!({"ms": 1500})), SubmitMode::Detach)
            .await
            .unwrap()
        {
            Submitted::Pending { id, .. } => id,
            other => panic!("{other:?}"),
        };
        wait_status(&gateway.scheduler, &id, JobStatus::Running).await;
        w1.scheduler.abort();
        let w2 = node(&server, "w2", NodeRole::Worker, 600, 3).await;
        let job = wait_terminal(&gateway.scheduler, &id, Duration::from_secs(20)).await;
        assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
        assert_eq!(job.attempts, 2, "taken over: the second attempt");
        assert_eq!(w1.executor.inner.invocations(&id), 1);
        assert_eq!(w2.executor.inner.invocations(&id), 1);
        assert_eq!(w2.scheduler.queue().taken_over(), 1);
        w2.scheduler.shutdown(Duration::from_secs(1)).await.unwrap();
    }

    /// With one delivery allowed, a job whose worker died is not run again: the next
    /// worker dead-letters it and the caller waiting on the gateway gets that record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_past_its_deliveries_is_dead_lettered() {
        let Some(server) = RedisServer::start("dead_lettered_by_scheduler") else {
            return;
        };
        let gateway = node(&server, "gw", NodeRole::Gateway, 500, 1).await;
        let w1 = node(&server, "w1", NodeRole::Worker, 500, 1).await;
        let g = gateway.scheduler.clone();
        let waiting = tokio::spawn(async move {
            g.submit(
                request("slow", json!({"ms": 60_000})),
                SubmitMode::Wait(Some(Duration::from_secs(30))),
            )
            .await
        });
        let until = Instant::now() + Duration::from_secs(10);
        while w1.scheduler.stats().running == 0 {
            assert!(Instant::now() < until, "the job did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        w1.scheduler.abort();
        let w2 = node(&server, "w2", NodeRole::Worker, 500, 1).await;
        let job = match waiting.await.unwrap().expect("submit") {
            Submitted::Finished(job) => job,
            other => panic!("the waiting caller: {other:?}"),
        };
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(
            job.error.as_ref().map(|e| e.code.as_str()),
            Some("dead_letter")
        );
        assert_eq!(job.attempts, 1);
        assert_eq!(w2.executor.inner.invocations(&job.id), 0, "not run again");
        assert_eq!(w2.scheduler.queue().dead_lettered(), 1);
        assert_eq!(w2.scheduler.queue().dead_count().await.unwrap(), 1);
    }

    /// A node starting up (recover) leaves alone a job another node is running: only
    /// records nobody owns are its business.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recover_leaves_other_nodes_jobs_alone() {
        let Some(server) = RedisServer::start("recover_leaves_other_nodes_jobs_alone") else {
            return;
        };
        let gateway = node(&server, "gw", NodeRole::Gateway, 5_000, 3).await;
        let w1 = node(&server, "w1", NodeRole::Worker, 5_000, 3).await;
        let submit = |f: &'static str| {
            let g = gateway.scheduler.clone();
            async move {
                match g
                    .submit(request(f, json!({"ms": 60_000})), SubmitMode::Detach)
                    .await
                    .unwrap()
                {
                    Submitted::Pending { id, .. } => id,
                    other => panic!("{other:?}"),
                }
            }
        };
        let running = submit("slow").await;
        wait_status(&gateway.scheduler, &running, JobStatus::Running).await;
        // Another node starts and recovers.
        let late = node(&server, "gw2", NodeRole::Gateway, 5_000, 3).await;
        let report = late.scheduler.recover().await.unwrap();
        assert_eq!(
            (report.requeued, report.interrupted, report.failed),
            (0, 0, 0),
            "{report:?}"
        );
        let job = gateway.scheduler.status(&tenant(), &running).await.unwrap();
        assert_eq!(job.status, JobStatus::Running, "another node's job goes on");
        gateway.scheduler.cancel(&tenant(), &running).await.unwrap();
        w1.scheduler.shutdown(Duration::from_secs(1)).await.unwrap();
    }

    /// A node shutting down gives its running jobs back at once: another takes them
    /// without waiting for the lease.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_releases_running_jobs() {
        let Some(server) = RedisServer::start("shutdown_releases") else {
            return;
        };
        let gateway = node(&server, "gw", NodeRole::Gateway, 60_000, 3).await;
        let w1 = node(&server, "w1", NodeRole::Worker, 60_000, 3).await;
        let id = match gateway
            .scheduler
            .submit(request("slow", json!({"ms": 2_000})), SubmitMode::Detach)
            .await
            .unwrap()
        {
            Submitted::Pending { id, .. } => id,
            other => panic!("{other:?}"),
        };
        wait_status(&gateway.scheduler, &id, JobStatus::Running).await;
        let w2 = node(&server, "w2", NodeRole::Worker, 60_000, 3).await;
        w1.scheduler
            .shutdown(Duration::from_millis(50))
            .await
            .unwrap();
        let job = wait_terminal(&gateway.scheduler, &id, Duration::from_secs(20)).await;
        assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
        assert_eq!(job.attempts, 2);
        assert_eq!(w2.executor.inner.invocations(&id), 1);
        w2.scheduler.shutdown(Duration::from_secs(1)).await.unwrap();
    }

    /// `retired` on one node reaches the executors of the others.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retired_reaches_the_other_nodes() {
        let Some(server) = RedisServer::start("retired_reaches") else {
            return;
        };
        let a = node(&server, "a", NodeRole::All, 5_000, 3).await;
        let b = node(&server, "b", NodeRole::Worker, 5_000, 3).await;
        // Let b's subscription come up (it is not acknowledged to anyone).
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            a.scheduler.retired("fn_probe", Some(9)).await.unwrap();
            if !b.executor.retired.lock().is_empty() || Instant::now() > until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        a.scheduler.retired("fn_gone", None).await.unwrap();
        a.scheduler.retired("fn_old", Some(3)).await.unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let got = b.executor.retired.lock().clone();
            if got.contains(&("fn_gone".into(), None)) && got.contains(&("fn_old".into(), Some(3)))
            {
                break;
            }
            assert!(
                Instant::now() < until,
                "retirements did not arrive: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            a.executor.retired.lock().is_empty(),
            "the retiring node is not told again"
        );
    }

    /// Redis is killed (-9) and restarted in the middle of a stream of detached
    /// submissions: every acknowledged job ends exactly once (one final record,
    /// succeeded); submissions while Redis is down are refused `unavailable`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_restart_under_load_loses_no_acknowledged_job() {
        let Some(mut server) = RedisServer::start("redis_restart_under_load") else {
            return;
        };
        let gateway = node(&server, "gw", NodeRole::Gateway, 2_000, 3).await;
        let worker = node(&server, "w1", NodeRole::Worker, 2_000, 3).await;
        let store = RedisJobStore::new(conn(&server).await);
        let mut acknowledged: Vec<JobId> = Vec::new();
        let mut refused = 0u32;
        let started = Instant::now();
        for i in 0..600u32 {
            if i == 200 {
                server.kill();
                let err = gateway
                    .scheduler
                    .status(&tenant(), &acknowledged[0])
                    .await
                    .expect_err("status with redis down");
                assert_eq!(err.code(), "unavailable", "{err:?}");
            }
            if i == 260 {
                server.restart();
            }
            if started.elapsed() > Duration::from_secs(60) {
                break;
            }
            match gateway
                .scheduler
                .submit(request("echo", json!({"i": i})), SubmitMode::Detach)
                .await
            {
                Ok(Submitted::Pending { id, .. }) => acknowledged.push(id),
                Ok(other) => panic!("detached: {other:?}"),
                Err(e) => {
                    assert_eq!(e.code(), "unavailable", "redis down: {e:?}");
                    refused += 1;
                }
            }
        }
        assert!(refused > 0, "submissions while redis was down are refused");
        let mut runs: HashMap<u32, u32> = HashMap::new();
        for id in &acknowledged {
            let job = wait_terminal(&gateway.scheduler, id, Duration::from_secs(60)).await;
            assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
            // The first command on a connection that Redis dropped may fail once.
            let stored = match store.get(id).await {
                Ok(found) => found,
                Err(e) => {
                    assert_eq!(e.code(), "unavailable", "{e:?}");
                    store.get(id).await.unwrap()
                }
            }
            .expect("recorded");
            assert_eq!(stored, job, "one final record");
            *runs
                .entry(worker.executor.inner.invocations(id))
                .or_default() += 1;
        }
        eprintln!(
            "{} acknowledged, {refused} refused while redis was down; runs per job: {runs:?}",
            acknowledged.len()
        );
        assert!(store.unfinished().await.unwrap().is_empty());
        // The gateway's subscription came back: a waiting caller gets its result pushed.
        match gateway
            .scheduler
            .submit(
                request("echo", json!("after the restart")),
                SubmitMode::Wait(Some(Duration::from_secs(20))),
            )
            .await
            .expect("submit after the restart")
        {
            Submitted::Finished(job) => assert_eq!(job.status, JobStatus::Succeeded),
            other => panic!("a waiting caller after the restart: {other:?}"),
        }
        assert!(
            runs.keys().all(|n| *n >= 1),
            "every acknowledged job ran at least once: {runs:?}"
        );
    }
}

// --- a build queued on one node, run on another --------------------------------------

mod builds {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use async_trait::async_trait;
    use parking_lot::Mutex;
    use serde_json::json;
    use sopm_backends::redis::queue::{
        NodeRole, QueueConfig, RedisScheduler, RedisSchedulerConfig,
    };
    use sopm_backends::redis::{RedisConfig, RedisConnection, RedisJobStore, RedisRegistry};
    use sopm_core::policy::Isolation;
    use sopm_core::registry::BuildStatus;
    use sopm_core::{
        Artifact, BuildLog, Builder, Executor, FunctionRef, FunctionVersion, Invocation,
        JobRequest, Output, Platform, Runtime, Source, SubmitMode, Submitted, TenantId, UploadSpec,
    };

    use super::redis_server::RedisServer;

    /// Builds `/built/<id>/v<n>`, counting builds.
    #[derive(Debug, Default)]
    struct DirBuilder {
        built: Mutex<Vec<(String, u32)>>,
    }

    #[async_trait]
    impl Builder for DirBuilder {
        fn name(&self) -> &str {
            "dir"
        }
        async fn build(
            &self,
            v: &FunctionVersion,
            _: &Source,
            log: &dyn BuildLog,
        ) -> sopm_core::Result<Artifact> {
            log.append("built on the worker\n").await;
            self.built.lock().push((v.function_id.clone(), v.version));
            Ok(Artifact::Directory {
                path: format!("/built/{}/v{}", v.function_id, v.version),
                digest: None,
            })
        }
    }

    /// Runs user functions by answering with their input and the artifact's path;
    /// records retirements.
    #[derive(Debug, Default)]
    struct Sandbox {
        retired: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Executor for Sandbox {
        fn name(&self) -> &str {
            "gvisor"
        }
        async fn invoke(&self, invocation: Invocation) -> sopm_core::Result<Output> {
            let path = match &invocation.target {
                sopm_core::Target::User(v) => match &v.artifact {
                    Some(Artifact::Directory { path, .. }) => path.clone(),
                    other => format!("{other:?}"),
                },
                other => format!("{other:?}"),
            };
            Ok(Output::from(
                json!({"input": *invocation.input, "artifact": path}),
            ))
        }
        async fn retire(&self, function_id: &str) -> sopm_core::Result<()> {
            self.retired.lock().push(function_id.to_string());
            Ok(())
        }
    }

    async fn conn(server: &RedisServer) -> RedisConnection {
        RedisConfig::new(server.url())
            .connect()
            .await
            .expect("connection")
    }

    fn config(id: &str, role: NodeRole) -> RedisSchedulerConfig {
        let mut c = RedisSchedulerConfig::new(id);
        c.role = role;
        c.queue = QueueConfig {
            lease: Duration::from_secs(5),
            max_deliveries: 3,
            block: Duration::from_millis(300),
        };
        c
    }

    /// An upload through a gateway (no sandbox, no builder) is built by the worker
    /// that has the backend; the function then runs there when called through the
    /// gateway; deleting it through the gateway retires it on the worker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_build_queued_on_the_gateway_runs_on_the_worker() {
        let Some(server) = RedisServer::start("a_build_queued_on_the_gateway") else {
            return;
        };
        let c = conn(&server).await;
        let registry = Arc::new(RedisRegistry::new(c.clone()));
        let store = Arc::new(RedisJobStore::new(c.clone()));
        let gc = c.clone();
        let gateway = Platform::builder()
            .with_registry(registry.clone())
            .with_job_store(store.clone())
            .with_remote_backend("gvisor", Isolation::UserSpaceKernel)
            .with_runtime_executor(Runtime::Python, "gvisor")
            .with_scheduler(move |parts| {
                Arc::new(RedisScheduler::new(
                    gc,
                    config("gw", NodeRole::Gateway),
                    parts,
                ))
            })
            .build()
            .expect("gateway");
        let builder = Arc::new(DirBuilder::default());
        let sandbox = Arc::new(Sandbox::default());
        let wc = c.clone();
        let worker = Platform::builder()
            .with_registry(registry.clone())
            .with_job_store(store.clone())
            .with_sandbox("gvisor", sandbox.clone(), builder.clone())
            .with_runtime_executor(Runtime::Python, "gvisor")
            .with_scheduler(move |parts| {
                Arc::new(RedisScheduler::new(
                    wc,
                    config("w1", NodeRole::Worker),
                    parts,
                ))
            })
            .build()
            .expect("worker");

        let tenant = TenantId::default();
        let mut source = Source::default();
        source
            .files
            .insert("main.py".into(), b"def handle(x):\n  return x\n".to_vec());
        let spec = UploadSpec {
            name: "f".into(),
            runtime: Runtime::Python,
            handler: "main.handle".into(),
            limits: Default::default(),
            env: Default::default(),
            executor: None,
        };
        let v = gateway.upload(&tenant, spec, source).await.expect("upload");
        assert_eq!(v.status, BuildStatus::Building);
        let until = Instant::now() + Duration::from_secs(20);
        let ready = loop {
            let rec = gateway.function(&tenant, "f").await.expect("function");
            if rec.versions[0].status != BuildStatus::Building {
                break rec.versions[0].clone();
            }
            assert!(
                Instant::now() < until,
                "the build did not finish within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(ready.status, BuildStatus::Ready, "{}", ready.build_log);
        assert!(
            ready.build_log.contains("built on the worker"),
            "{}",
            ready.build_log
        );
        assert_eq!(
            builder.built.lock().clone(),
            vec![(v.function_id.clone(), 1)]
        );

        let call = JobRequest::new(
            tenant.clone(),
            FunctionRef::User {
                id: Arc::from(v.function_id.as_str()),
                version: None,
            },
            json!({"hello": 1}),
        );
        let job = match gateway
            .submit(call, SubmitMode::Wait(Some(Duration::from_secs(20))))
            .await
            .expect("submit")
        {
            Submitted::Finished(job) => job,
            other => panic!("expected the result, got {other:?}"),
        };
        assert_eq!(
            job.output,
            Some(json!({
                "input": {"hello": 1},
                "artifact": format!("/built/{}/v1", v.function_id)
            })),
            "{job:?}"
        );

        gateway.delete_function(&tenant, "f").await.expect("delete");
        let until = Instant::now() + Duration::from_secs(10);
        while !sandbox.retired.lock().contains(&v.function_id) {
            assert!(
                Instant::now() < until,
                "the worker was not told of the delete"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(worker);
    }
}

/// Figures, not a check: detached built-in jobs through Redis with one gateway and one
/// worker in this process. Run with:
/// SOPM_REQUIRE_INTEGRATION=1 cargo test --release -p sopm-backends --features redis --test redis_queue -- --ignored --nocapture throughput
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures; run by hand"]
async fn throughput() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use sopm_backends::redis::queue::{NodeRole, RedisScheduler, RedisSchedulerConfig};
    use sopm_core::conformance::{conformance_dispatcher, ConformanceExecutor, ConformanceRouter};
    use sopm_core::{
        Dispatcher, FunctionRef, InPlaceArtifactStore, JobRequest, Scheduler, SubmitMode, TenantId,
    };
    let Some(server) = RedisServer::start("throughput") else {
        return;
    };
    let make = |id: &str, role: NodeRole, dispatcher: Arc<Dispatcher>| {
        let url = server.url();
        let id = id.to_string();
        async move {
            let conn = RedisConfig::new(url).connect().await.unwrap();
            let mut config = RedisSchedulerConfig::new(id);
            config.role = role;
            config.queue_capacity = 1_000_000;
            RedisScheduler::start(
                conn.clone(),
                config,
                Arc::new(ConformanceRouter::new()),
                dispatcher,
                Arc::new(RedisJobStore::new(conn)),
                None,
            )
        }
    };
    let gateway = make(
        "gw",
        NodeRole::Gateway,
        Arc::new(Dispatcher::new(Vec::new(), Arc::new(InPlaceArtifactStore))),
    )
    .await;
    let worker = make(
        "w1",
        NodeRole::Worker,
        conformance_dispatcher(Arc::new(ConformanceExecutor::new())),
    )
    .await;
    const JOBS: usize = 5_000;
    const SUBMITTERS: usize = 64;
    let gateway = Arc::new(gateway);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..SUBMITTERS {
        let g = gateway.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..JOBS).step_by(SUBMITTERS) {
                let r = JobRequest::new(
                    TenantId::new("bench").unwrap(),
                    FunctionRef::builtin("echo"),
                    serde_json::json!(i),
                );
                g.submit(r, SubmitMode::Detach).await.expect("submit");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = start.elapsed();
    let until = Instant::now() + Duration::from_secs(120);
    while (worker.stats().succeeded as usize) < JOBS && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = start.elapsed();
    eprintln!(
        "{JOBS} detached echo jobs: accepted in {accepted:?} ({:.0}/s), all finished in {done:?} ({:.0}/s); finished: {}",
        JOBS as f64 / accepted.as_secs_f64(),
        JOBS as f64 / done.as_secs_f64(),
        worker.stats().succeeded
    );
}
