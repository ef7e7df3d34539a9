"""Usage flush throughput: N pending usage rows for C customers flushed to the emulator.

The emulator runs in its own process (no rate limit); PostgreSQL is a throwaway server (or
--dsn). Rows are inserted with COPY, timestamps spread over the last --spread seconds; then one
`UsageFlusher.flush()` is timed end to end (meter check, claims, batch writes, sends, marks),
and the emulator's recorded totals are compared with the rows' sums.

    python bench/usage_bench.py --rows 100000 --customers 1000 --spread 60
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    copy_usage_rows,
    cpu_seconds,
    emulator,
    postmaster_pid,
    scratch_database,
    tree_cpu,
)
from syncd import lifecycle, migrations  # noqa: E402
from syncd.config import DatabaseConfig, StripeConfig, UsageConfig, load_config  # noqa: E402
from syncd.db import Database  # noqa: E402
from syncd.logs import configure  # noqa: E402
from syncd.pgserver import throwaway_postgres  # noqa: E402
from syncd.stripe_api import StripeAPI  # noqa: E402
from syncd.usage import UsageFlusher  # noqa: E402

KEY = "sk_test_usagebench"


EMULATOR_PID = 0
PG_PID = 0  # the throwaway server's postmaster (0: none, no PostgreSQL CPU figure)


def postgres_cpu_seconds() -> float:
    """CPU time of the throwaway server: its postmaster and the children alive now."""
    return tree_cpu(PG_PID) if PG_PID else 0.0


@asynccontextmanager
async def seeded_emulator(customers: int) -> AsyncIterator[tuple[str, list[str], str]]:
    """(url, customer ids, meter id) of an emulator process with a meter `api_calls`."""
    with emulator() as (proc, url):  # started once, before measuring
        global EMULATOR_PID
        EMULATOR_PID = proc.pid
        auth = {"Authorization": f"Bearer {KEY}"}
        async with aiohttp.ClientSession(headers=auth) as s:
            seed = {"customers": customers, "subscriptions": 0, "products": 0}
            async with s.post(url + "/_emulator/seed", json=seed) as r:
                r.raise_for_status()
            async with s.get(url + "/_emulator/objects/customer") as r:
                ids = [c["id"] for c in orjson.loads(await r.read())["data"]]
            form = {
                "display_name": "API calls",
                "event_name": "api_calls",
                "default_aggregation[formula]": "sum",
            }
            async with s.post(url + "/v1/billing/meters", data=form) as r:
                meter = orjson.loads(await r.read())["id"]
        yield url, ids, meter


async def meter_totals(url: str) -> dict[str, Decimal]:
    async with aiohttp.ClientSession() as s, s.get(url + "/_emulator/meter_totals") as r:
        body = orjson.loads(await r.read())
    return {t["customer"]: Decimal(str(t["value"])) for t in body["totals"]}


async def run(args: argparse.Namespace, admin_dsn: str) -> None:
    async with scratch_database(admin_dsn, "usage_bench") as dsn:
        async with seeded_emulator(args.customers) as (url, ids, _meter):
            cfg = load_config(None, {})
            cfg = dataclasses.replace(
                cfg,
                database=DatabaseConfig(url=dsn, pool_min_size=2, pool_max_size=8),
                stripe=StripeConfig(api_key=KEY, api_base=url, rate_limit=10000.0),
                usage=UsageConfig(
                    meters={"api_calls": "api_calls"},
                    batch_size=args.batch_size,
                    bucket_seconds=args.bucket,
                    concurrency=args.concurrency,
                ),
            )
            async with Database.connect(cfg.database) as db:
                await migrations.migrate(db)
            rng = random.Random(1)
            now = datetime.now(UTC)
            rows = [
                (
                    rng.choice(ids),
                    "api_calls",
                    Decimal(rng.randint(1, 100)),
                    now - timedelta(seconds=rng.uniform(0, args.spread)),
                )
                for _ in range(args.rows)
            ]
            conn = await asyncpg.connect(dsn)
            await copy_usage_rows(conn, rows)
            async with Database.connect(cfg.database) as db, StripeAPI(cfg) as api:
                started = time.monotonic()
                cpu, emu_cpu = time.process_time(), cpu_seconds(EMULATOR_PID)
                pg_cpu = postgres_cpu_seconds()
                result = await UsageFlusher(cfg, db, api).flush()
                elapsed = time.monotonic() - started
                cpu, emu_cpu = time.process_time() - cpu, cpu_seconds(EMULATOR_PID) - emu_cpu
                pg_cpu = postgres_cpu_seconds() - pg_cpu
            left = await conn.fetchval(
                "SELECT count(*) FROM billing.usage_records WHERE status <> 'reported'"
            )
            await conn.close()
            expected: dict[str, Decimal] = defaultdict(Decimal)
            for cus, _metric, qty, _ts in rows:
                expected[cus] += qty
            exact = await meter_totals(url) == dict(expected)
        print(
            f"{args.rows:,} rows for {len(set(ids)):,} customers (timestamps over "
            f"{args.spread:g}s, {args.bucket}s buckets) flushed in {elapsed:.2f}s: "
            f"{args.rows / elapsed:,.0f} rows/s, {result.events_sent:,} meter events "
            f"({result.events_sent / elapsed:,.0f}/s, concurrency {args.concurrency}), "
            f"{result.batches} batches; not reported: {left}; totals exact: {exact}; "
            f"CPU: syncd {cpu:.1f}s, emulator {emu_cpu:.1f}s, PostgreSQL {pg_cpu:.1f}s; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--customers", type=int, default=1000)
    p.add_argument("--spread", type=float, default=60.0, help="seconds the timestamps cover")
    p.add_argument("--bucket", type=int, default=60, help="usage.bucket_seconds")
    p.add_argument("--batch-size", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--dsn", help="admin DSN of a PostgreSQL server (default: a throwaway one)")
    args = p.parse_args()
    configure(os.environ.get("BENCH_LOG", "warning"), "console")
    if args.dsn or os.environ.get("SYNCD_TEST_DATABASE_URL"):
        lifecycle.run(run, args, args.dsn or os.environ["SYNCD_TEST_DATABASE_URL"])
        return
    global PG_PID
    with throwaway_postgres(prefer_local=True) as (dsn, server):
        PG_PID = postmaster_pid(server)
        lifecycle.run(run, args, dsn)


if __name__ == "__main__":
    main()
