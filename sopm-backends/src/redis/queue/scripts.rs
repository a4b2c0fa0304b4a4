//! The queue's Lua scripts: each step that must be atomic (enqueue, lease, renew,
//! complete, cancel, release) is one script, so no crash or race between two commands
//! can leave a job half moved.

use crate::redis::jobs::record_lua;

/// Lua helpers: Redis's clock in ms, and the record args starting at ARGV[i].
macro_rules! helpers_lua {
    () => {
        r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function record_at(i)
  local a = {}
  for k = 0, 7 do a[k + 1] = ARGV[i + k] end
  return a
end
"#
    };
}

/// ENQUEUE: KEYS job, unfinished, finished, by-function, stream, depth; ARGV capacity
/// (0: none), waiting node (''), backend, then the record. Refuses when the backend's
/// queue holds `capacity` jobs: `{0, depth}`; else stores the record and the stream
/// entry together: `{1, depth}`.
pub(crate) const ENQUEUE: &str = concat!(
    record_lua!(),
    helpers_lua!(),
    r#"
local cap = tonumber(ARGV[1])
local depth = tonumber(redis.call('GET', KEYS[6]) or '0')
if cap > 0 and depth >= cap then return {0, depth} end
local rec = record_at(4)
if put_record(KEYS[1], KEYS[2], KEYS[3], KEYS[4], rec) == 0 then return {2, depth} end
local entry = redis.call('XADD', KEYS[5], '*', 'job', rec[1])
redis.call('HSET', KEYS[1], 'q', KEYS[5], 'x', entry, 'w', 1, 'k', ARGV[3])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'g', ARGV[2]) end
depth = redis.call('INCR', KEYS[6])
return {1, depth}
"#
);

/// LEASE: KEYS job, lease, fence, depth; ARGV node, lease ms, max deliveries, stream,
/// entry. `{'gone'}` (no record), `{'done'}` (already finished), `{'busy'}` (another
/// node holds a live lease), else `{'run' | 'dead', token, attempts, job json, waiting
/// node, the backend's queue depth}` with a new lease and fencing token.
pub(crate) const LEASE: &str = concat!(
    helpers_lua!(),
    r#"
local s = redis.call('HGET', KEYS[1], 's')
if not s then return {'gone'} end
if s ~= 'queued' and s ~= 'running' then return {'done'} end
local now = now_ms()
local held = redis.call('HMGET', KEYS[2], 'token', 'expires')
if held[1] and tonumber(held[2]) > now then return {'busy'} end
if redis.call('HDEL', KEYS[1], 'w') == 1 then redis.call('DECR', KEYS[4]) end
local a = redis.call('HINCRBY', KEYS[1], 'a', 1)
local token = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[2], 'node', ARGV[1], 'token', token,
  'expires', now + tonumber(ARGV[2]), 'stream', ARGV[4], 'entry', ARGV[5])
local kind = 'run'
if a > tonumber(ARGV[3]) then kind = 'dead' end
return {kind, tostring(token), tostring(a), redis.call('HGET', KEYS[1], 'j'),
  redis.call('HGET', KEYS[1], 'g') or '', redis.call('GET', KEYS[4]) or '0'}
"#
);

/// DROP: KEYS stream; ARGV entry. Acknowledges and deletes an entry whose job is gone
/// or finished.
pub(crate) const DROP: &str = r#"
redis.call('XACK', KEYS[1], 'workers', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"#;

/// FENCED_PUT: KEYS job, unfinished, finished, by-function, lease; ARGV token, then the
/// record. Stores it only while `token` is the job's current lease: 1, else 0.
pub(crate) const FENCED_PUT: &str = concat!(
    record_lua!(),
    helpers_lua!(),
    r#"
if redis.call('HGET', KEYS[5], 'token') ~= ARGV[1] then return 0 end
return put_record(KEYS[1], KEYS[2], KEYS[3], KEYS[4], record_at(2))
"#
);

/// RENEW: KEYS lease, stream; ARGV token, lease ms, entry, consumer. Extends the lease
/// and resets the entry's idle time while `token` is current: 1, else 0 (the job was
/// cancelled or taken over).
pub(crate) const RENEW: &str = concat!(
    helpers_lua!(),
    r#"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'expires', now_ms() + tonumber(ARGV[2]))
redis.call('XCLAIM', KEYS[2], 'workers', ARGV[4], 0, ARGV[3], 'JUSTID')
return 1
"#
);

/// COMPLETE: KEYS job, unfinished, finished, by-function, lease, stream, dead; ARGV
/// token, dead (1/0), entry, the done channels' prefix, then the record. Only while `token` is current
/// (else 0): stores the final record (never backwards), acknowledges and deletes the
/// entry, copies it to the dead stream if dead, drops the lease and pushes the stored
/// record to the waiting node's channel: 1.
pub(crate) const COMPLETE: &str = concat!(
    record_lua!(),
    helpers_lua!(),
    r#"
if redis.call('HGET', KEYS[5], 'token') ~= ARGV[1] then return 0 end
local rec = record_at(5)
put_record(KEYS[1], KEYS[2], KEYS[3], KEYS[4], rec)
redis.call('XACK', KEYS[6], 'workers', ARGV[3])
redis.call('XDEL', KEYS[6], ARGV[3])
if ARGV[2] == '1' then
  redis.call('XADD', KEYS[7], '*', 'job', rec[1], 'stream', KEYS[6], 'entry', ARGV[3],
    'attempts', redis.call('HGET', KEYS[1], 'a') or '0')
end
redis.call('DEL', KEYS[5])
local g = redis.call('HGET', KEYS[1], 'g')
if g then redis.call('PUBLISH', ARGV[4] .. g, redis.call('HGET', KEYS[1], 'j')) end
return 1
"#
);

/// CANCEL: KEYS job, unfinished, finished, by-function, lease; ARGV the queue depth
/// keys' prefix, the done channels' prefix, the cancel channel, then the cancelled
/// record. `{0}` unknown job, `{2, json}` already finished (nothing
/// changed), else `{1, json}`: the record is cancelled, its entry acknowledged and
/// deleted (so it never runs, or its running worker's completion is refused), its lease
/// dropped, the waiting node and the running node told.
pub(crate) const CANCEL: &str = concat!(
    record_lua!(),
    helpers_lua!(),
    r#"
local s = redis.call('HGET', KEYS[1], 's')
if not s then return {0} end
if s ~= 'queued' and s ~= 'running' then return {2, redis.call('HGET', KEYS[1], 'j')} end
local rec = record_at(4)
put_record(KEYS[1], KEYS[2], KEYS[3], KEYS[4], rec)
local q = redis.call('HMGET', KEYS[1], 'q', 'x', 'k', 'g')
if redis.call('HDEL', KEYS[1], 'w') == 1 and q[3] then redis.call('DECR', ARGV[1] .. q[3]) end
if q[1] and q[2] then
  redis.call('XACK', q[1], 'workers', q[2])
  redis.call('XDEL', q[1], q[2])
end
redis.call('DEL', KEYS[5])
local j = redis.call('HGET', KEYS[1], 'j')
if q[4] then redis.call('PUBLISH', ARGV[2] .. q[4], j) end
redis.call('PUBLISH', ARGV[3], rec[1])
return {1, j}
"#
);

/// RELEASE: KEYS lease, stream; ARGV token, entry. Gives a running job back at once (a
/// node shutting down): drops the lease and makes the entry look idle for ever, so the
/// next reclaimer takes it. 1, or 0 if `token` was not current.
pub(crate) const RELEASE: &str = r#"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('XCLAIM', KEYS[2], 'workers', 'released', 0, ARGV[2], 'IDLE', 999999999999, 'JUSTID')
return 1
"#;
