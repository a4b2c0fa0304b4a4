//! The one error type of SOPM, with a stable machine-readable code per variant.

use std::time::Duration;

/// A `Result` whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error SOPM reports. Each variant has a stable [`code`](Error::code) that
/// clients can match on; messages are for people and may change.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The input was malformed, of the wrong type, out of range or had unknown fields.
    #[error("{0}")]
    InvalidInput(String),
    /// The input was well-formed but the operation is undefined for it (division by zero,
    /// overflow, a NaN result).
    #[error("{0}")]
    Domain(String),
    /// A function, job, key or path that does not exist (or belongs to another tenant).
    #[error("{0}")]
    NotFound(String),
    /// The request body or a payload is larger than the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The queue is full; try again after the given delay.
    #[error("server overloaded: {message}")]
    Overloaded {
        /// What is full.
        message: String,
        /// When a retry is likely to be accepted.
        retry_after: Duration,
    },
    /// The job ran past its deadline and was stopped.
    #[error("{0}")]
    Timeout(String),
    /// The job was cancelled before it finished.
    #[error("{0}")]
    Cancelled(String),
    /// The job was running when the process stopped, and was not re-run.
    #[error("{0}")]
    Interrupted(String),
    /// User code raised an error. `traceback` carries its stack when the runtime has one.
    #[error("{message}")]
    Function {
        /// The error message from the function.
        message: String,
        /// The runtime's traceback, if any.
        traceback: Option<String>,
        /// What the function printed before it failed (sandboxed executors); the
        /// scheduler moves it into the job's logs.
        logs: Option<String>,
    },
    /// The sandbox went past its memory limit and was killed.
    #[error("{0}")]
    OutOfMemory(String),
    /// The function produced more output than allowed.
    #[error("{0}")]
    OutputTooLarge(String),
    /// The sandbox died or broke the protocol.
    #[error("{0}")]
    SandboxCrashed(String),
    /// A function's build failed; its log has the details.
    #[error("{0}")]
    BuildFailed(String),
    /// The function exists but is not ready to run (still building, or failed).
    #[error("{0}")]
    NotReady(String),
    /// Missing or invalid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller is known but may not do this (an operator-only endpoint, a sandbox
    /// backend the operator's policy does not allow this tenant to ask for).
    #[error("{message}")]
    Forbidden {
        /// The stable code: `forbidden`, or a narrower one such as `executor_not_allowed`.
        code: &'static str,
        /// What was refused and why.
        message: String,
    },
    /// A tenant's quota is used up. Quotas on work in flight (queued or running jobs,
    /// builds, warm instances) carry a `retry_after` and answer 429; standing quotas
    /// (functions, versions, artifact bytes) answer 403.
    #[error("quota exceeded: {message}")]
    QuotaExceeded {
        /// Which quota (`functions`, `queued_jobs`, ...), as named in the configuration.
        quota: &'static str,
        /// What was exceeded: the quota, its limit and the tenant's use.
        message: String,
        /// For quotas on work in flight: when a retry is likely to be accepted.
        retry_after: Option<Duration>,
    },
    /// The request conflicts with the current state (a job that already finished, a
    /// name that is taken).
    #[error("{0}")]
    Conflict(String),
    /// The service is shutting down or a dependency is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// A storage backend failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// A bug or an unexpected condition; details are logged, not returned to clients.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The stable code of this error, as it appears in API responses.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidInput(_) => "invalid_input",
            Error::Domain(_) => "domain_error",
            Error::NotFound(_) => "not_found",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::Overloaded { .. } => "overloaded",
            Error::Timeout(_) => "timeout",
            Error::Cancelled(_) => "cancelled",
            Error::Interrupted(_) => "interrupted",
            Error::Function { .. } => "function_error",
            Error::OutOfMemory(_) => "out_of_memory",
            Error::OutputTooLarge(_) => "output_too_large",
            Error::SandboxCrashed(_) => "sandbox_crashed",
            Error::BuildFailed(_) => "build_failed",
            Error::NotReady(_) => "not_ready",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden { code, .. } => code,
            Error::QuotaExceeded { .. } => "quota_exceeded",
            Error::Conflict(_) => "conflict",
            Error::Unavailable(_) => "unavailable",
            Error::Storage(_) => "storage_error",
            Error::Internal(_) => "internal_error",
        }
    }

    /// Rebuilds an error from its stable code and message (as stored in a job record).
    pub fn from_code(code: &str, message: impl Into<String>) -> Self {
        let m = message.into();
        match code {
            "invalid_input" => Error::InvalidInput(m),
            "domain_error" => Error::Domain(m),
            "not_found" => Error::NotFound(m),
            "payload_too_large" => Error::PayloadTooLarge(m),
            "overloaded" => Error::Overloaded {
                message: m,
                retry_after: Duration::from_secs(1),
            },
            "timeout" => Error::Timeout(m),
            "cancelled" => Error::Cancelled(m),
            "interrupted" => Error::Interrupted(m),
            "function_error" => Error::Function {
                message: m,
                traceback: None,
                logs: None,
            },
            "out_of_memory" => Error::OutOfMemory(m),
            "output_too_large" => Error::OutputTooLarge(m),
            "sandbox_crashed" => Error::SandboxCrashed(m),
            "build_failed" => Error::BuildFailed(m),
            "not_ready" => Error::NotReady(m),
            "unauthorized" => Error::Unauthorized(m),
            "forbidden" => Error::forbidden("forbidden", m),
            "executor_not_allowed" => Error::forbidden("executor_not_allowed", m),
            "quota_exceeded" => quota_from_message(m),
            "conflict" => Error::Conflict(m),
            "unavailable" => Error::Unavailable(m),
            "storage_error" => Error::Storage(m),
            _ => Error::Internal(m),
        }
    }

    /// The message without the code, as shown to clients. Internal details of
    /// `internal_error` and `storage_error` are replaced by a generic text.
    pub fn public_message(&self) -> String {
        match self {
            Error::Internal(_) => "internal error (see the server log)".to_string(),
            Error::Storage(_) => "storage error (see the server log)".to_string(),
            Error::Overloaded { message, .. } => message.clone(),
            Error::QuotaExceeded { message, .. } => format!("quota exceeded: {message}"),
            other => other.to_string(),
        }
    }

    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }

    /// Shorthand for [`Error::Domain`].
    pub fn domain(message: impl Into<String>) -> Self {
        Error::Domain(message.into())
    }

    /// Shorthand for [`Error::Forbidden`] with a stable `code`.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Error::Forbidden {
            code,
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::NotFound(message.into())
    }
}

/// Quotas on work in flight: rebuilt from a job record, they keep their retry delay.
const IN_FLIGHT_QUOTAS: [&str; 4] = [
    "builds_in_flight",
    "warm_instances",
    "queued_jobs",
    "running_jobs",
];
/// Standing quotas.
const STANDING_QUOTAS: [&str; 3] = ["functions", "versions", "artifact_bytes"];

/// Rebuilds a [`Error::QuotaExceeded`] from its public message (`quota exceeded:
/// NAME: …`): the quota is the name the message starts with, and a quota on work in
/// flight gets a retry delay of one second, so it answers 429 again, not 403.
fn quota_from_message(m: String) -> Error {
    let message = match m.strip_prefix("quota exceeded: ") {
        Some(rest) => rest.to_string(),
        None => m,
    };
    let named = |q: &'static str| {
        message
            .strip_prefix(q)
            .is_some_and(|rest| rest.starts_with(':'))
    };
    let in_flight = IN_FLIGHT_QUOTAS.into_iter().find(|q| named(q));
    let quota = in_flight
        .or_else(|| STANDING_QUOTAS.into_iter().find(|q| named(q)))
        .unwrap_or("unknown");
    Error::QuotaExceeded {
        quota,
        message,
        retry_after: in_flight.map(|_| Duration::from_secs(1)),
    }
}

/// The serialisable form of an error inside a job record and in API answers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ErrorInfo {
    /// The stable code.
    pub code: String,
    /// A message for people.
    pub message: String,
    /// A traceback from user code, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
}

impl From<&Error> for ErrorInfo {
    fn from(e: &Error) -> Self {
        ErrorInfo {
            code: e.code().to_string(),
            message: e.public_message(),
            traceback: match e {
                Error::Function { traceback, .. } => traceback.clone(),
                _ => None,
            },
        }
    }
}

impl From<ErrorInfo> for Error {
    fn from(info: ErrorInfo) -> Self {
        match Error::from_code(&info.code, info.message) {
            Error::Function { message, .. } => Error::Function {
                message,
                traceback: info.traceback,
                logs: None,
            },
            other => other,
        }
    }
}

/// Cuts a client-supplied string for use in an error message.
pub fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        let all = [
            Error::InvalidInput("x".into()),
            Error::Domain("x".into()),
            Error::NotFound("x".into()),
            Error::PayloadTooLarge("x".into()),
            Error::Timeout("x".into()),
            Error::Cancelled("x".into()),
            Error::Interrupted("x".into()),
            Error::OutOfMemory("x".into()),
            Error::OutputTooLarge("x".into()),
            Error::SandboxCrashed("x".into()),
            Error::BuildFailed("x".into()),
            Error::NotReady("x".into()),
            Error::Unauthorized("x".into()),
            Error::forbidden("forbidden", "x"),
            Error::forbidden("executor_not_allowed", "x"),
            Error::QuotaExceeded {
                quota: "functions",
                message: "x".into(),
                retry_after: None,
            },
            Error::Conflict("x".into()),
            Error::Unavailable("x".into()),
            Error::Storage("x".into()),
            Error::Internal("x".into()),
        ];
        for e in all {
            assert_eq!(Error::from_code(e.code(), "x").code(), e.code());
        }
    }

    #[test]
    fn quota_errors_survive_a_job_record() {
        let busy = Error::QuotaExceeded {
            quota: "warm_instances",
            message: "warm_instances: tenant 'a' has 2 of 2 instances busy".into(),
            retry_after: Some(Duration::from_secs(1)),
        };
        let back: Error = ErrorInfo::from(&busy).into();
        assert_eq!(
            back, busy,
            "still in flight (429), message not prefixed twice"
        );
        let standing = Error::QuotaExceeded {
            quota: "functions",
            message: "functions: tenant 'a' has 1 functions, the limit is 1".into(),
            retry_after: None,
        };
        let back: Error = ErrorInfo::from(&standing).into();
        assert_eq!(back, standing);
    }

    #[test]
    fn internals_are_not_leaked() {
        let e = Error::Internal("db path /secret".into());
        assert!(!e.public_message().contains("secret"));
    }

    #[test]
    fn function_errors_keep_tracebacks() {
        let e = Error::Function {
            message: "boom".into(),
            traceback: Some("line 1".into()),
            logs: None,
        };
        let back: Error = ErrorInfo::from(&e).into();
        assert_eq!(back, e);
    }
}
