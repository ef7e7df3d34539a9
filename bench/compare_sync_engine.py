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

Under Stripe's limits (`--rate-limit test|live`):

    PYTHONPATH=. python bench/compare_sync_engine.py --customers 10000 --rate-limit test
    PYTHONPATH=. python bench/compare_sync_engine.py --customers 50000 --rate-limit live

the emulator enforces them after seeding (test: 25 requests/s for the account and 25/s per
endpoint; live: 100/s and 25/s per endpoint; 429s as Stripe's, without `Stripe-Should-Retry`)
and answers after `--latency-ms` (default 50 here). Each side runs as a user would run it: the
engine with its SDK's defaults (stripe-node retries 2 times, but not a rate-limit 429, so one
429 ends its backfill), syncd with its default budget (`stripe.rate_share` 0.5: half the mode's
limits) and once more with `stripe.rate_limit` set to the account's whole limit, each syncd run
into a fresh database (`--rate` is not used). The limit counters are reset before each side.
Reported per side: wall time, objects/s (rows left in PostgreSQL per second), rows (a side that
leaves fewer than were seeded is flagged), requests, 429s and their share, and the lower bound:
the side's served requests at Stripe's limits (all of them at the account's rate, no endpoint
faster than its own), and at the side's own budget where it has one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import asyncpg

from bench._common import (
    control,
    cpu_seconds,
    emulator,
    postmaster_pid,
    seed_for_resync,
    self_cpu,
    tree_cpu,
)
from syncd import lifecycle, migrations
from syncd.config import StripeConfig, load_config
from syncd.db import Database
from syncd.lifecycle import Lifecycle
from syncd.logs import configure
from syncd.pgserver import throwaway_postgres
from syncd.ratelimit import describe_budget
from syncd.resync import Resync
from syncd.stripe_api import StripeAPI
from syncd.writer import Writer

ENGINE_DIR = Path(__file__).resolve().parent / "sync_engine"
API_KEY = "sk_test_compare0000000000"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE_SECONDS = 3.0  # after seeding and between the sides: the load of what came before drops
LIMITS = {"test": (25.0, 25.0), "live": (100.0, 25.0)}  # Stripe's: (account, per endpoint)


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
    # Under --rate-limit: the emulator's limit counters over the side, its own budget, its error.
    attempts: int = 0  # requests including those answered 429
    limited: int = 0
    served: dict[str, int] = dataclasses.field(default_factory=dict)  # per endpoint
    budget: tuple[float, float] | None = None  # (requests/s, per endpoint); None: no limiter
    error: str = ""

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
        for path in ("/_emulator/stats", "/_emulator/limits/counters"):
            control(self.url, path, method="DELETE")
        self.pg = server_cpu(self.postmaster) if self.postmaster else 0.0
        self.emulator = cpu_seconds(self.emulator_pid)

    def fill(self, side: Side) -> Side:
        if self.postmaster:
            side.pg_cpu = server_cpu(self.postmaster) - self.pg
        side.emulator_cpu = cpu_seconds(self.emulator_pid) - self.emulator
        side.requests = int(control(self.url, "/_emulator/stats")["total"])
        counters = control(self.url, "/_emulator/limits")["counters"]
        side.attempts, side.limited = int(counters["requests"]), int(counters["limited"])
        side.served = {ep: int(c["served"]) for ep, c in counters["endpoints"].items()}
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


def engine(command: str, dsn: str, url: str, check: bool = True) -> str:
    out = subprocess.run(
        ["node", "run.cjs", command, "--database-url", dsn, "--api-base", url],
        cwd=ENGINE_DIR,
        env={**os.environ, "STRIPE_API_KEY": API_KEY},
        stdout=subprocess.PIPE,
        text=True,
        check=check,
    )
    return out.stdout


def run_engine(dsn: str, meter: Meter) -> tuple[Side, str]:
    engine("migrate", dsn, meter.url)
    meter.start()
    # A failed backfill still prints its report line, with "error" (run.cjs exits 1 then).
    lines = engine("sync", dsn, meter.url, check=False).strip().splitlines()
    if not lines:
        raise SystemExit("the engine's sync printed no report (its error is above)")
    report = json.loads(lines[-1])
    side = Side(
        "stripe-sync-engine",
        objects=int(report["synced"]),
        seconds=float(report["seconds"]),
        client_cpu=float(report["cpu_seconds"]),
        error=str(report.get("error", "")),
    )
    meter.fill(side)
    version = (
        f"@supabase/stripe-sync-engine {report['engine']}, stripe-node {report['stripe_node']}"
    )
    if "max_network_retries" in report:
        version += f" (maxNetworkRetries {report['max_network_retries']})"
    return side, version


async def run_syncd(
    args: argparse.Namespace, dsn: str, meter: Meter, whole_limit: bool = False
) -> Side:
    """syncd's resync of customers: under --rate-limit with the mode's default budget (half of
    Stripe's limits), or with `stripe.rate_limit` the account's whole limit (`whole_limit`);
    otherwise at `--rate`."""
    cfg = load_config(None, {})
    if args.rate_limit is None:
        stripe = StripeConfig(api_key=API_KEY, api_base=meter.url, rate_limit=args.rate)
        name = "syncd"
    else:
        account = LIMITS[args.rate_limit][0] if whole_limit else 0.0
        stripe = StripeConfig(
            api_key=API_KEY, api_base=meter.url, mode=args.rate_limit, rate_limit=account
        )
        name = f"syncd rate_limit={account:g}" if whole_limit else "syncd (defaults)"
    cfg = dataclasses.replace(
        cfg,
        database=dataclasses.replace(cfg.database, url=dsn),  # syncd's default pool
        stripe=stripe,
        # Customers only, as the engine's backfill; no per-customer child lists.
        sync=dataclasses.replace(cfg.sync, include=["customers"], per_parent_lists=False),
    )
    if args.rate_limit is not None:
        print(f"{name}: {describe_budget(cfg)}", flush=True)
    async with Database.connect(cfg.database) as db, StripeAPI(cfg) as api:
        await migrations.migrate(db)
        resync = Resync(cfg, db, api, Writer(db, notify_channel="syncd_changes"), Lifecycle(1))
        meter.start()
        cpu = self_cpu()
        started = time.monotonic()
        error, objects = "", 0
        if args.rate_limit is None:
            objects = (await resync.run(reason="compare_sync_engine")).objects
        else:
            try:
                objects = (await resync.run(reason="compare_sync_engine")).objects
            except Exception as exc:  # reported with the rows it left
                error = f"{type(exc).__name__}: {exc}"
        side = Side(
            name,
            objects=objects,
            seconds=time.monotonic() - started,
            client_cpu=self_cpu() - cpu,
            error=error,
        )
        if args.rate_limit is not None:
            side.budget = (cfg.rate_limit, cfg.endpoint_rate_limit)
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


def lower_bound(served: dict[str, int], account: float, endpoint: float) -> float:
    """Seconds the served requests take at least: all of them at the account's rate, and no
    endpoint's faster than its own."""
    return max(sum(served.values()) / account, max(served.values(), default=0) / endpoint)


def report_limits(sides: list[Side], args: argparse.Namespace) -> None:
    account, endpoint = LIMITS[args.rate_limit]
    pages = -(-args.customers // 100)
    print(
        f"\nlimits {args.rate_limit} ({account:g}/s for the account, {endpoint:g}/s per"
        f" endpoint), latency {args.latency_ms:g} ms, {args.customers:,} customers:"
        f" {pages} pages of 100 take {pages / min(account, endpoint):.1f}s at least"
    )
    print(
        f"{'':22} {'budget/s':>11} {'seconds':>8} {'objects/s':>10} {'rows':>8} {'requests':>9}"
        f" {'429s':>6} {'share':>7}  {'bound (Stripe)':>14}  {'bound (own budget)':>18}"
    )
    for s in sides:
        bound = lower_bound(s.served, account, endpoint)
        budget, own = "none", "-"
        if s.budget is not None:
            budget = f"{s.budget[0]:g}/{s.budget[1]:g}"
            own_bound = lower_bound(s.served, min(account, s.budget[0]), min(endpoint, s.budget[1]))
            own = f"{own_bound:.1f}s ({s.seconds / own_bound:.2f}x)" if own_bound else "-"
        stripe = f"{bound:.1f}s ({s.seconds / bound:.2f}x)" if bound else "-"
        if s.error:
            stripe = own = "failed"
        print(
            f"{s.name:22} {budget:>11} {s.seconds:>8.2f} {s.rows / s.seconds:>10,.0f}"
            f" {s.rows:>8,} {s.attempts:>9,} {s.limited:>6,}"
            f" {s.limited / max(1, s.attempts):>7.2%}  {stripe:>14}  {own:>18}"
        )
    for s in sides:
        if s.error:
            print(f"ERROR: {s.name} failed after {s.seconds:.2f}s: {s.error}")
        if s.rows != args.customers:
            print(
                f"ROWS LOST: {s.name} left {s.rows:,} of {args.customers:,} customers"
                f" ({args.customers - s.rows:,} missing)"
            )
    print(
        "(budget: the side's own requests/s for the account/per endpoint; requests include"
        " those answered 429;\n a bound is the time the side's served requests take at least"
        " at those limits, with the wall time's ratio to it)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--customers", type=int, default=200_000)
    p.add_argument("--products", type=int, default=5)
    p.add_argument(
        "--latency-ms",
        type=float,
        default=None,
        help="emulator latency per request (default 0; 50 with --rate-limit)",
    )
    p.add_argument("--rate", type=float, default=10000.0, help="syncd's requests/s limiter")
    p.add_argument(
        "--rate-limit",
        choices=sorted(LIMITS),
        default=None,
        help="the emulator enforces Stripe's limits of this mode; syncd runs with its defaults,"
        " then with stripe.rate_limit the account's limit (default: no limits)",
    )
    p.add_argument("--syncd-first", action="store_true", help="run syncd before the engine")
    p.add_argument("--log", default="warning", help="syncd's log level")
    p.set_defaults(subscriptions=0)  # read by seed_for_resync
    args = p.parse_args()
    if args.latency_ms is None:
        args.latency_ms = 50.0 if args.rate_limit else 0.0
    configure(args.log, "console")
    ensure_engine_installed()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with emulator() as (emu, url):
        seed_for_resync(url, args)
        if args.rate_limit:
            control(url, "/_emulator/limits", {"stripe_limits": args.rate_limit})
        with throwaway_postgres(prefer_local=True) as (admin_dsn, local):
            postmaster = postmaster_pid(local) or None
            names = ["sync_engine", "syncd"] + (["syncd_full"] if args.rate_limit else [])
            engine_dsn, syncd_dsn, *full_dsn = lifecycle.run(create_databases, admin_dsn, *names)
            meter = Meter(url, emu.pid, postmaster)
            mirror = load_config(None, {}).database.mirror_schema
            sides: list[Side] = []
            time.sleep(SETTLE_SECONDS)
            order = ["syncd", "syncd_full"] if args.rate_limit else ["syncd"]
            order = [*order, "engine"] if args.syncd_first else ["engine", *order]
            for name in order:
                if name == "engine":
                    side, version = run_engine(engine_dsn, meter)
                    side.rows, side.table_size = lifecycle.run(
                        table_stats, engine_dsn, '"stripe".customers'
                    )
                    lifecycle.run(settle, engine_dsn, '"stripe".customers')
                    time.sleep(SETTLE_SECONDS)
                    print(version, flush=True)
                else:
                    dsn = full_dsn[0] if name == "syncd_full" else syncd_dsn
                    side = lifecycle.run(run_syncd, args, dsn, meter, name == "syncd_full")
                    side.rows, side.table_size = lifecycle.run(
                        table_stats, dsn, f'"{mirror}".customers'
                    )
                    lifecycle.run(settle, dsn, f'"{mirror}".customers')
                    time.sleep(SETTLE_SECONDS)
                print(f"{side.name}: {side.objects:,} customers in {side.seconds:.2f}s", flush=True)
                sides.append(side)
            if args.rate_limit:
                report_limits(sides, args)
            else:
                report(sides, args.customers)


if __name__ == "__main__":
    main()
