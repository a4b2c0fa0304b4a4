//! Conformance checks: async functions that any [`Registry`], [`JobStore`] or
//! [`Scheduler`] implementation can be run against. Each one panics with a message
//! naming the rule that was broken; a backend is done when it passes the ones it
//! supports.
//!
//! ```ignore
//! use std::sync::Arc;
//! use sopm_core::conformance::{self, SchedulerHarness};
//!
//! #[tokio::test(flavor = "multi_thread")]
//! async fn my_registry() {
//!     conformance::registry_versions_and_tenants(&MyRegistry::new()).await;
//! }
//!
//! #[tokio::test(flavor = "multi_thread")]
//! async fn local_scheduler_over_my_store() {
//!     let harness = SchedulerHarness::local(|| Arc::new(MyJobStore::new()));
//!     conformance::scheduler_suite(&harness).await;
//! }
//! ```
//!
//! Registry and job store checks use fresh tenants, names and job ids, so they can
//! share one store with other checks. Scheduler checks ask the
//! [`SchedulerHarness`] for a fresh job store each, because recovery reads every
//! unfinished job of a store.
//!
//! Sandbox executors have their own suite in `conformance::executor` (feature
//! `executor-conformance`), which a backend's tests run with the
//! `sopm_core::executor_conformance!` macro.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::error::{Error, ErrorInfo, Result};
use crate::executor::Executor;
use crate::executor::{Invocation, Target};
use crate::jobstore::{status_rank, Durability, JobStore, LISTED_LOG_CHARS};
use crate::registry::{
    append_capped, Artifact, BuildStatus, NewVersion, Registry, MAX_BUILD_LOG_BYTES,
};
use crate::scheduler::{
    JobRequest, LocalScheduler, LocalSchedulerConfig, Route, Router, Scheduler, SubmitMode,
    Submitted,
};
use crate::types::{now_ms, FunctionRef, Job, JobId, JobStatus, Limits, Output, Runtime, TenantId};

mod call;
#[cfg(feature = "executor-conformance")]
pub mod executor;

pub use call::scheduler_call;

/// How long a check waits for something that should happen soon.
const PATIENCE: Duration = Duration::from_secs(10);

fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

fn unique_tenant(prefix: &str) -> TenantId {
    TenantId::new(&unique(prefix)).expect("valid tenant id")
}

/// Unwraps `result`, which must have failed with the stable `code`.
#[track_caller]
fn expect_code<T: Debug>(result: Result<T>, code: &str, what: &str) -> Error {
    match result {
        Ok(v) => panic!("{what}: expected a '{code}' error, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(
                e.code(),
                code,
                "{what}: expected a '{code}' error, got {e:?}"
            );
            e
        }
    }
}

/// Unwraps `result`, which must have succeeded.
#[track_caller]
fn expect_ok<T>(result: Result<T>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: unexpected error {e:?}"))
}

// ---------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------

fn new_version(tenant: &TenantId, name: &str, digest: &str) -> NewVersion {
    let mut env = BTreeMap::new();
    env.insert("GREETING".to_string(), "héllo wörld".to_string());
    env.insert("EMPTY".to_string(), String::new());
    NewVersion {
        tenant: tenant.clone(),
        name: name.to_string(),
        runtime: Runtime::Python,
        handler: "main.handle".to_string(),
        limits: Limits {
            timeout_ms: 1_234,
            memory_mb: 64,
            network: true,
            ..Limits::default()
        },
        env,
        source_digest: digest.to_string(),
        executor: None,
    }
}

/// Creates a version of `name` under `tenant` (see [`new_version`]), which must succeed.
async fn create(
    registry: &dyn Registry,
    tenant: &TenantId,
    name: &str,
    digest: &str,
    what: &str,
) -> crate::registry::FunctionVersion {
    expect_ok(
        registry
            .create_version(new_version(tenant, name, digest))
            .await,
        what,
    )
}

/// Versions and tenants: the first upload of a name creates a function at version 1,
/// the next upload of the same name by the same tenant is version 2 under the same id,
/// the same name under another tenant is another function, and every read is scoped
/// to its tenant (another tenant gets `not_found`, exactly as for an unknown id).
pub async fn registry_versions_and_tenants(registry: &dyn Registry) {
    let alice = unique_tenant("alice");
    let bob = unique_tenant("bob");
    let carol = unique_tenant("carol");

    expect_code(
        registry
            .create_version(new_version(&alice, "not a valid name", "d"))
            .await,
        "invalid_input",
        "create_version with a name containing spaces",
    );
    expect_code(
        registry.create_version(new_version(&alice, "", "d")).await,
        "invalid_input",
        "create_version with an empty name",
    );

    let v1 = create(
        registry,
        &alice,
        "resize",
        "digest-1",
        "create_version (first upload)",
    )
    .await;
    assert_eq!(v1.version, 1, "the first upload of a name is version 1");
    assert!(!v1.function_id.is_empty(), "a created function has an id");
    assert_eq!(v1.tenant, alice);
    assert_eq!(v1.name, "resize");
    assert_eq!(
        v1.status,
        BuildStatus::Building,
        "a new version starts as building"
    );
    assert_eq!(v1.build_log, "", "a new version has an empty build log");
    assert_eq!(v1.artifact, None, "a new version has no artifact");
    let sent = new_version(&alice, "resize", "digest-1");
    assert_eq!(
        (
            &v1.runtime,
            &v1.handler,
            &v1.limits,
            &v1.env,
            &v1.source_digest
        ),
        (
            &sent.runtime,
            &sent.handler,
            &sent.limits,
            &sent.env,
            &sent.source_digest
        ),
        "create_version keeps what was uploaded"
    );

    let mut second = new_version(&alice, "resize", "digest-2");
    second.runtime = Runtime::Node;
    second.handler = "index.handle".to_string();
    second.env.clear();
    let v2 = expect_ok(
        registry.create_version(second).await,
        "create_version (second upload)",
    );
    assert_eq!(
        v2.version, 2,
        "a second upload of the same name is version 2"
    );
    assert_eq!(
        v2.function_id, v1.function_id,
        "a second upload keeps the function's id"
    );
    assert_eq!(v2.runtime, Runtime::Node);
    assert!(v2.env.is_empty());

    let bobs = create(
        registry,
        &bob,
        "resize",
        "digest-b",
        "create_version (same name, another tenant)",
    )
    .await;
    assert_eq!(
        bobs.version, 1,
        "the same name under another tenant is a new function"
    );
    assert_ne!(
        bobs.function_id, v1.function_id,
        "tenants never share a function"
    );

    let other = create(
        registry,
        &alice,
        "aa-first-by-name",
        "digest-a",
        "create_version (another name)",
    )
    .await;
    assert_eq!(other.version, 1);
    assert_ne!(other.function_id, v1.function_id);

    let rec = expect_ok(registry.get(&alice, &v1.function_id).await, "get by owner");
    assert_eq!(rec.id, v1.function_id);
    assert_eq!(rec.tenant, alice);
    assert_eq!(rec.name, "resize");
    assert_eq!(
        rec.versions,
        vec![v1.clone(), v2.clone()],
        "get returns every version, oldest first, as created"
    );
    assert_eq!(rec.latest_ready(), None, "no version is ready yet");

    let by_name = expect_ok(
        registry.get_by_name(&alice, "resize").await,
        "get_by_name by owner",
    );
    assert_eq!(by_name, rec, "get_by_name and get agree");

    expect_code(
        registry.get(&bob, &v1.function_id).await,
        "not_found",
        "get of another tenant's function",
    );
    expect_code(
        registry.get(&carol, &v1.function_id).await,
        "not_found",
        "get of another tenant's function",
    );
    expect_code(
        registry.get(&alice, "fn_doesnotexist").await,
        "not_found",
        "get of an unknown id",
    );
    expect_code(
        registry.get_by_name(&carol, "resize").await,
        "not_found",
        "get_by_name under a tenant without it",
    );
    expect_code(
        registry.get_by_name(&alice, "no-such-name").await,
        "not_found",
        "get_by_name of an unknown name",
    );
    let bob_rec = expect_ok(
        registry.get_by_name(&bob, "resize").await,
        "get_by_name (bob)",
    );
    assert_eq!(
        bob_rec.id, bobs.function_id,
        "get_by_name resolves the caller's own function"
    );
    assert_eq!(bob_rec.versions, vec![bobs.clone()]);

    let list = expect_ok(registry.list(&alice).await, "list");
    let names: Vec<&str> = list.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["aa-first-by-name", "resize"],
        "list returns the tenant's functions by name"
    );
    assert_eq!(list[1], rec, "list returns full records");
    assert_eq!(list[0].versions, vec![other]);
    let bob_list = expect_ok(registry.list(&bob).await, "list (bob)");
    assert_eq!(
        bob_list.len(),
        1,
        "list only shows the tenant's own functions"
    );
    assert!(
        expect_ok(registry.list(&carol).await, "list (carol)").is_empty(),
        "a tenant without functions lists none"
    );
}

/// Builds: the log is appended in order and capped at [`MAX_BUILD_LOG_BYTES`] keeping
/// the tail; `ready` needs an artifact; a version leaves `building` once (a second
/// finish is `conflict`); `latest_ready` skips versions that are building or failed.
pub async fn registry_builds(registry: &dyn Registry) {
    let tenant = unique_tenant("builder");
    let v1 = create(registry, &tenant, "thumb", "d1", "create_version").await;
    let id = v1.function_id.clone();

    expect_ok(
        registry.append_build_log(&id, 1, "step 1: fetch\n").await,
        "append_build_log",
    );
    expect_ok(
        registry
            .append_build_log(&id, 1, "step 2: ünïcode ✓\n")
            .await,
        "append_build_log",
    );
    let rec = expect_ok(registry.get(&tenant, &id).await, "get");
    assert_eq!(
        rec.versions[0].build_log, "step 1: fetch\nstep 2: ünïcode ✓\n",
        "build log chunks are kept in order"
    );

    // Past the cap, the front goes and the tail stays, cut on a character boundary.
    let mut expected = rec.versions[0].build_log.clone();
    let big: String = "é€".repeat(MAX_BUILD_LOG_BYTES / 5 + 17) + "<end of first big chunk>";
    append_capped(&mut expected, &big);
    expect_ok(
        registry.append_build_log(&id, 1, &big).await,
        "append_build_log (over the cap)",
    );
    let tail = "after the cap\n";
    append_capped(&mut expected, tail);
    expect_ok(
        registry.append_build_log(&id, 1, tail).await,
        "append_build_log (after the cap)",
    );
    let log = expect_ok(registry.get(&tenant, &id).await, "get").versions[0]
        .build_log
        .clone();
    assert!(
        log.len() <= MAX_BUILD_LOG_BYTES,
        "build log is {} bytes, above the cap {MAX_BUILD_LOG_BYTES}",
        log.len()
    );
    assert!(
        log.ends_with("<end of first big chunk>after the cap\n"),
        "the capped log keeps its tail"
    );
    assert!(
        log.len() == expected.len() && log == expected,
        "the capped log drops whole characters from the front (got {} bytes, expected {})",
        log.len(),
        expected.len()
    );

    expect_code(
        registry.append_build_log("fn_doesnotexist", 1, "x").await,
        "not_found",
        "append_build_log to an unknown function",
    );
    expect_code(
        registry.append_build_log(&id, 99, "x").await,
        "not_found",
        "append_build_log to an unknown version",
    );

    expect_code(
        registry
            .finish_build(&id, 1, BuildStatus::Ready, None)
            .await,
        "invalid_input",
        "finish_build ready without an artifact",
    );
    expect_code(
        registry
            .finish_build(&id, 1, BuildStatus::Building, None)
            .await,
        "invalid_input",
        "finish_build as building",
    );
    expect_code(
        registry
            .finish_build("fn_doesnotexist", 1, BuildStatus::Failed, None)
            .await,
        "not_found",
        "finish_build of an unknown function",
    );
    expect_code(
        registry
            .finish_build(&id, 99, BuildStatus::Failed, None)
            .await,
        "not_found",
        "finish_build of an unknown version",
    );
    let still = expect_ok(registry.get(&tenant, &id).await, "get");
    assert_eq!(
        still.versions[0].status,
        BuildStatus::Building,
        "a refused finish_build changes nothing"
    );

    let dir = Artifact::Directory {
        path: "/var/lib/sopm/artifacts/thumb-1".to_string(),
        digest: None,
    };
    expect_ok(
        registry
            .finish_build(&id, 1, BuildStatus::Ready, Some(dir.clone()))
            .await,
        "finish_build ready",
    );
    let rec = expect_ok(registry.get(&tenant, &id).await, "get");
    assert_eq!(rec.versions[0].status, BuildStatus::Ready);
    assert_eq!(
        rec.versions[0].artifact,
        Some(dir.clone()),
        "a ready version keeps its artifact"
    );
    assert_eq!(rec.latest_ready().map(|v| v.version), Some(1));

    expect_code(
        registry
            .finish_build(&id, 1, BuildStatus::Failed, None)
            .await,
        "conflict",
        "a second finish_build",
    );
    expect_code(
        registry
            .finish_build(
                &id,
                1,
                BuildStatus::Ready,
                Some(Artifact::Image {
                    reference: "x".into(),
                }),
            )
            .await,
        "conflict",
        "a second finish_build as ready",
    );
    let rec = expect_ok(registry.get(&tenant, &id).await, "get");
    assert_eq!(
        (rec.versions[0].status, rec.versions[0].artifact.clone()),
        (BuildStatus::Ready, Some(dir)),
        "a refused second finish changes nothing"
    );

    let v2 = create(registry, &tenant, "thumb", "d2", "create_version v2").await;
    assert_eq!((v2.version, v2.function_id.as_str()), (2, id.as_str()));
    expect_ok(
        registry
            .append_build_log(&id, 2, "pip install: error\n")
            .await,
        "append_build_log v2",
    );
    expect_ok(
        registry
            .finish_build(&id, 2, BuildStatus::Failed, None)
            .await,
        "finish_build failed",
    );
    let v3 = create(registry, &tenant, "thumb", "d3", "create_version v3").await;
    assert_eq!(v3.version, 3);

    let rec = expect_ok(registry.get(&tenant, &id).await, "get");
    assert_eq!(
        rec.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(rec.version(2).map(|v| v.status), Some(BuildStatus::Failed));
    assert_eq!(
        rec.version(2).map(|v| v.build_log.as_str()),
        Some("pip install: error\n"),
        "build logs are per version"
    );
    assert_eq!(
        rec.version(3).map(|v| v.status),
        Some(BuildStatus::Building)
    );
    assert_eq!(
        rec.latest_ready().map(|v| v.version),
        Some(1),
        "latest_ready skips failed and building versions"
    );

    let image = Artifact::Image {
        reference: "registry.local/thumb:4".to_string(),
    };
    let v4 = create(registry, &tenant, "thumb", "d4", "create_version v4").await;
    expect_ok(
        registry
            .finish_build(&id, v4.version, BuildStatus::Ready, Some(image.clone()))
            .await,
        "finish_build v4",
    );
    let rec = expect_ok(registry.get(&tenant, &id).await, "get");
    let latest = rec.latest_ready().expect("a ready version");
    assert_eq!(
        (latest.version, latest.artifact.clone()),
        (4, Some(image)),
        "latest_ready is the newest ready version"
    );
    assert_eq!(
        rec.version(3).map(|v| v.status),
        Some(BuildStatus::Building),
        "finishing v4 leaves v3 alone"
    );
}

/// Delete: only the owner can delete; delete returns what it removed; afterwards the
/// function is gone from every read, other functions stay, and the name can be used
/// again for a new function.
pub async fn registry_delete(registry: &dyn Registry) {
    let owner = unique_tenant("owner");
    let stranger = unique_tenant("stranger");
    let v1 = create(registry, &owner, "gone", "d1", "create_version").await;
    let id = v1.function_id.clone();
    expect_ok(
        registry.append_build_log(&id, 1, "built\n").await,
        "append_build_log",
    );
    expect_ok(
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
            .await,
        "finish_build",
    );
    create(registry, &owner, "gone", "d2", "create_version v2").await;
    let kept = create(registry, &owner, "kept", "k", "create_version (kept)").await;
    let before = expect_ok(registry.get(&owner, &id).await, "get before delete");

    expect_code(
        registry.delete(&stranger, &id).await,
        "not_found",
        "delete by another tenant",
    );
    expect_ok(
        registry.get(&owner, &id).await,
        "get after another tenant's refused delete",
    );
    expect_code(
        registry.delete(&owner, "fn_doesnotexist").await,
        "not_found",
        "delete of an unknown id",
    );

    let removed = expect_ok(registry.delete(&owner, &id).await, "delete by owner");
    assert_eq!(
        removed, before,
        "delete returns the record it removed, with every version"
    );

    expect_code(
        registry.get(&owner, &id).await,
        "not_found",
        "get after delete",
    );
    expect_code(
        registry.get_by_name(&owner, "gone").await,
        "not_found",
        "get_by_name after delete",
    );
    expect_code(
        registry.append_build_log(&id, 1, "late\n").await,
        "not_found",
        "append_build_log after delete",
    );
    expect_code(
        registry
            .finish_build(&id, 2, BuildStatus::Failed, None)
            .await,
        "not_found",
        "finish_build after delete",
    );
    expect_code(
        registry.delete(&owner, &id).await,
        "not_found",
        "a second delete",
    );
    let list = expect_ok(registry.list(&owner).await, "list after delete");
    assert_eq!(
        list.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [kept.function_id.as_str()],
        "delete removes only that function"
    );

    let again = create(
        registry,
        &owner,
        "gone",
        "d3",
        "create_version after delete",
    )
    .await;
    assert_eq!(again.version, 1, "a deleted name starts again at version 1");
    assert_ne!(again.function_id, id, "a re-created function gets a new id");
}

/// Quotas and retention: [`tenant_usage`](Registry::tenant_usage) counts a tenant's
/// functions and sums the artifact sizes recorded on its versions (another tenant's do
/// not count; a version without a record counts 0);
/// [`delete_version`](Registry::delete_version) removes exactly one version of the
/// owner's function (its size leaves the sum), is `not_found` for another tenant or an
/// unknown version, `conflict` for the only version left, and later versions keep
/// their numbers.
pub async fn registry_usage_and_version_delete(registry: &dyn Registry) {
    let owner = unique_tenant("usage");
    let stranger = unique_tenant("usage-other");
    let empty = expect_ok(registry.tenant_usage(&owner).await, "tenant_usage (empty)");
    assert_eq!(
        empty,
        crate::registry::TenantUsage::default(),
        "a tenant with nothing"
    );
    let v1 = create(registry, &owner, "sized", "s1", "create_version v1").await;
    let id = v1.function_id.clone();
    create(registry, &owner, "sized", "s2", "create_version v2").await;
    create(registry, &owner, "sized", "s3", "create_version v3").await;
    create(registry, &owner, "plain", "p1", "create_version (plain)").await;
    create(
        registry,
        &stranger,
        "theirs",
        "t1",
        "create_version (stranger)",
    )
    .await;
    for (n, bytes) in [(1, 1_000u64), (2, 20_000), (3, 300_000)] {
        expect_ok(
            registry.record_artifact_bytes(&id, n, bytes).await,
            "record_artifact_bytes",
        );
    }
    expect_ok(
        registry.record_artifact_bytes(&id, 3, 300_001).await,
        "record_artifact_bytes again (replaces)",
    );
    expect_code(
        registry.record_artifact_bytes(&id, 9, 1).await,
        "not_found",
        "record_artifact_bytes of an unknown version",
    );
    let theirs = expect_ok(
        registry.get_by_name(&stranger, "theirs").await,
        "get (stranger)",
    );
    expect_ok(
        registry.record_artifact_bytes(&theirs.id, 1, 1 << 40).await,
        "record_artifact_bytes (stranger)",
    );
    let usage = expect_ok(registry.tenant_usage(&owner).await, "tenant_usage");
    assert_eq!(usage.functions, 2, "two functions: {usage:?}");
    assert_eq!(
        usage.artifact_bytes,
        1_000 + 20_000 + 300_001,
        "the owner's recorded sizes only, the latest record of each version"
    );

    expect_code(
        registry.delete_version(&stranger, &id, 1).await,
        "not_found",
        "delete_version by another tenant",
    );
    expect_code(
        registry.delete_version(&owner, &id, 7).await,
        "not_found",
        "delete_version of an unknown version",
    );
    expect_code(
        registry.delete_version(&owner, "fn_doesnotexist", 1).await,
        "not_found",
        "delete_version of an unknown function",
    );
    let removed = expect_ok(
        registry.delete_version(&owner, &id, 2).await,
        "delete_version v2",
    );
    assert_eq!(
        removed.version, 2,
        "delete_version returns the removed version"
    );
    assert_eq!(removed.source_digest, "s2");
    let rec = expect_ok(registry.get(&owner, &id).await, "get after delete_version");
    assert_eq!(
        rec.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 3],
        "exactly one version is gone and the others keep their numbers"
    );
    let usage = expect_ok(registry.tenant_usage(&owner).await, "tenant_usage after");
    assert_eq!(
        usage.artifact_bytes,
        1_000 + 300_001,
        "the size left with it"
    );
    assert_eq!(usage.functions, 2);
    let v4 = create(
        registry,
        &owner,
        "sized",
        "s4",
        "create_version after delete",
    )
    .await;
    assert_eq!(
        v4.version, 4,
        "numbering continues past the highest version"
    );
    expect_ok(registry.delete_version(&owner, &id, 1).await, "delete v1");
    expect_ok(registry.delete_version(&owner, &id, 3).await, "delete v3");
    expect_code(
        registry.delete_version(&owner, &id, 4).await,
        "conflict",
        "delete_version of the only version left",
    );
    let rec = expect_ok(registry.get(&owner, &id).await, "get after refused delete");
    assert_eq!(rec.versions.len(), 1, "the last version stays");
}

// ---------------------------------------------------------------------------
// JobStore
// ---------------------------------------------------------------------------

fn job(tenant: &TenantId, status: JobStatus, input: Value) -> Job {
    let mut j = Job::new(
        tenant.clone(),
        FunctionRef::builtin("echo"),
        Arc::new(input),
        30_000,
    );
    j.status = status;
    j
}

/// Puts `job` durably and checks it reads back the same.
async fn put_and_read_back(store: &dyn JobStore, job: &Job, what: &str) {
    expect_ok(store.put(job, Durability::Durable).await, what);
    assert_same_job(expect_ok(store.get(&job.id).await, what), job, what);
}

#[track_caller]
fn assert_same_job(got: Option<Job>, want: &Job, what: &str) {
    match got {
        None => panic!("{what}: job {} is missing", want.id),
        Some(got) => assert!(
            got == *want,
            "{what}: job {} differs\n stored: {got:?}\nexpected: {want:?}",
            want.id
        ),
    }
}

/// Round trip: every field of a job comes back as it was put (errors with tracebacks,
/// logs, unicode, numbers at the edges, large inputs), and an unknown id is `None`.
pub async fn job_store_round_trip(store: &dyn JobStore) {
    let tenant = unique_tenant("rt");
    let unicode = json!({
        "text": "héllo 世界 🦀 مرحبا \u{200d}\u{0} tab\t quote\" back\\slash",
        "nested": {"list": [1, -2, 3.5, null, true, false, {"k": []}], "empty": {}},
        "edges": [u64::MAX, i64::MIN, 0.1, 1e300, -0.0],
    });

    let mut queued = job(&tenant, JobStatus::Queued, unicode.clone());
    queued.timeout_ms = 1;
    put_and_read_back(store, &queued, "a queued job with unicode input").await;

    let mut ok = Job::new(
        tenant.clone(),
        FunctionRef::User {
            id: Arc::from("fn_0123abcd"),
            version: Some(7),
        },
        Arc::new(json!("just a string")),
        299_999,
    );
    ok.status = JobStatus::Succeeded;
    ok.output = Some(unicode.clone());
    ok.logs = Some("line one\nlíne twö 🦀\n\u{0}after a NUL\n".to_string());
    ok.started_ms = Some(ok.created_ms + 3);
    ok.finished_ms = Some(ok.created_ms + 40);
    ok.duration_us = Some(36_789);
    ok.attempts = 3;
    put_and_read_back(
        store,
        &ok,
        "a succeeded user-function job with output and logs",
    )
    .await;

    let mut failed = job(&tenant, JobStatus::Failed, json!({"a": 1}));
    failed.function = FunctionRef::User {
        id: Arc::from("fn_x"),
        version: None,
    };
    failed.error = Some(ErrorInfo {
        code: "function_error".to_string(),
        message: "ZeroDivisionError: division by zero ✗".to_string(),
        traceback: Some("Traceback (most recent call last):\n  File \"main.py\", line 3, in handle\nZeroDivisionError".to_string()),
    });
    failed.logs = Some(String::new());
    failed.started_ms = Some(failed.created_ms);
    failed.finished_ms = Some(failed.created_ms + 1);
    failed.duration_us = Some(0);
    failed.attempts = 1;
    put_and_read_back(store, &failed, "a failed job with an error and a traceback").await;

    for (status, code) in [
        (JobStatus::TimedOut, "timeout"),
        (JobStatus::Cancelled, "cancelled"),
        (JobStatus::Interrupted, "interrupted"),
    ] {
        let mut j = job(&tenant, status, Value::Null);
        j.error = Some(ErrorInfo {
            code: code.to_string(),
            message: format!("{code} on purpose"),
            traceback: None,
        });
        j.finished_ms = Some(j.created_ms + 5);
        put_and_read_back(store, &j, status.as_str()).await;
    }

    let mut running = job(&tenant, JobStatus::Running, json!([]));
    running.started_ms = Some(running.created_ms + 1);
    running.attempts = 1;
    put_and_read_back(store, &running, "a running job").await;

    let big_text: String = "0123456789abcdef🦀".repeat(100_000);
    let big = job(
        &tenant,
        JobStatus::Queued,
        json!({"blob": big_text, "numbers": (0..20_000).collect::<Vec<u32>>()}),
    );
    put_and_read_back(store, &big, "a job with a large input").await;

    // The same job finished with a large output, and a failed one with a large input
    // and no output: a store may keep large finished records apart from the rest.
    let mut big_done = big.clone();
    big_done.status = JobStatus::Succeeded;
    big_done.output = Some(json!({"echo": big_text.chars().rev().collect::<String>()}));
    big_done.started_ms = Some(big_done.created_ms + 1);
    big_done.finished_ms = Some(big_done.created_ms + 2);
    big_done.attempts = 1;
    put_and_read_back(
        store,
        &big_done,
        "a finished job with a large input and output",
    )
    .await;
    let mut big_failed = job(
        &tenant,
        JobStatus::Failed,
        json!({"text": "é".repeat(3000)}),
    );
    big_failed.error = Some(ErrorInfo {
        code: "function_error".to_string(),
        message: "too long".to_string(),
        traceback: None,
    });
    big_failed.finished_ms = Some(big_failed.created_ms + 1);
    put_and_read_back(
        store,
        &big_failed,
        "a failed job with a large input and no output",
    )
    .await;

    let unknown = JobId::random();
    assert!(
        expect_ok(store.get(&unknown).await, "get unknown").is_none(),
        "an unknown job id is None"
    );
}

/// The rank rule of [`JobStore::put`]: queued < running < terminal; a put ranked below
/// the stored record is ignored, a put over a terminal record is ignored (the first
/// terminal state is final), and a put of the same non-terminal rank replaces.
pub async fn job_store_never_moves_back(store: &dyn JobStore) {
    let tenant = unique_tenant("rank");
    for durability in [Durability::Durable, Durability::Buffered] {
        let what = |s: &str| format!("{s} ({durability:?} puts)");
        let queued = job(&tenant, JobStatus::Queued, json!({"n": 1}));
        let id = queued.id.clone();
        expect_ok(store.put(&queued, durability).await, "put queued");

        let mut queued_again = queued.clone();
        queued_again.timeout_ms = 77;
        expect_ok(
            store.put(&queued_again, durability).await,
            "put queued again",
        );
        store.flush().await.expect("flush");
        assert_same_job(
            store.get(&id).await.expect("get"),
            &queued_again,
            &what("a second queued put replaces the first"),
        );

        let mut running = queued.clone();
        running.status = JobStatus::Running;
        running.started_ms = Some(queued.created_ms + 1);
        running.attempts = 1;
        expect_ok(store.put(&running, durability).await, "put running");
        expect_ok(
            store.put(&queued, durability).await,
            "put queued after running",
        );
        store.flush().await.expect("flush");
        assert_same_job(
            store.get(&id).await.expect("get"),
            &running,
            &what("queued after running is ignored"),
        );

        let mut running2 = running.clone();
        running2.attempts = 2;
        running2.logs = Some("still going".into());
        expect_ok(store.put(&running2, durability).await, "put running again");
        store.flush().await.expect("flush");
        assert_same_job(
            store.get(&id).await.expect("get"),
            &running2,
            &what("a second running put replaces the first"),
        );

        let mut done = running2.clone();
        done.status = JobStatus::Succeeded;
        done.output = Some(json!({"answer": 42}));
        done.finished_ms = Some(queued.created_ms + 9);
        done.duration_us = Some(8_000);
        expect_ok(store.put(&done, durability).await, "put succeeded");
        expect_ok(
            store.put(&running, durability).await,
            "put running after succeeded",
        );
        expect_ok(
            store.put(&queued, durability).await,
            "put queued after succeeded",
        );
        let mut late_failure = running.clone();
        late_failure.status = JobStatus::Failed;
        late_failure.error = Some(ErrorInfo {
            code: "timeout".into(),
            message: "late".into(),
            traceback: None,
        });
        expect_ok(
            store.put(&late_failure, durability).await,
            "put failed after succeeded",
        );
        let mut late_cancel = late_failure.clone();
        late_cancel.status = JobStatus::Cancelled;
        expect_ok(
            store.put(&late_cancel, durability).await,
            "put cancelled after succeeded",
        );
        store.flush().await.expect("flush");
        assert_same_job(
            store.get(&id).await.expect("get"),
            &done,
            &what("running, queued and a second terminal state after succeeded are all ignored"),
        );

        // A record whose first put is terminal is stored, and then final.
        let mut first_terminal = job(&tenant, JobStatus::Cancelled, json!(null));
        first_terminal.error = Some(ErrorInfo {
            code: "cancelled".into(),
            message: "x".into(),
            traceback: None,
        });
        expect_ok(
            store.put(&first_terminal, durability).await,
            "put terminal first",
        );
        let mut back = first_terminal.clone();
        back.status = JobStatus::Queued;
        back.error = None;
        expect_ok(
            store.put(&back, durability).await,
            "put queued over terminal",
        );
        store.flush().await.expect("flush");
        assert_same_job(
            store.get(&first_terminal.id).await.expect("get"),
            &first_terminal,
            &what("a terminal first put is final"),
        );
    }
}

/// `unfinished` returns the jobs stored as queued or running, oldest first, and no
/// terminal ones; a job that finishes leaves it.
pub async fn job_store_unfinished(store: &dyn JobStore) {
    let tenant = unique_tenant("unfinished");
    let base = now_ms() - 10_000;
    let at = |status: JobStatus, offset: u64| {
        let mut j = job(&tenant, status, json!({"offset": offset}));
        j.created_ms = base + offset;
        if status != JobStatus::Queued {
            j.started_ms = Some(base + offset + 1);
            j.attempts = 1;
        }
        if status.is_terminal() {
            j.finished_ms = Some(base + offset + 2);
        }
        j
    };
    // Put in an order unrelated to age, so the store must sort.
    let q_new = at(JobStatus::Queued, 3_000);
    let r_mid = at(JobStatus::Running, 2_000);
    let q_old = at(JobStatus::Queued, 1_000);
    let r_oldest = at(JobStatus::Running, 500);
    let terminal: Vec<Job> = [
        (JobStatus::Succeeded, 100),
        (JobStatus::Failed, 1_500),
        (JobStatus::TimedOut, 2_500),
        (JobStatus::Cancelled, 4_000),
        (JobStatus::Interrupted, 50),
    ]
    .into_iter()
    .map(|(s, o)| at(s, o))
    .collect();
    let mut went_through = at(JobStatus::Queued, 1_200);
    for j in [&q_new, &r_mid, &q_old, &r_oldest]
        .into_iter()
        .chain(&terminal)
    {
        expect_ok(store.put(j, Durability::Durable).await, "put");
    }
    expect_ok(
        store.put(&went_through, Durability::Durable).await,
        "put queued",
    );
    went_through.status = JobStatus::Succeeded;
    went_through.finished_ms = Some(base + 1_300);
    expect_ok(
        store.put(&went_through, Durability::Durable).await,
        "put succeeded",
    );

    let ours =
        |all: Vec<Job>| -> Vec<Job> { all.into_iter().filter(|j| j.tenant == tenant).collect() };
    let got = ours(expect_ok(store.unfinished().await, "unfinished"));
    let want = vec![
        r_oldest.clone(),
        q_old.clone(),
        r_mid.clone(),
        q_new.clone(),
    ];
    assert!(
        got == want,
        "unfinished must return exactly the queued and running jobs, oldest first\n got: {:?}\nwant: {:?}",
        got.iter().map(|j| (j.status.as_str(), j.created_ms - base)).collect::<Vec<_>>(),
        want.iter().map(|j| (j.status.as_str(), j.created_ms - base)).collect::<Vec<_>>(),
    );

    let mut finished = r_mid.clone();
    finished.status = JobStatus::Succeeded;
    finished.output = Some(json!(1));
    finished.finished_ms = Some(base + 2_100);
    expect_ok(
        store.put(&finished, Durability::Durable).await,
        "put succeeded",
    );
    let mut started = q_old.clone();
    started.status = JobStatus::Running;
    started.started_ms = Some(base + 1_900);
    started.attempts = 1;
    expect_ok(
        store.put(&started, Durability::Buffered).await,
        "put running (buffered)",
    );
    let got = ours(expect_ok(store.unfinished().await, "unfinished"));
    assert!(
        got == vec![r_oldest, started, q_new],
        "after one job finished and one started, unfinished must list the other three with their current state, oldest first; got {:?}",
        got.iter().map(|j| (j.status.as_str(), j.created_ms - base)).collect::<Vec<_>>(),
    );
}

/// A model of the rank rule: whether `new` replaces `old`.
fn replaces(old: Option<&Job>, new: &Job) -> bool {
    match old {
        None => true,
        Some(old) => {
            !(status_rank(new.status) < status_rank(old.status)
                || (old.status.is_terminal() && new.status.is_terminal()))
        }
    }
}

/// Many buffered puts, interleaved across jobs, then `flush`: every job is readable
/// and each holds what the rank rule makes of its puts in order (the last put of each
/// id wins unless it would move the job back).
pub async fn job_store_buffered_then_flush(store: &dyn JobStore) {
    let tenant = unique_tenant("buffered");
    const JOBS: usize = 600;
    let base: Vec<Job> = (0..JOBS)
        .map(|i| job(&tenant, JobStatus::Queued, json!({"i": i})))
        .collect();
    let mut expected: HashMap<JobId, Job> = HashMap::new();
    let mut puts = 0usize;
    for round in 0..6u32 {
        for (i, b) in base.iter().enumerate() {
            let mut j = b.clone();
            match round {
                0 => {}
                1 => {
                    j.timeout_ms = 1_000 + i as u64;
                }
                2 | 3 => {
                    j.status = JobStatus::Running;
                    j.attempts = round - 1;
                    j.started_ms = Some(j.created_ms + round as u64);
                }
                4 => {
                    if i % 5 == 0 {
                        continue; // these stay running
                    }
                    j.status = if i % 2 == 0 {
                        JobStatus::Succeeded
                    } else {
                        JobStatus::Failed
                    };
                    j.output = (i % 2 == 0).then(|| json!({"out": i}));
                    j.error = (i % 2 == 1).then(|| ErrorInfo {
                        code: "function_error".into(),
                        message: format!("job {i}"),
                        traceback: None,
                    });
                    j.finished_ms = Some(j.created_ms + 10);
                }
                _ => {
                    // Late puts: a stale running record (ignored for finished jobs, a
                    // same-rank replacement for running ones) and a stale queued one.
                    j.status = JobStatus::Running;
                    j.attempts = 9;
                    j.logs = Some(format!("late {i}"));
                }
            }
            if replaces(expected.get(&j.id), &j) {
                expected.insert(j.id.clone(), j.clone());
            }
            expect_ok(store.put(&j, Durability::Buffered).await, "buffered put");
            puts += 1;
            if round == 5 {
                let stale = b.clone();
                if replaces(expected.get(&stale.id), &stale) {
                    expected.insert(stale.id.clone(), stale.clone());
                }
                expect_ok(
                    store.put(&stale, Durability::Buffered).await,
                    "buffered put",
                );
                puts += 1;
            }
        }
    }
    expect_ok(store.flush().await, "flush");
    for b in &base {
        assert_same_job(
            expect_ok(store.get(&b.id).await, "get"),
            &expected[&b.id],
            &format!("after {puts} buffered puts and a flush"),
        );
    }
    let running: Vec<JobId> = expect_ok(store.unfinished().await, "unfinished")
        .into_iter()
        .filter(|j| j.tenant == tenant)
        .map(|j| j.id)
        .collect();
    assert_eq!(
        running.len(),
        JOBS / 5,
        "the jobs left running are unfinished, the others are not"
    );
}

/// Reads see the store's own buffered puts at once, before any flush. The
/// [`LocalScheduler`] relies on this: it records a finished job with a buffered put and
/// then answers status questions from the store.
pub async fn job_store_reads_own_buffered_puts(store: &dyn JobStore) {
    let tenant = unique_tenant("ryw");
    let mut j = job(&tenant, JobStatus::Queued, json!({"x": 1}));
    expect_ok(store.put(&j, Durability::Buffered).await, "buffered put");
    assert_same_job(
        expect_ok(store.get(&j.id).await, "get"),
        &j,
        "a buffered put read back before flush",
    );
    j.status = JobStatus::Running;
    j.attempts = 1;
    expect_ok(store.put(&j, Durability::Buffered).await, "buffered put");
    assert_same_job(
        expect_ok(store.get(&j.id).await, "get"),
        &j,
        "a buffered update read back before flush",
    );
    let mut done = j.clone();
    done.status = JobStatus::Succeeded;
    done.output = Some(json!("ok"));
    expect_ok(store.put(&done, Durability::Buffered).await, "buffered put");
    expect_ok(
        store.put(&j, Durability::Buffered).await,
        "stale buffered put",
    );
    assert_same_job(
        expect_ok(store.get(&j.id).await, "get"),
        &done,
        "a stale buffered put is ignored before flush too",
    );
    expect_ok(store.flush().await, "flush");
    assert_same_job(
        expect_ok(store.get(&j.id).await, "get"),
        &done,
        "after flush",
    );
}

// ---------------------------------------------------------------------------
// Scheduler
// ---------------------------------------------------------------------------

/// The traceback the `fail` function of [`ConformanceExecutor`] reports.
pub const FAIL_TRACEBACK: &str =
    "Traceback (most recent call last):\n  File \"conformance\", line 1, in fail\nRuntimeError";

/// An executor of a few test functions, run as built-ins:
/// - `echo`: returns its input, with the log `"echo\n"`;
/// - `sleep_ms`: sleeps `input.ms` milliseconds, returns `{"slept_ms": ms}`;
/// - `fail`: fails with a `function_error` (message `input.message`, traceback
///   [`FAIL_TRACEBACK`]);
/// - `slow`: sleeps `input.ms` milliseconds (default one minute) and stops at once
///   when dropped (cancellation, deadline, shutdown).
///
/// It counts its invocations per job.
#[derive(Debug, Default)]
pub struct ConformanceExecutor {
    calls: Mutex<HashMap<JobId, u32>>,
}

impl ConformanceExecutor {
    /// The names of its functions.
    pub const FUNCTIONS: [&'static str; 4] = ["echo", "sleep_ms", "fail", "slow"];

    /// A new executor with no calls counted.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times the job was invoked.
    pub fn invocations(&self, job: &JobId) -> u32 {
        self.calls.lock().get(job).copied().unwrap_or(0)
    }
}

#[async_trait]
impl Executor for ConformanceExecutor {
    fn name(&self) -> &str {
        "conformance"
    }

    async fn invoke(&self, invocation: Invocation) -> Result<Output> {
        *self
            .calls
            .lock()
            .entry(invocation.job_id.clone())
            .or_default() += 1;
        let Target::Builtin(name) = &invocation.target else {
            return Err(Error::invalid(
                "the conformance executor runs built-ins only",
            ));
        };
        let ms = |default: u64| {
            invocation
                .input
                .get("ms")
                .and_then(Value::as_u64)
                .unwrap_or(default)
        };
        match name.as_ref() {
            "echo" => Ok(Output {
                value: (*invocation.input).clone(),
                logs: Some("echo\n".to_string()),
            }),
            "sleep_ms" => {
                let ms = ms(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!({ "slept_ms": ms }).into())
            }
            "fail" => Err(Error::Function {
                message: invocation
                    .input
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("failed on purpose")
                    .to_string(),
                traceback: Some(FAIL_TRACEBACK.to_string()),
                logs: None,
            }),
            "slow" => {
                tokio::time::sleep(Duration::from_millis(ms(60_000))).await;
                Ok(json!("finally").into())
            }
            other => Err(Error::not_found(format!(
                "no conformance function '{other}'"
            ))),
        }
    }
}

/// A router that sends the [`ConformanceExecutor`]'s functions (as built-ins, backend
/// [`BUILTIN_BACKEND`](crate::BUILTIN_BACKEND)) with a 10 s time limit; anything else
/// is `not_found`. Pair it with [`conformance_dispatcher`].
#[derive(Debug, Default)]
pub struct ConformanceRouter {
    backend: Arc<str>,
}

impl ConformanceRouter {
    /// Routes the conformance functions to the built-in backend.
    pub fn new() -> Self {
        ConformanceRouter {
            backend: Arc::from(crate::BUILTIN_BACKEND),
        }
    }
}

/// A dispatcher that runs the built-in backend in `executor` (artifacts in place).
pub fn conformance_dispatcher(executor: Arc<ConformanceExecutor>) -> Arc<crate::Dispatcher> {
    Arc::new(crate::Dispatcher::new(
        vec![(crate::BUILTIN_BACKEND.to_string(), executor)],
        Arc::new(crate::InPlaceArtifactStore),
    ))
}

#[async_trait]
impl Router for ConformanceRouter {
    async fn route(&self, _tenant: &TenantId, function: &FunctionRef) -> Result<Route> {
        match function {
            FunctionRef::Builtin { name }
                if ConformanceExecutor::FUNCTIONS.contains(&name.as_ref()) =>
            {
                Ok(Route {
                    backend: self.backend.clone(),
                    target: Target::Builtin(name.clone()),
                    timeout: Duration::from_secs(10),
                    function: function.clone(),
                })
            }
            other => Err(Error::not_found(format!(
                "no function '{}'",
                other.display_name()
            ))),
        }
    }
}

/// What a scheduler under test is made from.
#[derive(Debug)]
pub struct SchedulerSetup {
    /// The router to resolve functions with (a [`ConformanceRouter`]).
    pub router: Arc<dyn Router>,
    /// The dispatcher that runs them (see [`conformance_dispatcher`]).
    pub dispatcher: Arc<crate::Dispatcher>,
    /// The job store to record into.
    pub store: Arc<dyn JobStore>,
    /// Most jobs running at once.
    pub max_concurrency: usize,
    /// Most jobs waiting for a slot.
    pub queue_capacity: usize,
}

type NewStore = Box<dyn Fn() -> Arc<dyn JobStore> + Send + Sync>;
type MakeScheduler = Box<dyn Fn(SchedulerSetup) -> Arc<dyn Scheduler> + Send + Sync>;

/// Makes the schedulers the scheduler checks run against: a fresh job store for each
/// check, and a scheduler built over it with the check's limits.
pub struct SchedulerHarness {
    new_store: NewStore,
    make: MakeScheduler,
}

impl Debug for SchedulerHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchedulerHarness")
    }
}

impl SchedulerHarness {
    /// A harness from a job store factory and a scheduler factory.
    pub fn new(
        new_store: impl Fn() -> Arc<dyn JobStore> + Send + Sync + 'static,
        make: impl Fn(SchedulerSetup) -> Arc<dyn Scheduler> + Send + Sync + 'static,
    ) -> Self {
        SchedulerHarness {
            new_store: Box::new(new_store),
            make: Box::new(make),
        }
    }

    /// A harness for the [`LocalScheduler`] over the stores `new_store` makes.
    pub fn local(new_store: impl Fn() -> Arc<dyn JobStore> + Send + Sync + 'static) -> Self {
        Self::new(new_store, |setup| {
            Arc::new(LocalScheduler::new(
                LocalSchedulerConfig {
                    max_concurrency: setup.max_concurrency,
                    queue_capacity: setup.queue_capacity,
                    // The checks use one tenant at a time: its share is everything.
                    max_running_per_tenant: Some(setup.max_concurrency),
                    max_queued_per_tenant: Some(setup.queue_capacity),
                    ..LocalSchedulerConfig::default()
                },
                setup.router,
                setup.dispatcher,
                setup.store,
            ))
        })
    }

    fn start(&self, max_concurrency: usize, queue_capacity: usize) -> Rig {
        let store = (self.new_store)();
        self.start_over(store, max_concurrency, queue_capacity)
    }

    fn start_over(
        &self,
        store: Arc<dyn JobStore>,
        max_concurrency: usize,
        queue_capacity: usize,
    ) -> Rig {
        let executor = Arc::new(ConformanceExecutor::new());
        let scheduler = (self.make)(SchedulerSetup {
            router: Arc::new(ConformanceRouter::new()),
            dispatcher: conformance_dispatcher(executor.clone()),
            store: store.clone(),
            max_concurrency,
            queue_capacity,
        });
        Rig {
            scheduler,
            store,
            executor,
        }
    }
}

struct Rig {
    scheduler: Arc<dyn Scheduler>,
    store: Arc<dyn JobStore>,
    executor: Arc<ConformanceExecutor>,
}

impl Rig {
    async fn submit(
        &self,
        tenant: &TenantId,
        function: &str,
        input: Value,
        mode: SubmitMode,
    ) -> Result<Submitted> {
        self.scheduler
            .submit(
                JobRequest::new(tenant.clone(), FunctionRef::builtin(function), input),
                mode,
            )
            .await
    }

    async fn finished(&self, tenant: &TenantId, function: &str, input: Value) -> Job {
        match self
            .submit(tenant, function, input, SubmitMode::Wait(None))
            .await
        {
            Ok(Submitted::Finished(job)) => job,
            other => {
                panic!("submit {function} waiting without limit: expected Finished, got {other:?}")
            }
        }
    }

    async fn detached(&self, tenant: &TenantId, function: &str, input: Value) -> JobId {
        match self
            .submit(tenant, function, input, SubmitMode::Detach)
            .await
        {
            Ok(Submitted::Pending { id, status }) => {
                assert_eq!(
                    status,
                    JobStatus::Queued,
                    "a detached job is answered as queued"
                );
                id
            }
            other => panic!("submit {function} detached: expected Pending, got {other:?}"),
        }
    }

    async fn wait_for(
        &self,
        tenant: &TenantId,
        id: &JobId,
        what: &str,
        done: impl Fn(JobStatus) -> bool,
    ) -> Job {
        let until = Instant::now() + PATIENCE;
        loop {
            let job = expect_ok(self.scheduler.status(tenant, id).await, what);
            if done(job.status) {
                return job;
            }
            assert!(
                Instant::now() < until,
                "{what}: job {id} is still {} after {PATIENCE:?}",
                job.status.as_str()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn wait_running(&self, tenant: &TenantId, id: &JobId) {
        self.wait_for(tenant, id, "waiting for the job to start", |s| {
            s == JobStatus::Running
        })
        .await;
    }

    async fn wait_terminal(&self, tenant: &TenantId, id: &JobId) -> Job {
        self.wait_for(
            tenant,
            id,
            "waiting for the job to finish",
            JobStatus::is_terminal,
        )
        .await
    }

    /// Shuts the scheduler down with time for running jobs to finish; must succeed.
    async fn shut_down(&self) {
        self.scheduler
            .shutdown(Duration::from_secs(5))
            .await
            .expect("shutdown");
    }

    /// The job store's record of a job, which must be there.
    async fn stored(&self, id: &JobId) -> Job {
        expect_ok(self.store.get(id).await, "store get").expect("recorded")
    }

    /// Stops whatever a check left running.
    async fn stop(self) {
        let _ = self.scheduler.shutdown(Duration::ZERO).await;
    }
}

#[track_caller]
fn assert_error(job: &Job, status: JobStatus, code: &str, what: &str) {
    assert_eq!(job.status, status, "{what}: status");
    let err = job
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: a {} job records its error", status.as_str()));
    assert_eq!(err.code, code, "{what}: error code");
    assert!(
        job.output.is_none(),
        "{what}: a job that did not succeed has no output"
    );
    assert!(
        job.finished_ms.is_some(),
        "{what}: a finished job has finished_ms"
    );
}

/// Every scheduler check, each with a fresh store and scheduler.
pub async fn scheduler_suite(harness: &SchedulerHarness) {
    scheduler_wait_returns_output(harness).await;
    scheduler_call(harness).await;
    scheduler_wait_expires_then_finishes(harness).await;
    scheduler_detach(harness).await;
    scheduler_records_errors(harness).await;
    scheduler_timeouts(harness).await;
    scheduler_cancel(harness).await;
    scheduler_tenant_isolation(harness).await;
    scheduler_overload(harness).await;
    scheduler_stats(harness).await;
    scheduler_shutdown(harness).await;
    scheduler_recover(harness).await;
}

/// A waiting submission returns the finished job with its output, and the job is
/// recorded (status answers it afterwards).
pub async fn scheduler_wait_returns_output(harness: &SchedulerHarness) {
    let rig = harness.start(4, 16);
    let tenant = unique_tenant("wait");
    let input = json!({"hello": "wörld", "n": [1, 2, 3]});
    let job = rig.finished(&tenant, "echo", input.clone()).await;
    assert_eq!(job.status, JobStatus::Succeeded, "a waited echo succeeds");
    assert_eq!(job.output, Some(input.clone()), "the output is the echo's");
    assert_eq!(
        job.logs.as_deref(),
        Some("echo\n"),
        "the executor's logs are kept"
    );
    assert_eq!(job.error, None);
    assert_eq!(job.tenant, tenant);
    assert_eq!(job.function, FunctionRef::builtin("echo"));
    assert_eq!(*job.input, input);
    assert_eq!(job.attempts, 1, "a job that ran once has one attempt");
    assert!(
        job.started_ms.is_some() && job.finished_ms.is_some() && job.duration_us.is_some(),
        "a finished job has its timings"
    );
    assert_eq!(
        rig.executor.invocations(&job.id),
        1,
        "the job ran exactly once"
    );

    let status = expect_ok(
        rig.scheduler.status(&tenant, &job.id).await,
        "status of a waited job",
    );
    assert_eq!(status, job, "status returns the recorded job");
    rig.stop().await;
}

/// A wait that expires answers `Pending` with a job that is already durable; the job
/// goes on and status later shows it succeeded.
pub async fn scheduler_wait_expires_then_finishes(harness: &SchedulerHarness) {
    let rig = harness.start(4, 16);
    let tenant = unique_tenant("waitexp");
    let answer = rig
        .submit(
            &tenant,
            "sleep_ms",
            json!({"ms": 300}),
            SubmitMode::Wait(Some(Duration::from_millis(30))),
        )
        .await;
    let (id, status) = match answer {
        Ok(Submitted::Pending { id, status }) => (id, status),
        other => panic!("a wait shorter than the job: expected Pending, got {other:?}"),
    };
    assert!(
        matches!(status, JobStatus::Queued | JobStatus::Running),
        "a pending job is queued or running, got {status:?}"
    );
    let stored = expect_ok(rig.store.get(&id).await, "store get");
    assert!(
        stored.is_some(),
        "a job answered as pending is in the job store before the answer"
    );
    let live = expect_ok(
        rig.scheduler.status(&tenant, &id).await,
        "status of a pending job",
    );
    assert!(
        !live.status.is_terminal() || live.status == JobStatus::Succeeded,
        "pending job status: {:?}",
        live.status
    );
    let job = rig.wait_terminal(&tenant, &id).await;
    assert_eq!(
        job.status,
        JobStatus::Succeeded,
        "the job went on after the wait expired"
    );
    assert_eq!(job.output, Some(json!({"slept_ms": 300})));
    assert_eq!(rig.executor.invocations(&id), 1, "the job ran once");
    rig.shut_down().await;
    let stored = rig.stored(&id).await;
    assert_eq!(
        stored.status,
        JobStatus::Succeeded,
        "the store has the final state"
    );
}

/// A detached submission answers `Pending`/`queued` at once with a durable record, and
/// the job then runs to its end.
pub async fn scheduler_detach(harness: &SchedulerHarness) {
    let rig = harness.start(4, 16);
    let tenant = unique_tenant("detach");
    let id = rig
        .detached(&tenant, "echo", json!({"detached": true}))
        .await;
    let stored = expect_ok(rig.store.get(&id).await, "store get");
    assert!(
        stored.is_some(),
        "a detached job is in the job store before the answer"
    );
    let job = rig.wait_terminal(&tenant, &id).await;
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(job.output, Some(json!({"detached": true})));
    assert_eq!(job.id, id);
    rig.shut_down().await;
    let stored = rig.stored(&id).await;
    assert_eq!(
        stored.status,
        JobStatus::Succeeded,
        "the store has the final state"
    );
    assert_eq!(stored.output, Some(json!({"detached": true})));
}

/// A function's error is recorded as `failed` with its code, message and traceback;
/// an unknown function is refused with `not_found` and never becomes a job.
pub async fn scheduler_records_errors(harness: &SchedulerHarness) {
    let rig = harness.start(4, 16);
    let tenant = unique_tenant("errors");
    let job = rig
        .finished(&tenant, "fail", json!({"message": "no such file"}))
        .await;
    assert_error(
        &job,
        JobStatus::Failed,
        "function_error",
        "a failing function",
    );
    let err = job.error.as_ref().expect("error");
    assert_eq!(
        err.message, "no such file",
        "the function's message is kept"
    );
    assert_eq!(
        err.traceback.as_deref(),
        Some(FAIL_TRACEBACK),
        "the traceback is kept"
    );
    let status = expect_ok(
        rig.scheduler.status(&tenant, &job.id).await,
        "status of a failed job",
    );
    assert_eq!(status, job, "status returns the recorded failure");

    let id = rig.detached(&tenant, "fail", json!({})).await;
    let detached = rig.wait_terminal(&tenant, &id).await;
    assert_error(
        &detached,
        JobStatus::Failed,
        "function_error",
        "a detached failing function",
    );

    expect_code(
        rig.submit(
            &tenant,
            "no-such-function",
            json!({}),
            SubmitMode::Wait(None),
        )
        .await,
        "not_found",
        "submit of an unknown function",
    );
    expect_code(
        rig.submit(&tenant, "no-such-function", json!({}), SubmitMode::Detach)
            .await,
        "not_found",
        "detached submit of an unknown function",
    );
    assert_eq!(
        rig.scheduler.stats().submitted,
        2,
        "refused submissions are not counted as submitted"
    );
    rig.stop().await;
}

/// A job past its time limit is stopped and recorded as `timed_out` with a `timeout`
/// error; the caller's tighter limit applies.
pub async fn scheduler_timeouts(harness: &SchedulerHarness) {
    let rig = harness.start(4, 16);
    let tenant = unique_tenant("timeouts");
    let mut request = JobRequest::new(
        tenant.clone(),
        FunctionRef::builtin("sleep_ms"),
        json!({"ms": 10_000}),
    );
    request.timeout = Some(Duration::from_millis(50));
    let job = match rig.scheduler.submit(request, SubmitMode::Wait(None)).await {
        Ok(Submitted::Finished(job)) => job,
        other => panic!("a job past its limit: expected Finished, got {other:?}"),
    };
    assert_error(&job, JobStatus::TimedOut, "timeout", "a job past its limit");
    assert_eq!(job.timeout_ms, 50, "the job records the limit it ran under");

    let mut request = JobRequest::new(tenant.clone(), FunctionRef::builtin("slow"), json!({}));
    request.timeout = Some(Duration::from_millis(50));
    let id = match rig.scheduler.submit(request, SubmitMode::Detach).await {
        Ok(Submitted::Pending { id, .. }) => id,
        other => panic!("detached submit: expected Pending, got {other:?}"),
    };
    let job = rig.wait_terminal(&tenant, &id).await;
    assert_error(
        &job,
        JobStatus::TimedOut,
        "timeout",
        "a detached job past its limit",
    );
    rig.stop().await;
}

/// Cancel: a running job ends `cancelled`, a queued one too (and never runs); a second
/// cancel, or a cancel of a job that finished, is `conflict`; an unknown id is
/// `not_found`.
pub async fn scheduler_cancel(harness: &SchedulerHarness) {
    let rig = harness.start(1, 8);
    let tenant = unique_tenant("cancel");
    let running = rig.detached(&tenant, "slow", json!({})).await;
    rig.wait_running(&tenant, &running).await;
    let queued = rig
        .detached(&tenant, "echo", json!({"never": "runs"}))
        .await;
    let q = expect_ok(
        rig.scheduler.status(&tenant, &queued).await,
        "status of a queued job",
    );
    assert_eq!(
        q.status,
        JobStatus::Queued,
        "with one slot busy, the next job waits"
    );

    let cancelled = expect_ok(
        rig.scheduler.cancel(&tenant, &queued).await,
        "cancel of a queued job",
    );
    assert_error(
        &cancelled,
        JobStatus::Cancelled,
        "cancelled",
        "a cancelled queued job",
    );
    let cancelled = expect_ok(
        rig.scheduler.cancel(&tenant, &running).await,
        "cancel of a running job",
    );
    assert_error(
        &cancelled,
        JobStatus::Cancelled,
        "cancelled",
        "a cancelled running job",
    );
    assert_eq!(
        rig.executor.invocations(&queued),
        0,
        "a job cancelled while queued never runs"
    );

    let status = expect_ok(
        rig.scheduler.status(&tenant, &running).await,
        "status after cancel",
    );
    assert_eq!(
        status.status,
        JobStatus::Cancelled,
        "status shows the cancellation"
    );
    expect_code(
        rig.scheduler.cancel(&tenant, &running).await,
        "conflict",
        "a second cancel",
    );

    let done = rig.finished(&tenant, "echo", json!(1)).await;
    expect_code(
        rig.scheduler.cancel(&tenant, &done.id).await,
        "conflict",
        "cancel of a finished job",
    );
    let status = expect_ok(rig.scheduler.status(&tenant, &done.id).await, "status");
    assert_eq!(
        status.status,
        JobStatus::Succeeded,
        "a refused cancel changes nothing"
    );
    expect_code(
        rig.scheduler.cancel(&tenant, &JobId::random()).await,
        "not_found",
        "cancel of an unknown id",
    );
    expect_code(
        rig.scheduler.status(&tenant, &JobId::random()).await,
        "not_found",
        "status of an unknown id",
    );

    rig.shut_down().await;
    for id in [&queued, &running] {
        let stored = rig.stored(id).await;
        assert_eq!(
            stored.status,
            JobStatus::Cancelled,
            "the store has the cancellation"
        );
    }
}

/// Another tenant gets `not_found` on status and cancel, for running and finished jobs
/// alike, and its cancel leaves the job alone.
pub async fn scheduler_tenant_isolation(harness: &SchedulerHarness) {
    let rig = harness.start(4, 16);
    let owner = unique_tenant("owner");
    let other = unique_tenant("other");
    let running = rig.detached(&owner, "slow", json!({})).await;
    rig.wait_running(&owner, &running).await;
    expect_code(
        rig.scheduler.status(&other, &running).await,
        "not_found",
        "status of another tenant's running job",
    );
    expect_code(
        rig.scheduler.cancel(&other, &running).await,
        "not_found",
        "cancel of another tenant's running job",
    );
    let still = expect_ok(
        rig.scheduler.status(&owner, &running).await,
        "status by owner",
    );
    assert_eq!(
        still.status,
        JobStatus::Running,
        "another tenant's cancel does nothing"
    );

    let done = rig.finished(&owner, "echo", json!("mine")).await;
    expect_code(
        rig.scheduler.status(&other, &done.id).await,
        "not_found",
        "status of another tenant's finished job",
    );
    expect_code(
        rig.scheduler.cancel(&other, &done.id).await,
        "not_found",
        "cancel of another tenant's finished job",
    );

    let cancelled = expect_ok(
        rig.scheduler.cancel(&owner, &running).await,
        "cancel by owner",
    );
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    expect_code(
        rig.scheduler.status(&other, &running).await,
        "not_found",
        "status of another tenant's cancelled job",
    );
    rig.stop().await;
}

/// With every slot busy and the queue full, submissions are refused as `overloaded`
/// with a retry delay, in both modes; once a slot frees up, jobs are accepted again.
pub async fn scheduler_overload(harness: &SchedulerHarness) {
    let rig = harness.start(1, 1);
    let tenant = unique_tenant("overload");
    let running = rig.detached(&tenant, "slow", json!({})).await;
    rig.wait_running(&tenant, &running).await;
    let queued = rig.detached(&tenant, "slow", json!({})).await;
    for mode in [
        SubmitMode::Detach,
        SubmitMode::Wait(None),
        SubmitMode::Wait(Some(Duration::from_millis(10))),
    ] {
        let err = expect_code(
            rig.submit(&tenant, "echo", json!(1), mode).await,
            "overloaded",
            "submit with a full queue",
        );
        match err {
            Error::Overloaded { retry_after, .. } => assert!(
                retry_after > Duration::ZERO,
                "overloaded carries a retry delay"
            ),
            other => panic!("expected Error::Overloaded, got {other:?}"),
        }
    }
    let stats = rig.scheduler.stats();
    assert_eq!(stats.rejected, 3, "refusals are counted");
    assert_eq!(stats.submitted, 2, "refusals are not submissions");
    assert_eq!(
        (stats.running, stats.queue_depth),
        (1, 1),
        "one job runs, one waits"
    );
    assert_eq!((stats.max_concurrency, stats.queue_capacity), (1, 1));

    expect_ok(rig.scheduler.cancel(&tenant, &running).await, "cancel");
    rig.wait_running(&tenant, &queued).await;
    expect_ok(rig.scheduler.cancel(&tenant, &queued).await, "cancel");
    let job = rig.finished(&tenant, "echo", json!("room again")).await;
    assert_eq!(
        job.status,
        JobStatus::Succeeded,
        "a freed slot accepts jobs again"
    );
    rig.stop().await;
}

/// Stats count what happened: submissions, each outcome, per-function calls and
/// errors, latency samples, and nothing left running or queued.
pub async fn scheduler_stats(harness: &SchedulerHarness) {
    let rig = harness.start(4, 16);
    let tenant = unique_tenant("stats");
    for i in 0..3 {
        rig.finished(&tenant, "echo", json!(i)).await;
    }
    rig.finished(&tenant, "fail", json!({})).await;
    let mut request = JobRequest::new(
        tenant.clone(),
        FunctionRef::builtin("sleep_ms"),
        json!({"ms": 10_000}),
    );
    request.timeout = Some(Duration::from_millis(20));
    expect_ok(
        rig.scheduler.submit(request, SubmitMode::Wait(None)).await,
        "submit",
    );
    let slow = rig.detached(&tenant, "slow", json!({})).await;
    rig.wait_running(&tenant, &slow).await;
    expect_ok(rig.scheduler.cancel(&tenant, &slow).await, "cancel");
    let _ = rig
        .submit(
            &tenant,
            "no-such-function",
            json!({}),
            SubmitMode::Wait(None),
        )
        .await;

    // A job's end is visible (its waiters woken) a moment before its slot is counted
    // free, so let the running figure settle first.
    let until = Instant::now() + PATIENCE;
    let s = loop {
        let s = rig.scheduler.stats();
        if (s.running, s.queue_depth) == (0, 0) || Instant::now() > until {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(s.submitted, 6, "submitted");
    assert_eq!(s.succeeded, 3, "succeeded");
    assert_eq!(s.failed, 1, "failed");
    assert_eq!(s.timed_out, 1, "timed_out");
    assert_eq!(s.cancelled, 1, "cancelled");
    assert_eq!(
        s.rejected, 0,
        "an unknown function is not a rejection for a full queue"
    );
    assert_eq!(
        (s.running, s.queue_depth),
        (0, 0),
        "nothing left running or waiting"
    );
    assert_eq!((s.max_concurrency, s.queue_capacity), (4, 16));
    assert_eq!(s.latency.count, 6, "one latency sample per finished job");
    let per: HashMap<&str, (u64, u64)> = s
        .functions
        .iter()
        .map(|f| (f.function.as_str(), (f.calls, f.errors)))
        .collect();
    assert_eq!(per.get("echo"), Some(&(3, 0)), "echo calls and errors");
    assert_eq!(per.get("fail"), Some(&(1, 1)), "fail calls and errors");
    assert_eq!(
        per.get("sleep_ms"),
        Some(&(1, 1)),
        "a timeout counts as an error"
    );
    assert_eq!(
        per.get("slow"),
        Some(&(1, 1)),
        "a cancellation counts as an error"
    );
    assert_eq!(
        s.functions.first().map(|f| f.function.as_str()),
        Some("echo"),
        "busiest function first"
    );
    rig.stop().await;
}

/// Shutdown: new jobs are refused as `unavailable`; a job still running past the grace
/// period is recorded `interrupted`; a durable job that never started stays queued in
/// the store for the next start.
pub async fn scheduler_shutdown(harness: &SchedulerHarness) {
    let rig = harness.start(2, 16);
    let tenant = unique_tenant("shutdown");
    let mut running = Vec::new();
    for _ in 0..2 {
        let id = rig.detached(&tenant, "slow", json!({})).await;
        rig.wait_running(&tenant, &id).await;
        running.push(id);
    }
    // Several jobs wait, so that slots freed by the interrupted jobs meet them.
    let mut queued = Vec::new();
    for i in 0..6 {
        queued.push(rig.detached(&tenant, "slow", json!({"waits": i})).await);
    }

    expect_ok(
        rig.scheduler.shutdown(Duration::from_millis(100)).await,
        "shutdown",
    );
    expect_code(
        rig.submit(&tenant, "echo", json!(1), SubmitMode::Wait(None))
            .await,
        "unavailable",
        "submit after shutdown",
    );
    expect_code(
        rig.submit(&tenant, "echo", json!(1), SubmitMode::Detach)
            .await,
        "unavailable",
        "detached submit after shutdown",
    );

    for id in &running {
        let r =
            expect_ok(rig.store.get(id).await, "store get").expect("the running job is recorded");
        assert_error(
            &r,
            JobStatus::Interrupted,
            "interrupted",
            "a job running past the grace period",
        );
        let status = expect_ok(
            rig.scheduler.status(&tenant, id).await,
            "status after shutdown",
        );
        assert_eq!(
            status.status,
            JobStatus::Interrupted,
            "status after shutdown shows the interruption"
        );
    }
    for id in &queued {
        let q =
            expect_ok(rig.store.get(id).await, "store get").expect("the queued job is recorded");
        assert_eq!(
            (q.status, q.attempts, rig.executor.invocations(id)),
            (JobStatus::Queued, 0, 0),
            "a durable job that had not started when shutdown began must not start, and stays queued for the next start"
        );
    }
    let mut unfinished: Vec<JobId> = expect_ok(rig.store.unfinished().await, "unfinished")
        .into_iter()
        .map(|j| j.id)
        .collect();
    unfinished.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    queued.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(
        unfinished, queued,
        "only the never-started jobs are left unfinished"
    );
}

/// Recovery: a job a previous process left queued runs again to its end; one left
/// running becomes `interrupted` without running again; a queued job whose function
/// no longer resolves becomes `failed`; finished jobs are left alone.
pub async fn scheduler_recover(harness: &SchedulerHarness) {
    let store = (harness.new_store)();
    let tenant = unique_tenant("recover");
    let base = now_ms() - 60_000;
    let mut queued = job(&tenant, JobStatus::Queued, json!({"left": "queued"}));
    queued.created_ms = base;
    let mut running = job(&tenant, JobStatus::Running, json!({"left": "running"}));
    running.created_ms = base + 1;
    running.started_ms = Some(base + 2);
    running.attempts = 1;
    let mut orphan = job(&tenant, JobStatus::Queued, json!({}));
    orphan.function = FunctionRef::builtin("no-such-function");
    orphan.created_ms = base + 3;
    let mut done = job(&tenant, JobStatus::Succeeded, json!({}));
    done.output = Some(json!("kept"));
    done.finished_ms = Some(base + 5);
    for j in [&queued, &running, &orphan, &done] {
        expect_ok(store.put(j, Durability::Durable).await, "seeding the store");
    }

    let rig = harness.start_over(store, 4, 16);
    let report = expect_ok(rig.scheduler.recover().await, "recover");
    assert_eq!(
        (report.requeued, report.interrupted, report.failed),
        (1, 1, 1),
        "recover re-queues queued jobs, interrupts running ones, fails unroutable ones: {report:?}"
    );

    let q = rig.wait_terminal(&tenant, &queued.id).await;
    assert_eq!(
        q.status,
        JobStatus::Succeeded,
        "a recovered queued job runs to its end"
    );
    assert_eq!(q.output, Some(json!({"left": "queued"})));
    assert_eq!(q.attempts, 1);
    assert_eq!(
        rig.executor.invocations(&queued.id),
        1,
        "a recovered queued job runs once"
    );

    let r = expect_ok(
        rig.scheduler.status(&tenant, &running.id).await,
        "status of an interrupted job",
    );
    assert_error(
        &r,
        JobStatus::Interrupted,
        "interrupted",
        "a job left running",
    );
    assert_eq!(
        rig.executor.invocations(&running.id),
        0,
        "a job left running is not run again"
    );
    let o = expect_ok(
        rig.scheduler.status(&tenant, &orphan.id).await,
        "status of an unroutable job",
    );
    assert_error(
        &o,
        JobStatus::Failed,
        "not_found",
        "a queued job whose function is gone",
    );
    let d = expect_ok(
        rig.scheduler.status(&tenant, &done.id).await,
        "status of a finished job",
    );
    assert_eq!(d, done, "recover leaves finished jobs alone");

    rig.shut_down().await;
    let left = expect_ok(rig.store.unfinished().await, "unfinished");
    assert!(
        left.is_empty(),
        "after recovery and shutdown nothing is unfinished: {left:?}"
    );
    let r = rig.stored(&running.id).await;
    assert_eq!(
        r.status,
        JobStatus::Interrupted,
        "the store has the interruption"
    );
}

// ---------------------------------------------------------------------------
// Recent jobs of a function, unfinished builds, API keys
// ---------------------------------------------------------------------------

fn user_job(tenant: &TenantId, function_id: &str, version: Option<u32>, created_ms: u64) -> Job {
    let mut j = Job::new(
        tenant.clone(),
        FunctionRef::User {
            id: Arc::from(function_id),
            version,
        },
        Arc::new(json!({"at": created_ms})),
        30_000,
    );
    j.created_ms = created_ms;
    j
}

/// [`JobStore::recent_logs`]: the jobs of one user function (every version) of one
/// tenant, newest first, at most `limit`, each once with its latest state, buffered
/// puts included; other functions, built-ins and other tenants' jobs are left out;
/// logs and tracebacks come cut to their last [`LISTED_LOG_CHARS`] characters.
pub async fn job_store_recent_logs(store: &dyn JobStore) {
    let tenant = unique_tenant("recent");
    let other_tenant = unique_tenant("recent-other");
    let function_id = format!("fn_{}", unique("r").replace('-', ""));
    let base = now_ms() - 10_000;

    let mut mine = Vec::new();
    for (i, version) in [Some(1), Some(1), None, Some(2), Some(2)]
        .into_iter()
        .enumerate()
    {
        let j = user_job(&tenant, &function_id, version, base + i as u64 * 10);
        let durability = if i == 4 {
            Durability::Buffered
        } else {
            Durability::Durable
        };
        expect_ok(store.put(&j, durability).await, "put a user-function job");
        mine.push(j);
    }
    let noise = [
        user_job(&tenant, "fn_someotherfunction", Some(1), base + 100),
        user_job(&other_tenant, &function_id, Some(1), base + 200),
        job(&tenant, JobStatus::Succeeded, json!({})),
    ];
    for j in &noise {
        expect_ok(store.put(j, Durability::Durable).await, "put another job");
    }
    // The first job finishes: it is listed once, finished.
    let mut done = mine[0].clone();
    done.status = JobStatus::Succeeded;
    done.output = Some(json!("ok"));
    done.logs = Some("hello from the function\n".into());
    done.finished_ms = Some(base + 1);
    expect_ok(store.put(&done, Durability::Buffered).await, "finish a job");
    mine[0] = done;

    let got = expect_ok(store.recent_logs(&tenant, &function_id, 10).await, "recent");
    let want: Vec<&JobId> = mine.iter().rev().map(|j| &j.id).collect();
    let ids: Vec<&JobId> = got.iter().map(|j| &j.id).collect();
    assert_eq!(
        ids, want,
        "recent: the function's jobs, newest first, each once"
    );
    assert_eq!(
        got.last().map(|j| j.status),
        Some(JobStatus::Succeeded),
        "recent: a job's latest state"
    );
    assert_eq!(
        got.last().map(|j| j.logs.as_str()),
        Some("hello from the function\n"),
        "recent: jobs carry their logs"
    );

    let two = expect_ok(
        store.recent_logs(&tenant, &function_id, 2).await,
        "recent 2",
    );
    let ids: Vec<&JobId> = two.iter().map(|j| &j.id).collect();
    assert_eq!(ids, want[..2].to_vec(), "recent: limit keeps the newest");

    let theirs = expect_ok(
        store.recent_logs(&other_tenant, &function_id, 10).await,
        "recent other tenant",
    );
    assert_eq!(
        theirs.iter().map(|j| &j.id).collect::<Vec<_>>(),
        vec![&noise[1].id],
        "recent: another tenant sees only its own jobs"
    );
    assert!(
        expect_ok(
            store.recent_logs(&tenant, "fn_unknown", 10).await,
            "recent unknown"
        )
        .is_empty(),
        "recent: an unknown function has no jobs"
    );
    assert!(
        expect_ok(
            store.recent_logs(&tenant, &function_id, 0).await,
            "recent 0"
        )
        .is_empty(),
        "recent: limit 0 is empty"
    );
    assert_eq!(
        got.last().map(|j| (j.version, j.logs_truncated)),
        Some((Some(1), false)),
        "recent: the version run, short logs whole"
    );

    // Long logs and tracebacks are cut to their last characters (multi-byte ones too).
    let chatty_fn = format!("fn_{}", unique("l").replace('-', ""));
    let mut chatty = user_job(&tenant, &chatty_fn, Some(3), base);
    chatty.status = JobStatus::Failed;
    chatty.finished_ms = Some(base + 5);
    let long = format!("{}<the end>", "é".repeat(LISTED_LOG_CHARS * 2));
    chatty.logs = Some(long.clone());
    chatty.error = Some(ErrorInfo {
        code: "function_error".into(),
        message: "boom".into(),
        traceback: Some(long.clone()),
    });
    chatty.input = Arc::new(json!({"big": "x".repeat(100_000)}));
    expect_ok(
        store.put(&chatty, Durability::Durable).await,
        "put a chatty job",
    );
    for (what, durability) in [("stored", None), ("buffered", Some(Durability::Buffered))] {
        if let Some(d) = durability {
            // A buffered copy of the same record (ignored by the rank rule) must not
            // bring the whole log back either.
            expect_ok(store.put(&chatty, d).await, "put it again");
        }
        let got = expect_ok(
            store.recent_logs(&tenant, &chatty_fn, 5).await,
            "recent chatty",
        );
        assert_eq!(got.len(), 1, "recent ({what}): one job");
        let e = &got[0];
        let want_tail: String = long
            .chars()
            .skip(long.chars().count() - LISTED_LOG_CHARS)
            .collect();
        assert_eq!(
            e.logs.chars().count(),
            LISTED_LOG_CHARS,
            "recent ({what}): logs cut to LISTED_LOG_CHARS characters"
        );
        assert_eq!(
            e.logs, want_tail,
            "recent ({what}): the last characters are kept"
        );
        assert!(e.logs_truncated, "recent ({what}): a cut log says so");
        let err = e.error.as_ref().expect("the error is listed");
        assert_eq!(
            (err.code.as_str(), err.message.as_str()),
            ("function_error", "boom")
        );
        assert_eq!(
            err.traceback.as_deref(),
            Some(want_tail.as_str()),
            "recent ({what}): the traceback is cut too"
        );
        assert_eq!(
            (e.status, e.version, e.finished_ms),
            (JobStatus::Failed, Some(3), Some(base + 5))
        );
    }
}

/// [`JobStore::expire_finished`]: deletes finished jobs that finished before the
/// cutoff, at most `max` per call, and never a queued or running job however old.
pub async fn job_store_expire_finished(store: &dyn JobStore) {
    let tenant = unique_tenant("expire");
    // Timestamps in 1970, so no other check's jobs are old enough to be touched.
    let finished_at = |status: JobStatus, created: u64, finished: Option<u64>| {
        let mut j = job(&tenant, status, json!({}));
        j.created_ms = created;
        j.finished_ms = finished;
        j
    };
    let old: Vec<Job> = (0..3)
        .map(|i| finished_at(JobStatus::Succeeded, 1_000 + i, Some(2_000 + i)))
        .collect();
    let recent = finished_at(JobStatus::Failed, 1_000, Some(20_000));
    let queued = finished_at(JobStatus::Queued, 500, None);
    let running = finished_at(JobStatus::Running, 600, None);
    for j in old.iter().chain([&recent, &queued, &running]) {
        expect_ok(store.put(j, Durability::Durable).await, "put a job");
    }
    let cutoff = 10_000;
    assert_eq!(
        expect_ok(store.expire_finished(cutoff, 2).await, "expire 2"),
        2,
        "expire: at most `max` per call"
    );
    assert_eq!(
        expect_ok(store.expire_finished(cutoff, 100).await, "expire the rest"),
        1,
        "expire: the rest of the old finished jobs"
    );
    assert_eq!(
        expect_ok(store.expire_finished(cutoff, 100).await, "expire again"),
        0,
        "expire: nothing left to expire"
    );
    for j in &old {
        assert!(
            expect_ok(store.get(&j.id).await, "get").is_none(),
            "expire: an old finished job is gone"
        );
    }
    for (j, what) in [
        (&recent, "a job that finished after the cutoff"),
        (&queued, "an old queued job"),
        (&running, "an old running job"),
    ] {
        assert!(
            expect_ok(store.get(&j.id).await, "get").is_some(),
            "expire: {what} is kept"
        );
    }
}

/// [`Registry::resolve_version`]: one version by id or name (the id wins), pinned or
/// the newest ready one (else the newest), never with its build log, scoped to the
/// tenant.
pub async fn registry_resolve_version(registry: &dyn Registry) {
    let tenant = unique_tenant("resolve");
    let other = unique_tenant("resolve-other");
    let name = unique("fn");
    let v1 = create(registry, &tenant, &name, "d1", "create v1").await;
    let id = v1.function_id.clone();
    expect_ok(
        registry
            .append_build_log(&id, 1, &"pip says hi\n".repeat(1000))
            .await,
        "log v1",
    );
    let art = Artifact::Directory {
        path: "/artifacts/v1".into(),
        digest: None,
    };
    expect_ok(
        registry
            .finish_build(&id, 1, BuildStatus::Ready, Some(art.clone()))
            .await,
        "finish v1",
    );
    create(registry, &tenant, &name, "d2", "create v2").await;
    expect_ok(
        registry.append_build_log(&id, 2, "building v2\n").await,
        "log v2",
    );

    for key in [id.as_str(), name.as_str()] {
        let v = expect_ok(
            registry.resolve_version(&tenant, key, None).await,
            "resolve",
        );
        assert_eq!(
            (v.function_id.as_str(), v.version, v.status),
            (id.as_str(), 1, BuildStatus::Ready),
            "resolve '{key}': the newest ready version"
        );
        assert_eq!(
            v.artifact.as_ref(),
            Some(&art),
            "resolve: with its artifact"
        );
        assert_eq!((v.name.as_str(), &v.tenant), (name.as_str(), &tenant));
        assert_eq!(v.limits.timeout_ms, 1_234, "resolve: with its limits");
        assert_eq!(
            v.env.get("GREETING").map(String::as_str),
            Some("héllo wörld")
        );
        assert!(v.build_log.is_empty(), "resolve: never the build log");
    }
    let v2 = expect_ok(
        registry.resolve_version(&tenant, &id, Some(2)).await,
        "resolve v2",
    );
    assert_eq!(
        (v2.version, v2.status, v2.build_log.as_str()),
        (2, BuildStatus::Building, ""),
        "resolve: a pinned version whatever its status, without its log"
    );
    expect_code(
        registry.resolve_version(&tenant, &id, Some(9)).await,
        "not_found",
        "resolve a version that does not exist",
    );
    expect_code(
        registry.resolve_version(&other, &id, None).await,
        "not_found",
        "resolve another tenant's function by id",
    );
    expect_code(
        registry.resolve_version(&other, &name, None).await,
        "not_found",
        "resolve another tenant's function by name",
    );
    expect_code(
        registry
            .resolve_version(&tenant, "fn_nothing_here", None)
            .await,
        "not_found",
        "resolve an unknown function",
    );

    // Nothing ready: the newest version, so the caller can say why.
    let fresh = create(registry, &tenant, &unique("fresh"), "d", "create fresh").await;
    let got = expect_ok(
        registry
            .resolve_version(&tenant, &fresh.function_id, None)
            .await,
        "resolve fresh",
    );
    assert_eq!((got.version, got.status), (1, BuildStatus::Building));
    expect_ok(
        registry
            .finish_build(&fresh.function_id, 1, BuildStatus::Failed, None)
            .await,
        "fail fresh",
    );
    let got = expect_ok(
        registry
            .resolve_version(&tenant, &fresh.function_id, None)
            .await,
        "resolve failed",
    );
    assert_eq!((got.version, got.status), (1, BuildStatus::Failed));

    // A function named like another function's id: the id wins.
    create(
        registry,
        &tenant,
        &id,
        "d",
        "create a function named like an id",
    )
    .await;
    let by_id = expect_ok(
        registry.resolve_version(&tenant, &id, None).await,
        "resolve id",
    );
    assert_eq!(
        by_id.function_id, id,
        "resolve: an id is looked up before a name"
    );
}

/// [`Registry::unfinished_builds`]: every version still `building`, and none that
/// finished.
pub async fn registry_unfinished_builds(registry: &dyn Registry) {
    let tenant = unique_tenant("unfinished");
    let a1 = create(registry, &tenant, "alpha", "a1", "create_version").await;
    let a2 = create(registry, &tenant, "alpha", "a2", "create_version").await;
    let b1 = create(registry, &tenant, "beta", "b1", "create_version").await;
    expect_ok(
        registry
            .finish_build(
                &a1.function_id,
                1,
                BuildStatus::Ready,
                Some(Artifact::Directory {
                    path: "/artifacts/a/v1".into(),
                    digest: None,
                }),
            )
            .await,
        "finish_build",
    );
    let ours = |all: Vec<crate::registry::FunctionVersion>| -> Vec<(String, u32)> {
        all.into_iter()
            .filter(|v| v.tenant == tenant)
            .map(|v| (v.function_id, v.version))
            .collect()
    };
    let mut got = ours(expect_ok(
        registry.unfinished_builds().await,
        "unfinished_builds",
    ));
    got.sort();
    let mut want = vec![(a2.function_id.clone(), 2), (b1.function_id.clone(), 1)];
    want.sort();
    assert_eq!(got, want, "unfinished_builds: the versions still building");

    expect_ok(
        registry
            .finish_build(&a2.function_id, 2, BuildStatus::Failed, None)
            .await,
        "finish_build",
    );
    expect_ok(
        registry
            .finish_build(&b1.function_id, 1, BuildStatus::Failed, None)
            .await,
        "finish_build",
    );
    assert!(
        ours(expect_ok(
            registry.unfinished_builds().await,
            "unfinished_builds"
        ))
        .is_empty(),
        "unfinished_builds: finished builds are not listed"
    );
}

/// [`KeyStore`](crate::KeyStore): a created key resolves to its tenant until revoked;
/// secrets have the documented shape and stay out of records and `Debug`; listing and
/// revoking are scoped to the tenant (another tenant's key is `not_found`); unknown and
/// malformed secrets resolve to nothing.
pub async fn key_store_suite(keys: &dyn crate::keys::KeyStore) {
    use crate::keys::looks_like_secret;
    let alice = unique_tenant("alice");
    let bob = unique_tenant("bob");
    let (info, secret) = expect_ok(keys.create(&alice, "laptop").await, "create");
    let (info2, secret2) = expect_ok(keys.create(&alice, "").await, "create a second key");
    assert!(
        looks_like_secret(secret.expose()),
        "create: a secret is sopm_ + 64 hex digits"
    );
    assert_ne!(secret, secret2, "create: every secret is new");
    assert_ne!(info.id, info2.id, "create: every key has its own id");
    assert_eq!(info.tenant, alice);
    assert_eq!(info.label, "laptop");
    assert!(info.revoked_ms.is_none());
    let shown = format!("{info:?} {secret:?}");
    assert!(
        !shown.contains(&secret.expose()[5..]),
        "create: the secret is not in Debug output: {shown}"
    );
    expect_code(
        keys.create(&alice, "bad\nlabel").await,
        "invalid_input",
        "create with a control character",
    );

    assert_eq!(
        expect_ok(keys.resolve(secret.expose()).await, "resolve"),
        Some(alice.clone()),
        "resolve: a new key names its tenant"
    );
    assert_eq!(
        expect_ok(keys.resolve(secret2.expose()).await, "resolve"),
        Some(alice.clone())
    );
    for bad in [
        "",
        "sopm_",
        "Bearer x",
        &secret.expose()[..secret.expose().len() - 1],
        &format!("sopm_{}", "0".repeat(64)),
        &secret.expose().to_uppercase(),
    ] {
        assert_eq!(
            expect_ok(keys.resolve(bad).await, "resolve unknown"),
            None,
            "resolve: an unknown or malformed secret {bad:?} names nobody"
        );
    }

    let listed = expect_ok(keys.list(&alice).await, "list");
    assert_eq!(
        listed.iter().map(|k| &k.id).collect::<Vec<_>>(),
        vec![&info.id, &info2.id],
        "list: the tenant's keys, oldest first"
    );
    assert!(
        expect_ok(keys.list(&bob).await, "list").is_empty(),
        "list: scoped to the tenant"
    );

    expect_code(
        keys.revoke(&bob, &info.id).await,
        "not_found",
        "revoke another tenant's key",
    );
    expect_code(
        keys.revoke(&alice, "key_nope").await,
        "not_found",
        "revoke an unknown key",
    );
    assert_eq!(
        expect_ok(keys.resolve(secret.expose()).await, "resolve"),
        Some(alice.clone()),
        "a refused revoke changes nothing"
    );
    let revoked = expect_ok(keys.revoke(&alice, &info.id).await, "revoke");
    assert!(revoked.revoked_ms.is_some(), "revoke: the record says when");
    assert_eq!(
        expect_ok(keys.resolve(secret.expose()).await, "resolve"),
        None,
        "resolve: a revoked key names nobody"
    );
    assert_eq!(
        expect_ok(keys.resolve(secret2.expose()).await, "resolve"),
        Some(alice.clone()),
        "revoke: other keys keep working"
    );
    let again = expect_ok(keys.revoke(&alice, &info.id).await, "revoke again");
    assert_eq!(
        again.revoked_ms, revoked.revoked_ms,
        "revoke: a second revoke changes nothing"
    );
    let listed = expect_ok(keys.list(&alice).await, "list");
    assert!(
        listed
            .iter()
            .any(|k| k.id == info.id && k.revoked_ms.is_some()),
        "list: revoked keys are listed as revoked"
    );
}
