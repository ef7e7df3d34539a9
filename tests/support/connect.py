"""Shared by the Connect tests with real replicas (tests/test_connect_leases.py,
tests/test_connect_convergence.py); no tests here.

* `Fleet`: `syncd run` replicas (SYNCD_STRIPE_ACCOUNTS=all, leader election on) in subprocesses,
  each with its own log file, started, killed with SIGKILL and stopped with SIGTERM one by one.
  Each replica's DSN carries a session setting naming it (`options=-c syncdtest.replica=r1`),
  so the database itself can tell which replica wrote a row.
* `LockSampler`: a thread with its own connection reads pg_locks every 50 ms for the whole
  test: which session holds which account's lease lock, and whose presence lock that session
  holds (the replica, through `{state}.instances`).
* `record_writes` installs triggers that log every write made for an account (mirror rows, the
  events cursor and ledger, the account's poll record) with the replica that made it;
  `unleased_writes` checks each against the samples: a replica writes only for accounts it
  holds.
* Per-account comparison of the mirror with the emulator (`account_differences`), ownership
  of every row (`misplaced_rows`), and random changes through the Stripe SDK (`Mutator`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import datetime
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import stripe

from syncd.db import Database
from syncd.emulator import Emulator
from syncd.emulator.emulator import StateApi
from syncd.registry import BY_OBJECT
from syncd.storable import unescape
from tests.conftest import ROOT
from tests.support.daemon import daemon_env

STATE = "syncd"  # the state schema (its name is in the lock classes)
MIRROR = "stripe"
SETTING = "syncdtest.replica"
SAMPLE_EVERY = 0.05
# Streamed types compared per account (tax ids are not synced: per-parent lists are excluded).
COMPARED = (
    "customer",
    "product",
    "price",
    "plan",
    "subscription",
    "subscription_item",
    "coupon",
    "invoice",
)


def int4(text: str) -> int:
    """Signed crc32: the documented advisory lock keys (syncd/leases.py)."""
    value = zlib.crc32(text.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


ACCOUNT_CLASS = int4(f"syncd:accounts:{STATE}")
PRESENCE_CLASS = int4(f"syncd:replicas:{STATE}")


def tagged(db_url: str, name: str) -> str:
    """The DSN with a session setting naming the replica (asyncpg sends `options` at startup)."""
    joiner = "&" if "?" in db_url else "?"
    return f"{db_url}{joiner}options=-c%20{SETTING}%3D{name}"


def replica_env(db_url: str, emu: Emulator, name: str, **extra: str) -> dict[str, str]:
    return {
        **daemon_env(db_url, emu),
        "SYNCD_DATABASE_URL": tagged(db_url, name),
        "SYNCD_STRIPE_ACCOUNTS": "all",
        "SYNCD_STRIPE_ACCOUNTS_REFRESH_INTERVAL": "5",
        "SYNCD_SYNC_EXCLUDE": "payment_methods,tax_ids,active_entitlements",
        "SYNCD_EVENTS_QUIET_POLL_INTERVAL": "2",
        "SYNCD_DAEMON_LEADER_ELECTION": "true",
        "SYNCD_DAEMON_ELECTION_INTERVAL": "0.5",
        "SYNCD_DAEMON_HEARTBEAT_INTERVAL": "1",
        "SYNCD_DAEMON_LEASE_INTERVAL": "0.5",
        "SYNCD_DAEMON_SHUTDOWN_GRACE": "5",
        **extra,
    }


# replicas --------------------------------------------------------------------------------------
class Replica:
    """One `syncd run` in a subprocess, its output in `<dir>/<name>.log`."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        out = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "syncd", "run"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=out,
            )
        finally:
            os.close(out)
        self.ended_by: str | None = None  # "kill" or "term" once we ended it

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def kill(self) -> None:
        """kill -9: no chance to release anything (the server frees its locks)."""
        self.ended_by = "kill"
        self.proc.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(self.proc.wait, 10)

    async def terminate(self, within: float = 20) -> int:
        """SIGTERM and wait: the exit code (0 for a graceful stop)."""
        self.ended_by = "term"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await anyio.to_thread.run_sync(self.proc.wait, within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not stop within {within}s") from None

    def started(self) -> bool:
        """It said `daemon_started` (it watches signals from before then)."""
        return any(line.get("event") == "daemon_started" for line in self.log_lines())

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        with contextlib.suppress(FileNotFoundError):
            for text in self.log_path.read_text(errors="replace").splitlines():
                try:
                    line = json.loads(text)
                except ValueError:
                    line = {"event": "non_json", "text": text}
                lines.append(line if isinstance(line, dict) else {"event": "non_json"})
        return lines

    def problems(self) -> list[str]:
        """Errors and tracebacks in its log (one line each)."""
        return [
            json.dumps(line)[:600]
            for line in self.log_lines()
            if line.get("level") in ("error", "critical") or line.get("event") == "non_json"
        ]


class Fleet:
    """The replicas of a test; `close` stops the ones left (SIGTERM, then SIGKILL)."""

    def __init__(self, db_url: str, emu: Emulator, log_dir: Path, **extra: str):
        self.db_url, self.emu, self.log_dir, self.extra = db_url, emu, log_dir, extra
        self.replicas: dict[str, Replica] = {}

    def start(self, name: str | None = None) -> Replica:
        name = name or f"r{len(self.replicas) + 1}"
        assert name not in self.replicas, name
        env = replica_env(self.db_url, self.emu, name, **self.extra)
        replica = Replica(name, env, self.log_dir)
        self.replicas[name] = replica
        return replica

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.ended_by is None]

    def by_pid(self) -> dict[int, str]:
        return {r.pid: r.name for r in self.replicas.values()}

    def assert_running(self) -> None:
        """No replica we did not end has exited (a crash would explain anything else)."""
        for r in self.replicas.values():
            if r.ended_by is None and not r.alive():
                raise AssertionError(
                    f"replica {r.name} exited with {r.proc.returncode} on its own:\n"
                    + "\n".join(r.problems()[-20:])
                )

    def problems(self) -> dict[str, list[str]]:
        return {r.name: p for r in self.replicas.values() if (p := r.problems())}

    async def close(self) -> None:
        for r in self.replicas.values():
            if r.alive():
                with contextlib.suppress(AssertionError):
                    await r.terminate(15)


# lock samples ----------------------------------------------------------------------------------
SAMPLE_SQL = """
SELECT clock_timestamp() AS at,
       (SELECT coalesce(array_agg(ARRAY[pid, classid::int, objid::int]), '{}')
          FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND objsubid = 2
           AND classid::int = ANY($1::int[])
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       ) AS locks
"""


@dataclasses.dataclass
class Sample:
    at: datetime.datetime  # the server's clock (comparable with the writes logged)
    mono: float  # this process's monotonic clock (for timings)
    accounts: dict[int, list[int]]  # account lock key -> backend pids holding it
    presence: dict[int, int]  # backend pid -> presence key of the replica it belongs to


class LockSampler:
    """pg_locks every SAMPLE_EVERY seconds, from a thread with its own event loop (the emulator
    serving three replicas in the test's loop must not delay the samples)."""

    def __init__(self, db_url: str):
        self.db_url = db_url
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="lock-sampler", daemon=True)
        self._error: BaseException | None = None
        self._instances: dict[int, int] = {}  # presence key -> the replica's OS pid

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.samples and time.monotonic() < deadline:
            self.raise_error()
            time.sleep(0.01)
        assert self.samples, "the lock sampler took no sample"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.raise_error()

    def raise_error(self) -> None:
        if self._error is not None:
            raise AssertionError(f"lock sampler failed: {self._error!r}") from self._error

    def _main(self) -> None:
        try:
            asyncio.run(self._loop())
        except BaseException as exc:
            self._error = exc

    async def _loop(self) -> None:
        conn = await asyncpg.connect(self.db_url)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                row = await conn.fetchrow(SAMPLE_SQL, [ACCOUNT_CLASS, PRESENCE_CLASS])
                accounts: dict[int, list[int]] = {}
                presence: dict[int, int] = {}
                for pid, cls, key in row["locks"]:
                    if cls == ACCOUNT_CLASS:
                        accounts.setdefault(key, []).append(pid)
                    else:
                        presence[pid] = key
                self.samples.append(Sample(row["at"], started, accounts, presence))
                if set(presence.values()) - set(self._instances):
                    rows = await conn.fetch(f"SELECT instance_id, pid FROM {STATE}.instances")
                    self._instances = {int4(r["instance_id"]): r["pid"] for r in rows}
                await asyncio.sleep(max(0.0, SAMPLE_EVERY - (time.monotonic() - started)))
        finally:
            await conn.close()

    async def refresh_instances(self) -> None:
        conn = await asyncpg.connect(self.db_url)
        try:
            rows = await conn.fetch(f"SELECT instance_id, pid FROM {STATE}.instances")
        finally:
            await conn.close()
        self._instances = {int4(r["instance_id"]): r["pid"] for r in rows}

    def holders(
        self, sample: Sample, names: dict[int, str], keys: dict[int, str]
    ) -> dict[str, list[str]]:
        """account id -> the replicas (names) whose sessions hold its lock in this sample."""
        out: dict[str, list[str]] = {}
        for key, pids in sample.accounts.items():
            account = keys.get(key, f"key:{key}")
            out[account] = [self.who(sample, pid, names) for pid in pids]
        return out

    def who(self, sample: Sample, pid: int, names: dict[int, str]) -> str:
        """The replica a backend belongs to: its presence lock names the instance."""
        key = sample.presence.get(pid)
        if key is None:
            return f"backend:{pid}(no presence lock)"
        os_pid = self._instances.get(key)
        return names.get(os_pid, f"instance:{key}") if os_pid else f"instance:{key}"

    async def wait(
        self,
        condition: Callable[[Sample], bool],
        *,
        within: float,
        stable: float = 0.0,
        after: float = 0.0,
        what: str = "condition",
        describe: Callable[[Sample], str] | None = None,
        fleet: Fleet | None = None,
    ) -> Sample:
        """The first sample (taken after monotonic time `after`) from which `condition` holds
        for `stable` seconds without a break."""
        deadline = time.monotonic() + within
        seen = 0
        since: Sample | None = None
        while time.monotonic() < deadline:
            self.raise_error()
            if fleet is not None:
                fleet.assert_running()
            samples = self.samples[seen:]
            seen += len(samples)
            for s in samples:
                if s.mono < after:
                    continue
                if set(s.presence.values()) - set(self._instances):
                    await self.refresh_instances()
                if condition(s):
                    since = since or s
                    if s.mono - since.mono >= stable:
                        return since
                else:
                    since = None
            await anyio.sleep(0.02)
        last = self.samples[-1]
        detail = describe(last) if describe else ""
        raise AssertionError(f"{what}: not within {within}s; last sample: {detail}")

    def max_gap(self, start: float = 0.0) -> float:
        monos = [s.mono for s in self.samples if s.mono >= start]
        return max((b - a for a, b in itertools.pairwise(monos)), default=0.0)


def shares(
    sampler: LockSampler, sample: Sample, names: dict[int, str], keys: dict[int, str]
) -> Counter[str]:
    """How many accounts each replica holds in this sample."""
    count: Counter[str] = Counter()
    for owners in sampler.holders(sample, names, keys).values():
        count.update(owners)
    return count


def balanced(
    sampler: LockSampler,
    sample: Sample,
    names: dict[int, str],
    keys: dict[int, str],
    active: set[str],
    replicas: set[str],
) -> bool:
    """Every active account held by exactly one of `replicas`, nothing else held, and no
    replica above its fair share, ceil(accounts / replicas) (so with 30 accounts, 10 each of
    three replicas and 15 each of two)."""
    holders = sampler.holders(sample, names, keys)
    if set(holders) != active or any(len(h) != 1 for h in holders.values()):
        return False
    count = Counter(h[0] for h in holders.values())
    fair = -(-len(active) // len(replicas))
    return set(count) <= replicas and all(n <= fair for n in count.values())


# writes ----------------------------------------------------------------------------------------
WRITE_LOG_SQL = f"""
CREATE TABLE IF NOT EXISTS public.test_writes (
    n          bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    replica    text,
    account_id text,
    tbl        text NOT NULL,
    op         text NOT NULL
);
CREATE OR REPLACE FUNCTION public.test_log_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.test_writes (replica, account_id, tbl, op)
    VALUES (current_setting('{SETTING}', true), NEW.account_id, TG_TABLE_NAME, TG_OP);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER test_log_write AFTER INSERT OR UPDATE ON {STATE}.events_cursor
    FOR EACH ROW EXECUTE FUNCTION public.test_log_write();
CREATE OR REPLACE TRIGGER test_log_write AFTER INSERT ON {STATE}.events_ledger
    FOR EACH ROW EXECUTE FUNCTION public.test_log_write();
-- The account's poll record and failures: written by the work of the replica leasing it.
CREATE OR REPLACE TRIGGER test_log_write AFTER UPDATE OF last_poll_at, failing_since
    ON {STATE}.accounts FOR EACH ROW EXECUTE FUNCTION public.test_log_write();
"""

MIRROR_TABLES_SQL = f"""
SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
 WHERE c.relnamespace = '{MIRROR}'::regnamespace AND c.relkind IN ('r', 'p')
   AND NOT c.relispartition AND a.attname = 'account_id' AND NOT a.attisdropped
 ORDER BY 1
"""


async def record_writes(db_url: str) -> list[str]:
    """Log every write made for an account from now on (public.test_writes); the tables."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(WRITE_LOG_SQL)
        tables = [r["relname"] for r in await conn.fetch(MIRROR_TABLES_SQL)]
        for t in tables:
            await conn.execute(
                f'CREATE OR REPLACE TRIGGER test_log_write AFTER INSERT OR UPDATE ON {MIRROR}."{t}"'
                " FOR EACH ROW EXECUTE FUNCTION public.test_log_write()"
            )
        return tables
    finally:
        await conn.close()


@dataclasses.dataclass
class WriteCheck:
    checked: int
    skipped: int  # between two samples too far apart to tell
    by_replica: Counter[str]
    violations: list[str]


async def unleased_writes(
    db_url: str,
    sampler: LockSampler,
    names: dict[int, str],
    *,
    max_gap: float = 0.4,
) -> WriteCheck:
    """Each logged write checked against the lock samples around it: the replica that wrote
    held the account's lock in the sample just before or just after (holds last at least a
    lease interval, longer than `max_gap`: a write between samples further apart is skipped)."""
    conn = await asyncpg.connect(db_url)
    try:
        writes = await conn.fetch(
            "SELECT at, replica, account_id, tbl, op FROM public.test_writes ORDER BY at"
        )
        accounts = [
            r["account_id"] for r in await conn.fetch(f"SELECT account_id FROM {STATE}.accounts")
        ]
    finally:
        await conn.close()
    await sampler.refresh_instances()
    keys = {int4(a): a for a in accounts}
    samples = sampler.samples
    times = [s.at for s in samples]
    checked = skipped = 0
    by_replica: Counter[str] = Counter()
    violations: list[str] = []
    for w in writes:
        where = f"{w['tbl']} {w['op']} for {w['account_id']} by {w['replica']} at {w['at']}"
        if w["replica"] is None:
            violations.append(f"{where}: by a session of no replica")
            continue
        i = bisect.bisect_left(times, w["at"])
        around = [samples[j] for j in (i - 1, i) if 0 <= j < len(samples)]
        if len(around) < 2 or (around[1].at - around[0].at).total_seconds() > max_gap:
            skipped += 1
            continue
        checked += 1
        by_replica[w["replica"]] += 1
        owners = [sampler.holders(s, names, keys).get(w["account_id"], []) for s in around]
        if not any(w["replica"] in o for o in owners):
            violations.append(f"{where}: lock held by {owners[0]} before, {owners[1]} after")
    return WriteCheck(checked, skipped, by_replica, violations)


def double_holds(sampler: LockSampler, names: dict[int, str], keys: dict[int, str]) -> list[str]:
    """Samples in which an account lock was granted to two sessions, or held by a session
    without a presence lock (a lease outside any replica's accounting)."""
    found = []
    for s in sampler.samples:
        for key, pids in s.accounts.items():
            if len(pids) > 1 or any(p not in s.presence for p in pids):
                owners = [sampler.who(s, p, names) for p in pids]
                found.append(f"{s.at}: {keys.get(key, key)} held by {owners}")
    return found


# the mirror against the emulator, per account ----------------------------------------------------
def view_of(emu: Emulator, account: str) -> StateApi:
    return emu if account == emu.account_id else emu.account(account)


async def account_rows(
    db: Database, table: str, account: str
) -> dict[str, tuple[dict[str, Any], bool]]:
    rows = await db.run(
        lambda c: c.fetch(
            f'SELECT id, raw, deleted_at FROM {MIRROR}."{table}" WHERE account_id = $1', account
        ),
        transaction=False,
    )
    return {r["id"]: (unescape(r["raw"]), r["deleted_at"] is not None) for r in rows}


async def account_differences(
    emu: Emulator, db: Database, account: str, types: Iterable[str] = COMPARED
) -> list[str]:
    """Every way the account's rows differ from the account's objects in the emulator: ids,
    every field, tombstones (tests/support/events.py `differences`, scoped to one account)."""
    view = view_of(emu, account)
    problems: list[str] = []
    for object_type in types:
        table = BY_OBJECT[object_type].table
        rows = await account_rows(db, table, account)
        expected = {o["id"]: o for o in view.objects(object_type)}
        for oid, obj in expected.items():
            row = rows.get(oid)
            if obj.get("deleted"):
                if row is None or not row[1]:
                    problems.append(f"{account} {table} {oid}: deleted in Stripe, not tombstoned")
            elif row is None:
                problems.append(f"{account} {table} {oid}: missing")
            elif row[1]:
                problems.append(f"{account} {table} {oid}: tombstoned but alive in Stripe")
            else:
                diff = sorted(
                    k
                    for k in set(obj) | set(row[0])
                    if k not in obj or k not in row[0] or obj[k] != row[0][k]
                )
                if diff:
                    problems.append(f"{account} {table} {oid}: fields differ: {diff}")
        for oid in set(rows) - set(expected):
            problems.append(f"{account} {table} {oid}: in the mirror, unknown to the account")
    return problems


async def converge(
    emu: Emulator,
    db: Database,
    accounts: Iterable[str],
    *,
    within: float,
    fleet: Fleet | None = None,
    types: Iterable[str] = COMPARED,
) -> float:
    """Wait until every account's rows equal its objects; the seconds it took."""
    accounts, types = sorted(accounts), tuple(types)
    started = time.monotonic()
    problems: list[str] = ["never compared"]
    while time.monotonic() - started < within:
        if fleet is not None:
            fleet.assert_running()
        problems = []
        for account in accounts:
            problems += await account_differences(emu, db, account, types)
        if not problems:
            return time.monotonic() - started
        await anyio.sleep(0.25)
    raise AssertionError(f"no convergence within {within}s ({len(problems)}): {problems[:8]}")


async def misplaced_rows(emu: Emulator, db: Database, accounts: Iterable[str]) -> list[str]:
    """Rows of the compared types whose account_id is not the account holding the object."""
    owner: dict[str, str] = {}
    for account in accounts:
        view = view_of(emu, account)
        for object_type in COMPARED:
            for obj in view.objects(object_type):
                owner[obj["id"]] = account
    problems = []
    for object_type in COMPARED:
        table = BY_OBJECT[object_type].table
        rows = await db.run(
            lambda c, t=table: c.fetch(f'SELECT id, account_id FROM {MIRROR}."{t}"'),
            transaction=False,
        )
        for r in rows:
            if owner.get(r["id"]) != r["account_id"]:
                problems.append(
                    f"{table} {r['id']} under {r['account_id']!r}, held by {owner.get(r['id'])}"
                )
    return problems


# changes through the SDK ---------------------------------------------------------------------------
class Mutator:
    """Random changes through the real stripe SDK, acting for one account or another
    (`Stripe-Account`), as the accounts' users make them."""

    def __init__(self, emu: Emulator, rng: random.Random):
        self.emu, self.rng = emu, rng
        self.http = stripe.AIOHTTPClient()
        self._clients: dict[str, Any] = {}
        self.counts: Counter[str] = Counter()

    async def close(self) -> None:
        await self.http.close_async()  # type: ignore[no-untyped-call]

    def sdk(self, account: str) -> Any:
        client = self._clients.get(account)
        if client is None:
            header = None if account == self.emu.account_id else account
            client = self.emu.client(stripe_account=header, http_client=self.http).v1
            self._clients[account] = client
        return client

    def live(self, account: str, object_type: str, **match: Any) -> list[dict[str, Any]]:
        return [
            o
            for o in view_of(self.emu, account).objects(object_type)
            if not o.get("deleted") and all(o.get(k) == v for k, v in match.items())
        ]

    async def act(self, account: str) -> str:
        """One random change in `account`; its name."""
        live = self.live
        customers = live(account, "customer")
        products = live(account, "product")
        prices = live(account, "price", active=True)
        recurring = [p for p in prices if p.get("recurring")]
        subs = [s for s in live(account, "subscription") if s["status"] != "canceled"]
        choices: list[tuple[int, str]] = [(3, "new_customer"), (1, "new_product"), (1, "coupon")]
        if customers:
            choices += [(4, "update_customer"), (1, "delete_customer")]
        if products:
            choices += [(2, "new_price"), (2, "update_product")]
        if prices:
            choices += [(1, "update_price")]
        if customers and recurring:
            choices += [(2, "new_subscription")]
        if subs:
            choices += [(2, "update_subscription"), (1, "cancel_subscription")]
        weights, names = zip(*choices, strict=True)
        name = self.rng.choices(names, weights)[0]
        await getattr(self, name)(account)
        self.counts[name] += 1
        return name

    async def new_customer(self, account: str) -> None:
        n = self.rng.randrange(10**6)
        await self.sdk(account).customers.create_async(
            {"email": f"u{n}@example.com", "name": f"n{n}", "metadata": {"n": str(n)}}
        )

    async def update_customer(self, account: str) -> None:
        c = self.rng.choice(self.live(account, "customer"))
        params = self.rng.choice(
            [
                {"name": f"name {self.rng.randrange(1000)}"},
                {"metadata": {"n": str(self.rng.randrange(1000))}},
                {"email": f"e{self.rng.randrange(1000)}@example.com"},
            ]
        )
        await self.sdk(account).customers.update_async(c["id"], params)

    async def delete_customer(self, account: str) -> None:
        c = self.rng.choice(self.live(account, "customer"))
        await self.sdk(account).customers.delete_async(c["id"])

    async def new_product(self, account: str) -> None:
        await self.sdk(account).products.create_async({"name": f"P{self.rng.randrange(1000)}"})

    async def update_product(self, account: str) -> None:
        p = self.rng.choice(self.live(account, "product"))
        params = self.rng.choice([{"name": f"{p['name']}+"}, {"active": not p["active"]}])
        await self.sdk(account).products.update_async(p["id"], params)

    async def new_price(self, account: str) -> None:
        params: dict[str, Any] = {
            "product": self.rng.choice(self.live(account, "product"))["id"],
            "unit_amount": self.rng.choice([100, 500, 900]),
            "currency": "usd",
        }
        if self.rng.random() < 0.7:
            params["recurring"] = {"interval": self.rng.choice(["month", "year"])}
        await self.sdk(account).prices.create_async(params)

    async def update_price(self, account: str) -> None:
        p = self.rng.choice(self.live(account, "price", active=True))
        params = self.rng.choice(
            [{"metadata": {"v": str(self.rng.randrange(100))}}, {"active": False}]
        )
        await self.sdk(account).prices.update_async(p["id"], params)

    async def new_subscription(self, account: str) -> None:
        recurring = [p for p in self.live(account, "price", active=True) if p.get("recurring")]
        await self.sdk(account).subscriptions.create_async(
            {
                "customer": self.rng.choice(self.live(account, "customer"))["id"],
                "items": [{"price": self.rng.choice(recurring)["id"]}],
            }
        )

    def _open_subscription(self, account: str) -> dict[str, Any]:
        subs = [s for s in self.live(account, "subscription") if s["status"] != "canceled"]
        return self.rng.choice(subs)

    async def update_subscription(self, account: str) -> None:
        s = self._open_subscription(account)
        params = self.rng.choice(
            [
                {"metadata": {"m": str(self.rng.randrange(100))}},
                {"cancel_at_period_end": self.rng.choice([True, False])},
            ]
        )
        await self.sdk(account).subscriptions.update_async(s["id"], params)

    async def cancel_subscription(self, account: str) -> None:
        s = self._open_subscription(account)
        await self.sdk(account).subscriptions.cancel_async(s["id"])

    async def coupon(self, account: str) -> None:
        coupons = self.live(account, "coupon")
        if coupons and self.rng.random() < 0.5:
            await self.sdk(account).coupons.delete_async(self.rng.choice(coupons)["id"])
        else:
            await self.sdk(account).coupons.create_async({"percent_off": self.rng.choice([10, 25])})


async def wait_value(db: Database, sql: str, *args: Any, within: float, what: str) -> Any:
    """Poll `sql` until its value is truthy; the value."""
    deadline = time.monotonic() + within
    while True:
        value = await db.run(lambda c: c.fetchval(sql, *args), transaction=False)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        await anyio.sleep(0.1)


async def wait_log(replica: Replica, event: str, *, within: float, **match: Any) -> dict[str, Any]:
    """The first line of `replica`'s log with this event (and these fields)."""
    deadline = time.monotonic() + within
    while True:
        for line in replica.log_lines():
            if line.get("event") == event and all(line.get(k) == v for k, v in match.items()):
                return line
        if not replica.alive():
            raise AssertionError(f"{replica.name} exited:\n" + "\n".join(replica.problems()))
        if time.monotonic() > deadline:
            raise AssertionError(f"{replica.name} never logged {event} {match} in {within}s")
        await anyio.sleep(0.05)
