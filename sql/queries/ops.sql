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
 -- Connect: a disconnected account's cursor stands still for good; it is not the stream's.
 WHERE NOT EXISTS (SELECT 1 FROM {state}.accounts a
                    WHERE a.account_id = c.account_id AND a.status <> 'active')
 ORDER BY c.position, c.account_id;

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
         WHERE s.run_id = r.run_id) AS objects,
       to_jsonb(r)->>'account_id' AS account_id  -- Connect (0068); NULL on older schemas
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

-- name: status_accounts
-- Connect (stripe.accounts): the accounts by state, as `syncd status` defines them
-- (syncd/status.py, _accounts): how many, how many of each have a resync pending or running, and
-- the first $4 of each (failing: longest failing first; lagging: oldest poll first). $1: the
-- least lag that counts (seconds), $2: the lag in poll intervals that counts, $3: whether live
-- replicas exist (then an active account none leases is lagging).
WITH a AS (
    SELECT a.account_id, a.status, a.leased_by, a.last_poll_at, a.poll_interval, a.error,
           a.failing_since,
           extract(epoch FROM now() - a.last_poll_at)::float8 AS poll_age,
           EXISTS (SELECT 1 FROM {state}.resync_runs r
                    WHERE r.account_id = a.account_id AND r.tables IS NULL
                      AND r.status IN ('done', 'done_with_problems')) AS fully_synced,
           EXISTS (SELECT 1 FROM {state}.resync_runs r
                    WHERE r.account_id = a.account_id
                      AND r.status IN ('pending', 'running')) AS resyncing
      FROM {state}.accounts a
), classified AS (
    SELECT *,
           CASE WHEN status <> 'active' THEN status
                WHEN error IS NOT NULL THEN 'failing'
                WHEN poll_age > greatest($2 * coalesce(poll_interval, 0), $1)
                  OR (leased_by IS NULL AND $3) THEN 'lagging'
                WHEN last_poll_at IS NULL OR NOT fully_synced THEN 'not_synced'
                ELSE 'synced' END AS state
      FROM a
)
SELECT state, count(*)::bigint AS accounts,
       count(*) FILTER (WHERE resyncing)::bigint AS resyncing,
       (array_agg(jsonb_build_object(
                     'account', account_id, 'error', error, 'leased_by', leased_by,
                     'since', failing_since,
                     'failing_for', extract(epoch FROM now() - failing_since)::float8,
                     'last_poll_age', poll_age, 'poll_interval', poll_interval)
                  ORDER BY CASE WHEN state = 'failing' THEN failing_since END NULLS LAST,
                           last_poll_at NULLS FIRST, account_id)
            FILTER (WHERE state IN ('failing', 'lagging')))[1:$4] AS first
  FROM classified
 GROUP BY state;

-- name: status_account_leases
-- Connect: how many accounts each replica leases now (leased_by).
SELECT leased_by, count(*)::bigint AS accounts
  FROM {state}.accounts
 WHERE leased_by IS NOT NULL
 GROUP BY leased_by;
