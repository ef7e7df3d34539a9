"""`syncd run`: the long-running daemon. Its loops are siblings in one task group; an
unexpected error in one ends the daemon loudly (exit 1) so the orchestrator restarts it."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from syncd import __version__, appschema, migrations, resync, usage_schedule
from syncd.config import Config, redacted
from syncd.control import ControlLoop
from syncd.db import Database
from syncd.errors import SyncdError
from syncd.lifecycle import Lifecycle
from syncd.logs import get_logger
from syncd.stripe_api import StripeAPI
from syncd.writer import Writer

log = get_logger(__name__)


class Daemon:
    def __init__(self, cfg: Config, db: Database, lifecycle: Lifecycle, api: StripeAPI):
        self.cfg = cfg
        self.db = db
        self.lifecycle = lifecycle
        # One Stripe client (and so one rate limiter) and one writer shared by every feature.
        self.api = api
        self.writer = Writer(
            db, account_id=cfg.stripe.account, notify_channel=cfg.events.notify_channel
        )
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.role = "starting"
        self.control = ControlLoop(db, lifecycle)
        # The work of the daemon: each feature adds its loops here (see attach_features).
        self.loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        # Steps awaited in order before the loops start (e.g. taking the events cursor before a
        # first full resync can begin listing).
        self.startup: list[Callable[[], Coroutine[Any, Any, None]]] = []

    def add_loop(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.loops.append((name, loop))

    async def heartbeat_loop(self) -> None:
        """Keep this instance's row fresh; failures are logged and retried, never fatal."""
        while True:
            try:
                await self.db.execute(
                    "heartbeat",
                    self.instance_id,
                    socket.gethostname(),
                    os.getpid(),
                    __version__,
                    self.role,
                )
            except SyncdError as exc:
                if not exc.retryable:
                    raise
                log.warning("heartbeat_failed", error=str(exc))
            if not await self.lifecycle.sleep(self.cfg.daemon.heartbeat_interval):
                return


def session_settings(cfg: Config) -> dict[str, str]:
    """Session settings the SQL side reads (the customers.user_id trigger)."""
    return {"syncd.user_id_key": cfg.app.user_id_metadata_key}


def attach_features(daemon: Daemon) -> None:
    """Give each feature its loops and request handlers (one call per feature)."""
    _attach_events(daemon)
    resync.attach(daemon)
    daemon.startup.append(lambda: appschema.startup_step(daemon.db, daemon.cfg))
    usage_schedule.attach(daemon)


def _attach_events(daemon: Daemon) -> None:
    # The cursor is taken as a startup step: before a first full resync can start listing.
    if not daemon.cfg.events.enabled:
        return
    from syncd.events import EventStream

    stream = EventStream(daemon.cfg, daemon.db, daemon.api, daemon.writer)
    daemon.startup.append(lambda: stream.take_cursor_at_start(daemon.lifecycle))
    daemon.add_loop("events", lambda: stream.run(daemon.lifecycle))
    daemon.add_loop("events_ledger_pruner", lambda: stream.prune_loop(daemon.lifecycle))


async def run_daemon(cfg: Config) -> int:
    lifecycle = Lifecycle(cfg.daemon.shutdown_grace)
    async with anyio.create_task_group() as outer:
        await outer.start(lifecycle.watch_signals)
        async with (
            Database.connect(cfg.database, settings=session_settings(cfg)) as db,
            StripeAPI(cfg) as api,
        ):
            applied = await migrations.migrate(db)
            log.info(
                "daemon_started",
                version=__version__,
                migrations_applied=len(applied),
                config=redacted(cfg),
            )
            daemon = Daemon(cfg, db, lifecycle, api)
            attach_features(daemon)
            daemon.role = "running"
            with lifecycle.work_scope:
                for step in daemon.startup:
                    await step()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(daemon.heartbeat_loop)
                    tg.start_soon(daemon.control.run)
                    for name, loop in daemon.loops:
                        tg.start_soon(loop, name=name)
            await _mark_stopped(db, daemon.instance_id)
        log.info("daemon_stopped", graceful=not lifecycle.work_scope.cancelled_caught)
        outer.cancel_scope.cancel()
    return 0


async def _mark_stopped(db: Database, instance_id: str) -> None:
    try:
        with anyio.fail_after(2):
            await db.execute("instance_stopped", instance_id)
    except (SyncdError, TimeoutError) as exc:
        log.warning("instance_stop_not_recorded", error=str(exc))
