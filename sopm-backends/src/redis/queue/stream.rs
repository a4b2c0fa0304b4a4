//! `JobQueue`: the job streams with their leases. A gateway enqueues (record and stream
//! entry in one script); a worker claims (a blocking group read, then a lease with a
//! fresh fencing token), renews while it runs, and completes (fenced: a stale token is
//! refused); a reclaimer takes over entries whose lease expired; a job delivered more
//! than `max_deliveries` times is dead-lettered.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use sopm_core::types::now_ms;
use sopm_core::{Error, ErrorInfo, Job, JobId, JobStatus, Result};

use super::conn;
use super::group::{self, stream_entries, taken_over, text};
use super::lease::{Held, LeaseCalls};
use super::scripts;
use crate::redis::jobs::{parse_job, record_keys, RecordArgs};
use crate::redis::Keys;
use crate::redis::RedisConnection;

pub use super::group::GROUP;

/// The error code of a job that was dead-lettered.
pub const DEAD_LETTER_CODE: &str = "dead_letter";

/// Settings of a [`JobQueue`].
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// How long a lease lasts without renewal; a job whose worker stops renewing is
    /// taken over this long after the last renewal (also the reclaimer's min-idle).
    pub lease: Duration,
    /// How many times a job is started at most; the next delivery dead-letters it.
    pub max_deliveries: u32,
    /// How long one blocking read waits for entries.
    pub block: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            lease: Duration::from_secs(10),
            max_deliveries: 3,
            block: Duration::from_millis(1000),
        }
    }
}

/// A job this node holds a lease on.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The job's record as it was when leased (status queued or running).
    pub job: Job,
    /// The backend whose stream it came from.
    pub backend: Arc<str>,
    /// Its stream entry id.
    pub entry: String,
    /// The fencing token: only completions and renewals carrying the current one are
    /// accepted.
    pub token: u64,
    /// How many times it has been delivered, this time included.
    pub attempts: u32,
    /// The node whose caller waits for the result, if one does.
    pub waiter: Option<String>,
}

/// What a claim found.
#[derive(Debug, Clone)]
pub enum Claimed {
    /// Run it, then [`JobQueue::complete`].
    Run(Lease),
    /// It was delivered too many times: record it with [`JobQueue::dead_letter`].
    Dead(Lease),
}

/// The answer to an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Stored and queued; the backend's queue now holds this many waiting jobs.
    Queued(u64),
    /// The backend's queue is at capacity (this many waiting); nothing was stored.
    Full(u64),
    /// A record with that id was already final; nothing was queued.
    AlreadyFinished,
}

/// The job streams with their leases, for one node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JobQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: RedisConnection,
    keys: Keys,
    node: Arc<str>,
    config: QueueConfig,
    groups: Mutex<HashSet<String>>,
    refused: AtomicU64,
    dead: AtomicU64,
    taken_over: AtomicU64,
    depths: Mutex<HashMap<String, u64>>,
    enqueue: Script,
    lease: Script,
    drop: Script,
    fenced_put: Script,
    complete: Script,
    cancel: Script,
    leases: LeaseCalls,
}

impl JobQueue {
    /// The queue over `conn`, for the node `node` (its consumer name and lease owner).
    pub fn new(conn: RedisConnection, node: &str, config: QueueConfig) -> Self {
        let node: Arc<str> = Arc::from(node);
        JobQueue {
            inner: Arc::new(Inner {
                keys: conn.keys().clone(),
                leases: LeaseCalls::new(conn.clone(), node.clone(), config.lease),
                conn,
                node,
                config,
                groups: Mutex::new(HashSet::new()),
                refused: AtomicU64::new(0),
                dead: AtomicU64::new(0),
                taken_over: AtomicU64::new(0),
                depths: Mutex::new(HashMap::new()),
                enqueue: Script::new(scripts::ENQUEUE),
                lease: Script::new(scripts::LEASE),
                drop: Script::new(scripts::DROP),
                fenced_put: Script::new(scripts::FENCED_PUT),
                complete: Script::new(scripts::COMPLETE),
                cancel: Script::new(scripts::CANCEL),
            }),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The settings.
    pub fn config(&self) -> &QueueConfig {
        &self.inner.config
    }

    /// The connection.
    pub fn connection(&self) -> &RedisConnection {
        &self.inner.conn
    }

    /// Completions and renewals this node made with a stale token, refused.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Jobs this node dead-lettered.
    pub fn dead_lettered(&self) -> u64 {
        self.inner.dead.load(Ordering::Relaxed)
    }

    /// Jobs this node took over from an expired lease.
    pub fn taken_over(&self) -> u64 {
        self.inner.taken_over.load(Ordering::Relaxed)
    }

    /// The depth of the queues this node enqueued to or leased from, added up, each as
    /// last seen: in an enqueue or lease answer, or by [`refresh_depths`](Self::refresh_depths)
    /// (answers of concurrent calls can arrive out of order; the next refresh corrects
    /// what they left).
    pub fn depth_seen(&self) -> u64 {
        self.inner.depths.lock().values().sum()
    }

    /// Reads the depth of every queue this node has seen (the heartbeat calls it each
    /// beat).
    pub async fn refresh_depths(&self) -> Result<()> {
        let i = &self.inner;
        let backends: Vec<String> = i.depths.lock().keys().cloned().collect();
        if backends.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = backends.iter().map(|b| i.keys.queue_depth(b)).collect();
        let depths: Vec<Option<u64>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut i.conn.manager())
            .await
            .map_err(|e| self.err(e))?;
        let mut seen = i.depths.lock();
        for (backend, depth) in backends.into_iter().zip(depths) {
            seen.insert(backend, depth.unwrap_or(0));
        }
        Ok(())
    }

    /// Notes a queue's depth from an answer.
    fn saw_depth(&self, backend: &str, depth: u64) {
        let mut seen = self.inner.depths.lock();
        match seen.get_mut(backend) {
            Some(d) => *d = depth,
            None => {
                seen.insert(backend.to_string(), depth);
            }
        }
    }

    /// The channel results for callers waiting on `node` are pushed on.
    pub fn done_channel(&self, node: &str) -> String {
        self.inner.keys.done_channel(node)
    }

    /// The channel running jobs' cancellations are published on.
    pub fn cancel_channel(&self) -> String {
        self.inner.keys.cancel_channel()
    }

    fn err(&self, e: redis::RedisError) -> Error {
        self.inner.conn.error(e)
    }

    /// Stores `job` (queued) and its entry on `backend`'s stream in one step; `waiter`
    /// is the node whose caller waits for the result. With `capacity`, refuses when
    /// that many jobs of the backend already wait. Durable when it returns (as durable
    /// as Redis's persistence).
    pub async fn enqueue(
        &self,
        backend: &str,
        job: &Job,
        waiter: Option<&str>,
        capacity: Option<u64>,
    ) -> Result<Admission> {
        let i = &self.inner;
        let args = RecordArgs::of(job)?;
        let mut call = i.enqueue.prepare_invoke();
        for k in record_keys(&i.keys, job) {
            call.key(k);
        }
        call.key(i.keys.job_stream(backend))
            .key(i.keys.queue_depth(backend));
        call.arg(capacity.unwrap_or(0))
            .arg(waiter.unwrap_or(""))
            .arg(backend);
        args.push(&mut call);
        let (code, depth): (i64, u64) = call
            .invoke_async(&mut i.conn.manager())
            .await
            .map_err(|e| self.err(e))?;
        self.saw_depth(backend, depth);
        Ok(match code {
            1 => Admission::Queued(depth),
            0 => Admission::Full(depth),
            _ => Admission::AlreadyFinished,
        })
    }

    /// Makes sure the consumer group exists on `stream` (from its first entry).
    async fn ensure_group(&self, stream: &str) -> Result<()> {
        if self.inner.groups.lock().contains(stream) {
            return Ok(());
        }
        group::create(&self.inner.conn, stream).await?;
        self.inner.groups.lock().insert(stream.to_string());
        Ok(())
    }

    /// A connection for [`claim`](Self::claim) (blocking reads need their own).
    pub fn claim_connection(&self) -> Result<ConnectionManager> {
        conn::blocking(&self.inner.conn, self.inner.config.block)
    }

    /// Waits up to the configured block time for new entries on the streams of
    /// `backends` and leases up to `max` of them.
    pub async fn claim(
        &self,
        conn: &mut ConnectionManager,
        backends: &[Arc<str>],
        max: usize,
    ) -> Result<Vec<Claimed>> {
        if backends.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        let i = &self.inner;
        let streams: Vec<String> = backends.iter().map(|b| i.keys.job_stream(b)).collect();
        for s in &streams {
            self.ensure_group(s).await?;
        }
        let reply: redis::RedisResult<Value> =
            group::read_new(&i.node, max, i.config.block, &streams)
                .query_async(conn)
                .await;
        let reply = match reply {
            Ok(v) => v,
            Err(e) if e.code() == Some("NOGROUP") => {
                i.groups.lock().clear();
                return Ok(Vec::new());
            }
            Err(e) => return Err(self.err(e)),
        };
        let mut wanted = Vec::new();
        for (si, entries) in stream_entries(reply) {
            let Some(backend) = streams
                .iter()
                .position(|s| *s == si)
                .map(|p| backends[p].clone())
            else {
                continue;
            };
            for entry in entries {
                if wanted.len() >= max {
                    // One read returns up to `max` per stream: the rest go back at once.
                    self.hand_back(&si, &entry.id).await?;
                    continue;
                }
                let job_id = entry.field("job").map(str::to_string);
                wanted.push((backend.clone(), entry.id, job_id));
            }
        }
        // The leases go out together (pipelined on the shared connection).
        let leased = futures::future::join_all(
            wanted
                .iter()
                .map(|(backend, entry, job_id)| self.lease(backend, entry, job_id.as_deref())),
        )
        .await;
        // Leases that were granted run even if others failed (those entries are
        // taken over later); an error is returned only when nothing was leased.
        let mut out = Vec::with_capacity(leased.len());
        let mut failed = None;
        for l in leased {
            match l {
                Ok(Some(c)) => out.push(c),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// Makes a delivered entry this node will not run look idle for ever, so the next
    /// reclaimer (of any node) takes it.
    async fn hand_back(&self, stream: &str, entry: &str) -> Result<()> {
        let _: Value = redis::cmd("XCLAIM")
            .arg(stream)
            .arg(GROUP)
            .arg("released")
            .arg(0)
            .arg(entry)
            .arg("IDLE")
            .arg(999_999_999_999u64)
            .arg("JUSTID")
            .query_async(&mut self.inner.conn.manager())
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Who owns an unfinished job besides its record: `Some(None)` a queue entry,
    /// `Some(Some(node))` a node running it in its own process (a waited built-in),
    /// `None` nobody (a record written without the queue, or by an older process).
    pub async fn owner(&self, id: &JobId) -> Result<Option<Option<String>>> {
        let i = &self.inner;
        let (x, n): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(i.keys.job(id.as_str()))
            .arg("x")
            .arg("n")
            .query_async(&mut i.conn.manager())
            .await
            .map_err(|e| self.err(e))?;
        Ok(match x.as_deref() {
            None => None,
            Some("local") => Some(n),
            Some(_) => Some(None),
        })
    }

    /// Marks a job as run by this node in its own process (not through the queue), so
    /// another node's recovery leaves it alone while this node is alive.
    pub async fn mark_local(&self, id: &JobId) -> Result<()> {
        let i = &self.inner;
        let _: i64 = redis::cmd("HSET")
            .arg(i.keys.job(id.as_str()))
            .arg("x")
            .arg("local")
            .arg("n")
            .arg(&*i.node)
            .query_async(&mut i.conn.manager())
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Whether `node` sent a heartbeat recently (its heartbeat key has not expired).
    pub async fn node_alive(&self, node: &str) -> Result<bool> {
        let i = &self.inner;
        redis::cmd("EXISTS")
            .arg(i.keys.node(node))
            .query_async(&mut i.conn.manager())
            .await
            .map_err(|e| self.err(e))
    }

    /// Takes over up to `max` entries of `backends`' streams that have been idle for
    /// longer than a lease (their worker stopped renewing) and leases them afresh.
    pub async fn reclaim(&self, backends: &[Arc<str>], max: usize) -> Result<Vec<Claimed>> {
        let i = &self.inner;
        let mut out = Vec::new();
        for backend in backends {
            if out.len() >= max {
                break;
            }
            let stream = i.keys.job_stream(backend);
            self.ensure_group(&stream).await?;
            let reply: redis::RedisResult<Value> =
                group::take_idle(&i.node, &stream, i.config.lease, max - out.len())
                    .query_async(&mut i.conn.manager())
                    .await;
            let reply = match reply {
                Ok(v) => v,
                Err(e) if e.code() == Some("NOGROUP") => {
                    i.groups.lock().clear();
                    continue;
                }
                Err(e) => return Err(self.err(e)),
            };
            for entry in taken_over(reply) {
                if let Some(c) = self.lease(backend, &entry.id, entry.field("job")).await? {
                    if matches!(&c, Claimed::Run(l) | Claimed::Dead(l) if l.attempts > 1) {
                        i.taken_over.fetch_add(1, Ordering::Relaxed);
                    }
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    /// Leases the job of one delivered entry; `None` when there is nothing to run
    /// (the entry was dropped, or another node's lease is live).
    async fn lease(
        &self,
        backend: &Arc<str>,
        entry: &str,
        job_id: Option<&str>,
    ) -> Result<Option<Claimed>> {
        let i = &self.inner;
        let stream = i.keys.job_stream(backend);
        let Some(job_id) = job_id else {
            self.drop_entry(&stream, entry).await?;
            return Ok(None);
        };
        let reply: Vec<Value> = i
            .lease
            .key(i.keys.job(job_id))
            .key(i.keys.lease(job_id))
            .key(i.keys.fence())
            .key(i.keys.queue_depth(backend))
            .arg(&*i.node)
            .arg(i.config.lease.as_millis() as u64)
            .arg(i.config.max_deliveries)
            .arg(&stream)
            .arg(entry)
            .invoke_async(&mut i.conn.manager())
            .await
            .map_err(|e| self.err(e))?;
        let kind = reply.first().and_then(text).unwrap_or_default();
        match kind.as_str() {
            "gone" | "done" => {
                self.drop_entry(&stream, entry).await?;
                Ok(None)
            }
            "run" | "dead" => {
                let field = |n: usize| reply.get(n).and_then(text).unwrap_or_default();
                let job = parse_job(&field(3))?;
                let waiter = Some(field(4)).filter(|w| !w.is_empty());
                if let Ok(depth) = field(5).parse() {
                    self.saw_depth(backend, depth);
                }
                let lease = Lease {
                    job,
                    backend: backend.clone(),
                    entry: entry.to_string(),
                    token: field(1).parse().unwrap_or(0),
                    attempts: field(2).parse().unwrap_or(0),
                    waiter,
                };
                Ok(Some(if kind == "run" {
                    Claimed::Run(lease)
                } else {
                    Claimed::Dead(lease)
                }))
            }
            _ => Ok(None),
        }
    }

    async fn drop_entry(&self, stream: &str, entry: &str) -> Result<()> {
        let i = &self.inner;
        let _: i64 = i
            .drop
            .key(stream)
            .arg(entry)
            .invoke_async(&mut i.conn.manager())
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records the job of `lease` as running (attempt `lease.attempts`, started now)
    /// and returns that record; refused (`Ok(None)`) if the lease is no longer current.
    pub async fn start(&self, lease: &Lease) -> Result<Option<Job>> {
        let job = Self::running_record(lease);
        Ok(self.record_running(lease, &job).await?.then_some(job))
    }

    /// The running record of the job of `lease`: attempt `lease.attempts`, started now.
    pub fn running_record(lease: &Lease) -> Job {
        let mut job = lease.job.clone();
        job.status = JobStatus::Running;
        job.started_ms = Some(now_ms());
        job.attempts = lease.attempts;
        job
    }

    /// Stores `job` (a running record) while the lease is current: `false` if not.
    pub async fn record_running(&self, lease: &Lease, job: &Job) -> Result<bool> {
        let i = &self.inner;
        let args = RecordArgs::of(job)?;
        let mut call = i.fenced_put.prepare_invoke();
        for k in record_keys(&i.keys, job) {
            call.key(k);
        }
        call.key(i.keys.lease(job.id.as_str())).arg(lease.token);
        args.push(&mut call);
        let stored: i64 = call
            .invoke_async(&mut i.conn.manager())
            .await
            .map_err(|e| self.err(e))?;
        Ok(stored == 1)
    }

    /// Extends the lease; `false` when it is no longer this node's (the job was
    /// cancelled or taken over): stop running it.
    pub async fn renew(&self, lease: &Lease) -> Result<bool> {
        self.inner.leases.renew(&self.held(lease)).await
    }

    /// Records `job` as the final record of the leased job, acknowledges its entry and
    /// pushes the result to the waiting node, in one step; `false` (and counted) when
    /// the token is stale: another node took the job over, or it was cancelled.
    pub async fn complete(&self, lease: &Lease, job: &Job) -> Result<bool> {
        self.finish(lease, job, false).await
    }

    /// Records a job delivered too many times as `failed` (`dead_letter`), copies its
    /// entry to the dead stream and acknowledges it.
    pub async fn dead_letter(&self, lease: &Lease) -> Result<bool> {
        let runs = lease.attempts.saturating_sub(1);
        let mut job = lease.job.clone();
        job.status = JobStatus::Failed;
        job.attempts = runs;
        job.output = None;
        job.finished_ms = Some(now_ms());
        job.error = Some(ErrorInfo {
            code: DEAD_LETTER_CODE.to_string(),
            message: format!(
                "the job was delivered {runs} times without finishing (each worker stopped \
                 renewing its lease: it crashed, was cut off or stopped); it is not run again"
            ),
            traceback: None,
        });
        let done = self.finish(lease, &job, true).await?;
        if done {
            self.inner.dead.fetch_add(1, Ordering::Relaxed);
        }
        Ok(done)
    }

    async fn finish(&self, lease: &Lease, job: &Job, dead: bool) -> Result<bool> {
        let i = &self.inner;
        let args = RecordArgs::of(job)?;
        let mut call = i.complete.prepare_invoke();
        for k in record_keys(&i.keys, job) {
            call.key(k);
        }
        call.key(i.keys.lease(job.id.as_str()))
            .key(i.keys.job_stream(&lease.backend))
            .key(i.keys.dead());
        call.arg(lease.token)
            .arg(if dead { "1" } else { "0" })
            .arg(&lease.entry)
            .arg(i.keys.done_channel(""));
        args.push(&mut call);
        let done: i64 = call
            .invoke_async(&mut i.conn.manager())
            .await
            .map_err(|e| self.err(e))?;
        if done != 1 {
            i.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(job = %job.id, token = lease.token, "completion with a stale lease refused");
        }
        Ok(done == 1)
    }

    /// Gives a running job back at once (shutdown): another node's reclaimer takes it
    /// on its next pass. `false` if the lease was no longer current.
    pub async fn release(&self, lease: &Lease) -> Result<bool> {
        self.inner.leases.release(&self.held(lease)).await
    }

    /// `lease` as the lease calls take it.
    fn held<'a>(&self, lease: &'a Lease) -> Held<'a> {
        let keys = &self.inner.keys;
        Held {
            key: keys.lease(lease.job.id.as_str()),
            stream: keys.job_stream(&lease.backend),
            entry: &lease.entry,
            token: lease.token,
        }
    }

    /// Cancels a queued or running job: `cancelled` is its cancelled record. Returns
    /// `Ok(None)` for an unknown job, `Err(conflict)` (with nothing changed) for a
    /// finished one, else the stored cancelled record. A queued job never runs; a
    /// running one's worker is told on the cancel channel and its completion is refused.
    pub async fn cancel(&self, cancelled: &Job) -> Result<Option<Job>> {
        let i = &self.inner;
        let args = RecordArgs::of(cancelled)?;
        let mut call = i.cancel.prepare_invoke();
        for k in record_keys(&i.keys, cancelled) {
            call.key(k);
        }
        call.key(i.keys.lease(cancelled.id.as_str()))
            .arg(i.keys.queue_depth(""))
            .arg(i.keys.done_channel(""))
            .arg(i.keys.cancel_channel());
        args.push(&mut call);
        let reply: Vec<Value> = call
            .invoke_async(&mut i.conn.manager())
            .await
            .map_err(|e| self.err(e))?;
        let code = reply.first().and_then(text).unwrap_or_default();
        let json = reply.get(1).and_then(text);
        match (code.as_str(), json) {
            ("1", Some(j)) => Ok(Some(parse_job(&j)?)),
            ("2", Some(j)) => {
                let job = parse_job(&j)?;
                Err(Error::Conflict(format!(
                    "job {} already finished ({})",
                    job.id,
                    job.status.as_str()
                )))
            }
            _ => Ok(None),
        }
    }

    /// The job ids of a lease's holder and token, for tests and diagnostics: `(node,
    /// token)` of the current lease of `id`, if any.
    pub async fn lease_of(&self, id: &JobId) -> Result<Option<(String, u64)>> {
        let i = &self.inner;
        let (node, token): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(i.keys.lease(id.as_str()))
            .arg("node")
            .arg("token")
            .query_async(&mut i.conn.manager())
            .await
            .map_err(|e| self.err(e))?;
        Ok(node.zip(token))
    }

    /// How many entries the dead-letter stream holds.
    pub async fn dead_count(&self) -> Result<u64> {
        let i = &self.inner;
        redis::cmd("XLEN")
            .arg(i.keys.dead())
            .query_async(&mut i.conn.manager())
            .await
            .map_err(|e| self.err(e))
    }
}
