//! The connection the job store and the queue use: a lazily connecting
//! [`ConnectionManager`] for short commands, one more per blocking reader, and the
//! mapping of Redis errors to SOPM's (an unreachable server is `unavailable`).

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sopm_core::Error;

/// Where Redis is and how SOPM names its keys there.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/[db]`.
    pub url: String,
    /// Put before every key and channel name (default `sopm:`), so several
    /// installations can share one server.
    pub prefix: String,
}

impl RedisConfig {
    /// The server at `url`, prefix `sopm:`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "sopm:".to_string(),
        }
    }

    /// Another key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The URL without its password, for messages.
    pub fn shown_url(&self) -> String {
        match url_without_password(&self.url) {
            Some(u) => u,
            None => "(an invalid url)".to_string(),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.shown_url())
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn url_without_password(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    Some(match rest.split_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => url.to_string(),
    })
}

/// A connection to Redis, cheap to clone. Connects on first use and reconnects by
/// itself; while the server cannot be reached every call fails with
/// `Error::Unavailable`.
#[derive(Clone)]
pub struct RedisConnection {
    client: redis::Client,
    manager: ConnectionManager,
    config: RedisConfig,
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("config", &self.config)
            .finish()
    }
}

/// How long a short command may take before the server counts as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

impl RedisConnection {
    /// A connection to `config.url`; no I/O until the first command. An invalid URL is
    /// `invalid_input`.
    pub fn new(config: RedisConfig) -> sopm_core::Result<Self> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| Error::InvalidInput(format!("redis url {}: {e}", config.shown_url())))?;
        let manager = ConnectionManager::new_lazy_with_config(
            client.clone(),
            manager_config(RESPONSE_TIMEOUT),
        )
        .map_err(|e| Error::InvalidInput(format!("redis: {e}")))?;
        Ok(RedisConnection {
            client,
            manager,
            config,
        })
    }

    /// The shared connection for short commands.
    pub fn manager(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// A connection of its own for commands that block up to `block` (a blocking
    /// read would hold up every command behind it on the shared one).
    pub fn blocking(&self, block: Duration) -> sopm_core::Result<ConnectionManager> {
        ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            manager_config(block + RESPONSE_TIMEOUT),
        )
        .map_err(|e| self.error(e))
    }

    /// The client, for pub/sub connections.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// `prefix + name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.config.prefix)
    }

    /// SOPM's error for a Redis error: `unavailable` when the server cannot be
    /// reached or does not answer in time, `storage_error` otherwise.
    pub fn error(&self, e: redis::RedisError) -> Error {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
            || e.code() == Some("LOADING")
            || e.code() == Some("MASTERDOWN")
        {
            Error::Unavailable(format!(
                "redis at {} is unreachable: {e}",
                self.config.shown_url()
            ))
        } else {
            Error::Storage(format!("redis: {e}"))
        }
    }
}
