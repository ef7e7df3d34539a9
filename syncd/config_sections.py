"""The configuration's sections: one frozen dataclass per `config.toml` table, each key with its
default, its one-line documentation and its bounds in the field's metadata (`_opt`), and
`Config`, the whole. `config.toml` at the top of the repository mirrors these defaults and a test
keeps the two in step. Reading, checking and printing them is `config`'s work.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from syncd.errors import ConfigError

STRIPE_API_BASE = "https://api.stripe.com"
STRIPE_METER_EVENTS_BASE = "https://meter-events.stripe.com"
PINNED_API_VERSION = "2025-03-31.basil"


def _opt(
    default: Any,
    doc: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] = (),
    secret: bool = False,
) -> Any:
    meta = {"doc": doc, "min": lo, "max": hi, "choices": choices, "secret": secret}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = _opt(
        "postgresql://postgres@localhost:5432/postgres",
        "PostgreSQL DSN; also DATABASE_URL. TLS: add ?sslmode=verify-full&sslrootcert=/ca.pem",
        secret=True,
    )
    url_file: str = _opt("", "read the DSN from this file instead (Docker/Kubernetes secrets)")
    mirror_schema: str = _opt("stripe", "schema of the mirrored Stripe tables")
    state_schema: str = _opt("syncd", "schema of the daemon's own state (cursors, ledger, jobs)")
    app_schema: str = _opt("billing", "schema of the application views and usage_records")
    history_schema: str = _opt(
        "stripe_history", "schema of the versions kept for history.tables (docs/history.md)"
    )
    pool_min_size: int = _opt(2, "connections kept open", lo=1, hi=100)
    pool_max_size: int = _opt(8, "most connections the daemon opens", lo=2, hi=100)
    connect_timeout: float = _opt(10.0, "seconds to wait for a connection", lo=0.1, hi=300)


@dataclass(frozen=True)
class StripeConfig:
    api_key: str = _opt("", "secret or restricted key; also STRIPE_API_KEY", secret=True)
    api_key_file: str = _opt("", "read the API key from this file instead")
    mode: str = _opt(
        "test", "test or live: a key of the other mode is refused", choices=("test", "live")
    )
    api_base: str = _opt(STRIPE_API_BASE, "Stripe API address (point it at the emulator offline)")
    meter_events_base: str = _opt(
        "", "address for meter events; empty: Stripe's own, or api_base when that is not Stripe"
    )
    api_version: str = _opt(PINNED_API_VERSION, "Stripe-Version pinned on every request")
    account: str = _opt("", "connected account id (Stripe-Account header); empty: the key's own")
    accounts: list[str] = _opt(
        [],
        "Connect (docs/connect.md): empty: one account (the key's own, or stripe.account);"
        " acct_ ids: those accounts; all: the platform and every connected account, kept current",
    )
    connect_limits: str = _opt(
        "shared",
        "Connect: shared: requests for connected accounts count against the platform's limit"
        " (the stricter reading); account: each account has a budget of its own",
        choices=("shared", "account"),
    )
    accounts_refresh_interval: float = _opt(
        300.0,
        "Connect, accounts = all: seconds between listings of the connected accounts (account"
        " events are seen sooner)",
        lo=5,
        hi=86400,
    )
    rate_limit: float = _opt(
        0.0,
        "requests per second shared by all loops; 0: rate_share of Stripe's limit"
        " (25/s in test mode, 100/s live)",
        lo=0,
        hi=10000,
    )
    rate_share: float = _opt(
        0.5,
        "share of Stripe's limit used when rate_limit = 0; the rest is left to the application",
        lo=0.01,
        hi=1,
    )
    endpoint_rate_limit: float = _opt(
        0.0,
        "requests per second per endpoint (method + path); 0: the budget's share of Stripe's 25/s",
        lo=0,
        hi=10000,
    )
    max_retries: int = _opt(
        6, "retries of a 429, 5xx or network error before giving up", lo=0, hi=50
    )
    request_timeout: float = _opt(30.0, "seconds per HTTP request", lo=0.5, hi=600)


@dataclass(frozen=True)
class SyncConfig:
    include: list[str] = _opt([], "tables to mirror (e.g. customers); empty: every type")
    exclude: list[str] = _opt([], "tables not to mirror")
    slices: int = _opt(
        16, "most created-time slices one type is split into during a resync", lo=1, hi=256
    )
    concurrency: int = _opt(16, "list requests in flight at once during a resync", lo=1, hi=64)
    writers: int = _opt(
        3, "database connections writing resync pages (each held for the listing)", lo=1, hi=16
    )
    per_parent_lists: bool = _opt(
        True,
        "resync lists what Stripe lists only per parent (customer payment methods and"
        " entitlements, product features): one request per parent, after the main lists;"
        " false: events only",
    )
    per_parent_concurrency: int = _opt(
        4,
        "per-parent list requests in flight at once, after a resync's main lists: a bounded"
        " share of the rate budget (the event stream keeps the rest)",
        lo=1,
        hi=64,
    )
    resync_on_empty: bool = _opt(True, "run a full resync on first start with an empty mirror")
    reconcile_interval: float = _opt(
        86400.0, "seconds between full re-lists (changes Stripe emits no event for); 0: never", lo=0
    )


@dataclass(frozen=True)
class EventsConfig:
    enabled: bool = _opt(True, "stream changes from the Events API")
    poll_interval: float = _opt(1.0, "seconds between polls of the newest events", lo=0.05, hi=3600)
    overlap: float = _opt(
        300.0, "seconds re-listed by the overlap sweep (late events)", lo=0, hi=86400
    )
    overlap_interval: float = _opt(30.0, "seconds between overlap sweeps", lo=1, hi=86400)
    apply_mode: str = _opt(
        "snapshot",
        "apply event snapshots when provably current (else refetch), or always refetch",
        choices=("refetch", "snapshot"),
    )
    max_cursor_age_days: float = _opt(29.0, "older cursor: automatic full resync", lo=1, hi=30)
    warn_cursor_age_days: float = _opt(25.0, "cursor age that logs a warning", lo=0, hi=30)
    ledger_retention_days: float = _opt(
        35.0, "days the events ledger keeps an event", lo=1, hi=3650
    )
    notify_channel: str = _opt("syncd_changes", "NOTIFY channel for changed rows; empty: off")
    fetch_concurrency: int = _opt(
        8, "objects refetched at once for a batch of events (shared rate limit)", lo=1, hi=64
    )
    quiet_poll_interval: float = _opt(
        60.0,
        "Connect: a connected account without recent events is polled less often, up to this"
        " many seconds apart (more, when the budget needs it: docs/connect.md)",
        lo=0.05,
        hi=3600,
    )


@dataclass(frozen=True)
class UsageConfig:
    enabled: bool = _opt(True, "report rows of usage_records to Stripe")
    interval: float = _opt(
        60.0, "seconds between flushes (ignored when cron is set)", lo=1, hi=86400
    )
    cron: str = _opt("", "crontab expression for flushes instead of interval, e.g. '*/5 * * * *'")
    bucket_seconds: int = _opt(
        60, "rows of one customer and metric in this window become one event", lo=1, hi=86400
    )
    target: str = _opt(
        "meters",
        "meters (Billing Meters) or legacy (usage records API)",
        choices=("meters", "legacy"),
    )
    api_key: str = _opt(
        "", "separate key for usage (meter-event write); empty: stripe.api_key", secret=True
    )
    api_key_file: str = _opt("", "read the usage API key from this file instead")
    batch_size: int = _opt(
        100_000, "rows claimed per flush round (bigger rounds aggregate better)", lo=1, hi=1_000_000
    )
    concurrency: int = _opt(32, "usage requests in flight at once", lo=1, hi=256)
    unresolved_grace: float = _opt(
        600.0,
        "seconds a row whose customer is not (yet) in the mirror waits before it fails",
        lo=0,
        hi=30 * 86400,
    )
    retention_days: float = _opt(
        35.0, "days the outbox keeps finished batches (rows are kept)", lo=1, hi=3650
    )
    meters: dict[str, str] = _opt(
        {}, 'metric name -> meter event_name, e.g. api_calls = "api_calls"'
    )


@dataclass(frozen=True)
class VerifyConfig:
    interval: float = _opt(
        0.0,
        "seconds between the leader's verifies of the mirror against Stripe (on the daemon's"
        " rate budget, docs/verify.md); 0: never",
        lo=0,
        hi=366 * 86400,
    )
    sample: int = _opt(
        1000,
        "objects deep-compared per table by each periodic verify (ids are always complete);"
        " 0: every object",
        lo=0,
        hi=10_000_000,
    )
    repair: bool = _opt(False, "periodic verify writes what Stripe holds for the drift it finds")


@dataclass(frozen=True)
class AppConfig:
    user_id_metadata_key: str = _opt(
        "supabase_user_id", "customer metadata key holding the app's user id"
    )
    row_level_security: bool = _opt(
        True,
        "install row-level policies when auth.uid() exists (Supabase); false removes them "
        "and the anon/authenticated privileges",
    )


@dataclass(frozen=True)
class HistoryConfig:
    tables: list[str] = _opt(
        [], "tables whose every version is kept (e.g. subscriptions, prices); empty: none"
    )
    retention_days: int = _opt(
        0, "days a replaced version is kept (pruned hourly by the leader); 0: forever", lo=0
    )


@dataclass(frozen=True)
class DaemonConfig:
    shutdown_grace: float = _opt(
        10.0, "seconds to finish the batch in hand on SIGTERM", lo=0, hi=600
    )
    heartbeat_interval: float = _opt(5.0, "seconds between heartbeat writes", lo=0.1, hi=3600)
    leader_election: bool = _opt(True, "one replica leads (advisory lock), others stand by")
    election_interval: float = _opt(
        1.0, "seconds between a standby's lock attempts and the leader's lock checks", lo=0.1, hi=60
    )
    lease_interval: float = _opt(
        2.0,
        "Connect: seconds between a replica's rounds of leasing accounts (a dead replica's"
        " accounts are taken over within about two)",
        lo=0.1,
        hi=60,
    )


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = _opt(True, "serve /healthz, /readyz and /metrics")
    bind: str = _opt("0.0.0.0:9090", "host:port of the health and metrics server")
    ready_max_poll_age: float = _opt(
        60.0, "seconds since the last good poll before /readyz fails", lo=1
    )


@dataclass(frozen=True)
class LogConfig:
    level: str = _opt(
        "info", "debug, info, warning or error", choices=("debug", "info", "warning", "error")
    )
    format: str = _opt(
        "auto", "auto (JSON off a terminal), json or console", choices=("auto", "json", "console")
    )


@dataclass(frozen=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    stripe: StripeConfig = field(default_factory=StripeConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    app: AppConfig = field(default_factory=AppConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = field(default="defaults", compare=False)

    def require_api_key(self) -> str:
        if not self.stripe.api_key:
            raise ConfigError("stripe.api_key: not set (set STRIPE_API_KEY or stripe.api_key)")
        return self.stripe.api_key

    @property
    def usage_api_key(self) -> str:
        return self.usage.api_key or self.stripe.api_key

    @property
    def meter_events_base(self) -> str:
        if self.stripe.meter_events_base:
            return self.stripe.meter_events_base
        if self.stripe.api_base.rstrip("/") == STRIPE_API_BASE:
            return STRIPE_METER_EVENTS_BASE
        return self.stripe.api_base

    @property
    def account_rate_limit(self) -> float:
        """Stripe's global limit for the mode (https://docs.stripe.com/rate-limits)."""
        return 100.0 if self.stripe.mode == "live" else 25.0

    @property
    def rate_limit(self) -> float:
        """syncd's budget, requests/s: `stripe.rate_limit`, else `rate_share` of the account's."""
        if self.stripe.rate_limit > 0:
            return self.stripe.rate_limit
        return self.account_rate_limit * self.stripe.rate_share

    @property
    def endpoint_rate_limit(self) -> float:
        """Per endpoint: `stripe.endpoint_rate_limit`, else Stripe's 25/s scaled as the budget
        is scaled from the account's limit (the same share of both)."""
        if self.stripe.endpoint_rate_limit > 0:
            return self.stripe.endpoint_rate_limit
        return 25.0 * self.rate_limit / self.account_rate_limit


SECTIONS: dict[str, type[Any]] = {
    f.name: f.type if isinstance(f.type, type) else typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config)
    if f.name != "source"
}
