"""The daemon's periodic verify (`verify.interval`) against a real PostgreSQL and the emulator.

As an operator runs it (`syncd run` in a subprocess): with a short interval the daemon verifies,
finds a row changed by hand (`syncd_verify_drift{table}` on /metrics, a warning in `syncd
status`, /readyz still ready), and once the row is right again the next run is clean and the
last clean time moves; with `verify.repair` the daemon writes the drift itself; off by default;
a bad value exits 2 naming the key. The loop itself (in this process): it waits for a resync to
end and gives way to one that starts, and a failing run is recorded, retried with backoff and
reported as a non-blocking problem, never ending the loop."""

from __future__ import annotations

import json
import signal
import subprocess
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from syncd import daemon, metrics, status, verify
from syncd.config import Config, load_config
from syncd.db import Database
from syncd.emulator import Emulator
from syncd.lifecycle import Lifecycle
from syncd.runtime import State
from syncd.stripe_api import StripeAPI
from syncd.verify_schedule import FAILING_PROBLEM, VerifyLoop, attach
from tests.conftest import emulator_config, syncd_cli
from tests.support.ops import DaemonProcess
from tests.support.resync import resyncer

pytestmark = pytest.mark.timeout(180)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# ---- helpers -------------------------------------------------------------------------------


async def value(db_url: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def until(db_url: str, query: str, *args: Any, within: float = 60) -> Any:
    """The first truthy value `query` returns, asked every 0.1 s."""
    with anyio.fail_after(within):
        while True:
            found = await value(db_url, query, *args)
            if found:
                return found
            await anyio.sleep(0.1)


def samples(text: str) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(d: DaemonProcess) -> Samples:
    # In a thread: the emulator the daemon talks to is served by this test's event loop.
    code, body = await anyio.to_thread.run_sync(d.get, "/metrics")
    assert code == 200
    return samples(body)


def drift_gauge(scraped: Samples, table: str) -> float | None:
    return scraped.get(("syncd_verify_drift", (("table", table),)))


async def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(lambda: syncd_cli(*args, env=env))


def daemon_vars(emu: Emulator, **extra: str) -> dict[str, str]:
    return {
        "SYNCD_STRIPE_API_BASE": emu.url,
        "SYNCD_STRIPE_RATE_LIMIT": "1000",
        "SYNCD_EVENTS_POLL_INTERVAL": "0.2",
        "SYNCD_USAGE_ENABLED": "false",
        **extra,
    }


def plain_customer(emu: Emulator) -> str:
    """A customer whose row nothing else rewrites (no subscription, so no events for it)."""
    subscribed = {s["customer"] for s in emu.objects("subscription")}
    return next(c["id"] for c in emu.objects("customer") if c["id"] not in subscribed)


HAND_EDIT = (
    "UPDATE stripe.customers SET raw = jsonb_set(raw, '{email}', '\"hand@example.com\"')"
    " WHERE id = $1"
)


# ---- the daemon, as an operator runs it ------------------------------------------------------


async def test_the_daemon_verifies_finds_drift_and_sees_it_gone(
    tmp_path: Path, db_url: str, emulator: Emulator
) -> None:
    emulator.seed(customers=8, products=1, subscriptions=2)
    d = DaemonProcess(
        tmp_path, db_url, real=True, **daemon_vars(emulator, SYNCD_VERIFY_INTERVAL="1")
    )
    try:
        first = await until(
            db_url, "SELECT run_id FROM syncd.verify_runs WHERE status = 'clean' ORDER BY run_id"
        )
        scraped = await scrape(d)
        assert drift_gauge(scraped, "customers") == 0
        first_clean = scraped[("syncd_verify_last_clean_timestamp_seconds", ())]
        assert first_clean > 0
        assert scraped[("syncd_verify_runs_total", (("result", "clean"),))] >= 1
        # Every mirrored table was verified, and the run waited for the first full resync.
        tables = await value(db_url, "SELECT drift FROM syncd.verify_runs WHERE run_id = $1", first)
        assert "customers" in json.loads(tables) and "subscription_items" in json.loads(tables)
        assert await value(
            db_url,
            "SELECT r.started_at > (SELECT max(finished_at) FROM syncd.resync_runs)"
            " FROM syncd.verify_runs r WHERE run_id = $1",
            first,
        )

        # A row changed by hand: the next run finds it.
        victim = plain_customer(emulator)
        original = await value(
            db_url, "SELECT raw::text FROM stripe.customers WHERE id = $1", victim
        )
        await value(db_url, HAND_EDIT, victim)
        drifted = await until(
            db_url,
            "SELECT run_id FROM syncd.verify_runs"
            " WHERE status = 'drift' AND drift->>'customers' = '1' AND drifted = 1",
        )
        scraped = await scrape(d)
        assert drift_gauge(scraped, "customers") == 1
        assert drift_gauge(scraped, "prices") == 0
        assert scraped[("syncd_verify_runs_total", (("result", "drift"),))] >= 1

        # `syncd status`: a warning (exit 0), the run and the last clean time; /readyz ready.
        result = await cli("status", "--json", env={"DATABASE_URL": db_url})
        report = json.loads(result.stdout)
        assert result.returncode == 0, result.stdout + result.stderr
        assert report["problems"] == []
        last = report["verify"]["last_result"]
        assert last["status"] == "drift" and last["drift"] == {"customers": 1}
        assert last["run"] >= drifted and last["repaired"] == 0 and last["sample"] == 1000
        assert report["verify"]["last_clean_at"] is not None
        assert any(
            w.startswith(f"verify #{last['run']} ") and "1 drifted object(s) (customers 1)" in w
            for w in report["warnings"]
        ), report["warnings"]
        human = await cli("status", env={"DATABASE_URL": db_url})
        assert "drift: 1 object(s) (customers 1)" in human.stdout, human.stdout
        assert "last clean 20" in human.stdout, human.stdout
        code, _ = await anyio.to_thread.run_sync(d.get, "/readyz")
        assert code == 200

        # Right again (by hand): the next run is clean and the last clean time moves.
        await value(
            db_url, "UPDATE stripe.customers SET raw = $2::jsonb WHERE id = $1", victim, original
        )
        await until(
            db_url,
            "SELECT run_id FROM syncd.verify_runs WHERE status = 'clean' AND run_id > $1",
            drifted,
        )
        scraped = await scrape(d)
        assert drift_gauge(scraped, "customers") == 0
        assert scraped[("syncd_verify_last_clean_timestamp_seconds", ())] > first_clean
        result = await cli("status", "--json", env={"DATABASE_URL": db_url})
        report = json.loads(result.stdout)
        assert report["verify"]["last_result"]["status"] == "clean"
        assert not [w for w in report["warnings"] if w.startswith("verify")]
        # The loop's last success, as for every loop (`last verify` in the human status).
        assert "verify" in report["last_success"]

        d.signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(d.wait, 20) == 0
    finally:
        d.stop()


async def test_with_repair_the_daemon_writes_what_stripe_holds(
    tmp_path: Path, db_url: str, emulator: Emulator
) -> None:
    emulator.seed(customers=6, products=1, subscriptions=1)
    env = daemon_vars(emulator, SYNCD_VERIFY_INTERVAL="1", SYNCD_VERIFY_REPAIR="true")
    d = DaemonProcess(tmp_path, db_url, real=True, **env)
    try:
        await until(db_url, "SELECT run_id FROM syncd.verify_runs WHERE status = 'clean'")
        victim = plain_customer(emulator)
        await value(db_url, HAND_EDIT, victim)
        drifted = await until(
            db_url,
            "SELECT run_id FROM syncd.verify_runs WHERE status = 'drift' AND repaired = 1"
            " AND repair",
        )
        # Repaired in that run: nothing more to do by hand, the next run is clean.
        await until(
            db_url,
            "SELECT run_id FROM syncd.verify_runs WHERE status = 'clean' AND run_id > $1",
            drifted,
        )
        email = await value(db_url, "SELECT email FROM stripe.customers WHERE id = $1", victim)
        stripe_email = next(c for c in emulator.objects("customer") if c["id"] == victim)["email"]
        assert email == stripe_email != "hand@example.com"
    finally:
        d.stop()


async def test_off_by_default(tmp_path: Path, db_url: str, emulator: Emulator) -> None:
    assert Config().verify.interval == 0 and Config().verify.repair is False
    emulator.seed(customers=3, products=1, subscriptions=0)
    d = DaemonProcess(tmp_path, db_url, real=True, **daemon_vars(emulator))
    try:
        await until(db_url, "SELECT count(*) FROM syncd.resync_runs WHERE status = 'done'")
        await anyio.to_thread.run_sync(d.wait_http, "/readyz", 200)
        await anyio.sleep(3)  # several intervals, had one been set
        assert await value(db_url, "SELECT count(*) FROM syncd.verify_runs") == 0
        scraped = await scrape(d)
        assert not [k for k in scraped if k[0].startswith("syncd_verify_drift")]
        assert ("syncd_last_success_timestamp_seconds", (("loop", "verify"),)) not in scraped
        result = await cli("status", "--json", env={"DATABASE_URL": db_url})
        assert json.loads(result.stdout)["verify"] == {
            "last_run": None,
            "last_result": None,
            "last_clean_at": None,
        }
    finally:
        d.stop()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"SYNCD_VERIFY_INTERVAL": "-60"}, "verify.interval: -60.0 is below the minimum 0"),
        ({"SYNCD_VERIFY_INTERVAL": "hourly"}, "verify.interval: SYNCD_VERIFY_INTERVAL='hourly'"),
        ({"SYNCD_VERIFY_SAMPLE": "-1"}, "verify.sample: -1 is below the minimum 0"),
        ({"SYNCD_VERIFY_REPAIR": "maybe"}, "verify.repair: SYNCD_VERIFY_REPAIR='maybe'"),
    ],
)
def test_a_bad_value_stops_the_daemon_with_exit_2(env: dict[str, str], says: str) -> None:
    result = syncd_cli("run", env={"DATABASE_URL": "postgresql://u@127.0.0.1:9/d", **env})
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr


def test_attach_adds_the_loop_only_when_an_interval_is_set() -> None:
    added: list[str] = []

    def runtime(cfg: Config) -> Any:
        return types.SimpleNamespace(
            cfg=cfg,
            db=None,
            api=None,
            lifecycle=None,
            state=State(),
            add_loop=lambda name, _loop: added.append(name),
        )

    attach(runtime(Config()))
    assert added == []
    attach(runtime(load_config(None, {"SYNCD_VERIFY_INTERVAL": "3600"})))
    assert added == ["verify"]


def test_verify_opens_its_database_as_the_daemon_does() -> None:
    """verify.py keeps its own copy of the daemon's session settings (importing the daemon
    would be a cycle: the daemon imports it for the periodic verify)."""
    cfg = load_config(None, {"SYNCD_APP_USER_ID_METADATA_KEY": "uid"})
    assert verify.session_settings(cfg) == daemon.session_settings(cfg)


# ---- the loop, in this process ----------------------------------------------------------------


@asynccontextmanager
async def running_loop(cfg: Config) -> AsyncIterator[tuple[VerifyLoop, Database, State]]:
    """The daemon's verify loop on this database and emulator, fast: looks every 0.1 s,
    retries from 0.2 s."""
    async with Database.connect(cfg.database) as db, StripeAPI(cfg) as api:
        lifecycle = Lifecycle(1.0)
        state = State()
        loop = VerifyLoop(cfg, db, api, lifecycle, state)
        loop.watch_every = 0.1
        loop.backoff_base = 0.2
        async with anyio.create_task_group() as tg:
            tg.start_soon(loop.run)
            yield loop, db, state
            lifecycle.request_stop("test")


async def mirrored(db_url: str, emu: Emulator, **verify_cfg: Any) -> Config:
    emu.seed(customers=5, products=1, subscriptions=1)
    cfg = emulator_config(
        db_url, emu, verify={"interval": 0.2, **verify_cfg}, stripe={"max_retries": 0}
    )
    async with resyncer(cfg) as rs:
        await rs.run(reason="test")
    return cfg


async def test_a_run_waits_for_a_resync_and_gives_way_to_one_that_starts(
    db_url: str, emulator: Emulator
) -> None:
    cfg = await mirrored(db_url, emulator)
    running = await value(
        db_url,
        "INSERT INTO syncd.resync_runs (reason, status) VALUES ('test', 'running') RETURNING run_id",
    )
    async with running_loop(cfg):
        await anyio.sleep(1.0)  # ten looks
        assert await value(db_url, "SELECT count(*) FROM syncd.verify_runs") == 0
        await value(
            db_url, "UPDATE syncd.resync_runs SET status = 'done' WHERE run_id = $1", running
        )
        await until(
            db_url, "SELECT run_id FROM syncd.verify_runs WHERE status = 'clean'", within=20
        )

        # A resync that starts while a verify lists: the verify gives way, recorded as such,
        # and starts over once the resync is done.
        slow = emulator.faults.set(pattern="GET /v1/customers", latency_ms=1500)
        with anyio.fail_after(20):
            while True:  # the next verify is listing the customers
                if slow.hits:
                    break
                await anyio.sleep(0.05)
        resync = await value(
            db_url, "INSERT INTO syncd.resync_runs (reason) VALUES ('test') RETURNING run_id"
        )
        error = await until(
            db_url, "SELECT error FROM syncd.verify_runs WHERE status = 'interrupted'", within=20
        )
        assert error == "a full resync started"
        emulator.faults.clear()
        await anyio.sleep(0.5)
        assert (
            await value(db_url, "SELECT count(*) FROM syncd.verify_runs WHERE status = 'clean'")
            == 1
        )
        await value(
            db_url, "UPDATE syncd.resync_runs SET status = 'done' WHERE run_id = $1", resync
        )
        await until(
            db_url, "SELECT count(*) >= 2 FROM syncd.verify_runs WHERE status = 'clean'", within=20
        )


async def test_a_failing_run_is_retried_and_reported_without_ending_the_loop(
    db_url: str, emulator: Emulator
) -> None:
    cfg = await mirrored(db_url, emulator, interval=3600)
    failed_before = metrics.verify_runs.labels("failed")._value.get()
    # Stripe fails the customers' list (no retries here) until the fault is lifted.
    emulator.faults.set(pattern="GET /v1/customers", status=500, error_rate=1.0)
    async with running_loop(cfg) as (_, db, state):
        await until(
            db_url, "SELECT count(*) >= 2 FROM syncd.verify_runs WHERE status = 'failed'", within=20
        )
        problem = state.problems.snapshot().get(FAILING_PROBLEM)
        assert problem is not None and problem["blocking"] is False
        assert "periodic verify failed (next try in" in problem["message"]
        assert not state.problems.blocking()  # a warning: /readyz stays ready
        report = await status.gather(db, cfg)
        newest = report["verify"]["last_run"]
        assert newest["status"] == "failed" and newest["error"], newest
        assert report["verify"]["last_result"] is None
        assert any(w.startswith(f"verify #{newest['run']} failed") for w in report["warnings"])
        assert f"#{newest['run']} failed" in status.render(report)

        emulator.faults.clear()
        await until(
            db_url, "SELECT run_id FROM syncd.verify_runs WHERE status = 'clean'", within=20
        )
        failed = await value(
            db_url, "SELECT count(*) FROM syncd.verify_runs WHERE status = 'failed'"
        )
        with anyio.fail_after(5):
            while True:  # cleared by the run that ended clean
                if FAILING_PROBLEM not in state.problems.snapshot():
                    break
                await anyio.sleep(0.05)
        assert metrics.verify_runs.labels("failed")._value.get() == failed_before + failed
        assert "verify" in state.last_success
        report = await status.gather(db, cfg)
        assert report["verify"]["last_run"]["status"] == "clean"
        assert not [w for w in report["warnings"] if w.startswith("verify")]
        assert "verify      #" in status.render(report)

    # A new leader starts from what the database holds: the gauges come back.
    metrics.verify_drift.clear()
    async with Database.connect(cfg.database) as db, StripeAPI(cfg) as api:
        fresh = VerifyLoop(cfg, db, api, Lifecycle(1.0), State())
        await fresh._restore_metrics()
    assert metrics.verify_drift.labels("customers")._value.get() == 0
    clean_at = await value(
        db_url,
        "SELECT extract(epoch FROM max(finished_at)) FROM syncd.verify_runs WHERE status = 'clean'",
    )
    assert metrics.verify_last_clean._value.get() == pytest.approx(float(clean_at))
