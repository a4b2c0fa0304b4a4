//! The `Registry` trait: durable records of user functions, their versions, build
//! status, build logs and artifacts, plus an in-memory implementation.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::error::{truncate_for_message, Error, Result};
use crate::types::{now_ms, Limits, Runtime, TenantId};

/// Where a version is in its build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStatus {
    /// The builder is working on it.
    Building,
    /// Built; it can run.
    Ready,
    /// The build failed; the log says why. It never runs.
    Failed,
}

impl BuildStatus {
    /// The lowercase name used in the API and storage.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Building => "building",
            BuildStatus::Ready => "ready",
            BuildStatus::Failed => "failed",
        }
    }

    /// Parses [`as_str`](Self::as_str) back.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "building" => BuildStatus::Building,
            "ready" => BuildStatus::Ready,
            "failed" => BuildStatus::Failed,
            _ => return None,
        })
    }
}

/// What a builder produced for one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Artifact {
    /// A directory of files (process and gvisor backends), named by the digest of its
    /// content so any node can fetch it from the [`ArtifactStore`](crate::ArtifactStore).
    Directory {
        /// Absolute path of a copy on the node that recorded or fetched it; another
        /// node fetches its own copy by `digest`.
        path: String,
        /// The digest of its content (a canonical tar of the tree); `None` for an
        /// artifact recorded before digests, which only its own node can run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<crate::digest::Digest>,
    },
    /// A container image (docker and kubernetes backends).
    Image {
        /// The image reference.
        reference: String,
    },
}

/// What a client asks to create: a new function, or a new version of one with the
/// same name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewVersion {
    /// The owner.
    pub tenant: TenantId,
    /// The function's name, unique per tenant.
    pub name: String,
    /// Its runtime.
    pub runtime: Runtime,
    /// The entry point (`main.handle`, `index.handle`, `run.sh`, ...).
    pub handler: String,
    /// Its limits.
    pub limits: Limits,
    /// Environment variables given to it.
    pub env: BTreeMap<String, String>,
    /// A digest of the uploaded source.
    pub source_digest: String,
    /// The named executor backend the version is to run in, if one is chosen
    /// ([`Platform::upload`](crate::Platform::upload) records the one it resolved from
    /// the client's ask, the operator's rules and the runtime's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
}

impl NewVersion {
    /// The version record this request makes: `building`, no log, no artifact yet.
    pub fn into_version(
        self,
        function_id: String,
        version: u32,
        created_ms: u64,
    ) -> FunctionVersion {
        FunctionVersion {
            function_id,
            tenant: self.tenant,
            name: self.name,
            version,
            runtime: self.runtime,
            handler: self.handler,
            limits: self.limits,
            env: self.env,
            source_digest: self.source_digest,
            executor: self.executor,
            status: BuildStatus::Building,
            build_log: String::new(),
            artifact: None,
            created_ms,
        }
    }
}

/// One version of a user function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionVersion {
    /// The function's id.
    pub function_id: String,
    /// The owner.
    pub tenant: TenantId,
    /// The function's name.
    pub name: String,
    /// The version number, from 1.
    pub version: u32,
    /// Its runtime.
    pub runtime: Runtime,
    /// Its entry point.
    pub handler: String,
    /// Its limits.
    pub limits: Limits,
    /// Its environment.
    pub env: BTreeMap<String, String>,
    /// A digest of its source.
    pub source_digest: String,
    /// The named executor backend it was built for and runs in; `None` for a version
    /// recorded without one (it runs in its runtime's default executor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    /// Build status.
    pub status: BuildStatus,
    /// The build log so far.
    pub build_log: String,
    /// The artifact, once ready.
    pub artifact: Option<Artifact>,
    /// When it was created (ms since the epoch).
    pub created_ms: u64,
}

/// A user function with all its versions, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// Its id.
    pub id: String,
    /// Its owner.
    pub tenant: TenantId,
    /// Its name.
    pub name: String,
    /// Its versions, oldest first.
    pub versions: Vec<FunctionVersion>,
}

impl FunctionRecord {
    /// The newest version that is ready, if any.
    pub fn latest_ready(&self) -> Option<&FunctionVersion> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.status == BuildStatus::Ready)
    }

    /// One version by number.
    pub fn version(&self, v: u32) -> Option<&FunctionVersion> {
        self.versions.iter().find(|x| x.version == v)
    }
}

/// Largest build log kept per version; older output is dropped from the front.
pub const MAX_BUILD_LOG_BYTES: usize = 256 * 1024;

/// Stores user functions. Implementations: memory (here), SQLite and Redis
/// (`sopm-backends`).
///
/// Contract:
/// - Reads are scoped to a tenant: asking for another tenant's function is
///   [`Error::NotFound`], exactly as for an id that does not exist.
/// - [`create_version`](Registry::create_version) makes the function on first use of a
///   name and otherwise appends a version numbered one past the highest so far; it
///   returns once the version is durable.
/// - A version leaves `building` once, to `ready` (with an artifact) or `failed`.
/// - Build logs are appended in order and capped at [`MAX_BUILD_LOG_BYTES`].
#[async_trait]
pub trait Registry: Debug + Send + Sync + 'static {
    /// Creates a function, or a new version of the tenant's function with this name.
    async fn create_version(&self, new: NewVersion) -> Result<FunctionVersion>;

    /// A function by id, for its owner.
    async fn get(&self, tenant: &TenantId, id: &str) -> Result<FunctionRecord>;

    /// A function by name, for its owner.
    async fn get_by_name(&self, tenant: &TenantId, name: &str) -> Result<FunctionRecord>;

    /// The one version a call runs, in one read: the tenant's function `id_or_name`
    /// (an id first, else a name), then `version` if pinned (whatever its build
    /// status), else its newest `ready` version, else (none ready) its newest version,
    /// so the caller can tell "still building" from "never built". The version comes
    /// **without its build log** (`build_log` is empty): the execute path never reads
    /// logs. An unknown function, another tenant's, or a pinned version that does not
    /// exist is `not_found`.
    async fn resolve_version(
        &self,
        tenant: &TenantId,
        id_or_name: &str,
        version: Option<u32>,
    ) -> Result<FunctionVersion>;

    /// All of a tenant's functions, by name.
    async fn list(&self, tenant: &TenantId) -> Result<Vec<FunctionRecord>>;

    /// Appends to a version's build log.
    async fn append_build_log(&self, id: &str, version: u32, chunk: &str) -> Result<()>;

    /// Ends a build: `ready` with its artifact, or `failed`.
    async fn finish_build(
        &self,
        id: &str,
        version: u32,
        status: BuildStatus,
        artifact: Option<Artifact>,
    ) -> Result<()>;

    /// Removes a function and all its versions, returning what was removed.
    async fn delete(&self, tenant: &TenantId, id: &str) -> Result<FunctionRecord>;

    /// Every version of every tenant still `building`, oldest first. Called at
    /// start-up: a build that was running when the process stopped never finishes.
    async fn unfinished_builds(&self) -> Result<Vec<FunctionVersion>>;

    /// What a tenant holds, for its quotas: how many functions, and the bytes of its
    /// versions' artifacts as recorded by
    /// [`record_artifact_bytes`](Registry::record_artifact_bytes) (a version with no
    /// recorded size counts 0). A tenant with nothing has zero of both.
    async fn tenant_usage(&self, tenant: &TenantId) -> Result<TenantUsage>;

    /// Records the size in bytes of a version's artifact (replacing an earlier record).
    /// An unknown function or version is `not_found`.
    async fn record_artifact_bytes(&self, id: &str, version: u32, bytes: u64) -> Result<()>;

    /// Removes one version of the tenant's function and returns it (retention). Another
    /// tenant's function, or an unknown one or version, is `not_found`; the function's
    /// only remaining version is `conflict` (delete the function instead). The numbers
    /// of later versions do not change.
    async fn delete_version(
        &self,
        tenant: &TenantId,
        id: &str,
        version: u32,
    ) -> Result<FunctionVersion>;
}

/// What a tenant holds in a registry (see [`Registry::tenant_usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantUsage {
    /// Its user functions.
    pub functions: u64,
    /// The recorded bytes of all its versions' artifacts.
    pub artifact_bytes: u64,
}

/// Appends `chunk` to `log`, keeping at most [`MAX_BUILD_LOG_BYTES`] (drops whole
/// characters from the front).
pub fn append_capped(log: &mut String, chunk: &str) {
    log.push_str(chunk);
    if log.len() > MAX_BUILD_LOG_BYTES {
        let mut cut = log.len() - MAX_BUILD_LOG_BYTES;
        while !log.is_char_boundary(cut) {
            cut += 1;
        }
        log.drain(..cut);
    }
}

/// The `not_found` answer for a function asked for by id or name.
pub fn no_function_named(id_or_name: &str) -> Error {
    Error::not_found(format!(
        "no function with id or name '{}'",
        truncate_for_message(id_or_name)
    ))
}

/// The `not_found` answer for a function asked for by id.
pub fn no_function_with_id(id: &str) -> Error {
    Error::not_found(format!(
        "no function with id '{}'",
        truncate_for_message(id)
    ))
}

/// The `not_found` answer for a function asked for by name.
pub fn no_function_with_name(name: &str) -> Error {
    Error::not_found(format!(
        "no function named '{}'",
        truncate_for_message(name)
    ))
}

/// The `not_found` answer for a version the function `id` does not have.
pub fn no_version(id: &str, version: u32) -> Error {
    Error::not_found(format!(
        "function '{}' has no version {version}",
        truncate_for_message(id)
    ))
}

/// The `conflict` answer of [`Registry::finish_build`] for a version whose build
/// already ended as `status`.
pub fn already_finished(id: &str, version: u32, status: &str) -> Error {
    Error::Conflict(format!("version {version} of '{id}' is already {status}"))
}

/// The `conflict` answer of [`Registry::delete_version`] for a function's only
/// version.
pub fn only_version(id: &str, version: u32) -> Error {
    Error::Conflict(format!(
        "version {version} is the only version of '{id}'; delete the function instead"
    ))
}

/// The version of `record` a call runs (see [`Registry::resolve_version`]): `version`
/// if pinned, else the newest `ready` one, else the newest. `id_or_name` is what the
/// caller asked for, for the error.
pub fn pick_version<'a>(
    record: &'a FunctionRecord,
    id_or_name: &str,
    version: Option<u32>,
) -> Result<&'a FunctionVersion> {
    match version {
        Some(n) => record.version(n).ok_or_else(|| no_version(&record.id, n)),
        None => record
            .latest_ready()
            .or(record.versions.last())
            .ok_or_else(|| no_function_named(id_or_name)),
    }
}

/// Where in `record.versions` the version [`Registry::delete_version`] removes is:
/// `not_found` for a version it does not have, `conflict` for its only one.
pub fn removable_version(record: &FunctionRecord, version: u32) -> Result<usize> {
    let index = record
        .versions
        .iter()
        .position(|v| v.version == version)
        .ok_or_else(|| no_version(&record.id, version))?;
    if record.versions.len() == 1 {
        return Err(only_version(&record.id, version));
    }
    Ok(index)
}

/// Puts versions in the order [`Registry::unfinished_builds`] returns them: oldest
/// first, then by function id and version number.
pub fn sort_oldest_first(versions: &mut [FunctionVersion]) {
    versions.sort_by(|a, b| {
        (a.created_ms, &a.function_id, a.version).cmp(&(b.created_ms, &b.function_id, b.version))
    });
}

/// Puts records in the order [`Registry::list`] returns them: by name, then by id.
pub fn sort_by_name(records: &mut [FunctionRecord]) {
    records.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
}

/// A copy of `v` without its build log (what [`Registry::resolve_version`] returns).
fn version_without_log(v: &FunctionVersion) -> FunctionVersion {
    FunctionVersion {
        function_id: v.function_id.clone(),
        tenant: v.tenant.clone(),
        name: v.name.clone(),
        version: v.version,
        runtime: v.runtime,
        handler: v.handler.clone(),
        limits: v.limits.clone(),
        env: v.env.clone(),
        source_digest: v.source_digest.clone(),
        executor: v.executor.clone(),
        status: v.status,
        build_log: String::new(),
        artifact: v.artifact.clone(),
        created_ms: v.created_ms,
    }
}

/// Checks a function name: 1..=64 characters of `[A-Za-z0-9_.-]`, starting with a
/// letter or digit.
pub fn validate_function_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "name: expected 1 to 64 characters of letters, digits, '_', '-', '.', starting with a letter or digit",
        ))
    }
}

/// A fresh function id.
pub fn new_function_id() -> String {
    format!("fn_{}", uuid::Uuid::new_v4().simple())
}

/// A registry in memory, for tests and for embedding without persistence.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    inner: RwLock<HashMap<String, FunctionRecord>>,
    /// Recorded artifact sizes, by function id and version.
    artifact_bytes: RwLock<HashMap<(String, u32), u64>>,
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_version<T>(
        &self,
        id: &str,
        version: u32,
        f: impl FnOnce(&mut FunctionVersion) -> Result<T>,
    ) -> Result<T> {
        let mut map = self.inner.write();
        let rec = map.get_mut(id).ok_or_else(|| no_function_with_id(id))?;
        let v = rec
            .versions
            .iter_mut()
            .find(|v| v.version == version)
            .ok_or_else(|| no_version(id, version))?;
        f(v)
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn create_version(&self, new: NewVersion) -> Result<FunctionVersion> {
        validate_function_name(&new.name)?;
        let mut map = self.inner.write();
        let existing = map
            .values_mut()
            .find(|r| r.tenant == new.tenant && r.name == new.name);
        let rec = match existing {
            Some(r) => r,
            None => {
                let id = new_function_id();
                map.entry(id.clone()).or_insert(FunctionRecord {
                    id,
                    tenant: new.tenant.clone(),
                    name: new.name.clone(),
                    versions: Vec::new(),
                })
            }
        };
        let version = rec.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        let v = new.into_version(rec.id.clone(), version, now_ms());
        rec.versions.push(v.clone());
        Ok(v)
    }

    async fn get(&self, tenant: &TenantId, id: &str) -> Result<FunctionRecord> {
        self.inner
            .read()
            .get(id)
            .filter(|r| &r.tenant == tenant)
            .cloned()
            .ok_or_else(|| no_function_with_id(id))
    }

    async fn get_by_name(&self, tenant: &TenantId, name: &str) -> Result<FunctionRecord> {
        self.inner
            .read()
            .values()
            .find(|r| &r.tenant == tenant && r.name == name)
            .cloned()
            .ok_or_else(|| no_function_with_name(name))
    }

    async fn resolve_version(
        &self,
        tenant: &TenantId,
        id_or_name: &str,
        version: Option<u32>,
    ) -> Result<FunctionVersion> {
        let map = self.inner.read();
        let rec = map
            .get(id_or_name)
            .filter(|r| &r.tenant == tenant)
            .or_else(|| {
                map.values()
                    .find(|r| &r.tenant == tenant && r.name == id_or_name)
            })
            .ok_or_else(|| no_function_named(id_or_name))?;
        pick_version(rec, id_or_name, version).map(version_without_log)
    }

    async fn list(&self, tenant: &TenantId) -> Result<Vec<FunctionRecord>> {
        let mut out: Vec<_> = self
            .inner
            .read()
            .values()
            .filter(|r| &r.tenant == tenant)
            .cloned()
            .collect();
        sort_by_name(&mut out);
        Ok(out)
    }

    async fn append_build_log(&self, id: &str, version: u32, chunk: &str) -> Result<()> {
        self.with_version(id, version, |v| {
            append_capped(&mut v.build_log, chunk);
            Ok(())
        })
    }

    async fn finish_build(
        &self,
        id: &str,
        version: u32,
        status: BuildStatus,
        artifact: Option<Artifact>,
    ) -> Result<()> {
        check_finish(status, &artifact)?;
        self.with_version(id, version, |v| {
            if v.status != BuildStatus::Building {
                return Err(already_finished(id, version, v.status.as_str()));
            }
            v.status = status;
            v.artifact = artifact;
            Ok(())
        })
    }

    async fn delete(&self, tenant: &TenantId, id: &str) -> Result<FunctionRecord> {
        let mut map = self.inner.write();
        match map.get(id) {
            Some(r) if &r.tenant == tenant => {
                self.artifact_bytes.write().retain(|(f, _), _| f != id);
                Ok(map.remove(id).expect("present"))
            }
            _ => Err(no_function_with_id(id)),
        }
    }

    async fn unfinished_builds(&self) -> Result<Vec<FunctionVersion>> {
        let mut out: Vec<FunctionVersion> = self
            .inner
            .read()
            .values()
            .flat_map(|r| r.versions.iter())
            .filter(|v| v.status == BuildStatus::Building)
            .cloned()
            .collect();
        sort_oldest_first(&mut out);
        Ok(out)
    }

    async fn tenant_usage(&self, tenant: &TenantId) -> Result<TenantUsage> {
        let map = self.inner.read();
        let sizes = self.artifact_bytes.read();
        let mut usage = TenantUsage::default();
        for r in map.values().filter(|r| &r.tenant == tenant) {
            usage.functions += 1;
            for v in &r.versions {
                let size = sizes.get(&(r.id.clone(), v.version)).copied().unwrap_or(0);
                usage.artifact_bytes = usage.artifact_bytes.saturating_add(size);
            }
        }
        Ok(usage)
    }

    async fn record_artifact_bytes(&self, id: &str, version: u32, bytes: u64) -> Result<()> {
        self.with_version(id, version, |_| Ok(()))?;
        self.artifact_bytes
            .write()
            .insert((id.to_string(), version), bytes);
        Ok(())
    }

    async fn delete_version(
        &self,
        tenant: &TenantId,
        id: &str,
        version: u32,
    ) -> Result<FunctionVersion> {
        let mut map = self.inner.write();
        let rec = map
            .get_mut(id)
            .filter(|r| &r.tenant == tenant)
            .ok_or_else(|| no_function_with_id(id))?;
        let index = removable_version(rec, version)?;
        self.artifact_bytes
            .write()
            .remove(&(id.to_string(), version));
        Ok(rec.versions.remove(index))
    }
}

/// Checks the arguments of [`Registry::finish_build`]: `ready` needs an artifact,
/// `building` is not an end.
pub fn check_finish(status: BuildStatus, artifact: &Option<Artifact>) -> Result<()> {
    match (status, artifact) {
        (BuildStatus::Building, _) => Err(Error::invalid("a build cannot finish as 'building'")),
        (BuildStatus::Ready, None) => Err(Error::invalid("a ready build needs an artifact")),
        _ => Ok(()),
    }
}

/// A shared registry handle.
pub type SharedRegistry = Arc<dyn Registry>;
