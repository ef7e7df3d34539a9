"""`syncd resync` never hangs silently (the real CLI as a subprocess): no daemon is said within
seconds, `--direct` resyncs in the calling process, `--wait` prints failed attempts as they
happen and exits non-zero when the run ends badly or `--timeout` passes, and a PostgreSQL
restart while waiting is ridden out."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import asyncpg
import pytest

from syncd.emulator import Emulator
from syncd.pgserver import LocalPostgres
from tests.conftest import ROOT, TEST_API_KEY, syncd_cli
from tests.support.resync import daemon_env, mirror_differences, start_daemon, stop

pytestmark = pytest.mark.timeout(120)


def cli_env(db_url: str, emu: Emulator | None = None, **extra: str) -> dict[str, str]:
    env = {
        "SYNCD_DATABASE_URL": db_url,
        "STRIPE_API_KEY": TEST_API_KEY,
        "SYNCD_LOG_LEVEL": "warning",
    }
    if emu is not None:
        env.update(SYNCD_STRIPE_API_BASE=emu.url, SYNCD_STRIPE_RATE_LIMIT="1000")
    env.update(extra)
    return env


async def cli(
    *args: str, env: dict[str, str], limit: float = 60
) -> subprocess.CompletedProcess[str]:
    """The CLI in a thread: the emulator it talks to is served by this test's event loop."""
    return await anyio.to_thread.run_sync(lambda: syncd_cli(*args, env=env, timeout=limit))


async def sql(db_url: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def fake_leader(db_url: str) -> None:
    """A leader heartbeat that stays live (the test plays the daemon's part by hand)."""
    await sql(
        db_url,
        "INSERT INTO syncd.instances (instance_id, hostname, pid, version, role, beat_at)"
        " VALUES ('fake-leader', 'test', 1, 'test', 'leader', now() + interval '1 hour')",
    )


async def take_request(db_url: str, run_status: str = "running") -> int:
    """Play the daemon: claim the pending resync request, answer it with a new run."""
    with anyio.fail_after(30):
        while True:
            rows = await sql(
                db_url, "SELECT id FROM syncd.requests WHERE kind = 'resync' AND status = 'pending'"
            )
            if rows:
                break
            await anyio.sleep(0.1)
    [run] = await sql(
        db_url,
        "INSERT INTO syncd.resync_runs (tables, reason, status) VALUES ('{customers}', 'cli', $1)"
        " RETURNING run_id",
        run_status,
    )
    await sql(
        db_url,
        "UPDATE syncd.requests SET status = 'done', result = jsonb_build_object('run_id', $2::int)"
        " WHERE id = $1",
        rows[0]["id"],
        run["run_id"],
    )
    return int(run["run_id"])


@asynccontextmanager
async def waiting(env: dict[str, str], *args: str) -> AsyncIterator[anyio.abc.Process]:
    """`syncd resync --wait ...` running in the background."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCD_", "STRIPE_"))}
    full.update(env, PYTHONPATH=str(ROOT))
    proc = await anyio.open_process(
        [sys.executable, "-m", "syncd", "resync", "--wait", *args],
        env=full,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.aclose()


async def finish(proc: anyio.abc.Process, within: float = 60) -> tuple[int, str]:
    assert proc.stdout is not None
    chunks: list[bytes] = []
    with anyio.fail_after(within):
        async for chunk in proc.stdout:
            chunks.append(chunk)
        code = await proc.wait()
    return code, b"".join(chunks).decode()


# ---- no daemon ------------------------------------------------------------------------------


async def test_wait_without_a_daemon_says_so_within_seconds(db_url: str) -> None:
    started = time.monotonic()
    done = await cli("resync", "--wait", env=cli_env(db_url), limit=30)
    took = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    assert took < 15, took  # said within 10 s (plus the interpreter's start)
    assert "no syncd daemon is running" in done.stdout and "--direct" in done.stdout
    assert "Traceback" not in done.stderr
    [request] = await sql(db_url, "SELECT status, error FROM syncd.requests")
    assert request["status"] == "failed"  # withdrawn: a daemon started later will not run it

    # Without --wait the request stays queued for the next daemon, with a note.
    queued = await cli("resync", env=cli_env(db_url))
    assert queued.returncode == 0, queued.stderr
    assert "resync requested" in queued.stdout and "--direct" in queued.stdout


async def test_direct_resyncs_in_this_process(db_url: str, emulator: Emulator) -> None:
    emulator.seed(customers=25, products=2, subscriptions=0)
    done = await cli("resync", "--direct", "--type", "customers", env=cli_env(db_url, emulator))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "customers" in done.stdout and "running in this process" in done.stdout
    rows = await sql(db_url, "SELECT status, reason FROM syncd.resync_runs")
    assert [(r["status"], r["reason"]) for r in rows] == [("done", "cli_direct")]
    # The events cursor was taken first, as the daemon does, so a daemon started later streams
    # every change made since the resync began.
    assert await sql(db_url, "SELECT 1 FROM syncd.events_cursor")

    from syncd.config import DatabaseConfig
    from syncd.db import Database

    async with Database.connect(DatabaseConfig(url=db_url), min_size=1) as db:
        assert await mirror_differences(db, emulator, ["customers"]) == []


async def test_direct_exits_non_zero_when_the_run_fails_or_has_problems(
    db_url: str, emulator: Emulator
) -> None:
    emulator.seed(customers=5, products=1, subscriptions=0)
    emulator.faults.set(pattern="GET /v1/customers", status=503, error_rate=1.0, times=2)
    env = cli_env(db_url, emulator, SYNCD_STRIPE_MAX_RETRIES="0", SYNCD_EVENTS_ENABLED="false")
    failed = await cli("resync", "--direct", "--type", "customers", env=env)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "failed" in failed.stdout and "503" in failed.stdout and "Traceback" not in failed.stderr
    [run] = await sql(db_url, "SELECT status, attempts, error FROM syncd.resync_runs")
    assert (
        run["status"] in ("pending", "running") and run["attempts"] == 1 and "503" in run["error"]
    )
    # Run again: the same run resumes and ends; a type the key may not list is a problem.
    emulator.faults.clear()
    emulator.faults.set(pattern="GET /v1/products", status=403, error_rate=1.0)
    ok = await cli("resync", "--direct", "--type", "customers", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    problems = await cli("resync", "--direct", "--type", "products", env=env)
    assert problems.returncode == 1, problems.stdout + problems.stderr
    assert "done with problems" in problems.stdout and "products:" in problems.stdout


async def test_direct_refuses_while_a_daemon_leads(db_url: str) -> None:
    await fake_leader(db_url)
    done = await cli("resync", "--direct", env=cli_env(db_url))
    assert done.returncode == 1 and "syncd resync --wait" in done.stdout, done.stdout


# ---- a daemon that fails -----------------------------------------------------------------


async def test_wait_prints_failed_attempts_and_gives_up_at_the_timeout(
    db_url: str, emulator: Emulator
) -> None:
    emulator.seed(customers=5, products=1, subscriptions=0)
    emulator.faults.set(pattern="GET /v1/customers", status=503, error_rate=1.0)
    env = daemon_env(
        db_url,
        emulator,
        SYNCD_SYNC_RESYNC_ON_EMPTY="false",
        SYNCD_STRIPE_MAX_RETRIES="0",
        SYNCD_DAEMON_HEARTBEAT_INTERVAL="0.5",
        SYNCD_LOG_LEVEL="warning",
    )
    daemon = await start_daemon(env)
    try:
        with anyio.fail_after(60):  # the daemon leads before the command asks it
            while True:
                if await sql(db_url, "SELECT 1 FROM syncd.instances WHERE role = 'leader'"):
                    break
                await anyio.sleep(0.1)
        async with waiting(env, "--type", "customers", "--timeout", "14") as proc:
            started = time.monotonic()
            code, out = await finish(proc)
            took = time.monotonic() - started
    finally:
        await stop(daemon)
    assert code == 1, out
    assert took < 30, took
    # The daemon retries after ~5 s, then ~10 s: two failures are seen as they happen.
    assert "attempt 1 failed (the daemon tries again in " in out, out
    assert "Stripe answered 503 on /v1/customers" in out and "attempt 2 failed" in out, out
    assert "gave up waiting after 14s (--timeout)" in out, out
    [run] = await sql(db_url, "SELECT status, attempts, next_try_at FROM syncd.resync_runs")
    assert run["attempts"] >= 2 and run["next_try_at"] is not None


async def test_wait_exits_non_zero_for_problems_and_failures(db_url: str) -> None:
    await fake_leader(db_url)
    env = cli_env(db_url)
    async with waiting(env) as proc:
        run_id = await take_request(db_url)
        await sql(
            db_url,
            "INSERT INTO syncd.resync_tables (run_id, table_name, status, error) VALUES"
            " ($1, 'customers', 'swept', NULL), ($1, 'tax_ids', 'unavailable', 'HTTP 403: no')",
            run_id,
        )
        await sql(
            db_url,
            "UPDATE syncd.resync_runs SET status = 'done_with_problems',"
            " error = 'tax_ids: HTTP 403: no' WHERE run_id = $1",
            run_id,
        )
        code, out = await finish(proc)
    assert code == 1, out
    assert "done with problems" in out and "tax_ids: HTTP 403: no" in out, out

    async with waiting(env) as proc:
        run_id = await take_request(db_url)
        await sql(
            db_url,
            "UPDATE syncd.resync_runs SET status = 'failed', error = 'gave up' WHERE run_id = $1",
            run_id,
        )
        code, out = await finish(proc)
    assert code == 1, out
    assert f"resync {run_id} failed: gave up" in out, out


# ---- PostgreSQL restarts ----------------------------------------------------------------


@pytest.mark.slow
async def test_wait_rides_out_a_postgres_restart(
    own_server_url: tuple[str, LocalPostgres],
) -> None:
    dsn, local = own_server_url
    await fake_leader(dsn)
    async with waiting(cli_env(dsn)) as proc:
        run_id = await take_request(dsn)
        await anyio.sleep(1.5)  # watching
        await anyio.to_thread.run_sync(local.stop)
        await anyio.sleep(3)  # several polls fail
        await anyio.to_thread.run_sync(local.start)
        await sql(dsn, "UPDATE syncd.resync_runs SET status = 'done' WHERE run_id = $1", run_id)
        code, out = await finish(proc)
    assert code == 0, out
    assert "database unavailable, still waiting" in out and "database back" in out, out
    assert "Traceback" not in out, out
