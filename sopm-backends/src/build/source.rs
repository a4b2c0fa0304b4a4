//! The uploaded files: path checks, the handler's file, and writing them into a
//! staging directory.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use sopm_core::builder::path_problem;
use sopm_core::types::truncate_for_message;
use sopm_core::{Error, Result, Runtime, Source};

/// The file a handler names, and whether it must be executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HandlerFile {
    /// Relative path in the source.
    pub path: String,
    /// Whether the file is run directly (shell scripts, binaries).
    pub executable: bool,
}

fn is_identifier(s: &str, extra: &[char]) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || extra.contains(&c))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c))
}

fn handler_failed(handler: &str, why: impl std::fmt::Display) -> Error {
    Error::BuildFailed(format!(
        "handler '{}': {why}",
        truncate_for_message(handler)
    ))
}

/// Finds the file a handler names in the source: python `pkg.module.func` ->
/// `pkg/module.py` or `pkg/module/__init__.py`; node `dir/file.func` ->
/// `dir/file.js`; shell and binary: the handler is the file. `build_failed` when the
/// handler is malformed or its file is missing.
pub(crate) fn handler_file(
    runtime: Runtime,
    handler: &str,
    source: &Source,
) -> Result<HandlerFile> {
    let present = |p: &str| source.files.contains_key(p);
    match runtime {
        Runtime::Python => {
            let (module, func) = handler
                .rsplit_once('.')
                .ok_or_else(|| handler_failed(handler, "expected 'module.function'"))?;
            if !is_identifier(func, &[]) || !module.split('.').all(|m| is_identifier(m, &[])) {
                return Err(handler_failed(
                    handler,
                    "expected 'module.function' made of Python identifiers",
                ));
            }
            let base = module.replace('.', "/");
            let candidates = [format!("{base}.py"), format!("{base}/__init__.py")];
            match candidates.iter().find(|p| present(p)) {
                Some(p) => Ok(HandlerFile {
                    path: p.clone(),
                    executable: false,
                }),
                None => Err(handler_failed(
                    handler,
                    format!(
                        "neither {} nor {} is in the upload",
                        candidates[0], candidates[1]
                    ),
                )),
            }
        }
        Runtime::Node => {
            let (file, func) = handler
                .rsplit_once('.')
                .ok_or_else(|| handler_failed(handler, "expected 'file.function'"))?;
            if !is_identifier(func, &['$']) {
                return Err(handler_failed(
                    handler,
                    "expected 'file.function' with a JavaScript identifier",
                ));
            }
            let path = format!("{file}.js");
            if let Some(why) = path_problem(&path) {
                return Err(handler_failed(handler, format!("the file path {why}")));
            }
            if !present(&path) {
                return Err(handler_failed(
                    handler,
                    format!("{path} is not in the upload"),
                ));
            }
            Ok(HandlerFile {
                path,
                executable: false,
            })
        }
        Runtime::Shell | Runtime::Binary => {
            if let Some(why) = path_problem(handler) {
                return Err(handler_failed(handler, format!("the file path {why}")));
            }
            if !present(handler) {
                return Err(handler_failed(handler, "the file is not in the upload"));
            }
            Ok(HandlerFile {
                path: handler.to_string(),
                executable: true,
            })
        }
        Runtime::Builtin => Err(Error::invalid("built-in functions are not built")),
    }
}

/// Writes the files of `source` under `dir` (which exists and is empty): files
/// `0644`, the executable handler `0755`, directories `0755`. Never follows or
/// replaces anything already there. Blocking.
pub(crate) fn write_files(
    dir: &Path,
    source: &Source,
    executable: Option<&str>,
) -> std::io::Result<u64> {
    let mut dirs = fs::DirBuilder::new();
    dirs.recursive(true).mode(0o755);
    let mut total = 0u64;
    for (path, bytes) in &source.files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            dirs.create(parent)?;
        }
        let mode = if executable == Some(path.as_str()) {
            0o755
        } else {
            0o644
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&target)?;
        file.write_all(bytes)?;
        // `mode` above is filtered by the umask; the artifact's modes should not be.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        total += bytes.len() as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sopm_core::builder::check_source;

    fn src(paths: &[&str]) -> Source {
        let mut s = Source::default();
        for p in paths {
            s.files.insert(p.to_string(), b"x".to_vec());
        }
        s
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\0b",
            "a\\b",
            "a\nb",
            "..",
        ] {
            let e = check_source(&src(&[bad])).unwrap_err();
            assert_eq!(e.code(), "invalid_input", "{bad:?}");
        }
        assert!(check_source(&src(&["main.py", "pkg/mod.py", ".hidden", "a..b"])).is_ok());
        assert!(check_source(&Source::default()).is_err());
    }

    #[test]
    fn a_file_cannot_also_be_a_directory() {
        let e = check_source(&src(&["a", "a/b"])).unwrap_err();
        assert!(e.to_string().contains("both a file and a directory"), "{e}");
    }

    #[test]
    fn handlers_map_to_files() {
        let s = src(&[
            "main.py",
            "pkg/mod.py",
            "lib/__init__.py",
            "index.js",
            "src/app.js",
            "run.sh",
        ]);
        let path = |r, h| handler_file(r, h, &s).map(|f| f.path);
        assert_eq!(path(Runtime::Python, "main.handle").unwrap(), "main.py");
        assert_eq!(
            path(Runtime::Python, "pkg.mod.handle").unwrap(),
            "pkg/mod.py"
        );
        assert_eq!(
            path(Runtime::Python, "lib.handle").unwrap(),
            "lib/__init__.py"
        );
        assert_eq!(path(Runtime::Node, "index.handle").unwrap(), "index.js");
        assert_eq!(path(Runtime::Node, "src/app.handle").unwrap(), "src/app.js");
        assert_eq!(path(Runtime::Shell, "run.sh").unwrap(), "run.sh");
        assert!(
            handler_file(Runtime::Shell, "run.sh", &s)
                .unwrap()
                .executable
        );
        for (r, h) in [
            (Runtime::Python, "missing.handle"),
            (Runtime::Python, "main"),
            (Runtime::Python, "main.1x"),
            (Runtime::Python, "../main.handle"),
            (Runtime::Node, "other.handle"),
            (Runtime::Node, "../index.handle"),
            (Runtime::Shell, "nope.sh"),
            (Runtime::Binary, "/bin/true"),
        ] {
            let e = handler_file(r, h, &s).unwrap_err();
            assert_eq!(e.code(), "build_failed", "{h}");
        }
    }

    #[test]
    fn files_are_written_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let s = src(&["run.sh", "lib/x.txt"]);
        let n = write_files(dir.path(), &s, Some("run.sh")).unwrap();
        assert_eq!(n, 2);
        let mode = |p: &str| {
            fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("run.sh"), 0o755);
        assert_eq!(mode("lib/x.txt"), 0o644);
    }
}
