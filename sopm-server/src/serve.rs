//! Runs the server: builds this node (one process, or a cluster node), recovers
//! unfinished jobs, serves until SIGTERM or Ctrl-C, then shuts down gracefully.

use std::time::Duration;

use crate::api::app;
use crate::config::{ServerConfig, Storage};
use crate::server::build_services;
use crate::state::{ApiConfig, AppState};

/// Serves until a shutdown signal, then drains.
pub async fn serve(c: ServerConfig) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(c.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", c.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    // A cluster node names itself by the bound address (a port of 0 is chosen above).
    let services = match crate::cluster::NodePlan::new(&c, local)? {
        Some(plan) => crate::cluster::build_node(&c, &plan).await?,
        None => build_services(&c)?,
    };
    let platform = services.platform.clone();
    // The bound address (a port of 0 is chosen now) is the one `Host` may name.
    let api = ApiConfig {
        listen: local,
        ..ApiConfig::from(&c)
    };
    let state = AppState::with_keys(platform.clone(), api, services.keys.clone());
    if let Some(check) = services.readiness.clone() {
        state.set_readiness_check(check);
    }
    // Boot the stem cells now, so the first upload's first call is already warm.
    #[cfg(feature = "process")]
    for backend in &services.early {
        backend.start();
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
    // Job records expire through the nodes that serve the API (a worker has no say in
    // how long its callers may read them).
    let expiry = if c.cluster.role().serves_api() {
        platform.spawn_job_expiry(
            c.jobs.retention(),
            Duration::from_secs(c.jobs.expiry_interval_s),
        )
    } else {
        None
    };
    state.set_ready(true);
    tracing::info!(
        listen = %local,
        role = c.cluster.role().as_str(),
        storage = if c.cluster.is_clustered() { "redis" } else if c.storage == Storage::Memory { "memory" } else { "sqlite" },
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
