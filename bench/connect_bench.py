"""Connect at scale: 1,000 connected accounts, 10 of them active, 3 replicas (issue 17).

    PYTHONPATH=. python bench/connect_bench.py                  # 1,000 accounts, test mode
    PYTHONPATH=. python bench/connect_bench.py --mode live

The emulator (another process, `--accounts N`) is a Connect platform with N connected accounts,
each seeded small (`--customers` customers and `--products` products with their prices; the
platform too), then enforces Stripe's limits of `--mode` (test: 25 requests/s, live: 100/s;
25/s per endpoint; under `--connect-limits shared` a connected account's requests count against
the platform's limits too) and answers each request after `--latency-ms`. A throwaway PostgreSQL
(bench/_common.database) and `--replicas` `syncd run` processes with `stripe.accounts = all`,
leader election on, `stripe.mode` = `--mode` (so the default budget: half the platform's limit,
split evenly among the replicas) and `sync.exclude = payment_methods,tax_ids,
active_entitlements` (per-parent lists: one request per customer, which would only make the
first resyncs longer). Their logs stay in the directory printed first.

Measured, in order:

1. Memory baseline: one replica with no connected account (`stripe.accounts` = the platform's
   own id, a database of its own): its RSS once its resync is done and it has polled a while.
2. Initial backfill: from the replicas' start until every account (the platform and the N
   connected ones) has a full resync done (`syncd.resync_runs`, `tables IS NULL`), with the
   requests it took (the emulator's counters).
3. Steady state, `--window` seconds after `--settle` seconds of quiet: each of `--active`
   accounts has one of its customers updated every `--change-every` seconds (through the API
   with its Stripe-Account header; `metadata[bench_seq]`), and `--quiet-changes` accounts
   chosen among the others one update each; a change's latency runs from its API answer (the
   event exists from then on) to the NOTIFY of the row holding it (PostgreSQL delivers it at
   commit). Requests per second from the emulator's counters (syncd's, without the bench's own
   updates), split into the active accounts' and the others'; event polls by pace from the
   replicas' /metrics; CPU per process.
4. Takeover: one replica (`--kill leader|standby`) is killed with SIGKILL; how long until every
   account it held is leased by a survivor (`syncd.accounts.leased_by`), and until each has been
   polled again (`last_poll_at` after the kill); the active accounts' changes go on meanwhile.
5. Memory per account: each replica's RSS at steady state less the baseline, per account held;
   and the survivors' growth per account taken over.

Figures and the command that made them: docs/connect.md, "Measured".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    control,
    cpu_seconds,
    database,
    emulator,
    rss_kb,
    scratch_database,
    tree_cpu,
)
from syncd.pgserver import free_port  # noqa: E402

KEYS = {"test": "sk_test_connectbench00000000000", "live": "sk_live_connectbench00000000000"}
LIMITS = {"test": 25.0, "live": 100.0}  # Stripe's global limit per account (requests/s)
RATE_SHARE = 0.5  # syncd's default stripe.rate_share
EXCLUDE = "payment_methods,tax_ids,active_entitlements"
CHANGE = "POST /v1/customers/{id}"  # the bench's own requests (syncd never updates customers)
EVENTS = "GET /v1/events"


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


def replica_env(
    args: argparse.Namespace, dsn: str, url: str, port: int, accounts: str
) -> dict[str, str]:
    """`syncd run` with built-in defaults but for what the bench sets (no config file)."""
    extra = {}
    if args.quiet_poll_interval:
        extra["SYNCD_EVENTS_QUIET_POLL_INTERVAL"] = str(args.quiet_poll_interval)
    return extra | {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "SYNCD_DATABASE_URL": dsn,
        "SYNCD_STRIPE_API_KEY": KEYS[args.mode],
        "SYNCD_STRIPE_MODE": args.mode,
        "SYNCD_STRIPE_API_BASE": url,
        "SYNCD_STRIPE_ACCOUNTS": accounts,
        "SYNCD_STRIPE_CONNECT_LIMITS": args.connect_limits,
        "SYNCD_SYNC_EXCLUDE": EXCLUDE,
        "SYNCD_DAEMON_LEADER_ELECTION": "true",
        "SYNCD_HTTP_BIND": f"127.0.0.1:{port}",
        "SYNCD_LOG_FORMAT": "json",
    }


def start_replica(
    args: argparse.Namespace, dsn: str, url: str, workdir: Path, name: str, accounts: str = "all"
) -> Replica:
    port = free_port()
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run"],
            cwd=workdir,  # no config.toml there: built-in defaults and the environment
            env=replica_env(args, dsn, url, port, accounts),
            stdout=out,
            stderr=out,
        )
    return Replica(name, proc, port, log)


def stop_replica(replica: Replica) -> None:
    if replica.alive():
        replica.proc.send_signal(signal.SIGTERM)
        try:
            replica.proc.wait(60)
        except subprocess.TimeoutExpired:
            replica.proc.kill()
    replica.proc.wait()


@contextlib.contextmanager
def replicas_running(
    args: argparse.Namespace, dsn: str, url: str, workdir: Path
) -> Iterator[list[Replica]]:
    replicas = [start_replica(args, dsn, url, workdir, f"r{i}") for i in range(args.replicas)]
    try:
        yield replicas
    finally:
        for r in replicas:
            stop_replica(r)


def log_errors(replica: Replica) -> dict[str, int]:
    """Log lines at level error or above, counted by event name."""
    found: dict[str, int] = {}
    for line in replica.log.read_bytes().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            if line.strip():
                found["(not JSON) " + line.decode(errors="replace")[:80]] = 1
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
            event = str(entry.get("event"))
            found[event] = found.get(event, 0) + 1
    return found


# --- the emulator -------------------------------------------------------------------------------


def api_get(url: str, key: str, path: str) -> Any:
    """A GET of the emulator's Stripe API (before its limits are on)."""
    import urllib.request

    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return orjson.loads(r.read())


def seed_accounts(url: str, args: argparse.Namespace) -> tuple[str, list[str]]:
    """Each connected account and the platform seeded small: the platform's id and the
    connected accounts' ids."""
    started = time.monotonic()
    seed = {"customers": args.customers, "products": args.products, "subscriptions": 0}
    platform = api_get(url, KEYS[args.mode], "/v1/account")["id"]
    control(url, "/_emulator/seed", seed)
    accounts = [
        a["id"] for a in control(url, "/_emulator/objects/account")["data"] if not a.get("deleted")
    ]
    for account in accounts:
        control(url, f"/_emulator/seed?account={account}", seed)
    print(
        f"emulator: platform {platform} and {len(accounts):,} connected accounts, each seeded"
        f" {seed}, in {time.monotonic() - started:.1f}s",
        flush=True,
    )
    return platform, accounts


def limits_on(url: str, args: argparse.Namespace) -> None:
    """Stripe's limits and the latency from here on; counters zeroed."""
    control(
        url,
        "/_emulator/limits",
        {"stripe_limits": args.mode, "connect_limits": args.connect_limits},
    )
    if args.latency_ms:
        control(url, "/_emulator/faults", {"latency_ms": args.latency_ms})
    control(url, "/_emulator/limits/counters", method="DELETE")
    control(url, "/_emulator/stats", method="DELETE")


async def counters(url: str, account: str | None = None) -> dict[str, Any]:
    path = "/_emulator/limits" + (f"?account={account}" if account else "")
    answer = await asyncio.to_thread(control, url, path)
    out: dict[str, Any] = answer["counters"]
    return out


def requests_of(c: dict[str, Any], endpoint: str | None = None) -> int:
    if endpoint is None:
        return int(c["requests"])
    return int(c["endpoints"].get(endpoint, {}).get("requests", 0))


# --- the replicas' /metrics ---------------------------------------------------------------------


async def scrape(session: aiohttp.ClientSession, replica: Replica) -> dict[str, float]:
    """Samples of the replica's /metrics by name with labels; {} when it does not answer."""
    try:
        async with session.get(
            f"http://127.0.0.1:{replica.port}/metrics", timeout=aiohttp.ClientTimeout(total=5)
        ) as r:
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def polls(sample: dict[str, float], pace: str) -> float:
    return sample.get(f'syncd_account_polls_total{{pace="{pace}"}}', 0.0)


def events_wait(sample: dict[str, float]) -> float:
    """Seconds the replica's requests to GET /v1/events waited for its rate limiter."""
    return sum(
        v
        for k, v in sample.items()
        if k.startswith("syncd_rate_limit_endpoint_wait_seconds_total{") and EVENTS in k
    )


def leased(sample: dict[str, float]) -> int:
    return int(sample.get("syncd_accounts_leased", 0))


# --- changes and their latency ------------------------------------------------------------------


@dataclass
class Change:
    account: str
    customer: str
    seq: int
    phase: str  # active, quiet, takeover
    answered: float = 0.0
    seen: float | None = None

    @property
    def latency(self) -> float | None:
        return None if self.seen is None else max(0.0, self.seen - self.answered)


@dataclass
class Changes:
    """Customer updates made through the API and when the mirror held each: on each NOTIFY
    of a customer with a change pending, its row's bench_seq is read; every pending change
    of that customer up to it is seen at the notification's arrival."""

    url: str
    key: str
    session: aiohttp.ClientSession
    conn: asyncpg.Connection
    seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    pending: dict[str, list[Change]] = field(default_factory=dict)
    made: list[Change] = field(default_factory=list)
    failed: int = 0
    limited: int = 0
    _checks: set[asyncio.Task[None]] = field(default_factory=set)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def make(self, account: str, customer: str, phase: str) -> None:
        change = Change(account, customer, next(self.seq), phase)
        # Pending before the request: the mirror may hold it before the answer arrives.
        self.pending.setdefault(customer, []).append(change)
        try:
            for attempt in range(20):
                async with self.session.post(
                    f"{self.url}/v1/customers/{customer}",
                    data={"metadata[bench_seq]": str(change.seq)},
                    headers={"Authorization": f"Bearer {self.key}", "Stripe-Account": account},
                ) as r:
                    await r.read()
                    if r.status == 200:
                        change.answered = time.monotonic()
                        self.made.append(change)
                        return
                    if r.status != 429:
                        break
                self.limited += 1
                await asyncio.sleep(0.1 * (attempt + 1))
            self.failed += 1
        finally:
            if not change.answered:  # failed, or cancelled in flight: nothing to wait for
                self.pending[customer].remove(change)

    def on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        at = time.monotonic()
        message = orjson.loads(payload)
        if message.get("table") != "customers":
            return
        ids = [c["id"] for c in message.get("changes", []) if self.pending.get(c["id"])]
        if ids:
            task = asyncio.get_running_loop().create_task(self._check(ids, at))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    async def _check(self, ids: list[str], at: float) -> None:
        rows = await self.read(ids)
        for customer, seq in rows:
            waiting = self.pending.get(customer, [])
            for change in [c for c in waiting if c.seq <= seq and c.answered]:
                change.seen = at
                waiting.remove(change)

    async def read(self, ids: list[str]) -> list[tuple[str, int]]:
        async with self._lock:  # the checks of several notifications share the connection
            rows = await self.conn.fetch(
                "SELECT id, (raw->'metadata'->>'bench_seq')::bigint AS seq"
                " FROM stripe.customers WHERE id = ANY($1::text[])"
                " AND raw->'metadata' ? 'bench_seq'",
                ids,
            )
        return [(r["id"], int(r["seq"])) for r in rows]

    async def sweep(self) -> None:
        """A missed notification must not lose a change: read every pending one (seen now)."""
        ids = [c for c, w in self.pending.items() if any(x.answered for x in w)]
        if ids:
            await self._check(ids, time.monotonic())

    def waiting(self, phase: str | None = None) -> int:
        return sum(1 for w in self.pending.values() for c in w if phase in (None, c.phase))

    def latencies(self, phase: str, since: float = 0.0, until: float = float("inf")) -> list[float]:
        return sorted(
            c.latency
            for c in self.made
            if c.phase == phase and since <= c.answered < until and c.latency is not None
        )


def quantiles(values: Sequence[float]) -> str:
    if not values:
        return "none"
    p95 = values[min(len(values) - 1, max(0, round(len(values) * 0.95) - 1))]
    return (
        f"p50 {statistics.median(values):.2f}s, p95 {p95:.2f}s, max {values[-1]:.2f}s"
        f" ({len(values)} changes)"
    )


async def active_loop(
    changes: Changes, account: str, customers: list[str], every: float, offset: float
) -> None:
    """One update of the account's customers in turn every `every` seconds, until cancelled."""
    await asyncio.sleep(offset)
    next_at = time.monotonic()
    for customer in itertools.cycle(customers):
        await changes.make(account, customer, "active")
        next_at += every
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def quiet_change(changes: Changes, account: str, customer: str, delay: float) -> None:
    await asyncio.sleep(delay)
    await changes.make(account, customer, "quiet")


async def customers_of(url: str, account: str) -> list[str]:
    answer = await asyncio.to_thread(control, url, f"/_emulator/objects/customer?account={account}")
    return [c["id"] for c in answer["data"] if not c.get("deleted")]


# --- the phases ---------------------------------------------------------------------------------


def check_alive(replicas: list[Replica], killed: Replica | None = None) -> None:
    for r in replicas:
        if r is not killed and not r.alive():
            raise SystemExit(f"replica {r.name} exited with {r.proc.returncode}: see {r.log}")


async def baseline_rss(
    args: argparse.Namespace, admin_dsn: str, url: str, platform: str, workdir: Path
) -> int:
    """RSS (kB) of a replica syncing only the platform (no connected account), in a database of
    its own, once its resync is done and it has polled for `--baseline-settle` seconds."""
    async with scratch_database(admin_dsn, "connect_baseline") as dsn:
        replica = start_replica(args, dsn, url, workdir, "baseline", accounts=platform)
        try:
            conn = await wait_connect(dsn)
            try:
                deadline = time.monotonic() + 300
                while not await done_accounts(conn):
                    check_alive([replica])
                    if time.monotonic() > deadline:
                        raise SystemExit("baseline replica: no resync done within 300s")
                    await asyncio.sleep(0.5)
            finally:
                await conn.close()
            await asyncio.sleep(args.baseline_settle)
            check_alive([replica])
            return rss_kb(replica.pid)
        finally:
            stop_replica(replica)


async def wait_connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    for _ in range(600):
        with contextlib.suppress(asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            await conn.fetchval("SELECT 1 FROM syncd.accounts LIMIT 1")
            await conn.fetchval("SELECT 1 FROM syncd.resync_runs LIMIT 1")
            return conn
        await asyncio.sleep(0.2)
    raise SystemExit("the schema did not appear within 120s")


async def done_accounts(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(DISTINCT account_id) FROM syncd.resync_runs"
            " WHERE status IN ('done', 'done_with_problems') AND tables IS NULL"
        )
    )


@dataclass
class Backfill:
    seconds: float
    requests: int
    limited: int
    marks: dict[int, float]  # percent of accounts done -> seconds
    runs: dict[str, int]
    endpoints: dict[str, int]


async def backfill(
    args: argparse.Namespace, conn: asyncpg.Connection, url: str, replicas: list[Replica], n: int
) -> Backfill:
    """Until every account (the platform and the n connected) has a full resync done."""
    started = time.monotonic()
    marks: dict[int, float] = {}
    last_print = started
    while True:
        check_alive(replicas)
        done = await done_accounts(conn)
        now = time.monotonic()
        for pct in (10, 50, 90, 100):
            if done * 100 >= pct * n and pct not in marks:
                marks[pct] = now - started
        if done >= n:
            break
        if now - started > args.backfill_timeout:
            raise SystemExit(f"backfill: {done:,} of {n:,} accounts after {now - started:.0f}s")
        if now - last_print >= args.progress:
            last_print = now
            c = await counters(url)
            print(
                f"  backfill {now - started:6.0f}s: {done:,}/{n:,} accounts resynced,"
                f" {c['requests']:,} requests ({c['requests'] / (now - started):.1f}/s),"
                f" {c['limited']:,} answered 429",
                flush=True,
            )
        await asyncio.sleep(1.0)
    c = await counters(url)
    runs = {
        r["status"]: r["n"]
        for r in await conn.fetch("SELECT status, count(*) AS n FROM syncd.resync_runs GROUP BY 1")
    }
    endpoints = {e: int(v["requests"]) for e, v in c["endpoints"].items()}
    return Backfill(
        time.monotonic() - started, int(c["requests"]), int(c["limited"]), marks, runs, endpoints
    )


async def settle(
    args: argparse.Namespace,
    conn: asyncpg.Connection,
    url: str,
    replicas: list[Replica],
    session: aiohttp.ClientSession,
) -> float | None:
    """At least `--settle` seconds, then until the event polls no longer queue in the replicas'
    limiters (under `--steady-wait` seconds each on average, twice in a row over `--progress`
    seconds), at most `--settle-timeout`: the seconds it took, None when they still queue."""
    started = time.monotonic()
    calm = 0
    wait0 = sum([events_wait(await scrape(session, r)) for r in replicas])
    polls0 = requests_of(await counters(url), EVENTS)
    while True:
        await asyncio.sleep(args.progress)
        check_alive(replicas)
        wait1 = sum([events_wait(await scrape(session, r)) for r in replicas])
        polls1 = requests_of(await counters(url), EVENTS)
        mean = (wait1 - wait0) / max(1, polls1 - polls0)
        elapsed = time.monotonic() - started
        median = await conn.fetchval(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY poll_interval)"
            " FROM syncd.accounts WHERE status = 'active'"
        )
        print(
            f"  settling {elapsed:5.0f}s: {(polls1 - polls0) / args.progress:.1f} event polls/s,"
            f" {mean:.1f}s waited in the limiter per poll; median poll interval {median or 0:.0f}s",
            flush=True,
        )
        calm = calm + 1 if mean < args.steady_wait else 0
        if elapsed >= args.settle and calm >= 2:
            return elapsed
        if elapsed >= args.settle_timeout:
            return None
        wait0, polls0 = wait1, polls1


@dataclass
class Steady:
    seconds: float
    total: dict[str, Any]
    active: list[dict[str, Any]]
    polls_active: float
    polls_quiet: float
    cpu: dict[str, float]
    rss: dict[str, int]
    held: dict[str, int]
    intervals: dict[str, float]
    leased_sum_max: int
    events_wait: float
    never_polled: list[str]


async def steady(
    args: argparse.Namespace,
    conn: asyncpg.Connection,
    url: str,
    replicas: list[Replica],
    session: aiohttp.ClientSession,
    active: list[str],
    pids: dict[str, int],
    n: int,
) -> Steady:
    """The measured window: counters zeroed at its start, read at its end."""
    before = [await scrape(session, r) for r in replicas]
    cpu0 = {name: cpu(name, pid) for name, pid in pids.items()}
    await asyncio.to_thread(control, url, "/_emulator/limits/counters", None, "DELETE")
    t0 = time.monotonic()
    leased_sum_max = 0
    while time.monotonic() - t0 < args.window:
        check_alive(replicas)
        samples = [await scrape(session, r) for r in replicas]
        leased_sum_max = max(leased_sum_max, sum(leased(s) for s in samples))
        await asyncio.sleep(min(5.0, max(0.0, args.window - (time.monotonic() - t0))))
    total = await counters(url)
    by_active = [await counters(url, a) for a in active]
    seconds = time.monotonic() - t0
    after = [await scrape(session, r) for r in replicas]
    cpu1 = {name: cpu(name, pid) for name, pid in pids.items()}
    rows = await conn.fetch(
        "SELECT poll_interval FROM syncd.accounts WHERE status = 'active'"
        " AND NOT (account_id = ANY($1::text[])) AND poll_interval IS NOT NULL",
        active,
    )
    quiet = sorted(float(r["poll_interval"]) for r in rows)
    intervals = {
        "quiet_median": statistics.median(quiet) if quiet else float("nan"),
        "quiet_max": quiet[-1] if quiet else float("nan"),
    }
    never_polled = [
        r["account_id"] + (" (the platform)" if r["platform"] else "")
        for r in await conn.fetch(
            "SELECT account_id, platform FROM syncd.accounts WHERE status = 'active'"
            " AND last_poll_at IS NULL ORDER BY account_id"
        )
    ]
    return Steady(
        seconds=seconds,
        total=total,
        active=by_active,
        polls_active=sum(
            polls(a, "active") - polls(b, "active") for a, b in zip(after, before, strict=True)
        ),
        polls_quiet=sum(
            polls(a, "quiet") - polls(b, "quiet") for a, b in zip(after, before, strict=True)
        ),
        cpu={name: cpu1[name] - cpu0[name] for name in pids},
        rss={r.name: rss_kb(r.pid) for r in replicas},
        held={r.name: leased(s) for r, s in zip(replicas, after, strict=True)},
        intervals=intervals,
        leased_sum_max=leased_sum_max,
        events_wait=sum(
            events_wait(a) - events_wait(b) for a, b in zip(after, before, strict=True)
        ),
        never_polled=never_polled,
    )


def cpu(name: str, pid: int) -> float:
    return tree_cpu(pid) if name == "postgres" else cpu_seconds(pid)


@dataclass
class Takeover:
    victim: str
    role: str
    orphans: int
    orphans_active: int
    leased_at: float | None
    polled_at: float | None
    leased_sum_max: int
    held_after: dict[str, int]
    rss_after: dict[str, int]


async def instance_of(conn: asyncpg.Connection, replica: Replica) -> tuple[str, str]:
    row = await conn.fetchrow(
        "SELECT instance_id, role FROM syncd.instances WHERE pid = $1 AND stopped_at IS NULL"
        " ORDER BY started_at DESC LIMIT 1",
        replica.pid,
    )
    if row is None:
        raise SystemExit(f"replica {replica.name} (pid {replica.pid}) is not in syncd.instances")
    return str(row["instance_id"]), str(row["role"])


async def takeover(
    args: argparse.Namespace,
    conn: asyncpg.Connection,
    replicas: list[Replica],
    session: aiohttp.ClientSession,
    active: list[str],
    n: int,
) -> Takeover:
    roles = {r.name: await instance_of(conn, r) for r in replicas}
    want = "leader" if args.kill == "leader" else "standby"
    victim = next((r for r in replicas if roles[r.name][1] == want), replicas[-1])
    instance, role = roles[victim.name]
    orphans = [
        r["account_id"]
        for r in await conn.fetch(
            "SELECT account_id FROM syncd.accounts WHERE leased_by = $1 AND status = 'active'",
            instance,
        )
    ]
    if not orphans:
        raise SystemExit(f"replica {victim.name} holds no account")
    killed_db = await conn.fetchval("SELECT clock_timestamp()")
    killed = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    victim.proc.wait()
    print(
        f"killed {victim.name} ({role}, pid {victim.pid}) holding {len(orphans):,} accounts"
        f" ({len(set(orphans) & set(active))} of the active ones)",
        flush=True,
    )
    survivors = [r for r in replicas if r is not victim]
    leased_at = polled_at = None
    leased_sum_max = 0
    last_print = killed
    while time.monotonic() - killed < args.takeover_timeout:
        check_alive(survivors)
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE leased_by IS NOT NULL AND leased_by <> $2) AS leased,"
            " count(*) FILTER (WHERE last_poll_at > $3) AS polled"
            " FROM syncd.accounts WHERE account_id = ANY($1::text[])",
            orphans,
            instance,
            killed_db,
        )
        now = time.monotonic() - killed
        if leased_at is None and row["leased"] == len(orphans):
            leased_at = now
            print(f"  every orphaned account leased again after {now:.2f}s", flush=True)
        if polled_at is None and row["polled"] == len(orphans):
            polled_at = now
            print(f"  every orphaned account polled again after {now:.2f}s", flush=True)
        samples = [await scrape(session, r) for r in survivors]
        leased_sum_max = max(leased_sum_max, sum(leased(s) for s in samples))
        if leased_at is not None and polled_at is not None:
            break
        if time.monotonic() - last_print >= args.progress:
            last_print = time.monotonic()
            print(
                f"  takeover {now:5.1f}s: {row['leased']:,} leased, {row['polled']:,} polled"
                f" of {len(orphans):,}",
                flush=True,
            )
        await asyncio.sleep(0.1)
    await asyncio.sleep(args.after_takeover)  # the survivors' new accounts back off to quiet
    samples = [await scrape(session, r) for r in survivors]
    leased_sum_max = max(leased_sum_max, sum(leased(s) for s in samples))
    return Takeover(
        victim=victim.name,
        role=role,
        orphans=len(orphans),
        orphans_active=len(set(orphans) & set(active)),
        leased_at=leased_at,
        polled_at=polled_at,
        leased_sum_max=leased_sum_max,
        held_after={r.name: leased(s) for r, s in zip(survivors, samples, strict=True)},
        rss_after={r.name: rss_kb(r.pid) for r in survivors},
    )


# --- the run ------------------------------------------------------------------------------------


async def measure(
    args: argparse.Namespace, url: str, admin_dsn: str, pg_pid: int, emu_pid: int, workdir: Path
) -> None:
    platform, accounts = await asyncio.to_thread(seed_accounts, url, args)
    n = len(accounts) + 1  # the platform is synced too
    base_kb = await baseline_rss(args, admin_dsn, url, platform, workdir)
    print(f"baseline: a replica syncing only the platform: RSS {base_kb / 1024:.1f} MB", flush=True)
    await asyncio.to_thread(limits_on, url, args)
    rng = random.Random(args.random_seed)
    active = rng.sample(accounts, args.active)
    quiet = rng.sample([a for a in accounts if a not in active], args.quiet_changes)
    started = time.monotonic()
    with replicas_running(args, admin_dsn, url, workdir) as replicas:
        conn = await wait_connect(admin_dsn)
        listener = await asyncpg.connect(admin_dsn)
        reader = await asyncpg.connect(admin_dsn)
        session = aiohttp.ClientSession()
        tasks: list[asyncio.Task[None]] = []
        try:
            print(f"{args.replicas} replicas started; waiting for {n:,} first resyncs", flush=True)
            fill = await backfill(args, conn, url, replicas, n)
            print(
                f"backfill done in {fill.seconds:.1f}s ({time.monotonic() - started:.1f}s after"
                f" start): {fill.requests:,} requests, {fill.limited:,} answered 429",
                flush=True,
            )
            changes = Changes(url, KEYS[args.mode], session, reader)
            await listener.add_listener("syncd_changes", changes.on_notify)
            customers = {a: await customers_of(url, a) for a in [*active, *quiet]}
            pids = {r.name: r.pid for r in replicas} | {"emulator": emu_pid}
            if pg_pid:
                pids["postgres"] = pg_pid
            # The active accounts change from now on; they and the quiet ones settle into
            # their pace before the window.
            for i, account in enumerate(active):
                offset = i * args.change_every / len(active)
                tasks.append(
                    asyncio.create_task(
                        active_loop(changes, account, customers[account], args.change_every, offset)
                    )
                )
            tasks.append(asyncio.create_task(sweeper(changes)))
            print("settling (the active accounts changing)", flush=True)
            settled = await settle(args, conn, url, replicas, session)
            t_window = time.monotonic()
            for account in quiet:
                delay = rng.uniform(0, args.window / 2)
                tasks.append(
                    asyncio.create_task(
                        quiet_change(changes, account, customers[account][0], delay)
                    )
                )
            tasks.append(asyncio.create_task(sweeper(changes)))
            print(f"steady state: measuring {args.window:.0f}s", flush=True)
            window = await steady(args, conn, url, replicas, session, active, pids, n)
            t_window_end = time.monotonic()
            # The quiet accounts' changes are seen at their next poll: wait for them.
            deadline = time.monotonic() + args.quiet_timeout
            while changes.waiting("quiet") and time.monotonic() < deadline:
                check_alive(replicas)
                await asyncio.sleep(0.5)
            take = await takeover(args, conn, replicas, session, active, n)
            t_takeover_end = time.monotonic()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            tasks.clear()
            # Every change made must reach the mirror: wait for the last ones.
            t_drain = time.monotonic()
            while changes.waiting() and time.monotonic() - t_drain < args.drain_timeout:
                check_alive([r for r in replicas if r.alive()])
                await changes.sweep()
                await asyncio.sleep(0.5)
            drained = time.monotonic() - t_drain
            print(f"last changes: {changes.waiting()} not in the mirror after {drained:.0f}s")
            accounts_rows = await conn.fetch(
                "SELECT status, leased_by IS NOT NULL AS leased, error IS NOT NULL AS failing,"
                " count(*) AS n FROM syncd.accounts GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            )
            errors = {r.name: log_errors(r) for r in replicas}
        finally:
            for task in tasks:
                task.cancel()
            await session.close()
            await listener.close()
            await reader.close()
            await conn.close()
    report(
        args,
        n,
        base_kb,
        fill,
        settled,
        window,
        take,
        changes,
        (t_window, t_window_end, t_takeover_end),
        accounts_rows,
        errors,
    )


async def sweeper(changes: Changes) -> None:
    while True:
        await asyncio.sleep(1.0)
        await changes.sweep()


def report(
    args: argparse.Namespace,
    n: int,
    base_kb: int,
    fill: Backfill,
    settled: float | None,
    window: Steady,
    take: Takeover,
    changes: Changes,
    times: tuple[float, float, float],
    accounts_rows: list[asyncpg.Record],
    errors: dict[str, dict[str, int]],
) -> None:
    t_window, t_window_end, t_end = times
    account_limit = LIMITS[args.mode]
    budget = account_limit * RATE_SHARE
    label = (
        f"connect ({args.mode} mode, {n - 1:,} connected accounts + the platform,"
        f" {args.active} active, {args.replicas} replicas, connect_limits {args.connect_limits})"
    )
    print()
    print(label)
    rows: list[tuple[str, str]] = []
    marks = ", ".join(f"{p}% {s:.0f}s" for p, s in sorted(fill.marks.items()))
    per_account = fill.requests / n
    rows.append(
        (
            "initial backfill (every account's first full resync)",
            f"{fill.seconds:.0f}s ({marks}); {fill.requests:,} requests = {per_account:.1f}"
            f" per account, {fill.requests / fill.seconds:.1f}/s; {fill.limited:,} answered 429",
        )
    )
    rows.append(
        (
            "settled after the backfill (event polls no longer queue)",
            f"after {settled:.0f}s"
            if settled is not None
            else f"NOT within {args.settle_timeout:.0f}s: the window measures a queue",
        )
    )
    active_lat = changes.latencies("active", t_window, t_window_end)
    rows.append(
        (
            f"active accounts: change -> row (one change per account every {args.change_every:g}s)",
            quantiles(active_lat),
        )
    )
    rows.append(
        (
            "quiet accounts: change -> row (one change each)",
            quantiles(changes.latencies("quiet"))
            + f"; their poll interval: median {window.intervals['quiet_median']:.0f}s,"
            f" max {window.intervals['quiet_max']:.0f}s",
        )
    )
    total = requests_of(window.total) - requests_of(window.total, CHANGE)
    events = requests_of(window.total, EVENTS)
    active_requests = sum(requests_of(a) - requests_of(a, CHANGE) for a in window.active)
    active_events = sum(requests_of(a, EVENTS) for a in window.active)
    s = window.seconds
    rows.append(
        (
            f"syncd's requests/s in the steady window ({s:.0f}s)",
            f"{total / s:.2f}/s = {total / s / account_limit:.0%} of the platform's"
            f" {account_limit:g}/s, {total / s / budget:.0%} of syncd's {budget:g}/s"
            f" ({window.total['limited']:,} answered 429)",
        )
    )
    rows.append(
        (
            f"  of which the {args.active} active accounts",
            f"{active_requests / s:.2f}/s ({active_events / s:.2f}/s event polls)",
        )
    )
    rows.append(
        (
            f"  of which the other {n - args.active:,} accounts",
            f"{(total - active_requests) / s:.2f}/s"
            f" ({(events - active_events) / s:.2f}/s event polls)",
        )
    )
    rows.append(
        (
            "  polls by pace (replicas' syncd_account_polls)",
            f"active {window.polls_active / s:.2f}/s, quiet {window.polls_quiet / s:.2f}/s",
        )
    )
    endpoint_budget = min(budget, 25.0 * RATE_SHARE)  # syncd's share of Stripe's 25/s
    rows.append(
        (
            f"  {EVENTS}: all replicas",
            f"{events / s:.2f}/s = {events / s / endpoint_budget:.0%} of syncd's"
            f" {endpoint_budget:g}/s for the endpoint; waited in syncd's limiter"
            f" {window.events_wait / max(1, events):.1f}s per request on average",
        )
    )
    rows.append(
        (
            "  the bench's own updates (not counted above)",
            f"{requests_of(window.total, CHANGE) / s:.2f}/s",
        )
    )
    rows.append(
        (
            f"CPU in the steady window (s per {s:.0f}s)",
            ", ".join(f"{k} {v:.1f}" for k, v in window.cpu.items()),
        )
    )
    rows.append(
        (
            f"takeover after kill -9 of {take.victim} ({take.role}, {take.orphans:,} accounts,"
            f" {take.orphans_active} active)",
            f"leased again {fmt(take.leased_at)}, polled again {fmt(take.polled_at)}",
        )
    )
    rows.append(
        (
            "  active accounts' changes during the takeover",
            quantiles(changes.latencies("active", t_window_end, t_end)),
        )
    )
    held = ", ".join(f"{k} {v}" for k, v in window.held.items())
    rows.append(
        (
            "accounts leased (steady; most leased at once, sum over replicas)",
            f"{held}; max sum {max(window.leased_sum_max, take.leased_sum_max):,} of {n:,};"
            f" after the takeover: " + ", ".join(f"{k} {v}" for k, v in take.held_after.items()),
        )
    )
    rss = ", ".join(f"{k} {v / 1024:.0f} MB" for k, v in window.rss.items())
    rows.append(
        ("RSS per replica (steady)", f"{rss}; baseline (platform only) {base_kb / 1024:.0f} MB")
    )
    per = [(window.rss[k] - base_kb) / window.held[k] for k in window.rss if window.held.get(k)]
    growth = [
        (take.rss_after[k] - window.rss[k]) / (take.held_after[k] - window.held[k])
        for k in take.rss_after
        if take.held_after.get(k, 0) > window.held.get(k, 0)
    ]
    rows.append(
        (
            "memory per account",
            f"(RSS - baseline) / held: {fmt_kb(per)}; growth per account taken over: "
            f"{fmt_kb(growth)} (RSS after: "
            + ", ".join(f"{k} {v / 1024:.0f} MB" for k, v in take.rss_after.items())
            + ")",
        )
    )
    lost = changes.waiting()
    rows.append(
        (
            "changes made / not in the mirror at the end / failed",
            f"{len(changes.made):,} / {lost} / {changes.failed} ({changes.limited} retried 429s)",
        )
    )
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:{width}s}  {v}")
    if window.never_polled:
        print(f"  accounts with no poll recorded by the end of the window: {window.never_polled}")
    print(f"  resync runs by status: {fill.runs}")
    print(
        "  accounts (status, leased, failing): "
        + ", ".join(f"{r['status']}/{r['leased']}/{r['failing']}: {r['n']}" for r in accounts_rows)
    )
    top = sorted(fill.endpoints.items(), key=lambda kv: -kv[1])[:8]
    print("  backfill requests by endpoint: " + ", ".join(f"{e} {c:,}" for e, c in top))
    for name, found in errors.items():
        if found:
            print(f"  {name} logged errors: {found}")


def fmt(seconds: float | None) -> str:
    return "not within the timeout" if seconds is None else f"{seconds:.1f}s"


def fmt_kb(values: list[float]) -> str:
    if not values:
        return "n/a"
    return " / ".join(f"{v:.0f} kB" for v in values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=int, default=1000, help="connected accounts")
    p.add_argument("--active", type=int, default=10, help="accounts with changes all along")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--mode", choices=("test", "live"), default="test", help="Stripe's limits")
    p.add_argument("--connect-limits", choices=("shared", "account"), default="shared")
    p.add_argument("--latency-ms", type=float, default=50.0, help="added to every answer")
    p.add_argument("--customers", type=int, default=2, help="customers per account")
    p.add_argument("--products", type=int, default=1, help="products (2 prices each) per account")
    p.add_argument("--window", type=float, default=120.0, help="seconds of steady state measured")
    p.add_argument("--change-every", type=float, default=2.0, help="seconds, per active account")
    p.add_argument("--quiet-changes", type=int, default=10, help="quiet accounts changed once")
    p.add_argument(
        "--quiet-poll-interval",
        type=float,
        default=0.0,
        help="events.quiet_poll_interval for the replicas (0: syncd's default, 60)",
    )
    p.add_argument(
        "--drain-timeout", type=float, default=600.0, help="seconds for the last changes"
    )
    p.add_argument(
        "--settle", type=float, default=60.0, help="seconds after the backfill, at least"
    )
    p.add_argument(
        "--steady-wait",
        type=float,
        default=0.5,
        help="settled once event polls wait less than this in syncd's limiter (s, mean)",
    )
    p.add_argument("--settle-timeout", type=float, default=900.0, help="then measure anyway")
    p.add_argument("--quiet-timeout", type=float, default=600.0)
    p.add_argument("--kill", choices=("leader", "standby"), default="standby")
    p.add_argument("--takeover-timeout", type=float, default=600.0)
    p.add_argument("--after-takeover", type=float, default=30.0, help="seconds before RSS")
    p.add_argument("--backfill-timeout", type=float, default=3600.0)
    p.add_argument("--baseline-settle", type=float, default=20.0)
    p.add_argument("--progress", type=float, default=30.0, help="seconds between progress lines")
    p.add_argument("--random-seed", type=int, default=17)
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="connect-bench-"))  # kept: the replicas' logs
    print(f"replica logs: {workdir}", flush=True)
    flags = ["--accounts", str(args.accounts), "--random-seed", str(args.random_seed)]
    with (
        emulator(*flags, api_key=KEYS[args.mode]) as (emu, url),
        database() as (dsn, pg_pid),
    ):
        asyncio.run(measure(args, url, dsn, pg_pid, emu.pid, workdir))


if __name__ == "__main__":
    main()
