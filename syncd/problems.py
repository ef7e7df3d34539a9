"""What keeps failing right now, said truthfully: set by the loops, read by `/readyz`, the
metrics and (through the heartbeat, `{state}.instances.problems`) by `syncd status`.

A loop that retries (the event stream unable to commit, a resync failing again and again)
reports under its own key while it fails and clears the key once it succeeds. `blocking`
problems make `/readyz` answer 503 and `syncd status` exit 1: the replica cannot do its job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from syncd import metrics
from syncd.logs import get_logger

log = get_logger(__name__)


@dataclass
class Problem:
    message: str
    since: float
    blocking: bool


class Problems:
    def __init__(self) -> None:
        self._now: dict[str, Problem] = {}
        # Called when a problem starts or ends (the daemon beats at once: status sees it).
        self.on_change: Callable[[], None] = lambda: None

    def report(self, key: str, message: str, *, blocking: bool) -> None:
        known = self._now.get(key)
        self._now[key] = Problem(message, known.since if known else time.time(), blocking)
        metrics.problems.labels(key).set(1)
        if known is None:
            log.warning("problem_started", problem=key, message=message, blocking=blocking)
            self.on_change()

    def clear(self, key: str) -> None:
        known = self._now.pop(key, None)
        if known is not None:
            metrics.problems.labels(key).set(0)
            log.info("problem_cleared", problem=key, seconds=round(time.time() - known.since))
            self.on_change()

    def blocking(self) -> dict[str, Problem]:
        return {k: p for k, p in self._now.items() if p.blocking}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """JSON for the heartbeat: what, since when (unix time), whether it blocks."""
        return {
            k: {"message": p.message, "since": round(p.since, 1), "blocking": p.blocking}
            for k, p in self._now.items()
        }
