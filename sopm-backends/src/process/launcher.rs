//! Boots process sandboxes: finds the host's tools once, writes the runners to the
//! scratch dir, makes a cgroup per sandbox, spawns `[sh] prlimit bwrap` and waits for the
//! runner's hello.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use async_trait::async_trait;
use sopm_core::{Error, Limits, Result};
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

use super::bwrap::{self, SandboxPlan};
use crate::host::cgroup::{CgroupRoot, SandboxCgroup};
use crate::host::child::{death_of, exit_soon, is_running};
use crate::host::interpreters::Interpreters;
use crate::host::mounts::TopLevel;
use crate::host::rlimits::rlimit_args;
use crate::host::runner_files::write_runners;
use crate::host::sandbox_name;
use crate::host::settings::SandboxSettings;
use crate::host::tools::tool;
use crate::sandbox::protocol::RunnerChannel;
use crate::sandbox::{Death, LaunchSpec, RunnerKind, Sandbox, SandboxLauncher};

/// What the host offers, found once on first use.
#[derive(Debug)]
struct HostTools {
    bwrap: PathBuf,
    prlimit: PathBuf,
    sh: PathBuf,
    interpreters: Interpreters,
    runners_dir: PathBuf,
    seccomp: PathBuf,
    top_level: Vec<TopLevel>,
    cgroups: Option<CgroupRoot>,
}

/// Boots sandboxes under bubblewrap.
#[derive(Debug)]
pub struct ProcessLauncher {
    settings: SandboxSettings,
    tools: OnceCell<Arc<HostTools>>,
}

impl ProcessLauncher {
    pub(crate) fn new(settings: SandboxSettings) -> Self {
        ProcessLauncher {
            settings,
            tools: OnceCell::new(),
        }
    }

    async fn tools(&self) -> Result<Arc<HostTools>> {
        self.tools
            .get_or_try_init(|| async { probe(&self.settings).await.map(Arc::new) })
            .await
            .cloned()
    }

    /// Whether sandboxes get cgroup limits on this host (after the first launch).
    pub fn cgroups_enabled(&self) -> Option<bool> {
        self.tools.get().map(|t| t.cgroups.is_some())
    }
}

#[async_trait]
impl SandboxLauncher for ProcessLauncher {
    type Sandbox = ProcessSandbox;

    async fn launch(&self, spec: &LaunchSpec) -> Result<ProcessSandbox> {
        spec.check_host_backend("process")?;
        let tools = self.tools().await?;
        let interpreter = tools.interpreters.for_runner(spec.runner)?;
        let name = sandbox_name();
        let cgroup = match &tools.cgroups {
            Some(root) => match root.create(&name) {
                Ok(cg) => {
                    let (mem, pids) = cgroup_limits(&spec.limits);
                    let set = cg
                        .set_limits(mem, pids)
                        .and_then(|()| cg.set_cpu_millis(self.settings.cpu_millis));
                    if let Err(e) = set {
                        cg.remove_now();
                        return Err(Error::Internal(format!("cannot set cgroup limits: {e}")));
                    }
                    Some(cg)
                }
                Err(e) => {
                    return Err(Error::Internal(format!(
                        "cannot create a sandbox cgroup: {e}"
                    )));
                }
            },
            None => None,
        };
        let plan = SandboxPlan {
            bwrap: &tools.bwrap,
            prlimit: &tools.prlimit,
            sh: &tools.sh,
            seccomp: &tools.seccomp,
            cgroup_dirs: cgroup.as_ref().map(|c| c.join_dirs()).unwrap_or_default(),
            runner: spec.runner,
            interpreter,
            runners_dir: &tools.runners_dir,
            top_level: &tools.top_level,
            extra_binds: &self.settings.extra_ro_binds,
            limits: &spec.limits,
            network: spec.network,
            mount: spec.mount.as_deref(),
            nproc_rlimit: cgroup.is_none(),
            code_tmpfs_bytes: self.settings.pool.code_tmpfs_bytes(),
        };
        let argv = bwrap::command_line(&plan);
        let mut cmd = Command::new(&argv[0]);
        // bwrap's own process stays visible inside as pid 1, with the environment it was
        // started with (the cgroup join's `sh` exports `PWD`): not the server's directory.
        cmd.args(&argv[1..])
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                if let Some(cg) = cgroup {
                    cg.remove_now();
                }
                return Err(Error::Internal(format!("cannot start bwrap: {e}")));
            }
        };
        let mut sandbox = ProcessSandbox {
            name,
            channel: RunnerChannel::of_child(&mut child),
            child: Some(child),
            cgroup,
            prlimit: tools.prlimit.clone(),
            sh: tools.sh.clone(),
            runner: spec.runner,
            runner_pid: None,
            baseline: None,
            oom_baseline: 0,
            ended: None,
        };
        match sandbox.channel.hello().await {
            Ok(_) => {}
            Err(e) => {
                let death = sandbox.post_mortem().await;
                return Err(Error::Unavailable(format!(
                    "the {} runner did not start ({e}; {death:?})",
                    spec.runner.as_str()
                )));
            }
        }
        sandbox.runner_pid = sandbox
            .child
            .as_ref()
            .and_then(|c| c.id())
            .and_then(leaf_of);
        Ok(sandbox)
    }
}

fn cgroup_limits(limits: &Limits) -> (u64, u64) {
    // The sandbox's own bwrap processes count against pids.max too.
    (
        limits.memory_mb.max(16) << 20,
        limits.max_processes.max(1) + 3,
    )
}

/// One sandbox: the `[sh ->] prlimit -> bwrap` process tree and the runner inside.
#[derive(Debug)]
pub struct ProcessSandbox {
    name: String,
    channel: RunnerChannel,
    child: Option<Child>,
    cgroup: Option<SandboxCgroup>,
    prlimit: PathBuf,
    sh: PathBuf,
    runner: RunnerKind,
    runner_pid: Option<u32>,
    baseline: Option<usize>,
    oom_baseline: u64,
    ended: Option<ExitStatus>,
}

impl ProcessSandbox {
    fn kill_now(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }

    async fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            if let Ok(st) = child.wait().await {
                self.ended.get_or_insert(st);
            }
        }
        if let Some(cg) = self.cgroup.take() {
            cg.remove(&self.sh).await;
        }
    }
}

#[async_trait]
impl Sandbox for ProcessSandbox {
    fn channel(&mut self) -> &mut RunnerChannel {
        &mut self.channel
    }

    async fn set_limits(&mut self, from: &Limits, to: &Limits) -> Result<()> {
        if cgroup_limits(from) != cgroup_limits(to) {
            if let Some(cg) = &self.cgroup {
                let (mem, pids) = cgroup_limits(to);
                cg.set_limits(mem, pids)
                    .map_err(|e| Error::Internal(format!("cannot change cgroup limits: {e}")))?;
            }
        }
        let nproc = self.cgroup.is_none();
        let old = rlimit_args(self.runner, from, nproc);
        let new = rlimit_args(self.runner, to, nproc);
        if old == new {
            return Ok(());
        }
        let pid = self
            .runner_pid
            .ok_or_else(|| Error::Internal("the runner's pid is unknown".into()))?;
        let status = Command::new(&self.prlimit)
            .arg(format!("--pid={pid}"))
            .args(&new)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(|e| Error::Internal(format!("cannot run prlimit: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Internal(format!("prlimit --pid failed: {status}")))
        }
    }

    fn is_alive(&mut self) -> bool {
        is_running(&mut self.child)
    }

    fn mark_clean(&mut self) {
        self.baseline = self.process_count();
        self.oom_baseline = self.cgroup.as_ref().map_or(0, |c| c.oom_kills());
    }

    fn memory_exceeded(&mut self) -> bool {
        self.cgroup
            .as_ref()
            .is_some_and(|c| c.oom_kills() > self.oom_baseline)
    }

    fn is_clean(&mut self) -> bool {
        match (self.baseline, self.process_count()) {
            (Some(base), Some(now)) => now <= base,
            _ => true,
        }
    }

    async fn post_mortem(&mut self) -> Death {
        let Some(child) = self.child.as_mut() else {
            return Death::Killed;
        };
        let status = exit_soon(child).await;
        let oom = self.memory_exceeded();
        self.reap().await;
        if oom {
            return Death::OutOfMemory;
        }
        death_of(status)
    }

    async fn terminate(&mut self) {
        self.kill_now();
        self.reap().await;
    }
}

impl ProcessSandbox {
    fn process_count(&self) -> Option<usize> {
        if let Some(cg) = &self.cgroup {
            return cg.process_count();
        }
        let root = self.child.as_ref()?.id()?;
        Some(descendants(root).len())
    }

    /// The sandbox's name (also its cgroup's).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ProcessSandbox {
    fn drop(&mut self) {
        // A sandbox dropped without `terminate` (a cancelled call): `kill_on_drop` ends
        // the process tree; its cgroup goes once the processes are gone.
        self.kill_now();
        if let Some(cg) = self.cgroup.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    let sh = self.sh.clone();
                    h.spawn(async move { cg.remove(&sh).await });
                }
                Err(_) => {
                    cg.remove_now();
                }
            }
        }
    }
}

/// Child pids of `pid` (all its threads).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![pid];
    let mut seen = HashSet::new();
    while let Some(p) = stack.pop() {
        for c in children(p) {
            if seen.insert(c) {
                out.push(c);
                stack.push(c);
            }
        }
    }
    out
}

/// The deepest single-child descendant of `pid`: the runner under the two bwrap processes.
fn leaf_of(pid: u32) -> Option<u32> {
    let mut cur = pid;
    for _ in 0..8 {
        match children(cur).as_slice() {
            [] => return (cur != pid).then_some(cur),
            [only] => cur = *only,
            _ => return None,
        }
    }
    None
}

async fn probe(settings: &SandboxSettings) -> Result<HostTools> {
    let bwrap = tool(
        &settings.bwrap,
        "bwrap",
        "the process executor needs bubblewrap",
    )?;
    let prlimit = tool(
        &settings.prlimit,
        "prlimit",
        "util-linux prlimit applies rlimits",
    )?;
    let sh = tool(&settings.host_shell, "sh", "joins sandbox cgroups")?;
    let interpreters = Interpreters::probe(&settings.python, &settings.node).await;
    let scratch = settings.scratch_dir();
    let runners_dir = write_runners(&scratch).map_err(|e| {
        Error::Internal(format!(
            "cannot write the runners to {}: {e}",
            scratch.display()
        ))
    })?;
    let seccomp = crate::host::seccomp::write_program(&scratch).map_err(|e| {
        Error::Internal(format!(
            "cannot write the seccomp program to {}: {e}",
            scratch.display()
        ))
    })?;
    let top_level = TopLevel::of_host();
    let cgroups = if settings.cgroups {
        match CgroupRoot::detect(Path::new("/sys/fs/cgroup"), &settings.cgroup_parent) {
            Ok(root) => {
                tracing::info!(?root, "sandbox memory and process limits use cgroups");
                root.sweep_stale(&sh).await;
                Some(root)
            }
            Err(why) => {
                tracing::warn!(
                    "no writable cgroup for sandboxes ({why}): memory is bounded by RLIMIT_AS, \
                     processes by RLIMIT_NPROC (which does not bind for uid 0) and the wall-clock timeout"
                );
                None
            }
        }
    } else {
        None
    };
    Ok(HostTools {
        bwrap,
        prlimit,
        sh,
        interpreters,
        runners_dir,
        seccomp,
        top_level,
        cgroups,
    })
}
