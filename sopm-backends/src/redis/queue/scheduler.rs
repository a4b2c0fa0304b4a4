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
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use super::builds::BuildQueue;
use super::counters::Account;
use super::stream::{Admission, JobQueue, QueueConfig};
use super::{heartbeat, notify, worker};
use crate::redis::RedisConnection;

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// Gateway and worker.
    All,
    /// Accepts jobs and queues them; runs none from the queue.
    Gateway,
    /// Runs jobs and builds from the queue.
    Worker,
}

impl NodeRole {
    /// `all`, `gateway` or `worker`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::All => "all",
            NodeRole::Gateway => "gateway",
            NodeRole::Worker => "worker",
        }
    }

    fn works(self) -> bool {
        matches!(self, NodeRole::All | NodeRole::Worker)
    }
}

/// What a node shutting down does with jobs still running when the grace period ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtShutdown {
    /// Give them back to the queue at once: another node runs them again (attempt + 1).
    /// At-least-once, like a crash, but without waiting for the lease to expire.
    Release,
    /// Record them `interrupted` (they may have had effects), as one process does.
    Interrupt,
}

/// Settings of a [`RedisScheduler`].
#[derive(Debug, Clone)]
pub struct RedisSchedulerConfig {
    /// This node's id: its consumer name, lease owner and result channel. Unique in
    /// the cluster.
    pub node_id: String,
    /// What this node does.
    pub role: NodeRole,
    /// The address it advertises (shown in the cluster's figures).
    pub address: String,
    /// Most jobs this node runs at once (queued jobs and waited built-ins).
    pub max_concurrency: usize,
    /// Most jobs waiting in one backend's queue (across the cluster); past it,
    /// submissions are `overloaded`.
    pub queue_capacity: usize,
    /// Upper bound of any job's time limit.
    pub max_timeout: Duration,
    /// The delay suggested to refused callers.
    pub retry_after: Duration,
    /// Leases, deliveries and blocking reads.
    pub queue: QueueConfig,
    /// Whether a waited call of a built-in runs in this process (no queue, no cold
    /// start) when this node has the built-in backend and a free slot.
    pub builtin_waits_in_process: bool,
    /// What happens to jobs still running at the end of a shutdown's grace period.
    pub at_shutdown: AtShutdown,
    /// How often this node's heartbeat is written (it expires after three).
    pub heartbeat: Duration,
}

impl RedisSchedulerConfig {
    /// Defaults for the node `node_id`: role `all`, 1024 slots, 10,000 queued jobs per
    /// backend, 10 s leases, 3 deliveries, built-in waits in process, release at
    /// shutdown, a heartbeat a second.
    pub fn new(node_id: impl Into<String>) -> Self {
        RedisSchedulerConfig {
            node_id: node_id.into(),
            role: NodeRole::All,
            address: String::new(),
            max_concurrency: 1024,
            queue_capacity: 10_000,
            max_timeout: Duration::from_secs(300),
            retry_after: Duration::from_secs(1),
            queue: QueueConfig::default(),
            builtin_waits_in_process: true,
            at_shutdown: AtShutdown::Release,
            heartbeat: Duration::from_secs(1),
        }
    }
}

/// State every task of the scheduler shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: RedisSchedulerConfig,
    pub(crate) conn: RedisConnection,
    pub(crate) queue: JobQueue,
    pub(crate) builds_queue: BuildQueue,
    pub(crate) router: Arc<dyn Router>,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) store: Arc<dyn JobStore>,
    /// This node's builds (`None`: it takes no builds from the queue).
    pub(crate) builds: Option<Arc<Builds>>,
    pub(crate) counters: SchedulerCounters,
    /// Slots for jobs from the queue.
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    /// Slots for waited built-ins run in this process (the claim loop holds free
    /// queue slots while it waits for entries).
    in_process_slots: Arc<tokio::sync::Semaphore>,
    /// Callers waiting on this node, by job id.
    pub(crate) waiters: Mutex<HashMap<JobId, oneshot::Sender<Job>>>,
    /// Jobs running on this node, by id: notified when cancelled elsewhere.
    pub(crate) live: Mutex<HashMap<JobId, Arc<Notify>>>,
    closed: AtomicBool,
    /// True once this node stops taking work.
    pub(crate) stop: watch::Sender<bool>,
    /// True once the grace period is over: running jobs stop.
    pub(crate) interrupt: watch::Sender<bool>,
    /// True while the pub/sub subscription is up.
    pub(crate) subscribed: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The tasks of jobs running here from the queue, by a number of their own.
    pub(crate) job_tasks: Mutex<(u64, HashMap<u64, tokio::task::AbortHandle>)>,
}

impl Shared {
    pub(crate) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

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

/// Removes a job from the live map when its run ends.
pub(crate) struct LiveGuard<'a> {
    shared: &'a Shared,
    id: JobId,
    /// Notified when the job is cancelled.
    pub(crate) cancel: Arc<Notify>,
}

impl<'a> LiveGuard<'a> {
    pub(crate) fn new(shared: &'a Shared, id: &JobId) -> Self {
        let cancel = Arc::new(Notify::new());
        shared.live.lock().insert(id.clone(), cancel.clone());
        LiveGuard {
            shared,
            id: id.clone(),
            cancel,
        }
    }
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.shared.live.lock().remove(&self.id);
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
            s.counters.account(&done);
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
                    Ok(()) => s.counters.account(&done),
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
                s.counters.account(&done);
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
        let s = &self.shared;
        s.counters.snapshot(
            s.queue.depth_seen(),
            s.config.queue_capacity as u64,
            s.config.max_concurrency as u64,
        )
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

/// The figures this node reports in its heartbeat.
pub(crate) fn node_stats(s: &Shared) -> SchedulerStats {
    s.counters.snapshot(
        s.queue.depth_seen(),
        s.config.queue_capacity as u64,
        s.config.max_concurrency as u64,
    )
}
