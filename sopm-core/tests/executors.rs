//! Named executor backends: an upload's backend is the client's ask, else the
//! operator's rule for the function's name, else the runtime's default; it is recorded
//! on the version, its builder builds it, its executor runs it (even after the
//! defaults change) and deletion retires and removes there. Rules naming a backend
//! that is not registered are refused when the platform is built.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::json;
use sopm_core::{
    Artifact, BuildLog, BuildStatus, Builder, Error, Executor, FunctionRecord, FunctionRef,
    FunctionVersion, Invocation, Limits, MemoryRegistry, NewVersion, Output, Platform,
    PlatformBuilder, Registry, Result, Runtime, Source, Target, TenantId, UploadSpec,
};

/// Answers which executor ran the call; records what it prepared and retired.
#[derive(Debug)]
struct NamedExecutor {
    name: &'static str,
    prepared: Mutex<Vec<(String, u32)>>,
    retired: Mutex<Vec<String>>,
}

impl NamedExecutor {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(NamedExecutor {
            name,
            prepared: Mutex::default(),
            retired: Mutex::default(),
        })
    }
}

#[async_trait]
impl Executor for NamedExecutor {
    fn name(&self) -> &str {
        self.name
    }

    async fn invoke(&self, inv: Invocation) -> Result<Output> {
        let Target::User(v) = &inv.target else {
            return Err(Error::invalid("user functions only"));
        };
        Ok(json!({"ran_in": self.name, "artifact": v.artifact, "version": v.version}).into())
    }

    async fn prepare(&self, v: &FunctionVersion) -> Result<()> {
        self.prepared
            .lock()
            .push((v.function_id.clone(), v.version));
        Ok(())
    }

    async fn retire(&self, function_id: &str) -> Result<()> {
        self.retired.lock().push(function_id.to_string());
        Ok(())
    }
}

/// Makes artifacts that say which builder made them; records what it removed.
#[derive(Debug)]
struct NamedBuilder {
    name: &'static str,
    removed: Mutex<Vec<Artifact>>,
}

impl NamedBuilder {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(NamedBuilder {
            name,
            removed: Mutex::default(),
        })
    }
}

#[async_trait]
impl Builder for NamedBuilder {
    fn name(&self) -> &str {
        self.name
    }

    async fn build(&self, v: &FunctionVersion, _: &Source, _: &dyn BuildLog) -> Result<Artifact> {
        Ok(Artifact::Image {
            reference: format!("{}/{}:{}", self.name, v.function_id, v.version),
        })
    }

    async fn remove(&self, artifact: &Artifact) -> Result<()> {
        self.removed.lock().push(artifact.clone());
        Ok(())
    }
}

/// Three backends, `a`, `b` and `c`, each with its own executor and builder.
struct Backends {
    executors: BTreeMap<&'static str, Arc<NamedExecutor>>,
    builders: BTreeMap<&'static str, Arc<NamedBuilder>>,
}

impl Backends {
    fn new() -> Self {
        let names = ["a", "b", "c"];
        Backends {
            executors: names.iter().map(|n| (*n, NamedExecutor::new(n))).collect(),
            builders: names
                .iter()
                .map(|n| {
                    (
                        *n,
                        NamedBuilder::new(Box::leak(format!("build-{n}").into())),
                    )
                })
                .collect(),
        }
    }

    fn register(&self, mut b: PlatformBuilder) -> PlatformBuilder {
        for (name, exec) in &self.executors {
            b = b.with_sandbox(*name, exec.clone(), self.builders[name].clone());
        }
        b
    }
}

fn spec(name: &str, executor: Option<&str>) -> UploadSpec {
    UploadSpec {
        name: name.into(),
        runtime: Runtime::Python,
        handler: "main.handle".into(),
        limits: Limits::default(),
        env: BTreeMap::new(),
        executor: executor.map(str::to_string),
    }
}

fn source() -> Source {
    let mut s = Source::default();
    s.files.insert("main.py".into(), b"x".to_vec());
    s
}

async fn ready(p: &Platform, t: &TenantId, name: &str, version: u32) -> FunctionVersion {
    for _ in 0..1000 {
        let rec: FunctionRecord = p.function(t, name).await.unwrap();
        let v = rec.version(version).unwrap();
        if v.status != BuildStatus::Building {
            assert_eq!(v.status, BuildStatus::Ready, "{}", v.build_log);
            return v.clone();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{name} v{version} never finished building");
}

async fn call(p: &Platform, t: &TenantId, v: &FunctionVersion) -> Result<serde_json::Value> {
    let f = FunctionRef::User {
        id: v.function_id.clone().into(),
        version: Some(v.version),
    };
    p.execute(t, f, json!({})).await.map(|o| o.value)
}

#[tokio::test]
async fn the_ask_beats_the_function_rule_which_beats_the_runtime_default() {
    let backends = Backends::new();
    let p = backends
        .register(Platform::builder())
        .with_runtime_executor(Runtime::Python, "a")
        .with_function_executor("special", "b")
        .build()
        .unwrap();
    let t = TenantId::default();
    let other = TenantId::new("other").unwrap();
    // (tenant, function name, ask, backend expected)
    let cases = [
        (&t, "plain", None, "a"),
        (&t, "special", None, "b"),
        (&other, "special", None, "b"),
        (&t, "special", Some("c"), "c"),
        (&t, "plain", Some("b"), "b"),
        (&t, "plain", None, "a"),
    ];
    for (tenant, name, ask, expected) in cases {
        let asked = p.upload(tenant, spec(name, ask), source()).await.unwrap();
        assert_eq!(asked.executor.as_deref(), Some(expected), "{name} {ask:?}");
        let v = ready(&p, tenant, name, asked.version).await;
        assert_eq!(v.executor.as_deref(), Some(expected), "recorded");
        assert_eq!(p.executor_of(&v), Some(expected));
        assert_eq!(p.builder_of(&v), Some(format!("build-{expected}").as_str()));
        assert_eq!(
            v.artifact,
            Some(Artifact::Image {
                reference: format!("build-{expected}/{}:{}", v.function_id, v.version)
            }),
            "built by the backend's builder"
        );
        assert!(
            backends.executors[expected]
                .prepared
                .lock()
                .contains(&(v.function_id.clone(), v.version)),
            "warmed in the backend's executor"
        );
        let out = call(&p, tenant, &v).await.unwrap();
        assert_eq!(out["ran_in"], expected, "{name} {ask:?}: {out}");
    }
    assert_eq!(p.executor_for(Runtime::Python), Some("a"));
    assert_eq!(p.builder_for(Runtime::Python), Some("build-a"));
    assert_eq!(p.executor_for(Runtime::Node), None);
    assert_eq!(p.executor_names(), ["a", "b", "c"]);
}

#[tokio::test]
async fn asking_for_an_unknown_backend_is_refused_and_stores_nothing() {
    let backends = Backends::new();
    let registry = Arc::new(MemoryRegistry::new());
    let p = backends
        .register(Platform::builder().with_registry(registry.clone()))
        .with_runtime_executor(Runtime::Python, "a")
        .build()
        .unwrap();
    let t = TenantId::default();
    let e = p
        .upload(&t, spec("f", Some("docker")), source())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
    let message = e.to_string();
    assert!(
        message.contains("'docker'") && message.contains("available: a, b, c"),
        "names the ask and what is available: {message}"
    );
    assert!(registry.list(&t).await.unwrap().is_empty());

    // With no backend at all, the message says so.
    let bare = Platform::builder()
        .with_builder(Runtime::Python, NamedBuilder::new("local"))
        .build()
        .unwrap();
    let e = bare
        .upload(&t, spec("f", Some("gvisor")), source())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_input");
    assert!(e.to_string().contains("no executor is available"), "{e}");
}

#[test]
fn rules_naming_unregistered_backends_are_refused_at_build() {
    let backends = Backends::new();
    let e = backends
        .register(Platform::builder())
        .with_runtime_executor(Runtime::Node, "gvisor")
        .build()
        .unwrap_err();
    assert_eq!(e.code(), "invalid_input");
    let m = e.to_string();
    assert!(
        m.contains("node") && m.contains("'gvisor'") && m.contains("available: a, b, c"),
        "{m}"
    );

    let e = backends
        .register(Platform::builder())
        .with_function_executor("resize", "docker")
        .build()
        .unwrap_err();
    let m = e.to_string();
    assert!(m.contains("'docker'") && m.contains("resize"), "{m}");

    let e = backends
        .register(Platform::builder())
        .with_function_executor("../bad", "a")
        .build()
        .unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");

    let e = Platform::builder()
        .with_sandbox("has space", NamedExecutor::new("x"), NamedBuilder::new("x"))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("has space"), "{e}");

    // Two different executors under one name cannot be told apart.
    let e = Platform::builder()
        .with_executor(Runtime::Python, NamedExecutor::new("same"))
        .with_executor(Runtime::Node, NamedExecutor::new("same"))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("'same'"), "{e}");

    // The same executor for several runtimes is one backend.
    let shared = NamedExecutor::new("shared");
    let p = Platform::builder()
        .with_executor(Runtime::Python, shared.clone())
        .with_executor(Runtime::Node, shared)
        .build()
        .unwrap();
    assert_eq!(p.executor_names(), ["shared"]);
}

#[tokio::test]
async fn a_version_runs_where_it_was_recorded_even_after_the_default_changes() {
    let backends = Backends::new();
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let t = TenantId::default();
    let before = backends
        .register(Platform::builder().with_registry(registry.clone()))
        .with_runtime_executor(Runtime::Python, "a")
        .build()
        .unwrap();
    let v1 = before.upload(&t, spec("f", None), source()).await.unwrap();
    let v1 = ready(&before, &t, "f", v1.version).await;
    assert_eq!(v1.executor.as_deref(), Some("a"));

    // The operator moves Python to `b` (a restart with another config).
    let after = backends
        .register(Platform::builder().with_registry(registry.clone()))
        .with_runtime_executor(Runtime::Python, "b")
        .build()
        .unwrap();
    assert_eq!(call(&after, &t, &v1).await.unwrap()["ran_in"], "a");
    let v2 = after.upload(&t, spec("f", None), source()).await.unwrap();
    let v2 = ready(&after, &t, "f", v2.version).await;
    assert_eq!(call(&after, &t, &v2).await.unwrap()["ran_in"], "b");
    let latest = after
        .execute(
            &t,
            FunctionRef::User {
                id: v1.function_id.clone().into(),
                version: None,
            },
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(latest.value["ran_in"], "b", "the newest version runs in b");

    // A version recorded before backends had names runs in its runtime's default.
    let old = registry
        .create_version(NewVersion {
            tenant: t.clone(),
            name: "old".into(),
            runtime: Runtime::Python,
            handler: "main.handle".into(),
            limits: Limits::default(),
            env: BTreeMap::new(),
            source_digest: "d".into(),
            executor: None,
        })
        .await
        .unwrap();
    registry
        .finish_build(
            &old.function_id,
            1,
            BuildStatus::Ready,
            Some(Artifact::Directory {
                path: "/x".into(),
                digest: None,
            }),
        )
        .await
        .unwrap();
    let old = registry
        .get(&t, &old.function_id)
        .await
        .unwrap()
        .versions
        .remove(0);
    assert_eq!(after.executor_of(&old), Some("b"));
    assert_eq!(call(&after, &t, &old).await.unwrap()["ran_in"], "b");

    // A platform without the recorded backend answers `unavailable`, naming it.
    let without_a = Platform::builder()
        .with_registry(registry.clone())
        .with_sandbox(
            "b",
            backends.executors["b"].clone(),
            backends.builders["b"].clone(),
        )
        .with_runtime_executor(Runtime::Python, "b")
        .build()
        .unwrap();
    let e = call(&without_a, &t, &v1).await.unwrap_err();
    assert_eq!(e.code(), "unavailable");
    assert!(e.to_string().contains("'a' executor"), "{e}");
    assert!(!without_a.has_executor("a"));
    assert_eq!(without_a.executor_of(&v1), Some("a"), "still recorded");
}

#[tokio::test]
async fn deletion_retires_in_every_backend_and_removes_through_each_versions_builder() {
    let backends = Backends::new();
    let p = backends
        .register(Platform::builder())
        .with_runtime_executor(Runtime::Python, "a")
        .build()
        .unwrap();
    let t = TenantId::default();
    let v1 = p.upload(&t, spec("f", None), source()).await.unwrap();
    let v1 = ready(&p, &t, "f", v1.version).await;
    let v2 = p.upload(&t, spec("f", Some("c")), source()).await.unwrap();
    let v2 = ready(&p, &t, "f", v2.version).await;
    let removed = p.delete_function(&t, "f").await.unwrap();
    assert_eq!(removed.versions.len(), 2);
    let id = v1.function_id.clone();
    assert_eq!(*backends.executors["a"].retired.lock(), [id.as_str()]);
    assert_eq!(*backends.executors["c"].retired.lock(), [id.as_str()]);
    // A node does not track which of its executors warmed a function (a deletion
    // broadcast from another node carries only the id): every executor forgets it.
    assert_eq!(*backends.executors["b"].retired.lock(), [id.as_str()]);
    assert_eq!(
        *backends.builders["a"].removed.lock(),
        [v1.artifact.clone().unwrap()]
    );
    assert_eq!(
        *backends.builders["c"].removed.lock(),
        [v2.artifact.clone().unwrap()]
    );
    assert!(backends.builders["b"].removed.lock().is_empty());
}

#[tokio::test]
async fn with_executor_and_with_builder_name_the_backend_after_the_executor() {
    let exec = NamedExecutor::new("legacy");
    let builder = NamedBuilder::new("local");
    let p = Platform::builder()
        .with_executor(Runtime::Python, exec.clone())
        .with_builder(Runtime::Python, builder.clone())
        .with_builder(Runtime::Node, builder)
        .build()
        .unwrap();
    let t = TenantId::default();
    assert_eq!(p.executor_for(Runtime::Python), Some("legacy"));
    assert_eq!(p.builder_for(Runtime::Python), Some("local"));
    let v = p.upload(&t, spec("f", None), source()).await.unwrap();
    assert_eq!(v.executor.as_deref(), Some("legacy"));
    let v = ready(&p, &t, "f", v.version).await;
    assert_eq!(call(&p, &t, &v).await.unwrap()["ran_in"], "legacy");

    // Node has a builder but no executor: it builds, records none, and cannot run.
    let mut node = spec("n", None);
    node.runtime = Runtime::Node;
    let n = p.upload(&t, node.clone(), source()).await.unwrap();
    assert_eq!(n.executor, None);
    let n = ready(&p, &t, "n", n.version).await;
    assert_eq!(call(&p, &t, &n).await.unwrap_err().code(), "unavailable");
    // ... unless it asks for the one backend there is, which the Node builder serves.
    node.executor = Some("legacy".into());
    let n2 = p.upload(&t, node, source()).await.unwrap();
    let n2 = ready(&p, &t, "n", n2.version).await;
    assert_eq!(n2.executor.as_deref(), Some("legacy"));
    assert_eq!(call(&p, &t, &n2).await.unwrap()["ran_in"], "legacy");
}
