-- What the customers table adds to writer.sql's upserts of whole objects (spliced in by
-- Database.statement): `user_id` from the metadata under the configured key (user_id_key(), 0050).
-- With the value already right, the rows' PL/pgSQL trigger does not run (its WHEN, 0052): that
-- call cost about a sixth of PostgreSQL's time per customer. A changed metadata sets user_id
-- again; otherwise it is kept, as a checkout fallback (0052, once per statement) may have set it.
-- Each piece is spliced into the statement as it stands (no comments inside them).

-- name: customers_extra_columns
, user_id

-- name: customers_extra_values
,
       NULLIF(raw->'metadata'->>{mirror}.user_id_key(), '')

-- name: customers_extra_updates
,
    user_id = CASE WHEN EXCLUDED.deleted_at IS NULL
                        AND t.raw->'metadata' IS DISTINCT FROM EXCLUDED.raw->'metadata'
                   THEN EXCLUDED.user_id ELSE t.user_id END
