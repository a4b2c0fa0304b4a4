//! Redis backends for many nodes: the job store ([`RedisJobStore`]) and the queue of
//! jobs and builds between gateways and workers ([`queue`]).

pub mod jobs;
pub mod queue;

pub use jobs::RedisJobStore;
pub use queue::{RedisConfig, RedisConnection};
