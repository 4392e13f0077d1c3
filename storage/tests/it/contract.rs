//! The metadata contract: the same assertions on every database.

use bytes::Bytes;
use slipway_storage::meta::{AuditQuery, ManifestRef, NewAuditEntry, NewManifest, RobotUpdate};
use slipway_storage::{Digest, Metadata, RepoName, StorageError};

/// A database for one test, removed afterwards.
struct TestDb {
    meta: Metadata,
    cleanup: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl TestDb {
    async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = Metadata::sqlite_url(&dir.path().join("meta.db"));
        TestDb {
            meta: Metadata::connect(&url, 4).await.unwrap(),
            cleanup: None,
            _dir: dir,
        }
    }

    /// A fresh PostgreSQL database, or `None` when no server is configured.
    async fn postgres() -> Option<TestDb> {
        let admin = std::env::var("SLIPWAY_TEST_POSTGRES_URL").ok()?;
        let name = format!("slipway_test_{}", uuid::Uuid::new_v4().simple());
        let conn = sqlx_admin(&admin).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&conn)
            .await
            .unwrap();
        let url = replace_db(&admin, &name);
        Some(TestDb {
            meta: Metadata::connect(&url, 4).await.unwrap(),
            cleanup: Some((admin, name)),
            _dir: tempfile::tempdir().unwrap(),
        })
    }

    async fn drop_db(self) {
        self.meta.close().await;
        if let Some((admin, name)) = self.cleanup {
            let conn = sqlx_admin(&admin).await;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {name} WITH (FORCE)"
            )))
            .execute(&conn)
            .await
            .unwrap();
        }
    }
}

async fn sqlx_admin(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at SLIPWAY_TEST_POSTGRES_URL: {e}"))
}

fn replace_db(url: &str, db: &str) -> String {
    let (base, _) = url
        .rsplit_once('/')
        .expect("a database URL ends with /<database>");
    format!("{base}/{db}")
}

/// Runs a contract test on SQLite, and on PostgreSQL when configured.
macro_rules! contract {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let db = super::TestDb::sqlite().await;
                super::$name(&db.meta).await;
                db.drop_db().await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(db) = super::TestDb::postgres().await {
                    super::$name(&db.meta).await;
                    db.drop_db().await;
                } else {
                    eprintln!("SLIPWAY_TEST_POSTGRES_URL is not set: PostgreSQL contract not run");
                }
            }
        }
    };
}

contract!(repositories_and_visibility);
contract!(manifests_and_tags);
contract!(deletes_keep_references_whole);
contract!(listing_order_and_referrers);
contract!(uploads);
contract!(projects_and_robots);
contract!(audit_log);

/// A verified blob, claimed and made visible in a repository of `project`.
async fn link(
    m: &Metadata,
    project: &str,
    repo_id: i64,
    d: &Digest,
    size: u64,
) -> Result<(), StorageError> {
    m.blob_claim(d, size).await?;
    m.blob_complete(None, repo_id, project, d, size, true).await
}

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn blob(i: u8) -> (Digest, u64) {
    (Digest::sha256_of(&[i; 3]), 3 + i as u64)
}

fn image(config: &(Digest, u64), layers: &[&(Digest, u64)], tag: Option<&str>) -> NewManifest {
    let body = Bytes::from(format!(
        "{{\"config\":\"{}\",\"layers\":{:?}}}",
        config.0,
        layers.iter().map(|l| l.0.to_string()).collect::<Vec<_>>()
    ));
    let mut refs = vec![ManifestRef {
        digest: config.0.clone(),
        size: config.1,
        is_manifest: false,
    }];
    refs.extend(layers.iter().map(|l| ManifestRef {
        digest: l.0.clone(),
        size: l.1,
        is_manifest: false,
    }));
    NewManifest {
        digest: Digest::sha256_of(&body),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        body,
        artifact_type: None,
        subject: None,
        annotations: None,
        refs,
        tag: tag.map(str::to_owned),
    }
}

async fn repositories_and_visibility(m: &Metadata) {
    let a = repo("tool-a/web");
    let b = repo("tool-b/web");
    let id_a = m.ensure_repo(&a).await.unwrap();
    assert_eq!(
        m.ensure_repo(&a).await.unwrap(),
        id_a,
        "ensure_repo is idempotent"
    );
    let id_b = m.ensure_repo(&b).await.unwrap();
    assert_ne!(id_a, id_b);
    assert_eq!(m.repo_id(&repo("tool-c/none")).await.unwrap(), None);

    let (d, size) = blob(1);
    link(m, "tool-a", id_a, &d, size).await.unwrap();
    assert_eq!(m.repo_blob_size(&a, &d).await.unwrap(), Some(size));
    assert_eq!(m.blob_size(&d).await.unwrap(), Some(size));
    // Stored once, visible only where pushed or mounted.
    assert_eq!(m.repo_blob_size(&b, &d).await.unwrap(), None);
    assert_eq!(
        m.mount_blob(id_b, "tool-b", &repo("tool-c/none"), &d)
            .await
            .unwrap(),
        None
    );
    assert_eq!(m.repo_blob_size(&b, &d).await.unwrap(), None);
    assert_eq!(
        m.mount_blob(id_b, "tool-b", &a, &d).await.unwrap(),
        Some(size)
    );
    assert_eq!(m.repo_blob_size(&b, &d).await.unwrap(), Some(size));
    // Linking twice is harmless.
    link(m, "tool-a", id_a, &d, size).await.unwrap();
}

async fn manifests_and_tags(m: &Metadata) {
    let r = repo("tool-a/web");
    let id = m.ensure_repo(&r).await.unwrap();
    let (config, layer) = (blob(1), blob(2));
    let man = image(&config, &[&layer], Some("v1"));

    match m.manifest_put(&r, id, &man).await {
        Err(StorageError::ManifestBlobUnknown(d)) => assert_eq!(d, config.0),
        other => panic!("expected ManifestBlobUnknown, got {other:?}"),
    }
    assert!(
        m.manifest_by_tag(&r, "v1").await.unwrap().is_none(),
        "nothing half-written"
    );

    link(m, "tool-a", id, &config.0, config.1).await.unwrap();
    let (wrong, _) = blob(3);
    link(m, "tool-a", id, &wrong, 99).await.unwrap();
    let mut bad_size = image(&config, &[&(wrong.clone(), 3)], Some("v1"));
    bad_size.tag = Some("v1".into());
    assert!(matches!(
        m.manifest_put(&r, id, &bad_size).await,
        Err(StorageError::ManifestInvalid(_))
    ));

    link(m, "tool-a", id, &layer.0, layer.1).await.unwrap();
    m.manifest_put(&r, id, &man).await.unwrap();
    let got = m.manifest_by_tag(&r, "v1").await.unwrap().unwrap();
    assert_eq!(got.digest, man.digest);
    assert_eq!(got.body, man.body);
    assert_eq!(got.media_type, man.media_type);
    let by_digest = m
        .manifest_by_digest(&r, &man.digest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_digest.body, man.body);
    // The manifest is not visible from another repository.
    let other = repo("tool-b/web");
    m.ensure_repo(&other).await.unwrap();
    assert!(
        m.manifest_by_digest(&other, &man.digest)
            .await
            .unwrap()
            .is_none()
    );

    // Re-putting is idempotent; a tag moves.
    m.manifest_put(&r, id, &man).await.unwrap();
    let man2 = image(&config, &[], Some("v1"));
    m.manifest_put(&r, id, &man2).await.unwrap();
    assert_eq!(
        m.manifest_by_tag(&r, "v1").await.unwrap().unwrap().digest,
        man2.digest
    );
    assert!(
        m.manifest_by_digest(&r, &man.digest)
            .await
            .unwrap()
            .is_some()
    );
}

async fn deletes_keep_references_whole(m: &Metadata) {
    let r = repo("tool-a/web");
    let id = m.ensure_repo(&r).await.unwrap();
    let (config, layer) = (blob(1), blob(2));
    link(m, "tool-a", id, &config.0, config.1).await.unwrap();
    link(m, "tool-a", id, &layer.0, layer.1).await.unwrap();
    let man = image(&config, &[&layer], Some("v1"));
    m.manifest_put(&r, id, &man).await.unwrap();

    let index_body = Bytes::from(format!("{{\"manifests\":[\"{}\"]}}", man.digest));
    let index = NewManifest {
        digest: Digest::sha256_of(&index_body),
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        body: index_body,
        artifact_type: None,
        subject: None,
        annotations: None,
        refs: vec![ManifestRef {
            digest: man.digest.clone(),
            size: man.body.len() as u64,
            is_manifest: true,
        }],
        tag: Some("multi".into()),
    };
    m.manifest_put(&r, id, &index).await.unwrap();

    assert!(matches!(
        m.unlink_blob(&r, &layer.0).await,
        Err(StorageError::Conflict(_))
    ));
    assert!(matches!(
        m.manifest_delete(&r, &man.digest).await,
        Err(StorageError::Conflict(_))
    ));
    m.manifest_delete(&r, &index.digest).await.unwrap();
    assert!(
        m.manifest_by_tag(&r, "multi").await.unwrap().is_none(),
        "its tag went with it"
    );
    assert!(matches!(
        m.manifest_delete(&r, &index.digest).await,
        Err(StorageError::ManifestUnknown(_))
    ));

    assert!(m.tag_delete(&r, "v1").await.unwrap());
    assert!(!m.tag_delete(&r, "v1").await.unwrap());
    assert!(
        m.manifest_by_digest(&r, &man.digest)
            .await
            .unwrap()
            .is_some(),
        "untagging keeps the manifest"
    );
    m.manifest_delete(&r, &man.digest).await.unwrap();
    m.unlink_blob(&r, &layer.0).await.unwrap();
    assert_eq!(m.repo_blob_size(&r, &layer.0).await.unwrap(), None);
    assert!(matches!(
        m.unlink_blob(&r, &layer.0).await,
        Err(StorageError::BlobUnknown(_))
    ));
}

async fn listing_order_and_referrers(m: &Metadata) {
    let r = repo("tool-a/web");
    let id = m.ensure_repo(&r).await.unwrap();
    let config = blob(1);
    link(m, "tool-a", id, &config.0, config.1).await.unwrap();
    let subject = image(&config, &[], None);
    m.manifest_put(&r, id, &subject).await.unwrap();
    // Byte order: upper case before lower case, '-' before digits.
    let names = ["b", "a", "B", "A", "a-1", "a1", "_x", "Z9"];
    for t in names {
        let mut man = image(&config, &[], Some(t));
        man.tag = Some(t.into());
        m.manifest_put(&r, id, &man).await.unwrap();
    }
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(m.tags(&r, None, 100).await.unwrap().unwrap(), want);
    assert_eq!(
        m.tags(&r, None, 3).await.unwrap().unwrap(),
        want[..3].to_vec()
    );
    assert_eq!(
        m.tags(&r, Some(&want[2]), 3).await.unwrap().unwrap(),
        want[3..6].to_vec()
    );
    assert_eq!(m.tags(&repo("tool-z/none"), None, 3).await.unwrap(), None);

    for n in [
        "tool-b/x",
        "tool-a/a",
        "tool-a/web/Z".to_lowercase().as_str(),
    ] {
        m.ensure_repo(&repo(n)).await.unwrap();
    }
    let all = m.catalog(None, 100).await.unwrap();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    assert_eq!(
        m.catalog(Some("tool-a/web"), 100).await.unwrap(),
        all[all.iter().position(|x| x == "tool-a/web").unwrap() + 1..].to_vec()
    );

    for (i, at) in [
        (10u8, "application/x-sig"),
        (11, "application/x-sbom"),
        (12, "application/x-sig"),
    ] {
        let c = blob(i);
        link(m, "tool-a", id, &c.0, c.1).await.unwrap();
        let mut man = image(&c, &[], None);
        man.subject = Some(subject.digest.clone());
        man.artifact_type = Some(at.into());
        man.annotations = Some(format!("{{\"n\":\"{i}\"}}"));
        m.manifest_put(&r, id, &man).await.unwrap();
    }
    let all = m.referrers(&r, &subject.digest, None).await.unwrap();
    assert_eq!(all.len(), 3);
    let sigs = m
        .referrers(&r, &subject.digest, Some("application/x-sig"))
        .await
        .unwrap();
    assert_eq!(sigs.len(), 2);
    assert!(
        sigs.iter()
            .all(|s| s.artifact_type.as_deref() == Some("application/x-sig"))
    );
    assert!(sigs.iter().all(|s| s.annotations.is_some()));
    assert!(m.referrers(&r, &blob(99).0, None).await.unwrap().is_empty());
}

async fn uploads(m: &Metadata) {
    let r = repo("tool-a/web");
    let id = m.ensure_repo(&r).await.unwrap();
    m.upload_insert("u1", id, b"state0", b"backend0")
        .await
        .unwrap();
    let u = m.upload_get("u1").await.unwrap().unwrap();
    assert_eq!(
        (u.size, u.repo.as_str(), u.hash_state.as_slice()),
        (0, "tool-a/web", &b"state0"[..])
    );
    assert!(
        m.upload_advance("u1", 0, 10, b"state10", b"backend10")
            .await
            .unwrap()
    );
    assert!(
        !m.upload_advance("u1", 0, 20, b"stale", b"stale")
            .await
            .unwrap(),
        "compare-and-set on size"
    );
    let u = m.upload_get("u1").await.unwrap().unwrap();
    assert_eq!((u.size, u.hash_state.as_slice()), (10, &b"state10"[..]));
    assert_eq!(
        u.backend_state, b"backend10",
        "the blob store's state travels with the record"
    );
    assert_eq!(m.upload_count().await.unwrap(), 1);
    assert!(m.upload_exists("u1").await.unwrap());

    let (d, size) = blob(5);
    m.blob_claim(&d, size).await.unwrap();
    m.blob_complete(Some("u1"), id, "tool-a", &d, size, false)
        .await
        .unwrap();
    assert!(m.upload_get("u1").await.unwrap().is_none());
    assert_eq!(m.repo_blob_size(&r, &d).await.unwrap(), Some(size));

    m.upload_insert("u2", id, b"s", b"").await.unwrap();
    assert_eq!(
        m.uploads_idle_since(i64::MAX).await.unwrap(),
        vec!["u2".to_string()]
    );
    assert!(m.uploads_idle_since(0).await.unwrap().is_empty());
    assert!(m.upload_delete("u2").await.unwrap());
    assert!(!m.upload_delete("u2").await.unwrap());
}

async fn projects_and_robots(m: &Metadata) {
    let p = m
        .project_create("tool-a", false, None, false)
        .await
        .unwrap();
    assert!(!p.public);
    assert!(matches!(
        m.project_create("tool-a", true, None, false).await,
        Err(StorageError::Conflict(_))
    ));
    m.project_create("platform", true, None, true)
        .await
        .unwrap();
    let names: Vec<String> = m
        .projects()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["platform", "tool-a"]);
    assert!(
        m.project_set_public("tool-a", true)
            .await
            .unwrap()
            .unwrap()
            .public
    );
    assert!(m.project_set_public("nope", true).await.unwrap().is_none());

    let r = m
        .robot_create("tool-a", "ci", "pulls", "$hash1", "pull", None)
        .await
        .unwrap();
    assert_eq!(r.full_name(), "robot$tool-a+ci");
    assert!(r.enabled && r.version == 1 && r.last_used_at.is_none());
    assert!(matches!(
        m.robot_create("tool-a", "ci", "", "$h", "pull", None).await,
        Err(StorageError::Conflict(_))
    ));
    let same = m.robot_by_id(r.id).await.unwrap().unwrap();
    assert_eq!(same.secret_hash, "$hash1");

    let u = m
        .robot_update(
            "tool-a",
            "ci",
            &RobotUpdate {
                description: Some("d".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (u.description.as_str(), u.version),
        ("d", 1),
        "a description change keeps tokens"
    );
    let u = m
        .robot_update(
            "tool-a",
            "ci",
            &RobotUpdate {
                enabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((u.enabled, u.version), (false, 2));
    let u = m
        .robot_update(
            "tool-a",
            "ci",
            &RobotUpdate {
                secret_hash: Some("$hash2".into()),
                expires_at: Some(Some(5)),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (u.secret_hash.as_str(), u.expires_at, u.version),
        ("$hash2", Some(5), 3)
    );
    assert!(u.expired(5) && !u.expired(4));
    m.robot_touch(r.id, 1234).await.unwrap();
    assert_eq!(
        m.robot_get("tool-a", "ci")
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(1234)
    );
    assert_eq!(m.robots("tool-a").await.unwrap().len(), 1);

    // A project with images cannot go; an empty one takes its robots along.
    let repo_a = repo("tool-a/web");
    let id = m.ensure_repo(&repo_a).await.unwrap();
    let c = blob(1);
    link(m, "tool-a", id, &c.0, c.1).await.unwrap();
    let man = image(&c, &[], Some("v1"));
    m.manifest_put(&repo_a, id, &man).await.unwrap();
    assert!(matches!(
        m.project_delete("tool-a").await,
        Err(StorageError::Conflict(_))
    ));
    assert_eq!(
        m.project_repositories("tool-a").await.unwrap(),
        vec![("tool-a/web".to_string(), 1)]
    );
    m.manifest_delete(&repo_a, &man.digest).await.unwrap();
    assert!(m.project_delete("tool-a").await.unwrap());
    assert!(m.project_get("tool-a").await.unwrap().is_none());
    assert!(m.robot_by_id(r.id).await.unwrap().is_none());
    assert!(m.repo_id(&repo_a).await.unwrap().is_none());

    assert_eq!(m.account_hash("admin").await.unwrap(), None);
    m.account_set("admin", "$a1").await.unwrap();
    m.account_set("admin", "$a2").await.unwrap();
    assert_eq!(
        m.account_hash("admin").await.unwrap().as_deref(),
        Some("$a2")
    );
}

async fn audit_log(m: &Metadata) {
    for i in 0..5 {
        m.audit(&NewAuditEntry {
            principal: if i % 2 == 0 {
                "admin".into()
            } else {
                "builder".into()
            },
            action: "manifest.push".into(),
            project: Some(if i < 3 {
                "tool-a".into()
            } else {
                "tool-b".into()
            }),
            target: Some(format!("tool-a/web:v{i}")),
            detail: Some("{}".into()),
            remote_addr: Some("127.0.0.1".into()),
        })
        .await
        .unwrap();
    }
    let all = m
        .audit_list(&AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let a = m
        .audit_list(&AuditQuery {
            project: Some("tool-a".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(a.len(), 3);
    let by = m
        .audit_list(&AuditQuery {
            principal: Some("builder".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by.len(), 2);
    let page = m
        .audit_list(&AuditQuery {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let next = m
        .audit_list(&AuditQuery {
            limit: 2,
            before_id: Some(page[1].id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(next[0].id, all[2].id);
    let none = m
        .audit_list(&AuditQuery {
            since: Some(i64::MAX),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
}

contract!(quota_usage_is_exact_and_dedup_aware);
contract!(quota_refuses_without_overshooting);
contract!(re_uploads_cost_nothing);
contract!(gc_removes_only_what_nothing_holds);
contract!(retention_keeps_the_newest_and_live_referrers);

/// An image whose blobs are made visible first (as a push would).
async fn push(
    m: &Metadata,
    repo: &RepoName,
    config: &(Digest, u64),
    layers: &[&(Digest, u64)],
    tag: Option<&str>,
) -> Result<NewManifest, StorageError> {
    let id = m.ensure_repo(repo).await?;
    for b in std::iter::once(config).chain(layers.iter().copied()) {
        link(m, repo.project(), id, &b.0, b.1).await?;
    }
    let man = image(config, layers, tag);
    m.manifest_put(repo, id, &man).await?;
    Ok(man)
}

async fn used(m: &Metadata, project: &str) -> u64 {
    m.usage(project).await.unwrap().unwrap().used_bytes
}

async fn quota_usage_is_exact_and_dedup_aware(m: &Metadata) {
    m.project_create("platform", true, None, true)
        .await
        .unwrap();
    m.project_create("tool-a", true, None, false).await.unwrap();
    m.project_create("tool-b", true, None, false).await.unwrap();
    let (base, shared, own) = (blob(1), blob(2), blob(3));
    let run = push(m, &repo("platform/run"), &blob(9), &[&base], Some("v1"))
        .await
        .unwrap();

    // tool-a: two repositories and two tags sharing `shared`; `base` comes
    // from the platform and costs nothing.
    let a1 = push(
        m,
        &repo("tool-a/web"),
        &blob(10),
        &[&base, &shared, &own],
        Some("v1"),
    )
    .await
    .unwrap();
    let a2 = push(
        m,
        &repo("tool-a/worker"),
        &blob(11),
        &[&base, &shared],
        Some("v1"),
    )
    .await
    .unwrap();
    let want =
        blob(10).1 + shared.1 + own.1 + a1.body.len() as u64 + blob(11).1 + a2.body.len() as u64;
    assert_eq!(
        used(m, "tool-a").await,
        want,
        "each blob once, base blobs free"
    );
    let u = m.usage("tool-a").await.unwrap().unwrap();
    assert_eq!(u.blob_count, 7, "the base layer is listed, not charged");
    assert_eq!(
        u.reserved_bytes, 0,
        "referenced blobs are no longer reservations"
    );

    // The same image pushed to tool-b costs tool-b the same, independently.
    let b1 = push(
        m,
        &repo("tool-b/web"),
        &blob(10),
        &[&base, &shared, &own],
        Some("v1"),
    )
    .await
    .unwrap();
    assert_eq!(
        used(m, "tool-b").await,
        blob(10).1 + shared.1 + own.1 + b1.body.len() as u64
    );
    // The platform pays for its own blobs.
    assert_eq!(
        used(m, "platform").await,
        blob(9).1 + base.1 + run.body.len() as u64
    );

    // Deleting a manifest releases only what nothing else in the project uses.
    let before = used(m, "tool-a").await;
    m.manifest_delete(&repo("tool-a/worker"), &a2.digest)
        .await
        .unwrap();
    assert_eq!(
        used(m, "tool-a").await,
        before - blob(11).1 - a2.body.len() as u64,
        "shared stays counted"
    );
    // Untagging keeps the manifest and its usage.
    m.tag_delete(&repo("tool-a/web"), "v1").await.unwrap();
    assert_eq!(
        used(m, "tool-a").await,
        before - blob(11).1 - a2.body.len() as u64
    );
    m.manifest_delete(&repo("tool-a/web"), &a1.digest)
        .await
        .unwrap();
    assert_eq!(used(m, "tool-a").await, 0);
    assert!(
        m.recompute(false).await.unwrap().is_empty(),
        "running rows equal the recompute"
    );
}

async fn quota_refuses_without_overshooting(m: &Metadata) {
    m.project_create("tool-q", true, Some(1000), false)
        .await
        .unwrap();
    let r = repo("tool-q/web");
    let id = m.ensure_repo(&r).await.unwrap();
    // Reservations: an uploaded blob holds its bytes until referenced.
    let big = (Digest::sha256_of(b"big"), 600);
    link(m, "tool-q", id, &big.0, big.1).await.unwrap();
    let u = m.usage("tool-q").await.unwrap().unwrap();
    assert_eq!((u.used_bytes, u.reserved_bytes), (0, 600));
    let other = (Digest::sha256_of(b"other"), 500);
    match link(m, "tool-q", id, &other.0, other.1).await {
        Err(StorageError::QuotaExceeded {
            project,
            used,
            reserved,
            quota,
            needed,
        }) => {
            assert_eq!(
                (project.as_str(), used, reserved, quota, needed),
                ("tool-q", 0, 600, 1000, 500)
            );
        }
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    assert_eq!(
        m.repo_blob_size(&r, &other.0).await.unwrap(),
        None,
        "a refused blob is not visible"
    );
    assert_eq!(m.room("tool-q").await.unwrap(), Some(400));
    // Chunks in flight are not judged by the quota (only the room left,
    // 400, is below them), but by the headroom: here the quota itself.
    let bounded = m.clone().with_upload_headroom(0);
    bounded.upload_insert("u1", id, b"s", b"").await.unwrap();
    bounded.upload_reserve("u1", "tool-q", 700).await.unwrap();
    let u = m.usage("tool-q").await.unwrap().unwrap();
    assert_eq!((u.reserved_bytes, u.uploading_bytes), (600, 700));
    match bounded.upload_reserve("u1", "tool-q", 301).await {
        Err(StorageError::UploadHeadroom {
            project,
            in_flight,
            limit,
            needed,
        }) => assert_eq!(
            (project.as_str(), in_flight, limit, needed),
            ("tool-q", 700, 1000, 301)
        ),
        other => panic!("expected UploadHeadroom, got {other:?}"),
    }
    // A larger headroom than the quota: that bound instead.
    let roomy = m.clone().with_upload_headroom(2000);
    roomy.upload_reserve("u1", "tool-q", 1300).await.unwrap();
    assert!(matches!(
        roomy.upload_reserve("u1", "tool-q", 1).await,
        Err(StorageError::UploadHeadroom { limit: 2000, .. })
    ));
    m.upload_release("u1").await.unwrap();
    m.upload_delete("u1").await.unwrap();
    assert_eq!(m.usage("tool-q").await.unwrap().unwrap().uploading_bytes, 0);
    // The manifest turns the reservation into usage; its own bytes must fit.
    let config = (Digest::sha256_of(b"cfg"), 10);
    link(m, "tool-q", id, &config.0, config.1).await.unwrap();
    let man = image(&config, &[&big], Some("v1"));
    m.manifest_put(&r, id, &man).await.unwrap();
    let u = m.usage("tool-q").await.unwrap().unwrap();
    assert_eq!(
        (u.used_bytes, u.reserved_bytes),
        (610 + man.body.len() as u64, 0)
    );
    // Over the quota: refused whole, nothing half-written.
    m.set_quota("tool-q", Some(u.used_bytes + 5)).await.unwrap();
    let c2 = (Digest::sha256_of(b"cfg2"), 10);
    assert!(matches!(
        link(m, "tool-q", id, &c2.0, c2.1).await,
        Err(StorageError::QuotaExceeded { .. })
    ));
    m.set_quota("tool-q", None).await.unwrap();
    link(m, "tool-q", id, &c2.0, c2.1).await.unwrap();
    m.set_quota("tool-q", Some(u.used_bytes + 5)).await.unwrap();
    let man2 = image(&c2, &[&big], Some("v2"));
    assert!(matches!(
        m.manifest_put(&r, id, &man2).await,
        Err(StorageError::QuotaExceeded { .. })
    ));
    assert!(m.manifest_by_tag(&r, "v2").await.unwrap().is_none());
    assert_eq!(
        m.usage("tool-q").await.unwrap().unwrap().used_bytes,
        u.used_bytes
    );
    // Mounting is checked too.
    m.project_create("tool-src", true, None, false)
        .await
        .unwrap();
    let src = repo("tool-src/x");
    let src_id = m.ensure_repo(&src).await.unwrap();
    let far = (Digest::sha256_of(b"far"), 500);
    link(m, "tool-src", src_id, &far.0, far.1).await.unwrap();
    assert!(matches!(
        m.mount_blob(id, "tool-q", &src, &far.0).await,
        Err(StorageError::QuotaExceeded { .. })
    ));
    m.set_quota("tool-q", None).await.unwrap();
    assert_eq!(
        m.mount_blob(id, "tool-q", &src, &far.0).await.unwrap(),
        Some(500)
    );
    // Expired reservations are not held.
    assert_eq!(m.expire_reservations().await.unwrap(), 0);
}

async fn gc_removes_only_what_nothing_holds(m: &Metadata) {
    use slipway_storage::blob::fs::FsBlobStore;
    use slipway_storage::gc::{GcOptions, collect};
    let dir = tempfile::tempdir().unwrap();
    let store = slipway_storage::BlobStore::Fs(FsBlobStore::open(dir.path()).unwrap());
    m.project_create("tool-g", true, None, false).await.unwrap();
    let r = repo("tool-g/web");
    let keep_cfg = Bytes::from_static(b"keep-config");
    let drop_layer = Bytes::from_static(b"drop-layer");
    let (kd, dd) = (Digest::sha256_of(&keep_cfg), Digest::sha256_of(&drop_layer));
    store.put(&kd, keep_cfg.clone()).await.unwrap();
    store.put(&dd, drop_layer.clone()).await.unwrap();
    let kept = push(m, &r, &(kd.clone(), keep_cfg.len() as u64), &[], Some("v1"))
        .await
        .unwrap();
    let id = m.ensure_repo(&r).await.unwrap();
    link(m, "tool-g", id, &dd, drop_layer.len() as u64)
        .await
        .unwrap();
    let opts = |grace_ms: u64| GcOptions {
        dry_run: false,
        blob_grace: std::time::Duration::from_millis(grace_ms),
        untagged_grace: std::time::Duration::from_secs(3600),
        keep_default: 10,
        project: None,
        retention: false,
    };
    // Within the grace period, or while reserved, nothing goes.
    let report = collect(m, &store, &opts(3_600_000)).await.unwrap();
    assert!(report.blobs.is_empty());
    let report = collect(m, &store, &opts(0)).await.unwrap();
    assert!(
        report.blobs.is_empty(),
        "the unreferenced blob is still reserved"
    );
    // Reservations expire (simulated: the project drops the link).
    m.unlink_blob(&r, &dd).await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let report = collect(m, &store, &opts(1)).await.unwrap();
    assert_eq!(
        report
            .blobs
            .iter()
            .map(|b| b.digest.clone())
            .collect::<Vec<_>>(),
        vec![dd.to_string()]
    );
    assert_eq!(store.stat(&dd).await.unwrap(), None, "the bytes went");
    assert_eq!(m.blob_size(&dd).await.unwrap(), None, "and the row");
    assert!(
        store.stat(&kd).await.unwrap().is_some(),
        "a referenced blob stays"
    );
    assert_eq!(
        m.manifest_by_tag(&r, "v1").await.unwrap().unwrap().digest,
        kept.digest
    );
    // A claimed blob (a push in flight) is not collected.
    m.blob_claim(&dd, drop_layer.len() as u64).await.unwrap();
    let report = collect(m, &store, &opts(60_000)).await.unwrap();
    assert!(report.blobs.is_empty());
}

async fn retention_keeps_the_newest_and_live_referrers(m: &Metadata) {
    m.project_create("tool-r", true, None, false).await.unwrap();
    let r = repo("tool-r/web");
    let mut images = Vec::new();
    for i in 0..5u8 {
        let man = push(
            m,
            &r,
            &blob(20 + i),
            &[&blob(30)],
            Some(&format!("build-{i}")),
        )
        .await
        .unwrap();
        images.push(man);
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
    // A signature (untagged referrer) of the newest image.
    let id = m.ensure_repo(&r).await.unwrap();
    let sig_cfg = blob(40);
    link(m, "tool-r", id, &sig_cfg.0, sig_cfg.1).await.unwrap();
    let mut sig = image(&sig_cfg, &[], None);
    sig.subject = Some(images[4].digest.clone());
    m.manifest_put(&r, id, &sig).await.unwrap();
    // An untagged leftover.
    let leftover = push(m, &r, &blob(41), &[], None).await.unwrap();

    let going = m.retention_candidates(Some("tool-r"), 2, 0).await.unwrap();
    let digests: Vec<&str> = going.iter().map(|g| g.digest.as_str()).collect();
    for old in &images[..3] {
        assert!(
            digests.contains(&old.digest.as_str()),
            "old build {} goes",
            old.digest
        );
    }
    for new in &images[3..] {
        assert!(
            !digests.contains(&new.digest.as_str()),
            "the newest two stay"
        );
    }
    assert!(
        !digests.contains(&sig.digest.as_str()),
        "a live referrer stays"
    );
    assert!(
        digests.contains(&leftover.digest.as_str()),
        "an untagged leftover goes"
    );
    assert!(going.iter().any(|g| g.tags == ["build-0"]));
    // With a long grace, untagged manifests stay.
    let going = m
        .retention_candidates(Some("tool-r"), 2, 3_600_000)
        .await
        .unwrap();
    assert!(!going.iter().any(|g| g.digest == leftover.digest.as_str()));
    // The project's own setting wins over the default.
    m.set_retention("tool-r", Some(4)).await.unwrap();
    let going = m
        .retention_candidates(Some("tool-r"), 2, 3_600_000)
        .await
        .unwrap();
    assert_eq!(going.len(), 1);
}

contract!(the_build_queue);
contract!(triggers_deliveries_and_retention);

fn build_record(id: &str, project: &str) -> slipway_storage::meta::BuildRecord {
    slipway_storage::meta::BuildRecord {
        id: id.into(),
        project: project.into(),
        image_name: "web".into(),
        source_url: "https://example.org/app.git".into(),
        git_ref: "main".into(),
        git_commit: "0".repeat(40),
        builder: "platform/builder:bookworm".into(),
        env: "{}".into(),
        state: "pending".into(),
        reason: None,
        image_digest: None,
        requested_by: "admin".into(),
        created_at: slipway_storage::meta::now_ms(),
        started_at: None,
        finished_at: None,
        worker: None,
        cancel_requested: false,
        ..Default::default()
    }
}

async fn the_build_queue(m: &Metadata) {
    m.project_create("tool-a", true, None, false).await.unwrap();
    m.project_create("tool-b", true, None, false).await.unwrap();
    m.build_insert(&build_record("a1", "tool-a"), 2)
        .await
        .unwrap();
    m.build_insert(&build_record("a2", "tool-a"), 2)
        .await
        .unwrap();
    assert!(
        matches!(
            m.build_insert(&build_record("a3", "tool-a"), 2).await,
            Err(StorageError::Conflict(_))
        ),
        "two at most"
    );
    m.build_insert(&build_record("b1", "tool-b"), 2)
        .await
        .unwrap();
    // One running build per project: a1, then b1 (a2 waits), then nothing.
    let first = m.build_claim("w1", 1).await.unwrap().unwrap();
    assert_eq!((first.id.as_str(), first.state.as_str()), ("a1", "running"));
    let second = m.build_claim("w2", 1).await.unwrap().unwrap();
    assert_eq!(second.id, "b1");
    assert!(m.build_claim("w1", 1).await.unwrap().is_none());
    // Logs in order.
    m.build_log_append(
        "a1",
        1,
        &[
            ("detect".into(), "one".into()),
            ("detect".into(), "two".into()),
        ],
    )
    .await
    .unwrap();
    m.build_log_append("a1", 3, &[("build".into(), "three".into())])
        .await
        .unwrap();
    let lines: Vec<String> = m
        .build_log("a1", 1, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(lines, ["two", "three"]);
    // Cancel: pending at once, running on the next heartbeat.
    assert!(m.build_cancel("a2").await.unwrap());
    assert_eq!(
        m.build_by_id("a2").await.unwrap().unwrap().state,
        "cancelled"
    );
    assert!(!m.build_heartbeat("a1").await.unwrap());
    assert!(m.build_cancel("a1").await.unwrap());
    assert!(
        m.build_heartbeat("a1").await.unwrap(),
        "the worker learns it should stop"
    );
    assert!(
        m.build_finish("a1", "cancelled", Some("cancelled"), None)
            .await
            .unwrap()
    );
    assert!(
        !m.build_finish("a1", "succeeded", None, Some("sha256:x"))
            .await
            .unwrap(),
        "a finished build stays as it ended"
    );
    assert!(!m.build_cancel("a1").await.unwrap());
    // A worker that stops beating: its build fails with a reason — unless
    // the worker is the caller's own (alive while the caller runs).
    let b1_worker = m.build_get("tool-b", "b1").await.unwrap().unwrap().worker;
    let own = vec![b1_worker.clone().unwrap()];
    // b1 holds quota for its export; whoever ends it releases that.
    m.build_reserve("tool-b", "b1", 1000, 3_600_000)
        .await
        .unwrap();
    let reserved = |m: &Metadata| {
        let m = m.clone();
        async move { m.usage("tool-b").await.unwrap().unwrap().reserved_bytes }
    };
    assert_eq!(reserved(m).await, 1000);
    assert_eq!(
        m.builds_fail_stale(
            slipway_storage::meta::now_ms() + 1,
            &own,
            "the worker stopped"
        )
        .await
        .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        m.builds_fail_stale(
            slipway_storage::meta::now_ms() + 1,
            &[],
            "the worker stopped"
        )
        .await
        .unwrap(),
        vec!["b1".to_string()]
    );
    let b1 = m.build_get("tool-b", "b1").await.unwrap().unwrap();
    assert_eq!(
        (b1.state.as_str(), b1.reason.as_deref()),
        ("failed", Some("the worker stopped"))
    );
    assert_eq!(reserved(m).await, 0, "a failed build holds no quota");
    // A process that restarts fails its builds, and their reservations go.
    m.build_insert(&build_record("b2", "tool-b"), 2)
        .await
        .unwrap();
    let b2 = m.build_claim("w9", 1).await.unwrap().unwrap();
    assert_eq!(b2.id, "b2");
    m.build_reserve("tool-b", "b2", 500, 3_600_000)
        .await
        .unwrap();
    assert_eq!(reserved(m).await, 500);
    assert_eq!(
        m.builds_fail_worker(b2.worker.as_deref().unwrap(), "restarted")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        reserved(m).await,
        0,
        "a restart's failed builds hold no quota"
    );
    assert!(
        m.build_get("tool-a", "b1").await.unwrap().is_none(),
        "builds are per project"
    );
    let list: Vec<String> = m
        .builds("tool-a", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(list.len(), 2);
    assert!(m.build_delete("tool-a", "a1").await.unwrap());
    assert!(m.build_log("a1", 0, 10).await.unwrap().is_empty());
    // Tokens and approved builders.
    m.build_token_create("tool-a", "ci", "$h").await.unwrap();
    assert!(matches!(
        m.build_token_create("tool-a", "ci", "$h").await,
        Err(StorageError::Conflict(_))
    ));
    assert_eq!(m.build_tokens("tool-a").await.unwrap().len(), 1);
    assert!(m.build_token_delete("tool-a", "ci").await.unwrap());
    m.builder_approve("platform/builder:tiny", "admin")
        .await
        .unwrap();
    assert!(
        m.builder_is_approved("platform/builder:tiny")
            .await
            .unwrap()
    );
    assert!(m.builder_revoke("platform/builder:tiny").await.unwrap());
    assert!(
        !m.builder_is_approved("platform/builder:tiny")
            .await
            .unwrap()
    );
}

contract!(rebase_commits_like_a_push);

/// A rebase of `old` in `repo` onto `base` layers, keeping `app` layers;
/// the config `config` is claimed (stored) but not linked, as the
/// rebaser leaves it before committing.
async fn rebase_write(
    m: &Metadata,
    repo: &RepoName,
    old: &Digest,
    config: &(Digest, u64),
    base: &[&(Digest, u64)],
    app: &[&(Digest, u64)],
    id: &str,
) -> slipway_storage::meta::RebaseWrite {
    m.blob_claim(&config.0, config.1).await.unwrap();
    let layers: Vec<&(Digest, u64)> = base.iter().chain(app.iter()).copied().collect();
    let manifest = image(config, &layers, Some(id));
    slipway_storage::meta::RebaseWrite {
        repo: repo.clone(),
        repo_id: m.repo_id(repo).await.unwrap().unwrap(),
        old_digest: old.clone(),
        manifest,
        config: config.0.clone(),
        link: base.iter().map(|b| b.0.clone()).collect(),
        build: slipway_storage::meta::BuildRecord {
            state: "succeeded".into(),
            requested_by: "builder".into(),
            ..build_record(id, repo.project())
        },
        log: vec![format!("rebased {repo}@{old}")],
        audit: NewAuditEntry {
            principal: "builder".into(),
            action: "image.rebase".into(),
            project: Some(repo.project().into()),
            target: Some(format!("{repo}@{old}")),
            detail: Some("{}".into()),
            remote_addr: None,
        },
    }
}

async fn rebase_commits_like_a_push(m: &Metadata) {
    use slipway_storage::meta::RebaseCommitted;
    m.project_create("platform", true, None, true)
        .await
        .unwrap();
    m.project_create("tool-a", true, None, false).await.unwrap();
    let run = repo("platform/run");
    let (base1, base2, own) = (blob(1), blob(2), blob(3));
    push(m, &run, &blob(9), &[&base1], Some("v1"))
        .await
        .unwrap();
    push(m, &run, &blob(19), &[&base2], Some("v2"))
        .await
        .unwrap();
    let web = repo("tool-a/web");
    let app = push(m, &web, &blob(10), &[&base1, &own], Some("latest"))
        .await
        .unwrap();
    let web_id = m.repo_id(&web).await.unwrap().unwrap();
    m.manifest_put(
        &web,
        web_id,
        &NewManifest {
            tag: Some("b1".into()),
            ..app.clone()
        },
    )
    .await
    .unwrap();
    // Another image of the project that stays where it is.
    let worker = repo("tool-a/worker");
    push(m, &worker, &blob(11), &[&base1], Some("latest"))
        .await
        .unwrap();
    let used_before = used(m, "tool-a").await;

    let config = blob(30);
    let w = rebase_write(m, &web, &app.digest, &config, &[&base2], &[&own], "r1").await;
    assert_eq!(
        m.repo_blob_size(&web, &config.0).await.unwrap(),
        None,
        "a claimed config is not visible before the commit"
    );
    let out = m
        .rebase_commit("tool-a", std::slice::from_ref(&w))
        .await
        .unwrap();
    let [RebaseCommitted::Done { tags, added_bytes }] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(tags, &["b1", "latest", "r1"]);
    // The config and the manifest are all it adds; the base is free.
    let added = config.1 + w.manifest.body.len() as u64;
    assert_eq!(*added_bytes, added);
    assert_eq!(used(m, "tool-a").await, used_before + added);
    for tag in ["latest", "b1", "r1"] {
        let got = m.manifest_by_tag(&web, tag).await.unwrap().unwrap();
        assert_eq!(got.digest, w.manifest.digest, "{tag}");
    }
    assert_eq!(
        m.repo_blob_size(&web, &base2.0).await.unwrap(),
        Some(base2.1),
        "the new base is linked, not copied"
    );
    assert!(
        m.manifest_by_digest(&web, &app.digest)
            .await
            .unwrap()
            .is_some(),
        "the old manifest stays pullable by digest"
    );
    assert_eq!(
        m.manifest_by_tag(&worker, "latest")
            .await
            .unwrap()
            .unwrap()
            .digest,
        push_digest(&blob(11), &[&base1])
    );
    assert_eq!(m.build_kind("r1").await.unwrap().as_deref(), Some("rebase"));
    let b = m.build_get("tool-a", "r1").await.unwrap().unwrap();
    assert_eq!(
        (b.state.as_str(), b.image_digest.as_deref()),
        ("succeeded", Some(w.manifest.digest.as_str()))
    );
    assert_eq!(m.build_log("r1", 0, 10).await.unwrap().len(), 1);
    let audit = m
        .audit_list(&AuditQuery {
            action: Some("image.rebase".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].principal, "builder");
    assert!(m.recompute(false).await.unwrap().is_empty());

    // The same rebase again: the tags left the old manifest, nothing moves.
    let again = rebase_write(m, &web, &app.digest, &blob(31), &[&base2], &[&own], "r2").await;
    let out = m.rebase_commit("tool-a", &[again]).await.unwrap();
    assert!(matches!(out[..], [RebaseCommitted::Moved]), "{out:?}");
    assert!(m.build_get("tool-a", "r2").await.unwrap().is_none());
    assert_eq!(used(m, "tool-a").await, used_before + added);

    // In one batch: a write whose base layer does not exist is refused,
    // alone; the next one commits.
    let worker_old = push_digest(&blob(11), &[&base1]);
    let ghost = blob(40);
    let bad = rebase_write(m, &worker, &worker_old, &blob(32), &[&ghost], &[], "r3").await;
    let good = rebase_write(m, &worker, &worker_old, &blob(33), &[&base2], &[], "r4").await;
    let out = m
        .rebase_commit("tool-a", &[bad, good.clone()])
        .await
        .unwrap();
    assert!(
        matches!(
            &out[..],
            [
                RebaseCommitted::Refused(StorageError::ManifestBlobUnknown(_)),
                RebaseCommitted::Done { .. }
            ]
        ),
        "{out:?}"
    );
    assert!(m.build_get("tool-a", "r3").await.unwrap().is_none());
    assert_eq!(
        m.manifest_by_tag(&worker, "latest")
            .await
            .unwrap()
            .unwrap()
            .digest,
        good.manifest.digest
    );
    assert!(m.recompute(false).await.unwrap().is_empty());

    // A project at its quota is still rebased: the config and manifest are
    // counted, the project is then over its quota.
    let full = used(m, "tool-a").await;
    m.set_quota("tool-a", Some(full)).await.unwrap();
    let web_now = m.manifest_by_tag(&web, "latest").await.unwrap().unwrap();
    let w = rebase_write(
        m,
        &web,
        &web_now.digest,
        &blob(34),
        &[&base1],
        &[&own],
        "r5",
    )
    .await;
    let out = m.rebase_commit("tool-a", &[w]).await.unwrap();
    assert!(matches!(out[..], [RebaseCommitted::Done { .. }]), "{out:?}");
    assert!(used(m, "tool-a").await > full);
    // …but layers that are not free are checked as for any push.
    m.project_create("tool-x", true, None, false).await.unwrap();
    let paid = blob(41);
    push(m, &repo("tool-x/run"), &blob(42), &[&paid], Some("v1"))
        .await
        .unwrap();
    let web_now = m.manifest_by_tag(&web, "latest").await.unwrap().unwrap();
    let w = rebase_write(m, &web, &web_now.digest, &blob(35), &[&paid], &[&own], "r6").await;
    let used_full = used(m, "tool-a").await;
    let out = m.rebase_commit("tool-a", &[w]).await.unwrap();
    assert!(
        matches!(
            out[..],
            [RebaseCommitted::Refused(StorageError::QuotaExceeded { .. })]
        ),
        "{out:?}"
    );
    assert_eq!(used(m, "tool-a").await, used_full);
    assert!(m.recompute(false).await.unwrap().is_empty());

    // Tagged images, page by page, one entry per (repository, manifest).
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = m
            .tagged_images(after, 1, Some("tool-a"), None)
            .await
            .unwrap();
        for i in &page.images {
            seen.push((i.repository.clone(), i.tags.clone()));
        }
        match page.next {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            (
                "tool-a/web".to_owned(),
                vec!["b1".to_owned(), "latest".into(), "r1".into(), "r5".into()]
            ),
            (
                "tool-a/worker".to_owned(),
                vec!["latest".to_owned(), "r4".into()]
            ),
        ]
    );
    assert_eq!(m.repo_manifest_digests(&run).await.unwrap().len(), 2);
}

/// The digest `image` gives (without a tag).
fn push_digest(config: &(Digest, u64), layers: &[&(Digest, u64)]) -> Digest {
    image(config, layers, None).digest
}

contract!(rebase_never_moves_a_tag_that_moved);

/// A build or push that moved a tag between the rebaser's read and its
/// commit wins: only the tags still on the rebased manifest move, and a
/// tag the write names is added, never taken from another manifest.
async fn rebase_never_moves_a_tag_that_moved(m: &Metadata) {
    use slipway_storage::meta::RebaseCommitted;
    m.project_create("platform", true, None, true)
        .await
        .unwrap();
    m.project_create("tool-a", true, None, false).await.unwrap();
    let run = repo("platform/run");
    let (base1, base2, own) = (blob(1), blob(2), blob(3));
    push(m, &run, &blob(9), &[&base1], Some("v1"))
        .await
        .unwrap();
    push(m, &run, &blob(19), &[&base2], Some("v2"))
        .await
        .unwrap();
    let web = repo("tool-a/web");
    let app = push(m, &web, &blob(10), &[&base1, &own], Some("latest"))
        .await
        .unwrap();
    let web_id = m.repo_id(&web).await.unwrap().unwrap();
    m.manifest_put(
        &web,
        web_id,
        &NewManifest {
            tag: Some("stable".into()),
            ..app.clone()
        },
    )
    .await
    .unwrap();
    // The rebaser reads the image here; then a build moves `latest`.
    let mut w = rebase_write(m, &web, &app.digest, &blob(30), &[&base2], &[&own], "r1").await;
    w.manifest.tag = Some("latest".into());
    let build = push(m, &web, &blob(11), &[&base1, &own], Some("latest"))
        .await
        .unwrap();
    let out = m.rebase_commit("tool-a", &[w.clone()]).await.unwrap();
    let [RebaseCommitted::Done { tags, .. }] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(tags, &["stable"]);
    let at = |tag: &'static str| {
        let web = web.clone();
        async move { m.manifest_by_tag(&web, tag).await.unwrap().unwrap().digest }
    };
    assert_eq!(at("latest").await, build.digest, "the build's tag stays");
    assert_eq!(at("stable").await, w.manifest.digest);
    assert!(m.recompute(false).await.unwrap().is_empty());
}

contract!(rebase_commits_several_projects_at_once);

/// Several projects' rebases in one transaction: each project's results in
/// the order given, usage exact.
async fn rebase_commits_several_projects_at_once(m: &Metadata) {
    use slipway_storage::meta::RebaseCommitted;
    m.project_create("platform", true, None, true)
        .await
        .unwrap();
    let run = repo("platform/run");
    let (base1, base2) = (blob(1), blob(2));
    push(m, &run, &blob(9), &[&base1], Some("v1"))
        .await
        .unwrap();
    push(m, &run, &blob(19), &[&base2], Some("v2"))
        .await
        .unwrap();
    let mut batches = Vec::new();
    for (project, own, config, id) in [("tool-b", 3, 30, "rb"), ("tool-a", 4, 31, "ra")] {
        m.project_create(project, true, None, false).await.unwrap();
        let web = repo(&format!("{project}/web"));
        let own = blob(own);
        let app = push(m, &web, &blob(config + 10), &[&base1, &own], Some("latest"))
            .await
            .unwrap();
        let w = rebase_write(m, &web, &app.digest, &blob(config), &[&base2], &[&own], id).await;
        batches.push((project.to_owned(), vec![w]));
    }
    let out = m.rebase_commit_projects(&batches).await.unwrap();
    assert_eq!(out.len(), 2);
    for ((project, writes), results) in batches.iter().zip(&out) {
        assert!(
            matches!(results[..], [RebaseCommitted::Done { .. }]),
            "{project}: {results:?}"
        );
        let web = repo(&format!("{project}/web"));
        assert_eq!(
            m.manifest_by_tag(&web, "latest")
                .await
                .unwrap()
                .unwrap()
                .digest,
            writes[0].manifest.digest
        );
    }
    assert!(m.recompute(false).await.unwrap().is_empty());
}

/// A blob the project already pays for (referenced by one of its
/// manifests, or reserved by an upload or mount not yet in a manifest), or
/// a base project's, costs nothing: known before the body is read
/// (`blob_budget`), at completion (`check_blob`) and when linked
/// (`blob_complete`), even in a full project. A mount without `from` finds
/// the blob in the project's own repositories only.
async fn re_uploads_cost_nothing(m: &Metadata) {
    m.project_create("platform", true, None, true)
        .await
        .unwrap();
    m.project_create("tool-q", true, Some(1200), false)
        .await
        .unwrap();
    m.project_create("tool-other", true, None, false)
        .await
        .unwrap();
    let base = repo("platform/run");
    let base_id = m.ensure_repo(&base).await.unwrap();
    let layer = (Digest::sha256_of(b"base layer"), 5000);
    link(m, "platform", base_id, &layer.0, layer.1)
        .await
        .unwrap();
    let cfg = (Digest::sha256_of(b"base config"), 10);
    link(m, "platform", base_id, &cfg.0, cfg.1).await.unwrap();
    m.manifest_put(&base, base_id, &image(&cfg, &[&layer], Some("v1")))
        .await
        .unwrap();

    let a = repo("tool-q/a");
    let a_id = m.ensure_repo(&a).await.unwrap();
    let own = (Digest::sha256_of(b"own layer"), 900);
    let fresh = (Digest::sha256_of(b"fresh"), 350);
    use slipway_storage::meta::BlobBudget;
    assert_eq!(
        m.blob_budget("tool-q", &own.0).await.unwrap(),
        BlobBudget::Room(Some(1200))
    );
    link(m, "tool-q", a_id, &own.0, own.1).await.unwrap();
    // Reserved in tool-q/a: free for tool-q/b, although only 300 are left.
    assert_eq!(
        m.blob_budget("tool-q", &own.0).await.unwrap(),
        BlobBudget::Free { size: Some(900) }
    );
    assert_eq!(
        m.blob_budget("tool-q", &fresh.0).await.unwrap(),
        BlobBudget::Room(Some(300))
    );
    m.check_blob("tool-q", &own.0, own.1).await.unwrap();
    assert!(matches!(
        m.check_blob("tool-q", &fresh.0, fresh.1).await,
        Err(StorageError::QuotaExceeded { needed: 350, .. })
    ));
    let b = repo("tool-q/b");
    let b_id = m.ensure_repo(&b).await.unwrap();
    link(m, "tool-q", b_id, &own.0, own.1).await.unwrap();
    let u = m.usage("tool-q").await.unwrap().unwrap();
    assert_eq!((u.used_bytes, u.reserved_bytes), (0, 900), "reserved once");
    // Referenced by a manifest of tool-q/a: still free in tool-q/c.
    let c1 = (Digest::sha256_of(b"c1"), 20);
    link(m, "tool-q", a_id, &c1.0, c1.1).await.unwrap();
    let man = image(&c1, &[&own], Some("v1"));
    m.manifest_put(&a, a_id, &man).await.unwrap();
    let used = 920 + man.body.len() as u64;
    m.set_quota("tool-q", Some(used)).await.unwrap();
    let c = repo("tool-q/c");
    let c_id = m.ensure_repo(&c).await.unwrap();
    assert_eq!(
        m.blob_budget("tool-q", &own.0).await.unwrap(),
        BlobBudget::Free { size: Some(900) }
    );
    link(m, "tool-q", c_id, &own.0, own.1).await.unwrap();
    // The base project's layer: free, in a project with no room at all.
    assert_eq!(
        m.blob_budget("tool-q", &layer.0).await.unwrap(),
        BlobBudget::Free { size: Some(5000) }
    );
    m.check_blob("tool-q", &layer.0, layer.1).await.unwrap();
    link(m, "tool-q", c_id, &layer.0, layer.1).await.unwrap();
    // New bytes: refused, nothing visible.
    assert!(matches!(
        link(m, "tool-q", c_id, &fresh.0, fresh.1).await,
        Err(StorageError::QuotaExceeded { .. })
    ));
    assert_eq!(m.repo_blob_size(&c, &fresh.0).await.unwrap(), None);
    let u = m.usage("tool-q").await.unwrap().unwrap();
    assert_eq!((u.used_bytes, u.reserved_bytes), (used, 0));
    // A mount without `from`: from the project's own repositories only.
    let d = repo("tool-q/d");
    let d_id = m.ensure_repo(&d).await.unwrap();
    assert_eq!(
        m.mount_blob_in_project(d_id, "tool-q", &own.0)
            .await
            .unwrap(),
        Some(900)
    );
    assert_eq!(m.repo_blob_size(&d, &own.0).await.unwrap(), Some(900));
    let elsewhere = (Digest::sha256_of(b"elsewhere"), 30);
    let o = repo("tool-other/x");
    let o_id = m.ensure_repo(&o).await.unwrap();
    link(m, "tool-other", o_id, &elsewhere.0, elsewhere.1)
        .await
        .unwrap();
    assert_eq!(
        m.mount_blob_in_project(d_id, "tool-q", &elsewhere.0)
            .await
            .unwrap(),
        None,
        "another project's blob is not found"
    );
    assert!(m.recompute(false).await.unwrap().is_empty());
}

async fn triggers_deliveries_and_retention(m: &Metadata) {
    use slipway_storage::meta::{Delivery, Retention, Trigger};
    m.project_create("tool-a", true, None, false).await.unwrap();
    let t = m
        .trigger_create(&Trigger {
            id: "t1".into(),
            project: "tool-a".into(),
            source_url: "https://example.org/app.git".into(),
            ref_pattern: "main".into(),
            image_name: "web".into(),
            env: "{}".into(),
            hook_secret: "sealed".into(),
            poll_interval_secs: Some(60),
            poll_next_at: Some(0),
            created_by: "admin".into(),
            created_at: slipway_storage::meta::now_ms(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(t.is_default, "a project's first trigger is its default");

    // A delivery id is recorded once: a replay writes nothing.
    let d = Delivery {
        trigger_id: "t1".into(),
        delivery_id: Some("uuid-1".into()),
        at: 1,
        provider: "github".into(),
        event: "push".into(),
        result: "received".into(),
        ..Default::default()
    };
    let first = m.delivery_record(&d).await.unwrap().expect("recorded");
    assert_eq!(m.delivery_record(&d).await.unwrap(), None);
    let other = m
        .delivery_record(&Delivery {
            delivery_id: Some("uuid-2".into()),
            ..d.clone()
        })
        .await
        .unwrap()
        .expect("another id is recorded");
    assert!(other > first);
    m.delivery_result(first, "queued", "build b1", Some("b1"))
        .await
        .unwrap();
    // A delivery that failed may be delivered again (the forge's redelivery
    // keeps its id); one that was handled may not.
    let failed = m
        .delivery_record(&Delivery {
            delivery_id: Some("uuid-3".into()),
            ..d.clone()
        })
        .await
        .unwrap()
        .unwrap();
    m.delivery_result(failed, "failed", "no build: over quota", None)
        .await
        .unwrap();
    let again = Delivery {
        delivery_id: Some("uuid-3".into()),
        at: 2,
        ..d.clone()
    };
    assert_eq!(m.delivery_record(&again).await.unwrap(), Some(failed));
    assert_eq!(m.delivery_record(&again).await.unwrap(), None);
    m.delivery_result(failed, "ignored", "", None)
        .await
        .unwrap();
    let listed = m.deliveries("t1", 10).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[2].result, "queued");
    assert_eq!(listed[2].build_id.as_deref(), Some("b1"));
    assert_eq!(
        m.delivery_commit_seen("t1", "", "c9", 0).await.unwrap(),
        None
    );

    // A due poll is leased to one owner at a time.
    let a = m
        .triggers_poll_claim("replica-a", 60_000, 10)
        .await
        .unwrap();
    let b = m
        .triggers_poll_claim("replica-b", 60_000, 10)
        .await
        .unwrap();
    assert_eq!(a.len(), 1);
    assert!(b.is_empty(), "a leased trigger is not leased again");
    m.trigger_poll_done("t1", "replica-b", Some("c0"), 0)
        .await
        .unwrap();
    assert_eq!(
        m.trigger_get("t1").await.unwrap().unwrap().poll_commit,
        None,
        "only the lease's owner ends the poll"
    );
    m.trigger_poll_done("t1", "replica-a", Some("c1"), 0)
        .await
        .unwrap();
    assert_eq!(
        m.trigger_get("t1")
            .await
            .unwrap()
            .unwrap()
            .poll_commit
            .as_deref(),
        Some("c1")
    );
    assert_eq!(
        m.triggers_poll_claim("replica-b", 60_000, 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // A trigger's newer build replaces its pending one.
    let mut b1 = build_record("b1", "tool-a");
    b1.trigger_id = Some("t1".into());
    b1.image_name = "queued".into();
    b1.requested_by = "trigger:t1 (github delivery d1)".into();
    // A build someone asked for by hand is not replaced.
    let mut by_hand = build_record("h1", "tool-a");
    by_hand.trigger_id = Some("t1".into());
    by_hand.image_name = "queued".into();
    m.build_insert(&by_hand, 5).await.unwrap();
    m.build_insert(&b1, 5).await.unwrap();
    let b2 = slipway_storage::meta::BuildRecord {
        id: "b2".into(),
        ..b1.clone()
    };
    let q = m.build_insert(&b2, 5).await.unwrap();
    assert_eq!(q.replaced, vec!["b1".to_owned()]);
    assert_eq!(
        m.build_get("tool-a", "b1").await.unwrap().unwrap().state,
        "cancelled"
    );

    // Retention: the newest 4 succeeded and 2 failed of the image stay.
    for k in 0..10 {
        let mut b = build_record(&format!("r{k:02}"), "tool-a");
        b.created_at = 1_000 + k;
        b.state = if k % 3 == 0 { "failed" } else { "succeeded" }.into();
        b.image_digest = (b.state == "succeeded").then(|| format!("sha256:{k:064}"));
        m.build_record_ended(&b).await.unwrap();
    }
    let removed = m
        .builds_prune(
            "tool-a",
            "web",
            Retention {
                keep_succeeded: 4,
                keep_failed: 2,
            },
        )
        .await
        .unwrap();
    let left: Vec<String> = m
        .builds("tool-a", 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|b| b.id.starts_with('r'))
        .map(|b| b.id)
        .collect();
    assert_eq!(left, ["r09", "r08", "r07", "r06", "r05", "r04"]);
    let mut removed = removed;
    removed.sort();
    assert_eq!(removed, ["r00", "r01", "r02", "r03"]);

    // Reuses count as successes, but the build that made their image stays
    // while they do.
    let mut maker = build_record("m0", "tool-a");
    maker.image_name = "reused".into();
    maker.created_at = 5_000;
    maker.state = "succeeded".into();
    maker.image_digest = Some(format!("sha256:{:064}", 7));
    m.build_record_ended(&maker).await.unwrap();
    for k in 1..=3 {
        m.build_record_ended(&slipway_storage::meta::BuildRecord {
            id: format!("m{k}"),
            created_at: 5_000 + k,
            state: "reused".into(),
            ..maker.clone()
        })
        .await
        .unwrap();
    }
    let keep_two = Retention {
        keep_succeeded: 2,
        keep_failed: 2,
    };
    let mut removed = m.builds_prune("tool-a", "reused", keep_two).await.unwrap();
    removed.sort();
    assert_eq!(removed, ["m1"]);
}

contract!(people_roles_and_personal_tokens);
/// People named before they sign in, roles from two sources (the strongest
/// wins), the directory's rows replaced at each look while the admin's
/// stay, and personal tokens.
async fn people_roles_and_personal_tokens(m: &Metadata) {
    use slipway_storage::meta::{PersonalToken, Role, SOURCE_ADMIN, SOURCE_DIRECTORY};
    m.project_create("tool-x", false, None, false)
        .await
        .unwrap();
    m.project_create("tool-y", false, None, false)
        .await
        .unwrap();
    // The admin names alice as a maintainer of tool-x before she signs in.
    assert!(
        m.membership_grant("alice", "tool-x", Role::Maintainer, SOURCE_ADMIN)
            .await
            .unwrap()
    );
    let alice = m.person_get("alice").await.unwrap().unwrap();
    assert_eq!(
        (
            alice.created_by.as_str(),
            alice.is_admin,
            alice.last_sign_in
        ),
        ("admin", false, None)
    );
    assert!(
        !m.membership_grant("alice", "tool-none", Role::Guest, SOURCE_ADMIN)
            .await
            .unwrap(),
        "no membership of a project that does not exist"
    );
    assert_eq!(
        m.role_of("alice", "tool-x").await.unwrap(),
        Some(Role::Maintainer)
    );
    assert_eq!(m.role_of("alice", "tool-y").await.unwrap(), None);
    // The directory: guest of tool-x (weaker: the admin's grant wins),
    // developer of tool-y, and a group for a project that does not exist.
    let unknown = m
        .directory_sync(
            "alice",
            true,
            &[
                ("tool-x".into(), Role::Guest),
                ("tool-y".into(), Role::Developer),
                ("tool-gone".into(), Role::Maintainer),
            ],
            1000,
        )
        .await
        .unwrap();
    assert_eq!(unknown, vec!["tool-gone".to_string()]);
    assert_eq!(
        m.role_of("alice", "tool-x").await.unwrap(),
        Some(Role::Maintainer)
    );
    assert_eq!(
        m.role_of("alice", "tool-y").await.unwrap(),
        Some(Role::Developer)
    );
    let alice = m.person_get("alice").await.unwrap().unwrap();
    assert!(alice.is_admin);
    assert_eq!(alice.checked_at, Some(1000));
    assert_eq!(m.memberships_of("alice").await.unwrap().len(), 3);
    // Removed from the groups (and the admin group): the directory's rows
    // go, the admin's stay.
    m.directory_sync("alice", false, &[], 2000).await.unwrap();
    assert_eq!(m.role_of("alice", "tool-y").await.unwrap(), None);
    assert_eq!(
        m.role_of("alice", "tool-x").await.unwrap(),
        Some(Role::Maintainer)
    );
    assert!(!m.person_get("alice").await.unwrap().unwrap().is_admin);
    // The directory names bob, who has never signed in.
    m.directory_sync("bob", false, &[("tool-y".into(), Role::Maintainer)], 3000)
        .await
        .unwrap();
    let members: Vec<(String, Role, String)> = m
        .members_of("tool-y")
        .await
        .unwrap()
        .into_iter()
        .map(|x| (x.person, x.role, x.source))
        .collect();
    assert_eq!(
        members,
        vec![("bob".into(), Role::Maintainer, SOURCE_DIRECTORY.into())]
    );
    assert!(
        m.membership_revoke("alice", "tool-x", SOURCE_ADMIN)
            .await
            .unwrap()
    );
    assert!(
        !m.membership_revoke("alice", "tool-x", SOURCE_ADMIN)
            .await
            .unwrap()
    );
    assert_eq!(m.role_of("alice", "tool-x").await.unwrap(), None);
    // A disabled person has no role anywhere.
    assert!(m.person_set_disabled("bob", true).await.unwrap());
    assert_eq!(m.role_of("bob", "tool-y").await.unwrap(), None);
    assert!(m.person_set_disabled("bob", false).await.unwrap());
    assert!(!m.person_set_disabled("nobody", true).await.unwrap());
    assert_eq!(
        m.people()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect::<Vec<_>>(),
        vec!["alice", "bob"]
    );

    // Personal tokens: unique names per person, listed newest first,
    // revocable only by their person's id, gone with the project they are
    // limited to.
    let t = |id: &str, name: &str, project: Option<&str>, at: i64| PersonalToken {
        id: id.into(),
        person: "bob".into(),
        name: name.into(),
        secret_hash: format!("$argon2id$fake${id}"),
        project: project.map(str::to_owned),
        pull_only: project.is_some(),
        created_at: at,
        expires_at: Some(at + 90 * 86_400_000),
        last_used_at: None,
    };
    m.token_create(&t("p1", "laptop", None, 10)).await.unwrap();
    m.token_create(&t("p2", "ci", Some("tool-y"), 20))
        .await
        .unwrap();
    assert!(matches!(
        m.token_create(&t("p3", "laptop", None, 30)).await,
        Err(StorageError::Conflict(_))
    ));
    let listed: Vec<String> = m
        .tokens_of("bob")
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(listed, vec!["p2", "p1"]);
    let p2 = m.token_get("p2").await.unwrap().unwrap();
    assert_eq!(p2, t("p2", "ci", Some("tool-y"), 20));
    assert!(!p2.expired(20) && p2.expired(20 + 90 * 86_400_000));
    m.token_used("p1", 99).await.unwrap();
    assert_eq!(
        m.token_get("p1").await.unwrap().unwrap().last_used_at,
        Some(99)
    );
    assert!(
        !m.token_delete("alice", "p1").await.unwrap(),
        "only bob's own"
    );
    assert!(m.token_delete("bob", "p1").await.unwrap());
    assert!(m.token_get("p1").await.unwrap().is_none());
    m.project_delete("tool-y").await.unwrap();
    assert!(
        m.token_get("p2").await.unwrap().is_none(),
        "gone with its project"
    );
    assert!(m.members_of("tool-y").await.unwrap().is_empty());
}

contract!(fsck_tells_interrupted_uploads_from_lost_blobs);

/// A push killed between claiming a blob and publishing its bytes leaves a
/// row without bytes that nothing uses: once its claim window has passed,
/// fsck reports it as a leftover (not as a lost blob) and the repair
/// forgets the row. A linked blob without bytes is still lost data.
async fn fsck_tells_interrupted_uploads_from_lost_blobs(m: &Metadata) {
    use slipway_storage::blob::fs::FsBlobStore;
    use slipway_storage::fsck::{Finding, FsckOptions, check};
    let m = &m
        .clone()
        .with_claim_window(std::time::Duration::from_millis(1));
    let dir = tempfile::tempdir().unwrap();
    let store = slipway_storage::BlobStore::Fs(FsBlobStore::open(dir.path()).unwrap());
    m.project_create("tool-f", true, None, false).await.unwrap();
    let id = m.ensure_repo(&repo("tool-f/web")).await.unwrap();
    let (interrupted, lost) = (blob(71), blob(72));
    m.blob_claim(&interrupted.0, interrupted.1).await.unwrap();
    link(m, "tool-f", id, &lost.0, lost.1).await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let opts = |repair| FsckOptions {
        verify_digests: true,
        rate_bytes_per_sec: 0,
        repair,
        orphan_grace: std::time::Duration::from_secs(3600),
    };
    let report = check(m, &store, &opts(false)).await.unwrap();
    assert!(
        report.findings.contains(&Finding::Leftover {
            digest: interrupted.0.to_string()
        }),
        "{:?}",
        report.findings
    );
    assert!(
        report.findings.contains(&Finding::Missing {
            digest: lost.0.to_string(),
            size: lost.1
        }),
        "{:?}",
        report.findings
    );
    assert!(report.findings[0].sentence().starts_with("blob sha256:"));
    // A claim inside its window is a push under way: nothing to say.
    let fresh = m
        .clone()
        .with_claim_window(std::time::Duration::from_secs(600));
    fresh.blob_claim(&blob(73).0, blob(73).1).await.unwrap();
    let report = check(&fresh, &store, &opts(false)).await.unwrap();
    assert_eq!(report.findings.len(), 2, "{:?}", report.findings);
    // A leftover claimed again meanwhile is a push again: the repair
    // leaves it.
    assert!(!fresh.leftover_forget(blob(73).0.as_str()).await.unwrap());
    let repaired = check(m, &store, &opts(true)).await.unwrap();
    assert_eq!(repaired.leftovers_removed, vec![interrupted.0.to_string()]);
    assert_eq!(m.blob_size(&interrupted.0).await.unwrap(), None);
    assert_eq!(
        repaired
            .quarantined
            .iter()
            .map(|q| q.digest.clone())
            .collect::<Vec<_>>(),
        vec![lost.0.to_string()]
    );
    assert_eq!(m.blob_size(&blob(73).0).await.unwrap(), Some(blob(73).1));
}

contract!(sign_in_requests_are_used_once);

/// An OpenID Connect sign-in under way is taken once: a second use is a
/// replay, a late one expired, a state never written unknown — and two
/// replicas racing for the same state cannot both take it.
async fn sign_in_requests_are_used_once(m: &Metadata) {
    use slipway_storage::meta::{SignInRequest, SignInUse};
    let now = slipway_storage::meta::now_ms();
    let request = |hash: &str, expires_at: i64| SignInRequest {
        state_hash: hash.to_owned(),
        nonce: "n".into(),
        pkce_verifier: "v".into(),
        redirect_uri: "http://127.0.0.1:9/callback".into(),
        client: "cli".into(),
        remote: "127.0.0.1".into(),
        client_proof: Some("proof".into()),
        poll_every_ms: 5000,
        created_at: now,
        expires_at,
    };
    m.sign_in_request_create(&request("a", now + 60_000))
        .await
        .unwrap();
    m.sign_in_request_create(&request("late", now - 1))
        .await
        .unwrap();
    let (first, second) = tokio::join!(
        m.sign_in_request_use("a", now),
        m.sign_in_request_use("a", now)
    );
    let uses = [first.unwrap(), second.unwrap()];
    assert_eq!(
        uses.iter()
            .filter(|u| **u == SignInUse::Taken(request("a", now + 60_000)))
            .count(),
        1,
        "{uses:?}"
    );
    assert!(uses.contains(&SignInUse::AlreadyUsed), "{uses:?}");
    assert_eq!(
        m.sign_in_request_use("a", now).await.unwrap(),
        SignInUse::AlreadyUsed
    );
    assert_eq!(
        m.sign_in_request_use("late", now).await.unwrap(),
        SignInUse::Expired
    );
    assert_eq!(
        m.sign_in_request_use("never", now).await.unwrap(),
        SignInUse::Unknown
    );
    // Open sign-ins are counted, in all and by address.
    m.sign_in_request_create(&SignInRequest {
        remote: "10.0.0.1".into(),
        ..request("c", now + 60_000)
    })
    .await
    .unwrap();
    assert_eq!(
        m.sign_in_requests_open("10.0.0.1", now).await.unwrap(),
        (1, 1)
    );
    assert_eq!(
        m.sign_in_requests_open("127.0.0.1", now).await.unwrap(),
        (1, 0)
    );
    // A device sign-in is polled at most once per interval, whoever asks.
    let (a, b) = tokio::join!(
        m.sign_in_request_poll("c", now),
        m.sign_in_request_poll("c", now)
    );
    assert!(a.unwrap() ^ b.unwrap(), "one of two concurrent polls");
    assert!(!m.sign_in_request_poll("c", now + 4_000).await.unwrap());
    assert!(m.sign_in_request_poll("c", now + 5_000).await.unwrap());
    assert!(
        !m.sign_in_request_poll("a", now + 5_000).await.unwrap(),
        "used"
    );
    // An hour after they expire, rows are forgotten when the next is made.
    m.sign_in_request_create(&SignInRequest {
        created_at: now + 2 * 3600 * 1000,
        expires_at: now + 2 * 3600 * 1000 + 60_000,
        ..request("b", 0)
    })
    .await
    .unwrap();
    assert_eq!(
        m.sign_in_request_use("late", now).await.unwrap(),
        SignInUse::Unknown
    );
}
