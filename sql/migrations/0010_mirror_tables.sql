-- The mirror: one table per Stripe object type. Applications read these directly.
--
-- Every table has the same bookkeeping columns:
--   id          Stripe's id (globally unique)
--   account_id  the Stripe account ('' for the key's own account; acct_... under Connect)
--   raw         the whole object exactly as Stripe returned it: nothing Stripe sends is lost
--   api_version the API version `raw` is rendered in
--   fetched_at  the latest time Stripe confirmed this content (fetch time, or an event's created);
--               the ordering guard: an older version never overwrites a newer one
--   synced_at   when syncd last changed the row's content
--   deleted_at  tombstone: deleted in Stripe (or gone from a complete list); rows are never removed
-- Child tables (items, lines) also have parent_id, the object they were listed under.
-- Typed columns are generated from `raw`, so they can never disagree with it; expandable fields
-- (customer, product, ...) read the id whether Stripe sent an id or an expanded object.

CREATE SCHEMA IF NOT EXISTS {mirror};

-- Stripe object `customer`
CREATE TABLE {mirror}.customers (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    user_id     text,
    email text GENERATED ALWAYS AS (raw->>'email') STORED,
    name text GENERATED ALWAYS AS (raw->>'name') STORED,
    phone text GENERATED ALWAYS AS (raw->>'phone') STORED,
    description text GENERATED ALWAYS AS (raw->>'description') STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    balance bigint GENERATED ALWAYS AS ((raw->>'balance')::bigint) STORED,
    delinquent boolean GENERATED ALWAYS AS ((raw->>'delinquent')::boolean) STORED,
    default_payment_method_id text GENERATED ALWAYS AS (raw->'invoice_settings'->>'default_payment_method') STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX customers_user_id ON {mirror}.customers (user_id);
CREATE INDEX customers_email ON {mirror}.customers (email);

-- Stripe object `product`
CREATE TABLE {mirror}.products (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    name text GENERATED ALWAYS AS (raw->>'name') STORED,
    description text GENERATED ALWAYS AS (raw->>'description') STORED,
    active boolean GENERATED ALWAYS AS ((raw->>'active')::boolean) STORED,
    default_price_id text GENERATED ALWAYS AS (COALESCE(raw->'default_price'->>'id', raw->>'default_price')) STORED,
    type text GENERATED ALWAYS AS (raw->>'type') STORED,
    unit_label text GENERATED ALWAYS AS (raw->>'unit_label') STORED,
    marketing_features jsonb GENERATED ALWAYS AS (raw->'marketing_features') STORED,
    updated timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'updated')::double precision)) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

-- Stripe object `price`
CREATE TABLE {mirror}.prices (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    product_id text GENERATED ALWAYS AS (COALESCE(raw->'product'->>'id', raw->>'product')) STORED,
    active boolean GENERATED ALWAYS AS ((raw->>'active')::boolean) STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    unit_amount bigint GENERATED ALWAYS AS ((raw->>'unit_amount')::bigint) STORED,
    unit_amount_decimal numeric GENERATED ALWAYS AS ((raw->>'unit_amount_decimal')::numeric) STORED,
    type text GENERATED ALWAYS AS (raw->>'type') STORED,
    billing_scheme text GENERATED ALWAYS AS (raw->>'billing_scheme') STORED,
    lookup_key text GENERATED ALWAYS AS (raw->>'lookup_key') STORED,
    nickname text GENERATED ALWAYS AS (raw->>'nickname') STORED,
    recurring_interval text GENERATED ALWAYS AS (raw->'recurring'->>'interval') STORED,
    recurring_interval_count integer GENERATED ALWAYS AS ((raw->'recurring'->>'interval_count')::integer) STORED,
    recurring_usage_type text GENERATED ALWAYS AS (raw->'recurring'->>'usage_type') STORED,
    trial_period_days integer GENERATED ALWAYS AS ((raw->'recurring'->>'trial_period_days')::integer) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX prices_product_id ON {mirror}.prices (product_id);

-- Stripe object `plan`
CREATE TABLE {mirror}.plans (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    product_id text GENERATED ALWAYS AS (COALESCE(raw->'product'->>'id', raw->>'product')) STORED,
    active boolean GENERATED ALWAYS AS ((raw->>'active')::boolean) STORED,
    amount bigint GENERATED ALWAYS AS ((raw->>'amount')::bigint) STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    interval text GENERATED ALWAYS AS (raw->>'interval') STORED,
    interval_count integer GENERATED ALWAYS AS ((raw->>'interval_count')::integer) STORED,
    usage_type text GENERATED ALWAYS AS (raw->>'usage_type') STORED,
    trial_period_days integer GENERATED ALWAYS AS ((raw->>'trial_period_days')::integer) STORED,
    nickname text GENERATED ALWAYS AS (raw->>'nickname') STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX plans_product_id ON {mirror}.plans (product_id);

-- Stripe object `subscription`
CREATE TABLE {mirror}.subscriptions (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    customer_id text GENERATED ALWAYS AS (COALESCE(raw->'customer'->>'id', raw->>'customer')) STORED,
    status text GENERATED ALWAYS AS (raw->>'status') STORED,
    price_id text GENERATED ALWAYS AS (raw->'items'->'data'->0->'price'->>'id') STORED,
    quantity bigint GENERATED ALWAYS AS ((raw->'items'->'data'->0->>'quantity')::bigint) STORED,
    cancel_at_period_end boolean GENERATED ALWAYS AS ((raw->>'cancel_at_period_end')::boolean) STORED,
    cancel_at timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'cancel_at')::double precision)) STORED,
    canceled_at timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'canceled_at')::double precision)) STORED,
    ended_at timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'ended_at')::double precision)) STORED,
    start_date timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'start_date')::double precision)) STORED,
    trial_start timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'trial_start')::double precision)) STORED,
    trial_end timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'trial_end')::double precision)) STORED,
    current_period_start timestamptz GENERATED ALWAYS AS (to_timestamp(COALESCE(raw->>'current_period_start', raw->'items'->'data'->0->>'current_period_start')::double precision)) STORED,
    current_period_end timestamptz GENERATED ALWAYS AS (to_timestamp(COALESCE(raw->>'current_period_end', raw->'items'->'data'->0->>'current_period_end')::double precision)) STORED,
    collection_method text GENERATED ALWAYS AS (raw->>'collection_method') STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    latest_invoice_id text GENERATED ALWAYS AS (COALESCE(raw->'latest_invoice'->>'id', raw->>'latest_invoice')) STORED,
    default_payment_method_id text GENERATED ALWAYS AS (COALESCE(raw->'default_payment_method'->>'id', raw->>'default_payment_method')) STORED,
    schedule_id text GENERATED ALWAYS AS (COALESCE(raw->'schedule'->>'id', raw->>'schedule')) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX subscriptions_customer_id ON {mirror}.subscriptions (customer_id);
CREATE INDEX subscriptions_status ON {mirror}.subscriptions (status);

-- Stripe object `subscription_item`, listed under subscriptions
CREATE TABLE {mirror}.subscription_items (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    parent_id   text NOT NULL,
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    subscription_id text GENERATED ALWAYS AS (COALESCE(raw->'subscription'->>'id', raw->>'subscription')) STORED,
    price_id text GENERATED ALWAYS AS (raw->'price'->>'id') STORED,
    product_id text GENERATED ALWAYS AS (COALESCE(raw->'price'->'product'->>'id', raw->'price'->>'product')) STORED,
    quantity bigint GENERATED ALWAYS AS ((raw->>'quantity')::bigint) STORED,
    current_period_start timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'current_period_start')::double precision)) STORED,
    current_period_end timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'current_period_end')::double precision)) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX subscription_items_parent_id ON {mirror}.subscription_items (parent_id);
CREATE INDEX subscription_items_price_id ON {mirror}.subscription_items (price_id);

-- Stripe object `subscription_schedule`
CREATE TABLE {mirror}.subscription_schedules (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    customer_id text GENERATED ALWAYS AS (COALESCE(raw->'customer'->>'id', raw->>'customer')) STORED,
    subscription_id text GENERATED ALWAYS AS (COALESCE(raw->'subscription'->>'id', raw->>'subscription')) STORED,
    status text GENERATED ALWAYS AS (raw->>'status') STORED,
    canceled_at timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'canceled_at')::double precision)) STORED,
    completed_at timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'completed_at')::double precision)) STORED,
    released_at timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'released_at')::double precision)) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX subscription_schedules_customer_id ON {mirror}.subscription_schedules (customer_id);

-- Stripe object `invoice`
CREATE TABLE {mirror}.invoices (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    customer_id text GENERATED ALWAYS AS (COALESCE(raw->'customer'->>'id', raw->>'customer')) STORED,
    subscription_id text GENERATED ALWAYS AS (COALESCE(raw->'parent'->'subscription_details'->>'subscription', raw->'subscription'->>'id', raw->>'subscription')) STORED,
    status text GENERATED ALWAYS AS (raw->>'status') STORED,
    number text GENERATED ALWAYS AS (raw->>'number') STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    amount_due bigint GENERATED ALWAYS AS ((raw->>'amount_due')::bigint) STORED,
    amount_paid bigint GENERATED ALWAYS AS ((raw->>'amount_paid')::bigint) STORED,
    amount_remaining bigint GENERATED ALWAYS AS ((raw->>'amount_remaining')::bigint) STORED,
    subtotal bigint GENERATED ALWAYS AS ((raw->>'subtotal')::bigint) STORED,
    total bigint GENERATED ALWAYS AS ((raw->>'total')::bigint) STORED,
    billing_reason text GENERATED ALWAYS AS (raw->>'billing_reason') STORED,
    collection_method text GENERATED ALWAYS AS (raw->>'collection_method') STORED,
    customer_email text GENERATED ALWAYS AS (raw->>'customer_email') STORED,
    hosted_invoice_url text GENERATED ALWAYS AS (raw->>'hosted_invoice_url') STORED,
    invoice_pdf text GENERATED ALWAYS AS (raw->>'invoice_pdf') STORED,
    period_start timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'period_start')::double precision)) STORED,
    period_end timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'period_end')::double precision)) STORED,
    due_date timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'due_date')::double precision)) STORED,
    paid_at timestamptz GENERATED ALWAYS AS (to_timestamp((raw->'status_transitions'->>'paid_at')::double precision)) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX invoices_customer_id ON {mirror}.invoices (customer_id);
CREATE INDEX invoices_subscription_id ON {mirror}.invoices (subscription_id);
CREATE INDEX invoices_status ON {mirror}.invoices (status);

-- Stripe object `line_item`, listed under invoices
CREATE TABLE {mirror}.invoice_line_items (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    parent_id   text NOT NULL,
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    invoice_id text GENERATED ALWAYS AS (raw->>'invoice') STORED,
    amount bigint GENERATED ALWAYS AS ((raw->>'amount')::bigint) STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    description text GENERATED ALWAYS AS (raw->>'description') STORED,
    quantity bigint GENERATED ALWAYS AS ((raw->>'quantity')::bigint) STORED,
    price_id text GENERATED ALWAYS AS (COALESCE(raw->'pricing'->'price_details'->>'price', raw->'price'->>'id')) STORED,
    subscription_id text GENERATED ALWAYS AS (COALESCE(raw->'parent'->'subscription_item_details'->>'subscription', raw->>'subscription')) STORED,
    period_start timestamptz GENERATED ALWAYS AS (to_timestamp((raw->'period'->>'start')::double precision)) STORED,
    period_end timestamptz GENERATED ALWAYS AS (to_timestamp((raw->'period'->>'end')::double precision)) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX invoice_line_items_parent_id ON {mirror}.invoice_line_items (parent_id);

-- Stripe object `invoiceitem`
CREATE TABLE {mirror}.invoice_items (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    customer_id text GENERATED ALWAYS AS (COALESCE(raw->'customer'->>'id', raw->>'customer')) STORED,
    invoice_id text GENERATED ALWAYS AS (COALESCE(raw->'invoice'->>'id', raw->>'invoice')) STORED,
    amount bigint GENERATED ALWAYS AS ((raw->>'amount')::bigint) STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    description text GENERATED ALWAYS AS (raw->>'description') STORED,
    quantity bigint GENERATED ALWAYS AS ((raw->>'quantity')::bigint) STORED,
    date timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'date')::double precision)) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX invoice_items_customer_id ON {mirror}.invoice_items (customer_id);

-- Stripe object `payment_intent`
CREATE TABLE {mirror}.payment_intents (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    customer_id text GENERATED ALWAYS AS (COALESCE(raw->'customer'->>'id', raw->>'customer')) STORED,
    status text GENERATED ALWAYS AS (raw->>'status') STORED,
    amount bigint GENERATED ALWAYS AS ((raw->>'amount')::bigint) STORED,
    amount_received bigint GENERATED ALWAYS AS ((raw->>'amount_received')::bigint) STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    description text GENERATED ALWAYS AS (raw->>'description') STORED,
    invoice_id text GENERATED ALWAYS AS (COALESCE(raw->'invoice'->>'id', raw->>'invoice')) STORED,
    latest_charge_id text GENERATED ALWAYS AS (COALESCE(raw->'latest_charge'->>'id', raw->>'latest_charge')) STORED,
    payment_method_id text GENERATED ALWAYS AS (COALESCE(raw->'payment_method'->>'id', raw->>'payment_method')) STORED,
    receipt_email text GENERATED ALWAYS AS (raw->>'receipt_email') STORED,
    canceled_at timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'canceled_at')::double precision)) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX payment_intents_customer_id ON {mirror}.payment_intents (customer_id);
CREATE INDEX payment_intents_status ON {mirror}.payment_intents (status);

-- Stripe object `charge`
CREATE TABLE {mirror}.charges (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    customer_id text GENERATED ALWAYS AS (COALESCE(raw->'customer'->>'id', raw->>'customer')) STORED,
    payment_intent_id text GENERATED ALWAYS AS (COALESCE(raw->'payment_intent'->>'id', raw->>'payment_intent')) STORED,
    invoice_id text GENERATED ALWAYS AS (COALESCE(raw->'invoice'->>'id', raw->>'invoice')) STORED,
    status text GENERATED ALWAYS AS (raw->>'status') STORED,
    amount bigint GENERATED ALWAYS AS ((raw->>'amount')::bigint) STORED,
    amount_captured bigint GENERATED ALWAYS AS ((raw->>'amount_captured')::bigint) STORED,
    amount_refunded bigint GENERATED ALWAYS AS ((raw->>'amount_refunded')::bigint) STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    paid boolean GENERATED ALWAYS AS ((raw->>'paid')::boolean) STORED,
    captured boolean GENERATED ALWAYS AS ((raw->>'captured')::boolean) STORED,
    refunded boolean GENERATED ALWAYS AS ((raw->>'refunded')::boolean) STORED,
    disputed boolean GENERATED ALWAYS AS ((raw->>'disputed')::boolean) STORED,
    description text GENERATED ALWAYS AS (raw->>'description') STORED,
    failure_code text GENERATED ALWAYS AS (raw->>'failure_code') STORED,
    failure_message text GENERATED ALWAYS AS (raw->>'failure_message') STORED,
    receipt_url text GENERATED ALWAYS AS (raw->>'receipt_url') STORED,
    payment_method_id text GENERATED ALWAYS AS (raw->>'payment_method') STORED,
    balance_transaction_id text GENERATED ALWAYS AS (COALESCE(raw->'balance_transaction'->>'id', raw->>'balance_transaction')) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX charges_customer_id ON {mirror}.charges (customer_id);
CREATE INDEX charges_payment_intent_id ON {mirror}.charges (payment_intent_id);

-- Stripe object `refund`
CREATE TABLE {mirror}.refunds (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    charge_id text GENERATED ALWAYS AS (COALESCE(raw->'charge'->>'id', raw->>'charge')) STORED,
    payment_intent_id text GENERATED ALWAYS AS (COALESCE(raw->'payment_intent'->>'id', raw->>'payment_intent')) STORED,
    status text GENERATED ALWAYS AS (raw->>'status') STORED,
    amount bigint GENERATED ALWAYS AS ((raw->>'amount')::bigint) STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    reason text GENERATED ALWAYS AS (raw->>'reason') STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX refunds_charge_id ON {mirror}.refunds (charge_id);

-- Stripe object `checkout.session`
CREATE TABLE {mirror}.checkout_sessions (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    customer_id text GENERATED ALWAYS AS (COALESCE(raw->'customer'->>'id', raw->>'customer')) STORED,
    client_reference_id text GENERATED ALWAYS AS (raw->>'client_reference_id') STORED,
    customer_email text GENERATED ALWAYS AS (COALESCE(raw->'customer_details'->>'email', raw->>'customer_email')) STORED,
    mode text GENERATED ALWAYS AS (raw->>'mode') STORED,
    status text GENERATED ALWAYS AS (raw->>'status') STORED,
    payment_status text GENERATED ALWAYS AS (raw->>'payment_status') STORED,
    amount_subtotal bigint GENERATED ALWAYS AS ((raw->>'amount_subtotal')::bigint) STORED,
    amount_total bigint GENERATED ALWAYS AS ((raw->>'amount_total')::bigint) STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    subscription_id text GENERATED ALWAYS AS (COALESCE(raw->'subscription'->>'id', raw->>'subscription')) STORED,
    payment_intent_id text GENERATED ALWAYS AS (COALESCE(raw->'payment_intent'->>'id', raw->>'payment_intent')) STORED,
    invoice_id text GENERATED ALWAYS AS (COALESCE(raw->'invoice'->>'id', raw->>'invoice')) STORED,
    expires_at timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'expires_at')::double precision)) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX checkout_sessions_customer_id ON {mirror}.checkout_sessions (customer_id);
CREATE INDEX checkout_sessions_client_reference_id ON {mirror}.checkout_sessions (client_reference_id);

-- Stripe object `item`, listed under checkout_sessions
CREATE TABLE {mirror}.checkout_session_line_items (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    parent_id   text NOT NULL,
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    price_id text GENERATED ALWAYS AS (raw->'price'->>'id') STORED,
    product_id text GENERATED ALWAYS AS (COALESCE(raw->'price'->'product'->>'id', raw->'price'->>'product')) STORED,
    quantity bigint GENERATED ALWAYS AS ((raw->>'quantity')::bigint) STORED,
    amount_subtotal bigint GENERATED ALWAYS AS ((raw->>'amount_subtotal')::bigint) STORED,
    amount_total bigint GENERATED ALWAYS AS ((raw->>'amount_total')::bigint) STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    description text GENERATED ALWAYS AS (raw->>'description') STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX checkout_session_line_items_parent_id ON {mirror}.checkout_session_line_items (parent_id);

-- Stripe object `payment_method`
CREATE TABLE {mirror}.payment_methods (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    customer_id text GENERATED ALWAYS AS (COALESCE(raw->'customer'->>'id', raw->>'customer')) STORED,
    type text GENERATED ALWAYS AS (raw->>'type') STORED,
    card_brand text GENERATED ALWAYS AS (raw->'card'->>'brand') STORED,
    card_last4 text GENERATED ALWAYS AS (raw->'card'->>'last4') STORED,
    card_exp_month integer GENERATED ALWAYS AS ((raw->'card'->>'exp_month')::integer) STORED,
    card_exp_year integer GENERATED ALWAYS AS ((raw->'card'->>'exp_year')::integer) STORED,
    billing_email text GENERATED ALWAYS AS (raw->'billing_details'->>'email') STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX payment_methods_customer_id ON {mirror}.payment_methods (customer_id);

-- Stripe object `setup_intent`
CREATE TABLE {mirror}.setup_intents (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    customer_id text GENERATED ALWAYS AS (COALESCE(raw->'customer'->>'id', raw->>'customer')) STORED,
    status text GENERATED ALWAYS AS (raw->>'status') STORED,
    payment_method_id text GENERATED ALWAYS AS (COALESCE(raw->'payment_method'->>'id', raw->>'payment_method')) STORED,
    usage text GENERATED ALWAYS AS (raw->>'usage') STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX setup_intents_customer_id ON {mirror}.setup_intents (customer_id);

-- Stripe object `coupon`
CREATE TABLE {mirror}.coupons (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    name text GENERATED ALWAYS AS (raw->>'name') STORED,
    percent_off numeric GENERATED ALWAYS AS ((raw->>'percent_off')::numeric) STORED,
    amount_off bigint GENERATED ALWAYS AS ((raw->>'amount_off')::bigint) STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    duration text GENERATED ALWAYS AS (raw->>'duration') STORED,
    duration_in_months integer GENERATED ALWAYS AS ((raw->>'duration_in_months')::integer) STORED,
    valid boolean GENERATED ALWAYS AS ((raw->>'valid')::boolean) STORED,
    times_redeemed bigint GENERATED ALWAYS AS ((raw->>'times_redeemed')::bigint) STORED,
    max_redemptions bigint GENERATED ALWAYS AS ((raw->>'max_redemptions')::bigint) STORED,
    redeem_by timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'redeem_by')::double precision)) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

-- Stripe object `promotion_code`
CREATE TABLE {mirror}.promotion_codes (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    code text GENERATED ALWAYS AS (raw->>'code') STORED,
    active boolean GENERATED ALWAYS AS ((raw->>'active')::boolean) STORED,
    coupon_id text GENERATED ALWAYS AS (COALESCE(raw->'promotion'->'coupon'->>'id', raw->'promotion'->>'coupon', raw->'coupon'->>'id')) STORED,
    customer_id text GENERATED ALWAYS AS (COALESCE(raw->'customer'->>'id', raw->>'customer')) STORED,
    times_redeemed bigint GENERATED ALWAYS AS ((raw->>'times_redeemed')::bigint) STORED,
    max_redemptions bigint GENERATED ALWAYS AS ((raw->>'max_redemptions')::bigint) STORED,
    expires_at timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'expires_at')::double precision)) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX promotion_codes_coupon_id ON {mirror}.promotion_codes (coupon_id);

-- Stripe object `credit_note`
CREATE TABLE {mirror}.credit_notes (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    invoice_id text GENERATED ALWAYS AS (COALESCE(raw->'invoice'->>'id', raw->>'invoice')) STORED,
    customer_id text GENERATED ALWAYS AS (COALESCE(raw->'customer'->>'id', raw->>'customer')) STORED,
    status text GENERATED ALWAYS AS (raw->>'status') STORED,
    type text GENERATED ALWAYS AS (raw->>'type') STORED,
    number text GENERATED ALWAYS AS (raw->>'number') STORED,
    reason text GENERATED ALWAYS AS (raw->>'reason') STORED,
    amount bigint GENERATED ALWAYS AS ((raw->>'amount')::bigint) STORED,
    total bigint GENERATED ALWAYS AS ((raw->>'total')::bigint) STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    voided_at timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'voided_at')::double precision)) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX credit_notes_invoice_id ON {mirror}.credit_notes (invoice_id);

-- Stripe object `dispute`
CREATE TABLE {mirror}.disputes (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    charge_id text GENERATED ALWAYS AS (COALESCE(raw->'charge'->>'id', raw->>'charge')) STORED,
    payment_intent_id text GENERATED ALWAYS AS (COALESCE(raw->'payment_intent'->>'id', raw->>'payment_intent')) STORED,
    status text GENERATED ALWAYS AS (raw->>'status') STORED,
    reason text GENERATED ALWAYS AS (raw->>'reason') STORED,
    amount bigint GENERATED ALWAYS AS ((raw->>'amount')::bigint) STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX disputes_charge_id ON {mirror}.disputes (charge_id);

-- Stripe object `tax_id`
CREATE TABLE {mirror}.tax_ids (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    customer_id text GENERATED ALWAYS AS (COALESCE(raw->'customer'->>'id', raw->>'customer', raw->'owner'->>'customer')) STORED,
    type text GENERATED ALWAYS AS (raw->>'type') STORED,
    value text GENERATED ALWAYS AS (raw->>'value') STORED,
    country text GENERATED ALWAYS AS (raw->>'country') STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX tax_ids_customer_id ON {mirror}.tax_ids (customer_id);

-- Stripe object `billing.meter`
CREATE TABLE {mirror}.billing_meters (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    event_name text GENERATED ALWAYS AS (raw->>'event_name') STORED,
    display_name text GENERATED ALWAYS AS (raw->>'display_name') STORED,
    status text GENERATED ALWAYS AS (raw->>'status') STORED,
    aggregation text GENERATED ALWAYS AS (raw->'default_aggregation'->>'formula') STORED,
    customer_payload_key text GENERATED ALWAYS AS (raw->'customer_mapping'->>'event_payload_key') STORED,
    value_payload_key text GENERATED ALWAYS AS (raw->'value_settings'->>'event_payload_key') STORED,
    updated timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'updated')::double precision)) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

-- Stripe object `payout`
CREATE TABLE {mirror}.payouts (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    status text GENERATED ALWAYS AS (raw->>'status') STORED,
    amount bigint GENERATED ALWAYS AS ((raw->>'amount')::bigint) STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    arrival_date timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'arrival_date')::double precision)) STORED,
    method text GENERATED ALWAYS AS (raw->>'method') STORED,
    type text GENERATED ALWAYS AS (raw->>'type') STORED,
    balance_transaction_id text GENERATED ALWAYS AS (COALESCE(raw->'balance_transaction'->>'id', raw->>'balance_transaction')) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

-- Stripe object `balance_transaction`
CREATE TABLE {mirror}.balance_transactions (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    type text GENERATED ALWAYS AS (raw->>'type') STORED,
    status text GENERATED ALWAYS AS (raw->>'status') STORED,
    reporting_category text GENERATED ALWAYS AS (raw->>'reporting_category') STORED,
    amount bigint GENERATED ALWAYS AS ((raw->>'amount')::bigint) STORED,
    fee bigint GENERATED ALWAYS AS ((raw->>'fee')::bigint) STORED,
    net bigint GENERATED ALWAYS AS ((raw->>'net')::bigint) STORED,
    currency text GENERATED ALWAYS AS (raw->>'currency') STORED,
    source_id text GENERATED ALWAYS AS (COALESCE(raw->'source'->>'id', raw->>'source')) STORED,
    available_on timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'available_on')::double precision)) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

-- Stripe object `tax_rate`
CREATE TABLE {mirror}.tax_rates (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    display_name text GENERATED ALWAYS AS (raw->>'display_name') STORED,
    percentage numeric GENERATED ALWAYS AS ((raw->>'percentage')::numeric) STORED,
    inclusive boolean GENERATED ALWAYS AS ((raw->>'inclusive')::boolean) STORED,
    active boolean GENERATED ALWAYS AS ((raw->>'active')::boolean) STORED,
    country text GENERATED ALWAYS AS (raw->>'country') STORED,
    state text GENERATED ALWAYS AS (raw->>'state') STORED,
    jurisdiction text GENERATED ALWAYS AS (raw->>'jurisdiction') STORED,
    tax_type text GENERATED ALWAYS AS (raw->>'tax_type') STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

-- Stripe object `radar.early_fraud_warning`
CREATE TABLE {mirror}.early_fraud_warnings (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    charge_id text GENERATED ALWAYS AS (COALESCE(raw->'charge'->>'id', raw->>'charge')) STORED,
    fraud_type text GENERATED ALWAYS AS (raw->>'fraud_type') STORED,
    actionable boolean GENERATED ALWAYS AS ((raw->>'actionable')::boolean) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

-- Stripe object `entitlements.feature`
CREATE TABLE {mirror}.entitlement_features (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    name text GENERATED ALWAYS AS (raw->>'name') STORED,
    lookup_key text GENERATED ALWAYS AS (raw->>'lookup_key') STORED,
    active boolean GENERATED ALWAYS AS ((raw->>'active')::boolean) STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

-- Stripe object `product_feature`, listed under products
CREATE TABLE {mirror}.product_features (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    parent_id   text NOT NULL,
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    entitlement_feature_id text GENERATED ALWAYS AS (raw->'entitlement_feature'->>'id') STORED,
    lookup_key text GENERATED ALWAYS AS (raw->'entitlement_feature'->>'lookup_key') STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX product_features_parent_id ON {mirror}.product_features (parent_id);

-- Stripe object `entitlements.active_entitlement`, listed under customers
CREATE TABLE {mirror}.active_entitlements (
    id          text PRIMARY KEY,
    account_id  text NOT NULL DEFAULT '',
    parent_id   text NOT NULL,
    livemode    boolean GENERATED ALWAYS AS ((raw->>'livemode')::boolean) STORED,
    created     timestamptz GENERATED ALWAYS AS (to_timestamp((raw->>'created')::double precision)) STORED,
    metadata    jsonb GENERATED ALWAYS AS (raw->'metadata') STORED,
    feature_id text GENERATED ALWAYS AS (COALESCE(raw->'feature'->>'id', raw->>'feature')) STORED,
    lookup_key text GENERATED ALWAYS AS (raw->>'lookup_key') STORED,
    raw         jsonb NOT NULL,
    api_version text,
    fetched_at  timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX active_entitlements_parent_id ON {mirror}.active_entitlements (parent_id);

-- customers.user_id follows the configured metadata key (app.user_id_metadata_key), which syncd
-- sets as the session setting syncd.user_id_key; other writers get the default key.
CREATE FUNCTION {mirror}.customers_set_user_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.user_id := NEW.raw->'metadata'->>COALESCE(
        NULLIF(current_setting('syncd.user_id_key', true), ''), 'supabase_user_id');
    RETURN NEW;
END
$$;
CREATE TRIGGER customers_set_user_id BEFORE INSERT OR UPDATE OF raw ON {mirror}.customers
    FOR EACH ROW EXECUTE FUNCTION {mirror}.customers_set_user_id();
