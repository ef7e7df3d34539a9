-- Connect (syncd/accounts.py, syncd/leases.py): the accounts to sync and their leases.

-- name: accounts_add
-- Accounts to sync ($1 ids) from source $2, the platform's own id $3: new ones added, known
-- ones active again (an account that connects again).
INSERT INTO {state}.accounts AS a (account_id, platform, source)
SELECT id, id = $3, CASE WHEN id = $3 THEN 'platform' ELSE $2 END FROM unnest($1::text[]) AS id
ON CONFLICT (account_id) DO UPDATE
   SET status = 'active', platform = EXCLUDED.platform,
       status_at = CASE WHEN a.status = 'active' THEN a.status_at ELSE now() END
 WHERE a.status <> 'active' OR a.platform <> EXCLUDED.platform;

-- name: accounts_retire
-- Active accounts not among $1 any more become $2 (deauthorized: gone from the platform's list;
-- unlisted: no longer configured). Their mirror rows stay. Returns them.
UPDATE {state}.accounts
   SET status = $2, status_at = now(), leased_by = NULL  -- its replica gives it up, or died
 WHERE status = 'active' AND NOT (account_id = ANY($1::text[]))
RETURNING account_id;

-- name: accounts_set_status
-- One account ($1) became $2 (the platform's account.application.* events, or a 403
-- account_invalid). Returns it when it changed.
UPDATE {state}.accounts
   SET status = $2, status_at = now(),
       leased_by = CASE WHEN $2 = 'active' THEN leased_by END
 WHERE account_id = $1 AND status <> $2
RETURNING account_id;

-- name: accounts_active
SELECT account_id, platform FROM {state}.accounts WHERE status = 'active' ORDER BY account_id;

-- name: accounts_hint
-- Something hinted at activity in accounts $1: their replica polls them at once.
UPDATE {state}.accounts SET hinted_at = now() WHERE account_id = ANY($1::text[]);

-- name: accounts_hinted
-- Accounts of $1 hinted at after $2 (the database's now() of the previous round).
SELECT account_id FROM {state}.accounts
 WHERE account_id = ANY($1::text[]) AND hinted_at > $2;

-- name: accounts_polled
-- An account's poll worked ($2: it listed new events; $3: seconds to its next poll).
UPDATE {state}.accounts
   SET last_poll_at = now(), poll_interval = $3, error = NULL, failing_since = NULL,
       last_event_at = CASE WHEN $2 THEN now() ELSE last_event_at END
 WHERE account_id = $1;

-- name: accounts_failed
UPDATE {state}.accounts
   SET error = $2, failing_since = coalesce(failing_since, now())
 WHERE account_id = $1;

-- name: accounts_leased
-- Replica $1 leases accounts $2 now ($3: and no longer those); who holds a lock decides, this
-- tells `syncd status`.
UPDATE {state}.accounts
   SET leased_by = CASE WHEN account_id = ANY($2::text[]) THEN $1 ELSE NULL END,
       leased_at = CASE WHEN account_id = ANY($2::text[]) THEN now() ELSE leased_at END
 WHERE account_id = ANY($2::text[]) OR (account_id = ANY($3::text[]) AND leased_by = $1);

-- name: accounts_adopt_own_rows
SELECT {state}.adopt_own_rows($1);

-- name: lease_now
SELECT now();

-- name: lease_presence
-- This replica's presence lock ($1, $2): how many replicas lease accounts is how many of these
-- locks the server holds.
SELECT pg_try_advisory_lock($1, $2);

-- name: lease_replicas
-- Replicas present now: sessions holding a presence lock (class $1) in this database.
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND classid::int = $1 AND objsubid = 2 AND granted
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database());

-- name: lease_try
-- Try the account locks (class $1, keys $3 of accounts $2) in the order given until $4 are
-- taken: the accounts taken.
SELECT account_id FROM unnest($2::text[], $3::int[]) AS a(account_id, key)
 WHERE pg_try_advisory_lock($1, key)
 LIMIT $4;

-- name: lease_release
SELECT pg_advisory_unlock($1, key) FROM unnest($2::int[]) AS key;

-- name: lease_held
-- The account locks (class $1) this session holds: compared with what it thinks it holds.
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND classid::int = $1 AND objsubid = 2 AND granted
   AND pid = pg_backend_pid();

-- name: accounts_pace
-- The seconds between an account's polls when its last replica stopped (NULL: never polled).
SELECT poll_interval FROM {state}.accounts WHERE account_id = $1;

-- name: accounts_still_leased
-- Replica $1 still leases accounts $2: rows that say otherwise (cleared when an account left
-- and came back between two rounds) are put right.
UPDATE {state}.accounts SET leased_by = $1, leased_at = now()
 WHERE account_id = ANY($2::text[]) AND leased_by IS DISTINCT FROM $1;
