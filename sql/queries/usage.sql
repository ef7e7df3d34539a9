-- name: usage_claim
-- Pending rows past a cursor, locked so no other flush can take them, with the customer
-- resolved: the row's own customer_id, else its subscription's, else the newest live customer
-- mapped to its user_id. $1 last id seen this flush, $2 batch size.
WITH claimed AS (
    SELECT id, user_id, subscription_id, customer_id, metric, quantity, "timestamp", created_at
      FROM {app}.usage_records
     WHERE status = 'pending' AND id > $1
     ORDER BY id
     LIMIT $2
       FOR UPDATE SKIP LOCKED
)
SELECT c.id, c.metric, c.quantity, c.subscription_id, c.user_id,
       floor(extract(epoch FROM c."timestamp"))::bigint AS ts,
       extract(epoch FROM now() - c.created_at)::float8 AS age,
       floor(extract(epoch FROM now()))::bigint AS now,
       COALESCE(c.customer_id, s.customer_id, u.id) AS customer_id
  FROM claimed c
  LEFT JOIN {mirror}.subscriptions s
         ON c.customer_id IS NULL AND s.id = c.subscription_id
  LEFT JOIN LATERAL (
        SELECT cu.id FROM {mirror}.customers cu
         WHERE c.customer_id IS NULL AND s.customer_id IS NULL
           AND cu.user_id = c.user_id AND cu.deleted_at IS NULL
         ORDER BY cu.created DESC NULLS LAST, cu.id DESC
         LIMIT 1
       ) u ON true;

-- name: usage_customer_accounts
-- Connect (stripe.accounts): the account each of these customers ($1) belongs to, as the
-- mirror has it: '' for the platform's own (the key's own account, no Stripe-Account header).
-- A customer the mirror does not have is left out (its account is not known yet).
SELECT cu.id,
       CASE WHEN EXISTS (SELECT 1 FROM {state}.accounts a
                          WHERE a.account_id = cu.account_id AND a.platform)
            THEN '' ELSE cu.account_id END AS account_id
  FROM {mirror}.customers cu
 WHERE cu.id = ANY($1::text[]);

-- name: usage_tx_settings
-- The planner's JIT compiles the claim for a second on big batches and saves nothing: off.
SELECT set_config('jit', 'off', true);

-- name: usage_metered_items
-- Live metered subscription items of these subscriptions (legacy target).
SELECT parent_id AS subscription_id, id, raw->'price'->>'lookup_key' AS lookup_key
  FROM {mirror}.subscription_items
 WHERE parent_id = ANY($1::text[]) AND deleted_at IS NULL
   AND raw->'price'->'recurring'->>'usage_type' = 'metered';

-- name: usage_insert_batch
INSERT INTO {state}.usage_batches (nonce, target, created_by, rows)
VALUES ($1, $2, $3, $4)
RETURNING id;

-- name: usage_insert_events
-- Every request of a batch, with its exact parameters and the account it goes to ('': the
-- key's own), written before anything is sent.
INSERT INTO {state}.usage_events
       (batch_id, identifier, customer_id, metric, event_name, subscription_item_id, value,
        "timestamp", path, base, params, rows, row_ids, account_id)
SELECT $1, e.identifier, e.customer_id, e.metric, e.event_name, e.item, e.value, e.ts, e.path,
       e.base, e.params::jsonb, cardinality(e.row_ids::bigint[]), e.row_ids::bigint[], e.account
  FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::numeric[],
              $8::bigint[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[])
       AS e(identifier, customer_id, metric, event_name, item, value, ts, path, base, params,
            row_ids, account)
RETURNING id, identifier;

-- name: usage_rows_sending
UPDATE {app}.usage_records r
   SET status = 'sending', batch_id = $1, event_id = u.event_id,
       customer_id = COALESCE(r.customer_id, u.customer_id), error = NULL
  FROM unnest($2::bigint[], $3::bigint[], $4::text[]) AS u(id, event_id, customer_id)
 WHERE r.id = u.id;

-- name: usage_rows_rejected
UPDATE {app}.usage_records r
   SET status = 'failed', error = u.error
  FROM unnest($1::bigint[], $2::text[]) AS u(id, error)
 WHERE r.id = u.id AND r.status = 'pending';

-- name: usage_lock_batch
-- Held on a dedicated connection while a flush sends the batch: a batch still 'sending' whose
-- lock is free belongs to a flush that died, and is resent. The lock dies with the process.
SELECT pg_try_advisory_lock(hashtext('{state}.usage_batches'), $1::integer);

-- name: usage_unlock_batch
SELECT pg_advisory_unlock(hashtext('{state}.usage_batches'), $1::integer);

-- name: usage_sending_batches
SELECT id FROM {state}.usage_batches WHERE status = 'sending' ORDER BY id;

-- name: usage_batch_status
SELECT status FROM {state}.usage_batches WHERE id = $1;

-- name: usage_batch_events
SELECT id, identifier, path, base, params::text AS params, row_ids, account_id
  FROM {state}.usage_events
 WHERE batch_id = $1 AND status = 'sending'
 ORDER BY id;

-- name: usage_mark_reported
-- Stripe took these events ($1 event ids); $2 their rows. Rows are found by primary key.
WITH ev AS (
    UPDATE {state}.usage_events
       SET status = 'reported', error = NULL, sent_at = now(), attempts = attempts + 1
     WHERE id = ANY($1::bigint[]) AND status = 'sending'
    RETURNING id
), r AS (
    UPDATE {app}.usage_records
       SET status = 'reported', reported_at = now(), error = NULL
     WHERE id = ANY($2::bigint[]) AND status = 'sending'
    RETURNING 1
)
SELECT (SELECT count(*) FROM ev) AS events, (SELECT count(*) FROM r) AS rows;

-- name: usage_mark_failed
-- Stripe refused these events ($1 ids, $2 reasons); $3 their rows, $4 each row's reason.
WITH ev AS (
    UPDATE {state}.usage_events e
       SET status = 'failed', error = o.error, sent_at = now(), attempts = e.attempts + 1
      FROM unnest($1::bigint[], $2::text[]) AS o(id, error)
     WHERE e.id = o.id AND e.status = 'sending'
    RETURNING e.id
), r AS (
    UPDATE {app}.usage_records r
       SET status = 'failed', error = o.error
      FROM unnest($3::bigint[], $4::text[]) AS o(id, error)
     WHERE r.id = o.id AND r.status = 'sending'
    RETURNING 1
)
SELECT (SELECT count(*) FROM ev) AS events, (SELECT count(*) FROM r) AS rows;

-- name: usage_async_commit
-- Recording answers may be lost in a crash without harm (the batch is resent and Stripe
-- deduplicates), so this transaction need not wait for the WAL flush. Never for batch writes.
SELECT set_config('synchronous_commit', 'off', true);

-- name: usage_finish_batch
UPDATE {state}.usage_batches
   SET status = 'done', finished_at = now()
 WHERE id = $1 AND status = 'sending'
   AND NOT EXISTS (SELECT 1 FROM {state}.usage_events WHERE batch_id = $1 AND status = 'sending');

-- name: usage_prune_batches
-- Finished batches (and their events) older than the retention; rows keep their batch_id.
DELETE FROM {state}.usage_batches
 WHERE status = 'done' AND finished_at < now() - make_interval(secs => $1);

-- name: usage_save_meter
-- $5: the account whose meters were checked ('': the key's own).
INSERT INTO {state}.usage_meters (metric, event_name, meter_id, problem, checked_at, account_id)
VALUES ($1, $2, $3, $4, now(), $5)
ON CONFLICT (account_id, metric) DO UPDATE
   SET event_name = EXCLUDED.event_name, meter_id = EXCLUDED.meter_id,
       problem = EXCLUDED.problem, checked_at = EXCLUDED.checked_at;

-- name: usage_forget_meters
DELETE FROM {state}.usage_meters WHERE metric <> ALL($1::text[]);

-- name: usage_withdraw_request
-- `syncd flush-usage` gave up waiting: take its request back unless a daemon already took it.
UPDATE {state}.requests
   SET status = 'failed', finished_at = now(), error = 'no daemon answered in time'
 WHERE id = $1 AND status = 'pending'
RETURNING id;

-- name: usage_summary
-- For `syncd status`: rows by status, the oldest waiting row, batches still sending, meter
-- problems and the latest failures with their reasons. One row of jsonb.
SELECT
    (SELECT COALESCE(jsonb_object_agg(status, n), '{}'::jsonb)
       FROM (SELECT status, count(*) AS n FROM {app}.usage_records GROUP BY status) s
    ) AS counts,
    (SELECT min("timestamp") FROM {app}.usage_records WHERE status = 'pending')
        AS oldest_pending,
    (SELECT min(created_at) FROM {state}.usage_batches WHERE status = 'sending')
        AS oldest_sending_batch_at,
    -- Rows in flight, from the outbox (the rows table has no index on 'sending').
    (SELECT COALESCE(sum(rows), 0) FROM {state}.usage_events WHERE status = 'sending')
        AS rows_sending,
    LEAST((SELECT min("timestamp") FROM {app}.usage_records WHERE status = 'pending'),
          (SELECT min(r."timestamp") FROM {app}.usage_records r
             JOIN {state}.usage_events e ON r.id = ANY(e.row_ids)
            WHERE e.status = 'sending')) AS oldest_unreported,
    -- From the outbox (small) rather than the rows (large, unindexed once reported).
    (SELECT max(sent_at) FROM {state}.usage_events WHERE status = 'reported')
        AS last_reported_at,
    (SELECT count(*) FROM {state}.usage_batches WHERE status = 'sending') AS batches_sending,
    -- A connected account's problem names the account (the key's own ones stay as they were).
    (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                'metric', metric, 'event_name', event_name, 'problem', problem,
                'checked_at', checked_at)
                || CASE WHEN account_id <> '' THEN jsonb_build_object('account_id', account_id)
                        ELSE '{}'::jsonb END
                ORDER BY account_id, metric), '[]'::jsonb)
       FROM {state}.usage_meters WHERE problem IS NOT NULL) AS meter_problems,
    (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                'id', id, 'metric', metric, 'customer_id', customer_id, 'quantity', quantity,
                'timestamp', "timestamp", 'error', error) ORDER BY id DESC), '[]'::jsonb)
       FROM (SELECT id, metric, customer_id, quantity, "timestamp", error
               FROM {app}.usage_records WHERE status = 'failed'
              ORDER BY id DESC LIMIT $1) f) AS latest_errors;

-- name: usage_has_pending
-- Whether any row waits to be reported (the partial index on pending rows answers it).
SELECT EXISTS (SELECT 1 FROM {app}.usage_records WHERE status = 'pending');
