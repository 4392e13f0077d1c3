//! Slipway's storage: content-addressed blobs and the registry's metadata.
//!
//! Architecture invariants:
//! - This crate knows nothing of HTTP. Errors are meanings ([`StorageError`]),
//!   mapped to wire errors by the registry.
//! - A blob is visible only after its digest is verified: uploads stream into
//!   a temporary object while hashing, and are published under their digest
//!   (fsync + rename) only if the digest matches. Its metadata row is written
//!   after that, so no row ever points to a missing or partial blob.
//! - Every blob is stored once, whatever the number of repositories that link
//!   it; a repository sees only blobs it received or mounted.

pub mod blob;
pub mod digest;
pub mod error;
pub mod fsck;
pub mod gc;
pub mod meta;
pub mod migrate;
pub mod names;
pub mod testing;

pub use blob::BlobStore;
pub use digest::{Algorithm, Digest, Hasher};
pub use error::{Result, StorageError};
pub use meta::Metadata;
pub use names::RepoName;
