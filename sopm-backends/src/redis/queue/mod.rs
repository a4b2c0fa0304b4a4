//! The queue between gateways and workers on Redis Streams, and the cluster scheduler
//! over it: one stream per backend, consumer group `workers`, a lease with a fencing
//! token per running job, takeover of expired leases, completion in one atomic step,
//! dead letters, queued builds, results and broadcasts over pub/sub, heartbeats.

mod build_queue;
mod builds;
mod config;
mod conn;
mod counters;
mod group;
mod heartbeat;
mod lease;
mod notify;
pub mod scheduler;
mod scripts;
mod shared;
pub mod stream;
mod worker;

pub use scheduler::{AtShutdown, NodeRole, RedisScheduler, RedisSchedulerConfig};
pub use stream::{Admission, Claimed, JobQueue, Lease, QueueConfig, DEAD_LETTER_CODE};
