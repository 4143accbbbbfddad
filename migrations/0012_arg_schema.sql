-- What the fleet knows about each cell beyond its name, written by every worker when it
-- starts: the cell's input schema (so enqueue checks arguments in SQL, for every language)
-- and whether the partner has a lookup (so "check the partner again" is refused where
-- there is nothing to ask). NULL: no worker has said yet; nothing is checked.
ALTER TABLE idem.cells
    ADD COLUMN input_schema jsonb,
    ADD COLUMN lookup text CHECK (lookup IN ('none', 'strong', 'eventual'));

-- Whether one JSON value has one JSON Schema type ("integer": a number without fraction).
CREATE FUNCTION idem.json_type_is(p_value jsonb, p_type text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_type
               WHEN 'integer' THEN jsonb_typeof(p_value) = 'number'
                                   AND (p_value #>> '{}')::numeric = trunc((p_value #>> '{}')::numeric)
               ELSE jsonb_typeof(p_value) = p_type
           END
$$;

-- The first way `p_args` breaks the top level of `p_schema`, as {field, message}, or NULL.
-- Checked: args is an object; required properties; unknown properties where
-- additionalProperties is false; each property's type (or types), enum, minimum, maximum,
-- exclusiveMinimum, exclusiveMaximum, minLength, maxLength, pattern (as a PostgreSQL
-- regular expression; a pattern PostgreSQL cannot read is skipped), minItems, maxItems.
-- Not checked here (the worker's and the API's full validation still runs): nested
-- objects and array items, format, and rules between fields that a schema does not state.
CREATE FUNCTION idem.args_violation(p_schema jsonb, p_args jsonb) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k      text;
    v      jsonb;
    s      jsonb;
    f      text;
    ok     boolean;
    n      numeric;
BEGIN
    IF p_schema IS NULL OR jsonb_typeof(p_schema) <> 'object' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(p_args) <> 'object' THEN
        RETURN ARRAY['/args', 'must be a JSON object'];
    END IF;
    IF jsonb_typeof(p_schema -> 'required') = 'array' THEN
        FOR k IN SELECT jsonb_array_elements_text(p_schema -> 'required') LOOP
            IF NOT p_args ? k THEN
                RETURN ARRAY['/args/' || k, 'required'];
            END IF;
        END LOOP;
    END IF;
    FOR k, v IN SELECT e.key, e.value FROM jsonb_each(p_args) e LOOP
        f := '/args/' || k;
        s := p_schema -> 'properties' -> k;
        IF s IS NULL OR jsonb_typeof(s) <> 'object' THEN
            IF p_schema -> 'additionalProperties' = 'false'::jsonb THEN
                RETURN ARRAY[f, format('unknown field; known: %s',
                    (SELECT string_agg(p.key, ', ' ORDER BY p.key)
                     FROM jsonb_each(coalesce(p_schema -> 'properties', '{}'::jsonb)) p))];
            END IF;
            CONTINUE;
        END IF;
        IF jsonb_typeof(s -> 'type') = 'string' THEN
            IF NOT idem.json_type_is(v, s ->> 'type') THEN
                RETURN ARRAY[f, format('must be of type %s, not %s', s ->> 'type', jsonb_typeof(v))];
            END IF;
        ELSIF jsonb_typeof(s -> 'type') = 'array' THEN
            SELECT bool_or(idem.json_type_is(v, t)) INTO ok
            FROM jsonb_array_elements_text(s -> 'type') t;
            IF NOT coalesce(ok, false) THEN
                RETURN ARRAY[f, format('must be of type %s, not %s', s -> 'type', jsonb_typeof(v))];
            END IF;
        END IF;
        IF jsonb_typeof(s -> 'enum') = 'array' AND NOT (s -> 'enum') @> jsonb_build_array(v) THEN
            RETURN ARRAY[f, format('must be one of %s', s -> 'enum')];
        END IF;
        IF jsonb_typeof(v) = 'number' THEN
            n := (v #>> '{}')::numeric;
            IF jsonb_typeof(s -> 'minimum') = 'number' AND n < (s ->> 'minimum')::numeric THEN
                RETURN ARRAY[f, format('must be at least %s', s ->> 'minimum')];
            END IF;
            IF jsonb_typeof(s -> 'maximum') = 'number' AND n > (s ->> 'maximum')::numeric THEN
                RETURN ARRAY[f, format('must be at most %s', s ->> 'maximum')];
            END IF;
            IF jsonb_typeof(s -> 'exclusiveMinimum') = 'number'
               AND n <= (s ->> 'exclusiveMinimum')::numeric THEN
                RETURN ARRAY[f, format('must be more than %s', s ->> 'exclusiveMinimum')];
            END IF;
            IF jsonb_typeof(s -> 'exclusiveMaximum') = 'number'
               AND n >= (s ->> 'exclusiveMaximum')::numeric THEN
                RETURN ARRAY[f, format('must be less than %s', s ->> 'exclusiveMaximum')];
            END IF;
        ELSIF jsonb_typeof(v) = 'string' THEN
            IF jsonb_typeof(s -> 'minLength') = 'number'
               AND char_length(v #>> '{}') < (s ->> 'minLength')::int THEN
                RETURN ARRAY[f, format('must be at least %s characters', s ->> 'minLength')];
            END IF;
            IF jsonb_typeof(s -> 'maxLength') = 'number'
               AND char_length(v #>> '{}') > (s ->> 'maxLength')::int THEN
                RETURN ARRAY[f, format('must be at most %s characters', s ->> 'maxLength')];
            END IF;
            IF jsonb_typeof(s -> 'pattern') = 'string' THEN
                BEGIN
                    ok := (v #>> '{}') ~ (s ->> 'pattern');
                EXCEPTION WHEN invalid_regular_expression THEN
                    ok := true;
                END;
                IF NOT ok THEN
                    RETURN ARRAY[f, format('must match %s', s ->> 'pattern')];
                END IF;
            END IF;
        ELSIF jsonb_typeof(v) = 'array' THEN
            IF jsonb_typeof(s -> 'minItems') = 'number'
               AND jsonb_array_length(v) < (s ->> 'minItems')::int THEN
                RETURN ARRAY[f, format('must have at least %s items', s ->> 'minItems')];
            END IF;
            IF jsonb_typeof(s -> 'maxItems') = 'number'
               AND jsonb_array_length(v) > (s ->> 'maxItems')::int THEN
                RETURN ARRAY[f, format('must have at most %s items', s ->> 'maxItems')];
            END IF;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- Enqueue refuses an unknown cell (IDM03) and, where a worker registered the cell's input
-- schema, arguments that break it: SQLSTATE 'IDM05', the field as a JSON pointer in DETAIL.
-- Both checks live in idem.enqueue (every surface enqueues through it: SQL, Rust, HTTP,
-- MCP, idem.enqueue_intent), no longer in a trigger on idem.actions: a worker that receives
-- a delivery inserts its inbox row too, and a message it cannot run must go dead with its
-- raw bytes, not fail the batch.
DROP TRIGGER actions_known_cell ON idem.actions;
DROP FUNCTION idem.known_cell();

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
