//! What the queue needs of a [`RedisConnection`] beyond its short commands: a
//! connection of its own for blocking reads (they would hold up every command
//! multiplexed behind them) and a client for pub/sub.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sopm_core::{Error, Result};

use crate::redis::RedisConnection;

/// A client for the same server (pub/sub connections are opened from it).
pub(crate) fn client(conn: &RedisConnection) -> Result<redis::Client> {
    redis::Client::open(conn.config().url.as_str()).map_err(|e| {
        Error::invalid(format!(
            "redis: the URL {} is not valid: {e}",
            conn.target()
        ))
    })
}

/// A connection of its own for commands that block up to `block`; connects lazily.
pub(crate) fn blocking(conn: &RedisConnection, block: Duration) -> Result<ConnectionManager> {
    let config = conn.config();
    ConnectionManager::new_lazy_with_config(
        client(conn)?,
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(block + config.response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500)),
    )
    .map_err(|e| conn.error(e))
}
