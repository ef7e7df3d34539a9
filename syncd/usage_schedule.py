"""When usage is flushed: on a schedule, on SIGUSR1, on `syncd flush-usage`.

The daemon runs one usage loop. apscheduler (3.x, AsyncIOScheduler) only wakes it, on an
interval (`usage.interval`) or a crontab expression (`usage.cron`); SIGUSR1 wakes it too. The
flush itself always runs inside the loop's task (or the control handler's), under one lock, so
stopping the daemon stops it between rounds like every other loop. `syncd flush-usage` asks the
running daemon through a control request and prints what it did; `--direct` flushes in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
from typing import Any

import anyio
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from syncd import control, migrations
from syncd.config import Config
from syncd.db import Database
from syncd.errors import ConfigError, SyncdError
from syncd.logs import get_logger
from syncd.runtime import Runtime
from syncd.stripe_api import StripeAPI
from syncd.usage import FlushResult, UsageFlusher

log = get_logger(__name__)
_FOREVER = 365 * 86400.0


def trigger(cfg: Config) -> BaseTrigger:
    """The schedule: `usage.cron` when set, else every `usage.interval` seconds."""
    if cfg.usage.cron:
        try:
            return CronTrigger.from_crontab(cfg.usage.cron, timezone="UTC")
        except ValueError as exc:
            raise ConfigError(f"usage.cron: {cfg.usage.cron!r} is not valid: {exc}") from None
    return IntervalTrigger(seconds=cfg.usage.interval, timezone="UTC")


class UsageLoop:
    """The daemon's usage loop: flush at start, then whenever the schedule or a signal says."""

    def __init__(self, runtime: Runtime):
        cfg = runtime.cfg
        self.cfg = cfg
        self.lifecycle = runtime.lifecycle
        self.state = runtime.state
        self.trigger = trigger(cfg)
        # A separate usage key gets its own client but shares the daemon's rate limiter: Stripe
        # counts both keys against one account.
        self._own_api = (
            StripeAPI(cfg, api_key=cfg.usage.api_key, limiter=runtime.api.limiter)
            if cfg.usage.api_key
            else None
        )
        self.flusher = UsageFlusher(
            cfg,
            runtime.db,
            self._own_api or runtime.api,
            instance=runtime.instance_id,
            stopping=runtime.lifecycle.stopping,
            read_api=runtime.api,
        )
        self._lock = anyio.Lock()
        self._wake = anyio.Event()

    def request_flush(self) -> None:
        """Flush as soon as the loop is free (SIGUSR1, the scheduler)."""
        self._wake.set()

    async def flush_now(self, _args: dict[str, Any]) -> dict[str, Any]:
        """The `flush_usage` control request: flush now and answer with what was done."""
        async with self._lock:
            return (await self.flusher.flush()).as_dict()

    async def run(self) -> None:
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone="UTC")

        async def tick() -> None:
            self.request_flush()

        scheduler.add_job(tick, self.trigger, coalesce=True, max_instances=1)
        scheduler.start()
        log.info("usage_schedule", schedule=str(self.trigger), target=self.cfg.usage.target)
        try:
            while True:
                self._wake = anyio.Event()  # a request during the flush means: once more after
                async with self._lock:
                    await self._flush_logged()
                if not await self.lifecycle.sleep(_FOREVER, self._wake):
                    return
        finally:
            scheduler.shutdown(wait=False)
            if self._own_api is not None:
                with anyio.CancelScope(shield=True):  # close even when the loop was cancelled
                    await self._own_api.close()

    async def _flush_logged(self) -> None:
        try:
            result = await self.flusher.flush()
        except SyncdError as exc:
            # Stripe or PostgreSQL unavailable: rows stay queued and the next flush resumes.
            log.error("usage_flush_failed", error=str(exc), retryable=exc.retryable)
            return
        if result.error is None:
            self.state.succeeded("usage")


def attach(runtime: Runtime) -> None:
    """Give the daemon its usage loop, the `flush_usage` request and SIGUSR1."""
    if not runtime.cfg.usage.enabled:
        return
    loop = UsageLoop(runtime)
    runtime.add_loop("usage", loop.run)
    runtime.control.register("flush_usage", loop.flush_now)
    runtime.lifecycle.on_signal(signal.SIGUSR1, loop.request_flush)


# -- `syncd flush-usage` ---------------------------------------------------------------------


def flush_usage_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--direct",
        action="store_true",
        help="flush in this process instead of asking the running daemon",
    )
    p.add_argument(
        "--no-wait", action="store_true", help="ask the daemon to flush and return at once"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the daemon's answer (default 120)",
    )


async def cmd_flush_usage(cfg: Config, args: argparse.Namespace) -> int:
    if args.direct:
        return await _flush_direct(cfg)
    async with Database.connect(cfg.database, min_size=1) as db:
        request_id = await control.submit(db, "flush_usage", {})
        if args.no_wait:
            print(f"usage flush requested (request {request_id})")
            return 0
        try:
            with anyio.fail_after(args.timeout):
                row = await control.wait(db, request_id, poll=0.2)
        except TimeoutError:
            if await db.fetchval("usage_withdraw_request", request_id) is not None:
                print(
                    f"no daemon took the request within {args.timeout:g}s (is `syncd run` up?);"
                    " request withdrawn. `syncd flush-usage --direct` flushes from here."
                )
            else:
                print(
                    f"the daemon is still flushing (request {request_id}) after "
                    f"{args.timeout:g}s; see `syncd status`"
                )
            return 1
    if row["status"] == "failed":
        print(f"usage flush failed: {row['error']}")
        return 1
    result = FlushResult(**row["result"])
    print(result.describe())
    return 1 if result.error else 0


async def _flush_direct(cfg: Config) -> int:
    async with (
        Database.connect(cfg.database, min_size=1) as db,
        StripeAPI(cfg, api_key=cfg.usage_api_key or None) as api,
    ):
        if await migrations.pending(db):
            raise ConfigError("database: migrations pending: run `syncd migrate` first")
        flusher = UsageFlusher(cfg, db, api, instance=f"cli:{socket.gethostname()}:{os.getpid()}")
        result = await flusher.flush()
    print(result.describe())
    return 1 if result.error else 0
