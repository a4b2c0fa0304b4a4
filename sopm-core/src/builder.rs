//! The `Builder` trait: turns an uploaded source into an artifact for one backend
//! family, streaming its log.

use std::collections::BTreeMap;
use std::fmt::Debug;

use async_trait::async_trait;

use crate::error::Result;
use crate::registry::{Artifact, FunctionVersion};

/// An uploaded function's source, already checked (relative paths, size caps).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Source {
    /// Files by relative path.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Where a builder writes its log; the platform streams it to the registry.
#[async_trait]
pub trait BuildLog: Send + Sync {
    /// Appends a chunk of log output.
    async fn append(&self, chunk: &str);
}

/// Builds artifacts. Implementations live in `sopm-backends` (local directory builds,
/// docker images).
///
/// Contract: `build` either returns a complete artifact or an error; it never leaves a
/// half-built artifact in place of a good one. Dependency installs run sandboxed. The
/// log is appended as the build goes, so a client can follow it.
#[async_trait]
pub trait Builder: Debug + Send + Sync + 'static {
    /// A short name (`local`, `docker`).
    fn name(&self) -> &str;

    /// Builds one version from its source.
    async fn build(
        &self,
        version: &FunctionVersion,
        source: &Source,
        log: &dyn BuildLog,
    ) -> Result<Artifact>;

    /// Removes a version's artifact (the function was deleted).
    async fn remove(&self, _artifact: &Artifact) -> Result<()> {
        Ok(())
    }
}

/// Longest relative path accepted, in bytes.
const MAX_PATH_BYTES: usize = 1024;

/// Why `path` is not a safe relative file path inside an upload, if it is not: the
/// one check the server (archives, JSON uploads) and the builders apply.
pub fn path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return Some("is too long");
    }
    if path.contains('\0') {
        return Some("contains a NUL byte");
    }
    if path.starts_with('/') {
        return Some("is absolute");
    }
    if path.contains('\\') {
        return Some("contains a backslash");
    }
    if path.chars().any(char::is_control) {
        return Some("contains a control character");
    }
    for part in path.split('/') {
        match part {
            "" => return Some("has an empty component"),
            "." => return Some("has a '.' component"),
            ".." => return Some("has a '..' component"),
            p if p.len() > 255 => return Some("has a component longer than 255 bytes"),
            _ => {}
        }
    }
    None
}
