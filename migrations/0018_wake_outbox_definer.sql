-- idem.wake_outbox() ticks idem.notify_clock with setval, which needs UPDATE on the sequence.
-- A role allowed to enqueue (INSERT on the inbox and outbox) should not need it too: the
-- function runs as its owner, on a fixed search path, and does nothing but read the
-- settings, tick the clock and notify.
ALTER FUNCTION idem.wake_outbox() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
