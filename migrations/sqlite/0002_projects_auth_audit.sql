-- Projects (the first component of repository names), the system accounts
-- (admin, builder), robot accounts, and the audit log.

CREATE TABLE projects (
    name        TEXT    PRIMARY KEY,
    public      BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);

-- Built-in principals with a password: `admin` and `builder`.
CREATE TABLE accounts (
    name           TEXT    PRIMARY KEY,
    password_hash  TEXT    NOT NULL,
    updated_at     BIGINT  NOT NULL
);

-- `robot$<project>+<name>`. The secret is stored only as a PHC hash.
-- `version` changes whenever a token issued before must stop working
-- (rotation, disabling, new permissions).
CREATE TABLE robots (
    id            INTEGER PRIMARY KEY,
    project       TEXT    NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    description   TEXT    NOT NULL,
    secret_hash   TEXT    NOT NULL,
    permissions   TEXT    NOT NULL,
    enabled       BIGINT  NOT NULL,
    expires_at    BIGINT,
    version       BIGINT  NOT NULL,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    last_used_at  BIGINT,
    UNIQUE (project, name)
);

CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY,
    at           BIGINT  NOT NULL,
    principal    TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    project      TEXT,
    target       TEXT,
    detail       TEXT,
    remote_addr  TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_project ON audit_log (project, id);
CREATE INDEX audit_log_principal ON audit_log (principal, id);

-- Repositories pushed before projects existed keep working: their projects
-- are created, private.
INSERT INTO projects (name, public, created_at, updated_at)
SELECT DISTINCT project, 0, MIN(created_at), MIN(created_at) FROM repositories GROUP BY project;
