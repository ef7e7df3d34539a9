"""What typed columns that never reject a row cost (migration 0061), in one run.

    PYTHONPATH=. python bench/typed_columns_bench.py --customers 20000 --rounds 7

Two databases on one throwaway PostgreSQL: one migrated up to 0052 (typed columns cast
`raw` directly and fail the row on an odd value), one fully migrated (they read `raw` through
the json_* functions). Rounds alternate between the two; each round writes the same customers,
100 a page, through the writer's own upsert into an empty table. Reported: the median rate of
each and their ratio, so machine noise hits both sides alike.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import orjson

from syncd import migrations
from syncd.config import DatabaseConfig
from syncd.db import Database, Tx
from syncd.logs import configure
from syncd.pgserver import throwaway_postgres
from syncd.registry import BY_TABLE
from syncd.versions import Version
from syncd.writer import Writer

BEFORE = 52  # the last migration with plain casts


def customer(i: int) -> dict[str, Any]:
    return {
        "id": f"cus_{i:010d}",
        "object": "customer",
        "address": None,
        "balance": i % 1000,
        "created": 1_700_000_000 + i,
        "currency": "usd",
        "default_source": None,
        "delinquent": False,
        "description": None,
        "discount": None,
        "email": f"user{i}@example.com",
        "invoice_prefix": f"P{i:07d}",
        "invoice_settings": {"custom_fields": None, "default_payment_method": None},
        "livemode": False,
        "metadata": {"user_id": str(i)},
        "name": f"Customer {i}",
        "next_invoice_sequence": 1,
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


async def prepare(stack: AsyncExitStack, admin: str, name: str, target: int | None) -> Database:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = admin.rsplit("/", 1)[0] + "/" + name
    db = await stack.enter_async_context(Database.connect(DatabaseConfig(url=url), min_size=1))
    await migrations.migrate(db, target=target)
    return db


async def one_round(db: Database, pages: list[bytes]) -> float:
    writer = Writer(db)
    resource = BY_TABLE["customers"]
    async with db.connection() as conn:
        await conn.execute("TRUNCATE stripe.customers")
        started = time.perf_counter()
        for page in pages:
            await writer.upsert(
                Tx(db, conn), resource, page, version=Version.at(time.time()), api_version="bench"
            )
        return time.perf_counter() - started


async def main(args: argparse.Namespace) -> None:
    configure("warning", "console")
    pages = [
        orjson.dumps([customer(p * 100 + j) for j in range(100)])
        for p in range(args.customers // 100)
    ]
    with throwaway_postgres(prefer_local=True) as (admin, _local):
        async with AsyncExitStack() as stack:
            await run(stack, admin, pages, args)


async def run(
    stack: AsyncExitStack, admin: str, pages: list[bytes], args: argparse.Namespace
) -> None:
    if True:
        old = await prepare(stack, admin, "bench_casts", BEFORE)
        new = await prepare(stack, admin, "bench_safe", None)
        times: dict[str, list[float]] = {"casts (0052)": [], "safe (0061)": []}
        for r in range(args.rounds):
            order = [("casts (0052)", old), ("safe (0061)", new)]
            for label, db in order if r % 2 == 0 else reversed(order):
                times[label].append(await one_round(db, pages))
        rates = {k: args.customers / statistics.median(v) for k, v in times.items()}
        for label, rate in rates.items():
            print(f"{label:<14} {rate:>9,.0f} customers/s (median of {args.rounds} rounds)")
        ratio = rates["safe (0061)"] / rates["casts (0052)"]
        print(f"safe / casts   {ratio:.3f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=7)
    asyncio.run(main(p.parse_args()))
