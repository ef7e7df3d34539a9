"""`syncd demo`: the whole system on a fresh machine, no Stripe key and no database needed.

It starts a throwaway PostgreSQL (`pgserver`: Docker if present, else the local binaries), the
Stripe emulator with a seeded account (in this process), and the real daemon (`syncd run` as a
subprocess pointed at both). Then it changes the account through the real stripe SDK (sign-ups,
upgrades, cancellations, refunds, usage rows) while printing what reached PostgreSQL and how
fast, sends SIGHUP (a full resync) part way, stops the daemon with SIGTERM and prints a summary
with queries to try. Everything is removed at the end unless `--keep`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import STDOUT
from typing import Any

import anyio
import stripe
from anyio.abc import Process

from syncd import status
from syncd.config import Config, DatabaseConfig
from syncd.db import Database, Dedicated
from syncd.emulator import Emulator
from syncd.errors import SyncdError
from syncd.pgserver import create_database, free_port, throwaway_postgres

METRIC = "api_calls"
# The daemon's configuration besides the environment: usage reported every few seconds.
DAEMON_CONFIG = f"""\
[usage]
interval = 5

[usage.meters]
{METRIC} = "{METRIC}"
"""
# Tables shown in the live view (the rest appear in the summary).
LIVE_TABLES = ("customers", "subscriptions", "invoices", "charges", "refunds")
QUERIES = """\
SELECT id, email, name, created FROM stripe.customers ORDER BY created DESC LIMIT 5;
SELECT status, count(*) FROM stripe.subscriptions GROUP BY status ORDER BY 2 DESC;
SELECT s.id, c.email, p.unit_amount, s.status
  FROM stripe.subscriptions s JOIN stripe.customers c ON c.id = s.customer_id
  JOIN stripe.prices p ON p.id = s.price_id ORDER BY s.created DESC LIMIT 5;
SELECT id, amount, amount_refunded, refunded FROM stripe.charges WHERE refunded LIMIT 5;
SELECT status, count(*), sum(amount_paid) FROM stripe.invoices GROUP BY status;"""
# Shown when those features' tables exist.
USAGE_QUERY = "SELECT status, count(*), sum(quantity) FROM billing.usage_records GROUP BY status;"
VIEWS_QUERY = "SELECT * FROM billing.subscriptions LIMIT 5;  -- the application views"
LEDGER_QUERY = (
    "SELECT type, outcome, count(*) FROM syncd.events_ledger GROUP BY 1, 2 ORDER BY 3 DESC;"
)


@dataclass
class Activity:
    """What the demo changed in "Stripe", and when (for the end-to-end lag)."""

    counts: dict[str, int] = field(default_factory=dict)
    # (table, id, wall time of the change): synced when the mirror row's synced_at passes it.
    changes: list[tuple[str, str, float]] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    usage_quantity: int = 0

    def did(self, kind: str, table: str, object_id: str, at: float) -> None:
        """`at`: when the request was sent (the change cannot have reached the mirror before)."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.changes.append((table, object_id, at))


class Shopper:
    """Makes the kind of changes a live SaaS account sees, through the real SDK."""

    def __init__(
        self,
        client: Any,
        activity: Activity,
        rng: random.Random,
        db: Database,
        usage_enabled: bool,
    ):
        self.c = client.v1
        self.db = db
        self.usage_enabled = usage_enabled
        self.customers: list[str] = []
        self.activity = activity
        self.rng = rng
        self.prices: list[str] = []
        self.subs: list[str] = []
        self.charges: list[str] = []
        self.n = 0

    async def setup(self) -> None:
        t0 = time.time()
        if self.usage_enabled:
            await self.c.billing.meters.create_async(
                {
                    "display_name": "API calls",
                    "event_name": METRIC,
                    "default_aggregation": {"formula": "sum"},
                }
            )
        for name, amount in (("Starter", 900), ("Pro", 2900), ("Scale", 9900)):
            product = await self.c.products.create_async(
                {
                    "name": f"Demo {name}",
                    "default_price_data": {
                        "currency": "usd",
                        "unit_amount": amount,
                        "recurring": {"interval": "month"},
                    },
                }
            )
            self.prices.append(product.default_price)
            self.activity.did("product", "products", product.id, t0)

    async def step(self) -> None:
        roll = self.rng.random()
        if self.usage_enabled and self.customers and roll < 0.2:
            await self.use()
        elif roll < 0.4 or not self.subs:
            await self.sign_up()
        elif roll < 0.6:
            await self.upgrade()
        elif roll < 0.75:
            await self.cancel()
        elif roll < 0.9 or not self.charges:
            await self.pay()
        else:
            await self.refund()

    async def sign_up(self) -> None:
        t0 = time.time()
        self.n += 1
        cus = await self.c.customers.create_async(
            {
                "email": f"newcomer{self.n}@demo.example",
                "name": f"Newcomer {self.n}",
                "payment_method": "pm_card_visa",
                "invoice_settings": {"default_payment_method": "pm_card_visa"},
                "metadata": {"supabase_user_id": f"user-{self.n}"},
            }
        )
        self.activity.did("sign-up", "customers", cus.id, t0)
        self.customers.append(cus.id)
        t0 = time.time()
        sub = await self.c.subscriptions.create_async(
            {"customer": cus.id, "items": [{"price": self.prices[0]}]}
        )
        self.subs.append(sub.id)
        self.activity.did("subscription", "subscriptions", sub.id, t0)

    async def upgrade(self) -> None:
        t0 = time.time()
        sub_id = self.rng.choice(self.subs)
        sub = await self.c.subscriptions.retrieve_async(sub_id)
        item = sub["items"]["data"][0]
        # A real change (another plan), so the mirror has something to show.
        price = self.rng.choice([p for p in self.prices if p != item["price"]["id"]])
        await self.c.subscriptions.update_async(
            sub_id, {"items": [{"id": item["id"], "price": price}]}
        )
        self.activity.did("plan change", "subscriptions", sub_id, t0)

    async def cancel(self) -> None:
        t0 = time.time()
        sub_id = self.subs.pop(self.rng.randrange(len(self.subs)))
        await self.c.subscriptions.cancel_async(sub_id)
        self.activity.did("cancellation", "subscriptions", sub_id, t0)

    async def pay(self) -> None:
        t0 = time.time()
        pi = await self.c.payment_intents.create_async(
            {
                "amount": self.rng.choice((500, 1200, 4900)),
                "currency": "usd",
                "payment_method": "pm_card_visa",
                "confirm": True,
            }
        )
        if pi.latest_charge:
            self.charges.append(pi.latest_charge)
            self.activity.did("payment", "charges", pi.latest_charge, t0)

    async def use(self) -> None:
        """The application records usage: a row in usage_records; syncd reports it."""
        customer = self.rng.choice(self.customers)
        quantity = self.rng.randint(1, 20)
        await self.db.execute("demo_insert_usage", customer, METRIC, quantity)
        self.activity.counts["usage row"] = self.activity.counts.get("usage row", 0) + 1
        self.activity.usage_quantity += quantity

    async def refund(self) -> None:
        t0 = time.time()
        charge = self.charges.pop(self.rng.randrange(len(self.charges)))
        await self.c.refunds.create_async({"charge": charge})
        self.activity.did("refund", "charges", charge, t0)


def _daemon_env(dsn: str, emu: Emulator, http_port: int, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCD_", "STRIPE_"))}
    env.update(
        {
            "SYNCD_CONFIG": str(config),
            "DATABASE_URL": dsn,
            "STRIPE_API_KEY": emu.api_key,
            "SYNCD_STRIPE_API_BASE": emu.url,
            "SYNCD_STRIPE_RATE_LIMIT": "200",
            "SYNCD_EVENTS_POLL_INTERVAL": "0.5",
            "SYNCD_HTTP_BIND": f"127.0.0.1:{http_port}",
            "SYNCD_LOG_FORMAT": "json",
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        }
    )
    return env


async def _exists(db: Database, relation: str) -> bool:
    return bool(await db.fetchval("relation_exists", relation))


async def _usage(db: Database) -> dict[str, tuple[int, float]]:
    return {r["status"]: (r["n"], r["quantity"]) for r in await db.fetch("demo_usage_counts")}


async def _resync_line(db: Database) -> str:
    row = await db.fetchrow("demo_last_resync")
    if row is None:
        return "resync none yet"
    took = f" {row['seconds']:.1f}s" if row["seconds"] is not None else ""
    return f"resync #{row['run_id']} {row['status']}{took} {row['objects']} objects"


async def _counts(conn: Dedicated) -> dict[str, int]:
    out = {}
    for table in LIVE_TABLES:
        out[table] = await conn.fetchval("demo_live_count", table=table)
    return out


async def _measure_lag(conn: Dedicated, activity: Activity) -> None:
    """Move changes whose mirror row now reflects them into `lags` (synced_at - change time)."""
    waiting: list[tuple[str, str, float]] = []
    by_table: dict[str, list[tuple[str, float]]] = {}
    for table, object_id, at in activity.changes:
        by_table.setdefault(table, []).append((object_id, at))
    for table, items in by_table.items():
        rows = await conn.fetch("demo_synced_at", [i for i, _ in items], table=table)
        synced = {r["id"]: r["synced"] for r in rows}
        for object_id, at in items:
            seen = synced.get(object_id)
            if seen is not None and seen >= at - 0.001:
                activity.lags.append(max(0.0, seen - at))
            else:
                waiting.append((table, object_id, at))
    activity.changes = waiting


def _fmt_lag(lags: list[float]) -> str:
    if not lags:
        return "lag n/a"
    ordered = sorted(lags)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"lag p50 {statistics.median(ordered):.2f}s p95 {p95:.2f}s"


def say(text: str = "") -> None:
    print(text, flush=True)


async def run_demo(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="syncd-demo-"))
    say("syncd demo: a throwaway PostgreSQL, the Stripe emulator and the real daemon")
    with throwaway_postgres(prefer_local=args.local_postgres) as (admin_dsn, _local):
        dsn = await create_database(admin_dsn, "syncd_demo")
        say(f"  postgres   {dsn}")
        async with Emulator.running(port=0, seed=args.seed) as emu:
            seeded = emu.seed(customers=args.customers, events=False, days=90)
            say(f"  emulator   {emu.url}  seeded {seeded}")
            code = await _with_daemon(args, work, dsn, emu)
            if args.keep and code == 0:
                say(f"\nkept running: psql '{dsn}'\n(Ctrl-C removes everything)")
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
    if code == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"the daemon's log and configuration are kept in {work}")
    return code


async def _with_daemon(args: argparse.Namespace, work: Path, dsn: str, emu: Emulator) -> int:
    http_port = free_port()
    log_path = work / "daemon.log"
    config = work / "config.toml"
    config.write_text(DAEMON_CONFIG)
    cfg = Config(database=DatabaseConfig(url=dsn, pool_min_size=1, pool_max_size=2))
    with log_path.open("w") as log_file:
        proc = await anyio.open_process(
            [sys.executable, "-m", "syncd", "run"],
            cwd=work,
            env=_daemon_env(dsn, emu, http_port, config),
            stdout=log_file,
            stderr=STDOUT,
        )
        say(f"  daemon     pid {proc.pid}, http://127.0.0.1:{http_port}/metrics, log {log_path}")
        try:
            code = await _drive(args, cfg, emu, proc)
        finally:
            if proc.returncode is None:
                proc.kill()
                with anyio.CancelScope(shield=True):
                    await proc.wait()
    if code != 0:
        say(f"\nlast lines of {log_path}:")
        say("\n".join(log_path.read_text().splitlines()[-20:]))
    return code


async def _drive(args: argparse.Namespace, cfg: Config, emu: Emulator, proc: Process) -> int:
    activity = Activity()
    rng = random.Random(args.seed)
    http = stripe.AIOHTTPClient()
    client = emu.client(http_client=http)
    started = time.monotonic()
    try:
        async with Database.connect(cfg.database, min_size=1) as db:
            await _wait_ready(db, cfg, proc)
            say(f"  ready in {time.monotonic() - started:.1f}s (leader elected, schema current)\n")
            usage = await _exists(db, f'"{db.schemas.app}".usage_records')
            resync = await _exists(db, f'"{db.schemas.state}".resync_runs')
            views = await _exists(db, f'"{db.schemas.app}".subscriptions')
            ledger = await _exists(db, f'"{db.schemas.state}".events_ledger')
            shopper = Shopper(client, activity, rng, db, usage)
            await shopper.setup()
            conn = await db.dedicated_connection()
            try:
                await _live(args, db, conn, shopper, activity, proc, resync)
                if usage:
                    await _flush(db, proc)
                if resync:
                    await _resync_done(db)
            finally:
                await conn.close()
            report = await status.gather(db, cfg)  # while the daemon still runs
            usage_rows = await _usage(db) if usage else {}
            say("\nstopping the daemon (SIGTERM)...")
            proc.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            with anyio.move_on_after(30):
                await proc.wait()
            code = proc.returncode
            say(f"  exit code {code} after {time.monotonic() - stopped:.1f}s")
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
    say("\n" + status.render(report))
    made = ", ".join(f"{n} {k}" for k, n in sorted(activity.counts.items()))
    say(f"changes made through the stripe SDK and the database: {made}")
    say(f"end-to-end {_fmt_lag(activity.lags)} over {len(activity.lags)} synced changes")
    if activity.changes:
        waiting = ", ".join(f"{t} {i}" for t, i, _ in activity.changes[:3])
        say(
            f"{len(activity.changes)} changes not (yet) in the mirror when the daemon stopped: "
            f"{waiting}"
        )
    if usage:
        reported = usage_rows.get("reported", (0, 0.0))
        metered = sum(float(v) for v in emu.meter_totals().values())
        say(
            f"usage: {activity.usage_quantity} {METRIC} recorded in rows, {reported[1]:.0f} "
            f"reported by syncd ({reported[0]} rows), {metered:.0f} counted by the Stripe meter"
        )
    if activity.errors:
        say(f"{len(activity.errors)} SDK errors, first: {activity.errors[0]}")
    queries = QUERIES
    if ledger:
        queries += "\n" + LEDGER_QUERY
    if usage:
        queries += "\n" + USAGE_QUERY
    if views:
        queries += "\n" + VIEWS_QUERY
    say("\nqueries to try (psql, with --keep):\n" + queries)
    return 0 if code == 0 else 1


async def _resync_done(db: Database) -> None:
    """Let the SIGHUP resync finish (it is small here), so the summary shows how long it took."""
    with anyio.move_on_after(30):
        while True:
            row = await db.fetchrow("demo_last_resync")
            if row is None or row["status"] not in ("pending", "running"):
                break
            await anyio.sleep(0.3)
    say("  " + await _resync_line(db))


async def _flush(db: Database, proc: Process) -> None:
    """SIGUSR1: report the usage rows now rather than at the next interval."""
    proc.send_signal(signal.SIGUSR1)
    say("  -> SIGUSR1 sent: the daemon flushes usage now")
    with anyio.move_on_after(15):
        while True:
            counts = await _usage(db)
            if not counts.get("pending") and not counts.get("sending"):
                break
            await anyio.sleep(0.3)


async def _wait_ready(db: Database, cfg: Config, proc: Process) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise SyncdError(f"the daemon exited with code {proc.returncode} while starting")
        try:
            report = await status.gather(db, cfg)
            if report.get("leader"):
                return
        except SyncdError:
            pass  # migrations still running
        await anyio.sleep(0.2)
    raise SyncdError("the daemon did not become leader within 60s")


async def _live(
    args: argparse.Namespace,
    db: Database,
    conn: Dedicated,
    shopper: Shopper,
    activity: Activity,
    proc: Process,
    resync: bool,
) -> None:
    kinds = "sign-ups, plan changes, cancellations, payments, refunds"
    if shopper.usage_enabled:
        kinds += ", usage rows"
    say(f"making changes for {args.duration:.0f}s ({kinds}):")
    start = time.monotonic()
    end = start + args.duration
    hup_at = start + args.duration * 0.6
    next_view = start
    while time.monotonic() < end:
        if proc.returncode is not None:
            raise SyncdError(f"the daemon exited with code {proc.returncode}")
        try:
            await shopper.step()
        except stripe.StripeError as exc:
            activity.errors.append(f"{exc.__class__.__name__}: {exc.user_message or exc}")
        if hup_at and time.monotonic() >= hup_at:
            hup_at = 0
            proc.send_signal(signal.SIGHUP)
            say("  -> SIGHUP sent: the daemon starts a full resync")
        if time.monotonic() >= next_view:
            next_view += 2
            await _measure_lag(conn, activity)
            counts = await _counts(conn)
            parts = [
                f"  {time.monotonic() - start:5.1f}s  changes {sum(activity.counts.values()):4d}",
                "mirror " + " ".join(f"{t} {n}" for t, n in counts.items()),
                _fmt_lag(activity.lags),
            ]
            if shopper.usage_enabled:
                usage = await _usage(db)
                rows = " ".join(f"{k} {n}" for k, (n, _q) in sorted(usage.items()))
                parts.append("usage " + (rows or "no rows yet"))
            if resync:
                parts.append(await _resync_line(db))
            say(" | ".join(parts))
        await anyio.sleep(1 / args.rate)
    # Give the last changes a moment to arrive before stopping.
    settle = time.monotonic() + 10
    while activity.changes and time.monotonic() < settle:
        await anyio.sleep(0.5)
        await _measure_lag(conn, activity)


async def cmd_demo(_cfg: Config, args: argparse.Namespace) -> int:
    return await run_demo(args)


def demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=60.0, help="seconds of live changes (60)")
    p.add_argument("--rate", type=float, default=4.0, help="changes per second (4)")
    p.add_argument("--customers", type=int, default=300, help="customers seeded first (300)")
    p.add_argument("--seed", type=int, default=7, help="random seed")
    p.add_argument(
        "--local-postgres", action="store_true", help="use local binaries even if Docker answers"
    )
    p.add_argument(
        "--keep", action="store_true", help="keep PostgreSQL and the emulator until Ctrl-C"
    )
