//! The command-line clients of the `slipway` binary: `slipway admin …`
//! (the admin API), `slipway build …` (the build API) and `slipway admin
//! stack …` (the platform's stacks). They talk to a running server over
//! HTTP, reusing the API's own view types (`slipway_registry::api`); the
//! server knows nothing of them.
//!
//! Each command group parses its arguments with clap, then hands each
//! command to a function of its own; `client` holds the HTTP client and how
//! credentials are found, `output` the shared printing (tables for people,
//! the API's JSON with `--json`).

pub mod admin;
pub mod build;
mod client;
pub mod login;
mod output;
pub mod stack;
