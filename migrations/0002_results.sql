-- Receipts of settled actions, queued for the results topic. Filled in the same
-- transaction that settles an action, but only while a relay publishes results
-- (idem.settings.publish_results), so a Postgres-only deployment does not accumulate rows.
CREATE TABLE idem.settings (
    id               boolean PRIMARY KEY DEFAULT true CHECK (id),
    publish_results  boolean NOT NULL DEFAULT false
);
INSERT INTO idem.settings DEFAULT VALUES;

CREATE TABLE idem.results_outbox (
    seq         bigserial   PRIMARY KEY,
    action_id   uuid        NOT NULL,
    payload     bytea       NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now()
);
