//! A Job's answer: its pod's log read back (the tail that holds the result), the result
//! frame found after the last log marker, and the call's outcome made from it as the
//! warm pool would make it.

use futures::AsyncBufReadExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::LogParams;
use kube::Api;
use serde_json::Value;
use sopm_core::{Error, Output, Result};

use super::cluster::api_error;
use super::spec::CONTAINER;
use crate::sandbox::protocol::ResultFrame;

/// Reads the pod's log, keeping its last `2 * max_output + 1 MiB` bytes (the result frame
/// and the invocation's logs before it).
pub(crate) async fn read_tail(
    pods: &Api<Pod>,
    pod: &str,
    max_output: usize,
    namespace: &str,
) -> Result<Vec<u8>> {
    let keep = max_output.saturating_mul(2).saturating_add(1 << 20);
    let params = LogParams {
        container: Some(CONTAINER.into()),
        ..LogParams::default()
    };
    let mut stream = pods
        .log_stream(pod, &params)
        .await
        .map_err(|e| api_error(e, &format!("read the log of pod {pod}"), namespace))?;
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let chunk = stream
            .fill_buf()
            .await
            .map_err(|e| Error::Unavailable(format!("cannot read the log of pod {pod}: {e}")))?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        tail.extend_from_slice(chunk);
        stream.consume_unpin(n);
        if tail.len() > 2 * keep {
            tail.drain(..tail.len() - keep);
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    Ok(tail)
}

/// What a Job's log says.
#[derive(Debug, PartialEq)]
pub(crate) enum Answer {
    /// The result frame and the invocation's logs.
    Result(ResultFrame, String),
    /// The function failed to load.
    InitFailed(String, Option<String>),
}

/// Finds the frame after the last log marker in a Job's log: the result of `id` (with
/// the logs printed between the `ready` frame and the marker), or an `init_error`.
pub(crate) fn parse_log(log: &[u8], marker: &str, id: &str) -> Option<Answer> {
    let needle = format!("\n{marker}\n");
    let at = rfind(log, needle.as_bytes())?;
    let after = &log[at + needle.len()..];
    let line = after.split(|&b| b == b'\n').next()?;
    let frame: Value = serde_json::from_slice(line).ok()?;
    match frame.get("type").and_then(Value::as_str) {
        Some("init_error") => Some(Answer::InitFailed(
            frame
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            frame
                .get("traceback")
                .and_then(Value::as_str)
                .map(String::from),
        )),
        Some("result") => {
            let result: ResultFrame = serde_json::from_value(frame).ok()?;
            if result.id != id {
                return None;
            }
            let before = &log[..at];
            let ready = format!("\n{marker}\n{{\"type\":\"ready\"}}\n");
            let start = rfind(before, ready.as_bytes())
                .map(|i| i + ready.len())
                .unwrap_or(0);
            let logs = String::from_utf8_lossy(&before[start.min(before.len())..]).into_owned();
            Some(Answer::Result(result, logs))
        }
        _ => None,
    }
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

/// The call's outcome from a result frame, as the warm pool would give it.
pub(crate) fn answer(result: ResultFrame, logs: String) -> Result<Output> {
    let logs = match &result.logs {
        Some(own) if !own.is_empty() => format!("{own}{logs}"),
        _ => logs,
    };
    if result.ok {
        return Ok(Output {
            value: result.output,
            logs: Some(logs),
        });
    }
    let mut e = result
        .error
        .map(|e| e.into_error())
        .unwrap_or_else(|| Error::Function {
            message: "the function failed without saying why".into(),
            traceback: None,
            logs: None,
        });
    if let Error::Function { logs: l, .. } = &mut e {
        *l = Some(logs);
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_is_the_frame_after_the_last_marker() {
        let m = "sopm-log-end-x";
        let log = format!(
            "{{\"type\":\"hello\",\"runner\":\"python\"}}\nloading\n{m}\n{{\"type\":\"ready\"}}\nprint 1\nprint 2\n\n{m}\n{{\"type\":\"result\",\"id\":\"j1\",\"ok\":true,\"output\":{{\"a\":1}}}}\n"
        );
        let Some(Answer::Result(r, logs)) = parse_log(log.as_bytes(), m, "j1") else {
            panic!("no result in {log}")
        };
        assert_eq!(r.output, serde_json::json!({"a": 1}));
        assert_eq!(logs, "print 1\nprint 2\n");
        assert_eq!(parse_log(log.as_bytes(), m, "other"), None);
        let failed = format!(
            "x\n{m}\n{{\"type\":\"init_error\",\"message\":\"boom\"}}\n{{\"type\":\"result\"}}\n"
        );
        assert_eq!(
            parse_log(failed.as_bytes(), m, "j1"),
            Some(Answer::InitFailed("boom".into(), None))
        );
        assert_eq!(parse_log(b"no marker here\n", m, "j1"), None);
    }
}
