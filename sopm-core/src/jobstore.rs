//! The `JobStore` trait: the durable record of every job, plus an in-memory store.

use std::collections::VecDeque;
use std::fmt::Debug;

use async_trait::async_trait;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::error::{ErrorInfo, Result};
use crate::types::{FunctionRef, Job, JobId, JobStatus, TenantId};

/// Most characters of a job's logs (and of its error's traceback) that
/// [`JobStore::recent_logs`] returns: the last ones, where the end of a run shows.
pub const LISTED_LOG_CHARS: usize = 4096;

/// One job as a function's log listing shows it: no input, no output, and its logs
/// cut to their last [`LISTED_LOG_CHARS`] characters.
#[derive(Debug, Clone, PartialEq)]
pub struct JobLogEntry {
    /// The job's id.
    pub id: JobId,
    /// The version it ran, once resolved.
    pub version: Option<u32>,
    /// Its status.
    pub status: JobStatus,
    /// When it was accepted (ms since the epoch).
    pub created_ms: u64,
    /// When it finished (ms since the epoch), if it has.
    pub finished_ms: Option<u64>,
    /// How long it ran, in µs, if it ran.
    pub duration_us: Option<u64>,
    /// The last [`LISTED_LOG_CHARS`] characters of its logs (empty: none).
    pub logs: String,
    /// Whether `logs` was cut.
    pub logs_truncated: bool,
    /// Its error, the traceback cut to its last [`LISTED_LOG_CHARS`] characters.
    pub error: Option<ErrorInfo>,
}

impl JobLogEntry {
    /// The entry of a whole job record (for stores that hold records in memory).
    pub fn of(job: &Job) -> Self {
        let (logs, logs_truncated) =
            tail_chars(job.logs.as_deref().unwrap_or(""), LISTED_LOG_CHARS);
        JobLogEntry {
            id: job.id.clone(),
            version: match &job.function {
                FunctionRef::User { version, .. } => *version,
                FunctionRef::Builtin { .. } => None,
            },
            status: job.status,
            created_ms: job.created_ms,
            finished_ms: job.finished_ms,
            duration_us: job.duration_us,
            logs: logs.to_string(),
            logs_truncated,
            error: job.error.as_ref().map(|e| ErrorInfo {
                code: e.code.clone(),
                message: e.message.clone(),
                traceback: e
                    .traceback
                    .as_deref()
                    .map(|t| tail_chars(t, LISTED_LOG_CHARS).0.to_string()),
            }),
        }
    }
}

/// The last `n` characters of `s`, and whether anything was cut.
pub fn tail_chars(s: &str, n: usize) -> (&str, bool) {
    if s.len() <= n {
        return (s, false);
    }
    match s.char_indices().rev().nth(n.saturating_sub(1)) {
        Some((at, _)) if n > 0 => (&s[at..], at > 0),
        _ if n == 0 => ("", !s.is_empty()),
        _ => (s, false),
    }
}

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

/// Whether a record in state `new` replaces a stored one in state `old` under the rule
/// of [`JobStore::put`]: never to a lower rank, and never once the job finished.
pub fn status_replaces(old: JobStatus, new: JobStatus) -> bool {
    !(status_rank(new) < status_rank(old) || old.is_terminal())
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
/// - `recent_logs` returns the newest jobs of one user function (every version) of
///   one tenant, newest first, as [`JobLogEntry`]s: it never reads inputs or outputs,
///   and logs and tracebacks come cut to [`LISTED_LOG_CHARS`]. Another tenant's jobs
///   are never included. It sees buffered puts like `get` does.
/// - `put_sole` records a finished job that has no other record and will get none
///   (a waiting call that finished in time): as a buffered `put`, which is what it
///   does unless a store keeps such records more cheaply (SQLite keeps many to a row).
/// - `expire_finished` deletes up to `max` finished jobs that finished before the
///   cutoff (oldest first) and says how many went; a queued or running job is never
///   deleted, however old.
#[async_trait]
pub trait JobStore: Debug + Send + Sync + 'static {
    /// Records a job's current state.
    async fn put(&self, job: &Job, durability: Durability) -> Result<()>;

    /// Records a finished job that was never recorded before and never will be again,
    /// buffered. The caller guarantees both; a store may then skip what only a record
    /// that changes later needs.
    async fn put_sole(&self, job: &Job) -> Result<()> {
        self.put(job, Durability::Buffered).await
    }

    /// A job by id (any tenant; the scheduler checks ownership).
    async fn get(&self, id: &JobId) -> Result<Option<Job>>;

    /// Jobs stored as queued or running, oldest first.
    async fn unfinished(&self) -> Result<Vec<Job>>;

    /// The newest `limit` jobs of the user function `function_id` (all its versions)
    /// owned by `tenant`, newest first, with bounded logs and nothing else large.
    async fn recent_logs(
        &self,
        tenant: &TenantId,
        function_id: &str,
        limit: usize,
    ) -> Result<Vec<JobLogEntry>>;

    /// Deletes up to `max` finished jobs whose `finished_ms` (else `created_ms`) is
    /// before `cutoff_ms`, oldest first; returns how many were deleted.
    async fn expire_finished(&self, cutoff_ms: u64, max: usize) -> Result<u64>;

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

impl MemoryJobStore {
    /// `put`, which waits for nothing here.
    fn record(&self, job: &Job) {
        use std::collections::hash_map::Entry;
        let mut guard = self.inner.lock();
        let g = &mut *guard;
        match g.jobs.entry(job.id.clone()) {
            Entry::Occupied(mut e) => {
                let old = e.get().status;
                if !status_replaces(old, job.status) {
                    return;
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
    }
}

#[async_trait]
impl JobStore for MemoryJobStore {
    async fn put(&self, job: &Job, _durability: Durability) -> Result<()> {
        self.record(job);
        Ok(())
    }

    // One boxed future per record, not the default's two.
    async fn put_sole(&self, job: &Job) -> Result<()> {
        self.record(job);
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

    async fn recent_logs(
        &self,
        tenant: &TenantId,
        function_id: &str,
        limit: usize,
    ) -> Result<Vec<JobLogEntry>> {
        let guard = self.inner.lock();
        let mut v: Vec<&Job> = guard
            .jobs
            .values()
            .map(|j| &**j)
            .filter(|j| &j.tenant == tenant && is_job_of(j, function_id))
            .collect();
        v.sort_by(|a, b| newer(a, b));
        Ok(v.into_iter().take(limit).map(JobLogEntry::of).collect())
    }

    async fn expire_finished(&self, cutoff_ms: u64, max: usize) -> Result<u64> {
        let mut guard = self.inner.lock();
        let MemoryJobs {
            jobs,
            finished_order,
        } = &mut *guard;
        let expired: Vec<JobId> = finished_order
            .iter()
            .filter(|id| {
                jobs.get(*id).is_some_and(|j| {
                    j.status.is_terminal() && j.finished_ms.unwrap_or(j.created_ms) < cutoff_ms
                })
            })
            .take(max)
            .cloned()
            .collect();
        for id in &expired {
            jobs.remove(id);
        }
        if !expired.is_empty() {
            finished_order.retain(|id| jobs.contains_key(id));
        }
        Ok(expired.len() as u64)
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
    jobs.sort_by(newer);
}

/// The order of [`newest_first`].
fn newer(a: &Job, b: &Job) -> std::cmp::Ordering {
    b.created_ms
        .cmp(&a.created_ms)
        .then_with(|| b.id.as_str().cmp(a.id.as_str()))
}

/// Sorts log entries newest first, like [`newest_first`].
pub fn newest_entries_first(entries: &mut [JobLogEntry]) {
    entries.sort_by(|a, b| {
        b.created_ms
            .cmp(&a.created_ms)
            .then_with(|| b.id.as_str().cmp(a.id.as_str()))
    });
}
