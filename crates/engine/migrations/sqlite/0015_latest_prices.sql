-- The price each offering was last read at: one row per offering, kept by
-- record_prices. The dashboard's boxes and the charts' "price in effect at
-- the start" read it instead of a subquery over every sample (500,000 rows
-- after a year of a busy region).
CREATE TABLE latest_prices (
    instance_type TEXT    NOT NULL,
    zone          TEXT    NOT NULL,
    at            INTEGER NOT NULL,
    price         REAL    NOT NULL,
    PRIMARY KEY (instance_type, zone)
);
-- SQLite returns the bare columns of the row holding MAX(at).
INSERT INTO latest_prices (instance_type, zone, at, price)
    SELECT instance_type, zone, MAX(at), price FROM price_samples GROUP BY instance_type, zone;
