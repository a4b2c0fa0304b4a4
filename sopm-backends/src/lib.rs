//! SOPM backends: storage and sandboxes, each behind a cargo feature so an embedding
//! links only what it uses.
//!
//! Features:
//! - `sqlite` (default): [`SqliteStore`], the function registry and job store in one
//!   SQLite file (WAL, schema migrations, group commit). The embedded default.
//! - `process` (default): [`ProcessExecutor`], user functions in bubblewrap sandboxes
//!   with rlimits and cgroup limits, behind a warm pool of stem cells.
//! - `gvisor`: [`GvisorExecutor`], user functions in gVisor (`runsc`) sandboxes booted
//!   from generated OCI bundles, behind the same warm pool.
//! - `docker`: [`DockerExecutor`], user functions in warm Docker containers (`runc` or
//!   `runsc`), and [`DockerBuilder`], which builds their images.
//! - `kubernetes`: [`KubernetesExecutor`](kubernetes::KubernetesExecutor), user functions
//!   in warm Kubernetes pods (stem cells specialised over the runner's TCP port), and
//!   [`KubernetesJobExecutor`](kubernetes::KubernetesJobExecutor), one Job per call.
//! - `redis`: [`RedisRegistry`] and [`RedisKeyStore`], the function registry and API
//!   keys in Redis over one [`RedisConnection`], so many nodes share one state; [`RedisJobStore`] and the cluster queue and
//!   scheduler in [`redis::queue`] (streams per backend, leases with fencing tokens,
//!   dead letters, results pushed over pub/sub).
//! - `local-build`: [`LocalBuilder`], which turns uploaded sources into artifact
//!   directories, installing `requirements.txt` / `package.json` dependencies inside a
//!   bubblewrap sandbox. Every sandbox backend enables it.
//! - `sandbox-host` (internal, enabled by every sandbox backend): [`sandbox`], the runner
//!   protocol, the warm pool and the executor over it, and [`host`], the host layer:
//!   what every sandbox takes from the machine (mounts, interpreters, runner files,
//!   rlimits, cgroups, tool lookup, and [`SandboxSettings`], the one settings type of
//!   every sandbox backend). A backend uses these two and never another backend.
//!
//! - `artifacts` (default): [`artifacts`], artifact directories named by the sha256 of
//!   their canonical tar, and [`artifacts::LocalArtifactStore`], which keeps them on this
//!   machine.
//! - `oci`: [`artifacts::OciArtifactStore`], artifacts pushed to an OCI registry and
//!   pulled by digest into a size-bounded cache on every node that runs them.
//!
//! [`backends`] is the table of named sandbox backends (`process`, `gvisor`, `docker`,
//! `docker-runsc`, `kubernetes`, `kubernetes-job`): for each, how this host makes its executor, the builder of its
//! artifacts, and how it starts. Adding a backend is its module plus one entry there.
//!
//! Each backend implements the traits of `sopm-core` and passes its conformance
//! checks (`sopm_core::conformance`).

pub mod backends;

#[cfg(feature = "artifacts")]
pub mod artifacts;

#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteConfig, SqliteStore};

#[cfg(feature = "local-build")]
pub mod build;

#[cfg(feature = "local-build")]
pub use build::{LocalBuilder, LocalBuilderConfig};

#[cfg(feature = "sandbox-host")]
pub mod sandbox;

#[cfg(feature = "sandbox-host")]
pub mod host;

#[cfg(feature = "sandbox-host")]
pub use host::{SandboxKind, SandboxSettings};

#[cfg(feature = "process")]
pub mod process;

#[cfg(feature = "process")]
pub use process::ProcessExecutor;

#[cfg(feature = "gvisor")]
pub mod gvisor;

#[cfg(feature = "gvisor")]
pub use gvisor::GvisorExecutor;

/// Docker containers (runc or runsc) behind the warm pool, and the docker image builder.
#[cfg(feature = "docker")]
pub mod docker;
#[cfg(feature = "docker")]
pub use docker::{DockerBuilder, DockerExecutor};

/// Kubernetes: warm function pods behind the warm pool, and one Job per call.
#[cfg(feature = "kubernetes")]
pub mod kubernetes;

#[cfg(feature = "redis")]
pub mod redis;

#[cfg(feature = "redis")]
pub use crate::redis::{
    RedisConfig, RedisConnection, RedisJobStore, RedisKeyStore, RedisRegistry, RedisScheduler,
};
