-- Push to deploy: per-project secrets (encrypted), triggers (webhooks and
-- polling), the record of every delivery and poll, builds that were
-- reused instead of run, and how many build records a project keeps.

-- A project's secrets: sealed with the server's secrets key (XChaCha20-
-- Poly1305; the project and name are the associated data, so a sealed
-- value cannot be moved to another secret). Never returned by any API.
CREATE TABLE project_secrets (
    project     TEXT    NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    sealed      TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (project, name)
);

-- One row: a value sealed with the secrets key when the first secret was
-- set, so a replica started with another key says so instead of failing
-- builds one by one.
CREATE TABLE secrets_key_check (
    id      INTEGER PRIMARY KEY,
    sealed  TEXT    NOT NULL
);

CREATE TABLE triggers (
    id                  TEXT    PRIMARY KEY,
    project             TEXT    NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    source_url          TEXT    NOT NULL,
    -- Branches that build: a name or a glob (`release/*`).
    ref_pattern         TEXT    NOT NULL,
    -- Tags that build (a name or a glob); NULL: tag pushes build nothing.
    tag_pattern         TEXT,
    image_name          TEXT    NOT NULL,
    -- NULL: the server's default builder.
    builder             TEXT,
    -- JSON object of build variables.
    env                 TEXT    NOT NULL,
    -- JSON array of secret names given to the build as /platform/env files.
    secret_env          TEXT    NOT NULL,
    -- A secret's name: the git credentials of an HTTPS source.
    git_credentials     TEXT,
    -- The webhook secret, sealed (the HMAC needs the secret itself).
    hook_secret         TEXT    NOT NULL,
    -- Polling: seconds between checks (NULL: webhooks only), the commit
    -- last seen, when the next check is due, and which replica holds the
    -- check until when.
    poll_interval_secs  BIGINT,
    poll_commit         TEXT,
    poll_next_at        BIGINT,
    poll_lease_owner    TEXT,
    poll_lease_until    BIGINT,
    -- The trigger `slipway build start` uses without --source.
    is_default          BIGINT  NOT NULL DEFAULT 0,
    created_by          TEXT    NOT NULL,
    created_at          BIGINT  NOT NULL
);
CREATE INDEX triggers_project ON triggers (project);
CREATE INDEX triggers_poll ON triggers (poll_next_at);

CREATE TABLE trigger_deliveries (
    id            BIGSERIAL PRIMARY KEY,
    trigger_id    TEXT    NOT NULL REFERENCES triggers (id) ON DELETE CASCADE,
    -- The forge's delivery id (NULL for polls and refused deliveries).
    delivery_id   TEXT,
    at            BIGINT  NOT NULL,
    -- github, gitlab, gitea, forgejo, poll
    provider      TEXT    NOT NULL,
    event         TEXT    NOT NULL,
    git_ref       TEXT,
    git_commit    TEXT,
    -- The commit the ref was at before the push (`before`), when the
    -- forge says: a later push whose before is this push's commit makes
    -- this one stale if it arrives late.
    git_before    TEXT,
    -- queued, reused, ignored, refused, failed
    result        TEXT    NOT NULL,
    detail        TEXT    NOT NULL,
    build_id      TEXT,
    UNIQUE (trigger_id, delivery_id)
);
CREATE INDEX trigger_deliveries_at ON trigger_deliveries (trigger_id, at);

-- Builds: the trigger that asked, the secrets they use (names), and what
-- decides whether an equal build may be reused: a digest of the builder's
-- digest, the variables and the secrets' values (inputs), with the commit
-- or the tree it checked out (git_tree: an unchanged tree is not rebuilt);
-- force: build even so.
ALTER TABLE builds ADD COLUMN trigger_id TEXT;
ALTER TABLE builds ADD COLUMN secret_env TEXT;
ALTER TABLE builds ADD COLUMN git_credentials TEXT;
ALTER TABLE builds ADD COLUMN inputs TEXT;
ALTER TABLE builds ADD COLUMN buildpacks TEXT;
ALTER TABLE builds ADD COLUMN git_tree TEXT;
ALTER TABLE builds ADD COLUMN force BIGINT NOT NULL DEFAULT 0;
CREATE INDEX builds_image ON builds (project, image_name, created_at);

-- A project's build record retention, overriding [builds] keep_succeeded
-- and keep_failed: a JSON object with either. NULL: the server's.
ALTER TABLE projects ADD COLUMN build_retention TEXT;
