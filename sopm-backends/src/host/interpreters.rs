//! Finds the script runners' interpreters (`python3`, `node`) on the host, and the host
//! directories each needs inside a sandbox beyond `/usr`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sopm_core::{Error, Result};
use tokio::process::Command;

use super::tools::tool;
use crate::sandbox::RunnerKind;

/// An interpreter and the host directories it needs beyond `/usr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    /// The real executable.
    pub exe: PathBuf,
    /// Directories to bind read-only at the same path (a pyenv prefix, say).
    pub binds: Vec<PathBuf>,
}

/// The interpreters of the script runners on this host, each found or why not (a host
/// without node still runs python functions).
#[derive(Debug)]
pub struct Interpreters {
    python: std::result::Result<Interpreter, String>,
    node: std::result::Result<Interpreter, String>,
}

impl Interpreters {
    /// Finds `python3` and `node` (configured, else on `PATH`) and the host directories
    /// each needs.
    pub async fn probe(python: &Option<PathBuf>, node: &Option<PathBuf>) -> Self {
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
    pub fn for_runner(&self, runner: RunnerKind) -> Result<&Interpreter> {
        match runner {
            RunnerKind::Python | RunnerKind::Static => &self.python,
            RunnerKind::Node => &self.node,
        }
        .as_ref()
        .map_err(|why| Error::Unavailable(why.clone()))
    }

    /// The host directories the found interpreters need beyond `/usr`.
    pub fn binds(&self) -> impl Iterator<Item = &PathBuf> {
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
