-- The settle of an attempt is audited on the attempt row too, as its start is (0017): the
-- settle already updates the attempt (result, detail, finished_at), so its transition
-- rides on that update instead of a row of `idem.transition_log` (a heap tuple and two
-- index entries). On the happy path an action's audit now costs no row of its own. The
-- settle's time is the attempt's finished_at (both now() of the settling transaction).
-- Transitions that do not settle an attempt of the same number (decisions, lease expiry,
-- a settle whose attempt row was already finished) stay rows of the log.
ALTER TABLE idem.attempts
    ADD COLUMN settle_audit_id bigint,
    ADD COLUMN settle_from     text,
    ADD COLUMN settle_to       text,
    ADD COLUMN settle_event    text,
    ADD COLUMN settle_actor    text,
    ADD COLUMN settle_reason   text,
    ADD CONSTRAINT attempts_settle_audit_check CHECK (
        settle_audit_id IS NULL
        OR (settle_from IS NOT NULL AND settle_to IS NOT NULL AND settle_event IS NOT NULL
            AND settle_actor IS NOT NULL AND finished_at IS NOT NULL));

-- Every state change, who made it and why, in the order they were made (id).
CREATE OR REPLACE VIEW idem.transitions AS
    SELECT id, action_id, from_state, to_state, event, actor, reason, at
    FROM idem.transition_log
    UNION ALL
    SELECT audit_id, action_id, from_state, to_state, event, actor, reason, at
    FROM idem.attempts
    WHERE audit_id IS NOT NULL
    UNION ALL
    SELECT settle_audit_id, action_id, settle_from, settle_to, settle_event, settle_actor,
           settle_reason, finished_at
    FROM idem.attempts
    WHERE settle_audit_id IS NOT NULL;
