"""Usage flush under Stripe's meter-event limits, against the emulator enforcing them.

    PYTHONPATH=. python bench/usage_limits_bench.py --limits test
    PYTHONPATH=. python bench/usage_limits_bench.py --limits live
    PYTHONPATH=. python bench/usage_limits_bench.py --limits live --hot 5 --hot-spread 10800

The emulator (another process) enforces Stripe's documented limits (`syncd/emulator/limits.py`):
`test`: meter events count toward the account's 25 requests/s and the endpoint's 25/s; `live`:
meter events have their own 1000/s; both: one meter event in flight per (meter, customer), a
second one is answered 429. Every answer is delayed by `--latency-ms` (a network round trip;
the request holds its (meter, customer) slot that long). syncd's budget is `--share` of Stripe's
limits (1.0: all of them; the daemon's default is 0.5).

Rows: `--rows` usage rows for `--customers` customers and 2 meters, inserted with COPY into
`billing.usage_records`, timestamps over the `--spread` seconds before this minute (120: two
one-minute buckets per (meter, customer), 4,000 events for the defaults); with `--hot N`, N
customers hold `--hot-share` of the rows, over the `--hot-spread` seconds before this minute
(one request per (meter, customer, minute): long chains that must go one after another). Then
one `UsageFlusher.flush()`, the daemon's flush, is timed end to end. Figures: docs/usage.md,
"Under Stripe's limits".

Reported: wall time, rows/s, requests and 429s (the emulator's counters), the lower bound the
limits imply (requests / the allowed rate; and the longest (meter, customer) chain times the
latency, since those go one at a time) and the ratio to it, and exactness: the emulator's totals
per (meter, customer) equal the rows' sums, every row is `reported` and carried by exactly one
event, and the emulator accepted each event once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    control,
    copy_usage_rows,
    cpu_seconds,
    emulator,
    postmaster_pid,
    scratch_database,
    tree_cpu,
)
from syncd import lifecycle, migrations  # noqa: E402
from syncd.config import DatabaseConfig, UsageConfig, load_config  # noqa: E402
from syncd.db import Database  # noqa: E402
from syncd.emulator.limits import ENDPOINT_RATE, GLOBAL_RATES, LIVE_METER_EVENT_RATE  # noqa: E402
from syncd.logs import configure  # noqa: E402
from syncd.pgserver import throwaway_postgres  # noqa: E402
from syncd.stripe_api import StripeAPI  # noqa: E402
from syncd.usage import UsageFlusher  # noqa: E402

KEYS = {"test": "sk_test_usagelimitsbench", "live": "sk_live_usagelimitsbench"}
METRICS = ("api_calls", "tokens")
METER_EVENTS = "POST /v1/billing/meter_events"


def api_post(url: str, key: str, path: str, form: dict[str, str]) -> dict:
    req = urllib.request.Request(
        url + path,
        data="&".join(f"{k}={v}" for k, v in form.items()).encode(),
        headers={"Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return orjson.loads(r.read())


def seed_emulator(url: str, args: argparse.Namespace) -> dict:
    """Seed customers and one meter per metric; limits on."""
    control(
        url, "/_emulator/seed", {"customers": args.customers, "subscriptions": 0, "products": 0}
    )
    customers = [
        c["id"] for c in control(url, "/_emulator/objects/customer")["data"] if not c.get("deleted")
    ]
    meters = {}
    for metric in METRICS:
        form = {
            "display_name": metric,
            "event_name": metric,
            "default_aggregation[formula]": "sum",
        }
        meters[metric] = api_post(url, KEYS[args.limits], "/v1/billing/meters", form)["id"]
    # Set up without limits; from here on Stripe's limits hold and the counters start at 0.
    control(url, "/_emulator/limits", {"stripe_limits": args.limits})
    if args.latency_ms:
        control(url, "/_emulator/faults", {"latency_ms": args.latency_ms})
    control(url, "/_emulator/stats", method="DELETE")
    control(url, "/_emulator/limits/counters", method="DELETE")
    return {"customers": sorted(customers), "meters": meters}


def make_rows(args: argparse.Namespace, customers: list[str]) -> list[tuple]:
    rng = random.Random(args.seed)
    # Timestamps end at the start of this minute, so that the rows fill whole buckets and the
    # number of events does not depend on when the benchmark runs.
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    hot, cold = customers[: args.hot], customers[args.hot :]
    n_hot = round(args.rows * args.hot_share) if hot else 0
    rows = []
    for i in range(args.rows):
        if i < n_hot:
            cus, spread = rng.choice(hot), args.hot_spread
        else:
            cus, spread = rng.choice(cold), args.spread
        rows.append(
            (
                cus,
                rng.choice(METRICS),
                Decimal(rng.randint(1, 100)),
                now - timedelta(seconds=rng.uniform(0, spread)),
            )
        )
    return rows


async def bench(args: argparse.Namespace, admin_dsn: str, url: str, seeded: dict) -> None:
    async with scratch_database(admin_dsn, "usage_limits") as dsn:
        await run(args, dsn, url, seeded)


async def run(args: argparse.Namespace, dsn: str, url: str, seeded: dict) -> None:
    cfg = load_config(None, {})
    cfg = dataclasses.replace(
        cfg,
        database=DatabaseConfig(url=dsn, pool_min_size=2, pool_max_size=8),
        stripe=dataclasses.replace(
            cfg.stripe,
            api_key=KEYS[args.limits],
            mode=args.limits,
            api_base=url,
            rate_limit=0.0,
            rate_share=args.share,
        ),
        usage=UsageConfig(
            meters={m: m for m in METRICS},
            batch_size=args.batch_size,
            concurrency=args.concurrency,
        ),
    )
    async with Database.connect(cfg.database) as db:
        await migrations.migrate(db)
    rows = make_rows(args, seeded["customers"])
    conn = await asyncpg.connect(dsn)
    await copy_usage_rows(conn, rows)
    # Requests the rows need: one per (metric, customer, minute); chains per (metric, customer).
    buckets = {(m, c, int(ts.timestamp()) // 60) for c, m, _q, ts in rows}
    chains = Counter((m, c) for m, c, _b in buckets)
    async with Database.connect(cfg.database) as db, StripeAPI(cfg) as api:
        cpu, pg_cpu = time.process_time(), tree_cpu(args.pg_pid) if args.pg_pid else 0.0
        emu_cpu = cpu_seconds(args.emu_pid)
        started = time.monotonic()
        result = await UsageFlusher(cfg, db, api).flush()
        took = time.monotonic() - started
        cpu = time.process_time() - cpu
        emu_cpu = cpu_seconds(args.emu_pid) - emu_cpu
        pg_cpu = (tree_cpu(args.pg_pid) - pg_cpu) if args.pg_pid else 0.0
    # The emulator's view: requests, 429s, accepted meter events, recorded totals.
    limits = control(url, "/_emulator/limits")["counters"]
    stats = control(url, "/_emulator/stats")["endpoints"]
    accepted = int(stats.get(METER_EVENTS, {}).get("200", 0))
    by_meter = {mid: metric for metric, mid in seeded["meters"].items()}
    recorded = {
        (by_meter[t["meter"]], t["customer"]): Decimal(t["value"])
        for t in control(url, "/_emulator/meter_totals")["totals"]
    }
    expected: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for cus, metric, qty, _ts in rows:
        expected[(metric, cus)] += qty
    totals_exact = recorded == dict(expected)
    # The database's view: every row reported, in exactly one event, that event its event_id.
    check = await conn.fetchrow(
        """
        WITH carried AS (
            SELECT e.id AS event_id, unnest(e.row_ids) AS row_id FROM syncd.usage_events e
        )
        SELECT (SELECT count(*) FROM billing.usage_records) AS rows,
               (SELECT count(*) FROM billing.usage_records WHERE status = 'reported') AS reported,
               (SELECT count(*) FROM carried) AS carried,
               (SELECT count(DISTINCT row_id) FROM carried) AS distinct_carried,
               (SELECT count(*) FROM carried c JOIN billing.usage_records r ON r.id = c.row_id
                 WHERE r.event_id = c.event_id) AS matching,
               (SELECT count(*) FROM syncd.usage_events) AS events,
               (SELECT count(*) FROM syncd.usage_events WHERE status = 'reported') AS events_ok,
               (SELECT count(*) FROM syncd.usage_events WHERE attempts <> 1) AS events_resent
        """
    )
    await conn.close()
    n = args.rows
    once = (
        check["rows"] == check["reported"] == check["carried"] == n
        and check["distinct_carried"] == check["matching"] == n
        and check["events"] == check["events_ok"] == accepted == result.events_sent
    )
    requests, limited = int(limits["requests"]), int(limits["limited"])
    # The lower bound of the limits: every request at the allowed rate (test: meter events and
    # the meter list share the account's 25/s and the endpoint's 25/s; live: meter events alone,
    # 1000/s); and the longest (meter, customer) chain, one request at a time, each in flight
    # for at least the latency.
    if args.limits == "test":
        rate = min(GLOBAL_RATES["test"], ENDPOINT_RATE)
        counted = requests - limited  # the meter list too
    else:
        rate = LIVE_METER_EVENT_RATE
        counted = accepted
    rate_bound = counted / rate
    longest = max(chains.values())
    chain_bound = longest * args.latency_ms / 1000
    bound = max(rate_bound, chain_bound)
    # Not a limit of Stripe's but of the configuration: usage.concurrency requests in flight,
    # each for at least the latency.
    senders_bound = accepted * args.latency_ms / 1000 / args.concurrency
    senders_rate = args.concurrency * 1000 / args.latency_ms if args.latency_ms else float("inf")
    print(
        f"limits {args.limits} (meter events {rate:g}/s; syncd budget {args.share:g} of it),"
        f" latency {args.latency_ms:g} ms, concurrency {args.concurrency}:\n"
        f"  {n:,} rows, {len(seeded['customers']):,} customers x {len(METRICS)} meters"
        + (
            f" ({args.hot} hot customers hold {args.hot_share:.0%} over {args.hot_spread:g}s,"
            f" the rest over {args.spread:g}s)"
            if args.hot
            else f" (timestamps over {args.spread:g}s)"
        )
        + f": {len(buckets):,} events, longest (meter, customer) chain {longest}\n"
        f"  flushed in {took:.1f}s: {n / took:,.0f} rows/s, {accepted / took:,.0f} events/s\n"
        f"  {requests:,} requests, {limited:,} answered 429 ({limited / max(1, requests):.2%};"
        f" {limits.get('by_reason') or {}})\n"
        f"  lower bound {bound:.1f}s (rate: {counted:,} requests / {rate:g}/s = {rate_bound:.1f}s;"
        f" longest chain x latency = {chain_bound:.1f}s); ratio {took / bound:.2f}\n"
        f"  (usage.concurrency {args.concurrency} x {args.latency_ms:g} ms latency allow"
        f" {senders_rate:,.0f} events/s: {senders_bound:.1f}s)\n"
        f"  exact: totals {totals_exact}; every row reported once {once}"
        f" ({check['reported']:,} reported, {check['carried']:,} carried,"
        f" {check['distinct_carried']:,} distinct; {check['events']:,} events,"
        f" {accepted:,} accepted by the emulator, {check['events_resent']} resent)\n"
        f"  flush: {result.describe()}\n"
        f"  CPU: syncd {cpu:.1f}s, emulator {emu_cpu:.1f}s, PostgreSQL {pg_cpu:.1f}s;"
        f" load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    if not (totals_exact and once):
        raise SystemExit("NOT EXACT")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--limits", choices=("test", "live"), default="test")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--customers", type=int, default=1000)
    p.add_argument("--spread", type=float, default=120.0, help="seconds the timestamps cover")
    p.add_argument("--hot", type=int, default=0, help="customers holding --hot-share of the rows")
    p.add_argument("--hot-share", type=float, default=0.9)
    p.add_argument("--hot-spread", type=float, default=3600.0, help="seconds the hot rows cover")
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--share", type=float, default=1.0, help="syncd's share of Stripe's limits")
    p.add_argument("--concurrency", type=int, default=32, help="usage.concurrency")
    p.add_argument("--batch-size", type=int, default=100_000, help="usage.batch_size")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--log", default="warning")
    args = p.parse_args()
    configure(args.log, "console")
    with emulator(api_key=KEYS[args.limits]) as (emu, url):
        seeded = seed_emulator(url, args)
        args.emu_pid = emu.pid
        with throwaway_postgres(prefer_local=True) as (dsn, server):
            args.pg_pid = postmaster_pid(server)
            lifecycle.run(bench, args, dsn, url, seeded)


if __name__ == "__main__":
    main()
