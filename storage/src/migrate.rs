//! Moving a registry from one pair of stores to another — typically a
//! single node's SQLite file and blob tree to PostgreSQL and S3 — with the
//! servers stopped. Metadata rows are copied table by table (both databases
//! carry the same migrations), then every blob is streamed through the
//! target's verifying upload path. Uploads in progress and reservations are
//! not carried over: clients start those again.

use futures::StreamExt;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::blob::BlobStore;
use crate::digest::{Digest, Hasher};
use crate::error::{Result, StorageError};
use crate::meta::{Backend, Metadata};

#[derive(Clone, Copy)]
enum Col {
    Int,
    OptInt,
    Text,
    OptText,
    Bytes,
}

use Col::*;

/// Tables in an order that satisfies their foreign keys, with their
/// columns. Tables with a generated id list it first.
const TABLES: &[(&str, &[(&str, Col)])] = &[
    (
        "projects",
        &[
            ("name", Text),
            ("public", Int),
            ("created_at", Int),
            ("updated_at", Int),
            ("quota_bytes", OptInt),
            ("is_base", Int),
            ("warned_percent", Int),
            ("retention_keep", OptInt),
            ("used_bytes", Int),
            ("build_limits", OptText),
            ("build_retention", OptText),
        ],
    ),
    (
        "accounts",
        &[("name", Text), ("password_hash", Text), ("updated_at", Int)],
    ),
    (
        "robots",
        &[
            ("id", Int),
            ("project", Text),
            ("name", Text),
            ("description", Text),
            ("secret_hash", Text),
            ("permissions", Text),
            ("enabled", Int),
            ("expires_at", OptInt),
            ("version", Int),
            ("created_at", Int),
            ("updated_at", Int),
            ("last_used_at", OptInt),
        ],
    ),
    (
        "audit_log",
        &[
            ("id", Int),
            ("at", Int),
            ("principal", Text),
            ("action", Text),
            ("project", OptText),
            ("target", OptText),
            ("detail", OptText),
            ("remote_addr", OptText),
        ],
    ),
    (
        "repositories",
        &[
            ("id", Int),
            ("name", Text),
            ("project", Text),
            ("created_at", Int),
        ],
    ),
    (
        "blobs",
        &[
            ("digest", Text),
            ("size", Int),
            ("created_at", Int),
            ("last_ref_change", Int),
        ],
    ),
    (
        "repo_blobs",
        &[("repo_id", Int), ("digest", Text), ("created_at", Int)],
    ),
    (
        "manifest_bodies",
        &[
            ("digest", Text),
            ("media_type", Text),
            ("size", Int),
            ("body", Bytes),
            ("created_at", Int),
        ],
    ),
    (
        "manifests",
        &[
            ("repo_id", Int),
            ("digest", Text),
            ("media_type", Text),
            ("size", Int),
            ("artifact_type", OptText),
            ("subject", OptText),
            ("annotations", OptText),
            ("created_at", Int),
            ("untagged_at", OptInt),
            ("last_pulled_at", OptInt),
        ],
    ),
    (
        "manifest_refs",
        &[
            ("repo_id", Int),
            ("manifest_digest", Text),
            ("ref_digest", Text),
            ("is_manifest", Int),
        ],
    ),
    (
        "tags",
        &[
            ("repo_id", Int),
            ("name", Text),
            ("digest", Text),
            ("updated_at", Int),
        ],
    ),
    (
        "project_blobs",
        &[("project", Text), ("digest", Text), ("size", Int)],
    ),
    (
        "tag_history",
        &[
            ("id", Int),
            ("repo_id", Int),
            ("tag", Text),
            ("at", Int),
            ("old_digest", OptText),
            ("new_digest", OptText),
            ("cause", Text),
        ],
    ),
    // Sealed with the secrets key: `slipway migrate` copies its file too.
    (
        "project_secrets",
        &[
            ("project", Text),
            ("name", Text),
            ("sealed", Text),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    ),
    ("secrets_key_check", &[("id", Int), ("sealed", Text)]),
    (
        "triggers",
        &[
            ("id", Text),
            ("project", Text),
            ("source_url", Text),
            ("ref_pattern", Text),
            ("tag_pattern", OptText),
            ("image_name", Text),
            ("builder", OptText),
            ("env", Text),
            ("secret_env", Text),
            ("git_credentials", OptText),
            ("hook_secret", Text),
            ("poll_interval_secs", OptInt),
            ("poll_commit", OptText),
            ("poll_next_at", OptInt),
            ("is_default", Int),
            ("created_by", Text),
            ("created_at", Int),
        ],
    ),
    (
        "trigger_deliveries",
        &[
            ("id", Int),
            ("trigger_id", Text),
            ("delivery_id", OptText),
            ("at", Int),
            ("provider", Text),
            ("event", Text),
            ("git_ref", OptText),
            ("git_commit", OptText),
            ("result", Text),
            ("detail", Text),
            ("build_id", OptText),
            ("git_before", OptText),
        ],
    ),
    (
        "people",
        &[
            ("name", Text),
            ("created_at", Int),
            ("created_by", Text),
            ("is_admin", Int),
            ("disabled", Int),
            ("checked_at", OptInt),
            ("last_sign_in", OptInt),
        ],
    ),
    (
        "memberships",
        &[
            ("person", Text),
            ("project", Text),
            ("role", Text),
            ("source", Text),
            ("granted_at", Int),
        ],
    ),
    (
        "personal_tokens",
        &[
            ("id", Text),
            ("person", Text),
            ("name", Text),
            ("secret_hash", Text),
            ("project", OptText),
            ("pull_only", Int),
            ("created_at", Int),
            ("expires_at", OptInt),
            ("last_used_at", OptInt),
        ],
    ),
];

/// What was copied.
#[derive(Debug, Default, Clone)]
pub struct MigrationReport {
    pub rows: Vec<(&'static str, u64)>,
    pub blobs: u64,
    pub bytes: u64,
    /// Blobs recorded in the source database but missing from its store.
    pub missing: Vec<String>,
}

/// Copies every metadata row from `from` into `to`, which must be empty
/// (freshly migrated): the admin and builder accounts a first start creates
/// are replaced by the source's.
pub async fn copy_metadata(
    from: &Metadata,
    to: &Metadata,
    report: &mut MigrationReport,
) -> Result<()> {
    let (src, dst) = (from.read_pool(), to.write_pool());
    for table in ["projects", "repositories", "robots", "blobs"] {
        let n: i64 = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(dst)
            .await?
            .get(0);
        if n > 0 {
            return Err(StorageError::Conflict(format!(
                "the target database already holds {table}; migrate into an empty one"
            )));
        }
    }
    let mut tx = dst.begin().await?;
    sqlx::query("DELETE FROM accounts")
        .execute(&mut *tx)
        .await?;
    for (table, cols) in TABLES {
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        let select = format!("SELECT {} FROM {table}", names.join(", "));
        let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            placeholders.join(", ")
        );
        let rows: Vec<AnyRow> = sqlx::query(sqlx::AssertSqlSafe(select))
            .fetch_all(src)
            .await?;
        for row in &rows {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(insert.clone()));
            for (i, (_, col)) in cols.iter().enumerate() {
                q = match col {
                    Int => q.bind(row.try_get::<i64, _>(i)?),
                    OptInt => q.bind(row.try_get::<Option<i64>, _>(i)?),
                    Text => q.bind(row.try_get::<String, _>(i)?),
                    OptText => q.bind(row.try_get::<Option<String>, _>(i)?),
                    Bytes => q.bind(row.try_get::<Vec<u8>, _>(i)?),
                };
            }
            q.execute(&mut *tx).await?;
        }
        report.rows.push((table, rows.len() as u64));
    }
    if to.backend() == Backend::Postgres {
        // Ids were copied as they were: move the sequences past them.
        for table in [
            "robots",
            "audit_log",
            "repositories",
            "trigger_deliveries",
            "tag_history",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                 COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            )))
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Streams every blob the source database records from `from` into `to`,
/// each checked against its digest on the way in.
pub async fn copy_blobs(
    meta: &Metadata,
    from: &BlobStore,
    to: &BlobStore,
    report: &mut MigrationReport,
) -> Result<()> {
    let digests: Vec<String> = sqlx::query("SELECT digest FROM blobs ORDER BY digest")
        .fetch_all(meta.read_pool())
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    for d in digests {
        let digest: Digest = d.parse()?;
        if to.stat(&digest).await?.is_some() {
            report.blobs += 1;
            continue;
        }
        let source = match from.read(&digest, None).await {
            Ok(s) => s,
            Err(StorageError::BlobUnknown(_)) => {
                report.missing.push(d);
                continue;
            }
            Err(e) => return Err(e),
        };
        let id = format!("migrate-{}", digest.hex());
        let state = to.upload_create(&id).await?;
        let body = source.map(|chunk| chunk.map_err(StorageError::Io));
        let (size, hasher, state) = to
            .upload_append(
                &id,
                0,
                Hasher::new(digest.algorithm()),
                &state,
                body,
                u64::MAX,
            )
            .await?;
        let (_, state) = to.upload_verify(&id, &digest, hasher, &state).await?;
        to.upload_publish(&id, &digest, &state).await?;
        report.blobs += 1;
        report.bytes += size;
    }
    Ok(())
}
