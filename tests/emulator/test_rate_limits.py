"""Stripe's limits in the emulator: global and per-endpoint rates, meter-event rate and
concurrency, the 429 Stripe answers, counters, the control API and the CLI flags.

Most tests freeze the limiter's own clock so the counts are exact on any machine; one burst runs
on the real clock and bounds its counts by the time the burst took.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp
import pytest
import stripe

from syncd.emulator import Emulator
from syncd.emulator.cli import configure_parser, emulator_from_args
from syncd.emulator.errors import (
    LIVE_RATE_LIMIT_MESSAGE,
    METER_CONCURRENCY_MESSAGE,
    RATE_LIMIT_MESSAGE,
)
from syncd.emulator.limits import LimitConfig, endpoint_template
from syncd.stripe_api import endpoint_label

REASON = "Stripe-Rate-Limited-Reason"


class FrozenClock:
    """Stands in for ``time.monotonic`` in the limiter: buckets refill only when told to."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def frozen(emu: Emulator) -> FrozenClock:
    clock = FrozenClock()
    emu.limits.clock = clock
    return clock


@pytest.fixture
async def control(emu: Emulator) -> Any:
    async with aiohttp.ClientSession(base_url=emu.url) as s:
        yield s


async def hit(raw: Any, path: str, n: int = 1, method: str = "GET", **kw: Any) -> list[int]:
    """Statuses of ``n`` sequential requests."""
    out = []
    for _ in range(n):
        async with raw.request(method, path, **kw) as r:
            await r.read()
            out.append(r.status)
    return out


async def reasons(raw: Any, path: str, n: int) -> list[str | None]:
    out = []
    for _ in range(n):
        async with raw.get(path) as r:
            await r.read()
            out.append(r.headers.get(REASON) if r.status == 429 else None)
    return out


async def setup_meter(aclient: stripe.StripeClient, customers: int = 1) -> tuple[str, list[str]]:
    meter = await aclient.v1.billing.meters.create_async(
        {
            "display_name": "Tokens",
            "event_name": "tokens",
            "default_aggregation": {"formula": "sum"},
        }
    )
    cus = [(await aclient.v1.customers.create_async()).id for _ in range(customers)]
    return meter.id, cus


def meter_event(customer: str) -> dict[str, str]:
    return {"event_name": "tokens", "payload[stripe_customer_id]": customer, "payload[value]": "1"}


# endpoints -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "route", "path"),
    [
        ("GET", "/v1/customers/{id}", "/v1/customers/cus_NffrFeUf2"),
        ("GET", "/v1/customers/{cid}/tax_ids/{id}", "/v1/customers/cus_Q1/tax_ids/txi_Zz9"),
        ("POST", "/v1/billing/meter_events", "/v1/billing/meter_events"),
        ("GET", "/v1/subscription_schedules/{id}", "/v1/subscription_schedules/sub_sched_1AbC"),
    ],
)
def test_endpoint_template_matches_syncd_labels(method: str, route: str, path: str) -> None:
    expected = f"{method} {endpoint_label(path)}"
    assert endpoint_template(method, route) == expected
    assert endpoint_template(method, path) == expected


async def test_off_by_default(emu: Emulator, raw: Any) -> None:
    assert emu.limits.config == LimitConfig()
    assert set(await hit(raw, "/v1/customers", 120)) == {200}
    assert emu.limits.count() == (120, 0)


# the global limit ------------------------------------------------------------------------------
async def test_global_limit_on_a_real_burst(emu: Emulator, raw: Any) -> None:
    async def one() -> int:
        async with raw.get("/v1/customers") as r:
            await r.read()
            return int(r.status)

    emu.limits.configure(global_rate=25)
    assert set(await asyncio.gather(*(one() for _ in range(20)))) == {200}  # below the limit

    emu.limits.configure(global_rate=25)  # a fresh, full bucket
    t0 = time.monotonic()
    statuses = await asyncio.gather(*(one() for _ in range(60)))
    elapsed = time.monotonic() - t0
    ok, limited = statuses.count(200), statuses.count(429)
    assert ok + limited == 60
    # One second's worth at once, then 25/s for as long as the burst lasted.
    assert 25 <= ok <= 25 + 25 * elapsed + 1, (ok, elapsed)
    if elapsed < 1.0:
        assert limited >= 1


async def test_global_limit_counts(emu: Emulator, raw: Any, frozen: FrozenClock) -> None:
    emu.limits.configure(global_rate=25)
    statuses = await hit(raw, "/v1/customers", 40)
    assert statuses == [200] * 25 + [429] * 15
    frozen.advance(0.2)  # refills 5 tokens
    assert await hit(raw, "/v1/products", 7) == [200] * 5 + [429] * 2
    frozen.advance(60)  # the bucket holds one second's worth, not a minute's
    assert (await hit(raw, "/v1/prices", 30)).count(200) == 25


# per-endpoint limits ---------------------------------------------------------------------------
async def test_endpoint_limit_is_per_template(emu: Emulator, raw: Any, frozen: FrozenClock) -> None:
    emu.limits.configure(endpoint_rate=25)
    assert await reasons(raw, "/v1/customers", 30) == [None] * 25 + ["endpoint-rate"] * 5
    assert (await hit(raw, "/v1/products", 30)).count(200) == 25  # its own 25/s
    assert await hit(raw, "/v1/customers", method="POST") == [200]  # another endpoint
    # Different ids share `GET /v1/customers/{id}` (the unknown ids answer 404, still counted).
    statuses = [
        s
        for cid in ("cus_A1", "cus_B2", "cus_C3")
        for s in await hit(raw, f"/v1/customers/{cid}", 10)
    ]
    assert statuses.count(429) == 5 and statuses.count(404) == 25
    assert emu.limits.count("GET /v1/customers/{id}") == (30, 5)


async def test_endpoint_override_and_global_together(
    emu: Emulator, raw: Any, frozen: FrozenClock
) -> None:
    emu.limits.configure(global_rate=30, endpoint_rate=25, endpoint_rates={"GET /v1/products": 2})
    assert await reasons(raw, "/v1/products", 3) == [None, None, "endpoint-rate"]
    assert (await reasons(raw, "/v1/customers", 30))[24:] == [None] + ["endpoint-rate"] * 5
    # The 429s spent no global token: 30 - 2 - 25 are left for everyone else.
    assert await reasons(raw, "/v1/prices", 5) == [None] * 3 + ["global-rate"] * 2


# the answer ------------------------------------------------------------------------------------
async def test_429_body_and_headers(emu: Emulator, raw: Any, frozen: FrozenClock) -> None:
    emu.limits.configure(global_rate=1)
    assert await hit(raw, "/v1/customers") == [200]
    async with raw.get("/v1/customers") as r:
        assert r.status == 429
        assert r.headers["Content-Type"].startswith("application/json")
        assert r.headers[REASON] == "global-rate"
        assert "Stripe-Should-Retry" not in r.headers  # Stripe's SDKs do not retry these
        assert r.headers["Stripe-Version"]
        assert await r.json() == {
            "error": {
                "type": "invalid_request_error",
                "code": "rate_limit",
                "message": RATE_LIMIT_MESSAGE,
                "doc_url": "https://stripe.com/docs/error-codes/rate-limit",
            }
        }
    emu.limits.configure(mode="live")  # Stripe words the live-mode answer differently
    await hit(raw, "/v1/customers")
    async with raw.get("/v1/customers") as r:
        assert (await r.json())["error"]["message"] == LIVE_RATE_LIMIT_MESSAGE


async def test_sdk_raises_and_does_not_retry(emu: Emulator, frozen: FrozenClock) -> None:
    http = stripe.AIOHTTPClient()
    client = emu.client(http_client=http, max_network_retries=3)
    try:
        emu.limits.configure(global_rate=1)
        await client.v1.customers.list_async()
        with pytest.raises(stripe.RateLimitError) as ei:
            await client.v1.customers.list_async()
        assert ei.value.http_status == 429
        assert ei.value.error is not None and ei.value.error.code == "rate_limit"
        assert emu.limits.count() == (2, 1)  # the SDK sent it once despite max_network_retries
    finally:
        await http.close_async()


async def test_limited_request_does_not_execute(
    emu: Emulator, raw: Any, frozen: FrozenClock
) -> None:
    emu.limits.configure(global_rate=3)
    for i in range(6):
        await hit(raw, "/v1/customers", method="POST", data={"email": f"c{i}@x.io"})
    assert sorted(c["email"] for c in emu.objects("customer")) == [f"c{i}@x.io" for i in range(3)]
    assert len(emu.events("customer.created")) == 3
    # A 429 is not remembered under its idempotency key: the retry executes, once.
    h = {"Idempotency-Key": "k1"}
    retried = {"method": "POST", "data": {"email": "k@x.io"}, "headers": h}
    assert await hit(raw, "/v1/customers", **retried) == [429]
    frozen.advance(1)
    async with raw.post("/v1/customers", data={"email": "k@x.io"}, headers=h) as r:
        assert r.status == 200 and "Idempotent-Replayed" not in r.headers
    assert [c["email"] for c in emu.objects("customer")].count("k@x.io") == 1


# meter events ----------------------------------------------------------------------------------
async def test_meter_event_rate_is_separate(
    emu: Emulator, aclient: stripe.StripeClient, raw: Any, frozen: FrozenClock
) -> None:
    meter, [cus] = await setup_meter(aclient)
    emu.limits.configure(meter_event_rate=3, global_rate=2)
    statuses = await hit(raw, "/v1/billing/meter_events", 5, method="POST", data=meter_event(cus))
    assert statuses == [200] * 3 + [429] * 2
    assert emu.meter_totals() == {(meter, cus): 3}
    assert emu.limits.count("POST /v1/billing/meter_events") == (5, 2)
    # Meter events spent none of the global budget (Stripe's live mode).
    assert await reasons(raw, "/v1/customers", 3) == [None, None, "global-rate"]


@pytest.mark.parametrize("mode", ["test", "live"])
async def test_meter_events_and_the_basic_limits(
    emu: Emulator, aclient: stripe.StripeClient, raw: Any, frozen: FrozenClock, mode: str
) -> None:
    _, [cus] = await setup_meter(aclient)
    emu.limits.use_stripe_limits(mode)
    statuses = await hit(raw, "/v1/billing/meter_events", 20, method="POST", data=meter_event(cus))
    assert set(statuses) == {200}
    customers = await hit(raw, "/v1/customers", 25)
    # Test mode: meter events count toward the 25/s global limit; live: they have their own.
    assert customers.count(200) == (5 if mode == "test" else 25)


async def test_one_meter_event_in_flight_per_customer_and_meter(
    emu: Emulator, aclient: stripe.StripeClient, raw: Any
) -> None:
    _, [a, b] = await setup_meter(aclient, customers=2)
    # Latency keeps each request in flight long enough for the next one to overlap it.
    emu.faults.set(pattern="POST /v1/billing/meter_events", latency_ms=500)

    async def send(cus: str) -> tuple[int, str | None, Any]:
        async with raw.post("/v1/billing/meter_events", data=meter_event(cus)) as r:
            return r.status, r.headers.get(REASON), await r.json()

    # Off by default: two at once for one customer both pass.
    assert [s for s, _, _ in await asyncio.gather(send(a), send(a))] == [200, 200]

    emu.limits.configure(meter_event_concurrency=True)
    results = sorted(await asyncio.gather(send(a), send(a)), key=lambda x: x[0])
    assert [(s, reason) for s, reason, _ in results] == [
        (200, None),
        (429, "endpoint-concurrency"),
    ]
    assert results[1][2]["error"]["code"] == "rate_limit"
    assert results[1][2]["error"]["message"] == METER_CONCURRENCY_MESSAGE
    # Different customers do not contend, and a finished request frees its slot.
    assert [s for s, _, _ in await asyncio.gather(send(a), send(b))] == [200, 200]
    assert (await send(a))[0] == 200
    assert emu.limits.counters_json()["by_reason"] == {"endpoint-concurrency": 1}


async def test_meter_slot_freed_after_an_error(
    emu: Emulator, aclient: stripe.StripeClient, raw: Any
) -> None:
    _, [cus] = await setup_meter(aclient)
    emu.limits.configure(meter_event_concurrency=True)
    bad = {**meter_event(cus), "payload[value]": "abc"}
    assert await hit(raw, "/v1/billing/meter_events", method="POST", data=bad) == [400]
    assert await hit(raw, "/v1/billing/meter_events", method="POST", data=meter_event(cus)) == [200]


# counters and control --------------------------------------------------------------------------
async def test_counters(emu: Emulator, raw: Any, control: Any, frozen: FrozenClock) -> None:
    emu.limits.configure(endpoint_rate=25)
    await hit(raw, "/v1/customers", 30)
    await hit(raw, "/v1/products", 3)
    async with control.get("/_emulator/limits") as r:
        counters = (await r.json())["counters"]
    assert counters["endpoints"] == {
        "GET /v1/customers": {"requests": 30, "limited": 5, "served": 25},
        "GET /v1/products": {"requests": 3, "limited": 0, "served": 3},
    }
    assert (counters["requests"], counters["limited"], counters["served"]) == (33, 5, 28)
    assert counters["limited_fraction"] == pytest.approx(5 / 33)
    assert counters["by_reason"] == {"endpoint-rate": 5}
    assert emu.stats.count("GET /v1/customers", 429) == 5  # the request stats agree
    async with control.delete("/_emulator/limits/counters") as r:
        body = await r.json()
    assert body["counters"]["requests"] == 0 and body["endpoint_rate"] == 25  # config kept


async def test_control_api_set_and_clear(emu: Emulator, raw: Any, control: Any) -> None:
    async def post(body: Any, status: int = 200) -> Any:
        async with control.post("/_emulator/limits", json=body) as r:
            assert r.status == status, await r.text()
            return await r.json()

    cfg = await post({"stripe_limits": "test"})
    assert (cfg["global_rate"], cfg["endpoint_rate"], cfg["meter_event_rate"]) == (25, 25, None)
    assert cfg["meter_event_concurrency"] is True and cfg["mode"] == "test"
    cfg = await post({"stripe_limits": "live"})
    assert (cfg["global_rate"], cfg["meter_event_rate"], cfg["mode"]) == (100, 1000, "live")
    cfg = await post({"global_rate": None, "endpoint_rate": True})  # the other fields stay
    assert (cfg["global_rate"], cfg["endpoint_rate"], cfg["mode"]) == (None, 25, "live")
    cfg = await post({"endpoint_rates": {"get /v1/customers/cus_Abc1": 5}})
    assert cfg["endpoint_rates"] == {"GET /v1/customers/{id}": 5}
    for bad in ({"stripe_limits": "prod"}, {"bogus": 1}, {"global_rate": -1}, {"mode": "x"}):
        assert "error" in await post(bad, 400)
    await post({"global_rate": 7})
    async with control.get("/_emulator/ratelimit") as r:  # the older control sees the same
        assert await r.json() == {"rate": 7, "burst": 7}
    async with control.delete("/_emulator/limits") as r:
        cfg = await r.json()
    assert {k: cfg[k] for k in ("global_rate", "endpoint_rate", "meter_event_rate")} == {
        "global_rate": None,
        "endpoint_rate": None,
        "meter_event_rate": None,
    }
    assert cfg["meter_event_concurrency"] is False and cfg["endpoint_rates"] == {}
    assert set(await hit(raw, "/v1/customers", 30)) == {200}
    await post({"stripe_limits": "test"})
    async with control.post("/_emulator/reset", json={}) as r:
        assert r.status == 200
    assert emu.limits.config == LimitConfig() and emu.limits.count() == (0, 0)


async def test_older_rate_limiter_is_the_global_limit(emu: Emulator) -> None:
    emu.limiter.configure(5, burst=2)
    assert emu.limits.config == LimitConfig(global_rate=5, global_burst=2)
    assert emu.limiter.as_json() == {"rate": 5, "burst": 2}
    emu.limits.configure(endpoint_rate=25)
    emu.limiter.configure(None)  # turns off only what it turned on
    assert emu.limits.config == LimitConfig(endpoint_rate=25)
    assert emu.limiter.as_json() == {"rate": None, "burst": 0.0}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], LimitConfig()),
        (["--rate-limit", "7"], LimitConfig(global_rate=7)),
        (["--rate-limit", "7", "--global-rate", "9"], LimitConfig(global_rate=9)),
        (["--endpoint-rate"], LimitConfig(endpoint_rate=25)),
        (
            ["--meter-event-rate", "50", "--meter-event-concurrency"],
            LimitConfig(meter_event_rate=50, meter_event_concurrency=True),
        ),
        (
            ["--stripe-limits", "live", "--endpoint-rate", "10"],
            LimitConfig(
                global_rate=100,
                endpoint_rate=10,
                meter_event_rate=1000,
                meter_event_concurrency=True,
                mode="live",
            ),
        ),
        (["--stripe-limits", "test"], LimitConfig.stripe("test")),
    ],
)
def test_cli_flags(argv: list[str], expected: LimitConfig) -> None:
    p = argparse.ArgumentParser()
    configure_parser(p)
    assert emulator_from_args(p.parse_args(argv)).limits.config == expected
