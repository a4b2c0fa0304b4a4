//! The `Platform`: the one object a user holds. It wires a registry, a job store,
//! executors and a scheduler, and exposes listing, execution, status and stats.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::executor::{Executor, FunctionInfo, PoolStats};
use crate::jobstore::{JobStore, MemoryJobStore};
use crate::registry::{BuildStatus, MemoryRegistry, Registry};
use crate::scheduler::{
    JobRequest, LocalScheduler, LocalSchedulerConfig, RecoveryReport, Route, Router, Scheduler,
    SubmitMode, Submitted,
};
use crate::stats::SchedulerStats;
use crate::types::{FunctionRef, Job, JobId, Output, Runtime, Target, TenantId};

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
            started: Instant::now(),
        })
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

    /// Recovers jobs a previous process left unfinished (call once at start-up).
    pub async fn recover(&self) -> Result<RecoveryReport> {
        self.scheduler.recover().await
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
