//! The `JobStore` trait: the durable record of every job, plus an in-memory store.

use std::collections::VecDeque;
use std::fmt::Debug;

use async_trait::async_trait;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::error::Result;
use crate::types::{FunctionRef, Job, JobId, JobStatus, TenantId};

/// How long a [`JobStore::put`] waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Return once the record would survive a crash of the process (fsync, or a
    /// replicated write). Used before acknowledging a job to a client.
    Durable,
    /// Return at once; the record is written soon, in order with the other puts of
    /// this store. Used on the hot path (completions of jobs the caller waited for).
    Buffered,
}

/// The order of states; a store never moves a job to a lower rank.
pub fn status_rank(s: JobStatus) -> u8 {
    match s {
        JobStatus::Queued => 0,
        JobStatus::Running => 1,
        _ => 2,
    }
}

/// Stores job records. Implementations: memory (here), SQLite and Redis
/// (`sopm-backends`).
///
/// Contract:
/// - `put` inserts or replaces the record with the same id, except that a record is
///   never moved back: a put whose status ranks below the stored one (queued < running
///   < any terminal state) is ignored, and so is any put over a terminal record: the
///   first terminal state is final. So puts from racing tasks cannot undo a finished
///   job.
/// - With [`Durability::Durable`] the record survives a crash once `put` returns.
///   With [`Durability::Buffered`] it is written soon, in order.
/// - Reads see every earlier put of the same store, buffered or not (the scheduler
///   answers a status right after recording a finish as buffered).
/// - `unfinished` returns the jobs stored as queued or running (called at start-up to
///   recover from a crash).
/// - `recent` returns the newest jobs of one user function (every version) of one
///   tenant, newest first; another tenant's jobs are never included. It sees buffered
///   puts like `get` does.
#[async_trait]
pub trait JobStore: Debug + Send + Sync + 'static {
    /// Records a job's current state.
    async fn put(&self, job: &Job, durability: Durability) -> Result<()>;

    /// A job by id (any tenant; the scheduler checks ownership).
    async fn get(&self, id: &JobId) -> Result<Option<Job>>;

    /// Jobs stored as queued or running, oldest first.
    async fn unfinished(&self) -> Result<Vec<Job>>;

    /// The newest `limit` jobs of the user function `function_id` (all its versions)
    /// owned by `tenant`, newest first.
    async fn recent(&self, tenant: &TenantId, function_id: &str, limit: usize) -> Result<Vec<Job>>;

    /// Waits until every buffered put is durable.
    async fn flush(&self) -> Result<()>;
}

/// Jobs in memory, keeping the newest `capacity` finished jobs (unfinished ones are
/// always kept).
#[derive(Debug)]
pub struct MemoryJobStore {
    inner: Mutex<MemoryJobs>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct MemoryJobs {
    // Boxed so the table's slots stay small: inserts, removals and rehashes move
    // pointers, not whole records.
    jobs: FxHashMap<JobId, Box<Job>>,
    finished_order: VecDeque<JobId>,
}

impl MemoryJobStore {
    /// Keeps up to 100,000 finished jobs.
    pub fn new() -> Self {
        Self::with_capacity(100_000)
    }

    /// Keeps up to `capacity` finished jobs; the oldest are forgotten first.
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryJobStore {
            inner: Mutex::new(MemoryJobs::default()),
            capacity: capacity.max(1),
        }
    }
}

impl Default for MemoryJobStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl JobStore for MemoryJobStore {
    async fn put(&self, job: &Job, _durability: Durability) -> Result<()> {
        use std::collections::hash_map::Entry;
        let mut guard = self.inner.lock();
        let g = &mut *guard;
        match g.jobs.entry(job.id.clone()) {
            Entry::Occupied(mut e) => {
                let old = e.get().status;
                if status_rank(job.status) < status_rank(old) || old.is_terminal() {
                    return Ok(());
                }
                e.insert(Box::new(job.clone()));
            }
            Entry::Vacant(e) => {
                e.insert(Box::new(job.clone()));
            }
        }
        if job.status.is_terminal() {
            g.finished_order.push_back(job.id.clone());
            while g.finished_order.len() > self.capacity {
                if let Some(old) = g.finished_order.pop_front() {
                    g.jobs.remove(&old);
                }
            }
        }
        Ok(())
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>> {
        Ok(self.inner.lock().jobs.get(id).map(|j| (**j).clone()))
    }

    async fn unfinished(&self) -> Result<Vec<Job>> {
        let mut v: Vec<Job> = self
            .inner
            .lock()
            .jobs
            .values()
            .filter(|j| !j.status.is_terminal())
            .map(|j| (**j).clone())
            .collect();
        v.sort_by_key(|j| j.created_ms);
        Ok(v)
    }

    async fn recent(&self, tenant: &TenantId, function_id: &str, limit: usize) -> Result<Vec<Job>> {
        let mut v: Vec<Job> = self
            .inner
            .lock()
            .jobs
            .values()
            .filter(|j| &j.tenant == tenant && is_job_of(j, function_id))
            .map(|j| (**j).clone())
            .collect();
        newest_first(&mut v);
        v.truncate(limit);
        Ok(v)
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// Whether `job` runs the user function `function_id` (any version).
pub fn is_job_of(job: &Job, function_id: &str) -> bool {
    matches!(&job.function, FunctionRef::User { id, .. } if id.as_ref() == function_id)
}

/// Sorts jobs newest first: by creation time, then by id (ids are time-ordered).
pub fn newest_first(jobs: &mut [Job]) {
    jobs.sort_by(|a, b| {
        b.created_ms
            .cmp(&a.created_ms)
            .then_with(|| b.id.as_str().cmp(a.id.as_str()))
    });
}
