//! The execute path of user functions: one registry read per call, of one version,
//! without its build log; and the platform's expiry of old job records.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use sopm_core::{
    Artifact, BuildLog, BuildStatus, Builder, Durability, Executor, FunctionRef, FunctionVersion,
    Invocation, Job, JobStatus, NewVersion, Output, Platform, Registry, Result, Runtime, Source,
    Target, TenantId,
};

mod support;
use support::CountingRegistry;

/// Answers with what it was given to run: the version and the size of its build log.
#[derive(Debug)]
struct ShowTarget;

#[async_trait]
impl Executor for ShowTarget {
    fn name(&self) -> &str {
        "show"
    }
    async fn invoke(&self, invocation: Invocation) -> Result<Output> {
        let Target::User(v) = &invocation.target else {
            return Ok(json!(null).into());
        };
        Ok(json!({"version": v.version, "build_log_bytes": v.build_log.len()}).into())
    }
}

/// Never called: versions are made directly in the registry.
#[derive(Debug)]
struct NoBuilder;

#[async_trait]
impl Builder for NoBuilder {
    fn name(&self) -> &str {
        "none"
    }
    async fn build(&self, _: &FunctionVersion, _: &Source, _: &dyn BuildLog) -> Result<Artifact> {
        unreachable!("no uploads in these tests")
    }
}

fn new_version(tenant: &TenantId, name: &str) -> NewVersion {
    NewVersion {
        tenant: tenant.clone(),
        name: name.into(),
        runtime: Runtime::Python,
        handler: "main.handle".into(),
        limits: Default::default(),
        env: Default::default(),
        source_digest: "d".into(),
        executor: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_reads_the_registry_once_and_never_a_build_log() {
    let registry = Arc::new(CountingRegistry::default());
    let p = Platform::builder()
        .with_registry(registry.clone())
        .with_sandbox("show", Arc::new(ShowTarget), Arc::new(NoBuilder))
        .with_runtime_executor(Runtime::Python, "show")
        .build()
        .unwrap();
    let t = TenantId::default();
    let v = registry
        .create_version(new_version(&t, "big-log"))
        .await
        .unwrap();
    let id = v.function_id.clone();
    // A build log at the registry's cap: the call must not carry it.
    registry
        .append_build_log(&id, 1, &"x".repeat(300 * 1024))
        .await
        .unwrap();
    registry
        .finish_build(
            &id,
            1,
            BuildStatus::Ready,
            Some(Artifact::Directory {
                path: "/a".into(),
                digest: None,
            }),
        )
        .await
        .unwrap();
    registry
        .create_version(new_version(&t, "big-log"))
        .await
        .unwrap(); // v2: building

    for (key, version) in [
        (id.as_str(), None),
        ("big-log", None),
        (id.as_str(), Some(1)),
    ] {
        let before = registry.reads();
        let out = p
            .execute(
                &t,
                FunctionRef::User {
                    id: Arc::from(key),
                    version,
                },
                json!({}),
            )
            .await
            .unwrap();
        assert_eq!(
            registry.reads() - before,
            1,
            "one registry read per call ({key}, {version:?})"
        );
        assert_eq!(out.value, json!({"version": 1, "build_log_bytes": 0}));
    }

    // A refused call (pinned to the version still building) costs one read too.
    let before = registry.reads();
    let err = p
        .execute(
            &t,
            FunctionRef::User {
                id: Arc::from(id.as_str()),
                version: Some(2),
            },
            json!({}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_ready");
    assert_eq!(registry.reads() - before, 1);

    // The job is recorded under the function's id, also when called by name.
    let (resolved, jobs) = p.recent_logs(&t, "big-log", 10).await.unwrap();
    assert_eq!(resolved.function_id, id);
    assert_eq!(jobs.len(), 3, "every accepted call is listed under the id");
}

fn finished(tenant: &TenantId, finished_ms: u64) -> Job {
    let mut j = Job::new(
        tenant.clone(),
        FunctionRef::builtin("math.add"),
        Arc::new(Value::Null),
        1_000,
    );
    j.status = JobStatus::Succeeded;
    j.created_ms = finished_ms.saturating_sub(10);
    j.finished_ms = Some(finished_ms);
    j
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_sweep_deletes_old_finished_jobs_only() {
    let p = Platform::builder().build().unwrap();
    let t = TenantId::default();
    let now = sopm_core::types::now_ms();
    let day = 24 * 3600 * 1000;
    let old: Vec<Job> = (0..2_500)
        .map(|i| finished(&t, now - 8 * day - i))
        .collect();
    let young = finished(&t, now - day);
    let mut stuck = finished(&t, now - 30 * day);
    stuck.status = JobStatus::Queued;
    stuck.finished_ms = None;
    let store = p.job_store();
    for j in old.iter().chain([&young, &stuck]) {
        store.put(j, Durability::Durable).await.unwrap();
    }
    let week = Duration::from_secs(7 * 24 * 3600);
    assert_eq!(
        p.expire_jobs(week).await.unwrap(),
        2_500,
        "in batches, all of them"
    );
    assert!(store.get(&old[0].id).await.unwrap().is_none());
    assert!(
        store.get(&young.id).await.unwrap().is_some(),
        "a young record stays"
    );
    assert!(
        store.get(&stuck.id).await.unwrap().is_some(),
        "an unfinished job stays"
    );
    assert!(
        p.spawn_job_expiry(Duration::ZERO, week).is_none(),
        "0 keeps records forever"
    );

    // The background sweep does the same by itself.
    let another = finished(&t, now - 9 * day);
    store.put(&another, Durability::Durable).await.unwrap();
    let sweep = p
        .spawn_job_expiry(week, Duration::from_millis(20))
        .expect("a sweep");
    for _ in 0..500 {
        if store.get(&another.id).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sweep.abort();
    assert!(
        store.get(&another.id).await.unwrap().is_none(),
        "the sweep expired it"
    );
    assert!(store.get(&young.id).await.unwrap().is_some());
}
