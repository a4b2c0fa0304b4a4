//! `Builds`: runs one build on this node — the builder of the version's backend, its
//! log streamed to the registry, the artifact put in the artifact store and charged to
//! the tenant, an instance warmed, the version recorded `ready` or `failed` — and the
//! retention that prunes old versions afterwards.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use tokio::sync::Semaphore;

use crate::artifacts::ArtifactStore;
use crate::builder::{BuildLog, BuildRequest, Builder, Source};
use crate::dispatch::Dispatcher;
use crate::error::{Error, Result};
use crate::policy::directory_bytes;
use crate::registry::{append_capped, Artifact, BuildStatus, FunctionVersion, Registry};
use crate::sandboxes::Sandboxes;
use crate::scheduler::Scheduler;
use crate::types::TenantId;

/// How often a running build's log reaches the registry.
const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// A build log buffer this large is written at once.
const LOG_FLUSH_BYTES: usize = 16 * 1024;

/// Runs builds on this node (the uploading process, or a worker that took a queued
/// build). Made by the [`PlatformBuilder`](crate::PlatformBuilder); a custom
/// scheduler receives it in [`SchedulerParts`](crate::SchedulerParts).
#[derive(Debug)]
pub struct Builds {
    registry: Arc<dyn Registry>,
    sandboxes: Arc<Sandboxes>,
    dispatcher: Arc<Dispatcher>,
    artifacts: Arc<dyn ArtifactStore>,
    slots: Arc<Semaphore>,
    max_artifact_bytes: u64,
    versions_kept: u32,
    /// Told about versions that retention pruned (set once the scheduler exists).
    scheduler: OnceLock<Weak<dyn Scheduler>>,
}

impl Builds {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        registry: Arc<dyn Registry>,
        sandboxes: Arc<Sandboxes>,
        dispatcher: Arc<Dispatcher>,
        artifacts: Arc<dyn ArtifactStore>,
        slots: usize,
        max_artifact_bytes: u64,
        versions_kept: u32,
    ) -> Self {
        Builds {
            registry,
            sandboxes,
            dispatcher,
            artifacts,
            slots: Arc::new(Semaphore::new(slots)),
            max_artifact_bytes,
            versions_kept,
            scheduler: OnceLock::new(),
        }
    }

    pub(crate) fn set_scheduler(&self, scheduler: &Arc<dyn Scheduler>) {
        let _ = self.scheduler.set(Arc::downgrade(scheduler));
    }

    /// Whether this node can build `version` (it has the builder of the version's
    /// backend, or of its runtime).
    pub fn can_build(&self, version: &FunctionVersion) -> bool {
        self.builder_of(version).is_some()
    }

    /// The builder that builds (and removes) a version's artifact on this node.
    pub(crate) fn builder_of(&self, version: &FunctionVersion) -> Option<&Arc<dyn Builder>> {
        self.sandboxes
            .builder(version.runtime, self.sandboxes.name_of(version))
    }

    /// Runs one build and records how it ended; then prunes the function's versions
    /// past the kept count. Waits for one of this node's build slots first (saying so
    /// in the log). A panicking builder, a missing builder, a store that refuses the
    /// artifact, or an artifact that would take its tenant past its artifact bytes all
    /// end as `failed`, with the reason at the end of the log.
    pub async fn run(&self, request: BuildRequest) -> BuildStatus {
        let BuildRequest { version, source } = request;
        let slots = self.slots.clone();
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => Some(s),
            Err(_) => {
                let _ = self
                    .registry
                    .append_build_log(
                        &version.function_id,
                        version.version,
                        "==> waiting for a build slot\n",
                    )
                    .await;
                slots.acquire_owned().await.ok()
            }
        };
        let status = self.build(&version, source).await;
        drop(slot);
        self.prune(&version.tenant, &version.function_id).await;
        tracing::info!(
            function_id = %version.function_id,
            name = %version.name,
            version = version.version,
            status = status.as_str(),
            "build finished"
        );
        status
    }

    /// Builds one version and records the outcome (see [`run`](Self::run)).
    async fn build(&self, version: &FunctionVersion, source: Source) -> BuildStatus {
        let log = RegistryBuildLog::new(self.registry.clone(), version);
        let (id, n) = (version.function_id.as_str(), version.version);
        let Some(builder) = self.builder_of(version).cloned() else {
            let e = Error::Unavailable(format!(
                "no builder is configured on this node for the {} runtime in the '{}' executor",
                version.runtime.as_str(),
                self.sandboxes.name_of(version).unwrap_or("default")
            ));
            return self.fail(version, &log, e).await;
        };
        let outcome = {
            let build = AssertUnwindSafe(builder.build(version, &source, &log)).catch_unwind();
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
        let built = outcome.unwrap_or_else(|_| {
            Err(Error::Internal(format!(
                "the {} builder panicked",
                builder.name()
            )))
        });
        let built = match built {
            Ok(artifact) => artifact,
            Err(e) => return self.fail(version, &log, e).await,
        };
        let artifact = match self.store(&builder, built).await {
            Ok(artifact) => artifact,
            Err(e) => return self.fail(version, &log, e).await,
        };
        if let Err(e) = charge_artifact(
            self.registry.as_ref(),
            version,
            &artifact,
            self.max_artifact_bytes,
        )
        .await
        {
            self.remove_artifact(
                &artifact,
                Some(&builder),
                id,
                n,
                "an artifact over the tenant's quota",
            )
            .await;
            return self.fail(version, &log, e).await;
        }
        log.flush().await;
        let backend = self.sandboxes.name_of(version).unwrap_or_default();
        if self.dispatcher.has(backend) {
            // Warm an instance before the version is announced ready, so that its
            // first call finds one instead of racing the warm-up.
            let ready = FunctionVersion {
                status: BuildStatus::Ready,
                artifact: Some(artifact.clone()),
                ..version.clone()
            };
            if let Err(e) = self.dispatcher.prepare(backend, &ready).await {
                tracing::warn!(function_id = %id, version = n, executor = backend, error = %e,
                    "could not warm an instance for a new version");
            }
        }
        match self
            .registry
            .finish_build(id, n, BuildStatus::Ready, Some(artifact.clone()))
            .await
        {
            Ok(()) => BuildStatus::Ready,
            Err(e) => {
                // Deleted while building, or storage trouble: the artifact and its warm
                // instance have no owner. A version left `building` is failed at the
                // next start.
                if !matches!(e, Error::NotFound(_)) {
                    tracing::error!(function_id = %id, version = n, error = %e,
                        "could not record a finished build");
                }
                if let Err(e) = self.dispatcher.retire_version(id, n).await {
                    tracing::warn!(function_id = %id, error = %e, "could not retire a warm instance");
                }
                self.remove_artifact(&artifact, Some(&builder), id, n, "an orphaned artifact")
                    .await;
                BuildStatus::Failed
            }
        }
    }

    /// Puts a built directory in the artifact store (which names it by digest); an
    /// image is kept as it is. The builder's directory is removed if the store refuses
    /// it.
    async fn store(&self, builder: &Arc<dyn Builder>, built: Artifact) -> Result<Artifact> {
        let Artifact::Directory { path, .. } = &built else {
            return Ok(built);
        };
        match self.artifacts.put_directory(Path::new(path)).await {
            Ok(stored) => Ok(stored),
            Err(e) => {
                if let Err(e) = builder.remove(&built).await {
                    tracing::warn!(error = %e, "could not remove a build the artifact store refused");
                }
                Err(e)
            }
        }
    }

    /// Records a failed build: the error at the end of its log, the version `failed`.
    async fn fail(
        &self,
        version: &FunctionVersion,
        log: &RegistryBuildLog,
        e: Error,
    ) -> BuildStatus {
        let (id, n) = (version.function_id.as_str(), version.version);
        if matches!(e, Error::Internal(_) | Error::Storage(_)) {
            tracing::error!(function_id = %id, version = n, error = %e, "build failed inside SOPM");
        }
        let message = e.public_message();
        let first = message.lines().next().unwrap_or_default();
        if !log.recently_said(first) {
            log.append(&format!("==> build failed: {message}\n")).await;
        }
        log.flush().await;
        if let Err(e) = self
            .registry
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

    /// Removes an artifact whose version is gone: a directory through the artifact
    /// store (and its builder when the store leaves directories where they were
    /// built), an image through its builder. Failures are logged as "could not remove
    /// `what`".
    pub(crate) async fn remove_artifact(
        &self,
        artifact: &Artifact,
        builder: Option<&Arc<dyn Builder>>,
        function_id: &str,
        version: u32,
        what: &str,
    ) {
        let through_builder = match artifact {
            Artifact::Directory { .. } => {
                if let Err(e) = self.artifacts.remove(artifact).await {
                    tracing::warn!(function_id, version, error = %e, "could not remove {what}");
                }
                self.artifacts.leaves_directories_to_builder()
            }
            Artifact::Image { .. } => true,
        };
        if let (true, Some(builder)) = (through_builder, builder) {
            if let Err(e) = builder.remove(artifact).await {
                tracing::warn!(function_id, version, error = %e, "could not remove {what}");
            }
        }
    }

    /// Removes the artifacts of versions that are gone (see
    /// [`remove_artifact`](Self::remove_artifact)).
    pub(crate) async fn remove_artifacts(&self, versions: &[FunctionVersion], what: &str) {
        for v in versions {
            if let Some(artifact) = &v.artifact {
                self.remove_artifact(
                    artifact,
                    self.builder_of(v),
                    &v.function_id,
                    v.version,
                    what,
                )
                .await;
            }
        }
    }

    /// Retention: prunes the oldest versions of a function past the kept count —
    /// never its newest version, its newest ready one, nor one still building — with
    /// their warm instances (here, then on other nodes through the scheduler) and
    /// artifacts. Failures are logged.
    async fn prune(&self, tenant: &TenantId, id: &str) {
        let registry = self.registry.as_ref();
        let kept = self.versions_kept;
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
        let scheduler = self.scheduler.get().and_then(Weak::upgrade);
        for n in doomed {
            let v = match registry.delete_version(tenant, id, n).await {
                Ok(v) => v,
                Err(Error::NotFound(_)) | Err(Error::Conflict(_)) => continue,
                Err(e) => {
                    tracing::warn!(function_id = %id, version = n, error = %e, "could not prune a version");
                    continue;
                }
            };
            let _ = self.dispatcher.retire_version(id, n).await;
            if let Some(s) = &scheduler {
                if let Err(e) = s.retired(id, Some(n)).await {
                    tracing::warn!(function_id = %id, version = n, error = %e,
                        "could not tell other nodes about a pruned version");
                }
            }
            self.remove_artifacts(std::slice::from_ref(&v), "the artifact of a pruned version")
                .await;
            tracing::info!(function_id = %id, version = n, "pruned a version past the kept count");
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
