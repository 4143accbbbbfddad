-- NOTIFY without serialising enqueuers. PostgreSQL takes one database-wide lock at the
-- commit of every transaction that sent a NOTIFY and holds it through the commit's WAL
-- flush, so with a notification per enqueue concurrent enqueuing transactions commit one
-- at a time (measured with pgbench, 8 connections, fsync on: 0.28x a plain INSERT with
-- NOTIFY per enqueue, 0.52x without). Now an enqueue notifies only when no enqueue has
-- notified in the last `notify_window_ms` (an unlocked clock in a sequence, which is not
-- transactional and takes no row lock); the others rely on that notification, and
-- workers and relays claim once more shortly after a notification wakes them (for rows
-- committed just after it), then fall back to polling. 0 notifies on every enqueue, as
-- before. A role that enqueues needs UPDATE on idem.notify_clock (for setval).
ALTER TABLE idem.settings
    ADD COLUMN notify_window_ms integer NOT NULL DEFAULT 2
        CHECK (notify_window_ms BETWEEN 0 AND 10000);

-- When an enqueue last sent a notification, in ms since the epoch.
CREATE SEQUENCE idem.notify_clock AS bigint MINVALUE 0 START 0;

-- Wake workers and relays at this transaction's commit, unless another enqueue did in
-- the last notify_window_ms (or notify_on_enqueue is off).
CREATE FUNCTION idem.wake_outbox() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_on     boolean;
    v_window integer;
    v_now    bigint;
BEGIN
    SELECT s.notify_on_enqueue, s.notify_window_ms INTO v_on, v_window FROM idem.settings s;
    IF NOT coalesce(v_on, true) THEN
        RETURN;
    END IF;
    v_now := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    -- abs(): a clock stepped backwards notifies (and resets the clock) instead of
    -- staying quiet until it has caught up.
    IF v_window > 0
       AND abs(v_now - (SELECT c.last_value FROM idem.notify_clock c)) < v_window THEN
        RETURN;
    END IF;
    PERFORM setval('idem.notify_clock', v_now);
    PERFORM pg_notify('idem_outbox', '');
END
$$;

-- Same contract as 0014; the notification goes through idem.wake_outbox().
CREATE OR REPLACE FUNCTION idem.enqueue(
    p_action_id    uuid,
    p_cell         text,
    p_args         jsonb,
    p_ordering_key text DEFAULT NULL,
    p_headers      jsonb DEFAULT '{}'::jsonb,
    p_submitter    text DEFAULT NULL
) RETURNS TABLE (action_id uuid, state text, created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_fp       bytea;
    v_key      text := coalesce(p_ordering_key, p_action_id::text);
    v_existing record;
    v_schema   jsonb;
    v_bad      text[];
BEGIN
    IF p_action_id IS NULL OR p_cell IS NULL OR p_args IS NULL THEN
        RAISE EXCEPTION 'idem.enqueue: action id, cell and args are required'
            USING ERRCODE = 'IDM02';
    END IF;
    IF jsonb_typeof(p_args) <> 'object' THEN
        RAISE EXCEPTION 'idem.enqueue: args must be a JSON object, got %', jsonb_typeof(p_args)
            USING ERRCODE = 'IDM02';
    END IF;
    SELECT c.input_schema INTO v_schema FROM idem.cells c WHERE c.name = p_cell;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'idem.enqueue: unknown cell %; known: %', p_cell,
                        (SELECT string_agg(c.name, ', ' ORDER BY c.name) FROM idem.cells c)
            USING ERRCODE = 'IDM03', COLUMN = 'cell';
    END IF;
    v_bad := idem.args_violation(v_schema, p_args);
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'idem.enqueue: % %: %', p_cell, v_bad[1], v_bad[2]
            USING ERRCODE = 'IDM05', COLUMN = 'args', DETAIL = v_bad[1];
    END IF;
    v_fp := sha256(convert_to(p_cell || E'\n' || p_args::text, 'UTF8'));
    INSERT INTO idem.actions AS a (action_id, cell, args, fingerprint, ordering_key, trace,
                                   submitted_by)
    VALUES (p_action_id, p_cell, p_args, v_fp, v_key,
            nullif(coalesce(p_headers, '{}'::jsonb), '{}'::jsonb),
            coalesce(nullif(btrim(p_submitter), ''), 'role:' || session_user))
    ON CONFLICT ON CONSTRAINT actions_pkey DO NOTHING;
    IF FOUND THEN
        INSERT INTO idem.outbox (action_id, ordering_key, payload, headers)
        VALUES (p_action_id, v_key,
                convert_to(jsonb_build_object('v', 1, 'action_id', p_action_id, 'cell', p_cell,
                                              'args', p_args, 'ordering_key', v_key)::text, 'UTF8'),
                coalesce(p_headers, '{}'::jsonb));
        PERFORM idem.wake_outbox();
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
