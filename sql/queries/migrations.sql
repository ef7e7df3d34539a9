-- name: create_migrations_table
CREATE SCHEMA IF NOT EXISTS {state};
CREATE TABLE IF NOT EXISTS {state}.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_table_exists
SELECT to_regclass($1) IS NOT NULL;

-- name: applied_migrations
SELECT version, checksum FROM {state}.schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO {state}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3);

-- name: try_advisory_lock
SELECT pg_try_advisory_lock($1);

-- name: advisory_lock
SELECT pg_advisory_lock($1);

-- name: advisory_unlock
SELECT pg_advisory_unlock($1);
