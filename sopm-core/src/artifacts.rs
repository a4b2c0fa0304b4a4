//! The `ArtifactStore` trait: built artifacts named by their content digest, kept where
//! every node that runs them can fetch them.

use std::fmt::Debug;
use std::path::Path;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::registry::Artifact;

/// Keeps built artifacts by content digest. Implementations (in `sopm-backends`): a
/// directory on this machine (the embedded default) and an OCI registry (many nodes).
///
/// Contract:
/// - [`put_directory`](Self::put_directory) takes a finished build's directory and
///   returns an [`Artifact::Directory`] carrying the digest of its content (a canonical
///   tar of the tree: the same files give the same digest on every machine) and a path
///   where this node has it. Storing the same content twice is not an error.
/// - [`fetch`](Self::fetch) makes an artifact usable on this node: for a directory, a
///   local copy whose content was checked against the digest (fetched into a cache when
///   it is not there; a mismatch is an error and nothing is kept); the artifact comes
///   back with its local path. An artifact without a digest (recorded before digests)
///   is returned as it is if its path exists. Images are returned as they are (the
///   backend that runs images pulls them by reference).
/// - [`remove`](Self::remove) forgets an artifact whose version is gone; removing one
///   that is not there is not an error.
#[async_trait]
pub trait ArtifactStore: Debug + Send + Sync + 'static {
    /// A short name (`local`, `oci`).
    fn name(&self) -> &str;

    /// Stores the directory at `dir` (a finished build's output, which the store may
    /// move) and returns the artifact that names it.
    async fn put_directory(&self, dir: &Path) -> Result<Artifact>;

    /// Makes `artifact` usable on this node (see the trait's contract).
    async fn fetch(&self, artifact: &Artifact) -> Result<Artifact>;

    /// Forgets `artifact`.
    async fn remove(&self, artifact: &Artifact) -> Result<()>;

    /// Whether directories stay where their builder put them, so the builder's
    /// [`remove`](crate::Builder::remove) deletes them (true only of
    /// [`InPlaceArtifactStore`]).
    fn leaves_directories_to_builder(&self) -> bool {
        false
    }
}

/// The store a platform uses when none is configured: a directory stays where its
/// builder put it and is recorded without a digest, so it runs on this node only
/// (one process, as SOPM embedded has always been). `fetch` hands artifacts back as
/// they are; the builder removes its directories.
#[derive(Debug, Default, Clone, Copy)]
pub struct InPlaceArtifactStore;

#[async_trait]
impl ArtifactStore for InPlaceArtifactStore {
    fn name(&self) -> &str {
        "in-place"
    }

    async fn put_directory(&self, dir: &Path) -> Result<Artifact> {
        let path = dir.to_str().ok_or_else(|| {
            Error::Internal(format!(
                "the artifact directory {} is not valid UTF-8",
                dir.display()
            ))
        })?;
        Ok(Artifact::Directory {
            path: path.to_string(),
            digest: None,
        })
    }

    async fn fetch(&self, artifact: &Artifact) -> Result<Artifact> {
        Ok(artifact.clone())
    }

    async fn remove(&self, _artifact: &Artifact) -> Result<()> {
        Ok(())
    }

    fn leaves_directories_to_builder(&self) -> bool {
        true
    }
}
