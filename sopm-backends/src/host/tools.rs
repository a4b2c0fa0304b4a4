//! Finds the host programs a sandbox or a build runs: a configured path if it is an
//! executable, else the first executable of that name on `PATH`.

use std::path::{Path, PathBuf};

use sopm_core::{Error, Result};

/// The first executable file named `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// Whether `p` is a regular file with an execute bit.
pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `configured` if it is an executable, else `name` on `PATH`; `unavailable` saying `why`
/// the tool is needed when neither.
pub fn tool(configured: &Option<PathBuf>, name: &str, why: &str) -> Result<PathBuf> {
    match configured {
        Some(p) if is_executable(p) => Ok(p.clone()),
        Some(p) => Err(Error::Unavailable(format!(
            "{} is not an executable ({why})",
            p.display()
        ))),
        None => find_on_path(name)
            .ok_or_else(|| Error::Unavailable(format!("{name} not found on PATH ({why})"))),
    }
}
