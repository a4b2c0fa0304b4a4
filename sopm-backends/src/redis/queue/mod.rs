//! The queue between gateways and workers on Redis Streams: one stream per backend,
//! consumer group `workers`, a lease with a fencing token per running job, takeover of
//! expired leases, completion in one atomic step, dead letters.

mod conn;

pub use conn::{RedisConfig, RedisConnection};
