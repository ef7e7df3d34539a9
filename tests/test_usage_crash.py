"""Exactly once under crashes and concurrency.

The real CLI (`syncd flush-usage --direct`) runs as a subprocess against the emulator served by
this test's event loop and is killed with SIGKILL at random points, including while Stripe's
answer is held back after the event was recorded (`after_ms`), i.e. between Stripe's answer and
the commit. Reruns until every row is reported; the emulator's totals must equal the rows' sums.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from typing import Any

import anyio
import asyncpg
import pytest

from syncd.config import Config
from syncd.db import Database
from syncd.emulator import Emulator
from syncd.stripe_api import StripeAPI
from syncd.usage import FlushResult, UsageFlusher
from tests.conftest import ROOT, TEST_API_KEY, emulator_config
from tests.support.usage import (
    cli_env,
    customers,
    emulator_totals,
    insert_rows,
    make_meter,
    random_rows,
    row_totals,
    statuses,
)

METER_POST = "POST /v1/billing/meter_events"


async def run_cli(env: dict[str, str], kill_after: float | None) -> int | None:
    """Run `syncd flush-usage --direct`; SIGKILL it after `kill_after` s. None: it was killed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncd",
        "flush-usage",
        "--direct",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        if kill_after is None:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            return proc.returncode
        try:
            await asyncio.wait_for(proc.wait(), kill_after)
            return proc.returncode
        except TimeoutError:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            return None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_kill_9_at_random_points_never_loses_or_double_counts(
    db_url: str, emulator: Emulator
) -> None:
    meter = await make_meter(emulator, "api_calls")
    ids = [c["id"] for c in customers(emulator, 40)]
    rows = random_rows(ids, 3000, spread=600, seed=11)
    await insert_rows(db_url, rows)
    # Every recorded event's answer is held back 120 ms: a kill then lands between Stripe's
    # answer and the commit most of the time.
    emulator.faults.set(pattern=METER_POST, after_ms=120)
    env = cli_env(db_url, emulator, SYNCD_USAGE_BATCH_SIZE="1000", SYNCD_USAGE_CONCURRENCY="8")
    rng = random.Random(2024)
    kills = 0
    for attempt in range(8):
        # Every other run uses another key (a rotated key): Idempotency-Key replays are per key,
        # so across keys only the meter event identifier stops a second count.
        env["SYNCD_STRIPE_API_KEY"] = TEST_API_KEY + ("rotated" if attempt % 2 else "")
        if await run_cli(env, kill_after=rng.uniform(2.0, 5.0)) is None:
            kills += 1
        if await statuses(db_url) == {"reported": len(rows)}:
            break
    while await statuses(db_url) != {"reported": len(rows)}:
        await run_cli(env, kill_after=None)
    assert kills >= 3
    # Kills landed after Stripe recorded events and before the commit: those events were sent
    # again, answered by an idempotent replay or "already exists", and counted once.
    sent = await sent_events(db_url)
    assert emulator.stats.count(METER_POST) > sent["events"]
    assert emulator.stats.count(METER_POST, 400) > 0
    assert emulator_totals(emulator, {"api_calls": meter}) == await row_totals(db_url)


async def flush_with(cfg: Config, name: str) -> FlushResult:
    async with Database.connect(cfg.database, min_size=1) as db, StripeAPI(cfg) as api:
        return await UsageFlusher(cfg, db, api, instance=name).flush()


async def sent_events(db_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(db_url)
    try:
        return dict(
            await conn.fetchrow(
                "SELECT count(*) AS events, sum(rows) AS rows,"
                " count(DISTINCT identifier) AS identifiers FROM syncd.usage_events"
            )
            or {}
        )
    finally:
        await conn.close()


async def test_two_concurrent_flushes_never_send_a_row_twice(
    db_url: str, emulator: Emulator
) -> None:
    meter = await make_meter(emulator, "api_calls")
    ids = [c["id"] for c in customers(emulator, 30)]
    await insert_rows(db_url, random_rows(ids, 6000, spread=600))
    emulator.faults.set(pattern=METER_POST, latency_ms=5)
    cfg = emulator_config(
        db_url, emulator, usage={"meters": {"api_calls": "api_calls"}, "batch_size": 500}
    )
    results: list[FlushResult] = []

    async def one(name: str) -> None:
        results.append(await flush_with(cfg, name))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "a")
        tg.start_soon(one, "b")
    assert await statuses(db_url) == {"reported": 6000}
    # Both took part, and each row went into exactly one request, sent exactly once.
    assert all(r.rows_reported > 0 for r in results)
    assert sum(r.rows_reported for r in results) == 6000
    sent = await sent_events(db_url)
    assert sent["rows"] == 6000
    assert emulator.stats.count(METER_POST) == sent["events"] == sent["identifiers"]
    assert emulator.stats.count(METER_POST, 400) == 0
    assert emulator_totals(emulator, {"api_calls": meter}) == await row_totals(db_url)


async def test_orphaned_batch_is_resent_by_one_flush_only(db_url: str, emulator: Emulator) -> None:
    meter = await make_meter(emulator, "api_calls")
    ids = [c["id"] for c in customers(emulator, 20)]
    await insert_rows(db_url, random_rows(ids, 1000, spread=600))
    emulator.faults.set(pattern=METER_POST, status=500, error_rate=1.0)
    cfg = emulator_config(
        db_url,
        emulator,
        usage={"meters": {"api_calls": "api_calls"}},
        stripe={"max_retries": 0},
    )
    assert (await flush_with(cfg, "crashed")).events_unsent > 0  # batch left 'sending'
    emulator.faults.clear()
    emulator.stats.reset()
    emulator.faults.set(pattern=METER_POST, latency_ms=5)
    results: list[FlushResult] = []

    async def one(name: str) -> None:
        results.append(await flush_with(cfg, name))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "a")
        tg.start_soon(one, "b")
    assert sorted(r.batches_recovered for r in results) == [0, 1]
    sent = await sent_events(db_url)
    assert emulator.stats.count(METER_POST) == sent["events"]
    assert await statuses(db_url) == {"reported": 1000}
    assert emulator_totals(emulator, {"api_calls": meter}) == await row_totals(db_url)


async def test_two_cli_flushes_at_once(db_url: str, emulator: Emulator) -> None:
    meter = await make_meter(emulator, "api_calls")
    ids = [c["id"] for c in customers(emulator, 30)]
    await insert_rows(db_url, random_rows(ids, 3000, spread=600))
    emulator.faults.set(pattern=METER_POST, latency_ms=5)
    env = cli_env(db_url, emulator, SYNCD_USAGE_BATCH_SIZE="300")
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_cli, env, None)
        tg.start_soon(run_cli, env, None)
    assert await statuses(db_url) == {"reported": 3000}
    sent = await sent_events(db_url)
    assert emulator.stats.count(METER_POST) == sent["events"]
    assert emulator.stats.count(METER_POST, 400) == 0
    assert emulator_totals(emulator, {"api_calls": meter}) == await row_totals(db_url)


async def test_stop_request_ends_sending_early_and_the_next_flush_finishes(
    db_url: str, emulator: Emulator
) -> None:
    meter = await make_meter(emulator, "api_calls")
    ids = [c["id"] for c in customers(emulator, 20)]
    await insert_rows(db_url, random_rows(ids, 2000, spread=600))
    emulator.faults.set(pattern=METER_POST, latency_ms=40)
    cfg = emulator_config(
        db_url, emulator, usage={"meters": {"api_calls": "api_calls"}, "concurrency": 2}
    )
    stopping = anyio.Event()
    results: list[FlushResult] = []
    async with Database.connect(cfg.database, min_size=1) as db, StripeAPI(cfg) as api:
        flusher = UsageFlusher(cfg, db, api, stopping=stopping)

        async def run() -> None:
            results.append(await flusher.flush())

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await anyio.sleep(1.0)
            stopping.set()  # SIGTERM: the daemon's lifecycle sets this
    assert results[0].events_unsent > 0 and results[0].rows_reported > 0
    assert "sending" in await statuses(db_url)
    assert (await flush_with(cfg, "next")).batches_recovered == 1
    assert await statuses(db_url) == {"reported": 2000}
    assert emulator_totals(emulator, {"api_calls": meter}) == await row_totals(db_url)
