//! The kubernetes executors against `tower-test` mock services: each request the client
//! sends is recorded and answered with a response shaped as the Kubernetes API reference
//! gives it (objects, lists with a resourceVersion, watch event lines, `Status` errors),
//! so the requests' content (the pod and Job specs) and the handling of 404, 409, 410 and
//! 403 are checked without any server.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{json, Value};
use sopm_backends::host::PoolSettings;
use sopm_backends::kubernetes::spec::JOB_PROLOGUE;
use sopm_backends::kubernetes::watch::{Hub, Seen as Known};
use sopm_backends::kubernetes::KubernetesSettings;
use sopm_backends::sandbox::{LaunchSpec, RunnerKind, Sandbox, SandboxLauncher};
use sopm_core::conformance::executor::{call, python, HELLO_PY};
use sopm_core::Limits;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const NS: &str = "sopm-functions";
const PY: &str = "registry.test/sopm/runner-python@sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// One request the client sent.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    body: Vec<u8>,
}

impl Seen {
    fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path == path
    }
    fn watch(&self) -> bool {
        self.query.contains("watch=true")
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

type Requests = Arc<Mutex<Vec<Seen>>>;

/// A client whose every request is recorded and answered by `answer` (`None`: never
/// answered, as a watch that has nothing to say).
fn mock(
    mut answer: impl FnMut(&Seen) -> Option<Response<Body>> + Send + 'static,
) -> (kube::Client, Requests) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NS);
    let seen: Requests = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let body = body
                .collect_bytes()
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default();
            let s = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or("").to_string(),
                body,
            };
            record.lock().push(s.clone());
            match answer(&s) {
                Some(response) => send.send_response(response),
                None => held.push(send),
            }
        }
    });
    (client, seen)
}

fn reply(code: u16, body: Value) -> Option<Response<Body>> {
    Some(
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    )
}

fn lines(events: &[Value]) -> Option<Response<Body>> {
    let mut body = Vec::new();
    for e in events {
        body.extend(serde_json::to_vec(e).unwrap());
        body.push(b'\n');
    }
    Some(
        Response::builder()
            .status(200)
            .body(Body::from(body))
            .unwrap(),
    )
}

fn failure(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

fn list(kind: &str, api_version: &str, rv: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv}, "items": items})
}

fn with_status(mut object: Value, rv: &str, status: Value) -> Value {
    object["metadata"]["resourceVersion"] = json!(rv);
    object["metadata"]["uid"] = json!("6f1c3a4e-0000-4000-8000-000000000001");
    object["status"] = status;
    object
}

fn settings(client: kube::Client) -> KubernetesSettings {
    KubernetesSettings::new()
        .with_client(client)
        .with_instance("mock-instance")
        .with_image(RunnerKind::Python, PY)
        .with_pool(PoolSettings::new([]).with_stem_cells(0))
}

/// A stand-in for a pod's runner: accepts the frames and logs connections, records their
/// first lines, says hello on the frames one.
async fn runner_stand_in() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let auth = Arc::new(Mutex::new(Vec::new()));
    let record = auth.clone();
    tokio::spawn(async move {
        let mut keep = Vec::new();
        let mut frames = None;
        for _ in 0..2 {
            let (conn, _) = listener.accept().await.unwrap();
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            record.lock().push(line.trim_end().to_string());
            if line.contains(" frames ") {
                frames = Some(reader.into_inner());
            } else {
                keep.push(reader.into_inner());
            }
        }
        // As a runner does: hello once both channels are in.
        let mut frames = frames.expect("a frames connection");
        frames
            .write_all(b"{\"type\":\"hello\",\"runner\":\"python\"}\n")
            .await
            .unwrap();
        keep.push(frames);
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    (port, auth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pod_is_created_with_the_designed_spec_and_reached_with_its_token() {
    let (port, auth) = runner_stand_in().await;
    let created: Arc<Mutex<Option<Value>>> = Arc::default();
    let state = created.clone();
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    let mut lists = 0;
    let mut told = false;
    let (client, requests) = mock(move |r| {
        let pod = state.lock().clone();
        if r.is("GET", &pods) && !r.watch() {
            lists += 1;
            if lists == 1 {
                // The start-up sweep finds a pod an earlier run left.
                let old = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "old-pod",
                    "labels": {"sopm.dev/instance": "mock-instance"}}});
                return reply(
                    200,
                    list(
                        "PodList",
                        "v1",
                        "7",
                        vec![with_status(old, "6", json!({"phase": "Running"}))],
                    ),
                );
            }
            return reply(200, list("PodList", "v1", "10", vec![]));
        }
        if r.is("DELETE", &format!("{pods}/old-pod")) {
            return reply(
                200,
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "old-pod"}}),
            );
        }
        if r.is("POST", &pods) {
            let body = r.json();
            *state.lock() = Some(body.clone());
            return reply(201, with_status(body, "11", json!({"phase": "Pending"})));
        }
        if r.is("GET", &pods) && r.watch() {
            return match pod {
                Some(p) if !told => {
                    told = true;
                    lines(&[
                        json!({"type": "ADDED", "object": with_status(p.clone(), "11", json!({"phase": "Pending"}))}),
                        json!({"type": "MODIFIED", "object": with_status(p, "12",
                            json!({"phase": "Running", "podIP": "127.0.0.1", "hostIP": "10.0.0.3"}))}),
                    ])
                }
                Some(_) => None,
                None => lines(&[]),
            };
        }
        if r.method == "DELETE" {
            // Deleting the pod again finds it gone: 404 is fine.
            return reply(404, failure(404, "NotFound", "pods \"x\" not found"));
        }
        reply(500, failure(500, "InternalError", "unexpected request"))
    });
    let exec = settings(client).with_runner_port(port).build().unwrap();
    let spec = LaunchSpec {
        runner: RunnerKind::Python,
        limits: Limits::default(),
        network: false,
        mount: None,
        image: None,
    };
    let mut pod = tokio::time::timeout(Duration::from_secs(20), exec.launcher().launch(&spec))
        .await
        .expect("launched in time")
        .expect("launched");
    let sent = created.lock().clone().expect("a pod was created");
    let spec = &sent["spec"];
    let c = &spec["containers"][0];
    assert_eq!(sent["metadata"]["namespace"], json!(NS));
    let labels = &sent["metadata"]["labels"];
    assert_eq!(labels["sopm.dev/function-pod"], json!("true"));
    assert_eq!(labels["sopm.dev/instance"], json!("mock-instance"));
    assert_eq!(spec["runtimeClassName"], json!("gvisor"));
    assert_eq!(spec["automountServiceAccountToken"], json!(false));
    assert_eq!(spec["restartPolicy"], json!("Never"));
    assert_eq!(spec["activeDeadlineSeconds"], json!(3600));
    assert_eq!(spec["securityContext"]["runAsNonRoot"], json!(true));
    assert_eq!(spec["securityContext"]["runAsUser"], json!(65534));
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        json!("RuntimeDefault")
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], json!(true));
    assert_eq!(sc["runAsUser"], json!(65534));
    assert_eq!(sc["readOnlyRootFilesystem"], json!(true));
    assert_eq!(sc["allowPrivilegeEscalation"], json!(false));
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], json!("RuntimeDefault"));
    assert_eq!(c["image"], json!(PY));
    assert_eq!(c["resources"]["limits"]["memory"], json!("320Mi"));
    assert_eq!(c["resources"]["limits"]["cpu"], json!("1000m"));
    assert_eq!(c["resources"]["requests"]["memory"], json!("320Mi"));
    let tmp = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == json!("tmp"))
        .unwrap();
    assert_eq!(
        tmp["emptyDir"],
        json!({"medium": "Memory", "sizeLimit": "64Mi"})
    );
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(mounts, ["/tmp", "/fn"]);
    let command: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        command[..5],
        ["python3", "-I", "-S", "-B", "/opt/sopm/runner.py"]
    );
    assert_eq!(
        command[5..],
        ["--listen".to_string(), format!("0.0.0.0:{port}")]
    );
    assert_eq!(c["ports"][0]["containerPort"], json!(port));
    let token = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == json!("SOPM_RUNNER_TOKEN"))
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(token.len(), 64);
    assert_eq!(
        *auth.lock(),
        vec![
            format!("sopm-runner/1 frames {token}"),
            format!("sopm-runner/1 logs {token}")
        ]
    );
    assert!(pod.is_alive());
    pod.terminate().await;
    let seen = requests.lock().clone();
    let old = format!("/api/v1/namespaces/{NS}/pods/old-pod");
    assert!(seen.iter().any(|r| r.is("DELETE", &old)), "{seen:#?}");
    let name = sent["metadata"]["name"].as_str().unwrap();
    assert!(
        seen.iter()
            .any(|r| r.method == "DELETE" && r.path.ends_with(name)),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .all(|r| !(r.method == "GET" && r.path.ends_with(name))),
        "the pod was polled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_on_the_watch_makes_the_watcher_list_again() {
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    let mut lists = 0;
    let mut watches = 0;
    let (client, requests) = mock(move |r| {
        if r.is("GET", &pods) && !r.watch() {
            lists += 1;
            let items = if lists == 1 {
                vec![with_status(
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pod-a"}}),
                    "5",
                    json!({"phase": "Running", "podIP": "10.1.0.9"}),
                )]
            } else {
                vec![]
            };
            return reply(
                200,
                list("PodList", "v1", if lists == 1 { "5" } else { "9" }, items),
            );
        }
        if r.is("GET", &pods) && r.watch() {
            watches += 1;
            if watches == 1 {
                return lines(&[
                    json!({"type": "ERROR", "object": failure(410, "Expired", "too old resource version: 5 (9)")}),
                ]);
            }
            return None;
        }
        reply(500, failure(500, "InternalError", "unexpected request"))
    });
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, NS);
    let hub = Hub::start(
        api,
        "sopm.dev/function-pod=true",
        |p: &k8s_openapi::api::core::v1::Pod| p.metadata.name.clone(),
    );
    let mut a = hub.subscribe("pod-a");
    let mut saw_present = false;
    let gone = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match &*a.borrow_and_update() {
                Known::Present(_) => saw_present = true,
                Known::Gone => return,
                Known::NotYet => {}
            }
            if a.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "pod-a never went away after the 410 and the new list"
    );
    assert!(saw_present || matches!(&*a.borrow(), Known::Gone));
    let seen = requests.lock().clone();
    let order: Vec<String> = seen
        .iter()
        .map(|r| format!("{} {}", if r.watch() { "watch" } else { "list" }, r.method))
        .collect();
    assert_eq!(
        order[..3],
        ["list GET", "watch GET", "list GET"],
        "{seen:#?}"
    );
    assert!(seen[1].query.contains("resourceVersion=5"), "{:?}", seen[1]);
    assert!(
        seen[0]
            .query
            .contains("labelSelector=sopm.dev%2Ffunction-pod%3Dtrue"),
        "{:?}",
        seen[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_and_already_exists_are_clear_errors() {
    for (code, reason, expected) in [
        (403, "Forbidden", "unavailable"),
        (409, "AlreadyExists", "conflict"),
    ] {
        let pods = format!("/api/v1/namespaces/{NS}/pods");
        let (client, _) = mock(move |r| {
            if r.is("GET", &pods) && !r.watch() {
                return reply(200, list("PodList", "v1", "1", vec![]));
            }
            if r.watch() {
                return None;
            }
            if r.is("POST", &pods) {
                return reply(code, failure(code, reason,
                    "pods is forbidden: User \"system:serviceaccount:sopm:sopm-worker\" cannot create resource \"pods\" in API group \"\" in the namespace \"sopm-functions\""));
            }
            reply(500, failure(500, "InternalError", "unexpected request"))
        });
        let exec = settings(client).build().unwrap();
        let f = python(HELLO_PY);
        let e = call(&exec, &f, json!({})).await.unwrap_err();
        assert_eq!(e.code(), expected, "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&code.to_string()), "{text}");
        if code == 403 {
            assert!(
                text.contains("403 Forbidden") && text.contains("Role"),
                "{text}"
            );
        }
    }
    // The Job executor: a 403 on the first list (the start-up sweep) says what is missing.
    let (client, _) = mock(|_| reply(403, failure(403, "Forbidden", "jobs.batch is forbidden")));
    let jobs = settings(client).build_jobs().unwrap();
    let e = call(&jobs, &python(HELLO_PY), json!({})).await.unwrap_err();
    assert_eq!(e.code(), "unavailable", "{e:?}");
    assert!(e.to_string().contains("403 Forbidden"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pod_takes_200_and_404_and_reports_500() {
    let mut n = 0;
    let (client, requests) = mock(move |_| {
        n += 1;
        match n {
            1 => reply(
                200,
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}),
            ),
            2 => reply(404, failure(404, "NotFound", "pods \"p\" not found")),
            _ => reply(
                500,
                failure(500, "InternalError", "etcdserver: request timed out"),
            ),
        }
    });
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, NS);
    use sopm_backends::kubernetes::cluster::delete_now;
    delete_now(&api, "p", 0).await.unwrap();
    delete_now(&api, "p", 0).await.unwrap();
    let e = delete_now(&api, "p", 0).await.unwrap_err();
    assert_eq!(e.code(), "unavailable");
    assert!(e.to_string().contains("etcdserver"), "{e}");
    let seen = requests.lock().clone();
    assert!(seen
        .iter()
        .all(|r| r.is("DELETE", &format!("/api/v1/namespaces/{NS}/pods/p"))));
    assert!(
        String::from_utf8_lossy(&seen[0].body).contains("\"gracePeriodSeconds\":0"),
        "{:?}",
        seen[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_created_with_the_designed_spec_and_its_result_read_from_the_log() {
    let created: Arc<Mutex<Option<Value>>> = Arc::default();
    let state = created.clone();
    let jobs_path = format!("/apis/batch/v1/namespaces/{NS}/jobs");
    let pods_path = format!("/api/v1/namespaces/{NS}/pods");
    let (mut told_job, mut told_pod) = (false, false);
    let (client, requests) = mock(move |r| {
        let job = state.lock().clone();
        let job_name = job
            .as_ref()
            .map(|j| j["metadata"]["name"].as_str().unwrap().to_string());
        let pod_name = job_name.as_ref().map(|n| format!("{n}-x7k2p"));
        if r.is("GET", &jobs_path) && !r.watch() {
            return reply(200, list("JobList", "batch/v1", "3", vec![]));
        }
        if r.is("GET", &pods_path) && !r.watch() {
            return reply(200, list("PodList", "v1", "3", vec![]));
        }
        if r.is("POST", &jobs_path) {
            let body = r.json();
            *state.lock() = Some(body.clone());
            return reply(201, with_status(body, "4", json!({})));
        }
        if r.is("GET", &jobs_path) && r.watch() {
            return match job {
                Some(j) if !told_job => {
                    told_job = true;
                    lines(&[
                        json!({"type": "ADDED", "object": with_status(j.clone(), "4", json!({"active": 1}))}),
                        json!({"type": "MODIFIED", "object": with_status(j, "8", json!({"succeeded": 1,
                            "conditions": [{"type": "Complete", "status": "True"}]}))}),
                    ])
                }
                Some(_) => None,
                None => lines(&[]),
            };
        }
        if r.is("GET", &pods_path) && r.watch() {
            return match (&job, &pod_name) {
                (Some(j), Some(pod_name)) if !told_pod => {
                    told_pod = true;
                    let mut labels = j["spec"]["template"]["metadata"]["labels"].clone();
                    labels["batch.kubernetes.io/job-name"] = j["metadata"]["name"].clone();
                    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, "labels": labels}});
                    lines(&[
                        json!({"type": "ADDED", "object": with_status(pod, "7", json!({"phase": "Succeeded",
                        "containerStatuses": [{"name": "runner", "image": PY, "imageID": "", "ready": false, "restartCount": 0,
                            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}))}),
                    ])
                }
                (Some(_), _) => None,
                _ => lines(&[]),
            };
        }
        if let (Some(j), Some(pod_name)) = (&job, &pod_name) {
            if r.is("GET", &format!("{pods_path}/{pod_name}/log")) {
                let env = j["spec"]["template"]["spec"]["containers"][0]["env"]
                    .as_array()
                    .unwrap();
                let var = |k: &str| -> Value {
                    serde_json::from_str(
                        env.iter().find(|e| e["name"] == json!(k)).unwrap()["value"]
                            .as_str()
                            .unwrap(),
                    )
                    .unwrap()
                };
                let (init, invoke) = (var("SOPM_JOB_INIT"), var("SOPM_JOB_INVOKE"));
                let m = init["log_marker"].as_str().unwrap();
                let log = format!(
                    "{{\"type\":\"hello\",\"runner\":\"python\"}}\n\n{m}\n{{\"type\":\"ready\"}}\ncomputing\n\n{m}\n{}\n",
                    json!({"type": "result", "id": invoke["id"], "ok": true, "output": {"got": invoke["input"]}})
                );
                return Some(
                    Response::builder()
                        .status(200)
                        .body(Body::from(log.into_bytes()))
                        .unwrap(),
                );
            }
            if r.is(
                "DELETE",
                &format!("{jobs_path}/{}", j["metadata"]["name"].as_str().unwrap()),
            ) {
                return reply(
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                );
            }
        }
        reply(500, failure(500, "InternalError", "unexpected request"))
    });
    let exec = settings(client).build_jobs().unwrap();
    let f = python(HELLO_PY);
    let out = tokio::time::timeout(Duration::from_secs(20), call(&exec, &f, json!({"n": 1})))
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(out.value, json!({"got": {"n": 1}}));
    assert_eq!(out.logs.as_deref(), Some("computing\n"));
    let job = created.lock().clone().unwrap();
    let spec = &job["spec"];
    assert_eq!(spec["backoffLimit"], json!(0));
    assert_eq!(spec["ttlSecondsAfterFinished"], json!(300));
    assert_eq!(spec["activeDeadlineSeconds"], json!(30 + 30));
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], json!("Never"));
    assert_eq!(pod["terminationGracePeriodSeconds"], json!(2));
    assert_eq!(pod["runtimeClassName"], json!("gvisor"));
    assert_eq!(pod["automountServiceAccountToken"], json!(false));
    assert_eq!(
        spec["template"]["metadata"]["labels"]["sopm.dev/function-pod"],
        json!("true")
    );
    assert_eq!(
        job["metadata"]["labels"]["sopm.dev/instance"],
        json!("mock-instance")
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], json!(true));
    let command: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(command[..4], ["/bin/sh", "-c", JOB_PROLOGUE, "sopm-job"]);
    assert_eq!(
        command[4..],
        ["python3", "-I", "-S", "-B", "/opt/sopm/runner.py"]
    );
    let names: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"SOPM_JOB_INIT") && names.contains(&"SOPM_JOB_INVOKE"),
        "{names:?}"
    );
    assert!(!names.contains(&"SOPM_RUNNER_TOKEN"), "{names:?}");
    let name = job["metadata"]["name"].as_str().unwrap().to_string();
    let deleted = async {
        for _ in 0..100 {
            if requests
                .lock()
                .iter()
                .any(|r| r.method == "DELETE" && r.path.ends_with(&name))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };
    assert!(deleted.await, "the finished job was not deleted");
}

/// A Job's pod seen killed (exit 137, no result in its log) before the Job's verdict: the
/// executor waits for the verdict; `DeadlineExceeded` is a timeout, no verdict a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_pod_killed_before_the_jobs_verdict_waits_for_it() {
    for verdict in [true, false] {
        let created: Arc<Mutex<Option<Value>>> = Arc::default();
        let log_read = Arc::new(Mutex::new(false));
        let (state, read) = (created.clone(), log_read.clone());
        let jobs_path = format!("/apis/batch/v1/namespaces/{NS}/jobs");
        let pods_path = format!("/api/v1/namespaces/{NS}/pods");
        let (mut told_pod, mut told_failure) = (false, false);
        let (client, _) = mock(move |r| {
            let job = state.lock().clone();
            let failed = verdict && *read.lock();
            if r.is("POST", &jobs_path) {
                let body = r.json();
                *state.lock() = Some(body.clone());
                return reply(201, with_status(body, "4", json!({"active": 1})));
            }
            if r.is("GET", &jobs_path) && !r.watch() {
                let items = job
                    .iter()
                    .map(|j| with_status(j.clone(), "5", json!({"active": 1})))
                    .collect();
                return reply(200, list("JobList", "batch/v1", "5", items));
            }
            if r.is("GET", &jobs_path) && r.watch() {
                // Until the log was read the Job says nothing new (its watch ends, the
                // watcher watches again); then it fails for its deadline.
                return match (&job, failed, told_failure) {
                    (Some(j), true, false) => {
                        told_failure = true;
                        lines(&[
                            json!({"type": "MODIFIED", "object": with_status(j.clone(), "9", json!({"failed": 1,
                            "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                "message": "Job was active longer than specified deadline"}]}))}),
                        ])
                    }
                    (_, _, true) => None,
                    // No verdict will come: the watch just waits.
                    (Some(_), _, _) if !verdict => None,
                    _ => lines(&[]),
                };
            }
            if r.is("GET", &pods_path) && !r.watch() {
                return reply(200, list("PodList", "v1", "3", vec![]));
            }
            if r.is("GET", &pods_path) && r.watch() {
                return match &job {
                    Some(j) if !told_pod => {
                        told_pod = true;
                        let mut labels = j["spec"]["template"]["metadata"]["labels"].clone();
                        labels["batch.kubernetes.io/job-name"] = j["metadata"]["name"].clone();
                        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "job-pod", "labels": labels}});
                        lines(&[
                            json!({"type": "ADDED", "object": with_status(pod, "7", json!({"phase": "Failed",
                            "containerStatuses": [{"name": "runner", "image": PY, "imageID": "", "ready": false, "restartCount": 0,
                                "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]}))}),
                        ])
                    }
                    Some(_) => None,
                    None => lines(&[]),
                };
            }
            if r.is("GET", &format!("{pods_path}/job-pod/log")) {
                *read.lock() = true;
                return Some(
                    Response::builder()
                        .status(200)
                        .body(Body::from(
                            b"{\"type\":\"hello\",\"runner\":\"python\"}\n".to_vec(),
                        ))
                        .unwrap(),
                );
            }
            if r.method == "DELETE" {
                return reply(
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                );
            }
            reply(500, failure(500, "InternalError", "unexpected request"))
        });
        let exec = settings(client).build_jobs().unwrap();
        let e = tokio::time::timeout(
            Duration::from_secs(20),
            call(&exec, &python(HELLO_PY), json!({})),
        )
        .await
        .expect("answered in time")
        .unwrap_err();
        if verdict {
            assert_eq!(e.code(), "timeout", "{e:?}");
            assert!(e.to_string().contains("activeDeadlineSeconds"), "{e}");
        } else {
            assert_eq!(e.code(), "sandbox_crashed", "{e:?}");
            assert!(e.to_string().contains("exit code 137"), "{e}");
        }
        assert!(*log_read.lock());
    }
}

/// A function image built by the docker builder and pushed to a registry (code too big
/// for an init frame): its artifact names it by digest, the executor boots it as it is,
/// and the pod spec carries `image: HOST/REPO@sha256:…` with no `/fn` volume (the code
/// is in the image); an image that names no digest is refused before any pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_image_is_referenced_by_digest_in_the_pod_spec() {
    const FUNCTION_IMAGE: &str = "127.0.0.1:5000/sopm/functions@sha256:2222222222222222222222222222222222222222222222222222222222222222";
    let (port, _) = runner_stand_in().await;
    let created: Arc<Mutex<Option<Value>>> = Arc::default();
    let state = created.clone();
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    let mut told = false;
    let (client, _) = mock(move |r| {
        let pod = state.lock().clone();
        if r.is("GET", &pods) && !r.watch() {
            return reply(200, list("PodList", "v1", "10", vec![]));
        }
        if r.is("POST", &pods) {
            let body = r.json();
            *state.lock() = Some(body.clone());
            return reply(201, with_status(body, "11", json!({"phase": "Pending"})));
        }
        if r.is("GET", &pods) && r.watch() {
            return match pod {
                Some(p) if !told => {
                    told = true;
                    lines(&[json!({"type": "MODIFIED", "object": with_status(p, "12",
                            json!({"phase": "Running", "podIP": "127.0.0.1"}))})])
                }
                Some(_) => None,
                None => lines(&[]),
            };
        }
        if r.method == "DELETE" {
            return reply(404, failure(404, "NotFound", "pods \"x\" not found"));
        }
        reply(500, failure(500, "InternalError", "unexpected request"))
    });
    let exec = settings(client).with_runner_port(port).build().unwrap();
    let launcher = exec.launcher();
    let artifact = sopm_core::Artifact::Image {
        reference: FUNCTION_IMAGE.into(),
    };
    let code = launcher.load_code(&artifact, 1 << 20).await.unwrap();
    assert_eq!(
        code,
        sopm_backends::sandbox::FunctionCode::Image(FUNCTION_IMAGE.into())
    );
    let spec = LaunchSpec {
        runner: RunnerKind::Python,
        limits: Limits::default(),
        network: false,
        mount: None,
        image: Some(FUNCTION_IMAGE.into()),
    };
    let mut pod = tokio::time::timeout(Duration::from_secs(20), launcher.launch(&spec))
        .await
        .expect("launched in time")
        .expect("launched");
    let sent = created.lock().clone().expect("a pod was created");
    let c = &sent["spec"]["containers"][0];
    assert_eq!(c["image"], json!(FUNCTION_IMAGE));
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(mounts, ["/tmp"], "the code is in the image: no /fn volume");
    pod.terminate().await;

    // A local tag (an image built without a registry) names no digest: refused.
    let (client, requests) = mock(|_| None);
    let exec = settings(client).build().unwrap();
    let tagged = LaunchSpec {
        image: Some("sopm-fn-0192abc:v1".into()),
        ..spec
    };
    let e = exec.launcher().launch(&tagged).await.unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e:?}");
    assert!(e.to_string().contains("by digest only"), "{e}");
    assert!(
        requests.lock().iter().all(|r| r.method != "POST"),
        "no pod for an unpinned image"
    );
}
