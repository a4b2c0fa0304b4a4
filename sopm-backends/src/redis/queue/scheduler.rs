//! `RedisScheduler`: the cluster scheduler. As a gateway it resolves a job with the
//! router and queues it on its backend's stream (a waited built-in may run in this
//! process instead); a waiting caller is woken by the result pushed on this node's
//! channel. As a worker it takes jobs and builds from the streams of the backends its
//! dispatcher has (see `worker`). Heartbeats give the cluster's figures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use sopm_core::scheduler::RecoveryReport;
use sopm_core::types::now_ms;
use sopm_core::{
    BuildRequest, Builds, ClusterStats, Dispatcher, Error, ErrorInfo, Job, JobId, JobRequest,
    JobStatus, JobStore, Result, Router, Scheduler, SchedulerCounters, SchedulerParts,
    SchedulerStats, SubmitMode, Submitted, TenantId, BUILTIN_BACKEND,
};
use tokio::sync::{oneshot, watch};

use super::build_queue::BuildQueue;
pub use super::config::{AtShutdown, NodeRole, RedisSchedulerConfig};
use super::counters::account;
use super::shared::{node_stats, LiveGuard, Shared};
use super::stream::{Admission, JobQueue};
use super::{heartbeat, notify, worker};
use crate::redis::RedisConnection;

/// The cluster scheduler over Redis. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisScheduler {
    shared: Arc<Shared>,
}

/// Removes a waiter when the waiting call ends (answered, timed out or dropped).
struct WaiterGuard<'a> {
    shared: &'a Shared,
    id: JobId,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.shared.waiters.lock().remove(&self.id);
    }
}

impl RedisScheduler {
    /// A scheduler over `conn` with this node's `parts` (the job store must be a
    /// `RedisJobStore` on the same server and prefix). Starts its tasks (pub/sub,
    /// heartbeat, and for a worker the claim loops, the reclaimer and the build loop)
    /// on the current Tokio runtime; they connect lazily and retry with back-off while
    /// Redis is away.
    pub fn new(conn: RedisConnection, config: RedisSchedulerConfig, parts: SchedulerParts) -> Self {
        Self::start(
            conn,
            config,
            parts.router,
            parts.dispatcher,
            parts.store,
            Some(parts.builds),
        )
    }

    /// [`new`](Self::new) from the pieces, without builds if `builds` is `None` (this
    /// node then queues builds but takes none).
    pub fn start(
        conn: RedisConnection,
        config: RedisSchedulerConfig,
        router: Arc<dyn Router>,
        dispatcher: Arc<Dispatcher>,
        store: Arc<dyn JobStore>,
        builds: Option<Arc<Builds>>,
    ) -> Self {
        let queue = JobQueue::new(conn.clone(), &config.node_id, config.queue.clone());
        let builds_queue = BuildQueue::new(conn.clone(), &config.node_id, config.queue.clone());
        let shared = Arc::new(Shared {
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrency.max(1))),
            in_process_slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrency.max(1))),
            config,
            conn,
            queue,
            builds_queue,
            router,
            dispatcher,
            store,
            builds,
            counters: SchedulerCounters::default(),
            waiters: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            stop: watch::channel(false).0,
            interrupt: watch::channel(false).0,
            subscribed: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
            job_tasks: Mutex::new((0, HashMap::new())),
        });
        let mut tasks = vec![
            tokio::spawn(notify::subscriber(shared.clone())),
            tokio::spawn(heartbeat::beat(shared.clone())),
        ];
        if shared.config.role.works() {
            let backends: Vec<Arc<str>> = shared
                .dispatcher
                .names()
                .into_iter()
                .map(Arc::from)
                .collect();
            if !backends.is_empty() {
                tasks.push(tokio::spawn(worker::claim_loop(
                    shared.clone(),
                    backends.clone(),
                )));
                tasks.push(tokio::spawn(worker::reclaim_loop(
                    shared.clone(),
                    backends.clone(),
                )));
                if shared.builds.is_some() {
                    tasks.push(tokio::spawn(worker::build_loop(shared.clone(), backends)));
                }
            }
        }
        *shared.tasks.lock() = tasks;
        RedisScheduler { shared }
    }

    /// The job queue (for diagnostics and tests).
    pub fn queue(&self) -> &JobQueue {
        &self.shared.queue
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.config.node_id
    }

    /// Stops every task of this node at once, as a crash would (leases are not
    /// released, nothing is recorded): for tests of takeover.
    pub fn abort(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let _ = self.shared.stop.send(true);
        for t in self.shared.tasks.lock().drain(..) {
            t.abort();
        }
        for (_, t) in self.shared.job_tasks.lock().1.drain() {
            t.abort();
        }
    }

    fn overloaded(&self, backend: &str, depth: u64) -> Error {
        self.shared.counters.rejected();
        Error::Overloaded {
            message: format!(
                "the '{backend}' queue holds {depth} jobs, its capacity is {}",
                self.shared.config.queue_capacity
            ),
            retry_after: self.shared.config.retry_after,
        }
    }

    /// Waits for the pushed result of `id` up to `wait`; on expiry, `Pending`.
    async fn wait_for(
        &self,
        id: JobId,
        rx: oneshot::Receiver<Job>,
        wait: Option<Duration>,
    ) -> Result<Submitted> {
        let got = match wait {
            Some(w) => tokio::time::timeout(w, rx).await.ok(),
            None => Some(rx.await),
        };
        match got {
            Some(Ok(job)) => Ok(Submitted::Finished(job)),
            _ => {
                let status = match self.shared.store.get(&id).await {
                    Ok(Some(job)) if job.status.is_terminal() => {
                        return Ok(Submitted::Finished(job))
                    }
                    Ok(Some(job)) => job.status,
                    _ => JobStatus::Queued,
                };
                Ok(Submitted::Pending { id, status })
            }
        }
    }

    /// Runs a waited built-in in this process: no queue, no record unless the wait
    /// ends first (then it is recorded running, marked as this node's, and goes on).
    async fn run_in_process(
        &self,
        mut job: Job,
        target: sopm_core::Target,
        wait: Option<Duration>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Submitted> {
        let s = self.shared.clone();
        s.counters.submitted();
        let started = Instant::now();
        job.status = JobStatus::Running;
        job.started_ms = Some(now_ms());
        job.attempts = 1;
        let invocation = sopm_core::Invocation {
            job_id: job.id.clone(),
            tenant: job.tenant.clone(),
            target,
            input: job.input.clone(),
            deadline: started + Duration::from_millis(job.timeout_ms),
        };
        let deadline = invocation.deadline;
        let timeout_ms = job.timeout_ms;
        let dispatcher = s.dispatcher.clone();
        let mut call = Box::pin(async move {
            match tokio::time::timeout_at(
                deadline.into(),
                dispatcher.invoke(BUILTIN_BACKEND, invocation),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout(format!(
                    "the job ran past its {timeout_ms} ms time limit and was stopped"
                ))),
            }
        });
        let running = s.counters.run();
        let first = match wait {
            Some(w) => tokio::time::timeout(w, &mut call).await.ok(),
            None => Some((&mut call).await),
        };
        drop(running);
        if let Some(outcome) = first {
            let done = worker::finished_record(job, outcome, started);
            if let Err(e) = s.store.put(&done, sopm_core::Durability::Buffered).await {
                tracing::error!(job = %done.id, error = %e, "failed to record a job");
            }
            account(&s.counters, &done);
            drop(slot);
            return Ok(Submitted::Finished(done));
        }
        // The wait is over and the job goes on: make it durable and this node's.
        s.store
            .put(&job, sopm_core::Durability::Durable)
            .await
            .inspect_err(
                |e| tracing::error!(job = %job.id, error = %e, "failed to record a job"),
            )?;
        s.queue.mark_local(&job.id).await?;
        let id = job.id.clone();
        tokio::spawn(async move {
            let _running = s.counters.run();
            let live = LiveGuard::new(&s, &job.id);
            let mut interrupt = s.interrupt.subscribe();
            let outcome = tokio::select! {
                r = call => Some(r),
                _ = live.cancel.notified() => None,
                _ = interrupt.wait_for(|v| *v) => Some(Err(Error::Interrupted(
                    "the node shut down while this job was running; it was not re-run".into(),
                ))),
            };
            if let Some(outcome) = outcome {
                let done = worker::finished_record(job, outcome, started);
                match s.store.put(&done, sopm_core::Durability::Durable).await {
                    Ok(()) => account(&s.counters, &done),
                    Err(e) => tracing::error!(job = %done.id, error = %e, "failed to record a job"),
                }
            }
            drop(slot);
        });
        Ok(Submitted::Pending {
            id,
            status: JobStatus::Running,
        })
    }

    /// The cancelled record of `job`, now.
    fn cancelled_record(job: &Job) -> Job {
        let mut c = job.clone();
        let now = now_ms();
        c.status = JobStatus::Cancelled;
        c.output = None;
        c.finished_ms = Some(now);
        if let Some(started) = c.started_ms {
            c.duration_us = Some(now.saturating_sub(started) * 1000);
        }
        c.error = Some(ErrorInfo::from(&Error::Cancelled(match job.status {
            JobStatus::Queued => "cancelled by its owner while queued".into(),
            _ => "cancelled by its owner".into(),
        })));
        c
    }
}

#[async_trait]
impl Scheduler for RedisScheduler {
    async fn submit(&self, request: JobRequest, mode: SubmitMode) -> Result<Submitted> {
        let s = &self.shared;
        if s.closed.load(Ordering::Acquire) {
            return Err(Error::Unavailable(
                "this node is shutting down and accepts no new jobs".into(),
            ));
        }
        let route = s.router.route(&request.tenant, &request.function).await?;
        let limit = request
            .timeout
            .map_or(route.timeout, |t| t.min(route.timeout))
            .min(s.config.max_timeout);
        let job = Job::new(
            request.tenant,
            route.function.clone(),
            request.input,
            limit.as_millis() as u64,
        );
        let wait = match mode {
            SubmitMode::Wait(w) => Some(w),
            SubmitMode::Detach => None,
        };
        if let Some(w) = wait {
            if s.config.builtin_waits_in_process
                && &*route.backend == BUILTIN_BACKEND
                && s.dispatcher.has(BUILTIN_BACKEND)
            {
                // With every slot of this node busy, the job goes through the queue.
                let busy = s.counters.running() >= s.config.max_concurrency as u64;
                let slot = match busy {
                    false => s.in_process_slots.clone().try_acquire_owned().ok(),
                    true => None,
                };
                if let Some(slot) = slot {
                    return self.run_in_process(job, route.target, w, slot).await;
                }
            }
        }
        let id = job.id.clone();
        let (guard, rx) = match wait {
            Some(_) => {
                let (tx, rx) = oneshot::channel();
                s.waiters.lock().insert(id.clone(), tx);
                (
                    Some(WaiterGuard {
                        shared: s,
                        id: id.clone(),
                    }),
                    Some(rx),
                )
            }
            None => (None, None),
        };
        let waiter = guard.as_ref().map(|_| s.config.node_id.as_str());
        let capacity = (s.config.queue_capacity > 0).then_some(s.config.queue_capacity as u64);
        match s
            .queue
            .enqueue(&route.backend, &job, waiter, capacity)
            .await?
        {
            Admission::Queued(_) => {
                s.counters.submitted();
            }
            Admission::Full(depth) => return Err(self.overloaded(&route.backend, depth)),
            Admission::AlreadyFinished => {
                return Err(Error::Internal(format!("job id {id} was already used")))
            }
        }
        match (wait, rx) {
            (Some(w), Some(rx)) => {
                let answer = self.wait_for(id, rx, w).await;
                drop(guard);
                answer
            }
            _ => Ok(Submitted::Pending {
                id,
                status: JobStatus::Queued,
            }),
        }
    }

    async fn status(&self, tenant: &TenantId, id: &JobId) -> Result<Job> {
        match self.shared.store.get(id).await? {
            Some(job) if &job.tenant == tenant => Ok(job),
            _ => Err(Error::NotFound(format!("no job '{id}'"))),
        }
    }

    async fn cancel(&self, tenant: &TenantId, id: &JobId) -> Result<Job> {
        let s = &self.shared;
        let job = match s.store.get(id).await? {
            Some(job) if &job.tenant == tenant => job,
            _ => return Err(Error::NotFound(format!("no job '{id}'"))),
        };
        if job.status.is_terminal() {
            return Err(Error::Conflict(format!(
                "job {id} already finished ({})",
                job.status.as_str()
            )));
        }
        match s.queue.cancel(&Self::cancelled_record(&job)).await? {
            Some(done) => {
                account(&s.counters, &done);
                // A job running here stops at once (the published cancel reaches us
                // too, but not before this answer).
                if let Some(n) = s.live.lock().get(id) {
                    n.notify_one();
                }
                Ok(done)
            }
            None => Err(Error::NotFound(format!("no job '{id}'"))),
        }
    }

    fn stats(&self) -> SchedulerStats {
        node_stats(&self.shared)
    }

    async fn recover(&self) -> Result<RecoveryReport> {
        let s = &self.shared;
        let mut report = RecoveryReport::default();
        for job in s.store.unfinished().await? {
            let owned = match s.queue.owner(&job.id).await? {
                // A queue entry: its lease (or the reclaimer) decides.
                Some(None) => true,
                // Run in the process of a node that is still alive.
                Some(Some(node)) if node != s.config.node_id => s.queue.node_alive(&node).await?,
                _ => false,
            };
            if owned {
                continue;
            }
            match job.status {
                JobStatus::Queued => match s.router.route(&job.tenant, &job.function).await {
                    Ok(route) => {
                        s.queue.enqueue(&route.backend, &job, None, None).await?;
                        report.requeued += 1;
                    }
                    Err(e) => {
                        let mut failed = job.clone();
                        failed.status = JobStatus::Failed;
                        failed.finished_ms = Some(now_ms());
                        failed.error = Some(ErrorInfo::from(&e));
                        s.store.put(&failed, sopm_core::Durability::Durable).await?;
                        report.failed += 1;
                    }
                },
                _ => {
                    let mut interrupted = job.clone();
                    interrupted.status = JobStatus::Interrupted;
                    interrupted.finished_ms = Some(now_ms());
                    interrupted.error = Some(ErrorInfo::from(&Error::Interrupted(
                        "the process running this job stopped; it was not re-run".into(),
                    )));
                    s.store
                        .put(&interrupted, sopm_core::Durability::Durable)
                        .await?;
                    report.interrupted += 1;
                }
            }
        }
        Ok(report)
    }

    async fn shutdown(&self, grace: Duration) -> Result<()> {
        let s = &self.shared;
        s.closed.store(true, Ordering::Release);
        let _ = s.stop.send(true);
        let until = Instant::now() + grace;
        while s.counters.running() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = s.interrupt.send(true);
        // Running jobs now end (released or interrupted); give them a moment to say so.
        let until = Instant::now() + Duration::from_secs(5);
        while s.counters.running() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for t in s.tasks.lock().drain(..) {
            t.abort();
        }
        heartbeat::forget(s).await;
        s.store.flush().await
    }

    fn queues_builds(&self) -> bool {
        true
    }

    async fn submit_build(&self, request: BuildRequest) -> Result<()> {
        self.shared.builds_queue.enqueue(&request).await
    }

    async fn retired(&self, function_id: &str, version: Option<u32>) -> Result<()> {
        notify::publish_retired(&self.shared, function_id, version).await
    }

    async fn cluster_stats(&self) -> Result<Option<ClusterStats>> {
        heartbeat::cluster(&self.shared).await.map(Some)
    }
}
