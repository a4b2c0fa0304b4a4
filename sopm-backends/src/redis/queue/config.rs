//! The settings of a `RedisScheduler`: what the node does, what happens to its
//! running jobs at shutdown, and its limits and periods.

use std::time::Duration;

use super::stream::QueueConfig;

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

    /// Whether it runs jobs and builds from the queue.
    pub(crate) fn works(self) -> bool {
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

/// Settings of a [`RedisScheduler`](super::RedisScheduler).
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
