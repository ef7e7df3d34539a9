"""When full resyncs run, and `syncd resync`: the daemon's resync loop and the operator's command.

The loop runs a resync on first start (no completed resync yet), resumes an interrupted run,
serves `resync` requests (from `syncd resync`, SIGHUP or the event stream's expired cursor) and
re-lists every `sync.reconcile_interval` for changes Stripe emits no event for. The command files
a request through the database, so it works from any container, and with `--wait` follows it.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Sequence
from typing import Any, TextIO

import anyio

from syncd import control, metrics
from syncd.config import Config
from syncd.db import Database
from syncd.errors import SyncdError
from syncd.lifecycle import Lifecycle
from syncd.logs import get_logger
from syncd.resync import PROGRESS_INTERVAL, Resync, has_completed_resync
from syncd.stripe_api import StripeAPI
from syncd.writer import Writer

log = get_logger(__name__)


# ---- the daemon's resync loop --------------------------------------------------------------


class ResyncLoop:
    """Runs resyncs in the daemon: first start, interrupted runs, requests, SIGHUP, reconcile."""

    def __init__(
        self, cfg: Config, db: Database, api: StripeAPI, writer: Writer, lifecycle: Lifecycle
    ):
        self.cfg = cfg
        self.db = db
        self.lifecycle = lifecycle
        self.resync = Resync(cfg, db, api, writer, lifecycle)
        self._wake = anyio.Event()
        self._sighup = False

    def on_sighup(self) -> None:
        self._sighup = True
        self._wake.set()

    async def handle_request(self, args: dict[str, Any]) -> dict[str, Any]:
        tables = args.get("tables") or None
        reason = str(args.get("reason") or "request")
        run_id = await self.resync.enqueue(tables, reason)
        self._wake.set()
        return {"run_id": run_id}

    async def run(self) -> None:
        first = True
        backoff = 5.0
        while not self.lifecycle.stopping.is_set():
            self._wake = anyio.Event()
            try:
                if self._sighup:
                    self._sighup = False
                    await self.resync.enqueue(None, "sighup")
                ran = await self._run_unfinished()
                empty = first and not ran and self.cfg.sync.resync_on_empty
                if empty and not await has_completed_resync(self.db):
                    await self.resync.run(None, reason="first_start")
                first = False
                wait = await self._reconcile_due()
                if wait is not None and wait <= 0:
                    await self.resync.run(None, reason="reconcile")
                    continue
                backoff = 5.0
            except SyncdError as exc:
                log.error("resync_failed", error=str(exc), retry_in=round(backoff))
                metrics.resync_runs.labels("failed").inc()
                if not await self.lifecycle.sleep(backoff * random.uniform(0.8, 1.2), self._wake):
                    return
                backoff = min(600.0, backoff * 2)
                continue
            if not await self.lifecycle.sleep(wait if wait is not None else 3600.0, self._wake):
                return

    async def _run_unfinished(self) -> bool:
        ran = False
        while True:
            rows = await self.db.fetch("resync_unfinished_runs")
            if not rows:
                return ran
            row = rows[0]
            await self.resync.run(row["tables"], reason=row["reason"])
            ran = True

    async def _reconcile_due(self) -> float | None:
        """Seconds until the next periodic full resync (None: never)."""
        interval = self.cfg.sync.reconcile_interval
        if interval <= 0:
            return None
        last = await self.db.fetchval("resync_last_completed")
        if last is None:
            return None  # no complete resync yet: the first one is not periodic
        return float(last) + interval - time.time()


def attach(daemon: Any) -> None:
    """Wire the resync into the daemon: its loop, the `resync` request and SIGHUP."""
    loop = ResyncLoop(daemon.cfg, daemon.db, daemon.api, daemon.writer, daemon.lifecycle)
    daemon.add_loop("resync", loop.run)
    daemon.control.register("resync", loop.handle_request)
    daemon.lifecycle.on_signal(signal.SIGHUP, loop.on_sighup)


# ---- `syncd resync` ------------------------------------------------------------------------


async def request(
    db: Database,
    tables: Sequence[str] | None,
    *,
    wait: bool,
    out: TextIO,
    timeout: float = 0.0,  # noqa: ASYNC109 (a CLI option, applied with fail_after below)
    poll: float = 0.5,
) -> int:
    """Ask the running daemon for a resync (from anywhere); with `wait`, follow it to the end."""
    request_id = await control.submit(
        db, "resync", {"tables": list(tables) if tables else None, "reason": "cli"}
    )
    if not wait:
        print(f"resync requested (request {request_id})", file=out)
        return 0
    with anyio.fail_after(timeout or None):
        row = await control.wait(db, request_id, poll=poll)
        if row["status"] != "done":
            print(f"resync request {request_id} failed: {row['error']}", file=out)
            return 1
        run_id = int(row["result"]["run_id"])
        return await watch(db, run_id, out, poll=poll)


async def watch(db: Database, run_id: int, out: TextIO, *, poll: float = 0.5) -> int:
    """A progress bar on a terminal, a plain line every few seconds otherwise; 0 when done."""
    tty = out.isatty()
    started = time.monotonic()
    last_line = 0.0
    while True:
        run = await db.fetchrow("resync_get_run", run_id)
        if run is None:
            print(f"resync run {run_id} not found", file=out)
            return 1
        rows = await db.fetch("resync_progress", run_id)
        total = len(rows)
        finished = sum(1 for r in rows if r["status"] in ("swept", "unavailable"))
        objects = sum(r["objects"] for r in rows)
        elapsed = max(1e-6, time.monotonic() - started)
        status = run["status"]
        line = (
            f"resync {run_id}: {finished}/{total or '?'} types, {objects:,} objects, "
            f"{objects / elapsed:,.0f}/s, {status}"
        )
        if tty:
            width = 30
            filled = int(width * finished / total) if total else 0
            print(f"\r[{'#' * filled}{'-' * (width - filled)}] {line}   ", end="", file=out)
            out.flush()
        elif time.monotonic() - last_line >= PROGRESS_INTERVAL or status not in (
            "pending",
            "running",
        ):
            print(line, file=out, flush=True)
            last_line = time.monotonic()
        if status not in ("pending", "running"):
            if tty:
                print(file=out)
            for r in rows:
                note = f" ({r['error']})" if r["error"] else ""
                print(
                    f"  {r['table_name']:<28} {r['objects']:>10,} objects "
                    f"{r['tombstoned']:>6,} tombstoned  {r['status']}{note}",
                    file=out,
                )
            if status != "done":
                print(f"resync {run_id} {status}: {run['error'] or ''}", file=out)
            return 0 if status == "done" else 1
        await anyio.sleep(poll)
