-- The approval fence asked `idem.policy_holds` on every start. As a SQL function with a
-- subquery it cannot be inlined, so PostgreSQL parsed, planned and set up its body again on
-- each call from the trigger: 7 % of PostgreSQL's CPU in `idem-lab bench pg-worker` (perf),
-- the whole trigger 11 %. In PL/pgSQL its query's plan is kept for the session. The rule is
-- the same: `always` holds, `never` does not, `above` holds when the argument is a number
-- at or over the threshold; no rule for the cell holds nothing.
CREATE OR REPLACE FUNCTION idem.policy_holds(p_cell text, p_args jsonb) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    p idem.policies;
BEGIN
    SELECT * INTO p FROM idem.policies WHERE cell = p_cell;
    IF NOT FOUND OR p.kind = 'never' THEN
        RETURN false;
    ELSIF p.kind = 'always' THEN
        RETURN true;
    ELSIF jsonb_typeof(p_args -> p.argument) IS DISTINCT FROM 'number' THEN
        RETURN false;
    END IF;
    RETURN (p_args ->> p.argument)::numeric >= p.threshold;
END
$$;

-- The fence looks the cell's rule up itself and calls the function only when there is
-- one: most cells have none, and that is one cached index lookup.
CREATE OR REPLACE FUNCTION idem.policy_fence() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state <> 'executing' OR OLD.attempts <> 0 OR OLD.state = 'awaiting_approval' THEN
        RETURN NEW;
    END IF;
    PERFORM FROM idem.policies WHERE cell = NEW.cell AND kind <> 'never';
    IF FOUND AND idem.policy_holds(NEW.cell, NEW.args) THEN
        RAISE EXCEPTION 'idem: the approval policy for % holds action %; it needs a person''s approval',
                        NEW.cell, NEW.action_id
            USING ERRCODE = 'IDM04';
    END IF;
    RETURN NEW;
END
$$;

-- The fence runs only where it can refuse: a first attempt not coming from
-- awaiting_approval. A retry, a replay or an approved start no longer calls the function.
DROP TRIGGER actions_policy_fence ON idem.actions;
CREATE TRIGGER actions_policy_fence BEFORE UPDATE OF state ON idem.actions
    FOR EACH ROW WHEN (NEW.state = 'executing' AND OLD.state IS DISTINCT FROM NEW.state
                       AND OLD.attempts = 0 AND OLD.state <> 'awaiting_approval')
    EXECUTE FUNCTION idem.policy_fence();
