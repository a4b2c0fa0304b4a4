//! Uploaded function sources: the JSON and multipart forms of
//! `POST /api/user-functions`, archive unpacking (tar.gz, tar, zip) and the checks
//! every file passes: relative paths only, no `..`, no links or device files, and caps
//! on file count, file size and total size, counted while decompressing so an archive
//! bomb stops at the cap.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use sopm_core::builder::path_problem;
use sopm_core::types::truncate_for_message;
use sopm_core::{Error, Limits, Result, Runtime, Source, UploadSpec};

/// Caps on what one upload may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadLimits {
    /// Largest JSON upload body, in bytes (default 8 MiB).
    pub max_json_body: usize,
    /// Largest multipart upload body, in bytes (default 64 MiB).
    pub max_multipart_body: usize,
    /// Most files (default 2,000).
    pub max_files: usize,
    /// Largest total of the files, uncompressed (default 50 MiB).
    pub max_total_bytes: u64,
    /// Largest single file, uncompressed (default 20 MiB).
    pub max_file_bytes: u64,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            max_json_body: 8 << 20,
            max_multipart_body: 64 << 20,
            max_files: 2_000,
            max_total_bytes: 50 << 20,
            max_file_bytes: 20 << 20,
        }
    }
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// Collects files, checking each against the caps as it arrives.
#[derive(Debug)]
pub struct SourceBuilder<'a> {
    limits: &'a UploadLimits,
    files: BTreeMap<String, Vec<u8>>,
    total: u64,
}

impl<'a> SourceBuilder<'a> {
    /// An empty source under `limits`.
    pub fn new(limits: &'a UploadLimits) -> Self {
        SourceBuilder {
            limits,
            files: BTreeMap::new(),
            total: 0,
        }
    }

    /// Refuses an unsafe path.
    fn check_path(&self, what: &str, path: &str) -> Result<()> {
        match path_problem(path) {
            Some(why) => Err(Error::invalid(format!(
                "{what} '{}' {why}; paths must be relative, inside the function",
                truncate_for_message(path)
            ))),
            None => Ok(()),
        }
    }

    /// Takes a place for one more file of `declared` bytes (its size if known).
    fn reserve(&self, path: &str, declared: u64) -> Result<()> {
        if self.files.len() >= self.limits.max_files {
            return Err(Error::PayloadTooLarge(format!(
                "the upload has more than {} files",
                self.limits.max_files
            )));
        }
        self.check_size(path, declared)
    }

    fn check_size(&self, path: &str, size: u64) -> Result<()> {
        if size > self.limits.max_file_bytes {
            return Err(Error::PayloadTooLarge(format!(
                "file '{}' is larger than {}",
                truncate_for_message(path),
                mib(self.limits.max_file_bytes)
            )));
        }
        if self.total + size > self.limits.max_total_bytes {
            return Err(Error::PayloadTooLarge(format!(
                "the files are larger than {} in total (uncompressed)",
                mib(self.limits.max_total_bytes)
            )));
        }
        Ok(())
    }

    /// Adds one file.
    pub fn add(&mut self, what: &str, path: &str, bytes: Vec<u8>) -> Result<()> {
        self.check_path(what, path)?;
        self.reserve(path, bytes.len() as u64)?;
        if self.files.contains_key(path) {
            return Err(Error::invalid(format!(
                "file '{}' is given twice",
                truncate_for_message(path)
            )));
        }
        self.total += bytes.len() as u64;
        self.files.insert(path.to_string(), bytes);
        Ok(())
    }

    /// Reads one file from `reader`, stopping at the caps, and adds it.
    fn add_from(&mut self, what: &str, path: &str, declared: u64, reader: impl Read) -> Result<()> {
        self.check_path(what, path)?;
        self.reserve(path, declared)?;
        let room = self
            .limits
            .max_file_bytes
            .min(self.limits.max_total_bytes - self.total);
        let mut bytes = Vec::with_capacity(declared.min(room) as usize);
        reader
            .take(room + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::invalid(format!("{what} '{}': {e}", truncate_for_message(path))))?;
        self.check_size(path, bytes.len() as u64)?;
        self.add(what, path, bytes)
    }

    /// The checked source: at least one file, and no file that is also a directory.
    pub fn finish(self) -> Result<Source> {
        let source = Source { files: self.files };
        sopm_core::builder::check_source(&source)?;
        Ok(source)
    }
}

/// What kind of archive some bytes are, by their magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// gzip-compressed tar.
    TarGz,
    /// Plain tar (ustar).
    Tar,
    /// zip.
    Zip,
}

/// Tells the archive kind from the first bytes.
pub fn detect_archive(bytes: &[u8]) -> Option<ArchiveKind> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        Some(ArchiveKind::TarGz)
    } else if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        Some(ArchiveKind::Zip)
    } else if bytes.len() >= 262 && &bytes[257..262] == b"ustar" {
        Some(ArchiveKind::Tar)
    } else {
        None
    }
}

/// Unpacks an archive into `into`, checking every entry. Blocking (run it off the
/// async threads).
pub fn unpack_archive(bytes: &[u8], into: &mut SourceBuilder<'_>) -> Result<()> {
    match detect_archive(bytes) {
        Some(ArchiveKind::TarGz) => {
            unpack_tar(flate2::read::GzDecoder::new(bytes), into, "gzip data")
        }
        Some(ArchiveKind::Tar) => unpack_tar(bytes, into, "tar data"),
        Some(ArchiveKind::Zip) => unpack_zip(bytes, into),
        None => Err(Error::invalid(
            "archive: expected a tar.gz or zip archive (by its first bytes)",
        )),
    }
}

/// A reader that fails once more than `left` bytes came through, and says so.
struct CappedReader<R> {
    inner: R,
    left: u64,
    exceeded: Arc<AtomicBool>,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One byte more tells a stream that ends exactly here from a longer one.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.exceeded.store(true, Ordering::Relaxed);
                    Err(io::Error::other("decompressed size cap reached"))
                }
            };
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn unpack_tar(reader: impl Read, into: &mut SourceBuilder<'_>, what: &str) -> Result<()> {
    let limits = into.limits.clone();
    // The files' bytes plus room for headers, long names and padding.
    let cap = limits.max_total_bytes + (limits.max_files as u64 + 16) * 4096 + (1 << 20);
    let exceeded = Arc::new(AtomicBool::new(false));
    let capped = CappedReader {
        inner: reader,
        left: cap,
        exceeded: exceeded.clone(),
    };
    let too_big = || {
        Error::PayloadTooLarge(format!(
            "the archive is larger than {} when decompressed",
            mib(limits.max_total_bytes)
        ))
    };
    let broken = |e: io::Error| {
        if exceeded.load(Ordering::Relaxed) {
            too_big()
        } else {
            Error::invalid(format!("archive: not a valid tar.gz ({what}): {e}"))
        }
    };
    let mut archive = tar::Archive::new(capped);
    for entry in archive.entries().map_err(broken)? {
        let entry = entry.map_err(broken)?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8(raw)
            .map_err(|_| Error::invalid("archive: an entry's path is not UTF-8"))?;
        let path = normalise_entry_path(&name);
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous => {
                let declared = entry.header().size().map_err(broken)?;
                into.add_from("archive entry", &path, declared, entry)
                    .map_err(|e| {
                        if exceeded.load(Ordering::Relaxed) {
                            too_big()
                        } else {
                            e
                        }
                    })?;
            }
            T::Directory => {
                if !path.is_empty() {
                    into.check_path("archive entry", &path)?;
                }
            }
            T::Symlink => return Err(link_refused(&name, "a symbolic link")),
            T::Link => return Err(link_refused(&name, "a hard link")),
            T::Char | T::Block => return Err(special_refused(&name, "a device file")),
            T::Fifo => return Err(special_refused(&name, "a FIFO")),
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
            _ => return Err(special_refused(&name, "of an unsupported tar entry type")),
        }
    }
    Ok(())
}

/// Drops the `./` prefixes (and a directory's trailing `/`) tar tools write.
fn normalise_entry_path(name: &str) -> String {
    let mut p = name;
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    if p == "." {
        return String::new();
    }
    p.strip_suffix('/').unwrap_or(p).to_string()
}

fn link_refused(name: &str, what: &str) -> Error {
    Error::invalid(format!(
        "archive entry '{}' is {what}; links are not accepted (put the file itself in the archive)",
        truncate_for_message(name)
    ))
}

fn special_refused(name: &str, what: &str) -> Error {
    Error::invalid(format!(
        "archive entry '{}' is {what}; only regular files and directories are accepted",
        truncate_for_message(name)
    ))
}

fn unpack_zip(bytes: &[u8], into: &mut SourceBuilder<'_>) -> Result<()> {
    let mut archive = zip::ZipArchive::new(io::Cursor::new(bytes))
        .map_err(|e| Error::invalid(format!("archive: not a valid zip: {e}")))?;
    for i in 0..archive.len() {
        let file = archive.by_index(i).map_err(|e| {
            Error::invalid(format!(
                "archive: zip entry {i} cannot be read ({e}); entries must be stored or deflated, unencrypted"
            ))
        })?;
        let name = std::str::from_utf8(file.name_raw())
            .map_err(|_| Error::invalid("archive: a zip entry's path is not UTF-8"))?
            .to_string();
        let path = normalise_entry_path(&name);
        if file.is_symlink() {
            return Err(link_refused(&name, "a symbolic link"));
        }
        if file.is_dir() {
            if !path.is_empty() {
                into.check_path("archive entry", &path)?;
            }
            continue;
        }
        if let Some(mode) = file.unix_mode() {
            let kind = mode & 0o170000;
            if kind != 0 && kind != 0o100000 {
                return Err(special_refused(&name, "not a regular file"));
            }
        }
        let declared = file.size();
        into.add_from("archive entry", &path, declared, file)?;
    }
    Ok(())
}

/// The fields of an upload other than its files: the JSON body, or the `metadata`
/// part of a multipart upload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadBody {
    /// The function's name.
    pub name: String,
    /// `python`, `node`, `shell` or `binary`.
    pub runtime: String,
    /// The entry point.
    pub handler: String,
    /// Text files by path.
    #[serde(default)]
    pub files: Option<BTreeMap<String, String>>,
    /// Binary files by path, base64.
    #[serde(default)]
    pub files_base64: Option<BTreeMap<String, String>>,
    /// The text of `requirements.txt`.
    #[serde(default, alias = "requirements.txt")]
    pub requirements: Option<String>,
    /// `package.json`, as an object or as text.
    #[serde(default, alias = "package.json")]
    pub package_json: Option<Value>,
    /// Limits; missing fields take their defaults.
    #[serde(default, deserialize_with = "crate::numbers::whole")]
    pub limits: Option<Limits>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The tenant, while auth is off.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The sandbox executor to build for and run in (`process`, `gvisor`, ...);
    /// default: the operator's rule for this name, else the runtime's default.
    #[serde(default)]
    pub executor: Option<String>,
}

impl UploadBody {
    /// Adds the files the body carries (`files`, `files_base64`, the manifests) to
    /// `into`, and returns the spec.
    pub fn into_spec(self, into: &mut SourceBuilder<'_>) -> Result<UploadSpec> {
        let runtime: Runtime = self.runtime.parse()?;
        for (path, text) in self.files.unwrap_or_default() {
            into.add("file", &path, text.into_bytes())?;
        }
        for (path, b64) in self.files_base64.unwrap_or_default() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| {
                    Error::invalid(format!(
                        "files_base64['{}']: not valid base64: {e}",
                        truncate_for_message(&path)
                    ))
                })?;
            into.add("file", &path, bytes)?;
        }
        if let Some(req) = self.requirements {
            into.add("file", "requirements.txt", req.into_bytes())
                .map_err(|e| given_twice(e, "requirements.txt"))?;
        }
        if let Some(pkg) = self.package_json {
            let text = match pkg {
                Value::String(s) => s,
                Value::Object(_) => serde_json::to_string_pretty(&pkg)
                    .map_err(|e| Error::invalid(format!("package_json: {e}")))?,
                _ => {
                    return Err(Error::invalid(
                        "package_json: expected an object or a string",
                    ))
                }
            };
            into.add("file", "package.json", text.into_bytes())
                .map_err(|e| given_twice(e, "package.json"))?;
        }
        Ok(UploadSpec {
            name: self.name,
            runtime,
            handler: self.handler,
            limits: self.limits.unwrap_or_default(),
            env: self.env,
            executor: self.executor,
        })
    }
}

fn given_twice(e: Error, name: &str) -> Error {
    match e {
        Error::InvalidInput(m) if m.contains("given twice") => Error::invalid(format!(
            "{name} is given both as a field and as a file; give it once"
        )),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> UploadLimits {
        UploadLimits {
            max_files: 3,
            max_total_bytes: 100,
            max_file_bytes: 60,
            ..Default::default()
        }
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
            "a\0b",
            "a\\b",
            "a\nb",
            "..",
        ] {
            let l = limits();
            let mut b = SourceBuilder::new(&l);
            let e = b.add("file", bad, vec![1]).unwrap_err();
            assert_eq!(e.code(), "invalid_input", "{bad:?}");
        }
    }

    #[test]
    fn caps_are_413() {
        let l = limits();
        let mut b = SourceBuilder::new(&l);
        assert_eq!(
            b.add("file", "big", vec![0; 61]).unwrap_err().code(),
            "payload_too_large"
        );
        b.add("file", "a", vec![0; 60]).unwrap();
        assert_eq!(
            b.add("file", "b", vec![0; 41]).unwrap_err().code(),
            "payload_too_large"
        );
        b.add("file", "b", vec![0; 1]).unwrap();
        b.add("file", "c", vec![]).unwrap();
        let e = b.add("file", "d", vec![]).unwrap_err();
        assert_eq!(e.code(), "payload_too_large");
        assert!(e.to_string().contains("more than 3 files"), "{e}");
    }

    #[test]
    fn archive_paths_lose_their_dot_slash() {
        assert_eq!(normalise_entry_path("./main.py"), "main.py");
        assert_eq!(normalise_entry_path("./"), "");
        assert_eq!(normalise_entry_path("pkg/"), "pkg");
        assert_eq!(normalise_entry_path("./../x"), "../x");
    }

    #[test]
    fn unknown_bytes_are_not_an_archive() {
        let l = limits();
        let mut b = SourceBuilder::new(&l);
        let e = unpack_archive(b"hello", &mut b).unwrap_err();
        assert_eq!(e.code(), "invalid_input");
    }
}
