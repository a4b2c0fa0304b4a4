//! The HTTP API's routes, and the handlers of the built-in routes (catalog, execute,
//! jobs, stats, health, metrics). The user-function handlers are in
//! [`crate::user_functions`]; shared state in [`crate::state`], body helpers in
//! [`crate::body`], errors in [`crate::error`], who is calling in [`crate::auth`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use std::collections::HashSet;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sopm_core::{Error, FunctionRef, Job, JobId, JobRequest};

use crate::auth::{bearer_token, Caller, TenantQuery};
use crate::body::{empty_object, json_bytes, json_response, parse_json, read_body};
use crate::body_budget;
use crate::config::AuthMode;
use crate::cross_site::{self, JsonPost};
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::numbers::whole;
use crate::state::AppState;
use crate::submit::submit;
use crate::tenant_stats;
use crate::user_functions;

/// The routes this node serves: the whole API, or on a worker (`--role worker`) only
/// the probes and `/metrics`.
pub fn app(state: AppState) -> Router {
    if state.inner().config.role.serves_api() {
        api_app(state)
    } else {
        worker_app(state)
    }
}

/// A worker's routes: `/healthz`, `/readyz`, `/metrics`; every other path answers 404
/// saying this node is a worker.
fn worker_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_on_a_worker)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            cross_site::guard,
        ))
        .with_state(state)
}

/// The whole API.
fn api_app(state: AppState) -> Router {
    // Each POST handler checks its Content-Type first (cross_site::PostContentType).
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
        // A POST waits here until the memory its body can take fits the budget.
        .layer(middleware::from_fn_with_state(
            state.inner().body_budget.clone(),
            body_budget::admit,
        ))
        // Before any handler: Host and Origin with auth off.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            cross_site::guard,
        ))
        // Bodies are read with our own limit, which answers 413 as JSON.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn list_functions(State(s): State<AppState>) -> Response {
    json_response(StatusCode::OK, s.inner().functions_body.clone())
}

/// The body of `POST /api/execute`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteBody<'a> {
    /// Borrowed from the body unless it has escapes, then copied once into the `Arc`
    /// the job's [`FunctionRef`] keeps.
    #[serde(borrow)]
    function: Cow<'a, str>,
    #[serde(default = "empty_object")]
    input: Value,
    #[serde(default, rename = "async")]
    is_async: bool,
    #[serde(default, deserialize_with = "whole")]
    wait_ms: Option<u64>,
    #[serde(default, deserialize_with = "whole")]
    timeout_ms: Option<u64>,
    #[serde(default)]
    user_id: Option<String>,
}

async fn execute(
    _: JsonPost,
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<TenantQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let bytes = read_body(req.into_body(), s.inner().config.max_body_bytes).await?;
    let body: ExecuteBody = parse_json(&bytes)?;
    let tenant = caller.tenant_of(body.user_id.as_deref(), q.user_id.as_deref())?;
    let request = JobRequest {
        tenant,
        function: FunctionRef::Builtin {
            name: Arc::from(body.function.as_ref()),
        },
        input: Arc::new(body.input),
        timeout: body.timeout_ms.map(Duration::from_millis),
    };
    submit(&s, request, body.is_async, body.wait_ms).await
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
    let job = s.platform().status(&tenant, &id).await?;
    Ok(json_response(StatusCode::OK, json_bytes(&job_view(&job))))
}

async fn cancel(
    _: JsonPost,
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant(q.user_id.as_deref())?;
    let id = JobId::parse(&id)?;
    let job = s.platform().cancel(&tenant, &id).await?;
    Ok(json_response(StatusCode::OK, json_bytes(&job_view(&job))))
}

/// `GET /api/stats`: server-wide totals, the built-ins' figures, and the caller's
/// own user functions only; on a cluster node also every node's figures (`cluster`).
async fn stats(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant(q.user_id.as_deref())?;
    let own = s.platform().functions(&tenant).await?;
    let builtins: HashSet<&str> = s
        .platform()
        .list_functions()
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    let filter = tenant_stats::TenantFilter::new(&builtins, &own);
    let view = tenant_stats::StatsView {
        node: filter.node(s.platform().stats()),
        cluster: s
            .platform()
            .cluster_stats()
            .await?
            .map(|c| filter.cluster(c)),
    };
    Ok(json_response(StatusCode::OK, json_bytes(&view)))
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
    if !s.is_ready() {
        return ApiError(Error::Unavailable(
            "not ready (starting up or shutting down)".into(),
        ))
        .into_response();
    }
    if let Some(check) = s.inner().readiness.get() {
        if let Err(e) = check.run().await {
            return ApiError(Error::Unavailable(format!("not ready: {e}"))).into_response();
        }
    }
    json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ready"}"#))
}

/// `GET /metrics`: every figure, every tenant's functions included, so with a
/// `metrics_token` it needs that token, and with auth on and no token it is refused.
async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let config = &s.inner().config;
    let given = bearer_token(&headers)?;
    match &config.metrics_token {
        Some(token) if !given.is_some_and(|given| token.matches(given)) => {
            return Err(ApiError(Error::Unauthorized(
                "/metrics needs 'Authorization: Bearer <metrics_token>' (the server's metrics_token setting)".into(),
            )));
        }
        Some(_) => {}
        None if config.auth != AuthMode::Off => {
            return Err(ApiError(Error::forbidden(
                "metrics_token_required",
                "/metrics shows every tenant's figures: with auth on it is served only with a metrics_token (set metrics_token or SOPM_METRICS_TOKEN, then send it as a Bearer token)",
            )))
        }
        None => {}
    }
    let body = crate::metrics::render(&s.platform().stats());
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
        .into_response())
}

async fn not_on_a_worker(req: Request) -> ApiError {
    ApiError(Error::not_found(format!(
        "no route for {} {}: this node is a worker (--role worker); it runs queued jobs and \
         builds and serves only /healthz, /readyz and /metrics. Send API requests to a gateway",
        req.method(),
        sopm_core::types::truncate_for_message(req.uri().path())
    )))
}

async fn not_found(req: Request) -> ApiError {
    ApiError(Error::not_found(format!(
        "no route for {} {}",
        req.method(),
        sopm_core::types::truncate_for_message(req.uri().path())
    )))
}
