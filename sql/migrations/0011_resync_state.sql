-- Full resync state: a run, its tables and its created-time slices, checkpointed page by page in
-- the same transaction as the rows each page wrote, so a killed resync resumes where it stopped.

-- One full (or partial: `tables`) re-list of the mirror.
CREATE TABLE {state}.resync_runs (
    run_id          bigserial PRIMARY KEY,
    -- Sorted table names; NULL: every type the configuration selects.
    tables          text[],
    reason          text NOT NULL DEFAULT '',
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'done', 'failed', 'superseded')),
    -- Stripe-clock time taken before the first list request: every row confirmed by this run
    -- carries a newer fetched_at; older unconfirmed rows are the candidates for tombstones.
    started_version double precision,
    requested_at    timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    error           text
);
CREATE INDEX resync_runs_unfinished ON {state}.resync_runs (run_id)
    WHERE status IN ('pending', 'running');

-- Per table of a run: whether its list could be read at all, and the sweep's outcome.
CREATE TABLE {state}.resync_tables (
    run_id      bigint NOT NULL REFERENCES {state}.resync_runs ON DELETE CASCADE,
    table_name  text NOT NULL,
    status      text NOT NULL DEFAULT 'listing'
                CHECK (status IN ('listing', 'listed', 'swept', 'unavailable')),
    tombstoned  bigint NOT NULL DEFAULT 0,
    error       text,
    PRIMARY KEY (run_id, table_name)
);

-- A created-time range [lo, hi) of one list call (variant) of one table, walked newest first.
-- `cursor` is the last id written (starting_after for the next page) and `cursor_created` its
-- created second; both move in the transaction that wrote the page.
CREATE TABLE {state}.resync_slices (
    run_id         bigint NOT NULL REFERENCES {state}.resync_runs ON DELETE CASCADE,
    table_name     text NOT NULL,
    variant        integer NOT NULL,
    slice_no       integer NOT NULL,
    lo             bigint NOT NULL DEFAULT 0,
    hi             bigint,
    cursor         text,
    cursor_created bigint,
    objects        bigint NOT NULL DEFAULT 0,
    pages          integer NOT NULL DEFAULT 0,
    rejected       integer NOT NULL DEFAULT 0,
    -- Children written with the slice's pages (items, lines, per-parent lists).
    children       bigint NOT NULL DEFAULT 0,
    done           boolean NOT NULL DEFAULT false,
    PRIMARY KEY (run_id, table_name, variant, slice_no)
);

-- Objects a list returned that cannot be mirrored (no id, not an object of the listed type):
-- kept with the reason, never silently dropped.
CREATE TABLE {state}.rejected_objects (
    id          bigserial PRIMARY KEY,
    run_id      bigint,
    table_name  text NOT NULL,
    object_id   text,
    reason      text NOT NULL,
    raw         jsonb,
    rejected_at timestamptz NOT NULL DEFAULT now()
);
