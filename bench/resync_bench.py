"""Full resync throughput, peak RSS and rate-limit use, against the emulator in another process.

    PYTHONPATH=. python bench/resync_bench.py --customers 200000            # cold, then unchanged
    PYTHONPATH=. python bench/resync_bench.py --customers 20000 --subscriptions 20000 \
        --include subscriptions,invoices                                      # large TOASTed rows
    PYTHONPATH=. python bench/resync_bench.py --customers 100000 --latency-ms 100 --rate 100
    PYTHONPATH=. python bench/resync_bench.py --customers 1000000 --runs 1   # peak RSS

A throwaway PostgreSQL (syncd.pgserver) and `python -m syncd emulator` are started as separate
processes; the resync runs in this process through the daemon's own classes, and the figures
are objects/s per run and this process's peak RSS (ru_maxrss), which excludes the emulator.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import time

import asyncpg

from bench._common import (
    cpu_seconds,
    emulator,
    postmaster_pid,
    seed_for_resync,
    self_cpu,
    tree_cpu,
)
from syncd import lifecycle, migrations
from syncd.config import DatabaseConfig, StripeConfig, load_config
from syncd.db import Database
from syncd.lifecycle import Lifecycle
from syncd.logs import configure
from syncd.pgserver import throwaway_postgres
from syncd.resync import Resync
from syncd.stripe_api import StripeAPI
from syncd.writer import Writer


async def bench(
    args: argparse.Namespace, dsn: str, url: str, emulator_pid: int, pg_pid: int
) -> None:
    cfg = load_config(None, {})
    sync = dataclasses.replace(
        cfg.sync,
        include=[t for t in args.include.split(",") if t],
        per_parent_lists=args.per_parent_lists,
        concurrency=args.concurrency,
        writers=args.writers,
    )
    cfg = dataclasses.replace(
        cfg,
        database=DatabaseConfig(url=dsn, pool_min_size=2, pool_max_size=8),
        stripe=StripeConfig(api_key="sk_test_bench0000000000", api_base=url, rate_limit=args.rate),
        sync=sync,
    )
    async with Database.connect(cfg.database) as db, StripeAPI(cfg) as api:
        await migrations.migrate(db)
        resync = Resync(cfg, db, api, Writer(db, notify_channel="syncd_changes"), Lifecycle(1))
        for run in range(args.runs):
            started = time.monotonic()
            cpu = (self_cpu(), tree_cpu(pg_pid) if pg_pid else 0.0, cpu_seconds(emulator_pid))
            result = await resync.run(reason="bench")
            took = time.monotonic() - started
            used = (
                self_cpu() - cpu[0],
                (tree_cpu(pg_pid) - cpu[1]) if pg_pid else 0.0,
                cpu_seconds(emulator_pid) - cpu[2],
            )
            label = "cold (empty mirror)" if run == 0 else "unchanged mirror"
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"run {run + 1} {label}: {result.objects:,} objects"
                f" (+{sum(t.children for t in result.tables.values()):,} children)"
                f" in {took:.2f}s = {result.objects / took:,.0f} objects/s;"
                f" peak RSS {rss:.0f} MB",
                flush=True,
            )
            per = 100_000 / max(1, result.objects)
            print(
                f"  CPU seconds per 100k objects: syncd {used[0] * per:.1f},"
                f" PostgreSQL {used[1] * per:.1f}, emulator {used[2] * per:.1f}"
                f" (load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
        sizes = await db.run(
            lambda c: c.fetch(
                "SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) AS size "
                "FROM pg_class WHERE relnamespace = 'stripe'::regnamespace AND relkind = 'r' "
                "AND pg_total_relation_size(oid) > 1000000 ORDER BY 1"
            ),
            transaction=False,
        )
        print("table sizes:", ", ".join(f"{r['relname']} {r['size']}" for r in sizes))
    if args.rate and args.latency_ms:
        used = result.objects / took / 100 / args.rate
        print(f"rate budget used: {used:.0%} ({args.rate:g} requests/s of 100 objects)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--customers", type=int, default=200_000)
    p.add_argument("--subscriptions", type=int, default=0)
    p.add_argument("--products", type=int, default=5)
    p.add_argument("--include", default="customers", help="tables to resync (comma separated)")
    p.add_argument("--per-parent-lists", action="store_true")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--writers", type=int, default=3)
    p.add_argument("--rate", type=float, default=10000.0, help="requests/s (limiter)")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--unix-socket", action="store_true", help="reach PostgreSQL by Unix socket")
    p.add_argument("--log", default="warning", help="log level (info: progress lines)")
    args = p.parse_args()
    configure(args.log, "console")
    with emulator() as (emu, url):
        seed_for_resync(url, args)
        with throwaway_postgres(prefer_local=True) as (dsn, local):
            pg_pid = postmaster_pid(local)
            if local is not None and args.unix_socket:
                # The server's Unix socket: cheaper than TCP over loopback for 60 KB pages.
                dsn = f"postgresql://postgres@/postgres?host={local.dir}&port={local.port}"
            lifecycle.run(bench, args, dsn, url, emu.pid, pg_pid)


if __name__ == "__main__":
    _ = asyncpg  # the pool is asyncpg's
    main()
