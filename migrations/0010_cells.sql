-- The cells the fleet runs, so that enqueue refuses an unknown cell on every surface, SQL
-- included, instead of accepting an action no worker can carry (it went dead later).
-- Migrations register idem's built-in cells; every worker registers its own (declarative
-- cells from TOML among them) when it starts. A cell stays registered once a worker ran it.
CREATE TABLE idem.cells (
    name          text PRIMARY KEY,
    registered_by text NOT NULL,
    first_seen    timestamptz NOT NULL DEFAULT now(),
    last_seen     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO idem.cells (name, registered_by)
SELECT unnest(ARRAY['stripe.charge', 'stripe.refund', 'hubspot.upsert', 'slack.post',
                    'twilio.sms.send', 'gmail.send', 'amadeus.price', 'amadeus.book',
                    'amadeus.cancel', 'bench.noop']), 'migration';
-- Cells of actions already enqueued stay valid.
INSERT INTO idem.cells (name, registered_by)
SELECT DISTINCT cell, 'migration: existing actions' FROM idem.actions
ON CONFLICT DO NOTHING;

-- Refuse an unknown cell at enqueue: SQLSTATE 'IDM03', naming the known ones.
CREATE FUNCTION idem.known_cell() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM idem.cells c WHERE c.name = NEW.cell) THEN
        RAISE EXCEPTION 'idem.enqueue: unknown cell %; known: %', NEW.cell,
                        (SELECT string_agg(c.name, ', ' ORDER BY c.name) FROM idem.cells c)
            USING ERRCODE = 'IDM03', COLUMN = 'cell';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER actions_known_cell BEFORE INSERT ON idem.actions
    FOR EACH ROW EXECUTE FUNCTION idem.known_cell();
