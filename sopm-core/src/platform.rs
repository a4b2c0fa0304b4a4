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
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::builder::{BuildLog, Builder, Source};
use crate::error::{Error, Result};
use crate::executor::{Executor, FunctionInfo, PoolStats};
use crate::jobstore::{JobStore, MemoryJobStore};
use crate::registry::{
    append_capped, validate_function_name, BuildStatus, FunctionRecord, FunctionVersion,
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

/// Resolves built-ins by name and user functions through the registry, with one
/// executor per runtime.
#[derive(Debug)]
pub struct StandardRouter {
    builtin: Option<Arc<dyn Executor>>,
    builtin_names: FxHashMap<Box<str>, Arc<str>>,
    builtin_timeout: Duration,
    registry: Arc<dyn Registry>,
    executors: HashMap<Runtime, Arc<dyn Executor>>,
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
                let record = self.registry.get(tenant, id).await?;
                let v = match version {
                    Some(n) => record.version(*n).ok_or_else(|| {
                        Error::not_found(format!("function '{id}' has no version {n}"))
                    })?,
                    None => record.latest_ready().ok_or_else(|| {
                        let last = record.versions.last().map(|v| v.status);
                        Error::NotReady(match last {
                            Some(BuildStatus::Building) => {
                                format!("function '{id}' is still building")
                            }
                            _ => format!("function '{id}' has no version that built"),
                        })
                    })?,
                };
                match v.status {
                    BuildStatus::Ready => {}
                    BuildStatus::Building => {
                        return Err(Error::NotReady(format!(
                            "version {} of '{id}' is still building",
                            v.version
                        )))
                    }
                    BuildStatus::Failed => {
                        return Err(Error::NotReady(format!(
                            "version {} of '{id}' failed to build; see its build log",
                            v.version
                        )))
                    }
                }
                let exec = self.executors.get(&v.runtime).ok_or_else(|| {
                    Error::Unavailable(format!(
                        "no executor is configured for the {} runtime",
                        v.runtime.as_str()
                    ))
                })?;
                Ok(Route {
                    executor: exec.clone(),
                    timeout: Duration::from_millis(v.limits.timeout_ms),
                    function: FunctionRef::User {
                        id: id.clone(),
                        version: Some(v.version),
                    },
                    target: Target::User(Arc::new(v.clone())),
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
    executors: HashMap<Runtime, Arc<dyn Executor>>,
    builders: HashMap<Runtime, Arc<dyn Builder>>,
    limit_caps: Option<Limits>,
    max_concurrent_builds: Option<usize>,
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

    /// The executor for user functions of one runtime.
    pub fn with_executor(mut self, runtime: Runtime, executor: Arc<dyn Executor>) -> Self {
        self.executors.insert(runtime, executor);
        self
    }

    /// The builder of user functions of one runtime.
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
        if self.builders.contains_key(&Runtime::Builtin) {
            return Err(Error::invalid("built-in functions have no builder"));
        }
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
        let builtin_names = catalog
            .iter()
            .map(|f| (Box::from(f.name.as_str()), Arc::from(f.name.as_str())))
            .collect();
        let mut all_executors: Vec<Arc<dyn Executor>> = Vec::new();
        if let Some(b) = &self.builtins {
            all_executors.push(b.clone());
        }
        for e in self.executors.values() {
            if !all_executors.iter().any(|x| Arc::ptr_eq(x, e)) {
                all_executors.push(e.clone());
            }
        }
        let user = Arc::new(UserFunctions {
            builders: self.builders,
            executors: self.executors.clone(),
            caps: self.limit_caps.unwrap_or_else(default_limit_caps),
            build_slots: Arc::new(Semaphore::new(self.max_concurrent_builds.unwrap_or(2))),
        });
        let router: Arc<dyn Router> = Arc::new(StandardRouter {
            builtin: self.builtins,
            builtin_names,
            builtin_timeout: self.builtin_timeout.unwrap_or(Duration::from_secs(30)),
            registry: registry.clone(),
            executors: self.executors,
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

/// Builders, user-function executors and upload policy.
#[derive(Debug)]
struct UserFunctions {
    builders: HashMap<Runtime, Arc<dyn Builder>>,
    executors: HashMap<Runtime, Arc<dyn Executor>>,
    caps: Limits,
    build_slots: Arc<Semaphore>,
}

impl UserFunctions {
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
        if source.files.is_empty() {
            return Err(Error::invalid("the upload has no files"));
        }
        if !self.builders.contains_key(&spec.runtime) {
            return Err(Error::Unavailable(format!(
                "no builder is configured for the {} runtime",
                spec.runtime.as_str()
            )));
        }
        Ok(())
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
/// builder counts as a failed build.
async fn run_build(
    registry: Arc<dyn Registry>,
    builder: Arc<dyn Builder>,
    executor: Option<Arc<dyn Executor>>,
    version: FunctionVersion,
    source: Source,
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
    pub async fn upload(
        &self,
        tenant: &TenantId,
        spec: UploadSpec,
        source: Source,
    ) -> Result<FunctionVersion> {
        self.user.check(&spec, &source)?;
        let builder = self.user.builders[&spec.runtime].clone();
        let executor = self.user.executors.get(&spec.runtime).cloned();
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
            })
            .await?;
        let registry = self.registry.clone();
        let slots = self.user.build_slots.clone();
        let building = version.clone();
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
            let status = run_build(registry, builder, executor, building.clone(), source).await;
            drop(slot);
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
        let mut retired: Vec<&Arc<dyn Executor>> = Vec::new();
        for exec in self.user.executors.values() {
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
            let (Some(artifact), Some(builder)) = (&v.artifact, self.user.builders.get(&v.runtime))
            else {
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
    /// first.
    pub async fn recent_jobs(
        &self,
        tenant: &TenantId,
        id_or_name: &str,
        limit: usize,
    ) -> Result<Vec<Job>> {
        let record = self.function(tenant, id_or_name).await?;
        self.store.recent(tenant, &record.id, limit).await
    }

    /// The name of the executor that runs user functions of `runtime`, if one is
    /// configured.
    pub fn executor_for(&self, runtime: Runtime) -> Option<&str> {
        self.user.executors.get(&runtime).map(|e| e.name())
    }

    /// The name of the builder of user functions of `runtime`, if one is configured.
    pub fn builder_for(&self, runtime: Runtime) -> Option<&str> {
        self.user.builders.get(&runtime).map(|b| b.name())
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
