-- Connect (docs/connect.md): the accounts syncd mirrors, and the resync state, refetch queue and
-- ledger kept per account. With `stripe.accounts` empty nothing here changes how syncd works:
-- its runs stay under the account '' and no query filters rows by account.

-- The accounts to sync (stripe.accounts): the platform's own, the configured ones, and under
-- `all` every connected account discovered. An account that disconnects stays, `deauthorized`,
-- and so do its mirror rows (their account_id names it). The replicas lease active accounts
-- with advisory locks (syncd/leases.py); `leased_by` only tells who holds one now.
CREATE TABLE {state}.accounts (
    account_id      text PRIMARY KEY,
    platform        boolean NOT NULL DEFAULT false,   -- the API key's own account
    source          text NOT NULL CHECK (source IN ('platform', 'configured', 'discovered')),
    status          text NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'deauthorized', 'unlisted')),
    added_at        timestamptz NOT NULL DEFAULT now(),
    status_at       timestamptz NOT NULL DEFAULT now(),  -- when status last changed
    leased_by       text,
    leased_at       timestamptz,
    -- The account's stream, as its replica last recorded it (syncd status, /readyz):
    last_poll_at    timestamptz,                       -- the last poll that succeeded
    last_event_at   timestamptz,                       -- Stripe time of its newest event seen
    poll_interval   double precision,                  -- seconds between its polls now
    error           text,                              -- the last failure; NULL once one works
    failing_since   timestamptz,
    -- Something hinted at activity (an event of the platform's about it, a resync asked for):
    -- the replica leasing it polls it at once.
    hinted_at       timestamptz
);

-- Runs and coverage belong to one account ('' without stripe.accounts).
ALTER TABLE {state}.resync_runs ADD COLUMN account_id text NOT NULL DEFAULT '';
CREATE INDEX resync_runs_account ON {state}.resync_runs (account_id, status);
ALTER TABLE {state}.resync_coverage ADD COLUMN account_id text NOT NULL DEFAULT '';
ALTER TABLE {state}.resync_coverage DROP CONSTRAINT resync_coverage_pkey;
ALTER TABLE {state}.resync_coverage ADD PRIMARY KEY (account_id, table_name);

-- Each ledger row names the account its event came from.
ALTER TABLE {state}.events_ledger ADD COLUMN account_id text NOT NULL DEFAULT '';

-- Each queued refetch names the account that holds the object (the account's own replica
-- fetches it with that account's Stripe-Account header).
ALTER TABLE {state}.refetch_queue ADD COLUMN account_id text NOT NULL DEFAULT '';
CREATE INDEX refetch_queue_account ON {state}.refetch_queue (account_id, not_before);

-- The object's account: the caller's when it knows it, else the mirror row's (the writer's
-- ordering guard queues an object whose row it is looking at), else ''. Replaces 0064's
-- (dropped first: a fifth parameter makes a second function, and calls with four ambiguous).
DROP FUNCTION {state}.refetch_later(text, text, text, timestamptz);
CREATE FUNCTION {state}.refetch_later(
    table_name text, object_id text, parent_id text, not_before timestamptz,
    account text DEFAULT NULL
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    owner text := account;
BEGIN
    IF owner IS NULL THEN
        EXECUTE format('SELECT account_id FROM {mirror}.%I WHERE id = $1', table_name)
           INTO owner USING object_id;
    END IF;
    INSERT INTO {state}.refetch_queue AS q (table_name, object_id, parent_id, not_before,
                                            account_id)
    VALUES (table_name, object_id, parent_id, not_before, coalesce(owner, ''))
    ON CONFLICT ON CONSTRAINT refetch_queue_pkey
    DO UPDATE SET not_before = GREATEST(q.not_before, EXCLUDED.not_before);
    RETURN false;
END $$;

-- The key's own rows from before `stripe.accounts` was set (account_id '') become the
-- platform's: every mirror table, its events cursor, runs and coverage. Idempotent.
CREATE FUNCTION {state}.adopt_own_rows(platform text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    t text;
    n bigint;
    moved bigint := 0;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM {state}.events_cursor WHERE account_id = '')
       AND NOT EXISTS (SELECT 1 FROM {state}.resync_runs WHERE account_id = '') THEN
        RETURN 0;  -- nothing from before: no table is scanned
    END IF;
    FOR t IN SELECT c.relname FROM pg_class c
               JOIN pg_attribute a ON a.attrelid = c.oid
              WHERE c.relnamespace = '{mirror}'::regnamespace AND c.relkind IN ('r', 'p')
                AND a.attname = 'account_id' AND NOT a.attisdropped
    LOOP
        EXECUTE format('UPDATE {mirror}.%I SET account_id = $1 WHERE account_id = ''''', t)
          USING platform;
        GET DIAGNOSTICS n = ROW_COUNT;
        moved := moved + n;
    END LOOP;
    UPDATE {state}.events_cursor SET account_id = platform
     WHERE account_id = ''
       AND NOT EXISTS (SELECT 1 FROM {state}.events_cursor WHERE account_id = platform);
    UPDATE {state}.resync_runs SET account_id = platform WHERE account_id = '';
    UPDATE {state}.resync_coverage SET account_id = platform
     WHERE account_id = ''
       AND NOT EXISTS (SELECT 1 FROM {state}.resync_coverage WHERE account_id = platform);
    UPDATE {state}.refetch_queue SET account_id = platform WHERE account_id = '';
    RETURN moved;
END $$;
