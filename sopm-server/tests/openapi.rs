//! docs/openapi.json and the server do not drift apart: the document's paths are the
//! router's, each documented method is routed and each other method is 405, every
//! error code the server can emit is in the document, and every operation lists the
//! answers every request of its kind can get. (scripts/contract.sh fuzzes the rest
//! against the running server.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use sopm_server::config::{ServerConfig, Storage};
use sopm_server::{app, server::build_platform, ApiConfig, AppState};
use tower::ServiceExt;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn document() -> Value {
    let text = std::fs::read_to_string(workspace().join("docs/openapi.json")).unwrap();
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

/// The text of every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path, text));
        }
    }
    out
}

/// Every string literal that follows `marker` in `text`.
fn literals_after<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    text.match_indices(marker)
        .filter_map(|(at, _)| {
            let rest = &text[at + marker.len()..];
            let rest = rest.trim_start().strip_prefix('"')?;
            rest.split_once('"').map(|(lit, _)| lit)
        })
        .collect()
}

fn state() -> AppState {
    let c = ServerConfig {
        storage: Storage::Memory,
        ..Default::default()
    };
    let s = AppState::new(build_platform(&c).unwrap(), ApiConfig::from(&c));
    s.set_ready(true);
    s
}

/// Sends `method uri`, with a JSON body `{}` or with no body and no Content-Type.
async fn call(s: &AppState, method: &str, uri: &str, json: bool) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method.to_ascii_uppercase().as_str())
        .uri(uri);
    let req = if json {
        req.header("content-type", "application/json")
            .body(Body::from("{}"))
    } else {
        req.body(Body::empty())
    }
    .unwrap();
    let resp = app(s.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[test]
fn the_documented_paths_are_the_routers() {
    let doc = document();
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let mut routed = BTreeSet::new();
    for (_, text) in sources(&workspace().join("sopm-server/src")) {
        routed.extend(
            literals_after(&text, ".route(")
                .into_iter()
                .map(String::from),
        );
    }
    assert!(
        !routed.is_empty(),
        "no .route(\"...\") found in sopm-server/src"
    );
    assert_eq!(
        documented, routed,
        "docs/openapi.json's paths (left) and the router's (right) differ"
    );
}

#[tokio::test]
async fn each_documented_method_is_routed_and_each_other_is_405() {
    let doc = document();
    let s = state();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        // A UUID is a well-formed job id and function name alike.
        let uri = path.replace("{id}", "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
        for method in METHODS {
            if ops.get(method).is_some() {
                let (status, body) = call(&s, method, &uri, true).await;
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                assert!(
                    !body.contains("no route for"),
                    "{method} {path} is documented but not routed: {body}"
                );
                let documented = &ops[method]["responses"];
                assert!(
                    documented.get(status.as_str()).is_some(),
                    "{method} {path} answered {status}, which the document does not list: {body}"
                );
            } else {
                // No Content-Type: a method the path lacks is 405 before any check
                // of how the body is sent.
                let (status, body) = call(&s, method, &uri, false).await;
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is not documented but answers: {body}"
                );
            }
        }
    }
}

#[test]
fn every_error_code_the_server_emits_is_documented() {
    let doc = document();
    let documented: BTreeSet<&str> = doc["components"]["schemas"]["ErrorInfo"]["properties"]
        ["code"]["enum"]
        .as_array()
        .expect("ErrorInfo.code has an enum of the codes")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    // The fixed codes: the arms of `Error::code`.
    let error_rs = std::fs::read_to_string(workspace().join("sopm-core/src/error.rs")).unwrap();
    let body = error_rs
        .split_once("pub fn code(&self)")
        .and_then(|(_, rest)| rest.split_once("\n    }\n"))
        .map(|(body, _)| body)
        .expect("Error::code in sopm-core/src/error.rs");
    let mut emitted: BTreeSet<String> = literals_after(body, "=>")
        .into_iter()
        .map(String::from)
        .collect();
    assert!(
        emitted.contains("invalid_input") && emitted.len() > 10,
        "{emitted:?}"
    );
    // The codes of `Error::forbidden(code, ..)` wherever they are raised, and those
    // written straight into an error body (`"code": "..."`).
    for krate in [
        "sopm-core",
        "sopm-server",
        "sopm-backends",
        "sopm-functions",
    ] {
        for (path, text) in sources(&workspace().join(krate).join("src")) {
            let raised = literals_after(&text, "forbidden(");
            let written = literals_after(&text, "{\"code\": ");
            for code in raised.into_iter().chain(written) {
                assert!(!code.is_empty(), "{}", path.display());
                emitted.insert(code.to_string());
            }
        }
    }
    let missing: Vec<&String> = emitted
        .iter()
        .filter(|c| !documented.contains(c.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "error codes the server emits but docs/openapi.json does not list: {missing:?}"
    );
}

/// The operation's answers, with `$ref`s to shared answers resolved.
fn answers<'a>(doc: &'a Value, op: &'a Value) -> Vec<(&'a str, &'a Value)> {
    op["responses"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(status, r)| {
            let r = match r.get("$ref").and_then(Value::as_str) {
                Some(path) => doc
                    .pointer(path.trim_start_matches('#'))
                    .unwrap_or_else(|| panic!("{path} is not in the document")),
                None => r,
            };
            (status.as_str(), r)
        })
        .collect()
}

#[test]
fn every_operation_lists_the_answers_of_its_kind() {
    let doc = document();
    let global_security = &doc["security"];
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let name = format!("{method} {path}");
            let statuses: BTreeSet<&str> = answers(&doc, op).iter().map(|(s, _)| *s).collect();
            for (status, r) in answers(&doc, op) {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &r["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        schema, "#/components/schemas/Error",
                        "{name} {status}: an error answer is the JSON error object"
                    );
                }
            }
            let security = op.get("security").unwrap_or(global_security);
            let needs_key = security.as_array().is_some_and(|s| !s.is_empty());
            assert_eq!(
                needs_key,
                statuses.contains("401"),
                "{name}: 401 is listed exactly where a key is needed"
            );
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415"] {
                    assert!(statuses.contains(status), "{name} takes a body: {status}");
                }
            }
            if op["parameters"].as_array().is_some_and(|p| !p.is_empty()) {
                assert!(statuses.contains("400"), "{name} has parameters: 400");
            }
        }
    }
}

#[tokio::test]
async fn query_values_outside_the_documented_ranges_are_json_400s() {
    let s = state();
    for uri in [
        "/api/user-functions/hello/logs?limit=0",
        "/api/user-functions/hello/logs?limit=201",
        "/api/user-functions/hello/logs?limit=abc",
        "/api/user-functions/hello?version=abc",
        "/api/user-functions?user_id=a%20b",
    ] {
        let (status, body) = call(&s, "get", uri, false).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{uri}: {body}"));
        assert_eq!(v["error"]["code"], "invalid_input", "{uri}: {body}");
    }
    let (status, _) = call(&s, "get", "/api/user-functions/hello/logs?limit=200", false).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "in range, the function is looked up"
    );
}

#[tokio::test]
async fn a_user_id_in_the_body_does_not_hide_a_bad_one_in_the_query() {
    let s = state();
    let req = Request::builder()
        .method("POST")
        .uri("/api/execute?user_id=a%20b")
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"function": "math.add", "input": {"a": 1, "b": 2}, "user_id": "alice"}"#,
        ))
        .unwrap();
    let resp = app(s.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}
