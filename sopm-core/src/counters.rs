//! The running counters every scheduler keeps (accepted, refused, running, how jobs
//! ended, latencies overall and per function) and their snapshot as
//! [`SchedulerStats`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use crate::stats::{FunctionCounters, FunctionStats, LatencyHistogram, SchedulerStats};
use crate::types::{FunctionRef, JobStatus};

/// Counters of one scheduler on one node. Every update is a relaxed atomic add; a
/// function's counters are found under the map's read lock (created under its write
/// lock the first time), so calls of different functions never wait for each other.
#[derive(Debug, Default)]
pub struct SchedulerCounters {
    submitted: AtomicU64,
    rejected: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    cancelled: AtomicU64,
    running: AtomicU64,
    latency: LatencyHistogram,
    per_function: RwLock<FxHashMap<String, Arc<FunctionCounters>>>,
}

impl SchedulerCounters {
    /// Counts an accepted job.
    pub fn submitted(&self) {
        self.submitted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused job.
    pub fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Jobs running now.
    pub fn running(&self) -> u64 {
        self.running.load(Ordering::Acquire)
    }

    /// Counts a job as running for as long as the guard lives.
    pub fn run(&self) -> RunningGuard<'_> {
        self.running.fetch_add(1, Ordering::AcqRel);
        RunningGuard(self)
    }

    /// Counts a job that ended as `status` after `latency` (from acceptance to finish).
    pub fn ended(&self, status: JobStatus, function: &FunctionRef, latency: Duration) {
        let counter = match status {
            JobStatus::Succeeded => &self.succeeded,
            JobStatus::TimedOut => &self.timed_out,
            JobStatus::Cancelled => &self.cancelled,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.latency.record(latency);
        let record = |c: &FunctionCounters| {
            c.calls.fetch_add(1, Ordering::Relaxed);
            if status != JobStatus::Succeeded {
                c.errors.fetch_add(1, Ordering::Relaxed);
            }
            c.latency.record(latency);
        };
        let key = function.key();
        if let Some(c) = self.per_function.read().get(key) {
            return record(c);
        }
        let c = self
            .per_function
            .write()
            .entry(key.to_string())
            .or_default()
            .clone();
        record(&c)
    }

    /// A snapshot, with the queue figures the scheduler knows.
    pub fn snapshot(
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

/// Keeps a job counted as running (see [`SchedulerCounters::run`]).
#[derive(Debug)]
pub struct RunningGuard<'a>(&'a SchedulerCounters);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outcomes_per_function_and_running() {
        let c = SchedulerCounters::default();
        let add = FunctionRef::builtin("math.add");
        let user = FunctionRef::User {
            id: "fn_1".into(),
            version: Some(2),
        };
        c.submitted();
        c.submitted();
        c.submitted();
        c.rejected();
        {
            let _a = c.run();
            let _b = c.run();
            assert_eq!(c.running(), 2);
        }
        assert_eq!(c.running(), 0);
        c.ended(JobStatus::Succeeded, &add, Duration::from_micros(10));
        c.ended(JobStatus::TimedOut, &add, Duration::from_micros(30));
        c.ended(JobStatus::Interrupted, &user, Duration::from_micros(20));
        let s = c.snapshot(4, 10, 8);
        assert_eq!((s.submitted, s.rejected), (3, 1));
        assert_eq!(
            (s.succeeded, s.timed_out, s.failed, s.cancelled),
            (1, 1, 1, 0)
        );
        assert_eq!(
            (s.queue_depth, s.queue_capacity, s.max_concurrency),
            (4, 10, 8)
        );
        assert_eq!(s.latency.count, 3);
        let names: Vec<(&str, u64, u64)> = s
            .functions
            .iter()
            .map(|f| (f.function.as_str(), f.calls, f.errors))
            .collect();
        assert_eq!(names, [("math.add", 2, 1), ("fn_1", 1, 1)]);
    }
}
