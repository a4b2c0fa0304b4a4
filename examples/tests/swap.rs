//! Stores and executors are swapped through the traits: the same platform code runs
//! over memory or SQLite stores, and a custom executor replaces a runtime's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use sopm_backends::sqlite::SqliteConfig;
use sopm_core::{
    Artifact, BuildStatus, Executor, FunctionRef, Invocation, JobStore, Limits, MemoryJobStore,
    MemoryRegistry, NewVersion, Output, Platform, Registry, Result, Runtime, TenantId,
};
use sopm_functions::BuiltinExecutor;

#[derive(Debug, Default)]
struct CountingExecutor {
    calls: AtomicU64,
}

#[async_trait]
impl Executor for CountingExecutor {
    fn name(&self) -> &str {
        "counting"
    }
    async fn invoke(&self, inv: Invocation) -> Result<Output> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(json!({"call": n, "input": *inv.input}).into())
    }
}

async fn exercise(registry: Arc<dyn Registry>, store: Arc<dyn JobStore>) {
    let counting = Arc::new(CountingExecutor::default());
    let platform = Platform::builder()
        .with_builtins(BuiltinExecutor::shared())
        .with_registry(registry)
        .with_job_store(store.clone())
        .with_executor(Runtime::Shell, counting.clone())
        .build()
        .unwrap();
    let t = TenantId::new("swap").unwrap();

    let out = platform
        .execute(
            &t,
            FunctionRef::builtin("math.gcd"),
            json!({"a": 12, "b": 18}),
        )
        .await
        .unwrap();
    assert_eq!(out.value, json!(6));

    let v = platform
        .registry()
        .create_version(NewVersion {
            tenant: t.clone(),
            name: "counter".into(),
            runtime: Runtime::Shell,
            handler: "run.sh".into(),
            limits: Limits::default(),
            env: BTreeMap::new(),
            source_digest: "d".into(),
            executor: None,
        })
        .await
        .unwrap();
    platform
        .registry()
        .finish_build(
            &v.function_id,
            1,
            BuildStatus::Ready,
            Some(Artifact::Directory {
                path: "/x".into(),
                digest: None,
            }),
        )
        .await
        .unwrap();
    let f = FunctionRef::User {
        id: v.function_id.clone().into(),
        version: None,
    };
    for expected in 1..=3u64 {
        let out = platform
            .execute(&t, f.clone(), json!({"k": expected}))
            .await
            .unwrap();
        assert_eq!(out.value["call"], json!(expected));
    }
    assert_eq!(counting.calls.load(Ordering::SeqCst), 3);
    // Another tenant cannot run it.
    let other = TenantId::new("other").unwrap();
    let err = platform.execute(&other, f, json!({})).await.unwrap_err();
    assert_eq!(err.code(), "not_found");
    platform
        .shutdown(std::time::Duration::from_secs(1))
        .await
        .unwrap();
    store.flush().await.unwrap();
}

#[tokio::test]
async fn memory_stores() {
    exercise(
        Arc::new(MemoryRegistry::new()),
        Arc::new(MemoryJobStore::new()),
    )
    .await;
}

#[tokio::test]
async fn sqlite_stores() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteConfig::new(dir.path().join("swap.db"))
            .open()
            .unwrap(),
    );
    exercise(store.clone(), store).await;
}
