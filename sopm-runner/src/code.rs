//! A loaded function: its code written into the code directory from an `init` frame,
//! its environment, and the command line that runs its handler.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde_json::Value;

use crate::frames::{log_marker, py_repr};

/// Base64 as the host writes it, padding optional.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Which kind of handler a function has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A script run by `/bin/sh`.
    Shell,
    /// An executable run directly.
    Binary,
}

impl Kind {
    /// The runtime's name, as error messages say it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Shell => "shell",
            Kind::Binary => "binary",
        }
    }
}

/// A function this runner has become.
#[derive(Debug)]
pub struct Function {
    pub(crate) kind: Kind,
    pub(crate) argv: Vec<OsString>,
    pub(crate) code_dir: PathBuf,
    pub(crate) max_output: u64,
    pub(crate) env: BTreeMap<OsString, OsString>,
    marker: Vec<u8>,
}

impl Function {
    /// Loads the function an `init` frame describes: writes its code, checks its
    /// runtime and handler. The error is the `init_error` message.
    pub fn load(frame: &Value, base_env: &BTreeMap<OsString, OsString>) -> Result<Self, String> {
        let runtime = string_field(frame, "runtime")?;
        let handler = string_field(frame, "handler")?;
        let code_dir = PathBuf::from(
            frame
                .get("code_dir")
                .and_then(Value::as_str)
                .unwrap_or("/fn"),
        );
        let max_output = match frame.get("max_output_bytes") {
            None | Some(Value::Null) => 1 << 20,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("max_output_bytes is not a byte count: {v}"))?,
        };
        let mut env = base_env.clone();
        if let Some(vars) = frame.get("env").filter(|v| !v.is_null()) {
            let vars = vars.as_object().ok_or("env is not an object")?;
            for (key, value) in vars {
                let value = value
                    .as_str()
                    .ok_or_else(|| format!("env {key} is not a string"))?;
                env.insert(key.into(), value.into());
            }
        }
        write_code(frame, &code_dir)?;
        std::env::set_current_dir(&code_dir)
            .map_err(|e| format!("cannot enter {}: {e}", code_dir.display()))?;
        let kind = match runtime {
            "shell" => Kind::Shell,
            "binary" => Kind::Binary,
            other => {
                return Err(format!(
                    "this runner cannot run {} functions",
                    py_repr(other)
                ))
            }
        };
        let path = safe_path(&code_dir, handler)?;
        if !path.is_file() {
            return Err(format!(
                "handler {} not found in the function's files",
                py_repr(handler)
            ));
        }
        let argv = match kind {
            Kind::Binary => {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(|e| format!("cannot make {} executable: {e}", path.display()))?;
                vec![path.into_os_string()]
            }
            Kind::Shell => vec!["/bin/sh".into(), path.into_os_string()],
        };
        Ok(Function {
            kind,
            argv,
            code_dir,
            max_output,
            env,
            marker: log_marker(frame.get("log_marker").and_then(Value::as_str)),
        })
    }

    /// What ends each invocation's logs on the log channel.
    pub fn marker(&self) -> &[u8] {
        &self.marker
    }
}

fn string_field<'a>(frame: &'a Value, name: &str) -> Result<&'a str, String> {
    frame
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the init frame has no {name}"))
}

/// `rel` inside `code_dir`, after resolving `.` and `..` the way python's `normpath`
/// does; absolute paths and paths that climb out are refused.
pub fn safe_path(code_dir: &Path, rel: &str) -> Result<PathBuf, String> {
    let bad = || format!("bad path {}", py_repr(rel));
    if rel.starts_with('/') {
        return Err(bad());
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ => parts.push(".."),
            },
            part => parts.push(part),
        }
    }
    if parts.first() == Some(&"..") {
        return Err(bad());
    }
    let mut path = code_dir.to_path_buf();
    if parts.is_empty() {
        path.push(".");
    }
    path.extend(parts);
    Ok(path)
}

/// Writes an init frame's files, symlinks and executable bits into `code_dir`.
fn write_code(frame: &Value, code_dir: &Path) -> Result<(), String> {
    let object = |name: &str| -> Result<Option<&serde_json::Map<String, Value>>, String> {
        match frame.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_object()
                .map(Some)
                .ok_or_else(|| format!("{name} is not an object")),
        }
    };
    for (rel, b64) in object("files")?.into_iter().flatten() {
        let path = safe_path(code_dir, rel)?;
        let b64 = b64
            .as_str()
            .ok_or_else(|| format!("file {} is not base64 text", py_repr(rel)))?;
        let bytes = BASE64
            .decode(b64)
            .map_err(|e| format!("file {} is not valid base64: {e}", py_repr(rel)))?;
        make_parent(&path)?;
        fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    for (rel, target) in object("symlinks")?.into_iter().flatten() {
        let path = safe_path(code_dir, rel)?;
        let target = target
            .as_str()
            .ok_or_else(|| format!("symlink {} has no target", py_repr(rel)))?;
        make_parent(&path)?;
        std::os::unix::fs::symlink(target, &path)
            .map_err(|e| format!("cannot make the link {}: {e}", path.display()))?;
    }
    let executables = match frame.get("executables") {
        None | Some(Value::Null) => &[][..],
        Some(v) => v
            .as_array()
            .map(Vec::as_slice)
            .ok_or("executables is not a list")?,
    };
    for rel in executables {
        let rel = rel.as_str().ok_or("executables holds a non-path")?;
        let path = safe_path(code_dir, rel)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot make {} executable: {e}", path.display()))?;
    }
    Ok(())
}

fn make_parent(path: &Path) -> Result<(), String> {
    match path.parent() {
        Some(dir) => {
            fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_code_directory() {
        let dir = Path::new("/fn");
        assert_eq!(safe_path(dir, "a/./b").unwrap(), Path::new("/fn/a/b"));
        assert_eq!(safe_path(dir, "a/../b").unwrap(), Path::new("/fn/b"));
        assert_eq!(
            safe_path(dir, "bin//app/").unwrap(),
            Path::new("/fn/bin/app")
        );
        for bad in ["/etc/passwd", "..", "../x", "a/../../x", "./../x"] {
            assert_eq!(
                safe_path(dir, bad).unwrap_err(),
                format!("bad path {}", py_repr(bad))
            );
        }
    }
}
