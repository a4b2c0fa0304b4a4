//! `LocalArtifactStore`: artifact directories kept on this machine under
//! `<root>/sha256/<hex>/`, named by the digest of their canonical tar (the embedded
//! default).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use sopm_core::{Artifact, ArtifactStore, Digest, Error, Result};

use super::canonical::{canonical_digest, canonical_tar, remove_tree, sibling, unpack_verified};

/// Keeps artifact directories on this machine, by digest. `put_directory` moves the
/// build's directory into the store (a rename; a copy through the canonical tar when the
/// build directory is on another file system); `fetch` checks the directory is there
/// (and recomputes its digest only with [`verify_on_fetch`](Self::verify_on_fetch)).
///
/// Two versions with the same content share one directory, so the store counts puts per
/// digest (`<root>/refs/<hex>`): `remove` takes one away and deletes the directory when
/// none is left. One store (and its clones) per root.
#[derive(Debug, Clone)]
pub struct LocalArtifactStore {
    root: PathBuf,
    verify_on_fetch: bool,
    /// Serializes the count and the directory's coming and going.
    refs_lock: Arc<Mutex<()>>,
}

impl LocalArtifactStore {
    /// A store under `root` (for a server, `<data>/artifacts`). No I/O until first use;
    /// directories it creates are `0700`, like the rest of the data directory.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalArtifactStore {
            root: root.into(),
            verify_on_fetch: false,
            refs_lock: Arc::new(Mutex::new(())),
        }
    }

    /// Whether `fetch` recomputes the digest of the stored tree (reads every file; off by
    /// default so a fetch is one `stat`).
    pub fn verify_on_fetch(mut self, verify: bool) -> Self {
        self.verify_on_fetch = verify;
        self
    }

    /// Where the directory of `digest` is (or would be).
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    fn put_blocking(&self, dir: &Path) -> Result<Artifact> {
        let digest = canonical_digest(dir)?;
        let objects = self.root.join("sha256");
        create_private_dir(&self.root)?;
        create_private_dir(&objects)?;
        create_private_dir(&self.root.join("refs"))?;
        let dest = self.path_of(&digest);
        let _held = self.refs_lock.lock();
        store_directory(dir, &dest, &digest)?;
        let count = self.refs(&digest)?;
        self.set_refs(&digest, count + 1)?;
        Ok(Artifact::Directory {
            path: dest.to_string_lossy().into_owned(),
            digest: Some(digest),
        })
    }

    fn refs_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("refs").join(digest.hex())
    }

    /// How many puts of `digest` are not yet removed (0 when never counted).
    fn refs(&self, digest: &Digest) -> Result<u64> {
        let path = self.refs_path(digest);
        match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse()
                .map_err(|_| Error::Storage(format!("'{}' does not hold a count", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(storage("read", &path, e)),
        }
    }

    fn set_refs(&self, digest: &Digest, count: u64) -> Result<()> {
        let path = self.refs_path(digest);
        if count == 0 {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(storage("remove", &path, e)),
                _ => Ok(()),
            };
        }
        let tmp = sibling(&path, "count");
        fs::write(&tmp, count.to_string()).map_err(|e| storage("write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| storage("write", &path, e))
    }

    fn fetch_blocking(&self, artifact: &Artifact) -> Result<Artifact> {
        let Artifact::Directory { path, digest } = artifact else {
            return Ok(artifact.clone());
        };
        let Some(digest) = digest else {
            return if Path::new(path).is_dir() {
                Ok(artifact.clone())
            } else {
                Err(Error::not_found(format!(
                    "the artifact directory '{path}' is not on this node"
                )))
            };
        };
        let stored = self.path_of(digest);
        // The store's own copy first; a directory recorded elsewhere on this machine
        // (before this store kept it) is used when the store has none.
        let found = if stored.is_dir() {
            stored
        } else if Path::new(path).is_dir() {
            PathBuf::from(path)
        } else {
            return Err(Error::not_found(format!(
                "artifact {digest} is not in the local artifact store at '{}'",
                self.root.display()
            )));
        };
        if self.verify_on_fetch {
            let actual = canonical_digest(&found)?;
            if &actual != digest {
                return Err(Error::Storage(format!(
                    "artifact directory '{}' does not match its digest: expected {digest}, got {actual}",
                    found.display()
                )));
            }
        }
        Ok(Artifact::Directory {
            path: found.to_string_lossy().into_owned(),
            digest: Some(digest.clone()),
        })
    }

    fn remove_blocking(&self, artifact: &Artifact) -> Result<()> {
        if let Artifact::Directory {
            digest: Some(digest),
            ..
        } = artifact
        {
            let _held = self.refs_lock.lock();
            // A directory stored without a count (by an older store) counts as one put.
            let left = self.refs(digest)?.saturating_sub(1);
            self.set_refs(digest, left)?;
            let stored = self.path_of(digest);
            if left == 0 && stored.exists() {
                // Rename first so a concurrent fetch sees it gone at once, then delete.
                let doomed = sibling(&stored, "removed");
                fs::rename(&stored, &doomed).map_err(|e| storage("remove", &stored, e))?;
                remove_tree(&doomed).map_err(|e| storage("remove", &doomed, e))?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ArtifactStore for LocalArtifactStore {
    fn name(&self) -> &str {
        "local"
    }

    async fn put_directory(&self, dir: &Path) -> Result<Artifact> {
        let this = self.clone();
        let dir = dir.to_path_buf();
        blocking(move || this.put_blocking(&dir)).await
    }

    async fn fetch(&self, artifact: &Artifact) -> Result<Artifact> {
        if !matches!(artifact, Artifact::Directory { .. }) {
            return Ok(artifact.clone());
        }
        let this = self.clone();
        let artifact = artifact.clone();
        blocking(move || this.fetch_blocking(&artifact)).await
    }

    async fn remove(&self, artifact: &Artifact) -> Result<()> {
        let this = self.clone();
        let artifact = artifact.clone();
        blocking(move || this.remove_blocking(&artifact)).await
    }
}

/// Runs blocking file work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("artifact file work panicked: {e}")))?
}

pub(crate) fn storage(what: &str, path: &Path, e: io::Error) -> Error {
    Error::Storage(format!("could not {what} '{}': {e}", path.display()))
}

/// Creates `dir` (mode `0700`) if it is not there.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| storage("set the mode of", dir, e)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| storage("create", dir, e))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| storage("set the mode of", dir, e))
        }
        Err(e) => Err(storage("create", dir, e)),
    }
}

/// Moves the tree at `dir` (whose digest is `digest`) to `dest`: a rename, or a copy
/// through the canonical tar across file systems. If `dest` is already there (the same
/// content stored before), `dir` is removed instead.
pub(crate) fn store_directory(dir: &Path, dest: &Path, digest: &Digest) -> Result<()> {
    if dest.is_dir() {
        remove_tree(dir).map_err(|e| storage("remove", dir, e))?;
        return Ok(());
    }
    match fs::rename(dir, dest) {
        Ok(()) => Ok(()),
        Err(_) if dest.is_dir() => {
            remove_tree(dir).map_err(|e| storage("remove", dir, e))?;
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(18) => {
            // EXDEV: another file system. Copy through the canonical tar (which the
            // unpack checks against the digest), then drop the original.
            let tar_path = sibling(dest, "tar");
            let written = fs::File::create(&tar_path)
                .map_err(|e| storage("create", &tar_path, e))
                .and_then(|file| canonical_tar(dir, io::BufWriter::new(file)));
            let result = written.and_then(|copied| {
                if &copied != digest {
                    return Err(Error::Storage(format!(
                        "'{}' changed while it was stored",
                        dir.display()
                    )));
                }
                unpack_verified(&tar_path, digest, dest)
            });
            let _ = fs::remove_file(&tar_path);
            result?;
            remove_tree(dir).map_err(|e| storage("remove", dir, e))
        }
        Err(e) => Err(storage("move into the artifact store", dir, e)),
    }
}
