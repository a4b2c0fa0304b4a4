//! The runner files on the host (written once under the scratch dir, mounted read-only at
//! [`RUNNER_DIR`]) and the command line that starts a runner inside a sandbox.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use sopm_core::Limits;

use super::interpreters::Interpreter;
use crate::sandbox::protocol::RUNNER_PROLOGUE;
use crate::sandbox::RunnerKind;

/// Where the runners are mounted inside every sandbox.
pub const RUNNER_DIR: &str = "/run/sopm";

/// The environment every sandbox's runner starts with (plus the function's own variables,
/// set by the runner).
pub const SANDBOX_ENV: [(&str, &str); 6] = [
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", "/tmp"),
    ("TMPDIR", "/tmp"),
    ("LANG", "C.UTF-8"),
    ("PYTHONUNBUFFERED", "1"),
    ("PYTHONDONTWRITEBYTECODE", "1"),
];

/// The command run inside a sandbox: the runner prologue (frames on fds 3/4, logs on 5)
/// then the interpreter on the runner file under [`RUNNER_DIR`].
pub fn runner_command(
    runner: RunnerKind,
    interpreter: &Interpreter,
    limits: &Limits,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = ["/bin/sh", "-c", RUNNER_PROLOGUE, "sopm-runner"]
        .map(OsString::from)
        .to_vec();
    a.push(interpreter.exe.clone().into());
    match runner {
        RunnerKind::Python => {
            a.extend(["-I", "-S", "-B"].map(OsString::from));
        }
        RunnerKind::Node => {
            let heap = limits.memory_mb.max(16);
            a.push(format!("--max-old-space-size={heap}").into());
        }
        RunnerKind::Static => {}
    }
    a.push(format!("{RUNNER_DIR}/{}", runner.file_name()).into());
    a
}

/// Writes the runners under `scratch/runners-<hash>`, read-only mounted in every sandbox.
/// The scratch dir is the server's alone (0700); the runners dir and files are readable
/// by all (0755, 0644), since functions run as an unprivileged uid inside (public code).
pub fn write_runners(scratch: &Path) -> std::io::Result<PathBuf> {
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
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    for k in RunnerKind::SCRIPTS {
        let source = k.source().unwrap_or_default();
        let dest = dir.join(k.file_name());
        let same = std::fs::read_to_string(&dest).ok().as_deref() == Some(source);
        if same && std::fs::metadata(&dest).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o644) {
            continue;
        }
        let tmp = dir.join(format!(".{}.{}", k.file_name(), std::process::id()));
        std::fs::write(&tmp, source)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, &dest)?;
    }
    Ok(dir)
}
