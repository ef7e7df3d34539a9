-- `syncd verify`: reads of the mirror to compare it with what Stripe lists (syncd/verify.py).
-- Read-only: repairs go through the writer's own statements (writer.sql). At the end, the
-- periodic verify's own bookkeeping ({state}.verify_runs).

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

-- ---- the daemon's periodic verify (syncd/verify_schedule.py, migration 0066) ----------------

-- name: verify_resync_activity
-- Full resyncs as the periodic verify needs them: the newest run (a new one since a verify
-- started means it ran beside it), how many are pending or running (a verify waits for them)
-- and whether one of every type ever finished (the mirror was filled once).
SELECT coalesce(max(run_id), 0)::bigint AS last_run,
       count(*) FILTER (WHERE status IN ('pending', 'running')) AS unfinished,
       coalesce(bool_or(status IN ('done', 'done_with_problems') AND tables IS NULL), false)
           AS completed
  FROM {state}.resync_runs;

-- name: verify_record_run
-- One ended run: $1 the seconds it took, $2 status, $3 drifted objects per verified table,
-- $4 tables not verified (why), $5 drifted, $6 repaired, $7 requests, $8 sample, $9 repair,
-- $10 error. Both times on the database's clock (the one status and the due time read), so a
-- daemon host whose clock is off cannot skew them. Returns when it ended (unix time).
INSERT INTO {state}.verify_runs
       (started_at, status, drift, unverified, drifted, repaired, requests, sample, repair, error)
VALUES (now() - make_interval(secs => $1), $2, $3::jsonb, $4::jsonb, $5, $6, $7, $8, $9, $10)
RETURNING run_id, extract(epoch FROM finished_at)::float8 AS finished;

-- name: verify_prune_runs
-- Runs older than 35 days, but never the newest run that ended clean nor the newest that ended
-- with a result (what status, the due time and a new leader's metrics read).
DELETE FROM {state}.verify_runs
 WHERE finished_at < now() - interval '35 days'
   AND run_id <> ALL (ARRAY(
       SELECT coalesce(max(run_id), 0) FROM {state}.verify_runs WHERE status = 'clean'
       UNION ALL
       SELECT coalesce(max(run_id), 0) FROM {state}.verify_runs
        WHERE status IN ('clean', 'drift', 'incomplete')));

-- name: verify_last_runs
-- The newest run of any status and the newest that ended with a result (clean, drift,
-- incomplete), newest first (one row when they are the same run), each with the time the last
-- clean run ended: `syncd status`, and the leader's due time and metrics at start.
SELECT r.run_id, r.started_at, r.finished_at, r.status, r.drift, r.unverified, r.drifted,
       r.repaired, r.requests, r.sample, r.repair, r.error,
       extract(epoch FROM now() - r.finished_at)::float8 AS age,
       extract(epoch FROM r.finished_at - r.started_at)::float8 AS seconds,
       r.run_id = (SELECT max(run_id) FROM {state}.verify_runs
                    WHERE status IN ('clean', 'drift', 'incomplete')) AS result,
       (SELECT max(finished_at) FROM {state}.verify_runs WHERE status = 'clean')
           AS last_clean_at
  FROM {state}.verify_runs r
 WHERE r.run_id = (SELECT max(run_id) FROM {state}.verify_runs)
    OR r.run_id = (SELECT max(run_id) FROM {state}.verify_runs
                    WHERE status IN ('clean', 'drift', 'incomplete'))
 ORDER BY r.run_id DESC;
