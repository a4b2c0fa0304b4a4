//! The `Dispatcher`: this node's executors by backend name, and the artifact store
//! that makes a user function's artifact present here before its first call.

use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use crate::artifacts::ArtifactStore;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::executor::{Executor, PoolStats};
use crate::executor::{Invocation, Target};
use crate::registry::{Artifact, FunctionVersion};
use crate::types::{truncate_for_message, Output};

/// The backend name of the built-in functions.
pub const BUILTIN_BACKEND: &str = "builtin";

/// An artifact this node fetched, and the version it was fetched for (so retiring the
/// version forgets it).
#[derive(Debug)]
struct Fetched {
    local: Artifact,
    function_id: String,
    version: u32,
}

/// Runs a routed job on this node: finds the executor of the route's backend and,
/// for a user function whose artifact carries a digest, has the [`ArtifactStore`]
/// fetch that artifact the first time this node runs it. Fetched digests are
/// remembered in memory, so later calls do no I/O; a built-in call takes no lock.
#[derive(Debug)]
pub struct Dispatcher {
    /// Few entries (one per backend): a scan beats hashing the name.
    executors: Vec<(Arc<str>, Arc<dyn Executor>)>,
    artifacts: Arc<dyn ArtifactStore>,
    fetched: RwLock<FxHashMap<Digest, Fetched>>,
    /// Held while fetching, so two first calls of one artifact fetch it once.
    fetching: tokio::sync::Mutex<()>,
}

impl Dispatcher {
    /// A dispatcher over `executors` (backend name, executor; a name given twice keeps
    /// the first) and the store artifacts are fetched from.
    pub fn new(
        executors: Vec<(String, Arc<dyn Executor>)>,
        artifacts: Arc<dyn ArtifactStore>,
    ) -> Self {
        let mut table: Vec<(Arc<str>, Arc<dyn Executor>)> = Vec::with_capacity(executors.len());
        for (name, exec) in executors {
            if !table.iter().any(|(n, _)| **n == *name) {
                table.push((Arc::from(name), exec));
            }
        }
        Dispatcher {
            executors: table,
            artifacts,
            fetched: RwLock::new(FxHashMap::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether this node runs the backend `name`.
    pub fn has(&self, name: &str) -> bool {
        self.executor(name).is_some()
    }

    /// The backends this node runs, in the order given.
    pub fn names(&self) -> Vec<&str> {
        self.executors.iter().map(|(n, _)| &**n).collect()
    }

    /// The executor of the backend `name` on this node.
    pub fn executor(&self, name: &str) -> Option<&Arc<dyn Executor>> {
        self.executors
            .iter()
            .find(|(n, _)| **n == *name)
            .map(|(_, e)| e)
    }

    /// The artifact store.
    pub fn artifacts(&self) -> &Arc<dyn ArtifactStore> {
        &self.artifacts
    }

    fn require(&self, backend: &str) -> Result<&Arc<dyn Executor>> {
        self.executor(backend).ok_or_else(|| {
            Error::Unavailable(format!(
                "the '{}' backend is not on this node (it runs: {})",
                truncate_for_message(backend),
                self.names().join(", ")
            ))
        })
    }

    /// Runs `invocation` in the executor of `backend`, fetching its artifact first if
    /// this node has not yet. A backend this node does not run is `unavailable`.
    ///
    /// The future is the executor's own unless the artifact has a digest (then one more
    /// box around it), so a built-in call costs what calling its executor costs plus
    /// the scan of the names.
    pub fn invoke<'a>(
        &'a self,
        backend: &str,
        invocation: Invocation,
    ) -> BoxFuture<'a, Result<Output>> {
        let exec = match self.require(backend) {
            Ok(exec) => exec,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        match &invocation.target {
            Target::User(v) if has_digest(v) => Box::pin(self.invoke_fetched(exec, invocation)),
            _ => exec.invoke(invocation),
        }
    }

    /// Runs a user invocation whose artifact has a digest, from this node's copy.
    async fn invoke_fetched(
        &self,
        exec: &Arc<dyn Executor>,
        mut invocation: Invocation,
    ) -> Result<Output> {
        if let Target::User(v) = &invocation.target {
            if let Some(local) = self.local_version(v).await? {
                invocation.target = Target::User(local);
            }
        }
        exec.invoke(invocation).await
    }

    /// Warms an instance of a ready version in the executor of `backend` (fetching its
    /// artifact first).
    pub async fn prepare(&self, backend: &str, version: &FunctionVersion) -> Result<()> {
        let exec = self.require(backend)?;
        match self.local_version(version).await? {
            Some(local) => exec.prepare(&local).await,
            None => exec.prepare(version).await,
        }
    }

    /// Stops every instance of a deleted function in every executor of this node and
    /// forgets the artifacts fetched for it. Every executor is asked; the first error
    /// is returned.
    pub async fn retire(&self, function_id: &str) -> Result<()> {
        self.fetched
            .write()
            .retain(|_, f| f.function_id != function_id);
        let mut first = Ok(());
        for exec in self.unique_executors() {
            if let Err(e) = exec.retire(function_id).await {
                tracing::warn!(function_id, executor = exec.name(), error = %e,
                    "could not retire the instances of a deleted function");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Stops the instances of one version in every executor of this node and forgets
    /// the artifact fetched for it.
    pub async fn retire_version(&self, function_id: &str, version: u32) -> Result<()> {
        self.fetched
            .write()
            .retain(|_, f| !(f.function_id == function_id && f.version == version));
        let mut first = Ok(());
        for exec in self.unique_executors() {
            if let Err(e) = exec.retire_version(function_id, version).await {
                tracing::warn!(function_id, version, executor = exec.name(), error = %e,
                    "could not stop the instances of a retired version");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// The warm pools of every executor of this node.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        self.unique_executors()
            .flat_map(|e| e.pool_stats())
            .collect()
    }

    /// Stops every executor of this node (each once).
    pub async fn shutdown(&self) {
        for exec in self.unique_executors() {
            exec.shutdown().await;
        }
    }

    /// Each executor once (one may be registered under several names).
    fn unique_executors(&self) -> impl Iterator<Item = &Arc<dyn Executor>> {
        self.executors
            .iter()
            .enumerate()
            .filter(|(i, (_, e))| !self.executors[..*i].iter().any(|(_, x)| Arc::ptr_eq(x, e)))
            .map(|(_, (_, e))| e)
    }

    /// The version as this node runs it: `None` when its artifact needs nothing (no
    /// digest, or already fetched to the same place), else a copy pointing at this
    /// node's local artifact.
    async fn local_version(&self, v: &FunctionVersion) -> Result<Option<Arc<FunctionVersion>>> {
        let Some(
            artifact @ Artifact::Directory {
                digest: Some(digest),
                ..
            },
        ) = &v.artifact
        else {
            return Ok(None);
        };
        if let Some(f) = self.fetched.read().get(digest) {
            if still_here(&f.local) {
                return Ok(Self::as_run_here(v, artifact, &f.local));
            }
        }
        let _one = self.fetching.lock().await;
        if let Some(f) = self.fetched.read().get(digest) {
            if still_here(&f.local) {
                return Ok(Self::as_run_here(v, artifact, &f.local));
            }
        }
        let local = self.artifacts.fetch(artifact).await?;
        let here = Self::as_run_here(v, artifact, &local);
        self.fetched.write().insert(
            digest.clone(),
            Fetched {
                local,
                function_id: v.function_id.clone(),
                version: v.version,
            },
        );
        Ok(here)
    }

    /// `None` when `local` is the recorded artifact itself, else a copy of `v` that
    /// points at `local`.
    fn as_run_here(
        v: &FunctionVersion,
        recorded: &Artifact,
        local: &Artifact,
    ) -> Option<Arc<FunctionVersion>> {
        (local != recorded).then(|| {
            Arc::new(FunctionVersion {
                artifact: Some(local.clone()),
                ..v.clone()
            })
        })
    }
}

/// Whether a version's artifact is named by a digest (so a node fetches it).
fn has_digest(v: &FunctionVersion) -> bool {
    matches!(
        v.artifact,
        Some(Artifact::Directory {
            digest: Some(_),
            ..
        })
    )
}

/// Whether a fetched artifact's local copy is still on disk: a store's cache may evict a
/// copy this node fetched earlier (by size), and the next call then fetches it again
/// instead of handing an executor a path that is gone. One `stat` per user-function call.
fn still_here(local: &Artifact) -> bool {
    match local {
        Artifact::Directory { path, .. } => std::path::Path::new(path).exists(),
        Artifact::Image { .. } => true,
    }
}
