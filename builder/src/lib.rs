//! The build front end (Cloud Native Buildpacks lifecycle, sandbox, rebase).
//!
//! Not built yet: see the build front end issue. This crate depends on neither
//! `slipway-storage` nor `slipway-registry`; it will read and write images only
//! through the OCI distribution API.
