//! SOPM core: the domain types, the four traits every backend implements
//! ([`Registry`], [`Builder`], [`Executor`], [`Scheduler`], plus the [`JobStore`]
//! behind the scheduler and the [`KeyStore`] of API keys), one error enum with stable
//! codes, the in-process
//! [`LocalScheduler`], in-memory stores, and the [`Platform`] that wires them. Jobs are
//! resolved into a [`Route`] that names a backend, and run by the [`Dispatcher`] of a
//! node that has it; built artifacts are kept by digest in an [`ArtifactStore`].
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
pub mod builds;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod counters;
pub mod digest;
pub mod dispatch;
pub mod error;
pub mod executor;
pub mod jobstore;
pub mod json;
pub mod keys;
pub mod platform;
pub mod platform_builder;
pub mod policy;
pub mod registry;
pub mod router;
mod sandboxes;
pub mod scheduler;
mod slots;
pub mod stats;
pub mod types;
pub mod upload;

pub use artifacts::{ArtifactStore, InPlaceArtifactStore};
pub use builder::{BuildLog, BuildRequest, Builder, Source};
pub use builds::Builds;
pub use counters::SchedulerCounters;
pub use digest::Digest;
pub use dispatch::{Dispatcher, BUILTIN_BACKEND};
pub use error::{Error, ErrorInfo, Result};
pub use executor::{Example, Executor, FunctionInfo, Invocation, PoolStats, Target};
pub use jobstore::{Durability, JobLogEntry, JobStore, MemoryJobStore};
pub use keys::{ApiKeyInfo, ApiKeySecret, CachedKeyStore, KeyStore, MemoryKeyStore};
pub use platform::{Platform, PlatformStats};
pub use platform_builder::{PlatformBuilder, SchedulerParts};
pub use registry::{
    Artifact, BuildStatus, FunctionRecord, FunctionVersion, MemoryRegistry, NewVersion, Registry,
    TenantUsage,
};
pub use router::StandardRouter;
pub use scheduler::{
    JobRequest, LocalScheduler, LocalSchedulerConfig, RecoveryReport, Route, Router, Scheduler,
    SubmitMode, Submitted,
};
pub use stats::{ClusterStats, LatencyHistogram, LatencySummary, NodeStats, SchedulerStats};
pub use types::{FunctionRef, Job, JobId, JobStatus, Limits, Output, Runtime, TenantId};
pub use upload::{default_limit_caps, source_digest, UploadSpec};
