//! The operator's policy and the upload quotas, through `Platform::upload`: a tenant may
//! not ask for a sandbox weaker than the operator's route unless a list grants it; over
//! a quota an upload is refused with `quota_exceeded` and nothing is stored; versions
//! past the kept count are pruned with their warm instances and artifacts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::json;
use sopm_core::policy::{ExecutorPolicy, Isolation, UploadQuotas};
use sopm_core::{
    Artifact, BuildLog, BuildStatus, Builder, Error, Executor, FunctionRecord, FunctionVersion,
    Invocation, Limits, Output, Platform, PlatformBuilder, Result, Runtime, Source, TenantId,
    UploadSpec,
};
use tokio::sync::Semaphore;

/// Runs nothing; records which versions it was told to forget.
#[derive(Debug)]
struct RecordingExecutor {
    name: &'static str,
    retired_versions: Mutex<Vec<(String, u32)>>,
}

#[async_trait]
impl Executor for RecordingExecutor {
    fn name(&self) -> &str {
        self.name
    }
    async fn invoke(&self, _: Invocation) -> Result<Output> {
        Ok(json!(self.name).into())
    }
    async fn retire_version(&self, function_id: &str, version: u32) -> Result<()> {
        self.retired_versions
            .lock()
            .push((function_id.to_string(), version));
        Ok(())
    }
}

/// Writes `bytes` bytes into a fresh artifact directory per version; a source with a
/// `FAIL` file fails, one with `WAIT` waits for the gate. Records what it removed.
#[derive(Debug)]
struct DirBuilder {
    root: PathBuf,
    bytes: usize,
    gate: Semaphore,
    removed: Mutex<Vec<Artifact>>,
}

#[async_trait]
impl Builder for DirBuilder {
    fn name(&self) -> &str {
        "dir"
    }
    async fn build(&self, v: &FunctionVersion, src: &Source, _: &dyn BuildLog) -> Result<Artifact> {
        if src.files.contains_key("WAIT") {
            self.gate.acquire().await.expect("gate").forget();
        }
        if src.files.contains_key("FAIL") {
            return Err(Error::BuildFailed("asked to fail".into()));
        }
        let dir = self.root.join(format!("{}-{}", v.function_id, v.version));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("blob"), vec![7u8; self.bytes]).unwrap();
        Ok(Artifact::Directory {
            path: dir.to_string_lossy().into(),
            digest: None,
        })
    }
    async fn remove(&self, artifact: &Artifact) -> Result<()> {
        if let Artifact::Directory { path, .. } = artifact {
            let _ = std::fs::remove_dir_all(path);
        }
        self.removed.lock().push(artifact.clone());
        Ok(())
    }
}

struct Setup {
    executors: BTreeMap<&'static str, Arc<RecordingExecutor>>,
    builder: Arc<DirBuilder>,
    root: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Setup {
    /// Backends `process`, `gvisor` and `docker-runsc` (isolation from their names)
    /// and `docker`; artifacts of `bytes` bytes.
    fn new(bytes: usize) -> Self {
        let root = std::env::temp_dir().join(format!("sopm-policy-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&root).unwrap();
        let names = ["process", "gvisor", "docker", "docker-runsc"];
        Setup {
            executors: names
                .iter()
                .map(|n| {
                    (
                        *n,
                        Arc::new(RecordingExecutor {
                            name: n,
                            retired_versions: Mutex::default(),
                        }),
                    )
                })
                .collect(),
            builder: Arc::new(DirBuilder {
                root: root.clone(),
                bytes,
                gate: Semaphore::new(0),
                removed: Mutex::default(),
            }),
            root,
        }
    }

    /// Python routed to gVisor, node to process.
    fn platform(&self) -> PlatformBuilder {
        let mut b = Platform::builder();
        for (name, exec) in &self.executors {
            b = b.with_sandbox(*name, exec.clone(), self.builder.clone());
        }
        b.with_runtime_executor(Runtime::Python, "gvisor")
            .with_runtime_executor(Runtime::Node, "process")
    }
}

fn spec(name: &str, runtime: Runtime, executor: Option<&str>) -> UploadSpec {
    UploadSpec {
        name: name.into(),
        runtime,
        handler: "main.handle".into(),
        limits: Limits::default(),
        env: BTreeMap::new(),
        executor: executor.map(str::to_string),
    }
}

fn source(extra: &[&str]) -> Source {
    let mut s = Source::default();
    s.files.insert("main.py".into(), b"x".to_vec());
    for f in extra {
        s.files.insert((*f).into(), Vec::new());
    }
    s
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

async fn finished(p: &Platform, t: &TenantId, name: &str, version: u32) -> FunctionVersion {
    for _ in 0..2000 {
        let rec: FunctionRecord = p.function(t, name).await.unwrap();
        if let Some(v) = rec.version(version) {
            if v.status != BuildStatus::Building {
                return v.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{name} v{version} never finished building");
}

/// The version numbers of a function, once the pruning after its last build is done.
async fn versions_settled(p: &Platform, t: &TenantId, name: &str, want: usize) -> Vec<u32> {
    let mut got = Vec::new();
    for _ in 0..2000 {
        let rec = p.function(t, name).await.unwrap();
        got = rec.versions.iter().map(|v| v.version).collect();
        if got.len() == want
            && rec
                .versions
                .iter()
                .all(|v| v.status != BuildStatus::Building)
        {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{name}: versions {got:?}, expected {want} of them");
}

fn forbidden_code(e: &Error) -> Option<&'static str> {
    match e {
        Error::Forbidden { code, .. } => Some(code),
        _ => None,
    }
}

#[tokio::test]
async fn by_default_a_tenant_may_ask_for_more_isolation_never_less() {
    let s = Setup::new(10);
    let p = s
        .platform()
        .with_upload_quotas(quotas(|q| q.max_builds_in_flight_per_tenant = 100))
        .build()
        .unwrap();
    let t = tenant("alice");

    let e = p
        .upload(
            &t,
            spec("weak", Runtime::Python, Some("process")),
            source(&[]),
        )
        .await
        .unwrap_err();
    assert_eq!(forbidden_code(&e), Some("executor_not_allowed"), "{e:?}");
    assert_eq!(e.code(), "executor_not_allowed");
    let msg = e.to_string();
    assert!(
        msg.contains("allowed: docker-runsc, gvisor"),
        "names what is allowed: {msg}"
    );
    assert!(msg.contains("'gvisor'"), "names the route: {msg}");
    let e = p
        .upload(
            &t,
            spec("weak", Runtime::Python, Some("docker")),
            source(&[]),
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        "executor_not_allowed",
        "docker (runc) is host-kernel"
    );
    assert!(
        p.functions(&t).await.unwrap().is_empty(),
        "a refused upload stores nothing"
    );

    for (name, runtime, ask) in [
        ("same", Runtime::Python, "gvisor"),
        ("equal", Runtime::Python, "docker-runsc"),
        ("stronger", Runtime::Node, "gvisor"),
        ("sideways", Runtime::Node, "docker"),
    ] {
        let v = p
            .upload(&t, spec(name, runtime, Some(ask)), source(&[]))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(v.executor.as_deref(), Some(ask));
    }
    let routed = p
        .upload(&t, spec("routed", Runtime::Python, None), source(&[]))
        .await
        .unwrap();
    assert_eq!(routed.executor.as_deref(), Some("gvisor"));
}

#[tokio::test]
async fn a_function_rule_is_a_route_too() {
    let s = Setup::new(10);
    let p = s
        .platform()
        .with_function_executor("resize", "docker-runsc")
        .build()
        .unwrap();
    let e = p
        .upload(
            &tenant("a"),
            spec("resize", Runtime::Node, Some("process")),
            source(&[]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "executor_not_allowed");
}

#[tokio::test]
async fn lists_grant_exactly_their_backends_and_a_tenants_list_beats_the_servers() {
    let s = Setup::new(10);
    let trusted = tenant("trusted");
    let other = tenant("other");
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    let policy = ExecutorPolicy {
        allowed: Some(set(&["gvisor"])),
        tenants: [(trusted.clone(), set(&["process"]))].into(),
    };
    let p = s.platform().with_executor_policy(policy).build().unwrap();

    let v = p
        .upload(
            &trusted,
            spec("f", Runtime::Python, Some("process")),
            source(&[]),
        )
        .await
        .expect("the tenant's own list grants process under a gVisor route");
    assert_eq!(v.executor.as_deref(), Some("process"));
    let e = p
        .upload(
            &trusted,
            spec("g", Runtime::Node, Some("gvisor")),
            source(&[]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "executor_not_allowed", "not in the tenant's list");

    let e = p
        .upload(
            &other,
            spec("f", Runtime::Python, Some("docker-runsc")),
            source(&[]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "executor_not_allowed", "not in the server's list");
    assert!(e.to_string().contains("allowed: gvisor"), "{e}");
    p.upload(
        &other,
        spec("f", Runtime::Node, Some("gvisor")),
        source(&[]),
    )
    .await
    .expect("in the server's list");
    p.upload(
        &other,
        spec("h", Runtime::Node, Some("process")),
        source(&[]),
    )
    .await
    .expect("asking for the route itself is always allowed");
}

#[tokio::test]
async fn a_declared_isolation_overrides_the_assumed_one() {
    let s = Setup::new(10);
    // The operator says its `docker` daemon runs runsc by default.
    let p = s
        .platform()
        .with_isolation("docker", Isolation::UserSpaceKernel)
        .build()
        .unwrap();
    p.upload(
        &tenant("a"),
        spec("f", Runtime::Python, Some("docker")),
        source(&[]),
    )
    .await
    .expect("declared as strong as the gVisor route");
}

fn quotas(f: impl FnOnce(&mut UploadQuotas)) -> UploadQuotas {
    let mut q = UploadQuotas::default();
    f(&mut q);
    q
}

fn quota_of(e: &Error) -> (&'static str, Option<Duration>, String) {
    match e {
        Error::QuotaExceeded {
            quota,
            retry_after,
            message,
        } => (quota, *retry_after, message.clone()),
        other => panic!("expected quota_exceeded, got {other:?}"),
    }
}

#[tokio::test]
async fn functions_per_tenant_refuse_a_new_name_but_not_a_new_version() {
    let s = Setup::new(10);
    let p = s
        .platform()
        .with_upload_quotas(quotas(|q| q.max_functions_per_tenant = 2))
        .build()
        .unwrap();
    let t = tenant("alice");
    for name in ["a", "b"] {
        p.upload(&t, spec(name, Runtime::Python, None), source(&[]))
            .await
            .unwrap();
    }
    let e = p
        .upload(&t, spec("c", Runtime::Python, None), source(&[]))
        .await
        .unwrap_err();
    let (quota, retry, msg) = quota_of(&e);
    assert_eq!((quota, retry), ("functions", None), "a standing quota: 403");
    assert!(
        msg.contains("has 2 functions") && msg.contains("limit is 2"),
        "{msg}"
    );
    assert_eq!(e.code(), "quota_exceeded");
    finished(&p, &t, "a", 1).await;
    p.upload(&t, spec("a", Runtime::Python, None), source(&[]))
        .await
        .expect("a new version of an existing function");
    p.upload(
        &tenant("bob"),
        spec("c", Runtime::Python, None),
        source(&[]),
    )
    .await
    .expect("another tenant has its own count");
    assert_eq!(p.functions(&t).await.unwrap().len(), 2);
}

#[tokio::test]
async fn builds_in_flight_per_tenant_answer_retry_later_and_others_still_build() {
    let s = Setup::new(10);
    let p = s
        .platform()
        .with_max_concurrent_builds(4)
        .with_upload_quotas(quotas(|q| q.max_builds_in_flight_per_tenant = 1))
        .build()
        .unwrap();
    let t = tenant("alice");
    p.upload(&t, spec("slow", Runtime::Python, None), source(&["WAIT"]))
        .await
        .unwrap();
    let e = p
        .upload(&t, spec("next", Runtime::Python, None), source(&[]))
        .await
        .unwrap_err();
    let (quota, retry, msg) = quota_of(&e);
    assert_eq!(quota, "builds_in_flight");
    assert!(retry.is_some(), "work in flight: 429 with Retry-After");
    assert!(
        msg.contains("has 1 builds") && msg.contains("limit is 1"),
        "{msg}"
    );
    let bob = tenant("bob");
    p.upload(&bob, spec("next", Runtime::Python, None), source(&[]))
        .await
        .expect("another tenant builds meanwhile");
    assert_eq!(
        finished(&p, &bob, "next", 1).await.status,
        BuildStatus::Ready
    );
    s.builder.gate.add_permits(1);
    finished(&p, &t, "slow", 1).await;
    p.upload(&t, spec("next", Runtime::Python, None), source(&[]))
        .await
        .expect("once the build ended, the tenant may build again");
}

#[tokio::test]
async fn builds_waiting_for_a_slot_are_bounded_server_wide() {
    let s = Setup::new(10);
    let p = s
        .platform()
        .with_max_concurrent_builds(1)
        .with_upload_quotas(quotas(|q| q.max_queued_builds = 1))
        .build()
        .unwrap();
    p.upload(
        &tenant("a"),
        spec("f", Runtime::Python, None),
        source(&["WAIT"]),
    )
    .await
    .unwrap();
    p.upload(
        &tenant("b"),
        spec("f", Runtime::Python, None),
        source(&["WAIT"]),
    )
    .await
    .expect("one build may wait");
    let e = p
        .upload(&tenant("c"), spec("f", Runtime::Python, None), source(&[]))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Overloaded { .. }),
        "a full build queue is overloaded (429): {e:?}"
    );
    assert!(p.functions(&tenant("c")).await.unwrap().is_empty());
    s.builder.gate.add_permits(2);
    finished(&p, &tenant("b"), "f", 1).await;
}

#[tokio::test]
async fn artifact_bytes_fail_the_build_that_goes_past_and_refuse_uploads_at_the_limit() {
    let s = Setup::new(1000);
    let p = s
        .platform()
        .with_upload_quotas(quotas(|q| q.max_artifact_bytes_per_tenant = 1500))
        .build()
        .unwrap();
    let t = tenant("alice");
    p.upload(&t, spec("a", Runtime::Python, None), source(&[]))
        .await
        .unwrap();
    assert_eq!(finished(&p, &t, "a", 1).await.status, BuildStatus::Ready);
    p.upload(&t, spec("b", Runtime::Python, None), source(&[]))
        .await
        .unwrap();
    let b = finished(&p, &t, "b", 1).await;
    assert_eq!(b.status, BuildStatus::Failed, "1000 + 1000 > 1500");
    assert!(
        b.build_log.contains("artifact_bytes") && b.build_log.contains("1500"),
        "{}",
        b.build_log
    );
    assert_eq!(s.builder.removed.lock().len(), 1, "its artifact is removed");
    assert_eq!(
        p.registry().tenant_usage(&t).await.unwrap().artifact_bytes,
        1000
    );

    let tight = Setup::new(1000);
    let p = tight
        .platform()
        .with_upload_quotas(quotas(|q| q.max_artifact_bytes_per_tenant = 1000))
        .build()
        .unwrap();
    p.upload(&t, spec("a", Runtime::Python, None), source(&[]))
        .await
        .unwrap();
    assert_eq!(finished(&p, &t, "a", 1).await.status, BuildStatus::Ready);
    let e = p
        .upload(&t, spec("a", Runtime::Python, None), source(&[]))
        .await
        .unwrap_err();
    let (quota, retry, msg) = quota_of(&e);
    assert_eq!((quota, retry), ("artifact_bytes", None));
    assert!(
        msg.contains("holds 1000 bytes") && msg.contains("limit is 1000"),
        "{msg}"
    );
}

#[tokio::test]
async fn versions_past_the_kept_count_are_pruned_with_instances_and_artifacts() {
    let s = Setup::new(10);
    let p = s
        .platform()
        .with_upload_quotas(quotas(|q| q.versions_kept = 2))
        .build()
        .unwrap();
    let t = tenant("alice");
    let mut id = String::new();
    for n in 1..=4 {
        let v = p
            .upload(&t, spec("f", Runtime::Python, None), source(&[]))
            .await
            .unwrap();
        id = v.function_id.clone();
        assert_eq!(finished(&p, &t, "f", n).await.status, BuildStatus::Ready);
    }
    assert_eq!(versions_settled(&p, &t, "f", 2).await, [3, 4]);
    let mut retired = s.executors["gvisor"].retired_versions.lock().clone();
    retired.sort();
    assert_eq!(retired, [(id.clone(), 1), (id.clone(), 2)]);
    let removed = s.builder.removed.lock().clone();
    assert_eq!(removed.len(), 2, "{removed:?}");
    for a in removed {
        let Artifact::Directory { path, .. } = a else {
            panic!("directory artifacts")
        };
        assert!(!std::path::Path::new(&path).exists(), "{path}");
    }
    assert_eq!(
        p.registry().tenant_usage(&t).await.unwrap().artifact_bytes,
        20,
        "pruned versions leave the tenant's artifact bytes"
    );
}

#[tokio::test]
async fn retention_keeps_the_newest_ready_version_and_the_newest_one() {
    let s = Setup::new(10);
    let p = s
        .platform()
        .with_upload_quotas(quotas(|q| q.versions_kept = 1))
        .build()
        .unwrap();
    let t = tenant("alice");
    p.upload(&t, spec("f", Runtime::Python, None), source(&[]))
        .await
        .unwrap();
    assert_eq!(finished(&p, &t, "f", 1).await.status, BuildStatus::Ready);
    for n in 2..=3 {
        p.upload(&t, spec("f", Runtime::Python, None), source(&["FAIL"]))
            .await
            .unwrap();
        assert_eq!(finished(&p, &t, "f", n).await.status, BuildStatus::Failed);
    }
    assert_eq!(
        versions_settled(&p, &t, "f", 2).await,
        [1, 3],
        "v1 is the one that runs; v3's log says why it failed"
    );
    let out = p
        .execute(
            &t,
            sopm_core::FunctionRef::User {
                id: p.function(&t, "f").await.unwrap().id.into(),
                version: None,
            },
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(out.value, json!("gvisor"));
}
