"""Changes Stripe makes to an object without an event of that object are caught from the event
of the object that caused them (apply.IMPLIED): invoice items taken up by an invoice get their
`invoice` in the mirror, in both apply modes."""

from __future__ import annotations

import dataclasses

import pytest

from syncd.emulator import Emulator
from tests.support.events import harness, mirror


@pytest.mark.parametrize("mode", ["refetch", "snapshot"])
async def test_invoice_items_taken_up_by_an_invoice_follow_it(
    db_url: str, emulator: Emulator, mode: str
) -> None:
    async with harness(db_url, emulator, apply_mode=mode) as h:
        customer = await h.user.post("/v1/customers", {"email": "items@example.com"})
        await h.stream.take_cursor()
        items = [
            await h.user.post(
                "/v1/invoiceitems",
                {"customer": customer["id"], "amount": 100 * (i + 1), "currency": "usd"},
            )
            for i in range(3)
        ]
        await h.stream.poll_head()
        stored = await mirror(h.db, "invoice_items")
        assert all(stored[i["id"]][0]["invoice"] is None for i in items)
        invoice = await h.user.post(
            "/v1/invoices",
            {"customer": customer["id"], "pending_invoice_items_behavior": "include"},
        )
        await h.stream.poll_head()
        stored = await mirror(h.db, "invoice_items")
        for item in items:
            served = (await h.user.request("GET", f"/v1/invoiceitems/{item['id']}")).object()
            assert served["invoice"] == invoice["id"]
            assert stored[item["id"]][0] == served


@pytest.mark.parametrize("mode", ["refetch", "snapshot"])
async def test_a_finalized_invoice_refreshes_its_customer(
    db_url: str, emulator: Emulator, mode: str
) -> None:
    """Finalizing numbers the invoice from the customer's `next_invoice_sequence` (and applies
    its balance): Stripe sends no customer.updated; invoice.finalized names the customer."""
    async with harness(db_url, emulator, apply_mode=mode) as h:
        customer = await h.user.post("/v1/customers", {"email": "seq@example.com"})
        await h.stream.take_cursor()
        await h.user.post(
            "/v1/invoiceitems", {"customer": customer["id"], "amount": 500, "currency": "usd"}
        )
        invoice = await h.user.post(
            "/v1/invoices",
            {"customer": customer["id"], "pending_invoice_items_behavior": "include"},
        )
        await h.stream.poll_head()
        before = (await mirror(h.db, "customers"))[customer["id"]][0]
        await h.user.post(f"/v1/invoices/{invoice['id']}/finalize")
        await h.stream.poll_head()
        served = (await h.user.request("GET", f"/v1/customers/{customer['id']}")).object()
        assert served["next_invoice_sequence"] == before["next_invoice_sequence"] + 1
        assert (await mirror(h.db, "customers"))[customer["id"]][0] == served


@pytest.mark.parametrize(
    ("mode", "exclude"), [("refetch", []), ("snapshot", []), ("snapshot", ["prices", "plans"])]
)
async def test_a_changed_price_refreshes_the_items_that_embed_it(
    db_url: str, emulator: Emulator, mode: str, exclude: list[str]
) -> None:
    """Also when prices are not mirrored themselves: the items embedding them are."""
    async with harness(db_url, emulator, apply_mode=mode) as h:
        h.cfg = dataclasses.replace(h.cfg, sync=dataclasses.replace(h.cfg.sync, exclude=exclude))
        h.new_stream()
        await h.stream.take_cursor()
        product = await h.user.post("/v1/products", {"name": "Plan"})
        price = await h.user.post(
            "/v1/prices",
            {
                "product": product["id"],
                "currency": "usd",
                "unit_amount": 900,
                "recurring": {"interval": "month"},
            },
        )
        customer = await h.user.post("/v1/customers", {"email": "p@example.com"})
        sub = await h.user.post(
            "/v1/subscriptions", {"customer": customer["id"], "items": [{"price": price["id"]}]}
        )
        await h.stream.poll_head()
        await h.user.post(f"/v1/prices/{price['id']}", {"nickname": "Gold", "metadata": {"t": "1"}})
        await h.stream.poll_head()
        served = (await h.user.request("GET", f"/v1/subscriptions/{sub['id']}")).object()
        assert served["items"]["data"][0]["price"]["nickname"] == "Gold"
        assert (await mirror(h.db, "subscriptions"))[sub["id"]][0] == served
        items = await mirror(h.db, "subscription_items")
        item = served["items"]["data"][0]
        assert items[item["id"]][0] == item
