//! The command line of one process sandbox: a `sh` step that opens the seccomp program
//! and joins the sandbox's cgroups, `prlimit` for rlimits, `bwrap` for namespaces, mounts,
//! the unprivileged uid and the seccomp filter, and the runner prologue inside.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use sopm_core::Limits;

use crate::host::interpreters::Interpreter;
use crate::host::mounts::{host_binds, TopLevel, HOST_FILES, NETWORK_FILES};
use crate::host::rlimits::rlimit_args;
use crate::host::runner_files::{runner_command, RUNNER_DIR, SANDBOX_ENV};
use crate::sandbox::{RunnerKind, CODE_DIR};

/// Opens the seccomp program named by its first argument on fd [`SECCOMP_FD`] (for
/// `bwrap --seccomp`), joins the cgroups named by the next ones, then runs the rest:
/// `sh -c STEP sopm-sandbox SECCOMP_FILE N dir1..dirN cmd args..`.
pub const SANDBOX_STEP: &str = concat!(
    "exec 9<\"$1\" || exit 125; shift; ",
    crate::cgroup_join_script!()
);

/// The fd on which `bwrap` reads the seccomp program ([`SANDBOX_STEP`] opens it).
pub const SECCOMP_FD: &str = "9";

/// The uid and gid a function runs as inside its sandbox (`nobody`).
pub const SANDBOX_UID: &str = "65534";

/// Everything that shapes one sandbox's command line.
#[derive(Debug, Clone)]
pub struct SandboxPlan<'a> {
    /// `bwrap`.
    pub bwrap: &'a Path,
    /// `prlimit`.
    pub prlimit: &'a Path,
    /// The host's `sh` (the first step).
    pub sh: &'a Path,
    /// The seccomp program (BPF bytes) to apply inside.
    pub seccomp: &'a Path,
    /// Cgroup directories to join first.
    pub cgroup_dirs: Vec<&'a Path>,
    /// Which runner.
    pub runner: RunnerKind,
    /// Its interpreter.
    pub interpreter: &'a Interpreter,
    /// The host directory holding the runner files.
    pub runners_dir: &'a Path,
    /// Top-level links and dirs of the host.
    pub top_level: &'a [TopLevel],
    /// Operator-chosen extra read-only binds.
    pub extra_binds: &'a [PathBuf],
    /// The limits it boots with.
    pub limits: &'a Limits,
    /// Whether it keeps the host's network.
    pub network: bool,
    /// An artifact to mount read-only at the code dir.
    pub mount: Option<&'a Path>,
    /// Whether the RLIMIT_NPROC fallback applies (no pids cgroup).
    pub nproc_rlimit: bool,
    /// Size of the private code dir when nothing is mounted.
    pub code_tmpfs_bytes: u64,
}

/// The full argv (program first).
pub fn command_line(plan: &SandboxPlan<'_>) -> Vec<OsString> {
    let mut argv: Vec<OsString> = Vec::with_capacity(96);
    argv.push(plan.sh.into());
    argv.push("-c".into());
    argv.push(SANDBOX_STEP.into());
    argv.push("sopm-sandbox".into());
    argv.push(plan.seccomp.into());
    argv.push(plan.cgroup_dirs.len().to_string().into());
    argv.extend(
        plan.cgroup_dirs
            .iter()
            .map(|d| OsString::from(d.as_os_str())),
    );
    argv.push(plan.prlimit.into());
    argv.extend(
        rlimit_args(plan.runner, plan.limits, plan.nproc_rlimit)
            .into_iter()
            .map(OsString::from),
    );
    argv.push("--".into());
    argv.push(plan.bwrap.into());
    argv.extend(bwrap_args(plan));
    argv
}

fn bwrap_args(plan: &SandboxPlan<'_>) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::with_capacity(80);
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&[
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--disable-userns",
        "--uid",
        SANDBOX_UID,
        "--gid",
        SANDBOX_UID,
        "--cap-drop",
        "ALL",
        "--seccomp",
        SECCOMP_FD,
        "--hostname",
        "sopm",
    ]);
    if !plan.network {
        push(&["--unshare-net"]);
    }
    push(&["--ro-bind", "/usr", "/usr"]);
    for t in plan.top_level {
        match t {
            TopLevel::Link(target, at) => {
                a.push("--symlink".into());
                a.push(target.into());
                a.push(at.into());
            }
            TopLevel::Dir(d) => {
                a.push("--ro-bind".into());
                a.push(d.into());
                a.push(d.into());
            }
        }
    }
    let mut files = host_binds(&HOST_FILES);
    if plan.network {
        files.extend(host_binds(&NETWORK_FILES));
    }
    for (src, at) in files {
        a.push("--ro-bind".into());
        a.push(src.into());
        a.push(at.into());
    }
    for d in plan.interpreter.binds.iter().chain(plan.extra_binds) {
        a.push("--ro-bind".into());
        a.push(d.into());
        a.push(d.into());
    }
    a.push("--ro-bind".into());
    a.push(plan.runners_dir.into());
    a.push(RUNNER_DIR.into());
    let tmp_bytes = plan.limits.tmpfs_mb.max(1) << 20;
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&["--proc", "/proc", "--dev", "/dev"]);
    push(&["--size", &tmp_bytes.to_string(), "--tmpfs", "/tmp"]);
    push(&["--size", &(16u64 << 20).to_string(), "--tmpfs", "/dev/shm"]);
    match plan.mount {
        Some(dir) => {
            a.push("--ro-bind".into());
            a.push(dir.into());
            a.push(CODE_DIR.into());
        }
        None => {
            let code = plan.code_tmpfs_bytes.to_string();
            let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
            push(&["--size", &code, "--tmpfs", CODE_DIR]);
        }
    }
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&["--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]);
    for (k, v) in SANDBOX_ENV {
        push(&["--setenv", k, v]);
    }
    a.push("--".into());
    a.extend(runner_command(plan.runner, plan.interpreter, plan.limits));
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_step_opens_the_seccomp_program_then_joins_like_every_sandbox() {
        assert!(SANDBOX_STEP.starts_with("exec 9<\"$1\""));
        assert!(SANDBOX_STEP.ends_with(crate::host::cgroup::CGROUP_JOIN));
    }

    #[test]
    fn the_sandbox_is_closed_by_default() {
        let interp = Interpreter {
            exe: "/usr/bin/python3".into(),
            binds: vec![],
        };
        let limits = Limits::default();
        let plan = SandboxPlan {
            bwrap: Path::new("/usr/bin/bwrap"),
            prlimit: Path::new("/usr/bin/prlimit"),
            sh: Path::new("/bin/sh"),
            seccomp: Path::new("/var/tmp/seccomp.bpf"),
            cgroup_dirs: vec![Path::new("/sys/fs/cgroup/pids/sopm/x")],
            runner: RunnerKind::Python,
            interpreter: &interp,
            runners_dir: Path::new("/var/tmp/r"),
            top_level: &[TopLevel::Link("usr/lib".into(), "/lib".into())],
            extra_binds: &[],
            limits: &limits,
            network: false,
            mount: None,
            nproc_rlimit: false,
            code_tmpfs_bytes: 1 << 20,
        };
        let argv: Vec<String> = command_line(&plan)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = argv.join(" ");
        assert_eq!(argv[0], "/bin/sh");
        for needed in [
            "--unshare-net",
            "--unshare-pid",
            "--die-with-parent",
            "--clearenv",
            "--remount-ro /",
            "--cap-drop ALL",
            "--as=",
            "--disable-userns",
            "--uid 65534 --gid 65534",
            "--seccomp 9",
            "/var/tmp/seccomp.bpf",
        ] {
            assert!(joined.contains(needed), "missing {needed}");
        }
        assert!(!joined.contains("/etc/shadow"));
        assert!(!joined.contains("/etc/ssl/private") && !joined.contains("/etc/ssl /etc/ssl"));
        assert!(!joined.contains("resolv.conf"));
    }
}
