//! Mapping between SOPM records and table rows, and the SQL that reads and writes them.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, CachedStatement, Connection, OptionalExtension, Row, Statement};
use sopm_core::jobstore::{JobLogEntry, LISTED_LOG_CHARS};
use sopm_core::keys::no_key;
use sopm_core::registry::{
    already_finished, append_capped, new_function_id, no_function_named, no_function_with_id,
    no_function_with_name, no_version, removable_version, sort_oldest_first,
};
use sopm_core::{
    ApiKeyInfo, Artifact, BuildStatus, Error, ErrorInfo, FunctionRecord, FunctionVersion, Job,
    JobId, JobStatus, Limits, NewVersion, Result, Runtime, TenantId, TenantUsage,
};

use super::batches;
use super::error::{corrupt, Context};
use super::payloads::PayloadRef;
use super::record::{decode_payload, from_sql_int, read_payload, to_sql_int, JobRow, StoredJob};

/// Inserts or replaces a job, unless that would move it back: the stored record is
/// replaced only while it is unfinished and the new status ranks at least as high
/// (queued 0 < running 1 < terminal 2). The rule lives in the statement, so no
/// read-then-write can race it.
const UPSERT_JOB: &str = "
    INSERT INTO jobs (id, tenant, function, status, input, output, error, logs,
                      timeout_ms, created_ms, started_ms, finished_ms, duration_us, attempts,
                      function_id, payload, payload_at, input_len, output_len, payload_crc,
                      id_unordered)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
            ?16, ?17, ?18, ?19, ?20, ?21)
    ON CONFLICT (id) DO UPDATE SET
        tenant = excluded.tenant, function = excluded.function, status = excluded.status,
        function_id = excluded.function_id,
        input = excluded.input, output = excluded.output, error = excluded.error,
        logs = excluded.logs, timeout_ms = excluded.timeout_ms,
        created_ms = excluded.created_ms, started_ms = excluded.started_ms,
        finished_ms = excluded.finished_ms, duration_us = excluded.duration_us,
        attempts = excluded.attempts, payload = excluded.payload,
        payload_at = excluded.payload_at, input_len = excluded.input_len,
        output_len = excluded.output_len, payload_crc = excluded.payload_crc,
        id_unordered = excluded.id_unordered
    WHERE jobs.status IN ('queued', 'running')
      AND (CASE excluded.status WHEN 'queued' THEN 0 WHEN 'running' THEN 1 ELSE 2 END)
          >= (CASE jobs.status WHEN 'queued' THEN 0 ELSE 1 END)";

/// The statement of [`put_job`], prepared once per batch.
pub(crate) fn prepare_put_job(conn: &Connection) -> rusqlite::Result<CachedStatement<'_>> {
    conn.prepare_cached(UPSERT_JOB)
}

pub(crate) fn put_job(stmt: &mut Statement<'_>, row: &JobRow) -> rusqlite::Result<()> {
    stmt.execute(params![
        row.id.as_str(),
        row.tenant.as_str(),
        row.function,
        row.status,
        row.input,
        row.output,
        row.error,
        row.logs,
        row.timeout_ms,
        row.created_ms,
        row.started_ms,
        row.finished_ms,
        row.duration_us,
        row.attempts,
        row.function_id,
        row.payload.map(|p| p.segment),
        row.payload.map(|p| p.offset),
        row.payload.map(|p| p.input_len),
        row.payload.map(|p| p.output_len),
        row.payload.map(|p| p.crc),
        row.id_unordered,
    ])?;
    Ok(())
}

const JOB_COLUMNS: &str = "id, tenant, function, status, input, output, error, logs, \
                           timeout_ms, created_ms, started_ms, finished_ms, duration_us, attempts, \
                           payload, payload_at, input_len, output_len, payload_crc";

/// Decodes a `JOB_COLUMNS` row; `payload_dir` holds the segments its input and output
/// may be in.
fn decode_job(row: &Row<'_>, payload_dir: &Path) -> Result<Job> {
    let text = |i: usize| -> Result<String> { row.get::<_, String>(i).context("reading a job") };
    let opt_text = |i: usize| -> Result<Option<String>> {
        row.get::<_, Option<String>>(i).context("reading a job")
    };
    let int = |i: usize| -> Result<i64> { row.get::<_, i64>(i).context("reading a job") };
    let opt_int =
        |i: usize| -> Result<Option<i64>> { row.get::<_, Option<i64>>(i).context("reading a job") };
    let id = text(0)?;
    let (input, output) = match row.get::<_, Option<i64>>(14).context("reading a job")? {
        None => decode_payload(
            text(4)?.as_bytes(),
            opt_text(5)?.as_deref().map(str::as_bytes),
        )?,
        Some(segment) => {
            let at = PayloadRef {
                segment,
                offset: int(15)?,
                input_len: int(16)?,
                output_len: int(17)?,
                crc: int(18)?,
            };
            read_payload(payload_dir, &id, &at)?
        }
    };
    let (tenant, function, status, error) = (text(1)?, text(2)?, text(3)?, opt_text(6)?);
    StoredJob {
        id: &id,
        tenant: &tenant,
        function: &function,
        status: &status,
        error: error.as_deref(),
        logs: opt_text(7)?,
        timeout_ms: int(8)?,
        created_ms: int(9)?,
        started_ms: opt_int(10)?,
        finished_ms: opt_int(11)?,
        duration_us: opt_int(12)?,
        attempts: int(13)?,
    }
    .into_job(input, output)
}

pub(crate) fn get_job(conn: &Connection, payload_dir: &Path, id: &JobId) -> Result<Option<Job>> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))
        .context("reading a job")?;
    let mut rows = stmt.query([id.as_str()]).context("reading a job")?;
    match rows.next().context("reading a job")? {
        Some(row) => decode_job(row, payload_dir).map(Some),
        None => batches::find(conn, payload_dir, id),
    }
}

pub(crate) fn unfinished_jobs(conn: &Connection, payload_dir: &Path) -> Result<Vec<Job>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') \
             ORDER BY created_ms, rowid"
        ))
        .context("reading unfinished jobs")?;
    let mut rows = stmt.query([]).context("reading unfinished jobs")?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().context("reading unfinished jobs")? {
        out.push(decode_job(row, payload_dir)?);
    }
    Ok(out)
}

/// The SQL of [`recent_job_logs`]: only what a log listing shows, with the logs and
/// the traceback cut in SQL to their last `LISTED_LOG_CHARS` characters; `input` and
/// `output` are never read.
pub(crate) const RECENT_JOB_LOGS_SQL: &str = "SELECT id, json_extract(function, '$.version'), \
     status, created_ms, finished_ms, duration_us, substr(logs, -?4), length(logs) > ?4, \
     json_extract(error, '$.code'), json_extract(error, '$.message'), \
     substr(json_extract(error, '$.traceback'), -?4) \
     FROM jobs WHERE function_id = ?1 AND tenant = ?2 ORDER BY created_ms DESC LIMIT ?3";

/// The newest `limit` jobs of one user function of one tenant, newest first, as log
/// listing entries.
pub(crate) fn recent_job_logs(
    conn: &Connection,
    tenant: &TenantId,
    function_id: &str,
    limit: usize,
) -> Result<Vec<JobLogEntry>> {
    let mut stmt = conn
        .prepare_cached(RECENT_JOB_LOGS_SQL)
        .context("reading a function's job logs")?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let chars = LISTED_LOG_CHARS as i64;
    let mut rows = stmt
        .query(params![function_id, tenant.as_str(), limit, chars])
        .context("reading a function's job logs")?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().context("reading a function's job logs")? {
        let get = |i: usize| -> Result<Option<String>> {
            row.get::<_, Option<String>>(i)
                .context("reading a function's job logs")
        };
        let opt_int = |i: usize| -> Result<Option<u64>> {
            Ok(row
                .get::<_, Option<i64>>(i)
                .context("reading a function's job logs")?
                .map(from_sql_int))
        };
        let id = get(0)?.unwrap_or_default();
        let status = get(2)?.unwrap_or_default();
        let code = get(8)?;
        out.push(JobLogEntry {
            id: JobId::parse(&id).map_err(|_| corrupt("job id", id.clone()))?,
            version: opt_int(1)?.map(|v| v as u32),
            status: JobStatus::parse(&status)
                .ok_or_else(|| corrupt("job status", status.clone()))?,
            created_ms: opt_int(3)?.unwrap_or(0),
            finished_ms: opt_int(4)?,
            duration_us: opt_int(5)?,
            logs: get(6)?.unwrap_or_default(),
            logs_truncated: row
                .get::<_, Option<bool>>(7)
                .context("reading a function's job logs")?
                .unwrap_or(false),
            error: match code {
                Some(code) => Some(ErrorInfo {
                    code,
                    message: get(9)?.unwrap_or_default(),
                    traceback: get(10)?,
                }),
                None => None,
            },
        });
    }
    Ok(out)
}

/// Deletes up to `limit` finished jobs that finished before `cutoff_ms`, those with rows
/// of their own first and then those in batch rows; returns how many went (fewer than
/// `limit`: none is left). A job's id is a UUIDv7 made when the job was, so every
/// expired job in order sorts below the floor of the cutoff and the primary key's
/// index finds it; the few rows out of order (`id_unordered`) have an
/// index by retention time of their own. A job that ran across the cutoff sorts below
/// the floor without having expired: it is passed over until it has.
pub(crate) fn delete_expired_jobs(conn: &Connection, cutoff_ms: u64, limit: usize) -> Result<u64> {
    let cutoff = to_sql_int(cutoff_ms);
    let in_order = conn
        .prepare_cached(
            "DELETE FROM jobs WHERE rowid IN (
                 SELECT rowid FROM jobs
                 WHERE id < ?1
                   AND status NOT IN ('queued', 'running')
                   AND COALESCE(finished_ms, created_ms) < ?2
                 LIMIT ?3)",
        )
        .context("deleting expired jobs")?
        .execute(params![JobId::floor_of(cutoff_ms), cutoff, limit as i64])
        .context("deleting expired jobs")?;
    let unordered = conn
        .prepare_cached(
            "DELETE FROM jobs WHERE rowid IN (
                 SELECT rowid FROM jobs
                 WHERE id_unordered IS NOT NULL
                   AND COALESCE(finished_ms, created_ms) < ?1
                   AND status NOT IN ('queued', 'running')
                 LIMIT ?2)",
        )
        .context("deleting expired jobs")?
        .execute(params![cutoff, (limit - in_order) as i64])
        .context("deleting expired jobs")?;
    let batched = batches::delete_expired(conn, cutoff, limit - in_order - unordered)?;
    Ok((in_order + unordered + batched) as u64)
}

// --- registry -------------------------------------------------------------------------

const VERSION_COLUMNS: &str = "f.id, f.tenant, f.name, v.version, v.runtime, v.handler, v.limits, \
                               v.env, v.digest, v.status, v.build_log, v.artifact, v.created_ms, \
                               v.executor";

fn decode_version(row: &Row<'_>) -> Result<FunctionVersion> {
    let text =
        |i: usize| -> Result<String> { row.get::<_, String>(i).context("reading a function") };
    let runtime = text(4)?;
    let status = text(9)?;
    Ok(FunctionVersion {
        function_id: text(0)?,
        tenant: TenantId::new(&text(1)?).map_err(|e| corrupt("function tenant", e.to_string()))?,
        name: text(2)?,
        version: row.get::<_, u32>(3).context("reading a function")?,
        runtime: runtime
            .parse::<Runtime>()
            .map_err(|_| corrupt("function runtime", runtime.clone()))?,
        handler: text(5)?,
        limits: serde_json::from_str::<Limits>(&text(6)?)
            .context("decoding a function's limits")?,
        env: serde_json::from_str::<BTreeMap<String, String>>(&text(7)?)
            .context("decoding a function's environment")?,
        source_digest: text(8)?,
        executor: row
            .get::<_, Option<String>>(13)
            .context("reading a function")?,
        status: BuildStatus::parse(&status)
            .ok_or_else(|| corrupt("build status", status.clone()))?,
        build_log: text(10)?,
        artifact: row
            .get::<_, Option<String>>(11)
            .context("reading a function")?
            .map(|s| serde_json::from_str::<Artifact>(&s))
            .transpose()
            .context("decoding a function's artifact")?,
        created_ms: from_sql_int(row.get::<_, i64>(12).context("reading a function")?),
    })
}

/// The columns [`decode_version`] reads, with an empty string where the build log
/// goes: the execute path's read never loads a log.
const VERSION_COLUMNS_WITHOUT_LOG: &str =
    "f.id, f.tenant, f.name, v.version, v.runtime, v.handler, \
                                           v.limits, v.env, v.digest, v.status, '', v.artifact, \
                                           v.created_ms, v.executor";

/// The SQL of [`resolve_version`]: one row, the function by id (preferred) or name,
/// then the pinned version, else the newest ready one, else the newest.
pub(crate) const RESOLVE_VERSION_SQL: &str = "SELECT {COLUMNS} \
     FROM functions f JOIN versions v ON v.function_id = f.id \
     WHERE f.tenant = ?1 AND (f.id = ?2 OR f.name = ?2) AND (?3 IS NULL OR v.version = ?3) \
     ORDER BY f.id = ?2 DESC, v.status = 'ready' DESC, v.version DESC LIMIT 1";

/// The one version a call runs, without its build log (see
/// [`Registry::resolve_version`](sopm_core::Registry::resolve_version)).
pub(crate) fn resolve_version(
    conn: &Connection,
    tenant: &TenantId,
    id_or_name: &str,
    version: Option<u32>,
) -> Result<FunctionVersion> {
    let mut stmt = conn
        .prepare_cached(&RESOLVE_VERSION_SQL.replace("{COLUMNS}", VERSION_COLUMNS_WITHOUT_LOG))
        .context("resolving a function")?;
    let mut rows = stmt
        .query(params![tenant.as_str(), id_or_name, version])
        .context("resolving a function")?;
    if let Some(row) = rows.next().context("resolving a function")? {
        return decode_version(row);
    }
    // Nothing matched: say whether the function or only the pinned version is missing.
    let id: Option<String> = conn
        .prepare_cached(
            "SELECT id FROM functions WHERE tenant = ?1 AND (id = ?2 OR name = ?2) \
             ORDER BY id = ?2 DESC LIMIT 1",
        )
        .context("resolving a function")?
        .query_row(params![tenant.as_str(), id_or_name], |r| r.get(0))
        .optional()
        .context("resolving a function")?;
    Err(match (id, version) {
        (Some(id), Some(n)) => no_version(&id, n),
        _ => no_function_named(id_or_name),
    })
}

/// Groups version rows (ordered by function, then version) into records.
fn collect_records(
    conn: &Connection,
    filter: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Vec<FunctionRecord>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM functions f JOIN versions v ON v.function_id = f.id \
             WHERE {filter} ORDER BY f.name, f.id, v.version"
        ))
        .context("reading functions")?;
    let mut rows = stmt.query(params).context("reading functions")?;
    let mut out: Vec<FunctionRecord> = Vec::new();
    while let Some(row) = rows.next().context("reading functions")? {
        let v = decode_version(row)?;
        match out.last_mut() {
            Some(rec) if rec.id == v.function_id => rec.versions.push(v),
            _ => out.push(FunctionRecord {
                id: v.function_id.clone(),
                tenant: v.tenant.clone(),
                name: v.name.clone(),
                versions: vec![v],
            }),
        }
    }
    Ok(out)
}

pub(crate) fn get_function(
    conn: &Connection,
    tenant: &TenantId,
    id: &str,
) -> Result<FunctionRecord> {
    collect_records(
        conn,
        "f.id = ?1 AND f.tenant = ?2",
        &[&id, &tenant.as_str()],
    )?
    .pop()
    .ok_or_else(|| no_function_with_id(id))
}

pub(crate) fn get_function_by_name(
    conn: &Connection,
    tenant: &TenantId,
    name: &str,
) -> Result<FunctionRecord> {
    collect_records(
        conn,
        "f.tenant = ?1 AND f.name = ?2",
        &[&tenant.as_str(), &name],
    )?
    .pop()
    .ok_or_else(|| no_function_with_name(name))
}

pub(crate) fn list_functions(conn: &Connection, tenant: &TenantId) -> Result<Vec<FunctionRecord>> {
    collect_records(conn, "f.tenant = ?1", &[&tenant.as_str()])
}

/// Every version still building, of every tenant, oldest first.
pub(crate) fn unfinished_builds(conn: &Connection) -> Result<Vec<FunctionVersion>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM functions f JOIN versions v ON v.function_id = f.id \
             WHERE v.status = 'building'"
        ))
        .context("reading unfinished builds")?;
    let mut rows = stmt.query([]).context("reading unfinished builds")?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().context("reading unfinished builds")? {
        out.push(decode_version(row)?);
    }
    sort_oldest_first(&mut out);
    Ok(out)
}

/// Creates the function on first use of the name, then its next version.
pub(crate) fn create_version(
    conn: &Connection,
    new: NewVersion,
    now_ms: u64,
) -> Result<FunctionVersion> {
    let existing: Option<String> = conn
        .prepare_cached("SELECT id FROM functions WHERE tenant = ?1 AND name = ?2")
        .context("finding a function")?
        .query_row(params![new.tenant.as_str(), new.name], |r| r.get(0))
        .optional()
        .context("finding a function")?;
    let function_id = match existing {
        Some(id) => id,
        None => {
            let id = new_function_id();
            conn.prepare_cached(
                "INSERT INTO functions (id, tenant, name, created_ms) VALUES (?1, ?2, ?3, ?4)",
            )
            .context("creating a function")?
            .execute(params![
                id,
                new.tenant.as_str(),
                new.name,
                to_sql_int(now_ms)
            ])
            .context("creating a function")?;
            id
        }
    };
    let version: u32 = conn
        .prepare_cached("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE function_id = ?1")
        .context("numbering a version")?
        .query_row([&function_id], |r| r.get(0))
        .context("numbering a version")?;
    let v = new.into_version(function_id, version, now_ms);
    conn.prepare_cached(
        "INSERT INTO versions (function_id, version, runtime, handler, limits, env, digest,
                               status, build_log, artifact, created_ms, executor)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, '', NULL, ?9, ?10)",
    )
    .context("creating a version")?
    .execute(params![
        v.function_id,
        v.version,
        v.runtime.as_str(),
        v.handler,
        serde_json::to_string(&v.limits).context("encoding limits")?,
        serde_json::to_string(&v.env).context("encoding the environment")?,
        v.source_digest,
        v.status.as_str(),
        to_sql_int(v.created_ms),
        v.executor,
    ])
    .context("creating a version")?;
    Ok(v)
}

fn version_not_found(conn: &Connection, id: &str, version: u32) -> Result<Error> {
    let exists: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM functions WHERE id = ?1)")
        .context("finding a function")?
        .query_row([id], |r| r.get(0))
        .context("finding a function")?;
    Ok(if exists {
        no_version(id, version)
    } else {
        no_function_with_id(id)
    })
}

/// Appends to a build log, keeping its tail within the cap (the writer is the only
/// writer, so reading and writing the log here cannot race).
pub(crate) fn append_build_log(
    conn: &Connection,
    id: &str,
    version: u32,
    chunk: &str,
) -> Result<()> {
    let log: Option<String> = conn
        .prepare_cached("SELECT build_log FROM versions WHERE function_id = ?1 AND version = ?2")
        .context("reading a build log")?
        .query_row(params![id, version], |r| r.get(0))
        .optional()
        .context("reading a build log")?;
    let Some(mut log) = log else {
        return Err(version_not_found(conn, id, version)?);
    };
    append_capped(&mut log, chunk);
    conn.prepare_cached(
        "UPDATE versions SET build_log = ?3 WHERE function_id = ?1 AND version = ?2",
    )
    .context("writing a build log")?
    .execute(params![id, version, log])
    .context("writing a build log")?;
    Ok(())
}

/// Moves a version out of `building`; any other current state is `conflict`.
pub(crate) fn finish_build(
    conn: &Connection,
    id: &str,
    version: u32,
    status: BuildStatus,
    artifact: Option<&Artifact>,
) -> Result<()> {
    let artifact = artifact
        .map(serde_json::to_string)
        .transpose()
        .context("encoding an artifact")?;
    let changed = conn
        .prepare_cached(
            "UPDATE versions SET status = ?3, artifact = ?4
             WHERE function_id = ?1 AND version = ?2 AND status = 'building'",
        )
        .context("finishing a build")?
        .execute(params![id, version, status.as_str(), artifact])
        .context("finishing a build")?;
    if changed == 1 {
        return Ok(());
    }
    let current: Option<String> = conn
        .prepare_cached("SELECT status FROM versions WHERE function_id = ?1 AND version = ?2")
        .context("finishing a build")?
        .query_row(params![id, version], |r| r.get(0))
        .optional()
        .context("finishing a build")?;
    match current {
        None => Err(version_not_found(conn, id, version)?),
        Some(s) => Err(already_finished(id, version, &s)),
    }
}

/// Deletes a function (its versions go with it) and returns what was deleted.
pub(crate) fn delete_function(
    conn: &Connection,
    tenant: &TenantId,
    id: &str,
) -> Result<FunctionRecord> {
    let record = get_function(conn, tenant, id)?;
    conn.prepare_cached("DELETE FROM functions WHERE id = ?1 AND tenant = ?2")
        .context("deleting a function")?
        .execute(params![id, tenant.as_str()])
        .context("deleting a function")?;
    Ok(record)
}

/// What a tenant holds: its functions and the recorded bytes of its artifacts.
pub(crate) fn tenant_usage(conn: &Connection, tenant: &TenantId) -> Result<TenantUsage> {
    let (functions, bytes): (i64, i64) = conn
        .prepare_cached(
            "SELECT COUNT(DISTINCT f.id), COALESCE(SUM(v.artifact_bytes), 0)
             FROM functions f LEFT JOIN versions v ON v.function_id = f.id
             WHERE f.tenant = ?1",
        )
        .context("reading a tenant's usage")?
        .query_row([tenant.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .context("reading a tenant's usage")?;
    Ok(TenantUsage {
        functions: from_sql_int(functions),
        artifact_bytes: from_sql_int(bytes),
    })
}

/// Records the size of a version's artifact.
pub(crate) fn record_artifact_bytes(
    conn: &Connection,
    id: &str,
    version: u32,
    bytes: u64,
) -> Result<()> {
    let changed = conn
        .prepare_cached(
            "UPDATE versions SET artifact_bytes = ?3 WHERE function_id = ?1 AND version = ?2",
        )
        .context("recording an artifact's size")?
        .execute(params![id, version, to_sql_int(bytes)])
        .context("recording an artifact's size")?;
    if changed == 1 {
        Ok(())
    } else {
        Err(version_not_found(conn, id, version)?)
    }
}

/// Deletes one version of a tenant's function (never its only one) and returns it.
pub(crate) fn delete_version(
    conn: &Connection,
    tenant: &TenantId,
    id: &str,
    version: u32,
) -> Result<FunctionVersion> {
    let mut record = get_function(conn, tenant, id)?;
    let index = removable_version(&record, version)?;
    conn.prepare_cached("DELETE FROM versions WHERE function_id = ?1 AND version = ?2")
        .context("deleting a version")?
        .execute(params![id, version])
        .context("deleting a version")?;
    Ok(record.versions.swap_remove(index))
}

// --- API keys -------------------------------------------------------------------------

fn decode_key(row: &Row<'_>) -> Result<ApiKeyInfo> {
    let text = |i: usize| -> Result<String> { row.get::<_, String>(i).context("reading a key") };
    Ok(ApiKeyInfo {
        id: text(0)?,
        tenant: TenantId::new(&text(1)?).map_err(|e| corrupt("key tenant", e.to_string()))?,
        label: text(2)?,
        prefix: text(3)?,
        created_ms: from_sql_int(row.get::<_, i64>(4).context("reading a key")?),
        revoked_ms: row
            .get::<_, Option<i64>>(5)
            .context("reading a key")?
            .map(from_sql_int),
    })
}

const KEY_COLUMNS: &str = "id, tenant, label, prefix, created_ms, revoked_ms";

pub(crate) fn insert_key(conn: &Connection, info: &ApiKeyInfo, digest: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO api_keys (id, tenant, label, digest, prefix, created_ms, revoked_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
    )
    .context("creating a key")?
    .execute(params![
        info.id,
        info.tenant.as_str(),
        info.label,
        digest,
        info.prefix,
        to_sql_int(info.created_ms)
    ])
    .context("creating a key")?;
    Ok(())
}

pub(crate) fn resolve_key(conn: &Connection, digest: &str) -> Result<Option<TenantId>> {
    let tenant: Option<String> = conn
        .prepare_cached("SELECT tenant FROM api_keys WHERE digest = ?1 AND revoked_ms IS NULL")
        .context("resolving a key")?
        .query_row([digest], |r| r.get(0))
        .optional()
        .context("resolving a key")?;
    tenant
        .map(|t| TenantId::new(&t).map_err(|e| corrupt("key tenant", e.to_string())))
        .transpose()
}

pub(crate) fn list_keys(conn: &Connection, tenant: &TenantId) -> Result<Vec<ApiKeyInfo>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant = ?1 ORDER BY created_ms, rowid"
        ))
        .context("listing keys")?;
    let mut rows = stmt.query([tenant.as_str()]).context("listing keys")?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().context("listing keys")? {
        out.push(decode_key(row)?);
    }
    Ok(out)
}

pub(crate) fn revoke_key(
    conn: &Connection,
    tenant: &TenantId,
    key_id: &str,
    now_ms: u64,
) -> Result<ApiKeyInfo> {
    conn.prepare_cached(
        "UPDATE api_keys SET revoked_ms = ?3 WHERE id = ?1 AND tenant = ?2 AND revoked_ms IS NULL",
    )
    .context("revoking a key")?
    .execute(params![key_id, tenant.as_str(), to_sql_int(now_ms)])
    .context("revoking a key")?;
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1 AND tenant = ?2"
        ))
        .context("revoking a key")?;
    let mut rows = stmt
        .query(params![key_id, tenant.as_str()])
        .context("revoking a key")?;
    match rows.next().context("revoking a key")? {
        Some(row) => decode_key(row),
        None => Err(no_key(key_id)),
    }
}
