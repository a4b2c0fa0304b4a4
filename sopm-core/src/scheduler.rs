//! The `Scheduler` trait and `LocalScheduler`, the in-process scheduler: a bounded
//! queue, a concurrency limit shared fairly between tenants (see `slots`), per-job
//! deadlines, waiting and fire-and-forget modes, job records and stats.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use serde_json::Value;
use tokio::sync::{watch, Notify};

use crate::builder::BuildRequest;
use crate::dispatch::Dispatcher;
use crate::error::{Error, ErrorInfo, Result};
use crate::jobstore::{Durability, JobStore};
use crate::slots::{Admission, Slot, Slots, TenantCaps};
use crate::stats::{
    ClusterStats, FunctionCounters, FunctionStats, LatencyHistogram, SchedulerStats,
};
use crate::types::{now_ms, FunctionRef, Invocation, Job, JobId, JobStatus, Target, TenantId};

/// Where a job goes: the backend that runs it (by name), the resolved target, and its
/// time limit. A route names a backend and never holds an executor, so a node that
/// does not run the backend can still accept and queue the job; the node that runs
/// it hands it to its [`Dispatcher`].
#[derive(Debug, Clone)]
pub struct Route {
    /// The name of the backend that runs it ([`BUILTIN_BACKEND`](crate::BUILTIN_BACKEND)
    /// for built-ins).
    pub backend: Arc<str>,
    /// The resolved function.
    pub target: Target,
    /// The function's own time limit.
    pub timeout: Duration,
    /// The canonical function reference to record (a resolved version, for example).
    pub function: FunctionRef,
}

/// Resolves a function reference to a route. The [`Platform`](crate::Platform)
/// provides the standard one.
#[async_trait]
pub trait Router: Debug + Send + Sync + 'static {
    /// Resolves `function` for `tenant`; unknown functions are `not_found`.
    async fn route(&self, tenant: &TenantId, function: &FunctionRef) -> Result<Route>;
}

/// A request to run a function.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// The caller.
    pub tenant: TenantId,
    /// What to run.
    pub function: FunctionRef,
    /// Its input.
    pub input: Arc<Value>,
    /// A time limit tighter than the function's own, if the caller wants one.
    pub timeout: Option<Duration>,
}

impl JobRequest {
    /// A request with the function's own time limit.
    pub fn new(tenant: TenantId, function: FunctionRef, input: Value) -> Self {
        JobRequest {
            tenant,
            function,
            input: Arc::new(input),
            timeout: None,
        }
    }
}

/// How [`Scheduler::submit`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitMode {
    /// Wait for the result up to this long (`None`: until the job ends). A job still
    /// going then is made durable and goes on; the answer is
    /// [`Submitted::Pending`].
    Wait(Option<Duration>),
    /// Make the job durable and answer at once (fire-and-forget).
    Detach,
}

/// The answer to a submission.
// `Finished` is the common answer on the hot path; boxing it would cost an
// allocation per call to save a few bytes in the rare `Pending`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Submitted {
    /// The job ended within the wait; here is its record.
    Finished(Job),
    /// The job is durable and still queued or running.
    Pending {
        /// Its id, for [`Scheduler::status`].
        id: JobId,
        /// Its status when the answer was made.
        status: JobStatus,
    },
}

/// What start-up recovery did with jobs left unfinished by a previous process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Jobs that were queued and were queued again.
    pub requeued: u64,
    /// Jobs that were running and are now `interrupted`.
    pub interrupted: u64,
    /// Queued jobs whose function no longer resolves; now `failed`.
    pub failed: u64,
}

/// Accepts jobs and runs them. Implementations: [`LocalScheduler`] (in-process),
/// Redis-backed in `sopm-backends` for many nodes.
///
/// Contract:
/// - `submit` either refuses the job with an error (unknown function: `not_found`; queue
///   full: `overloaded` with a retry delay; the tenant's share of the queue full:
///   `quota_exceeded` with a retry delay; shutting down: `unavailable`) or accepts
///   it. An accepted job always reaches a terminal state and is recorded in the job
///   store; a job answered as [`Submitted::Pending`] is durable before the answer.
/// - `status` and `cancel` only see the tenant's own jobs: another tenant's id is
///   `not_found`.
/// - Every job is stopped at its deadline (`timed_out`).
#[async_trait]
pub trait Scheduler: Debug + Send + Sync + 'static {
    /// Submits a job.
    async fn submit(&self, request: JobRequest, mode: SubmitMode) -> Result<Submitted>;

    /// A job's current record.
    async fn status(&self, tenant: &TenantId, id: &JobId) -> Result<Job>;

    /// Cancels a queued or running job and returns its final record; a finished job
    /// is `conflict`.
    async fn cancel(&self, tenant: &TenantId, id: &JobId) -> Result<Job>;

    /// Current figures.
    fn stats(&self) -> SchedulerStats;

    /// Deals with jobs a previous process left queued or running: queued ones run
    /// again, running ones become `interrupted` (they may have had effects).
    async fn recover(&self) -> Result<RecoveryReport>;

    /// Stops accepting jobs, lets running ones finish for up to `grace`, then records
    /// what is left (running: `interrupted`; durable queued jobs stay queued for the
    /// next start) and flushes the job store.
    async fn shutdown(&self, grace: Duration) -> Result<()>;

    /// Whether builds go through this scheduler (to whichever node has the builder)
    /// instead of running in the uploading process. Default: no.
    fn queues_builds(&self) -> bool {
        false
    }

    /// Hands a build over (when [`queues_builds`](Self::queues_builds)); the version is
    /// already recorded `building`. Default: `unavailable`.
    async fn submit_build(&self, request: BuildRequest) -> Result<()> {
        Err(Error::Unavailable(format!(
            "this scheduler does not queue builds (version {} of '{}')",
            request.version.version, request.version.function_id
        )))
    }

    /// Called by the platform after it retired a deleted function (`version: None`) or
    /// one pruned version on this node; a cluster scheduler tells every other node, which
    /// retires it through its [`Dispatcher`]. Default: nothing to tell.
    async fn retired(&self, _function_id: &str, _version: Option<u32>) -> Result<()> {
        Ok(())
    }

    /// The figures of every node, when this scheduler spans several. Default: `None`
    /// (one node; [`stats`](Self::stats) says it all).
    async fn cluster_stats(&self) -> Result<Option<ClusterStats>> {
        Ok(None)
    }
}

/// Settings of a [`LocalScheduler`].
#[derive(Debug, Clone)]
pub struct LocalSchedulerConfig {
    /// Most jobs running at once.
    pub max_concurrency: usize,
    /// Most jobs waiting for a slot; past it, submissions are `overloaded`.
    pub queue_capacity: usize,
    /// Upper bound of any job's time limit.
    pub max_timeout: Duration,
    /// The delay suggested to refused callers.
    pub retry_after: Duration,
    /// Most jobs of one tenant running at once (`None`: three quarters of
    /// `max_concurrency`, at least 1). A tenant at its cap waits even if slots are
    /// free, so others always find some.
    pub max_running_per_tenant: Option<usize>,
    /// Most jobs of one tenant waiting for a slot (`None`: half of `queue_capacity`,
    /// at least 1); past it, that tenant's submissions are `quota_exceeded` while
    /// others' are still accepted.
    pub max_queued_per_tenant: Option<usize>,
}

impl LocalSchedulerConfig {
    /// The per-tenant caps in force, `(running, queued)`: the configured ones, else
    /// the defaults.
    pub fn tenant_caps(&self) -> (usize, usize) {
        let running = self
            .max_running_per_tenant
            .unwrap_or(self.max_concurrency.saturating_mul(3) / 4)
            .max(1);
        let queued = self
            .max_queued_per_tenant
            .unwrap_or(self.queue_capacity / 2)
            .max(1);
        (running, queued)
    }
}

impl Default for LocalSchedulerConfig {
    fn default() -> Self {
        LocalSchedulerConfig {
            max_concurrency: 1024,
            queue_capacity: 10_000,
            max_timeout: Duration::from_secs(300),
            retry_after: Duration::from_secs(1),
            max_running_per_tenant: None,
            max_queued_per_tenant: None,
        }
    }
}

const CANCEL_NONE: u8 = 0;
const CANCEL_USER: u8 = 1;
const CANCEL_SHUTDOWN: u8 = 2;

/// A job between acceptance and its end.
#[derive(Debug)]
struct LiveJob {
    job: Mutex<Job>,
    /// When it was accepted; `job.created_ms` is the same instant on the wall clock,
    /// so later wall-clock times are derived from this one reading.
    accepted: Instant,
    cancel_reason: AtomicU8,
    cancel: Notify,
    done: Notify,
    /// Whether the job has a durable record (so it was acknowledged as pending).
    persisted: AtomicBool,
    /// Nobody can look the job up while it runs (a call waiting without a time limit:
    /// it is never registered), so finishing may move its output out instead of
    /// copying it.
    private: bool,
}

impl LiveJob {
    fn new(job: Job, persisted: bool, private: bool) -> Self {
        LiveJob {
            job: Mutex::new(job),
            accepted: Instant::now(),
            cancel_reason: AtomicU8::new(CANCEL_NONE),
            cancel: Notify::new(),
            done: Notify::new(),
            persisted: AtomicBool::new(persisted),
            private,
        }
    }

    fn snapshot(&self) -> Job {
        self.job.lock().clone()
    }

    /// The wall-clock time (ms since the epoch) of `at`, from the acceptance instant.
    fn wall_ms(&self, created_ms: u64, at: Instant) -> u64 {
        created_ms + at.saturating_duration_since(self.accepted).as_millis() as u64
    }
}

const SHARDS: usize = 16;

#[derive(Debug)]
struct Inner {
    config: LocalSchedulerConfig,
    router: Arc<dyn Router>,
    dispatcher: Arc<Dispatcher>,
    store: Arc<dyn JobStore>,
    slots: Arc<Slots>,
    running: AtomicU64,
    closed: AtomicBool,
    shutdown_tx: watch::Sender<bool>,
    live: Vec<Mutex<FxHashMap<JobId, Arc<LiveJob>>>>,
    submitted: AtomicU64,
    rejected: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    cancelled: AtomicU64,
    latency: LatencyHistogram,
    per_function: RwLock<FxHashMap<String, Arc<FunctionCounters>>>,
}

/// The in-process scheduler. Cheap to clone (an `Arc` inside).
#[derive(Debug, Clone)]
pub struct LocalScheduler {
    inner: Arc<Inner>,
}

type RunFuture = Pin<Box<dyn Future<Output = Job> + Send>>;

/// Keeps a waiting call's job alive if the caller goes away: the job goes on in a
/// task of its own and is recorded as usual.
struct DetachOnDrop(Option<RunFuture>);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        if let Some(fut) = self.0.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(fut);
            }
        }
    }
}

fn shard_of(id: &JobId) -> usize {
    // Ids are random, so their first bytes spread evenly.
    let b = id.as_str().as_bytes();
    (b.first().copied().unwrap_or(0) as usize + b.get(1).copied().unwrap_or(0) as usize) % SHARDS
}

impl LocalScheduler {
    /// A scheduler that routes with `router`, runs jobs through `dispatcher` and
    /// records in `store`.
    pub fn new(
        config: LocalSchedulerConfig,
        router: Arc<dyn Router>,
        dispatcher: Arc<Dispatcher>,
        store: Arc<dyn JobStore>,
    ) -> Self {
        let (shutdown_tx, _) = watch::channel(false);
        let (max_running, max_queued) = config.tenant_caps();
        let slots = Slots::new(
            config.max_concurrency,
            config.queue_capacity,
            TenantCaps {
                max_running,
                max_queued,
            },
            config.retry_after,
        );
        LocalScheduler {
            inner: Arc::new(Inner {
                config,
                router,
                dispatcher,
                store,
                slots,
                running: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                shutdown_tx,
                live: (0..SHARDS)
                    .map(|_| Mutex::new(FxHashMap::default()))
                    .collect(),
                submitted: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                succeeded: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                timed_out: AtomicU64::new(0),
                cancelled: AtomicU64::new(0),
                latency: LatencyHistogram::new(),
                per_function: RwLock::new(FxHashMap::default()),
            }),
        }
    }

    /// The job store this scheduler records into.
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.inner.store
    }
}

impl Inner {
    fn register(&self, live: &Arc<LiveJob>, id: &JobId) {
        self.live[shard_of(id)]
            .lock()
            .insert(id.clone(), live.clone());
    }

    fn unregister(&self, id: &JobId) {
        self.live[shard_of(id)].lock().remove(id);
    }

    fn find_live(&self, id: &JobId) -> Option<Arc<LiveJob>> {
        self.live[shard_of(id)].lock().get(id).cloned()
    }

    /// Takes a slot if one is free (and the tenant is under its running cap), else a
    /// place in the tenant's queue, else refuses.
    fn admit(&self, tenant: &TenantId) -> Result<Admission> {
        self.slots.admit(tenant, false).inspect_err(|_| {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Runs `f` on the function's counters: under the map's read lock when they exist
    /// (no reference count touched), created under its write lock the first time.
    fn with_counters(&self, function: &FunctionRef, f: impl FnOnce(&FunctionCounters)) {
        let key: &str = match function {
            FunctionRef::Builtin { name } => name,
            FunctionRef::User { id, .. } => id,
        };
        if let Some(c) = self.per_function.read().get(key) {
            return f(c);
        }
        let c = self
            .per_function
            .write()
            .entry(key.to_string())
            .or_default()
            .clone();
        f(&c)
    }

    fn account(&self, job: &Job, latency: Duration) {
        let counter = match job.status {
            JobStatus::Succeeded => &self.succeeded,
            JobStatus::TimedOut => &self.timed_out,
            JobStatus::Cancelled => &self.cancelled,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.latency.record(latency);
        self.with_counters(&job.function, |c| {
            c.calls.fetch_add(1, Ordering::Relaxed);
            if job.status != JobStatus::Succeeded {
                c.errors.fetch_add(1, Ordering::Relaxed);
            }
            c.latency.record(latency);
        });
    }

    async fn record(&self, job: &Job, durability: Durability) {
        if let Err(e) = self.store.put(job, durability).await {
            tracing::error!(job = %job.id, error = %e, "failed to record job");
        }
    }

    /// Ends a job: sets its terminal state, records it, wakes waiters.
    async fn finish(
        &self,
        live: &LiveJob,
        outcome: Result<crate::types::Output>,
        started: Option<Instant>,
    ) -> Job {
        let finished = Instant::now();
        let snapshot = {
            let mut job = live.job.lock();
            job.finished_ms = Some(live.wall_ms(job.created_ms, finished));
            job.duration_us =
                started.map(|s| finished.saturating_duration_since(s).as_micros() as u64);
            match outcome {
                Ok(out) => {
                    job.status = JobStatus::Succeeded;
                    job.output = Some(out.value);
                    job.logs = out.logs;
                }
                Err(mut e) => {
                    if let Error::Function { logs, .. } = &mut e {
                        if let Some(l) = logs.take() {
                            job.logs = Some(l);
                        }
                    }
                    job.status = match &e {
                        Error::Timeout(_) => JobStatus::TimedOut,
                        Error::Cancelled(_) => JobStatus::Cancelled,
                        Error::Interrupted(_) => JobStatus::Interrupted,
                        _ => JobStatus::Failed,
                    };
                    if matches!(e, Error::Internal(_) | Error::Storage(_)) {
                        tracing::error!(job = %job.id, error = %e, "job failed inside SOPM");
                    }
                    job.error = Some(ErrorInfo::from(&e));
                }
            }
            if live.private {
                // Nobody reads this record again: move the output (it can be large)
                // into the snapshot rather than copy it.
                let output = job.output.take();
                let logs = job.logs.take();
                Job {
                    output,
                    logs,
                    ..job.clone()
                }
            } else {
                job.clone()
            }
        };
        self.account(&snapshot, finished.saturating_duration_since(live.accepted));
        self.record(&snapshot, Durability::Buffered).await;
        // Only a persisted job was ever registered (status, cancel): a waiting call that
        // finished in time skips the shard lock and the waiter list. Registration sets
        // `persisted` before it reads the job's status, so one side always sees the other.
        if live.persisted.load(Ordering::Acquire) {
            live.done.notify_waiters();
            self.unregister(&snapshot.id);
        }
        snapshot
    }

    fn cancel_error(reason: u8) -> Error {
        if reason == CANCEL_SHUTDOWN {
            Error::Interrupted(
                "the server shut down while this job was running; it was not re-run".into(),
            )
        } else {
            Error::Cancelled("cancelled by its owner".into())
        }
    }
}

/// Runs one job from acceptance to its end.
async fn run_job(inner: Arc<Inner>, live: Arc<LiveJob>, route: Route, admission: Admission) -> Job {
    // A waiting call that took a free slot starts the instant it was accepted (no
    // second clock reading); a detached one after its durable record, a queued one
    // when its slot comes.
    let (slot, started): (Slot, Instant) = match admission {
        Admission::Started(slot) if !live.persisted.load(Ordering::Acquire) => {
            (slot, live.accepted)
        }
        Admission::Started(slot) => (slot, Instant::now()),
        Admission::Queued(mut ticket) => {
            let mut shutdown = inner.shutdown_tx.subscribe();
            let granted = tokio::select! {
                biased;
                slot = ticket.granted() => slot,
                _ = live.cancel.notified() => None,
                _ = shutdown.wait_for(|v| *v) => None,
            };
            // A slot freed by a job that was just cancelled or interrupted can reach a
            // queued job in the same instant as its own cancel or the shutdown: those win,
            // so the job does not start (a durable one stays queued for the next start).
            let stopping =
                live.cancel_reason.load(Ordering::Acquire) != CANCEL_NONE || *shutdown.borrow();
            let granted = match granted {
                Some(slot) if !stopping => Some(slot),
                Some(slot) => {
                    drop(slot);
                    None
                }
                None => {
                    ticket.withdraw();
                    None
                }
            };
            match granted {
                Some(slot) => (slot, Instant::now()),
                None => {
                    let reason = live.cancel_reason.load(Ordering::Acquire);
                    if reason != CANCEL_USER && live.persisted.load(Ordering::Acquire) {
                        // Durable and never started: it stays queued for the next start.
                        inner.unregister(&live.job.lock().id);
                        live.done.notify_waiters();
                        return live.snapshot();
                    }
                    let err = if reason == CANCEL_USER {
                        Error::Cancelled("cancelled by its owner while queued".into())
                    } else {
                        Error::Cancelled("the server shut down before this job started".into())
                    };
                    return inner.finish(&live, Err(err), None).await;
                }
            }
        }
    };

    inner.running.fetch_add(1, Ordering::AcqRel);
    let (invocation, timeout_ms) = {
        let mut job = live.job.lock();
        job.status = JobStatus::Running;
        job.started_ms = Some(live.wall_ms(job.created_ms, started));
        job.attempts += 1;
        let invocation = Invocation {
            job_id: job.id.clone(),
            tenant: job.tenant.clone(),
            target: route.target,
            input: job.input.clone(),
            deadline: started + Duration::from_millis(job.timeout_ms),
        };
        (invocation, job.timeout_ms)
    };
    let deadline = invocation.deadline;
    let past_deadline = |r: Result<Result<crate::types::Output>, tokio::time::error::Elapsed>| {
        r.unwrap_or_else(|_| {
            Err(Error::Timeout(format!(
                "the job ran past its {timeout_ms} ms time limit and was stopped"
            )))
        })
    };
    let mut call = std::pin::pin!(inner.dispatcher.invoke(&route.backend, invocation));
    // A job that finishes on its first poll (most built-ins) needs no separate
    // "running" record, no timer and no shutdown watch: its final record follows at
    // once. (A timer polls its future before its clock too, so this is the same
    // outcome the timer would give.)
    let outcome = match futures::poll!(call.as_mut()) {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => {
            if live.persisted.load(Ordering::Acquire) {
                let snapshot = live.snapshot();
                inner.record(&snapshot, Durability::Buffered).await;
            }
            let mut shutdown = inner.shutdown_tx.subscribe();
            let call = tokio::time::timeout_at(deadline.into(), call.as_mut());
            tokio::select! {
                biased;
                r = call => past_deadline(r),
                _ = live.cancel.notified() => Err(Inner::cancel_error(live.cancel_reason.load(Ordering::Acquire))),
                _ = shutdown.wait_for(|v| *v) => Err(Inner::cancel_error(CANCEL_SHUTDOWN)),
            }
        }
    };
    let job = inner.finish(&live, outcome, Some(started)).await;
    inner.running.fetch_sub(1, Ordering::AcqRel);
    drop(slot);
    job
}

#[async_trait]
impl Scheduler for LocalScheduler {
    async fn submit(&self, request: JobRequest, mode: SubmitMode) -> Result<Submitted> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::Unavailable("the server is shutting down".into()));
        }
        let route = inner
            .router
            .route(&request.tenant, &request.function)
            .await?;
        if !inner.dispatcher.has(&route.backend) {
            // One process has no queue to another node: refuse rather than accept a
            // job that cannot run.
            return Err(Error::Unavailable(format!(
                "the '{}' backend is not on this node, and this scheduler does not queue jobs for other nodes",
                route.backend
            )));
        }
        let limit = request
            .timeout
            .map_or(route.timeout, |t| t.min(route.timeout))
            .min(inner.config.max_timeout);
        let admission = inner.admit(&request.tenant)?;
        inner.submitted.fetch_add(1, Ordering::Relaxed);
        let job = Job::new(
            request.tenant,
            route.function.clone(),
            request.input,
            limit.as_millis() as u64,
        );
        let id = job.id.clone();
        let live = Arc::new(LiveJob::new(job, false, mode == SubmitMode::Wait(None)));

        match mode {
            SubmitMode::Detach => {
                inner.register(&live, &id);
                live.persisted.store(true, Ordering::Release);
                let snapshot = live.snapshot();
                if let Err(e) = inner.store.put(&snapshot, Durability::Durable).await {
                    inner.unregister(&id);
                    if let Admission::Queued(ticket) = admission {
                        ticket.withdraw();
                    }
                    tracing::error!(error = %e, "could not record a submitted job");
                    return Err(e);
                }
                tokio::spawn(run_job(inner.clone(), live, route, admission));
                Ok(Submitted::Pending {
                    id,
                    status: JobStatus::Queued,
                })
            }
            SubmitMode::Wait(wait) => {
                let mut guard = DetachOnDrop(Some(Box::pin(run_job(
                    inner.clone(),
                    live.clone(),
                    route,
                    admission,
                ))));
                let fut = guard.0.as_mut().expect("set above");
                let finished = match wait {
                    None => Some(fut.await),
                    // A job that ends on its first poll needs no timer (no clock read).
                    Some(wait) => match futures::poll!(fut.as_mut()) {
                        std::task::Poll::Ready(job) => Some(job),
                        std::task::Poll::Pending => {
                            tokio::select! {
                                biased;
                                job = fut => Some(job),
                                _ = tokio::time::sleep(wait) => None,
                            }
                        }
                    },
                };
                if let Some(job) = finished {
                    guard.0 = None;
                    return Ok(Submitted::Finished(job));
                }
                // Still going: make it durable, let it go on by itself, answer pending.
                inner.register(&live, &id);
                live.persisted.store(true, Ordering::Release);
                let snapshot = live.snapshot();
                if snapshot.status.is_terminal() {
                    inner.unregister(&id);
                }
                drop(guard);
                inner.record(&snapshot, Durability::Durable).await;
                Ok(Submitted::Pending {
                    id,
                    status: snapshot.status,
                })
            }
        }
    }

    async fn status(&self, tenant: &TenantId, id: &JobId) -> Result<Job> {
        let not_found = || Error::not_found(format!("no job with id '{id}'"));
        if let Some(live) = self.inner.find_live(id) {
            let snap = live.snapshot();
            return if &snap.tenant == tenant {
                Ok(snap)
            } else {
                Err(not_found())
            };
        }
        match self.inner.store.get(id).await? {
            Some(job) if &job.tenant == tenant => Ok(job),
            _ => Err(not_found()),
        }
    }

    async fn cancel(&self, tenant: &TenantId, id: &JobId) -> Result<Job> {
        if let Some(live) = self.inner.find_live(id) {
            if &live.job.lock().tenant != tenant {
                return Err(Error::not_found(format!("no job with id '{id}'")));
            }
            let done = live.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if live.job.lock().status.is_terminal() {
                return Err(Error::Conflict(format!("job '{id}' has already finished")));
            }
            let _ = live.cancel_reason.compare_exchange(
                CANCEL_NONE,
                CANCEL_USER,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            live.cancel.notify_one();
            let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
            return Ok(live.snapshot());
        }
        let job = self.status(tenant, id).await?;
        if job.status.is_terminal() {
            Err(Error::Conflict(format!(
                "job '{id}' has already finished ({})",
                job.status.as_str()
            )))
        } else {
            Err(Error::Conflict(format!(
                "job '{id}' is {} but not on this node",
                job.status.as_str()
            )))
        }
    }

    fn stats(&self) -> SchedulerStats {
        let i = &self.inner;
        let mut functions: Vec<FunctionStats> = i
            .per_function
            .read()
            .iter()
            .map(|(name, c)| FunctionStats {
                function: name.clone(),
                calls: c.calls.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                latency: c.latency.summary(),
            })
            .collect();
        functions.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.function.cmp(&b.function)));
        SchedulerStats {
            submitted: i.submitted.load(Ordering::Relaxed),
            rejected: i.rejected.load(Ordering::Relaxed),
            succeeded: i.succeeded.load(Ordering::Relaxed),
            failed: i.failed.load(Ordering::Relaxed),
            timed_out: i.timed_out.load(Ordering::Relaxed),
            cancelled: i.cancelled.load(Ordering::Relaxed),
            queue_depth: i.slots.waiting(),
            queue_capacity: i.config.queue_capacity as u64,
            running: i.running.load(Ordering::Relaxed),
            max_concurrency: i.config.max_concurrency as u64,
            latency: i.latency.summary(),
            functions,
        }
    }

    async fn recover(&self) -> Result<RecoveryReport> {
        let inner = &self.inner;
        let mut report = RecoveryReport::default();
        for mut job in inner.store.unfinished().await? {
            match job.status {
                JobStatus::Running => {
                    job.status = JobStatus::Interrupted;
                    job.finished_ms = Some(now_ms());
                    job.error = Some(ErrorInfo::from(&Error::Interrupted(
                        "the server stopped while this job was running; it was not re-run because it may have had effects".into(),
                    )));
                    inner.record(&job, Durability::Buffered).await;
                    report.interrupted += 1;
                }
                _ => match inner.router.route(&job.tenant, &job.function).await {
                    Ok(route) => {
                        let admission = inner.slots.admit(&job.tenant, true)?;
                        let id = job.id.clone();
                        let live = Arc::new(LiveJob::new(job, true, false));
                        inner.register(&live, &id);
                        tokio::spawn(run_job(inner.clone(), live, route, admission));
                        report.requeued += 1;
                    }
                    Err(e) => {
                        job.status = JobStatus::Failed;
                        job.finished_ms = Some(now_ms());
                        job.error = Some(ErrorInfo::from(&e));
                        inner.record(&job, Durability::Buffered).await;
                        report.failed += 1;
                    }
                },
            }
        }
        inner.store.flush().await?;
        if report != RecoveryReport::default() {
            tracing::info!(
                requeued = report.requeued,
                interrupted = report.interrupted,
                failed = report.failed,
                "recovered unfinished jobs"
            );
        }
        Ok(report)
    }

    async fn shutdown(&self, grace: Duration) -> Result<()> {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::Release);
        let busy = || inner.running.load(Ordering::Acquire) + inner.slots.waiting();
        let until = Instant::now() + grace;
        while busy() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if busy() > 0 {
            tracing::warn!(
                left = busy(),
                "grace period over; stopping the jobs still going"
            );
            for shard in &inner.live {
                for live in shard.lock().values() {
                    let _ = live.cancel_reason.compare_exchange(
                        CANCEL_NONE,
                        CANCEL_SHUTDOWN,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    live.cancel.notify_one();
                }
            }
            inner.shutdown_tx.send_replace(true);
            let until = Instant::now() + Duration::from_secs(2);
            while inner.running.load(Ordering::Acquire) > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        inner.store.flush().await
    }
}
