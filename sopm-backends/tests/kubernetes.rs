//! The kubernetes executors without a cluster (none can run on this machine):
//!
//! - the executor conformance suite of `sopm_core` against the `kubernetes` executor on a
//!   small fake API whose "pods" are real runner processes (`support/fake_kube.rs`),
//!   except the behaviours only a real pod can show (isolation by the container runtime,
//!   gVisor, the NetworkPolicy), declared not applicable with their reason;
//! - the warm executor's own behaviours on the fake: start-up sweep and shutdown cleanup
//!   by instance label, pods watched and never polled, an image that cannot be pulled;
//! - the `kubernetes-job` executor on the fake: success, function error, timeout (the
//!   Job's deadline), `OOMKilled`, a crash, the input cap;
//! - the runners' TCP mode: the token is required;
//! - `tower-test` mock services answering with the API reference's shapes
//!   (`support/kube_mock.rs`): the pod and Job specs, 404/409/410/403.
//!
//! Tests needing bubblewrap, python3, node or the static runner skip with a printed
//! reason, and fail under `SOPM_REQUIRE_INTEGRATION=1`.
#![cfg(feature = "kubernetes")]

#[path = "support/fake_kube.rs"]
mod fake_kube;
#[path = "support/kube_mock.rs"]
mod kube_mock;
#[path = "support/kube_world.rs"]
mod kube_world;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;
use sopm_backends::kubernetes::{KubernetesExecutor, KubernetesJobExecutor};
use sopm_backends::sandbox::RunnerKind;
use sopm_core::conformance::executor::{
    call, call_within, python, python_limited, skip, tight, wait_for_stem_cells, Needs,
    SandboxCounters, Subject, HELLO_PY,
};
use sopm_core::{Executor, Limits, Runtime};

use kube_world::{eventually, world_unavailable, World};

/// Behaviours of the suite that the fake cannot give, with the reason: each is a
/// property a real pod gets from its node (container runtime, gVisor, cgroups, seccomp,
/// the CNI), which the pod spec asks for (asserted in the mock tests) but only a real
/// cluster enforces. They are not run, never counted as passed.
const NOT_APPLICABLE: &[(&str, &str)] = &[
    ("no_network_to_the_host", "a function pod's network is cut by the functions' NetworkPolicy (no egress), enforced by the cluster's CNI; the fake's pods share the host's network so the executor can reach their ports on 127.0.0.1"),
    ("secrets_of_the_host_are_not_visible", "a pod sees its image's filesystem only; the fake's pods see the host's system directories (they stand for the image)"),
    ("no_host_file_outside_the_allow_list_is_readable", "a pod sees its image's filesystem only; the fake's pods see the host's system directories (they stand for the image)"),
    ("writes_outside_tmp_fail", "readOnlyRootFilesystem is enforced by the container runtime; the fake imitates it with bubblewrap, so a pass would test the fake"),
    ("a_fork_bomb_is_contained", "a pod's process limit is the node's podPidsLimit (and gVisor's), not a field of the pod spec; the fake sets none"),
    ("no_nested_namespaces_or_privileged_syscalls", "seccomp RuntimeDefault, dropped capabilities and gVisor are applied by the node; the fake applies none of them"),
];

/// The kubernetes executor on a fake API, as a subject of the conformance suite.
struct Kube {
    exec: KubernetesExecutor,
    world: World,
}

#[async_trait]
impl Subject for Kube {
    fn executor(&self) -> &dyn Executor {
        &self.exec
    }
    fn start(&self) {
        self.exec.start()
    }
    fn counters(&self) -> SandboxCounters {
        let c = self.exec.counters();
        SandboxCounters {
            stem_cells_used: c.stem_cells_used,
            cold_starts: c.cold_starts,
            replaced: c.replaced,
        }
    }
    /// Shuts the executor down and checks that none of its pods is left.
    async fn finish(&self) {
        self.exec.shutdown().await;
        let fake = &self.world.fake;
        assert!(
            eventually(|| fake.pods().is_empty()).await,
            "pods left after shutdown: {:?}",
            fake.pods()
        );
    }
}

/// A kubernetes executor on a fresh fake API shaped for one behaviour; `None` when the
/// behaviour does not apply (printed with its reason) or the host lacks what the fake
/// needs (skipped).
async fn kube(needs: Needs) -> Option<Kube> {
    if let Some((_, why)) = NOT_APPLICABLE.iter().find(|(t, _)| *t == needs.test) {
        eprintln!(
            "not applicable to the kubernetes executor without a cluster: {}: {why}",
            needs.test
        );
        return None;
    }
    let needs_static = needs
        .runtimes
        .iter()
        .any(|r| matches!(r, Runtime::Shell | Runtime::Binary));
    if let Some(why) = world_unavailable(needs_static) {
        skip(needs.test, &why);
        return None;
    }
    let world = World::start().await;
    if needs.test == "unbounded_allocation_is_out_of_memory" && !world.fake.has_memory_limits() {
        skip(
            needs.test,
            "this host lets the fake make no memory cgroups, so no pod can be OOMKilled",
        );
        return None;
    }
    let mut settings = world.settings();
    let runners: Vec<RunnerKind> = needs
        .runtimes
        .iter()
        .filter_map(|r| sopm_backends::kubernetes::launcher::pod_runner(*r))
        .collect();
    {
        let pool = settings.pool_mut();
        pool.stem_runners = runners;
        pool.stem_cells = needs.stem_cells;
        if let Some(l) = needs.stem_limits.clone() {
            pool.stem_limits = l;
        }
        if let Some(n) = needs.max_instances_per_function {
            pool.max_per_function = n;
        }
        if let Some(n) = needs.max_instances_per_tenant {
            pool.max_per_tenant = n;
        }
        if let Some(ttl) = needs.idle_ttl {
            pool.idle_ttl = ttl;
        }
    }
    let exec = settings.build().expect("valid settings");
    Some(Kube { exec, world })
}

sopm_core::executor_conformance!(kube);

/// Runs `body` on a fresh fake with a warm executor, unless the host lacks what the fake
/// needs.
async fn warm(test: &str) -> Option<(World, KubernetesExecutor)> {
    if let Some(why) = world_unavailable(false) {
        skip(test, &why);
        return None;
    }
    let world = World::start().await;
    let mut settings = world.settings();
    settings.pool_mut().stem_runners = vec![RunnerKind::Python];
    let exec = settings.build().expect("valid settings");
    Some((world, exec))
}

#[test]
fn the_not_applicable_behaviours_are_isolation_only_and_named_in_the_suite() {
    // The list cannot grow silently past what only a real pod can show.
    assert_eq!(NOT_APPLICABLE.len(), 6);
    for (name, why) in NOT_APPLICABLE {
        assert!(!why.is_empty());
        assert!(
            [
                "no_network_to_the_host",
                "secrets_of_the_host_are_not_visible",
                "no_host_file_outside_the_allow_list_is_readable",
                "writes_outside_tmp_fail",
                "a_fork_bomb_is_contained",
                "no_nested_namespaces_or_privileged_syscalls",
            ]
            .contains(name),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_pods_are_swept_at_start_and_none_is_left_at_shutdown() {
    let Some((world, exec)) = warm("sweep").await else {
        return;
    };
    let fake = &world.fake;
    // A pod of this instance left by an earlier run, and one of another instance.
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(fake.client(), exec.launcher().settings().namespace());
    let instance = exec.launcher().settings().instance().to_string();
    for (name, owner) in [
        ("leftover", instance.as_str()),
        ("someone-elses", "other-instance"),
    ] {
        let pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {
                "sopm.dev/function-pod": "true", "sopm.dev/instance": owner, "sopm.dev/kind": "warm"}},
            "spec": {"containers": [{"name": "runner", "image": "registry.test/unknown@sha256:00"}]}
        }))
        .unwrap();
        pods.create(&Default::default(), &pod).await.unwrap();
    }
    let f = python(HELLO_PY);
    let out = call(&exec, &f, json!({"name": "k8s"})).await.unwrap();
    assert_eq!(out.value, json!({"hello": "k8s"}));
    let names = fake.pods();
    assert!(!names.contains(&"leftover".to_string()), "{names:?}");
    assert!(names.contains(&"someone-elses".to_string()), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("sopm-warm-python-")),
        "{names:?}"
    );
    exec.retire(&f.version.function_id).await.unwrap();
    exec.shutdown().await;
    assert!(
        eventually(|| fake.pods() == vec!["someone-elses".to_string()]).await,
        "{:?}",
        fake.pods()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_watched_never_polled_and_reused() {
    let Some((world, exec)) = warm("watched").await else {
        return;
    };
    exec.start();
    wait_for_stem_cells(&exec, "python", 1).await;
    let f = python(HELLO_PY);
    for i in 0..20 {
        let out = call(&exec, &f, json!({"name": i})).await.unwrap();
        assert_eq!(out.value, json!({"hello": i}));
    }
    let requests = world.fake.requests();
    let gets_of_one_pod = requests
        .iter()
        .filter(|r| r.starts_with("GET /sopm-functions/pods/"))
        .count();
    assert_eq!(gets_of_one_pod, 0, "{requests:#?}");
    let watches = requests.iter().filter(|r| r.contains("watch=true")).count();
    assert!(watches >= 1, "{requests:#?}");
    let creates = requests.iter().filter(|r| r.starts_with("POST")).count();
    // One stem cell specialised, one stem cell booted to replace it: 20 calls, one pod.
    assert!(
        creates <= 2,
        "{creates} pods for 20 calls of one function: {requests:#?}"
    );
    assert_eq!(exec.counters().cold_starts, 0);
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_killed_by_its_node_is_replaced() {
    let Some((world, exec)) = warm("killed").await else {
        return;
    };
    let f = python(HELLO_PY);
    call(&exec, &f, json!({})).await.unwrap();
    let running: Vec<String> = world.fake.pods();
    for pod in &running {
        world.fake.kill_pod_process(pod);
    }
    assert!(
        eventually(|| running.iter().all(|p| world
            .fake
            .pod(p)
            .is_none_or(|v| v["status"]["phase"] != json!("Running"))))
        .await
    );
    let out = call(&exec, &f, json!({"name": "again"})).await.unwrap();
    assert_eq!(out.value, json!({"hello": "again"}));
    assert!(exec.counters().replaced >= 1, "{:?}", exec.counters());
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_pulled_is_a_clear_error() {
    if let Some(why) = world_unavailable(false) {
        skip("image_pull", &why);
        return;
    }
    let world = World::start().await;
    let unknown = "registry.test/sopm/runner-node@sha256:9999999999999999999999999999999999999999999999999999999999999999";
    let mut settings = world.settings().with_image(RunnerKind::Node, unknown);
    settings.pool_mut().stem_cells = 0;
    let exec = settings.build().unwrap();
    let f = sopm_core::conformance::executor::function(
        Runtime::Node,
        "index.handle",
        &[("index.js", b"exports.handle = async () => 1;\n")],
    );
    let e = call(&exec, &f, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "unavailable", "{e:?}");
    assert!(e.to_string().contains("ErrImagePull"), "{e}");
    exec.shutdown().await;
    assert!(
        eventually(|| world.fake.pods().is_empty()).await,
        "{:?}",
        world.fake.pods()
    );
}

async fn jobs(test: &str) -> Option<(World, KubernetesJobExecutor)> {
    if let Some(why) = world_unavailable(false) {
        skip(test, &why);
        return None;
    }
    let world = World::start().await;
    let exec = world.settings().build_jobs().expect("valid settings");
    Some((world, exec))
}

async fn no_jobs_left(world: &World) {
    assert!(
        eventually(|| world.fake.jobs().is_empty() && world.fake.pods().is_empty()).await,
        "left: jobs {:?}, pods {:?}",
        world.fake.jobs(),
        world.fake.pods()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_one_call_and_its_result_comes_from_the_log() {
    let Some((world, exec)) = jobs("job_success").await else {
        return;
    };
    let f = python(
        "def handle(event, context):\n    print('working on', event['n'])\n    return {'double': event['n'] * 2}\n",
    );
    let out = call(&exec, &f, json!({"n": 21})).await.unwrap();
    assert_eq!(out.value, json!({"double": 42}));
    assert!(out.logs.unwrap_or_default().contains("working on 21"));
    let node = sopm_core::conformance::executor::function(
        Runtime::Node,
        "index.handle",
        &[(
            "index.js",
            b"exports.handle = async (e) => ({node: e.x});\n",
        )],
    );
    assert_eq!(
        call(&exec, &node, json!({"x": "y"})).await.unwrap().value,
        json!({"node": "y"})
    );
    no_jobs_left(&world).await;
    assert_eq!(exec.pool_stats()[0].started_total, 2);
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_a_function_error_with_its_traceback() {
    let Some((world, exec)) = jobs("job_error").await else {
        return;
    };
    let f = python("def handle(event, context):\n    raise ValueError('bad input')\n");
    let e = call(&exec, &f, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "function_error", "{e:?}");
    assert!(e.to_string().contains("bad input"), "{e}");
    let g = python("def handle(event, context):\n    return 1\nsyntax error here\n");
    let e = call(&exec, &g, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "function_error", "{e:?}");
    assert!(e.to_string().contains("failed to load"), "{e}");
    let crash = python("import os\ndef handle(event, context):\n    os._exit(3)\n");
    let e = call(&exec, &crash, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "sandbox_crashed", "{e:?}");
    assert!(e.to_string().contains("exit code 3"), "{e}");
    no_jobs_left(&world).await;
    exec.shutdown().await;
}

/// A Job whose function sleeps past its 1 s timeout: with `grace` (time for the pod to
/// start) of 0 the Job's `activeDeadlineSeconds` (1 s) stops it; with 30 s the executor
/// stops waiting 1 s after the timeout, counted from when the pod ran, and deletes the
/// Job. Both are `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_timeout_or_deadline_is_a_timeout() {
    if let Some(why) = world_unavailable(false) {
        skip("job_timeout", &why);
        return;
    }
    let world = World::start().await;
    let f = python_limited(
        "import time\ndef handle(event, context):\n    time.sleep(60)\n",
        Limits {
            timeout_ms: 1000,
            ..tight()
        },
    );
    for (grace, says) in [
        (0, "activeDeadlineSeconds 1"),
        (30, "ran past its timeout of 1000 ms"),
    ] {
        let exec = world
            .settings()
            .with_job_grace(Duration::from_secs(grace))
            .build_jobs()
            .unwrap();
        let started = Instant::now();
        let e = call_within(&exec, &f, json!({}), Duration::from_secs(60))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "timeout", "{e:?}");
        assert!(e.to_string().contains(says), "grace {grace}: {e}");
        eprintln!(
            "job timeout with grace {grace} s answered after {:?}",
            started.elapsed()
        );
        no_jobs_left(&world).await;
        exec.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_for_memory_is_out_of_memory() {
    let Some((world, exec)) = jobs("job_oom").await else {
        return;
    };
    if !world.fake.has_memory_limits() {
        skip(
            "job_oom",
            "this host lets the fake make no memory cgroups, so no pod can be OOMKilled",
        );
        return;
    }
    let f = python_limited(
        "def handle(event, context):\n    hoard = []\n    while True:\n        hoard.append(b'x' * (8 << 20))\n",
        Limits {
            memory_mb: 64,
            timeout_ms: 20_000,
            ..tight()
        },
    );
    let e = call(&exec, &f, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "out_of_memory", "{e:?}");
    assert!(e.to_string().contains("OOMKilled"), "{e}");
    no_jobs_left(&world).await;
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_input_past_the_cap_is_refused_before_any_job() {
    let Some((world, exec)) = jobs("job_cap").await else {
        return;
    };
    let f = python(HELLO_PY);
    let big = "x".repeat(sopm_backends::kubernetes::settings::MAX_JOB_FRAME_BYTES);
    let e = call(&exec, &f, json!({"name": big})).await.unwrap_err();
    assert_eq!(e.code(), "payload_too_large", "{e:?}");
    assert!(world.fake.requests().iter().all(|r| !r.starts_with("POST")));
    let ok = call(&exec, &f, json!({"name": "x".repeat(64 * 1024)}))
        .await
        .unwrap();
    assert_eq!(ok.value["hello"].as_str().map(str::len), Some(64 * 1024));
    exec.shutdown().await;
}

/// Starts a runner in TCP mode on a free port with `token`; the child is killed on drop.
fn tcp_runner(
    kind: RunnerKind,
    dir: &std::path::Path,
    token: &str,
) -> (tokio::process::Child, u16) {
    let port = kube_world::free_port();
    let listen = format!("127.0.0.1:{port}");
    let file = dir.join(kind.file_name());
    let mut cmd = match kind {
        RunnerKind::Python => {
            let mut c = tokio::process::Command::new("python3");
            c.arg(&file);
            c
        }
        RunnerKind::Node => {
            let mut c = tokio::process::Command::new("node");
            c.arg(&file);
            c
        }
        RunnerKind::Static => tokio::process::Command::new(&file),
    };
    cmd.args(["--listen", &listen])
        .env("SOPM_RUNNER_TOKEN", token)
        .kill_on_drop(true);
    (cmd.spawn().expect("start a runner"), port)
}

async fn connect_with(port: u16, line: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    for _ in 0..250 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            s.write_all(line.as_bytes()).await.unwrap();
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing listens on port {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_in_tcp_mode_answer_only_with_the_pods_token() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    if let Some(why) = world_unavailable(true) {
        skip("tcp_mode", &why);
        return;
    }
    let world = World::start().await;
    let token = "0123456789abcdef0123456789abcdef";
    for kind in RunnerKind::ALL {
        let (_child, port) = tcp_runner(kind, world.runners.path(), token);
        // A wrong token: the connection is closed without a byte.
        let mut wrong = connect_with(
            port,
            "sopm-runner/1 frames 0123456789abcdef0123456789abcdeX\n",
        )
        .await;
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), wrong.read_to_end(&mut buf))
            .await
            .expect("the runner closes a connection with a wrong token")
            .unwrap_or(0);
        assert_eq!(n, 0, "{kind:?} answered a wrong token: {buf:?}");
        // The right token on both channels: hello on the frames channel.
        let frames = connect_with(port, &format!("sopm-runner/1 frames {token}\n")).await;
        let _logs = connect_with(port, &format!("sopm-runner/1 logs {token}\n")).await;
        let mut lines = BufReader::new(frames).lines();
        let hello = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("hello in time")
            .unwrap()
            .expect("a hello line");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&hello).unwrap(),
            json!({"type": "hello", "runner": kind.as_str()}),
            "{kind:?}"
        );
    }
}

/// Executor overheads against the fake API (not a cluster): a warm call's full round trip
/// through the executor and the runner's TCP connection, and a Job-mode call minus the
/// time the Job's runner process ran. Prints figures; asserts nothing about time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test --features kubernetes --test kubernetes -- --ignored --nocapture"]
async fn measure_executor_overheads_against_the_fake() {
    let Some((world, exec)) = warm("measure").await else {
        return;
    };
    let f = python("def handle(event, context):\n    return event\n");
    call(&exec, &f, json!({})).await.unwrap();
    let mut warm_calls = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        call(&exec, &f, json!({"i": i})).await.unwrap();
        warm_calls.push(t.elapsed());
    }
    summary(
        "kubernetes warm call (fake API, python runner over loopback TCP)",
        warm_calls,
    );
    exec.shutdown().await;
    let jobs = world.settings().build_jobs().unwrap();
    let mut totals = Vec::new();
    let mut overheads = Vec::new();
    for i in 0..20 {
        let before: std::collections::HashSet<String> =
            world.fake.process_times().keys().cloned().collect();
        let t = Instant::now();
        call(&jobs, &f, json!({"i": i})).await.unwrap();
        let total = t.elapsed();
        let ran = world
            .fake
            .process_times()
            .into_iter()
            .find(|(k, _)| !before.contains(k))
            .map(|(_, d)| d)
            .expect("the job's process time");
        totals.push(total);
        overheads.push(total.saturating_sub(ran));
    }
    summary(
        "kubernetes-job call, total (fake API, runner process start included)",
        totals,
    );
    summary(
        "kubernetes-job call, executor overhead (total minus the pod process's run time)",
        overheads,
    );
    jobs.shutdown().await;
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name}: n={} p50={:.2?} p90={:.2?} p99={:.2?} max={:.2?}",
        samples.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        samples[samples.len() - 1]
    );
}
