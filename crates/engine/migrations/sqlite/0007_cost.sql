-- Spot prices the daemon read, as a step function per offering: a sample is
-- kept when the price changed (or ten minutes passed), for the price charts
-- and `spotkeeper cost` (the price in effect over each instance's run).
CREATE TABLE price_samples (
    instance_type TEXT    NOT NULL,
    zone          TEXT    NOT NULL,
    at            INTEGER NOT NULL,
    price         REAL    NOT NULL
);
CREATE INDEX price_samples_by_offering ON price_samples (instance_type, zone, at);
CREATE INDEX price_samples_by_at ON price_samples (at);

-- On-demand prices from the AWS Price List, cached (they change rarely).
CREATE TABLE ondemand_prices (
    region        TEXT    NOT NULL,
    instance_type TEXT    NOT NULL,
    price         REAL,
    fetched_at    INTEGER NOT NULL,
    PRIMARY KEY (region, instance_type)
);

-- Each pool's desired and current units per pass, for the dashboard's chart.
CREATE TABLE pool_samples (
    owner   TEXT    NOT NULL,
    pool    TEXT    NOT NULL,
    at      INTEGER NOT NULL,
    desired INTEGER NOT NULL,
    current INTEGER NOT NULL
);
CREATE INDEX pool_samples_by_pool ON pool_samples (owner, pool, at);

-- When each instance was launched (AWS's launch time) and first seen going
-- away: its run, for the cost of what ran.
ALTER TABLE instances_seen ADD COLUMN launched_at INTEGER;
ALTER TABLE instances_seen ADD COLUMN ended_at INTEGER;
