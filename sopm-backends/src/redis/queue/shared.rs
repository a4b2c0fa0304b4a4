//! `Shared`: the state every task of a `RedisScheduler` shares (its settings,
//! queues, parts, slots, waiting callers, running jobs and stop signals), with how its
//! tasks wait (a pause that ends when the node stops, a back-off while Redis is away),
//! the guard that keeps a running job in the live map and the figures its heartbeat
//! reports.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sopm_core::{
    Builds, Dispatcher, Job, JobId, JobStore, Router, SchedulerCounters, SchedulerStats,
};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use super::build_queue::BuildQueue;
use super::config::RedisSchedulerConfig;
use super::stream::JobQueue;
use crate::redis::RedisConnection;

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
    pub(crate) in_process_slots: Arc<tokio::sync::Semaphore>,
    /// Callers waiting on this node, by job id.
    pub(crate) waiters: Mutex<HashMap<JobId, oneshot::Sender<Job>>>,
    /// Jobs running on this node, by id: notified when cancelled elsewhere.
    pub(crate) live: Mutex<HashMap<JobId, Arc<Notify>>>,
    /// True once this node takes no new jobs (shut down or aborted).
    pub(crate) closed: AtomicBool,
    /// True once this node stops taking work.
    pub(crate) stop: watch::Sender<bool>,
    /// True once the grace period is over: running jobs stop.
    pub(crate) interrupt: watch::Sender<bool>,
    /// True while the pub/sub subscription is up.
    pub(crate) subscribed: watch::Sender<bool>,
    /// This node's long-running tasks (subscriber, heartbeat, loops).
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The tasks of jobs running here from the queue, by a number of their own.
    pub(crate) job_tasks: Mutex<(u64, HashMap<u64, tokio::task::AbortHandle>)>,
}

impl Shared {
    /// Whether this node is stopping (it takes no more work).
    pub(crate) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

/// Back-off while Redis cannot be reached: doubles from 50 ms up to 2 s.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff(Duration::from_millis(50))
    }

    pub(crate) fn reset(&mut self) {
        self.0 = Duration::from_millis(50);
    }

    /// The next delay.
    pub(crate) fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
        d
    }
}

/// Sleeps `d` unless this node stops first; false if it stopped.
pub(crate) async fn pause(s: &Shared, d: Duration) -> bool {
    let mut stop = s.stop.subscribe();
    tokio::select! {
        _ = tokio::time::sleep(d) => !s.stopping(),
        _ = stop.wait_for(|v| *v) => false,
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

/// The figures this node reports in its heartbeat.
pub(crate) fn node_stats(s: &Shared) -> SchedulerStats {
    s.counters.snapshot(
        s.queue.depth_seen(),
        s.config.queue_capacity as u64,
        s.config.max_concurrency as u64,
    )
}
