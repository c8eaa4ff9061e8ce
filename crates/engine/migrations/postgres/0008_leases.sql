-- Several daemons on one state (a shared database, mostly): each says it is
-- alive, and boxes and pools are shared out by leases (holder, expiry in
-- unix milliseconds). A lease not renewed before it expires may be taken.
CREATE TABLE daemons (
    owner      TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    host       TEXT    NOT NULL,
    started_at BIGINT  NOT NULL,
    seen_at    BIGINT  NOT NULL,
    leases     BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, id)
);
CREATE TABLE leases (
    owner      TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    holder     TEXT    NOT NULL,
    expires_at BIGINT  NOT NULL,
    since      BIGINT  NOT NULL,
    PRIMARY KEY (owner, subject)
);
