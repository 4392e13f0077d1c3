-- The build front end: builds (the queue), their logs, per-project build
-- tokens, and the builders an admin approved.

CREATE TABLE builds (
    id                TEXT    PRIMARY KEY,
    project           TEXT    NOT NULL,
    image_name        TEXT    NOT NULL,
    source_url        TEXT    NOT NULL,
    git_ref           TEXT    NOT NULL,
    git_commit        TEXT    NOT NULL,
    builder           TEXT    NOT NULL,
    env               TEXT    NOT NULL,
    -- pending, running, succeeded, failed, cancelled, timed_out
    state             TEXT    NOT NULL,
    reason            TEXT,
    image_digest      TEXT,
    requested_by      TEXT    NOT NULL,
    created_at        BIGINT  NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT,
    -- The process running it, and when it last said it still does.
    worker            TEXT,
    heartbeat_at      BIGINT,
    cancel_requested  BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX builds_project ON builds (project, created_at);
CREATE INDEX builds_state ON builds (state, created_at);

CREATE TABLE build_logs (
    build_id  TEXT    NOT NULL,
    seq       BIGINT  NOT NULL,
    at        BIGINT  NOT NULL,
    phase     TEXT    NOT NULL,
    line      TEXT    NOT NULL,
    PRIMARY KEY (build_id, seq)
);

-- build$<project>+<name>: may ask for builds of its project, nothing else.
CREATE TABLE build_tokens (
    id            INTEGER PRIMARY KEY,
    project       TEXT    NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    secret_hash   TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    last_used_at  BIGINT,
    UNIQUE (project, name)
);

CREATE TABLE approved_builders (
    image        TEXT    PRIMARY KEY,
    approved_by  TEXT    NOT NULL,
    approved_at  BIGINT  NOT NULL
);
