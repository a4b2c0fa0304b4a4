//! Runs the server: builds the platform from the settings, recovers unfinished jobs,
//! serves until SIGTERM or Ctrl-C, then shuts down gracefully.

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "process")]
use sopm_core::{Builder, Executor};
use sopm_core::{
    CachedKeyStore, JobStore, KeyStore, LocalSchedulerConfig, MemoryKeyStore, Platform, Registry,
    Runtime,
};
use sopm_functions::BuiltinExecutor;

use crate::api::app;
use crate::config::{ServerConfig, Storage};
use crate::state::{ApiConfig, AppState};

/// What the server runs on: the platform, and the API keys.
#[derive(Debug)]
pub struct Services {
    /// The platform.
    pub platform: Platform,
    /// The API keys (in the database with SQLite storage).
    pub keys: Arc<dyn KeyStore>,
    #[cfg(feature = "process")]
    local_builder: Option<Arc<sopm_backends::LocalBuilder>>,
    /// The sandbox backends whose stem cells boot at start-up.
    #[cfg(feature = "process")]
    early: Vec<Starter>,
}

/// The runtimes whose uploads are built into directory artifacts on this machine.
pub const LOCAL_RUNTIMES: [Runtime; 4] = [
    Runtime::Python,
    Runtime::Node,
    Runtime::Shell,
    Runtime::Binary,
];

/// Boots a backend's stem cells now instead of on its first use (needs a tokio runtime).
#[cfg(feature = "process")]
struct Starter(&'static str, Box<dyn Fn() + Send + Sync>);

#[cfg(feature = "process")]
impl std::fmt::Debug for Starter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Starter({})", self.0)
    }
}

/// One sandbox backend, made: its executor, the builder of the artifacts it runs, and
/// how to boot it early.
#[cfg(feature = "process")]
struct Sandbox {
    executor: Arc<dyn Executor>,
    builder: Arc<dyn Builder>,
    start: Box<dyn Fn() + Send + Sync>,
}

/// What a backend is made from: the settings, the shared local builder (directory
/// artifacts), and whether the settings name the backend. `Ok(None)`: this host
/// cannot offer it and nothing asks for it.
#[cfg(feature = "process")]
type MakeSandbox =
    fn(&ServerConfig, &Arc<sopm_backends::LocalBuilder>, bool) -> Result<Option<Sandbox>, String>;

/// The sandbox backends this build makes, by the name uploads and `[executors]` use
/// (each name also in [`crate::config::EXECUTOR_NAMES`]).
#[cfg(feature = "process")]
const SANDBOXES: &[(&str, MakeSandbox)] = &[
    ("process", process_sandbox),
    #[cfg(feature = "gvisor")]
    ("gvisor", gvisor_sandbox),
    #[cfg(feature = "docker")]
    ("docker", docker_sandbox),
    #[cfg(feature = "docker")]
    ("docker-runsc", docker_runsc_sandbox),
];

/// The backend of runtimes and functions the settings leave unassigned.
#[cfg(feature = "process")]
const DEFAULT_SANDBOX: &str = "process";

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

/// The process backend: bubblewrap sandboxes behind a warm pool, settings from
/// `SOPM_*` variables (`ProcessExecutorConfig::from_env`), state under
/// `<data_dir>/sandboxes`. Always offered.
#[cfg(feature = "process")]
fn process_sandbox(
    c: &ServerConfig,
    local: &Arc<sopm_backends::LocalBuilder>,
    _named: bool,
) -> Result<Option<Sandbox>, String> {
    let mut config = sopm_backends::ProcessExecutorConfig::from_env().map_err(|e| e.to_string())?;
    if let Some(dir) = scratch_dir(c, "SOPM_SANDBOX_SCRATCH_DIR", "sandboxes")? {
        config = config.with_scratch_dir(dir);
    }
    let process = config.build().map_err(|e| e.to_string())?;
    let started = process.clone();
    Ok(Some(Sandbox {
        executor: Arc::new(process),
        builder: local.clone(),
        start: Box::new(move || started.start()),
    }))
}

/// The gVisor backend: `runsc` sandboxes, settings from `SOPM_*` variables
/// (`GvisorExecutorConfig::from_env`), state under `<data_dir>/gvisor`. Offered when
/// the settings name it or `runsc` is found (`SOPM_RUNSC`, or on `PATH`).
#[cfg(feature = "gvisor")]
fn gvisor_sandbox(
    c: &ServerConfig,
    local: &Arc<sopm_backends::LocalBuilder>,
    named: bool,
) -> Result<Option<Sandbox>, String> {
    let found = std::env::var_os("SOPM_RUNSC").is_some()
        || std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("runsc").is_file()));
    if !named && !found {
        return Ok(None);
    }
    let mut config = sopm_backends::GvisorExecutorConfig::from_env().map_err(|e| e.to_string())?;
    if let Some(dir) = scratch_dir(c, "SOPM_GVISOR_SCRATCH_DIR", "gvisor")? {
        config = config.with_scratch_dir(dir);
    }
    let gvisor = config.build().map_err(|e| e.to_string())?;
    let started = gvisor.clone();
    Ok(Some(Sandbox {
        executor: Arc::new(gvisor),
        builder: local.clone(),
        start: Box::new(move || started.start()),
    }))
}

/// Whether a Docker daemon may be reachable: `SOPM_DOCKER_HOST` or `DOCKER_HOST` set, or
/// the default socket present.
#[cfg(feature = "docker")]
fn docker_configured() -> bool {
    std::env::var_os("SOPM_DOCKER_HOST").is_some()
        || std::env::var_os("DOCKER_HOST").is_some()
        || std::path::Path::new("/var/run/docker.sock").exists()
}

/// A docker backend named `name`, its containers under `runtime` (`None`: the daemon's
/// default, or `SOPM_DOCKER_RUNTIME`); settings from `SOPM_*` variables
/// (`DockerExecutorConfig::from_env`); its builder makes images over the local builder's
/// artifacts. Offered when the settings name it or a daemon may be reachable.
#[cfg(feature = "docker")]
fn docker_backend(
    local: &Arc<sopm_backends::LocalBuilder>,
    named: bool,
    name: &str,
    runtime: Option<&str>,
) -> Result<Option<Sandbox>, String> {
    if !named && !docker_configured() {
        return Ok(None);
    }
    let mut config = sopm_backends::DockerExecutorConfig::from_env()
        .map_err(|e| e.to_string())?
        .with_name(name);
    if let Some(runtime) = runtime {
        config = config.with_runtime(runtime);
    }
    let docker = config.build().map_err(|e| e.to_string())?;
    let started = docker.clone();
    Ok(Some(Sandbox {
        builder: Arc::new(docker.builder(local.clone())),
        executor: Arc::new(docker),
        start: Box::new(move || started.start()),
    }))
}

/// The docker backend under the daemon's default runtime (runc, or
/// `SOPM_DOCKER_RUNTIME`).
#[cfg(feature = "docker")]
fn docker_sandbox(
    _c: &ServerConfig,
    local: &Arc<sopm_backends::LocalBuilder>,
    named: bool,
) -> Result<Option<Sandbox>, String> {
    docker_backend(local, named, "docker", None)
}

/// The docker backend with gVisor: containers under the `runsc` runtime, which the
/// daemon must have registered.
#[cfg(feature = "docker")]
fn docker_runsc_sandbox(
    _c: &ServerConfig,
    local: &Arc<sopm_backends::LocalBuilder>,
    named: bool,
) -> Result<Option<Sandbox>, String> {
    docker_backend(local, named, "docker-runsc", Some("runsc"))
}

/// Registers the sandbox backends this build and host offer, each runtime's default
/// (`[executors]`, else `process`) and the rules by function name
/// (`[executors.functions]`). Returns the starters of the backends the settings use,
/// whose stem cells boot at start-up; the others start on first use.
#[cfg(feature = "process")]
fn add_sandboxes(
    c: &ServerConfig,
    mut builder: sopm_core::PlatformBuilder,
    local: &Arc<sopm_backends::LocalBuilder>,
) -> Result<(sopm_core::PlatformBuilder, Vec<Starter>), String> {
    let settings = &c.executors;
    let mut early = Vec::new();
    let mut offered = Vec::new();
    for (name, make) in SANDBOXES {
        let used = *name == DEFAULT_SANDBOX || settings.names(name);
        if let Some(sandbox) = make(c, local, used)? {
            builder = builder.with_sandbox(*name, sandbox.executor, sandbox.builder);
            offered.push(*name);
            if used {
                early.push(Starter(name, sandbox.start));
            }
        }
    }
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
            .unwrap_or(DEFAULT_SANDBOX);
        check(runtime.as_str().to_string(), name)?;
        builder = builder.with_runtime_executor(runtime, name);
    }
    for (function, name) in &settings.functions {
        check(format!("functions.{function}"), name)?;
        builder = builder.with_function_executor(function, name);
    }
    Ok((builder, early))
}

/// Builds the platform the settings describe (opens the database).
pub fn build_platform(c: &ServerConfig) -> Result<Platform, String> {
    build_services(c).map(|s| s.platform)
}

/// Builds the platform and the key store the settings describe (opens the database).
pub fn build_services(c: &ServerConfig) -> Result<Services, String> {
    crate::data_dir::make_private(&c.data_dir)?;
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

/// Serves until a shutdown signal, then drains.
pub async fn serve(c: ServerConfig) -> Result<(), String> {
    let services = build_services(&c)?;
    let platform = services.platform.clone();
    let listener = tokio::net::TcpListener::bind(c.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", c.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    // The bound address (a port of 0 is chosen now) is the one `Host` may name.
    let api = ApiConfig {
        listen: local,
        ..ApiConfig::from(&c)
    };
    let state = AppState::with_keys(platform.clone(), api, services.keys.clone());
    // Boot the stem cells now, so the first upload's first call is already warm.
    #[cfg(feature = "process")]
    for Starter(_, start) in &services.early {
        start();
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
    let expiry = platform.spawn_job_expiry(
        c.jobs.retention(),
        Duration::from_secs(c.jobs.expiry_interval_s),
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
    if let Some(expiry) = expiry {
        expiry.abort();
    }
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
