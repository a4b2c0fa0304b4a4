//! `RedisJobStore`: job records in Redis, one hash per job holding its JSON, with the
//! never-backwards rule applied atomically by a Lua script, and the indexes recovery,
//! retention and function logs read.
//!
//! Keys (see [`keys`](super::keys)): `P job:{id}` a hash holding the job's JSON, its
//! status and its log entry; `P jobs:unfinished`, `P jobs:finished` and
//! `P jobs:fn:{function_id}` the indexes.
//!
//! Durability: a put returns when Redis has answered, so it is as durable as the
//! server's persistence: with AOF `appendfsync always` it survives a crash of Redis.
//! Buffered puts are the same writes (every put is durable).

use async_trait::async_trait;
use redis::Script;
use serde::{Deserialize, Serialize};
use sopm_core::jobstore::JobLogEntry;
use sopm_core::{
    Durability, Error, ErrorInfo, FunctionRef, Job, JobId, JobStatus, JobStore, Result, TenantId,
};

use super::{Keys, RedisConnection};

/// The Lua function every script that writes a record shares: `put_record(jk, uk, fk,
/// fnk, a)` stores the record whose fields are `a` (see [`RecordArgs`]) unless that
/// would move the stored job back; returns 1 if stored, 0 if ignored.
macro_rules! record_lua {
    () => {
        r#"
local function rank(s)
  if s == 'queued' then return 0 elseif s == 'running' then return 1 else return 2 end
end
local function terminal(s)
  return s ~= 'queued' and s ~= 'running'
end
local function put_record(jk, uk, fk, fnk, a)
  local id, st, json, entry, tenant, fid, created, fscore =
    a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8]
  local old = redis.call('HGET', jk, 's')
  if old then
    if terminal(old) or rank(st) < rank(old) then return 0 end
  end
  redis.call('HSET', jk, 's', st, 'j', json, 't', tenant, 'c', created)
  if entry ~= '' then redis.call('HSET', jk, 'e', entry) end
  if fid ~= '' then
    redis.call('HSET', jk, 'f', fid)
    redis.call('ZADD', fnk, created, id)
  end
  if terminal(st) then
    redis.call('SREM', uk, id)
    redis.call('ZADD', fk, fscore, id)
  else
    redis.call('SADD', uk, id)
  end
  return 1
end
"#
    };
}
#[allow(unused_imports)]
pub(crate) use record_lua;

/// How many ARGV a record takes (see [`RecordArgs`]).
pub(crate) const RECORD_ARGS: usize = 8;

/// PUT: KEYS job, unfinished, finished, by-function; ARGV a record.
const PUT_LUA: &str = concat!(
    record_lua!(),
    r#"
return put_record(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV)
"#
);

/// RECENT: KEYS by-function; ARGV tenant, limit, job key prefix. The log entries of the
/// tenant's jobs, newest first (ties: higher id first).
const RECENT_LUA: &str = r#"
local out = {}
local limit = tonumber(ARGV[2])
local start = 0
while #out < limit do
  local ids = redis.call('ZREVRANGE', KEYS[1], start, start + 199)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local v = redis.call('HMGET', ARGV[3] .. id, 't', 'e')
    if v[1] == ARGV[1] and v[2] then
      out[#out + 1] = v[2]
      if #out >= limit then break end
    end
  end
  start = start + 200
end
return out
"#;

/// EXPIRE: KEYS finished; ARGV cutoff, max, job key prefix, by-function key prefix.
const EXPIRE_LUA: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local jk = ARGV[3] .. id
  local fid = redis.call('HGET', jk, 'f')
  if fid then redis.call('ZREM', ARGV[4] .. fid, id) end
  redis.call('DEL', jk)
  redis.call('ZREM', KEYS[1], id)
end
return #ids
"#;

/// The four keys `put_record` takes, for `job`.
pub(crate) fn record_keys(keys: &Keys, job: &Job) -> [String; 4] {
    [
        keys.job(job.id.as_str()),
        keys.jobs_unfinished(),
        keys.jobs_finished(),
        keys.jobs_by_function(function_id(job).unwrap_or("-")),
    ]
}

/// The user function a job runs, if any.
fn function_id(job: &Job) -> Option<&str> {
    match &job.function {
        FunctionRef::User { id, .. } => Some(id),
        FunctionRef::Builtin { .. } => None,
    }
}

/// A record as the scripts take it: id, status, JSON, log entry JSON (or ''), tenant,
/// function id (or ''), created_ms, finished score.
pub(crate) struct RecordArgs(pub(crate) [String; RECORD_ARGS]);

impl RecordArgs {
    /// The arguments for `job`.
    pub(crate) fn of(job: &Job) -> Result<Self> {
        let json = serde_json::to_string(job)
            .map_err(|e| Error::Internal(format!("job {} does not serialise: {e}", job.id)))?;
        let fid = function_id(job);
        let entry = match fid {
            Some(_) => serde_json::to_string(&StoredEntry::from(JobLogEntry::of(job)))
                .map_err(|e| Error::Internal(format!("log entry: {e}")))?,
            None => String::new(),
        };
        Ok(RecordArgs([
            job.id.as_str().to_string(),
            job.status.as_str().to_string(),
            json,
            entry,
            job.tenant.as_str().to_string(),
            fid.unwrap_or("").to_string(),
            job.created_ms.to_string(),
            job.finished_ms.unwrap_or(job.created_ms).to_string(),
        ]))
    }

    /// Adds them to a script call.
    pub(crate) fn push(&self, call: &mut redis::ScriptInvocation<'_>) {
        for a in &self.0 {
            call.arg(a);
        }
    }
}

/// A [`JobLogEntry`] as stored next to its record.
#[derive(Serialize, Deserialize)]
struct StoredEntry {
    id: JobId,
    version: Option<u32>,
    status: JobStatus,
    created_ms: u64,
    finished_ms: Option<u64>,
    duration_us: Option<u64>,
    logs: String,
    logs_truncated: bool,
    error: Option<ErrorInfo>,
}

impl From<JobLogEntry> for StoredEntry {
    fn from(e: JobLogEntry) -> Self {
        StoredEntry {
            id: e.id,
            version: e.version,
            status: e.status,
            created_ms: e.created_ms,
            finished_ms: e.finished_ms,
            duration_us: e.duration_us,
            logs: e.logs,
            logs_truncated: e.logs_truncated,
            error: e.error,
        }
    }
}

impl From<StoredEntry> for JobLogEntry {
    fn from(e: StoredEntry) -> Self {
        JobLogEntry {
            id: e.id,
            version: e.version,
            status: e.status,
            created_ms: e.created_ms,
            finished_ms: e.finished_ms,
            duration_us: e.duration_us,
            logs: e.logs,
            logs_truncated: e.logs_truncated,
            error: e.error,
        }
    }
}

/// A job record read back from its JSON.
pub(crate) fn parse_job(json: &str) -> Result<Job> {
    serde_json::from_str(json).map_err(|e| Error::Storage(format!("a job record in redis: {e}")))
}

/// Job records in Redis. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisJobStore {
    conn: RedisConnection,
    keys: Keys,
    put: std::sync::Arc<Script>,
    recent: std::sync::Arc<Script>,
    expire: std::sync::Arc<Script>,
}

impl RedisJobStore {
    /// A job store over `conn` (no I/O until the first call).
    pub fn new(conn: RedisConnection) -> Self {
        let keys = conn.keys().clone();
        RedisJobStore {
            conn,
            keys,
            put: std::sync::Arc::new(Script::new(PUT_LUA)),
            recent: std::sync::Arc::new(Script::new(RECENT_LUA)),
            expire: std::sync::Arc::new(Script::new(EXPIRE_LUA)),
        }
    }

    /// The connection it uses.
    pub fn connection(&self) -> &RedisConnection {
        &self.conn
    }
}

#[async_trait]
impl JobStore for RedisJobStore {
    async fn put(&self, job: &Job, _durability: Durability) -> Result<()> {
        let args = RecordArgs::of(job)?;
        let mut call = self.put.prepare_invoke();
        for k in record_keys(&self.keys, job) {
            call.key(k);
        }
        args.push(&mut call);
        let _: i64 = call
            .invoke_async(&mut self.conn.manager())
            .await
            .map_err(|e| self.conn.error(e))?;
        Ok(())
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>> {
        let json: Option<String> = redis::cmd("HGET")
            .arg(self.keys.job(id.as_str()))
            .arg("j")
            .query_async(&mut self.conn.manager())
            .await
            .map_err(|e| self.conn.error(e))?;
        json.as_deref().map(parse_job).transpose()
    }

    async fn unfinished(&self) -> Result<Vec<Job>> {
        let mut conn = self.conn.manager();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.jobs_unfinished())
            .query_async(&mut conn)
            .await
            .map_err(|e| self.conn.error(e))?;
        let mut jobs = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HGET").arg(self.keys.job(id)).arg("j");
            }
            let found: Vec<Option<String>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.conn.error(e))?;
            for json in found.into_iter().flatten() {
                let job = parse_job(&json)?;
                if !job.status.is_terminal() {
                    jobs.push(job);
                }
            }
        }
        jobs.sort_by(|a, b| {
            a.created_ms
                .cmp(&b.created_ms)
                .then_with(|| a.id.as_str().cmp(b.id.as_str()))
        });
        Ok(jobs)
    }

    async fn recent_logs(
        &self,
        tenant: &TenantId,
        function_id: &str,
        limit: usize,
    ) -> Result<Vec<JobLogEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let entries: Vec<String> = self
            .recent
            .key(self.keys.jobs_by_function(function_id))
            .arg(tenant.as_str())
            .arg(limit)
            .arg(self.keys.job_prefix())
            .invoke_async(&mut self.conn.manager())
            .await
            .map_err(|e| self.conn.error(e))?;
        entries
            .iter()
            .map(|e| {
                serde_json::from_str::<StoredEntry>(e)
                    .map(JobLogEntry::from)
                    .map_err(|e| Error::Storage(format!("a log entry in redis: {e}")))
            })
            .collect()
    }

    async fn expire_finished(&self, cutoff_ms: u64, max: usize) -> Result<u64> {
        if max == 0 {
            return Ok(0);
        }
        let n: u64 = self
            .expire
            .key(self.keys.jobs_finished())
            .arg(cutoff_ms)
            .arg(max)
            .arg(self.keys.job_prefix())
            .arg(self.keys.jobs_by_function_prefix())
            .invoke_async(&mut self.conn.manager())
            .await
            .map_err(|e| self.conn.error(e))?;
        Ok(n)
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}
