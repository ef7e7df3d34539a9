"""Prometheus metrics, defined once. Modules import the metric they move; `/metrics` serves them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

api_requests = Counter(
    "syncd_stripe_requests",
    "Stripe API requests by endpoint and HTTP status",
    ["endpoint", "status"],
    registry=REGISTRY,
)
api_retries = Counter(
    "syncd_stripe_retries", "Stripe API requests retried, by reason", ["reason"], registry=REGISTRY
)
stripe_bad_answers = Counter(
    "syncd_stripe_bad_answers",
    "Answers Stripe never sends (not JSON, cut short, not of the expected shape), by endpoint",
    ["endpoint"],
    registry=REGISTRY,
)
rate_limit_wait_seconds = Counter(
    "syncd_rate_limit_wait_seconds",
    "Seconds spent waiting for the shared rate limiter",
    registry=REGISTRY,
)
rate_limit_endpoint_wait_seconds = Counter(
    "syncd_rate_limit_endpoint_wait_seconds",
    "Seconds requests waited for the rate limiter, by endpoint (method and path template)",
    ["endpoint"],
    registry=REGISTRY,
)
stripe_rate_limited = Counter(
    "syncd_stripe_rate_limited",
    "429s Stripe answered for its rate limits, by endpoint and Stripe-Rate-Limited-Reason",
    ["endpoint", "reason"],
    registry=REGISTRY,
)
request_seconds = Histogram(
    "syncd_stripe_request_seconds",
    "Stripe API request latency",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
last_success = Gauge(
    "syncd_last_success_timestamp_seconds",
    "Unix time of the last success, per loop",
    ["loop"],
    registry=REGISTRY,
)
rows_written = Counter(
    "syncd_rows_written",
    "Mirror rows changed, by table and operation",
    ["table", "op"],
    registry=REGISTRY,
)
history_pruned = Counter(
    "syncd_history_pruned",
    "Versions deleted from the history tables by history.retention_days, by table",
    ["table"],
    registry=REGISTRY,
)

events_processed = Counter(
    "syncd_events",
    "Events taken from the Events API, by outcome (applied, ignored) and reason",
    ["outcome", "reason"],
    registry=REGISTRY,
)
events_refetches = Counter(
    "syncd_event_refetches",
    "Objects retrieved again because of events, by table",
    ["table"],
    registry=REGISTRY,
)
overlap_refetches = Counter(
    "syncd_overlap_refetches",
    "Objects retrieved again because two versions overlapped with different content, by table",
    ["table"],
    registry=REGISTRY,
)
refetch_queue_objects = Gauge(
    "syncd_refetch_queue_objects",
    "Objects waiting in the refetch queue (overlapping versions, objects another's event"
    " changed); settled within seconds normally",
    registry=REGISTRY,
)
events_lag_seconds = Histogram(
    "syncd_event_lag_seconds",
    "Stripe time from an event's creation to the commit of its change",
    buckets=(0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300, 3600),
    registry=REGISTRY,
)
events_cursor_age_seconds = Gauge(
    "syncd_events_cursor_age_seconds",
    "Age of the events cursor (Stripe time now minus the cursor position)",
    registry=REGISTRY,
)
resync_objects = Counter(
    "syncd_resync_objects", "Objects listed by full resyncs, by table", ["table"], registry=REGISTRY
)
resync_tombstoned = Counter(
    "syncd_resync_tombstoned",
    "Rows tombstoned by full resyncs (gone from a complete list and from Stripe)",
    ["table"],
    registry=REGISTRY,
)
resync_rejected = Counter(
    "syncd_resync_rejected",
    "Listed objects that could not be mirrored (recorded in rejected_objects)",
    ["table"],
    registry=REGISTRY,
)
problems = Gauge(
    "syncd_problem",
    "1 while a loop keeps failing, by problem (events_write, resync_failing, resync_stalled)",
    ["problem"],
    registry=REGISTRY,
)
quarantined = Counter(
    "syncd_quarantined_objects_total",
    "Objects that could not be stored, kept in rejected_objects, by table and source"
    " (resync, event)",
    ["table", "source"],
    registry=REGISTRY,
)
quarantine_open = Gauge(
    "syncd_quarantine_open",
    "Objects in quarantine now (rejected_objects not resolved), by table and reason",
    ["table", "reason"],
    registry=REGISTRY,
)
unfit_values = Counter(
    "syncd_typed_values_unfit_total",
    "Values Stripe sent that did not fit their typed column (stored as NULL; raw keeps them),"
    " by the column's kind (bigint, integer, numeric, boolean, time)",
    ["kind"],
    registry=REGISTRY,
)
nul_escaped = Counter(
    "syncd_nul_escaped_objects_total",
    "Objects whose strings held a NUL character, stored with syncd's escaping (docs/schema.md)",
    registry=REGISTRY,
)
resync_insert_pages = Counter(
    "syncd_resync_insert_pages",
    "Resync pages tried as plain inserts (objects new to the mirror), by outcome"
    " (inserted; conflict: a row was there, the page was upserted instead)",
    ["table", "outcome"],
    registry=REGISTRY,
)
resync_runs = Counter(
    "syncd_resync_runs", "Full resync runs ended, by outcome", ["status"], registry=REGISTRY
)
resync_running = Gauge("syncd_resync_running", "1 while a full resync runs", registry=REGISTRY)
# The running resync's estimate (syncd/resync/eta.py); 0 once the run ends.
resync_requests_left = Gauge(
    "syncd_resync_requests_left",
    "Stripe requests the running full resync probably still needs, by table",
    ["table"],
    registry=REGISTRY,
)
resync_eta_seconds = Gauge(
    "syncd_resync_eta_seconds",
    "Seconds until the running full resync is probably done with a table, at the rate budget",
    ["table"],
    registry=REGISTRY,
)

# The periodic verify (syncd/verify_schedule.py), set by the leader when a run ends.
verify_drift = Gauge(
    "syncd_verify_drift",
    "Drifted objects the last periodic verify found, by verified table (0: equal to Stripe)",
    ["table"],
    registry=REGISTRY,
)
verify_last_clean = Gauge(
    "syncd_verify_last_clean_timestamp_seconds",
    "Unix time the last periodic verify that found the mirror equal to Stripe ended",
    registry=REGISTRY,
)
verify_runs = Counter(
    "syncd_verify_runs",
    "Periodic verify runs ended, by result (clean, drift, incomplete, failed, interrupted)",
    ["result"],
    registry=REGISTRY,
)

usage_rows = Counter(
    "syncd_usage_rows",
    "Usage rows settled, by outcome (reported, failed: Stripe refused, rejected: bad input)",
    ["outcome"],
    registry=REGISTRY,
)
usage_events = Counter(
    "syncd_usage_events",
    "Usage requests to Stripe by outcome (reported, duplicate, failed, unsent)",
    ["outcome"],
    registry=REGISTRY,
)
usage_flush_seconds = Histogram(
    "syncd_usage_flush_seconds",
    "Duration of a usage flush",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)

# Usage rows the database holds (refreshed at scrape time by syncd.health).
usage_backlog = Gauge(
    "syncd_usage_backlog_rows",
    "Usage rows not settled (pending, sending) or failed, read from the database at scrape time",
    ["status"],
    registry=REGISTRY,
)

# Operations: leadership and liveness.
is_leader = Gauge(
    "syncd_leader", "1 while this replica holds leadership, else 0", registry=REGISTRY
)
leadership_changes = Counter(
    "syncd_leadership_changes",
    "Leadership transitions of this replica (acquired, lost, released)",
    ["change"],
    registry=REGISTRY,
)
heartbeats = Counter(
    "syncd_heartbeats",
    "Heartbeats written to the instances table, by outcome (ok, failed)",
    ["outcome"],
    registry=REGISTRY,
)
accounts_leased = Gauge(
    "syncd_accounts_leased",
    "Connect: accounts this replica syncs now (leased through PostgreSQL advisory locks)",
    registry=REGISTRY,
)
accounts_failing = Gauge(
    "syncd_accounts_failing",
    "Connect: accounts of this replica whose last poll failed",
    registry=REGISTRY,
)
account_polls = Counter(
    "syncd_account_polls",
    "Connect: event polls of accounts by how the account was paced (active, quiet)",
    ["pace"],
    registry=REGISTRY,
)
