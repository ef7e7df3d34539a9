-- The customers table's own versions of writer.sql's upserts (registry: `own_upserts`): the same
-- statements, plus `user_id` from the metadata under the configured key (user_id_key(), 0050).
-- With the value already right, the rows' PL/pgSQL trigger does not run (its WHEN, 0052): that
-- call cost about a sixth of PostgreSQL's time per customer. A changed metadata sets user_id
-- again; otherwise it is kept, as a checkout fallback (0052, once per statement) may have set it.

-- name: upsert_objects_customers
WITH incoming AS (
    SELECT DISTINCT ON (o->>'id') o->>'id' AS id, o AS raw,
           COALESCE((o->>'deleted')::boolean, false) AS gone
      FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS page(o, n)
     WHERE o->>'id' IS NOT NULL
     ORDER BY o->>'id', n DESC
)
INSERT INTO {mirror}.customers AS t (id, account_id, raw, api_version, fetched_at, deleted_at, user_id)
SELECT id, $2, raw, $3, to_timestamp($4), CASE WHEN gone THEN to_timestamp($4) END,
       NULLIF(raw->'metadata'->>{mirror}.user_id_key(), '')
  FROM incoming
ON CONFLICT (id) DO UPDATE SET
    raw = CASE WHEN EXCLUDED.deleted_at IS NULL AND t.raw IS DISTINCT FROM EXCLUDED.raw
               THEN EXCLUDED.raw ELSE t.raw END,
    api_version = CASE WHEN EXCLUDED.deleted_at IS NULL THEN EXCLUDED.api_version ELSE t.api_version END,
    account_id = EXCLUDED.account_id,
    fetched_at = EXCLUDED.fetched_at,
    deleted_at = EXCLUDED.deleted_at,
    synced_at = CASE WHEN EXCLUDED.deleted_at IS NOT NULL OR t.raw IS DISTINCT FROM EXCLUDED.raw
                     THEN now() ELSE t.synced_at END,
    user_id = CASE WHEN EXCLUDED.deleted_at IS NULL
                        AND t.raw->'metadata' IS DISTINCT FROM EXCLUDED.raw->'metadata'
                   THEN EXCLUDED.user_id ELSE t.user_id END
WHERE t.fetched_at < EXCLUDED.fetched_at AND t.deleted_at IS NULL
RETURNING t.id,
      -- xmax = 0: the row was inserted; synced_at moved to now(): the content changed.
      CASE WHEN t.xmax::text = '0' THEN 'insert'
           WHEN t.deleted_at IS NOT NULL THEN 'delete'
           WHEN t.synced_at = now() THEN 'update'
           ELSE 'same' END AS op;

-- name: upsert_objects_each_customers
WITH incoming AS (
    SELECT DISTINCT ON (e->'o'->>'id') e->'o'->>'id' AS id, e->'o' AS raw,
           (e->>'v')::double precision AS version, e->>'a' AS api_version,
           COALESCE((e->'o'->>'deleted')::boolean, false) AS gone
      FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS page(e, n)
     WHERE e->'o'->>'id' IS NOT NULL
     ORDER BY e->'o'->>'id', (e->>'v')::double precision DESC, n DESC
)
INSERT INTO {mirror}.customers AS t (id, account_id, raw, api_version, fetched_at, deleted_at, user_id)
SELECT id, $2, raw, api_version, to_timestamp(version),
       CASE WHEN gone THEN to_timestamp(version) END,
       NULLIF(raw->'metadata'->>{mirror}.user_id_key(), '')
  FROM incoming
ON CONFLICT (id) DO UPDATE SET
    raw = CASE WHEN EXCLUDED.deleted_at IS NULL AND t.raw IS DISTINCT FROM EXCLUDED.raw
               THEN EXCLUDED.raw ELSE t.raw END,
    api_version = CASE WHEN EXCLUDED.deleted_at IS NULL THEN EXCLUDED.api_version ELSE t.api_version END,
    account_id = EXCLUDED.account_id,
    fetched_at = EXCLUDED.fetched_at,
    deleted_at = EXCLUDED.deleted_at,
    synced_at = CASE WHEN EXCLUDED.deleted_at IS NOT NULL OR t.raw IS DISTINCT FROM EXCLUDED.raw
                     THEN now() ELSE t.synced_at END,
    user_id = CASE WHEN EXCLUDED.deleted_at IS NULL
                        AND t.raw->'metadata' IS DISTINCT FROM EXCLUDED.raw->'metadata'
                   THEN EXCLUDED.user_id ELSE t.user_id END
WHERE t.fetched_at < EXCLUDED.fetched_at AND t.deleted_at IS NULL
RETURNING t.id,
      CASE WHEN t.xmax::text = '0' THEN 'insert'
           WHEN t.deleted_at IS NOT NULL THEN 'delete'
           WHEN t.synced_at = now() THEN 'update'
           ELSE 'same' END AS op;
