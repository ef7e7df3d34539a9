"""`syncd status` (and `syncd health`) as an operator runs them: a subprocess against a real
database, with and without a live daemon."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime
from pathlib import Path

import anyio
import asyncpg

from tests.conftest import syncd_cli
from tests.support.ops import DaemonProcess, prepare


async def _add_customers(db_url: str, *ids: str, deleted: str = "") -> None:
    conn = await asyncpg.connect(db_url)
    try:
        for cid in (*ids, *([deleted] if deleted else [])):
            raw = json.dumps(
                {
                    "id": cid,
                    "object": "customer",
                    "created": 1700000000,
                    "livemode": False,
                    "metadata": {},
                    "email": f"{cid}@example.com",
                }
            )
            await conn.execute(
                "INSERT INTO stripe.customers (id, raw, fetched_at, deleted_at) "
                "VALUES ($1, $2::jsonb, now(), $3)",
                cid,
                raw,
                datetime.now(UTC) if cid == deleted else None,
            )
    finally:
        await conn.close()


def test_status_without_a_daemon_is_unhealthy(db_url: str) -> None:
    result = syncd_cli("status", env={"DATABASE_URL": db_url})
    assert result.returncode == 1, result.stderr
    assert "UNHEALTHY" in result.stdout
    assert "no live leader heartbeat" in result.stdout
    quiet = syncd_cli("status", "--quiet", env={"DATABASE_URL": db_url})
    assert quiet.returncode == 1 and quiet.stdout == ""


def test_status_with_pending_migrations(empty_db_url: str) -> None:
    result = syncd_cli("status", "--json", env={"DATABASE_URL": empty_db_url})
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"]["version"] == 0
    assert "0001_daemon_state" in report["schema"]["pending"]
    assert any("pending" in p for p in report["problems"])


async def test_status_with_a_live_leader(tmp_path: Path, db_url: str) -> None:
    await prepare(db_url)
    await _add_customers(db_url, "cus_a", "cus_b", deleted="cus_gone")
    d = DaemonProcess(tmp_path, db_url)
    try:
        d.wait_for("batch_committed")
        d.wait_for('"role":"leader"')
        # The leader's next heartbeat (every 0.5 s) carries the loop's first success.
        for _ in range(20):
            result = syncd_cli("status", "--json", env={"DATABASE_URL": db_url})
            report = json.loads(result.stdout)
            if "events" in report.get("last_success", {}):
                break
            await anyio.sleep(0.25)
        assert result.returncode == 0, result.stdout + result.stderr
        assert report["problems"] == []
        assert report["leader"] and report["leader"] == report["instances"][0]["id"]
        assert report["instances"][0]["http"].endswith(f":{d.port}")
        assert report["schema"]["pending"] == [] and report["schema"]["version"] >= 40
        assert 0 <= report["last_success"]["events"] < 30
        assert report["tables"]["customers"]["live"] == 2
        assert report["tables"]["customers"]["deleted"] == 1
        human = syncd_cli("status", env={"DATABASE_URL": db_url})
        assert human.returncode == 0
        assert ": ok" in human.stdout and "leader" in human.stdout and "customers" in human.stdout
        assert "example.com" not in human.stdout + result.stdout  # counts, never customer data
        port = {"SYNCD_HTTP_BIND": f"0.0.0.0:{d.port}"}
        assert syncd_cli("health", env=port).returncode == 0
        ready = syncd_cli("health", "--ready", env=port)
        assert ready.returncode == 0 and '"role":"leader"' in ready.stdout
        d.signal(signal.SIGTERM)
        assert d.wait(15) == 0
    finally:
        d.stop()
    after = syncd_cli("status", env={"DATABASE_URL": db_url})
    assert after.returncode == 1 and "no live leader heartbeat" in after.stdout
    assert syncd_cli("health", env={"SYNCD_HTTP_BIND": f"127.0.0.1:{d.port}"}).returncode == 1


async def test_status_tells_of_objects_stuck_in_the_refetch_queue(db_url: str) -> None:
    """Entries of the refetch queue are settled within seconds; one waiting for 20 minutes
    means the settle loop fails, and `syncd status` says so."""
    await prepare(db_url)
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO syncd.refetch_queue (table_name, object_id, not_before, queued_at)"
            " VALUES ('customers', 'cus_stuck', now(), now() - interval '20 minutes'),"
            " ('customers', 'cus_new', now(), now())"
        )
    finally:
        await conn.close()
    report = json.loads(syncd_cli("status", "--json", env={"DATABASE_URL": db_url}).stdout)
    assert report["refetch_queue"]["objects"] == 2
    assert report["refetch_queue"]["oldest_age"] >= 1200
    assert any("wait to be fetched again, the oldest for 20m" in w for w in report["warnings"])
    text = syncd_cli("status", env={"DATABASE_URL": db_url}).stdout
    assert "refetch     2 object(s) to fetch again, oldest 20m" in text, text
