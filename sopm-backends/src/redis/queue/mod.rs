//! The queue between gateways and workers on Redis Streams: one stream per backend,
//! consumer group `workers`, a lease with a fencing token per running job, takeover of
//! expired leases, completion in one atomic step, dead letters.

mod conn;
mod keys;
mod scripts;
pub mod stream;

pub use conn::{RedisConfig, RedisConnection};
pub use stream::{Admission, Claimed, JobQueue, Lease, QueueConfig, DEAD_LETTER_CODE};
