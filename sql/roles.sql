-- Least-privilege roles for syncd: documented SQL for an operator, not a migration (syncd never
-- runs this file; migrations live in sql/migrations only).
--
-- Run once per database, as a superuser or the database owner, BEFORE syncd's first start:
--     psql "$ADMIN_URL" -f sql/roles.sql
-- then give the writer a password (ALTER ROLE syncd_writer PASSWORD '...') and point syncd's
-- database.url at it. The schema names are syncd's defaults (database.mirror_schema = stripe,
-- state_schema = syncd, app_schema = billing): edit them here if you changed them.
--
-- syncd_writer  the daemon. It runs the migrations, so it owns syncd's schemas and everything in
--               them; as the owner it is not subject to row-level security (syncd never FORCEs
--               it), which keeps sync working when the Supabase policies are installed. It needs
--               no superuser, no CREATEDB/CREATEROLE and no BYPASSRLS. On Supabase it also needs
--               GRANT USAGE ON SCHEMA auth TO syncd_writer (its policies call auth.uid()).
-- syncd_reader  applications: read-only on the application views and the mirror, nothing on
--               syncd's own state. A group role: grant it to your app's login role.
--               (Apps that also insert usage rows: GRANT INSERT ON billing.usage_records.)
--
-- On Supabase the client roles (anon, authenticated) get their privileges from syncd itself when
-- row-level security is installed (app.row_level_security); syncd_reader is for server-side code
-- on a plain PostgreSQL. Row-level security filters every role that neither owns the tables nor
-- has BYPASSRLS: with the Supabase policies installed, server-side code should use Supabase's
-- service_role (BYPASSRLS) or a reader role created WITH BYPASSRLS.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'syncd_writer') THEN
        CREATE ROLE syncd_writer LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'syncd_reader') THEN
        CREATE ROLE syncd_reader NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO syncd_writer, syncd_reader',
                   current_database());
    -- CREATE: the migrations say CREATE SCHEMA IF NOT EXISTS, which PostgreSQL checks first.
    EXECUTE format('GRANT CREATE ON DATABASE %I TO syncd_writer', current_database());
END
$$;

-- The writer owns syncd's schemas (created here so the reader's grants can be set up front).
CREATE SCHEMA IF NOT EXISTS syncd AUTHORIZATION syncd_writer;
CREATE SCHEMA IF NOT EXISTS stripe AUTHORIZATION syncd_writer;
CREATE SCHEMA IF NOT EXISTS billing AUTHORIZATION syncd_writer;
ALTER SCHEMA syncd OWNER TO syncd_writer;
ALTER SCHEMA stripe OWNER TO syncd_writer;
ALTER SCHEMA billing OWNER TO syncd_writer;

-- Nobody else may create objects in them.
REVOKE CREATE ON SCHEMA syncd, stripe, billing FROM PUBLIC;
REVOKE ALL ON SCHEMA syncd FROM PUBLIC;

-- The reader: usage of the two readable schemas and SELECT on every table and view the writer
-- creates in them, now and in later migrations.
GRANT USAGE ON SCHEMA stripe, billing TO syncd_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA stripe, billing TO syncd_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE syncd_writer IN SCHEMA stripe, billing
    GRANT SELECT ON TABLES TO syncd_reader;
