-- `syncd verify`: reads of the mirror to compare it with what Stripe lists (syncd/verify.py).
-- Read-only: repairs go through the writer's own statements (writer.sql).

-- name: verify_rows
-- Rows of some ids ($1), live or tombstoned, with `raw` for the deep comparison.
SELECT id, raw, deleted_at IS NOT NULL AS deleted
  FROM {mirror}.{table} WHERE id = ANY($1::text[]);

-- name: verify_live_of
-- Which of the ids $1 the mirror holds live (`--sample`: presence without `raw`).
SELECT id FROM {mirror}.{table} WHERE id = ANY($1::text[]) AND deleted_at IS NULL;

-- name: verify_live_ids
-- Live rows by id after $1, $2 at a time: the mirror's side of the id comparison.
SELECT id FROM {mirror}.{table}
 WHERE deleted_at IS NULL AND id > $1
 ORDER BY id LIMIT $2;

-- name: verify_live_children
-- Same for an owned child table, with the parent's id (a child is confirmed per parent).
SELECT id, parent_id FROM {mirror}.{table}
 WHERE deleted_at IS NULL AND id > $1
 ORDER BY id LIMIT $2;
