//! SOPM core: the domain types, the four traits every backend implements
//! ([`Registry`], [`Builder`], [`Executor`], [`Scheduler`], plus the [`JobStore`]
//! behind the scheduler and the [`KeyStore`] of API keys), one error enum with stable
//! codes, the in-process
//! [`LocalScheduler`], in-memory stores, and the [`Platform`] that wires them.
//!
//! ```no_run
//! # async fn demo(builtins: std::sync::Arc<dyn sopm_core::Executor>) -> sopm_core::Result<()> {
//! use sopm_core::{FunctionRef, Platform, TenantId};
//! let platform = Platform::builder().with_builtins(builtins).build()?;
//! let out = platform
//!     .execute(&TenantId::default(), FunctionRef::builtin("math.add"), serde_json::json!({"a": 2, "b": 3}))
//!     .await?;
//! assert_eq!(out.value, serde_json::json!(5));
//! # Ok(()) }
//! ```

pub mod artifacts;
pub mod builder;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod digest;
pub mod error;
pub mod executor;
pub mod jobstore;
pub mod keys;
pub mod platform;
pub mod policy;
pub mod registry;
pub mod scheduler;
mod slots;
pub mod stats;
pub mod types;

pub use artifacts::ArtifactStore;
pub use builder::{BuildLog, Builder, Source};
pub use digest::Digest;
pub use error::{Error, ErrorInfo, Result};
pub use executor::{Example, Executor, FunctionInfo, PoolStats};
pub use jobstore::{Durability, JobLogEntry, JobStore, MemoryJobStore};
pub use keys::{ApiKeyInfo, ApiKeySecret, CachedKeyStore, KeyStore, MemoryKeyStore};
pub use platform::{
    default_limit_caps, job_output, source_digest, Platform, PlatformBuilder, PlatformStats,
    StandardRouter, UploadSpec,
};
pub use registry::{
    Artifact, BuildStatus, FunctionRecord, FunctionVersion, MemoryRegistry, NewVersion, Registry,
    TenantUsage,
};
pub use scheduler::{
    JobRequest, LocalScheduler, LocalSchedulerConfig, RecoveryReport, Route, Router, Scheduler,
    SubmitMode, Submitted,
};
pub use stats::{LatencyHistogram, LatencySummary, SchedulerStats};
pub use types::{
    FunctionRef, Invocation, Job, JobId, JobStatus, Limits, Output, Runtime, Target, TenantId,
};
