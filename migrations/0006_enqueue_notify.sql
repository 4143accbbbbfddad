-- NOTIFY at enqueue wakes workers and relays at once, but every notifying commit takes
-- PostgreSQL's notification queue lock, which serialises concurrent enqueuing transactions
-- (measured: `idem-lab bench enqueue`). A deployment that enqueues at high concurrency can turn
-- it off and let workers and relays find rows by polling (`--poll-interval-ms`).
ALTER TABLE idem.settings ADD COLUMN notify_on_enqueue boolean NOT NULL DEFAULT true;

-- Same contract as 0003; NOTIFY only while idem.settings.notify_on_enqueue.
CREATE OR REPLACE FUNCTION idem.enqueue(
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
    INSERT INTO idem.actions AS a (action_id, cell, args, fingerprint, ordering_key, trace)
    VALUES (p_action_id, p_cell, p_args, v_fp, v_key,
            nullif(coalesce(p_headers, '{}'::jsonb), '{}'::jsonb))
    ON CONFLICT ON CONSTRAINT actions_pkey DO NOTHING;
    IF FOUND THEN
        INSERT INTO idem.outbox (action_id, ordering_key, payload, headers)
        VALUES (p_action_id, v_key,
                convert_to(jsonb_build_object('v', 1, 'action_id', p_action_id, 'cell', p_cell,
                                              'args', p_args, 'ordering_key', v_key)::text, 'UTF8'),
                coalesce(p_headers, '{}'::jsonb));
        IF (SELECT s.notify_on_enqueue FROM idem.settings s) THEN
            PERFORM pg_notify('idem_outbox', '');
        END IF;
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
