-- Processed event ids are kept per owner: two installations sharing a state
-- file (or, later, a database) must not swallow each other's events.
CREATE TABLE processed_events_by_owner (
    owner    TEXT    NOT NULL,
    event_id TEXT    NOT NULL,
    at       INTEGER NOT NULL,
    kind     TEXT    NOT NULL,
    instance TEXT,
    PRIMARY KEY (owner, event_id)
);
INSERT INTO processed_events_by_owner (owner, event_id, at, kind, instance)
    SELECT '', event_id, at, kind, instance FROM processed_events;
DROP TABLE processed_events;
ALTER TABLE processed_events_by_owner RENAME TO processed_events;
CREATE INDEX processed_events_by_at ON processed_events (at);

-- Positive evidence for collecting a pool's instances: the pool was deleted
-- through this daemon's API, or it was seen in the config file and is gone
-- from it. Absence of a spec (a lost or wrong state file) is no evidence.
CREATE TABLE deleted_pools (
    owner TEXT    NOT NULL,
    pool  TEXT    NOT NULL,
    at    INTEGER NOT NULL,
    how   TEXT    NOT NULL,
    PRIMARY KEY (owner, pool)
);
CREATE TABLE config_pools_seen (
    owner TEXT    NOT NULL,
    pool  TEXT    NOT NULL,
    at    INTEGER NOT NULL,
    PRIMARY KEY (owner, pool)
);
