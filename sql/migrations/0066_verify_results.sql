-- The daemon's periodic verify (`verify.interval`, syncd/verify_schedule.py): one row per run,
-- written when the run ends, so `syncd status` (another process, maybe another host) can say
-- when the mirror was last compared with Stripe, what drifted, and when it was last found equal.
-- The leader also reads the newest rows back at start: when the next run is due, and the
-- metrics' last clean time after a restart or a takeover.
CREATE TABLE {state}.verify_runs (
    run_id       bigserial PRIMARY KEY,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    -- clean: the mirror equals Stripe; drift: drifted objects found; incomplete: none found,
    -- but a table could not be verified (Stripe refused its list: `unverified` says why);
    -- failed: the run ended on an error (`error`), retried with backoff; interrupted: a
    -- resync started or the daemon stopped while it ran, the result was not used.
    status       text NOT NULL
                 CHECK (status IN ('clean', 'drift', 'incomplete', 'failed', 'interrupted')),
    -- Drifted objects per verified table, zeros included: {"customers": 1, "prices": 0, ...}.
    drift        jsonb NOT NULL DEFAULT '{}',
    -- Tables that could not be verified, with why: {"tax_ids": "Stripe refused ..."}.
    unverified   jsonb NOT NULL DEFAULT '{}',
    drifted      bigint NOT NULL DEFAULT 0,
    -- verify.repair: drifted objects written with what Stripe holds.
    repaired     bigint NOT NULL DEFAULT 0,
    requests     bigint NOT NULL DEFAULT 0,
    sample       integer,  -- verify.sample of the run; NULL: every object deep-compared
    repair       boolean NOT NULL DEFAULT false,
    error        text
);
-- `syncd status` and the due time read the newest run of some statuses.
CREATE INDEX verify_runs_status ON {state}.verify_runs (status, run_id DESC);
