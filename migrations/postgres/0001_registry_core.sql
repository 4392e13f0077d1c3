-- Registry core: repositories, blobs and their links, manifests, tags,
-- referrers (manifests.subject) and uploads. Timestamps are epoch milliseconds.
-- Text that is listed in order (names, tags) uses the "C" collation: the
-- distribution spec wants lexical (byte) order, as SQLite gives by default.

CREATE TABLE repositories (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    project     TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);
CREATE INDEX repositories_project ON repositories (project);

CREATE TABLE blobs (
    digest      TEXT    PRIMARY KEY,
    size        BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE repo_blobs (
    repo_id     BIGINT  NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    digest      TEXT    NOT NULL REFERENCES blobs (digest),
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX repo_blobs_digest ON repo_blobs (digest);

CREATE TABLE manifest_bodies (
    digest      TEXT    PRIMARY KEY,
    media_type  TEXT    NOT NULL,
    size        BIGINT  NOT NULL,
    body        BYTEA   NOT NULL,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE manifests (
    repo_id       BIGINT  NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    digest        TEXT    NOT NULL REFERENCES manifest_bodies (digest),
    media_type    TEXT    NOT NULL,
    size          BIGINT  NOT NULL,
    artifact_type TEXT,
    subject       TEXT,
    annotations   TEXT,
    created_at    BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX manifests_subject ON manifests (repo_id, subject);

CREATE TABLE manifest_refs (
    repo_id         BIGINT  NOT NULL,
    manifest_digest TEXT    NOT NULL,
    ref_digest      TEXT    NOT NULL,
    is_manifest     BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, manifest_digest, ref_digest),
    FOREIGN KEY (repo_id, manifest_digest) REFERENCES manifests (repo_id, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_refs_ref ON manifest_refs (repo_id, ref_digest);

CREATE TABLE tags (
    repo_id     BIGINT  NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    name        TEXT COLLATE "C" NOT NULL,
    digest      TEXT    NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, name),
    FOREIGN KEY (repo_id, digest) REFERENCES manifests (repo_id, digest)
);
CREATE INDEX tags_digest ON tags (repo_id, digest);

CREATE TABLE uploads (
    id          TEXT    PRIMARY KEY,
    repo_id     BIGINT  NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    size        BIGINT  NOT NULL,
    hash_state  BYTEA   NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
