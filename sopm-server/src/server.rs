//! Builds one node's services from the settings: the platform (stores, built-ins,
//! sandboxes and routing rules) and the API keys. Serving them is `serve.rs`.

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "process")]
use sopm_backends::backends::{self, Backend, BackendContext, DEFAULT_BACKEND};
use sopm_core::{
    CachedKeyStore, JobStore, KeyStore, LocalSchedulerConfig, MemoryKeyStore, Platform, Registry,
    Runtime,
};
use sopm_functions::BuiltinExecutor;

use crate::config::{ServerConfig, Storage};
use crate::readiness::ReadinessCheck;

/// What the server runs on: the platform, and the API keys.
#[derive(Debug)]
pub struct Services {
    /// The platform.
    pub platform: Platform,
    /// The API keys (in the database with SQLite storage, in Redis on a cluster node).
    pub keys: Arc<dyn KeyStore>,
    #[cfg(feature = "process")]
    pub(crate) local_builder: Option<Arc<sopm_backends::LocalBuilder>>,
    /// The sandbox backends whose stem cells boot at start-up.
    #[cfg(feature = "process")]
    pub(crate) early: Vec<Backend>,
    /// What `/readyz` asks besides start-up (a cluster node: whether Redis answers).
    pub(crate) readiness: Option<ReadinessCheck>,
}

/// The runtimes whose uploads are built into directory artifacts on this machine.
pub const LOCAL_RUNTIMES: [Runtime; 4] = [
    Runtime::Python,
    Runtime::Node,
    Runtime::Shell,
    Runtime::Binary,
];

/// Registers the sandbox backends this build and host offer, each runtime's default
/// (`[executors]`, else `process`) and the rules by function name
/// (`[executors.functions]`). Returns the starters of the backends the settings use,
/// whose stem cells boot at start-up; the others start on first use.
#[cfg(feature = "process")]
pub(crate) fn add_sandboxes(
    c: &ServerConfig,
    mut builder: sopm_core::PlatformBuilder,
    local: &Arc<sopm_backends::LocalBuilder>,
) -> Result<(sopm_core::PlatformBuilder, Vec<Backend>), String> {
    let settings = &c.executors;
    let context = BackendContext {
        data_dir: c.data_dir.clone(),
        local_builder: local.clone(),
    };
    let mut early = Vec::new();
    let mut offered = Vec::new();
    for entry in backends::backends() {
        let used = entry.name == DEFAULT_BACKEND || settings.names(entry.name);
        if let Some(backend) = (entry.make)(&context, used).map_err(|e| e.to_string())? {
            builder = builder.with_sandbox(
                backend.name,
                backend.executor.clone(),
                backend.builder.clone(),
            );
            offered.push(entry.name);
            if used {
                early.push(backend);
            }
        }
    }
    let builder = add_routing_rules(c, builder, &offered)?;
    Ok((builder, early))
}

/// Routes each runtime to its backend (`[executors]`, else `process`) and functions by
/// name (`[executors.functions]`), refusing a backend not among `offered`.
#[cfg(any(feature = "process", feature = "cluster"))]
pub(crate) fn add_routing_rules(
    c: &ServerConfig,
    mut builder: sopm_core::PlatformBuilder,
    offered: &[&str],
) -> Result<sopm_core::PlatformBuilder, String> {
    let settings = &c.executors;
    let check = |key: String, executor: &str| {
        if offered.contains(&executor) {
            Ok(())
        } else {
            Err(format!(
                "executors.{key}: '{executor}' is not available in this build"
            ))
        }
    };
    for runtime in LOCAL_RUNTIMES {
        let name = settings
            .runtimes
            .get(runtime.as_str())
            .map(String::as_str)
            .unwrap_or(sopm_backends::backends::DEFAULT_BACKEND);
        check(runtime.as_str().to_string(), name)?;
        builder = builder.with_runtime_executor(runtime, name);
    }
    for (function, name) in &settings.functions {
        check(format!("functions.{function}"), name)?;
        builder = builder.with_function_executor(function, name);
    }
    Ok(builder)
}

/// Builds the platform the settings describe (opens the database).
pub fn build_platform(c: &ServerConfig) -> Result<Platform, String> {
    build_services(c).map(|s| s.platform)
}

/// The platform's settings every node shares, whatever its stores and backends: the
/// built-ins, the scheduler's limits, the upload policy and quotas.
pub(crate) fn base_builder(c: &ServerConfig) -> Result<sopm_core::PlatformBuilder, String> {
    let mut builder = Platform::builder()
        .with_builtins(Arc::new(BuiltinExecutor::new()))
        .with_builtin_timeout(Duration::from_millis(c.builtin_timeout_ms))
        .with_scheduler_config(LocalSchedulerConfig {
            max_concurrency: c.max_concurrency,
            queue_capacity: c.queue_capacity,
            max_timeout: Duration::from_millis(c.max_timeout_ms),
            retry_after: Duration::from_secs(1),
            max_running_per_tenant: c.jobs.max_running_per_tenant,
            max_queued_per_tenant: c.jobs.max_queued_per_tenant,
        })
        .with_executor_policy(c.policy.executor_policy()?)
        .with_upload_quotas(c.uploads.clone());
    if std::env::var("SOPM_DOCKER_RUNTIME").is_ok_and(|r| r == "runsc") {
        // The `docker` backend's containers run under gVisor too.
        builder = builder.with_isolation("docker", sopm_core::policy::Isolation::UserSpaceKernel);
    }
    #[cfg(feature = "kubernetes")]
    if std::env::var("SOPM_KUBERNETES_RUNTIME_CLASS").map_or(true, |c| c.trim() == "gvisor") {
        // Function pods run under the `gvisor` RuntimeClass (handler `runsc`, as
        // deploy/kubernetes defines it); any other class is assumed to share the kernel.
        for name in ["kubernetes", "kubernetes-job"] {
            builder = builder.with_isolation(name, sopm_core::policy::Isolation::UserSpaceKernel);
        }
    }
    Ok(builder)
}

/// Builds the platform and the key store the settings describe (opens the database):
/// the embedded default, one process. A cluster node is made by
/// [`crate::cluster::build_node`].
pub fn build_services(c: &ServerConfig) -> Result<Services, String> {
    crate::data_dir::make_private(&c.data_dir)?;
    let mut builder = base_builder(c)?;
    let keys: Arc<dyn KeyStore> = match c.storage {
        Storage::Memory => Arc::new(MemoryKeyStore::new()),
        Storage::Sqlite => {
            let (registry, store, keys) = open_sqlite(c)?;
            builder = builder.with_registry(registry).with_job_store(store);
            keys
        }
    };
    #[cfg(feature = "process")]
    let (local_builder, early) = {
        let local = Arc::new(
            sopm_backends::LocalBuilderConfig::from_env(c.data_dir.join("artifacts"))
                .and_then(|config| config.build())
                .map_err(|e| format!("local builder: {e}"))?,
        );
        let (with_sandboxes, early) = add_sandboxes(c, builder, &local)?;
        builder = with_sandboxes;
        (Some(local), early)
    };
    let platform = builder.build().map_err(|e| e.to_string())?;
    let keys: Arc<dyn KeyStore> = Arc::new(CachedKeyStore::new(
        keys,
        Duration::from_millis(c.key_cache_ms),
    ));
    Ok(Services {
        platform,
        keys,
        #[cfg(feature = "process")]
        local_builder,
        #[cfg(feature = "process")]
        early,
        readiness: None,
    })
}

/// The durable stores: function registry, job store, API keys.
type Stores = (Arc<dyn Registry>, Arc<dyn JobStore>, Arc<dyn KeyStore>);

/// Opens the key store of the server's data directory (for `sopm keys`).
pub fn open_key_store(c: &ServerConfig) -> Result<Arc<dyn KeyStore>, String> {
    crate::data_dir::make_private(&c.data_dir)?;
    match c.storage {
        Storage::Memory => Err("keys need durable storage; --storage memory keeps none".into()),
        Storage::Sqlite => open_sqlite(c).map(|(_, _, keys)| keys),
    }
}

#[cfg(feature = "sqlite")]
fn open_sqlite(c: &ServerConfig) -> Result<Stores, String> {
    use sopm_backends::sqlite::{SqliteConfig, Synchronous};
    std::fs::create_dir_all(&c.data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", c.data_dir.display()))?;
    let sync = if c.sqlite_synchronous == "normal" {
        Synchronous::Normal
    } else {
        Synchronous::Full
    };
    let store = SqliteConfig::new(c.data_dir.join("sopm.db"))
        .with_synchronous(sync)
        // Job records expire through the platform's sweep (`[jobs] retention_hours`),
        // for every job store alike; the store's own sweep stays off.
        .with_job_retention(Duration::MAX)
        .open()
        .map_err(|e| format!("cannot open the database in {}: {e}", c.data_dir.display()))?;
    let store = Arc::new(store);
    Ok((store.clone(), store.clone(), store))
}

#[cfg(not(feature = "sqlite"))]
fn open_sqlite(_: &ServerConfig) -> Result<Stores, String> {
    Err("this build has no SQLite support; use --storage memory".into())
}
