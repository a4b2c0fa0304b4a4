//! The user-function API driven in-process (`oneshot`), over a platform with a fake
//! builder (writes the files to a temporary directory; fails when the upload has a
//! `FAIL` file, waits while it has a `WAIT` file until the test opens the gate,
//! panics on `PANIC`) and a fake executor (echoes its input and records what it ran
//! and what it retired).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde_json::{json, Value};
use sopm_core::{
    Artifact, BuildLog, Builder, Error, Executor, FunctionVersion, Invocation, KeyStore,
    MemoryKeyStore, MemoryRegistry, Output, Platform, Registry, Result, Runtime, Source, Target,
    TenantId,
};
use sopm_server::{app, ApiConfig, AppState, AuthMode, UploadLimits};
use tokio::sync::Semaphore;
use tower::ServiceExt;

// What `sopm fn deploy` sends, built by the CLI's own code.
#[path = "../src/cli/pack.rs"]
mod pack;

// --- fakes ----------------------------------------------------------------------------

#[derive(Debug)]
struct FakeBuilder {
    root: PathBuf,
    gate: Arc<Semaphore>,
    removed: Mutex<Vec<Artifact>>,
}

#[async_trait]
impl Builder for FakeBuilder {
    fn name(&self) -> &str {
        "fake-builder"
    }

    async fn build(
        &self,
        version: &FunctionVersion,
        source: &Source,
        log: &dyn BuildLog,
    ) -> Result<Artifact> {
        log.append(&format!("building {} v{}\n", version.name, version.version))
            .await;
        if source.files.contains_key("WAIT") {
            log.append("waiting for the gate\n").await;
            let _ = self.gate.acquire().await.expect("gate").forget();
        }
        if source.files.contains_key("PANIC") {
            panic!("the fake builder panics on PANIC");
        }
        if source.files.contains_key("FAIL") {
            log.append("error: the upload has a FAIL file\n").await;
            return Err(Error::BuildFailed("FAIL file present".into()));
        }
        let dir = self
            .root
            .join(&version.function_id)
            .join(format!("v{}", version.version));
        for (path, bytes) in &source.files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        log.append(&format!("wrote {} files\n", source.files.len()))
            .await;
        Ok(Artifact::Directory {
            path: dir.to_string_lossy().into_owned(),
            digest: None,
        })
    }

    async fn remove(&self, artifact: &Artifact) -> Result<()> {
        self.removed.lock().push(artifact.clone());
        Ok(())
    }
}

#[derive(Debug, Default)]
struct FakeExecutor {
    ran: Mutex<Vec<(String, u32)>>,
    retired: Mutex<Vec<String>>,
    prepared: Mutex<Vec<(String, u32)>>,
}

#[async_trait]
impl Executor for FakeExecutor {
    fn name(&self) -> &str {
        "fake"
    }

    async fn invoke(&self, inv: Invocation) -> Result<Output> {
        let Target::User(v) = &inv.target else {
            return Err(Error::invalid("the fake runs user functions only"));
        };
        self.ran.lock().push((v.function_id.clone(), v.version));
        let Some(Artifact::Directory { path, .. }) = &v.artifact else {
            return Err(Error::Internal("no artifact".into()));
        };
        let main = std::fs::read_to_string(PathBuf::from(path).join("main.py")).unwrap_or_default();
        Ok(Output {
            value: json!({
                "input": *inv.input,
                "function": v.function_id,
                "version": v.version,
                "main": main,
            }),
            logs: Some(format!("ran {} v{}\n", v.name, v.version)),
        })
    }

    async fn prepare(&self, v: &FunctionVersion) -> Result<()> {
        assert!(v.artifact.is_some(), "prepare gets a ready version");
        self.prepared
            .lock()
            .push((v.function_id.clone(), v.version));
        Ok(())
    }

    async fn retire(&self, function_id: &str) -> Result<()> {
        self.retired.lock().push(function_id.to_string());
        Ok(())
    }
}

struct World {
    state: AppState,
    builder: Arc<FakeBuilder>,
    executor: Arc<FakeExecutor>,
    keys: Arc<MemoryKeyStore>,
    registry: Arc<MemoryRegistry>,
    _dir: tempfile::TempDir,
}

fn limits() -> UploadLimits {
    UploadLimits {
        max_json_body: 256 * 1024,
        max_multipart_body: 512 * 1024,
        max_files: 20,
        max_total_bytes: 256 * 1024,
        max_file_bytes: 64 * 1024,
    }
}

fn world(auth: AuthMode) -> World {
    let dir = tempfile::tempdir().unwrap();
    let builder = Arc::new(FakeBuilder {
        root: dir.path().to_path_buf(),
        gate: Arc::new(Semaphore::new(0)),
        removed: Mutex::new(Vec::new()),
    });
    let executor = Arc::new(FakeExecutor::default());
    let registry = Arc::new(MemoryRegistry::new());
    let platform = Platform::builder()
        .with_registry(registry.clone())
        .with_builder(Runtime::Python, builder.clone())
        .with_builder(Runtime::Node, builder.clone())
        .with_executor(Runtime::Python, executor.clone())
        .build()
        .unwrap();
    let keys = Arc::new(MemoryKeyStore::new());
    let state = AppState::with_keys(
        platform,
        ApiConfig {
            auth,
            uploads: limits(),
            ..Default::default()
        },
        keys.clone(),
    );
    state.set_ready(true);
    World {
        state,
        builder,
        executor,
        keys,
        registry,
        _dir: dir,
    }
}

// --- requests -------------------------------------------------------------------------

struct Answer {
    status: StatusCode,
    body: Value,
    headers: axum::http::HeaderMap,
}

async fn send(
    s: &AppState,
    method: &str,
    uri: &str,
    key: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = app(s.clone())
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        body,
        headers,
    }
}

async fn get(s: &AppState, uri: &str) -> Answer {
    send(s, "GET", uri, None, "application/json", Vec::new()).await
}

/// A GET with an API key.
async fn get_as(s: &AppState, uri: &str, key: &str) -> Answer {
    send(s, "GET", uri, Some(key), "", Vec::new()).await
}

async fn delete(s: &AppState, uri: &str) -> Answer {
    send(s, "DELETE", uri, None, "application/json", Vec::new()).await
}

async fn post(s: &AppState, uri: &str, body: Value) -> Answer {
    send(
        s,
        "POST",
        uri,
        None,
        "application/json",
        serde_json::to_vec(&body).unwrap(),
    )
    .await
}

fn hello(name: &str, main: &str) -> Value {
    json!({
        "name": name,
        "runtime": "python",
        "handler": "main.handle",
        "files": {"main.py": main},
    })
}

/// Polls a function until its newest version leaves `building`.
async fn settled(s: &AppState, id: &str, query: &str) -> Value {
    for _ in 0..500 {
        let a = get(s, &format!("/api/user-functions/{id}{query}")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        if a.body["status"] != "building" {
            return a.body;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("function {id} is still building");
}

/// Polls a job until it leaves `queued` and `running`.
async fn finished(s: &AppState, job: &str) -> Value {
    for _ in 0..500 {
        let a = get(s, &format!("/api/status/{job}")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        if !matches!(a.body["status"].as_str(), Some("queued" | "running")) {
            return a.body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {job} did not finish");
}

async fn deploy(s: &AppState, body: Value) -> (String, Value) {
    let a = post(s, "/api/user-functions", body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_string();
    let q = a.body["status_url"]
        .as_str()
        .unwrap()
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    let f = settled(s, &id, &q).await;
    (id, f)
}

// --- archives -------------------------------------------------------------------------

/// A tar entry written by hand, so tests can make entries tools refuse to write.
fn raw_tar_entry(out: &mut Vec<u8>, path: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..path.len()].copy_from_slice(path);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

fn finish_tar(mut raw: Vec<u8>) -> Vec<u8> {
    raw.extend(std::iter::repeat_n(0u8, 1024));
    gzip(&raw)
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(raw).unwrap();
    enc.finish().unwrap()
}

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut raw = Vec::new();
    for (p, d) in files {
        raw_tar_entry(&mut raw, p.as_bytes(), tar::EntryType::Regular, b"", d);
    }
    finish_tar(raw)
}

fn zip_of(files: &[(&str, &[u8])], symlink: Option<(&str, &str)>) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (i, (p, d)) in files.iter().enumerate() {
        let method = if i % 2 == 0 {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        w.start_file(*p, opts).unwrap();
        w.write_all(d).unwrap();
    }
    if let Some((name, target)) = symlink {
        w.add_symlink(name, target, zip::write::SimpleFileOptions::default())
            .unwrap();
    }
    w.finish().unwrap().into_inner()
}

async fn upload_archive(s: &AppState, meta: Value, archive: &[u8], key: Option<&str>) -> Answer {
    let (ct, body) = pack::multipart_body(&meta, archive, "fn.tar.gz");
    send(s, "POST", "/api/user-functions", key, &ct, body).await
}

fn meta(name: &str) -> Value {
    json!({"name": name, "runtime": "python", "handler": "main.handle"})
}

const MAIN: &str = "def handle(event, context):\n    return event\n";

// --- tests ----------------------------------------------------------------------------

#[tokio::test]
async fn a_json_upload_builds_then_runs() {
    let w = world(AuthMode::Off);
    let s = &w.state;
    let mut body = hello("hello", MAIN);
    body["files"]["WAIT"] = json!("");
    body["requirements"] = json!("six==1.16.0\n");
    body["env"] = json!({"GREETING": "hi"});
    body["limits"] = json!({"timeout_ms": 5000});
    let a = post(s, "/api/user-functions", body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(a.body["status"], "building");
    assert_eq!(a.body["version"], 1);
    assert_eq!(a.body["name"], "hello");
    let id = a.body["id"].as_str().unwrap().to_string();
    assert_eq!(a.body["status_url"], format!("/api/user-functions/{id}"));

    // Still building: shown as such, and not runnable.
    let f = get(s, &format!("/api/user-functions/{id}")).await.body;
    assert_eq!(f["status"], "building", "{f}");
    let a = post(s, &format!("/api/user-functions/{id}/execute"), json!({})).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "not_ready");

    w.builder.gate.add_permits(1);
    let f = settled(s, &id, "").await;
    assert_eq!(f["status"], "ready", "{f}");
    assert_eq!(f["runtime"], "python");
    assert_eq!(f["handler"], "main.handle");
    assert_eq!(f["executor"], "fake");
    assert_eq!(f["builder"], "fake-builder");
    assert_eq!(f["ready_version"], 1);
    let log = f["build_log"].as_str().unwrap();
    assert!(
        log.contains("building hello v1") && log.contains("wrote 3 files"),
        "{log}"
    );
    let v = &f["versions"][0];
    assert_eq!(v["status"], "ready");
    assert_eq!(
        v["env"],
        json!(["GREETING"]),
        "env names only, never values"
    );
    assert_eq!(v["limits"]["timeout_ms"], 5000);
    assert_eq!(v["source_digest"].as_str().unwrap().len(), 64);
    assert!(f["created_ms"].as_u64().unwrap() > 0);
    // requirements became requirements.txt in the source the builder got.
    let artifact = w.builder.root.join(&id).join("v1/requirements.txt");
    assert_eq!(std::fs::read_to_string(artifact).unwrap(), "six==1.16.0\n");
    assert_eq!(w.executor.prepared.lock().clone(), vec![(id.clone(), 1)]);

    let a = post(
        s,
        &format!("/api/user-functions/{id}/execute"),
        json!({"input": {"n": 1}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["output"]["input"], json!({"n": 1}));
    assert_eq!(a.body["output"]["version"], 1);
    assert_eq!(a.body["logs"], "ran hello v1\n");
    assert_eq!(a.body["function"], format!("{id}@1"));
    // By name too.
    let a = post(s, "/api/user-functions/hello/execute", json!({"input": 2})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(w.executor.ran.lock().len(), 2);

    // Async, then the status endpoint.
    let a = post(
        s,
        &format!("/api/user-functions/{id}/execute"),
        json!({"input": 3, "async": true}),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let done = finished(s, a.body["id"].as_str().unwrap()).await;
    assert_eq!(done["output"]["input"], 3, "{done}");
}

#[tokio::test]
async fn multipart_uploads_of_tar_gz_and_zip() {
    let w = world(AuthMode::Off);
    let s = &w.state;
    // A directory packed the way `sopm fn deploy` packs it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.py"), MAIN).unwrap();
    std::fs::create_dir_all(dir.path().join("lib/__pycache__")).unwrap();
    std::fs::write(dir.path().join("lib/util.py"), "X = 1\n").unwrap();
    std::fs::write(dir.path().join("lib/__pycache__/x.pyc"), "junk").unwrap();
    let packed = pack::pack_dir(dir.path()).unwrap();
    let mut m = meta("from-tar");
    m["requirements"] = json!("six\n");
    let a = upload_archive(s, m, &packed.archive, None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let id = a.body["id"].as_str().unwrap();
    let f = settled(s, id, "").await;
    assert_eq!(f["status"], "ready", "{f}");
    let v1 = w.builder.root.join(id).join("v1");
    assert!(v1.join("lib/util.py").exists());
    assert!(v1.join("requirements.txt").exists());
    assert!(!v1.join("lib/__pycache__").exists());

    // Tar tools write "./" prefixes and directory entries.
    let mut raw = Vec::new();
    raw_tar_entry(&mut raw, b"./", tar::EntryType::Directory, b"", b"");
    raw_tar_entry(&mut raw, b"./pkg/", tar::EntryType::Directory, b"", b"");
    raw_tar_entry(
        &mut raw,
        b"./main.py",
        tar::EntryType::Regular,
        b"",
        MAIN.as_bytes(),
    );
    raw_tar_entry(
        &mut raw,
        b"./pkg/a.py",
        tar::EntryType::Regular,
        b"",
        b"A = 1\n",
    );
    let a = upload_archive(s, meta("dot-slash"), &finish_tar(raw), None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let f = settled(s, a.body["id"].as_str().unwrap(), "").await;
    assert_eq!(f["status"], "ready", "{f}");

    let z = zip_of(
        &[
            ("main.py", MAIN.as_bytes()),
            ("pkg/mod.py", b"Y = 2\n"),
            ("data/blob.bin", &[0u8, 1, 2, 255]),
        ],
        None,
    );
    let a = upload_archive(s, meta("from-zip"), &z, None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let id = a.body["id"].as_str().unwrap();
    let f = settled(s, id, "").await;
    assert_eq!(f["status"], "ready", "{f}");
    let v1 = w.builder.root.join(id).join("v1");
    assert_eq!(
        std::fs::read(v1.join("data/blob.bin")).unwrap(),
        vec![0u8, 1, 2, 255]
    );
    let a = post(
        s,
        "/api/user-functions/from-zip/execute",
        json!({"input": "z"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["output"]["main"], MAIN);

    // Binary files in JSON uploads come base64.
    let mut body = hello("b64", MAIN);
    body["files_base64"] = json!({"blob.bin": "AAEC/w=="});
    let (id, f) = deploy(s, body).await;
    assert_eq!(f["status"], "ready", "{f}");
    assert_eq!(
        std::fs::read(w.builder.root.join(&id).join("v1/blob.bin")).unwrap(),
        vec![0u8, 1, 2, 255]
    );
}

#[tokio::test]
async fn a_failed_build_keeps_its_log_and_never_runs() {
    let w = world(AuthMode::Off);
    let s = &w.state;
    let mut body = hello("broken", MAIN);
    body["files"]["FAIL"] = json!("");
    let (id, f) = deploy(s, body).await;
    assert_eq!(f["status"], "failed", "{f}");
    assert_eq!(f["ready_version"], Value::Null);
    let log = f["build_log"].as_str().unwrap();
    assert!(log.contains("error: the upload has a FAIL file"), "{log}");
    assert!(log.contains("build failed: FAIL file present"), "{log}");
    let a = post(s, &format!("/api/user-functions/{id}/execute"), json!({})).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "not_ready");
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no version that built"));
    assert!(w.executor.prepared.lock().is_empty());

    // A panicking builder is a failed build too.
    let mut body = hello("panics", MAIN);
    body["files"]["PANIC"] = json!("");
    let (_, f) = deploy(s, body).await;
    assert_eq!(f["status"], "failed", "{f}");
    assert!(
        f["build_log"].as_str().unwrap().contains("build failed"),
        "{f}"
    );

    // A fixed upload is version 2 and runs; version 1 stays failed and unrunnable.
    let (id2, f) = deploy(s, hello("broken", MAIN)).await;
    assert_eq!(id2, id, "same name, same function");
    assert_eq!(f["status"], "ready");
    assert_eq!(f["version"], 2);
    assert_eq!(f["versions"].as_array().unwrap().len(), 2);
    assert_eq!(f["versions"][0]["status"], "failed");
    let a = post(s, &format!("/api/user-functions/{id}/execute"), json!({})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["output"]["version"], 2);
    let a = post(
        s,
        &format!("/api/user-functions/{id}/execute"),
        json!({"version": 1}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "not_ready");
}

#[tokio::test]
async fn re_uploads_make_versions_and_calls_can_pin_one() {
    let w = world(AuthMode::Off);
    let s = &w.state;
    let (id, _) = deploy(s, hello("pinned", "# one\n")).await;
    let (id2, f) = deploy(s, hello("pinned", "# two\n")).await;
    assert_eq!(id, id2);
    assert_eq!(f["version"], 2);
    let run = |body: Value| post(s, "/api/user-functions/pinned/execute", body);
    let a = run(json!({})).await;
    assert_eq!(a.body["output"]["main"], "# two\n", "{}", a.body);
    let a = run(json!({"version": 1})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["output"]["main"], "# one\n");
    assert_eq!(a.body["function"], format!("{id}@1"));
    let a = run(json!({"version": 9})).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
    let a = run(json!({"verison": 1})).await;
    assert_eq!(
        a.status,
        StatusCode::BAD_REQUEST,
        "unknown fields are refused"
    );
    let one = get(s, &format!("/api/user-functions/{id}?version=1"))
        .await
        .body;
    assert_eq!(one["versions"].as_array().unwrap().len(), 1);
    assert_eq!(one["versions"][0]["version"], 1);
}

#[tokio::test]
async fn list_logs_and_delete() {
    let w = world(AuthMode::Off);
    let s = &w.state;
    let (id, _) = deploy(s, hello("zeta", MAIN)).await;
    deploy(s, hello("alpha", MAIN)).await;
    deploy(s, hello("zeta", MAIN)).await;
    let l = get(s, "/api/user-functions").await.body;
    assert_eq!(l["count"], 2, "{l}");
    assert_eq!(l["functions"][0]["name"], "alpha");
    assert_eq!(l["functions"][1]["name"], "zeta");
    assert_eq!(l["functions"][1]["version"], 2);
    assert_eq!(l["functions"][1]["status"], "ready");
    assert_eq!(l["functions"][1]["executor"], "fake");

    for n in 0..3 {
        let a = post(s, "/api/user-functions/zeta/execute", json!({"input": n})).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    post(s, "/api/user-functions/alpha/execute", json!({})).await;
    let logs = get(s, "/api/user-functions/zeta/logs").await.body;
    let jobs = logs["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3, "{logs}");
    assert!(jobs
        .iter()
        .all(|j| j["logs"] == "ran zeta v2\n" && j["status"] == "succeeded"));
    assert_eq!(jobs[0]["version"], 2);
    let created: Vec<u64> = jobs
        .iter()
        .map(|j| j["created_ms"].as_u64().unwrap())
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "newest first");
    let two = get(s, &format!("/api/user-functions/{id}/logs?limit=2"))
        .await
        .body;
    assert_eq!(two["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(two["jobs"][0]["id"], jobs[0]["id"]);

    let a = delete(s, "/api/user-functions/zeta").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["deleted"], true);
    assert_eq!(a.body["versions"], 2);
    assert_eq!(w.executor.retired.lock().clone(), vec![id.clone()]);
    assert_eq!(w.builder.removed.lock().len(), 2, "both artifacts removed");
    assert_eq!(
        get(s, &format!("/api/user-functions/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    let a = post(s, &format!("/api/user-functions/{id}/execute"), json!({})).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(get(s, "/api/user-functions").await.body["count"], 1);
    let a = delete(s, "/api/user-functions/zeta").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tenants_see_run_and_delete_only_their_own_functions() {
    let w = world(AuthMode::Off);
    let s = &w.state;
    let mut body = hello("mine", MAIN);
    body["user_id"] = json!("alice");
    let a = post(s, "/api/user-functions", body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let id = a.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        a.body["status_url"],
        format!("/api/user-functions/{id}?user_id=alice")
    );
    let f = settled(s, &id, "?user_id=alice").await;
    assert_eq!(f["status"], "ready");
    let a = post(
        s,
        &format!("/api/user-functions/{id}/execute?user_id=alice"),
        json!({"input": 1}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let job = a.body["id"].as_str().unwrap().to_string();

    for who in ["?user_id=bob", ""] {
        for target in [id.as_str(), "mine"] {
            let a = get(s, &format!("/api/user-functions/{target}{who}")).await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
            assert_eq!(a.body["error"]["code"], "not_found");
            let a = post(
                s,
                &format!("/api/user-functions/{target}/execute{who}"),
                json!({}),
            )
            .await;
            assert_eq!(a.status, StatusCode::NOT_FOUND);
            let a = get(s, &format!("/api/user-functions/{target}/logs{who}")).await;
            assert_eq!(a.status, StatusCode::NOT_FOUND);
            let a = delete(s, &format!("/api/user-functions/{target}{who}")).await;
            assert_eq!(a.status, StatusCode::NOT_FOUND);
        }
        assert_eq!(
            get(s, &format!("/api/status/{job}{who}")).await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(s, &format!("/api/user-functions{who}")).await.body["count"],
            0
        );
    }
    // The 404 for another tenant's id reads like the one for an unknown id.
    let theirs = get(s, &format!("/api/user-functions/{id}?user_id=bob"))
        .await
        .body;
    let unknown = get(s, "/api/user-functions/fn_nope?user_id=bob").await.body;
    assert_eq!(
        theirs["error"]["message"]
            .as_str()
            .unwrap()
            .replace(&id, "X"),
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .replace("fn_nope", "X")
    );
    // Bob may use the same name for his own function.
    let mut body = hello("mine", MAIN);
    body["user_id"] = json!("bob");
    let a = post(s, "/api/user-functions", body).await;
    assert_ne!(a.body["id"], id);
    // Alice's is untouched.
    assert_eq!(
        get(s, &format!("/api/user-functions/{id}/logs?user_id=alice"))
            .await
            .body["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(w.executor.retired.lock().is_empty());
}

#[tokio::test]
async fn with_auth_on_keys_name_the_tenant() {
    let w = world(AuthMode::ApiKey);
    let s = &w.state;
    let alice = TenantId::new("alice").unwrap();
    let (_, ak) = w.keys.create(&alice, "laptop").await.unwrap();
    let (_, bk) = w
        .keys
        .create(&TenantId::new("bob").unwrap(), "")
        .await
        .unwrap();
    let (ak, bk) = (ak.expose().to_string(), bk.expose().to_string());
    let body = serde_json::to_vec(&hello("secret-fn", MAIN)).unwrap();

    // No key, a malformed header, an unknown key: 401, before anything is read.
    for header in [
        None,
        Some("sopm_unknown"),
        Some(&*format!("sopm_{}", "a".repeat(64))),
    ] {
        let a = send(
            s,
            "POST",
            "/api/user-functions",
            header,
            "application/json",
            body.clone(),
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
        assert_eq!(a.body["error"]["code"], "unauthorized");
        assert_eq!(a.headers["www-authenticate"], "Bearer realm=\"sopm\"");
    }
    let req = Request::builder()
        .method("GET")
        .uri("/api/user-functions")
        .header("authorization", format!("Basic {ak}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app(s.clone()).oneshot(req).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    for uri in [
        "/api/stats",
        "/api/user-functions",
        "/api/status/0190a8a8-0000-7000-8000-000000000000",
    ] {
        assert_eq!(get(s, uri).await.status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    let a = post(
        s,
        "/api/execute",
        json!({"function": "math.add", "input": {}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // Open routes stay open.
    for uri in ["/api/functions", "/api/openapi.json", "/healthz", "/readyz"] {
        assert_eq!(get(s, uri).await.status, StatusCode::OK, "{uri}");
    }
    // /metrics names every tenant's functions: with auth on and no metrics_token it is
    // refused, to anyone, key or not.
    for key in [None, Some(ak.as_str())] {
        let a = send(s, "GET", "/metrics", key, "", Vec::new()).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
        assert_eq!(a.body["error"]["code"], "metrics_token_required");
    }

    // Alice uploads with her key; the function is hers.
    let a = send(
        s,
        "POST",
        "/api/user-functions",
        Some(&ak),
        "application/json",
        body.clone(),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_string();
    assert_eq!(a.body["status_url"], format!("/api/user-functions/{id}"));
    let rec = w.registry.get(&alice, &id).await.unwrap();
    assert_eq!(rec.tenant, alice);
    let mut ready = false;
    for _ in 0..300 {
        let f = get_as(s, &format!("/api/user-functions/{id}"), &ak).await;
        assert_eq!(f.status, StatusCode::OK);
        if f.body["status"] == "ready" {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready);
    let run = serde_json::to_vec(&json!({"input": 5})).unwrap();
    let a = send(
        s,
        "POST",
        &format!("/api/user-functions/{id}/execute"),
        Some(&ak),
        "application/json",
        run.clone(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let job = a.body["id"].as_str().unwrap().to_string();

    // Bob's key sees none of it.
    for (m, uri) in [
        ("GET", format!("/api/user-functions/{id}")),
        ("POST", format!("/api/user-functions/{id}/execute")),
        ("GET", format!("/api/user-functions/{id}/logs")),
        ("DELETE", format!("/api/user-functions/{id}")),
        ("GET", format!("/api/status/{job}")),
    ] {
        let a = send(s, m, &uri, Some(&bk), "application/json", run.clone()).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{m} {uri}: {}", a.body);
    }
    let l = get_as(s, "/api/user-functions", &bk).await;
    assert_eq!(l.body["count"], 0);

    // user_id may repeat the key's tenant, not name another.
    let a = get_as(s, "/api/user-functions?user_id=alice", &ak).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["count"], 1);
    let a = get_as(s, "/api/user-functions?user_id=bob", &ak).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "tenant_mismatch");
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("user_id"));
    let mut other = hello("x", MAIN);
    other["user_id"] = json!("bob");
    let a = send(
        s,
        "POST",
        "/api/user-functions",
        Some(&ak),
        "application/json",
        serde_json::to_vec(&other).unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "tenant_mismatch");

    let a = get_as(s, &format!("/api/status/{job}"), &ak).await;
    assert_eq!(a.status, StatusCode::OK);
    // Stats show each tenant its own functions and the built-ins, never another's.
    let a = get_as(s, "/api/stats", &bk).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(!a.body.to_string().contains(&id), "{}", a.body);
    let a = get_as(s, "/api/stats", &ak).await;
    assert_eq!(a.status, StatusCode::OK);
    let functions = a.body["jobs"]["functions"].as_array().unwrap();
    assert!(
        functions
            .iter()
            .any(|f| f["function"].as_str().unwrap().starts_with(&id)),
        "{}",
        a.body
    );

    // A revoked key stops working.
    let info = w.keys.list(&alice).await.unwrap();
    w.keys.revoke(&alice, &info[0].id).await.unwrap();
    let a = get_as(s, "/api/user-functions", &ak).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

/// Every archive check answers a clear error, and the server keeps serving after each.
#[tokio::test]
async fn archive_checks_refuse_and_the_server_keeps_serving() {
    let w = world(AuthMode::Off);
    let s = &w.state;
    let main: (&str, &[u8]) = ("main.py", MAIN.as_bytes());

    let with = |path: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]| {
        let mut raw = Vec::new();
        raw_tar_entry(
            &mut raw,
            b"main.py",
            tar::EntryType::Regular,
            b"",
            MAIN.as_bytes(),
        );
        raw_tar_entry(&mut raw, path, kind, link, data);
        finish_tar(raw)
    };
    let many: Vec<(String, Vec<u8>)> = (0..21)
        .map(|i| (format!("f{i}.py"), b"x".to_vec()))
        .collect();
    let many_refs: Vec<(&str, &[u8])> = many
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    let big = vec![b'x'; 65 * 1024];
    let chunk = vec![b'y'; 60 * 1024];
    let total: Vec<(String, &[u8])> = (0..5)
        .map(|i| (format!("part{i}.bin"), chunk.as_slice()))
        .collect();
    let total_refs: Vec<(&str, &[u8])> = total.iter().map(|(p, d)| (p.as_str(), *d)).collect();

    // A gzip bomb: 100 MB of zeros inside one tar entry whose header claims it all,
    // and 100 MB of zeros as a pax header (which tar readers load whole).
    let zeros = vec![0u8; 100 << 20];
    let mut bomb_file = Vec::new();
    raw_tar_entry(
        &mut bomb_file,
        b"zeros.bin",
        tar::EntryType::Regular,
        b"",
        &zeros,
    );
    let bomb_file = finish_tar(bomb_file);
    let mut bomb_pax = Vec::new();
    raw_tar_entry(
        &mut bomb_pax,
        b"PaxHeader",
        tar::EntryType::XHeader,
        b"",
        &zeros,
    );
    raw_tar_entry(
        &mut bomb_pax,
        b"main.py",
        tar::EntryType::Regular,
        b"",
        MAIN.as_bytes(),
    );
    let bomb_pax = finish_tar(bomb_pax);
    drop(zeros);
    assert!(
        bomb_file.len() < 1 << 20 && bomb_pax.len() < 1 << 20,
        "the bombs are small"
    );

    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "dot-dot",
            with(b"../evil.py", tar::EntryType::Regular, b"", b"x"),
            StatusCode::BAD_REQUEST,
            "'..'",
        ),
        (
            "dot-dot-inside",
            with(b"a/../../evil.py", tar::EntryType::Regular, b"", b"x"),
            StatusCode::BAD_REQUEST,
            "'..'",
        ),
        (
            "absolute",
            with(b"/etc/evil", tar::EntryType::Regular, b"", b"x"),
            StatusCode::BAD_REQUEST,
            "absolute",
        ),
        (
            "backslash",
            with(b"a\\b.py", tar::EntryType::Regular, b"", b"x"),
            StatusCode::BAD_REQUEST,
            "backslash",
        ),
        (
            "symlink",
            with(b"passwd", tar::EntryType::Symlink, b"/etc/passwd", b""),
            StatusCode::BAD_REQUEST,
            "symbolic link",
        ),
        (
            "hard-link",
            with(b"copy.py", tar::EntryType::Link, b"main.py", b""),
            StatusCode::BAD_REQUEST,
            "hard link",
        ),
        (
            "device",
            with(b"null", tar::EntryType::Char, b"", b""),
            StatusCode::BAD_REQUEST,
            "device",
        ),
        (
            "fifo",
            with(b"pipe", tar::EntryType::Fifo, b"", b""),
            StatusCode::BAD_REQUEST,
            "FIFO",
        ),
        (
            "too-many-files",
            tar_gz(&many_refs),
            StatusCode::PAYLOAD_TOO_LARGE,
            "more than 20 files",
        ),
        (
            "file-too-large",
            tar_gz(&[main, ("big.txt", &big)]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
        (
            "total-too-large",
            tar_gz(&total_refs),
            StatusCode::PAYLOAD_TOO_LARGE,
            "in total",
        ),
        (
            "bomb-file",
            bomb_file,
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
        (
            "bomb-pax",
            bomb_pax,
            StatusCode::PAYLOAD_TOO_LARGE,
            "decompressed",
        ),
        (
            "not-an-archive",
            b"just some text".to_vec(),
            StatusCode::BAD_REQUEST,
            "tar.gz or zip",
        ),
        (
            "truncated",
            tar_gz(&[main])[..20].to_vec(),
            StatusCode::BAD_REQUEST,
            "archive",
        ),
        (
            "empty",
            finish_tar(Vec::new()),
            StatusCode::BAD_REQUEST,
            "no files",
        ),
        (
            "zip-dot-dot",
            zip_of(&[main, ("../evil.py", b"x")], None),
            StatusCode::BAD_REQUEST,
            "'..'",
        ),
        (
            "zip-absolute",
            zip_of(&[main, ("/abs.py", b"x")], None),
            StatusCode::BAD_REQUEST,
            "absolute",
        ),
        (
            "zip-symlink",
            zip_of(&[main], Some(("link", "/etc/passwd"))),
            StatusCode::BAD_REQUEST,
            "symbolic link",
        ),
        (
            "zip-too-large",
            zip_of(&[main, ("big.txt", &big)], None),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
        (
            "zip-too-many",
            zip_of(&many_refs, None),
            StatusCode::PAYLOAD_TOO_LARGE,
            "more than 20 files",
        ),
    ];
    for (what, archive, status, says) in cases {
        let a = upload_archive(s, meta(what), &archive, None).await;
        assert_eq!(a.status, status, "{what}: {}", a.body);
        let message = a.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{what}: {message}");
        let code = if status == StatusCode::BAD_REQUEST {
            "invalid_input"
        } else {
            "payload_too_large"
        };
        assert_eq!(a.body["error"]["code"], code, "{what}");
        // Still serving; nothing was recorded.
        let l = get(s, "/api/user-functions").await;
        assert_eq!(
            (l.status, l.body["count"].clone()),
            (StatusCode::OK, json!(0)),
            "{what}"
        );
    }

    // JSON uploads pass the same checks.
    for (path, says) in [
        ("../x.py", "'..'"),
        ("/abs.py", "absolute"),
        ("a\u{0}b", "NUL"),
    ] {
        let mut body = hello("json-bad", MAIN);
        body["files"][path] = json!("x");
        let a = post(s, "/api/user-functions", body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}: {}", a.body);
        assert!(
            a.body["error"]["message"].as_str().unwrap().contains(says),
            "{}",
            a.body
        );
    }
    let mut body = hello("json-big", MAIN);
    body["files"]["big.txt"] = json!("x".repeat(65 * 1024));
    assert_eq!(
        post(s, "/api/user-functions", body).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let mut body = hello("json-huge", MAIN);
    body["files"]["huge.txt"] = json!("x".repeat(300 * 1024));
    let a = post(s, "/api/user-functions", body).await;
    assert_eq!(
        a.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "over max_json_body"
    );
    let a = upload_archive(s, meta("huge"), &vec![0x1f; 600 * 1024], None).await;
    assert_eq!(
        a.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "over max_multipart_body: {}",
        a.body
    );
    let mut body = hello("dup", MAIN);
    body["files"]["requirements.txt"] = json!("six\n");
    body["requirements"] = json!("six\n");
    let a = post(s, "/api/user-functions", body).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("once"),
        "{}",
        a.body
    );

    // Multipart shape errors.
    let (ct, body) = pack::multipart_body(&json!({"name": "x"}), b"", "a");
    let a = send(s, "POST", "/api/user-functions", None, &ct, body).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    let mut m = meta("files-in-meta");
    m["files"] = json!({"main.py": MAIN});
    let a = upload_archive(s, m, &tar_gz(&[main]), None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);

    // Spec checks: runtime, name, handler, limits over the caps, env names.
    for (field, value, says) in [
        ("runtime", json!("builtin"), "runtime"),
        ("runtime", json!("cobol"), "runtime"),
        ("name", json!("../x"), "name"),
        ("handler", json!(""), "handler"),
        ("limits", json!({"timeout_ms": 999_999_999}), "timeout_ms"),
        ("limits", json!({"memory_mb": 0}), "memory_mb"),
        ("limits", json!({"network": true}), "network"),
        ("limits", json!({"memroy_mb": 1}), "memroy_mb"),
        ("env", json!({"1BAD": "x"}), "env"),
    ] {
        let mut body = hello("spec", MAIN);
        body[field] = value;
        let a = post(s, "/api/user-functions", body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{field}: {}", a.body);
        assert!(
            a.body["error"]["message"].as_str().unwrap().contains(says),
            "{field}: {}",
            a.body
        );
    }
    let mut body = hello("no-builder", MAIN);
    body["runtime"] = json!("shell");
    body["handler"] = json!("main.sh");
    let a = post(s, "/api/user-functions", body).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);

    // And after all of that, a good upload builds and runs.
    let a = upload_archive(s, meta("good"), &tar_gz(&[main]), None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let f = settled(s, a.body["id"].as_str().unwrap(), "").await;
    assert_eq!(f["status"], "ready");
    let a = post(s, "/api/user-functions/good/execute", json!({"input": 1})).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn a_runtime_without_an_executor_builds_but_answers_503() {
    let w = world(AuthMode::Off);
    let s = &w.state;
    let (id, f) = deploy(
        s,
        json!({"name": "nodey", "runtime": "node", "handler": "index.handle",
               "files": {"index.js": "exports.handle = (e) => e;"},
               "package_json": {"name": "nodey", "dependencies": {}}}),
    )
    .await;
    assert_eq!(f["status"], "ready", "{f}");
    assert_eq!(f["executor"], Value::Null);
    assert!(f["executor_note"].as_str().unwrap().contains("node"), "{f}");
    assert!(w.builder.root.join(&id).join("v1/package.json").exists());
    let a = post(s, &format!("/api/user-functions/{id}/execute"), json!({})).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "unavailable");
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no executor is configured for the node runtime"));
}

#[tokio::test]
async fn builds_a_stopped_server_left_running_become_failed() {
    let w = world(AuthMode::Off);
    let tenant = TenantId::default();
    let v = w
        .registry
        .create_version(sopm_core::NewVersion {
            tenant: tenant.clone(),
            name: "interrupted".into(),
            runtime: Runtime::Python,
            handler: "main.handle".into(),
            limits: Default::default(),
            env: BTreeMap::new(),
            source_digest: "x".into(),
            executor: None,
        })
        .await
        .unwrap();
    let n = w.state.platform().recover_builds().await.unwrap();
    assert_eq!(n, 1);
    let f = get(&w.state, &format!("/api/user-functions/{}", v.function_id))
        .await
        .body;
    assert_eq!(f["status"], "failed", "{f}");
    assert!(
        f["build_log"]
            .as_str()
            .unwrap()
            .contains("server stopped during this build"),
        "{f}"
    );
    assert_eq!(w.state.platform().recover_builds().await.unwrap(), 0);
}

/// The server's own wiring (`build_services`): the LocalBuilder builds a Python upload
/// into `<data_dir>/artifacts` and the process executor runs it under bubblewrap.
#[tokio::test]
async fn the_server_wiring_builds_with_the_local_builder() {
    if !tools_or_skip(
        "the_server_wiring_builds_with_the_local_builder",
        &["bwrap"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = wired(dir.path(), |_| {});
    let (id, f) = deploy(&s, hello("local", MAIN)).await;
    assert_eq!(f["status"], "ready", "{f}");
    assert_eq!(f["builder"], "local");
    assert!(dir
        .path()
        .join("artifacts")
        .join(&id)
        .join("v1/main.py")
        .exists());
    let a = post(
        &s,
        "/api/user-functions/local/execute",
        json!({"input": {"héllo": [1, 2, 3]}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["output"], json!({"héllo": [1, 2, 3]}));
    let stats = get(&s, "/api/stats").await;
    assert_eq!(stats.status, StatusCode::OK);
    assert!(
        stats.body["pools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pool"] == "process"),
        "{}",
        stats.body
    );
    assert_eq!(get(&s, "/metrics").await.status, StatusCode::OK);
    let a = delete(&s, "/api/user-functions/local").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        !dir.path().join("artifacts").join(&id).join("v1").exists(),
        "the artifact is removed"
    );
}

/// Hostile functions through the whole server: while a function spins, fork-bombs,
/// floods its output and reads host secrets, built-ins and a well-behaved function
/// keep answering, and each hostile call ends with a clear code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_functions_do_not_stop_the_server() {
    if !tools_or_skip("hostile_functions_do_not_stop_the_server", &["bwrap"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "do not read").unwrap();
    let s = wired(dir.path(), |_| {});

    let limits = json!({"timeout_ms": 1500, "memory_mb": 128, "max_processes": 16});
    let hostile = [
        ("spin", "def handle(event, context):\n    while True:\n        pass\n", "timeout"),
        (
            "bomb",
            "import os\ndef handle(event, context):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
            "timeout",
        ),
        (
            "hog",
            "def handle(event, context):\n    x = []\n    while True:\n        x.append(bytearray(1 << 20))\n",
            "out_of_memory",
        ),
    ];
    let mut jobs = Vec::new();
    for (name, code, _) in &hostile {
        let mut body = hello(name, code);
        body["limits"] = limits.clone();
        deploy(&s, body).await;
        let a = post(
            &s,
            &format!("/api/user-functions/{name}/execute"),
            json!({"async": true}),
        )
        .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
        jobs.push(a.body["id"].as_str().unwrap().to_string());
    }
    let secret = dir.path().join("secret.txt");
    let reader = format!(
        "def handle(event, context):\n    out = {{}}\n    for p in ['/etc/shadow', {:?}]:\n        try:\n            out[p] = open(p).read()\n        except OSError as e:\n            out[p] = type(e).__name__\n    return out\n",
        secret.to_str().unwrap()
    );
    deploy(&s, hello("reader", &reader)).await;
    deploy(&s, hello("fine", MAIN)).await;

    // The hostile calls are running now; everything else still answers.
    for i in 0..20 {
        let a = post(
            &s,
            "/api/execute",
            json!({"function": "math.add", "input": {"a": i, "b": 1}}),
        )
        .await;
        assert_eq!(a.body["output"], json!(i + 1), "{}", a.body);
    }
    let a = post(
        &s,
        "/api/user-functions/fine/execute",
        json!({"input": {"ok": true}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["output"], json!({"ok": true}));
    let a = post(
        &s,
        "/api/user-functions/reader/execute",
        json!({"input": {}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    for (path, seen) in a.body["output"].as_object().unwrap() {
        assert!(
            !seen.as_str().unwrap_or("").contains("do not read")
                && !seen.as_str().unwrap_or("").contains("root:"),
            "{path} was readable: {seen}"
        );
    }

    for (id, (name, _, code)) in jobs.iter().zip(&hostile) {
        let job = finished(&s, id).await;
        assert_eq!(job["error"]["code"], *code, "{name}: {job}");
    }
    // And after all of it, the well-behaved function still runs.
    let a = post(&s, "/api/user-functions/fine/execute", json!({"input": 7})).await;
    assert_eq!(a.body["output"], json!(7), "{}", a.body);
}

/// `[executors] python = "gvisor"`: the server runs Python functions in gVisor and
/// says so; other runtimes stay on the process backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_picks_the_executor_per_runtime() {
    if !tools_or_skip(
        "the_config_picks_the_executor_per_runtime",
        &["bwrap", "runsc"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = wired(dir.path(), |c| {
        c.executors
            .runtimes
            .insert("python".into(), "gvisor".into());
    });
    let (_, f) = deploy(&s, hello("in-gvisor", MAIN)).await;
    assert_eq!(f["executor"], "gvisor", "{f}");
    let a = post(
        &s,
        "/api/user-functions/in-gvisor/execute",
        json!({"input": {"via": "runsc"}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["output"], json!({"via": "runsc"}));
    let mut shell = hello("in-process", "");
    shell["runtime"] = json!("shell");
    shell["handler"] = json!("run.sh");
    shell["files"] = json!({"run.sh": "#!/bin/sh\ncat\n"});
    let (_, f) = deploy(&s, shell).await;
    assert_eq!(f["executor"], "process", "{f}");
    s.platform()
        .shutdown(std::time::Duration::from_secs(5))
        .await
        .unwrap();
}

/// What a function sees of its kernel: the process sandbox shares the host's, gVisor
/// emulates its own (it reports release 4.4.0).
const KERNEL: &str = "import os\ndef handle(event, context):\n    return {'release': os.uname().release, 'version': open('/proc/version').read()}\n";

/// `[executors.functions]` and an upload's `executor` field choose gVisor for one
/// function each while Python's default stays `process`; each call runs in the
/// executor its version recorded, and a re-upload without the field goes back to the
/// default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_rule_and_an_upload_field_choose_the_executor() {
    if !tools_or_skip(
        "a_function_rule_and_an_upload_field_choose_the_executor",
        &["bwrap", "runsc"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = wired(dir.path(), |c| {
        c.executors
            .functions
            .insert("ruled".into(), "gvisor".into());
    });
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(host_release, "4.4.0", "the host must not look like gVisor");

    let (_, plain) = deploy(&s, hello("plain", KERNEL)).await;
    let (_, ruled) = deploy(&s, hello("ruled", KERNEL)).await;
    let mut body = hello("asked", KERNEL);
    body["executor"] = json!("gvisor");
    let (_, asked) = deploy(&s, body).await;
    let a = upload_archive(
        &s,
        json!({"name": "packed", "runtime": "python", "handler": "main.handle",
               "executor": "gvisor"}),
        &tar_gz(&[("main.py", KERNEL.as_bytes())]),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(a.body["executor"], "gvisor", "{}", a.body);
    let packed = settled(&s, a.body["id"].as_str().unwrap(), "").await;
    for (f, expected) in [
        (&plain, "process"),
        (&ruled, "gvisor"),
        (&asked, "gvisor"),
        (&packed, "gvisor"),
    ] {
        assert_eq!(f["status"], "ready", "{f}");
        assert_eq!(f["executor"], expected, "{f}");
        assert_eq!(f["versions"][0]["executor"], expected, "{f}");
        assert_eq!(f["builder"], "local", "{f}");
        let name = f["name"].as_str().unwrap();
        let a = post(
            &s,
            &format!("/api/user-functions/{name}/execute"),
            json!({}),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{name}: {}", a.body);
        let release = a.body["output"]["release"].as_str().unwrap();
        let version = a.body["output"]["version"].as_str().unwrap();
        match expected {
            "gvisor" => assert_eq!(release, "4.4.0", "{name} runs in gVisor: {version}"),
            _ => assert_eq!(
                release, host_release,
                "{name} runs on the host kernel: {version}"
            ),
        }
    }

    // A new version without the field takes the runtime default; the old one keeps gVisor.
    let (_, again) = deploy(&s, hello("asked", KERNEL)).await;
    assert_eq!(again["executor"], "process", "{again}");
    assert_eq!(again["versions"][0]["executor"], "gvisor", "{again}");
    assert_eq!(again["versions"][1]["executor"], "process", "{again}");
    for (version, release) in [(1, "4.4.0"), (2, host_release.as_str())] {
        let a = post(
            &s,
            "/api/user-functions/asked/execute",
            json!({"version": version}),
        )
        .await;
        assert_eq!(
            a.body["output"]["release"], release,
            "v{version}: {}",
            a.body
        );
    }
    let listed = get(&s, "/api/user-functions").await.body;
    let by_name = |n: &str| {
        listed["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == n)
            .unwrap()["executor"]
            .clone()
    };
    assert_eq!(by_name("ruled"), "gvisor", "{listed}");
    assert_eq!(by_name("asked"), "process", "{listed}");

    let mut body = hello("nowhere", KERNEL);
    body["executor"] = json!("kubernetes");
    let a = post(&s, "/api/user-functions", body).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "invalid_input");
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("'kubernetes'")
            && message.contains("available: ")
            && message.contains("gvisor")
            && message.contains("process"),
        "{message}"
    );
    s.platform()
        .shutdown(std::time::Duration::from_secs(5))
        .await
        .unwrap();
}

/// What a function sees of where it runs: kernel release, user, and whether it is in a
/// Docker container.
const WHERE: &str = "import os\ndef handle(event, context):\n    return {'release': os.uname().release, 'uid': os.getuid(), 'docker': os.path.exists('/.dockerenv'), 'input': event}\n";

/// Whether a Docker daemon answers; if not, the test is skipped with a printed reason,
/// or fails under `SOPM_REQUIRE_INTEGRATION=1`.
fn docker_or_skip(test: &str) -> bool {
    if !tools_or_skip(test, &["bwrap", "docker"]) {
        return false;
    }
    let up = std::process::Command::new("docker")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if up {
        return true;
    }
    assert!(
        std::env::var("SOPM_REQUIRE_INTEGRATION").as_deref() != Ok("1"),
        "{test}: no Docker daemon answers (SOPM_REQUIRE_INTEGRATION=1)"
    );
    eprintln!("skipped {test}: no Docker daemon answers");
    false
}

/// Functions uploaded for `docker` and `docker-runsc` are built into images by the
/// docker builder and run in containers (runc, and gVisor for `docker-runsc`), as
/// `nobody`; shell functions run under the static runner in the busybox image; deleting
/// a function removes its image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_functions_build_images_and_run_in_containers() {
    let test = "docker_functions_build_images_and_run_in_containers";
    if !docker_or_skip(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = wired(dir.path(), |c| {
        c.executors.runtimes.insert("shell".into(), "docker".into());
    });
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string();

    let mut images = Vec::new();
    for (name, executor, release) in [
        ("in-runc", "docker", host_release.as_str()),
        ("in-runsc", "docker-runsc", "4.4.0"),
    ] {
        let mut body = hello(name, WHERE);
        body["executor"] = json!(executor);
        let (_, f) = deploy(&s, body).await;
        assert_eq!(f["status"], "ready", "{f}");
        assert_eq!(f["executor"], executor, "{f}");
        assert_eq!(f["builder"], "docker", "{f}");
        let log = f["versions"][0]["build_log"].as_str().unwrap_or_default();
        assert!(log.contains("image sopm-fn-"), "{log}");
        let a = post(
            &s,
            &format!("/api/user-functions/{name}/execute"),
            json!({"input": {"n": 1}}),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{name}: {}", a.body);
        let out = &a.body["output"];
        assert_eq!(out["docker"], true, "{name}: {out}");
        assert_eq!(out["uid"], 65534, "{name}: {out}");
        assert_eq!(out["release"], release, "{name}: {out}");
        assert_eq!(out["input"], json!({"n": 1}), "{name}: {out}");
        let image = log
            .lines()
            .find_map(|l| l.strip_prefix("image ")?.strip_suffix(" ready"))
            .unwrap_or_else(|| panic!("no image named in {log}"))
            .to_string();
        images.push((name, image));
    }

    // Shell functions run under the static runner, which the server finds through
    // SOPM_STATIC_RUNNER here (scripts/test.sh builds it).
    if std::env::var_os("SOPM_STATIC_RUNNER").is_none() {
        assert!(
            std::env::var("SOPM_REQUIRE_INTEGRATION").as_deref() != Ok("1"),
            "{test}: SOPM_STATIC_RUNNER must name the static runner (scripts/build-runner.sh) under SOPM_REQUIRE_INTEGRATION=1"
        );
        eprintln!("{test}: shell part skipped, SOPM_STATIC_RUNNER is not set");
    } else {
        let mut shell = hello("shelly", "");
        shell["runtime"] = json!("shell");
        shell["handler"] = json!("run.sh");
        shell["files"] = json!({"run.sh": "#!/bin/sh\necho \"{\\\"uid\\\": $(id -u), \\\"python\\\": $(command -v python3 >/dev/null && echo true || echo false)}\"\n"});
        let (_, f) = deploy(&s, shell).await;
        assert_eq!(f["executor"], "docker", "{f}");
        let a = post(&s, "/api/user-functions/shelly/execute", json!({})).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        // The busybox image: no python inside, the static runner supervises.
        assert_eq!(a.body["output"], json!({"uid": 65534, "python": false}));
    }

    for (name, image) in images {
        let a = delete(&s, &format!("/api/user-functions/{name}")).await;
        assert!(a.status.is_success(), "{}", a.body);
        let gone = std::process::Command::new("docker")
            .args(["image", "inspect", &image])
            .output()
            .unwrap();
        assert!(
            !gone.status.success(),
            "{image} should be removed with {name}"
        );
    }
    s.platform()
        .shutdown(std::time::Duration::from_secs(5))
        .await
        .unwrap();
}

/// Over the fakes: the upload field picks a registered executor (even for a runtime
/// with no default), an unknown one is 400 naming those there are, and the version
/// records it.
#[tokio::test]
async fn an_upload_names_its_executor_or_gets_a_400() {
    let w = world(AuthMode::Off);
    let s = &w.state;
    let mut body = hello("elsewhere", MAIN);
    body["executor"] = json!("vm");
    let a = post(s, "/api/user-functions", body).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "invalid_input");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'vm' is not available on this server; available: fake"),
        "{}",
        a.body
    );
    let a = upload_archive(
        s,
        json!({"name": "packed", "runtime": "python", "handler": "main.handle", "executor": "vm"}),
        &tar_gz(&[("main.py", MAIN.as_bytes())]),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(get(s, "/api/user-functions").await.body["functions"]
        .as_array()
        .unwrap()
        .is_empty());

    // Node has a builder but no default executor; asking for `fake` runs it there.
    let body = json!({"name": "nodey", "runtime": "node", "handler": "index.handle",
                      "files": {"index.js": "exports.handle = (e) => e;"},
                      "executor": "fake"});
    let (id, f) = deploy(s, body).await;
    assert_eq!(f["executor"], "fake", "{f}");
    assert_eq!(f["versions"][0]["executor"], "fake", "{f}");
    assert!(f.get("executor_note").is_none(), "{f}");
    let a = post(
        s,
        &format!("/api/user-functions/{id}/execute"),
        json!({"input": 5}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["output"]["input"], 5);
    assert!(w.executor.ran.lock().contains(&(id, 1)));
}

#[test]
fn unknown_runtimes_and_executors_are_refused() {
    let mut c = sopm_server::ServerConfig::default();
    c.executors
        .runtimes
        .insert("cobol".into(), "process".into());
    assert!(c.validate().unwrap_err().contains("cobol"));
    let mut c = sopm_server::ServerConfig::default();
    c.executors.runtimes.insert("python".into(), "vm".into());
    assert!(c.validate().unwrap_err().contains("vm"));
    let mut c = sopm_server::ServerConfig::default();
    c.executors.functions.insert("resize".into(), "vm".into());
    let e = c.validate().unwrap_err();
    assert!(e.contains("functions.resize") && e.contains("vm"), "{e}");
}

/// A server state over the real wiring (`build_services`): memory storage, data under
/// `dir`, settings adjusted by `tune` and validated, marked ready.
fn wired(dir: &std::path::Path, tune: impl FnOnce(&mut sopm_server::ServerConfig)) -> AppState {
    let mut c = sopm_server::ServerConfig {
        storage: sopm_server::Storage::Memory,
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    tune(&mut c);
    c.validate().unwrap();
    let services = sopm_server::server::build_services(&c).unwrap();
    let s = AppState::with_keys(services.platform, ApiConfig::from(&c), services.keys);
    s.set_ready(true);
    s
}

/// Whether every tool is on `PATH`; if not, the test is skipped with a printed reason,
/// or fails under `SOPM_REQUIRE_INTEGRATION=1`.
fn tools_or_skip(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("SOPM_REQUIRE_INTEGRATION").as_deref() != Ok("1"),
        "{test}: {missing:?} required (SOPM_REQUIRE_INTEGRATION=1) but not on PATH"
    );
    eprintln!("skipped {test}: {missing:?} not on PATH");
    false
}
