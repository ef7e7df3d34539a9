"""What history costs (docs/history.md): full resync and snapshot-apply throughput with history
on and off, in one run.

    PYTHONPATH=. python bench/history_bench.py --customers 20000 --subscriptions 4000 --rounds 3

A throwaway PostgreSQL (syncd.pgserver, or SYNCD_BENCH_DATABASE_URL) and `python -m syncd
emulator` run as separate processes; resyncs and the event stream run in this process through
the daemon's own classes, as bench/resync_bench.py and bench/events_bench.py do. The emulator is
seeded once, with events over the last day. Each round measures, for each setting (off, then on;
the next round on, then off, so a drift of the machine's load falls on both alike), from an
emptied mirror:

* resync cold: every object inserted (with history: every row's first version);
* resync unchanged: the same lists again, nothing changes (with history: the triggers run and
  find no change);
* snapshot: the day's events drained by head polls in `snapshot` mode (with history: a version
  per object).

History covers `--history` (default: the listed tables and their items). Prints objects or
events per second and the CPU they took (this process and PostgreSQL's backends, per 1,000) per
setting, medians of the rounds, and the ratios on/off; the CPU ratio is the steadier figure on a
machine shared with other work.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections import defaultdict

from bench._common import control, database, emulator, tree_cpu
from syncd import history, lifecycle, migrations
from syncd.config import Config, DatabaseConfig, EventsConfig, StripeConfig, load_config
from syncd.db import Database
from syncd.events import EventStream
from syncd.lifecycle import Lifecycle
from syncd.logs import configure
from syncd.registry import BY_TABLE
from syncd.resync import Resync
from syncd.stripe_api import StripeAPI
from syncd.writer import Writer


def seed_emulator(url: str, args: argparse.Namespace) -> None:
    """The lists' objects, with events over the last day."""
    started = time.monotonic()
    seed = {
        "customers": args.customers,
        "subscriptions": args.subscriptions,
        "products": args.products,
        "events": True,
        "days": 1,
    }
    counts = control(url, "/_emulator/seed", seed)
    print(f"emulator seeded in {time.monotonic() - started:.1f}s: {counts}", flush=True)


class Meter:
    """Wall time and CPU (this process and PostgreSQL) of one measurement."""

    def __init__(self, pg_pid: int):
        self.pg_pid = pg_pid
        self.wall = time.monotonic()
        self.cpu = time.process_time() + (tree_cpu(pg_pid) if pg_pid else 0.0)

    def done(self, n: int) -> tuple[float, float]:
        """Per second, and CPU milliseconds per 1,000 (NaN without the server's pid)."""
        wall = time.monotonic() - self.wall
        cpu = time.process_time() + (tree_cpu(self.pg_pid) if self.pg_pid else 0.0)
        per_k = (cpu - self.cpu) * 1e6 / n if self.pg_pid and n else float("nan")
        return n / wall, per_k


def config(dsn: str, url: str, args: argparse.Namespace) -> Config:
    cfg = load_config(None, {})
    return dataclasses.replace(
        cfg,
        database=DatabaseConfig(url=dsn, pool_min_size=2, pool_max_size=8),
        stripe=StripeConfig(api_key="sk_test_bench0000000000", api_base=url, rate_limit=10000.0),
        sync=dataclasses.replace(cfg.sync, include=args.mirrored, per_parent_lists=False),
        events=dataclasses.replace(EventsConfig(), apply_mode="snapshot"),
    )


# Ledger rows of earlier days put in before each measurement, as a running daemon has (35 days
# of events): with an empty ledger, the lookup of known events was planned (and its plan kept
# by the connection) as a scan of a table that then grew with every batch, and whether a round
# met it depended on when autovacuum analyzed the table: the rounds' figures varied twofold.
OLD_LEDGER_ROWS = 200_000


async def reset(db: Database) -> None:
    """An empty mirror, history, cursor and resync state, and a ledger of other events: each
    measurement starts alike."""
    kept = await db.fetch("history_kept")
    tables = [f'stripe."{t}"' for t in BY_TABLE] + [
        f'stripe_history."{r["table_name"]}"' for r in kept
    ]
    await db.run(
        lambda c: c.execute(
            f"TRUNCATE {', '.join(tables)}, syncd.events_ledger, syncd.events_cursor,"
            " syncd.requests, syncd.resync_runs, syncd.rejected_objects, syncd.refetch_queue,"
            " syncd.resync_coverage CASCADE"
        ),
        transaction=False,
    )
    await db.run(
        lambda c: c.execute(
            "INSERT INTO syncd.events_ledger (event_id, type, created, outcome, processed_at)"
            " SELECT 'evt_old_' || n, 'customer.updated', 0, 'ignored', now()"
            f" FROM generate_series(1, {OLD_LEDGER_ROWS}) AS n"
        ),
        transaction=False,
    )
    await db.run(lambda c: c.execute("VACUUM ANALYZE"), transaction=False)


async def sizes(db: Database, table: str) -> str:
    """Rows and total size of a mirror table and of its history."""
    out = []
    for schema in ("stripe", "stripe_history"):
        row = await db.run(
            lambda c, s=schema: c.fetchrow(
                f"SELECT count(*) AS n, pg_size_pretty(pg_total_relation_size('{s}.\"{table}\"'))"
                f' AS size FROM {s}."{table}"'
            ),
            transaction=False,
        )
        out.append(f"{schema} {row['n']:,} rows {row['size']}")
    return "; ".join(out)


Figures = tuple[float, float]  # per second, CPU ms per 1,000


async def resyncs(cfg: Config, db: Database, api: StripeAPI, pg_pid: int) -> list[Figures]:
    """A cold resync, then the same lists again (nothing changes): objects (with children)."""
    resync = Resync(cfg, db, api, Writer(db, notify_channel="syncd_changes"), Lifecycle(1))
    out = []
    for _ in range(2):
        meter = Meter(pg_pid)
        result = await resync.run(reason="bench")
        children = sum(t.children for t in result.tables.values())
        out.append(meter.done(result.objects + children))
    return out


async def snapshot(cfg: Config, db: Database, api: StripeAPI, pg_pid: int) -> Figures:
    """Events applied by head polls in snapshot mode, from a cursor before them."""
    stream = EventStream(cfg, db, api, Writer(db, notify_channel=cfg.events.notify_channel))
    await api.request("GET", "/v1/events", {"limit": 1})  # sync the Stripe clock
    await db.execute("events_cursor_restart", "", api.clock.now() - 3 * 86400, "bench")
    meter = Meter(pg_pid)
    applied = 0
    while True:
        result = await stream.poll_head()
        applied += result.fresh
        if result.fresh == 0:
            break
    return meter.done(applied)


async def bench(args: argparse.Namespace, dsn: str, pg_pid: int, url: str) -> None:
    cfg = config(dsn, url, args)
    rates: dict[tuple[str, str], list[Figures]] = defaultdict(list)
    async with Database.connect(cfg.database) as db, StripeAPI(cfg) as api:
        await migrations.migrate(db)
        for n in range(args.rounds):
            for setting in ("off", "on") if n % 2 == 0 else ("on", "off"):
                await history.apply(db, args.history if setting == "on" else [])
                await reset(db)
                # Fresh connections for each measurement: no plan cached in another one.
                async with Database.connect(cfg.database) as fresh:
                    cold, unchanged = await resyncs(cfg, fresh, api, pg_pid)
                if setting == "on" and n == 0:
                    print("after a cold resync and the same lists again: rows, size", flush=True)
                    for table in args.history:
                        print(f"  {table:20}", await sizes(db, table), flush=True)
                await reset(db)
                async with Database.connect(cfg.database) as fresh:
                    events = await snapshot(cfg, fresh, api, pg_pid)
                for what, rate in (
                    ("resync cold", cold),
                    ("resync unchanged", unchanged),
                    ("snapshot", events),
                ):
                    rates[(what, setting)].append(rate)
                print(
                    f"round {n + 1} history {setting:3}: resync cold {cold[0]:,.0f} objects/s,"
                    f" unchanged {unchanged[0]:,.0f} objects/s; snapshot {events[0]:,.0f}"
                    f" events/s (load average {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        await history.apply(db, [])
    print(f"\nmedians of {args.rounds} rounds (history on {', '.join(args.history)}):")
    print("  (CPU: this process and PostgreSQL, ms per 1,000 objects or events)")
    for what in ("resync cold", "resync unchanged", "snapshot"):
        unit = "events/s" if what == "snapshot" else "objects/s"
        off, on = (rates[(what, setting)] for setting in ("off", "on"))
        rate_off, rate_on = (statistics.median(r for r, _ in x) for x in (off, on))
        cpu_off, cpu_on = (statistics.median(c for _, c in x) for x in (off, on))
        print(
            f"  {what:17} off {rate_off:7,.0f} {unit}, CPU {cpu_off:4.0f}"
            f" | on {rate_on:7,.0f} {unit}, CPU {cpu_on:4.0f}"
            f" | on/off: rate {rate_on / rate_off:.2f}, CPU {cpu_on / cpu_off:.2f}"
        )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--subscriptions", type=int, default=4_000)
    p.add_argument("--products", type=int, default=5)
    p.add_argument("--include", default="customers,products,prices,subscriptions")
    p.add_argument("--history", default="", help="tables with history (default: --include's)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    args.include = [t for t in args.include.split(",") if t]
    # Owned children (subscription items) are mirrored with their parents.
    owned = [c.table for t in args.include for c in BY_TABLE[t].children]
    args.mirrored = sorted({*args.include, *(c for c in owned if BY_TABLE[c].owned)})
    args.history = [t for t in args.history.split(",") if t] or args.mirrored
    configure("warning", "console")
    with database() as (dsn, pg_pid), emulator() as (_emulator, url):
        seed_emulator(url, args)
        lifecycle.run(bench, args, dsn, pg_pid, url)


if __name__ == "__main__":
    main()
