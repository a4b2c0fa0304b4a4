//! A job as the SQLite store keeps it: [`JobRow`], its fields encoded on the caller's
//! thread for the writer, and [`StoredJob`], its fields as read back (from a row of the
//! `jobs` table or an entry of a batch row), decoded into a [`Job`].

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use sopm_core::{Error, ErrorInfo, FunctionRef, Job, JobId, JobStatus, Result, TenantId};

use super::error::{corrupt, Context};
use super::payloads::{self, PayloadRef};

// Integers are stored as SQLite's signed 64 bits; the casts round-trip every u64.
pub(super) fn to_sql_int(v: u64) -> i64 {
    v as i64
}

pub(super) fn from_sql_int(v: i64) -> u64 {
    v as u64
}

/// A job encoded for the `jobs` table. Built by the caller, so JSON encoding happens
/// on the caller's thread and not on the writer's.
#[derive(Debug)]
pub(crate) struct JobRow {
    pub(super) id: JobId,
    pub(super) tenant: TenantId,
    pub(super) function: String,
    pub(super) function_id: Option<String>,
    pub(super) status: &'static str,
    pub(super) input: String,
    pub(super) output: Option<String>,
    pub(super) error: Option<String>,
    pub(super) logs: Option<String>,
    pub(super) timeout_ms: i64,
    pub(super) created_ms: i64,
    pub(super) started_ms: Option<i64>,
    pub(super) finished_ms: Option<i64>,
    pub(super) duration_us: Option<i64>,
    pub(super) attempts: i64,
    /// `Some(1)` when the id does not sort by the retention time (see
    /// [`delete_expired_jobs`](super::rows::delete_expired_jobs)).
    pub(super) id_unordered: Option<i64>,
    /// The id's time ([`JobId::unix_ms`]), read once here for both the mark above
    /// and the writer's choice of a batch row.
    pub(super) made_ms: Option<u64>,
    /// Where `input` and `output` went, once the writer moved them to a segment.
    pub(super) payload: Option<PayloadRef>,
    /// The job's sole record ([`JobStore::put_sole`](sopm_core::JobStore::put_sole)):
    /// it may go to a batch row.
    pub(super) sole: bool,
}

impl JobRow {
    pub(crate) fn encode(job: &Job) -> Result<Self> {
        let mut row = JobRow {
            id: job.id.clone(),
            tenant: job.tenant.clone(),
            function: job.function.to_json(),
            function_id: match &job.function {
                FunctionRef::User { id, .. } => Some(id.to_string()),
                FunctionRef::Builtin { .. } => None,
            },
            status: job.status.as_str(),
            // The same text serde_json writes, with strings scanned sixteen bytes at a time.
            input: sopm_core::json::to_string(&job.input),
            output: job.output.as_ref().map(sopm_core::json::to_string),
            error: job
                .error
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .context("encoding a job's error")?,
            logs: job.logs.clone(),
            timeout_ms: to_sql_int(job.timeout_ms),
            created_ms: to_sql_int(job.created_ms),
            started_ms: job.started_ms.map(to_sql_int),
            finished_ms: job.finished_ms.map(to_sql_int),
            duration_us: job.duration_us.map(to_sql_int),
            attempts: i64::from(job.attempts),
            id_unordered: None,
            made_ms: job.id.unix_ms(),
            payload: None,
            sole: false,
        };
        row.id_unordered = (!id_in_order(row.made_ms, row.retention_ms())).then_some(1);
        Ok(row)
    }

    pub(crate) fn id(&self) -> &JobId {
        &self.id
    }

    /// Whether this is a finished job whose input and output are large enough to go
    /// to a payload segment.
    pub(crate) fn payload_belongs_outside(&self) -> bool {
        !matches!(self.status, "queued" | "running")
            && self.input.len() + self.output.as_ref().map_or(0, String::len) >= payloads::MIN_BYTES
    }

    /// The input and output JSON text.
    pub(crate) fn input_output(&self) -> (&str, Option<&str>) {
        (&self.input, self.output.as_deref())
    }

    /// The input and output are now at `at`: the row keeps only the reference.
    pub(crate) fn payload_moved(&mut self, at: PayloadRef) {
        self.input = String::new();
        self.output = None;
        self.payload = Some(at);
    }

    /// The time retention counts from: when the job finished, else when it was made.
    pub(crate) fn retention_ms(&self) -> i64 {
        self.finished_ms.unwrap_or(self.created_ms)
    }
}

/// Whether an id made at `made_ms` sorts by a job's retention time (`retention_ms`):
/// a UUIDv7 id made no later than it. Every job this build makes has one; the
/// retention sweep finds the others through the `jobs_unordered_age` index. Migration
/// 7 marks the rows it finds by the same rule in SQL (`tests/sqlite.rs` holds the two
/// to the same marks).
fn id_in_order(made_ms: Option<u64>, retention_ms: i64) -> bool {
    made_ms.is_some_and(|made| u64::try_from(retention_ms).is_ok_and(|r| made <= r))
}

/// The input and output of job `id`, from where `at` says they are in a segment.
pub(super) fn read_payload(
    payload_dir: &Path,
    id: &str,
    at: &PayloadRef,
) -> Result<(Value, Option<Value>)> {
    let bytes = payloads::read(payload_dir, at).map_err(|e| match e {
        Error::Storage(m) => Error::Storage(format!("job {id}: {m}")),
        other => other,
    })?;
    let (input, output) = bytes.split_at(at.input_len as usize);
    decode_payload(input, (at.output_len >= 0).then_some(output))
}

/// A job's input and output from their JSON text.
pub(super) fn decode_payload(
    input: &[u8],
    output: Option<&[u8]>,
) -> Result<(Value, Option<Value>)> {
    let input = serde_json::from_slice(input).context("decoding a job's input")?;
    let output = output
        .map(serde_json::from_slice)
        .transpose()
        .context("decoding a job's output")?;
    Ok((input, output))
}

/// A job's fields as stored (text and integers), from a row or a batch entry, before
/// decoding.
pub(super) struct StoredJob<'a> {
    pub(super) id: &'a str,
    pub(super) tenant: &'a str,
    /// The function reference as JSON.
    pub(super) function: &'a str,
    pub(super) status: &'a str,
    /// The error as JSON.
    pub(super) error: Option<&'a str>,
    pub(super) logs: Option<String>,
    pub(super) timeout_ms: i64,
    pub(super) created_ms: i64,
    pub(super) started_ms: Option<i64>,
    pub(super) finished_ms: Option<i64>,
    pub(super) duration_us: Option<i64>,
    pub(super) attempts: i64,
}

impl StoredJob<'_> {
    /// The job, with its input and output already decoded.
    pub(super) fn into_job(self, input: Value, output: Option<Value>) -> Result<Job> {
        Ok(Job {
            id: JobId::parse(self.id).map_err(|_| corrupt("job id", self.id.to_string()))?,
            tenant: TenantId::new(self.tenant).map_err(|e| corrupt("job tenant", e.to_string()))?,
            function: serde_json::from_str::<FunctionRef>(self.function)
                .context("decoding a job's function")?,
            status: JobStatus::parse(self.status)
                .ok_or_else(|| corrupt("job status", self.status.to_string()))?,
            input: Arc::new(input),
            output,
            error: self
                .error
                .map(serde_json::from_str::<ErrorInfo>)
                .transpose()
                .context("decoding a job's error")?,
            logs: self.logs,
            timeout_ms: from_sql_int(self.timeout_ms),
            created_ms: from_sql_int(self.created_ms),
            started_ms: self.started_ms.map(from_sql_int),
            finished_ms: self.finished_ms.map(from_sql_int),
            duration_us: self.duration_us.map(from_sql_int),
            attempts: u32::try_from(self.attempts)
                .map_err(|e| corrupt("job attempts", e.to_string()))?,
        })
    }
}
