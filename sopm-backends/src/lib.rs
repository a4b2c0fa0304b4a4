//! placeholder
#[cfg(feature = "process")]
pub mod process;
#[cfg(feature = "process")]
pub mod sandbox;
