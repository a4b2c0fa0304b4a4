//! Per-sandbox cgroups for memory and process-count limits, and a CPU quota where the
//! `cpu` controller is ours too, where the host lets us make them: cgroup v1
//! (`/sys/fs/cgroup/{memory,pids,cpu}/<parent>/<instance>`) or a v2 subtree
//! (`/sys/fs/cgroup/<our cgroup>/<parent>/<instance>`, which needs the `memory` and `pids`
//! controllers delegated to us, and `cpu` for the quota). Without either, the sandbox
//! still runs, bounded by rlimits (CPU time per call included) and its pid namespace, and
//! a line in the log says so.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The text of [`CGROUP_JOIN`], as a literal other `sh` steps can start with
/// `concat!` (the process sandbox opens its seccomp program first).
#[macro_export]
#[doc(hidden)]
macro_rules! cgroup_join_script {
    () => {
        "n=$1; shift; while [ \"$n\" -gt 0 ]; do echo $$ > \"$1/cgroup.procs\" || exit 125; shift; n=$((n-1)); done; exec \"$@\""
    };
}

/// Joins the cgroups named by its arguments, then runs the rest of its arguments:
/// `sh -c CGROUP_JOIN NAME N dir1..dirN cmd args..`, so a sandbox's first process is in
/// its cgroups before it runs anything.
pub const CGROUP_JOIN: &str = cgroup_join_script!();

/// Where this host lets us make cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupRoot {
    /// cgroup v1: separate `memory` and `pids` hierarchies.
    V1 {
        /// `/sys/fs/cgroup/memory/<parent>`.
        memory: PathBuf,
        /// `/sys/fs/cgroup/pids/<parent>`.
        pids: PathBuf,
        /// `/sys/fs/cgroup/cpu/<parent>`, where that hierarchy is writable.
        cpu: Option<PathBuf>,
    },
    /// cgroup v2: one subtree with `memory` and `pids` enabled for its children.
    V2 {
        /// `/sys/fs/cgroup/<ours>/<parent>`.
        base: PathBuf,
        /// Whether the `cpu` controller is enabled for its children.
        cpu: bool,
    },
}

impl CgroupRoot {
    /// Finds a writable place for sandbox cgroups under `mount` (normally
    /// `/sys/fs/cgroup`), named `parent`. `None` if there is none (with the reason).
    pub fn detect(mount: &Path, parent: &str) -> Result<CgroupRoot, String> {
        let v1_mem = mount.join("memory");
        let v1_pids = mount.join("pids");
        if v1_mem.join("cgroup.procs").exists() && v1_pids.join("cgroup.procs").exists() {
            let memory = v1_mem.join(parent);
            let pids = v1_pids.join(parent);
            let cpu = mount.join("cpu");
            let cpu = (cpu.join("cpu.cfs_quota_us").exists())
                .then(|| cpu.join(parent))
                .filter(|c| ensure_dir(c).is_ok());
            return match (ensure_dir(&memory), ensure_dir(&pids)) {
                (Ok(()), Ok(())) => {
                    let root = CgroupRoot::V1 { memory, pids, cpu };
                    root.probe().map(|()| root)
                }
                (Err(e), _) | (_, Err(e)) => Err(format!("cgroup v1 not writable: {e}")),
            };
        }
        if mount.join("cgroup.controllers").exists() {
            let own = std::fs::read_to_string("/proc/self/cgroup")
                .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
            let rel = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .ok_or("no cgroup v2 entry in /proc/self/cgroup")?
                .trim_start_matches('/')
                .to_owned();
            let ours = mount.join(rel);
            let base = ours.join(parent);
            ensure_dir(&base).map_err(|e| format!("cgroup v2 not writable: {e}"))?;
            // Children of `base` need the controllers; `base` holds no process itself.
            for ctl in ["+memory", "+pids"] {
                let _ = std::fs::write(ours.join("cgroup.subtree_control"), ctl);
                std::fs::write(base.join("cgroup.subtree_control"), ctl)
                    .map_err(|e| format!("cannot enable {ctl} for sandbox cgroups: {e}"))?;
            }
            // The CPU quota is a bonus: without the controller, CPU time is bounded per call.
            let _ = std::fs::write(ours.join("cgroup.subtree_control"), "+cpu");
            let cpu = std::fs::write(base.join("cgroup.subtree_control"), "+cpu").is_ok();
            let root = CgroupRoot::V2 { base, cpu };
            return root.probe().map(|()| root);
        }
        Err(format!("no cgroup hierarchy at {}", mount.display()))
    }

    fn probe(&self) -> Result<(), String> {
        let name = format!("probe-{}", super::sandbox_name());
        let cg = self
            .create(&name)
            .map_err(|e| format!("cannot create a sandbox cgroup: {e}"))?;
        let r = cg
            .set_limits(64 << 20, 16)
            .and_then(|()| cg.set_cpu_millis(1000))
            .map_err(|e| format!("cannot set cgroup limits: {e}"));
        cg.remove_now();
        r
    }

    /// Makes the cgroup(s) of one sandbox.
    pub fn create(&self, name: &str) -> io::Result<SandboxCgroup> {
        match self {
            CgroupRoot::V1 { memory, pids, cpu } => {
                let cg = SandboxCgroup {
                    v2: false,
                    memory: memory.join(name),
                    pids: pids.join(name),
                    cpu: cpu.as_ref().map(|c| c.join(name)),
                };
                for d in [Some(&cg.memory), Some(&cg.pids), cg.cpu.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    if let Err(e) = std::fs::create_dir(d) {
                        cg.try_remove();
                        return Err(e);
                    }
                }
                Ok(cg)
            }
            CgroupRoot::V2 { base, cpu } => {
                let d = base.join(name);
                std::fs::create_dir(&d)?;
                Ok(SandboxCgroup {
                    v2: true,
                    memory: d.clone(),
                    pids: d.clone(),
                    cpu: cpu.then_some(d),
                })
            }
        }
    }
}

async fn kill_pids(sh: &Path, pids: &[u32]) {
    let _ = tokio::process::Command::new(sh)
        .args(["-c", "kill -9 \"$@\" 2>/dev/null", "sopm-kill"])
        .args(pids.iter().map(u32::to_string))
        .env_clear()
        .status()
        .await;
}

impl CgroupRoot {
    /// Kills and removes sandbox cgroups left by SOPM processes that no longer run (a
    /// server that crashed mid-boot of a sandbox).
    pub async fn sweep_stale(&self, sh: &Path) {
        let bases: Vec<&Path> = match self {
            CgroupRoot::V1 { memory, pids, cpu } => {
                let mut b = vec![pids.as_path(), memory.as_path()];
                b.extend(cpu.as_deref());
                b
            }
            CgroupRoot::V2 { base, .. } => vec![base.as_path()],
        };
        let mut stale = Vec::new();
        for base in &bases {
            let Ok(entries) = std::fs::read_dir(base) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let owner = name
                    .trim_start_matches("probe-")
                    .split('-')
                    .next()
                    .and_then(|p| p.parse::<u32>().ok());
                let Some(owner) = owner else { continue };
                if owner != std::process::id()
                    && !Path::new(&format!("/proc/{owner}")).exists()
                    && !stale.contains(&name)
                {
                    stale.push(name);
                }
            }
        }
        for name in stale {
            let cg = match self {
                CgroupRoot::V1 { memory, pids, cpu } => SandboxCgroup {
                    v2: false,
                    memory: memory.join(&name),
                    pids: pids.join(&name),
                    cpu: cpu.as_ref().map(|c| c.join(&name)),
                },
                CgroupRoot::V2 { base, cpu } => SandboxCgroup {
                    v2: true,
                    memory: base.join(&name),
                    pids: base.join(&name),
                    cpu: cpu.then(|| base.join(&name)),
                },
            };
            if let Some(pids) = cg.pids() {
                if !pids.is_empty() {
                    tracing::warn!(cgroup = %name, processes = pids.len(), "killing a sandbox left by a stopped server");
                    kill_pids(sh, &pids).await;
                }
            }
            cg.remove(sh).await;
        }
    }
}

fn ensure_dir(p: &Path) -> io::Result<()> {
    match std::fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The cgroup(s) of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxCgroup {
    v2: bool,
    memory: PathBuf,
    pids: PathBuf,
    cpu: Option<PathBuf>,
}

/// The CFS period of a sandbox's CPU quota, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

impl SandboxCgroup {
    /// The directories whose `cgroup.procs` the sandbox's first process joins.
    pub fn join_dirs(&self) -> Vec<&Path> {
        if self.v2 {
            vec![&self.memory]
        } else {
            let mut d = vec![self.memory.as_path(), self.pids.as_path()];
            d.extend(self.cpu.as_deref());
            d
        }
    }

    /// The sandbox's memory cgroup directory, and whether it is cgroup v2 (what
    /// [`oom_kills_in`] and an [`OomWatch`](super::oom_watch::OomWatch) read).
    pub fn memory_dir(&self) -> (&Path, bool) {
        (&self.memory, self.v2)
    }

    /// Whether the sandbox gets a CPU quota ([`set_cpu_millis`](Self::set_cpu_millis)).
    pub fn has_cpu_quota(&self) -> bool {
        self.cpu.is_some()
    }

    /// Caps the sandbox at `millis` thousandths of one CPU (1000: one core), where the
    /// `cpu` controller is ours; a no-op elsewhere.
    pub fn set_cpu_millis(&self, millis: u64) -> io::Result<()> {
        let Some(dir) = &self.cpu else {
            return Ok(());
        };
        let quota = (millis.max(10) * CPU_PERIOD_US / 1000).max(1000);
        if self.v2 {
            std::fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))
        } else {
            std::fs::write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
            std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())
        }
    }

    /// Sets the memory limit (bytes, swap included where the host has swap accounting) and
    /// the most processes/threads.
    pub fn set_limits(&self, memory_bytes: u64, max_pids: u64) -> io::Result<()> {
        if self.v2 {
            std::fs::write(self.memory.join("memory.max"), memory_bytes.to_string())?;
            let _ = std::fs::write(self.memory.join("memory.swap.max"), "0");
            std::fs::write(self.pids.join("pids.max"), max_pids.to_string())?;
        } else {
            let limit = self.memory.join("memory.limit_in_bytes");
            let memsw = self.memory.join("memory.memsw.limit_in_bytes");
            // memsw must stay >= the memory limit, so the order depends on the direction.
            if std::fs::write(&limit, memory_bytes.to_string()).is_err() {
                let _ = std::fs::write(&memsw, memory_bytes.to_string());
                std::fs::write(&limit, memory_bytes.to_string())?;
            }
            let _ = std::fs::write(&memsw, memory_bytes.to_string());
            std::fs::write(self.pids.join("pids.max"), max_pids.to_string())?;
        }
        Ok(())
    }

    /// How many times the kernel's OOM killer killed a process in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        oom_kills_in(&self.memory, self.v2)
    }

    /// Processes in the sandbox now.
    pub fn process_count(&self) -> Option<usize> {
        std::fs::read_to_string(self.pids.join("cgroup.procs"))
            .ok()
            .map(|s| s.lines().filter(|l| !l.trim().is_empty()).count())
    }

    /// Removes the cgroup once its processes are gone. They die with the sandbox's pid
    /// namespace a moment after it is killed; any still there after a while (a bwrap
    /// caught mid-setup) are killed with `sh`'s `kill`.
    pub async fn remove(self, sh: &Path) {
        for round in 0..400 {
            match self.pids() {
                Some(pids) if !pids.is_empty() => {
                    if round % 20 == 19 {
                        kill_pids(sh, &pids).await;
                    }
                }
                _ => {
                    if self.try_remove() {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::warn!(cgroup = %self.pids.display(), "a sandbox cgroup still has processes; left in place");
    }

    fn pids(&self) -> Option<Vec<u32>> {
        std::fs::read_to_string(self.pids.join("cgroup.procs"))
            .ok()
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
    }

    /// Removes the cgroup if it is empty; whether it is gone.
    pub fn remove_now(&self) -> bool {
        self.try_remove()
    }

    fn try_remove(&self) -> bool {
        let mut ok = true;
        for d in [Some(&self.memory), Some(&self.pids), self.cpu.as_ref()]
            .into_iter()
            .flatten()
        {
            match std::fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => ok = false,
            }
        }
        ok
    }
}

/// How many times the kernel's OOM killer killed a process in the memory cgroup `dir`
/// (cgroup v2: `memory.events`; v1: `memory.oom_control`, or `memory.failcnt` on
/// kernels before 4.13, which count no kills); 0 once the cgroup is gone.
pub fn oom_kills_in(dir: &Path, v2: bool) -> u64 {
    read_oom_kills(dir, v2).unwrap_or(0)
}

/// [`oom_kills_in`], or `None` when the cgroup's counters cannot be read (it is gone).
pub fn read_oom_kills(dir: &Path, v2: bool) -> Option<u64> {
    let file = if v2 {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    let kills = text
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    if kills == 0 && !v2 {
        // Kernels before 4.13 have no oom_kill line: a hit limit is the best clue.
        let fails: u64 = std::fs::read_to_string(dir.join("memory.failcnt"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if fails > 0 && !text.contains("oom_kill") {
            return Some(1);
        }
    }
    Some(kills)
}
