//! The SOPM server: the documented HTTP API over a [`sopm_core::Platform`], and the
//! `sopm` command-line tool (server and client).

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod pack;
pub mod server;
pub mod upload;
pub mod user_functions;

pub use api::{app, ApiConfig, AppState};
pub use config::{AuthMode, ExecutorSettings, ServerConfig, Storage};
pub use upload::UploadLimits;
