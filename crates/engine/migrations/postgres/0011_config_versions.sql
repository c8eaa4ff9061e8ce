-- Which config each daemon runs. A config's desired part (its boxes and
-- pools) is known by a fingerprint. A fingerprint seen for the first time
-- gets the owner's next generation; one seen before keeps its generation
-- unless its file was written after the newest config's (a deliberate
-- revert). A daemon whose config's generation is below the newest records
-- no deletion; a pool leaves the config (deleted) only once no live
-- daemon's config has it. `subjects` are the lease subjects the config
-- names (`box:NAME`, `pool:NAME`), one per line.
CREATE TABLE config_versions (
    owner       TEXT   NOT NULL,
    fingerprint TEXT   NOT NULL,
    generation  BIGINT NOT NULL,
    first_seen  BIGINT NOT NULL,
    written_at  BIGINT NOT NULL,
    subjects    TEXT   NOT NULL,
    PRIMARY KEY (owner, fingerprint)
);
ALTER TABLE daemons ADD COLUMN config TEXT;
