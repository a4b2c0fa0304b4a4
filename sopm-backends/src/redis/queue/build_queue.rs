//! `BuildQueue`: the build streams with their leases. `P b:{backend}` streams
//! (consumer group `workers`) of builds, each request stored at
//! `P src:{function_id}:{version}` next to its entry; a worker leases a build
//! (`P lease:build:{function_id}:{version}`, a fencing token from `P fence`), renews
//! while it runs and acknowledges it with a fenced script. A version whose backend was
//! not recorded goes to `P b:runtime:{runtime}`, read by every worker.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::{Script, Value};
use sopm_core::{BuildRequest, Error, Result, Runtime};

use super::group::{self, stream_entries, taken_over, text, Entry, GROUP};
use super::lease::{Held, LeaseCalls};
use super::stream::QueueConfig;
use crate::redis::{Keys, RedisConnection};

/// BUILD_ENQUEUE: KEYS source, stream; ARGV request JSON, function id, version.
const BUILD_ENQUEUE: &str = r#"
redis.call('SET', KEYS[1], ARGV[1])
return redis.call('XADD', KEYS[2], '*', 'fn', ARGV[2], 'v', ARGV[3])
"#;

/// BUILD_LEASE: KEYS lease, fence; ARGV node, lease ms, stream, entry. `{0}` when a
/// live lease is held, else `{1, token}`.
const BUILD_LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('HMGET', KEYS[1], 'token', 'expires')
if held[1] and tonumber(held[2]) > now then return {0} end
local token = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'token', token,
  'expires', now + tonumber(ARGV[2]), 'stream', ARGV[3], 'entry', ARGV[4])
return {1, token}
"#;

/// BUILD_DONE: KEYS lease, stream, source; ARGV token, entry. While `token` is
/// current: acknowledges and deletes the entry, drops the lease and the source: 1.
const BUILD_DONE: &str = r#"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('XACK', KEYS[2], 'workers', ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[1], KEYS[3])
return 1
"#;

/// Every runtime a version without a recorded backend can have.
const RUNTIMES: [Runtime; 4] = [
    Runtime::Python,
    Runtime::Node,
    Runtime::Shell,
    Runtime::Binary,
];

/// A build this node leased.
#[derive(Debug)]
pub(crate) struct BuildLease {
    /// The stream its entry is on.
    pub(crate) stream: String,
    /// The entry id.
    pub(crate) entry: String,
    /// The function being built.
    pub(crate) function_id: String,
    /// The version being built.
    pub(crate) version: u32,
    token: u64,
}

/// The build streams. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct BuildQueue {
    conn: RedisConnection,
    keys: Keys,
    node: Arc<str>,
    /// The settings (lease length, block time).
    pub(crate) config: QueueConfig,
    enqueue: Arc<Script>,
    lease: Arc<Script>,
    done: Arc<Script>,
    leases: Arc<LeaseCalls>,
}

impl BuildQueue {
    /// The build streams over `conn`, for the node `node` (its consumer name and lease
    /// owner).
    pub(crate) fn new(conn: RedisConnection, node: &str, config: QueueConfig) -> Self {
        let node: Arc<str> = Arc::from(node);
        BuildQueue {
            keys: conn.keys().clone(),
            leases: Arc::new(LeaseCalls::new(conn.clone(), node.clone(), config.lease)),
            conn,
            node,
            config,
            enqueue: Arc::new(Script::new(BUILD_ENQUEUE)),
            lease: Arc::new(Script::new(BUILD_LEASE)),
            done: Arc::new(Script::new(BUILD_DONE)),
        }
    }

    /// The stream a version's build goes to.
    fn stream_of(&self, request: &BuildRequest) -> String {
        match &request.version.executor {
            Some(backend) => self.keys.build_stream(backend),
            None => self.runtime_stream(request.version.runtime),
        }
    }

    fn runtime_stream(&self, runtime: Runtime) -> String {
        self.keys
            .build_stream(&format!("runtime:{}", runtime.as_str()))
    }

    /// Stores the request and queues the build, in one step.
    pub(crate) async fn enqueue(&self, request: &BuildRequest) -> Result<()> {
        let json = serde_json::to_string(request)
            .map_err(|e| Error::Internal(format!("a build request does not serialise: {e}")))?;
        let v = &request.version;
        let _: String = self
            .enqueue
            .key(self.keys.build_source(&v.function_id, v.version))
            .key(self.stream_of(request))
            .arg(json)
            .arg(&v.function_id)
            .arg(v.version)
            .invoke_async(&mut self.conn.manager())
            .await
            .map_err(|e| self.conn.error(e))?;
        Ok(())
    }

    /// The build streams a worker with `backends` reads.
    pub(crate) fn streams(&self, backends: &[Arc<str>]) -> Vec<String> {
        backends
            .iter()
            .filter(|b| ***b != *sopm_core::BUILTIN_BACKEND)
            .map(|b| self.keys.build_stream(b))
            .chain(RUNTIMES.iter().map(|r| self.runtime_stream(*r)))
            .collect()
    }

    /// Makes sure the consumer group exists on each of `streams`.
    pub(crate) async fn ensure_groups(&self, streams: &[String]) -> Result<()> {
        for s in streams {
            group::create(&self.conn, s).await?;
        }
        Ok(())
    }

    /// New entries (blocking up to the configured time) and entries whose lease
    /// expired, as `(stream, entry, function id, version)`.
    pub(crate) async fn read(
        &self,
        conn: &mut ConnectionManager,
        streams: &[String],
        max: usize,
    ) -> Result<Vec<(String, String, String, u32)>> {
        let mut out = Vec::new();
        for s in streams {
            let reply: Value = group::take_idle(&self.node, s, self.config.lease, max)
                .query_async(&mut self.conn.manager())
                .await
                .map_err(|e| self.conn.error(e))?;
            for entry in taken_over(reply) {
                out.push(build_of(s, entry));
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        let reply: Value = group::read_new(&self.node, max, self.config.block, streams)
            .query_async(conn)
            .await
            .map_err(|e| self.conn.error(e))?;
        for (stream, entries) in stream_entries(reply) {
            for entry in entries {
                out.push(build_of(&stream, entry));
            }
        }
        Ok(out)
    }

    /// Leases the build of one delivered entry; `None` while another node's lease on
    /// it is live.
    pub(crate) async fn lease(
        &self,
        stream: String,
        entry: String,
        function_id: String,
        version: u32,
    ) -> Result<Option<BuildLease>> {
        let (fid, v) = (&function_id, version);
        let reply: Vec<Value> = self
            .lease
            .key(self.keys.build_lease(fid, v))
            .key(self.keys.fence())
            .arg(&*self.node)
            .arg(self.config.lease.as_millis() as u64)
            .arg(&stream)
            .arg(&entry)
            .invoke_async(&mut self.conn.manager())
            .await
            .map_err(|e| self.conn.error(e))?;
        let ok = reply.first().and_then(text).as_deref() == Some("1");
        let token = if ok {
            reply.get(1).and_then(text).and_then(|t| t.parse().ok())
        } else {
            None
        };
        Ok(token.map(|token| BuildLease {
            stream,
            entry,
            function_id,
            version,
            token,
        }))
    }

    /// The stored request of a queued build; `None` once it was built (its source is
    /// gone).
    pub(crate) async fn request(&self, fid: &str, v: u32) -> Result<Option<BuildRequest>> {
        let json: Option<String> = redis::cmd("GET")
            .arg(self.keys.build_source(fid, v))
            .query_async(&mut self.conn.manager())
            .await
            .map_err(|e| self.conn.error(e))?;
        json.map(|j| {
            serde_json::from_str(&j)
                .map_err(|e| Error::Storage(format!("a queued build request in redis: {e}")))
        })
        .transpose()
    }

    /// Acknowledges and deletes a leased build's entry, with its lease and source,
    /// while the lease is current; `false` if it is not.
    pub(crate) async fn finish(&self, l: &BuildLease) -> Result<bool> {
        let n: i64 = self
            .done
            .key(self.keys.build_lease(&l.function_id, l.version))
            .key(&l.stream)
            .key(self.keys.build_source(&l.function_id, l.version))
            .arg(l.token)
            .arg(&l.entry)
            .invoke_async(&mut self.conn.manager())
            .await
            .map_err(|e| self.conn.error(e))?;
        Ok(n == 1)
    }

    /// Extends a build's lease; `false` when it is no longer this node's.
    pub(crate) async fn renew(&self, l: &BuildLease) -> Result<bool> {
        self.leases.renew(&self.held(l)).await
    }

    /// Gives a leased build back at once, for another worker to take; `false` when the
    /// lease was no longer this node's.
    pub(crate) async fn release(&self, l: &BuildLease) -> Result<bool> {
        self.leases.release(&self.held(l)).await
    }

    /// `l` as the lease calls take it.
    fn held<'a>(&self, l: &'a BuildLease) -> Held<'a> {
        Held {
            key: self.keys.build_lease(&l.function_id, l.version),
            stream: l.stream.clone(),
            entry: &l.entry,
            token: l.token,
        }
    }

    /// Acknowledges and deletes an entry whose build is done already.
    pub(crate) async fn drop_entry(&self, stream: &str, entry: &str) -> Result<()> {
        let _: Value = redis::pipe()
            .cmd("XACK")
            .arg(stream)
            .arg(GROUP)
            .arg(entry)
            .cmd("XDEL")
            .arg(stream)
            .arg(entry)
            .query_async(&mut self.conn.manager())
            .await
            .map_err(|e| self.conn.error(e))?;
        Ok(())
    }
}

/// A delivered entry of `stream` as `(stream, entry, function id, version)`.
fn build_of(stream: &str, entry: Entry) -> (String, String, String, u32) {
    let function_id = entry.field("fn").unwrap_or_default().to_string();
    let version = entry.field("v").and_then(|v| v.parse().ok()).unwrap_or(0);
    (stream.to_string(), entry.id, function_id, version)
}
