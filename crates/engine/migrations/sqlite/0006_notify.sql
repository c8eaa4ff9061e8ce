-- Notifications: the event log is the outbox; each [[notify]] sink keeps how
-- far it has been told (the last event id the receiver took) and its retry
-- state, so a restart resumes where delivery stopped.
CREATE TABLE notify_cursors (
    owner       TEXT    NOT NULL,
    sink        TEXT    NOT NULL,
    last_event  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (owner, sink)
);
