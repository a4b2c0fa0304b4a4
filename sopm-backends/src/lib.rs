//! SOPM backends: storage and sandboxes, each behind a cargo feature so an embedding
//! links only what it uses.
//!
//! Features:
//! - `sqlite` (default): [`SqliteStore`], the function registry and job store in one
//!   SQLite file (WAL, schema migrations, group commit). The embedded default.
//! - `process` (default): [`ProcessExecutor`], user functions in bubblewrap sandboxes
//!   with rlimits and cgroup limits, behind a warm pool of stem cells
//!   ([`sandbox`] holds the runner protocol and the pool, shared by every sandbox
//!   backend). Enables `local-build`.
//! - `gvisor`: [`GvisorExecutor`], user functions in gVisor (`runsc`) sandboxes booted
//!   from generated OCI bundles, behind the same warm pool. Enables `process`.
//! - `local-build`: [`LocalBuilder`], which turns uploaded sources into artifact
//!   directories, installing `requirements.txt` / `package.json` dependencies inside a
//!   bubblewrap sandbox.
//!
//! Each backend implements the traits of `sopm-core` and passes its conformance
//! checks (`sopm_core::conformance`).

#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteConfig, SqliteStore};

#[cfg(feature = "local-build")]
pub mod build;

#[cfg(feature = "local-build")]
pub use build::{LocalBuilder, LocalBuilderConfig};

#[cfg(feature = "process")]
pub mod process;

#[cfg(feature = "process")]
pub mod sandbox;

#[cfg(feature = "process")]
pub use process::{ProcessExecutor, ProcessExecutorConfig};

#[cfg(feature = "gvisor")]
pub mod gvisor;

#[cfg(feature = "gvisor")]
pub use gvisor::{GvisorExecutor, GvisorExecutorConfig};

/// Docker containers (runc or runsc) behind the warm pool, and the docker image builder.
#[cfg(feature = "docker")]
pub mod docker;
#[cfg(feature = "docker")]
pub use docker::{DockerBuilder, DockerExecutor, DockerExecutorConfig};
