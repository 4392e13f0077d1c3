-- Quotas (exact, deduplication-aware), reservations, and what online GC
-- needs to never race a push.

-- NULL: unlimited. `is_base`: a shared base project (`platform`): its blobs
-- cost nothing to the other projects. `warned_percent`: the highest usage
-- warning threshold recorded so far.
ALTER TABLE projects ADD COLUMN quota_bytes BIGINT;
ALTER TABLE projects ADD COLUMN is_base BIGINT NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN warned_percent BIGINT NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN retention_keep BIGINT;
-- The running count of the project's usage, kept in step with
-- `project_blobs` in the same transactions; `usage recompute` checks it.
ALTER TABLE projects ADD COLUMN used_bytes BIGINT NOT NULL DEFAULT 0;

-- The source of truth for usage: one row per (project, blob) referenced by
-- any manifest of the project (layers, configs, and manifests themselves),
-- written in the transaction that commits the manifest.
CREATE TABLE project_blobs (
    project  TEXT    NOT NULL,
    digest   TEXT    NOT NULL,
    size     BIGINT  NOT NULL,
    PRIMARY KEY (project, digest)
);
CREATE INDEX project_blobs_digest ON project_blobs (digest);
CREATE INDEX manifest_refs_digest ON manifest_refs (ref_digest);

-- Blobs uploaded or mounted into a project and not yet referenced by a
-- manifest: held against the quota until `expires_at`, never usage.
CREATE TABLE reservations (
    project     TEXT    NOT NULL,
    digest      TEXT    NOT NULL,
    bytes       BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    PRIMARY KEY (project, digest)
);
CREATE INDEX reservations_digest ON reservations (digest);

-- Bytes announced by a chunk being received, on top of `size`.
ALTER TABLE uploads ADD COLUMN pending BIGINT NOT NULL DEFAULT 0;

-- When a reference to the blob last appeared or went (upload, mount,
-- manifest commit or delete). GC's grace period counts from here, not from
-- the blob's age.
ALTER TABLE blobs ADD COLUMN last_ref_change BIGINT NOT NULL DEFAULT 0;
UPDATE blobs SET last_ref_change = created_at;

-- When a manifest lost its last tag (NULL while tagged): retention's clock.
ALTER TABLE manifests ADD COLUMN untagged_at BIGINT;

UPDATE manifests SET untagged_at = created_at
WHERE NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = manifests.repo_id AND t.digest = manifests.digest);

INSERT INTO project_blobs (project, digest, size)
SELECT DISTINCT r.project, m.digest, m.size
FROM manifests m JOIN repositories r ON r.id = m.repo_id
ON CONFLICT (project, digest) DO NOTHING;
INSERT INTO project_blobs (project, digest, size)
SELECT DISTINCT r.project, mr.ref_digest, b.size
FROM manifest_refs mr
JOIN repositories r ON r.id = mr.repo_id
JOIN blobs b ON b.digest = mr.ref_digest
WHERE mr.is_manifest = 0
ON CONFLICT (project, digest) DO NOTHING;

UPDATE projects SET used_bytes = (
    SELECT COALESCE(SUM(pb.size), 0) FROM project_blobs pb WHERE pb.project = projects.name
    AND (projects.is_base = 1 OR NOT EXISTS (
        SELECT 1 FROM project_blobs b JOIN projects bp ON bp.name = b.project
        WHERE bp.is_base = 1 AND b.digest = pb.digest)));
