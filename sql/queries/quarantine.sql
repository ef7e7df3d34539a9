-- The quarantine: objects Stripe sent that could not be stored ({state}.rejected_objects).
-- One open entry per (table, object): seen again, it counts another attempt. An entry leaves
-- quarantine (resolved_at) once a good version of its object is stored.

-- name: quarantine_object
-- $1 run (NULL from events), $2 table, $3 object id (NULL when it has none), $4 reason,
-- $5 the object as received (JSON text: a NUL or an invalid escape survives), $6 source.
INSERT INTO {state}.rejected_objects AS q
       (run_id, table_name, object_id, reason, raw_text, source)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (table_name, object_id) WHERE resolved_at IS NULL AND object_id IS NOT NULL
DO UPDATE SET reason = EXCLUDED.reason, raw_text = EXCLUDED.raw_text, source = EXCLUDED.source,
              run_id = COALESCE(EXCLUDED.run_id, q.run_id), last_seen = now(),
              attempts = q.attempts + 1;

-- name: quarantine_resolve_ids
-- Objects of table $1 just stored (ids $2): out of quarantine.
UPDATE {state}.rejected_objects SET resolved_at = now()
 WHERE resolved_at IS NULL AND table_name = $1 AND object_id = ANY ($2::text[]);

-- name: quarantine_resolve_listed
-- After a resync listed {table}: entries not quarantined again by the run (last seen before
-- $1, the run's start) whose object the run stored (a version at or after $2, started_version).
UPDATE {state}.rejected_objects q SET resolved_at = now()
  FROM {mirror}.{table} m
 WHERE q.resolved_at IS NULL AND q.table_name = $3 AND q.last_seen < $1
   AND m.id = q.object_id AND m.fetched_at >= to_timestamp($2);

-- name: quarantine_open_tables
SELECT DISTINCT table_name FROM {state}.rejected_objects WHERE resolved_at IS NULL;

-- name: quarantine_summary
-- Open entries by table and reason (the reason's kind: the text before the first colon), with
-- the latest example: what `syncd status` and the metrics show.
SELECT table_name, split_part(reason, ':', 1) AS kind, count(*)::int AS objects,
       max(last_seen) AS last_seen,
       (array_agg(object_id ORDER BY last_seen DESC))[1] AS example,
       (array_agg(reason ORDER BY last_seen DESC))[1] AS example_reason
  FROM {state}.rejected_objects
 WHERE resolved_at IS NULL
 GROUP BY table_name, split_part(reason, ':', 1)
 ORDER BY table_name, kind;

-- name: quarantine_open_ids
-- Open entries of table $1 with an id not seen since $2 (the run's start), for a resync to
-- retry by retrieving them: objects its lists did not show (quarantined from an event).
SELECT object_id FROM {state}.rejected_objects
 WHERE resolved_at IS NULL AND table_name = $1 AND object_id IS NOT NULL AND last_seen < $2
 ORDER BY object_id;
