-- Approval policy for the whole fleet, kept where no single process can skip it: every
-- worker reads it in the transaction that starts an action, and a trigger refuses to start
-- (first attempt) an action the policy holds unless a person approved it.
CREATE TABLE idem.policies (
    cell       text PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('never', 'always', 'above')),
    -- for 'above': hold when args->argument is a number >= threshold
    argument   text CHECK (argument ~ '^[A-Za-z0-9_]+$'),
    threshold  numeric,
    changed_by text NOT NULL,
    reason     text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'above') = (argument IS NOT NULL AND threshold IS NOT NULL))
);

-- Every change, with who and why.
CREATE TABLE idem.policy_changes (
    id         bigserial PRIMARY KEY,
    cell       text NOT NULL,
    old_rule   text,
    new_rule   text NOT NULL,
    changed_by text NOT NULL,
    reason     text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- The rule as text: never, always, ARGUMENT>=THRESHOLD.
CREATE FUNCTION idem.policy_rule(p idem.policies) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p.kind WHEN 'above' THEN p.argument || '>=' || p.threshold::text ELSE p.kind END
$$;

-- Whether the fleet's policy holds this action for a person.
CREATE FUNCTION idem.policy_holds(p_cell text, p_args jsonb) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce((
        SELECT CASE p.kind
                   WHEN 'always' THEN true
                   WHEN 'never' THEN false
                   ELSE jsonb_typeof(p_args -> p.argument) = 'number'
                        AND (p_args ->> p.argument)::numeric >= p.threshold
               END
        FROM idem.policies p WHERE p.cell = p_cell), false)
$$;

-- The fence: a first attempt of an action the policy holds is refused unless it comes
-- from awaiting_approval (a person approved it). SQLSTATE IDM04.
CREATE FUNCTION idem.policy_fence() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'executing' AND OLD.attempts = 0 AND OLD.state <> 'awaiting_approval'
       AND idem.policy_holds(NEW.cell, NEW.args) THEN
        RAISE EXCEPTION 'idem: the approval policy for % holds action %; it needs a person''s approval',
                        NEW.cell, NEW.action_id
            USING ERRCODE = 'IDM04';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER actions_policy_fence BEFORE UPDATE OF state ON idem.actions
    FOR EACH ROW WHEN (NEW.state = 'executing' AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION idem.policy_fence();
