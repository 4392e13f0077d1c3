-- Where each tag pointed, and what moved it: created (old_digest NULL),
-- moved from one manifest to another, deleted (new_digest NULL); cause is
-- push, build (a push by the build service), reuse, rebase or delete.
CREATE TABLE tag_history (
    id          BIGSERIAL PRIMARY KEY,
    repo_id     BIGINT  NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    tag         TEXT    NOT NULL,
    at          BIGINT  NOT NULL,
    old_digest  TEXT,
    new_digest  TEXT,
    cause       TEXT    NOT NULL
);
CREATE INDEX tag_history_repo ON tag_history (repo_id, id);

-- When a manifest was last pulled (GET), at most every few minutes per
-- manifest and process: the dashboard's "last pulled".
ALTER TABLE manifests ADD COLUMN last_pulled_at BIGINT;
