//! `Platform::upload` and its background builds: build logs reach the registry in
//! batches (not one write per line) yet show while the build runs, uploads are
//! checked before anything is stored, builds run a few at a time, and recovery fails
//! builds a stopped process left running.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sopm_core::{
    Artifact, BuildLog, BuildStatus, Builder, FunctionRecord, FunctionVersion, Limits, NewVersion,
    Platform, Registry, Result, Runtime, Source, TenantId, UploadSpec,
};

mod support;
use support::CountingRegistry;
use tokio::sync::Semaphore;

/// Prints `lines` lines, then waits for the gate if the source has a `WAIT` file.
#[derive(Debug)]
struct ChattyBuilder {
    lines: usize,
    gate: Semaphore,
    running: AtomicUsize,
    most_running: AtomicUsize,
}

#[async_trait]
impl Builder for ChattyBuilder {
    fn name(&self) -> &str {
        "chatty"
    }

    async fn build(
        &self,
        version: &FunctionVersion,
        source: &Source,
        log: &dyn BuildLog,
    ) -> Result<Artifact> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        for i in 0..self.lines {
            log.append(&format!("Collecting package-{i}\n")).await;
        }
        if source.files.contains_key("WAIT") {
            self.gate.acquire().await.expect("gate").forget();
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(Artifact::Directory {
            path: format!("/artifacts/{}/v{}", version.function_id, version.version),
            digest: None,
        })
    }
}

impl ChattyBuilder {
    fn new(lines: usize) -> Arc<Self> {
        Arc::new(ChattyBuilder {
            lines,
            gate: Semaphore::new(0),
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
        })
    }
}

fn spec(name: &str) -> UploadSpec {
    UploadSpec {
        name: name.into(),
        runtime: Runtime::Python,
        handler: "main.handle".into(),
        limits: Limits::default(),
        env: BTreeMap::new(),
        executor: None,
    }
}

fn source(files: &[&str]) -> Source {
    let mut s = Source::default();
    for f in files {
        s.files.insert(f.to_string(), b"x".to_vec());
    }
    s
}

fn platform(lines: usize) -> (Platform, Arc<CountingRegistry>, Arc<ChattyBuilder>) {
    let registry = Arc::new(CountingRegistry::default());
    let builder = ChattyBuilder::new(lines);
    let p = Platform::builder()
        .with_registry(registry.clone())
        .with_builder(Runtime::Python, builder.clone())
        .build()
        .unwrap();
    (p, registry, builder)
}

async fn wait_for(p: &Platform, t: &TenantId, id: &str, status: BuildStatus) -> FunctionRecord {
    for _ in 0..1000 {
        let rec = p.function(t, id).await.unwrap();
        if rec.versions.last().unwrap().status == status {
            return rec;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{id} never became {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_build_costs_few_log_writes_and_loses_no_line() {
    let (p, registry, _) = platform(5_000);
    let t = TenantId::default();
    let v = p
        .upload(&t, spec("chatty"), source(&["main.py"]))
        .await
        .unwrap();
    assert_eq!(v.status, BuildStatus::Building);
    let rec = wait_for(&p, &t, &v.function_id, BuildStatus::Ready).await;
    let log = &rec.versions[0].build_log;
    assert_eq!(log.lines().count(), 5_000, "every line arrives");
    assert!(
        log.starts_with("Collecting package-0\n") && log.ends_with("Collecting package-4999\n")
    );
    let writes = registry.log_writes();
    assert!(writes <= 20, "{writes} writes for 5,000 lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_shows_while_the_build_runs() {
    let (p, _, builder) = platform(3);
    let t = TenantId::default();
    let v = p
        .upload(&t, spec("slow"), source(&["main.py", "WAIT"]))
        .await
        .unwrap();
    let mut seen = false;
    for _ in 0..400 {
        let rec = p.function(&t, &v.function_id).await.unwrap();
        assert_eq!(rec.versions[0].status, BuildStatus::Building);
        if rec.versions[0].build_log.contains("Collecting package-2") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(seen, "a quiet build's log is flushed by the timer");
    builder.gate.add_permits(1);
    wait_for(&p, &t, &v.function_id, BuildStatus::Ready).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_run_two_at_a_time_by_default() {
    let (p, _, builder) = platform(0);
    let t = TenantId::default();
    let mut ids = Vec::new();
    for i in 0..5 {
        let v = p
            .upload(&t, spec(&format!("f{i}")), source(&["WAIT"]))
            .await
            .unwrap();
        ids.push(v.function_id);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(builder.running.load(Ordering::SeqCst), 2);
    builder.gate.add_permits(5);
    let mut waited = 0;
    for id in &ids {
        let rec = wait_for(&p, &t, id, BuildStatus::Ready).await;
        if rec.versions[0]
            .build_log
            .contains("waiting for a build slot")
        {
            waited += 1;
        }
    }
    assert_eq!(waited, 3, "the builds past the first two say they wait");
    assert_eq!(builder.most_running.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn uploads_are_checked_before_anything_is_stored() {
    let (p, registry, _) = platform(0);
    let t = TenantId::default();
    let mut cases: Vec<(UploadSpec, Source, &str)> = Vec::new();
    let mut s = spec("ok");
    s.runtime = Runtime::Builtin;
    cases.push((s, source(&["a"]), "invalid_input"));
    cases.push((spec("bad name!"), source(&["a"]), "invalid_input"));
    let mut s = spec("ok");
    s.handler = "  ".into();
    cases.push((s, source(&["a"]), "invalid_input"));
    let mut s = spec("ok");
    s.limits.timeout_ms = 10_000_000;
    cases.push((s, source(&["a"]), "invalid_input"));
    let mut s = spec("ok");
    s.limits.network = true;
    cases.push((s, source(&["a"]), "invalid_input"));
    let mut s = spec("ok");
    s.env.insert("NOT-A-NAME".into(), "x".into());
    cases.push((s, source(&["a"]), "invalid_input"));
    cases.push((spec("ok"), Source::default(), "invalid_input"));
    let mut s = spec("ok");
    s.runtime = Runtime::Node;
    cases.push((s, source(&["a"]), "unavailable"));
    for (s, src, code) in cases {
        let e = p.upload(&t, s.clone(), src).await.unwrap_err();
        assert_eq!(e.code(), code, "{s:?}: {e}");
    }
    assert!(registry.list(&t).await.unwrap().is_empty());

    // An operator who allows network access lets functions ask for it.
    let mut caps = sopm_core::default_limit_caps();
    caps.network = true;
    let p2 = Platform::builder()
        .with_builder(Runtime::Python, ChattyBuilder::new(0))
        .with_limit_caps(caps)
        .build()
        .unwrap();
    let mut s = spec("net");
    s.limits.network = true;
    p2.upload(&t, s, source(&["a"])).await.unwrap();
}

#[tokio::test]
async fn recover_fails_the_builds_a_stopped_process_left() {
    let (p, registry, _) = platform(0);
    let t = TenantId::default();
    let v = registry
        .create_version(NewVersion {
            tenant: t.clone(),
            name: "left".into(),
            runtime: Runtime::Python,
            handler: "main.handle".into(),
            limits: Limits::default(),
            env: BTreeMap::new(),
            source_digest: "d".into(),
            executor: None,
        })
        .await
        .unwrap();
    p.recover().await.unwrap();
    let rec = p.function(&t, "left").await.unwrap();
    assert_eq!(rec.versions[0].status, BuildStatus::Failed);
    assert!(rec.versions[0]
        .build_log
        .contains("stopped during this build"));
    assert_eq!(rec.id, v.function_id);
    assert_eq!(p.recover_builds().await.unwrap(), 0);
}
