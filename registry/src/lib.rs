//! Slipway's registry: the OCI distribution API over `slipway-storage`.
//!
//! Entry points: [`server::Server`] (bind, then run until shutdown),
//! [`server::router`] (the axum router, for in-process tests), and
//! [`testing::TestServer`] (a server on `127.0.0.1:0` with its own data
//! directory). This is the only crate that speaks HTTP and OCI error JSON.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod manifest;
pub mod server;
pub mod telemetry;
pub mod testing;
pub mod v2;

pub use config::Config;
pub use server::{AppState, Server};
