//! Reads a function's artifact directory into the code of an init frame, or decides it
//! is too big for a frame and must be mounted instead.

use std::io;
use std::path::{Component, Path, PathBuf};

use base64::Engine;

use super::protocol::CodeFiles;

/// Default largest artifact sent inline in an init frame (8 MiB of file contents).
pub const DEFAULT_MAX_INLINE_BYTES: u64 = 8 << 20;

/// Most files sent inline; a larger tree is mounted instead.
pub const MAX_INLINE_FILES: usize = 10_000;

/// A function's code, ready for an instance.
#[derive(Debug, Clone, PartialEq)]
pub enum FunctionCode {
    /// Small enough to travel in the init frame (stem cells can take it).
    Inline(CodeFiles),
    /// Too big for a frame: the backend mounts this directory read-only at the code dir
    /// of a dedicated sandbox.
    Mounted(PathBuf),
    /// Too big for a frame, and built into this container image at the code dir: a
    /// container backend boots a dedicated instance from it.
    Image(String),
}

/// Loads `dir`. Files are read without following symbolic links; a link is kept only if
/// its target is relative and stays inside `dir`, so an artifact can never pull a host
/// file into a sandbox. Special files are skipped.
pub fn load_code(dir: &Path, max_inline_bytes: u64) -> io::Result<FunctionCode> {
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("artifact {} is not a directory", dir.display()),
        ));
    }
    let mut code = CodeFiles::default();
    let mut total: u64 = 0;
    let mut stack = vec![PathBuf::new()];
    let engine = base64::engine::general_purpose::STANDARD;
    while let Some(rel_dir) = stack.pop() {
        for entry in std::fs::read_dir(dir.join(&rel_dir))? {
            let entry = entry?;
            let rel = rel_dir.join(entry.file_name());
            let Some(rel_str) = rel.to_str().map(str::to_owned) else {
                // Not UTF-8: it cannot travel in JSON. The mounted path still works.
                return Ok(FunctionCode::Mounted(dir.to_path_buf()));
            };
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(rel);
            } else if ft.is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                if link_stays_inside(&rel, &target) {
                    if let Some(t) = target.to_str() {
                        code.symlinks.insert(rel_str, t.to_owned());
                    }
                } else {
                    tracing::warn!(artifact = %dir.display(), link = %rel_str, "skipping a symlink that leaves the artifact");
                }
            } else if ft.is_file() {
                let meta = entry.metadata()?;
                total += meta.len();
                if total > max_inline_bytes || code.files.len() >= MAX_INLINE_FILES {
                    return Ok(FunctionCode::Mounted(dir.to_path_buf()));
                }
                let bytes = std::fs::read(entry.path())?;
                if is_executable(&meta) {
                    code.executables.push(rel_str.clone());
                }
                code.files.insert(rel_str, engine.encode(bytes));
            }
        }
    }
    code.executables.sort();
    Ok(FunctionCode::Inline(code))
}

fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

/// Whether a link at `link` (relative to the code root) pointing at `target` resolves
/// inside the code root, judged lexically.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = link.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_must_stay_inside() {
        assert!(link_stays_inside(
            Path::new("node_modules/.bin/x"),
            Path::new("../x/bin.js")
        ));
        assert!(!link_stays_inside(
            Path::new("a"),
            Path::new("../etc/shadow")
        ));
        assert!(!link_stays_inside(Path::new("a"), Path::new("/etc/shadow")));
    }

    #[test]
    fn loads_files_and_refuses_escaping_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.py"), b"x = 1\n").unwrap();
        std::fs::create_dir(dir.path().join("deps")).unwrap();
        std::fs::write(dir.path().join("deps/m.py"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("leak")).unwrap();
        std::os::unix::fs::symlink("main.py", dir.path().join("alias.py")).unwrap();
        let FunctionCode::Inline(code) = load_code(dir.path(), 1 << 20).unwrap() else {
            panic!("expected inline code");
        };
        assert_eq!(code.files.len(), 2);
        assert!(code.files.contains_key("deps/m.py"));
        assert_eq!(
            code.symlinks.get("alias.py").map(String::as_str),
            Some("main.py")
        );
        assert!(!code.symlinks.contains_key("leak"));
        assert!(matches!(
            load_code(dir.path(), 2).unwrap(),
            FunctionCode::Mounted(_)
        ));
    }
}
