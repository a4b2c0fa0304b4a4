//! The warm pool's per-tenant cap and per-version retirement, for real under bubblewrap
//! (the process executor): a tenant whose every instance is busy waits, then gets
//! `quota_exceeded` (`warm_instances`), while another tenant's call runs; retiring one
//! pruned version stops its instances and keeps the others'.
#![cfg(feature = "process")]

#[path = "process_support.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sopm_backends::sandbox::RunnerKind;
use sopm_core::{Error, Executor, TenantId};
use support::*;

const PY_TOOLS: &[&str] = &["bwrap", "prlimit", "python3"];

const SLEEPY: &str =
    "import time\ndef handle(event, context):\n    time.sleep(event.get('s', 0))\n    return event.get('s', 0)\n";

/// A python function owned by `tenant`.
fn owned(tenant: &str, source: &str) -> TestFunction {
    let mut f = python(source);
    let mut v = (*f.version).clone();
    v.tenant = TenantId::new(tenant).unwrap();
    f.version = Arc::new(v);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_warm_cap_waits_then_quota_exceeded_while_another_runs() {
    if !integration_ready("per_tenant_cap", PY_TOOLS) {
        return;
    }
    let mut config = config(&[RunnerKind::Python]);
    config.pool_mut().max_per_tenant = 1;
    let exec = config.build::<ProcessLauncher>().unwrap();
    let a1 = owned("alice", SLEEPY);
    let a2 = owned("alice", SLEEPY);
    let b1 = owned("bob", SLEEPY);
    call(&exec, &a1, json!({})).await.unwrap();
    let slow = call_within(&exec, &a1, json!({"s": 1.5}), Duration::from_secs(10));
    let others = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let alice = call_within(&exec, &a2, json!({}), Duration::from_millis(400)).await;
        let bob = call_within(&exec, &b1, json!({}), Duration::from_secs(10)).await;
        (alice, bob)
    };
    let (slow, (alice, bob)) = tokio::join!(slow, others);
    assert_eq!(slow.unwrap().value, json!(1.5));
    assert_eq!(
        bob.expect("bob is not held back by alice's cap").value,
        json!(0)
    );
    match alice.unwrap_err() {
        Error::QuotaExceeded {
            quota, retry_after, ..
        } => {
            assert_eq!(quota, "warm_instances");
            assert!(retry_after.is_some());
        }
        e => panic!("expected quota_exceeded, got {e:?}"),
    }
    // Once alice's instance is idle, her other function takes its place.
    assert_eq!(call(&exec, &a2, json!({})).await.unwrap().value, json!(0));
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_version_stops_only_that_versions_instances() {
    if !integration_ready("retire_version", PY_TOOLS) {
        return;
    }
    let exec = executor(&[RunnerKind::Python]);
    let v1 = python(HELLO_PY);
    let mut v2 = python(HELLO_PY);
    let mut second = (*v1.version).clone();
    second.version = 2;
    second.artifact = v2.version.artifact.clone();
    v2.version = Arc::new(second);
    exec.prepare(&v1.version).await.unwrap();
    exec.prepare(&v2.version).await.unwrap();
    let id = v1.version.function_id.clone();
    let pools = |exec: &sopm_backends::process::ProcessExecutor| {
        exec.pool_stats()
            .into_iter()
            .filter(|s| s.pool.contains(&id) && s.idle + s.busy > 0)
            .map(|s| s.pool)
            .collect::<Vec<_>>()
    };
    assert_eq!(pools(&exec).len(), 2, "{:?}", pools(&exec));
    exec.retire_version(&id, 1).await.unwrap();
    let left = pools(&exec);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with("@2"), "{left:?}");
    call(&exec, &v2, json!({})).await.unwrap();
    exec.shutdown().await;
}
