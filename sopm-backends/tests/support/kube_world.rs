//! What the kubernetes tests share: the runner "images" (host directories holding the
//! runners, standing for the images' `/opt/sopm`), the fake API with them, and settings
//! of an executor pointed at it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sopm_backends::host::PoolSettings;
use sopm_backends::kubernetes::KubernetesSettings;
use sopm_backends::sandbox::RunnerKind;

use super::fake_kube::{fake_unavailable, FakeKube};

/// The python runner image the tests use (a digest the fake knows).
pub const PY_IMAGE: &str =
    "registry.test/sopm/runner-python@sha256:1111111111111111111111111111111111111111111111111111111111111111";
/// The node runner image.
pub const NODE_IMAGE: &str =
    "registry.test/sopm/runner-node@sha256:2222222222222222222222222222222222222222222222222222222222222222";
/// The static runner image.
pub const STATIC_IMAGE: &str =
    "registry.test/sopm/runner-static@sha256:3333333333333333333333333333333333333333333333333333333333333333";

/// The static runner with TCP mode: `SOPM_STATIC_RUNNER`, else what
/// `scripts/build-runner.sh` builds; `Err` says why there is none.
pub fn static_runner() -> Result<PathBuf, String> {
    let path = std::env::var_os("SOPM_STATIC_RUNNER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/sopm-runner/sopm-runner")
        });
    if !path.is_file() {
        return Err(format!(
            "no static runner at {} (scripts/build-runner.sh, or SOPM_STATIC_RUNNER)",
            path.display()
        ));
    }
    let out = std::process::Command::new(&path)
        .arg("--listen")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    if !String::from_utf8_lossy(&out.stderr).contains("--listen takes one") {
        return Err(format!(
            "the static runner at {} has no TCP mode; rebuild it (scripts/build-runner.sh)",
            path.display()
        ));
    }
    Ok(path)
}

/// A fake API with the three runner images, and the directory behind them.
pub struct World {
    pub fake: FakeKube,
    pub runners: tempfile::TempDir,
}

/// Why the world cannot be made here, if it cannot.
pub fn world_unavailable(needs_static: bool) -> Option<String> {
    if let Some(why) = fake_unavailable() {
        return Some(why);
    }
    for tool in ["python3", "node"] {
        if !std::path::Path::new("/usr/bin").join(tool).is_file() {
            return Some(format!(
                "/usr/bin/{tool} is missing (the fake's pods use the host's)"
            ));
        }
    }
    if needs_static {
        if let Err(why) = static_runner() {
            return Some(why);
        }
    }
    None
}

impl World {
    /// Writes the runners and starts the fake API.
    pub async fn start() -> World {
        let runners = tempfile::tempdir().expect("tempdir");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(runners.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        for kind in RunnerKind::SCRIPTS {
            std::fs::write(
                runners.path().join(kind.file_name()),
                kind.source().expect("a script runner"),
            )
            .expect("write a runner");
        }
        if let Ok(path) = static_runner() {
            std::fs::copy(path, runners.path().join("sopm-runner"))
                .expect("copy the static runner");
        }
        let dir = runners.path().to_path_buf();
        let images: BTreeMap<String, PathBuf> = [PY_IMAGE, NODE_IMAGE, STATIC_IMAGE]
            .into_iter()
            .map(|i| (i.to_string(), dir.clone()))
            .collect();
        World {
            fake: FakeKube::start(images).await,
            runners,
        }
    }

    /// Settings of executors on this fake: a fresh instance id, every runner image, a
    /// port per pod on 127.0.0.1, one stem cell per runner, 20 s per pod start.
    pub fn settings(&self) -> KubernetesSettings {
        KubernetesSettings::new()
            .with_client(self.fake.client())
            .with_instance(format!(
                "test-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..10]
            ))
            .with_listen_host("127.0.0.1")
            .with_port_per_pod(Arc::new(free_port))
            .with_image(RunnerKind::Python, PY_IMAGE)
            .with_image(RunnerKind::Node, NODE_IMAGE)
            .with_image(RunnerKind::Static, STATIC_IMAGE)
            .with_job_grace(Duration::from_secs(2))
            .with_pool(
                PoolSettings::new(RunnerKind::ALL)
                    .with_stem_cells(1)
                    .with_boot_timeout(Duration::from_secs(20)),
            )
    }
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits (up to 5 s) until `check` holds.
pub async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}
