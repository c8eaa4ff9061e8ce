-- Worker pools registered through the API (pools from the config file are
-- read from it); the spec is the validated JSON the client sent.
CREATE TABLE pools (
    owner         TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    spec          TEXT    NOT NULL,
    registered_at INTEGER NOT NULL,
    PRIMARY KEY (owner, name)
);

-- Pool launch intents: written before RunInstances with the client token,
-- closed with what the call returned. An open one after a crash is retried
-- with the same token (AWS returns the first launch instead of a second).
CREATE TABLE pool_launches (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    owner         TEXT    NOT NULL,
    pool          TEXT    NOT NULL,
    token         TEXT    NOT NULL UNIQUE,
    instance_type TEXT    NOT NULL,
    zone          TEXT    NOT NULL,
    subnet        TEXT,
    market        TEXT    NOT NULL,
    count         INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    closed_at     INTEGER,
    outcome       TEXT
);
CREATE INDEX pool_launches_open ON pool_launches (owner, pool) WHERE closed_at IS NULL;

-- The last plan of each pool (what `pool list|show` print), and what the
-- next pass needs after a restart: the last desired capacity read from the
-- demand and since when the pool has been over it.
CREATE TABLE pool_status (
    owner         TEXT    NOT NULL,
    pool          TEXT    NOT NULL,
    at            INTEGER NOT NULL,
    desired       INTEGER NOT NULL,
    last_desired  INTEGER,
    surplus_since INTEGER,
    plan          TEXT    NOT NULL,
    PRIMARY KEY (owner, pool)
);

ALTER TABLE events ADD COLUMN pool TEXT;
CREATE INDEX events_pool ON events (owner, pool, id) WHERE pool IS NOT NULL;
