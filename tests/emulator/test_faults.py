"""Injected faults, the rate limiter and request counters."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest
import stripe

from syncd.emulator import Emulator


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_error_rates(emu: Emulator, raw: Any, status: int) -> None:
    emu.faults.set(pattern="GET /v1/customers", status=status, error_rate=1.0, times=2)
    for _ in range(2):
        async with raw.get("/v1/customers") as r:
            assert r.status == status
            assert r.headers["Stripe-Should-Retry"] == "true"
            assert "error" in await r.json()
    async with raw.get("/v1/customers") as r:
        assert r.status == 200
    async with raw.post("/v1/customers") as r:  # pattern is method-specific
        assert r.status == 200
    assert emu.stats.count("GET /v1/customers", status) == 2
    assert emu.stats.count("GET /v1/customers", 200) == 1


async def test_sdk_sees_rate_limit_error(emu: Emulator, aclient: stripe.StripeClient) -> None:
    emu.faults.set(pattern="/v1/customers*", status=429, error_rate=1.0)
    with pytest.raises(stripe.RateLimitError):
        await aclient.v1.customers.list_async()


async def test_partial_error_rate_is_seeded(emu: Emulator, raw: Any) -> None:
    emu.faults.set(pattern="*", status=500, error_rate=0.5)
    codes = []
    for _ in range(40):
        async with raw.get("/v1/customers") as r:
            codes.append(r.status)
    assert 5 < codes.count(500) < 35


async def test_latency_and_jitter(emu: Emulator, raw: Any) -> None:
    emu.faults.set(pattern="GET /v1/products", latency_ms=120, jitter_ms=30)
    t = time.monotonic()
    async with raw.get("/v1/products") as r:
        assert r.status == 200
    assert 0.11 < time.monotonic() - t < 1.0
    t = time.monotonic()
    async with raw.get("/v1/customers") as r:
        assert r.status == 200
    assert time.monotonic() - t < 0.1


async def test_dropped_connection(emu: Emulator, raw: Any) -> None:
    # aiohttp's client transparently retries a dropped idempotent request once: drop twice
    emu.faults.set(pattern="GET /v1/customers", drop_rate=1.0, times=2)
    with pytest.raises(aiohttp.ClientError):
        async with raw.get("/v1/customers") as r:
            await r.read()
    async with raw.get("/v1/customers") as r:
        assert r.status == 200
    assert emu.stats.dropped["GET /v1/customers"] == 2


async def test_sdk_dropped_connection(emu: Emulator, aclient: stripe.StripeClient) -> None:
    emu.faults.set(pattern="*", drop_rate=1.0)
    with pytest.raises(stripe.APIConnectionError):
        await aclient.v1.customers.list_async()
    emu.faults.clear()
    await aclient.v1.customers.list_async()


async def test_lock_contention(emu: Emulator, aclient: stripe.StripeClient, raw: Any) -> None:
    cus = await aclient.v1.customers.create_async()
    other = await aclient.v1.customers.create_async()
    emu.faults.set(lock_object_id=cus.id, times=1)
    with pytest.raises(stripe.RateLimitError) as ei:
        await aclient.v1.customers.update_async(cus.id, {"name": "x"})
    assert ei.value.error is not None and ei.value.error.code == "lock_timeout"
    await aclient.v1.customers.update_async(other.id, {"name": "x"})
    await aclient.v1.customers.update_async(cus.id, {"name": "x"})


async def test_rate_limiter(emu: Emulator, raw: Any) -> None:
    emu.limiter.configure(25)
    statuses = []
    for _ in range(40):
        async with raw.get("/v1/customers") as r:
            statuses.append(r.status)
            if r.status == 429:
                body = await r.json()
                assert body["error"]["code"] == "rate_limit"
    assert statuses.count(200) in range(25, 29) and statuses.count(429) >= 11
    await asyncio.sleep(0.2)
    async with raw.get("/v1/customers") as r:
        assert r.status == 200
    emu.limiter.configure(None)


async def test_control_endpoints_for_faults(emu: Emulator) -> None:
    async with aiohttp.ClientSession(base_url=emu.url) as s:
        async with s.post(
            "/_emulator/faults", json={"pattern": "GET /v1/prices", "status": 503, "error_rate": 1}
        ) as r:
            assert r.status == 200
        async with s.get("/v1/prices", headers={"Authorization": "Bearer sk_test_1"}) as r:
            assert r.status == 503
        async with s.delete("/_emulator/faults") as r:
            assert (await r.json())["rules"] == []
        async with s.post("/_emulator/ratelimit", json={"rate": 1}) as r:
            assert (await r.json())["rate"] == 1
        async with s.post("/_emulator/ratelimit", json={"rate": None}) as r:
            assert (await r.json())["rate"] is None
        async with s.get("/_emulator/stats") as r:
            stats = await r.json()
            assert stats["endpoints"]["GET /v1/prices"]["503"] == 1


@pytest.mark.parametrize("status", [200, 502])
async def test_html_instead_of_the_api(emu: Emulator, raw: Any, status: int) -> None:
    """A proxy or load balancer answering: an HTML page with the rule's status, not JSON."""
    emu.faults.set(
        pattern="GET /v1/customers", bad_body="html", status=status, error_rate=1.0, times=1
    )
    async with raw.get("/v1/customers") as r:
        assert r.status == status
        assert r.headers["Content-Type"].startswith("text/html")
        body = await r.read()
    assert body.startswith(b"<html>")
    with pytest.raises(ValueError):
        orjson.loads(body)
    async with raw.get("/v1/customers") as r:  # `times` ran out
        assert r.status == 200 and (await r.json())["object"] == "list"


async def test_truncated_answer_took_effect(emu: Emulator, raw: Any) -> None:
    emu.faults.set(pattern="POST /v1/customers", bad_body="truncated", error_rate=1.0, times=1)
    async with raw.post("/v1/customers", data={"email": "cut@example.com"}) as r:
        assert r.status == 200
        body = await r.read()
    with pytest.raises(ValueError):
        orjson.loads(body)
    [customer] = emu.objects("customer")  # the request took effect; its answer was cut short
    assert customer["email"] == "cut@example.com"
    assert orjson.dumps(customer).startswith(body[:20])
    async with raw.get(f"/v1/customers/{customer['id']}") as r:
        assert (await r.json())["id"] == customer["id"]


async def test_bad_body_through_the_control_api(emu: Emulator, raw: Any) -> None:
    async with aiohttp.ClientSession(base_url=emu.url) as s:
        rule = {"pattern": "GET /v1/prices", "bad_body": "html", "status": 502, "error_rate": 1}
        async with s.post("/_emulator/faults", json=rule) as r:
            assert r.status == 200
        async with s.post("/_emulator/faults", json={**rule, "bad_body": "xml"}) as r:
            assert r.status == 400 and "bad_body" in (await r.json())["error"]
    async with raw.get("/v1/prices") as r:
        assert r.status == 502 and (await r.read()).startswith(b"<html>")
