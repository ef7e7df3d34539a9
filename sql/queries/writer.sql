-- Writes into mirror tables. `{table}` is the mirror table; $1 is a JSON array of Stripe objects
-- (a whole list page is passed as one parameter and unpacked here).
--
-- The ordering guard: a row is only overwritten by a strictly newer version (`fetched_at`, Stripe's
-- clock), and a tombstoned row is never written again (Stripe never undeletes). Content that did
-- not change only advances `fetched_at`: skipping it outright would let a slower, older write that
-- lands later pass the guard against the stale version. Unchanged content keeps the stored datum
-- (`t.raw`), so a large TOASTed object is not compressed and written again.
-- The upserts of whole objects end their column list, select list and update list with
-- `{extra_columns}`, `{extra_values}` and `{extra_updates}`: the columns a table computes itself,
-- from sql/queries/writer_<table>.sql (Database.statement), nothing for most tables.
-- The result says per id what happened: insert, update, delete, same; stale writes are absent.
-- It is read from the written rows alone (no join with the rows before): a join back onto the
-- table cost as much as the upsert itself.

-- name: upsert_objects
WITH incoming AS (
    SELECT DISTINCT ON (o->>'id') o->>'id' AS id, o AS raw,
           COALESCE((o->>'deleted')::boolean, false) AS gone
      FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS page(o, n)
     WHERE o->>'id' IS NOT NULL
     ORDER BY o->>'id', n DESC
)
INSERT INTO {mirror}.{table} AS t (id, account_id, raw, api_version, fetched_at, deleted_at{extra_columns})
SELECT id, $2, raw, $3, to_timestamp($4), CASE WHEN gone THEN to_timestamp($4) END{extra_values}
  FROM incoming
ON CONFLICT (id) DO UPDATE SET
    raw = CASE WHEN EXCLUDED.deleted_at IS NULL AND t.raw IS DISTINCT FROM EXCLUDED.raw
               THEN EXCLUDED.raw ELSE t.raw END,
    api_version = CASE WHEN EXCLUDED.deleted_at IS NULL THEN EXCLUDED.api_version ELSE t.api_version END,
    account_id = EXCLUDED.account_id,
    fetched_at = EXCLUDED.fetched_at,
    deleted_at = EXCLUDED.deleted_at,
    synced_at = CASE WHEN EXCLUDED.deleted_at IS NOT NULL OR t.raw IS DISTINCT FROM EXCLUDED.raw
                     THEN now() ELSE t.synced_at END{extra_updates}
WHERE t.fetched_at < EXCLUDED.fetched_at AND t.deleted_at IS NULL
RETURNING t.id,
      -- xmax = 0: the row was inserted; synced_at moved to now(): the content changed.
      CASE WHEN t.xmax::text = '0' THEN 'insert'
           WHEN t.deleted_at IS NOT NULL THEN 'delete'
           WHEN t.synced_at = now() THEN 'update'
           ELSE 'same' END AS op;

-- name: upsert_children
-- Same as upsert_objects for a child table: $5 is the parent's id.
WITH incoming AS (
    SELECT DISTINCT ON (o->>'id') o->>'id' AS id, o AS raw,
           COALESCE((o->>'deleted')::boolean, false) AS gone
      FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS page(o, n)
     WHERE o->>'id' IS NOT NULL
     ORDER BY o->>'id', n DESC
)
INSERT INTO {mirror}.{table} AS t (id, account_id, parent_id, raw, api_version, fetched_at, deleted_at)
SELECT id, $2, $5, raw, $3, to_timestamp($4), CASE WHEN gone THEN to_timestamp($4) END
  FROM incoming
ON CONFLICT (id) DO UPDATE SET
    raw = CASE WHEN EXCLUDED.deleted_at IS NULL AND t.raw IS DISTINCT FROM EXCLUDED.raw
               THEN EXCLUDED.raw ELSE t.raw END,
    api_version = CASE WHEN EXCLUDED.deleted_at IS NULL THEN EXCLUDED.api_version ELSE t.api_version END,
    account_id = EXCLUDED.account_id,
    parent_id = EXCLUDED.parent_id,
    fetched_at = EXCLUDED.fetched_at,
    deleted_at = EXCLUDED.deleted_at,
    synced_at = CASE WHEN EXCLUDED.deleted_at IS NOT NULL OR t.raw IS DISTINCT FROM EXCLUDED.raw
                     THEN now() ELSE t.synced_at END
WHERE t.fetched_at < EXCLUDED.fetched_at AND t.deleted_at IS NULL
RETURNING t.id,
      -- xmax = 0: the row was inserted; synced_at moved to now(): the content changed.
      CASE WHEN t.xmax::text = '0' THEN 'insert'
           WHEN t.deleted_at IS NOT NULL THEN 'delete'
           WHEN t.synced_at = now() THEN 'update'
           ELSE 'same' END AS op;

-- name: tombstone_ids
-- Objects known to be deleted ($1 ids), e.g. a `*.deleted` event or a refetch answering 404.
UPDATE {mirror}.{table} t
   SET deleted_at = to_timestamp($2), fetched_at = to_timestamp($2), synced_at = now()
 WHERE t.id = ANY($1::text[]) AND t.deleted_at IS NULL AND t.fetched_at < to_timestamp($2)
RETURNING t.id;

-- name: tombstone_missing_children
-- Children of parent $1 that its complete child list (ids $2) no longer shows.
UPDATE {mirror}.{table} t
   SET deleted_at = to_timestamp($3), fetched_at = to_timestamp($3), synced_at = now()
 WHERE t.parent_id = $1 AND NOT (t.id = ANY($2::text[]))
   AND t.deleted_at IS NULL AND t.fetched_at < to_timestamp($3)
RETURNING t.id;

-- name: versions_of
-- Current versions of some rows: the event stream compares them with event times.
SELECT id, extract(epoch FROM fetched_at)::double precision AS version, deleted_at IS NOT NULL AS deleted
  FROM {mirror}.{table} WHERE id = ANY($1::text[]);

-- name: notify_changes
SELECT pg_notify($1, $2);

-- name: upsert_objects_each
-- upsert_objects for objects that carry their own versions (event snapshots of one page):
-- $1 = [{"o": object, "v": version, "a": api_version}, ...]; the newest per id is written.
WITH incoming AS (
    SELECT DISTINCT ON (e->'o'->>'id') e->'o'->>'id' AS id, e->'o' AS raw,
           (e->>'v')::double precision AS version, e->>'a' AS api_version,
           COALESCE((e->'o'->>'deleted')::boolean, false) AS gone
      FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS page(e, n)
     WHERE e->'o'->>'id' IS NOT NULL
     ORDER BY e->'o'->>'id', (e->>'v')::double precision DESC, n DESC
)
INSERT INTO {mirror}.{table} AS t (id, account_id, raw, api_version, fetched_at, deleted_at{extra_columns})
SELECT id, $2, raw, api_version, to_timestamp(version),
       CASE WHEN gone THEN to_timestamp(version) END{extra_values}
  FROM incoming
ON CONFLICT (id) DO UPDATE SET
    raw = CASE WHEN EXCLUDED.deleted_at IS NULL AND t.raw IS DISTINCT FROM EXCLUDED.raw
               THEN EXCLUDED.raw ELSE t.raw END,
    api_version = CASE WHEN EXCLUDED.deleted_at IS NULL THEN EXCLUDED.api_version ELSE t.api_version END,
    account_id = EXCLUDED.account_id,
    fetched_at = EXCLUDED.fetched_at,
    deleted_at = EXCLUDED.deleted_at,
    synced_at = CASE WHEN EXCLUDED.deleted_at IS NOT NULL OR t.raw IS DISTINCT FROM EXCLUDED.raw
                     THEN now() ELSE t.synced_at END{extra_updates}
WHERE t.fetched_at < EXCLUDED.fetched_at AND t.deleted_at IS NULL
RETURNING t.id,
      CASE WHEN t.xmax::text = '0' THEN 'insert'
           WHEN t.deleted_at IS NOT NULL THEN 'delete'
           WHEN t.synced_at = now() THEN 'update'
           ELSE 'same' END AS op;

-- name: upsert_children_of_many
-- upsert_children for the children of many parents at once (a list page's inline items):
-- $5 holds each object's parent id, in the order of the objects in $1.
WITH incoming AS (
    SELECT DISTINCT ON (o->>'id') o->>'id' AS id, o AS raw, p.parent_id,
           COALESCE((o->>'deleted')::boolean, false) AS gone
      FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS page(o, n)
      JOIN unnest($5::text[]) WITH ORDINALITY AS p(parent_id, n) USING (n)
     WHERE o->>'id' IS NOT NULL
     ORDER BY o->>'id', n DESC
)
INSERT INTO {mirror}.{table} AS t (id, account_id, parent_id, raw, api_version, fetched_at, deleted_at)
SELECT id, $2, parent_id, raw, $3, to_timestamp($4), CASE WHEN gone THEN to_timestamp($4) END
  FROM incoming
ON CONFLICT (id) DO UPDATE SET
    raw = CASE WHEN EXCLUDED.deleted_at IS NULL AND t.raw IS DISTINCT FROM EXCLUDED.raw
               THEN EXCLUDED.raw ELSE t.raw END,
    api_version = CASE WHEN EXCLUDED.deleted_at IS NULL THEN EXCLUDED.api_version ELSE t.api_version END,
    account_id = EXCLUDED.account_id,
    parent_id = EXCLUDED.parent_id,
    fetched_at = EXCLUDED.fetched_at,
    deleted_at = EXCLUDED.deleted_at,
    synced_at = CASE WHEN EXCLUDED.deleted_at IS NOT NULL OR t.raw IS DISTINCT FROM EXCLUDED.raw
                     THEN now() ELSE t.synced_at END
WHERE t.fetched_at < EXCLUDED.fetched_at AND t.deleted_at IS NULL
RETURNING t.id,
      CASE WHEN t.xmax::text = '0' THEN 'insert'
           WHEN t.deleted_at IS NOT NULL THEN 'delete'
           WHEN t.synced_at = now() THEN 'update'
           ELSE 'same' END AS op;

-- name: tombstone_missing_children_of_many
-- Children of the parents $1 that their complete child lists (all ids kept: $2) no longer show.
UPDATE {mirror}.{table} t
   SET deleted_at = to_timestamp($3), fetched_at = to_timestamp($3), synced_at = now()
 WHERE t.parent_id = ANY($1::text[]) AND NOT (t.id = ANY($2::text[]))
   AND t.deleted_at IS NULL AND t.fetched_at < to_timestamp($3)
RETURNING t.id;
