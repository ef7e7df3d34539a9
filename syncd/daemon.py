"""`syncd run`: the long-running daemon.

Every replica runs the heartbeat (its row in `{state}.instances`) and the HTTP server. Only the
leader (see `syncd.leader`) runs the startup steps, the control loop and the feature loops; they
are siblings in one task group, cancelled together when leadership is lost. A retryable error
(the database went away) sends the replica back to standby; any other error in a loop ends the
daemon loudly (exit 1) so the orchestrator restarts it."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from syncd import (
    __version__,
    appschema,
    health,
    metrics,
    migrations,
    resync_schedule,
    usage_schedule,
)
from syncd.config import Config, redacted
from syncd.control import ControlLoop
from syncd.db import Database
from syncd.errors import SyncdError, leaf_errors
from syncd.leader import Leadership
from syncd.lifecycle import Lifecycle
from syncd.logs import get_logger
from syncd.problems import Problems
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
        self.http_bind = ""
        self.leader_since = 0.0
        self.last_beat = anyio.current_time()
        self._beat_now = anyio.Event()
        self.leadership = Leadership(
            db,
            lifecycle,
            enabled=cfg.daemon.leader_election,
            interval=cfg.daemon.election_interval,
        )
        self.control = ControlLoop(db, lifecycle)
        # What keeps failing right now: /readyz, the metrics and the heartbeat (status) read it.
        self.problems = Problems()
        self.problems.on_change = lambda: self._beat_now.set()
        # The work of the daemon: each feature adds its loops here (see attach_features).
        self.loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        # Steps awaited in order before the loops start (e.g. taking the events cursor before a
        # first full resync can begin listing).
        self.startup: list[Callable[[], Coroutine[Any, Any, None]]] = []

    def add_loop(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.loops.append((name, loop))

    def set_role(self, role: str) -> None:
        """`standby`, `leader`, `stopped`: written at once (the heartbeat wakes) and logged."""
        if role != self.role:
            log.info("role_changed", role=role, previous=self.role)
            self.role = role
            self.leader_since = time.time() if role == "leader" else 0.0
            self._beat_now.set()

    async def heartbeat_loop(self) -> None:
        """Keep this instance's row fresh; failures are logged and retried, never fatal."""
        while True:
            self.last_beat = anyio.current_time()
            try:
                await self.db.execute(
                    "leader_heartbeat",
                    self.instance_id,
                    socket.gethostname(),
                    os.getpid(),
                    __version__,
                    self.role,
                    _last_successes(),
                    self.http_bind,
                    self.problems.snapshot(),
                )
                metrics.heartbeats.labels("ok").inc()
            except SyncdError as exc:
                if not exc.retryable:
                    raise
                metrics.heartbeats.labels("failed").inc()
                log.warning("heartbeat_failed", error=str(exc))
            self._beat_now = anyio.Event()
            if not await self.lifecycle.sleep(self.cfg.daemon.heartbeat_interval, self._beat_now):
                return

    async def lead_when_elected(self) -> None:
        """Stand by until elected, lead until the lock is lost or a stop is requested, repeat."""
        while not self.lifecycle.stopping.is_set():
            self.set_role("standby")
            if not await self.leadership.acquire():
                return
            self.set_role("leader")
            try:
                await self.db.execute("prune_instances")  # rows of replicas gone for a week
                lost = await self._lead()
            except Exception as exc:
                # Losing the database mid-work is an election matter, not a crash: stand by and
                # try again. Anything else ends the daemon (the orchestrator restarts it).
                if not all(isinstance(e, SyncdError) and e.retryable for e in leaf_errors(exc)):
                    raise
                log.warning("leader_work_interrupted", error=str(leaf_errors(exc)[0]))
                lost = True
            finally:
                await self.leadership.release()
            if lost:
                # The replica that lost its lock is likely the unwell one: give the others the
                # first try at the lock.
                self.set_role("standby")
                await self.lifecycle.sleep(2 * self.cfg.daemon.election_interval)

    async def _lead(self) -> bool:
        """The leader's work: startup steps, then the control loop and every feature loop.

        A sibling task watches the lock; if it is lost, the whole scope is cancelled at once
        (open transactions roll back, the cursor stays at its last commit): never two writers.
        Returns True when leadership was lost, False when the work ended (a stop).
        """
        lost = False
        async with anyio.create_task_group() as tg:

            async def work() -> None:
                for step in self.startup:
                    await step()
                async with anyio.create_task_group() as loops:
                    loops.start_soon(self.control.run, name="control")
                    for name, loop in self.loops:
                        loops.start_soon(loop, name=name)
                tg.cancel_scope.cancel()  # stopping: the loops are done, stop watching

            tg.start_soon(work, name="leader_work")
            await self.leadership.watch()
            lost = True
            self.set_role("standby")
            tg.cancel_scope.cancel()
        return lost


def _last_successes() -> dict[str, float]:
    out: dict[str, float] = {}
    for family in metrics.last_success.collect():
        for sample in family.samples:
            out[sample.labels["loop"]] = sample.value
    return out


def session_settings(cfg: Config) -> dict[str, str]:
    """Session settings the SQL side reads (the customers.user_id trigger)."""
    return {"syncd.user_id_key": cfg.app.user_id_metadata_key}


def attach_features(daemon: Daemon) -> None:
    """Give each feature its loops and request handlers (one call per feature)."""
    _attach_events(daemon)
    resync_schedule.attach(daemon)
    daemon.startup.append(lambda: appschema.startup_step(daemon.db, daemon.cfg))
    usage_schedule.attach(daemon)


def _attach_events(daemon: Daemon) -> None:
    # The cursor is taken as a startup step: before a first full resync can start listing.
    if not daemon.cfg.events.enabled:
        return
    from syncd.events import EventStream

    stream = EventStream(daemon.cfg, daemon.db, daemon.api, daemon.writer, problems=daemon.problems)
    daemon.startup.append(lambda: stream.take_cursor_at_start(daemon.lifecycle))
    daemon.add_loop("events", lambda: stream.run(daemon.lifecycle))
    daemon.add_loop("events_ledger_pruner", lambda: stream.prune_loop(daemon.lifecycle))


async def run_daemon(cfg: Config, features: Callable[[Daemon], None] = attach_features) -> int:
    """Every replica runs the heartbeat and the HTTP server; only the leader does the work."""
    lifecycle = Lifecycle(cfg.daemon.shutdown_grace)
    try:
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
                features(daemon)
                with lifecycle.work_scope:
                    async with anyio.create_task_group() as tg:
                        if cfg.http.enabled:
                            await tg.start(health.serve, daemon, name="http")
                        tg.start_soon(daemon.heartbeat_loop, name="heartbeat")
                        await daemon.lead_when_elected()
                daemon.set_role("stopped")
                await _mark_stopped(db, daemon.instance_id)
            log.info("daemon_stopped", graceful=not lifecycle.work_scope.cancelled_caught)
            outer.cancel_scope.cancel()
    except Exception as exc:
        # A task group wraps errors; the CLI prints the first syncd error as one line.
        first = next((e for e in leaf_errors(exc) if isinstance(e, SyncdError)), None)
        if first is None:
            raise
        raise first from exc
    return 0


async def _mark_stopped(db: Database, instance_id: str) -> None:
    try:
        with anyio.fail_after(2):
            await db.execute("instance_stopped", instance_id)
    except (SyncdError, TimeoutError) as exc:
        log.warning("instance_stop_not_recorded", error=str(exc))
