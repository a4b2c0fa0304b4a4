//! Boots gVisor sandboxes: finds the host's tools once, writes the runners and the root
//! skeleton to the scratch dir, sweeps sandboxes left by a dead server, writes a bundle
//! per sandbox, spawns `runsc run` and waits for the runner's hello.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sopm_core::{Error, Limits, Result};
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

use super::bundle::{self, BundlePlan};
use crate::host::child::{death_of, exit_soon, is_running};
use crate::host::interpreters::Interpreters;
use crate::host::mounts::{host_binds, TopLevel, HOST_FILES};
use crate::host::rlimits::rlimit_args;
use crate::host::runner_files::write_runners;
use crate::host::sandbox_name;
use crate::host::settings::SandboxSettings;
use crate::host::tools::tool;
use crate::sandbox::protocol::RunnerChannel;
use crate::sandbox::{Death, LaunchSpec, RunnerKind, Sandbox, SandboxLauncher};

/// Prefix of every sandbox id we make: `sopm-<server pid>-<n>`.
const ID_PREFIX: &str = "sopm-";

/// What the host offers, found once on first use.
#[derive(Debug)]
struct HostTools {
    runsc: Runsc,
    interpreters: Interpreters,
    runners_dir: PathBuf,
    rootfs: PathBuf,
    top_level: Vec<TopLevel>,
    host_files: Vec<(PathBuf, PathBuf)>,
}

/// How to run `runsc` for one executor: the binary and its global flags.
#[derive(Debug, Clone)]
struct Runsc {
    exe: PathBuf,
    root: PathBuf,
    global: Vec<String>,
}

impl Runsc {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--root")
            .arg(&self.root)
            .args(&self.global)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .kill_on_drop(true);
        cmd
    }

    /// Kills and deletes a sandbox (`runsc delete --force`), quietly: it may be gone.
    async fn destroy(&self, id: &str) {
        let run = self
            .command()
            .args(["delete", "--force", id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .is_err()
        {
            tracing::warn!(sandbox = id, "runsc delete did not finish");
        }
    }

    /// The same, for a `Drop` outside any tokio runtime.
    fn destroy_blocking(&self, id: &str) {
        let _ = std::process::Command::new(&self.exe)
            .arg("--root")
            .arg(&self.root)
            .args(&self.global)
            .args(["delete", "--force", id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Ids of the sandboxes in this state dir.
    async fn list(&self) -> Vec<String> {
        let out = self
            .command()
            .args(["list", "--quiet"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        match tokio::time::timeout(Duration::from_secs(10), out).await {
            Ok(Ok(o)) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Boots sandboxes under gVisor.
#[derive(Debug)]
pub struct GvisorLauncher {
    settings: SandboxSettings,
    /// The runsc state directory (`runsc --root`).
    state_dir: PathBuf,
    /// The global flags of every `runsc` command.
    runsc_flags: Vec<String>,
    tools: OnceCell<Arc<HostTools>>,
}

impl GvisorLauncher {
    pub(crate) fn new(settings: SandboxSettings) -> Self {
        let mut runsc_flags = vec![
            "--network=none".to_string(),
            format!("--platform={}", settings.gvisor_platform.as_str()),
            // Apply the bundle's seccomp profile inside the sandbox too.
            "--oci-seccomp".to_string(),
        ];
        if !settings.cgroups {
            runsc_flags.push("--ignore-cgroups".into());
        }
        GvisorLauncher {
            state_dir: settings.scratch_dir().join("state"),
            runsc_flags,
            settings,
            tools: OnceCell::new(),
        }
    }

    async fn tools(&self) -> Result<Arc<HostTools>> {
        self.tools
            .get_or_try_init(|| async { self.probe().await.map(Arc::new) })
            .await
            .cloned()
    }

    /// The runsc state directory (`runsc --root`).
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone()
    }

    /// Where the per-sandbox bundle directories go.
    pub fn bundles_dir(&self) -> PathBuf {
        self.settings.scratch_dir().join("bundles")
    }

    async fn probe(&self) -> Result<HostTools> {
        use std::os::unix::fs::PermissionsExt;
        let settings = &self.settings;
        let runsc = Runsc {
            exe: tool(&settings.runsc, "runsc", "the gvisor executor needs runsc")?,
            root: self.state_dir.clone(),
            global: self.runsc_flags.clone(),
        };
        let interpreters = Interpreters::probe(&settings.python, &settings.node).await;
        let scratch = settings.scratch_dir();
        let io = |what: &str, e: std::io::Error| {
            Error::Internal(format!(
                "cannot prepare {what} in {}: {e}",
                scratch.display()
            ))
        };
        let runners_dir = write_runners(&scratch).map_err(|e| io("the runners", e))?;
        for d in [&self.state_dir, &self.bundles_dir()] {
            std::fs::create_dir_all(d).map_err(|e| io("the state dirs", e))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io("the state dirs", e))?;
        }
        let top_level = TopLevel::of_host();
        let host_files = host_binds(&HOST_FILES);
        let mut binds: Vec<PathBuf> = settings.extra_ro_binds.clone();
        binds.extend(interpreters.binds().cloned());
        let rootfs = scratch.join("rootfs");
        bundle::write_skeleton(&rootfs, &top_level, &host_files, &binds)
            .map_err(|e| io("the root skeleton", e))?;
        sweep_stale(&runsc, &self.bundles_dir()).await;
        Ok(HostTools {
            runsc,
            interpreters,
            runners_dir,
            rootfs,
            top_level,
            host_files,
        })
    }
}

/// Whether a sandbox id is ours and its server process is gone.
fn is_stale(id: &str) -> bool {
    let Some(rest) = id.strip_prefix(ID_PREFIX) else {
        return false;
    };
    let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes sandboxes and bundle dirs left by servers that died without cleaning up.
async fn sweep_stale(runsc: &Runsc, bundles: &Path) {
    for id in runsc.list().await {
        if is_stale(&id) {
            tracing::info!(sandbox = %id, "deleting a stale gVisor sandbox");
            runsc.destroy(&id).await;
        }
    }
    if let Ok(entries) = std::fs::read_dir(bundles) {
        for e in entries.flatten() {
            if e.file_name().to_str().is_some_and(is_stale) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

#[async_trait]
impl SandboxLauncher for GvisorLauncher {
    type Sandbox = GvisorSandbox;

    async fn launch(&self, spec: &LaunchSpec) -> Result<GvisorSandbox> {
        spec.check_host_backend("gvisor")?;
        let tools = self.tools().await?;
        let interpreter = tools.interpreters.for_runner(spec.runner)?;
        let id = format!("{ID_PREFIX}{}", sandbox_name());
        let bundle_dir = self.bundles_dir().join(&id);
        let plan = BundlePlan {
            rootfs: &tools.rootfs,
            runner: spec.runner,
            interpreter,
            runners_dir: &tools.runners_dir,
            top_level: &tools.top_level,
            host_files: &tools.host_files,
            extra_binds: &self.settings.extra_ro_binds,
            limits: &spec.limits,
            mount: spec.mount.as_deref(),
            code_tmpfs_bytes: self.settings.pool.code_tmpfs_bytes(),
            cgroups_path: self
                .settings
                .cgroups
                .then(|| format!("/{}/{id}", self.settings.cgroup_parent)),
            cpu_millis: self.settings.cpu_millis,
        };
        let config = bundle::config_json(&plan).to_string();
        std::fs::create_dir_all(&bundle_dir)
            .and_then(|()| std::fs::write(bundle_dir.join("config.json"), config))
            .map_err(|e| Error::Internal(format!("cannot write a gVisor bundle: {e}")))?;
        let runsc = tools.runsc.clone();
        let mut cmd = runsc.command();
        cmd.arg(format!("--log={}", bundle_dir.join("runsc.log").display()))
            .args(["run", "--bundle"])
            .arg(&bundle_dir)
            .arg(&id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut sandbox = GvisorSandbox {
            id,
            bundle_dir,
            runsc,
            channel: None,
            child: None,
            ended: None,
            destroyed: false,
        };
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                sandbox.terminate().await;
                return Err(Error::Internal(format!("cannot start runsc: {e}")));
            }
        };
        sandbox.channel = Some(RunnerChannel::of_child(&mut child));
        sandbox.child = Some(child);
        if let Err(e) = sandbox.channel().hello().await {
            let log = sandbox.runsc_log_tail();
            let death = sandbox.post_mortem().await;
            return Err(Error::Unavailable(format!(
                "the {} runner did not start in gVisor ({e}; {death:?}){log}",
                spec.runner.as_str()
            )));
        }
        Ok(sandbox)
    }
}

/// One gVisor sandbox: the `runsc run` process, the sandbox it made, and its bundle.
#[derive(Debug)]
pub struct GvisorSandbox {
    id: String,
    bundle_dir: PathBuf,
    runsc: Runsc,
    channel: Option<RunnerChannel>,
    child: Option<Child>,
    ended: Option<ExitStatus>,
    destroyed: bool,
}

impl GvisorSandbox {
    /// The sandbox's id (its runsc container id).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn runsc_log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.bundle_dir.join("runsc.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        if tail.is_empty() {
            String::new()
        } else {
            format!(
                "; runsc: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )
        }
    }

    /// Deletes the sandbox, reaps `runsc run` and removes the bundle.
    async fn destroy(&mut self) {
        if !self.destroyed {
            self.destroyed = true;
            self.runsc.destroy(&self.id).await;
        }
        if let Some(mut child) = self.child.take() {
            let status = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
                Ok(Ok(st)) => Some(st),
                _ => {
                    let _ = child.start_kill();
                    child.wait().await.ok()
                }
            };
            if let Some(st) = status {
                self.ended.get_or_insert(st);
            }
        }
        let _ = std::fs::remove_dir_all(&self.bundle_dir);
    }
}

#[async_trait]
impl Sandbox for GvisorSandbox {
    fn channel(&mut self) -> &mut RunnerChannel {
        self.channel
            .as_mut()
            .expect("a launched sandbox has a channel")
    }

    async fn set_limits(&mut self, from: &Limits, to: &Limits) -> Result<()> {
        // rlimits are fixed in the bundle and enforced by the gVisor kernel: a function
        // with other ones gets a dedicated sandbox.
        let same_rlimits = RunnerKind::SCRIPTS
            .into_iter()
            .all(|r| rlimit_args(r, from, false) == rlimit_args(r, to, false));
        let same_resources =
            from.memory_mb == to.memory_mb && from.max_processes == to.max_processes;
        if same_rlimits && same_resources {
            Ok(())
        } else {
            Err(Error::Unavailable(
                "a gVisor sandbox's limits cannot change after boot".into(),
            ))
        }
    }

    fn is_alive(&mut self) -> bool {
        is_running(&mut self.child)
    }

    fn mark_clean(&mut self) {}

    fn memory_exceeded(&mut self) -> bool {
        false
    }

    fn is_clean(&mut self) -> bool {
        // Counting the sandbox's processes takes a `runsc ps` (tens of milliseconds) per
        // call; the sandbox's own pid namespace bounds what a call can leave behind.
        true
    }

    async fn post_mortem(&mut self) -> Death {
        let Some(child) = self.child.as_mut() else {
            return Death::Killed;
        };
        let status = exit_soon(child).await;
        self.destroy().await;
        death_of(status)
    }

    async fn terminate(&mut self) {
        self.destroy().await;
    }
}

impl Drop for GvisorSandbox {
    fn drop(&mut self) {
        // Dropped without `terminate` (a cancelled call): `kill_on_drop` ends `runsc run`;
        // the sandbox itself needs a `runsc delete`.
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if self.destroyed && self.child.is_none() {
            return;
        }
        let runsc = self.runsc.clone();
        let id = self.id.clone();
        let bundle = self.bundle_dir.clone();
        let destroyed = self.destroyed;
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    if !destroyed {
                        runsc.destroy(&id).await;
                    }
                    let _ = std::fs::remove_dir_all(bundle);
                });
            }
            Err(_) => {
                if !destroyed {
                    runsc.destroy_blocking(&id);
                }
                let _ = std::fs::remove_dir_all(bundle);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_dead_servers_sandboxes_are_stale() {
        assert!(!is_stale("someone-else-1"));
        assert!(!is_stale(&format!("sopm-{}-3", std::process::id())));
        assert!(is_stale("sopm-4000000000-1"));
    }
}
