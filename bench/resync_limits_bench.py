"""A default full resync under Stripe's real rate limits, against the emulator enforcing them.

    PYTHONPATH=. python bench/resync_limits_bench.py --customers 10000 --limits test
    PYTHONPATH=. python bench/resync_limits_bench.py --customers 10000 --limits live

The emulator (another process) enforces Stripe's documented limits (`--limits test`: 25
requests/s for the account, 25/s per endpoint; `live`: 100/s and 25/s per endpoint) and adds
`--latency-ms` to every answer. syncd runs the daemon's own resync with every type selected and
its rate limit set to the account's limit. Reported: when the main types are complete (listed
and swept), against the lower bound their pages allow at these limits; when everything is
(the per-parent lists too); requests; the share of 429s.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import anyio
import orjson

from syncd import lifecycle, migrations
from syncd.config import DatabaseConfig, load_config
from syncd.db import Database
from syncd.lifecycle import Lifecycle
from syncd.logs import configure
from syncd.pgserver import free_port, throwaway_postgres
from syncd.resync import Resync
from syncd.stripe_api import StripeAPI
from syncd.writer import Writer

ROOT = Path(__file__).resolve().parent.parent
LIMITS = {"test": (25.0, 25.0), "live": (100.0, 25.0)}  # (account, per endpoint)


def control(url: str, path: str, body: object | None = None) -> dict[str, object]:
    req = urllib.request.Request(
        url + path,
        data=None if body is None else orjson.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=900) as r:
        answer = r.read()
    return orjson.loads(answer) if answer else {}


def start_emulator(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "emulator", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/_emulator/stats", timeout=1).read()
            break
        except OSError:
            time.sleep(0.05)
    counts = control(url, "/_emulator/seed", {"customers": args.customers})
    print(f"emulator seeded: {counts}", flush=True)
    if args.latency_ms:
        control(url, "/_emulator/faults", {"latency_ms": args.latency_ms})
    control(url, "/_emulator/limits", {"stripe_limits": args.limits})
    return proc, url


async def watch(db: Database, run_id: int, main: set[str], marks: dict[str, float]) -> None:
    """Record when every main type is swept (complete) and when every table is."""
    started = time.monotonic()
    while True:
        await anyio.sleep(0.25)
        rows = await db.fetch("resync_tables_of", run_id)
        status = {r["table_name"]: r["status"] for r in rows}
        if "main" not in marks and status and all(status.get(t) == "swept" for t in main):
            marks["main"] = time.monotonic() - started


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
    async with Database.connect(cfg.database) as db, StripeAPI(cfg) as api:
        await migrations.migrate(db)
        resync = Resync(cfg, db, api, Writer(db), Lifecycle(1))
        main = {r.table for r in resync._resources(None)}
        marks: dict[str, float] = {}
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, db, 1, main, marks)
            result = await resync.run(reason="bench")
            tg.cancel_scope.cancel()
        took = time.monotonic() - started
    limits = control(url, "/_emulator/limits")
    counters = limits.get("counters") if isinstance(limits.get("counters"), dict) else limits
    assert isinstance(counters, dict)
    requests = int(counters.get("requests") or 0)
    limited = int(counters.get("limited") or counters.get("rate_limited") or 0)
    pages = {t: r.pages for t, r in result.tables.items() if t in main}
    # The fastest the main lists can go: every page at the account's rate, and no endpoint
    # faster than its own (each main type is one list endpoint).
    bound = max(sum(pages.values()) / account, max(pages.values(), default=0) / endpoint)
    main_took = marks.get("main", took)
    print(
        f"limits {args.limits} ({account:g}/s, {endpoint:g}/s per endpoint),"
        f" latency {args.latency_ms:g} ms, {args.customers:,} customers:\n"
        f"  main types complete in {main_took:.1f}s ({sum(pages.values())} pages;"
        f" lower bound {bound:.1f}s, ratio {main_took / bound:.2f})\n"
        f"  everything complete in {took:.1f}s; {result.objects:,} objects"
        f" (+{sum(t.children for t in result.tables.values()):,} children)\n"
        f"  {requests:,} requests, {limited:,} answered 429"
        f" ({limited / max(1, requests):.2%})",
        flush=True,
    )
    walks = {t: r for t, r in result.tables.items() if t not in main}
    for table, r in sorted(walks.items()):
        print(f"  per-parent {table}: {r.objects:,} parents, {r.children:,} objects", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--customers", type=int, default=10_000)
    p.add_argument("--limits", choices=sorted(LIMITS), default="test")
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--log", default="warning")
    args = p.parse_args()
    configure(args.log, "console")
    emu, url = start_emulator(args)
    try:
        with throwaway_postgres(prefer_local=True) as (dsn, _local):
            lifecycle.run(bench, args, dsn, url)
    finally:
        emu.terminate()
        emu.wait(10)


if __name__ == "__main__":
    main()
