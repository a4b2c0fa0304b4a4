//! `PlatformBuilder`: the settings of a [`Platform`] (stores, backends, rules,
//! quotas, scheduler) and how `build` wires them together.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::artifacts::{ArtifactStore, InPlaceArtifactStore};
use crate::builder::Builder;
use crate::builds::Builds;
use crate::dispatch::{Dispatcher, BUILTIN_BACKEND};
use crate::error::{Error, Result};
use crate::executor::{Executor, FunctionInfo};
use crate::jobstore::{JobStore, MemoryJobStore};
use crate::platform::Platform;
use crate::policy::{ExecutorPolicy, Isolation, UploadQuotas};
use crate::registry::{MemoryRegistry, Registry};
use crate::router::StandardRouter;
use crate::sandboxes::{Sandbox, Sandboxes};
use crate::scheduler::{LocalScheduler, LocalSchedulerConfig, Router, Scheduler};
use crate::types::{Limits, Runtime};
use crate::upload::{default_limit_caps, Uploads};

/// What a scheduler is made from: the platform's router, this node's dispatcher, the
/// job store and the build runner (see [`PlatformBuilder::with_scheduler`]).
#[derive(Debug, Clone)]
pub struct SchedulerParts {
    /// Resolves function references into routes.
    pub router: Arc<dyn Router>,
    /// Runs routed jobs on this node.
    pub dispatcher: Arc<Dispatcher>,
    /// Where job records go.
    pub store: Arc<dyn JobStore>,
    /// Runs builds on this node.
    pub builds: Arc<Builds>,
}

/// Builds a [`Platform`]. Nothing is started or connected until [`build`](Self::build).
#[derive(Debug, Default)]
pub struct PlatformBuilder {
    builtins: Option<Arc<dyn Executor>>,
    builtin_timeout: Option<Duration>,
    registry: Option<Arc<dyn Registry>>,
    store: Option<Arc<dyn JobStore>>,
    artifacts: Option<Arc<dyn ArtifactStore>>,
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

type MakeScheduler = Box<dyn FnOnce(SchedulerParts) -> Arc<dyn Scheduler> + Send>;

/// A custom scheduler's constructor.
struct SchedulerFactory(MakeScheduler);

impl std::fmt::Debug for SchedulerFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchedulerFactory")
    }
}

impl Platform {
    /// Starts a [`PlatformBuilder`] (defined here, beside the builder, so the platform's
    /// own module does not name it).
    pub fn builder() -> PlatformBuilder {
        PlatformBuilder::new()
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
                executor: Some(executor),
                builder: Some(builder),
            },
        );
        self
    }

    /// Declares a backend this node routes to but does not run (a gateway's view of
    /// its workers' backends): uploads may choose it by the same rules as a local one,
    /// and its jobs and builds go to the scheduler's queue for a node that runs it.
    /// A backend also registered here with an executor stays local (routable and
    /// runnable); `isolation` is what the [`ExecutorPolicy`] compares.
    pub fn with_remote_backend(mut self, name: impl Into<String>, isolation: Isolation) -> Self {
        let name = name.into();
        self.isolation.entry(name.clone()).or_insert(isolation);
        self.sandboxes.entry(name).or_insert(Sandbox {
            executor: None,
            builder: None,
        });
        self
    }

    /// Where built artifacts are kept (default: [`InPlaceArtifactStore`], which leaves
    /// a build's directory where its builder put it, for one node).
    pub fn with_artifact_store(mut self, store: Arc<dyn ArtifactStore>) -> Self {
        self.artifacts = Some(store);
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
        match self.sandboxes.get_mut(&name) {
            Some(Sandbox {
                executor: Some(known),
                ..
            }) if !Arc::ptr_eq(known, &executor) => {
                self.clashes.push(name.clone());
            }
            Some(Sandbox {
                executor: Some(_), ..
            }) => {}
            Some(remote) => remote.executor = Some(executor),
            None => {
                self.sandboxes.insert(
                    name.clone(),
                    Sandbox {
                        executor: Some(executor),
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

    /// Uses another scheduler, made from the platform's parts (router, dispatcher,
    /// job store, build runner).
    pub fn with_scheduler(
        mut self,
        make: impl FnOnce(SchedulerParts) -> Arc<dyn Scheduler> + Send + 'static,
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
        let mut executors: Vec<(String, Arc<dyn Executor>)> = Vec::new();
        if let Some(b) = &self.builtins {
            executors.push((BUILTIN_BACKEND.to_string(), b.clone()));
        }
        for (name, exec) in sandboxes.local_executors() {
            executors.push((name.to_string(), exec.clone()));
        }
        let artifacts = self
            .artifacts
            .unwrap_or_else(|| Arc::new(InPlaceArtifactStore));
        let dispatcher = Arc::new(Dispatcher::new(executors, artifacts.clone()));
        let build_capacity = self.max_concurrent_builds.unwrap_or(2);
        let builds = Arc::new(Builds::new(
            registry.clone(),
            sandboxes.clone(),
            dispatcher.clone(),
            artifacts,
            build_capacity,
            quotas.max_artifact_bytes_per_tenant,
            quotas.versions_kept,
        ));
        let uploads = Arc::new(Uploads::new(
            self.limit_caps.unwrap_or_else(default_limit_caps),
            build_capacity,
            quotas,
        ));
        let router: Arc<dyn Router> = Arc::new(StandardRouter::new(
            self.builtins.as_ref().map(|_| Arc::from(BUILTIN_BACKEND)),
            builtin_names,
            self.builtin_timeout.unwrap_or(Duration::from_secs(30)),
            registry.clone(),
            sandboxes.clone(),
        ));
        let scheduler = match self.scheduler {
            Some(SchedulerFactory(make)) => make(SchedulerParts {
                router: router.clone(),
                dispatcher: dispatcher.clone(),
                store: store.clone(),
                builds: builds.clone(),
            }),
            None => Arc::new(LocalScheduler::new(
                self.scheduler_config,
                router.clone(),
                dispatcher.clone(),
                store.clone(),
            )),
        };
        builds.set_scheduler(&scheduler);
        Ok(Platform {
            registry,
            store,
            scheduler,
            catalog,
            dispatcher,
            builds,
            sandboxes,
            uploads,
            started: Instant::now(),
        })
    }
}
