"""A resync's progress from the rate budget (issue 15): the estimate alone (pure, no database),
then a real daemon against the emulator at a low rate, watched through `syncd status`,
`syncd resync --wait` and `/metrics` as an operator would. No timing asserts: what is shown,
that it goes down, and that it ends at zero."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from syncd.emulator import Emulator
from syncd.lister import Slice
from syncd.ratelimit import RateLimiter
from syncd.resync.eta import duration, list_requests, plan, shares, water_fill
from tests.conftest import syncd_cli
from tests.support.ops import DaemonProcess

# ---- the estimate alone -------------------------------------------------------------------


def test_one_type_takes_its_requests_over_the_budget() -> None:
    assert water_fill({"customers": 100}, 12.5, 12.5) == {"customers": 8.0}
    # Live mode's budget is 50/s, but one endpoint gets 12.5/s at most.
    assert water_fill({"customers": 100}, 50.0, 12.5) == {"customers": 8.0}


def test_types_share_the_budget_and_a_finished_one_leaves_its_share() -> None:
    # 10/s for two: 5/s each; invoices finish at 2 s (10 requests), customers have 20 left,
    # which they then take alone at 10/s: 2 s more.
    etas = water_fill({"invoices": 10, "customers": 30}, 10.0, 25.0)
    assert etas == pytest.approx({"invoices": 2.0, "customers": 4.0})
    # Three equal types finish together.
    assert water_fill({"a": 5, "b": 5, "c": 5}, 15.0, 25.0) == pytest.approx(
        {"a": 1.0, "b": 1.0, "c": 1.0}
    )


def test_a_type_capped_by_its_endpoint_leaves_the_rest_to_the_others() -> None:
    # A slowed endpoint (a 429 halved it) gets 5/s; the other takes the remaining 15/s.
    assert shares(20.0, {"slow": 5.0, "fast": 25.0}) == {"slow": 5.0, "fast": 15.0}
    etas = water_fill({"slow": 10, "fast": 60}, 20.0, {"slow": 5.0, "fast": 25.0})
    # slow: 10 at 5/s = 2 s; fast: 30 in those 2 s, then 30 at min(25, 20) = 1.5 s.
    assert etas == pytest.approx({"slow": 2.0, "fast": 3.5})
    # Every endpoint capped below its share: the budget is not all used.
    assert water_fill({"a": 25, "b": 25}, 100.0, 12.5) == pytest.approx({"a": 2.0, "b": 2.0})


def test_a_type_already_done_takes_nothing() -> None:
    etas = water_fill({"done": 0, "customers": 20}, 10.0, 25.0)
    assert etas == {"done": 0.0, "customers": 2.0}
    assert water_fill({}, 10.0, 25.0) == {}


def test_walks_follow_the_lists_one_after_another() -> None:
    etas = plan(
        {"customers": 10, "products": 0},
        [("product_features", 10), ("active_entitlements", 0), ("payment_methods", 50)],
        10.0,
        5.0,
    )
    # The lists: 10 at 5/s = 2 s; the walks at 5/s each, in turn; the one with nothing: 0.
    assert etas == pytest.approx(
        {
            "customers": 2.0,
            "products": 0.0,
            "product_features": 4.0,
            "active_entitlements": 0.0,
            "payment_methods": 14.0,
        }
    )


def test_requests_left_of_slices() -> None:
    now = 2000.0
    walked_half = Slice("customers", 0, 0, lo=10, hi=1010, cursor="cus_x", cursor_created=510)
    walked_half.objects = 250  # 250 in [510, 1010): about 250 more in [10, 510): 3 pages
    not_started = Slice("customers", 0, 1, lo=1010, hi=None)  # no density yet: one page
    done = Slice("customers", 0, 2, lo=0, hi=10, objects=40, done=True)
    nearly = Slice("customers", 0, 3, lo=98, hi=100, cursor="cus_y", cursor_created=98)
    nearly.objects = 100  # walked down to its lower end, but not done: still a page
    assert list_requests([walked_half], now) == (3, False)
    assert list_requests([not_started, done, nearly], now) == (2, False)
    assert list_requests([walked_half, not_started, done, nearly], now) == (5, False)


def test_the_oldest_slice_is_a_floor_without_a_previous_run() -> None:
    """Open down to the epoch, the oldest slice's density says nothing about what is left
    (extrapolated to 1970 it made 1,712 requests of 3,000 customers): the last finished run's
    count tells, and without one the figure is a floor."""
    now = 1_800_000_000.0
    oldest = Slice("customers", 0, 0, lo=0, hi=None, cursor="cus_x", cursor_created=1_799_990_000)
    oldest.objects = 1_700  # newest first, down to 10,000 s ago
    assert list_requests([oldest], now) == (1, True)
    assert list_requests([oldest], now, previous=3_000) == (13, False)
    newer = Slice(
        "customers", 0, 1, lo=1_799_995_000, hi=None, cursor="c", cursor_created=1_799_998_000
    )
    newer.objects = 200  # 200 in 2,000 s: about 300 more in the 3,000 s left
    assert list_requests([oldest, newer], now) == (4, True)  # and a page of the oldest


def test_the_limiter_tells_its_rates_as_they_are_now() -> None:
    clock = [0.0]
    limiter = RateLimiter(10.0, endpoint_rate=5.0, clock=lambda: clock[0])
    assert limiter.rate_now() == 10.0 and limiter.rate_now("GET /v1/customers") == 5.0
    limiter.limited("GET /v1/customers", "endpoint-rate")
    assert limiter.rate_now("GET /v1/customers") == 2.5 and limiter.rate_now() == 10.0
    clock[0] = 5.1  # 5 s without a 429 double it back
    assert limiter.rate_now("GET /v1/customers") == 5.0


def test_durations_read_well() -> None:
    assert [duration(s) for s in (0, 4.4, 59.6, 185, 7800)] == [
        "0s",
        "4s",
        "1m00s",
        "3m05s",
        "2h10m",
    ]


# ---- a daemon resyncing at a low rate ------------------------------------------------------

RATE = "20"  # requests/s: the run takes some 25 s, so several estimates are seen
CUSTOMERS = 400  # the payment methods walk: 400 requests (20 s), in batches of 100


async def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # In a thread: the emulator the daemon talks to is served by this test's event loop.
    return await anyio.to_thread.run_sync(lambda: syncd_cli(*args, env=env, timeout=60))


async def _sql(db_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def _gauges(body: str, name: str) -> dict[str, float]:
    return {
        m[1]: float(m[2]) for m in re.finditer(rf'^{name}{{table="([a-z_]+)"}} (\S+)$', body, re.M)
    }


@pytest.mark.timeout(180)
async def test_status_wait_and_metrics_show_what_is_left(
    tmp_path: Path, db_url: str, emulator: Emulator
) -> None:
    emulator.seed(customers=CUSTOMERS, products=3, subscriptions=0)
    d = DaemonProcess(
        tmp_path,
        db_url,
        real=True,
        SYNCD_STRIPE_API_BASE=emulator.url,
        SYNCD_STRIPE_RATE_LIMIT=RATE,
        SYNCD_SYNC_RESYNC_ON_EMPTY="false",  # `syncd resync --wait` starts it, and follows it
        SYNCD_EVENTS_ENABLED="false",
        SYNCD_USAGE_ENABLED="false",
        SYNCD_LOG_LEVEL="warning",
    )
    env = {"DATABASE_URL": db_url}
    snapshots: list[dict[str, Any]] = []
    scraped: list[dict[str, float]] = []
    human = ""
    waited: dict[str, subprocess.CompletedProcess[str]] = {}
    try:
        with anyio.fail_after(60):  # the daemon leads before the command asks it
            while True:
                if await _sql(db_url, "SELECT 1 FROM syncd.instances WHERE role = 'leader'"):
                    break
                await anyio.sleep(0.2)

        async def wait() -> None:
            waited["result"] = await _cli("resync", "--wait", env=env)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            while "result" not in waited:
                status = await _cli("status", "--json", env=env)
                report = json.loads(status.stdout)
                running = [r for r in report.get("resync", []) if r["status"] == "running"]
                if running and running[0]["requests_left"] is not None:
                    snapshots.append(running[0])
                    _, body = await anyio.to_thread.run_sync(lambda: d.get("/metrics"))
                    scraped.append(_gauges(body, "syncd_resync_requests_left"))
                    if not human:
                        human = (await _cli("status", env=env)).stdout
                await anyio.sleep(0.5)
        done = waited["result"]
        _, body = await anyio.to_thread.run_sync(lambda: d.get("/metrics"))
        human_after = await _cli("status", env=env)
    finally:
        d.stop()

    # `syncd resync --wait`: the ETA on its progress line, and lines per type while it ran.
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"requests? left, ETA (at least )?\d", done.stdout), done.stdout
    walk_line = (
        r"^  payment_methods +[\d,]+ parents done, (at least )?[\d,]+ requests? left,"
        r" ETA (at least )?\d"
    )
    assert re.search(walk_line, done.stdout, re.M), done.stdout

    # `syncd status` as text: the run's estimate and a line per type.
    left = r"^  (at least )?[\d,]+ requests? left, ETA (at least )?\S+ \(estimated "
    assert re.search(left, human, re.M), human
    assert re.search(r"^  customers +[\d,]+ objects  \w+", human, re.M), human

    # `syncd status --json` under the running run: per type, objects, requests left and ETA.
    assert snapshots, "the run was never seen running with an estimate"
    run_id = snapshots[0]["run"]
    first = {t["table"]: t for t in snapshots[0]["tables"]}
    assert {"customers", "payment_methods"} <= first.keys()
    for t in first.values():
        assert t["requests_left"] is not None and t["eta_seconds"] is not None
        assert t["estimated_at"] is not None and t["estimate_age"] is not None
    # A walk starts when the main lists are done: its ETA includes theirs.
    walks = ("payment_methods", "product_features", "active_entitlements")
    for snap in snapshots:
        tables = {t["table"]: t for t in snap["tables"]}
        lists = max(t["eta_seconds"] for name, t in tables.items() if name not in walks)
        if tables["payment_methods"]["requests_left"]:
            assert tables["payment_methods"]["eta_seconds"] >= lists - 0.1, snap
    # The walk's requests left go down once the main lists are done (its parents are known),
    # and so does the run's total.
    walking = [
        s
        for s in snapshots
        if all(t["requests_left"] == 0 for t in s["tables"] if t["table"] not in walks)
    ]
    left = [
        next(t for t in s["tables"] if t["table"] == "payment_methods")["requests_left"]
        for s in walking
    ]
    assert left == sorted(left, reverse=True), left
    totals = [s["requests_left"] for s in walking]
    assert totals == sorted(totals, reverse=True), totals
    assert len(set(totals)) >= 2, totals  # it moved while we watched
    assert max(left) <= CUSTOMERS
    # The metrics said the same while it ran.
    assert any(g.get("payment_methods", 0) > 0 for g in scraped), scraped

    # At the end: zero everywhere, and status no longer shows a running run.
    rows = await _sql(
        db_url,
        "SELECT requests_left, eta_seconds FROM syncd.resync_tables WHERE run_id = $1",
        run_id,
    )
    assert rows and all(r["requests_left"] == 0 and r["eta_seconds"] == 0 for r in rows), rows
    gauges = _gauges(body, "syncd_resync_requests_left")
    assert gauges and set(gauges.values()) == {0.0}, gauges
    assert set(_gauges(body, "syncd_resync_eta_seconds").values()) == {0.0}
    assert not re.search(r"requests? left", human_after.stdout), human_after.stdout
