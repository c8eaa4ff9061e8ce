-- The price each offering was last read at: one row per offering, kept by
-- record_prices. The dashboard's boxes and the charts' "price in effect at
-- the start" read it instead of a subquery over every sample (500,000 rows
-- after a year of a busy region).
CREATE TABLE latest_prices (
    instance_type TEXT    NOT NULL,
    zone          TEXT    NOT NULL,
    at            BIGINT  NOT NULL,
    price         DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (instance_type, zone)
);
INSERT INTO latest_prices (instance_type, zone, at, price)
    SELECT DISTINCT ON (instance_type, zone) instance_type, zone, at, price
    FROM price_samples ORDER BY instance_type, zone, at DESC;
