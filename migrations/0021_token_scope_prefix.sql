-- A token may be bound to a scope prefix (a tenant's, say): every intent it submits must
-- live in a scope that starts with it, and it reads only actions named in such scopes.
-- This replaces the hidden `mcp:{token}:` prefix MCP once put in front of every scope: the
-- isolation is now explicit, visible in `idem tokens list`, and the same on every surface.
-- A bound token cannot approve (decisions are fleet-wide).
ALTER TABLE idem.api_tokens
    ADD COLUMN scope_prefix text
        CHECK (scope_prefix IS NULL
               OR (scope_prefix <> '' AND char_length(scope_prefix) <= 200
                   AND NOT ('approve' = ANY (scopes))));
