//! The operator's policy and upload quotas over HTTP, through the real wiring
//! (`build_services` from a `ServerConfig`): an upload asking for a sandbox weaker than
//! its route is 403 `executor_not_allowed`, a tenant's own `[policy.tenants]` list
//! grants what it names, a standing quota is 403 `quota_exceeded` and one on builds in
//! flight is 429 `quota_exceeded` with `Retry-After`; the server keeps serving.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sopm_server::{app, ApiConfig, AppState, ServerConfig, Storage};
use tower::ServiceExt;

/// A server over the real wiring with memory storage and data under `dir`, python
/// routed to gVisor and node to process, settings adjusted by `tune`. Nothing boots a
/// sandbox: the uploads below are refused before any build, or build only.
fn wired(dir: &std::path::Path, tune: impl FnOnce(&mut ServerConfig)) -> AppState {
    let mut c = ServerConfig {
        storage: Storage::Memory,
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    c.executors
        .runtimes
        .insert("python".into(), "gvisor".into());
    c.executors.runtimes.insert("node".into(), "process".into());
    tune(&mut c);
    c.validate().unwrap();
    let services = sopm_server::server::build_services(&c).unwrap();
    let s = AppState::with_keys(services.platform, ApiConfig::from(&c), services.keys);
    s.set_ready(true);
    s
}

struct Answer {
    status: StatusCode,
    body: Value,
    retry_after: Option<String>,
}

async fn send(s: &AppState, method: &str, uri: &str, body: Option<Value>) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(match body {
            Some(b) => Body::from(serde_json::to_vec(&b).unwrap()),
            None => Body::empty(),
        })
        .unwrap();
    let resp = app(s.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        retry_after,
    }
}

/// Asserts that the error message of `a` contains each of `parts`.
fn assert_message_names(a: &Answer, parts: &[&str]) {
    let message = a.body["error"]["message"].as_str().unwrap();
    for part in parts {
        assert!(
            message.contains(part),
            "no {part:?} in the message: {}",
            a.body
        );
    }
}

/// `user` uploads the function `name` of `runtime` (one placeholder file), asking for
/// `executor` if given.
async fn upload(
    s: &AppState,
    name: &str,
    runtime: &str,
    executor: Option<&str>,
    user: &str,
) -> Answer {
    let (handler, file) = match runtime {
        "node" => ("index.handle", "index.js"),
        _ => ("main.handle", "main.py"),
    };
    let mut body = json!({
        "name": name,
        "runtime": runtime,
        "handler": handler,
        "files": {file: "x"},
        "user_id": user,
    });
    if let Some(e) = executor {
        body["executor"] = json!(e);
    }
    send(s, "POST", "/api/user-functions", Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_a_weaker_sandbox_is_403_executor_not_allowed_unless_granted() {
    let dir = tempfile::tempdir().unwrap();
    let s = wired(dir.path(), |c| {
        c.policy.tenants.insert(
            "ops".into(),
            sopm_server::config::TenantPolicySettings {
                allowed_executors: vec!["process".into()],
            },
        );
    });
    let a = upload(&s, "weak", "python", Some("process"), "alice").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert_eq!(
        a.body["error"]["code"], "executor_not_allowed",
        "{}",
        a.body
    );
    // The message names what is allowed.
    assert_message_names(&a, &["'process'", "allowed: ", "gvisor"]);
    let listed = send(&s, "GET", "/api/user-functions?user_id=alice", None).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert!(
        listed.body["functions"].as_array().unwrap().is_empty(),
        "nothing stored: {}",
        listed.body
    );

    let a = upload(&s, "weak", "python", Some("process"), "ops").await;
    assert_eq!(
        a.status,
        StatusCode::ACCEPTED,
        "[policy.tenants.ops] grants process: {}",
        a.body
    );
    assert_eq!(a.body["executor"], "process");

    let a = send(&s, "GET", "/api/functions", None).await;
    assert_eq!(a.status, StatusCode::OK, "the server keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_answer_403_for_standing_ones_and_429_with_retry_after_for_builds() {
    let dir = tempfile::tempdir().unwrap();
    let s = wired(dir.path(), |c| {
        c.uploads.max_functions_per_tenant = 1;
        c.uploads.max_builds_in_flight_per_tenant = 1;
        // Builds of bob's below wait for the only slot; a gated build keeps it.
        c.uploads.max_queued_builds = 64;
    });
    // A node build on the process backend's local builder: writes files, no sandbox.
    let a = upload(&s, "first", "node", None, "alice").await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    // While it may still be building, a second build is over builds_in_flight (1), or,
    // once it ended, a second function is over functions (1): both are quota_exceeded.
    let a = upload(&s, "second", "node", None, "alice").await;
    assert_eq!(a.body["error"]["code"], "quota_exceeded", "{}", a.body);
    match a.status {
        StatusCode::TOO_MANY_REQUESTS => assert!(a.retry_after.is_some(), "429 has Retry-After"),
        StatusCode::FORBIDDEN => assert!(a.retry_after.is_none()),
        other => panic!("unexpected status {other}: {}", a.body),
    }
    // Once the first build ended the answer is the standing quota.
    let mut standing = None;
    for _ in 0..500 {
        let a = upload(&s, "second", "node", None, "alice").await;
        if a.status == StatusCode::FORBIDDEN {
            standing = Some(a);
            break;
        }
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
        assert_message_names(&a, &["builds_in_flight"]);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let a = standing.expect("the first build ends");
    assert_eq!(a.body["error"]["code"], "quota_exceeded");
    assert_message_names(&a, &["functions", "limit is 1", "has 1"]);
    let a = upload(&s, "second", "node", None, "bob").await;
    assert_eq!(
        a.status,
        StatusCode::ACCEPTED,
        "bob has his own quota: {}",
        a.body
    );
}
