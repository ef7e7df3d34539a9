"""Renewal storm: N subscriptions renew at once under Stripe's live limits; how long until the
mirror equals the emulator, and what it cost in requests.

    PYTHONPATH=. python bench/renewal_storm_bench.py --subscriptions 5000 --mode refetch
    PYTHONPATH=. python bench/renewal_storm_bench.py --subscriptions 5000 --mode snapshot

The issue's target: 5,000 subscriptions renew at once, live limits (100 requests/s for the
account, 25/s per endpoint): the mirror equals the emulator within 2 minutes, using at most half
of the budget (syncd's default budget is half the account's limit, 50/s in live mode).

Set-up (not measured): the emulator (another process, `--api-key sk_live_...`) is seeded with N
customers, each with a default payment method and one active monthly subscription; Stripe's live
limits are switched on and every answer is delayed by `--latency-ms`. A throwaway PostgreSQL and
a real `syncd run` (built-in defaults, `stripe.mode = live`, so its budget is its default 50/s;
`events.apply_mode` from `--mode`; the per-parent walks off unless `--per-parent-lists`) start;
the bench waits until the daemon's first full resync is done and the mirror equals the emulator.

Measured: the emulator's limit counters are zeroed, `POST /_emulator/renew` renews every
subscription (per renewal: a cycle invoice with its line, finalized and paid: a payment intent
and a charge; 8 events), and from its answer on the mirror is compared every second with the
emulator's objects (`raw` of every row of customers, subscriptions, subscription_items,
invoices, invoice_line_items, payment_intents, charges against `/_emulator/objects/{type}`;
nothing changes in the emulator after the renewal). Reported: seconds until they are equal, the
requests syncd made until then (from the emulator's counters) by endpoint and per renewal,
requests/s against the account's 100/s and syncd's 50/s, the busiest second, 429s, and when
the events ledger held every event.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import control, cpu_seconds, emulator  # noqa: E402
from syncd.pgserver import free_port, throwaway_postgres  # noqa: E402
from syncd.registry import BY_OBJECT  # noqa: E402

KEY = "sk_live_renewalstormbench0000"
ACCOUNT_RATE = 100.0  # Stripe's live global limit
BUDGET = 50.0  # syncd's default: stripe.rate_share (0.5) of it
# The objects a renewal creates or changes (the customer: next_invoice_sequence).
OBJECTS = (
    "customer",
    "subscription",
    "subscription_item",
    "invoice",
    "line_item",
    "payment_intent",
    "charge",
)


def seed_emulator(url: str, args: argparse.Namespace) -> None:
    """N customers with a subscription each; live limits and the latency from here on."""
    started = time.monotonic()
    n = args.subscriptions
    counts = control(
        url,
        "/_emulator/seed",
        {
            "customers": n,
            "subscriptions": n,
            "canceled_fraction": 0,
            # every big_every-th subscription has 12 items; default: none
            "big_every": args.big_every or n + 1,
        },
    )
    print(f"emulator seeded in {time.monotonic() - started:.1f}s: {counts}", flush=True)
    control(url, "/_emulator/limits", {"stripe_limits": "live"})
    if args.latency_ms:
        control(url, "/_emulator/faults", {"latency_ms": args.latency_ms})
    control(url, "/_emulator/limits/counters", method="DELETE")  # seeding is not counted


@contextmanager
def daemon(
    args: argparse.Namespace, dsn: str, url: str, workdir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`syncd run` with built-in defaults (no config file: its cwd is an empty directory)."""
    log = (workdir / "syncd.log").open("wb")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "SYNCD_DATABASE_URL": dsn,
        "SYNCD_STRIPE_API_KEY": KEY,
        "SYNCD_STRIPE_MODE": "live",
        "SYNCD_STRIPE_API_BASE": url,
        "SYNCD_EVENTS_APPLY_MODE": args.mode,
        "SYNCD_HTTP_BIND": f"127.0.0.1:{free_port()}",
        "SYNCD_LOG_FORMAT": "json",
    }
    if not args.per_parent_lists:
        # The payment-method walk (one request per customer, after the main types) would only
        # make the set-up longer: 5,000 requests at the endpoint's 12.5/s.
        env["SYNCD_SYNC_PER_PARENT_LISTS"] = "false"
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "run"], cwd=workdir, env=env, stdout=log, stderr=log
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


class Mirror:
    """The mirror against the emulator's objects: `pending` holds the ids not yet seen equal;
    a row's raw is read again only when its `synced_at` moved (its content changed)."""

    def __init__(self, conn: asyncpg.Connection, expected: dict[str, dict[str, Any]]):
        self.conn = conn
        self.expected = expected  # object type -> id -> object as the emulator serves it
        self.pending = {t: set(objs) for t, objs in expected.items()}
        self.seen: dict[str, dict[str, datetime]] = {t: {} for t in expected}
        self.reads = 0

    def _equal(self, obj: dict[str, Any], raw: str | None, deleted: bool) -> bool:
        if obj.get("deleted"):
            return deleted
        return not deleted and raw is not None and orjson.loads(raw) == obj

    async def poll(self) -> int:
        """Compare the pending rows whose content changed since last read; how many remain."""
        for t, ids in self.pending.items():
            if not ids:
                continue
            table = BY_OBJECT[t].table
            keys = sorted(ids)
            seen = [self.seen[t].get(i) for i in keys]
            rows = await self.conn.fetch(
                f"SELECT r.id, r.synced_at, r.deleted_at IS NOT NULL AS deleted, r.raw::text AS raw"
                f" FROM unnest($1::text[], $2::timestamptz[]) AS k(id, seen)"
                f' JOIN stripe."{table}" r ON r.id = k.id'
                f" WHERE k.seen IS NULL OR r.synced_at IS DISTINCT FROM k.seen",
                keys,
                seen,
            )
            self.reads += len(rows)
            for r in rows:
                self.seen[t][r["id"]] = r["synced_at"]
                if self._equal(self.expected[t][r["id"]], r["raw"], r["deleted"]):
                    ids.discard(r["id"])
        return sum(len(ids) for ids in self.pending.values())

    async def differences(self) -> list[str]:
        """Every row against the emulator, and no live row the emulator does not have."""
        problems: list[str] = []
        for t, objs in self.expected.items():
            table = BY_OBJECT[t].table
            rows = {
                r["id"]: r
                for r in await self.conn.fetch(
                    f"SELECT id, deleted_at IS NOT NULL AS deleted, raw::text AS raw"
                    f' FROM stripe."{table}"'
                )
            }
            for oid, obj in objs.items():
                r = rows.get(oid)
                if r is None:
                    problems.append(f"{table} {oid}: missing")
                elif not self._equal(obj, r["raw"], r["deleted"]):
                    problems.append(f"{table} {oid}: differs")
                    self.pending[t].add(oid)
                    self.seen[t].pop(oid, None)
            extra = [i for i, r in rows.items() if i not in objs and not r["deleted"]]
            problems += [f"{table} {i}: unknown to the emulator" for i in extra[:5]]
        return problems


def objects(url: str) -> dict[str, dict[str, Any]]:
    return {
        t: {o["id"]: o for o in control(url, f"/_emulator/objects/{t}")["data"]} for t in OBJECTS
    }


def alive(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        raise SystemExit(f"syncd exited with {proc.returncode}: see its log")


async def wait_ready(
    conn: asyncpg.Connection, url: str, within: float, proc: subprocess.Popen[bytes]
) -> tuple[float, Mirror]:
    """Until the first full resync is done and the mirror equals the emulator."""
    started = time.monotonic()
    deadline = started + within
    status = None
    while time.monotonic() < deadline:
        alive(proc)
        try:
            status = await conn.fetchval(
                "SELECT status FROM syncd.resync_runs ORDER BY run_id DESC LIMIT 1"
            )
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            status = None
        if status == "failed":
            raise SystemExit("the first full resync failed")
        if status == "done":
            break
        await asyncio.sleep(1)
    else:
        raise SystemExit(f"no full resync done within {within:.0f}s (status {status})")
    done = time.monotonic() - started
    mirror = Mirror(conn, objects(url))
    while time.monotonic() < deadline:
        alive(proc)
        if await mirror.poll() == 0 and not await mirror.differences():
            return done, mirror
        await asyncio.sleep(1)
    left = await mirror.differences()
    raise SystemExit(f"the mirror does not equal the emulator before the storm: {left[:5]}")


async def storm(
    args: argparse.Namespace, dsn: str, url: str, proc: subprocess.Popen[bytes]
) -> None:
    pid = proc.pid
    conn = await asyncpg.connect(dsn)
    try:
        started = time.monotonic()
        for _ in range(300):
            try:
                await conn.fetchval("SELECT 1 FROM syncd.resync_runs LIMIT 1")
                break
            except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
                await asyncio.sleep(0.5)
        resync_s, _baseline = await wait_ready(conn, url, args.ready_timeout, proc)
        setup = control(url, "/_emulator/limits")["counters"]
        print(
            f"first full resync done {resync_s:.1f}s after start; mirror equal to the emulator"
            f" {time.monotonic() - started:.1f}s after start ({setup['requests']:,} requests,"
            f" {setup['limited']:,} answered 429)",
            flush=True,
        )
        await asyncio.sleep(args.settle)  # the stream's polls in a quiet account
        ledger0 = await conn.fetchval("SELECT count(*) FROM syncd.events_ledger")

        control(url, "/_emulator/limits/counters", method="DELETE")
        cpu0 = cpu_seconds(pid)
        t_call = time.monotonic()
        summary = control(url, "/_emulator/renew", {})
        t0 = time.monotonic()
        print(f"renew: {summary} in {t0 - t_call:.2f}s", flush=True)
        mirror = Mirror(conn, objects(url))
        events = int(summary["events"])

        samples: list[tuple[float, int]] = [(t_call, 0)]
        equal_at: float | None = None
        ledger_at: float | None = None
        counters: dict[str, Any] = {}
        remaining = -1
        tables_at: dict[str, float] = {}  # when each table's rows were all equal
        while time.monotonic() - t0 < args.timeout:
            tick = time.monotonic()
            remaining = await mirror.poll()
            for t, ids in mirror.pending.items():
                if not ids and BY_OBJECT[t].table not in tables_at:
                    tables_at[BY_OBJECT[t].table] = time.monotonic() - t0
            if ledger_at is None:
                ledgered = await conn.fetchval("SELECT count(*) FROM syncd.events_ledger")
                if ledgered - ledger0 >= events:
                    ledger_at = time.monotonic() - t0
            counters = control(url, "/_emulator/limits")["counters"]
            samples.append((time.monotonic(), int(counters["requests"])))
            if remaining == 0:
                left = await mirror.differences()
                if not left:
                    equal_at = time.monotonic() - t0
                    counters = control(url, "/_emulator/limits")["counters"]
                    break
                remaining = len(left)
            alive(proc)
            if args.progress:
                by_table = {BY_OBJECT[t].table: len(i) for t, i in mirror.pending.items() if i}
                print(
                    f"  {tick - t0:6.1f}s: {remaining:,} rows to go {by_table},"
                    f" {counters['requests']:,} requests",
                    flush=True,
                )
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        cpu = cpu_seconds(pid) - cpu0
        outcomes = {
            r["outcome"]: r["n"]
            for r in await conn.fetch(
                "SELECT outcome, count(*) AS n FROM syncd.events_ledger GROUP BY outcome"
            )
        }
        left_by_table = {BY_OBJECT[t].table: len(ids) for t, ids in mirror.pending.items() if ids}
    finally:
        await conn.close()
    report(args, summary, equal_at, ledger_at, counters, samples, t0, cpu, outcomes, remaining)
    label = f"renewal storm ({args.mode}, {summary['renewed']:,} renewals, live limits)"
    print(
        f"{label}: each table equal after: "
        + ", ".join(f"{t} {s:.1f}s" for t, s in sorted(tables_at.items(), key=lambda x: x[1]))
    )
    if equal_at is None:
        print(f"NOT EQUAL after {args.timeout:.0f}s; rows not equal by table: {left_by_table}")


def report(
    args: argparse.Namespace,
    summary: dict[str, Any],
    equal_at: float | None,
    ledger_at: float | None,
    counters: dict[str, Any],
    samples: list[tuple[float, int]],
    t0: float,
    cpu: float,
    outcomes: dict[str, int],
    remaining: int,
) -> None:
    n = int(summary["renewed"]) or 1
    took = equal_at if equal_at is not None else samples[-1][0] - t0
    requests = int(counters.get("requests", 0))
    rate = requests / took if took else 0.0
    peak = max(
        ((b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples) if b[0] > a[0]),
        default=0.0,
    )
    target = "met" if equal_at is not None and equal_at <= 120 and rate <= BUDGET else "missed"
    label = f"renewal storm ({args.mode}, {summary['renewed']:,} renewals, live limits)"
    print(f"{label}: time to equal: " + (f"{equal_at:.1f}s" if equal_at else f"> {took:.0f}s"))
    print(f"{label}: events emitted: {summary['events']:,}; ledger by outcome: {outcomes}")
    print(
        f"{label}: every event in the ledger after: "
        + (f"{ledger_at:.1f}s" if ledger_at is not None else "not yet")
    )
    print(f"{label}: requests until equal: {requests:,}")
    print(
        f"{label}: requests/s: {rate:.1f} = {rate / ACCOUNT_RATE:.0%} of the account's"
        f" {ACCOUNT_RATE:g}/s, {rate / BUDGET:.0%} of syncd's {BUDGET:g}/s budget;"
        f" busiest second {peak:.1f}/s"
    )
    print(
        f"{label}: 429s: {counters.get('limited', 0):,}"
        f" ({counters.get('limited_fraction', 0.0):.2%}) {counters.get('by_reason', {})}"
    )
    print(f"{label}: syncd CPU during the storm: {cpu:.1f}s")
    print(f"{label}: target (equal within 120s, at most {BUDGET:g}/s): {target}")
    if equal_at is None:
        print(f"{label}: rows not equal at the end: {remaining:,}")
    endpoints = sorted(
        counters.get("endpoints", {}).items(), key=lambda kv: (-kv[1]["requests"], kv[0])
    )
    print(f"{label}: requests by endpoint (per renewal; 429s):")
    for endpoint, c in endpoints:
        print(
            f"  {endpoint:45s} {c['requests']:7,}  {c['requests'] / n:6.2f}/renewal"
            f"  {c['limited']:,} x 429"
        )
    print(f"  {'total':45s} {requests:7,}  {requests / n:6.2f}/renewal")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subscriptions", type=int, default=5000)
    p.add_argument("--mode", choices=("refetch", "snapshot"), default="snapshot")
    p.add_argument(
        "--per-parent-lists", action="store_true", help="let the set-up's resync walk them too"
    )
    p.add_argument("--latency-ms", type=float, default=50.0, help="added to every answer")
    p.add_argument("--big-every", type=int, default=0, help="every Nth subscription: 12 items")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds after the renewal")
    p.add_argument("--ready-timeout", type=float, default=1800.0)
    p.add_argument("--settle", type=float, default=3.0, help="seconds of quiet before renewing")
    p.add_argument("--progress", action="store_true", help="a line per second")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="renewal-storm-"))  # kept: syncd.log
    print(f"syncd's log: {workdir / 'syncd.log'}", flush=True)
    with emulator(api_key=KEY) as (_emulator, url):
        seed_emulator(url, args)
        with (
            throwaway_postgres(prefer_local=True) as (dsn, _local),
            daemon(args, dsn, url, workdir) as proc,
        ):
            asyncio.run(storm(args, dsn, url, proc))


if __name__ == "__main__":
    main()
