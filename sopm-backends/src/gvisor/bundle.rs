//! The OCI bundle of one gVisor sandbox: a `config.json` whose root is a shared, empty,
//! read-only skeleton directory, with everything the runtime needs bound read-only on top.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sopm_core::Limits;

use crate::host::interpreters::Interpreter;
use crate::host::mounts::TopLevel;
use crate::host::rlimits::rlimit_args;
use crate::host::runner_files::{runner_command, RUNNER_DIR, SANDBOX_ENV};
use crate::host::seccomp::{self, Arch};
use crate::sandbox::{RunnerKind, CODE_DIR};

/// The uid and gid a function runs as inside its sandbox (`nobody`).
pub const SANDBOX_UID: u32 = 65534;

/// Room the sandbox's own processes (the gVisor kernel and its gofer) need beyond the
/// function's memory, when the memory limit is a host cgroup on the whole sandbox.
pub const SANDBOX_MEMORY_HEADROOM: u64 = 256 << 20;

/// Threads of the gVisor kernel counted against a host pids cgroup.
pub const SANDBOX_PIDS_HEADROOM: u64 = 256;

/// Everything that shapes one sandbox's `config.json`.
#[derive(Debug, Clone)]
pub struct BundlePlan<'a> {
    /// The root skeleton (see [`write_skeleton`]).
    pub rootfs: &'a Path,
    /// Which runner.
    pub runner: RunnerKind,
    /// Its interpreter.
    pub interpreter: &'a Interpreter,
    /// The host directory holding the runner files.
    pub runners_dir: &'a Path,
    /// Real top-level directories of the host to bind (links live in the skeleton).
    pub top_level: &'a [TopLevel],
    /// Host files of [`HOST_FILES`](crate::host::mounts::HOST_FILES) that exist, as
    /// `(resolved source, destination)` (see [`host_binds`](crate::host::mounts::host_binds)).
    pub host_files: &'a [(PathBuf, PathBuf)],
    /// Operator-chosen extra read-only binds.
    pub extra_binds: &'a [PathBuf],
    /// The limits it boots with.
    pub limits: &'a Limits,
    /// An artifact to mount read-only at the code dir.
    pub mount: Option<&'a Path>,
    /// Size of the private code dir when nothing is mounted.
    pub code_tmpfs_bytes: u64,
    /// A host cgroup path for the whole sandbox (memory and pids), if cgroups are used.
    pub cgroups_path: Option<String>,
}

fn bind(src: &Path, dest: &Path) -> Value {
    json!({
        "destination": dest,
        "type": "bind",
        "source": src,
        "options": ["rbind", "ro", "nosuid", "nodev"],
    })
}

/// The rlimits of a sandbox, as OCI `process.rlimits`: the host layer's, read off its
/// `prlimit` options so the host backends always agree.
pub fn rlimits(runner: RunnerKind, limits: &Limits) -> Vec<Value> {
    rlimit_args(runner, limits, false)
        .iter()
        .filter_map(|arg| {
            let (name, value) = arg.strip_prefix("--")?.split_once('=')?;
            let (soft, hard) = value.split_once(':')?;
            let kind = match name {
                "nofile" => "RLIMIT_NOFILE",
                "fsize" => "RLIMIT_FSIZE",
                "core" => "RLIMIT_CORE",
                "as" => "RLIMIT_AS",
                "nproc" => "RLIMIT_NPROC",
                _ => return None,
            };
            Some(json!({
                "type": kind,
                "soft": soft.parse::<u64>().ok()?,
                "hard": hard.parse::<u64>().ok()?,
            }))
        })
        .collect()
}

/// The `config.json` of one sandbox.
pub fn config_json(plan: &BundlePlan<'_>) -> Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        bind(Path::new("/usr"), Path::new("/usr")),
    ];
    for t in plan.top_level {
        if let TopLevel::Dir(d) = t {
            mounts.push(bind(d, d));
        }
    }
    for (src, at) in plan.host_files {
        mounts.push(bind(src, at));
    }
    for d in plan.interpreter.binds.iter().chain(plan.extra_binds) {
        mounts.push(bind(d, d));
    }
    mounts.push(bind(plan.runners_dir, Path::new(RUNNER_DIR)));
    let tmp_bytes = plan.limits.tmpfs_mb.max(1) << 20;
    mounts.push(json!({
        "destination": "/tmp",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "nodev", "mode=1777", format!("size={tmp_bytes}")],
    }));
    match plan.mount {
        Some(dir) => mounts.push(bind(dir, Path::new(CODE_DIR))),
        None => mounts.push(json!({
            "destination": CODE_DIR,
            "type": "tmpfs",
            "source": "tmpfs",
            "options": [
                "nosuid", "nodev", "mode=755",
                format!("uid={SANDBOX_UID}"), format!("gid={SANDBOX_UID}"),
                format!("size={}", plan.code_tmpfs_bytes),
            ],
        })),
    }
    let args: Vec<String> = runner_command(plan.runner, plan.interpreter, plan.limits)
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let env: Vec<String> = SANDBOX_ENV
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let none: [&str; 0] = [];
    let mut linux = json!({
        "namespaces": [
            {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
            {"type": "uts"}, {"type": "mount"},
        ],
        "resources": {
            "memory": {"limit": (plan.limits.memory_mb.max(16) << 20) + SANDBOX_MEMORY_HEADROOM},
            "pids": {"limit": plan.limits.max_processes.max(1) + SANDBOX_PIDS_HEADROOM},
        },
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
        "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"],
    });
    if let Some(arch) = Arch::native() {
        linux["seccomp"] = seccomp::oci_for_gvisor(arch);
    }
    if let Some(path) = &plan.cgroups_path {
        linux["cgroupsPath"] = json!(path);
    }
    json!({
        "ociVersion": "1.0.0",
        "process": {
            "terminal": false,
            "user": {"uid": SANDBOX_UID, "gid": SANDBOX_UID},
            "args": args,
            "env": env,
            "cwd": "/tmp",
            "noNewPrivileges": true,
            "capabilities": {
                "bounding": none, "effective": none, "inheritable": none,
                "permitted": none, "ambient": none,
            },
            "rlimits": rlimits(plan.runner, plan.limits),
        },
        "root": {"path": plan.rootfs, "readonly": true},
        "hostname": "sopm",
        "mounts": mounts,
        "linux": linux,
    })
}

/// Makes the root skeleton under `dir`: empty mount points for every bind of
/// [`config_json`], and the host's top-level links (`/lib -> usr/lib`) recreated.
/// Idempotent; nothing of the host is copied in.
pub fn write_skeleton(
    dir: &Path,
    top_level: &[TopLevel],
    host_files: &[(PathBuf, PathBuf)],
    binds: &[PathBuf],
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let inside = |p: &Path| dir.join(p.strip_prefix("/").unwrap_or(p));
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for d in [
        "usr", "tmp", "proc", "dev", "sys", "etc", RUNNER_DIR, CODE_DIR,
    ] {
        std::fs::create_dir_all(inside(Path::new(d)))?;
    }
    for t in top_level {
        match t {
            TopLevel::Link(target, at) => {
                let link = inside(at);
                if std::fs::symlink_metadata(&link).is_err() {
                    std::os::unix::fs::symlink(target, &link)?;
                }
            }
            TopLevel::Dir(d) => std::fs::create_dir_all(inside(d))?,
        }
    }
    for (src, f) in host_files {
        let at = inside(f);
        if src.is_dir() {
            std::fs::create_dir_all(&at)?;
        } else if std::fs::symlink_metadata(&at).is_err() {
            if let Some(parent) = at.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&at, b"")?;
        }
    }
    for b in binds {
        std::fs::create_dir_all(inside(b))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_is_closed_by_default() {
        let interp = Interpreter {
            exe: "/usr/bin/python3".into(),
            binds: vec![],
        };
        let limits = Limits::default();
        let plan = BundlePlan {
            rootfs: Path::new("/var/tmp/root"),
            runner: RunnerKind::Python,
            interpreter: &interp,
            runners_dir: Path::new("/var/tmp/r"),
            top_level: &[TopLevel::Link("usr/lib".into(), "/lib".into())],
            host_files: &[(
                PathBuf::from("/etc/ssl/certs"),
                PathBuf::from("/etc/ssl/certs"),
            )],
            extra_binds: &[],
            limits: &limits,
            mount: None,
            code_tmpfs_bytes: 1 << 20,
            cgroups_path: None,
        };
        let c = config_json(&plan);
        assert_eq!(c["root"]["readonly"], json!(true));
        assert_eq!(c["process"]["noNewPrivileges"], json!(true));
        assert_eq!(c["process"]["user"], json!({"uid": 65534, "gid": 65534}));
        assert_eq!(
            c["linux"]["seccomp"]["defaultAction"],
            json!("SCMP_ACT_ERRNO")
        );
        assert_eq!(c["process"]["capabilities"]["bounding"], json!([]));
        let text = c.to_string();
        assert!(!text.contains("/etc/shadow"));
        assert!(!text.contains("resolv.conf"));
        assert!(text.contains("RLIMIT_AS") && text.contains("RLIMIT_NOFILE"));
        let mounts = c["mounts"].as_array().unwrap();
        let ro_binds = mounts
            .iter()
            .filter(|m| m["type"] == "bind")
            .all(|m| m["options"].as_array().unwrap().contains(&json!("ro")));
        assert!(ro_binds);
        assert!(c["linux"].get("cgroupsPath").is_none());
    }
}
