-- Launch intents: written before RunInstances, so a crash between the call and
-- its answer is healed by reusing the same client token on the next run.
CREATE TABLE intents (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    owner         TEXT    NOT NULL,
    box           TEXT    NOT NULL,
    generation    INTEGER NOT NULL,
    token         TEXT    NOT NULL UNIQUE,
    market        TEXT    NOT NULL,
    instance_type TEXT    NOT NULL,
    zone          TEXT,
    created_at    INTEGER NOT NULL,
    instance_id   TEXT,
    closed_at     INTEGER,
    outcome       TEXT
);
CREATE INDEX intents_by_box ON intents (owner, box, closed_at);

-- Append-only log of what happened, when and why.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    owner   TEXT    NOT NULL,
    box     TEXT,
    kind    TEXT    NOT NULL,
    message TEXT    NOT NULL
);
CREATE INDEX events_by_box ON events (owner, box, id);
