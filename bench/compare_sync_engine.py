"""Full resync of customers: syncd against Supabase's @supabase/stripe-sync-engine, in one run.

    PYTHONPATH=. python bench/compare_sync_engine.py --customers 20000   # quick check
    PYTHONPATH=. python bench/compare_sync_engine.py                     # 200,000 customers

Optional and not part of CI. Needs Node.js (20+) and npm: the first run installs the engine
(the npm package pinned in bench/sync_engine/package-lock.json, with the `stripe` SDK and `pg`)
into bench/sync_engine/node_modules with `npm ci`, which downloads it from the npm registry.

One emulator (`python -m syncd emulator`) and one throwaway PostgreSQL serve both sides. The
emulator is seeded with N customers; the engine's migrations run into a database of their own
(`sync_engine`: they hard-code the schema "stripe", which syncd's mirror also uses), then its
`syncBackfill({object: 'customer'})` runs in a Node process (bench/sync_engine/run.cjs), its
Stripe client pointed at the emulator. Then syncd's resync of customers runs in this process
into a second database (`syncd`). Each side is timed over the sync alone (not migrations or
start-up); rows are counted in PostgreSQL afterwards. After seeding and after each side the
server is settled, untimed: the side's table vacuumed and analyzed, a checkpoint, a pause.
Without that the second side paid for the first one's autovacuum and dirty buffers. CPU seconds
per 100k objects are given for the syncing process, the PostgreSQL server (postmaster, live
backends and exited ones) and the emulator.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import asyncpg

from bench.resync_bench import cpu_seconds, self_cpu, start_emulator, tree_cpu
from syncd import lifecycle, migrations
from syncd.config import StripeConfig, load_config
from syncd.db import Database
from syncd.lifecycle import Lifecycle
from syncd.logs import configure
from syncd.pgserver import throwaway_postgres
from syncd.resync import Resync
from syncd.stripe_api import StripeAPI
from syncd.writer import Writer

ENGINE_DIR = Path(__file__).resolve().parent / "sync_engine"
API_KEY = "sk_test_compare0000000000"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE_SECONDS = 3.0  # after seeding and between the sides: the load of what came before drops


@dataclasses.dataclass
class Side:
    name: str
    objects: int  # as reported by the side itself
    seconds: float
    client_cpu: float  # the syncing process (Node for the engine, this process for syncd)
    pg_cpu: float | None = None
    emulator_cpu: float = 0.0
    requests: int = 0
    rows: int = 0  # counted in PostgreSQL afterwards
    table_size: str = ""
    load: float = 0.0  # 1-minute load average when the side finished

    @property
    def rate(self) -> float:
        return self.objects / self.seconds

    def per_100k(self, cpu: float | None) -> str:
        return "n/a" if cpu is None else f"{cpu * 100_000 / max(1, self.objects):.1f}"


def server_cpu(postmaster: int) -> float:
    """CPU of PostgreSQL: the postmaster, its live children, and its exited children (cutime)."""
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    exited = (int(fields[13]) + int(fields[14])) / CLK_TCK  # cutime cstime
    return tree_cpu(postmaster) + exited


class Meter:
    """CPU of PostgreSQL and the emulator, and the emulator's request count, over one side."""

    def __init__(self, url: str, emulator_pid: int, postmaster: int | None):
        self.url, self.emulator_pid, self.postmaster = url, emulator_pid, postmaster

    def start(self) -> None:
        urllib.request.urlopen(
            urllib.request.Request(self.url + "/_emulator/stats", method="DELETE"), timeout=60
        ).read()
        self.pg = server_cpu(self.postmaster) if self.postmaster else 0.0
        self.emulator = cpu_seconds(self.emulator_pid)

    def fill(self, side: Side) -> Side:
        if self.postmaster:
            side.pg_cpu = server_cpu(self.postmaster) - self.pg
        side.emulator_cpu = cpu_seconds(self.emulator_pid) - self.emulator
        with urllib.request.urlopen(self.url + "/_emulator/stats", timeout=60) as r:
            side.requests = int(json.loads(r.read())["total"])
        side.load = os.getloadavg()[0]
        return side


def ensure_engine_installed() -> None:
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: this benchmark needs Node.js 20+ and npm")
    if (ENGINE_DIR / "node_modules" / "@supabase" / "stripe-sync-engine").is_dir():
        return
    print("installing @supabase/stripe-sync-engine with npm ci (downloads it) ...", flush=True)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=ENGINE_DIR, check=True)


def engine(command: str, dsn: str, url: str) -> str:
    out = subprocess.run(
        ["node", "run.cjs", command, "--database-url", dsn, "--api-base", url],
        cwd=ENGINE_DIR,
        env={**os.environ, "STRIPE_API_KEY": API_KEY},
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return out.stdout


def run_engine(dsn: str, meter: Meter) -> tuple[Side, str]:
    engine("migrate", dsn, meter.url)
    meter.start()
    report = json.loads(engine("sync", dsn, meter.url).strip().splitlines()[-1])
    side = Side(
        "stripe-sync-engine",
        objects=int(report["synced"]),
        seconds=float(report["seconds"]),
        client_cpu=float(report["cpu_seconds"]),
    )
    meter.fill(side)
    version = (
        f"@supabase/stripe-sync-engine {report['engine']}, stripe-node {report['stripe_node']}"
    )
    return side, version


async def run_syncd(args: argparse.Namespace, dsn: str, meter: Meter) -> Side:
    cfg = load_config(None, {})
    cfg = dataclasses.replace(
        cfg,
        database=dataclasses.replace(cfg.database, url=dsn),  # syncd's default pool
        stripe=StripeConfig(api_key=API_KEY, api_base=meter.url, rate_limit=args.rate),
        # Customers only, as the engine's backfill; no per-customer child lists.
        sync=dataclasses.replace(cfg.sync, include=["customers"], per_parent_lists=False),
    )
    async with Database.connect(cfg.database) as db, StripeAPI(cfg) as api:
        await migrations.migrate(db)
        resync = Resync(cfg, db, api, Writer(db, notify_channel="syncd_changes"), Lifecycle(1))
        meter.start()
        cpu = self_cpu()
        started = time.monotonic()
        result = await resync.run(reason="compare_sync_engine")
        side = Side(
            "syncd",
            objects=result.objects,
            seconds=time.monotonic() - started,
            client_cpu=self_cpu() - cpu,
        )
        meter.fill(side)  # pool still open: its backends count as live children
    return side


async def create_databases(admin_dsn: str, *names: str) -> list[str]:
    conn = await asyncpg.connect(admin_dsn)
    try:
        for name in names:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = admin_dsn.rsplit("/", 1)[0]
    return [f"{base}/{name}" for name in names]


async def settle(dsn: str, table: str) -> None:
    """Do the maintenance one side's writes left due (untimed), so that it does not run on the
    next side's time: autovacuum and autoanalyze of the new table, and the dirty buffers the
    next side's backends would otherwise have to write out to find free ones."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"VACUUM (ANALYZE) {table}")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def table_stats(dsn: str, table: str) -> tuple[int, str]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            f"SELECT count(*) AS n, pg_size_pretty(pg_total_relation_size('{table}')) AS size"
            f" FROM {table}"
        )
    finally:
        await conn.close()
    return int(row["n"]), str(row["size"])


def report(sides: list[Side], customers: int) -> None:
    print(
        f"\n{'':20} {'objects':>9} {'rows':>9} {'seconds':>8} {'objects/s':>10}"
        f" {'requests':>9}  CPU s/100k: client  PostgreSQL  emulator  (table size, load)"
    )
    for s in sides:
        print(
            f"{s.name:20} {s.objects:>9,} {s.rows:>9,} {s.seconds:>8.2f} {s.rate:>10,.0f}"
            f" {s.requests:>9,}  {s.per_100k(s.client_cpu):>18} {s.per_100k(s.pg_cpu):>11}"
            f" {s.per_100k(s.emulator_cpu):>9}  ({s.table_size}, load {s.load:.2f})"
        )
    for s in sides:
        if s.rows != customers or s.objects != customers:
            print(
                f"WARNING: {s.name} reported {s.objects:,} objects and left {s.rows:,} rows;"
                f" the emulator holds {customers:,} customers"
            )
    by_name = {s.name: s for s in sides}
    ratio = by_name["syncd"].rate / by_name["stripe-sync-engine"].rate
    print(
        f"\nsyncd / stripe-sync-engine: {ratio:.1f}x objects/s"
        f" (load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--customers", type=int, default=200_000)
    p.add_argument("--products", type=int, default=5)
    p.add_argument("--latency-ms", type=float, default=0.0, help="emulator latency per request")
    p.add_argument("--rate", type=float, default=10000.0, help="syncd's requests/s limiter")
    p.add_argument("--syncd-first", action="store_true", help="run syncd before the engine")
    p.add_argument("--log", default="warning", help="syncd's log level")
    p.set_defaults(subscriptions=0)  # read by start_emulator
    args = p.parse_args()
    configure(args.log, "console")
    ensure_engine_installed()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    emu, url = start_emulator(args)
    try:
        with throwaway_postgres(prefer_local=True) as (admin_dsn, local):
            postmaster = None
            if local is not None:
                postmaster = int((local.data / "postmaster.pid").read_text().split()[0])
            engine_dsn, syncd_dsn = lifecycle.run(
                create_databases, admin_dsn, "sync_engine", "syncd"
            )
            meter = Meter(url, emu.pid, postmaster)
            mirror = load_config(None, {}).database.mirror_schema
            sides: list[Side] = []
            time.sleep(SETTLE_SECONDS)
            for name in ("syncd", "engine") if args.syncd_first else ("engine", "syncd"):
                if name == "engine":
                    side, version = run_engine(engine_dsn, meter)
                    side.rows, side.table_size = lifecycle.run(
                        table_stats, engine_dsn, '"stripe".customers'
                    )
                    lifecycle.run(settle, engine_dsn, '"stripe".customers')
                    time.sleep(SETTLE_SECONDS)
                    print(version, flush=True)
                else:
                    side = lifecycle.run(run_syncd, args, syncd_dsn, meter)
                    side.rows, side.table_size = lifecycle.run(
                        table_stats, syncd_dsn, f'"{mirror}".customers'
                    )
                    lifecycle.run(settle, syncd_dsn, f'"{mirror}".customers')
                    time.sleep(SETTLE_SECONDS)
                print(f"{side.name}: {side.objects:,} customers in {side.seconds:.2f}s", flush=True)
                sides.append(side)
            report(sides, args.customers)
    finally:
        emu.terminate()
        emu.wait(10)


if __name__ == "__main__":
    main()
