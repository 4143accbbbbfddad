-- API tokens for `idem serve`: only a SHA-256 of each secret is kept (the secret is shown
-- once, at creation). Scopes: submit (enqueue), read (status), approve (decisions).
CREATE TABLE idem.api_tokens (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text        NOT NULL CHECK (name <> ''),
    secret_hash  bytea       NOT NULL UNIQUE,
    scopes       text[]      NOT NULL CHECK (scopes <@ ARRAY['submit', 'read', 'approve']::text[]
                                             AND cardinality(scopes) > 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
