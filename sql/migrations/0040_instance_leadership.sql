-- Leadership and liveness, per replica. The leader holds an advisory lock on a dedicated
-- connection; its row says so (role = 'leader', leader_since), so `syncd status` and other
-- replicas can tell who writes. `last_success` holds each loop's last good run (unix seconds,
-- {"events": 1764200000.1, ...}), copied from the process metrics at every heartbeat, so the
-- last poll is visible from the database even when the leader's HTTP port is not.
ALTER TABLE {state}.instances
    ADD COLUMN leader_since timestamptz,
    ADD COLUMN last_success jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN http_bind    text NOT NULL DEFAULT '';

CREATE INDEX instances_beat ON {state}.instances (beat_at DESC);
