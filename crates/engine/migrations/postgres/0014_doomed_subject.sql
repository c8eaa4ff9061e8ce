-- A doomed instance belongs to a subject (`box:NAME` or `pool:NAME`, as
-- leases name them), not always to a box: pools' dooms were written as
-- box = 'pool:NAME' and boxes' as the bare name. Named for what it holds,
-- and the boxes' rows written the same way.
ALTER TABLE doomed_instances RENAME COLUMN box TO subject;
UPDATE doomed_instances SET subject = 'box:' || subject WHERE subject NOT LIKE 'pool:%';
