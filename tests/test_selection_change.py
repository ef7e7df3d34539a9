"""A type added to `sync.include` is backfilled at the next start, and only that type: the
daemon records which types each finished resync covered."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from syncd.emulator import Emulator
from syncd.resync_schedule import backfill_of
from tests.support.daemon import daemon, daemon_env
from tests.support.events import harness, mirror

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def runs(h: Any) -> list[dict[str, Any]]:
    got = await h.db.run(
        lambda c: c.fetch("SELECT run_id, tables, reason, status FROM syncd.resync_runs"),
        transaction=False,
    )
    return [dict(r) for r in got]


async def wait_for_runs(h: Any, count: int) -> list[dict[str, Any]]:
    with anyio.fail_after(60):
        while True:
            done = [r for r in await runs(h) if r["status"] in ("done", "done_with_problems")]
            if len(done) >= count:
                return done
            await anyio.sleep(0.2)


async def test_a_type_added_to_the_selection_is_backfilled_alone(
    db_url: str, emulator: Emulator
) -> None:
    emulator.seed(customers=5, products=3, subscriptions=0)
    env = {**daemon_env(db_url, emulator), "SYNCD_SYNC_INCLUDE": "customers"}
    async with harness(db_url, emulator) as h:
        async with daemon(env):
            [first] = await wait_for_runs(h, 1)
        assert first["reason"] == "first_start" and await mirror(h.db, "products") == {}

        # Restarted with products selected too: only products are listed.
        async with daemon({**env, "SYNCD_SYNC_INCLUDE": "customers,products"}):
            done = await wait_for_runs(h, 2)
        backfill = done[-1]
        assert (backfill["reason"], backfill["tables"]) == ("selection_changed", ["products"])
        assert len(await mirror(h.db, "products")) == len(emulator.objects("product"))

        # Another restart with the same selection: nothing new to backfill.
        async with daemon({**env, "SYNCD_SYNC_INCLUDE": "customers,products"}):
            await anyio.sleep(3)
        assert len(await runs(h)) == 2


def test_a_backfill_relists_the_types_that_embed_the_new_ones() -> None:
    """Prices selected again: the subscriptions (whose items embed their price) are re-listed
    with them; a price change whose event was lost while prices were not mirrored reaches the
    items that way (the randomized convergence test's narrowed scenarios depend on it)."""
    chosen = ["customers", "invoice_items", "invoices", "prices", "products", "subscriptions"]
    assert backfill_of({"prices", "products"}, chosen) == ["prices", "products", "subscriptions"]
    assert backfill_of({"invoices"}, chosen) == ["invoice_items", "invoices"]
    assert backfill_of({"prices"}, ["prices", "customers"]) == ["prices"]
