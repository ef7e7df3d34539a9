"""Signals on a real `syncd run`: SIGTERM in the middle of a batch, the grace period, a second
signal, and SIGHUP reaching its registered handler."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import anyio

from tests.support.ops import DaemonProcess, consistency, prepare


async def test_sigterm_mid_batch_finishes_the_batch_and_exits_0(
    tmp_path: Path, db_url: str
) -> None:
    await prepare(db_url)
    # A batch takes ~1.5 s; the grace (5 s) is long enough to finish it.
    d = DaemonProcess(
        tmp_path,
        db_url,
        TEST_BATCH_ROWS="15",
        TEST_ROW_DELAY="0.1",
        SYNCD_DAEMON_SHUTDOWN_GRACE="5",
    )
    try:
        d.wait_for("batch_committed")
        offset = len(d.output())
        d.wait_for("batch_started", after=offset)
        await anyio.sleep(0.4)  # well inside the batch
        sent = time.monotonic()
        d.signal(signal.SIGTERM)
        code = d.wait(timeout=15)
        took = time.monotonic() - sent
    finally:
        d.stop()
    assert code == 0, d.output()
    assert took < 5 + 2, took
    cursor, rows, top = await consistency(db_url)
    assert cursor == rows == top
    assert cursor % 15 == 0 and cursor >= 30  # the interrupted batch committed whole
    assert '"graceful":true' in d.output().replace(" ", "")


async def test_sigterm_past_grace_rolls_the_batch_back_and_exits_0(
    tmp_path: Path, db_url: str
) -> None:
    await prepare(db_url)
    # A batch takes ~6 s, the grace is 1 s: the batch is cancelled and rolls back.
    d = DaemonProcess(
        tmp_path,
        db_url,
        TEST_BATCH_ROWS="30",
        TEST_ROW_DELAY="0.2",
        SYNCD_DAEMON_SHUTDOWN_GRACE="1",
    )
    try:
        d.wait_for("batch_started")
        await anyio.sleep(0.5)
        sent = time.monotonic()
        d.signal(signal.SIGTERM)
        code = d.wait(timeout=15)
        took = time.monotonic() - sent
    finally:
        d.stop()
    assert code == 0, d.output()
    assert took < 1 + 2.5, took
    cursor, rows, top = await consistency(db_url)
    assert cursor == rows == top == 0  # nothing half-written
    assert "batch_committed" not in d.output()
    assert '"graceful":false' in d.output().replace(" ", "")


async def test_second_signal_stops_at_once(tmp_path: Path, db_url: str) -> None:
    await prepare(db_url)
    d = DaemonProcess(
        tmp_path,
        db_url,
        TEST_BATCH_ROWS="50",
        TEST_ROW_DELAY="0.2",
        SYNCD_DAEMON_SHUTDOWN_GRACE="60",
    )
    try:
        d.wait_for("batch_started")
        d.signal(signal.SIGTERM)
        d.wait_for("shutdown_requested")
        sent = time.monotonic()
        d.signal(signal.SIGINT)
        code = d.wait(timeout=15)
        took = time.monotonic() - sent
    finally:
        d.stop()
    assert code == 0, d.output()
    assert took < 3, took
    assert "shutdown_forced" in d.output()
    cursor, rows, top = await consistency(db_url)
    assert cursor == rows == top == 0


async def test_sighup_runs_the_registered_handler(tmp_path: Path, db_url: str) -> None:
    import asyncpg

    await prepare(db_url)
    d = DaemonProcess(tmp_path, db_url)
    try:
        d.wait_for("batch_committed")
        d.signal(signal.SIGHUP)
        d.wait_for('"signal":"SIGHUP"')
        conn = await asyncpg.connect(db_url)
        try:
            deadline = time.monotonic() + 10
            seen = 0
            while time.monotonic() < deadline and not seen:
                seen = await conn.fetchval("SELECT count(*) FROM ops_signals WHERE sig='SIGHUP'")
                await anyio.sleep(0.1)
        finally:
            await conn.close()
        assert seen == 1
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=15) == 0
    finally:
        d.stop()


def test_processes_run_on_uvloop() -> None:
    """The daemon, the CLI and the emulator run through lifecycle.run: on uvloop, whose loop and
    sockets cost less CPU than asyncio's (4% more resync throughput, docs/resync.md)."""
    import asyncio

    from syncd import lifecycle

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert lifecycle.run(loop_module).startswith("uvloop")
