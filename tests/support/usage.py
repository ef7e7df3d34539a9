"""Helpers shared by the usage tests (no tests here): meters, customers and rows."""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import stripe

from syncd.emulator import Emulator
from tests.conftest import ROOT, TEST_API_KEY

ROW_COLUMNS = ("user_id", "subscription_id", "customer_id", "metric", "quantity", "timestamp")


async def make_meter(emu: Emulator, event_name: str, **extra: Any) -> str:
    http = stripe.AIOHTTPClient()
    try:
        client = emu.client(http_client=http)
        meter = await client.v1.billing.meters.create_async(
            params={
                "display_name": event_name,
                "event_name": event_name,
                "default_aggregation": {"formula": "sum"},
                **extra,
            }
        )
        return str(meter.id)
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]


def customers(emu: Emulator, n: int) -> list[dict[str, Any]]:
    """n live customers (with metadata.supabase_user_id), oldest first."""
    emu.seed(customers=n, products=0, subscriptions=0)
    found = [c for c in emu.objects("customer") if not c.get("deleted")]
    return list(reversed(found))[:n]


async def insert_rows(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    """Insert app rows (ROW_COLUMNS) as an application would, fast."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "usage_records", schema_name="billing", records=rows, columns=list(ROW_COLUMNS)
        )
    finally:
        await conn.close()


def random_rows(
    customer_ids: list[str],
    n: int,
    *,
    metrics: tuple[str, ...] = ("api_calls",),
    spread: float = 120.0,
    seed: int = 7,
) -> list[tuple[Any, ...]]:
    """n rows for these customers, timestamps spread over the last `spread` seconds."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    return [
        (
            None,
            None,
            rng.choice(customer_ids),
            rng.choice(metrics),
            Decimal(rng.randint(0, 50)),
            now - timedelta(seconds=rng.uniform(0, spread)),
        )
        for _ in range(n)
    ]


async def row_totals(dsn: str, status: str | None = None) -> dict[tuple[str, str], Decimal]:
    """Sum of quantity per (metric, customer) of rows (optionally of one status)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT metric, customer_id, sum(quantity) AS q FROM billing.usage_records"
            " WHERE $1::text IS NULL OR status = $1 GROUP BY 1, 2",
            status,
        )
    finally:
        await conn.close()
    return {(r["metric"], r["customer_id"]): r["q"] for r in rows}


def emulator_totals(emu: Emulator, meters: dict[str, str]) -> dict[tuple[str, str], Decimal]:
    """Recorded meter totals keyed like row_totals: (metric, customer)."""
    by_meter = {meter_id: metric for metric, meter_id in meters.items()}
    out: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for (meter_id, customer), value in emu.meter_totals().items():
        out[(by_meter[meter_id], customer)] += value
    return dict(out)


async def statuses(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM billing.usage_records GROUP BY 1"
        )
    finally:
        await conn.close()
    return {r["status"]: r["n"] for r in rows}


async def mirror_object(dsn: str, table: str, obj: dict[str, Any]) -> None:
    """Put an object into the mirror as the sync would (the trigger sets customers.user_id)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"INSERT INTO stripe.{table} (id, raw, fetched_at) VALUES ($1, $2::jsonb, now())",
            obj["id"],
            orjson.dumps(obj).decode(),
        )
    finally:
        await conn.close()


def cli_env(db_url: str, emu: Emulator, **extra: str) -> dict[str, str]:
    """Environment for the real CLI aimed at this database and emulator."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SYNCD_", "DATABASE_URL", "STRIPE_"))
    }
    env.update(
        SYNCD_DATABASE_URL=db_url,
        SYNCD_STRIPE_API_KEY=TEST_API_KEY,
        SYNCD_STRIPE_API_BASE=emu.url,
        SYNCD_STRIPE_RATE_LIMIT="1000",
        SYNCD_USAGE_METERS="api_calls=api_calls",
        SYNCD_LOG_LEVEL="warning",
    )
    env.update(extra)
    return env


async def cli(*args: str, env: dict[str, str], wait: float = 60) -> tuple[int, str, str]:
    """Run the CLI as a subprocess without blocking the loop that serves the emulator."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncd",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), wait)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
