"""Event stream benchmarks: latency (event visible -> row committed) and throughput per apply mode.

    PYTHONPATH=. python bench/events_bench.py latency --seconds 60 --rate 4
    PYTHONPATH=. python bench/events_bench.py snapshot --events 50000
    PYTHONPATH=. python bench/events_bench.py refetch --events 3000 --rate-limit 100

A throwaway PostgreSQL (syncd.pgserver, or SYNCD_BENCH_DATABASE_URL) and `python -m syncd
emulator` run as separate processes; the stream runs in this process through the daemon's own
classes (EventStream, Applier, Writer).

* latency: the stream's loop polls every `--poll-interval` (1 s) while changes are made at
  `--rate` per second at random moments; a change's latency is from its API answer (the event
  is visible from then on: no late visibility) to the NOTIFY of its row, which PostgreSQL
  delivers at commit. Prints p50/p95/max.
* snapshot/refetch: a backlog of customer.created events (one customer each, spread over a day)
  is drained by head polls from a cursor placed before them; prints events/s, and for refetch
  the request rate against the rate budget.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import statistics
import time
from typing import Any

import orjson

from bench._common import control, database, emulator
from syncd import lifecycle, migrations
from syncd.config import DatabaseConfig, EventsConfig, StripeConfig, load_config
from syncd.db import Database
from syncd.events import EventStream
from syncd.lifecycle import Lifecycle
from syncd.logs import configure
from syncd.stripe_api import StripeAPI
from syncd.writer import Writer


def config(dsn: str, url: str, args: argparse.Namespace, mode: str) -> Any:
    cfg = load_config(None, {})
    return dataclasses.replace(
        cfg,
        database=DatabaseConfig(url=dsn, pool_min_size=2, pool_max_size=8),
        stripe=StripeConfig(
            api_key="sk_test_bench0000000000", api_base=url, rate_limit=args.rate_limit
        ),
        events=dataclasses.replace(
            EventsConfig(),
            apply_mode=mode,
            poll_interval=args.poll_interval,
            fetch_concurrency=args.fetch_concurrency,
        ),
    )


async def latency(args: argparse.Namespace, dsn: str, url: str) -> None:
    cfg = config(dsn, url, args, args.mode)
    committed: dict[str, float] = {}

    def on_notify(payload: str) -> None:
        now = time.monotonic()
        for change in orjson.loads(payload)["changes"]:
            committed.setdefault(change["id"], now)

    async with (
        Database.connect(cfg.database) as db,
        StripeAPI(cfg) as api,
        StripeAPI(cfg) as user,
    ):
        await migrations.migrate(db)
        listener = await db.dedicated_connection()
        await listener.listen(cfg.events.notify_channel, on_notify)
        stream = EventStream(cfg, db, api, Writer(db, notify_channel=cfg.events.notify_channel))
        await stream.take_cursor()
        lifecycle = Lifecycle(1.0)
        loop_task = asyncio.create_task(stream.run(lifecycle))
        made: dict[str, float] = {}
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            # New customers at random moments: each change has its own row (and notification).
            await asyncio.sleep(random.expovariate(args.rate))
            cid = (await user.post("/v1/customers", {"email": "x@example.com"}))["id"]
            made[cid] = time.monotonic()
        await asyncio.sleep(args.poll_interval * 3)
        lifecycle.request_stop("bench over")
        await loop_task
        await listener.close()
    lat = sorted(committed[c] - t for c, t in made.items() if c in committed)
    missing = len(made) - len(lat)
    p95 = lat[int(len(lat) * 0.95) - 1] if lat else float("nan")
    print(
        f"latency ({args.mode}, poll_interval {args.poll_interval:g}s): {len(lat)} changes,"
        f" p50 {statistics.median(lat):.3f}s, p95 {p95:.3f}s, max {lat[-1]:.3f}s"
        f" (lost sample: {missing})"
    )


async def throughput(args: argparse.Namespace, dsn: str, url: str) -> None:
    started = time.monotonic()
    control(
        url,
        "/_emulator/seed",
        {"customers": args.events, "products": 0, "subscriptions": 0, "events": True, "days": 1},
    )
    print(f"emulator: {args.events:,} customer.created events in {time.monotonic() - started:.1f}s")
    cfg = config(dsn, url, args, args.mode)
    async with Database.connect(cfg.database) as db, StripeAPI(cfg) as api:
        await migrations.migrate(db)
        stream = EventStream(cfg, db, api, Writer(db, notify_channel=cfg.events.notify_channel))
        await api.request("GET", "/v1/events", {"limit": 1})  # sync the Stripe clock
        await db.execute("events_cursor_restart", "", api.clock.now() - 3 * 86400, "bench")
        t0 = time.monotonic()
        cpu0 = time.process_time()
        applied = 0
        while True:
            result = await stream.poll_head()
            applied += result.fresh
            if result.fresh == 0:
                break
        took = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        stats = await asyncio.to_thread(control, url, "/_emulator/stats", None)
        refetches = sum(
            n
            for endpoint, by_status in stats["endpoints"].items()
            if endpoint.startswith("GET /v1/customers/")
            for n in by_status.values()
        )
    print(
        f"{args.mode}: {applied:,} events applied in {took:.2f}s = {applied / took:,.0f} events/s"
        f" ({refetches:,} refetches); this process used {cpu:.2f}s of CPU"
    )
    if args.mode == "refetch":
        budget = cfg.rate_limit
        used = (refetches + stats["endpoints"].get("GET /v1/events", {}).get("200", 0)) / took
        print(f"requests {used:,.1f}/s of a {budget:g}/s budget = {used / budget:.0%} used")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("bench", choices=("latency", "snapshot", "refetch"))
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--rate", type=float, default=4, help="changes per second (latency)")
    p.add_argument("--mode", default="refetch", help="apply mode for the latency bench")
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--poll-interval", type=float, default=1.0)
    p.add_argument("--rate-limit", type=float, default=1000.0)
    p.add_argument("--fetch-concurrency", type=int, default=8)
    args = p.parse_args()
    configure("warning", "console")
    with database() as (dsn, _pg_pid), emulator() as (_emulator, url):
        if args.bench == "latency":
            lifecycle.run(latency, args, dsn, url)
        else:
            args.mode = args.bench
            lifecycle.run(throughput, args, dsn, url)


if __name__ == "__main__":
    main()
