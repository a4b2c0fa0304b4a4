//! The calls both queues make on a lease they hold over a stream entry: renewing it
//! while the work runs, and giving it back at once, each through its fenced script
//! (a call with a stale token changes nothing and answers `false`).

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use sopm_core::Result;

use super::scripts;
use crate::redis::RedisConnection;

/// One lease: its key, the stream and entry it covers, and its fencing token.
#[derive(Debug, Clone)]
pub(crate) struct Held<'a> {
    /// The lease's key.
    pub(crate) key: String,
    /// The stream its entry is on.
    pub(crate) stream: String,
    /// The entry id.
    pub(crate) entry: &'a str,
    /// The fencing token it was granted with.
    pub(crate) token: u64,
}

/// The renew and release scripts of one node's leases.
#[derive(Debug)]
pub(crate) struct LeaseCalls {
    conn: RedisConnection,
    node: Arc<str>,
    lease: Duration,
    renew: Script,
    release: Script,
}

impl LeaseCalls {
    /// The calls over `conn` for the consumer `node`, renewing for `lease` at a time.
    pub(crate) fn new(conn: RedisConnection, node: Arc<str>, lease: Duration) -> Self {
        LeaseCalls {
            conn,
            node,
            lease,
            renew: Script::new(scripts::RENEW),
            release: Script::new(scripts::RELEASE),
        }
    }

    /// Extends the lease and resets its entry's idle time; `false` when the lease is
    /// no longer this token's (cancelled or taken over): stop the work.
    pub(crate) async fn renew(&self, held: &Held<'_>) -> Result<bool> {
        let n: i64 = self
            .renew
            .key(&held.key)
            .key(&held.stream)
            .arg(held.token)
            .arg(self.lease.as_millis() as u64)
            .arg(held.entry)
            .arg(&*self.node)
            .invoke_async(&mut self.conn.manager())
            .await
            .map_err(|e| self.conn.error(e))?;
        Ok(n == 1)
    }

    /// Drops the lease and makes its entry look idle for ever, so the next reclaimer
    /// takes it; `false` when the lease was no longer this token's.
    pub(crate) async fn release(&self, held: &Held<'_>) -> Result<bool> {
        let n: i64 = self
            .release
            .key(&held.key)
            .key(&held.stream)
            .arg(held.token)
            .arg(held.entry)
            .invoke_async(&mut self.conn.manager())
            .await
            .map_err(|e| self.conn.error(e))?;
        Ok(n == 1)
    }
}
