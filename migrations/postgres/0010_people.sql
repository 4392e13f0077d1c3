-- People (LDAP and OpenID Connect sign-in): named by the admin or by the
-- directory, before or after they first sign in.
CREATE TABLE people (
    name          TEXT    PRIMARY KEY,
    created_at    BIGINT  NOT NULL,
    -- admin or directory
    created_by    TEXT    NOT NULL,
    -- In the directory's admin group when last looked at.
    is_admin      BIGINT  NOT NULL,
    disabled      BIGINT  NOT NULL,
    -- When the directory was last asked about this person's groups.
    checked_at    BIGINT,
    last_sign_in  BIGINT
);

-- A person's role in a project, from one source (admin: granted by the
-- admin; directory: from a group, replaced at every look at the directory).
-- The effective role is the strongest of the sources.
CREATE TABLE memberships (
    person      TEXT    NOT NULL REFERENCES people (name) ON DELETE CASCADE,
    project     TEXT    NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    -- maintainer, developer or guest
    role        TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    granted_at  BIGINT  NOT NULL,
    PRIMARY KEY (person, project, source)
);
CREATE INDEX memberships_project ON memberships (project);

-- Personal access tokens, for registry clients and the CLI. The secret is
-- stored only as a PHC hash.
CREATE TABLE personal_tokens (
    id            TEXT    PRIMARY KEY,
    person        TEXT    NOT NULL REFERENCES people (name) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    secret_hash   TEXT    NOT NULL,
    -- Limited to one project, or NULL: every project of the person.
    project       TEXT    REFERENCES projects (name) ON DELETE CASCADE,
    pull_only     BIGINT  NOT NULL,
    created_at    BIGINT  NOT NULL,
    expires_at    BIGINT,
    last_used_at  BIGINT,
    UNIQUE (person, name)
);
