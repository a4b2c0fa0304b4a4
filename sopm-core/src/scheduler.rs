//! The `Scheduler` trait and `LocalScheduler`, the in-process scheduler: a bounded
//! queue, a concurrency limit shared fairly between tenants (see `slots`), per-job
//! deadlines, waiting and fire-and-forget modes, job records and stats.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use serde_json::Value;
use tokio::sync::{watch, Notify};

use crate::builder::BuildRequest;
use crate::counters::SchedulerCounters;
use crate::dispatch::Dispatcher;
use crate::error::{Error, ErrorInfo, Result};
use crate::executor::{Invocation, Target};
use crate::jobstore::{Durability, JobStore};
use crate::slots::{Admission, Slot, Slots, TenantCaps, Ticket};
use crate::stats::{ClusterStats, SchedulerStats};
use crate::types::{now_ms, FunctionRef, Job, JobId, JobStatus, Output, TenantId};

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

impl Submitted {
    /// The output of a job that finished within the wait, or its error; a pending job
    /// is an internal error (for callers that waited without a time limit).
    pub fn into_output(self) -> Result<Output> {
        match self {
            Submitted::Finished(job) => job.into_output(),
            Submitted::Pending { id, .. } => Err(Error::Internal(format!(
                "job {id} did not finish although the call waited for it"
            ))),
        }
    }
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

    /// Runs a function for a caller that wants only its output and never its job:
    /// accepted and refused like [`submit`](Self::submit), stopped at its deadline and
    /// counted in the stats, but a scheduler may keep no record of it (nobody could
    /// look it up). Default: a waiting submission without a time limit, so the job is
    /// recorded and goes on if the returned future is dropped; [`LocalScheduler`]
    /// keeps no record of a built-in's call and stops it when dropped (counted
    /// `cancelled`).
    async fn call(&self, request: JobRequest) -> Result<Output> {
        self.submit(request, SubmitMode::Wait(None))
            .await?
            .into_output()
    }

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
    closed: AtomicBool,
    shutdown_tx: watch::Sender<bool>,
    live: Vec<Mutex<FxHashMap<JobId, Arc<LiveJob>>>>,
    counters: SchedulerCounters,
}

/// The in-process scheduler. Cheap to clone (an `Arc` inside).
#[derive(Debug, Clone)]
pub struct LocalScheduler {
    inner: Arc<Inner>,
}

type RunFuture = Pin<Box<dyn Future<Output = Job> + Send>>;

/// Counts a [`call`](Scheduler::call) that ends, or that its caller dropped
/// (`cancelled`), exactly once.
struct CallEnd<'a> {
    counters: &'a SchedulerCounters,
    function: &'a FunctionRef,
    accepted: Instant,
    ended: bool,
}

impl CallEnd<'_> {
    fn ended(mut self, status: JobStatus) {
        self.ended = true;
        self.counters
            .ended(status, self.function, self.accepted.elapsed());
    }
}

impl Drop for CallEnd<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.counters
                .ended(JobStatus::Cancelled, self.function, self.accepted.elapsed());
        }
    }
}

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
                closed: AtomicBool::new(false),
                shutdown_tx,
                live: (0..SHARDS)
                    .map(|_| Mutex::new(FxHashMap::default()))
                    .collect(),
                counters: SchedulerCounters::default(),
            }),
        }
    }

    /// The job store this scheduler records into.
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.inner.store
    }

    /// Makes an accepted request a job and answers in `mode`.
    async fn submit_accepted(
        &self,
        request: JobRequest,
        route: Route,
        limit: Duration,
        admission: Admission,
        mode: SubmitMode,
    ) -> Result<Submitted> {
        let inner = &self.inner;
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

    /// Routes a request through the router, or refuses it once shutting down (the
    /// router's own future, awaited by the caller: no async layer of its own).
    fn route<'a>(
        &'a self,
        request: &'a JobRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Route>> + Send + 'a>> {
        if self.closed.load(Ordering::Acquire) {
            return Box::pin(std::future::ready(Err(Error::Unavailable(
                "the server is shutting down".into(),
            ))));
        }
        self.router.route(&request.tenant, &request.function)
    }

    /// Takes a routed request's place: the time limit in force, and a slot or a place
    /// in the queue. A refusal by a full queue or a tenant's cap is counted, and so is an
    /// accepted job.
    fn admit(&self, request: &JobRequest, route: &Route) -> Result<(Duration, Admission)> {
        if !self.dispatcher.has(&route.backend) {
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
            .min(self.config.max_timeout);
        // A slot if one is free (and the tenant is under its running cap), else a place
        // in the tenant's queue, else a refusal.
        let admission = self
            .slots
            .admit(&request.tenant, false)
            .inspect_err(|_| self.counters.rejected())?;
        self.counters.submitted();
        Ok((limit, admission))
    }

    /// Waits for a queued job's slot. `None` when `stop` ends first or the server shuts
    /// down, and also when a slot comes in the same instant as either (a slot freed by
    /// a job just cancelled or interrupted can): those win, so the job does not start.
    async fn queued_slot(
        &self,
        mut ticket: Ticket,
        stop: impl Future<Output = ()>,
        stopped: impl Fn() -> bool,
    ) -> Option<Slot> {
        let mut shutdown = self.shutdown_tx.subscribe();
        let granted = tokio::select! {
            biased;
            slot = ticket.granted() => slot,
            _ = stop => None,
            _ = shutdown.wait_for(|v| *v) => None,
        };
        let stopping = stopped() || *shutdown.borrow();
        match granted {
            Some(slot) if !stopping => Some(slot),
            Some(slot) => {
                drop(slot);
                None
            }
            None => {
                ticket.withdraw();
                None
            }
        }
    }

    /// Runs an invocation to its end. One that ends on its first poll (most built-ins)
    /// needs no timer and no shutdown watch, and its live job (if any) no separate
    /// `running` record; else it runs under its deadline, its live job's cancel and
    /// the shutdown. (A timer polls its future before its clock too, so the outcome is
    /// the one the timer would give.)
    async fn run_invocation(
        &self,
        backend: &str,
        invocation: Invocation,
        timeout_ms: u64,
        live: Option<&LiveJob>,
    ) -> Result<Output> {
        let deadline = invocation.deadline;
        let mut call = std::pin::pin!(self.dispatcher.invoke(backend, invocation));
        if let std::task::Poll::Ready(r) = futures::poll!(call.as_mut()) {
            return r;
        }
        if let Some(live) = live.filter(|l| l.persisted.load(Ordering::Acquire)) {
            self.record(&live.snapshot(), Durability::Buffered).await;
        }
        let cancelled = async {
            match live {
                Some(live) => {
                    live.cancel.notified().await;
                    Inner::cancel_error(live.cancel_reason.load(Ordering::Acquire))
                }
                None => std::future::pending().await,
            }
        };
        let mut shutdown = self.shutdown_tx.subscribe();
        tokio::select! {
            biased;
            r = tokio::time::timeout_at(deadline.into(), call.as_mut()) => r.unwrap_or_else(|_| {
                Err(Error::Timeout(format!(
                    "the job ran past its {timeout_ms} ms time limit and was stopped"
                )))
            }),
            e = cancelled => Err(e),
            _ = shutdown.wait_for(|v| *v) => Err(Inner::cancel_error(CANCEL_SHUTDOWN)),
        }
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
        outcome: Result<Output>,
        started: Option<Instant>,
    ) -> Job {
        let finished = Instant::now();
        let snapshot = {
            let mut job = live.job.lock();
            log_internal(&outcome, &job.id);
            let finished_ms = live.wall_ms(job.created_ms, finished);
            let duration_us =
                started.map(|s| finished.saturating_duration_since(s).as_micros() as u64);
            job.finish(outcome, finished_ms, duration_us);
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
        self.counters.ended(
            snapshot.status,
            &snapshot.function,
            finished.saturating_duration_since(live.accepted),
        );
        // Only a persisted job was ever recorded or registered (status, cancel). A waiting
        // call that finished in time has no other record (this is its sole one) and skips
        // the shard lock and the waiter list. Registration sets `persisted` before it
        // reads the job's status, so one side always sees the other: if a waiting call's
        // time runs out while this record is being written, it registers the job, sees it
        // finished and records the same finished state again, which changes nothing.
        let persisted = live.persisted.load(Ordering::Acquire);
        if persisted {
            self.record(&snapshot, Durability::Buffered).await;
        } else if let Err(e) = self.store.put_sole(&snapshot).await {
            tracing::error!(job = %snapshot.id, error = %e, "failed to record job");
        }
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

/// Logs an error that is SOPM's own fault (the caller sees only its message).
fn log_internal(outcome: &Result<Output>, job: &JobId) {
    if let Err(e @ (Error::Internal(_) | Error::Storage(_))) = outcome {
        tracing::error!(job = %job, error = %e, "job failed inside SOPM");
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
        Admission::Queued(ticket) => {
            let stopped = || live.cancel_reason.load(Ordering::Acquire) != CANCEL_NONE;
            match inner
                .queued_slot(ticket, live.cancel.notified(), stopped)
                .await
            {
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

    let running = inner.counters.run();
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
    let outcome = inner
        .run_invocation(&route.backend, invocation, timeout_ms, Some(&live))
        .await;
    let job = inner.finish(&live, outcome, Some(started)).await;
    drop(running);
    drop(slot);
    job
}

#[async_trait]
impl Scheduler for LocalScheduler {
    async fn submit(&self, request: JobRequest, mode: SubmitMode) -> Result<Submitted> {
        let inner = &self.inner;
        let route = inner.route(&request).await?;
        let (limit, admission) = inner.admit(&request, &route)?;
        self.submit_accepted(request, route, limit, admission, mode)
            .await
    }

    /// A built-in's call has no job record: no live entry, no store write, no record
    /// copies (nothing lists built-in jobs, and the caller never sees an id); the same
    /// admission, deadline, shutdown and stats as a job. A user function's call is
    /// recorded as a job, so it shows in the function's recent logs.
    async fn call(&self, request: JobRequest) -> Result<Output> {
        let inner = &self.inner;
        let route = inner.route(&request).await?;
        let (limit, admission) = inner.admit(&request, &route)?;
        if let Target::User(_) = route.target {
            let mode = SubmitMode::Wait(None);
            return self
                .submit_accepted(request, route, limit, admission, mode)
                .await?
                .into_output();
        }
        let accepted = Instant::now();
        let Route {
            backend,
            target,
            function,
            ..
        } = route;
        let end = CallEnd {
            counters: &inner.counters,
            function: &function,
            accepted,
            ended: false,
        };
        let (slot, started) = match admission {
            Admission::Started(slot) => (slot, accepted),
            Admission::Queued(ticket) => {
                match inner
                    .queued_slot(ticket, std::future::pending(), || false)
                    .await
                {
                    Some(slot) => (slot, Instant::now()),
                    None => {
                        end.ended(JobStatus::Cancelled);
                        return Err(Error::Cancelled(
                            "the server shut down before this call started".into(),
                        ));
                    }
                }
            }
        };
        let running = inner.counters.run();
        let job_id = JobId::random();
        let invocation = Invocation {
            job_id: job_id.clone(),
            tenant: request.tenant,
            target,
            input: request.input,
            deadline: started + limit,
        };
        let outcome = inner
            .run_invocation(&backend, invocation, limit.as_millis() as u64, None)
            .await;
        log_internal(&outcome, &job_id);
        end.ended(match &outcome {
            Ok(_) => JobStatus::Succeeded,
            Err(e) => JobStatus::of_error(e),
        });
        drop(running);
        drop(slot);
        outcome
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
        i.counters.snapshot(
            i.slots.waiting(),
            i.config.queue_capacity as u64,
            i.config.max_concurrency as u64,
        )
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
        let busy = || inner.counters.running() + inner.slots.waiting();
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
            while inner.counters.running() > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        inner.store.flush().await
    }
}
