-- OpenID Connect sign-ins under way: written when a person is sent to the
-- provider, used once when they come back with the state. Rows are kept an
-- hour after they expire, so that a replayed state is told from an unknown
-- one.
CREATE TABLE sign_in_requests (
    -- SHA-256 (hex) of the state: the state itself is not kept.
    state_hash     TEXT    PRIMARY KEY,
    nonce          TEXT    NOT NULL,
    pkce_verifier  TEXT    NOT NULL,
    redirect_uri   TEXT    NOT NULL,
    -- dashboard or cli
    client         TEXT    NOT NULL,
    -- Who started it (an IPv4 address, or an IPv6 /64): a bound on open
    -- sign-ins per address.
    remote         TEXT    NOT NULL,
    -- The CLI's proof: SHA-256 (hex) of a secret it sends back with the
    -- code, so a redirect caught by someone else is of no use to them.
    client_proof   TEXT,
    -- A device sign-in: how often and when the provider was last polled.
    poll_every_ms  BIGINT  NOT NULL,
    polled_at      BIGINT,
    created_at     BIGINT  NOT NULL,
    expires_at     BIGINT  NOT NULL,
    used_at        BIGINT
);
CREATE INDEX sign_in_requests_expires ON sign_in_requests (expires_at);
CREATE INDEX sign_in_requests_remote ON sign_in_requests (remote, expires_at);

-- The provider's subject (`sub`) a person first signed in with through
-- OpenID Connect: a later sign-in naming the same username with another
-- subject is refused (a username claim is not always the provider's
-- promise of one person).
ALTER TABLE people ADD COLUMN oidc_subject TEXT;
