//! The `Builder` trait: turns an uploaded source into an artifact for one backend
//! family, streaming its log.

use std::collections::BTreeMap;
use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::registry::{Artifact, FunctionVersion};
use crate::types::truncate_for_message;

/// An uploaded function's source, already checked (relative paths, size caps). In
/// JSON (a queued build) each file's bytes are standard base64.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// Files by relative path.
    #[serde(with = "files_base64")]
    pub files: BTreeMap<String, Vec<u8>>,
}

/// One build to run: the version (recorded `building`, with its backend) and its
/// source. Serde-able, so a scheduler can queue it for another node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRequest {
    /// The version to build.
    pub version: FunctionVersion,
    /// Its uploaded files.
    pub source: Source,
}

/// Serde of a source's files as a map of path to base64.
mod files_base64 {
    use std::collections::BTreeMap;

    use base64::Engine as _;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: Serializer>(
        files: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(files.iter().map(|(k, v)| (k, B64.encode(v))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| match B64.decode(v.as_bytes()) {
                Ok(bytes) => Ok((k, bytes)),
                Err(e) => Err(D::Error::custom(format!("file '{k}': not base64: {e}"))),
            })
            .collect()
    }
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

/// Checks every path of `source`: at least one file, each path safe ([`path_problem`]),
/// and no file that is also another file's directory. `invalid_input` otherwise. The
/// one check the server (before anything is stored), the platform and the builders apply
/// to a whole upload.
pub fn check_source(source: &Source) -> Result<()> {
    if source.files.is_empty() {
        return Err(Error::invalid("the upload has no files"));
    }
    for path in source.files.keys() {
        if let Some(why) = path_problem(path) {
            return Err(Error::invalid(format!(
                "file path '{}' {why}",
                truncate_for_message(path)
            )));
        }
        for (slash, _) in path.match_indices('/') {
            let dir = &path[..slash];
            if source.files.contains_key(dir) {
                return Err(Error::invalid(format!(
                    "'{}' is both a file and a directory",
                    truncate_for_message(dir)
                )));
            }
        }
    }
    Ok(())
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
