-- History (docs/history.md): for the tables listed in `history.tables`, every version of a row
-- is kept in `{history}` (database.history_schema), one table per mirror table, written by
-- triggers in the transaction of the mirror write. syncd/history.py creates those tables and
-- triggers at start and on `syncd migrate`, for the configured tables only; this migration adds
-- what every installation needs whatever the configuration.

-- 1. The source of a row's content: the writer sets `changed_by` to where the change came from
--    (an event id, `resync run N`, `resync run N sweep`, `overlap refetch`, `verify repair`)
--    when the content changes or the row is tombstoned, and keeps it otherwise, so a history
--    trigger can record it with the version. No default: the column is added without
--    rewriting the tables (rows written before say NULL: unknown).
DO $migration$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.relname FROM pg_class c
         WHERE c.relnamespace = to_regnamespace(replace('{mirror}', '"', '')) AND c.relkind = 'r'
           AND EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = c.oid AND a.attname = 'fetched_at' AND NOT a.attisdropped)
    LOOP
        EXECUTE format('ALTER TABLE {mirror}.%I ADD COLUMN changed_by text', t.relname);
    END LOOP;
END $migration$;

-- 2. The history of subscriptions always exists (empty while history is off for them), so the
--    application view below works whatever `history.tables` says. Every history table has this
--    shape (syncd/history.py creates the others from sql/queries/history.sql, whose
--    history_create_table must stay equal to this: tests/test_history.py compares them):
--      version       orders the versions of a row (and of the table)
--      id, account_id, raw, api_version   the mirror row's
--      operation     insert, update, delete (a tombstone: a zero-length version holding the last
--                    content), baseline (the row as found when history was turned on)
--      source        the mirror row's changed_by: what made the change
--      valid_from, valid_to   when the mirror held this content (the server's clock, at the
--                    writing statement); valid_to NULL: the current version. Consecutive
--                    versions of a row meet: one's valid_to is the next one's valid_from.
--      fetched_from, fetched_at   the content's version on Stripe's clock (migration 0064)
CREATE SCHEMA IF NOT EXISTS {history};

CREATE TABLE {history}.subscriptions (
    version      bigint GENERATED ALWAYS AS IDENTITY,
    id           text NOT NULL,
    account_id   text NOT NULL,
    raw          jsonb NOT NULL,
    api_version  text,
    operation    text NOT NULL CHECK (operation IN ('insert', 'update', 'delete', 'baseline')),
    source       text,
    valid_from   timestamptz NOT NULL,
    valid_to     timestamptz,
    fetched_from timestamptz NOT NULL,
    fetched_at   timestamptz NOT NULL,
    PRIMARY KEY (id, version)
);
-- One current version per row (the trigger closes it before adding the next), and the closed
-- versions by age for the retention pruner.
CREATE UNIQUE INDEX ON {history}.subscriptions (id) WHERE valid_to IS NULL;
CREATE INDEX ON {history}.subscriptions (valid_to) WHERE valid_to IS NOT NULL;
-- The row-level policy finds a user's versions through their customers (syncd/history.py).
CREATE INDEX subscriptions_customer ON {history}.subscriptions
    ((COALESCE(raw->'customer'->>'id', raw->>'customer')));

-- A user's plan changes over time: one row per version of each of their subscriptions, oldest
-- first by `version`. `change` says what the version is (insert, update, delete, baseline);
-- [valid_from, valid_to) when the mirror held it (valid_to NULL: now). Fields are read from the
-- version's `raw` as the mirror's typed columns read them (0010, 0061): price_id and quantity
-- are the first item's. Runs as the caller (security_invoker), so the policy syncd/history.py
-- installs next to the other views' (Supabase) limits it to the user's own subscriptions.
CREATE VIEW {app}.subscription_history AS
SELECT h.id,
       c.user_id,
       COALESCE(h.raw->'customer'->>'id', h.raw->>'customer') AS customer_id,
       h.raw->>'status' AS status,
       h.raw->'items'->'data'->0->'price'->>'id' AS price_id,
       COALESCE(h.raw->'items'->'data'->0->'price'->'product'->>'id',
                h.raw->'items'->'data'->0->'price'->>'product') AS product_id,
       {state}.json_bigint(h.raw->'items'->'data'->0->>'quantity') AS quantity,
       {state}.json_boolean(h.raw->>'cancel_at_period_end') AS cancel_at_period_end,
       {state}.json_time(h.raw->>'canceled_at') AS canceled_at,
       h.operation AS change,
       h.valid_from,
       h.valid_to,
       h.version
  FROM {history}.subscriptions h
  LEFT JOIN {mirror}.customers c ON c.id = COALESCE(h.raw->'customer'->>'id', h.raw->>'customer');

DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 150000 THEN
        ALTER VIEW {app}.subscription_history SET (security_invoker = true);
    END IF;
END
$$;
