-- Where each scope lives when a deployment has several stores (issue 34). Kept in the
-- default store only (every store has the table; the others leave it empty). A key is
-- placed once, at first use, and never moves: `scope:<scope>` for actions named inside a
-- scope, `id:<uuid>` for actions named by the caller's own id.
CREATE TABLE idem.placements (
    key       text PRIMARY KEY CHECK (key LIKE 'scope:%' OR key LIKE 'id:%'),
    store     text NOT NULL CHECK (store <> ''),
    placed_at timestamptz NOT NULL DEFAULT now()
);
