"""A stop ends waits that only pass time: SIGTERM while every Stripe request backs off (503
forever) stops a real `syncd run` at once and gracefully, not after `daemon.shutdown_grace`."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import anyio
import pytest

from syncd import lifecycle
from syncd.emulator import Emulator
from tests.support.ops import DaemonProcess


async def wait_for(d: DaemonProcess, text: str, within: float = 30) -> None:
    """Without blocking this loop: the emulator serving the daemon runs in it."""
    with anyio.fail_after(within):
        while text not in d.output():
            assert d.proc.poll() is None, d.output()
            await anyio.sleep(0.05)


@pytest.mark.parametrize("status", [503, 429])
async def test_sigterm_during_stripe_backoff_exits_at_once_and_gracefully(
    tmp_path: Path, db_url: str, emulator: Emulator, status: int
) -> None:
    emulator.faults.set(pattern="*", status=status, error_rate=1.0)
    d = DaemonProcess(
        tmp_path,
        db_url,
        real=True,
        SYNCD_STRIPE_API_BASE=emulator.url,
        SYNCD_USAGE_ENABLED="false",
        SYNCD_DAEMON_SHUTDOWN_GRACE="30",
    )
    try:
        await wait_for(d, '"event":"stripe_retry"')  # backing off: the next tries take ~20 s
        sent = time.monotonic()
        d.signal(signal.SIGTERM)
        code = await anyio.to_thread.run_sync(d.proc.wait, 40)
        took = time.monotonic() - sent
    finally:
        d.stop()
    out = d.output()
    assert code == 0, out[-4000:]
    assert took < 5, took  # the grace is 30 s; a stop ends the backoff (about 1 s here)
    assert '"graceful":true' in out.replace(" ", "")
    assert "stripe_retry_abandoned" in out


async def test_pause_ends_on_a_stop_of_the_process() -> None:
    life = lifecycle.Lifecycle(5.0)
    async with anyio.create_task_group() as tg:
        await tg.start(life.watch_signals)
        assert await lifecycle.pause(0.01)
        started = time.monotonic()
        async with anyio.create_task_group() as inner:
            inner.start_soon(lambda: life_stop_soon(life))
            assert not await lifecycle.pause(30)
        assert time.monotonic() - started < 5
        tg.cancel_scope.cancel()
    assert await lifecycle.pause(0)  # nobody watches the signals any more


async def life_stop_soon(life: lifecycle.Lifecycle) -> None:
    await anyio.sleep(0.1)
    life.request_stop("test")
