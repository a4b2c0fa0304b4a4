//! The HTTP API: routes, request parsing with size limits, and JSON answers.
//! `app(state)` builds the router, so tests drive it without a socket. The
//! user-function routes are in [`crate::user_functions`], authentication in
//! [`crate::auth`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sopm_core::{
    Error, FunctionRef, Job, JobId, JobRequest, KeyStore, Platform, SubmitMode, Submitted, TenantId,
};

use crate::auth::Caller;
use crate::config::{AuthMode, ServerConfig};
use crate::error::{error_body, status_of, with_retry_after, ApiError};
use crate::extract::{Path, Query};
use crate::upload::UploadLimits;
use crate::user_functions;

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
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 4 << 20,
            default_wait: Duration::from_secs(30),
            max_wait: Duration::from_secs(300),
            auth: AuthMode::Off,
            uploads: UploadLimits::default(),
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
    functions_body: Bytes,
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
        AppState {
            inner: Arc::new(StateInner {
                platform,
                config,
                keys,
                ready: AtomicBool::new(false),
                functions_body,
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
}

/// The whole API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/api/functions", get(list_functions))
        .route("/api/execute", post(execute))
        .route("/api/status/{id}", get(status))
        .route("/api/jobs/{id}", get(status))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/stats", get(stats))
        .route(
            "/api/user-functions",
            get(user_functions::list).post(user_functions::upload),
        )
        .route(
            "/api/user-functions/{id}",
            get(user_functions::show).merge(delete(user_functions::remove)),
        )
        .route(
            "/api/user-functions/{id}/execute",
            post(user_functions::execute),
        )
        .route("/api/user-functions/{id}/logs", get(user_functions::logs))
        .route("/api/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        // Bodies are read with our own limit, which answers 413 as JSON.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Serialises to bytes; serialising a `Value` or our own types cannot fail.
pub fn json_bytes<T: Serialize + ?Sized>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec()))
}

pub(crate) fn json_response(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Reads a body up to the limit; past it, `payload_too_large`.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError(
            Error::PayloadTooLarge(format!("request body is larger than {limit} bytes")),
        )),
        Err(e) => Err(ApiError(Error::invalid(format!(
            "could not read the request body: {e}"
        )))),
    }
}

/// Parses a JSON body, with messages that say where it went wrong.
pub(crate) fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError(Error::invalid(
            "request body is empty; expected a JSON object",
        )));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError(Error::invalid(format!("request body is not valid: {e}"))))
}

/// `?user_id=` names the tenant while auth is off.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct TenantQuery {
    pub(crate) user_id: Option<String>,
}

pub(crate) fn tenant_of(user_id: Option<&str>) -> Result<TenantId, ApiError> {
    match user_id {
        None => Ok(TenantId::default()),
        Some(u) => TenantId::new(u).map_err(ApiError),
    }
}

async fn list_functions(State(s): State<AppState>) -> Response {
    json_response(StatusCode::OK, s.inner.functions_body.clone())
}

/// The body of `POST /api/execute`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteBody {
    /// Read straight into the `Arc` the job's [`FunctionRef`] keeps.
    function: Arc<str>,
    #[serde(default = "empty_object")]
    input: Value,
    #[serde(default, rename = "async")]
    is_async: bool,
    #[serde(default)]
    wait_ms: Option<u64>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    user_id: Option<String>,
}

pub(crate) fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A job that is still queued or running, as the execute call answers it (202).
#[derive(Serialize)]
struct PendingAnswer<'a> {
    id: &'a JobId,
    status: &'static str,
    status_url: String,
}

/// A finished job as the execute call answers it.
#[derive(Serialize)]
struct ExecuteAnswer<'a> {
    id: &'a JobId,
    function: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logs: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_us: Option<u64>,
}

async fn execute(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<TenantQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let bytes = read_body(req.into_body(), s.inner.config.max_body_bytes).await?;
    let body: ExecuteBody = parse_json(&bytes)?;
    let tenant = caller.tenant(body.user_id.as_deref().or(q.user_id.as_deref()))?;
    let request = JobRequest {
        tenant,
        function: FunctionRef::Builtin {
            name: body.function,
        },
        input: Arc::new(body.input),
        timeout: body.timeout_ms.map(Duration::from_millis),
    };
    submit(&s, request, body.is_async, body.wait_ms).await
}

/// Submits and answers: 200 with the output, 202 with the id, or the job's error.
pub(crate) async fn submit(
    s: &AppState,
    request: JobRequest,
    is_async: bool,
    wait_ms: Option<u64>,
) -> Result<Response, ApiError> {
    let mode = if is_async {
        SubmitMode::Detach
    } else {
        let wait = wait_ms
            .map(Duration::from_millis)
            .unwrap_or(s.inner.config.default_wait)
            .min(s.inner.config.max_wait);
        SubmitMode::Wait(Some(wait))
    };
    match s.inner.platform.submit(request, mode).await? {
        Submitted::Pending { id, status } => Ok(json_response(
            StatusCode::ACCEPTED,
            json_bytes(&PendingAnswer {
                id: &id,
                status: status.as_str(),
                status_url: format!("/api/status/{id}"),
            }),
        )),
        Submitted::Finished(job) => Ok(finished_answer(&job)),
    }
}

fn finished_answer(job: &Job) -> Response {
    match &job.error {
        None => json_response(
            StatusCode::OK,
            json_bytes(&ExecuteAnswer {
                id: &job.id,
                function: job.function.display_name(),
                status: job.status.as_str(),
                output: job.output.as_ref(),
                logs: job.logs.as_deref(),
                duration_us: job.duration_us,
            }),
        ),
        Some(info) => {
            let err: Error = info.clone().into();
            let mut body = error_body(&err);
            body["id"] = json!(job.id);
            body["status"] = json!(job.status);
            if let Some(logs) = &job.logs {
                body["logs"] = json!(logs);
            }
            let resp = json_response(status_of(&err), json_bytes(&body));
            with_retry_after(resp, &err)
        }
    }
}

/// A job as `GET /api/status/:id` shows it (the tenant is implied).
#[derive(Serialize)]
struct JobView<'a> {
    id: &'a JobId,
    function: String,
    status: &'static str,
    input: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a sopm_core::ErrorInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logs: Option<&'a str>,
    timeout_ms: u64,
    created_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_us: Option<u64>,
    attempts: u32,
}

fn job_view(job: &Job) -> JobView<'_> {
    JobView {
        id: &job.id,
        function: job.function.display_name(),
        status: job.status.as_str(),
        input: &job.input,
        output: job.output.as_ref(),
        error: job.error.as_ref(),
        logs: job.logs.as_deref(),
        timeout_ms: job.timeout_ms,
        created_ms: job.created_ms,
        started_ms: job.started_ms,
        finished_ms: job.finished_ms,
        duration_us: job.duration_us,
        attempts: job.attempts,
    }
}

async fn status(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant(q.user_id.as_deref())?;
    let id = JobId::parse(&id)?;
    let job = s.inner.platform.status(&tenant, &id).await?;
    Ok(json_response(StatusCode::OK, json_bytes(&job_view(&job))))
}

async fn cancel(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant(q.user_id.as_deref())?;
    let id = JobId::parse(&id)?;
    let job = s.inner.platform.cancel(&tenant, &id).await?;
    Ok(json_response(StatusCode::OK, json_bytes(&job_view(&job))))
}

async fn stats(State(s): State<AppState>, _caller: Caller) -> Response {
    json_response(StatusCode::OK, json_bytes(&s.inner.platform.stats()))
}

async fn openapi() -> Response {
    json_response(
        StatusCode::OK,
        Bytes::from_static(include_bytes!("../../docs/openapi.json")),
    )
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#))
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.inner.ready.load(Ordering::Acquire) {
        json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ready"}"#))
    } else {
        ApiError(Error::Unavailable(
            "not ready (starting up or shutting down)".into(),
        ))
        .into_response()
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    let body = crate::metrics::render(&s.inner.platform.stats());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
        .into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError(Error::not_found(format!(
        "no route for {} {}",
        req.method(),
        sopm_core::types::truncate_for_message(req.uri().path())
    )))
}
