"""What the daemon's features are given: one `Runtime`, built once by `syncd.daemon` (the
composition root) and passed to each feature's `attach(runtime)`, and the `State` that the
daemon and its loops write and `/healthz`, `/readyz` and the heartbeat read.

This module imports no feature and not the daemon, so features, `health` and `daemon` import it
without importing each other. The Prometheus gauges are outputs only: what is read back comes
from `State`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from syncd import metrics
from syncd.config import Config
from syncd.control import ControlLoop
from syncd.db import Database
from syncd.lifecycle import Lifecycle
from syncd.problems import Problems
from syncd.stripe_api import StripeAPI
from syncd.writer import Writer

Task = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class State:
    """What this replica is doing now."""

    problems: Problems = field(default_factory=Problems)
    role: str = "starting"  # starting, standby, leader, stopped
    leader_since: float = 0.0  # unix time; 0 unless leading
    last_beat: float = 0.0  # anyio.current_time() of the heartbeat loop's last round
    http_bind: str = ""  # the address the HTTP server got
    last_success: dict[str, float] = field(default_factory=dict)  # loop -> unix time

    def succeeded(self, loop: str) -> None:
        """A loop did its job: recorded here and shown in `syncd_last_success_timestamp_seconds`."""
        now = time.time()
        self.last_success[loop] = now
        metrics.last_success.labels(loop).set(now)


@dataclass
class Runtime:
    """The shared parts: one Stripe client (so one rate limiter) and one writer for every
    feature; the leader's loops and startup steps, filled in by the features' `attach`."""

    cfg: Config
    db: Database
    api: StripeAPI
    writer: Writer
    lifecycle: Lifecycle
    control: ControlLoop
    state: State
    instance_id: str
    loops: list[tuple[str, Task]] = field(default_factory=list)
    # Loops every replica runs, leader or not (Connect: leasing and syncing accounts).
    replica_loops: list[tuple[str, Task]] = field(default_factory=list)
    # Awaited in order before the loops start (e.g. taking the events cursor before a first
    # full resync can begin listing).
    startup: list[Task] = field(default_factory=list)

    @property
    def problems(self) -> Problems:
        return self.state.problems

    def add_loop(self, name: str, loop: Task) -> None:
        self.loops.append((name, loop))
