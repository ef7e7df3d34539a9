"""Idempotent replay/conflict, meter-event validation and dedup, legacy usage records."""

from __future__ import annotations

import time
from typing import Any

import pytest
import stripe

from syncd.emulator import Emulator


async def test_idempotent_replay_and_conflict(emu: Emulator, raw: Any) -> None:
    h = {"Idempotency-Key": "abc"}
    async with raw.post("/v1/customers", data={"email": "a@x.io"}, headers=h) as r:
        first = await r.read()
        assert r.status == 200 and "Idempotent-Replayed" not in r.headers
    async with raw.post("/v1/customers", data={"email": "a@x.io"}, headers=h) as r:
        assert r.status == 200 and r.headers["Idempotent-Replayed"] == "true"
        assert await r.read() == first
    assert len(emu.objects("customer")) == 1
    async with raw.post("/v1/customers", data={"email": "other@x.io"}, headers=h) as r:
        body = await r.json()
        assert r.status == 400 and body["error"]["type"] == "idempotency_error"
    # errors replay too
    h2 = {"Idempotency-Key": "err"}
    for _ in range(2):
        async with raw.post("/v1/customers/cus_nope", data={"name": "x"}, headers=h2) as r:
            assert r.status == 404
    # keys expire after 24h of emulator time
    emu.clock.advance(24 * 3600 + 1)
    async with raw.post("/v1/customers", data={"email": "other@x.io"}, headers=h) as r:
        assert r.status == 200 and "Idempotent-Replayed" not in r.headers


async def test_sdk_idempotency(emu: Emulator, aclient: stripe.StripeClient) -> None:
    a = await aclient.v1.customers.create_async({"name": "n"}, options={"idempotency_key": "z"})
    b = await aclient.v1.customers.create_async({"name": "n"}, options={"idempotency_key": "z"})
    assert a.id == b.id
    with pytest.raises(stripe.IdempotencyError):
        await aclient.v1.customers.create_async({"name": "m"}, options={"idempotency_key": "z"})


async def _meter(c: stripe.StripeClient, **kw: Any) -> Any:
    params = {
        "display_name": "Tokens",
        "event_name": "tokens",
        "default_aggregation": {"formula": "sum"},
        **kw,
    }
    return await c.v1.billing.meters.create_async(params)


async def test_meter_event_validation(emu: Emulator, aclient: stripe.StripeClient) -> None:
    m = await _meter(aclient)
    cus = await aclient.v1.customers.create_async()
    me = aclient.v1.billing.meter_events
    now = int(time.time())

    async def bad(params: dict[str, Any], param: str) -> None:
        with pytest.raises(stripe.InvalidRequestError) as ei:
            await me.create_async(params)
        assert ei.value.http_status == 400 and ei.value.param == param, ei.value

    base = {"event_name": "tokens", "payload": {"stripe_customer_id": cus.id, "value": "3"}}
    await bad({**base, "event_name": "nope"}, "event_name")
    await bad(
        {**base, "payload": {"stripe_customer_id": "cus_x", "value": "1"}},
        "payload[stripe_customer_id]",
    )
    await bad({**base, "payload": {"stripe_customer_id": cus.id, "value": "abc"}}, "payload[value]")
    await bad({**base, "payload": {"stripe_customer_id": cus.id}}, "payload[value]")
    await bad({**base, "timestamp": now - 36 * 86400}, "timestamp")
    await bad({**base, "timestamp": now + 600}, "timestamp")
    ev = await me.create_async({**base, "identifier": "u1", "timestamp": now - 34 * 86400})
    assert ev.identifier == "u1" and ev.object == "billing.meter_event"
    with pytest.raises(stripe.InvalidRequestError) as ei:
        await me.create_async({**base, "identifier": "u1"})
    assert "already exists" in str(ei.value.user_message)
    await me.create_async({**base, "payload": {"stripe_customer_id": cus.id, "value": "0.5"}})
    assert emu.meter_totals() == {(m.id, cus.id): 3.5}
    emu.clock.advance(24 * 3600 + 1)  # the identifier may be reused after 24 h
    await me.create_async({**base, "identifier": "u1"})
    assert emu.meter_totals()[(m.id, cus.id)] == 6.5
    s = await aclient.v1.billing.meters.event_summaries.list_async(
        m.id, {"customer": cus.id, "start_time": now - 40 * 86400, "end_time": now + 3 * 86400}
    )
    assert s.data[0].aggregated_value == 6.5
    await aclient.v1.billing.meters.deactivate_async(m.id)
    await bad(base, "event_name")


async def test_meter_custom_keys_and_count(emu: Emulator, aclient: stripe.StripeClient) -> None:
    m = await _meter(
        aclient,
        event_name="calls",
        default_aggregation={"formula": "count"},
        customer_mapping={"type": "by_id", "event_payload_key": "cid"},
        value_settings={"event_payload_key": "n"},
    )
    assert m.customer_mapping.event_payload_key == "cid"
    cus = await aclient.v1.customers.create_async()
    for _ in range(4):
        await aclient.v1.billing.meter_events.create_async(
            {"event_name": "calls", "payload": {"cid": cus.id}}
        )
    assert emu.meter_totals() == {(m.id, cus.id): 4}
    lst = await aclient.v1.billing.meters.list_async()
    assert [x.id for x in lst.data] == [m.id]


async def test_legacy_usage_records(emu: Emulator, aclient: stripe.StripeClient, raw: Any) -> None:
    prod = await aclient.v1.products.create_async({"name": "p"})
    price = await aclient.v1.prices.create_async(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount": 1,
            "recurring": {"interval": "month", "usage_type": "metered"},
        }
    )
    cus = await aclient.v1.customers.create_async()
    sub = await aclient.v1.subscriptions.create_async(
        {"customer": cus.id, "items": [{"price": price.id}]}
    )
    si = sub["items"].data[0].id
    path = f"/v1/subscription_items/{si}/usage_records"
    for key, qty in (("a", 5), ("a", 5), ("b", 2)):
        async with raw.post(
            path, data={"quantity": qty, "action": "increment"}, headers={"Idempotency-Key": key}
        ) as r:
            assert r.status == 200
            assert (await r.json())["object"] == "usage_record"
    assert emu.usage_totals() == {si: 7}
    async with raw.post(path, data={"quantity": 1, "action": "set"}) as r:
        assert r.status == 200
    assert emu.usage_totals() == {si: 1}
