//! How a job that ended on this node counts in its [`SchedulerCounters`] (the figures
//! every scheduler keeps): its latency runs from acceptance, on whichever node, to its
//! finish, by the wall clock.

use std::time::Duration;

use sopm_core::types::now_ms;
use sopm_core::{Job, SchedulerCounters};

/// Counts `job`, which ended here (as a worker, in this process, or by a cancel).
pub(crate) fn account(counters: &SchedulerCounters, job: &Job) {
    let latency = Duration::from_millis(
        job.finished_ms
            .unwrap_or_else(now_ms)
            .saturating_sub(job.created_ms),
    );
    counters.ended(job.status, &job.function, latency);
}
