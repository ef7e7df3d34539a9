"""Changes Stripe makes to an object without an event of that object are caught from the event
of the object that caused them (apply.IMPLIED): invoice items taken up by an invoice get their
`invoice` in the mirror, in both apply modes."""

from __future__ import annotations

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
