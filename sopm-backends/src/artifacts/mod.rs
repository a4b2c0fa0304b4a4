//! Built artifacts named by their content: the canonical tar of a directory and its
//! digest ([`canonical_tar`]), checked unpacking ([`unpack_verified`]), the store of the
//! embedded default ([`LocalArtifactStore`]) and, with feature `oci`, the store many nodes
//! share ([`OciArtifactStore`]).
//!
//! An artifact directory is named by `sha256:` of its canonical tar (see [`canonical`]):
//! the same tree has the same digest on every machine, so a node that did not build it
//! can fetch it, check it and run it. Every copy is kept under `…/sha256/<hex>/`.

pub mod canonical;
mod local;

#[cfg(feature = "oci")]
mod cache;
#[cfg(feature = "oci")]
mod oci;

pub use canonical::{canonical_digest, canonical_tar, canonical_tar_bytes, unpack_verified};
pub use local::LocalArtifactStore;

#[cfg(feature = "oci")]
pub use oci::{
    OciArtifactStore, OciConfig, ARTIFACT_TYPE, DEFAULT_CACHE_MAX_BYTES, DEFAULT_REPOSITORY,
    LAYER_MEDIA_TYPE,
};
