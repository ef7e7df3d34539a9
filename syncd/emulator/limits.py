"""Stripe's API limits, enforced on request when configured: a global rate, per-endpoint rates,
the meter-event rate and the meter-event concurrency rule, plus counters of requests and 429s.

Everything is off by default, so the emulator answers every request as before.
"""

# What Stripe documents (read through stored copies of the pages below):
#
# * https://docs.stripe.com/rate-limits : limits are requests per second per account. Global:
#   100/s in live mode, 25/s in a sandbox (test mode). Individual API endpoints: 25/s unless
#   noted. "Each named API operation" is an endpoint (`POST /v1/payment_intents` and
#   `GET /v1/payment_intents/{id}` are two), and `GET /v1/payment_intents/{id}` for different
#   ids counts against one endpoint limit. Over a limit Stripe answers `429 Too Many Requests`
#   with a `Stripe-Rate-Limited-Reason` header: `global-rate`, `endpoint-rate`,
#   `global-concurrency`, `endpoint-concurrency` or `resource-specific`. A 429 with code
#   `lock_timeout` is an object lock, not a limit (the emulator's faults produce those).
#   Per-resource limits (1000 updates per PaymentIntent per hour, Files/Search 20/s, ...) are
#   not modelled; `endpoint_rates` can approximate the per-second ones.
# * The same page, earlier text (https://stripe.com/docs/rate-limits): calls to the meter events
#   endpoint in live mode have a separate limit of 1000/s per account and do not count against
#   the basic limits; in test mode they count toward the basic limit. The concurrency limiter
#   allows "one concurrent call per customer per meter" on that endpoint. Repeated in
#   https://docs.stripe.com/billing/subscriptions/usage-based/recording-usage-api#rate-limits .
# * https://stripe.com/blog/rate-limiters : Stripe's request-rate limiter is a token bucket per
#   account, followed by a separate concurrent-requests limiter.
# * The 429 body is not in the docs; as clients log it: {"error": {"code": "rate_limit",
#   "doc_url": "https://stripe.com/docs/error-codes/rate-limit", "message": "Request rate limit
#   exceeded. ...", "type": "invalid_request_error"}}, with "Testmode request rate limit
#   exceeded, ..." in test mode (errors.py holds both messages).
# * https://github.com/stripe/stripe-dotnet/issues/1886 (Stripe staff): the SDKs do not retry
#   real rate limits, only lock timeouts. The SDKs retry whenever `Stripe-Should-Retry: true`
#   is present, so these 429s carry no such header.
#
# * Connected accounts: the page measures limits "per account" and says nothing of requests a
#   platform makes for a connected account (`Stripe-Account`; https://docs.stripe.com/connect/
#   authentication only links to it). Two readings: they count against the connected account
#   (each has its own budget), or also against the platform (all of them share its budget). The
#   stricter one, "shared", is the default; `connect_limits="account"` is the lenient one.
#
# How it is modelled: token buckets on the real monotonic clock (not the emulator clock, which
# tests freeze and move by days). A bucket holds one second's worth of tokens and refills
# continuously, so a client pacing itself at the rate (syncd's own limiter is such a bucket)
# never sees a 429, while a burst gets one second's worth and then the rate. A sliding window
# would be stricter than what Stripe's blog describes. Which reason a concurrency 429 carries on
# meter events is not documented: `endpoint-concurrency` is our choice, since it tells a client
# to serialize rather than slow down.

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import (
    LIVE_RATE_LIMIT_MESSAGE,
    METER_CONCURRENCY_MESSAGE,
    RATE_LIMIT_MESSAGE,
    StripeError,
    rate_limited,
)

MODES = ("test", "live")
# How a request for a connected account counts: against its own limits and the platform's
# ("shared", the stricter reading), or against its own only ("account").
CONNECT_LIMITS = ("shared", "account")
GLOBAL_RATES = {"test": 25.0, "live": 100.0}
ENDPOINT_RATE = 25.0
LIVE_METER_EVENT_RATE = 1000.0
METER_EVENTS = "POST /v1/billing/meter_events"

# `Stripe-Rate-Limited-Reason` values
REASON_GLOBAL_RATE = "global-rate"
REASON_ENDPOINT_RATE = "endpoint-rate"
REASON_ENDPOINT_CONCURRENCY = "endpoint-concurrency"

_PLACEHOLDER = re.compile(r"\{[^}/]*\}")
# The id test of syncd.stripe_api.endpoint_label: a prefix, then a token holding a digit or a
# capital, which tells `/cus_NffrFeUf2` apart from a path word such as `/meter_events`.
_ID_SEGMENT = re.compile(r"/[a-z]+(?:_[a-z]+)*_[0-9A-Za-z]*[0-9A-Z][0-9A-Za-z]*")


def endpoint_template(method: str, path: str) -> str:
    """``GET /v1/customers/{id}/tax_ids``: the endpoint Stripe limits, for a route or a path.

    Route placeholders (``{cid}``) and concrete ids (``cus_N1x``) both become ``{id}``, so the
    emulator's endpoints carry the same names as syncd's per-endpoint metrics.
    """
    return f"{method} {_ID_SEGMENT.sub('/{id}', _PLACEHOLDER.sub('{id}', path))}"


class TokenBucket:
    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def has_token(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens >= 1.0


def _capacity(rate: float, burst: float | None) -> float:
    # One second's worth, but at least one token: a rate under 1/s must still admit a request.
    return max(1.0, burst if burst is not None else rate)


@dataclass(frozen=True)
class LimitConfig:
    """What is enforced; ``None``/``False`` is off. ``mode`` only picks the 429 wording."""

    global_rate: float | None = None
    global_burst: float | None = None
    endpoint_rate: float | None = None
    endpoint_rates: dict[str, float] = field(default_factory=dict)
    meter_event_rate: float | None = None
    meter_event_concurrency: bool = False
    mode: str | None = None
    connect_limits: str = "shared"

    @classmethod
    def stripe(cls, mode: str) -> LimitConfig:
        """Stripe's documented numbers for ``"test"`` or ``"live"`` mode."""
        if mode not in MODES:
            raise ValueError(f"stripe_limits must be one of {MODES}, not {mode!r}")
        return cls(
            global_rate=GLOBAL_RATES[mode],
            endpoint_rate=ENDPOINT_RATE,
            # In test mode meter events count toward the basic limits instead.
            meter_event_rate=LIVE_METER_EVENT_RATE if mode == "live" else None,
            meter_event_concurrency=True,
            mode=mode,
        )

    def validate(self) -> None:
        rates = [self.global_rate, self.global_burst, self.endpoint_rate, self.meter_event_rate]
        for r in [*rates, *self.endpoint_rates.values()]:
            if r is not None and not r > 0:
                raise ValueError(f"rates and bursts must be positive, not {r!r}")
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES} or null, not {self.mode!r}")
        if self.connect_limits not in CONNECT_LIMITS:
            raise ValueError(
                f"connect_limits must be one of {CONNECT_LIMITS}, not {self.connect_limits!r}"
            )


@dataclass
class _Count:
    requests: int = 0
    limited: int = 0


@dataclass
class _Counters:
    counts: dict[str, _Count] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)

    def get(self, endpoint: str) -> _Count:
        c = self.counts.get(endpoint)
        if c is None:
            c = self.counts[endpoint] = _Count()
        return c


class Limits:
    """The limiter and its counters. Thread-safe: the Python API may drive it from a test thread.

    ``clock`` (``time.monotonic``) may be replaced, e.g. by a frozen one in tests; buckets are
    rebuilt full whenever the configuration changes.

    Every account has its own buckets (``account=None`` is the platform) under the one
    configuration; counters are kept in total and per connected account.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.config = LimitConfig()
        self._lock = threading.Lock()
        # (account or "" for the platform, "global" | "meter" | endpoint template) -> bucket
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._in_flight: set[tuple[str, ...]] = set()
        self._totals = _Counters()
        self._accounts: dict[str, _Counters] = {}

    # configuration -----------------------------------------------------------------------
    def set_config(self, config: LimitConfig) -> None:
        # Keys may name a route (`{cid}`) or a concrete path; buckets are kept per template.
        # The copy also keeps a caller's later edits of its dict away from the buckets.
        rates = {}
        for key, rate in config.endpoint_rates.items():
            method, sep, path = key.partition(" ")
            if not sep or not path.startswith("/"):
                raise ValueError(f"endpoint_rates keys look like 'GET /v1/customers', not {key!r}")
            rates[endpoint_template(method.upper(), path)] = float(rate)
        config = replace(config, endpoint_rates=rates)
        config.validate()
        with self._lock:
            self.config = config
            self._buckets.clear()

    def configure(self, **changes: Any) -> LimitConfig:
        """Change some settings, e.g. ``configure(global_rate=25, endpoint_rate=25)``."""
        self.set_config(replace(self.config, **changes))
        return self.config

    def use_stripe_limits(self, mode: str) -> LimitConfig:
        self.set_config(LimitConfig.stripe(mode))
        return self.config

    def clear(self) -> None:
        """Every limit off; counters stay (``reset_counters`` clears them)."""
        self.set_config(LimitConfig())

    @property
    def meter_concurrency(self) -> bool:
        return self.config.meter_event_concurrency

    # enforcement -------------------------------------------------------------------------
    def admit(self, endpoint: str, account: str | None = None) -> str | None:
        """Count a request to ``endpoint`` (a template) made for ``account`` (``None``: the
        platform) and take its tokens; ``None`` admits it, otherwise the
        ``Stripe-Rate-Limited-Reason`` of the 429 to answer."""
        with self._lock:
            tallies = self._tallies(account)
            counts = [t.get(endpoint) for t in tallies]
            for c in counts:
                c.requests += 1
            cfg = self.config
            now = self.clock()
            scopes = [""] if account is None else [account]
            if account is not None and cfg.connect_limits == "shared":
                scopes.append("")  # the platform's budget too
            checks = [chk for scope in scopes for chk in self._checks(scope, endpoint, cfg, now)]
            # All or nothing: a turned-away request does not execute, so it spends no token of
            # the limits it did pass (one endpoint's 429s cannot drain the global budget).
            for bucket, reason in checks:
                if not bucket.has_token(now):
                    for t, c in zip(tallies, counts, strict=True):
                        c.limited += 1
                        t.reasons[reason] += 1
                    return reason
            for bucket, _ in checks:
                bucket.tokens -= 1.0
            return None

    def _checks(
        self, scope: str, endpoint: str, cfg: LimitConfig, now: float
    ) -> list[tuple[TokenBucket, str]]:
        """The buckets one account's limits take a request's token from."""
        if endpoint == METER_EVENTS and cfg.meter_event_rate is not None:
            # A separate meter-event limit replaces the basic ones (Stripe's live mode).
            rate = cfg.meter_event_rate
            return [(self._bucket(scope, "meter", rate, None, now), REASON_ENDPOINT_RATE)]
        checks: list[tuple[TokenBucket, str]] = []
        if cfg.global_rate is not None:
            bucket = self._bucket(scope, "global", cfg.global_rate, cfg.global_burst, now)
            checks.append((bucket, REASON_GLOBAL_RATE))
        rate_ = cfg.endpoint_rates.get(endpoint, cfg.endpoint_rate)
        if rate_ is not None:
            checks.append((self._bucket(scope, endpoint, rate_, None, now), REASON_ENDPOINT_RATE))
        return checks

    def _bucket(
        self, scope: str, name: str, rate: float, burst: float | None, now: float
    ) -> TokenBucket:
        bucket = self._buckets.get((scope, name))
        if bucket is None:
            bucket = self._buckets[(scope, name)] = TokenBucket(rate, _capacity(rate, burst), now)
        return bucket

    def _tallies(self, account: str | None) -> list[_Counters]:
        if account is None:
            return [self._totals]
        per = self._accounts.get(account)
        if per is None:
            per = self._accounts[account] = _Counters()
        return [self._totals, per]

    def acquire(self, endpoint: str, key: tuple[str, ...], account: str | None = None) -> bool:
        """Take the one in-flight slot of a (account, meter, customer); False means answer 429."""
        with self._lock:
            if key not in self._in_flight:
                self._in_flight.add(key)
                return True
            for t in self._tallies(account):
                t.get(endpoint).limited += 1
                t.reasons[REASON_ENDPOINT_CONCURRENCY] += 1
            return False

    def release(self, key: tuple[str, ...]) -> None:
        with self._lock:
            self._in_flight.discard(key)

    def forget_account(self, account: str) -> None:
        """Drop a connected account's buckets (full again) and its own counters."""
        with self._lock:
            self._accounts.pop(account, None)
            for k in [k for k in self._buckets if k[0] == account]:
                del self._buckets[k]

    def error(self, reason: str) -> StripeError:
        if reason == REASON_ENDPOINT_CONCURRENCY:
            message = METER_CONCURRENCY_MESSAGE
        elif self.config.mode == "live":
            message = LIVE_RATE_LIMIT_MESSAGE
        else:
            message = RATE_LIMIT_MESSAGE
        return rate_limited(reason, message)

    # counters ----------------------------------------------------------------------------
    def count(self, endpoint: str | None = None, account: str | None = None) -> tuple[int, int]:
        """``(requests, limited)`` for one endpoint template, or in total; of every account, or
        of one connected ``account``."""
        with self._lock:
            tally = self._totals if account is None else self._accounts.get(account, _Counters())
            counts = (
                list(tally.counts.values())
                if endpoint is None
                else [tally.counts.get(endpoint, _Count())]
            )
            return sum(c.requests for c in counts), sum(c.limited for c in counts)

    def reset_counters(self) -> None:
        with self._lock:
            self._totals = _Counters()
            self._accounts.clear()

    def counters_json(self, account: str | None = None) -> dict[str, Any]:
        """Counters of every request, or of one connected ``account``'s."""
        with self._lock:
            tally = self._totals if account is None else self._accounts.get(account, _Counters())
            endpoints = {
                e: {"requests": c.requests, "limited": c.limited, "served": c.requests - c.limited}
                for e, c in sorted(tally.counts.items())
            }
            reasons = dict(tally.reasons)
        requests = sum(e["requests"] for e in endpoints.values())
        limited = sum(e["limited"] for e in endpoints.values())
        return {
            "requests": requests,
            "limited": limited,
            "served": requests - limited,
            "limited_fraction": limited / requests if requests else 0.0,
            "by_reason": reasons,
            "endpoints": endpoints,
        }

    def as_json(self, account: str | None = None) -> dict[str, Any]:
        return {**asdict(self.config), "counters": self.counters_json(account)}


class LegacyRateLimiter:
    """``emu.limiter``: the original single token bucket, now the global limit of ``Limits``.

    ``configure(rate, burst)`` and ``/_emulator/ratelimit`` keep their meaning for existing
    tests and benchmarks; other limits are left as they are.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def configure(self, rate: float | None, burst: float | None = None) -> None:
        self.limits.configure(global_rate=rate, global_burst=burst if rate is not None else None)

    @property
    def rate(self) -> float | None:
        return self.limits.config.global_rate

    @property
    def burst(self) -> float:
        cfg = self.limits.config
        return cfg.global_burst if cfg.global_burst is not None else (cfg.global_rate or 0.0)

    def as_json(self) -> dict[str, Any]:
        return {"rate": self.rate, "burst": self.burst}
