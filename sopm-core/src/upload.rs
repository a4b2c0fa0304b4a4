//! Upload checks and quotas: what an upload may ask for (name, handler, limits within
//! the operator's caps, environment, files), the per-tenant quotas checked before a
//! version is recorded, and the digest of a source.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::builder::Source;
use crate::error::{Error, Result};
use crate::policy::{UploadQuotas, BUILD_RETRY_AFTER};
use crate::registry::{validate_function_name, Registry};
use crate::types::{truncate_for_message, Limits, Runtime, TenantId};

/// The operator's default caps on the limits an upload may ask for: 5 minutes, 4 GiB
/// of memory, 1024 processes, 4096 open files, 64 MiB of output, 1 GiB of `/tmp`, and
/// no network.
pub fn default_limit_caps() -> Limits {
    Limits {
        timeout_ms: 300_000,
        memory_mb: 4096,
        max_processes: 1024,
        max_open_files: 4096,
        max_output_bytes: 64 << 20,
        tmpfs_mb: 1024,
        network: false,
    }
}

/// What an upload asks for, besides its files.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadSpec {
    /// The function's name, unique per tenant; uploading a name again makes a new
    /// version.
    pub name: String,
    /// Its runtime (not `builtin`).
    pub runtime: Runtime,
    /// Its entry point (`main.handle`, `index.handle`, `run.sh`, ...).
    pub handler: String,
    /// Its limits, each within the operator's caps.
    pub limits: Limits,
    /// Environment variables given to it.
    pub env: BTreeMap<String, String>,
    /// The executor backend the client asks for, by name; `None` leaves the choice to
    /// the operator's function rule, else the runtime's default.
    pub executor: Option<String>,
}

/// Longest handler accepted, in bytes.
const MAX_HANDLER_BYTES: usize = 256;
/// Most environment variables per function.
const MAX_ENV_VARS: usize = 128;
/// Largest environment (names and values together), in bytes.
const MAX_ENV_BYTES: usize = 64 * 1024;
/// The checks and quotas every upload passes before its version is recorded.
#[derive(Debug)]
pub(crate) struct Uploads {
    pub(crate) caps: Limits,
    /// The number of build slots of this node.
    pub(crate) build_capacity: usize,
    pub(crate) quotas: UploadQuotas,
    /// Builds admitted and not yet ended, per tenant and in all.
    builds: Arc<parking_lot::Mutex<BuildCounts>>,
    /// Held from an upload's quota checks until its version is recorded, so two
    /// uploads cannot both pass a check that only one of them fits.
    pub(crate) admission: tokio::sync::Mutex<()>,
}

/// Builds admitted and not yet ended.
#[derive(Debug, Default)]
struct BuildCounts {
    by_tenant: HashMap<TenantId, usize>,
    total: usize,
}

/// One admitted build's place in [`BuildCounts`]; given back when dropped.
pub(crate) struct BuildTicket {
    builds: Arc<parking_lot::Mutex<BuildCounts>>,
    tenant: TenantId,
}

impl Drop for BuildTicket {
    fn drop(&mut self) {
        let mut b = self.builds.lock();
        b.total -= 1;
        if let Some(n) = b.by_tenant.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                b.by_tenant.remove(&self.tenant);
            }
        }
    }
}

impl Uploads {
    pub(crate) fn new(caps: Limits, build_capacity: usize, quotas: UploadQuotas) -> Self {
        Uploads {
            caps,
            build_capacity,
            quotas,
            builds: Arc::new(parking_lot::Mutex::new(BuildCounts::default())),
            admission: tokio::sync::Mutex::new(()),
        }
    }

    /// Admits one more build of `tenant`, or refuses it: past the tenant's builds in
    /// flight (`quota_exceeded`, 429), or when it would wait behind
    /// `max_queued_builds` others for a slot (`overloaded`, 429).
    pub(crate) fn admit_build(&self, tenant: &TenantId) -> Result<BuildTicket> {
        let q = &self.quotas;
        let mut b = self.builds.lock();
        let mine = b.by_tenant.get(tenant).copied().unwrap_or(0);
        if mine >= q.max_builds_in_flight_per_tenant {
            return Err(Error::QuotaExceeded {
                quota: "builds_in_flight",
                message: format!(
                    "builds_in_flight: tenant '{tenant}' has {mine} builds running or waiting, the limit is {}; upload again when one has ended",
                    q.max_builds_in_flight_per_tenant
                ),
                retry_after: Some(BUILD_RETRY_AFTER),
            });
        }
        let waiting = b.total.saturating_sub(self.build_capacity);
        if b.total >= self.build_capacity && waiting >= q.max_queued_builds {
            return Err(Error::Overloaded {
                message: format!(
                    "{waiting} builds are waiting for a build slot, the most this server queues is {}",
                    q.max_queued_builds
                ),
                retry_after: BUILD_RETRY_AFTER,
            });
        }
        b.total += 1;
        *b.by_tenant.entry(tenant.clone()).or_insert(0) += 1;
        Ok(BuildTicket {
            builds: self.builds.clone(),
            tenant: tenant.clone(),
        })
    }

    /// The same refusals as [`admit_build`](Self::admit_build) for builds that go
    /// through the scheduler's queue, counted from the registry's unfinished builds
    /// (every node's), since no one process sees them all: past the tenant's builds in
    /// flight, or more than `max_queued_builds` waiting in all.
    pub(crate) async fn admit_queued_build(
        &self,
        registry: &dyn Registry,
        tenant: &TenantId,
    ) -> Result<()> {
        let q = &self.quotas;
        let building = registry.unfinished_builds().await?;
        let mine = building.iter().filter(|v| &v.tenant == tenant).count();
        if mine >= q.max_builds_in_flight_per_tenant {
            return Err(Error::QuotaExceeded {
                quota: "builds_in_flight",
                message: format!(
                    "builds_in_flight: tenant '{tenant}' has {mine} builds running or waiting, the limit is {}; upload again when one has ended",
                    q.max_builds_in_flight_per_tenant
                ),
                retry_after: Some(BUILD_RETRY_AFTER),
            });
        }
        if building.len() >= q.max_queued_builds {
            return Err(Error::Overloaded {
                message: format!(
                    "{} builds are waiting or running, the most the cluster queues is {}",
                    building.len(),
                    q.max_queued_builds
                ),
                retry_after: BUILD_RETRY_AFTER,
            });
        }
        Ok(())
    }

    /// Refuses an upload by `tenant` of a function named `name` over a standing quota:
    /// its artifact bytes already at the limit, or a new function past its count.
    pub(crate) async fn check_standing_quotas(
        &self,
        registry: &dyn Registry,
        tenant: &TenantId,
        name: &str,
    ) -> Result<()> {
        let q = &self.quotas;
        let usage = registry.tenant_usage(tenant).await?;
        if usage.artifact_bytes >= q.max_artifact_bytes_per_tenant {
            return Err(Error::QuotaExceeded {
                quota: "artifact_bytes",
                message: format!(
                    "artifact_bytes: tenant '{tenant}' holds {} bytes of artifacts, the limit is {}; delete functions to make room",
                    usage.artifact_bytes, q.max_artifact_bytes_per_tenant
                ),
                retry_after: None,
            });
        }
        if usage.functions >= q.max_functions_per_tenant {
            match registry.get_by_name(tenant, name).await {
                Ok(_) => {}
                Err(Error::NotFound(_)) => {
                    return Err(Error::QuotaExceeded {
                        quota: "functions",
                        message: format!(
                            "functions: tenant '{tenant}' has {} functions, the limit is {}; delete one, or upload a new version of an existing one",
                            usage.functions, q.max_functions_per_tenant
                        ),
                        retry_after: None,
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub(crate) fn check(&self, spec: &UploadSpec, source: &Source) -> Result<()> {
        validate_function_name(&spec.name)?;
        if spec.runtime == Runtime::Builtin {
            return Err(Error::invalid(
                "runtime: expected one of python, node, shell, binary (built-ins cannot be uploaded)",
            ));
        }
        let handler = spec.handler.trim();
        if handler.is_empty() {
            return Err(Error::invalid("handler: must not be empty"));
        }
        if spec.handler.len() > MAX_HANDLER_BYTES || spec.handler.chars().any(char::is_control) {
            return Err(Error::invalid(format!(
                "handler: expected at most {MAX_HANDLER_BYTES} bytes and no control characters"
            )));
        }
        check_limits(&spec.limits, &self.caps)?;
        check_env(&spec.env)?;
        crate::builder::check_source(source)
    }
}

fn check_limits(l: &Limits, caps: &Limits) -> Result<()> {
    for (name, value, cap) in [
        ("timeout_ms", l.timeout_ms, caps.timeout_ms),
        ("memory_mb", l.memory_mb, caps.memory_mb),
        ("max_processes", l.max_processes, caps.max_processes),
        ("max_open_files", l.max_open_files, caps.max_open_files),
        (
            "max_output_bytes",
            l.max_output_bytes,
            caps.max_output_bytes,
        ),
        ("tmpfs_mb", l.tmpfs_mb, caps.tmpfs_mb),
    ] {
        if value == 0 || value > cap {
            return Err(Error::invalid(format!(
                "limits.{name}: expected 1 to {cap} on this server, got {value}"
            )));
        }
    }
    if l.network && !caps.network {
        return Err(Error::invalid(
            "limits.network: this server does not give functions network access",
        ));
    }
    Ok(())
}

fn check_env(env: &BTreeMap<String, String>) -> Result<()> {
    if env.len() > MAX_ENV_VARS {
        return Err(Error::invalid(format!(
            "env: at most {MAX_ENV_VARS} variables"
        )));
    }
    let mut total = 0;
    for (k, v) in env {
        let ok_name = !k.is_empty()
            && k.len() <= 128
            && !k.as_bytes()[0].is_ascii_digit()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok_name {
            return Err(Error::invalid(format!(
                "env: '{}' is not a variable name (letters, digits, '_', not starting with a digit)",
                truncate_for_message(k)
            )));
        }
        if v.contains('\0') {
            return Err(Error::invalid(format!("env: {k} contains a NUL byte")));
        }
        total += k.len() + v.len();
    }
    if total > MAX_ENV_BYTES {
        return Err(Error::invalid(format!(
            "env: at most {MAX_ENV_BYTES} bytes of names and values"
        )));
    }
    Ok(())
}

/// The hex SHA-256 digest of a source: every path and its bytes, in path order, each
/// length-prefixed so no two sources share a digest by concatenation.
pub fn source_digest(source: &Source) -> String {
    let mut h = Sha256::new();
    for (path, bytes) in &source.files {
        h.update((path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
