"""Late events across gaps: an event that becomes visible while syncd is stopped (or cannot
poll) for longer than `events.overlap` is still applied, because the overlap sweep hangs from
the cursor rather than from now."""

from __future__ import annotations

import time

import anyio

from syncd.emulator import Emulator
from tests.support.events import harness, mirror

OVERLAP = 4.0


async def test_a_late_event_is_applied_after_a_stop_longer_than_the_overlap(
    db_url: str, emulator: Emulator
) -> None:
    async with harness(db_url, emulator, overlap=OVERLAP) as h:
        customer = await h.user.post("/v1/customers", {"email": "late@example.com"})
        await h.stream.take_cursor()
        await h.stream.poll_head()
        emulator.set_late_visibility(7000, 7000)  # listable 7 s after it happens
        await h.user.post(f"/v1/customers/{customer['id']}", {"name": "renamed"})
        updated = time.monotonic()
        # Polls go on until the head window has left the update's second behind...
        while time.monotonic() - updated < 3.3:
            await h.stream.poll_head()
            await anyio.sleep(0.2)
        # ...then the daemon stops for longer than the overlap; the update becomes visible
        # while nobody polls.
        await anyio.sleep(4.5 + max(0.0, 7.2 - (time.monotonic() - updated) - 4.5))
        h.new_stream()  # a restart: the loop sweeps first, then polls the head
        await h.stream.sweep()
        await h.stream.poll_head()
        row = (await mirror(h.db, "customers"))[customer["id"]][0]
        assert row["name"] == "renamed"
