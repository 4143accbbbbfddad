-- idem's schema: outbox, inbox (actions), attempts, transitions audit, dead letters.
-- Everything lives in the `idem` schema so it sits beside an application's own tables.

CREATE SCHEMA IF NOT EXISTS idem;

-- The inbox: one row per action id, the single place that decides whether a partner is called.
CREATE TABLE idem.actions (
    action_id        uuid PRIMARY KEY,
    cell             text        NOT NULL,
    args             jsonb       NOT NULL,
    -- sha256(cell || '\n' || args::text): an id reused with other arguments is a conflict
    fingerprint      bytea       NOT NULL,
    ordering_key     text        NOT NULL,
    state            text        NOT NULL DEFAULT 'received' CHECK (state IN (
                         'received', 'awaiting_approval', 'executing', 'retry_scheduled',
                         'in_doubt', 'succeeded', 'failed', 'rejected', 'needs_human', 'dead')),
    -- partner requests written ahead so far (the number of the latest attempt)
    attempts         integer     NOT NULL DEFAULT 0,
    -- bumped when every earlier attempt is proven not to have happened
    key_generation   integer     NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_until      timestamptz,
    -- when a retry_scheduled or in_doubt action is next due
    due_at           timestamptz,
    doubt_since      timestamptz,
    reconcile_rounds integer     NOT NULL DEFAULT 0,
    reason           text,
    receipt          jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    settled_at       timestamptz
);

CREATE INDEX actions_due_idx ON idem.actions (due_at)
    WHERE state IN ('retry_scheduled', 'in_doubt');
CREATE INDEX actions_lease_idx ON idem.actions (lease_until) WHERE state = 'executing';
CREATE INDEX actions_attention_idx ON idem.actions (state, updated_at)
    WHERE state IN ('awaiting_approval', 'needs_human', 'dead');
CREATE INDEX actions_settled_idx ON idem.actions (settled_at) WHERE settled_at IS NOT NULL;

-- The transactional outbox: committed with the agent's transaction, drained by the relay
-- (Kafka) or claimed directly by workers (direct Postgres transport).
CREATE TABLE idem.outbox (
    seq          bigserial   PRIMARY KEY,
    action_id    uuid        NOT NULL,
    ordering_key text        NOT NULL,
    payload      bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    enqueued_at  timestamptz NOT NULL DEFAULT now()
);

-- One audit row per partner request, written and committed before the request is sent.
CREATE TABLE idem.attempts (
    action_id           uuid        NOT NULL REFERENCES idem.actions (action_id) ON DELETE CASCADE,
    number              integer     NOT NULL,
    key_generation      integer     NOT NULL,
    idem_key            text,
    request_fingerprint text        NOT NULL,
    -- which rule of the guarantee allowed this request
    rule                text        NOT NULL,
    pre_state           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    worker              text        NOT NULL,
    started_at          timestamptz NOT NULL,
    finished_at         timestamptz,
    result              text,
    detail              jsonb,
    PRIMARY KEY (action_id, number)
);

-- Every state change, who made it and why.
CREATE TABLE idem.transitions (
    id          bigserial   PRIMARY KEY,
    action_id   uuid        NOT NULL,
    from_state  text        NOT NULL,
    to_state    text        NOT NULL,
    event       text        NOT NULL,
    actor       text        NOT NULL,
    reason      text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transitions_action_idx ON idem.transitions (action_id, id);

-- Messages that could not become an action (undecodable, id reused with other arguments).
CREATE TABLE idem.dead_letters (
    id         bigserial   PRIMARY KEY,
    action_id  uuid,
    raw        bytea       NOT NULL,
    reason     text        NOT NULL,
    source     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    at         timestamptz NOT NULL DEFAULT now()
);

-- Enqueue from any language, inside the caller's transaction. Idempotent on the action id:
-- the same id and arguments return the existing action (created = false); the same id with
-- other arguments raises SQLSTATE 'IDM01'. NOTIFY wakes workers and relays at commit.
CREATE FUNCTION idem.enqueue(
    p_action_id    uuid,
    p_cell         text,
    p_args         jsonb,
    p_ordering_key text DEFAULT NULL,
    p_headers      jsonb DEFAULT '{}'::jsonb
) RETURNS TABLE (action_id uuid, state text, created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fp       bytea;
    v_key      text := coalesce(p_ordering_key, p_action_id::text);
    v_existing record;
BEGIN
    IF p_action_id IS NULL OR p_cell IS NULL OR p_args IS NULL THEN
        RAISE EXCEPTION 'idem.enqueue: action id, cell and args are required'
            USING ERRCODE = 'IDM02';
    END IF;
    IF jsonb_typeof(p_args) <> 'object' THEN
        RAISE EXCEPTION 'idem.enqueue: args must be a JSON object, got %', jsonb_typeof(p_args)
            USING ERRCODE = 'IDM02';
    END IF;
    v_fp := sha256(convert_to(p_cell || E'\n' || p_args::text, 'UTF8'));
    INSERT INTO idem.actions AS a (action_id, cell, args, fingerprint, ordering_key)
    VALUES (p_action_id, p_cell, p_args, v_fp, v_key)
    ON CONFLICT ON CONSTRAINT actions_pkey DO NOTHING;
    IF FOUND THEN
        INSERT INTO idem.outbox (action_id, ordering_key, payload, headers)
        VALUES (p_action_id, v_key,
                convert_to(jsonb_build_object('v', 1, 'action_id', p_action_id, 'cell', p_cell,
                                              'args', p_args, 'ordering_key', v_key)::text, 'UTF8'),
                coalesce(p_headers, '{}'::jsonb));
        PERFORM pg_notify('idem_outbox', '');
        RETURN QUERY SELECT p_action_id, 'received'::text, true;
        RETURN;
    END IF;
    SELECT a.fingerprint, a.state, a.cell INTO v_existing
    FROM idem.actions a WHERE a.action_id = p_action_id;
    IF v_existing.fingerprint <> v_fp THEN
        RAISE EXCEPTION 'idem.enqueue: action % already exists with other arguments', p_action_id
            USING ERRCODE = 'IDM01',
                  DETAIL = format('existing cell %s; an action id names one request forever', v_existing.cell);
    END IF;
    RETURN QUERY SELECT p_action_id, v_existing.state, false;
END
$$;

-- Status for orchestrators in any language.
CREATE VIEW idem.action_status AS
SELECT action_id, cell, state, attempts, reason, receipt, created_at, updated_at, settled_at
FROM idem.actions;
