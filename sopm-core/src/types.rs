//! Domain types shared by every part of SOPM: tenants, runtimes, limits, function
//! references, invocations, jobs and their states.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ErrorInfo;

/// The owner of functions and jobs. With auth off, clients name it (`user_id`);
/// with auth on, it comes from the API key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// The tenant used when a caller names none.
    pub const DEFAULT: &'static str = "default";

    /// Makes a tenant id, checking it is 1..=128 characters of `[A-Za-z0-9_.@-]`.
    pub fn new(id: &str) -> crate::Result<Self> {
        let ok = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'));
        if ok {
            Ok(TenantId(Arc::from(id)))
        } else {
            Err(crate::Error::invalid(
                "user_id: expected 1 to 128 characters of letters, digits, '_', '-', '.', '@'",
            ))
        }
    }

    /// The default tenant.
    pub fn default_tenant() -> Self {
        TenantId(Arc::from(Self::DEFAULT))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::default_tenant()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job's id: a UUIDv7 (48 bits of milliseconds, 74 random bits), so it cannot be
/// guessed, and ids sort by creation time, which keeps index inserts in storage
/// sequential instead of scattered.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(Arc<str>);

impl JobId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self::random_at(now_ms())
    }

    /// A fresh random id whose time part is `unix_ms` (the caller's one clock reading
    /// of the moment the job was accepted).
    pub fn random_at(unix_ms: u64) -> Self {
        // Built by hand rather than with `Uuid::now_v7`, which spends random bits on a
        // counter: here all 74 non-time bits are random.
        // A v4 UUID's bytes 6 and 8 carry fixed version and variant bits; skip them.
        let v4 = uuid::Uuid::new_v4().into_bytes();
        let mut random = [0u8; 10];
        random[..6].copy_from_slice(&v4[..6]);
        random[6..].copy_from_slice(&v4[9..13]);
        let id = uuid::Builder::from_unix_timestamp_millis(unix_ms, &random).into_uuid();
        let mut buf = uuid::Uuid::encode_buffer();
        JobId(Arc::from(&*id.hyphenated().encode_lower(&mut buf)))
    }

    /// Parses an id a client sent; anything that is not a UUID is `not_found`.
    pub fn parse(s: &str) -> crate::Result<Self> {
        match uuid::Uuid::try_parse(s) {
            Ok(u) => {
                let mut buf = uuid::Uuid::encode_buffer();
                Ok(JobId(Arc::from(&*u.hyphenated().encode_lower(&mut buf))))
            }
            Err(_) => Err(crate::Error::not_found(format!(
                "no job with id '{}'",
                truncate_for_message(s)
            ))),
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The time part (ms since the epoch) of a UUIDv7 id, which every id this build
    /// makes is; `None` for any other version (ids made before ids were time-ordered).
    /// Ids sort by it: `a.unix_ms() < b.unix_ms()` means `a.as_str() < b.as_str()`.
    pub fn unix_ms(&self) -> Option<u64> {
        let b = self.0.as_bytes();
        if b.len() != 36 || b[14] != b'7' {
            return None;
        }
        // Twelve hex digits, read by hand: this runs on every job a store records.
        b[..8].iter().chain(&b[9..13]).try_fold(0u64, |ms, &c| {
            let digit = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return None,
            };
            Some(ms << 4 | u64::from(digit))
        })
    }

    /// The string that UUIDv7 ids with a time part below `unix_ms` sort below, and
    /// the others not: for such an id, `id.as_str() < JobId::floor_of(t)` exactly when
    /// its time part is below `t` (this type holds ids in lower case).
    pub fn floor_of(unix_ms: u64) -> String {
        format!(
            "{:08x}-{:04x}",
            unix_ms >> 16 & 0xffff_ffff,
            unix_ms & 0xffff
        )
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub use crate::error::truncate_for_message;

/// The language or kind of code a function is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// One of the built-in functions, run in-process.
    Builtin,
    /// Python 3: `def handle(event, context)`.
    Python,
    /// Node.js: `exports.handle = (event, context) => ...`.
    Node,
    /// A shell script: input JSON on stdin, output JSON on stdout.
    Shell,
    /// A static Linux executable with the shell contract.
    Binary,
}

impl Runtime {
    /// The lowercase name used in the API and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Builtin => "builtin",
            Runtime::Python => "python",
            Runtime::Node => "node",
            Runtime::Shell => "shell",
            Runtime::Binary => "binary",
        }
    }
}

impl std::str::FromStr for Runtime {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "builtin" => Ok(Runtime::Builtin),
            "python" => Ok(Runtime::Python),
            "node" => Ok(Runtime::Node),
            "shell" => Ok(Runtime::Shell),
            "binary" => Ok(Runtime::Binary),
            other => Err(crate::Error::invalid(format!(
                "runtime: expected one of python, node, shell, binary, got '{}'",
                truncate_for_message(other)
            ))),
        }
    }
}

/// Resource limits of one function. Sandboxed executors enforce them; the
/// scheduler enforces `timeout_ms` for every executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock limit of one invocation.
    pub timeout_ms: u64,
    /// Memory limit of the sandbox, in MiB.
    pub memory_mb: u64,
    /// Most processes/threads in the sandbox.
    pub max_processes: u64,
    /// Most open files.
    pub max_open_files: u64,
    /// Largest output (and, separately, largest log) in bytes.
    pub max_output_bytes: u64,
    /// Size of the writable `/tmp`, in MiB.
    pub tmpfs_mb: u64,
    /// Whether the function asks for network access (the operator must allow it too).
    pub network: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 30_000,
            memory_mb: 256,
            max_processes: 64,
            max_open_files: 256,
            max_output_bytes: 1 << 20,
            tmpfs_mb: 64,
            network: false,
        }
    }
}

/// Which function a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FunctionRef {
    /// A built-in, by name (`math.add`).
    Builtin {
        /// The catalog name.
        name: Arc<str>,
    },
    /// A user function, by id, optionally pinned to a version (else the latest ready one).
    User {
        /// The function's id.
        id: Arc<str>,
        /// A pinned version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u32>,
    },
}

impl FunctionRef {
    /// A reference to a built-in.
    pub fn builtin(name: &str) -> Self {
        FunctionRef::Builtin {
            name: Arc::from(name),
        }
    }

    /// The reference as JSON, the same text `serde_json` writes for it
    /// (`{"kind":"builtin","name":"math.add"}`), written without serde's machinery: a
    /// store records one per job.
    pub fn to_json(&self) -> String {
        use crate::json::write_str;
        let mut out = String::with_capacity(48);
        match self {
            FunctionRef::Builtin { name } => {
                out.push_str("{\"kind\":\"builtin\",\"name\":");
                write_str(&mut out, name);
            }
            FunctionRef::User { id, version } => {
                out.push_str("{\"kind\":\"user\",\"id\":");
                write_str(&mut out, id);
                if let Some(v) = version {
                    out.push_str(",\"version\":");
                    crate::json::write_u64(&mut out, u64::from(*v));
                }
            }
        }
        out.push('}');
        out
    }

    /// The function's name without a version: the built-in's name or the user
    /// function's id (what per-function stats are kept under).
    pub fn key(&self) -> &str {
        match self {
            FunctionRef::Builtin { name } => name,
            FunctionRef::User { id, .. } => id,
        }
    }

    /// The name shown in stats and job records.
    pub fn display_name(&self) -> String {
        match self {
            FunctionRef::Builtin { name } => name.to_string(),
            FunctionRef::User { id, version: None } => id.to_string(),
            FunctionRef::User {
                id,
                version: Some(v),
            } => format!("{id}@{v}"),
        }
    }
}

/// A job's life: `queued -> running -> succeeded | failed | timed_out | cancelled`,
/// plus `interrupted` for a job that was running when the process stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted, waiting for a worker.
    Queued,
    /// Running on an executor.
    Running,
    /// Finished with an output.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Stopped at its deadline.
    TimedOut,
    /// Cancelled by its owner or by shutdown.
    Cancelled,
    /// Was running when the process stopped; not re-run because it may have had effects.
    Interrupted,
}

impl JobStatus {
    /// Whether the job has reached a final state.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    /// The lowercase name used in the API and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Interrupted => "interrupted",
        }
    }

    /// The final state of a job whose run ended with `error`.
    pub fn of_error(error: &crate::Error) -> Self {
        match error {
            crate::Error::Timeout(_) => JobStatus::TimedOut,
            crate::Error::Cancelled(_) => JobStatus::Cancelled,
            crate::Error::Interrupted(_) => JobStatus::Interrupted,
            _ => JobStatus::Failed,
        }
    }

    /// Parses [`as_str`](Self::as_str) back.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "timed_out" => JobStatus::TimedOut,
            "cancelled" => JobStatus::Cancelled,
            "interrupted" => JobStatus::Interrupted,
            _ => return None,
        })
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The durable record of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// Its owner.
    pub tenant: TenantId,
    /// What it runs.
    pub function: FunctionRef,
    /// Where it is in its life.
    pub status: JobStatus,
    /// The input it was called with (shared, so records are cheap to copy).
    pub input: Arc<Value>,
    /// The output, once succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The error, once failed, timed out, cancelled or interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Logs the function printed (user functions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
    /// Its wall-clock limit in milliseconds.
    pub timeout_ms: u64,
    /// When it was accepted (ms since the epoch).
    pub created_ms: u64,
    /// When it started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// How long it ran, in microseconds (from start to finish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    /// How many times it was started (re-runs after a restart count).
    #[serde(default)]
    pub attempts: u32,
}

impl Job {
    /// A new queued job.
    pub fn new(
        tenant: TenantId,
        function: FunctionRef,
        input: Arc<Value>,
        timeout_ms: u64,
    ) -> Self {
        let created_ms = now_ms();
        Job {
            id: JobId::random_at(created_ms),
            tenant,
            function,
            status: JobStatus::Queued,
            input,
            output: None,
            error: None,
            logs: None,
            timeout_ms,
            created_ms,
            started_ms: None,
            finished_ms: None,
            duration_us: None,
            attempts: 0,
        }
    }

    /// Ends the job as its run ended: `succeeded` with the output and logs, or the
    /// final state of the error ([`JobStatus::of_error`]) with the error and the logs
    /// a failing function printed. Every scheduler ends jobs through this.
    pub fn finish(
        &mut self,
        outcome: crate::Result<Output>,
        finished_ms: u64,
        duration_us: Option<u64>,
    ) {
        self.finished_ms = Some(finished_ms);
        self.duration_us = duration_us;
        match outcome {
            Ok(out) => {
                self.status = JobStatus::Succeeded;
                self.output = Some(out.value);
                self.logs = out.logs;
            }
            Err(mut e) => {
                if let crate::Error::Function { logs, .. } = &mut e {
                    if let Some(l) = logs.take() {
                        self.logs = Some(l);
                    }
                }
                self.status = JobStatus::of_error(&e);
                self.output = None;
                self.error = Some(ErrorInfo::from(&e));
            }
        }
    }

    /// A finished job's output, or its error.
    pub fn into_output(self) -> crate::Result<Output> {
        match (self.output, self.error) {
            (Some(value), None) => Ok(Output {
                value,
                logs: self.logs,
            }),
            (_, Some(err)) => Err(err.into()),
            (None, None) => Err(crate::Error::Internal(format!(
                "job {} ended as {} without output or error",
                self.id,
                self.status.as_str()
            ))),
        }
    }
}

/// What an executor returns for a successful call.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The function's result.
    pub value: Value,
    /// What the function printed, if the executor captures logs.
    pub logs: Option<String>,
}

impl From<Value> for Output {
    fn from(value: Value) -> Self {
        Output { value, logs: None }
    }
}

#[cfg(test)]
mod tests {
    use super::{FunctionRef, JobId};
    use proptest::prelude::*;

    #[test]
    fn only_v7_ids_have_a_time() {
        let id = JobId::random_at(1_733_500_000_123);
        assert_eq!(id.unix_ms(), Some(1_733_500_000_123));
        let v4 = JobId::parse("3f2b8c1e-9d4a-4b6e-8f1a-2c3d4e5f6a7b").unwrap();
        assert_eq!(v4.unix_ms(), None);
    }

    #[test]
    fn a_function_ref_as_json_is_what_serde_json_writes() {
        for f in [
            FunctionRef::builtin("math.add"),
            FunctionRef::builtin("quote \" back\\ slash \u{1} é"),
            FunctionRef::User {
                id: "fn_01\"x".into(),
                version: None,
            },
            FunctionRef::User {
                id: "fn_02".into(),
                version: Some(4_294_967_295),
            },
        ] {
            assert_eq!(f.to_json(), serde_json::to_string(&f).unwrap());
        }
    }

    #[test]
    fn an_id_time_reads_any_case_and_nothing_else() {
        let id = JobId::random_at(0xabc_def0_1234);
        let upper = id.as_str().to_ascii_uppercase();
        assert_eq!(id.unix_ms(), Some(0xabc_def0_1234));
        assert_eq!(JobId(upper.into()).unix_ms(), Some(0xabc_def0_1234));
        let mut bad = id.as_str().to_string();
        bad.replace_range(3..4, "g");
        assert_eq!(JobId(bad.into()).unix_ms(), None);
    }

    proptest! {
        // The retention sweep finds expired jobs by this: ids below the floor of a
        // time are exactly the ids made before it.
        #[test]
        fn ids_sort_below_the_floor_of_a_time_exactly_when_made_before_it(
            made in 0u64..(1 << 48),
            t in 0u64..(1 << 48),
            near in -3i64..3,
        ) {
            for t in [t, made.saturating_add_signed(near)] {
                let id = JobId::random_at(made);
                prop_assert_eq!(id.unix_ms(), Some(made));
                prop_assert_eq!(id.as_str() < JobId::floor_of(t).as_str(), made < t, "{} {}", id, t);
            }
        }
    }
}
