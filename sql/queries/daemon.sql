-- name: heartbeat
INSERT INTO {state}.instances (instance_id, hostname, pid, version, role)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (instance_id) DO UPDATE
   SET beat_at = now(), role = EXCLUDED.role, stopped_at = NULL;

-- name: instance_stopped
UPDATE {state}.instances SET stopped_at = now(), role = 'stopped' WHERE instance_id = $1;

-- name: prune_instances
DELETE FROM {state}.instances WHERE beat_at < now() - interval '7 days';
