//! Redis as SOPM's shared state, so many nodes see one registry, one key store and one
//! job store: [`RedisConfig`], [`RedisConnection`] (one reconnecting connection
//! shared by every store of a process), the key layout ([`keys`]), [`RedisRegistry`],
//! [`RedisKeyStore`], [`RedisJobStore`], and the queue between gateways and workers
//! with its cluster scheduler ([`queue`], [`RedisScheduler`]).
//!
//! Errors: Redis unreachable, a connection dropped, no answer in time, or Redis still
//! loading its data after a restart are [`Error::Unavailable`] (the server answers
//! 503 and the caller may retry); anything else Redis refuses is [`Error::Storage`].
//! A write whose answer was lost with its connection may or may not have been
//! applied: the caller sees `unavailable` either way.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, FromRedisValue, RedisError, ServerErrorKind};
use sopm_core::{Error, Result};

pub mod jobs;
mod key_store;
pub mod keys;
pub mod queue;
mod registry;

pub use jobs::RedisJobStore;
pub use key_store::RedisKeyStore;
pub use keys::Keys;
pub use queue::RedisScheduler;
pub use registry::RedisRegistry;

/// The default prefix of every key.
pub const DEFAULT_PREFIX: &str = "sopm:";

/// Where Redis is and how long to wait for it. Building it does no I/O;
/// [`connect`](RedisConfig::connect) does. Its `Debug` form hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user][:password@]host[:port][/db]` or `unix:///path/to/socket` (this
    /// build has no TLS: reach a remote Redis over a private network or a tunnel).
    pub url: String,
    /// What every key starts with (default `sopm:`); installations sharing one Redis
    /// use different prefixes.
    pub prefix: String,
    /// How long one attempt to open a connection may take (default 2 s).
    pub connect_timeout: Duration,
    /// How long one command may wait for its answer (default 5 s).
    pub response_timeout: Duration,
}

impl RedisConfig {
    /// Redis at `url`, with the default prefix and timeouts.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_string(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
        }
    }

    /// Sets the key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets how long one connection attempt may take.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how long one command may wait for its answer.
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The URL with its password replaced by `***`, for messages and logs.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// Connects (and checks the connection with a `PING`). An unreachable Redis is
    /// [`Error::Unavailable`] naming the URL without its password; a malformed URL or
    /// a zero timeout is [`Error::InvalidInput`].
    pub async fn connect(&self) -> Result<RedisConnection> {
        RedisConnection::connect(self).await
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// Reconnection attempts per failed connection before a command gives up (each waits
/// up to `connect_timeout`, with a short backoff between them).
const CONNECT_RETRIES: usize = 2;

/// One connection to Redis, shared by clones (cheap: an `Arc`). Commands from many
/// tasks are multiplexed on it; when it drops it is reopened in the background, so the
/// same handle works again once Redis is back.
#[derive(Clone)]
pub struct RedisConnection {
    manager: ConnectionManager,
    config: Arc<RedisConfig>,
    keys: Arc<Keys>,
    /// The URL without its password.
    target: Arc<str>,
    /// The most one command may take, reconnection included.
    deadline: Duration,
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("url", &self.target)
            .field("prefix", &self.keys.prefix())
            .finish()
    }
}

impl RedisConnection {
    /// Connects to the Redis of `config` (see [`RedisConfig::connect`]).
    pub async fn connect(config: &RedisConfig) -> Result<Self> {
        let target: Arc<str> = Arc::from(config.redacted_url());
        if config.connect_timeout.is_zero() || config.response_timeout.is_zero() {
            return Err(Error::invalid(
                "redis: connect_timeout and response_timeout must be above zero",
            ));
        }
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| Error::invalid(format!("redis: the URL {target} is not valid: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(CONNECT_RETRIES)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        // Every attempt, the pauses between them, and then the command itself.
        let attempts = u32::try_from(CONNECT_RETRIES + 1).unwrap_or(u32::MAX);
        let deadline = config.connect_timeout * attempts
            + Duration::from_millis(500) * attempts
            + config.response_timeout;
        let manager = match tokio::time::timeout(
            deadline,
            ConnectionManager::new_with_config(client, manager_config),
        )
        .await
        {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(unreachable(&target, &e.to_string())),
            Err(_) => {
                return Err(unreachable(
                    &target,
                    &format!("no connection within {deadline:?}"),
                ))
            }
        };
        let conn = RedisConnection {
            manager,
            config: Arc::new(config.clone()),
            keys: Arc::new(Keys::new(config.prefix.clone())),
            target,
            deadline,
        };
        conn.ping().await?;
        Ok(conn)
    }

    /// The key names under this connection's prefix.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The configuration it was made from (to open another connection, such as one
    /// for blocking reads, which would hold up the commands multiplexed on this one).
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Where it connects, without the password.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The underlying connection manager, for commands this wrapper has no method for
    /// (map their errors with [`error`](Self::error)).
    pub fn manager(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<()> {
        let pong: String = self.query(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(Error::Storage(format!(
                "redis at {}: PING answered {pong:?}",
                self.target
            )))
        }
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let mut c = self.manager.clone();
        self.bounded(async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Runs a pipeline (a transaction when it was made with `.atomic()`).
    pub async fn query_pipeline<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T> {
        let mut c = self.manager.clone();
        self.bounded(async move { pipe.query_async(&mut c).await })
            .await
    }

    /// Runs a Lua script (`EVALSHA`, loading it first when Redis does not have it,
    /// as after a restart).
    pub async fn invoke<T: FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut c = self.manager.clone();
        self.bounded(async move { script.invoke_async(&mut c).await })
            .await
    }

    /// Runs `op` for at most the connection's deadline, mapping its error.
    pub async fn bounded<T>(&self, op: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        match tokio::time::timeout(self.deadline, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => Err(unreachable(
                &self.target,
                &format!("no answer within {:?}", self.deadline),
            )),
        }
    }

    /// Maps a Redis error: no connection, a dropped one, a timeout, or Redis loading,
    /// failing over or read-only is [`Error::Unavailable`]; the rest is
    /// [`Error::Storage`].
    pub fn error(&self, e: RedisError) -> Error {
        map_error(&self.target, e)
    }
}

fn unreachable(target: &str, why: &str) -> Error {
    Error::Unavailable(format!("redis at {target} is unreachable: {why}"))
}

fn map_error(target: &str, e: RedisError) -> Error {
    let unavailable = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::ReadOnly
            )
        );
    if unavailable {
        unreachable(target, &e.to_string())
    } else {
        Error::Storage(format!("redis at {target}: {e}"))
    }
}

/// `url` with the password of its user information replaced by `***`.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let user = match rest[..at].find(':') {
        Some(colon) => &rest[..colon],
        // `redis://secret@host`: a lone user part may be a password.
        None if !rest[..at].is_empty() => "",
        None => return url.to_string(),
    };
    format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
}

/// Decodes a stored JSON value, naming what it was if it does not parse.
pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Storage(format!("redis: corrupt {what}: {e}")))
}

/// Encodes a value as JSON for storage.
pub(crate) fn encode_json<T: serde::Serialize>(what: &str, value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::Internal(format!("redis: cannot encode {what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        assert_eq!(
            redact("redis://:hunter2@db:6379/0"),
            "redis://:***@db:6379/0"
        );
        assert_eq!(redact("redis://sopm:hunter2@db/0"), "redis://sopm:***@db/0");
        assert_eq!(redact("rediss://hunter2@db"), "rediss://:***@db");
        assert_eq!(redact("redis://a:b@c@db/x@y"), "redis://a:***@db/x@y");
        let config = RedisConfig::new("redis://u:hunter2@db/");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn a_malformed_url_is_invalid_input() {
        let err = RedisConfig::new("http://:hunter2@nowhere/")
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
