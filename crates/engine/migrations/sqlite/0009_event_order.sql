-- Notifications follow the order in which events became visible, not their
-- ids: on PostgreSQL ids come from a sequence, and a transaction holding a
-- smaller id may commit after one holding a larger. An event gets its place
-- (`seq`) only once it is committed, from one sequencer at a time; sinks'
-- cursors count places. Events recorded before keep their id as their place.
ALTER TABLE events ADD COLUMN seq BIGINT;
UPDATE events SET seq = id;
CREATE INDEX events_by_seq ON events (owner, seq);
CREATE INDEX events_unordered ON events (id) WHERE seq IS NULL;
