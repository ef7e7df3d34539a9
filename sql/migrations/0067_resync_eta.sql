-- A running resync's estimate per table (syncd/resync/eta.py), rewritten every few seconds so
-- `syncd status` and `syncd resync --wait` (other processes, maybe other hosts) can show what
-- is left and when it should be done: the requests the table probably still needs and the
-- seconds they take at the rate budget. NULL until the run's first estimate; 0 once done.
-- `left_at_least`: the figures are a floor, not an estimate (a first run, whose oldest objects
-- nobody has seen yet: how many there are is unknown until the list reaches them).
ALTER TABLE {state}.resync_tables
    ADD COLUMN requests_left bigint,
    ADD COLUMN eta_seconds   double precision,
    ADD COLUMN left_at_least boolean NOT NULL DEFAULT false,
    ADD COLUMN progress_at   timestamptz;
