//! Boots process sandboxes: finds the host's tools once, writes the runners to the
//! scratch dir, makes a cgroup per sandbox, spawns `[sh] prlimit bwrap` and waits for the
//! runner's hello.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sopm_core::{Error, Limits, Result};
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

use super::bwrap::{self, Interpreter, SandboxPlan, TopLevel};
use super::cgroup::{CgroupRoot, SandboxCgroup};
use super::ProcessExecutorConfig;
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
    top_level: Vec<TopLevel>,
    cgroups: Option<CgroupRoot>,
}

/// Boots sandboxes under bubblewrap.
#[derive(Debug)]
pub struct ProcessLauncher {
    config: ProcessExecutorConfig,
    tools: OnceCell<Arc<HostTools>>,
}

/// A name unique on this host for as long as this process lives: `<pid>-<n>`.
pub(crate) fn sandbox_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl ProcessLauncher {
    pub(crate) fn new(config: ProcessExecutorConfig) -> Self {
        ProcessLauncher {
            config,
            tools: OnceCell::new(),
        }
    }

    async fn tools(&self) -> Result<Arc<HostTools>> {
        self.tools
            .get_or_try_init(|| async { probe(&self.config).await.map(Arc::new) })
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
                    if let Err(e) = cg.set_limits(mem, pids) {
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
            cgroup_dirs: cgroup.as_ref().map(|c| c.join_dirs()).unwrap_or_default(),
            runner: spec.runner,
            interpreter,
            runners_dir: &tools.runners_dir,
            top_level: &tools.top_level,
            extra_binds: &self.config.extra_ro_binds,
            limits: &spec.limits,
            network: spec.network,
            mount: spec.mount.as_deref(),
            nproc_rlimit: cgroup.is_none(),
            code_tmpfs_bytes: self.config.pool.code_tmpfs_bytes(),
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
        let old = bwrap::rlimit_args(self.runner, from, nproc);
        let new = bwrap::rlimit_args(self.runner, to, nproc);
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

/// How a sandbox ended, from the exit status of its outer process (`None`: still running
/// when we gave up waiting). `bwrap` and `runsc run` both pass on the runner's fate as
/// 128 + signal.
pub(crate) fn death_of(status: Option<ExitStatus>) -> Death {
    match status {
        None => Death::Killed,
        Some(st) => match st.code() {
            Some(c) if c == 128 + 24 => Death::CpuLimit,
            Some(c) if c > 128 => Death::Exited(format!("runner killed by signal {}", c - 128)),
            Some(c) => Death::Exited(format!("exit status {c}")),
            None => Death::Exited(format!("{st}")),
        },
    }
}

/// Whether a sandbox's outer process is still running.
pub(crate) fn is_running(child: &mut Option<Child>) -> bool {
    child
        .as_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
}

/// The exit status of a sandbox's outer process if it ends within a moment (after its
/// runner's channel failed); `None` if it is still running.
pub(crate) async fn exit_soon(child: &mut Child) -> Option<ExitStatus> {
    tokio::time::timeout(Duration::from_millis(300), child.wait())
        .await
        .ok()
        .and_then(|r| r.ok())
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

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

pub(crate) fn tool(configured: &Option<PathBuf>, name: &str, why: &str) -> Result<PathBuf> {
    match configured {
        Some(p) if is_executable(p) => Ok(p.clone()),
        Some(p) => Err(Error::Unavailable(format!(
            "{} is not an executable ({why})",
            p.display()
        ))),
        None => crate::build::find_on_path(name)
            .ok_or_else(|| Error::Unavailable(format!("{name} not found on PATH ({why})"))),
    }
}

async fn probe(config: &ProcessExecutorConfig) -> Result<HostTools> {
    let bwrap = tool(
        &config.bwrap,
        "bwrap",
        "the process executor needs bubblewrap",
    )?;
    let prlimit = tool(
        &config.prlimit,
        "prlimit",
        "util-linux prlimit applies rlimits",
    )?;
    let sh = tool(&config.host_shell, "sh", "joins sandbox cgroups")?;
    let interpreters = Interpreters::probe(&config.python, &config.node).await;
    let scratch = config.scratch_dir();
    let runners_dir = write_runners(&scratch).map_err(|e| {
        Error::Internal(format!(
            "cannot write the runners to {}: {e}",
            scratch.display()
        ))
    })?;
    let top_level = TopLevel::of_host();
    let cgroups = if config.cgroups {
        match CgroupRoot::detect(Path::new("/sys/fs/cgroup"), &config.cgroup_parent) {
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
        top_level,
        cgroups,
    })
}

/// The interpreters of the script runners on this host, each found or why not (a host
/// without node still runs python functions).
#[derive(Debug)]
pub(crate) struct Interpreters {
    python: std::result::Result<Interpreter, String>,
    node: std::result::Result<Interpreter, String>,
}

impl Interpreters {
    /// Finds `python3` and `node` (configured, else on `PATH`) and the host directories
    /// each needs.
    pub(crate) async fn probe(python: &Option<PathBuf>, node: &Option<PathBuf>) -> Self {
        let python = match tool(python, "python3", "python, shell and binary functions") {
            Ok(p) => probe_python(&p).await,
            Err(e) => Err(e.to_string()),
        };
        let node = match tool(node, "node", "node functions") {
            Ok(p) => Ok(interpreter_at(&p)),
            Err(e) => Err(e.to_string()),
        };
        Interpreters { python, node }
    }

    /// The interpreter of `runner` (python supervises shell scripts and binaries), or
    /// `unavailable` saying why the host has none.
    pub(crate) fn for_runner(&self, runner: RunnerKind) -> Result<&Interpreter> {
        match runner {
            RunnerKind::Python | RunnerKind::Static => &self.python,
            RunnerKind::Node => &self.node,
        }
        .as_ref()
        .map_err(|why| Error::Unavailable(why.clone()))
    }

    /// The host directories the found interpreters need beyond `/usr`.
    pub(crate) fn binds(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.python, &self.node]
            .into_iter()
            .flatten()
            .flat_map(|i| &i.binds)
    }
}

/// Resolves a python (a pyenv shim included) to its real executable and prefix.
async fn probe_python(python: &Path) -> std::result::Result<Interpreter, String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import sys, os; print(os.path.realpath(sys.executable)); print(sys.base_prefix); print(sys.base_exec_prefix)",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .map_err(|_| format!("{} did not answer", python.display()))?
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed: {}", python.display(), out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let exe = PathBuf::from(lines.next().ok_or("python printed nothing")?);
    let mut binds = Vec::new();
    for prefix in lines.map(PathBuf::from) {
        if !prefix.starts_with("/usr") && prefix.is_dir() && !binds.contains(&prefix) {
            binds.push(prefix);
        }
    }
    if !exe.starts_with("/usr") && !binds.iter().any(|b| exe.starts_with(b)) {
        if let Some(dir) = exe.parent() {
            binds.push(dir.to_path_buf());
        }
    }
    Ok(Interpreter { exe, binds })
}

fn interpreter_at(exe: &Path) -> Interpreter {
    let real = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    let mut binds = Vec::new();
    if !real.starts_with("/usr") {
        // A node installed under a prefix (nvm, a tarball): its bin/.. holds its libs.
        if let Some(prefix) = real.parent().and_then(Path::parent) {
            binds.push(prefix.to_path_buf());
        }
    }
    Interpreter { exe: real, binds }
}

/// Writes the runners under `scratch/runners-<hash>`, read-only mounted in every sandbox
/// (the sandbox runs as the server's uid, so owner-only permissions are enough).
pub(crate) fn write_runners(scratch: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for k in RunnerKind::SCRIPTS {
        for b in k.source().unwrap_or_default().bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    std::fs::create_dir_all(scratch)?;
    // Only we may write here: the files become code inside every sandbox. chmod fails on
    // a directory someone else owns (say, a /tmp path another user made first).
    std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o700))?;
    let dir = scratch.join(format!("runners-{h:016x}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    for k in RunnerKind::SCRIPTS {
        let source = k.source().unwrap_or_default();
        let dest = dir.join(k.file_name());
        if std::fs::read_to_string(&dest).ok().as_deref() == Some(source) {
            continue;
        }
        let tmp = dir.join(format!(".{}.{}", k.file_name(), std::process::id()));
        std::fs::write(&tmp, source)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, &dest)?;
    }
    Ok(dir)
}
