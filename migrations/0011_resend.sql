-- A person may send a failed action again ('resend': it had no effect, so the next request
-- goes out under a new key generation) or have a needs_human case checked at the partner
-- again ('recheck'). Both are decisions, audited like the others.
ALTER TABLE idem.decisions DROP CONSTRAINT decisions_kind_check;
ALTER TABLE idem.decisions ADD CONSTRAINT decisions_kind_check
    CHECK (kind IN ('approve', 'reject', 'happened', 'not_happened', 'retry', 'resend', 'recheck'));

-- The console lists recent failures (what a person may send again), newest first.
CREATE INDEX actions_failed_idx ON idem.actions (updated_at) WHERE state = 'failed';
