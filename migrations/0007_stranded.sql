-- Actions still `received` long after enqueue: their delivery never came (a Kafka message
-- dropped by retention before any worker read it, a topic recreated). The sweeper finds
-- them here and drives them from the inbox row, which holds everything the message did.
CREATE INDEX actions_received_idx ON idem.actions (created_at) WHERE state = 'received';
