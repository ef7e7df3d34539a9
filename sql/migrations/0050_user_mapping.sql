-- The app's user id for customers created by Stripe Checkout.
--
-- customers.user_id comes from the customer's metadata (0010: the configured key). Customers that
-- Checkout created on its own carry no metadata; the app passed its user id as the session's
-- client_reference_id instead. For those, user_id falls back to the client_reference_id of the
-- customer's most recent completed checkout session. Metadata always wins when it is present.
--
-- Both sides keep it right whichever is written first: a customer row looks up its sessions, and
-- a completed session updates its customer. Writers run concurrently (the resync has several),
-- so a customer's first write and its session's could each miss the other's uncommitted row: a
-- transaction-level advisory lock per customer id, taken by both sides before they look, orders
-- them, and the second looks with a fresh snapshot (each statement of a plpgsql trigger takes
-- one) after the first committed. Only customers without the metadata key and completed sessions
-- with a reference take it. Lock order: the session side takes its locks in customer id order
-- and never waits for a customer row (SKIP LOCKED: a row held by a customer writer is left to
-- that writer, whose trigger waits for this transaction's lock and then sees the session). Left
-- open: a customer row held by a write that changes nothing (stale by the version guard, or a
-- tombstone) at that moment keeps its old user_id until the customer's next write.

-- The fallback user id of one customer (NULL if none of its completed sessions has one).
CREATE FUNCTION {mirror}.checkout_user_id(customer text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT s.client_reference_id
      FROM {mirror}.checkout_sessions s
     WHERE s.customer_id = customer
       AND s.status = 'complete'
       AND NULLIF(s.client_reference_id, '') IS NOT NULL
       AND s.deleted_at IS NULL
     ORDER BY s.created DESC, s.id DESC
     LIMIT 1
$$;

-- The metadata key, as customers_set_user_id reads it (the daemon sets syncd.user_id_key).
CREATE FUNCTION {mirror}.user_id_key() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(NULLIF(current_setting('syncd.user_id_key', true), ''), 'supabase_user_id')
$$;

-- The advisory lock key of one customer's mapping.
CREATE FUNCTION {mirror}.user_mapping_lock(customer text) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT hashtextextended('syncd:user_mapping:' || customer, 0)
$$;

-- Runs after customers_set_user_id* (triggers of one kind fire in name order; a BEFORE trigger's
-- WHEN sees NEW as the earlier ones left it): an empty metadata value counts as absent, then the
-- checkout fallback applies. Customers that have a user id skip the PL/pgSQL call altogether.
CREATE FUNCTION {mirror}.customers_user_id_fallback() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NULLIF(NEW.user_id, '') IS NULL THEN
        PERFORM pg_advisory_xact_lock({mirror}.user_mapping_lock(NEW.id));
        NEW.user_id := {mirror}.checkout_user_id(NEW.id);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER customers_user_id_fallback BEFORE INSERT OR UPDATE OF raw ON {mirror}.customers
    FOR EACH ROW WHEN (NULLIF(NEW.user_id, '') IS NULL)
    EXECUTE FUNCTION {mirror}.customers_user_id_fallback();

-- Sessions written after their customer: refresh those customers' fallback, once per statement
-- (a whole page of sessions).
CREATE FUNCTION {mirror}.checkout_sessions_map_users() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    customers text[];
    customer text;
BEGIN
    SELECT array_agg(DISTINCT n.customer_id ORDER BY n.customer_id) INTO customers
      FROM new_sessions n
     WHERE n.customer_id IS NOT NULL
       AND NULLIF(n.client_reference_id, '') IS NOT NULL
       AND n.status = 'complete';
    IF customers IS NULL THEN
        RETURN NULL;
    END IF;
    FOREACH customer IN ARRAY customers LOOP
        PERFORM pg_advisory_xact_lock({mirror}.user_mapping_lock(customer));
    END LOOP;
    UPDATE {mirror}.customers c
       SET user_id = {mirror}.checkout_user_id(c.id)
     WHERE c.id IN (SELECT x.id FROM {mirror}.customers x
                     WHERE x.id = ANY (customers)
                       AND NULLIF(x.raw->'metadata'->>{mirror}.user_id_key(), '') IS NULL
                     ORDER BY x.id
                       FOR UPDATE SKIP LOCKED)
       AND c.user_id IS DISTINCT FROM {mirror}.checkout_user_id(c.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER checkout_sessions_map_users_insert AFTER INSERT ON {mirror}.checkout_sessions
    REFERENCING NEW TABLE AS new_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION {mirror}.checkout_sessions_map_users();
CREATE TRIGGER checkout_sessions_map_users_update AFTER UPDATE ON {mirror}.checkout_sessions
    REFERENCING NEW TABLE AS new_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION {mirror}.checkout_sessions_map_users();
