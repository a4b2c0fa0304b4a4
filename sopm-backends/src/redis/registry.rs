//! [`RedisRegistry`]: the function registry in Redis. Every write (and every read of
//! more than one key) is one Lua script, which Redis runs atomically: a version number
//! is given out once even when two nodes upload the same name at once, a name maps to
//! one function per tenant, and a delete leaves no half of a function behind.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use redis::Script;
use serde::{Deserialize, Serialize};
use sopm_core::registry::{
    already_finished, check_finish, new_function_id, no_function_named, no_function_with_id,
    no_function_with_name, no_version, only_version, pick_version, sort_by_name, sort_oldest_first,
    validate_function_name,
};
use sopm_core::types::now_ms;
use sopm_core::{
    Artifact, BuildStatus, Error, FunctionRecord, FunctionVersion, Limits, NewVersion, Registry,
    Result, Runtime, TenantId, TenantUsage,
};

use super::{decode_json, encode_json, RedisConnection};

/// The function registry in Redis (see [`keys`](super::keys) for its layout).
///
/// Version numbers come from a counter kept with the function, so a number is never
/// given out twice, even after the newest version was deleted.
#[derive(Debug, Clone)]
pub struct RedisRegistry {
    conn: RedisConnection,
    /// The key layout every script gets first (see `Keys::registry_script_layout`).
    layout: Arc<[String; 5]>,
}

impl RedisRegistry {
    /// A registry over `conn` (under its prefix).
    pub fn new(conn: RedisConnection) -> Self {
        let layout = Arc::new(conn.keys().registry_script_layout());
        RedisRegistry { conn, layout }
    }

    /// A script call with the key layout as `ARGV[1..=5]`; its own arguments follow.
    fn call<'a>(&self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for part in self.layout.iter() {
            invocation.arg(part);
        }
        invocation
    }
}

/// What a version keeps that never changes after it is created (`v:{n}` in the
/// function's hash); status, artifact, size and log are kept beside it.
#[derive(Debug, Serialize, Deserialize)]
struct VersionSpec {
    runtime: Runtime,
    handler: String,
    limits: Limits,
    env: BTreeMap<String, String>,
    source_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    executor: Option<String>,
    created_ms: u64,
}

// --- Lua ------------------------------------------------------------------------------

/// The start of every registry script: the key layout from `ARGV[1..=5]` (see
/// `Keys::registry_script_layout`) and `read_record`, which returns a function's hash
/// as field/value pairs, `id` first, with each version's build log as `log:{n}` when
/// `logs` is true (nil when there is no such function).
macro_rules! prelude {
    () => {
        r#"
local FN, LOG, NAME, FNS, BUILDING = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local function read_record(id, logs)
  local h = redis.call('HGETALL', FN .. id)
  if #h == 0 then return nil end
  local out = {'id', id}
  for i = 1, #h, 2 do
    out[#out + 1] = h[i]
    out[#out + 1] = h[i + 1]
    if logs and string.sub(h[i], 1, 2) == 'v:' then
      local n = string.sub(h[i], 3)
      out[#out + 1] = 'log:' .. n
      out[#out + 1] = redis.call('GET', LOG .. id .. ':' .. n) or ''
    end
  end
  return out
end
local function count_versions(id)
  local count = 0
  for _, f in ipairs(redis.call('HKEYS', FN .. id)) do
    if string.sub(f, 1, 2) == 'v:' then count = count + 1 end
  end
  return count
end
"#
    };
}

/// ARGV: 6 fresh id, 7 tenant, 8 name, 9 now, 10 version spec. Returns {id, n}.
static CREATE_VERSION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local name_key = NAME .. ARGV[7] .. ':' .. ARGV[8]
local id = redis.call('GET', name_key)
if not id then
  id = ARGV[6]
  redis.call('SET', name_key, id)
  redis.call('SADD', FNS .. ARGV[7], id)
  redis.call('HSET', FN .. id, 'tenant', ARGV[7], 'name', ARGV[8], 'created_ms', ARGV[9])
end
local n = redis.call('HINCRBY', FN .. id, 'last', 1)
redis.call('HSET', FN .. id, 'v:' .. n, ARGV[10], 's:' .. n, 'building')
redis.call('SADD', BUILDING, id .. '/' .. n)
return {id, tostring(n)}
"#
    ))
});

/// ARGV: 6 tenant, 7 id. Returns the record, or {} when the tenant has no such id.
static GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
if redis.call('HGET', FN .. ARGV[7], 'tenant') ~= ARGV[6] then return {} end
return read_record(ARGV[7], true)
"#
    ))
});

/// ARGV: 6 tenant, 7 name. Returns the record, or {}.
static GET_BY_NAME: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local id = redis.call('GET', NAME .. ARGV[6] .. ':' .. ARGV[7])
if not id then return {} end
return read_record(id, true) or {}
"#
    ))
});

/// ARGV: 6 tenant, 7 id or name. Returns the record without logs (the id wins over a
/// name), or {}.
static RESOLVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local id = ARGV[7]
if redis.call('HGET', FN .. id, 'tenant') ~= ARGV[6] then
  id = redis.call('GET', NAME .. ARGV[6] .. ':' .. ARGV[7])
  if not id then return {} end
end
return read_record(id, false) or {}
"#
    ))
});

/// ARGV: 6 tenant. Returns every record of the tenant.
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', FNS .. ARGV[6])) do
  local r = read_record(id, true)
  if r then out[#out + 1] = r end
end
return out
"#
    ))
});

/// ARGV: 6 id, 7 version, 8 chunk, 9 cap in bytes. Appends and keeps the tail within
/// the cap, cut on a UTF-8 character boundary (as `append_capped`). Returns a status.
static APPEND_LOG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
if redis.call('EXISTS', FN .. ARGV[6]) == 0 then return 'no-function' end
if redis.call('HEXISTS', FN .. ARGV[6], 'v:' .. ARGV[7]) == 0 then return 'no-version' end
local key = LOG .. ARGV[6] .. ':' .. ARGV[7]
local len = redis.call('APPEND', key, ARGV[8])
local cap = tonumber(ARGV[9])
if len > cap then
  local log = redis.call('GET', key)
  local cut = len - cap + 1
  while cut <= len do
    local b = string.byte(log, cut)
    if b < 128 or b >= 192 then break end
    cut = cut + 1
  end
  redis.call('SET', key, string.sub(log, cut))
end
return 'ok'
"#
    ))
});

/// ARGV: 6 id, 7 version, 8 status, 9 artifact JSON or ''. Returns a status, or
/// `is:{status}` when the version already left `building`.
static FINISH_BUILD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local key = FN .. ARGV[6]
if redis.call('EXISTS', key) == 0 then return 'no-function' end
local s = redis.call('HGET', key, 's:' .. ARGV[7])
if not s then return 'no-version' end
if s ~= 'building' then return 'is:' .. s end
redis.call('HSET', key, 's:' .. ARGV[7], ARGV[8])
if ARGV[9] ~= '' then redis.call('HSET', key, 'a:' .. ARGV[7], ARGV[9]) end
redis.call('SREM', BUILDING, ARGV[6] .. '/' .. ARGV[7])
return 'ok'
"#
    ))
});

/// ARGV: 6 tenant, 7 id. Removes the function, its name, logs and build entries, and
/// returns its record, or {} when the tenant has no such id.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local key = FN .. ARGV[7]
if redis.call('HGET', key, 'tenant') ~= ARGV[6] then return {} end
local record = read_record(ARGV[7], true)
local name_key = NAME .. ARGV[6] .. ':' .. redis.call('HGET', key, 'name')
if redis.call('GET', name_key) == ARGV[7] then redis.call('DEL', name_key) end
redis.call('SREM', FNS .. ARGV[6], ARGV[7])
for _, f in ipairs(redis.call('HKEYS', key)) do
  if string.sub(f, 1, 2) == 'v:' then
    local n = string.sub(f, 3)
    redis.call('DEL', LOG .. ARGV[7] .. ':' .. n)
    redis.call('SREM', BUILDING, ARGV[7] .. '/' .. n)
  end
end
redis.call('DEL', key)
return record
"#
    ))
});

/// ARGV: 6 tenant, 7 id, 8 version. Removes one version (never the only one) and
/// returns {'ok', record fields of that version...}, or {status}.
static DELETE_VERSION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local key, n = FN .. ARGV[7], ARGV[8]
if redis.call('HGET', key, 'tenant') ~= ARGV[6] then return {'no-function'} end
if redis.call('HEXISTS', key, 'v:' .. n) == 0 then return {'no-version'} end
if count_versions(ARGV[7]) == 1 then return {'only-version'} end
local out = {'ok', 'id', ARGV[7], 'tenant', ARGV[6], 'name', redis.call('HGET', key, 'name')}
for _, f in ipairs({'v:', 's:', 'a:'}) do
  local value = redis.call('HGET', key, f .. n)
  if value then
    out[#out + 1] = f .. n
    out[#out + 1] = value
  end
end
out[#out + 1] = 'log:' .. n
out[#out + 1] = redis.call('GET', LOG .. ARGV[7] .. ':' .. n) or ''
redis.call('HDEL', key, 'v:' .. n, 's:' .. n, 'a:' .. n, 'b:' .. n)
redis.call('DEL', LOG .. ARGV[7] .. ':' .. n)
redis.call('SREM', BUILDING, ARGV[7] .. '/' .. n)
return out
"#
    ))
});

/// No ARGV of its own. Returns, per version still building, the fields of a record
/// with only that version.
static UNFINISHED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local out = {}
for _, m in ipairs(redis.call('SMEMBERS', BUILDING)) do
  local slash = string.find(m, '/', 1, true)
  if slash then
    local id, n = string.sub(m, 1, slash - 1), string.sub(m, slash + 1)
    local f = redis.call('HMGET', FN .. id, 'tenant', 'name', 'v:' .. n, 's:' .. n)
    if f[1] and f[3] and f[4] then
      out[#out + 1] = {'id', id, 'tenant', f[1], 'name', f[2], 'v:' .. n, f[3], 's:' .. n, f[4],
        'log:' .. n, redis.call('GET', LOG .. id .. ':' .. n) or ''}
    end
  end
end
return out
"#
    ))
});

/// ARGV: 6 tenant. Returns {function count, each recorded artifact size...} (summed
/// by the caller: Lua numbers are doubles).
static USAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local ids = redis.call('SMEMBERS', FNS .. ARGV[6])
local out = {tostring(#ids)}
for _, id in ipairs(ids) do
  local h = redis.call('HGETALL', FN .. id)
  for i = 1, #h, 2 do
    if string.sub(h[i], 1, 2) == 'b:' then out[#out + 1] = h[i + 1] end
  end
end
return out
"#
    ))
});

/// ARGV: 6 id, 7 version, 8 bytes. Returns a status.
static RECORD_BYTES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local key = FN .. ARGV[6]
if redis.call('EXISTS', key) == 0 then return 'no-function' end
if redis.call('HEXISTS', key, 'v:' .. ARGV[7]) == 0 then return 'no-version' end
redis.call('HSET', key, 'b:' .. ARGV[7], ARGV[8])
return 'ok'
"#
    ))
});

// --- decoding -------------------------------------------------------------------------

/// One version's stored parts, gathered from the hash fields.
#[derive(Default)]
struct Parts {
    spec: Option<String>,
    status: Option<String>,
    artifact: Option<String>,
    log: String,
}

/// Builds a record from `read_record`'s field/value pairs (versions oldest first).
fn decode_record(fields: Vec<String>) -> Result<FunctionRecord> {
    let mut id = None;
    let mut tenant = None;
    let mut name = None;
    let mut versions: BTreeMap<u32, Parts> = BTreeMap::new();
    let mut it = fields.into_iter();
    while let (Some(field), Some(value)) = (it.next(), it.next()) {
        match field.as_str() {
            "id" => id = Some(value),
            "tenant" => tenant = Some(value),
            "name" => name = Some(value),
            _ => {
                let Some((kind, n)) = field.split_once(':') else {
                    continue;
                };
                let Ok(n) = n.parse::<u32>() else {
                    continue;
                };
                let parts = versions.entry(n).or_default();
                match kind {
                    "v" => parts.spec = Some(value),
                    "s" => parts.status = Some(value),
                    "a" => parts.artifact = Some(value),
                    "log" => parts.log = value,
                    _ => {}
                }
            }
        }
    }
    let (Some(id), Some(tenant), Some(name)) = (id, tenant, name) else {
        return Err(corrupt(
            "function",
            "a function without its id, tenant or name",
        ));
    };
    let tenant = TenantId::new(&tenant).map_err(|e| corrupt("function tenant", e.to_string()))?;
    let mut out = Vec::with_capacity(versions.len());
    for (n, parts) in versions {
        let Some(spec) = parts.spec else { continue };
        let spec: VersionSpec = decode_json("version", &spec)?;
        let status = parts
            .status
            .as_deref()
            .and_then(BuildStatus::parse)
            .ok_or_else(|| corrupt("build status", format!("version {n} of '{id}'")))?;
        let artifact = parts
            .artifact
            .map(|a| decode_json::<Artifact>("artifact", &a))
            .transpose()?;
        out.push(FunctionVersion {
            function_id: id.clone(),
            tenant: tenant.clone(),
            name: name.clone(),
            version: n,
            runtime: spec.runtime,
            handler: spec.handler,
            limits: spec.limits,
            env: spec.env,
            source_digest: spec.source_digest,
            executor: spec.executor,
            status,
            build_log: parts.log,
            artifact,
            created_ms: spec.created_ms,
        });
    }
    Ok(FunctionRecord {
        id,
        tenant,
        name,
        versions: out,
    })
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::Storage(format!("redis: corrupt {what}: {detail}"))
}

/// The error for a script's status answer other than `ok`.
fn refused(status: &str, id: &str, version: u32) -> Error {
    match status {
        "no-function" => no_function_with_id(id),
        "no-version" => no_version(id, version),
        "only-version" => only_version(id, version),
        other => match other.strip_prefix("is:") {
            Some(s) => already_finished(id, version, s),
            None => Error::Storage(format!("redis: unexpected script answer {other:?}")),
        },
    }
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn create_version(&self, new: NewVersion) -> Result<FunctionVersion> {
        validate_function_name(&new.name)?;
        let created_ms = now_ms();
        let spec = VersionSpec {
            runtime: new.runtime,
            handler: new.handler.clone(),
            limits: new.limits.clone(),
            env: new.env.clone(),
            source_digest: new.source_digest.clone(),
            executor: new.executor.clone(),
            created_ms,
        };
        let (id, version): (String, u32) = self
            .conn
            .invoke(
                self.call(&CREATE_VERSION)
                    .arg(new_function_id())
                    .arg(new.tenant.as_str())
                    .arg(&new.name)
                    .arg(created_ms)
                    .arg(encode_json("version", &spec)?),
            )
            .await?;
        Ok(new.into_version(id, version, created_ms))
    }

    async fn get(&self, tenant: &TenantId, id: &str) -> Result<FunctionRecord> {
        let fields: Vec<String> = self
            .conn
            .invoke(self.call(&GET).arg(tenant.as_str()).arg(id))
            .await?;
        if fields.is_empty() {
            return Err(no_function_with_id(id));
        }
        decode_record(fields)
    }

    async fn get_by_name(&self, tenant: &TenantId, name: &str) -> Result<FunctionRecord> {
        let fields: Vec<String> = self
            .conn
            .invoke(self.call(&GET_BY_NAME).arg(tenant.as_str()).arg(name))
            .await?;
        if fields.is_empty() {
            return Err(no_function_with_name(name));
        }
        decode_record(fields)
    }

    async fn resolve_version(
        &self,
        tenant: &TenantId,
        id_or_name: &str,
        version: Option<u32>,
    ) -> Result<FunctionVersion> {
        let fields: Vec<String> = self
            .conn
            .invoke(self.call(&RESOLVE).arg(tenant.as_str()).arg(id_or_name))
            .await?;
        if fields.is_empty() {
            return Err(no_function_named(id_or_name));
        }
        let record = decode_record(fields)?;
        pick_version(&record, id_or_name, version).cloned()
    }

    async fn list(&self, tenant: &TenantId) -> Result<Vec<FunctionRecord>> {
        let all: Vec<Vec<String>> = self
            .conn
            .invoke(self.call(&LIST).arg(tenant.as_str()))
            .await?;
        let mut out = all
            .into_iter()
            .map(decode_record)
            .collect::<Result<Vec<_>>>()?;
        sort_by_name(&mut out);
        Ok(out)
    }

    async fn append_build_log(&self, id: &str, version: u32, chunk: &str) -> Result<()> {
        let status: String = self
            .conn
            .invoke(
                self.call(&APPEND_LOG)
                    .arg(id)
                    .arg(version)
                    .arg(chunk)
                    .arg(sopm_core::registry::MAX_BUILD_LOG_BYTES),
            )
            .await?;
        match status.as_str() {
            "ok" => Ok(()),
            other => Err(refused(other, id, version)),
        }
    }

    async fn finish_build(
        &self,
        id: &str,
        version: u32,
        status: BuildStatus,
        artifact: Option<Artifact>,
    ) -> Result<()> {
        check_finish(status, &artifact)?;
        let artifact = match &artifact {
            Some(a) => encode_json("artifact", a)?,
            None => String::new(),
        };
        let answer: String = self
            .conn
            .invoke(
                self.call(&FINISH_BUILD)
                    .arg(id)
                    .arg(version)
                    .arg(status.as_str())
                    .arg(artifact),
            )
            .await?;
        match answer.as_str() {
            "ok" => Ok(()),
            other => Err(refused(other, id, version)),
        }
    }

    async fn delete(&self, tenant: &TenantId, id: &str) -> Result<FunctionRecord> {
        let fields: Vec<String> = self
            .conn
            .invoke(self.call(&DELETE).arg(tenant.as_str()).arg(id))
            .await?;
        if fields.is_empty() {
            return Err(no_function_with_id(id));
        }
        decode_record(fields)
    }

    async fn unfinished_builds(&self) -> Result<Vec<FunctionVersion>> {
        let all: Vec<Vec<String>> = self.conn.invoke(&self.call(&UNFINISHED)).await?;
        let mut out = Vec::with_capacity(all.len());
        for fields in all {
            out.extend(decode_record(fields)?.versions);
        }
        sort_oldest_first(&mut out);
        Ok(out)
    }

    async fn tenant_usage(&self, tenant: &TenantId) -> Result<TenantUsage> {
        let answer: Vec<String> = self
            .conn
            .invoke(self.call(&USAGE).arg(tenant.as_str()))
            .await?;
        let number = |s: &str| -> Result<u64> {
            s.parse()
                .map_err(|_| corrupt("artifact size", format!("{s:?} is not a number")))
        };
        let mut usage = TenantUsage::default();
        if let Some((functions, sizes)) = answer.split_first() {
            usage.functions = number(functions)?;
            for s in sizes {
                usage.artifact_bytes = usage.artifact_bytes.saturating_add(number(s)?);
            }
        }
        Ok(usage)
    }

    async fn record_artifact_bytes(&self, id: &str, version: u32, bytes: u64) -> Result<()> {
        let status: String = self
            .conn
            .invoke(self.call(&RECORD_BYTES).arg(id).arg(version).arg(bytes))
            .await?;
        match status.as_str() {
            "ok" => Ok(()),
            other => Err(refused(other, id, version)),
        }
    }

    async fn delete_version(
        &self,
        tenant: &TenantId,
        id: &str,
        version: u32,
    ) -> Result<FunctionVersion> {
        let mut answer: Vec<String> = self
            .conn
            .invoke(
                self.call(&DELETE_VERSION)
                    .arg(tenant.as_str())
                    .arg(id)
                    .arg(version),
            )
            .await?;
        if answer.first().map(String::as_str) != Some("ok") {
            let status = answer.first().cloned().unwrap_or_default();
            return Err(refused(&status, id, version));
        }
        answer.remove(0);
        decode_record(answer)?
            .versions
            .pop()
            .ok_or_else(|| corrupt("version", format!("version {version} of '{id}'")))
    }
}
