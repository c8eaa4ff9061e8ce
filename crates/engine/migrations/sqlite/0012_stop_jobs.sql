-- A box's stop as a job: recorded before anything is done, then each step
-- (terminating, the DNS record, the instances gone, the volumes) as it is
-- done, so a daemon (this one after a restart, or another) finishes a stop
-- that an API request, a CLI run or a daemon left half done. The box stays
-- managed, and is never replaced, until its stop is done. `steps` holds one
-- line per step: unix ms, a tab, the step, a tab, what was done.
CREATE TABLE stop_jobs (
    owner        TEXT   NOT NULL,
    box          TEXT   NOT NULL,
    requested_at BIGINT NOT NULL,
    finished_at  BIGINT,
    state        TEXT   NOT NULL,
    steps        TEXT   NOT NULL,
    error        TEXT,
    PRIMARY KEY (owner, box)
);
