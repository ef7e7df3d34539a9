"""How syncd's processes run: on uvloop, and signals become actions in exactly this module.

SIGTERM/SIGINT ask for a graceful stop: `stopping` is set, loops finish the batch in hand and
return; if they are not done within `shutdown_grace`, their scope is cancelled (an open
transaction rolls back, so the cursor stays consistent). A second SIGTERM/SIGINT cancels at once.
Other signals (SIGHUP: full resync, SIGUSR1: flush usage) call the handlers registered for them.

Waits that only pass time end at once on a stop: a loop's own sleep (`Lifecycle.sleep`) and,
deeper down, a Stripe request's backoff between retries (`pause`, which needs no Lifecycle
passed down: it follows the one watching this process's signals). An idle or backing-off
daemon so stops within moments, gracefully. How long a retrying loop waits comes from one
place too: `Backoff`.
"""

from __future__ import annotations

import random
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, TypeVarTuple

import anyio
from anyio.abc import TaskStatus

from syncd.errors import SyncdError
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

    async def repeat(
        self, every: float, action: Callable[[], Awaitable[object]], failed: str
    ) -> None:
        """`action` now and then every `every` seconds, until stopping. Retryable errors
        (PostgreSQL unavailable) are retried with backoff, logged as `failed`; anything else
        ends the daemon loudly."""
        backoff = Backoff()
        while True:
            try:
                await action()
            except SyncdError as exc:
                delay = backoff.retry_in(exc, failed)
            else:
                backoff.reset()
                delay = every
            if not await self.sleep(delay):
                return

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


class Backoff:
    """Bounded, jittered exponential backoff for retryable errors inside a loop: the n-th
    delay (from 0) is `min(cap, base * 2**n)` times a random factor within `jitter`."""

    def __init__(
        self, base: float = 0.5, cap: float = 30.0, jitter: tuple[float, float] = (0.5, 1.0)
    ):
        self.base, self.cap, self.jitter, self.attempt = base, cap, jitter, 0

    def next(self) -> float:
        delay: float = min(self.cap, self.base * 2**self.attempt) * random.uniform(*self.jitter)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0

    def retry_in(self, exc: SyncdError, event: str, **context: Any) -> float:
        """The wait before trying again after `exc`, logged as `event`; an error that is not
        retryable is raised again (it ends the loop, and so the daemon, loudly)."""
        if not exc.retryable:
            raise exc
        delay = self.next()
        log.warning(event, error=str(exc), retry_in=round(delay, 2), **context)
        return delay


async def pause(seconds: float) -> bool:
    """Wait `seconds`, or less when this process is asked to stop (SIGTERM/SIGINT while a
    Lifecycle watches its signals): for waits deep inside a batch that only pass time, such as
    a Stripe request's backoff. False when stopping (the caller gives up), True otherwise."""
    if not _watching:
        await anyio.sleep(seconds)
        return True
    return await _watching[-1].sleep(seconds)
