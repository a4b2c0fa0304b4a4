//! Submitting a job and answering the execute call: 200 with the output, 202 with the
//! job's id, or the job's error with its status.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use serde_json::{json, Value};
use sopm_core::{Error, Job, JobId, JobRequest, SubmitMode, Submitted};

use crate::body::{json_bytes, json_response};
use crate::error::{error_body, status_of, with_retry_after, ApiError};
use crate::state::AppState;

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

/// Submits and answers: 200 with the output, 202 with the id, or the job's error.
pub(crate) async fn submit(
    s: &AppState,
    request: JobRequest,
    is_async: bool,
    wait_ms: Option<u64>,
) -> Result<Response, ApiError> {
    let config = &s.inner().config;
    let mode = if is_async {
        SubmitMode::Detach
    } else {
        let wait = wait_ms
            .map(Duration::from_millis)
            .unwrap_or(config.default_wait)
            .min(config.max_wait);
        SubmitMode::Wait(Some(wait))
    };
    match s.platform().submit(request, mode).await? {
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
