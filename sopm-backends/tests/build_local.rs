//! The local builder against real tools: bubblewrap, pip (PyPI) and npm (the npm
//! registry). Tests that need a tool skip with a printed reason when it is missing,
//! and fail instead when `SOPM_REQUIRE_INTEGRATION=1`.
#![cfg(feature = "local-build")]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sopm_backends::{LocalBuilder, LocalBuilderConfig};
use sopm_core::registry::BuildStatus;
use sopm_core::{Artifact, BuildLog, Builder, FunctionVersion, Limits, Runtime, Source, TenantId};

/// A build log in memory.
#[derive(Default)]
struct MemoryLog(Mutex<String>);

#[async_trait]
impl BuildLog for MemoryLog {
    async fn append(&self, chunk: &str) {
        self.0.lock().unwrap().push_str(chunk);
    }
}

impl MemoryLog {
    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

#[derive(Clone, Copy, Debug)]
enum Tool {
    Bwrap,
    Pip,
    Npm,
}

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the tools are here; prints why not, or panics under
/// `SOPM_REQUIRE_INTEGRATION=1`.
fn have(tools: &[Tool]) -> bool {
    for tool in tools {
        let ok = match tool {
            Tool::Bwrap => works(
                "bwrap",
                &["--unshare-user", "--ro-bind", "/", "/", "--", "true"],
            ),
            Tool::Pip => works("python3", &["-m", "pip", "--version"]),
            Tool::Npm => works("npm", &["--version"]) && works("node", &["--version"]),
        };
        if !ok {
            let name = match tool {
                Tool::Bwrap => "bwrap",
                Tool::Pip => "python3 with pip",
                Tool::Npm => "npm with node",
            };
            let reason = format!("{name} is missing or does not work here");
            if std::env::var("SOPM_REQUIRE_INTEGRATION").as_deref() == Ok("1") {
                panic!("SOPM_REQUIRE_INTEGRATION=1 but {reason}");
            }
            eprintln!("skipped: {reason}");
            return false;
        }
    }
    true
}

fn version(function_id: &str, v: u32, runtime: Runtime, handler: &str) -> FunctionVersion {
    FunctionVersion {
        function_id: function_id.to_string(),
        tenant: TenantId::default(),
        name: format!("{}-fn", runtime.as_str()),
        version: v,
        runtime,
        handler: handler.to_string(),
        limits: Limits::default(),
        env: BTreeMap::new(),
        source_digest: "test".to_string(),
        executor: None,
        status: BuildStatus::Building,
        build_log: String::new(),
        artifact: None,
        created_ms: 0,
    }
}

/// A Python version whose handler is `main.handle`.
fn python(function_id: &str, v: u32) -> FunctionVersion {
    version(function_id, v, Runtime::Python, "main.handle")
}

fn source(files: &[(&str, &[u8])]) -> Source {
    Source {
        files: files
            .iter()
            .map(|(p, b)| (p.to_string(), b.to_vec()))
            .collect(),
    }
}

fn builder(dir: &Path) -> LocalBuilder {
    LocalBuilderConfig::new(dir).build().unwrap()
}

fn artifact_dir(artifact: &Artifact) -> PathBuf {
    match artifact {
        Artifact::Directory { path, .. } => PathBuf::from(path),
        other => panic!("expected a directory, got {other:?}"),
    }
}

/// Entries of a function's directory (empty if it does not exist).
fn entries(function_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(function_dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

const PY_MAIN: &[u8] = b"def handle(event, context):\n    return event\n";

#[tokio::test]
async fn python_without_dependencies_is_just_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let b = builder(dir.path());
    let log = MemoryLog::default();
    let src = source(&[("main.py", PY_MAIN), ("lib/util.py", b"X = 1\n")]);
    let artifact = b.build(&python("fn_py", 1), &src, &log).await.unwrap();
    let path = artifact_dir(&artifact);
    let root = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(path, root.join("fn_py/v1"));
    assert_eq!(std::fs::read(path.join("main.py")).unwrap(), PY_MAIN);
    assert_eq!(std::fs::read(path.join("lib/util.py")).unwrap(), b"X = 1\n");
    assert!(!path.join("deps").exists());
    assert_eq!(entries(&root.join("fn_py")), vec!["v1"]);
    let text = log.text();
    assert!(text.contains("==> artifact ready ("), "{text}");
    assert!(!text.contains("$ pip"), "{text}");
}

#[tokio::test]
async fn python_requirements_are_installed_into_deps() {
    if !have(&[Tool::Bwrap, Tool::Pip]) {
        return;
    }
    // An artifacts directory far longer than a Unix socket path may be: nothing of the
    // build (the package index proxy's socket) may live under it.
    let dir = tempfile::tempdir().unwrap();
    let long = dir
        .path()
        .join("a-data-directory-with-a-long-name".repeat(4))
        .join("artifacts");
    assert!(long.as_os_str().len() > 150);
    let b = builder(&long);
    let log = MemoryLog::default();
    let src = source(&[
        (
            "main.py",
            b"import six\ndef handle(event, context):\n    return six.PY3\n",
        ),
        ("requirements.txt", b"# pinned\nsix==1.16.0\n"),
    ]);
    let started = Instant::now();
    let artifact = b
        .build(&python("fn_six", 1), &src, &log)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log.text()));
    eprintln!(
        "python build with one pip dependency took {:?}",
        started.elapsed()
    );
    let path = artifact_dir(&artifact);
    assert!(path.join("deps/six.py").is_file());
    let text = log.text();
    assert!(
        text.contains("==> installing 1 requirement with pip"),
        "{text}"
    );
    assert!(text.contains("$ pip install"), "{text}");
    assert!(text.contains("Successfully installed six-1.16.0"), "{text}");
    assert!(text.contains("==> artifact ready ("), "{text}");
    assert_eq!(entries(path.parent().unwrap()), vec!["v1"]);
}

#[tokio::test]
async fn node_dependencies_are_installed_into_node_modules() {
    if !have(&[Tool::Bwrap, Tool::Npm]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = builder(dir.path());
    let log = MemoryLog::default();
    let src = source(&[
        (
            "index.js",
            b"const isNumber = require('is-number');\nexports.handle = (e) => isNumber(e);\n",
        ),
        (
            "package.json",
            br#"{"name":"f","version":"1.0.0","dependencies":{"is-number":"7.0.0"}}"#,
        ),
    ]);
    let artifact = b
        .build(
            &version("fn_node", 3, Runtime::Node, "index.handle"),
            &src,
            &log,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log.text()));
    let path = artifact_dir(&artifact);
    assert!(path.ends_with("fn_node/v3"));
    assert!(path.join("node_modules/is-number/package.json").is_file());
    let text = log.text();
    assert!(
        text.contains("==> installing 1 dependency with npm"),
        "{text}"
    );
    assert!(text.contains("$ npm install --omit=dev"), "{text}");
    assert!(text.contains("added 1 package"), "{text}");
}

#[tokio::test]
async fn a_failing_install_leaves_nothing_behind_but_the_log() {
    if !have(&[Tool::Bwrap, Tool::Pip]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = builder(dir.path());
    let log = MemoryLog::default();
    let src = source(&[
        ("main.py", PY_MAIN),
        ("requirements.txt", b"sopm-no-such-package-xyz==1.0\n"),
    ]);
    let e = b.build(&python("fn_bad", 1), &src, &log).await.unwrap_err();
    assert_eq!(e.code(), "build_failed");
    assert!(e.to_string().contains("pip install failed"), "{e}");
    assert!(e.to_string().contains("sopm-no-such-package-xyz"), "{e}");
    let text = log.text();
    assert!(text.contains("$ pip install"), "{text}");
    assert!(text.contains("sopm-no-such-package-xyz"), "{text}");
    assert!(
        text.contains("==> build failed: pip install failed (exit status 1)\n"),
        "{text}"
    );
    let function_dir = std::fs::canonicalize(dir.path()).unwrap().join("fn_bad");
    assert_eq!(entries(&function_dir), Vec::<String>::new());
}

#[tokio::test]
async fn an_install_past_the_deadline_is_stopped() {
    if !have(&[Tool::Bwrap, Tool::Pip]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = LocalBuilderConfig::new(dir.path())
        .with_build_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let log = MemoryLog::default();
    let src = source(&[("main.py", PY_MAIN), ("requirements.txt", b"six==1.16.0\n")]);
    let e = b
        .build(&python("fn_slow", 1), &src, &log)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "build_failed");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(log.text().contains("timed out"), "{}", log.text());
    let function_dir = std::fs::canonicalize(dir.path()).unwrap().join("fn_slow");
    assert_eq!(entries(&function_dir), Vec::<String>::new());
}

#[tokio::test]
async fn requirements_that_leave_the_index_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = builder(dir.path());
    for requirements in [
        &b"six==1.16.0\nhttps://example.com/evil-1.0.tar.gz\n"[..],
        b"git+https://github.com/benjaminp/six.git\n",
        b"-e .\n",
        b"--index-url https://evil.example/simple\nsix\n",
        b"six @ file:///etc/passwd\n",
    ] {
        let log = MemoryLog::default();
        let src = source(&[("main.py", PY_MAIN), ("requirements.txt", requirements)]);
        let e = b.build(&python("fn_url", 1), &src, &log).await.unwrap_err();
        assert_eq!(e.code(), "invalid_input", "{e}");
        assert!(
            log.text()
                .contains("==> build failed: requirements.txt line"),
            "{}",
            log.text()
        );
        assert!(!log.text().contains("$ pip"), "{}", log.text());
    }
    assert_eq!(entries(&dir.path().join("fn_url")), Vec::<String>::new());
}

#[tokio::test]
async fn package_json_specs_that_leave_the_registry_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = builder(dir.path());
    for package_json in [
        &br#"{"dependencies":{"x":"file:../x"}}"#[..],
        br#"{"dependencies":{"x":"git+https://github.com/x/y.git"}}"#,
        br#"{"dependencies":{"x":"https://evil.example/x.tgz"}}"#,
        br#"{"dependencies":{"x":"link:../x"}}"#,
    ] {
        let log = MemoryLog::default();
        let src = source(&[
            ("index.js", b"exports.handle = () => 1;\n"),
            ("package.json", package_json),
        ]);
        let e = b
            .build(
                &version("fn_npm", 1, Runtime::Node, "index.handle"),
                &src,
                &log,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_input", "{e}");
    }
    let log = MemoryLog::default();
    let src = source(&[
        ("index.js", b"exports.handle = () => 1;\n"),
        ("package.json", br#"{"dependencies":{"is-number":"7.0.0"}}"#),
        (".npmrc", b"registry=https://evil.example/\n"),
    ]);
    let e = b
        .build(
            &version("fn_npm", 1, Runtime::Node, "index.handle"),
            &src,
            &log,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
    assert_eq!(entries(&dir.path().join("fn_npm")), Vec::<String>::new());
}

#[tokio::test]
async fn unsafe_file_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = builder(dir.path());
    for bad in ["../escape.py", "a/../../escape.py", "/etc/cron.d/x", "a\0b"] {
        let log = MemoryLog::default();
        let src = source(&[("main.py", PY_MAIN), (bad, b"x")]);
        let e = b
            .build(&python("fn_path", 1), &src, &log)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_input", "{bad:?}: {e}");
    }
    assert!(!dir.path().join("escape.py").exists());
    assert_eq!(entries(&dir.path().join("fn_path")), Vec::<String>::new());
}

#[tokio::test]
async fn a_missing_handler_fails_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let b = builder(dir.path());
    for (runtime, handler, file) in [
        (Runtime::Python, "app.handle", "main.py"),
        (Runtime::Node, "app.handle", "index.js"),
        (Runtime::Shell, "run.sh", "other.sh"),
        (Runtime::Binary, "server", "other"),
    ] {
        let log = MemoryLog::default();
        let src = source(&[(file, b"x")]);
        let e = b
            .build(&version("fn_h", 1, runtime, handler), &src, &log)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "build_failed", "{runtime:?}: {e}");
        assert!(e.to_string().contains(handler), "{e}");
        assert!(
            log.text().contains("==> build failed: handler"),
            "{}",
            log.text()
        );
    }
    assert_eq!(entries(&dir.path().join("fn_h")), Vec::<String>::new());
}

#[tokio::test]
async fn shell_and_binary_handlers_are_made_executable() {
    let dir = tempfile::tempdir().unwrap();
    let b = builder(dir.path());
    let log = MemoryLog::default();
    let src = source(&[("run.sh", b"#!/bin/sh\ncat\n"), ("data.txt", b"x")]);
    let artifact = b
        .build(&version("fn_sh", 1, Runtime::Shell, "run.sh"), &src, &log)
        .await
        .unwrap();
    let path = artifact_dir(&artifact);
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(path.join("run.sh")), 0o755);
    assert_eq!(mode(path.join("data.txt")), 0o644);

    // A dynamically linked executable of this machine builds, with a warning.
    let true_bin = std::fs::read("/bin/true").unwrap();
    let log = MemoryLog::default();
    let src = source(&[("bin/true", &true_bin)]);
    let artifact = b
        .build(
            &version("fn_bin", 1, Runtime::Binary, "bin/true"),
            &src,
            &log,
        )
        .await
        .unwrap();
    let path = artifact_dir(&artifact);
    assert_eq!(mode(path.join("bin/true")), 0o755);
    assert!(
        Command::new(path.join("bin/true"))
            .status()
            .unwrap()
            .success(),
        "the built binary runs"
    );
    assert!(
        log.text().contains("is dynamically linked"),
        "{}",
        log.text()
    );

    // Anything that is not an ELF executable is refused.
    let log = MemoryLog::default();
    let src = source(&[("server", b"#!/bin/sh\necho hi\n")]);
    let e = b
        .build(
            &version("fn_notelf", 1, Runtime::Binary, "server"),
            &src,
            &log,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "build_failed");
    assert!(e.to_string().contains("not an ELF executable"), "{e}");
}

#[tokio::test]
async fn remove_deletes_the_artifact_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let b = builder(dir.path());
    let log = MemoryLog::default();
    let src = source(&[("main.py", PY_MAIN)]);
    let v1 = b.build(&python("fn_rm", 1), &src, &log).await.unwrap();
    let v2 = b.build(&python("fn_rm", 2), &src, &log).await.unwrap();
    b.remove(&v1).await.unwrap();
    assert!(!artifact_dir(&v1).exists());
    assert!(artifact_dir(&v2).join("main.py").is_file());
    b.remove(&v1).await.unwrap(); // already gone: fine
    b.remove(&v2).await.unwrap();
    assert!(
        !artifact_dir(&v2).parent().unwrap().exists(),
        "the empty function directory goes too"
    );

    // Nothing outside the artifacts directory, nor the directory itself.
    let outside = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    for path in [
        outside.path().to_path_buf(),
        root.clone(),
        root.join("fn_rm"),
        root.join("fn_rm/v1/../../.."),
        root.join("fn_rm/notaversion"),
    ] {
        let artifact = Artifact::Directory {
            path: path.to_string_lossy().into_owned(),
            digest: None,
        };
        let e = b.remove(&artifact).await.unwrap_err();
        assert_eq!(e.code(), "invalid_input", "{}", path.display());
    }
    assert!(outside.path().exists());
    let image = Artifact::Image {
        reference: "x".into(),
    };
    assert_eq!(b.remove(&image).await.unwrap_err().code(), "invalid_input");
}

#[tokio::test]
async fn stale_staging_directories_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let b = builder(dir.path());
    let log = MemoryLog::default();
    b.build(
        &python("fn_sweep", 1),
        &source(&[("main.py", PY_MAIN)]),
        &log,
    )
    .await
    .unwrap();
    let function_dir = std::fs::canonicalize(dir.path()).unwrap().join("fn_sweep");
    std::fs::create_dir_all(function_dir.join(".v2.staging-abc/deps")).unwrap();
    assert_eq!(b.remove_stale_staging().await.unwrap(), 1);
    assert_eq!(entries(&function_dir), vec!["v1"]);
}

#[path = "support/hostile_index.rs"]
mod hostile_index;

use hostile_index::{Hostile, HostileIndex};

/// Builds a Python function that requires `package` from `index` with `tune` applied to
/// the builder's settings; returns the error, the log, and the most bytes the artifacts
/// directory held while the build ran.
async fn build_hostile(
    index: &HostileIndex,
    package: Hostile,
    tune: impl FnOnce(LocalBuilderConfig) -> LocalBuilderConfig,
) -> (sopm_core::Error, String, u64) {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalBuilderConfig::new(dir.path())
        .with_pip_index_url(&index.url)
        .with_ca_bundle(&index.ca_bundle)
        .with_build_timeout(Duration::from_secs(120));
    let b = tune(config).build().unwrap();
    let log = MemoryLog::default();
    let requirements = format!("{}==1.0\n", package.name);
    let src = source(&[
        ("main.py", PY_MAIN),
        ("requirements.txt", requirements.as_bytes()),
    ]);
    // Samples the disk use of the artifacts directory while the build runs.
    let watched = dir.path().to_path_buf();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(hostile_index::tree_bytes(&watched));
                std::thread::sleep(Duration::from_millis(20));
            }
            most
        })
    };
    let result = b.build(&python("fn_hostile", 1), &src, &log).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = watcher.join().unwrap();
    let text = log.text();
    let e = match result {
        Ok(a) => panic!("the hostile build succeeded: {a:?}\n{text}"),
        Err(e) => e,
    };
    assert_eq!(e.code(), "build_failed", "{e}\n{text}");
    // Nothing of the install runs on, and nothing of it stays on disk.
    assert_eq!(
        hostile_index::survivors(package.comm),
        Vec::<u32>::new(),
        "processes of the install survived it\n{text}"
    );
    let left = hostile_index::tree_bytes(dir.path());
    assert!(
        left < 1 << 20,
        "{left} bytes left in the artifacts directory"
    );
    assert_eq!(
        entries(
            &std::fs::canonicalize(dir.path())
                .unwrap()
                .join("fn_hostile")
        ),
        Vec::<String>::new()
    );
    (e, text, most)
}

fn hostile_index_or_skip() -> Option<HostileIndex> {
    if !have(&[Tool::Bwrap, Tool::Pip]) {
        return None;
    }
    if !HostileIndex::tools_present() {
        let reason = "openssl or python3 is missing (the hostile package index needs them)";
        if std::env::var("SOPM_REQUIRE_INTEGRATION").as_deref() == Ok("1") {
            panic!("SOPM_REQUIRE_INTEGRATION=1 but {reason}");
        }
        eprintln!("skipped: {reason}");
        return None;
    }
    Some(HostileIndex::start())
}

#[tokio::test]
async fn a_fork_bomb_in_setup_stops_at_the_process_limit() {
    let Some(index) = hostile_index_or_skip() else {
        return;
    };
    let (e, text, _) = build_hostile(&index, hostile_index::FORK_BOMB, |c| {
        c.with_build_max_processes(64)
    })
    .await;
    assert!(
        text.contains("==> limits: memory 1 GiB, 64 processes,"),
        "{text}"
    );
    assert!(
        text.contains("==> build stopped: process limit of 64 reached\n"),
        "{text}"
    );
    assert!(
        e.to_string()
            .starts_with("build stopped: process limit of 64 reached during pip install"),
        "{e}"
    );
}

#[tokio::test]
async fn a_memory_hog_in_setup_stops_at_the_memory_limit() {
    let Some(index) = hostile_index_or_skip() else {
        return;
    };
    let (e, text, _) = build_hostile(&index, hostile_index::MEMORY_HOG, |c| {
        c.with_build_memory_bytes(192 << 20)
    })
    .await;
    assert!(
        text.contains("==> build stopped: memory limit of 192 MiB reached\n"),
        "{text}"
    );
    assert!(e.to_string().contains("memory limit of 192 MiB"), "{e}");
}

#[tokio::test]
async fn a_disk_filler_in_setup_stops_at_the_disk_limit_without_touching_the_disk() {
    let Some(index) = hostile_index_or_skip() else {
        return;
    };
    let (e, text, most) = build_hostile(&index, hostile_index::DISK_FILLER, |c| {
        c.with_build_disk_bytes(32 << 20)
            .with_max_artifact_bytes(1 << 30)
    })
    .await;
    assert!(
        text.contains("==> build stopped: disk limit of 32 MiB reached\n"),
        "{text}"
    );
    assert!(e.to_string().contains("disk limit of 32 MiB"), "{e}");
    // The install wrote into its tmpfs: the data directory's disk never held it.
    assert!(
        most < 4 << 20,
        "the artifacts directory held {most} bytes during the build"
    );
}

#[tokio::test]
async fn a_cpu_spinner_in_setup_stops_at_the_cpu_limit() {
    let Some(index) = hostile_index_or_skip() else {
        return;
    };
    let (e, text, _) = build_hostile(&index, hostile_index::CPU_SPINNER, |c| {
        c.with_build_cpu_time(Duration::from_secs(5))
    })
    .await;
    assert!(
        text.contains("==> build stopped: CPU time limit of 5 s reached\n"),
        "{text}"
    );
    assert!(e.to_string().contains("CPU time limit of 5 s"), "{e}");
}
