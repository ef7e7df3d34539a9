-- Failed attempts of a resync run, so `syncd resync --wait` can say what goes wrong while it
-- happens. The daemon's resync loop retries a failed run with backoff (5 s to 10 min); each
-- failure counts an attempt, leaves its message in `error` (the last error) and says when the
-- next try is due.
ALTER TABLE {state}.resync_runs
    ADD COLUMN attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN next_try_at timestamptz;
