-- The daemon's own state. Mirror tables arrive in later migrations.
CREATE SCHEMA IF NOT EXISTS {state};

-- One row per running daemon, refreshed every daemon.heartbeat_interval: `syncd status` and
-- /readyz read liveness and the leader from here.
CREATE TABLE {state}.instances (
    instance_id text PRIMARY KEY,
    hostname    text NOT NULL,
    pid         integer NOT NULL,
    version     text NOT NULL,
    role        text NOT NULL DEFAULT 'starting',
    started_at  timestamptz NOT NULL DEFAULT now(),
    beat_at     timestamptz NOT NULL DEFAULT now(),
    stopped_at  timestamptz
);
