-- Every instance with the owner tag a reconcile pass observed: when it was
-- first and last seen and in what state, so the history of a box or pool
-- survives AWS forgetting terminated instances (about an hour later).
CREATE TABLE instances_seen (
    instance_id   TEXT    PRIMARY KEY,
    owner         TEXT    NOT NULL,
    box           TEXT,
    pool          TEXT,
    instance_type TEXT    NOT NULL,
    zone          TEXT,
    market        TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    first_seen    INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL
);
CREATE INDEX instances_seen_by_owner ON instances_seen (owner, last_seen);
