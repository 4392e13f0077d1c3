//! What can go wrong in storage, by meaning. No HTTP status lives here: the
//! registry maps each variant once, in its `ApiError` conversion table.

use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid digest {0}")]
    DigestInvalid(String),
    #[error("the content does not match digest {expected} (it hashes to {actual})")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("invalid repository name {0}")]
    NameInvalid(String),
    #[error("repository {0} is not known")]
    RepositoryUnknown(String),
    #[error("blob {0} is not known in this repository")]
    BlobUnknown(Digest),
    #[error("upload {0} is not known")]
    UploadUnknown(String),
    /// A chunk that does not start where the upload currently ends.
    #[error("the upload has {have} bytes; a chunk must start at byte {have}, not {offered}")]
    UploadOffset { have: u64, offered: u64 },
    #[error("upload {0} is being written by another request")]
    UploadBusy(String),
    #[error("{0}")]
    SizeInvalid(String),
    #[error("manifest {0} is not known")]
    ManifestUnknown(String),
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("the manifest references {0}, which this repository does not have")]
    ManifestBlobUnknown(Digest),
    /// The operation would break a reference held by something else.
    #[error("{0}")]
    Conflict(String),
    /// The push would take the project over its quota.
    #[error(
        "quota exceeded for project {project}: {} used of {}, this push needs {}",
        human_bytes(*used + *reserved), human_bytes(*quota), human_bytes(*needed)
    )]
    QuotaExceeded {
        project: String,
        used: u64,
        reserved: u64,
        quota: u64,
        needed: u64,
    },
    /// A chunk would take the bytes of the project's uploads in flight past
    /// what they may hold on disk (the larger of the quota and the upload
    /// headroom). Nothing of the chunk is kept.
    #[error(
        "uploads in flight for project {project} already hold {} of the {} they may use; \
         this chunk needs {} more: finish or cancel those uploads first",
        human_bytes(*in_flight), human_bytes(*limit), human_bytes(*needed)
    )]
    UploadHeadroom {
        project: String,
        in_flight: u64,
        limit: u64,
        needed: u64,
    },
    /// The request body broke off before its end (the client went away or
    /// sent less than it announced). Nothing of it is kept.
    #[error("the request body ended early: {0}")]
    BodyIncomplete(String),
    /// A limit the caller exceeded (request body too large, …).
    #[error("{0}")]
    TooLarge(String),
    /// The backing store or database cannot be reached right now.
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the storage is full: {0}")]
    Full(String),
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull {
            StorageError::Full(e.to_string())
        } else {
            StorageError::Io(e)
        }
    }
}

/// Whether the database says its disk is full: SQLite's SQLITE_FULL (13),
/// PostgreSQL's disk_full (53100).
fn database_full(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            matches!(d.code().as_deref(), Some("13") | Some("53100"))
                || d.message().contains("database or disk is full")
        }
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::StorageFull,
        _ => false,
    }
}

/// Whether the database is going away or not there yet: PostgreSQL's
/// connection exceptions (08…), shutdowns (57P01–57P03, e.g. "terminating
/// connection due to administrator command") and SQLite's busy database.
fn database_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        if database_full(&e) {
            return StorageError::Full(e.to_string());
        }
        if database_unavailable(&e) {
            return StorageError::Unavailable(e.to_string());
        }
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => StorageError::Unavailable(e.to_string()),
            e => StorageError::Database(e),
        }
    }
}

impl StorageError {
    /// Whether the failure is on the server's side (logged, answered 5xx).
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            StorageError::Unavailable(_)
                | StorageError::Full(_)
                | StorageError::Corrupt(_)
                | StorageError::Io(_)
                | StorageError::Database(_)
                | StorageError::Migrate(_)
        )
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Bytes for people: `1.9 GiB`, `300 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if v >= 100.0 || v.fract() < 0.05 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn bytes_for_people() {
        let cases = [
            (0, "0 B"),
            (512, "512 B"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (300 << 20, "300 MiB"),
            ((19 << 30) / 10, "1.9 GiB"),
            (2 << 30, "2 GiB"),
        ];
        for (n, want) in cases {
            assert_eq!(human_bytes(n), want, "{n}");
        }
    }
}
