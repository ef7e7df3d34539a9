-- Full resync: runs, tables, slices (checkpoints) and the sweep for vanished objects.

-- name: resync_find_unfinished
-- The unfinished run of exactly this scope ($1 sorted tables, NULL: everything) of account $2
-- ('' with one account), if any.
SELECT run_id, tables, reason, status, started_version
  FROM {state}.resync_runs
 WHERE status IN ('pending', 'running') AND tables IS NOT DISTINCT FROM $1::text[]
   AND account_id = $2
 ORDER BY run_id LIMIT 1;

-- name: resync_unfinished_runs
SELECT run_id, tables, reason, status, started_version
  FROM {state}.resync_runs WHERE status IN ('pending', 'running') AND account_id = $1
 ORDER BY run_id;

-- name: resync_accounts_waiting
-- Accounts with a run to do (Connect: the replica leasing one wakes its resync loop).
SELECT DISTINCT account_id FROM {state}.resync_runs WHERE status IN ('pending', 'running');

-- name: resync_create_run
INSERT INTO {state}.resync_runs (tables, reason, account_id) VALUES ($1::text[], $2, $3)
RETURNING run_id;

-- name: resync_start_run
-- Keeps the first start's version on a resumed run: rows it confirmed stay confirmed.
UPDATE {state}.resync_runs
   SET status = 'running', started_version = COALESCE(started_version, $2),
       started_at = COALESCE(started_at, now())
 WHERE run_id = $1
RETURNING started_version, reason, started_at;

-- name: resync_supersede
-- Unfinished runs whose scope the new run $1 (scope $2, NULL: everything) covers.
UPDATE {state}.resync_runs
   SET status = 'superseded', finished_at = now(), error = 'superseded by run ' || $1
 WHERE status IN ('pending', 'running') AND run_id <> $1
   AND account_id = (SELECT account_id FROM {state}.resync_runs WHERE run_id = $1)
   AND ($2::text[] IS NULL OR (tables IS NOT NULL AND tables <@ $2::text[]));

-- name: resync_finish_run
UPDATE {state}.resync_runs SET status = $2, finished_at = now(), error = $3 WHERE run_id = $1;

-- name: resync_get_run
SELECT run_id, tables, reason, status, started_version, requested_at, started_at, finished_at,
       error
  FROM {state}.resync_runs WHERE run_id = $1;

-- name: resync_has_completed
SELECT EXISTS (SELECT 1 FROM {state}.resync_runs
                WHERE status IN ('done', 'done_with_problems') AND tables IS NULL
                  AND account_id = $1);

-- name: resync_last_completed
-- Unix time the last complete (every type) resync finished; NULL: never.
SELECT extract(epoch FROM max(finished_at))::double precision
  FROM {state}.resync_runs
 WHERE status IN ('done', 'done_with_problems') AND tables IS NULL AND account_id = $1;

-- name: resync_previous_objects
-- Objects per table in the last finished run: the biggest types start first.
SELECT s.table_name, sum(s.objects)::bigint AS objects
  FROM {state}.resync_slices s
 WHERE s.run_id = (SELECT max(run_id) FROM {state}.resync_runs
                    WHERE status IN ('done', 'done_with_problems') AND account_id = $1)
 GROUP BY s.table_name;

-- name: resync_init_table
INSERT INTO {state}.resync_tables (run_id, table_name) VALUES ($1, $2) ON CONFLICT DO NOTHING;

-- name: resync_tables_of
SELECT table_name, status, tombstoned, error FROM {state}.resync_tables WHERE run_id = $1;

-- name: resync_set_table
UPDATE {state}.resync_tables SET status = $3, error = COALESCE($4, error)
 WHERE run_id = $1 AND table_name = $2;

-- name: resync_count_tombstones
UPDATE {state}.resync_tables SET tombstoned = tombstoned + $3
 WHERE run_id = $1 AND table_name = $2;

-- name: resync_insert_slice
INSERT INTO {state}.resync_slices (run_id, table_name, variant, slice_no, lo, hi)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING;

-- name: resync_slices_of
SELECT table_name, variant, slice_no, lo, hi, cursor, cursor_created, objects, pages, rejected,
       children, done
  FROM {state}.resync_slices WHERE run_id = $1 ORDER BY table_name, variant, slice_no;

-- name: resync_set_lo
-- A split: the running slice keeps [lo, hi). Its cursor is left to its own checkpoints (the
-- cursor in memory may belong to a page not committed yet).
UPDATE {state}.resync_slices SET lo = $5
 WHERE run_id = $1 AND table_name = $2 AND variant = $3 AND slice_no = $4;

-- name: resync_restart_slice
-- The cursor object vanished: walk on from its second, without a cursor.
UPDATE {state}.resync_slices SET hi = $5, cursor = NULL
 WHERE run_id = $1 AND table_name = $2 AND variant = $3 AND slice_no = $4;

-- name: resync_write_page
-- A list page as one statement: one round trip, atomic without a transaction. Written as five
-- (BEGIN, upsert, NOTIFY, checkpoint, COMMIT), a page kept its writer's connection idle in
-- transaction a third of the time, waiting for syncd's busy event loop between round trips.
-- * the table's upsert from writer.sql, embedded where `written` says so ($1 objects,
--   $2 account, $3 API version, $4 version: [earliest, latest]);
-- * the NOTIFY of what changed ($5 channel, '' for none; $6 table), in messages shaped as
--   Writer's (`{table, changes: [{id, op}]}`) and cut below PostgreSQL's 8000-byte limit;
-- * the slice's checkpoint ($6 its table, $7 the run, $8-$9 the slice, $10-$16 its progress),
--   so a restart resumes exactly after the last page written.
-- The answer is the count per op, and the number of messages sent.
WITH written AS (
{upsert}
),
checkpoint AS (
    UPDATE {state}.resync_slices
       SET cursor = $10, cursor_created = $11, objects = $12, pages = $13, rejected = $14,
           children = $15, done = $16
     WHERE run_id = $7 AND table_name = $6 AND variant = $8 AND slice_no = $9
),
announced AS (
    -- Text put together, not jsonb built: jsonb_build_object and jsonb_agg cost 6 us a row, a
    -- tenth of the page's insert. to_json() quotes the strings.
    SELECT pg_notify($5, '{"table":' || to_json($6::text)::text || ',"changes":['
                         || string_agg('{"id":' || to_json(id)::text || ',"op":"' || op || '"}', ',')
                         || ']}')
      FROM (SELECT id, op,
                   -- an item takes its id's bytes plus 24 ({"id":"","op":"insert"},): 30 is safe
                   sum(octet_length(id) + 30) OVER (ROWS UNBOUNDED PRECEDING) / 7000 AS part
              FROM written
             WHERE op <> 'same' AND $5 <> '') AS c
     GROUP BY part
)
SELECT op, count(*)::int AS n FROM written GROUP BY op
UNION ALL
SELECT 'notifications', count(*)::int FROM announced;

-- name: resync_checkpoint
-- The slice's checkpoint alone ($1 table, $2 run, $3-$4 the slice, $5-$11 its progress): for a
-- page written object by object after PostgreSQL refused it whole (resync.write_or_quarantine).
UPDATE {state}.resync_slices
   SET cursor = $5, cursor_created = $6, objects = $7, pages = $8, rejected = $9,
       children = $10, done = $11
 WHERE run_id = $2 AND table_name = $1 AND variant = $3 AND slice_no = $4;

-- name: resync_table_problem
-- A problem the run met on a type it otherwise listed (a per-parent list answering 404).
INSERT INTO {state}.resync_tables (run_id, table_name, error) VALUES ($1, $2, $3)
ON CONFLICT (run_id, table_name) DO UPDATE SET error = EXCLUDED.error;

-- name: resync_progress
-- What `syncd resync --wait` and `syncd status` show: per table, objects and pages so far,
-- whether it is done, and the running resync's last estimate (requests left, seconds left,
-- when it was made and how long ago; NULL before the first).
SELECT t.table_name, t.status, t.tombstoned, t.error,
       COALESCE(sum(s.objects), 0)::bigint AS objects,
       COALESCE(sum(s.pages), 0)::bigint AS pages,
       COALESCE(sum(s.rejected), 0)::bigint AS rejected,
       COALESCE(sum(s.children), 0)::bigint AS children,
       COALESCE(bool_and(s.done), false) AS listed,
       t.requests_left, t.eta_seconds, t.left_at_least, t.progress_at,
       extract(epoch FROM now() - t.progress_at)::float8 AS progress_age
  FROM {state}.resync_tables t
  LEFT JOIN {state}.resync_slices s USING (run_id, table_name)
 WHERE t.run_id = $1
 GROUP BY t.run_id, t.table_name
 ORDER BY t.table_name;

-- name: resync_unconfirmed
-- Live rows of {table} that no answer since the run began confirmed ($1: threshold), by id
-- after $2: the candidates for tombstones once a complete list did not show them.
-- $4: the account's rows only (Connect), NULL: every row.
SELECT id FROM {mirror}.{table}
 WHERE deleted_at IS NULL AND fetched_at < to_timestamp($1) AND id > $2
   AND ($4::text IS NULL OR account_id = $4)
 ORDER BY id LIMIT $3;

-- name: resync_unconfirmed_children
-- Same for an owned child table, with the parent's id.
SELECT id, parent_id FROM {mirror}.{table}
 WHERE deleted_at IS NULL AND fetched_at < to_timestamp($1) AND id > $2
   AND ($4::text IS NULL OR account_id = $4)
 ORDER BY id LIMIT $3;

-- name: resync_record_failure
-- A failed attempt of unfinished run $1: its error ($2) and when the daemon tries again ($3
-- seconds from now). `syncd resync --wait` prints each one.
UPDATE {state}.resync_runs
   SET attempts = attempts + 1, error = $2, next_try_at = now() + make_interval(secs => $3)
 WHERE run_id = $1 AND status IN ('pending', 'running');

-- name: resync_watch_run
-- What `syncd resync --wait` follows: status, failed attempts, the last error, the next try.
SELECT run_id, status, error, attempts,
       extract(epoch FROM next_try_at - now())::float8 AS next_try_in
  FROM {state}.resync_runs WHERE run_id = $1;

-- name: resync_withdraw_request
-- `syncd resync --wait` found no daemon: take its request back unless a daemon took it meanwhile.
UPDATE {state}.requests
   SET status = 'failed', finished_at = now(), error = 'no daemon took the request'
 WHERE id = $1 AND status = 'pending'
RETURNING id;

-- name: resync_cover
-- Run $1 covered tables $2 (listed, or fetched with their parents) of account $3.
INSERT INTO {state}.resync_coverage AS c (table_name, run_id, account_id)
SELECT t, $1, $3 FROM unnest($2::text[]) AS t
ON CONFLICT (account_id, table_name) DO UPDATE SET run_id = EXCLUDED.run_id, covered_at = now();

-- name: resync_covered
SELECT table_name FROM {state}.resync_coverage WHERE account_id = $1;

-- name: resync_walk_of
-- A per-parent walk's checkpoint (resync/parents.py): the last parent done, parents, children.
SELECT cursor, objects, children, done FROM {state}.resync_slices
 WHERE run_id = $1 AND table_name = $2 AND variant = $3 AND slice_no = 0;

-- name: resync_walk_checkpoint
INSERT INTO {state}.resync_slices (run_id, table_name, variant, slice_no, cursor, objects,
                                   children, done)
VALUES ($1, $2, $3, 0, $4, $5, $6, $7)
ON CONFLICT (run_id, table_name, variant, slice_no) DO UPDATE
   SET cursor = EXCLUDED.cursor, objects = EXCLUDED.objects, children = EXCLUDED.children,
       done = EXCLUDED.done;

-- name: resync_parent_ids
-- The live parents of a per-parent walk, by id after $1 ($3: of this account; NULL: any).
SELECT id FROM {mirror}.{table}
 WHERE deleted_at IS NULL AND id > $1 AND ($3::text IS NULL OR account_id = $3)
 ORDER BY id LIMIT $2;

-- name: resync_entitled_customers
-- Customers ({table}) that can have active entitlements, by id after $1: a live subscription
-- that grants them (Stripe: active, trialing or past_due) on a product with live features, or
-- live entitlement rows in the mirror (their set may have become empty).
SELECT c.id FROM {mirror}.{table} c
 WHERE c.deleted_at IS NULL AND c.id > $1 AND ($3::text IS NULL OR c.account_id = $3)
   AND (EXISTS (SELECT 1
                  FROM {mirror}.subscriptions s
                  JOIN {mirror}.subscription_items i
                    ON i.parent_id = s.id AND i.deleted_at IS NULL
                  JOIN {mirror}.product_features f
                    ON f.parent_id = i.raw->'price'->>'product' AND f.deleted_at IS NULL
                 WHERE s.customer_id = c.id AND s.deleted_at IS NULL
                   AND s.status IN ('active', 'trialing', 'past_due'))
        OR EXISTS (SELECT 1 FROM {mirror}.active_entitlements e
                    WHERE e.parent_id = c.id AND e.deleted_at IS NULL))
 ORDER BY c.id LIMIT $2;

-- name: resync_parents_left
-- Parents ({table}) a per-parent walk has still to go through after its cursor $1: live rows,
-- as resync_parent_ids walks them. One request each (resync/eta.py).
SELECT count(*)::bigint FROM {mirror}.{table}
 WHERE deleted_at IS NULL AND id > $1 AND ($2::text IS NULL OR account_id = $2);

-- name: resync_entitled_left
-- The same for the active entitlements walk: customers ({table}) that can have any, as
-- resync_entitled_customers chooses them. Counted from the (few) candidates, not by testing
-- every customer.
SELECT count(*)::bigint FROM {mirror}.{table} c
 WHERE c.deleted_at IS NULL AND c.id > $1 AND ($2::text IS NULL OR c.account_id = $2)
   AND c.id IN (SELECT s.customer_id
                  FROM {mirror}.subscriptions s
                  JOIN {mirror}.subscription_items i
                    ON i.parent_id = s.id AND i.deleted_at IS NULL
                  JOIN {mirror}.product_features f
                    ON f.parent_id = i.raw->'price'->>'product' AND f.deleted_at IS NULL
                 WHERE s.deleted_at IS NULL AND s.status IN ('active', 'trialing', 'past_due')
                UNION
                SELECT e.parent_id FROM {mirror}.active_entitlements e
                 WHERE e.deleted_at IS NULL);

-- name: resync_set_eta
-- The running resync's estimate for run $1: per table ($2) requests left ($3) and seconds left
-- ($4), whether they are only a floor ($5), with the time it was made; `syncd status` and
-- `syncd resync --wait` show it.
UPDATE {state}.resync_tables t
   SET requests_left = u.requests_left, eta_seconds = u.eta_seconds,
       left_at_least = u.at_least, progress_at = now()
  FROM unnest($2::text[], $3::bigint[], $4::float8[], $5::boolean[])
       AS u(table_name, requests_left, eta_seconds, at_least)
 WHERE t.run_id = $1 AND t.table_name = u.table_name;
