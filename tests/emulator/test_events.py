"""Events API: envelope, snapshots, previous_attributes, filters, retention, late visibility."""

from __future__ import annotations

import asyncio
from typing import Any

import stripe

from syncd.emulator import Emulator


async def _events(raw: Any, **params: Any) -> tuple[int, Any]:
    async with raw.get("/v1/events", params=params) as r:
        return r.status, await r.json()


async def test_envelope_snapshot_and_previous(
    emu: Emulator, aclient: stripe.StripeClient, raw: Any
) -> None:
    cus = await aclient.v1.customers.create_async(
        {"email": "a@x.io"}, options={"idempotency_key": "k1"}
    )
    await aclient.v1.customers.update_async(cus.id, {"email": "b@x.io", "metadata": {"n": "1"}})
    _, body = await _events(raw)
    upd, created = body["data"]
    assert created["type"] == "customer.created" and upd["type"] == "customer.updated"
    assert set(created) == {
        "id",
        "object",
        "api_version",
        "created",
        "data",
        "livemode",
        "pending_webhooks",
        "request",
        "type",
    }
    assert created["id"].startswith("evt_") and created["object"] == "event"
    assert created["request"]["idempotency_key"] == "k1"
    assert created["request"]["id"].startswith("req_")
    # snapshot at event time, not a live reference
    assert created["data"]["object"]["email"] == "a@x.io"
    assert upd["data"]["object"]["email"] == "b@x.io"
    assert upd["data"]["previous_attributes"] == {"email": "a@x.io", "metadata": {"n": ""}}
    one = await aclient.v1.events.retrieve_async(created["id"])
    assert one.data.object.email == "a@x.io"


async def test_type_filters(emu: Emulator, aclient: stripe.StripeClient, raw: Any) -> None:
    cus = await aclient.v1.customers.create_async()
    await aclient.v1.products.create_async({"name": "p"})
    await aclient.v1.customers.delete_async(cus.id)
    st, body = await _events(raw, type="customer.*")
    assert [e["type"] for e in body["data"]] == ["customer.deleted", "customer.created"]
    st, body = await _events(raw, **{"types[]": ["product.created", "customer.deleted"]})
    assert [e["type"] for e in body["data"]] == ["customer.deleted", "product.created"]
    st, body = await _events(raw, **{f"types[{i}]": f"t{i}.x" for i in range(21)})
    assert st == 400 and body["error"]["param"] == "types"
    lst = await aclient.v1.events.list_async({"types": ["customer.created"]})
    assert [e.type for e in lst.data] == ["customer.created"]


async def test_same_second_burst_and_order(emu: Emulator, aclient: stripe.StripeClient) -> None:
    emu.set_burst(True)
    emu.clock.advance(5)  # burst keeps the second it was switched on in
    c = await aclient.v1.customers.create_async()
    for i in range(3):
        await aclient.v1.customers.update_async(c.id, {"name": str(i)})
    emu.set_burst(False)
    evs = (await aclient.v1.events.list_async()).data
    assert len({e.created for e in evs}) == 1
    assert [e.data.object.name for e in evs] == ["2", "1", "0", None]


async def test_retention_expiry(emu: Emulator, aclient: stripe.StripeClient, raw: Any) -> None:
    old = await aclient.v1.customers.create_async()
    old_evt = (await aclient.v1.events.list_async()).data[0].id
    emu.clock.advance(31 * 86400)
    await aclient.v1.customers.update_async(old.id, {"name": "new"})
    st, body = await _events(raw)
    assert [e["type"] for e in body["data"]] == ["customer.updated"]
    st, body = await _events(raw, starting_after=old_evt)
    assert st == 400 and body["error"]["param"] == "starting_after"
    assert "30 days" in body["error"]["message"]
    st, body = await _events(raw, ending_before=old_evt)
    assert st == 400
    try:
        await aclient.v1.events.retrieve_async(old_evt)
        raise AssertionError("expected 404")
    except stripe.InvalidRequestError as e:
        assert e.http_status == 404
    # the customer itself is not subject to retention
    assert (await aclient.v1.customers.retrieve_async(old.id)).name == "new"


async def test_late_visibility(emu: Emulator, aclient: stripe.StripeClient) -> None:
    emu.set_late_visibility(150, 150)
    c = await aclient.v1.customers.create_async()
    emu.clear_late_visibility()
    await aclient.v1.customers.update_async(c.id, {"name": "later"})
    seen = [e.type for e in (await aclient.v1.events.list_async()).data]
    assert seen == ["customer.updated"]  # the later event is visible first
    await asyncio.sleep(0.2)
    seen = [e.type for e in (await aclient.v1.events.list_async()).data]
    assert seen == ["customer.updated", "customer.created"]


async def test_late_visibility_is_seeded(emu: Emulator) -> None:
    delays = []
    for seed in (5, 5):
        async with Emulator.running(seed=seed, late_visibility_ms=(0, 1000)) as e:
            for _ in range(3):
                e.locked(
                    lambda e=e: e.state.emit(
                        "customer.created",
                        e.state.insert({"id": e.state.new_id("cus_"), "object": "customer"}),
                    )
                )
            vis = [r.extra["visible_at"] for r in e.state.coll("event").records]
            delays.append([round(v - vis[0], 2) for v in vis])
    assert delays[0] == delays[1]


async def test_subscription_events(emu: Emulator, aclient: stripe.StripeClient) -> None:
    prod = await aclient.v1.products.create_async({"name": "p"})
    price = await aclient.v1.prices.create_async(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount": 500,
            "recurring": {"interval": "month"},
        }
    )
    cus = await aclient.v1.customers.create_async({"payment_method": "pm_card_visa"})
    pm = (await aclient.v1.payment_methods.list_async({"customer": cus.id})).data[0]
    sub = await aclient.v1.subscriptions.create_async(
        {"customer": cus.id, "items": [{"price": price.id}], "default_payment_method": pm.id}
    )
    types = [e["type"] for e in reversed(emu.events())]
    # The first invoice exists before customer.subscription.created, whose object names it as
    # latest_invoice as Stripe's does (tests/data/stripe/events/subscription_created.json);
    # Stripe does not promise the order of events in one second.
    i = types.index("invoice.created")
    assert types[i:] == [
        "invoice.created",
        "customer.subscription.created",
        "invoice.finalized",
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.succeeded",
        "invoice.paid",
        "invoice.payment_succeeded",
        "customer.subscription.updated",
    ]
    created = next(e for e in emu.events() if e["type"] == "customer.subscription.created")
    assert created["data"]["object"]["status"] == "incomplete"
    assert created["data"]["object"]["latest_invoice"] is not None
    assert "current_period_start" in created["data"]["object"]["items"]["data"][0]
    await aclient.v1.subscriptions.cancel_async(sub.id)
    assert emu.events()[0]["type"] == "customer.subscription.deleted"
    assert emu.events()[0]["data"]["object"]["status"] == "canceled"
