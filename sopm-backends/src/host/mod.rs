//! The host layer: what every sandbox backend (process, gVisor, Docker) takes from the
//! machine it runs on, in one place, so backends use it and never each other.
//!
//! - [`mounts`]: the host paths a sandbox sees read-only (top-level links and dirs, the
//!   host files a runtime needs, name resolution when networked).
//! - [`interpreters`]: the script runners' interpreters and the host directories they need.
//! - [`runner_files`]: the runner files on disk and the command that starts a runner.
//! - [`rlimits`]: a sandbox's rlimits.
//! - [`seccomp`]: the system calls a sandbox may make.
//! - [`cgroup`]: per-sandbox cgroups for memory and process limits, and OOM-kill counts.
//! - [`oom_watch`]: OOM kills of a cgroup someone else removes, counted as they happen.
//! - [`child`]: the host process a sandbox runs under, and how it ended.
//! - [`tools`]: finding host programs (configured, else on `PATH`).
//! - [`settings`]: [`SandboxSettings`], the one settings type of every sandbox backend.
//! - [`pool_settings`]: [`PoolSettings`], the warm-pool knobs inside it.

use std::sync::atomic::{AtomicU64, Ordering};

pub mod cgroup;
pub mod child;
pub mod image_registry;
pub mod interpreters;
pub mod mounts;
pub mod oom_watch;
pub mod pool_settings;
pub mod rlimits;
pub mod runner_files;
pub mod seccomp;
pub mod settings;
pub mod tools;
pub mod vars;

pub use image_registry::ImageRegistry;
pub use pool_settings::PoolSettings;
pub use settings::{GvisorPlatform, SandboxBackend, SandboxKind, SandboxSettings};

/// A name unique on this host for as long as this process lives: `<pid>-<n>` (sandbox
/// names, cgroup names and gVisor sandbox ids start with the server's pid, so what a dead
/// server left behind can be told apart and swept).
pub fn sandbox_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
