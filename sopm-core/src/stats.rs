//! Lock-free latency histograms and the figures the scheduler reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
const MAX_EXP: usize = 44;
const BUCKETS: usize = SUB + (MAX_EXP - SUB_BITS as usize) * SUB;

/// A histogram of durations in microseconds with about 6% relative precision,
/// updated with one atomic add per sample.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros();
    let sub = ((us >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    let idx = SUB + (exp - SUB_BITS) as usize * SUB + sub;
    idx.min(BUCKETS - 1)
}

/// The upper bound (inclusive) of a bucket, in microseconds.
fn bucket_upper(idx: usize) -> u64 {
    if idx < SUB {
        return idx as u64;
    }
    let exp = ((idx - SUB) / SUB) as u32 + SUB_BITS;
    let sub = ((idx - SUB) % SUB) as u64;
    let base = 1u64 << exp;
    let width = 1u64 << (exp - SUB_BITS);
    base + (sub + 1) * width - 1
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        LatencyHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    /// Adds one sample: two shared atomic adds (its bucket, the sum), and a third only
    /// for a new maximum. The count is the buckets' sum, read when asked.
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        // A read first: most samples are not a new maximum, and a plain load of the
        // cache line does not take it from the other cores.
        if us > self.max_us.load(Ordering::Relaxed) {
            self.max_us.fetch_max(us, Ordering::Relaxed);
        }
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Percentiles of what was recorded so far.
    pub fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let max = self.max_us.load(Ordering::Relaxed);
        let at = |q: f64| -> u64 {
            if total == 0 {
                return 0;
            }
            let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return bucket_upper(i).min(max);
                }
            }
            max
        };
        LatencySummary {
            count: total,
            mean_us: if total == 0 {
                0.0
            } else {
                self.sum_us.load(Ordering::Relaxed) as f64 / total as f64
            },
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: max,
        }
    }

    /// Cumulative counts at the given upper bounds (microseconds), for Prometheus
    /// histograms. Each bound counts samples whose bucket lies wholly below it.
    pub fn cumulative(&self, bounds_us: &[u64]) -> Vec<u64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        bounds_us
            .iter()
            .map(|&b| {
                counts
                    .iter()
                    .enumerate()
                    .take_while(|(i, _)| bucket_upper(*i) <= b)
                    .map(|(_, c)| c)
                    .sum()
            })
            .collect()
    }

    /// Sum of all samples in microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Ordering::Relaxed)
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

/// Counters of one function.
#[derive(Debug, Default)]
pub struct FunctionCounters {
    /// Calls that finished (any outcome).
    pub calls: AtomicU64,
    /// Calls that did not succeed.
    pub errors: AtomicU64,
    /// Latency from acceptance to finish.
    pub latency: LatencyHistogram,
}

/// A snapshot of one function's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionStats {
    /// The function (built-in name or user function id).
    pub function: String,
    /// Calls that finished.
    pub calls: u64,
    /// Calls that did not succeed.
    pub errors: u64,
    /// Latency percentiles.
    pub latency: LatencySummary,
}

/// A snapshot of the scheduler's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SchedulerStats {
    /// Jobs accepted.
    pub submitted: u64,
    /// Jobs refused because the queue was full.
    pub rejected: u64,
    /// Jobs that succeeded.
    pub succeeded: u64,
    /// Jobs that failed.
    pub failed: u64,
    /// Jobs stopped at their deadline.
    pub timed_out: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// Jobs waiting for a worker now. With the Redis scheduler, one queue per backend:
    /// the queues this node has used, added up.
    pub queue_depth: u64,
    /// Queue capacity (with the Redis scheduler, each backend's queue's).
    pub queue_capacity: u64,
    /// Jobs running now.
    pub running: u64,
    /// Concurrency limit.
    pub max_concurrency: u64,
    /// Latency of every finished job, from acceptance to finish.
    pub latency: LatencySummary,
    /// Per function, busiest first.
    pub functions: Vec<FunctionStats>,
}

/// One node of a cluster as the cluster scheduler last heard of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    /// The node's id (`--node-id`).
    pub node_id: String,
    /// Its role: `all`, `gateway` or `worker`.
    pub role: String,
    /// The address it advertises.
    pub address: String,
    /// The backends it runs (`builtin` included).
    pub backends: Vec<String>,
    /// Its executors' warm pools.
    pub pools: Vec<crate::executor::PoolStats>,
    /// Jobs running on it now.
    pub running: u64,
    /// When it last reported, in ms since the epoch.
    pub last_seen_ms: u64,
    /// Its scheduler's figures.
    pub stats: SchedulerStats,
    /// Completions it sent with a lease that was no longer current (its job had moved
    /// to another node), refused so the job kept one final record.
    #[serde(default)]
    pub completions_refused: u64,
    /// Jobs whose expired lease it took over from another node.
    #[serde(default)]
    pub taken_over: u64,
    /// Jobs it moved to the dead letters after too many deliveries.
    #[serde(default)]
    pub dead_lettered: u64,
}

/// The figures of every node of a cluster and their totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStats {
    /// Each node, as last reported.
    pub nodes: Vec<NodeStats>,
    /// The nodes' counters added up.
    pub totals: SchedulerStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_values() {
        let mut last = 0;
        for us in [0u64, 1, 15, 16, 17, 31, 32, 100, 1000, 123_456, 10_000_000] {
            let b = bucket_of(us);
            assert!(b >= last);
            last = b;
            assert!(bucket_upper(b) >= us, "{us} above its bucket");
            if b > 0 {
                assert!(bucket_upper(b - 1) < us, "{us} belongs lower");
            }
        }
    }

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let h = LatencyHistogram::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.max_us, 1000);
        assert!((470..=535).contains(&s.p50_us), "p50 {}", s.p50_us);
        assert!((950..=1000).contains(&s.p99_us), "p99 {}", s.p99_us);
        assert!((s.mean_us - 500.5).abs() < 0.01);
    }

    #[test]
    fn empty_histogram_reports_zeroes() {
        assert_eq!(LatencyHistogram::new().summary(), LatencySummary::default());
    }
}
