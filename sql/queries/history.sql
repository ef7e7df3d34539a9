-- History (syncd/history.py, docs/history.md): every version of the rows of the tables listed in
-- `history.tables`, in `{history}.<table>`, written by triggers on the mirror table in the
-- transaction of the mirror write. `{table}` is the mirror table's name (checked against the
-- registry by syncd/history.py); its history table has the same name in `{history}`, and so has
-- the trigger function that writes it (functions and tables do not share names).

-- name: history_lock
-- One setup at a time (replicas starting together), for this installation's history schema.
SELECT pg_advisory_xact_lock(hashtext('syncd:history:' || '{history}'));

-- name: history_triggered
-- Mirror tables with syncd's history triggers; `complete`: both (history is written now).
SELECT c.relname::text AS table_name, count(*) = 2 AS complete
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relnamespace = to_regnamespace(replace('{mirror}', '"', ''))
   AND t.tgname IN ('syncd_history_insert', 'syncd_history_update')
 GROUP BY c.relname;

-- name: history_kept
-- Tables of the history schema (written now or kept from before): the pruner's work.
SELECT c.relname::text AS table_name
  FROM pg_class c
 WHERE c.relnamespace = to_regnamespace(replace('{history}', '"', '')) AND c.relkind = 'r'
 ORDER BY 1;

-- name: history_create_schema
CREATE SCHEMA IF NOT EXISTS {history};

-- name: history_create_table
-- The shape of every history table: the same as {history}.subscriptions in migration 0065, which
-- explains the columns (tests/test_history.py checks that the two agree).
DO $$
BEGIN
    IF to_regclass('{history}.{table}') IS NOT NULL THEN
        RETURN;
    END IF;
    CREATE TABLE {history}.{table} (
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
    CREATE UNIQUE INDEX ON {history}.{table} (id) WHERE valid_to IS NULL;
    CREATE INDEX ON {history}.{table} (valid_to) WHERE valid_to IS NOT NULL;
END
$$;

-- name: history_create_function
-- The triggers' function: a changed row (content or tombstone) closes its current version and
-- adds the next one. Measured (bench/history_bench.py, docs/history.md), each trigger the
-- cheaper of the two kinds for the writes it sees:
-- * inserts: once per statement, over its transition table (a whole new resync page costs one
--   statement more, not a call per row);
-- * updates: per row, and only for a row whose content or deletion changed (the trigger's WHEN,
--   evaluated without calling a function): most updates are a resync seeing an object again
--   unchanged, and a statement trigger would copy every such row into its transition tables
--   and compare them all.
-- The current version ends at now(), the writing transaction's time, as the row's synced_at;
-- never before it began (a transaction that started earlier but waited for the row's lock
-- writes after a later one), and the next version begins where it ends, so versions meet. A
-- tombstone is a `delete` version of no length holding the content the mirror keeps.
CREATE OR REPLACE FUNCTION {history}.{table}() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    closed timestamptz;
    current_ids text[];
    closed_ids text[];
    closed_at timestamptz[];
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        UPDATE {history}.{table} h
           SET valid_to = GREATEST(now(), h.valid_from)
         WHERE h.id = NEW.id AND h.valid_to IS NULL
        RETURNING h.valid_to INTO closed;
        INSERT INTO {history}.{table} (id, account_id, raw, api_version, operation, source,
                                       valid_from, valid_to, fetched_from, fetched_at)
        VALUES (NEW.id, NEW.account_id, NEW.raw, NEW.api_version,
                CASE WHEN NEW.deleted_at IS NOT NULL THEN 'delete'
                     WHEN closed IS NULL THEN 'insert'
                     ELSE 'update' END,
                NEW.changed_by,
                COALESCE(closed, now()),
                CASE WHEN NEW.deleted_at IS NOT NULL THEN COALESCE(closed, now()) END,
                NEW.fetched_from, NEW.fetched_at);
        RETURN NULL;
    END IF;
    -- New mirror rows have no current version: one statement adds their first, skipping (by the
    -- unique index of current versions) any row that has one: a row deleted by hand that comes
    -- back. Those few close it and follow it, in two more statements (one statement could not:
    -- WITH queries run in no set order, and the new current version must not meet the old one
    -- in the index).
    WITH added AS (
        INSERT INTO {history}.{table} (id, account_id, raw, api_version, operation, source,
                                       valid_from, valid_to, fetched_from, fetched_at)
        SELECT n.id, n.account_id, n.raw, n.api_version,
               CASE WHEN n.deleted_at IS NOT NULL THEN 'delete' ELSE 'insert' END,
               n.changed_by, now(), CASE WHEN n.deleted_at IS NOT NULL THEN now() END,
               n.fetched_from, n.fetched_at
          FROM new_rows n
        ON CONFLICT (id) WHERE valid_to IS NULL DO NOTHING
        RETURNING id
    )
    SELECT array_agg(n.id) INTO current_ids
      FROM new_rows n WHERE n.id NOT IN (SELECT a.id FROM added a);
    IF current_ids IS NULL THEN
        RETURN NULL;
    END IF;
    WITH ended AS (
        UPDATE {history}.{table} h
           SET valid_to = GREATEST(now(), h.valid_from)
         WHERE h.id = ANY (current_ids) AND h.valid_to IS NULL
        RETURNING h.id, h.valid_to
    )
    SELECT array_agg(e.id), array_agg(e.valid_to) INTO closed_ids, closed_at FROM ended e;
    INSERT INTO {history}.{table} (id, account_id, raw, api_version, operation, source,
                                   valid_from, valid_to, fetched_from, fetched_at)
    SELECT n.id, n.account_id, n.raw, n.api_version,
           CASE WHEN n.deleted_at IS NOT NULL THEN 'delete' ELSE 'update' END,
           n.changed_by, p.valid_to, CASE WHEN n.deleted_at IS NOT NULL THEN p.valid_to END,
           n.fetched_from, n.fetched_at
      FROM new_rows n JOIN unnest(closed_ids, closed_at) AS p(id, valid_to) ON p.id = n.id;
    RETURN NULL;
END
$fn$;

-- name: history_create_triggers
DROP TRIGGER IF EXISTS syncd_history_insert ON {mirror}.{table};
DROP TRIGGER IF EXISTS syncd_history_update ON {mirror}.{table};
CREATE TRIGGER syncd_history_insert AFTER INSERT ON {mirror}.{table}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {history}.{table}();
CREATE TRIGGER syncd_history_update AFTER UPDATE ON {mirror}.{table}
    FOR EACH ROW
    WHEN (OLD.raw IS DISTINCT FROM NEW.raw OR (OLD.deleted_at IS NULL) <> (NEW.deleted_at IS NULL))
    EXECUTE FUNCTION {history}.{table}();

-- name: history_drop_triggers
-- History off for the table: its versions stay (and are still pruned), nothing new is written.
DROP TRIGGER IF EXISTS syncd_history_insert ON {mirror}.{table};
DROP TRIGGER IF EXISTS syncd_history_update ON {mirror}.{table};

-- name: history_baseline_close
-- History turned on for a table (again): current versions the mirror row no longer matches (it
-- changed, or was tombstoned, while history was off) end when the row last changed (synced_at).
UPDATE {history}.{table} h
   SET valid_to = GREATEST(t.synced_at, h.valid_from)
  FROM {mirror}.{table} t
 WHERE h.id = t.id AND h.valid_to IS NULL
   AND (t.deleted_at IS NOT NULL OR h.raw IS DISTINCT FROM t.raw);

-- name: history_baseline_open
-- ... and the rows without a current version get one: a live row a `baseline` version from
-- when it last changed (or from where its previous version ended), a tombstoned row whose
-- history does not end in its deletion a `delete` version. Tombstoned rows never seen alive by
-- history get none: their history ended before it was kept.
INSERT INTO {history}.{table} (id, account_id, raw, api_version, operation, source,
                               valid_from, valid_to, fetched_from, fetched_at)
SELECT t.id, t.account_id, t.raw, t.api_version,
       CASE WHEN t.deleted_at IS NULL THEN 'baseline' ELSE 'delete' END,
       t.changed_by,
       GREATEST(t.synced_at, last.valid_to),
       CASE WHEN t.deleted_at IS NOT NULL THEN GREATEST(t.synced_at, last.valid_to) END,
       t.fetched_from, t.fetched_at
  FROM {mirror}.{table} t
  LEFT JOIN LATERAL (SELECT h.operation, h.valid_to FROM {history}.{table} h
                      WHERE h.id = t.id ORDER BY h.version DESC LIMIT 1) AS last ON true
 WHERE CASE WHEN t.deleted_at IS NULL THEN last.operation IS NULL OR last.valid_to IS NOT NULL
            ELSE last.operation IS NOT NULL AND last.operation <> 'delete' END;

-- name: history_prune
-- Versions replaced more than $1 days ago, at most $2 of them (the pruner repeats while it
-- deletes that many); current versions are never pruned.
DELETE FROM {history}.{table}
 WHERE (id, version) IN (SELECT id, version FROM {history}.{table}
                          WHERE valid_to < now() - $1::float8 * interval '1 day'
                          LIMIT $2);

-- name: history_install_row_level_security
-- Next to the other views' policies (sql/queries/views.sql, installed just before): a user
-- reads the versions of their own subscriptions, through billing.subscription_history.
DO $$
BEGIN
    PERFORM set_config('lock_timeout', '10s', true);
    PERFORM pg_advisory_xact_lock(hashtext('syncd:row_level_security'));
    DROP POLICY IF EXISTS syncd_own_rows ON {history}.subscriptions;
    ALTER TABLE {history}.subscriptions ENABLE ROW LEVEL SECURITY;
    CREATE POLICY syncd_own_rows ON {history}.subscriptions FOR SELECT TO authenticated
        USING (COALESCE(raw->'customer'->>'id', raw->>'customer') = ANY (ARRAY(
            SELECT c.id FROM {mirror}.customers c WHERE c.user_id = (SELECT auth.uid()::text))));
    GRANT USAGE ON SCHEMA {history} TO authenticated;
    GRANT SELECT ON {history}.subscriptions, {app}.subscription_history TO authenticated;
END
$$;

-- name: history_remove_row_level_security
-- What history_install_row_level_security installed, gone; anon/authenticated keep nothing in
-- the history schema (as remove_row_level_security does for the mirror's).
DO $$
DECLARE
    p record;
    r text;
BEGIN
    PERFORM set_config('lock_timeout', '10s', true);
    PERFORM pg_advisory_xact_lock(hashtext('syncd:row_level_security'));
    FOR p IN SELECT tablename, policyname FROM pg_policies
              WHERE schemaname = replace('{history}', '"', '') AND policyname LIKE 'syncd\_%'
    LOOP
        EXECUTE format('DROP POLICY %I ON {history}.%I', p.policyname, p.tablename);
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = '{history}.subscriptions'::regclass) THEN
        ALTER TABLE {history}.subscriptions DISABLE ROW LEVEL SECURITY;
    END IF;
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA {history} FROM %I', r);
            EXECUTE format('REVOKE ALL ON SCHEMA {history} FROM %I', r);
            EXECUTE format('REVOKE ALL ON {app}.subscription_history FROM %I', r);
        END IF;
    END LOOP;
END
$$;
