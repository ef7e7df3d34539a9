-- The event stream (syncd/events.py): cursor and ledger.

-- name: events_cursor_get
SELECT position, taken_at, reason FROM {state}.events_cursor WHERE account_id = $1;

-- name: events_cursor_take
-- First start: the cursor is taken before anything is listed; a cursor already there wins.
INSERT INTO {state}.events_cursor (account_id, position, taken_at, reason)
VALUES ($1, $2, $2, $3)
ON CONFLICT (account_id) DO NOTHING
RETURNING position;

-- name: events_cursor_advance
-- Never backwards: a slower poll cannot undo a later one.
UPDATE {state}.events_cursor
   SET position = GREATEST(position, $2), advanced_at = now()
 WHERE account_id = $1;

-- name: events_cursor_restart
-- The cursor fell out of Stripe's retention: start again from now (a full resync follows).
INSERT INTO {state}.events_cursor (account_id, position, taken_at, reason)
VALUES ($1, $2, $2, $3)
ON CONFLICT (account_id) DO UPDATE
   SET position = EXCLUDED.position, taken_at = EXCLUDED.taken_at, reason = EXCLUDED.reason,
       advanced_at = now();

-- name: events_ledger_known
SELECT event_id FROM {state}.events_ledger WHERE event_id = ANY($1::text[]);

-- name: events_ledger_record
-- $1: a JSON array of {event_id, type, created, object_type, object_id, outcome, reason};
-- $2: the account the events came from.
INSERT INTO {state}.events_ledger (event_id, type, created, object_type, object_id, outcome, reason,
                                   account_id)
SELECT event_id, type, created, object_type, object_id, outcome, reason, $2
  FROM jsonb_to_recordset($1::jsonb) AS e(event_id text, type text, created bigint,
                                           object_type text, object_id text, outcome text,
                                           reason text)
ON CONFLICT (event_id) DO NOTHING;

-- name: events_ledger_prune
DELETE FROM {state}.events_ledger WHERE processed_at < now() - $1 * interval '1 day';

-- name: events_ledger_counts
SELECT outcome, reason, count(*) AS n FROM {state}.events_ledger GROUP BY outcome, reason;

-- name: refetch_queue_due
-- Objects whose versions overlapped with other content (migration 0064), once Stripe's clock
-- ($1: a lower bound of it) has passed the end of both: a fetch sent now is newer than both.
-- $3: a type whose whole list is being walked to settle its entries (events.Relist), or ''.
SELECT table_name, object_id, parent_id, not_before
  FROM {state}.refetch_queue
 WHERE not_before < to_timestamp($1) AND table_name <> $3
   AND ($4::text IS NULL OR account_id = $4)  -- $4: one account's (Connect), NULL: all
 ORDER BY not_before LIMIT $2;

-- name: refetch_queue_due_tables
-- Due entries per type (objects, not owned children): a crowded type is listed whole instead.
SELECT table_name, count(*) AS n
  FROM {state}.refetch_queue
 WHERE not_before < to_timestamp($1) AND parent_id IS NULL
   AND ($2::text IS NULL OR account_id = $2)
 GROUP BY table_name ORDER BY n DESC;

-- name: mirror_live_count_upto
-- Live rows of {table} (of account $2; NULL: any), counted up to $1 at most (bounded work).
SELECT count(*) FROM (SELECT 1 FROM {mirror}.{table}
                       WHERE deleted_at IS NULL AND ($2::text IS NULL OR account_id = $2)
                       LIMIT $1) AS live;

-- name: refetch_queue_done
-- Entries settled by a fetch; one queued again meanwhile (a later not_before) stays.
DELETE FROM {state}.refetch_queue q
 USING unnest($1::text[], $2::text[]) AS d(table_name, object_id)
 WHERE q.table_name = d.table_name AND q.object_id = d.object_id
   AND q.not_before < to_timestamp($3);

-- name: refetch_queue_add
-- An object an applied event changed without an event of its own (apply.REFERENCED): fetched
-- again by the same loop once Stripe's clock has passed $3, the end of the event's second.
-- $4: the account that holds it.
SELECT {state}.refetch_later($1, $2, NULL, to_timestamp($3), $4);

-- name: refetch_queue_size
SELECT count(*) FROM {state}.refetch_queue;
