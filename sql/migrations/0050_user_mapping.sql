-- The app's user id for customers created by Stripe Checkout.
--
-- customers.user_id comes from the customer's metadata (0010: the configured key). Customers that
-- Checkout created on its own carry no metadata; the app passed its user id as the session's
-- client_reference_id instead. For those, user_id falls back to the client_reference_id of the
-- customer's most recent completed checkout session. Metadata always wins when it is present.
-- Both sides keep it right whichever arrives first: a customer row looks up its sessions, and a
-- completed session updates its customer.

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

-- A session completed (or changed) after its customer was written: refresh that customer's
-- fallback. Setting user_id alone does not fire the customers triggers (they watch raw).
CREATE FUNCTION {mirror}.checkout_sessions_map_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE {mirror}.customers c
       SET user_id = {mirror}.checkout_user_id(c.id)
     WHERE c.id = NEW.customer_id
       AND NULLIF(c.raw->'metadata'->>{mirror}.user_id_key(), '') IS NULL
       AND c.user_id IS DISTINCT FROM {mirror}.checkout_user_id(c.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER checkout_sessions_map_user AFTER INSERT OR UPDATE OF raw ON {mirror}.checkout_sessions
    FOR EACH ROW WHEN (NEW.customer_id IS NOT NULL AND NEW.client_reference_id IS NOT NULL)
    EXECUTE FUNCTION {mirror}.checkout_sessions_map_user();
