//! The `Platform`: the one object a user holds. It wires a registry, a job store,
//! builders, executors and a scheduler, and exposes listing, execution, status and
//! stats, and the life of user functions: upload (validate, record, build in the
//! background), lookup, deletion, and recovery of builds a stopped process left.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::builder::{BuildLog, Builder, Source};
use crate::error::{Error, Result};
use crate::executor::{Executor, FunctionInfo, PoolStats};
use crate::jobstore::{JobLogEntry, JobStore, MemoryJobStore};
use crate::policy::{directory_bytes, ExecutorPolicy, Isolation, UploadQuotas, BUILD_RETRY_AFTER};
use crate::registry::{
    append_capped, validate_function_name, Artifact, BuildStatus, FunctionRecord, FunctionVersion,
    MemoryRegistry, NewVersion, Registry,
};
use crate::scheduler::{
    JobRequest, LocalScheduler, LocalSchedulerConfig, RecoveryReport, Route, Router, Scheduler,
    SubmitMode, Submitted,
};
use crate::stats::SchedulerStats;
use crate::types::{
    truncate_for_message, FunctionRef, Job, JobId, Limits, Output, Runtime, Target, TenantId,
};

/// Resolves built-ins by name and user functions through the registry; a user
/// function's version runs in the executor recorded on it (else its runtime's default).
#[derive(Debug)]
pub struct StandardRouter {
    builtin: Option<Arc<dyn Executor>>,
    /// The catalog's names; a hit is the shared name the route carries.
    builtin_names: FxHashSet<Arc<str>>,
    builtin_timeout: Duration,
    registry: Arc<dyn Registry>,
    sandboxes: Arc<Sandboxes>,
}

#[async_trait]
impl Router for StandardRouter {
    async fn route(&self, tenant: &TenantId, function: &FunctionRef) -> Result<Route> {
        match function {
            FunctionRef::Builtin { name } => {
                let (Some(exec), Some(canonical)) =
                    (&self.builtin, self.builtin_names.get(name.as_ref()))
                else {
                    return Err(Error::not_found(format!(
                        "no built-in function named '{}' (GET /api/functions lists them)",
                        crate::types::truncate_for_message(name)
                    )));
                };
                Ok(Route {
                    executor: exec.clone(),
                    target: Target::Builtin(canonical.clone()),
                    timeout: self.builtin_timeout,
                    function: FunctionRef::Builtin {
                        name: canonical.clone(),
                    },
                })
            }
            FunctionRef::User { id, version } => {
                // One registry read, of one version, without its build log.
                let v = self.registry.resolve_version(tenant, id, *version).await?;
                match (v.status, version) {
                    (BuildStatus::Ready, _) => {}
                    (BuildStatus::Building, Some(_)) => {
                        return Err(Error::NotReady(format!(
                            "version {} of '{}' is still building",
                            v.version, v.function_id
                        )))
                    }
                    (BuildStatus::Failed, Some(_)) => {
                        return Err(Error::NotReady(format!(
                            "version {} of '{}' failed to build; see its build log",
                            v.version, v.function_id
                        )))
                    }
                    (BuildStatus::Building, None) => {
                        return Err(Error::NotReady(format!(
                            "function '{}' is still building",
                            v.function_id
                        )))
                    }
                    (BuildStatus::Failed, None) => {
                        return Err(Error::NotReady(format!(
                            "function '{}' has no version that built",
                            v.function_id
                        )))
                    }
                }
                let executor = self.sandboxes.executor_of(&v)?.clone();
                Ok(Route {
                    executor,
                    timeout: Duration::from_millis(v.limits.timeout_ms),
                    function: FunctionRef::User {
                        id: if id.as_ref() == v.function_id {
                            id.clone()
                        } else {
                            Arc::from(v.function_id.as_str())
                        },
                        version: Some(v.version),
                    },
                    target: Target::User(Arc::new(v)),
                })
            }
        }
    }
}

/// Builds a [`Platform`]. Nothing is started or connected until [`build`](Self::build).
#[derive(Debug, Default)]
pub struct PlatformBuilder {
    builtins: Option<Arc<dyn Executor>>,
    builtin_timeout: Option<Duration>,
    registry: Option<Arc<dyn Registry>>,
    store: Option<Arc<dyn JobStore>>,
    sandboxes: BTreeMap<String, Sandbox>,
    runtime_executors: HashMap<Runtime, String>,
    function_executors: BTreeMap<String, String>,
    builders: HashMap<Runtime, Arc<dyn Builder>>,
    /// Names that two different executors were registered under (refused by `build`).
    clashes: Vec<String>,
    limit_caps: Option<Limits>,
    max_concurrent_builds: Option<usize>,
    executor_policy: ExecutorPolicy,
    isolation: BTreeMap<String, Isolation>,
    upload_quotas: Option<UploadQuotas>,
    scheduler_config: LocalSchedulerConfig,
    scheduler: Option<SchedulerFactory>,
}

type MakeScheduler =
    Box<dyn FnOnce(Arc<dyn Router>, Arc<dyn JobStore>) -> Arc<dyn Scheduler> + Send>;

/// A custom scheduler's constructor.
struct SchedulerFactory(MakeScheduler);

impl std::fmt::Debug for SchedulerFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchedulerFactory")
    }
}

impl PlatformBuilder {
    /// A builder with in-memory stores and the local scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    /// The executor of built-in functions (its [`catalog`](Executor::catalog) names them).
    pub fn with_builtins(mut self, executor: Arc<dyn Executor>) -> Self {
        self.builtins = Some(executor);
        self
    }

    /// Time limit of built-in calls (default 30 s).
    pub fn with_builtin_timeout(mut self, timeout: Duration) -> Self {
        self.builtin_timeout = Some(timeout);
        self
    }

    /// The function registry (default: in memory).
    pub fn with_registry(mut self, registry: Arc<dyn Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The job store (default: in memory).
    pub fn with_job_store(mut self, store: Arc<dyn JobStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Registers a named sandbox backend: the executor that runs user functions in it
    /// and the builder whose artifacts that executor runs. Uploads choose a backend by
    /// this name (see [`Platform::upload`]); registering a name again replaces it.
    pub fn with_sandbox(
        mut self,
        name: impl Into<String>,
        executor: Arc<dyn Executor>,
        builder: Arc<dyn Builder>,
    ) -> Self {
        self.sandboxes.insert(
            name.into(),
            Sandbox {
                executor,
                builder: Some(builder),
            },
        );
        self
    }

    /// Makes the backend registered as `name` the default of one runtime: versions of
    /// that runtime that neither ask for a backend nor match a function rule are
    /// built and run there.
    pub fn with_runtime_executor(mut self, runtime: Runtime, name: impl Into<String>) -> Self {
        self.runtime_executors.insert(runtime, name.into());
        self
    }

    /// An operator rule: functions named `function_name` (of any tenant) are built and
    /// run in the backend registered as `name`, unless an upload asks for another that
    /// the [`ExecutorPolicy`] allows.
    pub fn with_function_executor(
        mut self,
        function_name: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        self.function_executors
            .insert(function_name.into(), name.into());
        self
    }

    /// The executor for user functions of one runtime: registers it as a backend
    /// named after [`Executor::name`] (with no builder of its own: uploads use the
    /// runtime's [`with_builder`](Self::with_builder)) and makes it the runtime's
    /// default.
    pub fn with_executor(mut self, runtime: Runtime, executor: Arc<dyn Executor>) -> Self {
        let name = executor.name().to_string();
        match self.sandboxes.get(&name) {
            Some(known) if !Arc::ptr_eq(&known.executor, &executor) => {
                self.clashes.push(name.clone());
            }
            Some(_) => {}
            None => {
                self.sandboxes.insert(
                    name.clone(),
                    Sandbox {
                        executor,
                        builder: None,
                    },
                );
            }
        }
        self.runtime_executors.insert(runtime, name);
        self
    }

    /// The builder of user functions of one runtime, used when the backend a version
    /// runs in has no builder of its own (or when the runtime has no executor).
    pub fn with_builder(mut self, runtime: Runtime, builder: Arc<dyn Builder>) -> Self {
        self.builders.insert(runtime, builder);
        self
    }

    /// The largest limits an upload may ask for (default [`default_limit_caps`]). An
    /// upload over any of them is refused; `network: false` here refuses uploads that
    /// ask for network access.
    pub fn with_limit_caps(mut self, caps: Limits) -> Self {
        self.limit_caps = Some(caps);
        self
    }

    /// Most builds running at once (default 2); further uploads wait for a slot.
    pub fn with_max_concurrent_builds(mut self, builds: usize) -> Self {
        self.max_concurrent_builds = Some(builds);
        self
    }

    /// Which backends tenants may ask for in an upload (default: none weaker than the
    /// backend the operator routes the upload to; see [`ExecutorPolicy`]).
    pub fn with_executor_policy(mut self, policy: ExecutorPolicy) -> Self {
        self.executor_policy = policy;
        self
    }

    /// Declares how strongly the backend registered as `name` isolates (default:
    /// [`Isolation::assumed_for`] its name). The [`ExecutorPolicy`]'s default rule
    /// compares these.
    pub fn with_isolation(mut self, name: impl Into<String>, isolation: Isolation) -> Self {
        self.isolation.insert(name.into(), isolation);
        self
    }

    /// Per-tenant upload quotas, version retention and the cap on builds waiting
    /// (default [`UploadQuotas::default`]).
    pub fn with_upload_quotas(mut self, quotas: UploadQuotas) -> Self {
        self.upload_quotas = Some(quotas);
        self
    }

    /// Settings of the local scheduler.
    pub fn with_scheduler_config(mut self, config: LocalSchedulerConfig) -> Self {
        self.scheduler_config = config;
        self
    }

    /// Uses another scheduler, made from the platform's router and job store.
    pub fn with_scheduler(
        mut self,
        make: impl FnOnce(Arc<dyn Router>, Arc<dyn JobStore>) -> Arc<dyn Scheduler> + Send + 'static,
    ) -> Self {
        self.scheduler = Some(SchedulerFactory(Box::new(make)));
        self
    }

    /// Checks the settings and wires the platform. Does no I/O.
    pub fn build(self) -> Result<Platform> {
        if self.scheduler_config.max_concurrency == 0 {
            return Err(Error::invalid("max_concurrency must be at least 1"));
        }
        if self.max_concurrent_builds == Some(0) {
            return Err(Error::invalid("max_concurrent_builds must be at least 1"));
        }
        if self.builders.contains_key(&Runtime::Builtin)
            || self.runtime_executors.contains_key(&Runtime::Builtin)
        {
            return Err(Error::invalid(
                "built-in functions have no builder or sandbox executor",
            ));
        }
        let quotas = self.upload_quotas.unwrap_or_default();
        if let Some(problem) = quotas.problem() {
            return Err(Error::invalid(problem));
        }
        let mut sandboxes = Sandboxes::new(
            self.sandboxes,
            self.runtime_executors,
            self.function_executors,
            self.builders,
            &self.clashes,
        )?;
        sandboxes.policy = self.executor_policy;
        sandboxes.isolation = self.isolation;
        let sandboxes = Arc::new(sandboxes);
        let registry = self
            .registry
            .unwrap_or_else(|| Arc::new(MemoryRegistry::new()));
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryJobStore::new()));
        let catalog: Arc<[FunctionInfo]> = self
            .builtins
            .as_ref()
            .map(|b| Arc::from(b.catalog()))
            .unwrap_or_else(|| Arc::from(Vec::new()));
        let builtin_names = catalog.iter().map(|f| Arc::from(f.name.as_str())).collect();
        let mut all_executors: Vec<Arc<dyn Executor>> = Vec::new();
        if let Some(b) = &self.builtins {
            all_executors.push(b.clone());
        }
        for s in sandboxes.named.values() {
            if !all_executors.iter().any(|x| Arc::ptr_eq(x, &s.executor)) {
                all_executors.push(s.executor.clone());
            }
        }
        let build_capacity = self.max_concurrent_builds.unwrap_or(2);
        let user = Arc::new(UserFunctions {
            sandboxes: sandboxes.clone(),
            caps: self.limit_caps.unwrap_or_else(default_limit_caps),
            build_slots: Arc::new(Semaphore::new(build_capacity)),
            build_capacity,
            quotas,
            builds: Arc::new(parking_lot::Mutex::new(BuildCounts::default())),
            admission: tokio::sync::Mutex::new(()),
        });
        let router: Arc<dyn Router> = Arc::new(StandardRouter {
            builtin: self.builtins,
            builtin_names,
            builtin_timeout: self.builtin_timeout.unwrap_or(Duration::from_secs(30)),
            registry: registry.clone(),
            sandboxes,
        });
        let scheduler = match self.scheduler {
            Some(SchedulerFactory(make)) => make(router.clone(), store.clone()),
            None => Arc::new(LocalScheduler::new(
                self.scheduler_config,
                router.clone(),
                store.clone(),
            )),
        };
        Ok(Platform {
            registry,
            store,
            scheduler,
            catalog,
            executors: all_executors,
            user,
            started: Instant::now(),
        })
    }
}

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
/// How often a running build's log reaches the registry.
const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// A build log buffer this large is written at once.
const LOG_FLUSH_BYTES: usize = 16 * 1024;

/// A named sandbox backend: the executor that runs user functions in it and the
/// builder of the artifacts it runs (`None` for a backend registered through
/// [`PlatformBuilder::with_executor`], whose runtime's builder builds for it).
#[derive(Debug, Clone)]
struct Sandbox {
    executor: Arc<dyn Executor>,
    builder: Option<Arc<dyn Builder>>,
}

/// The sandbox backends by name, and the rules that pick one for a version.
#[derive(Debug)]
struct Sandboxes {
    named: BTreeMap<String, Sandbox>,
    by_runtime: HashMap<Runtime, String>,
    by_function: BTreeMap<String, String>,
    runtime_builders: HashMap<Runtime, Arc<dyn Builder>>,
    /// Which backends tenants may ask for.
    policy: ExecutorPolicy,
    /// Declared isolation of backends, by name (else assumed from the name).
    isolation: BTreeMap<String, Isolation>,
}

/// Longest backend name accepted, in bytes.
const MAX_SANDBOX_NAME_BYTES: usize = 64;

impl Sandboxes {
    /// Checks that every name is well formed and every rule names a registered backend.
    fn new(
        named: BTreeMap<String, Sandbox>,
        by_runtime: HashMap<Runtime, String>,
        by_function: BTreeMap<String, String>,
        runtime_builders: HashMap<Runtime, Arc<dyn Builder>>,
        clashes: &[String],
    ) -> Result<Self> {
        if let Some(name) = clashes.first() {
            return Err(Error::invalid(format!(
                "two different executors are registered as '{name}'; register each under its own name (with_sandbox)"
            )));
        }
        for name in named.keys() {
            let ok = !name.is_empty()
                && name.len() <= MAX_SANDBOX_NAME_BYTES
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !ok {
                return Err(Error::invalid(format!(
                    "executor name '{}': expected 1 to {MAX_SANDBOX_NAME_BYTES} characters of letters, digits, '_', '-', '.'",
                    truncate_for_message(name)
                )));
            }
        }
        let sandboxes = Sandboxes {
            named,
            by_runtime,
            by_function,
            runtime_builders,
            policy: ExecutorPolicy::default(),
            isolation: BTreeMap::new(),
        };
        let mut runtimes: Vec<_> = sandboxes.by_runtime.iter().collect();
        runtimes.sort_by_key(|(r, _)| r.as_str());
        for (runtime, name) in runtimes {
            if !sandboxes.named.contains_key(name) {
                return Err(Error::invalid(format!(
                    "the {} runtime's executor '{}' is not registered; {}",
                    runtime.as_str(),
                    truncate_for_message(name),
                    sandboxes.available()
                )));
            }
        }
        for (function, name) in &sandboxes.by_function {
            validate_function_name(function).map_err(|e| {
                Error::invalid(format!(
                    "executor rule for '{}': {e}",
                    truncate_for_message(function)
                ))
            })?;
            if !sandboxes.named.contains_key(name) {
                return Err(Error::invalid(format!(
                    "the executor '{}' of functions named '{function}' is not registered; {}",
                    truncate_for_message(name),
                    sandboxes.available()
                )));
            }
        }
        Ok(sandboxes)
    }

    /// "available: a, b" (or "none is available"), for error messages.
    fn available(&self) -> String {
        if self.named.is_empty() {
            "no executor is available".to_string()
        } else {
            let names: Vec<&str> = self.named.keys().map(String::as_str).collect();
            format!("available: {}", names.join(", "))
        }
    }

    /// The backend an upload goes to: the client's ask if the operator's policy allows
    /// it to this tenant, else the operator's rule for the function's name, else the
    /// runtime's default; `None` when none applies. An ask for a backend that is not
    /// registered is `invalid_input`; one the policy does not allow is `forbidden`
    /// (`executor_not_allowed`), naming the backends that are.
    fn choose(&self, tenant: &TenantId, spec: &UploadSpec) -> Result<Option<&str>> {
        let routed = self
            .by_function
            .get(&spec.name)
            .or_else(|| self.by_runtime.get(&spec.runtime))
            .map(String::as_str);
        let Some(ask) = &spec.executor else {
            return Ok(routed);
        };
        let Some((name, _)) = self.named.get_key_value(ask.as_str()) else {
            return Err(Error::invalid(format!(
                "executor: '{}' is not available on this server; {}",
                truncate_for_message(ask),
                self.available()
            )));
        };
        let allowed = self.allowed_asks(tenant, routed);
        if Some(name.as_str()) == routed || allowed.contains(&name.as_str()) {
            return Ok(Some(name.as_str()));
        }
        let why = match (self.policy.list_for(tenant), routed) {
            (Some(_), _) => "the operator's policy lists the executors this tenant may ask for".to_string(),
            (None, Some(r)) => format!(
                "this function is routed to '{r}' ({}), and an upload may not ask for an executor that isolates less ('{name}' is {})",
                self.isolation_of(r).as_str(),
                self.isolation_of(name).as_str()
            ),
            (None, None) => "the operator's policy does not allow it".to_string(),
        };
        Err(Error::forbidden(
            "executor_not_allowed",
            format!(
                "executor: '{name}' is not allowed for this tenant: {why}; allowed: {}",
                if allowed.is_empty() {
                    "none (leave executor out to use the operator's choice)".to_string()
                } else {
                    allowed.join(", ")
                }
            ),
        ))
    }

    /// How strongly the backend `name` isolates: as declared, else as assumed from its
    /// name.
    fn isolation_of(&self, name: &str) -> Isolation {
        self.isolation
            .get(name)
            .copied()
            .unwrap_or_else(|| Isolation::assumed_for(name))
    }

    /// The registered backends `tenant` may ask for when the operator routes the upload
    /// to `routed` (see [`ExecutorPolicy`]), sorted; the route itself is always allowed.
    fn allowed_asks<'a>(&'a self, tenant: &TenantId, routed: Option<&'a str>) -> Vec<&'a str> {
        let floor = routed.map(|r| self.isolation_of(r));
        let list = self.policy.list_for(tenant);
        self.named
            .keys()
            .map(String::as_str)
            .filter(|n| {
                Some(*n) == routed
                    || match list {
                        Some(list) => list.contains(*n),
                        None => floor.is_none_or(|f| self.isolation_of(n) >= f),
                    }
            })
            .collect()
    }

    /// The name of the backend a version runs in: the one recorded on it, else its
    /// runtime's default.
    fn name_of<'a>(&'a self, v: &'a FunctionVersion) -> Option<&'a str> {
        v.executor
            .as_deref()
            .or_else(|| self.by_runtime.get(&v.runtime).map(String::as_str))
    }

    /// The executor of a version (see [`name_of`](Self::name_of)).
    fn executor_of(&self, v: &FunctionVersion) -> Result<&Arc<dyn Executor>> {
        match self.name_of(v) {
            Some(name) => self.named.get(name).map(|s| &s.executor).ok_or_else(|| {
                Error::Unavailable(format!(
                    "version {} of '{}' runs in the '{}' executor, which is not configured on this server",
                    v.version,
                    v.function_id,
                    truncate_for_message(name)
                ))
            }),
            None => Err(Error::Unavailable(format!(
                "no executor is configured for the {} runtime",
                v.runtime.as_str()
            ))),
        }
    }

    /// The builder for a version of `runtime` that runs in the backend `name`: that
    /// backend's own, else the runtime's.
    fn builder(&self, runtime: Runtime, name: Option<&str>) -> Option<&Arc<dyn Builder>> {
        name.and_then(|n| self.named.get(n))
            .and_then(|s| s.builder.as_ref())
            .or_else(|| self.runtime_builders.get(&runtime))
    }
}

/// Builders, user-function executors and upload policy.
#[derive(Debug)]
struct UserFunctions {
    sandboxes: Arc<Sandboxes>,
    caps: Limits,
    build_slots: Arc<Semaphore>,
    /// The number of build slots (`build_slots`' permits when none is taken).
    build_capacity: usize,
    quotas: UploadQuotas,
    /// Builds admitted and not yet ended, per tenant and in all.
    builds: Arc<parking_lot::Mutex<BuildCounts>>,
    /// Held from an upload's quota checks until its version is recorded, so two
    /// uploads cannot both pass a check that only one of them fits.
    admission: tokio::sync::Mutex<()>,
}

/// Builds admitted and not yet ended.
#[derive(Debug, Default)]
struct BuildCounts {
    by_tenant: HashMap<TenantId, usize>,
    total: usize,
}

/// One admitted build's place in [`BuildCounts`]; given back when dropped.
struct BuildTicket {
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

impl UserFunctions {
    /// Admits one more build of `tenant`, or refuses it: past the tenant's builds in
    /// flight (`quota_exceeded`, 429), or when it would wait behind
    /// `max_queued_builds` others for a slot (`overloaded`, 429).
    fn admit_build(&self, tenant: &TenantId) -> Result<BuildTicket> {
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

    /// Refuses an upload by `tenant` of a function named `name` over a standing quota:
    /// its artifact bytes already at the limit, or a new function past its count.
    async fn check_standing_quotas(
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

    fn check(&self, spec: &UploadSpec, source: &Source) -> Result<()> {
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

/// A build's log on its way to the registry: appends are buffered and written every
/// [`LOG_FLUSH_INTERVAL`] or [`LOG_FLUSH_BYTES`], so a chatty install does not cost
/// a storage write per line.
struct RegistryBuildLog {
    registry: Arc<dyn Registry>,
    function_id: String,
    version: u32,
    pending: parking_lot::Mutex<String>,
    tail: parking_lot::Mutex<String>,
    /// Held while a chunk is written, so chunks reach the registry in order.
    writing: tokio::sync::Mutex<()>,
}

impl RegistryBuildLog {
    fn new(registry: Arc<dyn Registry>, version: &FunctionVersion) -> Self {
        RegistryBuildLog {
            registry,
            function_id: version.function_id.clone(),
            version: version.version,
            pending: parking_lot::Mutex::new(String::new()),
            tail: parking_lot::Mutex::new(String::new()),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    async fn flush(&self) {
        let _order = self.writing.lock().await;
        let chunk = std::mem::take(&mut *self.pending.lock());
        if chunk.is_empty() {
            return;
        }
        if let Err(e) = self
            .registry
            .append_build_log(&self.function_id, self.version, &chunk)
            .await
        {
            tracing::warn!(
                function_id = %self.function_id,
                version = self.version,
                error = %e,
                "could not write to a build log"
            );
        }
    }

    /// Whether the end of the log already says `text`.
    fn recently_said(&self, text: &str) -> bool {
        !text.is_empty() && self.tail.lock().contains(text)
    }
}

#[async_trait]
impl BuildLog for RegistryBuildLog {
    async fn append(&self, chunk: &str) {
        let full = {
            let mut p = self.pending.lock();
            append_capped(&mut p, chunk);
            p.len() >= LOG_FLUSH_BYTES
        };
        {
            let mut tail = self.tail.lock();
            tail.push_str(chunk);
            if tail.len() > 4096 {
                let mut cut = tail.len() - 4096;
                while !tail.is_char_boundary(cut) {
                    cut += 1;
                }
                tail.drain(..cut);
            }
        }
        if full {
            self.flush().await;
        }
    }
}

/// Builds one version and records how it ended: `ready` with its artifact (then warms
/// the executor), or `failed` with the error at the end of its log. A panicking
/// builder counts as a failed build, and so does an artifact that would take its
/// tenant past `max_artifact_bytes` (it is removed).
async fn run_build(
    registry: Arc<dyn Registry>,
    builder: Arc<dyn Builder>,
    executor: Option<Arc<dyn Executor>>,
    version: FunctionVersion,
    source: Source,
    max_artifact_bytes: u64,
) -> BuildStatus {
    let log = RegistryBuildLog::new(registry.clone(), &version);
    let outcome = {
        let build = AssertUnwindSafe(builder.build(&version, &source, &log)).catch_unwind();
        tokio::pin!(build);
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + LOG_FLUSH_INTERVAL,
            LOG_FLUSH_INTERVAL,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = &mut build => break r,
                _ = tick.tick() => log.flush().await,
            }
        }
    };
    drop(source);
    let result = outcome.unwrap_or_else(|_| {
        Err(Error::Internal(format!(
            "the {} builder panicked",
            builder.name()
        )))
    });
    let function_id = version.function_id.clone();
    let (id, n) = (function_id.as_str(), version.version);
    let result = match result {
        Ok(artifact) => {
            match charge_artifact(registry.as_ref(), &version, &artifact, max_artifact_bytes).await
            {
                Ok(()) => Ok(artifact),
                Err(e) => {
                    if let Err(e) = builder.remove(&artifact).await {
                        tracing::warn!(function_id = %id, version = n, error = %e,
                            "could not remove an artifact over the tenant's quota");
                    }
                    Err(e)
                }
            }
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(artifact) => {
            log.flush().await;
            if let Some(exec) = &executor {
                // Warm an instance before the version is announced ready, so that its
                // first call finds one instead of racing the warm-up.
                let ready = FunctionVersion {
                    status: BuildStatus::Ready,
                    artifact: Some(artifact.clone()),
                    ..version.clone()
                };
                if let Err(e) = exec.prepare(&ready).await {
                    tracing::warn!(function_id = %id, version = n, executor = exec.name(), error = %e,
                        "could not warm an instance for a new version");
                }
            }
            match registry
                .finish_build(id, n, BuildStatus::Ready, Some(artifact.clone()))
                .await
            {
                Ok(()) => BuildStatus::Ready,
                Err(e) => {
                    // Deleted while building, or storage trouble: the artifact and its
                    // warm instance have no owner. A version left `building` is failed at
                    // the next start.
                    if !matches!(e, Error::NotFound(_)) {
                        tracing::error!(function_id = %id, version = n, error = %e,
                            "could not record a finished build");
                    }
                    if let Some(exec) = &executor {
                        if let Err(e) = exec.retire(id).await {
                            tracing::warn!(function_id = %id, error = %e, "could not retire a warm instance");
                        }
                    }
                    if let Err(e) = builder.remove(&artifact).await {
                        tracing::warn!(function_id = %id, version = n, error = %e,
                            "could not remove an orphaned artifact");
                    }
                    BuildStatus::Failed
                }
            }
        }
        Err(e) => {
            if matches!(e, Error::Internal(_) | Error::Storage(_)) {
                tracing::error!(function_id = %id, version = n, error = %e, "build failed inside SOPM");
            }
            let message = e.public_message();
            let first = message.lines().next().unwrap_or_default();
            if !log.recently_said(first) {
                log.append(&format!("==> build failed: {message}\n")).await;
            }
            log.flush().await;
            if let Err(e) = registry
                .finish_build(id, n, BuildStatus::Failed, None)
                .await
            {
                if !matches!(e, Error::NotFound(_)) {
                    tracing::error!(function_id = %id, version = n, error = %e,
                        "could not record a failed build");
                }
            }
            BuildStatus::Failed
        }
    }
}

/// Measures a new artifact and records its size against its tenant's artifact bytes;
/// `quota_exceeded` if it would take the tenant past `max_bytes`. Directory artifacts
/// are measured on disk; images are not measured (they count 0).
async fn charge_artifact(
    registry: &dyn Registry,
    version: &FunctionVersion,
    artifact: &Artifact,
    max_bytes: u64,
) -> Result<()> {
    let bytes = match artifact {
        Artifact::Directory { path, .. } => {
            let path = std::path::PathBuf::from(path);
            tokio::task::spawn_blocking(move || directory_bytes(&path))
                .await
                .map_err(|e| Error::Internal(format!("measuring an artifact: {e}")))?
        }
        Artifact::Image { .. } => 0,
    };
    let used = registry.tenant_usage(&version.tenant).await?.artifact_bytes;
    if used.saturating_add(bytes) > max_bytes {
        return Err(Error::QuotaExceeded {
            quota: "artifact_bytes",
            message: format!(
                "artifact_bytes: this build's artifact is {bytes} bytes and tenant '{}' already holds {used}, the limit is {max_bytes}; delete functions to make room",
                version.tenant
            ),
            retry_after: None,
        });
    }
    registry
        .record_artifact_bytes(&version.function_id, version.version, bytes)
        .await
}

/// Retention: prunes the oldest versions of a function past `kept` — never its newest
/// version, its newest ready one, nor one still building — with their warm instances
/// and artifacts. Failures are logged.
async fn prune_versions(
    registry: &dyn Registry,
    sandboxes: &Sandboxes,
    tenant: &TenantId,
    id: &str,
    kept: u32,
) {
    let record = match registry.get(tenant, id).await {
        Ok(r) => r,
        Err(Error::NotFound(_)) => return,
        Err(e) => {
            tracing::warn!(function_id = %id, error = %e, "could not read a function to prune its versions");
            return;
        }
    };
    let excess = record.versions.len().saturating_sub(kept as usize);
    if excess == 0 {
        return;
    }
    let newest = record.versions.iter().map(|v| v.version).max();
    let newest_ready = record.latest_ready().map(|v| v.version);
    let doomed: Vec<u32> = record
        .versions
        .iter()
        .filter(|v| {
            Some(v.version) != newest
                && Some(v.version) != newest_ready
                && v.status != BuildStatus::Building
        })
        .take(excess)
        .map(|v| v.version)
        .collect();
    for n in doomed {
        let v = match registry.delete_version(tenant, id, n).await {
            Ok(v) => v,
            Err(Error::NotFound(_)) | Err(Error::Conflict(_)) => continue,
            Err(e) => {
                tracing::warn!(function_id = %id, version = n, error = %e, "could not prune a version");
                continue;
            }
        };
        if let Ok(exec) = sandboxes.executor_of(&v) {
            if let Err(e) = exec.retire_version(id, n).await {
                tracing::warn!(function_id = %id, version = n, error = %e,
                    "could not stop the instances of a pruned version");
            }
        }
        let builder = sandboxes.builder(v.runtime, sandboxes.name_of(&v));
        if let (Some(artifact), Some(builder)) = (&v.artifact, builder) {
            if let Err(e) = builder.remove(artifact).await {
                tracing::warn!(function_id = %id, version = n, error = %e,
                    "could not remove the artifact of a pruned version");
            }
        }
        tracing::info!(function_id = %id, version = n, "pruned a version past the kept count");
    }
}

/// Figures of the whole platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlatformStats {
    /// Seconds since the platform was built.
    pub uptime_s: f64,
    /// The scheduler's figures.
    pub jobs: SchedulerStats,
    /// Warm pools of each executor.
    pub pools: Vec<PoolStats>,
}

/// The SOPM platform: list functions, run them, follow jobs, read stats.
#[derive(Debug, Clone)]
pub struct Platform {
    registry: Arc<dyn Registry>,
    store: Arc<dyn JobStore>,
    scheduler: Arc<dyn Scheduler>,
    catalog: Arc<[FunctionInfo]>,
    executors: Vec<Arc<dyn Executor>>,
    user: Arc<UserFunctions>,
    started: Instant,
}

impl Platform {
    /// Starts a [`PlatformBuilder`].
    pub fn builder() -> PlatformBuilder {
        PlatformBuilder::new()
    }

    /// The built-in functions.
    pub fn list_functions(&self) -> &[FunctionInfo] {
        &self.catalog
    }

    /// Runs a function and waits for its output.
    pub async fn execute(
        &self,
        tenant: &TenantId,
        function: FunctionRef,
        input: Value,
    ) -> Result<Output> {
        let request = JobRequest::new(tenant.clone(), function, input);
        match self
            .scheduler
            .submit(request, SubmitMode::Wait(None))
            .await?
        {
            Submitted::Finished(job) => job_output(job),
            Submitted::Pending { id, .. } => Err(Error::Internal(format!(
                "job {id} did not finish although the call waited for it"
            ))),
        }
    }

    /// Submits a job in the given mode.
    pub async fn submit(&self, request: JobRequest, mode: SubmitMode) -> Result<Submitted> {
        self.scheduler.submit(request, mode).await
    }

    /// A job's record, for its owner.
    pub async fn status(&self, tenant: &TenantId, id: &JobId) -> Result<Job> {
        self.scheduler.status(tenant, id).await
    }

    /// Cancels a queued or running job.
    pub async fn cancel(&self, tenant: &TenantId, id: &JobId) -> Result<Job> {
        self.scheduler.cancel(tenant, id).await
    }

    /// Current figures.
    pub fn stats(&self) -> PlatformStats {
        PlatformStats {
            uptime_s: self.started.elapsed().as_secs_f64(),
            jobs: self.scheduler.stats(),
            pools: self.executors.iter().flat_map(|e| e.pool_stats()).collect(),
        }
    }

    /// Recovers what a previous process left unfinished (call once at start-up):
    /// builds that were running become `failed` ([`recover_builds`](Self::recover_builds)),
    /// then the scheduler recovers jobs.
    pub async fn recover(&self) -> Result<RecoveryReport> {
        self.recover_builds().await?;
        self.scheduler.recover().await
    }

    /// Marks every version still `building` as `failed`, with a log line saying the
    /// server stopped during its build; returns how many. Only for start-up, before
    /// any upload: a build running now would be failed too.
    pub async fn recover_builds(&self) -> Result<u64> {
        let mut n = 0;
        for v in self.registry.unfinished_builds().await? {
            self.registry
                .append_build_log(
                    &v.function_id,
                    v.version,
                    "==> the server stopped during this build; it did not finish (upload again)\n",
                )
                .await?;
            match self
                .registry
                .finish_build(&v.function_id, v.version, BuildStatus::Failed, None)
                .await
            {
                Ok(()) | Err(Error::Conflict(_)) | Err(Error::NotFound(_)) => n += 1,
                Err(e) => return Err(e),
            }
        }
        if n > 0 {
            tracing::info!(
                builds = n,
                "failed the builds a previous process left unfinished"
            );
        }
        Ok(n)
    }

    /// Uploads a user function: checks the spec, records a new version as `building`
    /// and answers it at once; the build runs in the background (a few at a time) and
    /// ends `ready` or `failed` with its log in the registry.
    ///
    /// The version's executor backend is chosen here and recorded on it: the one the
    /// spec asks for, else the operator's rule for the function's name
    /// ([`PlatformBuilder::with_function_executor`]), else the runtime's default. That
    /// backend's builder builds it and its executor runs it from then on, whatever the
    /// defaults become. Asking for a backend that is not registered is
    /// `invalid_input`, with the names that are; asking for one the
    /// [`ExecutorPolicy`] does not allow this tenant is `forbidden`
    /// (`executor_not_allowed`), with the names it allows.
    ///
    /// The tenant's [`UploadQuotas`] are checked before anything is stored: builds in
    /// flight (`quota_exceeded`, with a retry delay), builds waiting server-wide
    /// (`overloaded`), artifact bytes and, for a new name, functions (`quota_exceeded`,
    /// standing). When the build ends, versions past `versions_kept` are pruned.
    pub async fn upload(
        &self,
        tenant: &TenantId,
        spec: UploadSpec,
        source: Source,
    ) -> Result<FunctionVersion> {
        self.user.check(&spec, &source)?;
        let sandboxes = &self.user.sandboxes;
        let chosen = sandboxes.choose(tenant, &spec)?;
        let builder = sandboxes
            .builder(spec.runtime, chosen)
            .ok_or_else(|| {
                Error::Unavailable(match chosen {
                    Some(name) => format!(
                        "no builder is configured for the {} runtime in the '{name}' executor",
                        spec.runtime.as_str()
                    ),
                    None => format!(
                        "no builder is configured for the {} runtime",
                        spec.runtime.as_str()
                    ),
                })
            })?
            .clone();
        let executor = chosen
            .and_then(|name| sandboxes.named.get(name))
            .map(|s| s.executor.clone());
        let admission = self.user.admission.lock().await;
        let ticket = self.user.admit_build(tenant)?;
        self.user
            .check_standing_quotas(self.registry.as_ref(), tenant, &spec.name)
            .await?;
        let version = self
            .registry
            .create_version(NewVersion {
                tenant: tenant.clone(),
                name: spec.name,
                runtime: spec.runtime,
                handler: spec.handler,
                limits: spec.limits,
                env: spec.env,
                source_digest: source_digest(&source),
                executor: chosen.map(str::to_string),
            })
            .await?;
        drop(admission);
        let registry = self.registry.clone();
        let slots = self.user.build_slots.clone();
        let building = version.clone();
        let user = self.user.clone();
        tokio::spawn(async move {
            let slot = match slots.clone().try_acquire_owned() {
                Ok(s) => Some(s),
                Err(_) => {
                    let _ = registry
                        .append_build_log(
                            &building.function_id,
                            building.version,
                            "==> waiting for a build slot\n",
                        )
                        .await;
                    slots.acquire_owned().await.ok()
                }
            };
            let budget = user.quotas.max_artifact_bytes_per_tenant;
            let status = run_build(
                registry.clone(),
                builder,
                executor,
                building.clone(),
                source,
                budget,
            )
            .await;
            drop(slot);
            drop(ticket);
            prune_versions(
                registry.as_ref(),
                &user.sandboxes,
                &building.tenant,
                &building.function_id,
                user.quotas.versions_kept,
            )
            .await;
            tracing::info!(
                function_id = %building.function_id,
                name = %building.name,
                version = building.version,
                status = status.as_str(),
                "build finished"
            );
        });
        Ok(version)
    }

    /// A user function of `tenant`, by id or by name. Another tenant's function is
    /// `not_found`, as is an unknown one.
    pub async fn function(&self, tenant: &TenantId, id_or_name: &str) -> Result<FunctionRecord> {
        match self.registry.get(tenant, id_or_name).await {
            Err(Error::NotFound(_)) => match self.registry.get_by_name(tenant, id_or_name).await {
                Err(Error::NotFound(_)) => Err(Error::not_found(format!(
                    "no function with id or name '{}'",
                    truncate_for_message(id_or_name)
                ))),
                other => other,
            },
            other => other,
        }
    }

    /// The tenant's user functions, by name.
    pub async fn functions(&self, tenant: &TenantId) -> Result<Vec<FunctionRecord>> {
        self.registry.list(tenant).await
    }

    /// Deletes a user function (by id or name) with all its versions, then stops its
    /// instances and removes its artifacts (failures there are logged, not returned).
    pub async fn delete_function(
        &self,
        tenant: &TenantId,
        id_or_name: &str,
    ) -> Result<FunctionRecord> {
        let record = self.function(tenant, id_or_name).await?;
        let removed = self.registry.delete(tenant, &record.id).await?;
        let sandboxes = &self.user.sandboxes;
        let mut retired: Vec<&Arc<dyn Executor>> = Vec::new();
        for v in &removed.versions {
            let Ok(exec) = sandboxes.executor_of(v) else {
                continue;
            };
            if retired.iter().any(|e| Arc::ptr_eq(e, exec)) {
                continue;
            }
            retired.push(exec);
            if let Err(e) = exec.retire(&removed.id).await {
                tracing::warn!(function_id = %removed.id, executor = exec.name(), error = %e,
                    "could not retire the instances of a deleted function");
            }
        }
        for v in &removed.versions {
            let builder = sandboxes.builder(v.runtime, sandboxes.name_of(v));
            let (Some(artifact), Some(builder)) = (&v.artifact, builder) else {
                continue;
            };
            if let Err(e) = builder.remove(artifact).await {
                tracing::warn!(function_id = %removed.id, version = v.version, error = %e,
                    "could not remove the artifact of a deleted function");
            }
        }
        Ok(removed)
    }

    /// The newest jobs of one of the tenant's user functions (by id or name), newest
    /// first, as the log listing shows them (no inputs or outputs; logs cut to
    /// [`LISTED_LOG_CHARS`](crate::jobstore::LISTED_LOG_CHARS)), with the function's
    /// id and name. Reads one version row (no build log) and the listing.
    pub async fn recent_logs(
        &self,
        tenant: &TenantId,
        id_or_name: &str,
        limit: usize,
    ) -> Result<(FunctionVersion, Vec<JobLogEntry>)> {
        let v = self
            .registry
            .resolve_version(tenant, id_or_name, None)
            .await?;
        let entries = self
            .store
            .recent_logs(tenant, &v.function_id, limit)
            .await?;
        Ok((v, entries))
    }

    /// Deletes every finished job record that finished more than `retention` ago, in
    /// batches of [`EXPIRY_BATCH`] (yielding between them, so a large backlog never
    /// holds the store for long); returns how many went. Queued and running jobs are
    /// never deleted.
    pub async fn expire_jobs(&self, retention: Duration) -> Result<u64> {
        expire_jobs(self.store.as_ref(), retention).await
    }

    /// Starts the background sweep of job records: every `interval`, finished jobs
    /// older than `retention` are deleted ([`expire_jobs`](Self::expire_jobs)). A zero
    /// `retention` keeps every record and starts nothing. Call from a tokio runtime;
    /// abort the handle to stop it.
    pub fn spawn_job_expiry(
        &self,
        retention: Duration,
        interval: Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if retention.is_zero() {
            return None;
        }
        let store = self.store.clone();
        let interval = interval.max(Duration::from_millis(10));
        Some(tokio::spawn(async move {
            loop {
                match expire_jobs(store.as_ref(), retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "expired finished job records"),
                    Err(e) => tracing::warn!(error = %e, "the job expiry sweep failed"),
                }
                tokio::time::sleep(interval).await;
            }
        }))
    }

    /// The name of the executor backend that runs user functions of `runtime` by
    /// default, if one is configured.
    pub fn executor_for(&self, runtime: Runtime) -> Option<&str> {
        self.user
            .sandboxes
            .by_runtime
            .get(&runtime)
            .map(String::as_str)
    }

    /// The name of the builder of user functions of `runtime` in its default backend,
    /// if one is configured.
    pub fn builder_for(&self, runtime: Runtime) -> Option<&str> {
        let sandboxes = &self.user.sandboxes;
        sandboxes
            .builder(runtime, self.executor_for(runtime))
            .map(|b| b.name())
    }

    /// The name of the executor backend a version runs in: the one recorded on it at
    /// upload, else (a version recorded without one) its runtime's default. The name
    /// may be one this platform does not configure (see
    /// [`has_executor`](Self::has_executor)).
    pub fn executor_of<'a>(&'a self, version: &'a FunctionVersion) -> Option<&'a str> {
        self.user.sandboxes.name_of(version)
    }

    /// The name of the builder that builds (and removes) a version's artifact.
    pub fn builder_of(&self, version: &FunctionVersion) -> Option<&str> {
        let sandboxes = &self.user.sandboxes;
        sandboxes
            .builder(version.runtime, sandboxes.name_of(version))
            .map(|b| b.name())
    }

    /// Whether an executor backend is registered under `name`.
    pub fn has_executor(&self, name: &str) -> bool {
        self.user.sandboxes.named.contains_key(name)
    }

    /// The names of the registered executor backends, sorted.
    pub fn executor_names(&self) -> Vec<&str> {
        self.user
            .sandboxes
            .named
            .keys()
            .map(String::as_str)
            .collect()
    }

    /// The operator's caps on upload limits.
    pub fn limit_caps(&self) -> &Limits {
        &self.user.caps
    }

    /// Stops accepting jobs, finishes or records what is in flight, stops executors.
    pub async fn shutdown(&self, grace: Duration) -> Result<()> {
        let r = self.scheduler.shutdown(grace).await;
        for e in &self.executors {
            e.shutdown().await;
        }
        r
    }

    /// The function registry.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// The job store.
    pub fn job_store(&self) -> &Arc<dyn JobStore> {
        &self.store
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &Arc<dyn Scheduler> {
        &self.scheduler
    }
}

/// Finished job records deleted per [`JobStore::expire_finished`] call of the expiry
/// sweep.
pub const EXPIRY_BATCH: usize = 1000;

async fn expire_jobs(store: &dyn JobStore, retention: Duration) -> Result<u64> {
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    let cutoff = crate::types::now_ms().saturating_sub(retention_ms);
    let mut total = 0;
    loop {
        let n = store.expire_finished(cutoff, EXPIRY_BATCH).await?;
        total += n;
        if (n as usize) < EXPIRY_BATCH {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// Turns a finished job into its output or its error.
pub fn job_output(job: Job) -> Result<Output> {
    match (job.output, job.error) {
        (Some(value), None) => Ok(Output {
            value,
            logs: job.logs,
        }),
        (_, Some(err)) => Err(err.into()),
        (None, None) => Err(Error::Internal(format!(
            "job {} ended as {} without output or error",
            job.id,
            job.status.as_str()
        ))),
    }
}
