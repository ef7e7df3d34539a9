-- name: submit_request
WITH r AS (
    INSERT INTO {state}.requests (kind, args, requested_by) VALUES ($1, $2, $3) RETURNING id
)
SELECT id, pg_notify('syncd_control', id::text) FROM r;

-- name: claim_requests
UPDATE {state}.requests
   SET status = 'running', started_at = now()
 WHERE id IN (SELECT id FROM {state}.requests WHERE status = 'pending'
              ORDER BY id FOR UPDATE SKIP LOCKED)
RETURNING id, kind, args;

-- name: finish_request
UPDATE {state}.requests SET status = $2, finished_at = now(), result = $3, error = $4 WHERE id = $1;

-- name: get_request
SELECT id, kind, args, status, requested_at, started_at, finished_at, result, error
  FROM {state}.requests WHERE id = $1;

-- name: requeue_interrupted_requests
-- A daemon killed while running a request leaves it 'running'; the next leader starts it again.
UPDATE {state}.requests SET status = 'pending', started_at = NULL WHERE status = 'running';
