-- The event stream's state: where the stream stands (cursor) and which events took effect (ledger).

-- One cursor per Stripe account ('' for the key's own). `position` is a Stripe-clock time: every
-- event created before it (less a small margin, see syncd/events.py) has been listed and applied.
-- It moves only in the transaction that commits the writes of the events it covers.
CREATE TABLE {state}.events_cursor (
    account_id  text PRIMARY KEY,
    position    double precision NOT NULL,
    taken_at    double precision NOT NULL,   -- Stripe time when this cursor was (re)started
    reason      text NOT NULL,               -- why it was (re)started: first_start, cursor_expired
    advanced_at timestamptz NOT NULL DEFAULT now()
);

-- Every event the stream has seen, once: the ledger makes each event take effect exactly once
-- (the head poll and the overlap sweep list the same events again). Pruned after
-- events.ledger_retention_days, beyond Stripe's 30-day retention, so a listed event is always here.
CREATE TABLE {state}.events_ledger (
    event_id     text PRIMARY KEY,
    type         text NOT NULL,
    created      bigint NOT NULL,              -- the event's `created` (Stripe seconds)
    object_type  text,
    object_id    text,
    outcome      text NOT NULL CHECK (outcome IN ('applied', 'ignored')),
    reason       text,                         -- how it was applied, or why it was ignored
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_ledger_processed_at ON {state}.events_ledger (processed_at);
