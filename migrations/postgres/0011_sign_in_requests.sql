-- OpenID Connect sign-ins under way: written when a person is sent to the
-- provider, used once when they come back with the state. Rows are kept a
-- day after they expire, so that a replayed state is told from an unknown
-- one.
CREATE TABLE sign_in_requests (
    -- SHA-256 (hex) of the state: the state itself is not kept.
    state_hash     TEXT    PRIMARY KEY,
    nonce          TEXT    NOT NULL,
    pkce_verifier  TEXT    NOT NULL,
    redirect_uri   TEXT    NOT NULL,
    -- dashboard or cli
    client         TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    expires_at     BIGINT  NOT NULL,
    used_at        BIGINT
);
CREATE INDEX sign_in_requests_expires ON sign_in_requests (expires_at);

-- The provider's subject (`sub`) a person first signed in with through
-- OpenID Connect: a later sign-in naming the same username with another
-- subject is refused (a username claim is not always the provider's
-- promise of one person).
ALTER TABLE people ADD COLUMN oidc_subject TEXT;
