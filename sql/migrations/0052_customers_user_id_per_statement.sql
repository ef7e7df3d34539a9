-- customers.user_id without a PL/pgSQL call per row.
--
-- The row triggers of 0010/0012/0050 cost about a fifth of PostgreSQL's time per customer a
-- resync inserts (measured: 42 us a row without them, 50 with the metadata trigger, 65 with the
-- checkout fallback where it fires). Now:
-- * syncd's own customers upserts compute user_id from the metadata themselves
--   (upsert_objects_customers in writer.sql), so the metadata trigger's WHEN is false for them
--   and it does not run; other writers (a psql session, an older syncd) still get it;
-- * the checkout fallback runs once per statement, over the rows it left without a user id.
-- The locking of 0050 is unchanged: the fallback takes the per-customer advisory locks (in id
-- order, as the session side does) and only then looks, in a new statement with a new snapshot.

-- An empty value is no user id (0050's fallback treated it so; now the column never holds '').
CREATE OR REPLACE FUNCTION {mirror}.customers_set_user_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.user_id := NULLIF(NEW.raw->'metadata'->>{mirror}.user_id_key(), '');
    RETURN NEW;
END
$$;

DROP TRIGGER customers_set_user_id ON {mirror}.customers;
DROP TRIGGER customers_set_user_id_on_update ON {mirror}.customers;
DROP TRIGGER customers_user_id_fallback ON {mirror}.customers;
DROP FUNCTION {mirror}.customers_user_id_fallback();

CREATE TRIGGER customers_set_user_id BEFORE INSERT ON {mirror}.customers
    FOR EACH ROW
    WHEN (NEW.user_id IS DISTINCT FROM NULLIF(NEW.raw->'metadata'->>{mirror}.user_id_key(), ''))
    EXECUTE FUNCTION {mirror}.customers_set_user_id();
CREATE TRIGGER customers_set_user_id_on_update BEFORE UPDATE OF raw ON {mirror}.customers
    FOR EACH ROW
    WHEN (OLD.raw->'metadata' IS DISTINCT FROM NEW.raw->'metadata'
          AND NEW.user_id IS DISTINCT FROM NULLIF(NEW.raw->'metadata'->>{mirror}.user_id_key(), ''))
    EXECUTE FUNCTION {mirror}.customers_set_user_id();

-- The checkout fallback (0050) for the customers a statement wrote without a user id. Its own
-- UPDATE fires this again with only mapped rows, which ends at once.
CREATE FUNCTION {mirror}.customers_map_users() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unmapped text[];
BEGIN
    SELECT array_agg(n.id ORDER BY n.id) INTO unmapped
      FROM written_customers n
     WHERE n.user_id IS NULL;
    IF unmapped IS NULL THEN
        RETURN NULL;
    END IF;
    -- unnest keeps the array's (id) order: the same lock order as the session side.
    PERFORM pg_advisory_xact_lock({mirror}.user_mapping_lock(u.id)) FROM unnest(unmapped) AS u(id);
    -- A new statement, so a new snapshot: sessions committed while we waited for a lock count.
    -- The same choice as checkout_user_id(): the latest completed session with a reference.
    UPDATE {mirror}.customers c
       SET user_id = s.client_reference_id
      FROM (SELECT DISTINCT ON (x.customer_id) x.customer_id, x.client_reference_id
              FROM {mirror}.checkout_sessions x
             WHERE x.customer_id = ANY (unmapped)
               AND x.status = 'complete'
               AND NULLIF(x.client_reference_id, '') IS NOT NULL
               AND x.deleted_at IS NULL
             ORDER BY x.customer_id, x.created DESC, x.id DESC) s
     WHERE c.id = s.customer_id
       AND c.user_id IS NULL;
    RETURN NULL;
END
$$;
CREATE TRIGGER customers_map_users_insert AFTER INSERT ON {mirror}.customers
    REFERENCING NEW TABLE AS written_customers
    FOR EACH STATEMENT EXECUTE FUNCTION {mirror}.customers_map_users();
CREATE TRIGGER customers_map_users_update AFTER UPDATE ON {mirror}.customers
    REFERENCING NEW TABLE AS written_customers
    FOR EACH STATEMENT EXECUTE FUNCTION {mirror}.customers_map_users();
