-- Row-level security for the application views (syncd/appschema.py decides when these run).
--
-- The views are security_invoker, so a Supabase client's role (anon, authenticated) reads the
-- mirror tables under its own privileges: the policies sit on those tables. syncd owns the tables
-- (it ran the migrations) and so bypasses row-level security: sync keeps working (never FORCE).
-- syncd manages the privileges of anon/authenticated on its schemas: the removal below revokes
-- whatever they hold there, so turning the feature off never leaves rows readable unfiltered.
-- A user is `auth.uid()::text`: user ids are text in the mirror, and a non-uuid never breaks it.
-- `(SELECT auth.uid())` is evaluated once per query rather than once per row, and
-- `col = ANY (ARRAY(SELECT ...))` computes the user's ids once, then uses the index on col
-- (`col IN (SELECT ...)` is planned as a hashed subplan filtering a sequential scan).

-- name: rls_support
SELECT to_regprocedure('auth.uid()') IS NOT NULL AS has_auth_uid,
       ARRAY(SELECT rolname::text FROM pg_roles
              WHERE rolname IN ('anon', 'authenticated') ORDER BY rolname) AS roles,
       current_setting('server_version_num')::int AS server_version,
       to_regclass('{app}.usage_records') IS NOT NULL AS has_usage_records,
       (SELECT count(*) FROM pg_policies
         WHERE schemaname IN (replace('{mirror}', '"', ''), replace('{app}', '"', ''))
           AND policyname LIKE 'syncd\_%')::int
           AS installed_policies;

-- name: remove_row_level_security
-- Drops syncd's policies, disables row-level security where no other policy remains, and revokes
-- what anon/authenticated hold on syncd's schemas. Idempotent; also the first step of install.
DO $$
DECLARE
    p record;
    t record;
    r text;
BEGIN
    PERFORM set_config('lock_timeout', '10s', true);
    PERFORM pg_advisory_xact_lock(hashtext('syncd:row_level_security'));
    FOR p IN SELECT schemaname, tablename, policyname FROM pg_policies
              WHERE schemaname IN (replace('{mirror}', '"', ''), replace('{app}', '"', ''))
                AND policyname LIKE 'syncd\_%'
    LOOP
        EXECUTE format('DROP POLICY %I ON %I.%I', p.policyname, p.schemaname, p.tablename);
    END LOOP;
    FOR t IN SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname IN (replace('{mirror}', '"', ''), replace('{app}', '"', ''))
                AND c.relkind = 'r' AND c.relrowsecurity
                AND NOT EXISTS (SELECT 1 FROM pg_policy pp WHERE pp.polrelid = c.oid)
    LOOP
        EXECUTE format('ALTER TABLE %I.%I DISABLE ROW LEVEL SECURITY', t.nspname, t.relname);
    END LOOP;
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA {mirror}, {app} FROM %I', r);
            EXECUTE format('REVOKE ALL ON SCHEMA {mirror}, {app} FROM %I', r);
        END IF;
    END LOOP;
END
$$;

-- name: install_row_level_security
-- The tutorial's policies: users see their own rows; anyone sees active plans. Run after
-- remove_row_level_security in the same transaction, so readers never see a gap.
DO $$
BEGIN
    PERFORM set_config('lock_timeout', '10s', true);
    PERFORM pg_advisory_xact_lock(hashtext('syncd:row_level_security'));

    ALTER TABLE {mirror}.customers ENABLE ROW LEVEL SECURITY;
    ALTER TABLE {mirror}.subscriptions ENABLE ROW LEVEL SECURITY;
    ALTER TABLE {mirror}.subscription_items ENABLE ROW LEVEL SECURITY;
    ALTER TABLE {mirror}.invoices ENABLE ROW LEVEL SECURITY;
    ALTER TABLE {mirror}.checkout_sessions ENABLE ROW LEVEL SECURITY;
    ALTER TABLE {mirror}.checkout_session_line_items ENABLE ROW LEVEL SECURITY;
    ALTER TABLE {mirror}.active_entitlements ENABLE ROW LEVEL SECURITY;
    ALTER TABLE {mirror}.prices ENABLE ROW LEVEL SECURITY;
    ALTER TABLE {mirror}.products ENABLE ROW LEVEL SECURITY;
    ALTER TABLE {mirror}.product_features ENABLE ROW LEVEL SECURITY;
    ALTER TABLE {mirror}.entitlement_features ENABLE ROW LEVEL SECURITY;

    -- A user's own rows: through the customers carrying their user id.
    CREATE POLICY syncd_own_rows ON {mirror}.customers FOR SELECT TO authenticated
        USING (user_id = (SELECT auth.uid()::text));
    CREATE POLICY syncd_own_rows ON {mirror}.subscriptions FOR SELECT TO authenticated
        USING (customer_id = ANY (ARRAY(
            SELECT c.id FROM {mirror}.customers c WHERE c.user_id = (SELECT auth.uid()::text))));
    CREATE POLICY syncd_own_rows ON {mirror}.subscription_items FOR SELECT TO authenticated
        USING (parent_id = ANY (ARRAY(
            SELECT s.id FROM {mirror}.subscriptions s
              JOIN {mirror}.customers c ON c.id = s.customer_id
             WHERE c.user_id = (SELECT auth.uid()::text))));
    CREATE POLICY syncd_own_rows ON {mirror}.invoices FOR SELECT TO authenticated
        USING (customer_id = ANY (ARRAY(
            SELECT c.id FROM {mirror}.customers c WHERE c.user_id = (SELECT auth.uid()::text))));
    -- A guest checkout has no customer: its client_reference_id names the user.
    CREATE POLICY syncd_own_rows ON {mirror}.checkout_sessions FOR SELECT TO authenticated
        USING (client_reference_id = (SELECT auth.uid()::text)
               OR customer_id = ANY (ARRAY(
                   SELECT c.id FROM {mirror}.customers c
                    WHERE c.user_id = (SELECT auth.uid()::text))));
    CREATE POLICY syncd_own_rows ON {mirror}.checkout_session_line_items FOR SELECT TO authenticated
        USING (parent_id = ANY (ARRAY(
            SELECT s.id FROM {mirror}.checkout_sessions s
             WHERE s.client_reference_id = (SELECT auth.uid()::text)
                OR s.customer_id IN (SELECT c.id FROM {mirror}.customers c
                                      WHERE c.user_id = (SELECT auth.uid()::text)))));
    CREATE POLICY syncd_own_rows ON {mirror}.active_entitlements FOR SELECT TO authenticated
        USING (parent_id = ANY (ARRAY(
            SELECT c.id FROM {mirror}.customers c WHERE c.user_id = (SELECT auth.uid()::text))));

    -- The catalog: anyone sees active plans; a subscriber also sees the (maybe archived) plan
    -- they are on.
    CREATE POLICY syncd_active ON {mirror}.prices FOR SELECT TO anon, authenticated
        USING (active);
    CREATE POLICY syncd_subscribed ON {mirror}.prices FOR SELECT TO authenticated
        USING (id = ANY (ARRAY(
            SELECT i.price_id FROM {mirror}.subscription_items i
              JOIN {mirror}.subscriptions s ON s.id = i.parent_id
              JOIN {mirror}.customers c ON c.id = s.customer_id
             WHERE c.user_id = (SELECT auth.uid()::text))));
    CREATE POLICY syncd_active ON {mirror}.products FOR SELECT TO anon, authenticated
        USING (active);
    CREATE POLICY syncd_subscribed ON {mirror}.products FOR SELECT TO authenticated
        USING (id = ANY (ARRAY(
            SELECT i.product_id FROM {mirror}.subscription_items i
              JOIN {mirror}.subscriptions s ON s.id = i.parent_id
              JOIN {mirror}.customers c ON c.id = s.customer_id
             WHERE c.user_id = (SELECT auth.uid()::text))));
    CREATE POLICY syncd_catalog ON {mirror}.product_features FOR SELECT TO anon, authenticated
        USING (true);
    CREATE POLICY syncd_catalog ON {mirror}.entitlement_features FOR SELECT TO anon, authenticated
        USING (true);

    GRANT USAGE ON SCHEMA {app}, {mirror} TO anon, authenticated;
    GRANT SELECT ON {app}.pricing_plans, {mirror}.prices, {mirror}.products,
                    {mirror}.product_features, {mirror}.entitlement_features
       TO anon, authenticated;
    GRANT SELECT ON {app}.customers, {app}.subscriptions, {app}.subscription_items,
                    {app}.payments, {app}.invoices, {app}.active_entitlements,
                    {mirror}.customers, {mirror}.subscriptions, {mirror}.subscription_items,
                    {mirror}.invoices, {mirror}.checkout_sessions,
                    {mirror}.checkout_session_line_items, {mirror}.active_entitlements
       TO authenticated;
END
$$;

-- name: install_usage_row_level_security
-- usage_records (created by the usage feature): users read and insert their own rows. INSERT is
-- granted on the input columns only, so a user can neither bill another customer (customer_id,
-- subscription_id) nor mark a row as already reported (status, reported_at, ...).
DO $$
DECLARE
    cols text;
BEGIN
    IF to_regclass('{app}.usage_records') IS NULL THEN
        RETURN;
    END IF;
    ALTER TABLE {app}.usage_records ENABLE ROW LEVEL SECURITY;
    CREATE POLICY syncd_own_rows ON {app}.usage_records FOR SELECT TO authenticated
        USING (user_id = (SELECT auth.uid()::text));
    CREATE POLICY syncd_own_insert ON {app}.usage_records FOR INSERT TO authenticated
        WITH CHECK (user_id = (SELECT auth.uid()::text));
    SELECT string_agg(quote_ident(a.attname), ', ') INTO cols
      FROM pg_attribute a
     WHERE a.attrelid = to_regclass('{app}.usage_records') AND a.attnum > 0
       AND NOT a.attisdropped
       AND a.attname IN ('user_id', 'metric', 'quantity', 'timestamp', 'idempotency_key');
    GRANT SELECT ON {app}.usage_records TO authenticated;
    IF cols IS NOT NULL THEN
        EXECUTE format('GRANT INSERT (%s) ON {app}.usage_records TO authenticated', cols);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = replace('{app}', '"', '') AND c.relkind = 'S') THEN
        EXECUTE 'GRANT USAGE ON ALL SEQUENCES IN SCHEMA {app} TO authenticated';
    END IF;
END
$$;
