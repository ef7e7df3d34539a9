"""Connect: the accounts leased to this replica, through PostgreSQL advisory locks.

Each replica holds, on one dedicated connection (never a pooled one: asyncpg's pool unlocks all
when a connection goes back), a presence lock of its own and one lock per account it syncs. The
server frees them all when the session ends, `kill -9` included, so:

* no account is synced by two replicas at once: its lock is taken before its work starts, and
  given up only once its work has stopped; if the lock connection fails, every account's work
  is cancelled at once (the writes in flight roll back; the cursor stays where it committed);
* replicas share the accounts: every `daemon.lease_interval` seconds a replica counts the
  presence locks (the replicas alive now), takes unheld accounts up to its fair share
  (ceil(accounts / replicas)) and gives up any above it, so a replica that joins gets its share
  and the accounts of one that died are taken over within about one interval (its presence
  lock goes when its session does; no timeout to wait out);
* each replica prefers its own accounts (rendezvous hashing of instance and account), so two
  replicas seldom reach for the same ones.

Who holds a lock decides; `{state}.accounts.leased_by` only tells `syncd status`.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Awaitable, Callable

import anyio

from syncd import metrics
from syncd.db import Database, Dedicated, translate
from syncd.errors import SyncdError
from syncd.lifecycle import Lifecycle
from syncd.logs import get_logger
from syncd.problems import Problems

log = get_logger(__name__)
PROBLEM = "account_leases"


def _int4(text: str) -> int:
    """A stable signed 32-bit key (advisory locks take two int4s)."""
    value = zlib.crc32(text.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


def account_key(account_id: str) -> int:
    return _int4(account_id)


class Leases:
    """This replica's share of the accounts; `start(account)` and `stop(account)` run the
    account's work (stop returns once it has stopped)."""

    def __init__(
        self,
        db: Database,
        lifecycle: Lifecycle,
        instance_id: str,
        *,
        interval: float,
        start: Callable[[str], Awaitable[None]],
        stop: Callable[[str], Awaitable[None]],
        replicas_changed: Callable[[int], None] = lambda n: None,
        problems: Problems | None = None,
    ):
        self.db = db
        self.lifecycle = lifecycle
        self.instance_id = instance_id
        self.interval = interval
        self._start, self._stop = start, stop
        self._replicas_changed = replicas_changed
        self.problems = problems if problems is not None else Problems()
        # One lock class for the accounts and one for presence, per state schema (two syncd
        # installs in one database lease apart).
        self.account_class = _int4(f"syncd:accounts:{db.schemas.state}")
        self.presence_class = _int4(f"syncd:replicas:{db.schemas.state}")
        self.held: set[str] = set()
        self.replicas = 0
        self._conn: Dedicated | None = None
        self._lost = anyio.Event()

    def _preference(self, account_id: str) -> int:
        return zlib.crc32(f"{self.instance_id}:{account_id}".encode())

    async def run(self) -> None:
        """Lease rounds until stopping; then every account's work stops and the locks go."""
        try:
            while not self.lifecycle.stopping.is_set():
                try:
                    await self._round()
                    self.problems.clear(PROBLEM)
                except (SyncdError, TimeoutError, OSError) as exc:
                    error = exc if isinstance(exc, SyncdError) else translate(exc, self.db.dsn)
                    log.warning("lease_round_failed", error=str(error), held=len(self.held))
                    # This replica syncs no account until a round works again: not ready.
                    self.problems.report(PROBLEM, f"accounts not leased: {error}", blocking=True)
                    await self._drop_all("lease connection failed")
                await self.lifecycle.sleep(self.interval, self._lost)
        finally:
            with anyio.CancelScope(shield=True):
                await self._drop_all("stopping")

    async def _connection(self) -> Dedicated:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        conn = await self.db.dedicated_connection()
        self._lost = anyio.Event()
        lost = self._lost
        conn.on_close(lost.set)  # the session (and every lock) is gone: stop at once
        got = await conn.fetchval("lease_presence", self.presence_class, _int4(self.instance_id))
        if not got:
            conn.terminate()
            raise SyncdError(f"lease presence lock of {self.instance_id} is held elsewhere")
        self._conn = conn
        return conn

    async def _round(self) -> None:
        if self._conn is not None and self._lost.is_set():
            await self._drop_all("lease connection closed")
        conn = await self._connection()
        with anyio.fail_after(max(5.0, self.interval * 3)):
            # The server must hold exactly the locks we work under (accounts whose keys
            # collide share one); anything else, and no account's work goes on.
            held_now = int(await conn.fetchval("lease_held", self.account_class))
            expected = len({account_key(a) for a in self.held})
            if held_now != expected:
                raise SyncdError(f"lease locks held {held_now}, expected {expected}")
            replicas = max(1, int(await conn.fetchval("lease_replicas", self.presence_class)))
            active = [r["account_id"] for r in await self.db.fetch("accounts_active")]
        if replicas != self.replicas:
            log.info("lease_replicas", replicas=replicas, previous=self.replicas)
            self.replicas = replicas
            self._replicas_changed(replicas)
        fair = math.ceil(len(active) / replicas)
        wanted = set(active)
        gone = [a for a in self.held if a not in wanted]
        excess = len(self.held) - len(gone) - fair
        if excess > 0:
            keep = sorted(self.held - set(gone), key=self._preference)
            gone += keep[:excess]
        if gone:
            await self._give_up(conn, gone, "rebalanced")
        room = fair - len(self.held)
        if room > 0:
            free = sorted(
                (a for a in active if a not in self.held), key=self._preference, reverse=True
            )
            if free:
                with anyio.fail_after(max(5.0, self.interval * 3)):
                    taken = [
                        r["account_id"]
                        for r in await conn.fetch(
                            "lease_try",
                            self.account_class,
                            free,
                            [account_key(a) for a in free],
                            room,
                        )
                    ]
                if taken:
                    self.held.update(taken)
                    await self.db.execute("accounts_leased", self.instance_id, taken, [])
                    log.info("accounts_leased", count=len(taken), held=len(self.held))
                    for account in taken:
                        await self._start(account)
        if self.held:
            await self.db.execute("accounts_still_leased", self.instance_id, sorted(self.held))
        metrics.accounts_leased.set(len(self.held))

    async def _give_up(self, conn: Dedicated, accounts: list[str], why: str) -> None:
        """Stop the accounts' work, then unlock them (never the other way round)."""
        for account in accounts:
            await self._stop(account)
            self.held.discard(account)
        with anyio.fail_after(max(5.0, self.interval * 3)):
            await conn.fetch(
                "lease_release", self.account_class, [account_key(a) for a in accounts]
            )
        await self.db.execute("accounts_leased", self.instance_id, [], accounts)
        log.info("accounts_released", count=len(accounts), reason=why, held=len(self.held))

    async def _drop_all(self, why: str) -> None:
        """Stop every account's work and end the lock session (the server frees the locks)."""
        for account in list(self.held):
            await self._stop(account)
        if self.held:
            log.info("accounts_released", count=len(self.held), reason=why, held=0)
        released = list(self.held)
        self.held.clear()
        metrics.accounts_leased.set(0)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                with anyio.fail_after(2):
                    await conn.close()
            if not conn.is_closed():
                conn.terminate()
        if released:
            with contextlib.suppress(SyncdError):
                await self.db.execute("accounts_leased", self.instance_id, [], released)
