//! Runs the server: builds the platform from the settings, recovers unfinished jobs,
//! serves until SIGTERM or Ctrl-C, then shuts down gracefully.

#[cfg(feature = "process")]
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "process")]
use sopm_core::Executor;
use sopm_core::{
    CachedKeyStore, JobStore, KeyStore, LocalSchedulerConfig, MemoryKeyStore, Platform, Registry,
    Runtime,
};
use sopm_functions::BuiltinExecutor;

use crate::api::{app, ApiConfig, AppState};
use crate::config::{ServerConfig, Storage};

/// What the server runs on: the platform, and the API keys.
#[derive(Debug)]
pub struct Services {
    /// The platform.
    pub platform: Platform,
    /// The API keys (in the database with SQLite storage).
    pub keys: Arc<dyn KeyStore>,
    #[cfg(feature = "process")]
    local_builder: Option<Arc<sopm_backends::LocalBuilder>>,
    #[cfg(feature = "process")]
    process: Option<sopm_backends::ProcessExecutor>,
    #[cfg(feature = "gvisor")]
    gvisor: Option<sopm_backends::GvisorExecutor>,
}

/// The runtimes whose uploads are built into directory artifacts on this machine.
pub const LOCAL_RUNTIMES: [Runtime; 4] = [
    Runtime::Python,
    Runtime::Node,
    Runtime::Shell,
    Runtime::Binary,
];

/// Executors by runtime.
#[cfg(feature = "process")]
type Executors = HashMap<Runtime, Arc<dyn Executor>>;

/// The sandboxes the server runs user functions in.
#[cfg(feature = "process")]
struct Sandboxes {
    by_runtime: Executors,
    process: sopm_backends::ProcessExecutor,
    #[cfg(feature = "gvisor")]
    gvisor: Option<sopm_backends::GvisorExecutor>,
}

/// A sandbox's state directory: from its `*_SCRATCH_DIR` variable, else under the
/// data directory.
#[cfg(feature = "process")]
fn scratch_dir(
    c: &ServerConfig,
    var: &str,
    name: &str,
) -> Result<Option<std::path::PathBuf>, String> {
    if std::env::var_os(var).is_some() {
        return Ok(None);
    }
    std::path::absolute(c.data_dir.join(name))
        .map(Some)
        .map_err(|e| format!("data directory {}: {e}", c.data_dir.display()))
}

/// The executors of user functions, by runtime: the process backend (bubblewrap
/// sandboxes behind a warm pool) unless `[executors]` names `gvisor` for a runtime.
/// Settings come from `SOPM_*` variables (`ProcessExecutorConfig::from_env`,
/// `GvisorExecutorConfig::from_env`); state lives under `<data_dir>/sandboxes` and
/// `<data_dir>/gvisor`. A gVisor executor is made only if a runtime uses it.
#[cfg(feature = "process")]
fn user_function_executors(c: &ServerConfig) -> Result<Sandboxes, String> {
    let mut config = sopm_backends::ProcessExecutorConfig::from_env().map_err(|e| e.to_string())?;
    if let Some(dir) = scratch_dir(c, "SOPM_SANDBOX_SCRATCH_DIR", "sandboxes")? {
        config = config.with_scratch_dir(dir);
    }
    let process = config.build().map_err(|e| e.to_string())?;
    let process_shared: Arc<dyn Executor> = Arc::new(process.clone());
    let wants = |runtime: Runtime| c.executors.get(runtime.as_str()).map(String::as_str);
    #[cfg(feature = "gvisor")]
    let gvisor = if LOCAL_RUNTIMES.iter().any(|r| wants(*r) == Some("gvisor")) {
        let mut config =
            sopm_backends::GvisorExecutorConfig::from_env().map_err(|e| e.to_string())?;
        if let Some(dir) = scratch_dir(c, "SOPM_GVISOR_SCRATCH_DIR", "gvisor")? {
            config = config.with_scratch_dir(dir);
        }
        Some(config.build().map_err(|e| e.to_string())?)
    } else {
        None
    };
    let mut by_runtime = Executors::new();
    for runtime in LOCAL_RUNTIMES {
        let executor = match wants(runtime) {
            None | Some("process") => process_shared.clone(),
            #[cfg(feature = "gvisor")]
            Some("gvisor") => match &gvisor {
                Some(g) => Arc::new(g.clone()) as Arc<dyn Executor>,
                None => unreachable!("made above when a runtime wants it"),
            },
            Some(other) => {
                return Err(format!(
                    "executors.{}: '{other}' is not available in this build",
                    runtime.as_str()
                ))
            }
        };
        by_runtime.insert(runtime, executor);
    }
    Ok(Sandboxes {
        by_runtime,
        process,
        #[cfg(feature = "gvisor")]
        gvisor,
    })
}

/// Builds the platform the settings describe (opens the database).
pub fn build_platform(c: &ServerConfig) -> Result<Platform, String> {
    build_services(c).map(|s| s.platform)
}

/// Builds the platform and the key store the settings describe (opens the database).
pub fn build_services(c: &ServerConfig) -> Result<Services, String> {
    let mut builder = Platform::builder()
        .with_builtins(Arc::new(BuiltinExecutor::new()))
        .with_builtin_timeout(Duration::from_millis(c.builtin_timeout_ms))
        .with_scheduler_config(LocalSchedulerConfig {
            max_concurrency: c.max_concurrency,
            queue_capacity: c.queue_capacity,
            max_timeout: Duration::from_millis(c.max_timeout_ms),
            retry_after: Duration::from_secs(1),
        });
    let keys: Arc<dyn KeyStore> = match c.storage {
        Storage::Memory => Arc::new(MemoryKeyStore::new()),
        Storage::Sqlite => {
            let (registry, store, keys) = open_sqlite(c)?;
            builder = builder.with_registry(registry).with_job_store(store);
            keys
        }
    };
    #[cfg(feature = "process")]
    let sandboxes = user_function_executors(c)?;
    #[cfg(feature = "process")]
    for (runtime, executor) in &sandboxes.by_runtime {
        builder = builder.with_executor(*runtime, executor.clone());
    }
    #[cfg(feature = "process")]
    let local_builder = {
        let local = Arc::new(
            sopm_backends::LocalBuilderConfig::new(c.data_dir.join("artifacts"))
                .build()
                .map_err(|e| format!("local builder: {e}"))?,
        );
        for runtime in LOCAL_RUNTIMES {
            builder = builder.with_builder(runtime, local.clone());
        }
        Some(local)
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
        process: Some(sandboxes.process),
        #[cfg(feature = "gvisor")]
        gvisor: sandboxes.gvisor,
    })
}

/// The durable stores: function registry, job store, API keys.
type Stores = (Arc<dyn Registry>, Arc<dyn JobStore>, Arc<dyn KeyStore>);

/// Opens the key store of the server's data directory (for `sopm keys`).
pub fn open_key_store(c: &ServerConfig) -> Result<Arc<dyn KeyStore>, String> {
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
        .with_job_retention(Duration::from_secs(c.job_retention_hours * 3600))
        .open()
        .map_err(|e| format!("cannot open the database in {}: {e}", c.data_dir.display()))?;
    let store = Arc::new(store);
    Ok((store.clone(), store.clone(), store))
}

#[cfg(not(feature = "sqlite"))]
fn open_sqlite(_: &ServerConfig) -> Result<Stores, String> {
    Err("this build has no SQLite support; use --storage memory".into())
}

/// Serves until a shutdown signal, then drains.
pub async fn serve(c: ServerConfig) -> Result<(), String> {
    let services = build_services(&c)?;
    let platform = services.platform.clone();
    let state = AppState::with_keys(platform.clone(), ApiConfig::from(&c), services.keys.clone());
    let listener = tokio::net::TcpListener::bind(c.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", c.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    #[cfg(feature = "process")]
    if let Some(process) = &services.process {
        // Boot the stem cells now, so the first upload's first call is already warm.
        process.start();
    }
    #[cfg(feature = "gvisor")]
    if let Some(gvisor) = &services.gvisor {
        gvisor.start();
    }
    #[cfg(feature = "process")]
    if let Some(local) = &services.local_builder {
        match local.remove_stale_staging().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                removed = n,
                "removed the staging directories of unfinished builds"
            ),
            Err(e) => tracing::warn!(error = %e, "could not clean the artifacts directory"),
        }
    }
    let report = platform.recover().await.map_err(|e| e.to_string())?;
    tracing::info!(
        requeued = report.requeued,
        interrupted = report.interrupted,
        "recovery done"
    );
    state.set_ready(true);
    tracing::info!(
        listen = %local,
        storage = ?c.storage,
        auth = ?c.auth,
        data_dir = %c.data_dir.display(),
        functions = platform.list_functions().len(),
        "sopm serving"
    );
    let shutdown_state = state.clone();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested: no new connections; finishing in-flight jobs");
            shutdown_state.set_ready(false);
        })
        .await
        .map_err(|e| format!("server error: {e}"))?;
    platform
        .shutdown(c.shutdown_grace())
        .await
        .map_err(|e| format!("shutdown: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
