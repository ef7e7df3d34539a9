-- Which mirrored types a finished resync has covered (listed, or fetched with their parent), so
-- a type added to `sync.include` later is backfilled at the next start, and only that type.
-- Filled as runs finish; a database upgraded from an earlier version starts from a baseline
-- (the types selected at the first start after the upgrade, see resync_schedule.py).
CREATE TABLE {state}.resync_coverage (
    table_name  text PRIMARY KEY,
    run_id      bigint,           -- NULL: the baseline of an upgraded database
    covered_at  timestamptz NOT NULL DEFAULT now()
);
