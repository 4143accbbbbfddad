-- Named intents: (scope, intent) names one action on every surface. The id is derived
-- here so that every language gets the same id without reimplementing it (docs/intents.md):
-- UUIDv8 over the first 16 bytes of SHA-256('idem.intent.v1' 0x00 scope 0x00 intent).
CREATE FUNCTION idem.intent_id(p_scope text, p_intent text) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT encode(
               set_byte(set_byte(h, 6, (get_byte(h, 6) & 15) | 128),
                        8, (get_byte(h, 8) & 63) | 128),
               'hex')::uuid
    FROM (SELECT substring(sha256(convert_to('idem.intent.v1', 'UTF8') || '\x00'::bytea
                                  || convert_to(p_scope, 'UTF8') || '\x00'::bytea
                                  || convert_to(p_intent, 'UTF8')) FROM 1 FOR 16) AS h) d
$$;

-- What named the action, for people looking for it (NULL for ids the caller chose).
ALTER TABLE idem.actions ADD COLUMN intent_scope text, ADD COLUMN intent text;
CREATE INDEX actions_intent_idx ON idem.actions (intent_scope, intent) WHERE intent IS NOT NULL;

-- Enqueue a named intent: the same (scope, intent) with the same cell and arguments is the
-- same action; with other arguments it is SQLSTATE 'IDM01' (conflict) naming the existing
-- action; an empty, over-long scope or intent is 'IDM02'.
CREATE FUNCTION idem.enqueue_intent(
    p_scope        text,
    p_intent       text,
    p_cell         text,
    p_args         jsonb,
    p_ordering_key text DEFAULT NULL,
    p_headers      jsonb DEFAULT '{}'::jsonb
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
        SELECT * INTO v_row FROM idem.enqueue(v_id, p_cell, p_args, p_ordering_key, p_headers);
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
