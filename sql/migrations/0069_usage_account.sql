-- Connect (stripe.accounts, docs/usage.md "Connected accounts"): usage is reported to the
-- account that owns the row's customer. With stripe.accounts empty nothing here changes how
-- syncd works: every request and meter check stays under the account '' (the key's own).

-- Each stored request keeps the account it is meant for (its Stripe-Account header; '': the
-- key's own, no header): a resend after a crash goes, byte for byte, to the same account.
ALTER TABLE {state}.usage_events ADD COLUMN account_id text NOT NULL DEFAULT '';

-- Meters are an account's own: the last check's result is kept per (account, metric).
ALTER TABLE {state}.usage_meters ADD COLUMN account_id text NOT NULL DEFAULT '';
ALTER TABLE {state}.usage_meters DROP CONSTRAINT usage_meters_pkey;
ALTER TABLE {state}.usage_meters ADD PRIMARY KEY (account_id, metric);
