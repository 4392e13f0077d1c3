//! The storage crate's integration tests.
//!
//! - `contract`: one metadata contract suite, run on SQLite always and on
//!   PostgreSQL when `SLIPWAY_TEST_POSTGRES_URL` names a server (each run
//!   makes and drops its own database).
//! - `blobs`: the filesystem blob store.

mod blobs;
mod contract;
