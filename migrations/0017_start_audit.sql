-- The start of an attempt is audited on the attempt row itself instead of a second row.
-- Every start already wrote two rows (the attempt, written ahead, and its transition) and
-- the attempt holds who started it and when; issue 17 measured 7 row writes per action,
-- 3 of them inserts. The start's transition now lives in columns of the attempt (audit_id
-- drawn from the same sequence as the other transitions, so one order runs across both),
-- and `idem.transitions` becomes a view over both: readers are unchanged. The other
-- transitions (settle, decisions, lease expiry) are rows of `idem.transition_log`.
-- Attempts written before this migration keep their start in the log (audit_id NULL).
ALTER TABLE idem.transitions RENAME TO transition_log;
ALTER SEQUENCE idem.transitions_id_seq RENAME TO transition_log_id_seq;
ALTER TABLE idem.transition_log RENAME CONSTRAINT transitions_pkey TO transition_log_pkey;
ALTER INDEX idem.transitions_action_idx RENAME TO transition_log_action_idx;

ALTER TABLE idem.attempts
    ADD COLUMN audit_id   bigint,
    ADD COLUMN from_state text,
    ADD COLUMN to_state   text,
    ADD COLUMN event      text,
    ADD COLUMN actor      text,
    ADD COLUMN reason     text,
    ADD COLUMN at         timestamptz,
    ADD CONSTRAINT attempts_audit_check CHECK (
        audit_id IS NULL
        OR (from_state IS NOT NULL AND to_state IS NOT NULL AND event IS NOT NULL
            AND actor IS NOT NULL AND at IS NOT NULL));

-- Every state change, who made it and why, in the order they were made (id).
CREATE VIEW idem.transitions AS
    SELECT id, action_id, from_state, to_state, event, actor, reason, at
    FROM idem.transition_log
    UNION ALL
    SELECT audit_id, action_id, from_state, to_state, event, actor, reason, at
    FROM idem.attempts
    WHERE audit_id IS NOT NULL;
