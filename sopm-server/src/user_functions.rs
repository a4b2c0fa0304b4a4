//! The user-function routes: upload (JSON or multipart with an archive), list, show
//! (status, versions, build logs, executor), delete, execute, and recent jobs' logs.
//! Every route is scoped to the caller's tenant: another tenant's function answers
//! 404 exactly like an unknown one.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sopm_core::{
    BuildStatus, Error, FunctionRecord, FunctionRef, FunctionVersion, JobLogEntry, JobRequest,
    TenantId,
};

use crate::auth::{Caller, TenantQuery};
use crate::body::{empty_object, is_media_type, json_bytes, json_response, parse_json, read_body};
use crate::cross_site::{JsonOrArchivePost, JsonPost};
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::numbers::whole;
use crate::state::AppState;
use crate::submit::submit;
use crate::upload::{unpack_archive, SourceBuilder, UploadBody};

/// Most jobs `GET /api/user-functions/{id}/logs` returns.
const MAX_LOG_JOBS: usize = 200;

/// `?user_id=` names the tenant, `?version=` picks one version of a function,
/// `?limit=` caps the jobs `GET /api/user-functions/{id}/logs` returns.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct FunctionQuery {
    user_id: Option<String>,
    version: Option<u32>,
    limit: Option<usize>,
}

/// A `status_url` that carries the tenant when auth is off.
fn tenant_suffix(caller: &Caller, tenant: &TenantId) -> String {
    if caller.authenticated() || tenant.as_str() == TenantId::DEFAULT {
        String::new()
    } else {
        format!("?user_id={tenant}")
    }
}

/// `POST /api/user-functions`.
pub(crate) async fn upload(
    _: JsonOrArchivePost,
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<TenantQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let limits = s.inner().config.uploads.clone();
    let multipart = is_media_type(req.headers(), "multipart/form-data");
    let (body, archive) = if multipart {
        read_multipart(req, limits.max_multipart_body).await?
    } else {
        let bytes = read_body(req.into_body(), limits.max_json_body).await?;
        (parse_json::<UploadBody>(&bytes)?, None)
    };
    if archive.is_some() && (body.files.is_some() || body.files_base64.is_some()) {
        return Err(ApiError(Error::invalid(
            "metadata: the files come from the archive part; leave 'files' out",
        )));
    }
    let tenant = caller.tenant_of(body.user_id.as_deref(), q.user_id.as_deref())?;
    let (spec, source) = tokio::task::spawn_blocking(move || {
        let mut files = SourceBuilder::new(&limits);
        if let Some(archive) = archive {
            unpack_archive(&archive, &mut files)?;
        }
        let spec = body.into_spec(&mut files)?;
        Ok::<_, Error>((spec, files.finish()?))
    })
    .await
    .map_err(|e| ApiError(Error::Internal(format!("unpacking an upload failed: {e}"))))??;
    let v = s.inner().platform.upload(&tenant, spec, source).await?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        json_bytes(&json!({
            "id": v.function_id,
            "name": v.name,
            "version": v.version,
            "status": v.status,
            "executor": v.executor,
            "status_url": format!(
                "/api/user-functions/{}{}",
                v.function_id,
                tenant_suffix(&caller, &tenant)
            ),
        })),
    ))
}

/// The `metadata` and `archive` parts of a multipart upload.
async fn read_multipart(
    req: Request,
    limit: usize,
) -> Result<(UploadBody, Option<axum::body::Bytes>), ApiError> {
    // `app` disables axum's default body limit; this one answers 413 past `limit`.
    let req = req.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, limit)));
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(Error::PayloadTooLarge(format!(
                "request body is larger than {limit} bytes"
            )))
        } else {
            ApiError(Error::invalid(format!("multipart: {}", e.body_text())))
        }
    };
    let mut multipart = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError(Error::invalid(format!("multipart: {}", e.body_text()))))?;
    let (mut metadata, mut archive) = (None, None);
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        let data = field.bytes().await.map_err(bad)?;
        let slot_taken = match name.as_str() {
            "metadata" => metadata.replace(parse_json::<UploadBody>(&data)?).is_some(),
            "archive" => archive.replace(data).is_some(),
            other => {
                return Err(ApiError(Error::invalid(format!(
                    "multipart: unexpected part '{}'; expected 'metadata' and 'archive'",
                    sopm_core::types::truncate_for_message(other)
                ))))
            }
        };
        if slot_taken {
            return Err(ApiError(Error::invalid(format!(
                "multipart: the '{name}' part is given twice"
            ))));
        }
    }
    let metadata = metadata.ok_or_else(|| {
        ApiError(Error::invalid(
            "multipart: missing the 'metadata' part (JSON: name, runtime, handler, ...)",
        ))
    })?;
    let archive = archive.ok_or_else(|| {
        ApiError(Error::invalid(
            "multipart: missing the 'archive' part (a tar.gz or zip of the function)",
        ))
    })?;
    Ok((metadata, Some(archive)))
}

/// One version as the API shows it. Environment values are not shown (they may be
/// secrets); their names are.
#[derive(Serialize)]
struct VersionView<'a> {
    version: u32,
    status: BuildStatus,
    runtime: &'static str,
    handler: &'a str,
    limits: &'a sopm_core::Limits,
    env: Vec<&'a str>,
    source_digest: &'a str,
    created_ms: u64,
    executor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    build_log: Option<&'a str>,
}

fn version_view<'a>(
    platform: &'a sopm_core::Platform,
    v: &'a FunctionVersion,
    with_log: bool,
) -> VersionView<'a> {
    VersionView {
        version: v.version,
        status: v.status,
        runtime: v.runtime.as_str(),
        handler: &v.handler,
        limits: &v.limits,
        env: v.env.keys().map(String::as_str).collect(),
        source_digest: &v.source_digest,
        created_ms: v.created_ms,
        executor: platform.executor_of(v),
        build_log: with_log.then_some(v.build_log.as_str()),
    }
}

/// The summary of a function: its newest version's status and executor, and the
/// version calls run.
fn summary(s: &AppState, rec: &FunctionRecord) -> Value {
    let latest = rec.versions.last();
    let ready = rec.latest_ready();
    let runtime = latest.map(|v| v.runtime);
    let platform = &s.inner().platform;
    json!({
        "id": rec.id,
        "name": rec.name,
        "runtime": runtime.map(|r| r.as_str()),
        "handler": latest.map(|v| v.handler.as_str()),
        "status": latest.map(|v| v.status),
        "version": latest.map(|v| v.version),
        "ready_version": ready.map(|v| v.version),
        "created_ms": rec.versions.first().map(|v| v.created_ms),
        "executor": latest.and_then(|v| platform.executor_of(v)),
    })
}

/// `GET /api/user-functions`.
pub(crate) async fn list(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant(q.user_id.as_deref())?;
    let records = s.inner().platform.functions(&tenant).await?;
    let functions: Vec<Value> = records.iter().map(|r| summary(&s, r)).collect();
    Ok(json_response(
        StatusCode::OK,
        json_bytes(&json!({"count": functions.len(), "functions": functions})),
    ))
}

/// `GET /api/user-functions/{id}`: id or name; `?version=N` shows that version only.
pub(crate) async fn show(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<FunctionQuery>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant(q.user_id.as_deref())?;
    let platform = &s.inner().platform;
    let rec = platform.function(&tenant, &id).await?;
    let shown: Vec<&FunctionVersion> = match q.version {
        Some(n) => vec![rec.version(n).ok_or_else(|| {
            ApiError(Error::not_found(format!(
                "function '{}' has no version {n}",
                rec.name
            )))
        })?],
        None => rec.versions.iter().collect(),
    };
    let mut body = summary(&s, &rec);
    let focus = shown.last().copied();
    if let Some(v) = focus {
        body["status"] = json!(v.status);
        body["build_log"] = json!(v.build_log);
        body["builder"] = json!(platform.builder_of(v));
        let executor = platform.executor_of(v);
        body["executor"] = json!(executor);
        match executor {
            None => {
                body["executor_note"] = json!(format!(
                    "no executor is configured for the {} runtime; calls answer 503 until one is",
                    v.runtime.as_str()
                ))
            }
            Some(name) if !platform.has_executor(name) => {
                body["executor_note"] = json!(format!(
                    "this version runs in the '{name}' executor, which this server does not configure; calls answer 503"
                ))
            }
            Some(_) => {}
        }
    }
    body["versions"] = json!(shown
        .iter()
        .map(|v| version_view(platform, v, true))
        .collect::<Vec<_>>());
    Ok(json_response(StatusCode::OK, json_bytes(&body)))
}

/// `DELETE /api/user-functions/{id}`.
pub(crate) async fn remove(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant(q.user_id.as_deref())?;
    let removed = s.inner().platform.delete_function(&tenant, &id).await?;
    Ok(json_response(
        StatusCode::OK,
        json_bytes(&json!({
            "id": removed.id,
            "name": removed.name,
            "deleted": true,
            "versions": removed.versions.len(),
        })),
    ))
}

/// The body of `POST /api/user-functions/{id}/execute`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserExecuteBody {
    #[serde(default = "empty_object")]
    input: Value,
    #[serde(default, rename = "async")]
    is_async: bool,
    #[serde(default, deserialize_with = "whole")]
    wait_ms: Option<u64>,
    #[serde(default, deserialize_with = "whole")]
    timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "whole")]
    version: Option<u32>,
    #[serde(default)]
    user_id: Option<String>,
}

/// `POST /api/user-functions/{id}/execute`: same answers as `/api/execute`; a function
/// with no ready version (or a pinned version that is not ready) is 409 `not_ready`.
pub(crate) async fn execute(
    _: JsonPost,
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<TenantQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let bytes = read_body(req.into_body(), s.inner().config.max_body_bytes).await?;
    let body: UserExecuteBody = if bytes.is_empty() {
        parse_json(b"{}")?
    } else {
        parse_json(&bytes)?
    };
    let tenant = caller.tenant_of(body.user_id.as_deref(), q.user_id.as_deref())?;
    // The scheduler's router resolves the id or name (one registry read per call).
    let request = JobRequest {
        tenant,
        function: FunctionRef::User {
            id: Arc::from(id.as_str()),
            version: body.version,
        },
        input: Arc::new(body.input),
        timeout: body.timeout_ms.map(Duration::from_millis),
    };
    submit(&s, request, body.is_async, body.wait_ms).await
}

/// One job in `GET /api/user-functions/{id}/logs`.
#[derive(Serialize)]
struct JobLog<'a> {
    id: &'a sopm_core::JobId,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    created_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_us: Option<u64>,
    logs: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    logs_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a sopm_core::ErrorInfo>,
}

fn job_log(entry: &JobLogEntry) -> JobLog<'_> {
    JobLog {
        id: &entry.id,
        status: entry.status.as_str(),
        version: entry.version,
        created_ms: entry.created_ms,
        finished_ms: entry.finished_ms,
        duration_us: entry.duration_us,
        logs: &entry.logs,
        logs_truncated: entry.logs_truncated,
        error: entry.error.as_ref(),
    }
}

/// `GET /api/user-functions/{id}/logs?limit=N` (1 to 200, default 20): the newest jobs
/// of the function with the last characters of their logs, newest first. Reads
/// neither inputs, outputs nor build logs, so the answer is bounded.
pub(crate) async fn logs(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<FunctionQuery>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant(q.user_id.as_deref())?;
    let limit = match q.limit {
        None => 20,
        Some(n @ 1..=MAX_LOG_JOBS) => n,
        Some(n) => {
            return Err(ApiError(Error::invalid(format!(
                "limit: expected 1 to {MAX_LOG_JOBS}, got {n}"
            ))))
        }
    };
    let platform = &s.inner().platform;
    let (v, jobs) = platform.recent_logs(&tenant, &id, limit).await?;
    Ok(json_response(
        StatusCode::OK,
        json_bytes(&json!({
            "id": v.function_id,
            "name": v.name,
            "jobs": jobs.iter().map(job_log).collect::<Vec<_>>(),
        })),
    ))
}
