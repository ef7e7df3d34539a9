"""The usage loop in the real daemon: flush at start, on schedule, on SIGUSR1 and on
`syncd flush-usage` from another process; the schedule's configuration."""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import pytest

from syncd.emulator import Emulator
from syncd.errors import ConfigError
from syncd.usage_schedule import trigger
from tests.conftest import ROOT, make_config
from tests.support.usage import (
    cli,
    cli_env,
    customers,
    emulator_totals,
    insert_rows,
    make_meter,
    random_rows,
    row_totals,
    statuses,
)


async def wait_for_status(db_url: str, expected: dict[str, int], within: float = 30) -> None:
    for _ in range(int(within / 0.2)):
        if await statuses(db_url) == expected:
            return
        await anyio.sleep(0.2)
    assert await statuses(db_url) == expected


async def test_daemon_flushes_at_start_on_request_and_on_sigusr1(
    db_url: str, emulator: Emulator
) -> None:
    meter = await make_meter(emulator, "api_calls")
    ids = [c["id"] for c in customers(emulator, 5)]
    await insert_rows(db_url, random_rows(ids, 50, seed=1))
    env = cli_env(
        db_url,
        emulator,
        SYNCD_USAGE_INTERVAL="3600",
        SYNCD_HTTP_ENABLED="false",
        SYNCD_USAGE_API_KEY="sk_test_usageonly0001",  # its own client, the daemon's limiter
    )
    daemon = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncd",
        "run",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_for_status(db_url, {"reported": 50})  # the flush at start
        await insert_rows(db_url, random_rows(ids, 30, seed=2))
        code, out, err = await cli("flush-usage", env=env)
        assert code == 0, err
        assert "30 rows reported" in out
        await insert_rows(db_url, random_rows(ids, 20, seed=3))
        daemon.send_signal(signal.SIGUSR1)
        await wait_for_status(db_url, {"reported": 100})
        daemon.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            await daemon.wait()
        assert daemon.returncode == 0
    finally:
        if daemon.returncode is None:
            daemon.kill()
        await daemon.communicate()
    assert emulator_totals(emulator, {"api_calls": meter}) == await row_totals(db_url)


async def test_daemon_flushes_on_its_interval(db_url: str, emulator: Emulator) -> None:
    await make_meter(emulator, "api_calls")
    ids = [c["id"] for c in customers(emulator, 3)]
    env = cli_env(db_url, emulator, SYNCD_USAGE_INTERVAL="1", SYNCD_HTTP_ENABLED="false")
    daemon = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncd",
        "run",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await anyio.sleep(3)  # started, first flush done with nothing to report
        await insert_rows(db_url, random_rows(ids, 10))
        await wait_for_status(db_url, {"reported": 10}, within=20)  # nobody asked: the schedule
    finally:
        daemon.send_signal(signal.SIGTERM)
        await daemon.communicate()


async def test_flush_usage_without_a_daemon_says_so(db_url: str, emulator: Emulator) -> None:
    env = cli_env(db_url, emulator)
    code, out, _ = await cli("flush-usage", "--timeout", "1", env=env)
    assert code == 1
    assert "no daemon took the request within 1s" in out and "--direct" in out
    conn = await asyncpg.connect(db_url)
    try:  # withdrawn: a daemon starting later does not run a stale request
        assert await conn.fetchval("SELECT status FROM syncd.requests") == "failed"
    finally:
        await conn.close()


async def test_flush_usage_direct_prints_what_it_did(db_url: str, emulator: Emulator) -> None:
    await make_meter(emulator, "api_calls")
    (cus,) = [c["id"] for c in customers(emulator, 1)]
    now = datetime.now(UTC)
    await insert_rows(
        db_url,
        [
            (None, None, cus, "api_calls", 5, now),
            (None, None, cus, "nope", 1, now),
            (None, None, cus, "api_calls", 1, now + timedelta(minutes=10)),
        ],
    )
    code, out, err = await cli("flush-usage", "--direct", env=cli_env(db_url, emulator))
    assert code == 0, err
    assert "1 rows reported, 0 failed, 1 rejected, 1 waiting; 1 requests to Stripe" in out


def test_schedule_is_interval_or_cron() -> None:
    every = trigger(make_config("postgresql://x/y", usage={"interval": 30.0}))
    assert "interval" in str(every) and "0:00:30" in str(every)
    cron = trigger(make_config("postgresql://x/y", usage={"cron": "*/5 * * * *"}))
    start = datetime(2026, 1, 1, 12, 1, 30, tzinfo=UTC)
    assert cron.get_next_fire_time(None, start) == datetime(2026, 1, 1, 12, 5, tzinfo=UTC)
    with pytest.raises(ConfigError, match=r"^usage.cron: '61 \* \* \* \*' is not valid"):
        trigger(make_config("postgresql://x/y", usage={"cron": "61 * * * *"}))


async def test_bad_cron_stops_the_daemon_with_exit_2(db_url: str, emulator: Emulator) -> None:
    env = cli_env(db_url, emulator, SYNCD_USAGE_CRON="61 * * * *", SYNCD_HTTP_ENABLED="false")
    code, _, err = await cli("run", env=env)
    assert code == 2
    assert "usage.cron: '61 * * * *' is not valid" in err
