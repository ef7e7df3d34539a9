"""List and cursor semantics, default filters, created filters, nested-list truncation."""

from __future__ import annotations

from typing import Any

import stripe

from syncd.emulator import Emulator

from .conftest import make_catalog


async def _get(raw: Any, path: str, **params: Any) -> tuple[int, Any]:
    async with raw.get(path, params=params) as r:
        return r.status, await r.json()


async def test_cursor_semantics_and_errors(emu: Emulator, raw: Any) -> None:
    emu.clock.freeze()
    ids = []
    for i in range(7):
        async with raw.post("/v1/customers", data={"name": str(i)}) as r:
            ids.append((await r.json())["id"])
        if i % 2:
            emu.clock.advance(1)
    st, body = await _get(raw, "/v1/customers", limit=3)
    assert [c["id"] for c in body["data"]] == ids[::-1][:3]
    assert body["has_more"] is True and body["url"] == "/v1/customers"
    st, body = await _get(raw, "/v1/customers", limit=3, starting_after=ids[3])
    assert [c["id"] for c in body["data"]] == [ids[2], ids[1], ids[0]]
    assert body["has_more"] is False
    st, body = await _get(raw, "/v1/customers", limit=2, ending_before=ids[3])
    assert [c["id"] for c in body["data"]] == [ids[5], ids[4]] and body["has_more"] is True
    st, body = await _get(raw, "/v1/customers", limit=2, ending_before=ids[5])
    assert [c["id"] for c in body["data"]] == [ids[6]] and body["has_more"] is False
    st, body = await _get(raw, "/v1/customers", starting_after="cus_nope")
    assert st == 400 and body["error"]["param"] == "starting_after"
    assert "No such customer" in body["error"]["message"]
    for bad in (0, 101, "x"):
        st, body = await _get(raw, "/v1/customers", limit=bad)
        assert st == 400 and body["error"]["param"] == "limit"
    st, body = await _get(raw, "/v1/customers", starting_after=ids[1], ending_before=ids[2])
    assert st == 400


async def test_created_filters(emu: Emulator, raw: Any) -> None:
    emu.clock.freeze(at=1_700_000_000)
    for _ in range(5):
        async with raw.post("/v1/customers"):
            pass
        emu.clock.advance(10)
    t0 = 1_700_000_000

    async def count(**kw: Any) -> int:
        st, body = await _get(raw, "/v1/customers", limit=100, **kw)
        assert st == 200, body
        return len(body["data"])

    assert await count(**{"created[gte]": t0 + 10}) == 4
    assert await count(**{"created[gt]": t0 + 10}) == 3
    assert await count(**{"created[lt]": t0 + 20, "created[gte]": t0}) == 2
    assert await count(**{"created[lte]": t0 + 20}) == 3
    assert await count(created=t0 + 40) == 1


def test_subscription_default_filters(temu: Emulator, sclient: stripe.StripeClient) -> None:
    (price,) = make_catalog(sclient, amount=0)
    cus = sclient.v1.customers.create()
    keep = sclient.v1.subscriptions.create({"customer": cus.id, "items": [{"price": price.id}]})
    gone = sclient.v1.subscriptions.create({"customer": cus.id, "items": [{"price": price.id}]})
    sclient.v1.subscriptions.cancel(gone.id)
    ids = [s.id for s in sclient.v1.subscriptions.list().data]
    assert ids == [keep.id]
    assert {s.id for s in sclient.v1.subscriptions.list({"status": "all"}).data} == {
        keep.id,
        gone.id,
    }
    assert [s.id for s in sclient.v1.subscriptions.list({"status": "canceled"}).data] == [gone.id]
    assert [s.id for s in sclient.v1.subscriptions.list({"price": price.id}).data] == [keep.id]
    other = sclient.v1.customers.create()
    assert sclient.v1.subscriptions.list({"customer": other.id}).data == []


def test_nested_items_truncated_and_paged(temu: Emulator, sclient: stripe.StripeClient) -> None:
    prices = make_catalog(sclient, n_prices=12, amount=0)
    cus = sclient.v1.customers.create()
    sub = sclient.v1.subscriptions.create(
        {"customer": cus.id, "items": [{"price": p.id} for p in prices]}
    )
    items = sub["items"]
    assert len(items.data) == 10 and items.has_more is True and items.total_count == 12
    assert items.url == f"/v1/subscription_items?subscription={sub.id}"
    all_items = [
        i.id
        for i in sclient.v1.subscription_items.list(
            {"subscription": sub.id, "limit": 4}
        ).auto_paging_iter()
    ]
    assert len(all_items) == 12 and all_items[:10] == [i.id for i in items.data]
    # removing an item emits no event of its own, and it retrieves as deleted
    n_events = len(temu.events())
    sclient.v1.subscription_items.delete(all_items[-1])
    assert len(temu.events()) == n_events
    assert sclient.v1.subscription_items.retrieve(all_items[-1]).to_dict()["deleted"] is True
    assert sclient.v1.subscriptions.retrieve(sub.id)["items"].total_count == 11
    # adding via the item endpoint updates the subscription
    si = sclient.v1.subscription_items.create(
        {"subscription": sub.id, "price": prices[0].id, "quantity": 5}
    )
    assert si.quantity == 5
    assert temu.events()[0]["type"] == "customer.subscription.updated"


async def test_expand_customer_on_list(emu: Emulator, aclient: stripe.StripeClient) -> None:
    cus = await aclient.v1.customers.create_async({"email": "e@x.io"})
    await aclient.v1.payment_intents.create_async(
        {"amount": 100, "currency": "usd", "customer": cus.id}
    )
    lst = await aclient.v1.payment_intents.list_async({"expand": ["data.customer"]})
    assert lst.data[0].customer.email == "e@x.io"
    pi = await aclient.v1.payment_intents.retrieve_async(lst.data[0].id, {"expand": ["customer"]})
    assert pi.customer.id == cus.id


async def test_unknown_endpoint_shape(raw: Any) -> None:
    async with raw.get("/v1/unknown_things") as r:
        assert r.status == 404
        assert (await r.json())["error"]["type"] == "invalid_request_error"
