-- Every object Stripe sends is stored: typed columns never reject a row, and objects that still
-- cannot be stored are quarantined with the text as received.
--
-- 1. Typed columns that cast (`(raw->>'balance')::bigint`, `to_timestamp(...)`) failed the whole
--    statement, and so a whole resync page, on one odd value ("10.00" where an integer is
--    expected, a string where a number is expected, a time out of range). They now read through
--    the json_* functions below: a value that does not fit becomes NULL, `raw` keeps what Stripe
--    sent, and PostgreSQL sends syncd a notice (`syncd_unfit: ...`) that it counts
--    (syncd_typed_values_unfit_total). The functions are inlined into the generated columns (plain
--    SQL, immutable), so a well-formed value costs a regular-expression match more than before.
--    PostgreSQL 15 cannot change a generated column's expression in place: each such column is
--    dropped and added again (it moves to the end of the table), and the views that read the
--    mirror tables (syncd's `billing` views and any of the user's own) are recreated as they were,
--    with their options, owners, grants and comments. This rewrites every mirror table once.
-- 2. rejected_objects becomes the quarantine: one open entry per (table, object), with the text
--    as received (so a NUL character or an invalid escape survives), where it came from, when it
--    was first and last seen, how often it failed, and when it left quarantine (a later good
--    version was stored).
-- 3. The events ledger gains the outcome `quarantined`: the event's object could not be stored.

-- name-less helpers, referenced by the mirror's generated columns -----------------------------

CREATE FUNCTION {state}.unfit(value text, kind text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    -- Declared immutable so the json_* functions stay inlinable; a notice changes no data. The
    -- callers test its NULL rather than cast it: a cast from text to a time is only stable.
    RAISE NOTICE USING MESSAGE = 'syncd_unfit: ' || kind, DETAIL = left(value, 200);
    RETURN NULL;
END $$;

-- A well-formed value reads `raw` twice (the match, the cast), a NULL twice, an unfit one three
-- times; booleans, the commonest typed columns, once (a simple CASE evaluates its operand once).
CREATE FUNCTION {state}.json_bigint(value text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN value ~ '^\s*[-+]?[0-9]{1,18}\s*$' THEN value::bigint
                WHEN value IS NOT NULL AND {state}.unfit(value, 'bigint') IS NULL THEN NULL END;

CREATE FUNCTION {state}.json_integer(value text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN value ~ '^\s*[-+]?[0-9]{1,9}\s*$' THEN value::integer
                WHEN value IS NOT NULL AND {state}.unfit(value, 'integer') IS NULL THEN NULL END;

CREATE FUNCTION {state}.json_numeric(value text) RETURNS numeric
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN value ~ '^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,3})?\s*$'
                    THEN value::numeric
                WHEN value IS NOT NULL AND {state}.unfit(value, 'numeric') IS NULL THEN NULL END;

CREATE FUNCTION {state}.json_boolean(value text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE value WHEN 'true' THEN true WHEN 'false' THEN false
                ELSE CASE WHEN value ~* '^\s*(t|tr|tru|true|f|fa|fal|fals|false|y|ye|yes|n|no|on|of|off|1|0)\s*$'
                              THEN value::boolean
                          WHEN value IS NOT NULL AND {state}.unfit(value, 'boolean') IS NULL
                              THEN NULL END END;

-- Stripe times are unix seconds; up to 11 digits stays inside PostgreSQL's timestamp range.
CREATE FUNCTION {state}.json_time(value text) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN value ~ '^\s*[-+]?[0-9]{1,11}(\.[0-9]*)?\s*$'
                    THEN to_timestamp(value::double precision)
                WHEN value IS NOT NULL AND {state}.unfit(value, 'time') IS NULL THEN NULL END;

-- 1. typed columns through the json_* functions ------------------------------------------------

DO $migration$
DECLARE
    mirror_oids oid[] := ARRAY(
        SELECT c.oid FROM pg_class c
         WHERE c.relnamespace = to_regnamespace(replace('{mirror}', '"', '')) AND c.relkind = 'r');
    v record;
    col record;
    expr text;
    new_expr text;
    m text[];
    alters text;
    acl record;
BEGIN
    -- The views over the mirror (and views over those), to recreate once the columns are back.
    CREATE TEMP TABLE syncd_saved_views ON COMMIT DROP AS
    WITH RECURSIVE deps(oid) AS (
        SELECT DISTINCT r.ev_class
          FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
         WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
           AND d.refobjid = ANY (mirror_oids) AND r.ev_class <> d.refobjid
        UNION
        SELECT r.ev_class
          FROM deps JOIN pg_depend d ON d.refobjid = deps.oid AND d.refclassid = 'pg_class'::regclass
          JOIN pg_rewrite r ON r.oid = d.objid AND d.classid = 'pg_rewrite'::regclass
         WHERE r.ev_class <> deps.oid
    )
    SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name, c.relkind,
           pg_get_viewdef(c.oid) AS def, c.reloptions, c.relacl,
           pg_get_userbyid(c.relowner) AS owner, obj_description(c.oid, 'pg_class') AS comment
      FROM deps JOIN pg_class c ON c.oid = deps.oid JOIN pg_namespace n ON n.oid = c.relnamespace;

    FOR v IN SELECT * FROM syncd_saved_views ORDER BY oid DESC LOOP
        EXECUTE format('DROP %s IF EXISTS %s',
                       CASE v.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END, v.name);
    END LOOP;

    FOR col IN
        SELECT c.oid AS rel, format('%I.%I', n.nspname, c.relname) AS tbl, a.attname,
               format_type(a.atttypid, a.atttypmod) AS type, pg_get_expr(ad.adbin, ad.adrelid) AS expr
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
         WHERE a.attrelid = ANY (mirror_oids) AND a.attgenerated = 's' AND NOT a.attisdropped
         ORDER BY c.oid, a.attnum
    LOOP
        expr := col.expr;
        -- Deparsed as `to_timestamp((X)::double precision)` or `(X)::type`, X reading raw.
        m := regexp_match(expr, '^to_timestamp\((.*)::double precision\)$');
        IF m IS NOT NULL THEN
            new_expr := format('{state}.json_time(%s)', m[1]);
        ELSE
            m := regexp_match(expr, '^\((.*)\)::(bigint|integer|numeric|boolean)$');
            IF m IS NOT NULL THEN
                new_expr := format('{state}.json_%s(%s)', m[2], m[1]);
            ELSIF expr ~ '::(bigint|integer|numeric|boolean|double precision)' THEN
                RAISE EXCEPTION 'generated column %.% casts in an unknown shape: %',
                                col.tbl, col.attname, expr;
            ELSE
                CONTINUE;  -- text and jsonb columns never fail
            END IF;
        END IF;
        EXECUTE format('ALTER TABLE %s DROP COLUMN %I, ADD COLUMN %I %s GENERATED ALWAYS AS (%s) STORED',
                       col.tbl, col.attname, col.attname, col.type, new_expr);
    END LOOP;

    FOR v IN SELECT * FROM syncd_saved_views ORDER BY oid LOOP
        EXECUTE format('CREATE %s %s%s AS %s',
                       CASE v.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END, v.name,
                       CASE WHEN v.reloptions IS NULL THEN ''
                            ELSE format(' WITH (%s)', array_to_string(v.reloptions, ', ')) END,
                       v.def);
        EXECUTE format('ALTER %s %s OWNER TO %I',
                       CASE v.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END, v.name, v.owner);
        IF v.comment IS NOT NULL THEN
            EXECUTE format('COMMENT ON %s %s IS %L',
                           CASE v.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END,
                           v.name, v.comment);
        END IF;
        IF v.relacl IS NOT NULL THEN
            EXECUTE format('REVOKE ALL ON %s FROM PUBLIC', v.name);
            FOR acl IN SELECT (aclexplode(v.relacl)).* LOOP
                EXECUTE format('GRANT %s ON %s TO %s%s', acl.privilege_type, v.name,
                               CASE WHEN acl.grantee = 0 THEN 'PUBLIC'
                                    ELSE quote_ident(pg_get_userbyid(acl.grantee)) END,
                               CASE WHEN acl.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
            END LOOP;
        END IF;
    END LOOP;
END
$migration$;

-- 2. the quarantine ------------------------------------------------------------------------------

ALTER TABLE {state}.rejected_objects
    ADD COLUMN raw_text    text,            -- the object as received (JSON text)
    ADD COLUMN source      text,            -- 'resync run 12', 'event evt_...'
    ADD COLUMN first_seen  timestamptz,
    ADD COLUMN last_seen   timestamptz,
    ADD COLUMN attempts    integer NOT NULL DEFAULT 1,
    ADD COLUMN resolved_at timestamptz;     -- a good version was stored since: out of quarantine
UPDATE {state}.rejected_objects
   SET raw_text = raw::text, first_seen = rejected_at, last_seen = rejected_at,
       source = 'resync run ' || run_id;
ALTER TABLE {state}.rejected_objects
    ALTER COLUMN first_seen SET NOT NULL, ALTER COLUMN first_seen SET DEFAULT now(),
    ALTER COLUMN last_seen SET NOT NULL, ALTER COLUMN last_seen SET DEFAULT now();
-- Older rows may repeat an object (one per run): keep the newest open.
UPDATE {state}.rejected_objects r SET resolved_at = r.last_seen
 WHERE r.object_id IS NOT NULL
   AND EXISTS (SELECT 1 FROM {state}.rejected_objects n
                WHERE n.table_name = r.table_name AND n.object_id = r.object_id AND n.id > r.id);
CREATE UNIQUE INDEX rejected_objects_open
    ON {state}.rejected_objects (table_name, object_id)
 WHERE resolved_at IS NULL AND object_id IS NOT NULL;

-- 3. the ledger's new outcome ------------------------------------------------------------------

ALTER TABLE {state}.events_ledger DROP CONSTRAINT events_ledger_outcome_check;
ALTER TABLE {state}.events_ledger
    ADD CONSTRAINT events_ledger_outcome_check
    CHECK (outcome IN ('applied', 'ignored', 'quarantined'));

-- 4. A run that skipped types (unavailable to the key, or answering errors) ends
--    `done_with_problems`: it completed, and says it did not mirror everything.
ALTER TABLE {state}.resync_runs DROP CONSTRAINT resync_runs_status_check;
ALTER TABLE {state}.resync_runs
    ADD CONSTRAINT resync_runs_status_check
    CHECK (status IN ('pending', 'running', 'done', 'done_with_problems', 'failed', 'superseded'));

-- 5. What keeps failing in each replica right now (syncd/problems.py), written with its
--    heartbeat, so `syncd status` tells the truth from the database alone.
ALTER TABLE {state}.instances ADD COLUMN problems jsonb NOT NULL DEFAULT '{}';
