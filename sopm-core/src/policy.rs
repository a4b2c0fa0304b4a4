//! The operator's policy over tenants: which sandbox backends an upload may ask for
//! ([`ExecutorPolicy`], ordered by [`Isolation`]) and the limits on what one tenant's
//! uploads may hold or keep busy ([`UploadQuotas`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::TenantId;

/// How strongly a sandbox backend separates a function from the host kernel. A tenant
/// may, by default, ask only for a backend at least as strong as the one the operator
/// routed its upload to.
///
/// - [`HostKernel`](Isolation::HostKernel): namespaces, seccomp and cgroups around
///   processes that make system calls straight into the host's kernel — `process`
///   (bubblewrap) and `docker` under runc. One kernel bug reachable from the allowed
///   system calls is a way out.
/// - [`UserSpaceKernel`](Isolation::UserSpaceKernel): a kernel in user space (gVisor's
///   Sentry) answers the function's system calls and itself uses a small filtered set
///   of host calls — `gvisor` and `docker-runsc`. A way out needs a bug in the Sentry
///   and then one in that small host surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// The function's system calls reach the host kernel (`process`, `docker`).
    HostKernel,
    /// A user-space kernel stands between the function and the host (`gvisor`,
    /// `docker-runsc`).
    UserSpaceKernel,
}

impl Isolation {
    /// The isolation of a backend known by name: `gvisor` and `docker-runsc` (and any
    /// name ending in `-runsc` or `-gvisor`) put a user-space kernel between; every other
    /// name, known or not, is assumed to share the host kernel (the weaker assumption;
    /// declare a stronger backend with
    /// [`PlatformBuilder::with_isolation`](crate::PlatformBuilder::with_isolation)).
    pub fn assumed_for(backend: &str) -> Isolation {
        let user_space = backend == "gvisor"
            || backend == "docker-runsc"
            || backend.ends_with("-runsc")
            || backend.ends_with("-gvisor");
        if user_space {
            Isolation::UserSpaceKernel
        } else {
            Isolation::HostKernel
        }
    }

    /// The snake_case name used in messages and documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::HostKernel => "host_kernel",
            Isolation::UserSpaceKernel => "user_space_kernel",
        }
    }
}

/// Which sandbox backends a tenant may ask for in an upload (its `executor` field).
/// An upload that asks for nothing, or for the backend the operator routes it to
/// anyway, is always allowed. Otherwise the ask must be in, first found:
///
/// 1. the tenant's own list ([`tenants`](Self::tenants)), if it has one;
/// 2. the server-wide list ([`allowed`](Self::allowed)), if set;
/// 3. by default: every registered backend whose [`Isolation`] is at least that of the
///    backend the operator routes the upload to (its function rule, else its runtime's
///    default), so a tenant can ask for more isolation, never less.
///
/// A list is an explicit grant: a backend in it may be asked for even when weaker than
/// the route. A refused ask is `forbidden` with the code `executor_not_allowed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutorPolicy {
    /// The backends any tenant without its own list may ask for; `None`: the default
    /// rule (no weaker than the route).
    pub allowed: Option<BTreeSet<String>>,
    /// Per-tenant lists, replacing [`allowed`](Self::allowed) for that tenant.
    pub tenants: BTreeMap<TenantId, BTreeSet<String>>,
}

impl ExecutorPolicy {
    /// The explicit list that applies to `tenant`, if any (its own, else the
    /// server-wide one).
    pub fn list_for(&self, tenant: &TenantId) -> Option<&BTreeSet<String>> {
        self.tenants.get(tenant).or(self.allowed.as_ref())
    }
}

/// Limits on what one tenant's uploads may hold or keep busy, and on the builds waiting
/// server-wide. The defaults ([`UploadQuotas::default`]) suit a shared server; each is
/// at least 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadQuotas {
    /// Most user functions per tenant (default 100). An upload of a new name past it
    /// is `quota_exceeded` (`functions`, 403); new versions of existing functions are
    /// not refused by it.
    pub max_functions_per_tenant: u64,
    /// Versions kept per function (default 10): once a build ends, the oldest versions
    /// past this count are pruned with their artifacts and warm instances — never the
    /// newest ready version nor one still building.
    pub versions_kept: u32,
    /// Most artifact bytes per tenant, all versions of all its functions (default
    /// 2 GiB). An upload while the tenant is at or past it is `quota_exceeded`
    /// (`artifact_bytes`, 403); a build whose artifact would take the tenant past it
    /// fails with that message and its artifact is removed.
    pub max_artifact_bytes_per_tenant: u64,
    /// Most builds per tenant running or waiting for a build slot (default 8). An upload
    /// past it is `quota_exceeded` (`builds_in_flight`, 429 with Retry-After).
    pub max_builds_in_flight_per_tenant: usize,
    /// Most builds waiting for a build slot, all tenants together (default 16); each
    /// holds its source in memory. An upload that would wait past it is `overloaded`
    /// (429 with Retry-After).
    pub max_queued_builds: usize,
}

impl Default for UploadQuotas {
    fn default() -> Self {
        UploadQuotas {
            max_functions_per_tenant: 100,
            versions_kept: 10,
            max_artifact_bytes_per_tenant: 2 << 30,
            max_builds_in_flight_per_tenant: 8,
            max_queued_builds: 16,
        }
    }
}

impl UploadQuotas {
    /// Why these quotas cannot work, if they cannot (every one must be at least 1).
    pub fn problem(&self) -> Option<&'static str> {
        if self.max_functions_per_tenant == 0
            || self.versions_kept == 0
            || self.max_artifact_bytes_per_tenant == 0
            || self.max_builds_in_flight_per_tenant == 0
            || self.max_queued_builds == 0
        {
            return Some("every upload quota must be at least 1");
        }
        None
    }
}

/// When a refused upload on a quota of builds in flight is likely to be accepted.
pub const BUILD_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The bytes of the regular files under `dir`, symlinks not followed; an unreadable
/// entry counts 0. Blocking: call it off the async threads.
pub fn directory_bytes(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_space_kernels_rank_above_the_host_kernel() {
        assert!(Isolation::assumed_for("gvisor") > Isolation::assumed_for("process"));
        assert_eq!(
            Isolation::assumed_for("docker-runsc"),
            Isolation::assumed_for("gvisor")
        );
        assert_eq!(
            Isolation::assumed_for("docker"),
            Isolation::assumed_for("process")
        );
        assert_eq!(Isolation::assumed_for("mystery"), Isolation::HostKernel);
    }

    #[test]
    fn a_tenants_own_list_replaces_the_server_wide_one() {
        let alice = TenantId::new("alice").unwrap();
        let bob = TenantId::new("bob").unwrap();
        let mut p = ExecutorPolicy::default();
        assert_eq!(p.list_for(&alice), None);
        p.allowed = Some(["gvisor".to_string()].into());
        p.tenants
            .insert(alice.clone(), ["process".to_string()].into());
        assert!(p.list_for(&alice).unwrap().contains("process"));
        assert!(!p.list_for(&bob).unwrap().contains("process"));
    }

    #[test]
    fn directory_bytes_counts_files_and_not_symlinks() {
        let dir = std::env::temp_dir().join(format!("sopm-bytes-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.join("sub/b"), vec![0u8; 24]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
        let bytes = directory_bytes(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(bytes, 1024);
        assert!(UploadQuotas::default().problem().is_none());
        let zero = UploadQuotas {
            versions_kept: 0,
            ..UploadQuotas::default()
        };
        assert!(zero.problem().is_some());
    }
}
