"""/healthz, /readyz and /metrics of a real daemon: Prometheus text that parses and moves,
readiness that follows PostgreSQL going down and coming back, and nothing secret in any body."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from syncd import metrics
from syncd.config import Config
from syncd.db import Database
from tests.conftest import TEST_API_KEY, PgServer
from tests.support.ops import DaemonProcess, prepare

EXPECTED = {
    "syncd_usage_backlog_rows",
    "syncd_stripe_requests",
    "syncd_rate_limit_wait_seconds",
    "syncd_rows_written",
    "syncd_last_success_timestamp_seconds",
    "syncd_leader",
    "syncd_heartbeats",
}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_parse_and_move(tmp_path: Path, db_url: str) -> None:
    await prepare(db_url)
    d = DaemonProcess(tmp_path, db_url)
    try:
        d.wait_for("batch_committed")
        status, first = d.get("/metrics")
        assert status == 200
        families = {f.name for f in text_string_to_metric_families(first)}
        assert families >= EXPECTED, EXPECTED - families
        await anyio.sleep(1.5)
        _, second = d.get("/metrics")
        before, after = _samples(first), _samples(second)
        beats = ("syncd_heartbeats_total", (("outcome", "ok"),))
        polled = ("syncd_last_success_timestamp_seconds", (("loop", "events"),))
        leader = ("syncd_leader", ())
        assert after[beats] > before[beats] >= 1
        assert after[polled] > before[polled] > time.time() - 60
        assert after[leader] == 1
        changes = ("syncd_leadership_changes_total", (("change", "acquired"),))
        assert after[changes] == 1
        d.signal(signal.SIGTERM)
        assert d.wait(15) == 0
    finally:
        d.stop()


async def test_readyz_follows_postgres_down_and_up(
    tmp_path: Path, db_url: str, pg_server: PgServer
) -> None:
    if pg_server.local is None:
        pytest.skip("PostgreSQL is external (or in Docker): cannot stop it from here")
    await prepare(db_url)
    d = DaemonProcess(tmp_path, db_url, SYNCD_DAEMON_HEARTBEAT_INTERVAL="0.5")
    try:
        d.wait_for("batch_committed")
        d.wait_http("/readyz", 200)
        pg_server.local.stop()
        try:
            d.wait_http("/readyz", 503, timeout=15)
            status, body = d.get_json("/readyz")
            assert status == 503 and body["checks"]["database"] == "unreachable", body
            assert d.get("/healthz")[0] == 200  # alive, just not ready: no restart wanted
        finally:
            pg_server.local.start()
        d.wait_http("/readyz", 200, timeout=30)
        offset = len(d.output())
        d.wait_for("batch_committed", after=offset, timeout=30)  # the work resumed
        d.signal(signal.SIGTERM)
        assert d.wait(15) == 0
    finally:
        d.stop()


async def test_endpoints_expose_no_secrets_or_customer_data(tmp_path: Path, db_url: str) -> None:
    import asyncpg

    await prepare(db_url)
    password = "Sup3rSecretPw"
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO stripe.customers (id, raw, fetched_at) VALUES ($1, $2::jsonb, now())",
            "cus_PRIVATE123",
            '{"id": "cus_PRIVATE123", "object": "customer", "email": "alice@private.example",'
            ' "created": 1700000000, "livemode": false, "metadata": {}}',
        )
    finally:
        await conn.close()
    dsn = db_url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    d = DaemonProcess(tmp_path, dsn)
    try:
        d.wait_for("batch_committed")
        bodies = [d.get(path)[1] for path in ("/healthz", "/readyz", "/metrics")]
    finally:
        d.stop()
    for body in bodies:
        for secret in (password, TEST_API_KEY, TEST_API_KEY[8:], "cus_PRIVATE", "alice@"):
            assert secret not in body
        assert "postgresql://" not in body


def test_metric_names_are_defined_once() -> None:
    names = [f.name for f in metrics.REGISTRY.collect()]
    assert len(names) == len(set(names))
    assert set(names) >= EXPECTED


async def test_health_rules_on_a_real_daemon_object(cfg: Config, db: Database) -> None:
    """The rules behind the endpoints: a stalled heartbeat loop fails /healthz; a leader whose
    event stream has not polled within http.ready_max_poll_age fails /readyz, a standby not."""
    from syncd.daemon import Daemon
    from syncd.health import Health
    from syncd.lifecycle import Lifecycle
    from syncd.stripe_api import StripeAPI

    async with StripeAPI(cfg) as api:
        d = Daemon(cfg, db, Lifecycle(1), api)
        health = Health(d.runtime)
        assert health.alive()["ok"]
        d.state.last_beat -= 1000
        assert not health.alive()["ok"]

        d.runtime.add_loop("events", anyio.sleep_forever)
        d.set_role("standby")
        assert (await health.ready())["ok"]
        d.set_role("leader")
        assert (await health.ready())["ok"]  # a new leader gets time for its first poll
        d.state.leader_since -= 1000
        d.state.last_success["events"] = time.time() - 1000
        ready = await health.ready()
        assert not ready["ok"] and ready["checks"]["poll"].startswith("last successful poll")
        d.state.succeeded("events")
        assert (await health.ready())["ok"]
        d.set_role("starting")
        assert not (await health.ready())["ok"]
