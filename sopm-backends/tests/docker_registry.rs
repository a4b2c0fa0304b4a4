//! Function images through a real registry (Debian's `docker-registry` on loopback) and
//! the real Docker daemon: the docker builder pushes each image and records it by the
//! pushed manifest's digest; an executor whose daemon lacks it (another node, simulated
//! by removing the image from the daemon) pulls it by digest, once however many first
//! calls ask at once, and runs it; an unknown or tampered digest and an unreachable
//! registry are clear errors; removing a version removes its image and only its
//! manifest. Skipped with a printed reason without a daemon, `docker-registry`, the base
//! images (`scripts/docker-images.sh`) or the static runner (`SOPM_STATIC_RUNNER`);
//! failed instead under `SOPM_REQUIRE_INTEGRATION=1`.
#![cfg(all(feature = "docker", feature = "oci"))]

#[path = "support/oci_registry.rs"]
mod oci_registry;
#[path = "support/programs.rs"]
mod programs;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oci_registry::OciRegistry;
use serde_json::json;
use sopm_backends::docker::{DockerBuilder, DockerExecutor, DockerLauncher};
use sopm_backends::host::{ImageRegistry, PoolSettings};
use sopm_backends::sandbox::RunnerKind;
use sopm_backends::{LocalBuilderConfig, SandboxKind, SandboxSettings};
use sopm_core::conformance::executor::{call, function, skip, TestFunction};
use sopm_core::{Artifact, BuildLog, Builder, Executor, FunctionVersion, Runtime, Source};

const REPOSITORY: &str = "sopm/functions";
const HELLO_SH: &[u8] = b"#!/bin/sh\nread input\necho \"{\\\"hello\\\": \\\"from the image\\\", \\\"got\\\": $input}\"\n";

/// A build log kept in memory.
#[derive(Default)]
struct Log(parking_lot::Mutex<String>);

#[async_trait]
impl BuildLog for Log {
    async fn append(&self, chunk: &str) {
        self.0.lock().push_str(chunk);
    }
}

/// One "node": a docker executor of its own (its own memory of which images its daemon
/// has) pushing to and pulling from `registry`.
fn node(registry: &ImageRegistry, stem_cells: usize) -> DockerExecutor {
    let mut config = SandboxSettings::new(SandboxKind::Docker)
        .with_name(format!("test-registry-{}", uuid::Uuid::new_v4().simple()))
        .with_image_registry(registry.clone())
        .with_pool(PoolSettings::new([RunnerKind::Static]).with_stem_cells(stem_cells));
    if let Ok(path) = std::env::var("SOPM_STATIC_RUNNER") {
        config = config.with_static_runner(path);
    }
    config.build::<DockerLauncher>().expect("valid settings")
}

/// The registry, a first node with its builder, and the builder's artifact dir; `None`
/// (skipped) without a registry binary, a daemon, the base image or the static runner.
struct World {
    registry: OciRegistry,
    images: ImageRegistry,
    first: DockerExecutor,
    builder: DockerBuilder,
    artifacts: tempfile::TempDir,
}

async fn world(test: &str) -> Option<World> {
    let registry = OciRegistry::start(test)?;
    let images = ImageRegistry::new(&registry.url(), REPOSITORY).expect("registry settings");
    let first = node(&images, 1);
    if let Err(e) = first.runner_image(RunnerKind::Static).await {
        skip(test, &e.to_string());
        return None;
    }
    let artifacts = tempfile::tempdir().expect("temp dir");
    let local = LocalBuilderConfig::new(artifacts.path())
        .build()
        .expect("a local builder");
    let builder = first.builder(Arc::new(local));
    Some(World {
        registry,
        images,
        first,
        builder,
        artifacts,
    })
}

/// A shell function's version (a fresh id) and its source, made unique by a comment so
/// that its image layer is its own (the daemon reuses a layer it has from another
/// image, and the tests run at once).
fn shell_function(body: &[u8]) -> (TestFunction, Source) {
    let mut body = body.to_vec();
    body.extend_from_slice(format!("# {}\n", uuid::Uuid::new_v4()).as_bytes());
    let f = function(Runtime::Shell, "run.sh", &[("run.sh", &body)]);
    let source = Source {
        files: [("run.sh".to_string(), body)].into(),
    };
    (f, source)
}

/// Builds `version` and returns the image reference it recorded.
async fn build(w: &World, version: &FunctionVersion, source: &Source) -> String {
    let log = Log::default();
    let artifact = w.builder.build(version, source, &log).await;
    let log = log.0.lock().clone();
    match artifact {
        Ok(Artifact::Image { reference }) => {
            assert!(log.contains("pushing"), "{log}");
            reference
        }
        other => panic!("expected an image, got {other:?}\n{log}"),
    }
}

/// `f` with its artifact replaced by the image `reference`.
fn running_image(f: &TestFunction, reference: &str) -> TestFunction {
    let mut v = (*f.version).clone();
    v.artifact = Some(Artifact::Image {
        reference: reference.to_string(),
    });
    TestFunction {
        version: Arc::new(v),
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run the docker CLI")
}

fn in_daemon(reference: &str) -> bool {
    docker(&["image", "inspect", reference]).status.success()
}

/// Removes the image from this daemon (tags and digests): the state of a node that never
/// had it.
fn remove_from_daemon(reference: &str) {
    let out = docker(&["image", "inspect", "--format", "{{.Id}}", reference]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !id.is_empty() {
        let rm = docker(&["image", "rm", "--force", &id]);
        assert!(rm.status.success(), "{rm:?}");
    }
    assert!(!in_daemon(reference));
}

/// The digest of a pinned reference.
fn digest_of(reference: &str) -> &str {
    reference.rsplit_once('@').expect("a pinned reference").1
}

/// The registry's answer to a manifest request by digest (accepting what Docker pushes).
async fn manifest_status(registry: &OciRegistry, digest: &str) -> u16 {
    reqwest::Client::new()
        .head(format!("{}/v2/{REPOSITORY}/manifests/{digest}", registry.url()))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the registry answers")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_image_is_pulled_by_digest_on_another_node_and_runs() {
    let test = "a_pushed_image_is_pulled_by_digest_on_another_node_and_runs";
    let Some(w) = world(test).await else { return };
    let (f, source) = shell_function(HELLO_SH);
    let reference = build(&w, &f.version, &source).await;
    let name = format!("{}/{REPOSITORY}@sha256:", w.registry.addr);
    assert!(reference.starts_with(&name), "{reference}");
    assert_eq!(reference.len(), name.len() + 64, "{reference}");
    assert_eq!(
        manifest_status(&w.registry, digest_of(&reference)).await,
        200
    );
    // The image carries the code: the builder's directory is gone.
    let left: Vec<_> = std::fs::read_dir(w.artifacts.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("run.sh").exists())
        .collect();
    assert!(left.is_empty(), "build directories left: {left:?}");
    let f = running_image(&f, &reference);
    let out = call(&w.first, &f, json!(7))
        .await
        .expect("runs on the first node");
    assert_eq!(out.value, json!({"hello": "from the image", "got": 7}));

    remove_from_daemon(&reference);
    let second = node(&w.images, 1);
    let out = call(&second, &f, json!({"n": 2}))
        .await
        .expect("runs on a node that pulled it");
    assert_eq!(
        out.value,
        json!({"hello": "from the image", "got": {"n": 2}})
    );
    assert!(in_daemon(&reference), "pulled by digest into this daemon");
    second.shutdown().await;
    w.first.shutdown().await;
    w.builder
        .remove(&Artifact::Image { reference })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_calls_pull_the_image_once() {
    let test = "concurrent_first_calls_pull_the_image_once";
    let Some(w) = world(test).await else { return };
    let (f, source) = shell_function(HELLO_SH);
    let reference = build(&w, &f.version, &source).await;
    remove_from_daemon(&reference);
    let f = Arc::new(running_image(&f, &reference));
    // Two executors on one daemon (as `docker` and `docker-runsc` are), three calls each.
    let second = Arc::new(node(&w.images, 0));
    let third = Arc::new(node(&w.images, 0));
    let since = daemon_time();
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let exec = if i % 2 == 0 {
                second.clone()
            } else {
                third.clone()
            };
            let f = f.clone();
            tokio::spawn(async move { call(&*exec, &f, json!(i)).await })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        let out = c.await.unwrap().expect("every first call runs");
        assert_eq!(out.value["got"], json!(i));
    }
    let until = daemon_time();
    let events = docker(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "type=image",
        "--filter",
        "event=pull",
        "--format",
        "{{.Actor.ID}}",
    ]);
    let pulls = String::from_utf8_lossy(&events.stdout)
        .lines()
        .filter(|l| l.contains(digest_of(&reference)))
        .count();
    assert_eq!(pulls, 1, "pull events: {events:?}");
    second.shutdown().await;
    third.shutdown().await;
    w.first.shutdown().await;
    w.builder
        .remove(&Artifact::Image { reference })
        .await
        .unwrap();
}

/// The daemon's clock now, as `docker events` takes it (seconds with a fraction).
fn daemon_time() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_tampered_digest_and_an_unreachable_registry_are_clear_errors() {
    let test = "an_unknown_or_tampered_digest_and_an_unreachable_registry_are_clear_errors";
    let Some(mut w) = world(test).await else {
        return;
    };
    let (f, source) = shell_function(HELLO_SH);
    let reference = build(&w, &f.version, &source).await;
    remove_from_daemon(&reference);
    let second = node(&w.images, 0);
    let host = w.registry.addr.to_string();

    // A digest the registry never had (the recorded one with its last digit changed).
    let mut unknown = reference.clone();
    let last = unknown.pop().unwrap();
    unknown.push(if last == '0' { '1' } else { '0' });
    let e = call(&second, &running_image(&f, &unknown), json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unavailable", "{e:?}");
    let text = e.to_string();
    eprintln!("unknown digest: {text}");
    assert!(
        text.contains("cannot pull") && text.contains(&host) && text.contains(&unknown),
        "{text}"
    );

    // The right digest, but the layers changed in the registry's storage (the function's
    // code layer is the one this daemon no longer has): the daemon checks what it
    // downloads against the digests and refuses it.
    corrupt_gzip_blobs(&w.registry);
    let e = call(&second, &running_image(&f, &reference), json!({}))
        .await
        .unwrap_err();
    eprintln!("tampered layer: {e}");
    assert_eq!(e.code(), "unavailable", "{e:?}");
    assert!(e.to_string().contains("cannot pull"), "{e}");
    assert!(!in_daemon(&reference), "a tampered image was kept");

    // The registry is gone.
    w.registry.kill();
    let e = call(&second, &running_image(&f, &reference), json!({}))
        .await
        .unwrap_err();
    eprintln!("registry gone: {e}");
    assert_eq!(e.code(), "unavailable", "{e:?}");
    assert!(e.to_string().contains(&host), "{e}");
    second.shutdown().await;
    w.first.shutdown().await;
}

/// Flips bytes in the middle of a blob file (the registry serves it as it is).
fn corrupt(file: &std::path::Path) {
    let mut bytes = std::fs::read(file).expect("a blob file");
    let mid = bytes.len() / 2;
    let end = (mid + 16).min(bytes.len());
    for b in &mut bytes[mid..end] {
        *b ^= 0xff;
    }
    std::fs::write(file, bytes).expect("rewrite the blob");
}

fn corrupt_gzip_blobs(registry: &OciRegistry) {
    let root = registry.storage().join("docker/registry/v2/blobs/sha256");
    for prefix in std::fs::read_dir(root).unwrap().flatten() {
        for blob in std::fs::read_dir(prefix.path()).unwrap().flatten() {
            let data = blob.path().join("data");
            let head = std::fs::read(&data).unwrap_or_default();
            if head.starts_with(&[0x1f, 0x8b]) {
                corrupt(&data);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_version_removes_its_image_and_only_its_manifest() {
    let test = "removing_a_version_removes_its_image_and_only_its_manifest";
    let Some(w) = world(test).await else { return };
    // Two versions of one function with the same code.
    let (f, source) = shell_function(HELLO_SH);
    let one = build(&w, &f.version, &source).await;
    let mut v2 = (*f.version).clone();
    v2.version = 2;
    let two = build(&w, &v2, &source).await;
    assert_ne!(
        one, two,
        "two versions must never share a manifest (their labels differ)"
    );
    w.builder
        .remove(&Artifact::Image {
            reference: one.clone(),
        })
        .await
        .unwrap();
    assert!(!in_daemon(&one), "the local image of v1 is gone");
    assert_eq!(manifest_status(&w.registry, digest_of(&one)).await, 404);
    assert_eq!(manifest_status(&w.registry, digest_of(&two)).await, 200);
    // Removing it again is fine.
    w.builder
        .remove(&Artifact::Image {
            reference: one.clone(),
        })
        .await
        .unwrap();
    // v2 still runs, on a node that pulls it.
    remove_from_daemon(&two);
    let other = node(&w.images, 0);
    let out = call(&other, &running_image(&f, &two), json!(2))
        .await
        .expect("v2 runs");
    assert_eq!(out.value["got"], json!(2));
    other.shutdown().await;
    w.builder
        .remove(&Artifact::Image {
            reference: two.clone(),
        })
        .await
        .unwrap();
    assert_eq!(manifest_status(&w.registry, digest_of(&two)).await, 404);
    w.first.shutdown().await;
}

/// The Kubernetes backend's builder: code that fits an init frame stays a directory (a
/// stem-cell pod takes it); bigger code becomes an image over the pods' runner image
/// (pinned by digest in the registry), pushed and recorded by digest, which boots as it
/// is where the code cannot travel in a frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_builder_makes_images_only_of_code_too_big_for_a_frame() {
    let test = "the_pod_builder_makes_images_only_of_code_too_big_for_a_frame";
    let Some(w) = world(test).await else { return };
    // The pods' static runner image, pushed to the registry and named by digest.
    let runner = w.first.runner_image(RunnerKind::Static).await.unwrap();
    let tag = format!(
        "{}/sopm/runners:static-{}",
        w.registry.addr,
        uuid::Uuid::new_v4().simple()
    );
    assert!(docker(&["tag", &runner, &tag]).status.success());
    let push = docker(&["push", &tag]);
    assert!(push.status.success(), "{push:?}");
    let digests = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &tag,
    ]);
    let digests: Vec<String> = serde_json::from_slice(&digests.stdout).unwrap();
    let prefix = format!("{}/sopm/runners@", w.registry.addr);
    let pinned_runner = digests
        .into_iter()
        .find(|d| d.starts_with(&prefix))
        .expect("a repo digest of the runner image");

    let mut settings =
        SandboxSettings::new(SandboxKind::Docker).with_image_registry(w.images.clone());
    if let Ok(path) = std::env::var("SOPM_STATIC_RUNNER") {
        settings = settings.with_static_runner(path);
    }
    let local = LocalBuilderConfig::new(w.artifacts.path()).build().unwrap();
    let pods = DockerBuilder::from_settings(&settings, Arc::new(local))
        .for_pods([(RunnerKind::Static, pinned_runner.clone())].into(), 4096);

    let (small, source) = shell_function(HELLO_SH);
    let artifact = pods
        .build(&small.version, &source, &Log::default())
        .await
        .unwrap();
    let Artifact::Directory { path, .. } = &artifact else {
        panic!("small code should stay a directory: {artifact:?}");
    };
    assert!(std::path::Path::new(path).join("run.sh").is_file());
    pods.remove(&artifact).await.unwrap();

    let (big, mut source) = shell_function(HELLO_SH);
    source.files.insert("data.txt".into(), vec![b'x'; 16 << 10]);
    let log = Log::default();
    let artifact = pods.build(&big.version, &source, &log).await.unwrap();
    let log = log.0.lock().clone();
    let Artifact::Image { reference } = artifact else {
        panic!("big code should become an image: {artifact:?}\n{log}");
    };
    assert!(reference.starts_with(&format!("{}/{REPOSITORY}@sha256:", w.registry.addr)));
    assert!(log.contains(&format!("from {pinned_runner}")), "{log}");
    // Booted from the image itself, as a pod would be (the code does not fit a frame).
    let booting = SandboxSettings::new(SandboxKind::Docker)
        .with_name(format!("test-registry-{}", uuid::Uuid::new_v4().simple()))
        .with_image_registry(w.images.clone())
        .with_pool(
            PoolSettings::new([RunnerKind::Static])
                .with_stem_cells(0)
                .with_max_inline_bytes(4096),
        );
    let booting = booting.build::<DockerLauncher>().unwrap();
    let out = call(&booting, &running_image(&big, &reference), json!(5))
        .await
        .expect("runs from its image");
    assert_eq!(out.value["got"], json!(5));
    booting.shutdown().await;
    w.first.shutdown().await;
    pods.remove(&Artifact::Image { reference }).await.unwrap();
    let _ = docker(&["image", "rm", &tag]);
}
