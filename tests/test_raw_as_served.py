"""`raw` is the object as Stripe serves it at the pinned version, without what syncd expanded
only to reach children: a refetched checkout session equals the session Stripe returns (and
what a resync stores), its line items live in their own table."""

from __future__ import annotations

import dataclasses

import pytest

from syncd.emulator import Emulator
from syncd.resync import Resync
from tests.support.events import harness, mirror


@pytest.mark.parametrize("mode", ["refetch", "snapshot"])
async def test_refetched_checkout_sessions_keep_no_expanded_line_items(
    db_url: str, emulator: Emulator, mode: str
) -> None:
    async with harness(db_url, emulator, apply_mode=mode) as h:
        product = await h.user.post("/v1/products", {"name": "Book"})
        price = await h.user.post(
            "/v1/prices", {"product": product["id"], "currency": "usd", "unit_amount": 700}
        )
        await h.stream.take_cursor()
        session = await h.user.post(
            "/v1/checkout/sessions",
            {
                "mode": "payment",
                "success_url": "https://x/ok",
                "line_items": [{"price": price["id"], "quantity": i + 1} for i in range(3)],
            },
        )
        emulator.complete_checkout_session(session["id"])  # checkout.session.completed
        await h.stream.poll_head()
        served = (await h.user.request("GET", f"/v1/checkout/sessions/{session['id']}")).object()
        stored = (await mirror(h.db, "checkout_sessions"))[session["id"]][0]
        assert "line_items" not in served
        assert stored == served
        items = await mirror(h.db, "checkout_session_line_items")
        assert len(items) == 3


@pytest.mark.parametrize("exclude", [[], ["checkout_session_line_items"]])
async def test_a_resync_stores_checkout_sessions_as_served(
    db_url: str, emulator: Emulator, exclude: list[str]
) -> None:
    """Also when the line items are not mirrored (they used to be expanded anyway, and then
    stayed inside `raw`)."""
    async with harness(db_url, emulator) as h:
        product_obj = await h.user.post("/v1/products", {"name": "Pen"})
        price = await h.user.post(
            "/v1/prices", {"product": product_obj["id"], "currency": "usd", "unit_amount": 200}
        )
        session = await h.user.post(
            "/v1/checkout/sessions",
            {
                "mode": "payment",
                "success_url": "https://x/ok",
                "line_items": [{"price": price["id"], "quantity": 2}],
            },
        )
        cfg = dataclasses.replace(h.cfg, sync=dataclasses.replace(h.cfg.sync, exclude=exclude))
        await Resync(cfg, h.db, h.api, h.writer).run(["checkout_sessions"], reason="test")
        served = (await h.user.request("GET", f"/v1/checkout/sessions/{session['id']}")).object()
        assert (await mirror(h.db, "checkout_sessions"))[session["id"]][0] == served
