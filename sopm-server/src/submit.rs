//! Submitting a job and answering the execute call: 200 with the output, 202 with the
//! job's id, or the job's error with its status.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use serde_json::json;
use sopm_core::{Error, FunctionRef, Job, JobId, JobRequest, SubmitMode, Submitted};

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
        None => json_response(StatusCode::OK, execute_answer(job)),
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

/// A finished job as the execute call answers it: `id`, `function`, `status`, then
/// `output`, `logs` and `duration_us` when it has them. Written with
/// [`sopm_core::json`] (the output is most of it, and its strings are scanned sixteen
/// bytes at a time); `tests::the_execute_answer_has_the_documented_fields_in_order`
/// holds it to the documented shape, byte for byte.
fn execute_answer(job: &Job) -> Bytes {
    use sopm_core::json::{write_str, write_u64, write_value};
    let mut out = String::with_capacity(128);
    out.push_str("{\"id\":");
    write_str(&mut out, job.id.as_str());
    out.push_str(",\"function\":");
    match &job.function {
        FunctionRef::Builtin { name } => write_str(&mut out, name),
        user => write_str(&mut out, &user.display_name()),
    }
    out.push_str(",\"status\":");
    write_str(&mut out, job.status.as_str());
    if let Some(output) = &job.output {
        out.push_str(",\"output\":");
        write_value(&mut out, output);
    }
    if let Some(logs) = &job.logs {
        out.push_str(",\"logs\":");
        write_str(&mut out, logs);
    }
    if let Some(us) = job.duration_us {
        out.push_str(",\"duration_us\":");
        write_u64(&mut out, us);
    }
    out.push('}');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use sopm_core::{FunctionRef, Job, JobStatus, TenantId};

    use super::execute_answer;

    #[test]
    fn the_execute_answer_has_the_documented_fields_in_order() {
        let mut job = Job::new(
            TenantId::default(),
            FunctionRef::builtin("text.uppercase"),
            Arc::new(json!({"text": "a"})),
            1_000,
        );
        job.status = JobStatus::Succeeded;
        job.output = Some(json!({"text": "quote \" and\nline", "n": [1, 2.5]}));
        job.logs = Some("printed\t\"x\"\n".into());
        job.duration_us = Some(12);
        let text = String::from_utf8(execute_answer(&job).to_vec()).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"id":"{}","function":"text.uppercase","status":"succeeded","output":{{"n":[1,2.5],"text":"quote \" and\nline"}},"logs":"printed\t\"x\"\n","duration_us":12}}"#,
                job.id
            )
        );

        job.logs = None;
        job.duration_us = None;
        job.output = Some(json!(null));
        let text = String::from_utf8(execute_answer(&job).to_vec()).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"id":"{}","function":"text.uppercase","status":"succeeded","output":null}}"#,
                job.id
            )
        );
    }
}
