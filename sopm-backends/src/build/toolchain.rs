//! Finds the tools a dependency install runs (bwrap, the Python interpreter with
//! pip, node and npm) and the host directories the install sandbox must show for
//! them to work.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sopm_core::{Error, Result};
use tokio::process::Command;

use crate::host::tools::find_on_path;

/// How long probing a tool (`bwrap --help`, `python3 -c ...`) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// `configured`, else `name` found on `PATH`; `unavailable` when neither.
pub(crate) fn locate(configured: Option<&Path>, name: &str, needed_for: &str) -> Result<PathBuf> {
    match configured {
        Some(p) if p.is_file() => Ok(p.to_path_buf()),
        Some(p) => Err(Error::Unavailable(format!(
            "{needed_for} needs {name}, but {} does not exist",
            p.display()
        ))),
        None => find_on_path(name).ok_or_else(|| {
            Error::Unavailable(format!("{needed_for} needs {name}, which is not on PATH"))
        }),
    }
}

async fn probe(program: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PROBE_TIMEOUT, cmd.output())
        .await
        .map_err(|_| {
            Error::Unavailable(format!("{} did not answer within 30 s", program.display()))
        })?
        .map_err(|e| Error::Unavailable(format!("cannot run {}: {e}", program.display())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or("").trim();
        return Err(Error::Unavailable(format!(
            "{} {} failed ({}): {last}",
            program.display(),
            args.first().copied().unwrap_or(""),
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// bwrap and the options this version of it knows.
#[derive(Debug, Clone)]
pub(crate) struct Bwrap {
    pub path: PathBuf,
    /// `--disable-userns` (0.8): no nested user namespaces inside the sandbox.
    pub disable_userns: bool,
    /// `--size` (0.7): bounded tmpfs.
    pub tmpfs_size: bool,
}

impl Bwrap {
    pub(crate) async fn resolve(configured: Option<&Path>) -> Result<Self> {
        let path = locate(configured, "bwrap", "installing dependencies")?;
        let help = probe(&path, &["--help"]).await?;
        Ok(Bwrap {
            disable_userns: help.contains("--disable-userns"),
            tmpfs_size: help.contains("--size"),
            path,
        })
    }
}

/// A Python interpreter that has pip.
#[derive(Debug, Clone)]
pub(crate) struct Python {
    /// `sys.executable`: the interpreter as Python sees itself (a venv's keeps its
    /// venv).
    pub executable: PathBuf,
    /// Host directories the interpreter needs: its prefixes and binary directories.
    pub dirs: Vec<PathBuf>,
    /// pip's version, for the log.
    pub pip_version: String,
}

const PYTHON_PROBE: &str = "import sys, pip; print(sys.executable); print(sys.prefix); \
                            print(sys.base_prefix); print(pip.__version__)";

impl Python {
    /// Runs the configured interpreter once, outside any sandbox (it is the
    /// operator's tool), to learn where it really lives: a version-manager shim
    /// resolves to the real interpreter here.
    pub(crate) async fn resolve(configured: Option<&Path>) -> Result<Self> {
        let path = locate(configured, "python3", "installing requirements.txt")?;
        let out = probe(&path, &["-c", PYTHON_PROBE]).await.map_err(|e| {
            Error::Unavailable(format!(
                "installing requirements.txt needs pip for {}: {}",
                path.display(),
                e
            ))
        })?;
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        let [exe, prefix, base_prefix, pip_version] = lines[..] else {
            return Err(Error::Unavailable(format!(
                "{} answered the probe unexpectedly",
                path.display()
            )));
        };
        let executable = PathBuf::from(exe);
        let mut dirs = vec![PathBuf::from(prefix), PathBuf::from(base_prefix)];
        if let Some(dir) = executable.parent() {
            dirs.push(dir.to_path_buf());
        }
        if let Some(dir) = std::fs::canonicalize(&executable)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            dirs.push(dir);
        }
        Ok(Python {
            executable,
            dirs,
            pip_version: pip_version.to_string(),
        })
    }
}

/// node and npm.
#[derive(Debug, Clone)]
pub(crate) struct Npm {
    /// The program to run and its leading arguments: `node npm-cli.js`, or an `npm`
    /// executable that is not a node script.
    pub argv: Vec<OsString>,
    /// Host directories node and npm need.
    pub dirs: Vec<PathBuf>,
    /// The directory holding `node`, first on the sandbox's PATH.
    pub node_dir: PathBuf,
}

impl Npm {
    pub(crate) async fn resolve(node: Option<&Path>, npm: Option<&Path>) -> Result<Self> {
        let node = locate(node, "node", "installing package.json dependencies")?;
        let npm = locate(npm, "npm", "installing package.json dependencies")?;
        let canon = |p: &Path| {
            std::fs::canonicalize(p)
                .map_err(|e| Error::Unavailable(format!("cannot resolve {}: {e}", p.display())))
        };
        let (node, npm) = (canon(&node)?, canon(&npm)?);
        let node_dir = node.parent().unwrap_or(Path::new("/")).to_path_buf();
        // `npm` is usually a symlink to `<prefix>/lib/node_modules/npm/bin/npm-cli.js`,
        // a node script: run it with node explicitly, and show the whole npm package.
        let is_node_script = tokio::fs::read(&npm)
            .await
            .map(|bytes| {
                let first_line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
                first_line.starts_with(b"#!") && first_line.windows(4).any(|w| w == b"node")
            })
            .unwrap_or(false);
        let (argv, npm_dir) = if is_node_script {
            let package = npm
                .parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("/"))
                .to_path_buf();
            (
                vec![node.clone().into_os_string(), npm.into_os_string()],
                package,
            )
        } else {
            let dir = npm.parent().unwrap_or(Path::new("/")).to_path_buf();
            (vec![npm.into_os_string()], dir)
        };
        Ok(Npm {
            argv,
            dirs: vec![node_dir.clone(), npm_dir],
            node_dir,
        })
    }
}

/// The first CA bundle found at a usual place.
pub(crate) fn system_ca_bundle() -> Option<PathBuf> {
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_is_on_path() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("sopm-no-such-tool-xyz").is_none());
    }

    #[test]
    fn a_missing_configured_tool_is_unavailable() {
        let e = locate(Some(Path::new("/nonexistent/bwrap")), "bwrap", "x").unwrap_err();
        assert_eq!(e.code(), "unavailable");
    }
}
