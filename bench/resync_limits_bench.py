"""A default full resync under Stripe's real rate limits, against the emulator enforcing them.

    PYTHONPATH=. python bench/resync_limits_bench.py --customers 10000 --limits test
    PYTHONPATH=. python bench/resync_limits_bench.py --customers 10000 --limits live

The emulator (another process) enforces Stripe's documented limits (`--limits test`: 25
requests/s for the account, 25/s per endpoint; `live`: 100/s and 25/s per endpoint) and adds
`--latency-ms` to every answer. syncd runs the daemon's own resync with every type selected and
its rate limit set to the account's limit. Reported: when the main types are complete (listed
and swept), against the lower bound their requests allow at these limits (`lower_bound`); when
everything is (the per-parent lists too); requests; the share of 429s.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import anyio

from bench._common import control, emulator
from syncd import lifecycle, migrations
from syncd.config import DatabaseConfig, load_config
from syncd.db import Database
from syncd.lifecycle import Lifecycle
from syncd.logs import configure
from syncd.pgserver import throwaway_postgres
from syncd.resync import Resync
from syncd.stripe_api import StripeAPI
from syncd.writer import Writer

LIMITS = {"test": (25.0, 25.0), "live": (100.0, 25.0)}  # (account, per endpoint)


def seed_emulator(url: str, args: argparse.Namespace) -> None:
    """Customers, the latency, and Stripe's limits from here on."""
    counts = control(url, "/_emulator/seed", {"customers": args.customers})
    print(f"emulator seeded: {counts}", flush=True)
    if args.latency_ms:
        control(url, "/_emulator/faults", {"latency_ms": args.latency_ms})
    control(url, "/_emulator/limits", {"stripe_limits": args.limits})


async def watch(
    db: Database,
    url: str,
    main: set[str],
    marks: dict[str, float],
    at_main: dict[str, object],
) -> None:
    """Record when each table reaches each status, and when every main type is swept
    (complete), with the emulator's request counters at that moment; return then."""
    started = time.monotonic()
    while True:
        await anyio.sleep(0.25)
        rows = await db.fetch("resync_tables_of", 1)
        status = {r["table_name"]: r["status"] for r in rows}
        for table, st in status.items():
            marks.setdefault(f"{table} {st}", time.monotonic() - started)
        if status and all(status.get(t) == "swept" for t in main):
            marks["main"] = time.monotonic() - started
            at_main.update(await anyio.to_thread.run_sync(counters, url))
            return


def counters(url: str) -> dict[str, object]:
    limits = control(url, "/_emulator/limits")
    out = limits.get("counters")
    assert isinstance(out, dict)
    return out


def lower_bound(at_main: dict[str, object], account: float, endpoint: float) -> float:
    """The fastest the main types' requests can be served: all of them at the account's rate,
    and no endpoint's faster than its own. They are the list pages and the child-list pages
    of parents whose inline list is truncated (a subscription of more than 10 items, an invoice
    of more than 10 lines), which Stripe only lists per parent."""
    by_endpoint = at_main["endpoints"]
    assert isinstance(by_endpoint, dict)
    served = [int(e["served"]) for e in by_endpoint.values()]
    return max(sum(served) / account, max(served, default=0) / endpoint)


async def bench(args: argparse.Namespace, dsn: str, url: str) -> None:
    account, endpoint = LIMITS[args.limits]
    cfg = load_config(None, {})
    cfg = dataclasses.replace(
        cfg,
        database=DatabaseConfig(url=dsn, pool_min_size=2, pool_max_size=8),
        stripe=dataclasses.replace(
            cfg.stripe, api_key="sk_test_bench0000000000", api_base=url, rate_limit=account
        ),
    )
    marks: dict[str, float] = {}
    at_main: dict[str, object] = {}
    async with Database.connect(cfg.database) as db, StripeAPI(cfg) as api:
        await migrations.migrate(db)
        resync = Resync(cfg, db, api, Writer(db), Lifecycle(1))
        main = {r.table for r in resync._resources(None)}
        started = time.monotonic()
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await resync.run(reason="bench")
                if not args.main_only:
                    tg.cancel_scope.cancel()

            tg.start_soon(run)
            await watch(db, url, main, marks, at_main)
            if args.main_only:
                tg.cancel_scope.cancel()
        took = time.monotonic() - started
        progress = {r["table_name"]: r for r in await db.fetch("resync_progress", 1)}
    for mark, at in sorted(marks.items(), key=lambda m: m[1]):
        if args.verbose:
            print(f"  {at:7.2f}s  {mark}", flush=True)
    pages = sum(int(r["pages"]) for t, r in progress.items() if t in main)
    main_requests = int(str(at_main["served"]))
    main_limited = int(str(at_main["limited"]))
    bound = lower_bound(at_main, account, endpoint)
    print(
        f"limits {args.limits} ({account:g}/s, {endpoint:g}/s per endpoint),"
        f" latency {args.latency_ms:g} ms, {args.customers:,} customers:\n"
        f"  main types complete in {marks['main']:.1f}s ({main_requests} requests: {pages}"
        f" list pages, {main_requests - pages} child-list pages;"
        f" lower bound {bound:.1f}s, ratio {marks['main'] / bound:.2f};"
        f" list pages alone {pages / account:.1f}s); {main_limited} answered 429"
        f" ({main_limited / max(1, main_requests + main_limited):.2%})",
        flush=True,
    )
    if args.main_only:
        return
    final = counters(url)
    requests, limited = int(str(final["requests"])), int(str(final["limited"]))
    print(
        f"  everything complete in {took:.1f}s;"
        f" {sum(int(r['objects']) for r in progress.values()):,} objects\n"
        f"  {requests:,} requests, {limited:,} answered 429 ({limited / max(1, requests):.2%})",
        flush=True,
    )
    for table, r in sorted(progress.items()):
        if table not in main:
            print(f"  per-parent {table}: {r['objects']:,} parents, {r['children']:,} objects")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--customers", type=int, default=10_000)
    p.add_argument("--limits", choices=sorted(LIMITS), default="test")
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--log", default="warning")
    p.add_argument("--main-only", action="store_true", help="stop once the main types are complete")
    p.add_argument("--verbose", action="store_true", help="print when each table changed status")
    args = p.parse_args()
    configure(args.log, "console")
    with emulator() as (_emu, url):
        seed_emulator(url, args)
        with throwaway_postgres(prefer_local=True) as (dsn, _local):
            lifecycle.run(bench, args, dsn, url)


if __name__ == "__main__":
    main()
