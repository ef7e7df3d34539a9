"""The operations surface with every feature running against the emulator: SIGHUP starts a full
resync, SIGUSR1 flushes usage, /metrics counters move with real work, `syncd status` reports
the events cursor, the resyncs and usage, and the endpoints still leak nothing."""

from __future__ import annotations

import json
import signal
from decimal import Decimal
from pathlib import Path

import anyio
import asyncpg
import pytest
import stripe
from prometheus_client.parser import text_string_to_metric_families

from syncd.emulator import Emulator
from tests.conftest import TEST_API_KEY, syncd_cli
from tests.support.ops import DaemonProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
CONFIG = '[usage]\ninterval = 3600\n\n[usage.meters]\napi_calls = "api_calls"\n'


def _env(emu: Emulator, config: Path) -> dict[str, str]:
    return {
        "SYNCD_CONFIG": str(config),
        "SYNCD_STRIPE_API_BASE": emu.url,
        "SYNCD_STRIPE_RATE_LIMIT": "500",
        "SYNCD_EVENTS_POLL_INTERVAL": "0.2",
    }


async def _value(db_url: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def _until(db_url: str, sql: str, within: float, *args: object) -> object:
    with anyio.fail_after(within):
        while True:
            value = await _value(db_url, sql, *args)
            if value:
                return value
            await anyio.sleep(0.2)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


async def test_signals_metrics_and_status_with_every_feature(
    tmp_path: Path, db_url: str, emulator: Emulator
) -> None:
    emulator.seed(customers=40, subscriptions=8, products=3)
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    aio = stripe.AIOHTTPClient()
    http = emulator.client(http_client=aio)
    meter = await http.v1.billing.meters.create_async(
        {
            "display_name": "API",
            "event_name": "api_calls",
            "default_aggregation": {"formula": "sum"},
        }
    )
    d = DaemonProcess(tmp_path, db_url, real=True, **_env(emulator, config))
    try:
        # First start: a full resync, then streaming.
        await _until(db_url, "SELECT count(*) FROM syncd.resync_runs WHERE status = 'done'", 60)
        d.wait_http("/readyz", 200)
        _, before = d.get("/metrics")
        customer = await http.v1.customers.create_async({"email": "ops@example.com"})
        await _until(db_url, "SELECT count(*) FROM stripe.customers WHERE id = $1", 20, customer.id)
        await anyio.sleep(0.5)
        _, after = d.get("/metrics")
        b, a = _samples(before), _samples(after)
        assert _total(a, "syncd_events_total") > _total(b, "syncd_events_total")
        assert _total(a, "syncd_rows_written_total") > _total(b, "syncd_rows_written_total")
        assert _total(a, "syncd_stripe_requests_total") > _total(b, "syncd_stripe_requests_total")
        assert _total(a, "syncd_resync_objects_total") >= 40
        assert a[("syncd_leader", ())] == 1

        # SIGHUP: a second full resync, recorded with its reason.
        d.signal(signal.SIGHUP)
        await _until(
            db_url,
            "SELECT count(*) FROM syncd.resync_runs WHERE reason = 'sighup' AND status = 'done'",
            60,
        )

        # SIGUSR1: usage reported now, not at the hourly interval.
        conn = await asyncpg.connect(db_url)
        try:
            await conn.executemany(
                "INSERT INTO billing.usage_records (customer_id, metric, quantity) "
                "VALUES ($1, 'api_calls', $2)",
                [(customer.id, q) for q in (3, 4, 5)],
            )
        finally:
            await conn.close()
        await anyio.sleep(1)
        assert (
            await _value(
                db_url, "SELECT count(*) FROM billing.usage_records WHERE status = 'pending'"
            )
            == 3
        )
        d.signal(signal.SIGUSR1)
        await _until(
            db_url,
            "SELECT count(*) = 3 FROM billing.usage_records WHERE status = 'reported'",
            20,
        )
        assert emulator.meter_totals() == {(meter.id, customer.id): Decimal(12)}
        _, scraped = d.get("/metrics")
        assert _samples(scraped)[("syncd_usage_backlog_rows", (("status", "pending"),))] == 0

        # syncd status: every section from the real tables.
        result = syncd_cli("status", "--json", env={"DATABASE_URL": db_url})
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["problems"] == []
        assert report["events"][0]["ledger_24h"].get("applied", 0) >= 1
        assert report["events"][0]["cursor_age"] < 120
        assert [r["reason"] for r in report["resync"][:2]] == ["sighup", "first_start"]
        assert all(r["status"] == "done" and r["objects"] > 0 for r in report["resync"][:2])
        assert report["usage"]["rows"] == {"reported": 3}
        assert report["tables"]["customers"]["live"] == 41
        human = syncd_cli("status", env={"DATABASE_URL": db_url}).stdout
        assert "events      cursor" in human and "resync      #" in human
        assert "usage       reported 3" in human

        # Nothing secret or personal on the HTTP side, with real data flowing.
        for path in ("/healthz", "/readyz", "/metrics"):
            body = d.get(path)[1]
            assert TEST_API_KEY not in body and "ops@example.com" not in body
            assert customer.id not in body

        d.signal(signal.SIGTERM)
        assert d.wait(20) == 0
    finally:
        d.stop()
        await aio.close_async()  # type: ignore[no-untyped-call]


def test_operations_doc_lists_every_metric() -> None:
    import re

    from syncd import metrics
    from tests.conftest import ROOT

    doc = (ROOT / "docs" / "operations.md").read_text()
    documented = {
        re.sub(r"_total$", "", name) for name in re.findall(r"^\| `(syncd_[a-z_]+)` \|", doc, re.M)
    }
    defined = {family.name for family in metrics.REGISTRY.collect()}
    assert documented == defined, (documented - defined, defined - documented)
