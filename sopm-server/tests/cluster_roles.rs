//! Cluster roles: a worker's HTTP surface and readiness in-process, the settings a node
//! refuses before it starts (the real `sopm` binary), and — with the `cluster` feature —
//! a gateway and a worker as real `sopm` processes over a real redis-server and a real
//! registry.

mod support;

use std::process::Command;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use sopm_core::Error;
use sopm_server::config::{Role, ServerConfig, Storage};
use sopm_server::readiness::ReadinessCheck;
use sopm_server::{app, server::build_platform, ApiConfig, AppState};
use tower::ServiceExt;

fn state(role: Role) -> AppState {
    let c = ServerConfig {
        storage: Storage::Memory,
        ..Default::default()
    };
    let s = AppState::new(
        build_platform(&c).unwrap(),
        ApiConfig {
            role,
            ..ApiConfig::from(&c)
        },
    );
    s.set_ready(true);
    s
}

async fn call(s: &AppState, method: &str, uri: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(if method == "POST" {
            Body::from(r#"{"function": "math.add", "input": {"a": 1, "b": 2}}"#)
        } else {
            Body::empty()
        })
        .unwrap();
    let resp = app(s.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

#[tokio::test]
async fn a_worker_serves_the_probes_and_metrics_and_answers_api_routes_with_a_json_404() {
    let worker = state(Role::Worker);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (st, body) = call(&worker, "GET", path).await;
        assert_eq!(st, StatusCode::OK, "{path}: {body}");
    }
    for (method, path) in [
        ("GET", "/api/functions"),
        ("POST", "/api/execute"),
        ("GET", "/api/stats"),
        ("GET", "/api/user-functions"),
        ("GET", "/api/openapi.json"),
    ] {
        let (st, body) = call(&worker, method, path).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("this node is a worker") && message.contains("gateway"),
            "{message}"
        );
    }
    // One process answers its stats as it always did: no `cluster`.
    let (st, stats) = call(&state(Role::All), "GET", "/api/stats").await;
    assert_eq!(st, StatusCode::OK, "{stats}");
    let mut keys: Vec<&str> = stats.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["jobs", "pools", "uptime_s"], "{stats}");
    // The same platform as a gateway serves the API.
    for role in [Role::Gateway, Role::All] {
        let (st, body) = call(&state(role), "POST", "/api/execute").await;
        assert_eq!(st, StatusCode::OK, "{role:?}: {body}");
        assert_eq!(body["output"], 3);
    }
}

#[tokio::test]
async fn readyz_asks_the_readiness_check_and_says_why_it_is_not_ready() {
    let s = state(Role::Gateway);
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = up.clone();
    s.set_readiness_check(ReadinessCheck::new("Redis", move || {
        let up = probe.load(std::sync::atomic::Ordering::SeqCst);
        async move {
            if up {
                Ok(())
            } else {
                Err(Error::Unavailable(
                    "redis at redis://127.0.0.1:1/ is unreachable: connection refused".into(),
                ))
            }
        }
    }));
    let (st, body) = call(&s, "GET", "/readyz").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is unreachable"),
        "{body}"
    );
    let (st, _) = call(&s, "GET", "/healthz").await;
    assert_eq!(st, StatusCode::OK, "alive while not ready");
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    let (st, body) = call(&s, "GET", "/readyz").await;
    assert_eq!(
        st,
        StatusCode::OK,
        "ready again once the check passes: {body}"
    );

    let stuck = state(Role::Worker);
    stuck.set_readiness_check(ReadinessCheck::new("Redis", || {
        futures::future::pending::<sopm_core::Result<()>>()
    }));
    let (st, body) = call(&stuck, "GET", "/readyz").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Redis did not answer within"),
        "{body}"
    );
}

/// Runs `sopm serve ARGS` (with `env`) and returns its exit code and stderr; the
/// settings are refused before it listens, so it exits at once.
fn refused(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(support::BIN)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(args)
        .env_remove("SOPM_ROLE")
        .env_remove("SOPM_REDIS_URL")
        .env_remove("SOPM_REGISTRY_URL")
        .envs(env.iter().copied())
        .env("SOPM_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sopm serve");
    // A server that accepted the settings would serve on: bound the wait, then kill it.
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sopm serve {args:?} {env:?} accepted its settings and kept serving");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before the settings are accepted"
    );
    (status.code(), stderr)
}

#[test]
fn settings_a_node_cannot_work_with_are_refused_before_it_starts() {
    let registry = "http://127.0.0.1:5000";
    for (args, env, says) in [
        (
            vec!["--role", "gateway"],
            vec![],
            "--role gateway needs --redis URL",
        ),
        (
            vec![],
            vec![("SOPM_ROLE", "worker")],
            "--role worker needs --redis",
        ),
        (
            vec!["--redis", "redis://127.0.0.1:6379"],
            vec![],
            "--redis needs --registry URL",
        ),
        (
            vec!["--redis", "127.0.0.1:6379", "--registry", registry],
            vec![],
            "is not a Redis URL",
        ),
        (
            vec!["--registry", "ftp://127.0.0.1:5000"],
            vec![("SOPM_REDIS_URL", "redis://:pw-XYZ@127.0.0.1:6379/x")],
            "the database 'x' is not a number",
        ),
        (
            vec!["--redis", "redis://127.0.0.1:6379", "--registry", "ftp://h"],
            vec![],
            "the scheme is 'ftp'",
        ),
        (
            vec!["--registry", registry],
            vec![],
            "--registry is a cluster setting and needs --redis",
        ),
        (
            vec![
                "--redis",
                "redis://127.0.0.1:6379",
                "--registry",
                registry,
                "--node-id",
                "node/1",
            ],
            vec![],
            "is not a node id",
        ),
    ] {
        let (code, stderr) = refused(&args, &env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} {env:?}: {stderr}");
        assert!(
            !stderr.contains("pw-XYZ"),
            "a password is never shown: {stderr}"
        );
    }
    let (code, stderr) = refused(&["--role", "leader"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("leader"), "{stderr}");
}

#[cfg(not(feature = "cluster"))]
#[test]
fn a_build_without_the_cluster_feature_says_how_to_get_one() {
    let (code, stderr) = refused(
        &[
            "--redis",
            "redis://127.0.0.1:6379",
            "--registry",
            "http://127.0.0.1:5000",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--features cluster"), "{stderr}");
}
