//! What every handler shares: the platform, the API's limits, the key store and
//! whether the server is ready.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use serde_json::json;
use sopm_core::{KeyStore, Platform};

use crate::body::json_bytes;
use crate::body_budget::BodyBudget;
use crate::config::{AuthMode, MetricsToken, Role, ServerConfig};
use crate::readiness::ReadinessCheck;
use crate::upload::UploadLimits;

/// Limits and defaults of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// How long a waiting execute call waits by default.
    pub default_wait: Duration,
    /// Most a caller may ask to wait.
    pub max_wait: Duration,
    /// How callers authenticate.
    pub auth: AuthMode,
    /// Caps on uploads.
    pub uploads: UploadLimits,
    /// The address the server listens on: with auth off, the one `Host` besides the
    /// loopback names that requests may carry.
    pub listen: SocketAddr,
    /// The bearer token `GET /metrics` needs.
    pub metrics_token: Option<MetricsToken>,
    /// Memory the bodies of requests in flight may take at once (see
    /// [`crate::body_budget`]).
    pub max_body_memory_bytes: usize,
    /// This node's part: a worker serves only `/healthz`, `/readyz` and `/metrics`.
    pub role: Role,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 4 << 20,
            default_wait: Duration::from_secs(30),
            max_wait: Duration::from_secs(300),
            auth: AuthMode::Off,
            uploads: UploadLimits::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_token: None,
            max_body_memory_bytes: 512 << 20,
            role: Role::All,
        }
    }
}

impl From<&ServerConfig> for ApiConfig {
    fn from(c: &ServerConfig) -> Self {
        ApiConfig {
            max_body_bytes: c.max_body_bytes,
            default_wait: Duration::from_millis(c.default_wait_ms),
            max_wait: Duration::from_millis(c.max_wait_ms),
            auth: c.auth,
            uploads: UploadLimits {
                max_json_body: c.max_upload_json_bytes,
                max_multipart_body: c.max_upload_archive_bytes,
                max_files: c.max_upload_files,
                max_total_bytes: c.max_upload_total_bytes,
                max_file_bytes: c.max_upload_file_bytes,
            },
            listen: c.listen,
            metrics_token: c.metrics_token.clone(),
            max_body_memory_bytes: c.max_body_memory_bytes,
            role: c.cluster.role(),
        }
    }
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

#[derive(Debug)]
pub(crate) struct StateInner {
    pub(crate) platform: Platform,
    pub(crate) config: ApiConfig,
    pub(crate) keys: Option<Arc<dyn KeyStore>>,
    ready: AtomicBool,
    /// The answer of `GET /api/functions`, serialised once.
    pub(crate) functions_body: Bytes,
    /// What request bodies in flight may hold.
    pub(crate) body_budget: BodyBudget,
    /// What `/readyz` asks besides start-up being done (a cluster node: Redis).
    pub(crate) readiness: OnceLock<ReadinessCheck>,
}

impl AppState {
    /// State over a platform, without API keys (auth off). The catalog answer is
    /// serialised once, here.
    pub fn new(platform: Platform, config: ApiConfig) -> Self {
        Self::build(platform, config, None)
    }

    /// State over a platform, with the key store that `auth = "api_key"` resolves
    /// bearer keys with.
    pub fn with_keys(platform: Platform, config: ApiConfig, keys: Arc<dyn KeyStore>) -> Self {
        Self::build(platform, config, Some(keys))
    }

    fn build(platform: Platform, config: ApiConfig, keys: Option<Arc<dyn KeyStore>>) -> Self {
        let functions_body = json_bytes(&json!({
            "count": platform.list_functions().len(),
            "functions": platform.list_functions(),
        }));
        let body_budget = BodyBudget::new(
            config.max_body_memory_bytes,
            config.max_body_bytes,
            config.uploads.clone(),
        );
        AppState {
            inner: Arc::new(StateInner {
                body_budget,
                platform,
                config,
                keys,
                ready: AtomicBool::new(false),
                functions_body,
                readiness: OnceLock::new(),
            }),
        }
    }

    /// The platform.
    pub fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    pub(crate) fn inner(&self) -> &StateInner {
        &self.inner
    }

    /// Marks the server ready (after recovery) or not (shutting down).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// Makes `/readyz` also ask `check` (a cluster node: whether Redis answers); set
    /// once, later calls are ignored.
    pub fn set_readiness_check(&self, check: ReadinessCheck) {
        let _ = self.inner.readiness.set(check);
    }

    /// Whether start-up is done and shutdown has not begun (see also
    /// [`set_readiness_check`](Self::set_readiness_check)).
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }
}
