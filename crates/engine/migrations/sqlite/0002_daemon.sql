-- Boxes the daemon keeps alive: registered by `up` (spec from the config
-- file) or through the API (spec stored here as JSON), removed by `stop`.
CREATE TABLE managed_boxes (
    owner         TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    spec          TEXT,
    registered_at INTEGER NOT NULL,
    PRIMARY KEY (owner, name)
);

-- Event ids already acted on: EventBridge delivers at least once.
CREATE TABLE processed_events (
    event_id TEXT    PRIMARY KEY,
    at       INTEGER NOT NULL,
    kind     TEXT    NOT NULL,
    instance TEXT
);

-- Instances with a termination coming (spot warning, rebalance with
-- replace, scheduled retirement): no longer the live box.
CREATE TABLE doomed_instances (
    instance_id TEXT    PRIMARY KEY,
    owner       TEXT    NOT NULL,
    box         TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    at          INTEGER NOT NULL
);
