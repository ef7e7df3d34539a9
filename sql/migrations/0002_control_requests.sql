-- Operator requests that reach the daemon through the database (works from another container,
-- where signals cannot): `syncd resync`, `syncd flush-usage`. A row plus NOTIFY syncd_control.
CREATE TABLE {state}.requests (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL,
    args         jsonb NOT NULL DEFAULT '{}',
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'done', 'failed')),
    requested_at timestamptz NOT NULL DEFAULT now(),
    requested_by text NOT NULL DEFAULT '',
    started_at   timestamptz,
    finished_at  timestamptz,
    result       jsonb,
    error        text
);
CREATE INDEX requests_pending ON {state}.requests (id) WHERE status = 'pending';
