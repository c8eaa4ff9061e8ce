-- spotkeeper's state on PostgreSQL: the same tables as the SQLite file
-- (migrations/sqlite, 0001 to 0007 folded into one), in PostgreSQL's types.

-- Launch intents: written before RunInstances, so a crash between the call and
-- its answer is healed by reusing the same client token on the next run.
CREATE TABLE intents (
    id            BIGSERIAL PRIMARY KEY,
    owner         TEXT    NOT NULL,
    box           TEXT    NOT NULL,
    generation    BIGINT  NOT NULL,
    token         TEXT    NOT NULL UNIQUE,
    market        TEXT    NOT NULL,
    instance_type TEXT    NOT NULL,
    zone          TEXT,
    created_at    BIGINT  NOT NULL,
    instance_id   TEXT,
    closed_at     BIGINT,
    outcome       TEXT
);
CREATE INDEX intents_by_box ON intents (owner, box, closed_at);

-- Append-only log of what happened, when and why.
CREATE TABLE events (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT  NOT NULL,
    owner   TEXT    NOT NULL,
    box     TEXT,
    kind    TEXT    NOT NULL,
    message TEXT    NOT NULL,
    pool    TEXT
);
CREATE INDEX events_by_box ON events (owner, box, id);
CREATE INDEX events_pool ON events (owner, pool, id) WHERE pool IS NOT NULL;

CREATE TABLE managed_boxes (
    owner         TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    spec          TEXT,
    registered_at BIGINT  NOT NULL,
    PRIMARY KEY (owner, name)
);

-- Event ids already acted on, per owner: EventBridge delivers at least once,
-- and every daemon polls the same queue.
CREATE TABLE processed_events (
    owner    TEXT    NOT NULL,
    event_id TEXT    NOT NULL,
    at       BIGINT  NOT NULL,
    kind     TEXT    NOT NULL,
    instance TEXT,
    PRIMARY KEY (owner, event_id)
);
CREATE INDEX processed_events_by_at ON processed_events (at);

CREATE TABLE doomed_instances (
    instance_id TEXT    PRIMARY KEY,
    owner       TEXT    NOT NULL,
    box         TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    at          BIGINT  NOT NULL
);

CREATE TABLE pools (
    owner         TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    spec          TEXT    NOT NULL,
    registered_at BIGINT  NOT NULL,
    PRIMARY KEY (owner, name)
);

CREATE TABLE pool_launches (
    id            BIGSERIAL PRIMARY KEY,
    owner         TEXT    NOT NULL,
    pool          TEXT    NOT NULL,
    token         TEXT    NOT NULL UNIQUE,
    instance_type TEXT    NOT NULL,
    zone          TEXT    NOT NULL,
    subnet        TEXT,
    market        TEXT    NOT NULL,
    count         BIGINT  NOT NULL,
    created_at    BIGINT  NOT NULL,
    closed_at     BIGINT,
    outcome       TEXT
);
CREATE INDEX pool_launches_open ON pool_launches (owner, pool) WHERE closed_at IS NULL;

CREATE TABLE pool_status (
    owner         TEXT    NOT NULL,
    pool          TEXT    NOT NULL,
    at            BIGINT  NOT NULL,
    desired       BIGINT  NOT NULL,
    last_desired  BIGINT,
    surplus_since BIGINT,
    plan          TEXT    NOT NULL,
    PRIMARY KEY (owner, pool)
);

CREATE TABLE instances_seen (
    instance_id   TEXT    PRIMARY KEY,
    owner         TEXT    NOT NULL,
    box           TEXT,
    pool          TEXT,
    instance_type TEXT    NOT NULL,
    zone          TEXT,
    market        TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    first_seen    BIGINT  NOT NULL,
    last_seen     BIGINT  NOT NULL,
    launched_at   BIGINT,
    ended_at      BIGINT
);
CREATE INDEX instances_seen_by_owner ON instances_seen (owner, last_seen);

CREATE TABLE deleted_pools (
    owner TEXT    NOT NULL,
    pool  TEXT    NOT NULL,
    at    BIGINT  NOT NULL,
    how   TEXT    NOT NULL,
    PRIMARY KEY (owner, pool)
);
CREATE TABLE config_pools_seen (
    owner TEXT    NOT NULL,
    pool  TEXT    NOT NULL,
    at    BIGINT  NOT NULL,
    PRIMARY KEY (owner, pool)
);

CREATE TABLE notify_cursors (
    owner       TEXT    NOT NULL,
    sink        TEXT    NOT NULL,
    last_event  BIGINT  NOT NULL,
    attempts    BIGINT  NOT NULL DEFAULT 0,
    last_error  TEXT,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (owner, sink)
);

CREATE TABLE price_samples (
    instance_type TEXT    NOT NULL,
    zone          TEXT    NOT NULL,
    at            BIGINT  NOT NULL,
    price         DOUBLE PRECISION NOT NULL
);
CREATE INDEX price_samples_by_offering ON price_samples (instance_type, zone, at);
CREATE INDEX price_samples_by_at ON price_samples (at);

CREATE TABLE ondemand_prices (
    region        TEXT    NOT NULL,
    instance_type TEXT    NOT NULL,
    price         DOUBLE PRECISION,
    fetched_at    BIGINT  NOT NULL,
    PRIMARY KEY (region, instance_type)
);

CREATE TABLE pool_samples (
    owner   TEXT    NOT NULL,
    pool    TEXT    NOT NULL,
    at      BIGINT  NOT NULL,
    desired BIGINT  NOT NULL,
    current BIGINT  NOT NULL
);
CREATE INDEX pool_samples_by_pool ON pool_samples (owner, pool, at);
