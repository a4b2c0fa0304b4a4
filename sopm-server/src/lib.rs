//! The SOPM server: the documented HTTP API over a [`sopm_core::Platform`], and how
//! the `sopm serve` command starts it. The client commands of the `sopm` binary live
//! in the binary, not here.
//!
//! Arrows point one way: [`api`] (routes) and [`user_functions`] (handlers) use
//! [`auth`], [`state`], [`body`] and [`error`]; none of those uses a handler.

pub mod api;
pub mod auth;
pub mod body;
pub mod body_budget;
pub mod cluster;
pub mod config;
mod cross_site;
pub mod data_dir;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod numbers;
pub mod readiness;
pub mod serve;
pub mod server;
pub mod state;
mod submit;
pub mod tenant_stats;
pub mod upload;
pub mod user_functions;

pub use api::app;
pub use config::{AuthMode, ExecutorSettings, Role, ServerConfig, Storage};
pub use state::{ApiConfig, AppState};
pub use upload::UploadLimits;
