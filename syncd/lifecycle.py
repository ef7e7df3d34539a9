"""How syncd's processes run: on uvloop, and signals become actions in exactly this module.

SIGTERM/SIGINT ask for a graceful stop: `stopping` is set, loops finish the batch in hand and
return; if they are not done within `shutdown_grace`, their scope is cancelled (an open
transaction rolls back, so the cursor stays consistent). A second SIGTERM/SIGINT cancels at once.
Other signals (SIGHUP: full resync, SIGUSR1: flush usage) call the handlers registered for them.

Waits that only pass time end at once on a stop: a loop's own sleep (`Lifecycle.sleep`) and,
deeper down, a Stripe request's backoff between retries (`pause`, which needs no Lifecycle
passed down: it follows the one watching this process's signals). An idle or backing-off
daemon so stops within moments, gracefully.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar, TypeVarTuple

import anyio
from anyio.abc import TaskStatus

from syncd.logs import get_logger

log = get_logger(__name__)
_STOP = (signal.SIGTERM, signal.SIGINT)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# The Lifecycle watching this process's signals (while its `watch_signals` runs).
_watching: list[Lifecycle] = []


def run(fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    """Run `fn` on uvloop: its event loop and sockets cost less CPU than asyncio's own (a full
    resync makes 4% more objects/s on the same machine, bench/resync_bench.py). Every syncd
    process (daemon, CLI commands, emulator, benchmarks) runs through here."""
    return anyio.run(fn, *args, backend_options={"use_uvloop": sys.platform != "win32"})


class Lifecycle:
    def __init__(self, shutdown_grace: float):
        self.shutdown_grace = shutdown_grace
        self.stopping = anyio.Event()
        self.work_scope = anyio.CancelScope()
        self._handlers: dict[signal.Signals, Callable[[], None]] = {}

    def on_signal(self, sig: signal.Signals, handler: Callable[[], None]) -> None:
        self._handlers[sig] = handler

    def request_stop(self, reason: str) -> None:
        if self.stopping.is_set():
            log.warning("shutdown_forced", reason=reason)
            self.work_scope.cancel()
            return
        log.info("shutdown_requested", reason=reason, grace_seconds=self.shutdown_grace)
        self.stopping.set()
        self.work_scope.deadline = anyio.current_time() + self.shutdown_grace

    async def sleep(self, seconds: float, wake: anyio.Event | None = None) -> bool:
        """Sleep until `seconds` pass, `wake` is set or a stop is requested.

        Returns False when the caller should stop, True otherwise.
        """
        with anyio.move_on_after(seconds):
            async with anyio.create_task_group() as tg:

                async def until(event: anyio.Event) -> None:
                    await event.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(until, self.stopping)
                if wake is not None:
                    tg.start_soon(until, wake)
        return not self.stopping.is_set()

    async def watch_signals(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        watched = [*_STOP, signal.SIGHUP, signal.SIGUSR1]
        with anyio.open_signal_receiver(*watched) as received:
            _watching.append(self)
            try:
                task_status.started()
                async for sig in received:
                    if sig in _STOP:
                        self.request_stop(signal.Signals(sig).name)
                    elif sig in self._handlers:
                        log.info("signal_received", signal=signal.Signals(sig).name)
                        self._handlers[signal.Signals(sig)]()
                    else:
                        log.info("signal_ignored", signal=signal.Signals(sig).name)
            finally:
                _watching.remove(self)


async def pause(seconds: float) -> bool:
    """Wait `seconds`, or less when this process is asked to stop (SIGTERM/SIGINT while a
    Lifecycle watches its signals): for waits deep inside a batch that only pass time, such as
    a Stripe request's backoff. False when stopping (the caller gives up), True otherwise."""
    if not _watching:
        await anyio.sleep(seconds)
        return True
    return await _watching[-1].sleep(seconds)
