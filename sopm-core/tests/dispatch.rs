//! Resolve, then dispatch: a route names its backend; a gateway-style platform (remote
//! backends only, no executor, no builder) accepts an upload, hands its build to a
//! scheduler that queues builds, resolves its jobs and tells the scheduler about a
//! deletion; the `Dispatcher` refuses a backend its node lacks and fetches an artifact
//! that has a digest once; builds put their directory in the artifact store.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{json, Value};
use sopm_core::policy::Isolation;
use sopm_core::{
    Artifact, ArtifactStore, BuildLog, BuildRequest, BuildStatus, Builder, Digest, Dispatcher,
    Error, Example, Executor, FunctionInfo, FunctionRef, FunctionVersion, Invocation, Job, JobId,
    JobRequest, Limits, Output, Platform, RecoveryReport, Result, Route, Router, Runtime,
    Scheduler, SchedulerParts, SchedulerStats, Source, SubmitMode, Submitted, Target, TenantId,
    UploadSpec, BUILTIN_BACKEND,
};

/// A scheduler that queues builds: it keeps what it was handed and routes jobs
/// without running them.
#[derive(Debug)]
struct QueueingScheduler {
    router: Arc<dyn Router>,
    builds: Mutex<Vec<BuildRequest>>,
    routes: Mutex<Vec<Route>>,
    retired: Mutex<Vec<(String, Option<u32>)>>,
}

#[async_trait]
impl Scheduler for QueueingScheduler {
    async fn submit(&self, request: JobRequest, _mode: SubmitMode) -> Result<Submitted> {
        let route = self
            .router
            .route(&request.tenant, &request.function)
            .await?;
        self.routes.lock().push(route);
        Ok(Submitted::Pending {
            id: JobId::random(),
            status: sopm_core::JobStatus::Queued,
        })
    }
    async fn status(&self, _: &TenantId, id: &JobId) -> Result<Job> {
        Err(Error::not_found(format!("no job with id '{id}'")))
    }
    async fn cancel(&self, _: &TenantId, id: &JobId) -> Result<Job> {
        Err(Error::not_found(format!("no job with id '{id}'")))
    }
    fn stats(&self) -> SchedulerStats {
        SchedulerStats::default()
    }
    async fn recover(&self) -> Result<RecoveryReport> {
        Ok(RecoveryReport::default())
    }
    async fn shutdown(&self, _: Duration) -> Result<()> {
        Ok(())
    }
    fn queues_builds(&self) -> bool {
        true
    }
    async fn submit_build(&self, request: BuildRequest) -> Result<()> {
        self.builds.lock().push(request);
        Ok(())
    }
    async fn retired(&self, function_id: &str, version: Option<u32>) -> Result<()> {
        self.retired.lock().push((function_id.to_string(), version));
        Ok(())
    }
}

/// Records every invocation's artifact path, and what it was asked to warm and retire.
#[derive(Debug, Default)]
struct Recorder {
    name: &'static str,
    catalog: Vec<FunctionInfo>,
    ran: Mutex<Vec<Option<String>>>,
    prepared: Mutex<Vec<Option<String>>>,
    retired: Mutex<Vec<String>>,
}

fn path_of(v: &FunctionVersion) -> Option<String> {
    match &v.artifact {
        Some(Artifact::Directory { path, .. }) => Some(path.clone()),
        _ => None,
    }
}

#[async_trait]
impl Executor for Recorder {
    fn name(&self) -> &str {
        self.name
    }
    async fn invoke(&self, invocation: Invocation) -> Result<Output> {
        let path = match &invocation.target {
            Target::User(v) => path_of(v),
            Target::Builtin(_) => None,
        };
        self.ran.lock().push(path.clone());
        Ok(json!({"ran_in": self.name, "path": path}).into())
    }
    fn catalog(&self) -> &[FunctionInfo] {
        &self.catalog
    }
    async fn prepare(&self, version: &FunctionVersion) -> Result<()> {
        self.prepared.lock().push(path_of(version));
        Ok(())
    }
    async fn retire(&self, function_id: &str) -> Result<()> {
        self.retired.lock().push(function_id.to_string());
        Ok(())
    }
}

fn builtins() -> Arc<Recorder> {
    Arc::new(Recorder {
        name: "builtin",
        catalog: vec![FunctionInfo {
            name: "echo".into(),
            category: "util".into(),
            description: "Answers.".into(),
            input_schema: json!({}),
            example: Example {
                input: json!({}),
                output: json!({}),
            },
            deterministic: true,
        }],
        ..Recorder::default()
    })
}

/// Where [`CountingStore`] "fetches" the artifact named `d` to: a directory of this
/// test process under the system's temp dir, made on fetch.
fn cache_dir(d: &Digest) -> String {
    std::env::temp_dir()
        .join(format!(
            "sopm-dispatch-test-{}-{}",
            std::process::id(),
            d.hex()
        ))
        .to_string_lossy()
        .into_owned()
}

/// A store that counts calls: `put_directory` keeps the directory where it is and
/// names it by the digest of its path; `fetch` answers a copy at [`cache_dir`].
#[derive(Debug, Default)]
struct CountingStore {
    puts: AtomicUsize,
    fetches: AtomicUsize,
    removed: Mutex<Vec<Artifact>>,
}

#[async_trait]
impl ArtifactStore for CountingStore {
    fn name(&self) -> &str {
        "counting"
    }
    async fn put_directory(&self, dir: &Path) -> Result<Artifact> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        let path = dir.to_str().unwrap().to_string();
        Ok(Artifact::Directory {
            digest: Some(Digest::of(path.as_bytes())),
            path,
        })
    }
    async fn fetch(&self, artifact: &Artifact) -> Result<Artifact> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        // Let a concurrent first call reach the store too, if it could.
        tokio::task::yield_now().await;
        match artifact {
            Artifact::Directory {
                digest: Some(d), ..
            } => {
                let path = cache_dir(d);
                std::fs::create_dir_all(&path).unwrap();
                Ok(Artifact::Directory {
                    path,
                    digest: Some(d.clone()),
                })
            }
            other => Ok(other.clone()),
        }
    }
    async fn remove(&self, artifact: &Artifact) -> Result<()> {
        self.removed.lock().push(artifact.clone());
        Ok(())
    }
}

/// Builds `/built/<id>/v<n>` and records what it removed.
#[derive(Debug, Default)]
struct DirBuilder {
    removed: Mutex<Vec<Artifact>>,
}

#[async_trait]
impl Builder for DirBuilder {
    fn name(&self) -> &str {
        "dir"
    }
    async fn build(&self, v: &FunctionVersion, _: &Source, log: &dyn BuildLog) -> Result<Artifact> {
        log.append("built\n").await;
        Ok(Artifact::Directory {
            path: format!("/built/{}/v{}", v.function_id, v.version),
            digest: None,
        })
    }
    async fn remove(&self, artifact: &Artifact) -> Result<()> {
        self.removed.lock().push(artifact.clone());
        Ok(())
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

fn source() -> Source {
    let mut s = Source::default();
    s.files
        .insert("main.py".into(), b"def handle(x):\n  return x\n".to_vec());
    s.files.insert("bin/blob".into(), vec![0, 159, 255, 10]);
    s
}

fn invocation(target: Target) -> Invocation {
    Invocation {
        job_id: JobId::random(),
        tenant: TenantId::default(),
        target,
        input: Arc::new(Value::Null),
        deadline: Instant::now() + Duration::from_secs(10),
    }
}

/// A gateway: one remote backend, no executor of user functions, no builder; its
/// scheduler queues builds and jobs.
fn gateway() -> (Platform, Arc<QueueingScheduler>) {
    let made = Arc::new(Mutex::new(None));
    let keep = made.clone();
    let p = Platform::builder()
        .with_remote_backend("gvisor", Isolation::UserSpaceKernel)
        .with_runtime_executor(Runtime::Python, "gvisor")
        .with_scheduler(move |parts: SchedulerParts| {
            assert!(!parts.dispatcher.has("gvisor"), "a gateway runs no gvisor");
            let s = Arc::new(QueueingScheduler {
                router: parts.router,
                builds: Mutex::new(Vec::new()),
                routes: Mutex::new(Vec::new()),
                retired: Mutex::new(Vec::new()),
            });
            *keep.lock() = Some(s.clone());
            s
        })
        .build()
        .unwrap();
    let s = made
        .lock()
        .clone()
        .expect("the platform made its scheduler");
    (p, s)
}

#[tokio::test]
async fn a_gateway_accepts_an_upload_hands_its_build_over_and_routes_by_backend_name() {
    let (p, s) = gateway();
    let t = TenantId::default();
    assert!(p.has_executor("gvisor"));
    assert_eq!(p.executor_for(Runtime::Python), Some("gvisor"));

    let v = p.upload(&t, spec("f"), source()).await.unwrap();
    assert_eq!(v.status, BuildStatus::Building);
    assert_eq!(v.executor.as_deref(), Some("gvisor"));
    let handed = s.builds.lock().clone();
    assert_eq!(handed.len(), 1, "the build went to the scheduler");
    assert_eq!(handed[0].version, v);
    assert_eq!(handed[0].source, source());
    // It is still building: nothing in this process builds it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let rec = p.function(&t, "f").await.unwrap();
    assert_eq!(rec.versions[0].status, BuildStatus::Building);

    // A worker finishes it (through the shared registry).
    let digest = Digest::of(b"the artifact");
    p.registry()
        .finish_build(
            &v.function_id,
            v.version,
            BuildStatus::Ready,
            Some(Artifact::Directory {
                path: "/on/the/worker".into(),
                digest: Some(digest.clone()),
            }),
        )
        .await
        .unwrap();
    let user = FunctionRef::User {
        id: Arc::from(v.function_id.as_str()),
        version: None,
    };
    let answer = p
        .submit(
            JobRequest::new(t.clone(), user, json!(1)),
            SubmitMode::Detach,
        )
        .await
        .unwrap();
    assert!(matches!(answer, Submitted::Pending { .. }));
    let route = s.routes.lock().pop().unwrap();
    assert_eq!(&*route.backend, "gvisor");
    assert_eq!(
        route.function,
        FunctionRef::User {
            id: Arc::from(v.function_id.as_str()),
            version: Some(1)
        }
    );
    let Target::User(resolved) = &route.target else {
        panic!("a user target");
    };
    assert_eq!(
        resolved.artifact,
        Some(Artifact::Directory {
            path: "/on/the/worker".into(),
            digest: Some(digest)
        })
    );

    // Deleting retires here and tells the scheduler, which tells the other nodes.
    p.delete_function(&t, "f").await.unwrap();
    assert_eq!(
        s.retired.lock().clone(),
        vec![(v.function_id.clone(), None)]
    );
}

#[tokio::test]
async fn a_queued_build_that_cannot_be_handed_over_fails_its_version() {
    #[derive(Debug)]
    struct Refusing(QueueingScheduler);
    #[async_trait]
    impl Scheduler for Refusing {
        async fn submit(&self, r: JobRequest, m: SubmitMode) -> Result<Submitted> {
            self.0.submit(r, m).await
        }
        async fn status(&self, t: &TenantId, id: &JobId) -> Result<Job> {
            self.0.status(t, id).await
        }
        async fn cancel(&self, t: &TenantId, id: &JobId) -> Result<Job> {
            self.0.cancel(t, id).await
        }
        fn stats(&self) -> SchedulerStats {
            self.0.stats()
        }
        async fn recover(&self) -> Result<RecoveryReport> {
            self.0.recover().await
        }
        async fn shutdown(&self, g: Duration) -> Result<()> {
            self.0.shutdown(g).await
        }
        fn queues_builds(&self) -> bool {
            true
        }
        async fn submit_build(&self, _: BuildRequest) -> Result<()> {
            Err(Error::Unavailable("the queue is unreachable".into()))
        }
    }
    let p = Platform::builder()
        .with_remote_backend("process", Isolation::HostKernel)
        .with_runtime_executor(Runtime::Python, "process")
        .with_scheduler(|parts| {
            Arc::new(Refusing(QueueingScheduler {
                router: parts.router,
                builds: Mutex::new(Vec::new()),
                routes: Mutex::new(Vec::new()),
                retired: Mutex::new(Vec::new()),
            }))
        })
        .build()
        .unwrap();
    let t = TenantId::default();
    let e = p.upload(&t, spec("f"), source()).await.unwrap_err();
    assert_eq!(e.code(), "unavailable");
    let rec = p.function(&t, "f").await.unwrap();
    assert_eq!(rec.versions[0].status, BuildStatus::Failed);
    assert!(
        rec.versions[0].build_log.contains("could not be queued"),
        "{}",
        rec.versions[0].build_log
    );
}

#[tokio::test]
async fn a_job_for_a_backend_this_node_lacks_is_unavailable_naming_it() {
    // The default (local) scheduler on a gateway-style platform: the route resolves,
    // and dispatch says the backend is elsewhere.
    let p = Platform::builder()
        .with_builtins(builtins())
        .with_remote_backend("gvisor", Isolation::UserSpaceKernel)
        .with_runtime_executor(Runtime::Python, "gvisor")
        .with_builder(Runtime::Python, Arc::new(DirBuilder::default()))
        .build()
        .unwrap();
    let t = TenantId::default();
    let v = p.upload(&t, spec("f"), source()).await.unwrap();
    let id = v.function_id.clone();
    for _ in 0..1000 {
        if p.function(&t, &id).await.unwrap().versions[0].status == BuildStatus::Ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let e = p
        .execute(
            &t,
            FunctionRef::User {
                id: Arc::from(id.as_str()),
                version: None,
            },
            json!(1),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unavailable");
    assert!(
        e.to_string()
            .contains("'gvisor' backend is not on this node"),
        "{e}"
    );
    // Built-ins still run here, through the builtin backend.
    let out = p
        .execute(&t, FunctionRef::builtin("echo"), json!({}))
        .await
        .unwrap();
    assert_eq!(out.value["ran_in"], "builtin");

    let d = Dispatcher::new(Vec::new(), Arc::new(CountingStore::default()));
    assert!(!d.has(BUILTIN_BACKEND));
    let e = d
        .invoke("docker", invocation(Target::Builtin(Arc::from("echo"))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unavailable");
    assert!(e.to_string().contains("'docker' backend"), "{e}");
}

fn ready_version(id: &str, n: u32, digest: Option<Digest>) -> FunctionVersion {
    FunctionVersion {
        function_id: id.into(),
        tenant: TenantId::default(),
        name: "f".into(),
        version: n,
        runtime: Runtime::Python,
        handler: "main.handle".into(),
        limits: Limits::default(),
        env: BTreeMap::new(),
        status: BuildStatus::Ready,
        artifact: Some(Artifact::Directory {
            path: "/elsewhere".into(),
            digest,
        }),
        build_log: String::new(),
        created_ms: 0,
        source_digest: "s".into(),
        executor: Some("process".into()),
    }
}

#[tokio::test]
async fn the_dispatcher_fetches_an_artifact_once_and_not_on_later_calls() {
    let store = Arc::new(CountingStore::default());
    let exec = Arc::new(Recorder {
        name: "process",
        ..Recorder::default()
    });
    let d = Dispatcher::new(
        vec![("process".into(), exec.clone() as Arc<dyn Executor>)],
        store.clone(),
    );
    assert_eq!(d.names(), ["process"]);
    let digest = Digest::of(b"content");
    let v = Arc::new(ready_version("fn1", 1, Some(digest.clone())));
    let call = || d.invoke("process", invocation(Target::User(v.clone())));
    let (a, b) = tokio::join!(call(), call());
    a.unwrap();
    b.unwrap();
    for _ in 0..3 {
        call().await.unwrap();
    }
    assert_eq!(store.fetches.load(Ordering::SeqCst), 1, "fetched once");
    let local = cache_dir(&digest);
    assert_eq!(*exec.ran.lock(), vec![Some(local.clone()); 5]);

    // An artifact without a digest runs where it is, unfetched.
    let legacy = Arc::new(ready_version("fn2", 1, None));
    d.invoke("process", invocation(Target::User(legacy)))
        .await
        .unwrap();
    assert_eq!(store.fetches.load(Ordering::SeqCst), 1);
    assert_eq!(
        exec.ran.lock().last().unwrap().as_deref(),
        Some("/elsewhere")
    );

    // A copy the store's cache evicted is fetched again, not handed over gone.
    std::fs::remove_dir(&local).unwrap();
    call().await.unwrap();
    assert_eq!(store.fetches.load(Ordering::SeqCst), 2, "fetched again");
    assert!(std::path::Path::new(&local).is_dir());

    // Retiring the version forgets the fetch; the next call fetches again.
    d.retire_version("fn1", 1).await.unwrap();
    call().await.unwrap();
    assert_eq!(store.fetches.load(Ordering::SeqCst), 3);
    std::fs::remove_dir(&local).unwrap();
}

#[tokio::test]
async fn a_build_puts_its_directory_in_the_store_and_deletion_removes_it_there() {
    let store = Arc::new(CountingStore::default());
    let exec = Arc::new(Recorder {
        name: "process",
        ..Recorder::default()
    });
    let builder = Arc::new(DirBuilder::default());
    let p = Platform::builder()
        .with_artifact_store(store.clone())
        .with_sandbox("process", exec.clone(), builder.clone())
        .with_runtime_executor(Runtime::Python, "process")
        .build()
        .unwrap();
    let t = TenantId::default();
    let v = p.upload(&t, spec("f"), source()).await.unwrap();
    let id = v.function_id.clone();
    let mut rec = p.function(&t, &id).await.unwrap();
    for _ in 0..1000 {
        if rec.versions[0].status != BuildStatus::Building {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        rec = p.function(&t, &id).await.unwrap();
    }
    let built = format!("/built/{id}/v1");
    let digest = Digest::of(built.as_bytes());
    let stored = Artifact::Directory {
        path: built.clone(),
        digest: Some(digest.clone()),
    };
    assert_eq!(rec.versions[0].status, BuildStatus::Ready);
    assert_eq!(rec.versions[0].artifact.as_ref(), Some(&stored));
    assert_eq!(store.puts.load(Ordering::SeqCst), 1);
    // Warmed from this node's copy (fetched once), and called from it.
    let local = cache_dir(&digest);
    assert_eq!(*exec.prepared.lock(), [Some(local.clone())]);
    let user = FunctionRef::User {
        id: Arc::from(id.as_str()),
        version: None,
    };
    let out = p.execute(&t, user.clone(), json!(1)).await.unwrap();
    assert_eq!(out.value["path"], json!(local));
    p.execute(&t, user, json!(2)).await.unwrap();
    assert_eq!(store.fetches.load(Ordering::SeqCst), 1);

    p.delete_function(&t, &id).await.unwrap();
    assert_eq!(*exec.retired.lock(), [id.as_str()]);
    assert_eq!(*store.removed.lock(), [stored]);
    assert!(
        builder.removed.lock().is_empty(),
        "the store owns the directory once it has it"
    );
}

#[test]
fn a_build_request_travels_as_json_with_files_in_base64() {
    let request = BuildRequest {
        version: ready_version("fn1", 3, Some(Digest::of(b"x"))),
        source: source(),
    };
    let text = serde_json::to_string(&request).unwrap();
    assert!(text.contains(r#""bin/blob":"AJ//Cg==""#), "{text}");
    let back: BuildRequest = serde_json::from_str(&text).unwrap();
    assert_eq!(back, request);
    let bad = text.replace("AJ//Cg==", "not base64!");
    let e = serde_json::from_str::<BuildRequest>(&bad).unwrap_err();
    assert!(e.to_string().contains("bin/blob"), "{e}");
}
