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
    let mut keys: Vec<&str> = stats
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
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

#[cfg(feature = "cluster")]
#[path = "../../sopm-backends/tests/support/programs.rs"]
mod programs;

#[cfg(feature = "cluster")]
#[path = "../../sopm-backends/tests/support/redis_server.rs"]
mod redis_server;

#[cfg(feature = "cluster")]
#[path = "../../sopm-backends/tests/support/oci_registry.rs"]
mod oci_registry;

/// A gateway and a worker as real `sopm` processes over a real redis-server and a real
/// registry, each on its own loopback port.
#[cfg(feature = "cluster")]
mod nodes {
    use std::path::Path;
    use std::time::Duration;

    use serde_json::{json, Value};

    use super::oci_registry::OciRegistry;
    use super::redis_server::RedisServer;
    use super::support::server::{Server, ServerOptions};
    use super::support::{poll, skip};

    /// Redis and the registry of one test, or `None` (skip) without them.
    pub fn backing(test: &str) -> Option<(RedisServer, OciRegistry)> {
        let redis = RedisServer::start(test)?;
        let registry = OciRegistry::start(test)?;
        Some((redis, registry))
    }

    /// `sopm serve --role ROLE` over `redis` and `registry`, data in `data/ID`, ready.
    pub fn node(
        role: &str,
        id: &str,
        redis: &RedisServer,
        registry: &OciRegistry,
        data: &Path,
        tweak: impl FnOnce(ServerOptions) -> ServerOptions,
    ) -> Server {
        node_at(role, id, &redis.url(), &registry.url(), data, tweak)
    }

    /// `sopm serve --role ROLE` over the Redis and registry at these URLs.
    pub fn node_at(
        role: &str,
        id: &str,
        redis_url: &str,
        registry_url: &str,
        data: &Path,
        tweak: impl FnOnce(ServerOptions) -> ServerOptions,
    ) -> Server {
        let options = ServerOptions::new()
            .data_dir(data.join(id))
            .args(["--role", role, "--node-id", id])
            .args(["--redis", redis_url])
            .args(["--registry", &format!("{registry_url}/sopm/functions")])
            .timeout(Duration::from_secs(120));
        Server::start(tweak(options))
    }

    /// A directory holding none of the sandbox tools: a gateway's `PATH`.
    pub fn path_without_sandbox_tools(dir: &Path) -> std::path::PathBuf {
        let bin = dir.join("empty-bin");
        std::fs::create_dir_all(&bin).unwrap();
        for tool in ["bwrap", "runsc", "docker"] {
            assert!(!bin.join(tool).exists());
        }
        bin
    }

    /// The job `id`'s record once it has finished, read through `server`.
    pub fn finished(server: &Server, id: &str) -> Value {
        poll(Duration::from_secs(60), Duration::from_millis(50), || {
            let (st, v) = server.get(&format!("/api/status/{id}"));
            assert_eq!(st, 200, "status of {id}: {v}");
            match v["status"].as_str() {
                Some("queued" | "running") => Err(format!("job {id} did not finish: {v}")),
                _ => Ok(v),
            }
        })
    }

    /// An async `math.add` through `gateway`; returns the job id.
    pub fn async_add(gateway: &Server, a: i64, b: i64) -> String {
        let (st, v) = gateway.post_json(
            "/api/execute",
            &json!({"function": "math.add", "input": {"a": a, "b": b}, "async": true}),
        );
        assert_eq!(st, 202, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    /// Whether the worker's user-function test can run here (bubblewrap).
    pub fn sandbox_skipped() -> bool {
        skip::skipped(skip::bwrap_missing())
    }
}

#[cfg(feature = "cluster")]
#[test]
fn a_gateway_without_sandbox_tools_queues_what_a_worker_runs_and_builds() {
    use nodes::*;
    use serde_json::json;
    use std::time::Duration;

    let Some((redis, registry)) = backing("gateway_and_worker") else {
        return;
    };
    if sandbox_skipped() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bare = path_without_sandbox_tools(dir.path());
    let gateway = node("gateway", "gw", &redis, &registry, dir.path(), |o| {
        o.env("PATH", &bare)
    });

    // Before any worker: a waiting built-in runs in the gateway itself; an async one
    // waits in the queue, since nothing that takes jobs is up.
    let (st, v) = gateway.post_json(
        "/api/execute",
        &json!({"function": "math.add", "input": {"a": 2, "b": 3}}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["output"], 5);
    let early = async_add(&gateway, 20, 22);
    let (st, v) = gateway.get(&format!("/api/status/{early}"));
    assert_eq!((st, v["status"].as_str()), (200, Some("queued")), "{v}");

    let worker = node("worker", "w1", &redis, &registry, dir.path(), |o| o);
    let done = finished(&gateway, &early);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"], 42);
    let later = async_add(&gateway, 1, 1);
    assert_eq!(finished(&gateway, &later)["output"], 2);

    // A user function uploaded through the gateway is built by the worker, its
    // artifact goes through the registry, and it is called through the gateway.
    let (st, v) = gateway.post_json(
        "/api/user-functions",
        &json!({
            "name": "double", "runtime": "python", "handler": "main.handle",
            "files": {"main.py": "def handle(event, context):\n    return event * 2\n"},
        }),
    );
    assert_eq!(st, 202, "{v}");
    let f = gateway.built_function("/api/user-functions/double");
    assert_eq!(f["status"], "ready", "{f}");
    let (st, v) = gateway.post_json("/api/user-functions/double/execute", &json!({"input": 21}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["output"], 42);

    // The stats of the gateway show both nodes.
    let stats = support::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        let (st, v) = gateway.get("/api/stats");
        assert_eq!(st, 200, "{v}");
        let nodes = v["cluster"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if nodes.len() == 2 {
            Ok(v)
        } else {
            Err(format!("the stats do not show both nodes: {v}"))
        }
    });
    let mut seen: Vec<(String, String, bool)> = stats["cluster"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node_id"].as_str().unwrap().to_string(),
                n["role"].as_str().unwrap().to_string(),
                n["backends"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|b| b == "process"),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("gw".to_string(), "gateway".to_string(), false),
            ("w1".to_string(), "worker".to_string(), true),
        ],
        "{stats}"
    );
    for n in stats["cluster"]["nodes"].as_array().unwrap() {
        assert!(n["last_seen_ms"].as_u64().unwrap() > 0, "{n}");
        assert!(
            n["address"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{n}"
        );
    }
    assert!(
        stats["cluster"]["totals"]["submitted"].as_u64().is_some(),
        "{stats}"
    );

    // The worker serves no API.
    let (st, v) = worker.get("/api/functions");
    assert_eq!(st, 404, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("worker"),
        "{v}"
    );
    let (st, _) = worker.get("/metrics");
    assert_eq!(st, 200);
}

#[cfg(feature = "cluster")]
#[test]
fn redis_down_is_a_503_and_not_ready_and_the_node_serves_again_when_it_is_back() {
    use nodes::*;
    use serde_json::json;
    use std::time::Duration;

    let Some((mut redis, registry)) = backing("redis_down") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bare = path_without_sandbox_tools(dir.path());
    let gateway = node("gateway", "gw", &redis, &registry, dir.path(), |o| {
        o.env("PATH", &bare)
    });
    let id = async_add(&gateway, 3, 4);

    redis.kill();
    let (st, v) = gateway.get(&format!("/api/status/{id}"));
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["error"]["code"], "unavailable", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("redis"),
        "the message says what is unreachable: {v}"
    );
    let (st, v) = gateway.post_json(
        "/api/execute",
        &json!({"function": "math.add", "input": {"a": 1, "b": 2}, "async": true}),
    );
    assert_eq!(
        (st, &v["error"]["code"]),
        (503, &json!("unavailable")),
        "{v}"
    );
    let (st, v) = gateway.get("/readyz");
    assert_eq!(st, 503, "{v}");
    let (st, _) = gateway.get("/healthz");
    assert_eq!(st, 200, "the process is alive");

    redis.restart();
    support::poll(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || match gateway.get("/readyz") {
            (200, _) => Ok(()),
            (st, v) => Err(format!("not ready again after Redis came back: {st} {v}")),
        },
    );
    let (st, v) = gateway.get(&format!("/api/status/{id}"));
    assert_eq!(
        st, 200,
        "the job acknowledged before Redis went down is still there: {v}"
    );
    let (st, v) = gateway.post_json(
        "/api/execute",
        &json!({"function": "math.add", "input": {"a": 1, "b": 2}}),
    );
    assert_eq!((st, &v["output"]), (200, &json!(3)), "{v}");
}

#[cfg(feature = "cluster")]
#[test]
fn keys_made_with_sopm_keys_in_redis_are_what_a_gateway_accepts() {
    use nodes::*;
    use support::http::Request;

    let Some((redis, registry)) = backing("keys_in_redis") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(support::BIN)
        .args(["keys", "create", "--tenant", "acme", "--label", "ci"])
        .args(["--redis", &redis.url()])
        .env_remove("SOPM_REDIS_URL")
        .output()
        .expect("run sopm keys");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!secret.is_empty());

    let gateway = node("gateway", "gw", &redis, &registry, dir.path(), |o| {
        o.args(["--auth", "api_key"])
    });
    let add = r#"{"function": "math.add", "input": {"a": 1, "b": 2}}"#;
    let (st, v) = gateway.request(&Request::json(
        "POST",
        "/api/execute",
        Some(&serde_json::from_str(add).unwrap()),
    ));
    assert_eq!(st, 401, "no key: {v}");
    let (st, v) = gateway.request(
        &Request::json(
            "POST",
            "/api/execute",
            Some(&serde_json::from_str(add).unwrap()),
        )
        .header("authorization", &format!("Bearer {secret}")),
    );
    assert_eq!((st, &v["output"]), (200, &serde_json::json!(3)), "{v}");
}

#[cfg(feature = "cluster")]
#[test]
fn a_node_started_before_redis_waits_for_it_and_serves_once_it_answers() {
    use nodes::*;

    let Some((mut redis, registry)) = backing("before_redis") else {
        return;
    };
    redis.kill();
    let dir = tempfile::tempdir().unwrap();
    let bare = path_without_sandbox_tools(dir.path());
    // Redis comes up while the gateway is starting; `node` returns once /readyz is 200.
    let (redis_url, registry_url) = (redis.url(), registry.url());
    let gateway = std::thread::scope(|scope| {
        let starting = scope.spawn(|| {
            node_at(
                "gateway",
                "gw",
                &redis_url,
                &registry_url,
                dir.path(),
                |o| o.env("PATH", &bare),
            )
        });
        std::thread::sleep(std::time::Duration::from_secs(1));
        assert!(
            !starting.is_finished(),
            "the gateway was ready without Redis"
        );
        redis.restart();
        starting.join().unwrap()
    });
    let id = async_add(&gateway, 2, 2);
    let (st, v) = gateway.get(&format!("/api/status/{id}"));
    assert_eq!(st, 200, "{v}");
}

#[cfg(feature = "cluster")]
#[test]
fn an_all_node_on_redis_is_gateway_and_worker_at_once() {
    use nodes::*;
    use serde_json::json;

    let Some((redis, registry)) = backing("all_on_redis") else {
        return;
    };
    if sandbox_skipped() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let all = node("all", "solo", &redis, &registry, dir.path(), |o| o);
    let id = async_add(&all, 40, 2);
    assert_eq!(finished(&all, &id)["output"], 42);
    let (st, v) = all.post_json(
        "/api/user-functions",
        &json!({
            "name": "triple", "runtime": "python", "handler": "main.handle",
            "files": {"main.py": "def handle(event, context):\n    return event * 3\n"},
        }),
    );
    assert_eq!(st, 202, "{v}");
    assert_eq!(
        all.built_function("/api/user-functions/triple")["status"],
        "ready"
    );
    let (st, v) = all.post_json("/api/user-functions/triple/execute", &json!({"input": 14}));
    assert_eq!((st, &v["output"]), (200, &json!(42)), "{v}");
    let (st, stats) = all.get("/api/stats");
    assert_eq!(st, 200, "{stats}");
    let nodes = stats["cluster"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{stats}");
    assert_eq!(nodes[0]["role"], "all");
    assert!(
        nodes[0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b == "process"),
        "{stats}"
    );
}
