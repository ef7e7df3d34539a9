"""syncd's rate limiter: a global budget and one per endpoint, fair, without head-of-line
blocking, slowed by Stripe's 429s and recovering; the configured budget; and the whole through
the real SDK against the emulator enforcing Stripe's limits.

The scheduling tests run the synchronous core (`RateSchedule`) on a fake clock, jumping from one
moment a request can be served to the next, so their counts are exact on any machine. The few
tests on the real clock assert counts with generous bounds, never tight timings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import Counter
from typing import Any

import anyio
import pytest

from syncd.config import Config, StripeConfig, load_config
from syncd.emulator import Emulator
from syncd.pgserver import free_port
from syncd.ratelimit import (
    HOLD,
    METER_EVENTS,
    MIN_FACTOR,
    RECOVER_AFTER,
    RateLimiter,
    RateSchedule,
    Waiter,
    describe_budget,
    limiter_for,
)
from syncd.stripe_api import StripeAPI
from tests.conftest import syncd_cli

KEY = "sk_test_ratelimit000000000"


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def schedule(rate: float, clock: FakeClock, **kw: Any) -> RateSchedule:
    return RateSchedule(rate, clock=clock, **kw)


def run_until(s: RateSchedule, clock: FakeClock, end: float) -> list[tuple[float, str]]:
    """Serve waiters from the clock's time to `end`, jumping to each moment one can be served
    (what the limiter's timer does); (time, endpoint) of every grant."""
    grants: list[tuple[float, str]] = [(clock.t, w.endpoint.key) for w in s.pump(clock.t)]
    while True:
        due = s.due(clock.t)
        if due is None or due > end:
            break
        clock.t = max(due, clock.t + 1e-9)
        grants += [(clock.t, w.endpoint.key) for w in s.pump(clock.t)]
    clock.t = max(clock.t, end)
    return grants


def backlog(s: RateSchedule, clock: FakeClock, key: str, n: int) -> list[Waiter]:
    return [s.enqueue(key, clock.t) for _ in range(n)]


def most_in_a_window(times: list[float], window: float) -> int:
    """The most grants in any `window` seconds."""
    best, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


# rates and bursts --------------------------------------------------------------------------------
def test_global_rate_and_burst() -> None:
    clock = FakeClock()
    s = schedule(10, clock, burst=5)
    assert [s.try_now("GET /v1/customers", clock.t) for _ in range(6)] == [True] * 5 + [False]
    clock.t += 0.1  # one token back
    assert s.try_now("GET /v1/products", clock.t) and not s.try_now("GET /v1/prices", clock.t)
    backlog(s, clock, "GET /v1/customers", 200)
    grants = run_until(s, clock, clock.t + 10.0)
    assert len(grants) == 100  # 10 s at 10/s from an empty bucket
    gaps = {round(b[0] - a[0], 6) for a, b in itertools.pairwise(grants)}
    assert gaps == {0.1}
    clock.t += 60  # a minute idle refills the burst only, not a minute's worth
    assert s.waiting == 100
    assert len(run_until(s, clock, clock.t)) == 5


def test_default_burst_is_a_tenth_of_a_second() -> None:
    clock = FakeClock()
    s = schedule(50, clock)
    assert sum(s.try_now("GET /v1/customers", clock.t) for _ in range(10)) == 5
    assert schedule(5, clock).global_bucket.capacity == 1.0  # at least one request


def test_endpoint_rate_caps_an_endpoint_not_the_others() -> None:
    clock = FakeClock()
    s = schedule(100, clock, endpoint_rate=25)
    backlog(s, clock, "GET /v1/customers", 500)
    backlog(s, clock, "GET /v1/products", 500)
    grants = run_until(s, clock, clock.t + 4.0)
    per = Counter(key for _, key in grants)
    # Each endpoint gets its own 25/s (plus its 2.5-token burst), the global budget the rest.
    assert 100 <= per["GET /v1/customers"] <= 103 and 100 <= per["GET /v1/products"] <= 103
    for key in per:
        times = [t for t, k in grants if k == key]
        assert most_in_a_window(times, 1.0) <= 25 + 3


def test_busy_endpoints_share_the_global_budget_fairly_within_their_limits() -> None:
    """Several types listed at once (live-mode defaults: 50/s, 12.5/s per endpoint) fill the
    global budget, each endpoint about equally, none over its own limit."""
    clock = FakeClock()
    s = schedule(50, clock, endpoint_rate=12.5)
    keys = [
        f"GET /v1/{name}"
        for name in ("customers", "products", "prices", "invoices", "charges", "refunds")
    ]
    for key in keys:
        backlog(s, clock, key, 300)
    start = clock.t
    grants = run_until(s, clock, start + 10.0)
    assert 500 <= len(grants) <= 506  # the global rate, 10 s, plus its burst
    per = Counter(key for _, key in grants)
    assert max(per.values()) - min(per.values()) <= 2, per  # round robin
    for key in keys:
        times = [t for t, k in grants if k == key]
        assert most_in_a_window(times, 1.0) <= 12.5 + 2, key
    # Two endpoints cannot fill 50/s without going over their 12.5/s each: they do not.
    clock2 = FakeClock()
    s2 = schedule(50, clock2, endpoint_rate=12.5)
    backlog(s2, clock2, keys[0], 300)
    backlog(s2, clock2, keys[1], 300)
    assert len(run_until(s2, clock2, clock2.t + 10.0)) <= 2 * (125 + 2)


def test_a_saturated_endpoint_does_not_hold_up_another() -> None:
    clock = FakeClock()
    s = schedule(100, clock, endpoint_rates={"GET /v1/customers": 2})
    backlog(s, clock, "GET /v1/customers", 20)  # ten seconds of work for that endpoint
    run_until(s, clock, clock.t + 0.01)
    assert s.waiting == 19
    clock.t += 0.01
    # What RateLimiter.acquire does: the fast path is closed while anyone waits, and the
    # scheduler serves the newcomer at once, past the queue of the saturated endpoint.
    assert not s.try_now("GET /v1/products", clock.t)
    other = s.enqueue("GET /v1/products", clock.t)
    assert other in s.pump(clock.t) and other.granted
    # The saturated queue keeps its order and its rate.
    grants = run_until(s, clock, clock.t + 5.0)
    assert len(grants) == 10 and {k for _, k in grants} == {"GET /v1/customers"}


def test_least_recently_served_endpoint_goes_first() -> None:
    clock = FakeClock()
    s = schedule(10, clock, burst=1)
    backlog(s, clock, "GET /v1/customers", 10)
    assert len(run_until(s, clock, clock.t)) == 1
    backlog(s, clock, "GET /v1/products", 3)  # arrives behind nine customer requests
    grants = run_until(s, clock, clock.t + 0.65)
    assert [k.rsplit("/", 1)[1] for _, k in grants] == ["products", "customers"] * 3


def test_cancelled_waiter_leaves_the_queue() -> None:
    clock = FakeClock()
    s = schedule(1, clock, burst=1)
    assert s.try_now("GET /v1/customers", clock.t)
    a, b = backlog(s, clock, "GET /v1/customers", 2)
    s.cancel(a)
    assert s.waiting == 1
    assert s.pump(clock.t + 1.0) == [b]
    s.cancel(b)  # already served: nothing happens
    assert s.waiting == 0 and s.due(clock.t) is None


def test_meter_events_outside_the_global_budget() -> None:
    clock = FakeClock()
    s = schedule(
        2, clock, endpoint_rates={METER_EVENTS: 100}, outside_global=[METER_EVENTS], burst=1
    )
    assert s.try_now("GET /v1/customers", clock.t)
    assert not s.try_now("GET /v1/customers", clock.t)
    assert sum(s.try_now(METER_EVENTS, clock.t) for _ in range(20)) == 10  # its own burst


def test_bad_rates_are_refused() -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="not a positive rate"):
            RateSchedule(bad)
        with pytest.raises(ValueError, match="not a positive rate"):
            RateSchedule(10, endpoint_rate=bad)


# 429s: backoff and recovery --------------------------------------------------------------------
def test_endpoint_429_slows_that_endpoint_only() -> None:
    clock = FakeClock()
    s = schedule(100, clock, endpoint_rate=25)
    customers, products = (
        s.endpoint_bucket("GET /v1/customers"),
        s.endpoint_bucket("GET /v1/products"),
    )
    assert (
        s.limited("GET /v1/customers", "endpoint-rate", "rate_limit", clock.t)
        == "GET /v1/customers"
    )
    assert customers.rate == 12.5 and products.rate == 25 and s.global_bucket.rate == 100
    # Requests in flight come back 429 together: one signal, one halving.
    s.limited("GET /v1/customers", "endpoint-rate", "rate_limit", clock.t + 0.2)
    assert customers.rate == 12.5
    s.limited("GET /v1/customers", None, None, clock.t + 1.2)  # no reason given: the endpoint
    assert customers.rate == 6.25 and s.global_bucket.rate == 100
    # The slowed endpoint gives nothing for HOLD seconds; the others go on.
    clock.t += 1.2
    backlog(s, clock, "GET /v1/customers", 50)
    backlog(s, clock, "GET /v1/products", 5)
    grants = run_until(s, clock, clock.t + HOLD - 0.01)
    assert {k for _, k in grants} == {"GET /v1/products"}
    grants = run_until(s, clock, clock.t + 2.0)
    assert 10 <= Counter(k for _, k in grants)["GET /v1/customers"] <= 6.25 * 2 + 1


def test_global_429_slows_everyone_and_lock_timeouts_slow_nobody() -> None:
    clock = FakeClock()
    s = schedule(50, clock, endpoint_rate=12.5)
    assert s.limited("GET /v1/customers", "global-rate", "rate_limit", clock.t) == "global"
    assert s.global_bucket.rate == 25 and s.endpoint_bucket("GET /v1/customers").rate == 12.5
    assert s.limited("GET /v1/prices", "Global-Concurrency", None, clock.t + 1) == "global"
    assert s.global_bucket.rate == 12.5
    assert s.limited("GET /v1/customers/{id}", None, "lock_timeout", clock.t) is None
    assert s.endpoint_bucket("GET /v1/customers/{id}").rate == 12.5


def test_rate_recovers_after_quiet_periods() -> None:
    clock = FakeClock()
    s = schedule(100, clock, endpoint_rate=20)
    key = "GET /v1/invoices"
    bucket = s.endpoint_bucket(key)
    for i in range(10):  # a long storm: the floor holds
        s.limited(key, "endpoint-rate", "rate_limit", clock.t + i)
    assert bucket.factor == MIN_FACTOR and bucket.rate == 20 * MIN_FACTOR
    clock.t += 9  # the last 429
    bucket.refill(clock.t + RECOVER_AFTER - 0.01)
    assert bucket.factor == MIN_FACTOR
    bucket.refill(clock.t + RECOVER_AFTER)
    assert bucket.factor == 2 * MIN_FACTOR
    # Another 429 starts the quiet period again (and halves once more).
    s.limited(key, "endpoint-rate", "rate_limit", clock.t + RECOVER_AFTER + 1)
    assert bucket.factor == MIN_FACTOR
    bucket.refill(clock.t + RECOVER_AFTER + 1 + 4 * RECOVER_AFTER - 0.01)
    assert bucket.factor == 8 * MIN_FACTOR
    bucket.refill(clock.t + RECOVER_AFTER + 1 + 10 * RECOVER_AFTER)
    assert bucket.factor == 1.0 and bucket.rate == 20  # back to the configured rate, no further
    # Served at the full rate again.
    clock.t += 60
    backlog(s, clock, key, 100)
    assert 40 <= len(run_until(s, clock, clock.t + 2.0)) <= 43


# the asyncio limiter, on the real clock ----------------------------------------------------------
async def test_limiter_spaces_requests() -> None:
    limiter = RateLimiter(50, burst=1)
    started = time.monotonic()
    for _ in range(11):
        await limiter.acquire("GET /v1/customers")
    assert time.monotonic() - started >= 0.18  # ten waits of 1/50 s; no upper bound here


async def test_limiter_no_head_of_line_blocking_and_cancellation() -> None:
    limiter = RateLimiter(100, endpoint_rates={"GET /v1/customers": 1})
    served: list[str] = []

    async def one(key: str) -> None:
        await limiter.acquire(key)
        served.append(key)

    async with anyio.create_task_group() as tg:
        for _ in range(8):  # about seven seconds of work at 1/s
            tg.start_soon(one, "GET /v1/customers")
        await anyio.sleep(0.05)
        started = time.monotonic()
        await limiter.acquire("GET /v1/products")
        waited = time.monotonic() - started
        await limiter.acquire("GET /v1/products")
        tg.cancel_scope.cancel()
    assert waited < 1.0  # generous: it needs no token of the busy endpoint
    assert served.count("GET /v1/customers") <= 2
    assert limiter.schedule.waiting == 0  # the cancelled waiters left their queue
    await limiter.acquire("GET /v1/products")  # and the limiter still works


async def test_limiter_many_waiters_are_all_served() -> None:
    limiter = RateLimiter(200, endpoint_rate=100)
    keys = [f"GET /v1/t{i}" for i in range(5)]
    done: Counter[str] = Counter()

    async def one(key: str) -> None:
        await limiter.acquire(key)
        done[key] += 1

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(one, keys[i % 5])
    assert done == Counter({k: 20 for k in keys})
    assert limiter.schedule.waiting == 0


# the configured budget ---------------------------------------------------------------------------
def test_budget_defaults_and_overrides() -> None:
    cfg = load_config(None, {})
    assert (cfg.rate_limit, cfg.endpoint_rate_limit) == (12.5, 12.5)
    live = load_config(None, {"SYNCD_STRIPE_MODE": "live"})
    assert (live.rate_limit, live.endpoint_rate_limit) == (50, 12.5)
    whole = load_config(None, {"SYNCD_STRIPE_MODE": "live", "SYNCD_STRIPE_RATE_SHARE": "1"})
    assert (whole.rate_limit, whole.endpoint_rate_limit) == (100, 25)
    fixed = load_config(None, {"SYNCD_STRIPE_RATE_LIMIT": "1000"})  # e.g. an emulator
    assert (fixed.rate_limit, fixed.endpoint_rate_limit) == (1000, 1000)
    own = load_config(None, {"SYNCD_STRIPE_ENDPOINT_RATE_LIMIT": "3"})
    assert (own.rate_limit, own.endpoint_rate_limit) == (12.5, 3)


def test_limiter_for_the_configuration() -> None:
    limiter = limiter_for(load_config(None, {}))
    assert (limiter.rate, limiter.endpoint_rate) == (12.5, 12.5)
    live = load_config(None, {"SYNCD_STRIPE_MODE": "live"})
    limiter = limiter_for(live)
    assert (limiter.rate, limiter.endpoint_rate) == (50, 12.5)
    meter = limiter.schedule.endpoint_bucket(METER_EVENTS)
    assert meter.rate == 500  # half of Stripe's separate 1000/s for live meter events
    # verify beside a daemon: half the budget, every level halved alike
    half = limiter_for(live, 25)
    assert (half.rate, half.endpoint_rate) == (25, 6.25)
    assert half.schedule.endpoint_bucket(METER_EVENTS).rate == 250


def test_describe_budget() -> None:
    assert describe_budget(load_config(None, {})) == (
        "rate budget: 12.5 requests/s (half of test mode's 25/s; 12.5/s per endpoint)"
    )
    assert describe_budget(load_config(None, {"SYNCD_STRIPE_MODE": "live"})) == (
        "rate budget: 50 requests/s (half of live mode's 100/s; 12.5/s per endpoint;"
        " meter events 500/s apart)"
    )
    assert describe_budget(load_config(None, {"SYNCD_STRIPE_RATE_SHARE": "0.3"})) == (
        "rate budget: 7.5 requests/s (30% of test mode's 25/s; 7.5/s per endpoint)"
    )
    assert describe_budget(load_config(None, {"SYNCD_STRIPE_RATE_LIMIT": "20"})) == (
        "rate budget: 20 requests/s (stripe.rate_limit; test mode allows 25/s; 20/s per endpoint)"
    )


def test_check_prints_the_budget() -> None:
    env = {
        # Nothing listens there: check reports it, and the budget line still comes.
        "DATABASE_URL": f"postgresql://syncd@127.0.0.1:{free_port()}/app",
        "SYNCD_DATABASE_CONNECT_TIMEOUT": "2",
        "SYNCD_STRIPE_MODE": "live",
    }
    result = syncd_cli("check", env=env)
    assert result.returncode == 1, result.stderr
    assert (
        "ok   rate budget: 50 requests/s (half of live mode's 100/s; 12.5/s per endpoint;"
        " meter events 500/s apart)"
    ) in result.stdout.splitlines()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SYNCD_STRIPE_RATE_SHARE": "1.5"}, "stripe.rate_share: 1.5 is above the maximum 1"),
        ({"SYNCD_STRIPE_RATE_SHARE": "0"}, "stripe.rate_share: 0.0 is below the minimum 0.01"),
        ({"SYNCD_STRIPE_RATE_SHARE": "half"}, "stripe.rate_share: SYNCD_STRIPE_RATE_SHARE='half'"),
        (
            {"SYNCD_STRIPE_ENDPOINT_RATE_LIMIT": "-1"},
            "stripe.endpoint_rate_limit: -1.0 is below the minimum 0",
        ),
    ],
)
def test_bad_rate_share_is_one_line_and_exit_2(env: dict[str, str], expected: str) -> None:
    result = syncd_cli("config", env=env)
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"syncd: error: {expected}"), result.stderr


# through the real SDK, against the emulator enforcing Stripe's limits ---------------------------
LISTS = ["customers", "products", "prices", "invoices", "subscriptions", "charges"]


def emulator_cfg(emu: Emulator, **stripe: Any) -> Config:
    cfg = Config(stripe=StripeConfig(api_key=KEY, api_base=emu.url, max_retries=6, **stripe))
    return dataclasses.replace(cfg, source="test")


async def hammer(api: StripeAPI, lists: list[str], workers: int, seconds: float) -> float:
    """`workers` tasks per list endpoint, each listing as fast as the limiter lets it, for
    `seconds`; the time it took."""
    started = time.monotonic()

    async def worker(name: str) -> None:
        while time.monotonic() - started < seconds:
            await api.get_page(f"/v1/{name}", {"limit": 1})

    await asyncio.gather(*(worker(name) for name in lists for _ in range(workers)))
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("mode", "share", "lists"),
    [("test", 1.0, LISTS), ("test", 0.5, LISTS), ("live", 1.0, LISTS[:2])],
)
async def test_several_endpoints_at_stripes_limits(
    mode: str, share: float, lists: list[str]
) -> None:
    async with Emulator.running(port=0, seed=1, stripe_limits=mode) as emu:
        cfg = emulator_cfg(emu, mode=mode, rate_share=share)
        if mode == "live":  # the emulator takes test keys only; the mode sets the limits
            cfg = dataclasses.replace(cfg, stripe=dataclasses.replace(cfg.stripe, mode="live"))
        async with StripeAPI(cfg) as api:
            elapsed = await hammer(api, lists, workers=3, seconds=3.0)
            counters = emu.limits.counters_json()
    served, limited = counters["served"], counters["limited"]
    per_endpoint = {e: c["served"] for e, c in counters["endpoints"].items()}
    assert set(per_endpoint) == {f"GET /v1/{name}" for name in lists}
    # (Almost) no 429s, at the whole account's rate too.
    assert limited <= max(2, served // 100), counters
    # The budget is used: the global rate with six endpoints, the endpoints' own with two
    # (live mode: 100/s allowed, 25/s each). Never more (a property of the limiter, not timing).
    expected = min(cfg.rate_limit, len(lists) * cfg.endpoint_rate_limit)
    assert served >= 0.6 * expected * elapsed, (served, expected, elapsed)
    assert served <= expected * elapsed + cfg.rate_limit / 10 + len(lists) * 3
    fair = served / len(lists)
    assert all(n >= fair / 2 for n in per_endpoint.values()), per_endpoint


async def test_an_endpoint_limit_syncd_does_not_know_slows_that_endpoint_only() -> None:
    """Stripe holds `GET /v1/customers` to 3/s (a per-resource limit syncd is not told about):
    its 429s (`endpoint-rate`) slow that endpoint, never the global budget or the others."""
    async with Emulator.running(port=0, seed=1, stripe_limits="test") as emu:
        emu.limits.configure(endpoint_rates={"GET /v1/customers": 3})
        cfg = emulator_cfg(emu, rate_share=1.0)
        async with StripeAPI(cfg) as api:
            await hammer(api, ["customers", "products"], workers=2, seconds=3.0)
            schedule = api.limiter.schedule
            counters = emu.limits.counters_json()
    customers = counters["endpoints"]["GET /v1/customers"]
    products = counters["endpoints"]["GET /v1/products"]
    assert customers["limited"] >= 1 and products["limited"] == 0, counters
    assert counters["by_reason"] == {"endpoint-rate": customers["limited"]}
    assert schedule.endpoint_bucket("GET /v1/customers").factor < 1.0
    assert schedule.global_bucket.factor == 1.0
    assert schedule.endpoint_bucket("GET /v1/products").factor == 1.0
    # Slowed, the endpoint stops hammering: most of its requests are served.
    assert customers["limited"] <= customers["served"], counters
