//! A web page must not be able to use a browser to drive the server: POST bodies need
//! `Content-Type: application/json` (a page sends `text/plain` anywhere without
//! asking), and a server without auth refuses a `Host` that is not its own (DNS
//! rebinding) and an `Origin` of another site. Driven in-process (`oneshot`).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sopm_server::config::{AuthMode, ServerConfig, Storage};
use sopm_server::{app, ApiConfig, AppState};
use tower::ServiceExt;

struct Server {
    state: AppState,
    key: Option<String>,
    _dir: tempfile::TempDir,
}

/// A server listening (in its settings) on 127.0.0.1:8080, memory storage.
async fn server(auth: AuthMode) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let c = ServerConfig {
        storage: Storage::Memory,
        data_dir: dir.path().to_path_buf(),
        auth,
        ..Default::default()
    };
    let services = sopm_server::server::build_services(&c).unwrap();
    let key = match auth {
        AuthMode::Off => None,
        AuthMode::ApiKey => {
            let tenant = sopm_core::TenantId::new("alice").unwrap();
            let (_, secret) = services.keys.create(&tenant, "").await.unwrap();
            Some(secret.expose().to_string())
        }
    };
    let state = AppState::with_keys(services.platform, ApiConfig::from(&c), services.keys);
    state.set_ready(true);
    Server {
        state,
        key,
        _dir: dir,
    }
}

/// A request as a browser or curl would send it: `headers` are added as given.
async fn send(
    s: &Server,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(key) = &s.key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let resp = app(s.state.clone())
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

const ADD: &str = r#"{"function": "math.add", "input": {"a": 2, "b": 3}}"#;

/// `POST /api/execute` of [`ADD`] with `headers`.
async fn execute(s: &Server, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    send(s, "POST", "/api/execute", headers, ADD).await
}

fn upload_body() -> String {
    json!({
        "name": "planted",
        "runtime": "python",
        "handler": "main.handle",
        "files": {"main.py": "def handle(event, context):\n    return 1\n"},
    })
    .to_string()
}

/// How many user functions the default tenant has.
async fn function_count(s: &Server) -> u64 {
    let (st, v) = send(s, "GET", "/api/user-functions", &[], "").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["count"].as_u64().unwrap()
}

#[tokio::test]
async fn a_cross_site_text_plain_upload_is_refused() {
    let s = server(AuthMode::Off).await;
    // What `<form enctype="text/plain">` or `fetch(.., {mode: "no-cors"})` sends: a
    // simple request, no preflight, a JSON text in a text/plain body.
    for content_type in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|t| ("content-type", t))
            .into_iter()
            .collect();
        let (st, v) = send(&s, "POST", "/api/user-functions", &headers, &upload_body()).await;
        assert_eq!(
            st,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}: {v}"
        );
        assert_eq!(v["error"]["code"], "unsupported_media_type", "{v}");
    }
    assert_eq!(function_count(&s).await, 0, "nothing was uploaded");
}

#[tokio::test]
async fn a_text_plain_execute_is_refused_with_or_without_auth() {
    for auth in [AuthMode::Off, AuthMode::ApiKey] {
        let s = server(auth).await;
        for content_type in ["text/plain", "multipart/form-data; boundary=x"] {
            let (st, v) = execute(&s, &[("content-type", content_type)]).await;
            assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{auth:?}: {v}");
            assert_eq!(v["error"]["code"], "unsupported_media_type");
        }
        for uri in [
            "/api/user-functions/planted/execute",
            "/api/jobs/0190a8a8-0000-7000-8000-000000000000/cancel",
        ] {
            let (st, v) = send(&s, "POST", uri, &[("content-type", "text/plain")], "{}").await;
            assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{uri}: {v}");
        }
        // JSON, with parameters or not, still runs.
        for content_type in ["application/json", "application/json; charset=utf-8"] {
            let (st, v) = execute(&s, &[("content-type", content_type)]).await;
            assert_eq!(st, StatusCode::OK, "{auth:?} {content_type}: {v}");
            assert_eq!(v["output"], 5, "{v}");
        }
    }
}

#[tokio::test]
async fn a_rebinding_host_is_refused_without_auth() {
    let s = server(AuthMode::Off).await;
    // After DNS rebinding the page's requests carry its own name as Host.
    for host in [
        "attacker.example:8080",
        "attacker.example",
        "127.0.0.1.nip.io:8080",
    ] {
        let (st, v) = send(&s, "GET", "/api/functions", &[("host", host)], "").await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{host}: {v}");
        assert_eq!(v["error"]["code"], "host_not_allowed", "{v}");
        let (st, v) = execute(&s, &[("host", host), ("content-type", "application/json")]).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{host}: {v}");
    }
    // With auth on the page has no key, so Host is not checked.
    let s = server(AuthMode::ApiKey).await;
    let (st, v) = send(
        &s,
        "GET",
        "/api/functions",
        &[("host", "sopm.example.com")],
        "",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn a_foreign_origin_is_refused_on_every_method_without_auth() {
    let s = server(AuthMode::Off).await;
    for origin in ["http://attacker.example", "null", "http://127.0.0.1:9999"] {
        for (method, uri, body) in [
            ("GET", "/api/functions", ""),
            ("GET", "/api/stats", ""),
            ("POST", "/api/execute", ADD),
            ("DELETE", "/api/user-functions/planted", ""),
        ] {
            let (st, v) = send(
                &s,
                method,
                uri,
                &[
                    ("host", "127.0.0.1:8080"),
                    ("origin", origin),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await;
            assert_eq!(st, StatusCode::FORBIDDEN, "{origin} {method} {uri}: {v}");
            assert_eq!(v["error"]["code"], "origin_not_allowed", "{v}");
        }
    }
}

#[tokio::test]
async fn same_origin_and_curl_style_requests_still_work() {
    let s = server(AuthMode::Off).await;
    for headers in [
        // curl and the CLI: a Host, no Origin.
        vec![("host", "localhost:8080")],
        vec![("host", "127.0.0.1:8080")],
        vec![("host", "[::1]:8080")],
        vec![("host", "localhost")],
        // A page served from the server itself.
        vec![
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ],
        vec![
            ("host", "localhost:8080"),
            ("origin", "http://localhost:8080"),
        ],
    ] {
        let mut with_type = headers.clone();
        with_type.push(("content-type", "application/json"));
        let (st, v) = execute(&s, &with_type).await;
        assert_eq!(st, StatusCode::OK, "{headers:?}: {v}");
        assert_eq!(v["output"], 5, "{v}");
        let (st, _) = send(&s, "GET", "/api/functions", &headers, "").await;
        assert_eq!(st, StatusCode::OK, "{headers:?}");
    }
    // A JSON upload from curl is accepted (multipart is the other documented form).
    let (st, v) = send(
        &s,
        "POST",
        "/api/user-functions",
        &[
            ("host", "localhost:8080"),
            ("content-type", "application/json"),
        ],
        &upload_body(),
    )
    .await;
    assert_ne!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{v}");
    assert_ne!(st, StatusCode::FORBIDDEN, "{v}");
}
