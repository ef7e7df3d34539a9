"""Application views: how long reading one user's rows takes with a large mirror.

Seeds the emulator (100,000 customers and 20,000 subscriptions by default), writes the objects
into the mirror with the real writer, then times per-user queries on the views, as the owner (a
server-side app: no row-level security) and as Supabase's `authenticated` role under syncd's
policies (simulated auth.uid(); one transaction per request, as PostgREST does), and prints the
plans (EXPLAIN ANALYZE) so index use can be checked.

    python bench/views_bench.py --customers 100000 --queries 2000
    python bench/views_bench.py --database-url postgresql://... (else a throwaway server)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import uuid
from collections import defaultdict
from typing import Any

import asyncpg

from syncd import appschema, lifecycle, migrations
from syncd.config import DatabaseConfig, load_config
from syncd.db import Database, Tx
from syncd.emulator import Emulator
from syncd.pgserver import throwaway_postgres
from syncd.registry import BY_TABLE
from syncd.versions import Version
from syncd.writer import Writer

SUPABASE = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon; END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated;
    END IF;
END $$;
CREATE SCHEMA IF NOT EXISTS auth;
CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $f$
    SELECT coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid
$f$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated;
"""
QUERIES = {
    "subscriptions": "SELECT * FROM billing.subscriptions WHERE user_id = $1",
    "customers": "SELECT * FROM billing.customers WHERE id = $1",
    "payments": "SELECT * FROM billing.payments WHERE user_id = $1",
    "active_entitlements": "SELECT * FROM billing.active_entitlements WHERE user_id = $1",
}
# Under row-level security the policies do the filtering, as a Supabase client's query does.
RLS_QUERIES = {
    "subscriptions": "SELECT * FROM billing.subscriptions",
    "customers": "SELECT * FROM billing.customers",
    "payments": "SELECT * FROM billing.payments",
    "active_entitlements": "SELECT * FROM billing.active_entitlements",
}


async def load_mirror(emu: Emulator, db: Database) -> dict[str, int]:
    writer = Writer(db)
    version = Version.at(float(emu.clock.now()))
    counts: dict[str, int] = {}
    for table in ("products", "prices", "customers", "subscriptions", "invoices"):
        resource = BY_TABLE[table]
        objs = emu.objects(resource.object)
        for i in range(0, len(objs), 1000):
            chunk = objs[i : i + 1000]
            await db.transact(
                lambda c, ch=chunk, r=resource: writer.upsert(
                    c, r, ch, version=version, api_version=None
                )
            )
        counts[table] = len(objs)
    items: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in emu.objects("subscription_item"):
        if not item.get("deleted"):
            items[item["subscription"]].append(item)
    parents = list(items.items())
    resource = BY_TABLE["subscription_items"]

    async def write_items(conn: Tx, batch: list[tuple[str, list[Any]]]) -> None:
        for parent, children in batch:
            await writer.upsert(
                conn, resource, children, version=version, api_version=None, parent_id=parent
            )

    for i in range(0, len(parents), 2000):
        await db.transact(lambda c, b=parents[i : i + 2000]: write_items(c, b))
    counts["subscription_items"] = sum(len(v) for v in items.values())
    await db.run(lambda c: c.execute("ANALYZE"), transaction=False)
    return counts


def summary(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    return (
        f"p50 {p(0.50):.2f} ms  p95 {p(0.95):.2f} ms  p99 {p(0.99):.2f} ms  "
        f"mean {statistics.fmean(ms):.2f} ms  ({len(ms)} queries)"
    )


async def time_owner(db: Database, sql: str, users: list[str]) -> list[float]:
    out = []
    async with db.pool.acquire() as conn:
        stmt = await conn.prepare(sql)
        for user in users:
            t = time.perf_counter()
            await stmt.fetch(user)
            out.append(time.perf_counter() - t)
    return out


async def time_rls(db: Database, sql: str, users: list[str]) -> list[float]:
    out = []
    async with db.pool.acquire() as conn:
        for user in users:
            claims = json.dumps({"sub": user, "role": "authenticated"})
            t = time.perf_counter()
            async with conn.transaction():
                await conn.execute("SET LOCAL ROLE authenticated")
                await conn.execute("SELECT set_config('request.jwt.claims', $1, true)", claims)
                await conn.fetch(sql)
            out.append(time.perf_counter() - t)
    return out


async def explain(db: Database, sql: str, user: str, rls: bool) -> str:
    async def fn(conn: asyncpg.Connection) -> str:
        args: list[str] = []
        if rls:
            await conn.execute("SET LOCAL ROLE authenticated")
            claims = json.dumps({"sub": user})
            await conn.execute("SELECT set_config('request.jwt.claims', $1, true)", claims)
        else:
            args = [user]
        rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, *args)
        return "\n".join(r[0] for r in rows)

    return await db.run(fn)


async def bench(url: str, args: argparse.Namespace) -> None:
    cfg = load_config(None, {})
    dbcfg = DatabaseConfig(url=url, pool_min_size=1, pool_max_size=4)
    async with Database.connect(dbcfg, min_size=1) as db:
        await migrations.migrate(db)
        await db.run(lambda c: c.execute(SUPABASE))
        async with Emulator.running(port=0, seed=7) as emu:
            t = time.perf_counter()
            seeded = emu.seed(customers=args.customers, canceled_fraction=0.1)
            print(f"seeded {seeded} in {time.perf_counter() - t:.1f} s")
            t = time.perf_counter()
            counts = await load_mirror(emu, db)
            print(f"mirror loaded {counts} in {time.perf_counter() - t:.1f} s")
            customers = emu.objects("customer")
            subscribed = {s["customer"] for s in emu.objects("subscription")}
        by_id = {c["id"]: c["metadata"]["supabase_user_id"] for c in customers}
        rng = random.Random(3)
        subscribers = [by_id[c] for c in subscribed]
        users = [rng.choice(subscribers) for _ in range(args.queries)]
        anyone = [by_id[rng.choice(customers)["id"]] for _ in range(args.queries)]
        strangers = [str(uuid.uuid4()) for _ in range(args.queries)]
        print(f"\n== owner role (no row-level security), {args.queries} users each ==")
        for name, sql in QUERIES.items():
            await time_owner(db, sql, users[:50])  # warm up
            print(f"{name:20s} subscribers  {summary(await time_owner(db, sql, users))}")
        print(
            f"{'subscriptions':20s} any user     "
            f"{summary(await time_owner(db, QUERIES['subscriptions'], anyone))}"
        )
        print(
            f"{'subscriptions':20s} unknown user "
            f"{summary(await time_owner(db, QUERIES['subscriptions'], strangers))}"
        )
        base = (
            "SELECT s.* FROM stripe.subscriptions s JOIN stripe.customers c"
            " ON c.id = s.customer_id WHERE c.user_id = $1"
        )
        print(f"{'(mirror join)':20s} subscribers  {summary(await time_owner(db, base, users))}")

        outcome = await appschema.apply_row_level_security(db, cfg)
        print(f"\n== authenticated role under row-level security ({outcome}) ==")
        for name, sql in RLS_QUERIES.items():
            await time_rls(db, sql, users[:50])
            print(f"{name:20s} subscribers  {summary(await time_rls(db, sql, users))}")
        overhead = await time_rls(db, "SELECT 1", users)
        print(f"{'(request overhead)':20s} SELECT 1     {summary(overhead)}")
        print(
            f"{'pricing_plans':20s} subscribers  "
            f"{summary(await time_rls(db, 'SELECT * FROM billing.pricing_plans', users))}"
        )
        print("\n== plans ==")
        print("-- owner:", QUERIES["subscriptions"])
        print(await explain(db, QUERIES["subscriptions"], users[0], rls=False))
        print("\n-- authenticated:", RLS_QUERIES["subscriptions"])
        print(await explain(db, RLS_QUERIES["subscriptions"], users[0], rls=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    if args.database_url:
        lifecycle.run(bench, args.database_url, args)
        return
    with throwaway_postgres() as (dsn, _local):
        lifecycle.run(bench, dsn, args)


if __name__ == "__main__":
    main()
