//! The canonical tar of a directory tree (the bytes its digest names) and the checked
//! unpacking of such a tar back into a tree.
//!
//! Canonical form: entries in depth-first order with each directory's children sorted
//! by name (bytes), paths relative and without `./`, mtime 0, uid and gid 0, empty user
//! and group names, the permission bits (`0o777`) of every entry (setuid, setgid and
//! sticky are dropped), symlinks stored as symlinks (never followed). Only regular
//! files, directories and symlinks that resolve inside the tree are allowed; anything
//! else is refused. The root
//! directory itself is not an entry. The same tree gives the same bytes, and so the
//! same digest, on every machine.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};
use sopm_core::{Digest, Error, Result};
use tar::{Archive, Builder, EntryType, Header};

/// Writes the canonical tar of the tree at `dir` into `out` and returns its digest.
pub fn canonical_tar(dir: &Path, out: impl Write) -> Result<Digest> {
    let mut writer = HashingWriter {
        inner: out,
        hasher: Sha256::new(),
    };
    let meta = fs::symlink_metadata(dir).map_err(|e| io_error("read", dir, e))?;
    if !meta.is_dir() {
        return Err(Error::invalid(format!(
            "'{}' is not a directory",
            dir.display()
        )));
    }
    {
        let mut builder = Builder::new(&mut writer);
        append_children(&mut builder, dir, Path::new(""))?;
        builder
            .finish()
            .map_err(|e| io_error("write the tar of", dir, e))?;
    }
    writer
        .inner
        .flush()
        .map_err(|e| io_error("write the tar of", dir, e))?;
    Ok(Digest::from_hasher(writer.hasher))
}

/// The canonical tar of `dir` in memory, with its digest.
pub fn canonical_tar_bytes(dir: &Path) -> Result<(Vec<u8>, Digest)> {
    let mut bytes = Vec::new();
    let digest = canonical_tar(dir, &mut bytes)?;
    Ok((bytes, digest))
}

/// The digest of the canonical tar of `dir`, without keeping the tar.
pub fn canonical_digest(dir: &Path) -> Result<Digest> {
    canonical_tar(dir, io::sink())
}

/// The digest of the file at `path` (a tar as downloaded).
pub fn file_digest(path: &Path) -> Result<Digest> {
    let mut file = File::open(path).map_err(|e| io_error("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| io_error("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Digest::from_hasher(hasher))
}

/// Checks that the tar at `tar_path` has `digest` (before reading a single entry), then
/// unpacks it into a new directory beside `dest` and renames that to `dest`. Refused,
/// with nothing left behind: a digest mismatch, absolute paths, `..`, an entry under a
/// symlink, a symlink whose target leaves the tree, hard links, devices, fifos, and a
/// path that appears twice. `dest` must not exist; if another writer put it there
/// first, the new copy is dropped and `Ok` returned (both are the same content).
pub fn unpack_verified(tar_path: &Path, digest: &Digest, dest: &Path) -> Result<()> {
    let actual = file_digest(tar_path)?;
    if &actual != digest {
        return Err(Error::Storage(format!(
            "artifact content does not match its digest: expected {digest}, got {actual}"
        )));
    }
    let parent = dest
        .parent()
        .ok_or_else(|| Error::invalid(format!("'{}' has no parent directory", dest.display())))?;
    fs::create_dir_all(parent).map_err(|e| io_error("create", parent, e))?;
    let staging = sibling(dest, "unpack");
    let result = unpack_into(tar_path, &staging).and_then(|()| {
        fs::rename(&staging, dest).or_else(|e| {
            if dest.is_dir() {
                // Another fetch of the same digest won; its copy is the same content.
                Ok(())
            } else {
                Err(io_error("rename into place", dest, e))
            }
        })
    });
    if staging.exists() {
        let _ = remove_tree(&staging);
    }
    result
}

/// A fresh path beside `path` (same directory, so a rename is atomic).
pub(crate) fn sibling(path: &Path, what: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{what}-{}", uuid::Uuid::new_v4().simple()));
    path.with_file_name(tmp)
}

/// Removes a tree, making read-only directories writable first (a tree unpacked with
/// its modes may have some).
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(first) => {
            make_dirs_writable(path);
            fs::remove_dir_all(path).map_err(|_| first)
        }
    }
}

fn make_dirs_writable(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(path) {
            for entry in entries.flatten() {
                make_dirs_writable(&entry.path());
            }
        }
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn io_error(what: &str, path: &Path, e: io::Error) -> Error {
    Error::Storage(format!("could not {what} '{}': {e}", path.display()))
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o777);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append_children<W: Write>(builder: &mut Builder<W>, root: &Path, rel: &Path) -> Result<()> {
    let here = root.join(rel);
    let mut names: Vec<OsString> = fs::read_dir(&here)
        .map_err(|e| io_error("list", &here, e))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(|e| io_error("list", &here, e))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let rel_path = rel.join(&name);
        let full = root.join(&rel_path);
        let meta = fs::symlink_metadata(&full).map_err(|e| io_error("read", &full, e))?;
        let kind = meta.file_type();
        let mode = meta.permissions().mode();
        let written = if kind.is_symlink() {
            let target = fs::read_link(&full).map_err(|e| io_error("read the link", &full, e))?;
            // What another node would refuse to unpack is refused here, on the node
            // that built it.
            if !resolves_inside(root, &rel_path) {
                return Err(Error::invalid(format!(
                    "'{}' is a symlink to '{}', outside the artifact's directory; an artifact must hold everything it links to",
                    full.display(),
                    target.display()
                )));
            }
            let mut h = header(EntryType::Symlink, 0o777, 0);
            builder.append_link(&mut h, &rel_path, &target)
        } else if kind.is_dir() {
            let mut h = header(EntryType::Directory, mode, 0);
            builder
                .append_data(&mut h, &rel_path, io::empty())
                .and_then(|()| append_children(builder, root, &rel_path).map_err(io::Error::other))
        } else if kind.is_file() {
            let file = File::open(&full).map_err(|e| io_error("open", &full, e))?;
            let mut h = header(EntryType::Regular, mode, meta.len());
            // A file that changes size while it is read would corrupt the tar; take
            // exactly the size in the header.
            builder.append_data(&mut h, &rel_path, file.take(meta.len()))
        } else {
            return Err(Error::invalid(format!(
                "'{}' is not a regular file, directory or symlink; an artifact may hold only those",
                full.display()
            )));
        };
        written.map_err(|e| match e.into_inner() {
            Some(inner) => match inner.downcast::<Error>() {
                Ok(err) => *err,
                Err(other) => Error::Storage(format!(
                    "could not add '{}' to the tar: {other}",
                    full.display()
                )),
            },
            None => Error::Storage(format!("could not add '{}' to the tar", full.display())),
        })?;
    }
    Ok(())
}

fn refused(path: &[u8], why: &str) -> Error {
    Error::Storage(format!(
        "artifact tar refused: entry '{}' {why}",
        String::from_utf8_lossy(path)
    ))
}

/// The path of an entry as plain relative components, or `None` if it has anything else
/// (absolute, `..`, `.`, empty).
fn relative_components(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => out.push(c),
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn unpack_into(tar_path: &Path, staging: &Path) -> Result<()> {
    fs::create_dir(staging).map_err(|e| io_error("create", staging, e))?;
    fs::set_permissions(staging, fs::Permissions::from_mode(0o755))
        .map_err(|e| io_error("set the mode of", staging, e))?;
    let file = File::open(tar_path).map_err(|e| io_error("open", tar_path, e))?;
    let mut archive = Archive::new(file);
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut symlinks: Vec<PathBuf> = Vec::new();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let entries = archive
        .entries()
        .map_err(|e| io_error("read the tar", tar_path, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| io_error("read the tar", tar_path, e))?;
        let raw = entry.path_bytes().into_owned();
        let rel = relative_components(Path::new(std::ffi::OsStr::from_bytes(&raw)))
            .ok_or_else(|| refused(&raw, "is absolute or has '..' or '.' in its path"))?;
        if !seen.insert(rel.clone()) {
            return Err(refused(&raw, "appears twice"));
        }
        // Never write through a symlink: every parent must be a real directory.
        let mut parent = staging.to_path_buf();
        for component in rel.parent().into_iter().flat_map(Path::components) {
            parent.push(component);
            match fs::symlink_metadata(&parent) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(refused(&raw, "is under a symlink or a file")),
                Err(_) => return Err(refused(&raw, "comes before its directory")),
            }
        }
        let target = staging.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match entry.header().entry_type() {
            EntryType::Directory => {
                fs::create_dir(&target).map_err(|e| io_error("create", &target, e))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(0o700))
                    .map_err(|e| io_error("set the mode of", &target, e))?;
                dir_modes.push((target, mode));
            }
            EntryType::Regular | EntryType::Continuous => {
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(|e| io_error("create", &target, e))?;
                io::copy(&mut entry, &mut out).map_err(|e| io_error("write", &target, e))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(|e| io_error("set the mode of", &target, e))?;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| refused(&raw, "is a symlink without a target"))?
                    .into_owned();
                let link = Path::new(std::ffi::OsStr::from_bytes(&link));
                if link.is_absolute() || link.as_os_str().is_empty() {
                    return Err(refused(&raw, "is a symlink to an absolute path"));
                }
                std::os::unix::fs::symlink(link, &target)
                    .map_err(|e| io_error("create the link", &target, e))?;
                symlinks.push(rel);
            }
            other => {
                let kind = match other {
                    EntryType::Char => "a character device".to_string(),
                    EntryType::Block => "a block device".to_string(),
                    EntryType::Fifo => "a fifo".to_string(),
                    EntryType::Link => "a hard link".to_string(),
                    other => format!("an entry of type {other:?}"),
                };
                return Err(refused(
                    &raw,
                    &format!(
                        "is {kind}; an artifact may hold only regular files, directories and symlinks"
                    ),
                ));
            }
        }
    }
    // Every symlink, resolved inside the tree as the kernel would (following the links
    // it passes through), must stay inside it.
    for link in &symlinks {
        if !resolves_inside(staging, link) {
            return Err(refused(
                link.as_os_str().as_bytes(),
                "is a symlink that points out of the tree",
            ));
        }
    }
    // Directory modes last, deepest first, so a read-only directory was writable while
    // its entries went in.
    for (dir, mode) in dir_modes.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode))
            .map_err(|e| io_error("set the mode of", dir, e))?;
    }
    Ok(())
}

/// Whether resolving `link` (relative to `root`) stays under `root`: walks the path a
/// component at a time from the root, following symlinks found on the way (at most 40),
/// and fails as soon as a `..` would climb above the root. Missing components are taken
/// as directories (a dangling link must not point out either).
fn resolves_inside(root: &Path, link: &Path) -> bool {
    let split = |p: &Path| -> Vec<OsString> {
        p.components()
            .rev()
            .map(|c| c.as_os_str().to_owned())
            .collect()
    };
    // Paths still to walk, innermost last, each relative to the position in `stack`.
    let mut work: Vec<Vec<OsString>> = vec![split(link)];
    let mut stack: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(mut components) = work.pop() {
        let Some(next) = components.pop() else {
            continue;
        };
        work.push(components);
        if next == "." {
            continue;
        }
        if next == ".." {
            if stack.pop().is_none() {
                return false;
            }
            continue;
        }
        if next == "/" {
            return false;
        }
        stack.push(next);
        let here: PathBuf = stack.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        if let Ok(meta) = fs::symlink_metadata(&here) {
            if meta.file_type().is_symlink() {
                hops += 1;
                if hops > 40 {
                    return false;
                }
                let Ok(target) = fs::read_link(&here) else {
                    return false;
                };
                if target.is_absolute() {
                    return false;
                }
                stack.pop();
                work.push(split(&target));
            }
        }
    }
    true
}
