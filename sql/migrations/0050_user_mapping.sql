-- The app's user id for customers created by Stripe Checkout.
--
-- customers.user_id comes from the customer's metadata (0010: the configured key). Customers that
-- Checkout created on its own carry no metadata; the app passed its user id as the session's
-- client_reference_id instead. For those, user_id falls back to the client_reference_id of the
-- customer's most recent completed checkout session. Metadata always wins when it is present.
-- Both sides keep it right whichever arrives first: a customer row looks up its sessions, and a
-- completed session updates its customer. One interleaving escapes both: a customer's first
-- write and its session's first write running at once in two transactions, neither seeing the
-- other's uncommitted row; the customer's next write (a refetch, the reconcile) repairs it.

-- The fallback user id of one customer (NULL if none of its completed sessions has one).
-- Called from the (volatile) plpgsql triggers, each call reads with a fresh snapshot: a customer
-- update that waited for a concurrent session writer's row lock sees that writer's sessions.
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

-- Runs after customers_set_user_id (triggers of one kind fire in name order): an empty metadata
-- value counts as absent, then the checkout fallback applies.
CREATE FUNCTION {mirror}.customers_user_id_fallback() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NULLIF(NEW.user_id, '') IS NULL THEN
        NEW.user_id := {mirror}.checkout_user_id(NEW.id);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER customers_user_id_fallback BEFORE INSERT OR UPDATE OF raw ON {mirror}.customers
    FOR EACH ROW EXECUTE FUNCTION {mirror}.customers_user_id_fallback();

-- Sessions completed (or changed) after their customer was written: refresh those customers'
-- fallback, once per statement (a whole page of sessions), locking the customers in id order as
-- the writer's own upserts do, so two writers cannot deadlock. Setting user_id alone does not
-- fire the customers triggers (they watch raw).
CREATE FUNCTION {mirror}.checkout_sessions_map_users() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM {mirror}.customers c
      WHERE c.id IN (SELECT n.customer_id FROM new_sessions n
                      WHERE n.client_reference_id IS NOT NULL)
        AND NULLIF(c.raw->'metadata'->>{mirror}.user_id_key(), '') IS NULL
      ORDER BY c.id
        FOR UPDATE;
    UPDATE {mirror}.customers c
       SET user_id = {mirror}.checkout_user_id(c.id)
     WHERE c.id IN (SELECT n.customer_id FROM new_sessions n
                     WHERE n.client_reference_id IS NOT NULL)
       AND NULLIF(c.raw->'metadata'->>{mirror}.user_id_key(), '') IS NULL
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
