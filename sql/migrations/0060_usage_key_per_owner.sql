-- Usage idempotency keys are unique per owner of the row, no longer across the whole table.
--
-- 0030 made usage_records.idempotency_key unique over every row. One user's key then blocked
-- another user's insert (an error, or under `ON CONFLICT DO NOTHING` usage silently dropped), and
-- the unique violation told a user under row-level security that some other user had used that
-- key. A key now only has to be unique among the rows of one owner: the first of user_id,
-- subscription_id, customer_id the row was inserted with. The row-level policies give a user the
-- rows whose user_id is theirs and let them insert only such rows, so a user's insert can only
-- ever meet their own keys. A row never changes owner: the daemon fills customer_id only where it
-- was NULL, and such a row has a user_id or a subscription_id, which come first.
--
-- Applications: `ON CONFLICT DO NOTHING` (no conflict target) skips a repeated key whoever owns
-- the row; `ON CONFLICT (user_id, idempotency_key) DO NOTHING` names the per-user constraint.

ALTER TABLE {app}.usage_records DROP CONSTRAINT usage_records_idempotency_key_unique;

-- Rows with a user id (every row a Supabase user inserts). Rows without a key, or without a
-- user id, never conflict here (NULLs are distinct).
ALTER TABLE {app}.usage_records
    ADD CONSTRAINT usage_records_idempotency_key_per_user UNIQUE (user_id, idempotency_key);

-- Rows the application's server inserts for a subscription, or for a customer, with no user id.
CREATE UNIQUE INDEX usage_records_idempotency_key_per_subscription
    ON {app}.usage_records (subscription_id, idempotency_key)
 WHERE user_id IS NULL AND idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX usage_records_idempotency_key_per_customer
    ON {app}.usage_records (customer_id, idempotency_key)
 WHERE user_id IS NULL AND subscription_id IS NULL AND idempotency_key IS NOT NULL;
