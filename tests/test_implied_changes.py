"""Changes Stripe makes to an object without an event of that object are caught from the event
of the object that caused them (apply.IMPLIED): invoice items taken up by an invoice get their
`invoice` in the mirror, in both apply modes."""

from __future__ import annotations

import dataclasses

import pytest

from syncd.emulator import Emulator
from tests.support.events import catalog, harness, mirror, settle_overlaps


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
        # Queued, not fetched within the batch: a storm of finalized invoices must not hold
        # the stream (issue 15); the loop fetches it after the poll.
        queued = await h.db.fetchval("refetch_queue_size")
        assert queued == 1
        await settle_overlaps(h)
        served = (await h.user.request("GET", f"/v1/customers/{customer['id']}")).object()
        assert served["next_invoice_sequence"] == before["next_invoice_sequence"] + 1
        assert (await mirror(h.db, "customers"))[customer["id"]][0] == served


async def test_a_renewal_invoice_does_not_list_invoice_items(
    db_url: str, emulator: Emulator
) -> None:
    """An invoice whose complete lines are subscription lines took up no invoice item: the
    invoice items are not listed again for it (a renewal storm would cost one list each)."""
    async with harness(db_url, emulator) as h:
        customer = await h.user.post("/v1/customers", {"email": "renew@example.com"})
        _, price = await catalog(h)
        await h.stream.take_cursor()
        await h.user.post(
            "/v1/subscriptions", {"customer": customer["id"], "items[0][price]": price["id"]}
        )
        await h.stream.poll_head()
        assert emulator.stats.count("GET /v1/invoiceitems") == 0
        invoices = await mirror(h.db, "invoices")
        assert len(invoices) == 1


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


async def test_many_finalized_invoices_relist_their_customers(
    db_url: str, emulator: Emulator
) -> None:
    """A storm of finalized invoices queues one customer each; when more are due than pages list
    every customer, one walk of the customers list settles them instead of one retrieve each
    (a retrieve endpoint allows 25 requests/s; a page holds 100 customers)."""
    async with harness(db_url, emulator) as h:
        customers = [
            await h.user.post("/v1/customers", {"email": f"storm{i}@example.com"})
            for i in range(12)
        ]
        await h.stream.take_cursor()
        for c in customers[:5]:
            await h.user.post(
                "/v1/invoiceitems", {"customer": c["id"], "amount": 500, "currency": "usd"}
            )
            invoice = await h.user.post(
                "/v1/invoices", {"customer": c["id"], "pending_invoice_items_behavior": "include"}
            )
            await h.user.post(f"/v1/invoices/{invoice['id']}/finalize")
        await h.stream.poll_head()
        assert await h.db.fetchval("refetch_queue_size") == 5
        lists, retrieves = (
            emulator.stats.count("GET /v1/customers"),
            emulator.stats.count("GET /v1/customers/*"),
        )
        await settle_overlaps(h)
        assert emulator.stats.count("GET /v1/customers") == lists + 1
        assert emulator.stats.count("GET /v1/customers/*") == retrieves
        stored = await mirror(h.db, "customers")
        for c in customers:
            served = (await h.user.request("GET", f"/v1/customers/{c['id']}")).object()
            assert stored[c["id"]][0] == served

        # One due customer costs one retrieve, not a walk of the list.
        retrieves = emulator.stats.count("GET /v1/customers/*")
        await h.user.post(
            "/v1/invoiceitems", {"customer": customers[7]["id"], "amount": 5, "currency": "usd"}
        )
        invoice = await h.user.post(
            "/v1/invoices",
            {"customer": customers[7]["id"], "pending_invoice_items_behavior": "include"},
        )
        await h.user.post(f"/v1/invoices/{invoice['id']}/finalize")
        await h.stream.poll_head()
        await settle_overlaps(h)
        assert emulator.stats.count("GET /v1/customers") == lists + 1
        assert emulator.stats.count("GET /v1/customers/*") == retrieves + 1
        served = (await h.user.request("GET", f"/v1/customers/{customers[7]['id']}")).object()
        assert (await mirror(h.db, "customers"))[customers[7]["id"]][0] == served
