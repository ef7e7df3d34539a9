"""syncd's own pacing of Stripe requests: a global budget and one budget per endpoint.

Stripe limits requests per second per account, 100 in live mode and 25 in test mode, and, unless
noted, 25 per second per endpoint: a named API operation, the method and the path template
(`GET /v1/customers/{id}` is one endpoint whatever the id). Over a limit it answers 429 with a
`Stripe-Rate-Limited-Reason` header (`global-rate`, `endpoint-rate`, `global-concurrency`,
`endpoint-concurrency`, `resource-specific`). Live-mode meter events have a limit of their own
(1000/s) and do not count against the others. https://docs.stripe.com/rate-limits

How requests are paced (one `RateLimiter` per process, shared by every loop):

* Token buckets: one global, one per endpoint key (`GET /v1/customers/{id}`, from
  `stripe_api.endpoint_label` with the method). A request takes a token from both at once.
* Waiting requests queue per endpoint, first come first served within it. Whenever tokens are
  there, the heads of the endpoints whose own bucket holds a token are served, the endpoint served
  least recently first: busy endpoints share the global budget equally, each capped at its own
  rate, and what one cannot use goes to the others. Several types listed at once so fill the
  global budget without going over any endpoint's limit.
* Nobody sleeps holding anything: a request to a saturated endpoint waits in that endpoint's
  queue only, so requests to other endpoints pass it (no head-of-line blocking). One event-loop
  timer wakes the scheduler at the earliest moment a queued request can be served.
* A 429 slows the bucket it names: the global one when `Stripe-Rate-Limited-Reason` says
  `global-...`, else the endpoint's (a 429 with code `lock_timeout` is an object lock, not a
  limit, and slows nothing). The bucket's rate halves (at most once per `SLOW_COOLDOWN`, however
  many requests in flight come back 429, and down to `MIN_FACTOR` of the configured rate), it is
  held empty for `HOLD` seconds, and every `RECOVER_AFTER` seconds without a 429 doubles it back,
  up to the configured rate.

`RateSchedule` is the synchronous core (buckets, queues, the choice of who goes next) with an
injectable clock, so it is tested on a fake clock; `RateLimiter` adds the awaiting and the timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import anyio

from syncd import metrics
from syncd.logs import get_logger

if TYPE_CHECKING:
    from syncd.config import Config

log = get_logger(__name__)

# Stripe's documented limits, requests per second (https://docs.stripe.com/rate-limits).
ACCOUNT_RATES = {"test": 25.0, "live": 100.0}
ENDPOINT_RATE = 25.0
LIVE_METER_EVENT_RATE = 1000.0
METER_EVENTS = "POST /v1/billing/meter_events"

# How a 429 slows a bucket and how it recovers.
SLOWDOWN = 0.5  # the rate is multiplied by this on a 429 ...
SLOW_COOLDOWN = 1.0  # ... at most once per this many seconds (a burst of 429s is one signal)
MIN_FACTOR = 1 / 16  # never below this share of the configured rate
HOLD = 0.5  # seconds the slowed bucket gives nothing after a 429
RECOVER_AFTER = 5.0  # each this many seconds without a 429 doubles the rate back
# The timer fires this late, so a grant is due when it runs (clocks are read to the millisecond
# by some event loops); nothing is lost, since a waiting bucket is below its capacity.
TIMER_SLACK = 0.001
_EPS = 1e-9


def _check_rate(name: str, rate: float) -> float:
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"rate limit {name or 'global'}: {rate!r} is not a positive rate")
    return rate


def _capacity(rate: float, burst: float | None) -> float:
    # A tenth of a second's worth by default: syncd is a background job and sends no bursts.
    return max(1.0, burst if burst is not None else rate / 10)


class Bucket:
    """A token bucket whose rate a 429 lowers (`slow`) and quiet time brings back."""

    __slots__ = (
        "base_rate",
        "calm_since",
        "capacity",
        "factor",
        "name",
        "nominal",
        "slowed_at",
        "stamp",
        "tokens",
    )

    def __init__(self, name: str, rate: float, capacity: float, now: float) -> None:
        self.name = name
        self.nominal = self.base_rate = _check_rate(name, rate)
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now
        self.factor = 1.0
        self.slowed_at = -math.inf
        self.calm_since = now

    @property
    def rate(self) -> float:
        return self.base_rate * self.factor

    def refill(self, now: float) -> None:
        # Recovery steps first, each at its own moment, so tokens accrue at the rate of the time.
        while self.factor < 1.0 and self.calm_since + RECOVER_AFTER <= now:
            step = self.calm_since + RECOVER_AFTER
            self._accrue(step)
            self.factor = min(1.0, self.factor * 2)
            self.calm_since = step
            if self.factor == 1.0:
                log.info("rate_limit_recovered", scope=self.name or "global", rate=self.rate)
        self._accrue(now)

    def _accrue(self, t: float) -> None:
        if t > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (t - self.stamp) * self.rate)
            self.stamp = t

    def share(self, fraction: float, now: float) -> None:
        """Run at `fraction` of the nominal rate from now on (tokens so far accrue at the old)."""
        self.refill(now)
        self.base_rate = self.nominal * fraction

    def ready(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= 1.0 - _EPS

    def ready_at(self, now: float) -> float:
        """When the bucket next holds a token (now, if it does)."""
        if self.ready(now):
            return now
        return now + (1.0 - self.tokens) / self.rate

    def slow(self, now: float) -> bool:
        """A 429: halve the rate (once per cooldown), hold it empty a moment, restart the quiet
        period. True when the rate was lowered."""
        self.refill(now)
        lowered = now - self.slowed_at >= SLOW_COOLDOWN and self.factor > MIN_FACTOR
        if lowered:
            self.factor = max(MIN_FACTOR, self.factor * SLOWDOWN)
            self.slowed_at = now
        self.calm_since = now
        self.tokens = min(self.tokens, -HOLD * self.rate)
        return lowered


class Waiter:
    """A request waiting for its tokens."""

    __slots__ = ("arrived", "endpoint", "granted", "wake")

    def __init__(self, endpoint: _Endpoint, arrived: float, wake: Callable[[], None] | None):
        self.endpoint = endpoint
        self.arrived = arrived
        self.granted = False
        self.wake = wake


class _Endpoint:
    __slots__ = ("bucket", "key", "outside_global", "queue", "served")

    def __init__(self, key: str, bucket: Bucket, outside_global: bool) -> None:
        self.key = key
        self.bucket = bucket
        self.outside_global = outside_global
        self.queue: deque[Waiter] = deque()
        self.served = 0  # when it was last served, in grants (the order of fairness)


class RateSchedule:
    """Buckets and queues, and who goes next; synchronous, on an injectable clock.

    `rate`/`burst`: the global bucket. `endpoint_rate`: every endpoint's bucket (None: no limit
    of its own, the global rate). `endpoint_rates`: per-endpoint exceptions. `outside_global`:
    endpoints that do not count against the global budget (live-mode meter events).
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        endpoint_rate: float | None = None,
        endpoint_rates: Mapping[str, float] | None = None,
        outside_global: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.rate = rate
        self.endpoint_rate = endpoint_rate if endpoint_rate is not None else rate
        # Without a rate of their own, endpoints follow the global bucket, burst included.
        self._endpoint_burst = burst if endpoint_rate is None else None
        self.global_bucket = Bucket("", rate, _capacity(rate, burst), clock())
        self._endpoint_rates = dict(endpoint_rates or {})
        self._outside = frozenset(outside_global)
        self._endpoints: dict[str, _Endpoint] = {}
        self._active: dict[str, _Endpoint] = {}  # endpoints with someone waiting
        self._grants = 0
        self.waiting = 0
        self.fraction = 1.0  # of every rate above, as `share` set it
        # A bad endpoint rate is refused now, not at the first request to that endpoint.
        for key, r in [("endpoint", self.endpoint_rate), *self._endpoint_rates.items()]:
            _check_rate(key, r)

    def _endpoint(self, key: str) -> _Endpoint:
        ep = self._endpoints.get(key)
        if ep is None:
            if key in self._endpoint_rates:
                rate, burst = self._endpoint_rates[key], None
            else:
                rate, burst = self.endpoint_rate, self._endpoint_burst
            bucket = Bucket(key, rate, _capacity(rate, burst), self.clock())
            if self.fraction != 1.0:
                bucket.share(self.fraction, self.clock())
            ep = self._endpoints[key] = _Endpoint(key, bucket, key in self._outside)
        return ep

    def share(self, fraction: float) -> None:
        """Every bucket at `fraction` of its rate: Connect's shared budget split between the
        replicas that run (each takes 1/N of the platform's)."""
        now = self.clock()
        self.fraction = fraction
        for bucket in [self.global_bucket, *(ep.bucket for ep in self._endpoints.values())]:
            bucket.share(fraction, now)

    def endpoint_bucket(self, key: str) -> Bucket:
        return self._endpoint(key).bucket

    def try_now(self, key: str, now: float) -> bool:
        """Take the tokens at once when nobody waits (no one is passed) and both buckets hold
        one; False means queue (`enqueue`)."""
        if self.waiting:
            return False
        ep = self._endpoint(key)
        if not ep.bucket.ready(now):
            return False
        if not ep.outside_global and not self.global_bucket.ready(now):
            return False
        self._take(ep)
        return True

    def enqueue(
        self, key: str, now: float, wake: Callable[[], None] | None = None, *, first: bool = False
    ) -> Waiter:
        """Wait for `key`'s tokens; `first`: ahead of the endpoint's other waiters (Connect: an
        active account's poll before the quiet accounts' polls queued at the same endpoint)."""
        ep = self._endpoint(key)
        waiter = Waiter(ep, now, wake)
        if first:
            ep.queue.appendleft(waiter)
        else:
            ep.queue.append(waiter)
        self._active[key] = ep
        self.waiting += 1
        return waiter

    def cancel(self, waiter: Waiter) -> None:
        """A waiter gave up (its task was cancelled) before it was served."""
        if waiter.granted:
            return
        ep = waiter.endpoint
        try:
            ep.queue.remove(waiter)
        except ValueError:
            return
        self.waiting -= 1
        if not ep.queue:
            self._active.pop(ep.key, None)

    def pump(self, now: float) -> list[Waiter]:
        """Serve every waiter that can be served now, fairly; the waiters served."""
        served: list[Waiter] = []
        for ep in [e for e in self._active.values() if e.outside_global]:
            while ep.queue and ep.bucket.ready(now):
                self._grant(ep, now, served)
        while self._active and self.global_bucket.ready(now):
            best: _Endpoint | None = None
            for ep in self._active.values():
                if ep.outside_global or not ep.bucket.ready(now):
                    continue
                if best is None or ep.served < best.served:
                    best = ep
            if best is None:
                break
            self._grant(best, now, served)
        return served

    def due(self, now: float) -> float | None:
        """The earliest moment a waiter can be served (None: nobody waits)."""
        if not self._active:
            return None
        due = math.inf
        global_at: float | None = None
        for ep in self._active.values():
            at = ep.bucket.ready_at(now)
            if not ep.outside_global:
                if global_at is None:
                    global_at = self.global_bucket.ready_at(now)
                at = max(at, global_at)
            due = min(due, at)
        return due

    def limited(self, key: str, reason: str | None, code: str | None, now: float) -> str | None:
        """Stripe answered 429 to a request to `key`: slow the bucket it names. The scope slowed
        (`global` or the endpoint), or None for an object lock (`lock_timeout`)."""
        if code == "lock_timeout":
            return None
        why = (reason or "").strip().lower() or "unspecified"
        metrics.stripe_rate_limited.labels(key or "other", why).inc()
        bucket = self.global_bucket if why.startswith("global") else self._endpoint(key).bucket
        scope = bucket.name or "global"
        if bucket.slow(now):
            log.info("rate_limit_slowed", scope=scope, reason=why, rate=round(bucket.rate, 3))
        return scope

    def _take(self, ep: _Endpoint) -> None:
        ep.bucket.tokens -= 1.0
        if not ep.outside_global:
            self.global_bucket.tokens -= 1.0
        self._grants += 1
        ep.served = self._grants

    def _grant(self, ep: _Endpoint, now: float, served: list[Waiter]) -> None:
        waiter = ep.queue.popleft()
        if not ep.queue:
            del self._active[ep.key]
        self._take(ep)
        self.waiting -= 1
        waiter.granted = True
        waited = now - waiter.arrived
        if waited > 0:
            metrics.rate_limit_wait_seconds.inc(waited)
            metrics.rate_limit_endpoint_wait_seconds.labels(ep.key or "other").inc(waited)
        served.append(waiter)
        if waiter.wake is not None:
            # RuntimeError: its event loop is gone, and nobody waits for it any more.
            with contextlib.suppress(RuntimeError):
                waiter.wake()


class RateLimiter:
    """The limiter `StripeAPI` awaits: `acquire(endpoint)` before a request, `limited(...)`
    after a 429. One per process, shared by every loop; event-loop bound (asyncio)."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        endpoint_rate: float | None = None,
        endpoint_rates: Mapping[str, float] | None = None,
        outside_global: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.schedule = RateSchedule(
            rate,
            burst,
            endpoint_rate=endpoint_rate,
            endpoint_rates=endpoint_rates,
            outside_global=outside_global,
            clock=clock,
        )
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    @property
    def rate(self) -> float:
        """The configured global rate (requests per second)."""
        return self.schedule.rate

    @property
    def endpoint_rate(self) -> float:
        return self.schedule.endpoint_rate

    @property
    def backlog(self) -> int:
        """Requests waiting for their tokens now: while any wait, the budget bounds the rate,
        not the requests in flight, so more of them in flight would not go faster."""
        return self.schedule.waiting

    def share(self, fraction: float) -> None:
        """Run at `fraction` of the configured rates (see RateSchedule.share)."""
        if fraction != self.schedule.fraction:
            self.schedule.share(fraction)
            self._run()

    def rate_now(self, endpoint: str | None = None) -> float:
        """The global rate (or `endpoint`'s) as it is now: below the configured one while a 429
        slows it. For estimates (the resync's ETA); serves nobody."""
        schedule = self.schedule
        bucket = schedule.global_bucket if endpoint is None else schedule.endpoint_bucket(endpoint)
        bucket.refill(schedule.clock())  # a recovery that is due counts
        return bucket.rate

    async def acquire(self, endpoint: str = "", *, first: bool = False) -> None:
        """Wait until a request to `endpoint` (`GET /v1/customers/{id}`; "" for none) may go;
        `first`: ahead of the others waiting for that endpoint."""
        schedule = self.schedule
        now = schedule.clock()
        if schedule.try_now(endpoint, now):
            return
        ready = anyio.Event()
        waiter = schedule.enqueue(endpoint, now, ready.set, first=first)
        self._run()
        try:
            await ready.wait()
        finally:
            if not waiter.granted:
                schedule.cancel(waiter)

    def limited(self, endpoint: str, reason: str | None, code: str | None = None) -> str | None:
        """Stripe answered 429 (`reason`: its `Stripe-Rate-Limited-Reason`; `code`: the error's)."""
        return self.schedule.limited(endpoint, reason, code, self.schedule.clock())

    def _run(self) -> None:
        """Serve who can be served, then make sure the timer wakes us when the next one can."""
        schedule = self.schedule
        now = schedule.clock()
        schedule.pump(now)
        due = schedule.due(now)
        if due is None:
            return
        loop = asyncio.get_running_loop()
        at = loop.time() + max(0.0, due - now) + TIMER_SLACK
        if self._timer is not None and self._timer_loop is loop and self._timer_at <= at:
            return  # an earlier wake-up is already set; it re-arms for this one
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(at, self._fire)
        self._timer_at, self._timer_loop = at, loop

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self._run()


def account_rate(cfg: Config) -> float:
    """Stripe's global limit for the account's mode."""
    return ACCOUNT_RATES[cfg.stripe.mode]


def limiter_for(cfg: Config, rate: float | None = None) -> RateLimiter:
    """The limiter of the configured budget (`Config.rate_limit` globally,
    `Config.endpoint_rate_limit` per endpoint), or of `rate` with every level scaled alike
    (verify's half budget beside a daemon). Live-mode meter events get their own limit, the same
    share of Stripe's 1000/s, outside the global budget, as Stripe counts them."""
    budget = cfg.rate_limit
    scale = 1.0 if rate is None else rate / budget
    rates: dict[str, float] = {}
    outside: tuple[str, ...] = ()
    if cfg.stripe.mode == "live":
        share = budget / account_rate(cfg)
        rates[METER_EVENTS] = LIVE_METER_EVENT_RATE * share * scale
        outside = (METER_EVENTS,)
    return RateLimiter(
        budget * scale,
        endpoint_rate=cfg.endpoint_rate_limit * scale,
        endpoint_rates=rates,
        outside_global=outside,
    )


def describe_budget(cfg: Config) -> str:
    """One line for `syncd check`: the budget, where it comes from, the endpoint limit."""
    account = account_rate(cfg)
    if cfg.stripe.rate_limit > 0:
        source = f"stripe.rate_limit; {cfg.stripe.mode} mode allows {account:g}/s"
    else:
        share = cfg.stripe.rate_share
        words = {0.5: "half", 1.0: "all", 0.25: "a quarter"}.get(share, f"{share * 100:g}%")
        source = f"{words} of {cfg.stripe.mode} mode's {account:g}/s"
    line = f"rate budget: {cfg.rate_limit:g} requests/s ({source}; "
    line += f"{cfg.endpoint_rate_limit:g}/s per endpoint"
    if cfg.stripe.mode == "live":
        meter = LIVE_METER_EVENT_RATE * cfg.rate_limit / account
        line += f"; meter events {meter:g}/s apart"
    return line + ")"
