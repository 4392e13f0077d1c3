//! The conformance crate's one integration-test binary.
//!
//! - `suite`: our spec-driven conformance suite against an in-process Slipway
//!   and against two replicas behind a round-robin proxy (`deployment`).
//! - `peer`: the same suite against Debian's `docker-registry`, which must
//!   show the faults we know it has.
//! - `interop`: real clients (skopeo, podman, containerd's ctr, umoci, oras).
//! - `crash`: SIGKILL during concurrent pushes, then consistency checks.
//! - `replicas`: skopeo and containerd against two replicas.
//! - `fuzz`: random methods, paths and bodies never yield a 5xx or a panic.
//! - `tls`: curl, skopeo, podman and ctr over HTTPS, a renewal in flight.
//! - `soak`: pushers, pullers, a deleter and GC while the server is
//!   SIGKILLed and restarted; nothing acknowledged is lost.

mod crash;
mod deployment;
mod fuzz;
mod interop;
mod peer;
mod replicas;
mod soak;
mod suite;
mod tls;
