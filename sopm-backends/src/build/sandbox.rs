//! The install sandbox: one bubblewrap invocation per dependency install, in a cgroup
//! of its own under rlimits, its output streamed into the build log, watched for its
//! limits and its deadline. What it isolates, and what it does not, is described in the
//! [module documentation](super); its limits in [`BuildLimits`].

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use sopm_core::{BuildLog, Error, Result};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::limits::{
    BuildLimits, LimitHit, COPY_FAILED_STATUS, DISK_FULL_STATUS, INSTALL_WRAPPER, SANDBOX_HOME,
    SANDBOX_OUTDIR, SANDBOX_TMPDIR, SMALL_TMP_BYTES,
};
use super::toolchain::{locate, Bwrap};
use crate::host::cgroup::{CgroupRoot, SandboxCgroup, CGROUP_JOIN};

/// Where the staging directory appears inside the sandbox.
pub(crate) const SANDBOX_WORKDIR: &str = "/build";

/// The parent of the install sandboxes' cgroups (`/sys/fs/cgroup/{memory,pids}/...`).
const CGROUP_PARENT: &str = "sopm-build";

/// How often a running install's cgroup is read for a hit limit.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Linux reports process times in `/proc/<pid>/stat` in these ticks per second.
const USER_HZ: u64 = 100;

/// The unprivileged ids the install runs as inside its user namespace.
const SANDBOX_ID: &str = "1000";

/// Longest line forwarded to the log; longer output is cut into pieces.
const MAX_LINE_BYTES: usize = 4096;

/// Lines of output kept for the error message of a failed install.
const TAIL_LINES: usize = 15;

/// Top-level directories that are symlinks into `/usr` on merged-usr systems and
/// plain directories elsewhere.
const SYSTEM_DIRS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// Files and directories of `/etc` an install needs (name resolution, TLS, the
/// dynamic loader), bound when present. Not `/etc/ssl` as a whole: it holds
/// `/etc/ssl/private`.
const ETC_ENTRIES: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates",
    "/etc/pki/tls/certs",
    "/etc/pki/ca-trust/extracted",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
];

/// One install to run in the sandbox.
#[derive(Debug, Clone)]
pub(crate) struct Install {
    /// What the log shows as the command (`$ pip install ...`), secrets redacted.
    pub display: String,
    /// A short name for messages (`pip install`).
    pub what: &'static str,
    /// The program and its arguments, as paths inside the sandbox.
    pub argv: Vec<OsString>,
    /// Environment variables besides `HOME`, `PATH`, `LANG` and `TMPDIR`.
    pub env: Vec<(&'static str, OsString)>,
}

/// What the host offers install sandboxes, found once per builder: bwrap, `prlimit`,
/// the `sh` that joins cgroups, and where cgroups can be made.
#[derive(Debug, Clone)]
pub(crate) struct InstallHost {
    pub bwrap: Bwrap,
    pub prlimit: PathBuf,
    pub sh: PathBuf,
    /// `None` where no cgroup is writable (then memory and processes are unbounded
    /// but for the deadline, and the build log says so).
    pub cgroups: Option<CgroupRoot>,
}

impl InstallHost {
    /// Finds the tools and the cgroup hierarchy, and kills and removes install cgroups
    /// a stopped server left.
    pub(crate) async fn resolve(bwrap: Option<&Path>) -> Result<Self> {
        let bwrap = Bwrap::resolve(bwrap).await?;
        let prlimit = locate(None, "prlimit", "installing dependencies")?;
        let sh = locate(None, "sh", "installing dependencies")?;
        let cgroups = match CgroupRoot::detect(Path::new("/sys/fs/cgroup"), CGROUP_PARENT) {
            Ok(root) => {
                root.sweep_stale(&sh).await;
                Some(root)
            }
            Err(why) => {
                tracing::warn!(
                    "no writable cgroup for dependency installs ({why}): their memory and \
                     process count are bounded only by the build's time limit"
                );
                None
            }
        };
        Ok(InstallHost {
            bwrap,
            prlimit,
            sh,
            cgroups,
        })
    }
}

/// The host side of an install sandbox.
#[derive(Debug, Clone)]
pub(crate) struct InstallSandbox<'a> {
    pub host: &'a InstallHost,
    /// Host directories of the tools, shown read-only at the same paths.
    pub tool_dirs: Vec<PathBuf>,
    /// Directories put first on the sandbox's `PATH`.
    pub path_dirs: Vec<PathBuf>,
    /// The staging directory: copied into the install's tmpfs at [`SANDBOX_WORKDIR`]
    /// before the install, and the tmpfs copied back into it after a successful one.
    pub staging: &'a Path,
    /// A CA bundle to show at its own path.
    pub ca_bundle: Option<&'a Path>,
    /// What the install may use.
    pub limits: BuildLimits,
    /// The egress proxy's socket directory: with one, the sandbox gets a network
    /// namespace of its own and reaches the outside only through the proxy.
    pub egress_dir: Option<&'a Path>,
}

/// Whether `path` is `root` or inside it (lexically).
fn is_within(path: &Path, root: &Path) -> bool {
    path.starts_with(root)
}

/// `dirs` without duplicates, without those inside `/usr` or inside another one.
fn outermost(mut dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    dirs.retain(|d| d.is_absolute() && !is_within(d, Path::new("/usr")) && d != Path::new("/"));
    dirs.sort();
    dirs.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for d in dirs {
        if !kept.iter().any(|k| is_within(&d, k)) {
            kept.push(d);
        }
    }
    kept
}

impl InstallSandbox<'_> {
    /// The bwrap arguments up to and including `--`.
    fn arguments(&self, install: &Install) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
            a.extend(items.iter().map(|i| i.as_ref().to_os_string()));
        };
        push(&[
            &"--unshare-user",
            &"--uid",
            &SANDBOX_ID,
            &"--gid",
            &SANDBOX_ID,
        ]);
        if self.host.bwrap.disable_userns {
            push(&[&"--disable-userns"]);
        }
        push(&[
            &"--unshare-pid",
            &"--unshare-ipc",
            &"--unshare-uts",
            &"--unshare-cgroup-try",
            &"--hostname",
            &"sopm-build",
            &"--cap-drop",
            &"ALL",
            &"--die-with-parent",
            &"--new-session",
            &"--clearenv",
            &"--ro-bind",
            &"/usr",
            &"/usr",
        ]);
        for dir in SYSTEM_DIRS {
            let path = Path::new(dir);
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(path) {
                        push(&[&"--symlink", &target, &path]);
                    }
                }
                Ok(m) if m.is_dir() => push(&[&"--ro-bind", &path, &path]),
                _ => {}
            }
        }
        for entry in ETC_ENTRIES {
            push(&[&"--ro-bind-try", entry, entry]);
        }
        for dir in outermost(self.tool_dirs.clone()) {
            push(&[&"--ro-bind", &dir, &dir]);
        }
        push(&[&"--proc", &"/proc", &"--dev", &"/dev"]);
        let sized = self.host.bwrap.tmpfs_size;
        for (dir, bytes) in [
            ("/tmp", SMALL_TMP_BYTES),
            (SANDBOX_WORKDIR, self.limits.disk_bytes),
        ] {
            if sized {
                push(&[&"--size", &bytes.to_string()]);
            }
            push(&[&"--tmpfs", &dir]);
        }
        // After the tmpfs mounts, which would hide a bundle under `/tmp`.
        if let Some(bundle) = self.ca_bundle {
            push(&[&"--ro-bind-try", &bundle, &bundle]);
        }
        if let Some(dir) = self.egress_dir {
            push(&[
                &"--unshare-net",
                &"--ro-bind",
                &dir,
                &super::egress::SANDBOX_EGRESS_DIR,
                &"--setenv",
                &"SOPM_EGRESS_SOCKET",
                &super::egress::SANDBOX_EGRESS_SOCKET,
            ]);
        }
        push(&[
            &"--bind",
            &self.staging,
            &SANDBOX_OUTDIR,
            &"--remount-ro",
            &"/",
            &"--chdir",
            &SANDBOX_WORKDIR,
        ]);
        let mut path_var = OsString::new();
        for dir in &self.path_dirs {
            path_var.push(dir);
            path_var.push(":");
        }
        path_var.push("/usr/local/bin:/usr/bin:/bin");
        push(&[
            &"--setenv",
            &"HOME",
            &SANDBOX_HOME,
            &"--setenv",
            &"PATH",
            &path_var,
            &"--setenv",
            &"LANG",
            &"C.UTF-8",
            &"--setenv",
            &"TMPDIR",
            &SANDBOX_TMPDIR,
        ]);
        for (key, value) in &install.env {
            push(&[&"--setenv", key, value]);
        }
        push(&[&"--"]);
        a
    }

    /// The full command line: `[sh JOIN cgroups..] prlimit RLIMITS -- bwrap ARGS --
    /// sh WRAPPER installer..`.
    fn command_line(&self, install: &Install, cgroup: Option<&SandboxCgroup>) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::with_capacity(128);
        if let Some(cg) = cgroup {
            let dirs = cg.join_dirs();
            argv.extend([
                self.host.sh.clone().into_os_string(),
                "-c".into(),
                CGROUP_JOIN.into(),
                "sopm-build".into(),
                dirs.len().to_string().into(),
            ]);
            argv.extend(dirs.iter().map(|d| d.as_os_str().to_os_string()));
        }
        argv.push(self.host.prlimit.clone().into_os_string());
        argv.extend(self.limits.rlimit_args().into_iter().map(OsString::from));
        argv.push("--".into());
        argv.push(self.host.bwrap.path.clone().into_os_string());
        argv.extend(self.arguments(install));
        argv.extend([
            "/bin/sh".into(),
            "-c".into(),
            INSTALL_WRAPPER.into(),
            "sopm-install".into(),
        ]);
        argv.extend(install.argv.iter().cloned());
        argv
    }

    /// A cgroup for one install with the memory and process limits set, where the host
    /// has cgroups.
    fn cgroup(&self) -> Result<Option<SandboxCgroup>> {
        let Some(root) = &self.host.cgroups else {
            return Ok(None);
        };
        let name = crate::host::sandbox_name();
        let cg = root.create(&name).map_err(|e| {
            Error::Unavailable(format!("cannot create a cgroup for the install: {e}"))
        })?;
        if let Err(e) = cg.set_limits(self.limits.memory_bytes, self.limits.max_processes) {
            cg.remove_now();
            return Err(Error::Unavailable(format!(
                "cannot set the install's cgroup limits: {e}"
            )));
        }
        Ok(Some(cg))
    }

    /// Runs `install`, appending its output to `log` line by line as it comes, until
    /// it exits, a limit is hit or `deadline` passes (then the whole sandbox is killed).
    /// `build_failed` on a non-zero exit (with the last lines of output), a hit limit
    /// (saying which) or a timeout. Nothing of the sandbox runs once this returns.
    pub(crate) async fn run(
        &self,
        install: &Install,
        log: &dyn BuildLog,
        deadline: Instant,
        timeout_for_message: std::time::Duration,
    ) -> Result<()> {
        log.append(
            &self
                .limits
                .describe(self.host.cgroups.is_some(), self.host.bwrap.tmpfs_size),
        )
        .await;
        log.append(&format!("$ {}\n", install.display)).await;
        let cgroup = self.cgroup()?;
        let result = self
            .run_in(install, log, deadline, timeout_for_message, cgroup.as_ref())
            .await;
        if let Some(cg) = cgroup {
            // Kills whatever is still in it (a process caught mid-fork), then removes it.
            cg.remove(&self.host.sh).await;
        }
        result
    }

    async fn run_in(
        &self,
        install: &Install,
        log: &dyn BuildLog,
        deadline: Instant,
        timeout_for_message: std::time::Duration,
        cgroup: Option<&SandboxCgroup>,
    ) -> Result<()> {
        let argv = self.command_line(install, cgroup);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            Error::Unavailable(format!("cannot start {}: {e}", argv[0].to_string_lossy()))
        })?;
        let (tx, mut rx) = mpsc::channel::<String>(64);
        let pumps = [
            child
                .stdout
                .take()
                .map(|out| tokio::spawn(pump(out, tx.clone()))),
            child.stderr.take().map(|err| tokio::spawn(pump(err, tx))),
        ];
        let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
        let mut watch = tokio::time::interval(WATCH_EVERY);
        let mut usage = Usage::default();
        let mut output_open = true;
        let ended = loop {
            tokio::select! {
                line = rx.recv(), if output_open => match line {
                    Some(line) => forward(line, &mut rx, &mut tail, log).await,
                    None => output_open = false,
                },
                status = child.wait() => break Ended::Exited(status),
                _ = tokio::time::sleep_until(deadline) => break Ended::TimedOut,
                _ = watch.tick(), if cgroup.is_some() => {
                    if let Some(hit) = cgroup.and_then(|cg| usage.update(cg)) {
                        break Ended::Limit(hit);
                    }
                }
            }
        };
        if !matches!(ended, Ended::Exited(_)) {
            // bwrap takes the whole sandbox (pid namespace) down with it; the cgroup
            // is emptied after.
            let _ = child.kill().await;
        }
        // The rest of the output, which the sandbox's end closes.
        let drained = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let Some(line) = rx.recv().await {
                forward(line, &mut rx, &mut tail, log).await;
            }
        })
        .await;
        if drained.is_err() {
            for handle in pumps.into_iter().flatten() {
                handle.abort();
            }
        }
        let status = match ended {
            Ended::Exited(Ok(status)) => status,
            Ended::Exited(Err(e)) => {
                return Err(Error::Internal(format!(
                    "waiting for the install sandbox: {e}"
                )))
            }
            Ended::TimedOut => {
                let secs = timeout_for_message.as_secs();
                log.append(&format!(
                    "==> {} timed out (the build may take {secs} s); stopped\n",
                    install.what
                ))
                .await;
                return Err(Error::BuildFailed(format!(
                    "build timed out after {secs} s during {}",
                    install.what
                )));
            }
            Ended::Limit(hit) => return Err(self.stopped(hit, install, log).await),
        };
        if status.success() {
            return Ok(());
        }
        // A limit the kernel enforced ends the install as an ordinary failure: the
        // cgroup's counters, the CPU time seen and the wrapper's exit say which.
        let hit = cgroup
            .and_then(|cg| usage.update(cg))
            .or_else(|| {
                usage
                    .cpu_limit_reached(&self.limits)
                    .then_some(LimitHit::CpuTime)
            })
            .or_else(|| (status.code() == Some(DISK_FULL_STATUS)).then_some(LimitHit::Disk));
        if let Some(hit) = hit {
            return Err(self.stopped(hit, install, log).await);
        }
        if status.code() == Some(COPY_FAILED_STATUS) {
            return Err(Error::BuildFailed(format!(
                "{}: copying the files into or out of the install's space failed",
                install.what
            )));
        }
        // The first line says what failed; the log line of the failure shows only it.
        let mut message = format!("{} failed ({})", install.what, describe(status));
        for line in &tail {
            message.push('\n');
            message.push_str(line);
        }
        Err(Error::BuildFailed(message))
    }

    /// Logs which limit stopped the install and makes the build's error.
    async fn stopped(&self, hit: LimitHit, install: &Install, log: &dyn BuildLog) -> Error {
        let why = self.limits.stopped_by(hit);
        log.append(&format!("==> {why}\n")).await;
        Error::BuildFailed(format!("{why} during {}", install.what))
    }
}

/// How an install's wait ended.
enum Ended {
    Exited(std::io::Result<ExitStatus>),
    TimedOut,
    Limit(LimitHit),
}

/// Appends `line` and whatever else is already waiting in one go, keeping the tail.
async fn forward(
    line: String,
    rx: &mut mpsc::Receiver<String>,
    tail: &mut VecDeque<String>,
    log: &dyn BuildLog,
) {
    let mut chunk = String::new();
    let mut next = Some(line);
    while let Some(line) = next {
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.clone());
        chunk.push_str(&line);
        chunk.push('\n');
        next = rx.try_recv().ok();
    }
    log.append(&chunk).await;
}

/// What the watch has seen of a running install.
#[derive(Debug, Default)]
struct Usage {
    /// The most CPU time any one process of the install was seen to have used.
    max_process_cpu: std::time::Duration,
}

impl Usage {
    /// Reads the cgroup: a limit hit, if one is; remembers CPU times on the way.
    fn update(&mut self, cg: &SandboxCgroup) -> Option<LimitHit> {
        if cg.oom_kills() > 0 {
            return Some(LimitHit::Memory);
        }
        if pids_limit_hits(cg) > 0 {
            return Some(LimitHit::Processes);
        }
        for pid in cgroup_pids(cg) {
            if let Some(cpu) = process_cpu(pid) {
                self.max_process_cpu = self.max_process_cpu.max(cpu);
            }
        }
        None
    }

    /// Whether a process was seen within one watch period (and a second of slack) of
    /// the CPU limit, which the kernel then enforced.
    fn cpu_limit_reached(&self, limits: &BuildLimits) -> bool {
        self.max_process_cpu + WATCH_EVERY + std::time::Duration::from_secs(1) >= limits.cpu_time
    }
}

/// How many forks the pids cgroup refused (`pids.events`, `max N`).
fn pids_limit_hits(cg: &SandboxCgroup) -> u64 {
    cg.join_dirs()
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("pids.events")).ok())
        .filter_map(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("max "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .max()
        .unwrap_or(0)
}

/// The processes in the cgroup now.
fn cgroup_pids(cg: &SandboxCgroup) -> Vec<u32> {
    cg.join_dirs()
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The CPU time (user and system) process `pid` has used, from `/proc/<pid>/stat`.
fn process_cpu(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields follow its last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(std::time::Duration::from_millis(ticks * 1000 / USER_HZ))
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// Forwards `reader`'s output line by line (lines cut at [`MAX_LINE_BYTES`]) until
/// EOF or until nobody listens.
async fn pump<R: AsyncRead + Unpin>(mut reader: R, tx: mpsc::Sender<String>) {
    let mut buf = vec![0u8; 8192];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(i) = pending[start..].iter().position(|b| *b == b'\n') {
            if !send_line(&tx, &pending[start..start + i]).await {
                return;
            }
            start += i + 1;
        }
        pending.drain(..start);
        if pending.len() > MAX_LINE_BYTES {
            let cut = pending.len() - pending.len() % MAX_LINE_BYTES;
            if !send_line(&tx, &pending[..cut]).await {
                return;
            }
            pending.drain(..cut);
        }
    }
    if !pending.is_empty() {
        send_line(&tx, &pending).await;
    }
}

/// Sends one line (without its `\r`) in pieces of at most [`MAX_LINE_BYTES`]; `false`
/// when the receiver is gone.
async fn send_line(tx: &mpsc::Sender<String>, line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    for piece in line.chunks(MAX_LINE_BYTES) {
        if tx
            .send(String::from_utf8_lossy(piece).into_owned())
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_dirs_are_reduced_to_the_outermost_outside_usr() {
        let dirs = outermost(vec![
            PathBuf::from("/opt/py/bin"),
            PathBuf::from("/opt/py"),
            PathBuf::from("/usr/bin"),
            PathBuf::from("/root/.pyenv/versions/3.11.7"),
            PathBuf::from("/opt/py"),
            PathBuf::from("/"),
            PathBuf::from("relative"),
        ]);
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/opt/py"),
                PathBuf::from("/root/.pyenv/versions/3.11.7")
            ]
        );
    }

    #[tokio::test]
    async fn output_is_cut_into_lines() {
        let (tx, mut rx) = mpsc::channel(16);
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let input = format!("one\r\ntwo\n{long}\nlast");
        pump(input.as_bytes(), tx).await;
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l);
        }
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1], "two");
        assert_eq!(lines[2].len(), MAX_LINE_BYTES);
        assert_eq!(lines[3], "x".repeat(10));
        assert_eq!(lines[4], "last");
    }

    /// bwrap, when it works here; `None` (printed) when it does not, a panic under
    /// `SOPM_REQUIRE_INTEGRATION=1`.
    async fn bwrap_or_skip() -> Option<InstallHost> {
        let works = std::process::Command::new("bwrap")
            .args(["--unshare-user", "--ro-bind", "/", "/", "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !works {
            if std::env::var("SOPM_REQUIRE_INTEGRATION").as_deref() == Ok("1") {
                panic!("SOPM_REQUIRE_INTEGRATION=1 but bwrap is missing or does not work here");
            }
            eprintln!("skipped: bwrap is missing or does not work here");
            return None;
        }
        Some(InstallHost::resolve(None).await.unwrap())
    }

    #[derive(Default)]
    struct Log(std::sync::Mutex<String>);

    #[async_trait::async_trait]
    impl BuildLog for Log {
        async fn append(&self, chunk: &str) {
            self.0.lock().unwrap().push_str(chunk);
        }
    }

    /// A sandbox with no tools, a 16 MiB tmpfs, and the network of `egress_dir`.
    fn sandbox<'a>(
        host: &'a InstallHost,
        staging: &'a Path,
        egress_dir: Option<&'a Path>,
    ) -> InstallSandbox<'a> {
        InstallSandbox {
            host,
            tool_dirs: vec![],
            path_dirs: vec![],
            staging,
            ca_bundle: None,
            limits: BuildLimits {
                memory_bytes: 256 << 20,
                max_processes: 64,
                cpu_time: std::time::Duration::from_secs(60),
                disk_bytes: 16 << 20,
            },
            egress_dir,
        }
    }

    /// Runs `script` with `sh -c` in `sandbox` with `timeout` as its deadline; returns
    /// the outcome and the log.
    async fn run_shell(
        sandbox: &InstallSandbox<'_>,
        script: &str,
        timeout: std::time::Duration,
    ) -> (Result<()>, String) {
        let install = Install {
            display: "sh -c ...".into(),
            what: "probe",
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![("PROBE", "1".into())],
        };
        let log = Log::default();
        let result = sandbox
            .run(&install, &log, Instant::now() + timeout, timeout)
            .await;
        let text = log.0.lock().unwrap().clone();
        (result, text)
    }

    #[tokio::test]
    async fn the_sandbox_hides_the_host_and_keeps_the_system_read_only() {
        let Some(bwrap) = bwrap_or_skip().await else {
            return;
        };
        let secret = tempfile::tempdir().unwrap();
        std::fs::write(secret.path().join("key"), "secret").unwrap();
        let staging = tempfile::tempdir().unwrap();
        let sandbox = sandbox(&bwrap, staging.path(), None);
        let script = format!(
            "set -e; \
             [ \"$(id -u)\" = {SANDBOX_ID} ]; \
             [ ! -e {secret} ]; \
             [ ! -e {me} ]; \
             [ ! -e /etc/ssl/private ]; \
             [ ! -e /etc/shadow ]; \
             [ \"$HOME\" = {SANDBOX_HOME} ] && [ \"$PROBE\" = 1 ]; \
             [ -z \"$CARGO\" ]; \
             ! touch /usr/sopm-probe 2>/dev/null; \
             ! touch /sopm-probe 2>/dev/null; \
             touch /tmp/ok \"$HOME/ok\" {SANDBOX_WORKDIR}/written; \
             echo all good",
            secret = secret.path().display(),
            me = std::env::current_exe().unwrap().display(),
        );
        let (result, text) = run_shell(&sandbox, &script, std::time::Duration::from_secs(30)).await;
        assert!(result.is_ok(), "{result:?}\n{text}");
        assert!(text.contains("all good"), "{text}");
        assert!(staging.path().join("written").is_file());
    }

    #[tokio::test]
    async fn failures_and_timeouts_are_build_failures() {
        let Some(bwrap) = bwrap_or_skip().await else {
            return;
        };
        let staging = tempfile::tempdir().unwrap();
        let sandbox = sandbox(&bwrap, staging.path(), None);
        let (result, _) = run_shell(
            &sandbox,
            "echo first; echo second >&2; exit 3",
            std::time::Duration::from_secs(30),
        )
        .await;
        let e = result.unwrap_err();
        assert_eq!(e.code(), "build_failed");
        let message = e.to_string();
        assert!(
            message.starts_with("probe failed (exit status 3)\n"),
            "{message}"
        );
        assert!(
            message.contains("first") && message.contains("second"),
            "{message}"
        );

        let (result, text) = run_shell(
            &sandbox,
            "echo started; sleep 60",
            std::time::Duration::from_millis(300),
        )
        .await;
        let e = result.unwrap_err();
        assert_eq!(e.code(), "build_failed");
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(
            text.contains("started") && text.contains("timed out"),
            "{text}"
        );
    }

    /// With an egress proxy, the install's only way out is the proxy, and the proxy
    /// lets through only the allowed `host:port`: a service on the host's loopback is
    /// out of reach both directly and through the proxy.
    #[tokio::test]
    async fn the_install_network_reaches_only_the_package_index() {
        let Some(bwrap) = bwrap_or_skip().await else {
            return;
        };
        let host_service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = host_service.local_addr().unwrap().port();
        let staging = tempfile::tempdir().unwrap();
        let proxy =
            super::super::egress::EgressProxy::start(vec!["registry.example:443".into()]).unwrap();
        let sandbox = sandbox(&bwrap, staging.path(), Some(proxy.dir()));
        // Python's socket module speaks both to the host port and to the proxy socket.
        let python = [
            "import os, socket".to_string(),
            "try:".into(),
            format!("    socket.create_connection(('127.0.0.1', {port}), timeout=2)"),
            "    print('DIRECT-OPEN')".into(),
            "except OSError as e:".into(),
            "    print('direct refused', type(e).__name__)".into(),
            "u = socket.socket(socket.AF_UNIX)".into(),
            "u.connect(os.environ['SOPM_EGRESS_SOCKET'])".into(),
            format!("u.sendall(b'CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\n\\r\\n')"),
            "print('proxy said', u.recv(100).split(b'\\r\\n')[0].decode())".into(),
        ]
        .join("\n");
        let script = format!("python3 -c \"$(cat <<'PY'\n{python}\nPY\n)\"");
        let (r, log) = run_shell(&sandbox, &script, std::time::Duration::from_secs(30)).await;
        assert!(r.is_ok(), "{r:?}: {log}");
        assert!(!log.contains("DIRECT-OPEN"), "{log}");
        assert!(log.contains("direct refused"), "{log}");
        assert!(log.contains("proxy said HTTP/1.1 403 Forbidden"), "{log}");
    }
}
