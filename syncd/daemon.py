"""`syncd run`: the long-running daemon.

Every replica runs the heartbeat (its row in `{state}.instances`) and the HTTP server. Only the
leader (see `syncd.leader`) runs the startup steps, the control loop and the feature loops; they
are siblings in one task group, cancelled together when leadership is lost. A retryable error
(the database went away) sends the replica back to standby; any other error in a loop ends the
daemon loudly (exit 1) so the orchestrator restarts it.

This module is the composition root: it builds the `Runtime` (`syncd.runtime`) and hands it to
each feature's `attach`; no feature imports it."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable

import anyio

from syncd import (
    __version__,
    accounts,
    appschema,
    events,
    health,
    history,
    metrics,
    migrations,
    resync_schedule,
    usage_schedule,
    verify_schedule,
)
from syncd.config import Config, redacted
from syncd.control import ControlLoop
from syncd.db import Database
from syncd.errors import SyncdError, one_error
from syncd.leader import Leadership
from syncd.lifecycle import Lifecycle
from syncd.logs import get_logger
from syncd.runtime import Runtime, State
from syncd.stripe_api import StripeAPI
from syncd.writer import Writer

log = get_logger(__name__)


class Daemon:
    def __init__(self, cfg: Config, db: Database, lifecycle: Lifecycle, api: StripeAPI):
        self.cfg = cfg
        self.db = db
        self.lifecycle = lifecycle
        # What this replica is doing: /healthz, /readyz and the heartbeat read it.
        self.state = State(last_beat=anyio.current_time())
        # What keeps failing right now: the heartbeat writes it at once (status sees it).
        self.state.problems.on_change = lambda: self._beat_now.set()
        # The features' parts (see attach_features): one Stripe client (and so one rate
        # limiter) and one writer shared by every feature.
        self.runtime = Runtime(
            cfg=cfg,
            db=db,
            api=api,
            writer=Writer(
                db, account_id=cfg.stripe.account, notify_channel=cfg.events.notify_channel
            ),
            lifecycle=lifecycle,
            control=ControlLoop(db, lifecycle),
            state=self.state,
            instance_id=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        )
        self._beat_now = anyio.Event()
        self.leadership = Leadership(
            db,
            lifecycle,
            enabled=cfg.daemon.leader_election,
            interval=cfg.daemon.election_interval,
        )

    def set_role(self, role: str) -> None:
        """`standby`, `leader`, `stopped`: written at once (the heartbeat wakes) and logged."""
        state = self.state
        if role != state.role:
            log.info("role_changed", role=role, previous=state.role)
            state.role = role
            state.leader_since = time.time() if role == "leader" else 0.0
            self._beat_now.set()

    async def heartbeat_loop(self) -> None:
        """Keep this instance's row fresh; failures are logged and retried, never fatal."""
        while True:
            state = self.state
            state.last_beat = anyio.current_time()
            try:
                await self.db.execute(
                    "leader_heartbeat",
                    self.runtime.instance_id,
                    socket.gethostname(),
                    os.getpid(),
                    __version__,
                    state.role,
                    dict(state.last_success),
                    state.http_bind,
                    state.problems.snapshot(),
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
                error = one_error(exc)
                if not (isinstance(error, SyncdError) and error.retryable):
                    raise
                log.warning("leader_work_interrupted", error=str(error))
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
                for step in self.runtime.startup:
                    await step()
                async with anyio.create_task_group() as loops:
                    loops.start_soon(self.runtime.control.run, name="control")
                    for name, loop in self.runtime.loops:
                        loops.start_soon(loop, name=name)
                tg.cancel_scope.cancel()  # stopping: the loops are done, stop watching

            tg.start_soon(work, name="leader_work")
            await self.leadership.watch()
            lost = True
            self.set_role("standby")
            tg.cancel_scope.cancel()
        return lost


def session_settings(cfg: Config) -> dict[str, str]:
    """Session settings the SQL side reads (the customers.user_id trigger)."""
    return {"syncd.user_id_key": cfg.app.user_id_metadata_key}


def attach_features(runtime: Runtime) -> None:
    """Give each feature its loops and request handlers (one call per feature). The event
    stream comes first: its cursor is taken before a first full resync can start listing.
    Under Connect (stripe.accounts) each account has its stream and resync loop, on the replica
    that leases it (syncd.accounts)."""
    if runtime.cfg.stripe.accounts:
        accounts.attach(runtime)
    else:
        events.attach(runtime)
        resync_schedule.attach(runtime)
    runtime.startup.append(lambda: appschema.startup_step(runtime.db, runtime.cfg))
    history.attach(runtime)  # its view's policy follows the views' just installed
    usage_schedule.attach(runtime)
    verify_schedule.attach(runtime)


async def run_daemon(cfg: Config, features: Callable[[Runtime], None] = attach_features) -> int:
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
                # History's triggers as configured, before any write of this process (every
                # replica, as migrations: idempotent, one at a time).
                await history.apply_configured(db, cfg)
                log.info(
                    "daemon_started",
                    version=__version__,
                    migrations_applied=len(applied),
                    config=redacted(cfg),
                )
                daemon = Daemon(cfg, db, lifecycle, api)
                features(daemon.runtime)
                with lifecycle.work_scope:
                    async with anyio.create_task_group() as tg:
                        if cfg.http.enabled:
                            await tg.start(health.serve, daemon.runtime, name="http")
                        tg.start_soon(daemon.heartbeat_loop, name="heartbeat")
                        for name, loop in daemon.runtime.replica_loops:
                            tg.start_soon(loop, name=name)
                        await daemon.lead_when_elected()
                daemon.set_role("stopped")
                await _mark_stopped(db, daemon.runtime.instance_id)
            log.info("daemon_stopped", graceful=not lifecycle.work_scope.cancelled_caught)
            outer.cancel_scope.cancel()
    except Exception as exc:
        # A task group wraps errors; the CLI prints the deciding syncd error as one line.
        error = one_error(exc)
        if not isinstance(error, SyncdError):
            raise
        raise error from exc
    return 0


async def _mark_stopped(db: Database, instance_id: str) -> None:
    try:
        with anyio.fail_after(2):
            await db.execute("instance_stopped", instance_id)
    except (SyncdError, TimeoutError) as exc:
        log.warning("instance_stop_not_recorded", error=str(exc))
