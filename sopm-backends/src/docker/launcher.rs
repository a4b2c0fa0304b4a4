//! Boots Docker containers with a runner inside and speaks to it through the attach
//! stream: stdin carries host frames; the multiplexed stdout/stderr stream is split into
//! the frame and log channels.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{ContainerCreateBody, ContainerUpdateBody, HostConfig, ResourcesUlimits};
use bollard::query_parameters::{AttachContainerOptions, CreateContainerOptions};
use bollard::Docker;
use futures::StreamExt;
use sopm_core::{Artifact, Error, Limits, Result, Runtime};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use super::containers::remove_container;
use super::daemon::{Daemon, RUNNER_DIR};
use crate::host::cgroup::oom_kills_in;
use crate::host::oom_watch::OomWatch;
use crate::host::settings::SandboxSettings;
use crate::sandbox::protocol::{BoxRead, BoxWrite, RUNNER_PROLOGUE};
use crate::sandbox::{
    load_directory, Death, FunctionCode, LaunchSpec, RunnerChannel, RunnerKind, Sandbox,
    SandboxLauncher, CODE_DIR,
};

/// Room for frames in flight between the attach stream and the channel readers.
const PIPE_BYTES: usize = 256 * 1024;

/// Boots the Docker backend's containers.
#[derive(Debug)]
pub struct DockerLauncher {
    config: SandboxSettings,
    daemon: Arc<Daemon>,
}

impl DockerLauncher {
    pub(crate) fn new(config: SandboxSettings, daemon: Arc<Daemon>) -> Self {
        DockerLauncher { config, daemon }
    }

    pub(crate) fn daemon(&self) -> Arc<Daemon> {
        self.daemon.clone()
    }

    /// The cgroup limits of a container for `limits`, with the runtime's overhead.
    fn cgroup_limits(&self) -> CgroupLimits {
        CgroupLimits {
            memory_overhead_mb: self.config.runtime_memory_overhead_mb,
            pids_overhead: self.config.runtime_pids_overhead,
        }
    }

    fn host_config(&self, spec: &LaunchSpec) -> HostConfig {
        let limits = &spec.limits;
        let (memory, pids) = self.cgroup_limits().of(limits);
        let mut tmpfs = HashMap::from([(
            "/tmp".to_string(),
            format!("rw,nosuid,nodev,size={}m,mode=1777", limits.tmpfs_mb.max(1)),
        )]);
        let mut binds = Vec::new();
        if let Some(dir) = &spec.mount {
            binds.push(format!("{}:{CODE_DIR}:ro", dir.display()));
        } else if spec.image.is_none() {
            // The image's own /fn decides the mount's mode, so the runner's user gets
            // the mount instead.
            let code_mb = self.config.pool.code_tmpfs_bytes() >> 20;
            let owner = numeric_ids(&self.config.user)
                .map(|(u, g)| format!(",uid={u},gid={g}"))
                .unwrap_or_default();
            tmpfs.insert(
                CODE_DIR.to_string(),
                format!("rw,nosuid,nodev,exec,size={code_mb}m,mode=1777{owner}"),
            );
        }
        HostConfig {
            memory: Some(memory),
            memory_swap: Some(memory),
            pids_limit: Some(pids),
            nano_cpus: Some(self.config.cpu_millis as i64 * 1_000_000),
            ulimits: Some(ulimits(limits)),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            binds: (!binds.is_empty()).then_some(binds),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(security_opts()),
            network_mode: Some(if spec.network { "bridge" } else { "none" }.into()),
            init: Some(true),
            runtime: self.config.docker_runtime.clone(),
            auto_remove: Some(false),
            ..Default::default()
        }
    }
}

/// `no-new-privileges`, and the host layer's seccomp profile in place of Docker's
/// default (which allows `ptrace` on current kernels) where it knows this architecture.
fn security_opts() -> Vec<String> {
    let mut opts = vec!["no-new-privileges".to_string()];
    if let Some(arch) = crate::host::seccomp::Arch::native() {
        opts.push(format!("seccomp={}", crate::host::seccomp::oci(arch)));
    }
    opts
}

/// The runtime's room on top of a function's memory and pids limits (gVisor's own kernel
/// lives in the container's cgroup under runsc).
#[derive(Debug, Clone, Copy)]
struct CgroupLimits {
    memory_overhead_mb: u64,
    pids_overhead: u64,
}

impl CgroupLimits {
    /// The container's memory limit in bytes (no swap beyond it) and pids limit.
    fn of(self, limits: &Limits) -> (i64, i64) {
        let memory = (limits.memory_mb + self.memory_overhead_mb) << 20;
        let pids = limits.max_processes.max(4) + self.pids_overhead;
        (memory as i64, pids as i64)
    }
}

/// The uid and gid of a `uid:gid` (or `uid`) user.
fn numeric_ids(user: &str) -> Option<(u32, u32)> {
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// The open-files, file-size and core-dump ulimits of a container.
fn ulimits(limits: &Limits) -> Vec<ResourcesUlimits> {
    let files = limits.max_open_files.max(16) as i64;
    let fsize = (limits.tmpfs_mb.max(1) << 20) as i64;
    [("nofile", files), ("fsize", fsize), ("core", 0)]
        .into_iter()
        .map(|(name, v)| ResourcesUlimits {
            name: Some(name.into()),
            soft: Some(v),
            hard: Some(v),
        })
        .collect()
}

/// The command of a runner container: the prologue, then the runner.
fn runner_command(runner: RunnerKind, limits: &Limits) -> Vec<String> {
    let mut cmd: Vec<String> = ["/bin/sh", "-c", RUNNER_PROLOGUE, "sopm-runner"]
        .map(String::from)
        .to_vec();
    let runner_path = format!("{RUNNER_DIR}/{}", runner.file_name());
    match runner {
        RunnerKind::Python => cmd.extend(["python3", "-I", "-S", "-B"].map(String::from)),
        RunnerKind::Node => {
            cmd.push("node".into());
            cmd.push(format!("--max-old-space-size={}", limits.memory_mb.max(16)));
        }
        RunnerKind::Static => {}
    }
    cmd.push(runner_path);
    cmd
}

fn container_name(executor: &str) -> String {
    format!("sopm-{executor}-{}", uuid::Uuid::new_v4().simple())
}

#[async_trait]
impl SandboxLauncher for DockerLauncher {
    type Sandbox = DockerSandbox;

    async fn launch(&self, spec: &LaunchSpec) -> Result<DockerSandbox> {
        let docker = self.daemon.client().await?;
        let image = match &spec.image {
            Some(image) => {
                self.daemon.images().ensure(&docker, image).await?;
                image.clone()
            }
            None => self.daemon.runner_image(spec.runner).await?,
        };
        let name = container_name(self.daemon.executor());
        let labels = self.daemon.labels();
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            cmd: Some(runner_command(spec.runner, &spec.limits)),
            entrypoint: Some(Vec::new()),
            user: Some(self.config.user.clone()),
            working_dir: Some(CODE_DIR.into()),
            env: Some(vec![
                "PATH=/usr/local/bin:/usr/bin:/bin".into(),
                "HOME=/tmp".into(),
                "LANG=C.UTF-8".into(),
            ]),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(false),
            tty: Some(false),
            network_disabled: Some(!spec.network),
            labels: Some(labels),
            host_config: Some(self.host_config(spec)),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let created = match docker
            .create_container(Some(options.clone()), body.clone())
            .await
        {
            // The runner image went away (another server on this host pruned it, or an
            // operator): build it again, once.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) if spec.image.is_none() => {
                self.daemon.forget_runner_image(spec.runner).await;
                let image = self.daemon.runner_image(spec.runner).await?;
                let body = ContainerCreateBody {
                    image: Some(image),
                    ..body
                };
                docker.create_container(Some(options), body).await
            }
            // The function image went away (an operator removed it): pull it again by
            // its digest, once.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) if spec.image.is_some() => {
                self.daemon.images().forget(&image);
                self.daemon.images().ensure(&docker, &image).await?;
                docker.create_container(Some(options), body).await
            }
            other => other,
        }
        .map_err(|e| Error::Unavailable(format!("cannot create a container of '{image}': {e}")))?;
        let mut sandbox = DockerSandbox {
            id: created.id,
            docker: docker.clone(),
            runner: spec.runner,
            channel: None,
            alive: Arc::new(AtomicBool::new(true)),
            pump: None,
            removed: false,
            cgroup_limits: self.cgroup_limits(),
            memory_cgroup: None,
            oom_watch: None,
            oom_base: 0,
        };
        let attached = docker
            .attach_container(
                &sandbox.id,
                Some(AttachContainerOptions {
                    stream: true,
                    stdin: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            )
            .await;
        let attached = match attached {
            Ok(a) => a,
            Err(e) => {
                sandbox.terminate().await;
                return Err(Error::Unavailable(format!(
                    "cannot attach to a container: {e}"
                )));
            }
        };
        let (frames_r, frames_w) = tokio::io::simplex(PIPE_BYTES);
        let (logs_r, logs_w) = tokio::io::simplex(PIPE_BYTES);
        sandbox.pump = Some(tokio::spawn(pump(
            attached.output,
            frames_w,
            logs_w,
            sandbox.alive.clone(),
        )));
        let stdin: BoxWrite = Box::new(attached.input);
        let frames: BoxRead = Box::new(frames_r);
        let logs: BoxRead = Box::new(logs_r);
        sandbox.channel = Some(RunnerChannel::new(
            stdin,
            frames,
            logs,
            RunnerChannel::fresh_marker(),
        ));
        if let Err(e) = docker.start_container(&sandbox.id, None).await {
            sandbox.terminate().await;
            return Err(Error::Unavailable(format!(
                "cannot start a container of '{image}': {e}"
            )));
        }
        sandbox.watch_memory();
        if let Err(e) = sandbox.channel().hello().await {
            let death = sandbox.post_mortem().await;
            return Err(Error::Unavailable(format!(
                "the {} runner did not start in a container of '{image}' ({e}; {death:?})",
                spec.runner.as_str()
            )));
        }
        Ok(sandbox)
    }

    async fn after_shutdown(&self) {
        self.daemon.remove_own_containers().await;
    }

    fn runner_for(&self, runtime: Runtime) -> Option<RunnerKind> {
        super::docker_runner(runtime)
    }

    async fn load_code(&self, artifact: &Artifact, max_inline_bytes: u64) -> Result<FunctionCode> {
        match artifact {
            Artifact::Directory { path, .. } => {
                load_directory(std::path::PathBuf::from(path), max_inline_bytes).await
            }
            Artifact::Image { reference } => {
                // The image carries the code: stem cells take it in an init frame, read
                // out of the image (pulled by digest first on a node that lacks it); code
                // too big for a frame boots from the image itself.
                let docker = self.daemon.client().await?;
                self.daemon
                    .images()
                    .code(&docker, reference, self.daemon.labels(), max_inline_bytes)
                    .await
            }
        }
    }
}

/// Splits the attach stream into the frame and log pipes until it ends.
async fn pump(
    mut output: std::pin::Pin<
        Box<
            dyn futures::Stream<
                    Item = std::result::Result<
                        bollard::container::LogOutput,
                        bollard::errors::Error,
                    >,
                > + Send,
        >,
    >,
    mut frames: tokio::io::WriteHalf<tokio::io::SimplexStream>,
    mut logs: tokio::io::WriteHalf<tokio::io::SimplexStream>,
    alive: Arc<AtomicBool>,
) {
    use bollard::container::LogOutput;
    while let Some(item) = output.next().await {
        let ok = match item {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                frames.write_all(&message).await.is_ok()
            }
            Ok(LogOutput::StdErr { message }) => logs.write_all(&message).await.is_ok(),
            Ok(LogOutput::StdIn { .. }) => true,
            Err(_) => false,
        };
        if !ok {
            break;
        }
    }
    alive.store(false, Ordering::Release);
    let _ = frames.shutdown().await;
    let _ = logs.shutdown().await;
}

/// One container with a runner inside.
#[derive(Debug)]
pub struct DockerSandbox {
    id: String,
    docker: Docker,
    runner: RunnerKind,
    channel: Option<RunnerChannel>,
    alive: Arc<AtomicBool>,
    pump: Option<JoinHandle<()>>,
    removed: bool,
    cgroup_limits: CgroupLimits,
    /// The container's memory cgroup on this host (v2 or not), when the daemon is
    /// local and it is found: OOM kills of processes other than the runner are read
    /// there.
    memory_cgroup: Option<(std::path::PathBuf, bool)>,
    /// Its OOM kills as they happen: the runtime removes the cgroup as soon as the
    /// container exits, and the daemon's `OOMKilled` misses a kill whose event comes
    /// after the exit.
    oom_watch: Option<OomWatch>,
    oom_base: u64,
}

/// The memory cgroup directory of a container of the local daemon: cgroup v1
/// (`memory/docker/<id>`), v2 with the cgroupfs driver (`docker/<id>`) or with the
/// systemd driver (`system.slice/docker-<id>.scope`).
fn memory_cgroup(id: &str) -> Option<(std::path::PathBuf, bool)> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    [
        (root.join("memory/docker").join(id), false),
        (root.join("docker").join(id), true),
        (root.join(format!("system.slice/docker-{id}.scope")), true),
    ]
    .into_iter()
    .find(|(dir, v2)| {
        dir.join(if *v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        })
        .is_file()
    })
}

impl DockerSandbox {
    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Finds the container's memory cgroup and watches its OOM kills.
    fn watch_memory(&mut self) {
        self.memory_cgroup = memory_cgroup(&self.id);
        self.oom_watch = self.memory_cgroup.as_ref().and_then(|(dir, v2)| {
            OomWatch::start(dir, *v2)
                .inspect_err(|e| {
                    // Once per process: a host that refuses one refuses them all.
                    static SAID: AtomicBool = AtomicBool::new(false);
                    if !SAID.swap(true, Ordering::Relaxed) {
                        tracing::warn!(cgroup = %dir.display(), "cannot watch containers' OOM kills ({e}); a kill whose event reaches the daemon after the container's exit will be reported as a crash");
                    }
                })
                .ok()
        });
    }

    /// The container's OOM kills so far: read from its cgroup while it is there, and
    /// as they were seen.
    fn oom_kills(&self) -> u64 {
        let now = self
            .memory_cgroup
            .as_ref()
            .map_or(0, |(dir, v2)| oom_kills_in(dir, *v2));
        now.max(self.oom_watch.as_ref().map_or(0, OomWatch::kills))
    }
}

async fn container_state(docker: &Docker, id: &str) -> Option<bollard::models::ContainerState> {
    docker
        .inspect_container(id, None)
        .await
        .ok()
        .and_then(|i| i.state)
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn channel(&mut self) -> &mut RunnerChannel {
        self.channel
            .as_mut()
            .expect("a launched container has a channel")
    }

    async fn set_limits(&mut self, from: &Limits, to: &Limits) -> Result<()> {
        // ulimits are fixed at creation, and node's heap flag too.
        let fixed = ulimits(from) == ulimits(to)
            && (self.runner != RunnerKind::Node || from.memory_mb == to.memory_mb);
        if !fixed {
            return Err(Error::Unavailable(
                "a container's ulimits cannot change after creation".into(),
            ));
        }
        if from.memory_mb == to.memory_mb && from.max_processes == to.max_processes {
            return Ok(());
        }
        let (memory, pids) = self.cgroup_limits.of(to);
        let update = ContainerUpdateBody {
            memory: Some(memory),
            memory_swap: Some(memory),
            pids_limit: Some(pids),
            ..Default::default()
        };
        self.docker
            .update_container(&self.id, update)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot change a container's limits: {e}")))
    }

    fn is_alive(&mut self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn mark_clean(&mut self) {
        self.oom_base = self.oom_kills();
    }

    fn memory_exceeded(&mut self) -> bool {
        self.oom_kills() > self.oom_base
    }

    fn is_clean(&mut self) -> bool {
        // Counting the container's processes costs a daemon round trip per call; the
        // runner kills each invocation's process group, the container's pid namespace and
        // pids limit bound what is left, and its init reaps orphans.
        true
    }

    async fn post_mortem(&mut self) -> Death {
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        let mut state = container_state(&self.docker, &self.id).await;
        while state.as_ref().is_some_and(|s| s.running == Some(true))
            && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            state = container_state(&self.docker, &self.id).await;
        }
        let killed_for_memory =
            self.memory_exceeded() || state.as_ref().is_some_and(|s| s.oom_killed == Some(true));
        let death = match &state {
            _ if killed_for_memory => Death::OutOfMemory,
            Some(s) if s.running == Some(true) => Death::Killed,
            Some(s) => match s.exit_code {
                Some(code) => Death::Exited(format!("exit code {code}")),
                None => Death::Exited("gone".into()),
            },
            None => Death::Exited("gone".into()),
        };
        self.terminate().await;
        death
    }

    async fn terminate(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        remove_container(&self.docker, &self.id).await;
        if let Some(p) = self.pump.take() {
            p.abort();
        }
        self.alive.store(false, Ordering::Release);
    }
}

impl Drop for DockerSandbox {
    fn drop(&mut self) {
        if let Some(p) = self.pump.take() {
            p.abort();
        }
        if self.removed {
            return;
        }
        let docker = self.docker.clone();
        let id = std::mem::take(&mut self.id);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move { remove_container(&docker, &id).await });
            }
            Err(_) => {
                tracing::warn!(container = %id, "a container outlived the runtime; it is removed at the next start")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::SandboxKind;

    #[test]
    fn commands_start_the_runner_behind_the_prologue() {
        let l = Limits::default();
        let py = runner_command(RunnerKind::Python, &l);
        assert_eq!(&py[..4], &["/bin/sh", "-c", RUNNER_PROLOGUE, "sopm-runner"]);
        assert_eq!(py.last().unwrap(), "/opt/sopm/runner.py");
        assert!(py.contains(&"-I".to_string()));
        let node = runner_command(RunnerKind::Node, &l);
        assert!(node.contains(&"--max-old-space-size=256".to_string()));
        let st = runner_command(RunnerKind::Static, &l);
        assert_eq!(st[4..], ["/opt/sopm/sopm-runner".to_string()]);
    }

    #[test]
    fn host_config_isolates_and_limits() {
        let config = SandboxSettings::new(SandboxKind::Docker).with_docker_runtime("runsc");
        let daemon = Arc::new(Daemon::new(&config));
        let launcher = DockerLauncher::new(config, daemon);
        let spec = LaunchSpec {
            runner: RunnerKind::Python,
            limits: Limits::default(),
            network: false,
            mount: None,
            image: None,
        };
        let h = launcher.host_config(&spec);
        assert_eq!(h.memory, Some((256 + 128) << 20));
        assert_eq!(h.memory, h.memory_swap);
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.runtime.as_deref(), Some("runsc"));
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]));
        let tmpfs = h.tmpfs.unwrap();
        assert!(tmpfs["/tmp"].contains("size=64m"));
        assert!(
            tmpfs[CODE_DIR].ends_with(",uid=65534,gid=65534"),
            "{tmpfs:?}"
        );
        let mounted = LaunchSpec {
            mount: Some("/srv/artifact".into()),
            ..spec
        };
        let h = launcher.host_config(&mounted);
        assert_eq!(h.binds, Some(vec!["/srv/artifact:/fn:ro".to_string()]));
        assert!(!h.tmpfs.unwrap().contains_key(CODE_DIR));
    }
}
