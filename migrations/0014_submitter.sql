-- Who submitted each action, for the person who approves it or looks for it later: the
-- API and MCP pass their caller's token name ("token:agent-7"); a direct SQL caller may pass
-- a name of its own, and otherwise the database role it logged in as is recorded
-- ("role:app"). A SQL caller can claim any name: the role is the boundary there.
ALTER TABLE idem.actions ADD COLUMN submitted_by text;

DROP FUNCTION idem.enqueue_intent(text, text, text, jsonb, text, jsonb);
DROP FUNCTION idem.enqueue(uuid, text, jsonb, text, jsonb);

CREATE FUNCTION idem.enqueue(
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


CREATE FUNCTION idem.enqueue_intent(
    p_scope        text,
    p_intent       text,
    p_cell         text,
    p_args         jsonb,
    p_ordering_key text DEFAULT NULL,
    p_headers      jsonb DEFAULT '{}'::jsonb,
    p_submitter    text DEFAULT NULL
) RETURNS TABLE (action_id uuid, state text, created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
    v_row record;
BEGIN
    IF p_scope IS NULL OR btrim(p_scope) = '' OR char_length(p_scope) > 200 THEN
        RAISE EXCEPTION 'idem.enqueue_intent: intent_scope must be 1 to 200 characters'
            USING ERRCODE = 'IDM02', COLUMN = 'intent_scope';
    END IF;
    IF p_intent IS NULL OR btrim(p_intent) = '' OR char_length(p_intent) > 200 THEN
        RAISE EXCEPTION 'idem.enqueue_intent: intent must be 1 to 200 characters'
            USING ERRCODE = 'IDM02', COLUMN = 'intent';
    END IF;
    v_id := idem.intent_id(p_scope, p_intent);
    BEGIN
        SELECT * INTO v_row FROM idem.enqueue(v_id, p_cell, p_args, p_ordering_key, p_headers,
                                              p_submitter);
    EXCEPTION WHEN SQLSTATE 'IDM01' THEN
        RAISE EXCEPTION 'idem.enqueue_intent: intent % in scope % already names action % with other arguments',
                        p_intent, p_scope, v_id
            USING ERRCODE = 'IDM01',
                  DETAIL = format('existing action %s', v_id),
                  HINT = 'the same intent is the same action: if this is a different action, give it another intent';
    END;
    IF v_row.created THEN
        UPDATE idem.actions a SET intent_scope = p_scope, intent = p_intent
        WHERE a.action_id = v_id;
    END IF;
    RETURN QUERY SELECT v_row.action_id, v_row.state, v_row.created;
END
$$;
