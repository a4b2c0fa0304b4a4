//! The SOPM server: the documented HTTP API over a [`sopm_core::Platform`], and the
//! `sopm` command-line tool (server and client).

pub mod api;
pub mod client;
pub mod config;
pub mod error;
pub mod metrics;
pub mod server;

pub use api::{app, ApiConfig, AppState};
pub use config::{ServerConfig, Storage};
