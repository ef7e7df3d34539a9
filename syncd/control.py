"""Operator requests through the database: `syncd resync` and `syncd flush-usage` from anywhere.

The CLI inserts a row into `{state}.requests` and NOTIFYs `syncd_control`; the leading daemon
LISTENs on a dedicated connection (and polls, in case a notification was missed while it was
reconnecting), claims pending rows with SKIP LOCKED, runs the handler registered for the kind
and records the result. `--wait` polls the row until it is done.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from syncd.db import Database, Row
from syncd.errors import SyncdError
from syncd.lifecycle import Lifecycle
from syncd.logs import bind_context, get_logger

log = get_logger(__name__)
CHANNEL = "syncd_control"
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def submit(db: Database, kind: str, args: dict[str, Any] | None = None) -> int:
    row = await db.fetchrow(
        "submit_request", kind, args or {}, f"{socket.gethostname()}:{os.getpid()}"
    )
    assert row is not None
    request_id: int = row["id"]
    return request_id


async def wait(db: Database, request_id: int, *, poll: float = 0.5) -> Row:
    """Wait until the request is done or failed; returns its row. Bound it with fail_after."""
    while True:
        row = await db.fetchrow("get_request", request_id)
        if row is None:
            raise SyncdError(f"request {request_id} not found")
        if row["status"] in ("done", "failed"):
            return row
        await anyio.sleep(poll)


class ControlLoop:
    """Runs requests of registered kinds; one request at a time, in arrival order."""

    def __init__(self, db: Database, lifecycle: Lifecycle, *, poll_interval: float = 5.0):
        self.db = db
        self.lifecycle = lifecycle
        self.poll_interval = poll_interval
        self.handlers: dict[str, Handler] = {}
        self._wake = anyio.Event()

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        await self.db.execute("requeue_interrupted_requests")
        conn = await self.db.dedicated_connection()
        try:
            await conn.listen(CHANNEL, lambda _payload: self.wake())
            while True:
                await self.run_pending()
                self._wake = anyio.Event()
                if not await self.lifecycle.sleep(self.poll_interval, self._wake):
                    return
        finally:
            await conn.close()

    async def run_pending(self) -> int:
        rows = await self.db.fetch("claim_requests")
        for row in rows:
            await self._run_one(row["id"], row["kind"], row["args"])
        return len(rows)

    async def _run_one(self, request_id: int, kind: str, args: dict[str, Any]) -> None:
        handler = self.handlers.get(kind)
        with bind_context(request_id=request_id, request_kind=kind):
            if handler is None:
                await self.db.execute(
                    "finish_request", request_id, "failed", None, f"unknown request kind {kind!r}"
                )
                log.warning("request_unknown_kind")
                return
            log.info("request_started", args=args)
            try:
                result = await handler(args)
            except SyncdError as exc:
                await self.db.execute("finish_request", request_id, "failed", None, str(exc))
                log.error("request_failed", error=str(exc))
                return
            await self.db.execute("finish_request", request_id, "done", result, None)
            log.info("request_done", result=result)
