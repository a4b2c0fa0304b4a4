//! Runs the server: builds the platform from the settings, recovers unfinished jobs,
//! serves until SIGTERM or Ctrl-C, then shuts down gracefully.

use std::sync::Arc;
use std::time::Duration;

use sopm_core::{JobStore, LocalSchedulerConfig, Platform, Registry};
use sopm_functions::BuiltinExecutor;

use crate::api::{app, ApiConfig, AppState};
use crate::config::{ServerConfig, Storage};

/// Builds the platform the settings describe (opens the database).
pub fn build_platform(c: &ServerConfig) -> Result<Platform, String> {
    let mut builder = Platform::builder()
        .with_builtins(Arc::new(BuiltinExecutor::new()))
        .with_builtin_timeout(Duration::from_millis(c.builtin_timeout_ms))
        .with_scheduler_config(LocalSchedulerConfig {
            max_concurrency: c.max_concurrency,
            queue_capacity: c.queue_capacity,
            max_timeout: Duration::from_millis(c.max_timeout_ms),
            retry_after: Duration::from_secs(1),
        });
    match c.storage {
        Storage::Memory => {}
        Storage::Sqlite => {
            let (registry, store) = open_sqlite(c)?;
            builder = builder.with_registry(registry).with_job_store(store);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

/// The durable stores: function registry and job store.
type Stores = (Arc<dyn Registry>, Arc<dyn JobStore>);

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
    Ok((store.clone(), store))
}

#[cfg(not(feature = "sqlite"))]
fn open_sqlite(_: &ServerConfig) -> Result<Stores, String> {
    Err("this build has no SQLite support; use --storage memory".into())
}

/// Serves until a shutdown signal, then drains.
pub async fn serve(c: ServerConfig) -> Result<(), String> {
    let platform = build_platform(&c)?;
    let state = AppState::new(
        platform.clone(),
        ApiConfig {
            max_body_bytes: c.max_body_bytes,
            default_wait: Duration::from_millis(c.default_wait_ms),
            max_wait: Duration::from_millis(c.max_wait_ms),
        },
    );
    let listener = tokio::net::TcpListener::bind(c.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", c.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
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
