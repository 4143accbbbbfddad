-- hubspot.company.upsert is a built-in cell: registered like the others in 0010, so the
-- API accepts it before a worker running it has started.
INSERT INTO idem.cells (name, registered_by)
VALUES ('hubspot.company.upsert', 'migration')
ON CONFLICT DO NOTHING;
