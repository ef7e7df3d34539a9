-- Leadership, health and `syncd status`.

-- name: leader_heartbeat
-- The heartbeat of one replica with its role; leader_since is kept while the role stays leader.
INSERT INTO {state}.instances
       (instance_id, hostname, pid, version, role, leader_since, last_success, http_bind,
        problems)
VALUES ($1, $2, $3, $4, $5, CASE WHEN $5 = 'leader' THEN now() END, $6, $7, $8)
ON CONFLICT (instance_id) DO UPDATE
   SET beat_at = now(),
       role = EXCLUDED.role,
       stopped_at = NULL,
       last_success = EXCLUDED.last_success,
       http_bind = EXCLUDED.http_bind,
       problems = EXCLUDED.problems,
       leader_since = CASE
           WHEN EXCLUDED.role <> 'leader' THEN NULL
           WHEN {state}.instances.role = 'leader' THEN {state}.instances.leader_since
           ELSE now() END;

-- name: ping
SELECT 1;

-- name: database_now
SELECT now();

-- name: relation_exists
SELECT to_regclass($1) IS NOT NULL;

-- name: status_instances
-- Replicas seen in the last day, newest beat first; `alive` means a beat within $1 seconds.
SELECT instance_id, hostname, pid, version, role, started_at, beat_at, stopped_at, leader_since,
       last_success, http_bind, problems,
       (stopped_at IS NULL AND beat_at > now() - make_interval(secs => $1)) AS alive,
       extract(epoch FROM now() - beat_at)::float8 AS beat_age
  FROM {state}.instances
 WHERE beat_at > now() - interval '1 day'
 ORDER BY beat_at DESC;

-- name: status_schema_version
SELECT coalesce(max(version), 0) FROM {state}.schema_migrations;

-- name: status_requests
-- The latest operator requests (resync, flush-usage), newest first.
SELECT id, kind, status, requested_at, started_at, finished_at, error,
       extract(epoch FROM finished_at - started_at)::float8 AS seconds
  FROM {state}.requests
 ORDER BY id DESC
 LIMIT $1;

-- name: status_mirror_counts
-- Live and tombstoned rows of one mirror table (rendered per table by Database.statement).
SELECT count(*) FILTER (WHERE deleted_at IS NULL) AS live,
       count(*) FILTER (WHERE deleted_at IS NOT NULL) AS deleted,
       max(synced_at) AS last_synced
  FROM {mirror}.{table};

-- name: leader_lock_held
-- Is the leader's advisory lock (bigint key: classid = high, objid = low 32 bits) still ours?
SELECT EXISTS (
    SELECT 1 FROM pg_locks
     WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
       AND objsubid = 1 AND classid::bigint = ($1::bigint >> 32)
       AND objid::bigint = ($1::bigint & 4294967295)
);

-- name: demo_live_count
-- Live rows of one mirror table (rendered per table by Database.statement).
SELECT count(*) FROM {mirror}.{table} WHERE deleted_at IS NULL;

-- name: demo_synced_at
-- When the content of these rows last changed, as unix seconds (the demo's end-to-end lag).
SELECT id, extract(epoch FROM synced_at)::float8 AS synced
  FROM {mirror}.{table} WHERE id = ANY($1::text[]);

-- name: status_events
-- The events cursor (per account), its age, and the ledger of the last 24 hours by outcome,
-- with the median lag (event creation to processing) of the latest 200 events.
SELECT c.account_id, c.position, c.reason, c.advanced_at,
       extract(epoch FROM now())::float8 - c.position AS cursor_age,
       extract(epoch FROM now() - c.advanced_at)::float8 AS advanced_ago,
       (SELECT COALESCE(jsonb_object_agg(outcome, n), '{}'::jsonb)
          FROM (SELECT outcome, count(*) AS n FROM {state}.events_ledger
                 WHERE processed_at > now() - interval '1 day' GROUP BY outcome) o) AS ledger_24h,
       (SELECT percentile_cont(0.5) WITHIN GROUP (
                   ORDER BY extract(epoch FROM processed_at) - created)
          FROM (SELECT processed_at, created FROM {state}.events_ledger
                 ORDER BY processed_at DESC LIMIT 200) l) AS median_lag,
       (SELECT max(processed_at) FROM {state}.events_ledger) AS last_event_at
  FROM {state}.events_cursor c
 ORDER BY c.account_id;

-- name: status_refetch_queue
-- Objects waiting to be fetched again (docs/events.md, Versions): how many, and how long the
-- oldest has waited. Settled within seconds normally; an old entry means the settle loop fails.
SELECT count(*) AS objects, extract(epoch FROM now() - min(queued_at))::float8 AS oldest_age
  FROM {state}.refetch_queue;

-- name: status_resync
-- The latest resync runs, with objects listed and how long each took.
SELECT r.run_id, r.tables, r.reason, r.status, r.requested_at, r.started_at, r.finished_at,
       r.error, r.attempts, r.next_try_at,
       extract(epoch FROM r.finished_at - r.started_at)::float8 AS seconds,
       (SELECT COALESCE(sum(objects), 0)::bigint FROM {state}.resync_slices s
         WHERE s.run_id = r.run_id) AS objects
  FROM {state}.resync_runs r
 ORDER BY r.run_id DESC
 LIMIT $1;

-- name: metrics_usage_backlog
-- Usage rows not yet settled, and failed ones: pending and failed through their partial indexes,
-- rows in flight from the outbox (the rows table has no index on 'sending', by design).
SELECT (SELECT count(*) FROM {app}.usage_records WHERE status = 'pending') AS pending,
       (SELECT COALESCE(sum(rows), 0) FROM {state}.usage_events
         WHERE status = 'sending')::bigint AS sending,
       (SELECT count(*) FROM {app}.usage_records WHERE status = 'failed') AS failed;

-- name: leader_session_keepalive
-- On the leader lock's session: if the leader's host vanishes (no FIN, unlike a killed process),
-- the server notices within ~11 s (5 s idle + 3 probes 2 s apart; 10 s for unacknowledged data)
-- and frees the lock, instead of after the OS default of two hours.
SELECT set_config('tcp_keepalives_idle', '5', false),
       set_config('tcp_keepalives_interval', '2', false),
       set_config('tcp_keepalives_count', '3', false),
       set_config('tcp_user_timeout', '10000', false);

-- name: demo_insert_usage
-- `syncd demo` writes usage as an application would.
INSERT INTO {app}.usage_records (customer_id, metric, quantity) VALUES ($1, $2, $3);

-- name: demo_usage_counts
SELECT status, count(*)::bigint AS n, COALESCE(sum(quantity), 0)::float8 AS quantity
  FROM {app}.usage_records GROUP BY status;

-- name: demo_last_resync
SELECT run_id, status, reason, extract(epoch FROM finished_at - started_at)::float8 AS seconds,
       (SELECT COALESCE(sum(objects), 0)::bigint FROM {state}.resync_slices s
         WHERE s.run_id = r.run_id) AS objects
  FROM {state}.resync_runs r ORDER BY run_id DESC LIMIT 1;
