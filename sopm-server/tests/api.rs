//! The HTTP API driven in-process (`oneshot`, no socket), with in-memory storage.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sopm_server::config::{AuthMode, ServerConfig, Storage};
use sopm_server::{app, server::build_platform, ApiConfig, AppState};
use tower::ServiceExt;

fn state_with(f: impl FnOnce(&mut ServerConfig)) -> AppState {
    let mut c = ServerConfig {
        storage: Storage::Memory,
        ..Default::default()
    };
    f(&mut c);
    let platform = build_platform(&c).unwrap();
    let s = AppState::new(platform, ApiConfig::from(&c));
    s.set_ready(true);
    s
}

fn state() -> AppState {
    state_with(|_| {})
}

async fn call(
    s: &AppState,
    method: &str,
    uri: &str,
    body: Option<Vec<u8>>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    let resp = app(s.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v, headers)
}

async fn post(s: &AppState, uri: &str, body: Value) -> (StatusCode, Value, axum::http::HeaderMap) {
    call(s, "POST", uri, Some(serde_json::to_vec(&body).unwrap())).await
}

async fn get(s: &AppState, uri: &str) -> (StatusCode, Value) {
    let (st, v, _) = call(s, "GET", uri, None).await;
    (st, v)
}

async fn wait_terminal(s: &AppState, id: &str, tenant: Option<&str>) -> Value {
    let q = tenant.map(|t| format!("?user_id={t}")).unwrap_or_default();
    for _ in 0..500 {
        let (st, v) = get(s, &format!("/api/status/{id}{q}")).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        if !matches!(v["status"].as_str(), Some("queued" | "running")) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test]
async fn lists_the_whole_catalog() {
    let (st, v) = get(&state(), "/api/functions").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["count"], 100);
    let add = v["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "math.add")
        .unwrap();
    assert_eq!(add["category"], "math");
    assert_eq!(add["input_schema"]["required"], json!(["a", "b"]));
    assert_eq!(add["example"]["output"], 5);
}

#[tokio::test]
async fn executes_and_waits_for_the_result() {
    let s = state();
    let (st, v, _) = post(
        &s,
        "/api/execute",
        json!({"function": "math.add", "input": {"a": 2, "b": 3}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["output"], 5);
    assert_eq!(v["status"], "succeeded");
    let (st, job) = get(&s, &format!("/api/status/{}", v["id"].as_str().unwrap())).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(job["output"], 5);
    assert_eq!(job["input"], json!({"a": 2, "b": 3}));

    // A name written with escapes is the same name (it cannot be borrowed from the body).
    let body = br#"{"function":"math\u002eadd","input":{"a":2,"b":3}}"#.to_vec();
    let (st, v, _) = call(&s, "POST", "/api/execute", Some(body)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["function"], &v["output"]),
        (&json!("math.add"), &json!(5))
    );
}

#[tokio::test]
async fn bad_requests_get_clear_json_errors() {
    let s = state();
    let (st, v, _) = call(&s, "POST", "/api/execute", Some(b"{not json".to_vec())).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "invalid_input");

    let (st, v, _) = call(&s, "POST", "/api/execute", Some(Vec::new())).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("empty"));

    // A body that is not UTF-8 is refused with where it went wrong; text that is
    // (accents and all) goes through as sent.
    let mut body = br#"{"function": "text.uppercase", "input": {"text": "caf"#.to_vec();
    body.extend_from_slice(b"\xff\xfe\"}}");
    let (st, v, _) = call(&s, "POST", "/api/execute", Some(body)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_input");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("unicode") && message.contains("column"),
        "{message}"
    );
    let (st, v, _) = post(
        &s,
        "/api/execute",
        json!({"function": "text.uppercase", "input": {"text": "café ÿ 😀"}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["output"], "CAFÉ Ÿ 😀");

    let (st, v, _) = post(
        &s,
        "/api/execute",
        json!({"function": "math.add", "input": {"a": "2", "b": 3}}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "invalid_input");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("'a'"),
        "{v}"
    );
    assert_eq!(v["status"], "failed");

    let (st, v, _) = post(
        &s,
        "/api/execute",
        json!({"function": "math.divide", "input": {"a": 1, "b": 0}}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "domain_error");

    let (st, v, _) = post(
        &s,
        "/api/execute",
        json!({"function": "no.such", "input": {}}),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");

    let (st, v, _) = post(
        &s,
        "/api/execute",
        json!({"function": "math.add", "inptu": {}}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("inptu"));

    let (st, v) = get(&s, "/api/status/not-a-job").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");

    let (st, v) = get(&s, "/no/such/route").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");

    // The server still serves after all of that.
    let (st, v, _) = post(
        &s,
        "/api/execute",
        json!({"function": "math.add", "input": {"a": 1, "b": 1}}),
    )
    .await;
    assert_eq!((st, v["output"].clone()), (StatusCode::OK, json!(2)));
}

#[tokio::test]
async fn huge_bodies_are_413() {
    let s = state_with(|c| c.max_body_bytes = 64 * 1024);
    let text = "x".repeat(100 * 1024);
    let (st, v, _) = post(
        &s,
        "/api/execute",
        json!({"function": "text.length", "input": {"text": text}}),
    )
    .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn async_calls_answer_202_and_finish() {
    let s = state();
    let (st, v, _) = post(
        &s,
        "/api/execute",
        json!({"function": "math.multiply", "input": {"a": 6, "b": 7}, "async": true}),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap();
    assert_eq!(v["status_url"], format!("/api/status/{id}"));
    let job = wait_terminal(&s, id, None).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["output"], 42);
}

#[tokio::test]
async fn a_wait_that_runs_out_answers_202_and_the_job_goes_on() {
    let s = state();
    let (st, v, _) = post(
        &s,
        "/api/execute",
        json!({"function": "util.sleep", "input": {"ms": 300}, "wait_ms": 10}),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let job = wait_terminal(&s, v["id"].as_str().unwrap(), None).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["output"]["slept_ms"], 300);
}

#[tokio::test]
async fn jobs_can_be_cancelled_once() {
    let s = state();
    let (_, v, _) = post(
        &s,
        "/api/execute",
        json!({"function": "util.sleep", "input": {"ms": 10000}, "async": true}),
    )
    .await;
    let id = v["id"].as_str().unwrap();
    let (st, job, _) = call(&s, "POST", &format!("/api/jobs/{id}/cancel"), None).await;
    assert_eq!(st, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "cancelled");
    let (st, v, _) = call(&s, "POST", &format!("/api/jobs/{id}/cancel"), None).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "conflict");
}

#[tokio::test]
async fn tenants_see_only_their_own_jobs() {
    let s = state();
    let (_, v, _) = post(
        &s,
        "/api/execute?user_id=alice",
        json!({"function": "math.add", "input": {"a": 1, "b": 2}}),
    )
    .await;
    let id = v["id"].as_str().unwrap();
    assert_eq!(
        get(&s, &format!("/api/status/{id}?user_id=alice")).await.0,
        StatusCode::OK
    );
    let (st, v) = get(&s, &format!("/api/status/{id}?user_id=bob")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");
    assert_eq!(
        get(&s, &format!("/api/status/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
    let (st, _, _) = call(
        &s,
        "POST",
        &format!("/api/jobs/{id}/cancel?user_id=bob"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v, _) = post(
        &s,
        "/api/execute?user_id=bad%20id",
        json!({"function": "math.add", "input": {"a": 1, "b": 2}}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let s = state_with(|c| {
        c.max_concurrency = 1;
        c.queue_capacity = 1;
    });
    let sleep = json!({"function": "util.sleep", "input": {"ms": 2000}, "async": true});
    assert_eq!(
        post(&s, "/api/execute", sleep.clone()).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        post(&s, "/api/execute", sleep.clone()).await.0,
        StatusCode::ACCEPTED
    );
    let (st, v, headers) = post(&s, "/api/execute", sleep).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "overloaded");
    assert_eq!(headers["retry-after"], "1");
    let (_, stats) = get(&s, "/api/stats").await;
    assert_eq!(stats["jobs"]["rejected"], 1);
    assert_eq!(stats["jobs"]["queue_depth"], 1);
}

#[tokio::test]
async fn a_job_past_its_time_limit_is_504() {
    let s = state();
    let (st, v, _) = post(
        &s,
        "/api/execute",
        json!({"function": "util.sleep", "input": {"ms": 5000}, "timeout_ms": 50}),
    )
    .await;
    assert_eq!(st, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_eq!(v["error"]["code"], "timeout");
    assert_eq!(v["status"], "timed_out");
}

#[tokio::test]
async fn stats_metrics_and_probes() {
    let s = state();
    for _ in 0..3 {
        post(
            &s,
            "/api/execute",
            json!({"function": "math.add", "input": {"a": 1, "b": 1}}),
        )
        .await;
    }
    post(
        &s,
        "/api/execute",
        json!({"function": "math.sqrt", "input": {"x": -1}}),
    )
    .await;
    let (st, stats) = get(&s, "/api/stats").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(stats["jobs"]["succeeded"], 3);
    assert_eq!(stats["jobs"]["failed"], 1);
    let add = stats["jobs"]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function"] == "math.add")
        .unwrap();
    assert_eq!(add["calls"], 3);
    assert!(stats["uptime_s"].as_f64().unwrap() >= 0.0);

    let (st, text) = get(&s, "/metrics").await;
    assert_eq!(st, StatusCode::OK);
    let text = text.as_str().unwrap();
    assert!(
        text.contains("sopm_jobs_finished_total{status=\"succeeded\"} 3"),
        "{text}"
    );
    assert!(text.contains("sopm_function_calls_total{function=\"math.add\"} 3"));

    assert_eq!(get(&s, "/healthz").await.0, StatusCode::OK);
    assert_eq!(get(&s, "/readyz").await.0, StatusCode::OK);
    s.set_ready(false);
    assert_eq!(get(&s, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn every_listed_example_answers_through_http() {
    let s = state();
    let (_, list) = get(&s, "/api/functions").await;
    for f in list["functions"].as_array().unwrap() {
        let (st, v, _) = post(
            &s,
            "/api/execute",
            json!({"function": f["name"], "input": f["example"]["input"]}),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{}: {v}", f["name"]);
        if f["deterministic"] == true {
            assert_eq!(v["output"], f["example"]["output"], "{}", f["name"]);
        }
    }
}

/// A GET with an `Authorization` header.
async fn get_with(s: &AppState, uri: &str, authorization: &str) -> StatusCode {
    let req = Request::builder()
        .uri(uri)
        .header("authorization", authorization)
        .body(Body::empty())
        .unwrap();
    app(s.clone()).oneshot(req).await.unwrap().status()
}

#[tokio::test]
async fn metrics_need_the_metrics_token_when_one_is_set_or_auth_is_on() {
    let token = sopm_server::config::MetricsToken::new("m3tr1cs-s3cret");
    // A token set: without it or with another, 401; with it, the figures.
    for auth in [AuthMode::Off, AuthMode::ApiKey] {
        let s = state_with(|c| {
            c.auth = auth;
            c.metrics_token = token.clone();
        });
        let (st, v) = get(&s, "/metrics").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{auth:?}: {v}");
        assert_eq!(v["error"]["code"], "unauthorized");
        assert_eq!(
            get_with(&s, "/metrics", "Bearer not-the-token").await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get_with(&s, "/metrics", "Bearer m3tr1cs-s3cret").await,
            StatusCode::OK
        );
    }
    // Auth on and no token: nobody gets them.
    let s = state_with(|c| c.auth = AuthMode::ApiKey);
    let (st, v) = get(&s, "/metrics").await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "metrics_token_required");
    // The token never shows in the settings' Debug form.
    let c = ServerConfig {
        metrics_token: token,
        ..Default::default()
    };
    assert!(!format!("{c:?}").contains("m3tr1cs"));
}

#[tokio::test]
async fn a_tenant_past_its_queue_share_gets_429_quota_exceeded_while_others_run() {
    let s = state_with(|c| {
        c.max_concurrency = 1;
        c.queue_capacity = 10;
        c.jobs.max_queued_per_tenant = Some(2);
    });
    let sleep = |user: &str, ms: u64| json!({"function": "util.sleep", "input": {"ms": ms}, "async": true, "user_id": user});
    for _ in 0..3 {
        let (st, v, _) = post(&s, "/api/execute", sleep("flooder", 300)).await;
        assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    }
    let (st, v, headers) = post(&s, "/api/execute", sleep("flooder", 300)).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "quota_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("queued_jobs"),
        "{v}"
    );
    assert_eq!(headers["retry-after"], "1");
    // Another tenant is still accepted, and its job runs.
    let (st, v, _) = post(&s, "/api/execute", sleep("neighbour", 0)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let job = wait_terminal(&s, v["id"].as_str().unwrap(), Some("neighbour")).await;
    assert_eq!(job["status"], "succeeded", "{job}");
}
