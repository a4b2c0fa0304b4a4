//! This node's scheduler figures: what it accepted and refused as a gateway, how the
//! jobs it finished (as a worker, in its own process, or by cancelling) ended.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use sopm_core::stats::{FunctionCounters, FunctionStats};
use sopm_core::types::now_ms;
use sopm_core::{FunctionRef, Job, JobStatus, LatencyHistogram, SchedulerStats};

/// Counters of one node.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) submitted: AtomicU64,
    pub(crate) rejected: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    cancelled: AtomicU64,
    pub(crate) running: AtomicU64,
    latency: LatencyHistogram,
    per_function: RwLock<HashMap<String, Arc<FunctionCounters>>>,
}

impl Counters {
    /// Counts a job that ended here; its latency runs from acceptance (on whichever
    /// node) to its finish, by the wall clock.
    pub(crate) fn account(&self, job: &Job) {
        let counter = match job.status {
            JobStatus::Succeeded => &self.succeeded,
            JobStatus::TimedOut => &self.timed_out,
            JobStatus::Cancelled => &self.cancelled,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let latency = Duration::from_millis(
            job.finished_ms
                .unwrap_or_else(now_ms)
                .saturating_sub(job.created_ms),
        );
        self.latency.record(latency);
        let key: &str = match &job.function {
            FunctionRef::Builtin { name } => name,
            FunctionRef::User { id, .. } => id,
        };
        let known = self.per_function.read().get(key).cloned();
        let c = match known {
            Some(c) => c,
            None => self
                .per_function
                .write()
                .entry(key.to_string())
                .or_default()
                .clone(),
        };
        c.calls.fetch_add(1, Ordering::Relaxed);
        if job.status != JobStatus::Succeeded {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        c.latency.record(latency);
    }

    /// A snapshot, with the queue figures the caller knows.
    pub(crate) fn snapshot(
        &self,
        queue_depth: u64,
        queue_capacity: u64,
        max_concurrency: u64,
    ) -> SchedulerStats {
        let mut functions: Vec<FunctionStats> = self
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
            submitted: self.submitted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            queue_depth,
            queue_capacity,
            running: self.running.load(Ordering::Relaxed),
            max_concurrency,
            latency: self.latency.summary(),
            functions,
        }
    }
}

/// Keeps `running` counted for as long as it lives.
pub(crate) struct RunningGuard<'a>(&'a Counters);

impl<'a> RunningGuard<'a> {
    pub(crate) fn new(c: &'a Counters) -> Self {
        c.running.fetch_add(1, Ordering::AcqRel);
        RunningGuard(c)
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}
