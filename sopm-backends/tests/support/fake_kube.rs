//! A small stateful fake of the Kubernetes API on loopback, for the kubernetes executor's
//! tests: just the endpoints the executors use (pods create/get/list/watch/delete,
//! pods/log, jobs create/get/list/watch/delete), one resource version counter, and watch
//! streams of `ADDED`/`MODIFIED`/`DELETED` events as the API server sends them.
//!
//! Its "kubelet" runs each pod's container for real: the container's command, with the
//! pod's environment, under bubblewrap with the runner image's files at `/opt/sopm` (a
//! host directory standing for the image), `emptyDir` mounts as tmpfs, a read-only root,
//! its own pid namespace and, where this host lets a test make cgroups, a memory cgroup of
//! the container's memory limit (a container killed there ends `OOMKilled`). Every pod
//! gets the address 127.0.0.1 (the host's network, so the runner's port is reachable), so
//! the executor must give each pod its own port. Its output (stdout and stderr, in one
//! stream) is the pod's log. A Job gets one pod; the Job completes or fails with it, and
//! fails with `DeadlineExceeded` (its pod killed) past its `activeDeadlineSeconds`.
//!
//! What it is not: a scheduler, admission (no PodSecurity, no RuntimeClass, no
//! NetworkPolicy), gVisor, or a real pod's isolation. It ignores `runtimeClassName`,
//! `securityContext` and CPU limits.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::Mutex;
use serde_json::{json, Value};
use sopm_backends::host::cgroup::{CgroupRoot, SandboxCgroup, CGROUP_JOIN};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

const TIME: &str = "2026-12-06T00:00:00Z";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Pod,
    Job,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Job => "jobs",
        }
    }
    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Pod => ("PodList", "v1"),
            Kind::Job => ("JobList", "batch/v1"),
        }
    }
}

struct Event {
    rv: u64,
    kind: Kind,
    kind_name: &'static str,
    object: Value,
}

#[derive(Default)]
struct Objects {
    rv: u64,
    objects: BTreeMap<(Kind, String), Value>,
    events: Vec<Event>,
    logs: HashMap<String, Arc<Mutex<Vec<u8>>>>,
    kills: HashMap<String, Arc<Notify>>,
    /// Wall time each pod's process ran, by pod name.
    ran: HashMap<String, Duration>,
}

struct Shared {
    objects: Mutex<Objects>,
    changed: Notify,
    images: BTreeMap<String, PathBuf>,
    cgroups: Option<CgroupRoot>,
    requests: Mutex<Vec<String>>,
}

/// The fake API server. Dropping it stops the server; the pods' processes are killed
/// with the runtime that runs them (and by [`FakeKube::stop_pods`]).
pub struct FakeKube {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.server.abort();
        self.stop_pods();
    }
}

/// Why the fake cannot run real pods here, if it cannot: it needs bubblewrap.
pub fn fake_unavailable() -> Option<String> {
    let ok = std::process::Command::new("bwrap")
        .args(["--unshare-pid", "--ro-bind", "/", "/", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    (!ok).then(|| "bwrap cannot make a pid namespace here (the fake's pods need it)".into())
}

impl FakeKube {
    /// Starts the fake on a free loopback port; `images` maps each image reference the
    /// executor will use to the host directory standing for its `/opt/sopm`.
    pub async fn start(images: BTreeMap<String, PathBuf>) -> FakeKube {
        let cgroups = CgroupRoot::detect(Path::new("/sys/fs/cgroup"), "sopm-fake-kube").ok();
        let shared = Arc::new(Shared {
            objects: Mutex::new(Objects::default()),
            changed: Notify::new(),
            images,
            cgroups,
            requests: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route(
                "/api/v1/namespaces/{ns}/pods",
                get(list_pods).post(create_pod),
            )
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}",
                get(get_pod).delete(delete_pod),
            )
            .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pod_log))
            .route(
                "/apis/batch/v1/namespaces/{ns}/jobs",
                get(list_jobs).post(create_job),
            )
            .route(
                "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
                get(get_job).delete(delete_job),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeKube {
            url,
            shared,
            server,
        }
    }

    /// A client of this fake.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("a URL"));
        kube::Client::try_from(config).expect("a client of the fake")
    }

    /// Whether its pods run in memory cgroups (so a memory kill is `OOMKilled`).
    pub fn has_memory_limits(&self) -> bool {
        self.shared.cgroups.is_some()
    }

    /// The names of the pods that exist now.
    pub fn pods(&self) -> Vec<String> {
        self.names(Kind::Pod)
    }

    /// The names of the Jobs that exist now.
    pub fn jobs(&self) -> Vec<String> {
        self.names(Kind::Job)
    }

    fn names(&self, kind: Kind) -> Vec<String> {
        self.shared
            .objects
            .lock()
            .objects
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// A pod's object as the API would return it.
    pub fn pod(&self, name: &str) -> Option<Value> {
        self.shared
            .objects
            .lock()
            .objects
            .get(&(Kind::Pod, name.to_string()))
            .cloned()
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().clone()
    }

    /// How long each finished pod's process ran, by pod name.
    pub fn process_times(&self) -> HashMap<String, Duration> {
        self.shared.objects.lock().ran.clone()
    }

    /// Kills every pod's process (the pods stay).
    pub fn stop_pods(&self) {
        for kill in self.shared.objects.lock().kills.values() {
            kill.notify_one();
        }
    }

    /// Ends a pod's process as if its node killed it (the pod then shows it terminated).
    pub fn kill_pod_process(&self, name: &str) {
        if let Some(k) = self.shared.objects.lock().kills.get(name) {
            k.notify_one();
        }
    }
}

fn not_found(kind: Kind, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{name}\" not found", kind.plural()),
    )
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        })),
    )
        .into_response()
}

fn record(shared: &Shared, method: &str, path: String, query: &HashMap<String, String>) {
    let mut q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    q.sort();
    shared
        .requests
        .lock()
        .push(format!("{method} {path}?{}", q.join("&")));
}

fn labels_match(object: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = &object["metadata"]["labels"];
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k].as_str() == Some(v),
        None => labels.get(term).is_some(),
    })
}

/// Records a change: a new resource version on the object, kept (or removed for
/// `DELETED`), and an event for watchers.
fn put(shared: &Shared, o: &mut Objects, kind: Kind, kind_name: &'static str, mut object: Value) {
    o.rv += 1;
    object["metadata"]["resourceVersion"] = json!(o.rv.to_string());
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if kind_name == "DELETED" {
        o.objects.remove(&(kind, name));
    } else {
        o.objects.insert((kind, name), object.clone());
    }
    o.events.push(Event {
        rv: o.rv,
        kind,
        kind_name,
        object,
    });
    shared.changed.notify_waiters();
}

async fn list_or_watch(
    shared: Arc<Shared>,
    kind: Kind,
    ns: &str,
    query: HashMap<String, String>,
) -> Response {
    record(&shared, "GET", format!("/{ns}/{}", kind.plural()), &query);
    let selector = query.get("labelSelector").cloned();
    if query.get("watch").map(String::as_str) == Some("true") {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let secs: u64 = query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290);
        let until = tokio::time::Instant::now() + Duration::from_secs(secs);
        let stream = futures::stream::unfold(from, move |last| {
            let shared = shared.clone();
            let selector = selector.clone();
            async move {
                loop {
                    let notified = shared.changed.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    let (lines, newest) = {
                        let o = shared.objects.lock();
                        let mut lines = Vec::new();
                        let mut newest = last;
                        for e in o.events.iter().filter(|e| e.rv > last) {
                            newest = e.rv;
                            if e.kind == kind && labels_match(&e.object, selector.as_ref()) {
                                let line = json!({"type": e.kind_name, "object": e.object});
                                lines.extend(serde_json::to_vec(&line).expect("json"));
                                lines.push(b'\n');
                            }
                        }
                        (lines, newest)
                    };
                    if !lines.is_empty() {
                        return Some((Ok::<Bytes, std::io::Error>(Bytes::from(lines)), newest));
                    }
                    if tokio::time::timeout_at(until, notified).await.is_err() {
                        return None;
                    }
                }
            }
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .expect("a response");
    }
    let o = shared.objects.lock();
    let items: Vec<Value> = o
        .objects
        .iter()
        .filter(|((k, _), v)| *k == kind && labels_match(v, selector.as_ref()))
        .map(|(_, v)| v.clone())
        .collect();
    let (list_kind, api_version) = kind.list_kind();
    Json(json!({
        "kind": list_kind, "apiVersion": api_version,
        "metadata": {"resourceVersion": o.rv.to_string()}, "items": items,
    }))
    .into_response()
}

async fn list_pods(
    Extract(s): Extract<Arc<Shared>>,
    UrlPath(ns): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_or_watch(s, Kind::Pod, &ns, q).await
}

async fn list_jobs(
    Extract(s): Extract<Arc<Shared>>,
    UrlPath(ns): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_or_watch(s, Kind::Job, &ns, q).await
}

fn get_object(shared: &Shared, kind: Kind, ns: &str, name: &str) -> Response {
    record(
        shared,
        "GET",
        format!("/{ns}/{}/{name}", kind.plural()),
        &HashMap::new(),
    );
    match shared.objects.lock().objects.get(&(kind, name.to_string())) {
        Some(v) => Json(v.clone()).into_response(),
        None => not_found(kind, name),
    }
}

async fn get_pod(
    Extract(s): Extract<Arc<Shared>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    get_object(&s, Kind::Pod, &ns, &name)
}

async fn get_job(
    Extract(s): Extract<Arc<Shared>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    get_object(&s, Kind::Job, &ns, &name)
}

fn new_metadata(object: &mut Value, ns: &str) {
    let uid = uuid::Uuid::new_v4().to_string();
    let meta = &mut object["metadata"];
    meta["namespace"] = json!(ns);
    meta["uid"] = json!(uid);
    meta["creationTimestamp"] = json!(TIME);
}

async fn create_pod(
    Extract(s): Extract<Arc<Shared>>,
    UrlPath(ns): UrlPath<String>,
    Json(mut pod): Json<Value>,
) -> Response {
    record(&s, "POST", format!("/{ns}/pods"), &HashMap::new());
    let Some(name) = pod["metadata"]["name"].as_str().map(String::from) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name is required",
        );
    };
    {
        let mut o = s.objects.lock();
        if o.objects.contains_key(&(Kind::Pod, name.clone())) {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!("pods \"{name}\" already exists"),
            );
        }
        new_metadata(&mut pod, &ns);
        pod["status"] = json!({"phase": "Pending"});
        put(&s, &mut o, Kind::Pod, "ADDED", pod.clone());
    }
    let created = s.objects.lock().objects[&(Kind::Pod, name.clone())].clone();
    start_pod(s.clone(), name, None);
    (StatusCode::CREATED, Json(created)).into_response()
}

async fn create_job(
    Extract(s): Extract<Arc<Shared>>,
    UrlPath(ns): UrlPath<String>,
    Json(mut job): Json<Value>,
) -> Response {
    record(&s, "POST", format!("/{ns}/jobs"), &HashMap::new());
    let Some(name) = job["metadata"]["name"].as_str().map(String::from) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name is required",
        );
    };
    let pod_name = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..5]);
    let created = {
        let mut o = s.objects.lock();
        if o.objects.contains_key(&(Kind::Job, name.clone())) {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!("jobs.batch \"{name}\" already exists"),
            );
        }
        new_metadata(&mut job, &ns);
        job["status"] = json!({"active": 1, "startTime": TIME});
        put(&s, &mut o, Kind::Job, "ADDED", job.clone());
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": job["spec"]["template"]["metadata"].clone(),
            "spec": job["spec"]["template"]["spec"].clone(),
        });
        pod["metadata"]["name"] = json!(pod_name);
        pod["metadata"]["labels"]["batch.kubernetes.io/job-name"] = json!(name);
        pod["metadata"]["labels"]["job-name"] = json!(name);
        pod["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "batch/v1", "kind": "Job", "name": name,
            "uid": job["metadata"]["uid"], "controller": true,
        }]);
        new_metadata(&mut pod, &ns);
        pod["status"] = json!({"phase": "Pending"});
        put(&s, &mut o, Kind::Pod, "ADDED", pod);
        o.objects[&(Kind::Job, name.clone())].clone()
    };
    let deadline = job["spec"]["activeDeadlineSeconds"].as_u64();
    start_pod(s.clone(), pod_name, Some((name, deadline)));
    (StatusCode::CREATED, Json(created)).into_response()
}

fn delete_object(shared: &Shared, kind: Kind, name: &str) -> Option<Value> {
    let mut o = shared.objects.lock();
    let obj = o.objects.get(&(kind, name.to_string()))?.clone();
    if let Some(kill) = o.kills.remove(name) {
        kill.notify_one();
    }
    put(shared, &mut o, kind, "DELETED", obj.clone());
    Some(obj)
}

async fn delete_pod(
    Extract(s): Extract<Arc<Shared>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    record(&s, "DELETE", format!("/{ns}/pods/{name}"), &HashMap::new());
    match delete_object(&s, Kind::Pod, &name) {
        Some(obj) => Json(obj).into_response(),
        None => not_found(Kind::Pod, &name),
    }
}

async fn delete_job(
    Extract(s): Extract<Arc<Shared>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    record(&s, "DELETE", format!("/{ns}/jobs/{name}"), &HashMap::new());
    let Some(obj) = delete_object(&s, Kind::Job, &name) else {
        return not_found(Kind::Job, &name);
    };
    let pods: Vec<String> = s
        .objects
        .lock()
        .objects
        .iter()
        .filter(|((k, _), v)| {
            *k == Kind::Pod
                && v["metadata"]["labels"]["batch.kubernetes.io/job-name"] == json!(name)
        })
        .map(|((_, n), _)| n.clone())
        .collect();
    for pod in pods {
        delete_object(&s, Kind::Pod, &pod);
    }
    Json(obj).into_response()
}

async fn pod_log(
    Extract(s): Extract<Arc<Shared>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    record(&s, "GET", format!("/{ns}/pods/{name}/log"), &q);
    let log = s.objects.lock().logs.get(&name).cloned();
    match log {
        Some(log) => {
            let bytes = log.lock().clone();
            Response::builder()
                .header("content-type", "text/plain")
                .body(Body::from(bytes))
                .expect("a response")
        }
        None => not_found(Kind::Pod, &name),
    }
}

/// Sets a pod's status (if the pod still exists) and records the change.
fn set_pod_status(shared: &Shared, name: &str, status: Value) {
    let mut o = shared.objects.lock();
    let Some(mut pod) = o.objects.get(&(Kind::Pod, name.to_string())).cloned() else {
        return;
    };
    pod["status"] = status;
    put(shared, &mut o, Kind::Pod, "MODIFIED", pod);
}

fn set_job_status(shared: &Shared, name: &str, status: Value) {
    let mut o = shared.objects.lock();
    let Some(mut job) = o.objects.get(&(Kind::Job, name.to_string())).cloned() else {
        return;
    };
    job["status"] = status;
    put(shared, &mut o, Kind::Job, "MODIFIED", job);
}

fn container_status(image: &str, state: Value) -> Value {
    json!([{"name": "runner", "image": image, "imageID": "", "ready": state.get("running").is_some(),
        "restartCount": 0, "state": state}])
}

fn memory_bytes(quantity: &str) -> Option<u64> {
    let (n, unit) = quantity.split_at(quantity.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "Mi" => n << 20,
        "Gi" => n << 30,
        "Ki" => n << 10,
        _ => return None,
    })
}

/// The "kubelet": runs the pod's container and reports its status.
fn start_pod(shared: Arc<Shared>, name: String, job: Option<(String, Option<u64>)>) {
    let Some(pod) = shared
        .objects
        .lock()
        .objects
        .get(&(Kind::Pod, name.clone()))
        .cloned()
    else {
        return;
    };
    let c = &pod["spec"]["containers"][0];
    let image = c["image"].as_str().unwrap_or("").to_string();
    let Some(runner_dir) = shared.images.get(&image).cloned() else {
        set_pod_status(
            &shared,
            &name,
            json!({"phase": "Pending",
            "containerStatuses": container_status(&image, json!({"waiting": {"reason": "ErrImagePull",
                "message": format!("rpc error: pull of {image} failed: not found")}}))}),
        );
        return;
    };
    let mut bwrap: Vec<String> = ["bwrap", "--tmpfs", "/"].map(String::from).to_vec();
    for entry in std::fs::read_dir("/").expect("read /").flatten() {
        let path = entry.path();
        let top = path.to_string_lossy().to_string();
        if [
            "/proc", "/dev", "/sys", "/tmp", "/fn", "/opt", "/run", "/work", "/root", "/home",
        ]
        .contains(&top.as_str())
        {
            continue;
        }
        match std::fs::read_link(&path) {
            Ok(target) => bwrap.extend([
                "--symlink".into(),
                target.to_string_lossy().to_string(),
                top,
            ]),
            Err(_) if path.is_dir() => bwrap.extend(["--ro-bind".into(), top.clone(), top]),
            Err(_) => {}
        }
    }
    bwrap.extend(["--proc", "/proc", "--dev", "/dev", "--ro-bind"].map(String::from));
    bwrap.push(runner_dir.to_string_lossy().to_string());
    bwrap.push("/opt/sopm".into());
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let volume = m["name"].as_str().unwrap_or("");
        let size = pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == json!(volume))
            .and_then(|v| v["emptyDir"]["sizeLimit"].as_str())
            .and_then(memory_bytes)
            .unwrap_or(64 << 20);
        bwrap.extend([
            "--perms".into(),
            "1777".into(),
            "--size".into(),
            size.to_string(),
            "--tmpfs".into(),
            m["mountPath"].as_str().unwrap_or("/tmp").to_string(),
        ]);
    }
    bwrap.extend(
        [
            "--remount-ro",
            "/",
            "--unshare-pid",
            "--die-with-parent",
            "--clearenv",
        ]
        .map(String::from),
    );
    for e in c["env"].as_array().into_iter().flatten() {
        bwrap.extend([
            "--setenv".into(),
            e["name"].as_str().unwrap_or("").to_string(),
            e["value"].as_str().unwrap_or("").to_string(),
        ]);
    }
    if let Some(dir) = c["workingDir"].as_str() {
        bwrap.extend(["--chdir".into(), dir.to_string()]);
    }
    bwrap.push("--".into());
    for part in c["command"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(c["args"].as_array().into_iter().flatten())
    {
        bwrap.push(part.as_str().unwrap_or("").to_string());
    }
    let memory = c["resources"]["limits"]["memory"]
        .as_str()
        .and_then(memory_bytes);
    let cgroup: Option<SandboxCgroup> = match (&shared.cgroups, memory) {
        (Some(root), Some(bytes)) => root
            .create(&format!("{}-{name}", std::process::id()))
            .ok()
            .filter(|cg| cg.set_limits(bytes, 4096).is_ok()),
        _ => None,
    };
    let mut argv: Vec<String> = vec![
        "-c".into(),
        "exec 2>&1; exec \"$@\"".into(),
        "fake-kubelet".into(),
    ];
    if let Some(cg) = &cgroup {
        let dirs = cg.join_dirs();
        argv.extend([
            "/bin/sh".into(),
            "-c".into(),
            CGROUP_JOIN.into(),
            "join".into(),
            dirs.len().to_string(),
        ]);
        argv.extend(dirs.iter().map(|d| d.to_string_lossy().to_string()));
    }
    argv.extend(bwrap);
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.args(&argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let log = Arc::new(Mutex::new(Vec::new()));
    let kill = Arc::new(Notify::new());
    {
        let mut o = shared.objects.lock();
        o.logs.insert(name.clone(), log.clone());
        o.kills.insert(name.clone(), kill.clone());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            set_pod_status(
                &shared,
                &name,
                json!({"phase": "Pending",
                "containerStatuses": container_status(&image, json!({"waiting": {"reason": "CreateContainerError", "message": e.to_string()}}))}),
            );
            return;
        }
    };
    let started = Instant::now();
    set_pod_status(
        &shared,
        &name,
        json!({"phase": "Running", "podIP": "127.0.0.1", "hostIP": "127.0.0.1",
        "startTime": TIME, "containerStatuses": container_status(&image, json!({"running": {"startedAt": TIME}}))}),
    );
    let mut stdout = child.stdout.take().expect("piped");
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = stdout.read(&mut buf).await {
            if n == 0 {
                break;
            }
            log.lock().extend_from_slice(&buf[..n]);
        }
    });
    let pod_deadline = pod["spec"]["activeDeadlineSeconds"].as_u64();
    tokio::spawn(async move {
        let deadline = job.as_ref().and_then(|(_, d)| *d).or(pod_deadline);
        let until = tokio::time::Instant::now() + Duration::from_secs(deadline.unwrap_or(86_400));
        let mut past_deadline = false;
        let status = tokio::select! {
            s = child.wait() => s.ok(),
            _ = kill.notified() => { let _ = child.start_kill(); child.wait().await.ok() }
            _ = tokio::time::sleep_until(until) => {
                past_deadline = true;
                let _ = child.start_kill();
                child.wait().await.ok()
            }
        };
        let ran = started.elapsed();
        let _ = reader.await;
        let oom = cgroup.as_ref().is_some_and(|cg| cg.oom_kills() > 0);
        // Removed once empty, after the status is out (as a kubelet reports first).
        if let Some(cg) = cgroup {
            tokio::spawn(async move {
                for _ in 0..50 {
                    if cg.remove_now() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .map(|s| s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9)))
            .unwrap_or(137);
        let reason = if oom {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let phase = if code == 0 && !oom {
            "Succeeded"
        } else {
            "Failed"
        };
        let mut status = json!({"phase": phase, "podIP": "127.0.0.1",
            "containerStatuses": container_status(&image, json!({"terminated": {"exitCode": code, "reason": reason,
                "startedAt": TIME, "finishedAt": TIME}}))});
        if past_deadline {
            status["reason"] = json!("DeadlineExceeded");
        }
        shared.objects.lock().ran.insert(name.clone(), ran);
        shared.objects.lock().kills.remove(&name);
        set_pod_status(&shared, &name, status);
        if let Some((job, _)) = job {
            let status = if past_deadline {
                json!({"failed": 1, "startTime": TIME, "conditions": [{"type": "Failed", "status": "True",
                    "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]})
            } else if phase == "Succeeded" {
                json!({"succeeded": 1, "startTime": TIME, "completionTime": TIME,
                    "conditions": [{"type": "Complete", "status": "True"}]})
            } else {
                json!({"failed": 1, "startTime": TIME, "conditions": [{"type": "Failed", "status": "True",
                    "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]})
            };
            set_job_status(&shared, &job, status);
        }
    });
}
