//! Per-tenant job quotas and fair dispatch in the `LocalScheduler`: a tenant flooding
//! the queue is refused with `quota_exceeded` while others are still accepted and run;
//! queued work is served round-robin between tenants; a tenant at its running cap
//! leaves slots to the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::json;
use sopm_core::{
    Dispatcher, Error, Executor, FunctionRef, InPlaceArtifactStore, Invocation, JobRequest,
    JobStore, LocalScheduler, LocalSchedulerConfig, MemoryJobStore, Output, Result, Route, Router,
    Scheduler, SubmitMode, Submitted, Target, TenantId,
};
use tokio::sync::Semaphore;

/// Records which tenant's job started, in order, then waits for the gate.
#[derive(Debug)]
struct Gated {
    started: Mutex<Vec<String>>,
    gate: Semaphore,
}

#[async_trait]
impl Executor for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    async fn invoke(&self, invocation: Invocation) -> Result<Output> {
        self.started
            .lock()
            .push(invocation.tenant.as_str().to_string());
        self.gate.acquire().await.expect("gate").forget();
        Ok(json!("done").into())
    }
}

#[derive(Debug)]
struct ToGated;

#[async_trait]
impl Router for ToGated {
    async fn route(&self, _: &TenantId, function: &FunctionRef) -> Result<Route> {
        Ok(Route {
            backend: Arc::from(sopm_core::BUILTIN_BACKEND),
            target: Target::Builtin(Arc::from("gated")),
            timeout: Duration::from_secs(60),
            function: function.clone(),
        })
    }
}

fn scheduler(
    max_concurrency: usize,
    max_running_per_tenant: Option<usize>,
    max_queued_per_tenant: Option<usize>,
) -> (LocalScheduler, Arc<Gated>) {
    let gated = Arc::new(Gated {
        started: Mutex::new(Vec::new()),
        gate: Semaphore::new(0),
    });
    let s = LocalScheduler::new(
        LocalSchedulerConfig {
            max_concurrency,
            queue_capacity: 100,
            max_running_per_tenant,
            max_queued_per_tenant,
            ..LocalSchedulerConfig::default()
        },
        Arc::new(ToGated),
        Arc::new(Dispatcher::new(
            vec![(
                sopm_core::BUILTIN_BACKEND.to_string(),
                gated.clone() as Arc<dyn Executor>,
            )],
            Arc::new(InPlaceArtifactStore),
        )),
        Arc::new(MemoryJobStore::new()) as Arc<dyn JobStore>,
    );
    (s, gated)
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

async fn detach(s: &LocalScheduler, t: &TenantId) -> Result<Submitted> {
    s.submit(
        JobRequest::new(t.clone(), FunctionRef::builtin("gated"), json!({})),
        SubmitMode::Detach,
    )
    .await
}

/// Waits until `n` jobs have started (no timing assertion: a long patience).
async fn started(g: &Gated, n: usize) -> Vec<String> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let now = g.started.lock().clone();
        if now.len() >= n {
            return now;
        }
        assert!(Instant::now() < until, "only {now:?} started, expected {n}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_work_is_served_round_robin_between_tenants() {
    let (s, g) = scheduler(1, None, None);
    let (a, b) = (tenant("flooder"), tenant("neighbour"));
    for _ in 0..5 {
        detach(&s, &a).await.unwrap();
    }
    started(&g, 1).await;
    for _ in 0..2 {
        detach(&s, &b).await.unwrap();
    }
    // One slot: each release starts the next job, taking tenants in turn.
    for n in 2..=7 {
        g.gate.add_permits(1);
        started(&g, n).await;
    }
    let order = g.started.lock().clone();
    assert_eq!(
        order,
        [
            "flooder",
            "flooder",
            "neighbour",
            "flooder",
            "neighbour",
            "flooder",
            "flooder"
        ],
        "the neighbour's jobs do not wait behind the whole flood"
    );
    g.gate.add_permits(10);
    s.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flooding_the_queue_is_refused_while_others_are_accepted() {
    let (s, g) = scheduler(1, None, Some(3));
    let (a, b) = (tenant("flooder"), tenant("neighbour"));
    detach(&s, &a).await.unwrap();
    started(&g, 1).await;
    for _ in 0..3 {
        detach(&s, &a).await.unwrap();
    }
    let refused = detach(&s, &a).await.unwrap_err();
    match &refused {
        Error::QuotaExceeded {
            quota, retry_after, ..
        } => {
            assert_eq!(*quota, "queued_jobs");
            assert!(retry_after.is_some(), "a retry delay for work in flight");
        }
        other => panic!("expected quota_exceeded, got {other:?}"),
    }
    assert_eq!(refused.code(), "quota_exceeded");
    // The neighbour is still accepted, and its job runs (second, by round-robin).
    let Submitted::Pending { id, .. } = detach(&s, &b).await.unwrap() else {
        panic!("detached")
    };
    g.gate.add_permits(2);
    let order = started(&g, 3).await;
    assert_eq!(order[..3], ["flooder", "flooder", "neighbour"]);
    g.gate.add_permits(10);
    for _ in 0..500 {
        if s.status(&b, &id).await.unwrap().status.is_terminal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        s.status(&b, &id).await.unwrap().status.as_str(),
        "succeeded"
    );
    assert_eq!(s.stats().rejected, 1);
    s.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_running_cap_leaves_slots_to_others() {
    let (s, g) = scheduler(4, Some(2), Some(2));
    let (a, b) = (tenant("flooder"), tenant("neighbour"));
    for _ in 0..4 {
        detach(&s, &a).await.unwrap();
    }
    started(&g, 2).await;
    // Two slots are free, but the flooder is at its cap: its next two wait, and a
    // third is refused, naming the running cap.
    let refused = detach(&s, &a).await.unwrap_err();
    assert!(
        matches!(
            refused,
            Error::QuotaExceeded {
                quota: "running_jobs",
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(s.stats().queue_depth, 2);
    // The neighbour starts at once in a free slot.
    detach(&s, &b).await.unwrap();
    let order = started(&g, 3).await;
    assert_eq!(order, ["flooder", "flooder", "neighbour"]);
    assert_eq!(
        s.stats().running,
        3,
        "a slot stays free: the flooder is capped"
    );
    // When one of the flooder's jobs ends, its next one starts.
    g.gate.add_permits(1);
    started(&g, 4).await;
    g.gate.add_permits(10);
    s.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_queued_job_gives_its_place_back() {
    let (s, g) = scheduler(1, None, Some(1));
    let a = tenant("canceller");
    detach(&s, &a).await.unwrap();
    started(&g, 1).await;
    let Submitted::Pending { id, .. } = detach(&s, &a).await.unwrap() else {
        panic!("detached")
    };
    assert!(
        detach(&s, &a).await.is_err(),
        "its one queue place is taken"
    );
    s.cancel(&a, &id).await.unwrap();
    assert_eq!(s.stats().queue_depth, 0);
    detach(&s, &a).await.expect("the place is free again");
    g.gate.add_permits(10);
    started(&g, 2).await;
    s.shutdown(Duration::from_secs(5)).await.unwrap();
}
