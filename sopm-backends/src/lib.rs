//! placeholder

#[cfg(feature = "local-build")]
pub mod build;

#[cfg(feature = "local-build")]
pub use build::{LocalBuilder, LocalBuilderConfig};
