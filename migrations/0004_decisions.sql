-- People's decisions on actions: approvals and rejections of actions awaiting approval, and
-- resolutions of needs_human cases. Every decision names who made it, when and why, and the
-- argument fingerprint it was made on: an approval holds only for exactly those arguments.
CREATE TABLE idem.decisions (
    id          bigserial   PRIMARY KEY,
    action_id   uuid        NOT NULL REFERENCES idem.actions (action_id) ON DELETE CASCADE,
    kind        text        NOT NULL CHECK (kind IN ('approve', 'reject', 'happened',
                                                     'not_happened', 'retry')),
    fingerprint bytea       NOT NULL,
    actor       text        NOT NULL CHECK (actor <> ''),
    reason      text,
    partner_ref text,
    at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX decisions_action_idx ON idem.decisions (action_id);
CREATE INDEX actions_awaiting_idx ON idem.actions (updated_at) WHERE state = 'awaiting_approval';
