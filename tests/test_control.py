"""Operator requests through the database reach the daemon's handlers once, in order."""

from __future__ import annotations

from typing import Any

import anyio

from syncd import control
from syncd.db import Database
from syncd.errors import SyncdError
from syncd.lifecycle import Lifecycle


async def test_request_runs_once_and_records_result(db: Database) -> None:
    seen: list[dict[str, Any]] = []

    async def handler(args: dict[str, Any]) -> dict[str, Any]:
        seen.append(args)
        return {"ok": True}

    async def failing(_args: dict[str, Any]) -> dict[str, Any]:
        raise SyncdError("boom")

    loop = control.ControlLoop(db, Lifecycle(1.0))
    loop.register("resync", handler)
    loop.register("explode", failing)
    first = await control.submit(db, "resync", {"types": ["customers"]})
    second = await control.submit(db, "explode")
    unknown = await control.submit(db, "nonsense")
    assert await loop.run_pending() == 3
    assert await loop.run_pending() == 0
    assert seen == [{"types": ["customers"]}]
    rows = {rid: await db.fetchrow("get_request", rid) for rid in (first, second, unknown)}
    assert rows[first]["status"] == "done" and rows[first]["result"] == {"ok": True}  # type: ignore[index]
    assert rows[second]["status"] == "failed" and rows[second]["error"] == "boom"  # type: ignore[index]
    assert "unknown request kind" in rows[unknown]["error"]  # type: ignore[index]


async def test_listener_wakes_on_notify_and_wait_returns(db: Database) -> None:
    lifecycle = Lifecycle(1.0)
    loop = control.ControlLoop(db, lifecycle, poll_interval=60)

    async def handler(_args: dict[str, Any]) -> dict[str, Any]:
        return {"done": 1}

    loop.register("flush_usage", handler)
    async with anyio.create_task_group() as tg:
        tg.start_soon(loop.run)
        await anyio.sleep(0.3)  # let it LISTEN; with a 60 s poll only NOTIFY can wake it in time
        request_id = await control.submit(db, "flush_usage")
        with anyio.fail_after(10):
            row = await control.wait(db, request_id, poll=0.05)
        assert row["status"] == "done"
        lifecycle.stopping.set()


async def test_interrupted_request_is_requeued(db: Database) -> None:
    request_id = await control.submit(db, "resync")
    claimed = await db.fetch("claim_requests")
    assert [r["id"] for r in claimed] == [request_id]  # a daemon took it, then died
    await db.execute("requeue_interrupted_requests")
    row = await db.fetchrow("get_request", request_id)
    assert row is not None and row["status"] == "pending"
