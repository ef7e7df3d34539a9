-- Writes into mirror tables. `{table}` is the mirror table; $1 is a JSON array of Stripe objects
-- (a whole list page is passed as one parameter and unpacked here).
--
-- The ordering guard ({state}.version_admits, migration 0064): a version is an interval of Stripe's
-- clock, [fetched_from, fetched_at), and for a fetch also the fetching process (fetched_by) and
-- its own monotonic [sent, received] (fetched_local), which orders that process's fetches exactly
-- (syncd/versions.py; $4 holds the incoming one as [earliest, latest, process, sent, received]).
-- A row is overwritten only by content certainly newer than its own; an
-- overlapping version with other content queues the object to be fetched again (refetch_queue)
-- and changes nothing; a deletion always wins, and a tombstoned row is never written again
-- (Stripe never undeletes). Content that did not change only moves the interval on: skipping it
-- outright would let a slower, older write that lands later pass the guard against the stale
-- version. Unchanged content keeps the stored datum (`t.raw`), so a large TOASTed object is not
-- compressed and written again.
-- The upserts' `{version_set}` is the query `version_set` below, spliced in by Database.statement.
-- Every write records its source (an event id, `resync run N`, ...: docs/history.md) in
-- `changed_by` when it changes the row's content or tombstones it, and keeps the row's otherwise;
-- upsert_objects reads it from `{source}` (Database.statement: $5 alone, the run in a resync
-- page), the other statements from a parameter of their own.
-- The upserts of whole objects end their column list, select list and update list with
-- `{extra_columns}`, `{extra_values}` and `{extra_updates}`: the columns a table computes itself,
-- from sql/queries/writer_<table>.sql (Database.statement), nothing for most tables.
-- The result says per id what happened: insert, update, delete, same; stale writes are absent.
-- It is read from the written rows alone (no join with the rows before): a join back onto the
-- table cost as much as the upsert itself.

-- name: upsert_objects
WITH incoming AS (
    SELECT DISTINCT ON (o->>'id') o->>'id' AS id, o AS raw,
           COALESCE((o->>'deleted')::boolean, false) AS gone,
           v[1] AS v_from, v[2] AS v_to, v[3]::bigint AS v_by, v[4:5] AS v_local
      FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS page(o, n), (SELECT CAST($4 AS float8[])) AS version(v)
     WHERE o->>'id' IS NOT NULL
     ORDER BY o->>'id', n DESC
)
INSERT INTO {mirror}.{table} AS t (id, account_id, raw, api_version, fetched_from, fetched_at, fetched_by, fetched_local, deleted_at, changed_by{extra_columns})
SELECT id, $2, raw, $3, to_timestamp(v_from), to_timestamp(v_to), v_by, v_local,
       CASE WHEN gone THEN to_timestamp(v_to) END, {source}{extra_values}
  FROM incoming
ON CONFLICT (id) DO UPDATE SET
    raw = CASE WHEN EXCLUDED.deleted_at IS NULL AND t.raw IS DISTINCT FROM EXCLUDED.raw
               THEN EXCLUDED.raw ELSE t.raw END,
    api_version = CASE WHEN EXCLUDED.deleted_at IS NULL THEN EXCLUDED.api_version ELSE t.api_version END,
    account_id = EXCLUDED.account_id,
    {version_set},
    deleted_at = EXCLUDED.deleted_at,
    synced_at = CASE WHEN EXCLUDED.deleted_at IS NOT NULL OR t.raw IS DISTINCT FROM EXCLUDED.raw
                     THEN now() ELSE t.synced_at END,
    changed_by = CASE WHEN EXCLUDED.deleted_at IS NOT NULL OR t.raw IS DISTINCT FROM EXCLUDED.raw
                      THEN EXCLUDED.changed_by ELSE t.changed_by END{extra_updates}
WHERE t.deleted_at IS NULL
  AND {state}.version_admits(
          t.fetched_from, t.fetched_at, t.fetched_by, t.fetched_local, t.raw,
          EXCLUDED.fetched_from, EXCLUDED.fetched_at, EXCLUDED.fetched_by, EXCLUDED.fetched_local,
          EXCLUDED.raw, EXCLUDED.deleted_at IS NOT NULL, t.tableoid, t.id, NULL)
RETURNING t.id,
      -- xmax = 0: the row was inserted; synced_at moved to now(): the content changed.
      CASE WHEN t.xmax::text = '0' THEN 'insert'
           WHEN t.deleted_at IS NOT NULL THEN 'delete'
           WHEN t.synced_at = now() THEN 'update'
           ELSE 'same' END AS op;

-- name: upsert_children
-- Same as upsert_objects for a child table: $5 is the parent's id, $6 the source.
WITH incoming AS (
    SELECT DISTINCT ON (o->>'id') o->>'id' AS id, o AS raw,
           COALESCE((o->>'deleted')::boolean, false) AS gone,
           v[1] AS v_from, v[2] AS v_to, v[3]::bigint AS v_by, v[4:5] AS v_local
      FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS page(o, n), (SELECT CAST($4 AS float8[])) AS version(v)
     WHERE o->>'id' IS NOT NULL
     ORDER BY o->>'id', n DESC
)
INSERT INTO {mirror}.{table} AS t (id, account_id, parent_id, raw, api_version, fetched_from, fetched_at, fetched_by, fetched_local, deleted_at, changed_by)
SELECT id, $2, $5, raw, $3, to_timestamp(v_from), to_timestamp(v_to), v_by, v_local,
       CASE WHEN gone THEN to_timestamp(v_to) END, $6
  FROM incoming
ON CONFLICT (id) DO UPDATE SET
    raw = CASE WHEN EXCLUDED.deleted_at IS NULL AND t.raw IS DISTINCT FROM EXCLUDED.raw
               THEN EXCLUDED.raw ELSE t.raw END,
    api_version = CASE WHEN EXCLUDED.deleted_at IS NULL THEN EXCLUDED.api_version ELSE t.api_version END,
    account_id = EXCLUDED.account_id,
    parent_id = EXCLUDED.parent_id,
    {version_set},
    deleted_at = EXCLUDED.deleted_at,
    synced_at = CASE WHEN EXCLUDED.deleted_at IS NOT NULL OR t.raw IS DISTINCT FROM EXCLUDED.raw
                     THEN now() ELSE t.synced_at END,
    changed_by = CASE WHEN EXCLUDED.deleted_at IS NOT NULL OR t.raw IS DISTINCT FROM EXCLUDED.raw
                      THEN EXCLUDED.changed_by ELSE t.changed_by END
WHERE t.deleted_at IS NULL
  AND {state}.version_admits(
          t.fetched_from, t.fetched_at, t.fetched_by, t.fetched_local, t.raw,
          EXCLUDED.fetched_from, EXCLUDED.fetched_at, EXCLUDED.fetched_by, EXCLUDED.fetched_local,
          EXCLUDED.raw, EXCLUDED.deleted_at IS NOT NULL, t.tableoid, t.id, t.parent_id)
RETURNING t.id,
      -- xmax = 0: the row was inserted; synced_at moved to now(): the content changed.
      CASE WHEN t.xmax::text = '0' THEN 'insert'
           WHEN t.deleted_at IS NOT NULL THEN 'delete'
           WHEN t.synced_at = now() THEN 'update'
           ELSE 'same' END AS op;

-- name: tombstone_ids
-- Objects known to be deleted ($1 ids), e.g. a `*.deleted` event or a refetch answering 404:
-- final whatever the row's version ($2 [earliest, latest] of the answer that said so; $3 the
-- source).
UPDATE {mirror}.{table} t
   SET deleted_at = to_timestamp(v[2]), synced_at = now(), changed_by = $3,
       fetched_from = GREATEST(t.fetched_from, to_timestamp(v[1])),
       fetched_at = GREATEST(t.fetched_at, to_timestamp(v[2])), fetched_by = NULL, fetched_local = NULL
  FROM (SELECT CAST($2 AS float8[])) AS version(v)
 WHERE t.id = ANY($1::text[]) AND t.deleted_at IS NULL
RETURNING t.id;

-- name: tombstone_children
-- Every live child of parent $1, whose parent is deleted: final as the parent's deletion,
-- whatever the children's versions ($2 the deletion's [earliest, latest]; $3 the source).
UPDATE {mirror}.{table} t
   SET deleted_at = to_timestamp(v[2]), synced_at = now(), changed_by = $3,
       fetched_from = GREATEST(t.fetched_from, to_timestamp(v[1])),
       fetched_at = GREATEST(t.fetched_at, to_timestamp(v[2])), fetched_by = NULL, fetched_local = NULL
  FROM (SELECT CAST($2 AS float8[])) AS version(v)
 WHERE t.parent_id = $1 AND t.deleted_at IS NULL
RETURNING t.id;

-- name: tombstone_missing_children
-- Children of parent $1 that its complete child list (ids $2, read in $3 [earliest, latest]) no
-- longer shows: gone if the list is certainly newer than the child's row (a child added after
-- the list was read is not), fetched again through the parent when the order is unknown. $4 is
-- the source.
UPDATE {mirror}.{table} t
   SET deleted_at = to_timestamp(v[2]), fetched_from = to_timestamp(v[1]),
       fetched_at = to_timestamp(v[2]), fetched_by = v[3]::bigint, fetched_local = v[4:5],
       synced_at = now(), changed_by = $4
  FROM (SELECT CAST($3 AS float8[])) AS version(v)
 WHERE t.parent_id = $1 AND NOT (t.id = ANY($2::text[])) AND t.deleted_at IS NULL
   AND {state}.version_admits(
           t.fetched_from, t.fetched_at, t.fetched_by, t.fetched_local, t.raw,
           to_timestamp(v[1]), to_timestamp(v[2]), v[3]::bigint, v[4:5], NULL, false,
           t.tableoid, t.id, t.parent_id)
RETURNING t.id;

-- name: versions_of
-- Current versions of some rows: the event stream compares them with event times.
SELECT id, extract(epoch FROM fetched_from)::double precision AS earliest,
       extract(epoch FROM fetched_at)::double precision AS latest, fetched_by, fetched_local,
       deleted_at IS NOT NULL AS deleted
  FROM {mirror}.{table} WHERE id = ANY($1::text[]);

-- name: notify_changes
SELECT pg_notify($1, $2);

-- name: upsert_objects_each
-- upsert_objects for objects that carry their own versions (event snapshots of one page):
-- $1 = [{"o": object, "v": version as in $4 of upsert_objects, "a": api_version, "s": source},
-- ...]; the newest per id is written.
WITH incoming AS (
    SELECT DISTINCT ON (e->'o'->>'id') e->'o'->>'id' AS id, e->'o' AS raw,
           (e->'v'->>0)::float8 AS v_from, (e->'v'->>1)::float8 AS v_to,
           (e->'v'->>2)::float8::bigint AS v_by,
           CASE WHEN e->'v'->>3 IS NOT NULL
                THEN ARRAY[(e->'v'->>3)::float8, (e->'v'->>4)::float8] END AS v_local,
           e->>'a' AS api_version, e->>'s' AS source,
           COALESCE((e->'o'->>'deleted')::boolean, false) AS gone
      FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS page(e, n)
     WHERE e->'o'->>'id' IS NOT NULL
     ORDER BY e->'o'->>'id', (e->'v'->>1)::double precision DESC, n DESC
)
INSERT INTO {mirror}.{table} AS t (id, account_id, raw, api_version, fetched_from, fetched_at, fetched_by, fetched_local, deleted_at, changed_by{extra_columns})
SELECT id, $2, raw, api_version, to_timestamp(v_from), to_timestamp(v_to), v_by, v_local,
       CASE WHEN gone THEN to_timestamp(v_to) END, source{extra_values}
  FROM incoming
ON CONFLICT (id) DO UPDATE SET
    raw = CASE WHEN EXCLUDED.deleted_at IS NULL AND t.raw IS DISTINCT FROM EXCLUDED.raw
               THEN EXCLUDED.raw ELSE t.raw END,
    api_version = CASE WHEN EXCLUDED.deleted_at IS NULL THEN EXCLUDED.api_version ELSE t.api_version END,
    account_id = EXCLUDED.account_id,
    {version_set},
    deleted_at = EXCLUDED.deleted_at,
    synced_at = CASE WHEN EXCLUDED.deleted_at IS NOT NULL OR t.raw IS DISTINCT FROM EXCLUDED.raw
                     THEN now() ELSE t.synced_at END,
    changed_by = CASE WHEN EXCLUDED.deleted_at IS NOT NULL OR t.raw IS DISTINCT FROM EXCLUDED.raw
                      THEN EXCLUDED.changed_by ELSE t.changed_by END{extra_updates}
WHERE t.deleted_at IS NULL
  AND {state}.version_admits(
          t.fetched_from, t.fetched_at, t.fetched_by, t.fetched_local, t.raw,
          EXCLUDED.fetched_from, EXCLUDED.fetched_at, EXCLUDED.fetched_by, EXCLUDED.fetched_local,
          EXCLUDED.raw, EXCLUDED.deleted_at IS NOT NULL, t.tableoid, t.id, NULL)
RETURNING t.id,
      CASE WHEN t.xmax::text = '0' THEN 'insert'
           WHEN t.deleted_at IS NOT NULL THEN 'delete'
           WHEN t.synced_at = now() THEN 'update'
           ELSE 'same' END AS op;

-- name: upsert_children_of_many
-- upsert_children for the children of many parents at once (a list page's inline items):
-- $5 holds each object's parent id, in the order of the objects in $1; $6 is the source.
WITH incoming AS (
    SELECT DISTINCT ON (o->>'id') o->>'id' AS id, o AS raw, p.parent_id,
           COALESCE((o->>'deleted')::boolean, false) AS gone,
           v[1] AS v_from, v[2] AS v_to, v[3]::bigint AS v_by, v[4:5] AS v_local
      FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS page(o, n)
      JOIN unnest($5::text[]) WITH ORDINALITY AS p(parent_id, n) USING (n)
     CROSS JOIN (SELECT CAST($4 AS float8[])) AS version(v)
     WHERE o->>'id' IS NOT NULL
     ORDER BY o->>'id', n DESC
)
INSERT INTO {mirror}.{table} AS t (id, account_id, parent_id, raw, api_version, fetched_from, fetched_at, fetched_by, fetched_local, deleted_at, changed_by)
SELECT id, $2, parent_id, raw, $3, to_timestamp(v_from), to_timestamp(v_to), v_by, v_local,
       CASE WHEN gone THEN to_timestamp(v_to) END, $6
  FROM incoming
ON CONFLICT (id) DO UPDATE SET
    raw = CASE WHEN EXCLUDED.deleted_at IS NULL AND t.raw IS DISTINCT FROM EXCLUDED.raw
               THEN EXCLUDED.raw ELSE t.raw END,
    api_version = CASE WHEN EXCLUDED.deleted_at IS NULL THEN EXCLUDED.api_version ELSE t.api_version END,
    account_id = EXCLUDED.account_id,
    parent_id = EXCLUDED.parent_id,
    {version_set},
    deleted_at = EXCLUDED.deleted_at,
    synced_at = CASE WHEN EXCLUDED.deleted_at IS NOT NULL OR t.raw IS DISTINCT FROM EXCLUDED.raw
                     THEN now() ELSE t.synced_at END,
    changed_by = CASE WHEN EXCLUDED.deleted_at IS NOT NULL OR t.raw IS DISTINCT FROM EXCLUDED.raw
                      THEN EXCLUDED.changed_by ELSE t.changed_by END
WHERE t.deleted_at IS NULL
  AND {state}.version_admits(
          t.fetched_from, t.fetched_at, t.fetched_by, t.fetched_local, t.raw,
          EXCLUDED.fetched_from, EXCLUDED.fetched_at, EXCLUDED.fetched_by, EXCLUDED.fetched_local,
          EXCLUDED.raw, EXCLUDED.deleted_at IS NOT NULL, t.tableoid, t.id, t.parent_id)
RETURNING t.id,
      CASE WHEN t.xmax::text = '0' THEN 'insert'
           WHEN t.deleted_at IS NOT NULL THEN 'delete'
           WHEN t.synced_at = now() THEN 'update'
           ELSE 'same' END AS op;

-- name: tombstone_missing_children_of_many
-- Children of the parents $1 that their complete child lists (all ids kept: $2) no longer show,
-- under the same rule as tombstone_missing_children ($4: the source).
UPDATE {mirror}.{table} t
   SET deleted_at = to_timestamp(v[2]), fetched_from = to_timestamp(v[1]),
       fetched_at = to_timestamp(v[2]), fetched_by = v[3]::bigint, fetched_local = v[4:5],
       synced_at = now(), changed_by = $4
  FROM (SELECT CAST($3 AS float8[])) AS version(v)
 WHERE t.parent_id = ANY($1::text[]) AND NOT (t.id = ANY($2::text[])) AND t.deleted_at IS NULL
   AND {state}.version_admits(
           t.fetched_from, t.fetched_at, t.fetched_by, t.fetched_local, t.raw,
           to_timestamp(v[1]), to_timestamp(v[2]), v[3]::bigint, v[4:5], NULL, false,
           t.tableoid, t.id, t.parent_id)
RETURNING t.id;

-- name: version_set
-- The version a row keeps after an admitted write ({version_set} in the upserts). Other content
-- is certainly newer (or a deletion): the incoming version, never moved back. The same content
-- seen again: it was Stripe's at the later of the two moments, so both ends move to the later
-- one; the process's own clock still describes that moment only when both came from it, or when
-- the incoming version is certainly the later.
    fetched_from = GREATEST(t.fetched_from, EXCLUDED.fetched_from),
    fetched_at = GREATEST(t.fetched_at, EXCLUDED.fetched_at),
    fetched_by = CASE WHEN t.fetched_by = EXCLUDED.fetched_by OR t.raw IS DISTINCT FROM EXCLUDED.raw
                           OR EXCLUDED.fetched_from >= t.fetched_at
                      THEN EXCLUDED.fetched_by END,
    fetched_local = CASE WHEN t.fetched_by = EXCLUDED.fetched_by
                         THEN ARRAY[GREATEST(t.fetched_local[1], EXCLUDED.fetched_local[1]),
                                    GREATEST(t.fetched_local[2], EXCLUDED.fetched_local[2])]
                         WHEN t.raw IS DISTINCT FROM EXCLUDED.raw OR EXCLUDED.fetched_from >= t.fetched_at
                         THEN EXCLUDED.fetched_local END
