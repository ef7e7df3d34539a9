"""The resync through the real daemon and CLI (subprocesses): `syncd resync --wait` from another
process, and `kill -9` at random points of a resync followed by a restart that finishes it."""

from __future__ import annotations

import random
import signal
import sys

import anyio
import anyio.abc

from syncd.config import Config
from syncd.db import Database
from syncd.emulator import Emulator
from syncd.registry import BY_TABLE
from syncd.stripe_api import StripeAPI
from tests.conftest import ROOT, TEST_API_KEY, emulator_config, make_config, syncd_cli
from tests.support.resync import (
    child_sets,
    daemon_env,
    emulator_children,
    mirror_differences,
    start_daemon,
    stop,
)


async def test_cli_resync_wait_against_a_running_daemon(db_url: str, emulator: Emulator) -> None:
    emulator.seed(customers=60, products=3, subscriptions=20, big_every=4, canceled_fraction=0.3)
    env = daemon_env(db_url, emulator, SYNCD_SYNC_RESYNC_ON_EMPTY="false")
    daemon = await start_daemon(env)
    try:
        with anyio.fail_after(90):
            done = await anyio.run_process(
                [sys.executable, "-m", "syncd", "resync", "--wait"],
                env=env,
                cwd=ROOT,
                check=False,
            )
        out = done.stdout.decode()
        assert done.returncode == 0, out + done.stderr.decode()
        assert "done" in out and "customers" in out
    finally:
        await stop(daemon)
    cfg = emulator_config(db_url, emulator)
    async with Database.connect(cfg.database) as db, StripeAPI(cfg) as api:
        assert await mirror_differences(db, emulator, list(BY_TABLE)) == []
        assert await child_sets(db) == await emulator_children(api, emulator)


async def test_kill_9_at_random_points_then_restart_ends_the_same(
    db_url: str, emulator: Emulator
) -> None:
    emulator.seed(customers=1500, products=3, subscriptions=150, big_every=10)
    emulator.faults.set(pattern="GET *", latency_ms=3, jitter_ms=6)
    env = daemon_env(
        db_url,
        emulator,
        SYNCD_SYNC_PER_PARENT_LISTS="false",
        SYNCD_SYNC_CONCURRENCY="4",
        # Bounded by our own limiter, so the run lasts long enough to be killed three times.
        SYNCD_STRIPE_RATE_LIMIT="30",
    )
    cfg: Config = make_config(db_url)
    rng = random.Random(7)
    async with Database.connect(cfg.database) as db:
        for kills in range(3):
            daemon = await start_daemon(env)
            # Kill once the run has written something (a random moment of its work).
            with anyio.fail_after(60):
                while True:
                    pages = await db.run(
                        lambda c: c.fetchval(
                            "SELECT COALESCE(sum(pages), 0) FROM syncd.resync_slices"
                        ),
                        transaction=False,
                    )
                    if pages and pages > kills * 6:
                        break
                    await anyio.sleep(0.05)
            await anyio.sleep(rng.uniform(0.0, 0.8))
            await stop(daemon, signal.SIGKILL)
        status = await db.run(
            lambda c: c.fetchval("SELECT status FROM syncd.resync_runs WHERE run_id = 1"),
            transaction=False,
        )
        assert status == "running"  # killed mid-run every time
        daemon = await start_daemon(env)
        try:
            with anyio.fail_after(120):
                while True:
                    runs = await db.run(
                        lambda c: c.fetch("SELECT run_id, status FROM syncd.resync_runs"),
                        transaction=False,
                    )
                    if runs and all(r["status"] == "done" for r in runs):
                        break
                    await anyio.sleep(0.2)
        finally:
            await stop(daemon)
        assert [r["run_id"] for r in runs] == [1]  # the killed run resumed, not restarted
        counted = await db.run(
            lambda c: c.fetchval(
                "SELECT sum(objects) FROM syncd.resync_slices WHERE table_name = 'customers'"
            ),
            transaction=False,
        )
        assert counted == 1500
        ecfg = emulator_config(db_url, emulator)
        async with StripeAPI(ecfg) as api:
            listed = [t for t in BY_TABLE if t not in ("payment_methods", "tax_ids")]
            assert await mirror_differences(db, emulator, listed) == []  # per-parent lists off
            got = await child_sets(db)
            want = await emulator_children(api, emulator)
            for table in ("subscription_items", "invoice_line_items"):
                assert got[table] == want[table]


async def test_daemon_first_start_sighup_and_reconcile(db_url: str, emulator: Emulator) -> None:
    emulator.seed(customers=30, products=2, subscriptions=5)
    env = daemon_env(db_url, emulator, SYNCD_SYNC_RECONCILE_INTERVAL="3")
    cfg: Config = make_config(db_url)

    async with Database.connect(cfg.database) as db:

        async def runs() -> list[tuple[str, str]]:
            rows = await db.run(
                lambda c: c.fetch("SELECT reason, status FROM syncd.resync_runs ORDER BY run_id"),
                transaction=False,
            )
            return [(r["reason"], r["status"]) for r in rows]

        async def until(pred: object) -> list[tuple[str, str]]:
            with anyio.fail_after(60):
                while True:
                    got = await runs()
                    if pred(got):  # type: ignore[operator]
                        return got
                    await anyio.sleep(0.1)

        daemon = await start_daemon(env)
        try:
            got = await until(lambda r: r and r[0] == ("first_start", "done"))
            daemon.send_signal(signal.SIGHUP)
            got = await until(lambda r: ("sighup", "done") in r)
            got = await until(lambda r: ("reconcile", "done") in r)
        finally:
            await stop(daemon)
        assert got[0] == ("first_start", "done")
        assert all(status == "done" for _, status in got)


def test_cli_resync_requests_and_refuses_unknown_types(db_url: str) -> None:
    env = {"SYNCD_DATABASE_URL": db_url, "STRIPE_API_KEY": TEST_API_KEY}
    bad = syncd_cli("resync", "--type", "nope", env=env)
    assert bad.returncode == 2 and "unknown type 'nope'" in bad.stderr
    ok = syncd_cli("resync", "--type", "customers", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "resync requested (request 1)" in ok.stdout
