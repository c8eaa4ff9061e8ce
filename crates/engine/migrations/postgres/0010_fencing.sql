-- Fencing tokens: every time a lease changes hands it gets a new generation
-- from the owner's counter (never reused, even after a lease row is deleted
-- and taken again). A daemon checks that it still holds the generation it
-- planned under before each step that changes AWS or records a launch: a
-- daemon that was paused or cut off past its lease changes nothing once
-- another daemon took the subject over.
ALTER TABLE leases ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
CREATE TABLE lease_generations (
    owner TEXT   NOT NULL PRIMARY KEY,
    last  BIGINT NOT NULL
);
