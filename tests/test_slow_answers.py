"""Versions as intervals (issue 14, divergence 1): an answer that Stripe wrote before a change
but that arrives after a fresher fetch of the same object never overwrites it. Which of two
overlapping versions is newer is unknown, so the object is fetched again once Stripe's clock has
passed both (`{state}.refetch_queue`), in both apply modes."""

from __future__ import annotations

import anyio
import pytest

from syncd.emulator import Emulator
from syncd.lifecycle import Lifecycle
from syncd.resync import Resync
from tests.support.events import Harness, harness, mirror


async def queue(h: Harness) -> list[tuple[str, str]]:
    rows = await h.db.run(
        lambda c: c.fetch("SELECT table_name, object_id FROM syncd.refetch_queue"),
        transaction=False,
    )
    return [(r[0], r[1]) for r in rows]


async def settle(h: Harness) -> int:
    """What the daemon's event loop does after each poll, until the queue is empty."""
    fetched = 0
    with anyio.fail_after(15):
        while await queue(h):
            fetched += await h.stream.settle_overlaps()
            await anyio.sleep(0.1)
    return fetched


@pytest.mark.parametrize("mode", ["refetch", "snapshot"])
async def test_a_slow_list_page_never_overwrites_a_fresher_change(
    db_url: str, emulator: Emulator, mode: str
) -> None:
    async with harness(db_url, emulator, apply_mode=mode) as h:
        await h.stream.take_cursor()
        customer = await h.user.post("/v1/customers", {"name": "old"})
        await h.stream.poll_head()
        assert (await mirror(h.db, "customers"))[customer["id"]][0]["name"] == "old"

        # The resync's customers lists are read at once and answered 2 s later: its first
        # request (one object, to sync the clock) and then its page.
        slow = emulator.faults.set(pattern="GET /v1/customers", after_ms=2000, times=2)
        resync = Resync(h.cfg, h.db, h.api, h.writer, Lifecycle(1.0))
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: resync.run(["customers"], reason="test"))
            with anyio.fail_after(10):
                while slow.hits < 2:  # noqa: ASYNC110 (polls the emulator's counter)
                    await anyio.sleep(0.02)
            await anyio.sleep(0.1)  # the page holds "old"; now the customer is renamed
            await h.user.post(f"/v1/customers/{customer['id']}", {"name": "new"})
            await anyio.sleep(1.1)  # the rename's event is in a later second than the page
            await h.stream.poll_head()
            assert (await mirror(h.db, "customers"))[customer["id"]][0]["name"] == "new"
        # The page landed after the rename was applied: it did not win with the old name.
        assert (await mirror(h.db, "customers"))[customer["id"]][0]["name"] == "new"
        assert await queue(h) == [("customers", customer["id"])]
        assert await settle(h) == 1
        assert (await mirror(h.db, "customers"))[customer["id"]][0]["name"] == "new"
