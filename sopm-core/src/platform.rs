//! The `Platform`: the one object a user holds. It exposes listing, execution,
//! status and stats, and the life of user functions: upload (checked, recorded, built
//! here or handed to the scheduler's queue), lookup, deletion (retired here and, through
//! the scheduler, everywhere), and recovery of builds a stopped process left.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::builder::BuildRequest;
use crate::builder::Source;
use crate::builds::Builds;
use crate::dispatch::Dispatcher;
use crate::error::{Error, Result};
use crate::executor::{FunctionInfo, PoolStats};
use crate::jobstore::{JobLogEntry, JobStore};
use crate::registry::{BuildStatus, FunctionRecord, FunctionVersion, NewVersion, Registry};
use crate::sandboxes::Sandboxes;
use crate::scheduler::{JobRequest, RecoveryReport, Scheduler, SubmitMode, Submitted};
use crate::stats::{ClusterStats, SchedulerStats};
use crate::types::{
    truncate_for_message, FunctionRef, Job, JobId, Limits, Output, Runtime, TenantId,
};
use crate::upload::{source_digest, UploadSpec, Uploads};

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
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) store: Arc<dyn JobStore>,
    pub(crate) scheduler: Arc<dyn Scheduler>,
    pub(crate) catalog: Arc<[FunctionInfo]>,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) builds: Arc<Builds>,
    pub(crate) sandboxes: Arc<Sandboxes>,
    pub(crate) uploads: Arc<Uploads>,
    pub(crate) started: Instant,
}

impl Platform {
    /// The built-in functions.
    pub fn list_functions(&self) -> &[FunctionInfo] {
        &self.catalog
    }

    /// Runs a function and waits for its output, through [`Scheduler::call`]: the
    /// local scheduler keeps no record of a built-in's call (the caller never sees an
    /// id and nothing lists built-in jobs) beyond its stats, while a user function's
    /// call is a job (it shows in the function's recent logs). Use
    /// [`submit`](Self::submit) for a job whose id you want.
    pub async fn execute(
        &self,
        tenant: &TenantId,
        function: FunctionRef,
        input: Value,
    ) -> Result<Output> {
        self.scheduler
            .call(JobRequest::new(tenant.clone(), function, input))
            .await
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

    /// Current figures of this node.
    pub fn stats(&self) -> PlatformStats {
        PlatformStats {
            uptime_s: self.started.elapsed().as_secs_f64(),
            jobs: self.scheduler.stats(),
            pools: self.dispatcher.pool_stats(),
        }
    }

    /// The figures of every node, when the scheduler spans several (`None` for one
    /// node: [`stats`](Self::stats) says it all).
    pub async fn cluster_stats(&self) -> Result<Option<ClusterStats>> {
        self.scheduler.cluster_stats().await
    }

    /// Recovers what a previous process left unfinished (call once at start-up):
    /// builds that were running become `failed` ([`recover_builds`](Self::recover_builds))
    /// unless the scheduler queues builds (its leases hand them over instead), then the
    /// scheduler recovers jobs.
    pub async fn recover(&self) -> Result<RecoveryReport> {
        if !self.scheduler.queues_builds() {
            self.recover_builds().await?;
        }
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
    /// and answers it at once; the build runs in the background (a few at a time, see
    /// [`Builds::run`]) and ends `ready` or `failed` with its log in the registry. When
    /// the scheduler [queues builds](Scheduler::queues_builds) the build is handed to it
    /// instead (the node that takes it needs the builder; this one needs none), and a
    /// hand-over that fails fails the version and is returned.
    ///
    /// The version's executor backend is chosen here and recorded on it: the one the
    /// spec asks for, else the operator's rule for the function's name
    /// ([`PlatformBuilder::with_function_executor`](crate::PlatformBuilder::with_function_executor)), else the runtime's default. That
    /// backend's builder builds it and its executor runs it from then on, whatever the
    /// defaults become. Asking for a backend that is not registered is
    /// `invalid_input`, with the names that are; asking for one the
    /// [`ExecutorPolicy`](crate::policy::ExecutorPolicy) does not allow this tenant is `forbidden`
    /// (`executor_not_allowed`), with the names it allows.
    ///
    /// The tenant's [`UploadQuotas`](crate::policy::UploadQuotas) are checked before anything is stored: builds in
    /// flight (`quota_exceeded`, with a retry delay), builds waiting server-wide
    /// (`overloaded`; for queued builds, the registry's unfinished builds of every
    /// node), artifact bytes and, for a new name, functions (`quota_exceeded`,
    /// standing). When the build ends, versions past `versions_kept` are pruned.
    pub async fn upload(
        &self,
        tenant: &TenantId,
        spec: UploadSpec,
        source: Source,
    ) -> Result<FunctionVersion> {
        self.uploads.check(&spec, &source)?;
        let sandboxes = &self.sandboxes;
        let chosen = sandboxes.choose(tenant, &spec)?;
        let queued = self.scheduler.queues_builds();
        // A queued build is checked for a builder by the node that takes it.
        if !queued && sandboxes.builder(spec.runtime, chosen).is_none() {
            return Err(Error::Unavailable(match chosen {
                Some(name) => format!(
                    "no builder is configured for the {} runtime in the '{name}' executor",
                    spec.runtime.as_str()
                ),
                None => format!(
                    "no builder is configured for the {} runtime",
                    spec.runtime.as_str()
                ),
            }));
        }
        let admission = self.uploads.admission.lock().await;
        let ticket = if queued {
            self.uploads
                .admit_queued_build(self.registry.as_ref(), tenant)
                .await?;
            None
        } else {
            Some(self.uploads.admit_build(tenant)?)
        };
        self.uploads
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
        let request = BuildRequest {
            version: version.clone(),
            source,
        };
        if queued {
            if let Err(e) = self.scheduler.submit_build(request).await {
                // Nothing will build it: say so on the version rather than leave it
                // `building`.
                let (id, n) = (&version.function_id, version.version);
                let _ = self
                    .registry
                    .append_build_log(
                        id,
                        n,
                        &format!(
                            "==> the build could not be queued: {}\n",
                            e.public_message()
                        ),
                    )
                    .await;
                let _ = self
                    .registry
                    .finish_build(id, n, BuildStatus::Failed, None)
                    .await;
                return Err(e);
            }
            return Ok(version);
        }
        let builds = self.builds.clone();
        tokio::spawn(async move {
            builds.run(request).await;
            drop(ticket);
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
    /// instances on this node, tells the scheduler (which tells the other nodes), and
    /// removes its artifacts (failures there are logged, not returned).
    pub async fn delete_function(
        &self,
        tenant: &TenantId,
        id_or_name: &str,
    ) -> Result<FunctionRecord> {
        let record = self.function(tenant, id_or_name).await?;
        let removed = self.registry.delete(tenant, &record.id).await?;
        let _ = self.dispatcher.retire(&removed.id).await;
        if let Err(e) = self.scheduler.retired(&removed.id, None).await {
            tracing::warn!(function_id = %removed.id, error = %e,
                "could not tell other nodes about a deleted function");
        }
        self.builds
            .remove_artifacts(&removed.versions, "the artifact of a deleted function")
            .await;
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
        self.sandboxes.by_runtime.get(&runtime).map(String::as_str)
    }

    /// The name of the builder of user functions of `runtime` in its default backend,
    /// if one is configured.
    pub fn builder_for(&self, runtime: Runtime) -> Option<&str> {
        self.sandboxes
            .builder(runtime, self.executor_for(runtime))
            .map(|b| b.name())
    }

    /// The name of the executor backend a version runs in: the one recorded on it at
    /// upload, else (a version recorded without one) its runtime's default. The name
    /// may be one this platform does not configure (see
    /// [`has_executor`](Self::has_executor)).
    pub fn executor_of<'a>(&'a self, version: &'a FunctionVersion) -> Option<&'a str> {
        self.sandboxes.name_of(version)
    }

    /// The name of the builder that builds (and removes) a version's artifact.
    pub fn builder_of(&self, version: &FunctionVersion) -> Option<&str> {
        self.builds.builder_of(version).map(|b| b.name())
    }

    /// Whether an executor backend is registered under `name` (run here or, for a
    /// remote backend, on other nodes).
    pub fn has_executor(&self, name: &str) -> bool {
        self.sandboxes.named.contains_key(name)
    }

    /// The names of the registered executor backends (local and remote), sorted.
    pub fn executor_names(&self) -> Vec<&str> {
        self.sandboxes.named.keys().map(String::as_str).collect()
    }

    /// The operator's caps on upload limits.
    pub fn limit_caps(&self) -> &Limits {
        &self.uploads.caps
    }

    /// Stops accepting jobs, finishes or records what is in flight, stops executors.
    pub async fn shutdown(&self, grace: Duration) -> Result<()> {
        let r = self.scheduler.shutdown(grace).await;
        self.dispatcher.shutdown().await;
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

    /// This node's executors by backend name, and the artifact store.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// This node's build runner (a worker runs queued builds with it).
    pub fn builds(&self) -> &Arc<Builds> {
        &self.builds
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
