//! Queued builds: `P b:{backend}` streams (consumer group `workers`) of builds, each
//! request stored at `P src:{function_id}:{version}` next to its entry. A worker with
//! the backend leases a build (`P lease:build:{function_id}:{version}`, a fencing
//! token from `P fence`), runs it with `Builds::run` while renewing, and acknowledges
//! it with a fenced script; a build whose worker stops renewing is taken over like a
//! job. A version whose backend was not recorded goes to `P b:runtime:{runtime}`, read
//! by every worker. At-least-once: a build taken over may run twice, and the registry
//! keeps the first finish (a version leaves `building` once).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Script, Value};
use sopm_core::{BuildRequest, Error, Result, Runtime};

use super::conn;
use super::scheduler::Shared;
use super::scripts;
use super::stream::{text, QueueConfig, GROUP};
use super::worker::{pause, Backoff};
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
struct BuildLease {
    stream: String,
    entry: String,
    function_id: String,
    version: u32,
    token: u64,
}

/// The build streams. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct BuildQueue {
    conn: RedisConnection,
    keys: Keys,
    node: Arc<str>,
    config: QueueConfig,
    enqueue: Arc<Script>,
    lease: Arc<Script>,
    done: Arc<Script>,
    renew: Arc<Script>,
    release: Arc<Script>,
}

impl BuildQueue {
    pub(crate) fn new(conn: RedisConnection, node: &str, config: QueueConfig) -> Self {
        BuildQueue {
            keys: conn.keys().clone(),
            conn,
            node: Arc::from(node),
            config,
            enqueue: Arc::new(Script::new(BUILD_ENQUEUE)),
            lease: Arc::new(Script::new(BUILD_LEASE)),
            done: Arc::new(Script::new(BUILD_DONE)),
            renew: Arc::new(Script::new(scripts::RENEW)),
            release: Arc::new(Script::new(scripts::RELEASE)),
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
    fn streams(&self, backends: &[Arc<str>]) -> Vec<String> {
        backends
            .iter()
            .filter(|b| ***b != *sopm_core::BUILTIN_BACKEND)
            .map(|b| self.keys.build_stream(b))
            .chain(RUNTIMES.iter().map(|r| self.runtime_stream(*r)))
            .collect()
    }

    async fn ensure_groups(&self, streams: &[String]) -> Result<()> {
        for s in streams {
            let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(s)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut self.conn.manager())
                .await;
            match r {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(self.conn.error(e)),
            }
        }
        Ok(())
    }

    /// New entries (blocking up to the configured time) and entries whose lease
    /// expired, as `(stream, entry, function id, version)`.
    async fn read(
        &self,
        conn: &mut ConnectionManager,
        streams: &[String],
        max: usize,
    ) -> Result<Vec<(String, String, String, u32)>> {
        let mut out = Vec::new();
        for s in streams {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(s)
                .arg(GROUP)
                .arg(&*self.node)
                .arg(self.config.lease.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(max)
                .query_async(&mut self.conn.manager())
                .await
                .map_err(|e| self.conn.error(e))?;
            if let Value::Array(parts) = reply {
                if let Some(list) = parts.into_iter().nth(1) {
                    for (entry, fields) in raw_entries(list) {
                        out.push((s.clone(), entry, fields.0, fields.1));
                    }
                }
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&*self.node)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(self.config.block.as_millis() as u64)
            .arg("STREAMS");
        for s in streams {
            cmd.arg(s);
        }
        for _ in streams {
            cmd.arg(">");
        }
        let reply: Value = cmd
            .query_async(conn)
            .await
            .map_err(|e| self.conn.error(e))?;
        for (stream, entries) in streams_raw(reply) {
            for (entry, (fid, v)) in entries {
                out.push((stream.clone(), entry, fid, v));
            }
        }
        Ok(out)
    }

    async fn lease(&self, stream: &str, entry: &str, fid: &str, v: u32) -> Result<Option<u64>> {
        let reply: Vec<Value> = self
            .lease
            .key(self.keys.build_lease(fid, v))
            .key(self.keys.fence())
            .arg(&*self.node)
            .arg(self.config.lease.as_millis() as u64)
            .arg(stream)
            .arg(entry)
            .invoke_async(&mut self.conn.manager())
            .await
            .map_err(|e| self.conn.error(e))?;
        let ok = reply.first().and_then(text).as_deref() == Some("1");
        Ok(if ok {
            reply.get(1).and_then(text).and_then(|t| t.parse().ok())
        } else {
            None
        })
    }

    async fn request(&self, fid: &str, v: u32) -> Result<Option<BuildRequest>> {
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

    async fn finish(&self, l: &BuildLease) -> Result<bool> {
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

    async fn renew(&self, l: &BuildLease) -> Result<bool> {
        let n: i64 = self
            .renew
            .key(self.keys.build_lease(&l.function_id, l.version))
            .key(&l.stream)
            .arg(l.token)
            .arg(self.config.lease.as_millis() as u64)
            .arg(&l.entry)
            .arg(&*self.node)
            .invoke_async(&mut self.conn.manager())
            .await
            .map_err(|e| self.conn.error(e))?;
        Ok(n == 1)
    }

    async fn release(&self, l: &BuildLease) -> Result<()> {
        let _: i64 = self
            .release
            .key(self.keys.build_lease(&l.function_id, l.version))
            .key(&l.stream)
            .arg(l.token)
            .arg(&l.entry)
            .invoke_async(&mut self.conn.manager())
            .await
            .map_err(|e| self.conn.error(e))?;
        Ok(())
    }

    async fn drop_entry(&self, stream: &str, entry: &str) -> Result<()> {
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

type RawEntries = Vec<(String, (String, u32))>;

/// `[[id, [fn, F, v, V]], ...]` as `(entry, (function id, version))`.
fn raw_entries(list: Value) -> RawEntries {
    let Value::Array(entries) = list else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| {
            let Value::Array(parts) = e else { return None };
            let id = text(parts.first()?)?;
            let Some(Value::Array(kv)) = parts.get(1) else {
                return Some((id, (String::new(), 0)));
            };
            let get = |name: &str| {
                kv.chunks(2)
                    .find(|p| p.first().and_then(text).as_deref() == Some(name))
                    .and_then(|p| p.get(1).and_then(text))
            };
            Some((
                id,
                (
                    get("fn").unwrap_or_default(),
                    get("v").and_then(|v| v.parse().ok()).unwrap_or(0),
                ),
            ))
        })
        .collect()
}

/// An XREADGROUP reply as `(stream, entries)`.
fn streams_raw(reply: Value) -> Vec<(String, RawEntries)> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let entries = kv.pop()?;
                    let name = kv.pop()?;
                    Some((name, entries))
                }
                _ => None,
            })
            .collect(),
        Value::Map(m) => m,
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(name, entries)| Some((text(&name)?, raw_entries(entries))))
        .collect()
}

/// Most builds one node runs at once from the queue (each also waits for one of the
/// node's build slots).
const BUILDS_AT_ONCE: usize = 4;

/// Takes builds this node can run and runs them, until the node stops.
pub(crate) async fn run_loop(s: Arc<Shared>, backends: Vec<Arc<str>>) {
    let q = s.builds_queue.clone();
    let streams = q.streams(&backends);
    let slots = Arc::new(tokio::sync::Semaphore::new(BUILDS_AT_ONCE));
    let mut conn = match conn::blocking(&s.conn, q.config.block) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the build loop cannot start");
            return;
        }
    };
    let mut backoff = Backoff::new();
    let mut ready = false;
    loop {
        if s.stopping() {
            return;
        }
        if !ready {
            match q.ensure_groups(&streams).await {
                Ok(()) => ready = true,
                Err(e) => {
                    tracing::warn!(error = %e, "build streams not ready; retrying");
                    if !pause(&s, backoff.next()).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let Ok(first) = slots.clone().acquire_owned().await else {
            return;
        };
        let free = 1 + slots.available_permits();
        let found = match q.read(&mut conn, &streams, free).await {
            Ok(f) => {
                backoff.reset();
                f
            }
            Err(e) => {
                if e.to_string().contains("NOGROUP") {
                    ready = false;
                }
                tracing::warn!(error = %e, "reading builds failed; retrying");
                drop(first);
                if !pause(&s, backoff.next()).await {
                    return;
                }
                continue;
            }
        };
        let mut first = Some(first);
        for (stream, entry, fid, v) in found {
            let permit = match first.take() {
                Some(p) => p,
                None => match slots.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        // No room now: the entry stays pending and is reclaimed later.
                        continue;
                    }
                },
            };
            let token = match q.lease(&stream, &entry, &fid, v).await {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "leasing a build failed");
                    continue;
                }
            };
            let lease = BuildLease {
                stream,
                entry,
                function_id: fid,
                version: v,
                token,
            };
            let s = s.clone();
            tokio::spawn(async move {
                run_build(&s, lease).await;
                drop(permit);
            });
        }
    }
}

async fn run_build(s: &Shared, lease: BuildLease) {
    let q = &s.builds_queue;
    let request = match q.request(&lease.function_id, lease.version).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            // Built already (its source is gone): drop the entry.
            let _ = q.drop_entry(&lease.stream, &lease.entry).await;
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading a build request failed");
            return;
        }
    };
    let Some(builds) = &s.builds else {
        let _ = q.release(&lease).await;
        return;
    };
    if !builds.can_build(&request.version) {
        // Another worker has the builder: give it back at once.
        let _ = q.release(&lease).await;
        return;
    }
    let renew_every = q.config.lease / 3;
    let keep = async {
        loop {
            tokio::time::sleep(renew_every).await;
            match q.renew(&lease).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::warn!(error = %e, "build lease renewal failed"),
            }
        }
    };
    let mut interrupt = s.interrupt.subscribe();
    tokio::select! {
        status = builds.run(request) => {
            tracing::debug!(status = status.as_str(), "queued build finished");
            for _ in 0..20 {
                match q.finish(&lease).await {
                    Ok(_) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
        _ = keep => {}
        _ = async { let _ = interrupt.wait_for(|v| *v).await; } => {
            let _ = q.release(&lease).await;
        }
    }
}
