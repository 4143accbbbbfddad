-- Putting dead work back, audited. A dead letter (bytes that could not become an action)
-- may be replayed once: its bytes go back into the outbox, and who, when and why are kept
-- on the letter. A dead action (an unknown cell, arguments its cell refused) may be revived:
-- back to received and delivered again, recorded as a decision like the others.
ALTER TABLE idem.dead_letters
    ADD COLUMN replayed_at   timestamptz,
    ADD COLUMN replayed_by   text,
    ADD COLUMN replay_reason text,
    ADD CONSTRAINT dead_letters_replay_check CHECK (
        (replayed_at IS NULL) = (replayed_by IS NULL)
        AND (replayed_by IS NULL OR replayed_by <> ''));

ALTER TABLE idem.decisions DROP CONSTRAINT decisions_kind_check;
ALTER TABLE idem.decisions ADD CONSTRAINT decisions_kind_check
    CHECK (kind IN ('approve', 'reject', 'happened', 'not_happened', 'retry', 'resend', 'recheck',
                    'revive'));

-- The console lists dead actions beside the dead letters, newest first.
CREATE INDEX IF NOT EXISTS actions_dead_idx ON idem.actions (updated_at) WHERE state = 'dead';
