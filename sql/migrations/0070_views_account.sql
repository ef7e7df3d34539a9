-- Connect (docs/connect.md): the application views show the Stripe account each row belongs to
-- (`account_id`, last: a user may be a customer of several connected accounts). The views are
-- those of 0051 with the column added at the end, so every query that worked still does.

CREATE OR REPLACE VIEW {app}.customers AS
SELECT c.user_id     AS id,
       c.id          AS stripe_customer_id,
       c.email,
       c.name        AS full_name,
       c.created     AS created_at,
       c.synced_at   AS updated_at,
       c.account_id
  FROM {mirror}.customers c
 WHERE c.deleted_at IS NULL
   AND c.user_id IS NOT NULL;

CREATE OR REPLACE VIEW {app}.subscriptions AS
SELECT s.id,
       c.user_id,
       s.customer_id,
       s.status,
       s.price_id,
       s.quantity,
       s.cancel_at_period_end,
       s.cancel_at,
       s.canceled_at,
       s.current_period_start,
       s.current_period_end,
       s.trial_start,
       s.trial_end,
       s.created     AS created_at,
       s.synced_at   AS updated_at,
       COALESCE(s.raw->'items'->'data'->0->'price'->'product'->>'id',
                s.raw->'items'->'data'->0->'price'->>'product') AS product_id,
       s.ended_at,
       s.account_id
  FROM {mirror}.subscriptions s
  LEFT JOIN {mirror}.customers c ON c.id = s.customer_id
 WHERE s.deleted_at IS NULL;

CREATE OR REPLACE VIEW {app}.subscription_items AS
SELECT i.id,
       i.parent_id   AS subscription_id,
       c.user_id,
       s.customer_id,
       i.price_id,
       i.product_id,
       i.quantity,
       i.created     AS created_at,
       i.account_id
  FROM {mirror}.subscription_items i
  JOIN {mirror}.subscriptions s ON s.id = i.parent_id
  LEFT JOIN {mirror}.customers c ON c.id = s.customer_id
 WHERE i.deleted_at IS NULL
   AND s.deleted_at IS NULL;

CREATE OR REPLACE VIEW {app}.pricing_plans AS
SELECT pr.id,
       pr.product_id,
       p.name,
       p.description,
       pr.unit_amount                 AS amount,
       pr.currency,
       pr.recurring_interval          AS interval,
       pr.recurring_interval_count    AS interval_count,
       pr.trial_period_days,
       ARRAY(SELECT f.feature->>'name'
               FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p.marketing_features) = 'array'
                                              THEN p.marketing_features ELSE '[]' END)
                    WITH ORDINALITY AS f(feature, n)
              WHERE f.feature->>'name' IS NOT NULL
              ORDER BY f.n)           AS features,
       COALESCE(pr.active AND p.active, false) AS is_active,
       pr.created                     AS created_at,
       pr.lookup_key,
       pr.type,
       pr.recurring_usage_type        AS usage_type,
       pr.account_id
  FROM {mirror}.prices pr
  JOIN {mirror}.products p ON p.id = pr.product_id
 WHERE pr.deleted_at IS NULL
   AND p.deleted_at IS NULL;

CREATE OR REPLACE VIEW {app}.payments AS
SELECT cs.id,
       COALESCE(c.user_id, NULLIF(cs.client_reference_id, '')) AS user_id,
       cs.customer_id,
       cs.amount_total      AS amount,
       cs.currency,
       cs.payment_status    AS status,
       (SELECT string_agg(li.description, ', ' ORDER BY li.description)
          FROM {mirror}.checkout_session_line_items li
         WHERE li.parent_id = cs.id AND li.deleted_at IS NULL) AS description,
       cs.metadata,
       cs.created           AS created_at,
       'checkout_session'::text AS source,
       cs.payment_intent_id,
       cs.account_id
  FROM {mirror}.checkout_sessions cs
  LEFT JOIN {mirror}.customers c ON c.id = cs.customer_id
 WHERE cs.deleted_at IS NULL
   AND cs.mode = 'payment'
   AND cs.status = 'complete'
UNION ALL
SELECT i.id,
       c.user_id,
       i.customer_id,
       i.amount_paid,
       i.currency,
       i.status,
       COALESCE(i.raw->>'description', i.raw->'lines'->'data'->0->>'description'),
       i.metadata,
       COALESCE(i.paid_at, i.created),
       'invoice'::text,
       COALESCE(i.raw->'payment_intent'->>'id', i.raw->>'payment_intent'),
       i.account_id
  FROM {mirror}.invoices i
  LEFT JOIN {mirror}.customers c ON c.id = i.customer_id
 WHERE i.deleted_at IS NULL
   AND i.status = 'paid';

CREATE OR REPLACE VIEW {app}.invoices AS
SELECT i.id,
       c.user_id,
       i.customer_id,
       i.subscription_id,
       i.status,
       i.number,
       i.currency,
       i.amount_due,
       i.amount_paid,
       i.amount_remaining,
       i.total,
       i.hosted_invoice_url,
       i.invoice_pdf,
       i.period_start,
       i.period_end,
       i.due_date,
       i.paid_at,
       i.created     AS created_at,
       i.synced_at   AS updated_at,
       i.account_id
  FROM {mirror}.invoices i
  LEFT JOIN {mirror}.customers c ON c.id = i.customer_id
 WHERE i.deleted_at IS NULL;

CREATE OR REPLACE VIEW {app}.active_entitlements AS
SELECT e.id,
       c.user_id,
       e.parent_id   AS customer_id,
       e.feature_id,
       e.lookup_key,
       f.name        AS feature_name,
       e.account_id
  FROM {mirror}.active_entitlements e
  JOIN {mirror}.customers c ON c.id = e.parent_id
  LEFT JOIN {mirror}.entitlement_features f ON f.id = e.feature_id
 WHERE e.deleted_at IS NULL
   AND c.deleted_at IS NULL;

-- As in 0051: the views run as the querying role (PG 15+), whatever REPLACE kept.
DO $$
DECLARE
    v text;
BEGIN
    IF current_setting('server_version_num')::int >= 150000 THEN
        FOREACH v IN ARRAY ARRAY['customers', 'subscriptions', 'subscription_items', 'pricing_plans',
                                 'payments', 'invoices', 'active_entitlements'] LOOP
            EXECUTE format('ALTER VIEW %s.%I SET (security_invoker = true)', '{app}', v);
        END LOOP;
    END IF;
END
$$;
